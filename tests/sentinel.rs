//! Redis Sentinel (feature `sentinel`): 1 primary, 1 replica and 3 sentinels, started once
//! for this test binary. A `SENTINEL FAILOVER` happens while holders hold and waiters
//! block; the coordinator finds the new primary, nobody is ever over the count (an
//! independent in-process counter), every waiter is served and every permit comes back.

#![cfg(feature = "sentinel")]

#[allow(unused_imports)]
mod common;
#[macro_use]
mod scenarios;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::sentinel::RedisSentinel;
use redis::sentinel::{SentinelClient, SentinelServerType};
use redis_sync::{Coordinator, Runtime};
use scenarios::*;

/// One failover at a time.
static TOPOLOGY: std::sync::LazyLock<futures::lock::Mutex<()>> =
    std::sync::LazyLock::new(|| futures::lock::Mutex::new(()));

async fn coordinator<R: Runtime>() -> Coordinator<R> {
    let topo = RedisSentinel::shared();
    let sentinel = SentinelClient::build(
        topo.sentinel_urls(),
        topo.master_name(),
        None,
        SentinelServerType::Master,
    )
    .expect("sentinel client");
    Coordinator::<R>::sentinel(sentinel)
        .response_timeout(Duration::from_secs(2))
        .connect()
        .await
        .expect("connect through the sentinels")
}

async fn failover_under_load<R: Runtime>() {
    let _one_at_a_time = TOPOLOGY.lock().await;
    let topo = RedisSentinel::shared();
    let sync = coordinator::<R>().await;
    let name = format!("sentinel-{:08x}", fastrand::u32(..));
    let count = 3;
    let first = sync.semaphore(&name).create(count).await.unwrap();
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let sem = sync.semaphore(&name).create(count).await.unwrap();
        let (inside, most, stop) = (inside.clone(), most.clone(), stop.clone());
        tasks.push(spawn::<R, _>(async move {
            let mut done = 0u32;
            while !stop.load(Ordering::SeqCst) || done < 5 {
                // A request may fail while no primary answers: try again.
                let permit = match sem.acquire_timeout(Duration::from_secs(10)).await {
                    Ok(p) => p,
                    Err(e) if e.is_connection() || e.is_timeout() => continue,
                    Err(e) => panic!("acquire: {e}"),
                };
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                sleep::<R>(Duration::from_millis(fastrand::u64(0..5))).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                drop(permit);
                done += 1;
            }
        }));
    }
    sleep::<R>(Duration::from_millis(300)).await;
    let old = topo.primary_port();
    let (tx, rx) = futures::channel::oneshot::channel();
    std::thread::spawn(move || {
        let new = RedisSentinel::shared().failover();
        let _ = tx.send(new);
    });
    let new = rx.await.expect("failover thread");
    assert_ne!(old, new);
    sleep::<R>(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    futures::future::join_all(tasks).await;
    assert!(
        most.load(Ordering::SeqCst) <= count as usize,
        "over the count"
    );
    wait_all_free(&first).await;
    // The coordinator works on the new primary: a permit taken now is recorded there.
    let permit = first.acquire().await.unwrap();
    let mut direct = topo.node_conn(new);
    let free: usize = redis::cmd("LLEN")
        .arg(format!("redsync:semaphore:{{{name}}}:list"))
        .query(&mut direct)
        .unwrap();
    let held: usize = redis::cmd("LLEN")
        .arg(format!(
            "redsync:semaphore:{{{name}}}:held:{}",
            permit.holder()
        ))
        .query(&mut direct)
        .unwrap();
    assert_eq!(
        (free, held),
        (count as usize - 1, 1),
        "on the new primary {new}"
    );
    drop(permit);
    wait_all_free(&first).await;
    sync.shutdown().await.unwrap();
}

runtime_tests! {
    sentinel_failover_under_load => failover_under_load();
}
