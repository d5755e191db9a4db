//! The shared context (`Coordinator`): connection bounds with many primitives, fair
//! rotation of the blocking connections, one watchdog for all, settings and shutdown.
//! Every scenario runs on tokio, smol and async-std, each against a redis-server of its
//! own (connection counts are read from that server's `CLIENT LIST`).

#[allow(unused_imports)]
mod common;
#[macro_use]
mod scenarios;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::RedisServer;
use redis_sync::{Coordinator, Error, Invalid, Runtime, Semaphore};
use scenarios::*;

/// Connections the server has now (our admin connection included).
async fn connections(admin: &mut redis::aio::MultiplexedConnection) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(admin)
        .await
        .expect("CLIENT LIST");
    list.lines().filter(|l| !l.trim().is_empty()).count()
}

async fn blocked_clients(admin: &mut redis::aio::MultiplexedConnection) -> usize {
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query_async(admin)
        .await
        .expect("INFO clients");
    info.lines()
        .find_map(|l| l.strip_prefix("blocked_clients:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(usize::MAX)
}

/// 1,000 semaphores on one coordinator, a permit held on each: one connection for all of
/// them, and the one watchdog keeps every lease through several renewal periods.
async fn thousand_semaphores_one_connection<R: Runtime>() {
    let server = RedisServer::start();
    let client = redis::Client::open(server.url.as_str()).unwrap();
    let mut admin = raw_conn(&client).await;
    let before = connections(&mut admin).await;
    let sync = Coordinator::<R>::connect(&client).await.unwrap();
    let mut permits = Vec::new();
    let mut sems = Vec::new();
    for chunk in 0..10 {
        let made = futures::future::join_all((0..100).map(|i| {
            let sync = sync.clone();
            async move {
                let sem = sync
                    .semaphore(&format!("tenant-{chunk}-{i}"))
                    .lease_ttl(Duration::from_millis(900))
                    .create(2)
                    .await
                    .unwrap();
                let permit = sem.acquire().await.unwrap();
                (sem, permit)
            }
        }))
        .await;
        for (sem, permit) in made {
            sems.push(sem);
            permits.push(permit);
        }
    }
    let open = connections(&mut admin).await - before;
    assert_eq!(
        open, 1,
        "1,000 semaphores holding a permit each use one shared connection"
    );
    let stats = sync.stats();
    assert_eq!(stats.primitives, 1_000);
    assert_eq!(stats.blocking_connections, 0);
    assert_eq!(stats.totals.held, 1_000);
    // Several renewal periods (300 ms each): nothing lost, every lease still there.
    sleep::<R>(Duration::from_millis(2_000)).await;
    let stats = sync.stats();
    assert_eq!(stats.totals.lost_leases, 0, "{stats:?}");
    assert_eq!(stats.totals.background_errors, 0, "{stats:?}");
    assert!(permits.iter().all(|p| !p.is_lost()));
    for sem in sems.iter().step_by(97) {
        let st = sem.inspect().await.unwrap();
        assert_eq!((st.free, st.held()), (1, 1), "{st:?}");
    }
    assert_eq!(connections(&mut admin).await - before, 1);
    drop(permits);
    sync.shutdown().await.unwrap();
    for sem in sems.iter().step_by(97) {
        let st = sem.inspect().await.unwrap();
        assert_eq!((st.free, st.held()), (2, 0), "{st:?}");
    }
}

/// 200 semaphores with a waiter each, and at most 8 blocking connections: the connections
/// rotate and every waiter is served; the server never sees more than 8 blocked clients.
async fn rotation_serves_every_waiter<R: Runtime>() {
    const NAMES: usize = 200;
    const CAP: usize = 8;
    let server = RedisServer::start();
    let client = redis::Client::open(server.url.as_str()).unwrap();
    let mut admin = raw_conn(&client).await;
    let before = connections(&mut admin).await;
    let holders = Coordinator::<R>::connect(&client).await.unwrap();
    let waiters = Coordinator::<R>::builder(&client)
        .max_blocking_connections(CAP)
        .connect()
        .await
        .unwrap();
    let mut held = Vec::new();
    let mut sems = Vec::new();
    for i in 0..NAMES {
        let name = format!("rot-{i}");
        let h = holders.semaphore(&name).create(1).await.unwrap();
        held.push(h.acquire().await.unwrap());
        sems.push(waiters.semaphore(&name).attach(None).await.unwrap());
    }
    let served = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = sems
        .iter()
        .map(|sem| {
            let (sem, served) = (sem.clone(), served.clone());
            spawn::<R, _>(async move {
                let permit = sem.acquire().await.unwrap();
                served.fetch_add(1, Ordering::SeqCst);
                permit.release().await.unwrap();
            })
        })
        .collect();
    let all_waiting = eventually::<R, _, _, _>("every waiter queued", || async {
        let s = waiters.stats();
        if s.totals.waiting == NAMES {
            Ok(s)
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    assert!(all_waiting.blocking_connections <= CAP, "{all_waiting:?}");
    // Release the holders one by one while watching the server's side.
    let mut max_conns = 0;
    let mut max_blocked = 0;
    for (i, permit) in held.into_iter().enumerate() {
        permit.release().await.unwrap();
        if i % 10 == 0 {
            max_conns = max_conns.max(connections(&mut admin).await - before);
            max_blocked = max_blocked.max(blocked_clients(&mut admin).await);
        }
    }
    let watch = async {
        while served.load(Ordering::SeqCst) < NAMES {
            max_conns = max_conns.max(connections(&mut admin).await - before);
            max_blocked = max_blocked.max(blocked_clients(&mut admin).await);
            assert!(waiters.stats().blocking_connections <= CAP);
            sleep::<R>(Duration::from_millis(20)).await;
        }
    };
    futures::join!(futures::future::join_all(tasks), watch);
    assert_eq!(served.load(Ordering::SeqCst), NAMES);
    // Two shared connections (one per coordinator) and at most CAP blocking ones.
    assert!(max_conns <= 2 + CAP, "{max_conns} connections");
    assert!(max_blocked <= CAP, "{max_blocked} blocked clients");
    for sem in sems.iter().step_by(23) {
        wait_all_free(sem).await;
    }
}

/// Settings that belong to the coordinator are refused on its primitives' builders.
async fn coordinator_settings_are_its_own<R: Runtime>() {
    let client = common::client();
    let sync = Coordinator::<R>::connect(&client).await.unwrap();
    let prefix = common::unique_prefix("coord-settings");
    let err = sync
        .semaphore("s")
        .key_prefix(&prefix)
        .response_timeout(Duration::from_secs(1))
        .create(1)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidArgument(Invalid::CoordinatorSetting("response_timeout"))
        ),
        "{err:?}"
    );
    let err = sync
        .event("e")
        .key_prefix(&prefix)
        .runtime(rt::<R>())
        .open()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidArgument(Invalid::CoordinatorSetting("runtime"))
        ),
        "{err:?}"
    );
    let err = Coordinator::<R>::builder(&client)
        .max_blocking_connections(0)
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidArgument(Invalid::NoBlockingConnections)),
        "{err:?}"
    );
}

/// A semaphore and an event on one coordinator work together, and `shutdown` leaves
/// nothing of this process in Redis and refuses new primitives.
async fn coordinator_shutdown_leaves_nothing<R: Runtime>() {
    let client = common::client();
    let prefix = common::unique_prefix("coord-shutdown");
    let sync = Coordinator::<R>::connect(&client).await.unwrap();
    let sem = sync
        .semaphore("jobs")
        .key_prefix(&prefix)
        .create(2)
        .await
        .unwrap();
    let ev = sync
        .event("ready")
        .key_prefix(&prefix)
        .open()
        .await
        .unwrap();
    let permit = sem.acquire().await.unwrap();
    let waiter = {
        let ev = ev.clone();
        spawn::<R, _>(async move { ev.wait().await })
    };
    ev.set().await.unwrap();
    waiter.await.unwrap();
    permit.detach();
    sync.shutdown().await.unwrap();
    let st = sem.inspect().await.unwrap();
    assert_eq!((st.free, st.held(), st.holders.len()), (2, 0, 0), "{st:?}");
    assert!(matches!(sem.acquire().await, Err(Error::Closed)));
    let err = sync
        .semaphore("other")
        .key_prefix(&prefix)
        .create(1)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Closed), "{err:?}");
}

/// Many handles of one name on one coordinator (one holder each, as peers' benchmarks
/// use): never more than `count` inside, checked with an independent counter.
async fn many_holders_one_coordinator<R: Runtime>() {
    let client = common::client();
    let prefix = common::unique_prefix("coord-holders");
    let sync = Coordinator::<R>::builder(&client)
        .max_blocking_connections(64)
        .connect()
        .await
        .unwrap();
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    let mut handles: Vec<Semaphore<R>> = Vec::new();
    for _ in 0..32 {
        handles.push(
            sync.semaphore("shared")
                .key_prefix(&prefix)
                .create(4)
                .await
                .unwrap(),
        );
    }
    for sem in handles.clone() {
        let (inside, most) = (inside.clone(), most.clone());
        tasks.push(spawn::<R, _>(async move {
            for _ in 0..20 {
                let permit = sem.acquire().await.unwrap();
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                sleep::<R>(Duration::from_millis(1)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                permit.release().await.unwrap();
            }
        }));
    }
    futures::future::join_all(tasks).await;
    assert!(most.load(Ordering::SeqCst) <= 4);
    assert!(sync.stats().blocking_connections <= 64);
    wait_all_free(&handles[0]).await;
}

runtime_tests! {
    thousand_semaphores_hold_one_connection => thousand_semaphores_one_connection();
    blocking_connections_rotate_over_200_names => rotation_serves_every_waiter();
    coordinator_settings_refused_on_primitives => coordinator_settings_are_its_own();
    coordinator_shutdown => coordinator_shutdown_leaves_nothing();
    many_holders_on_one_coordinator => many_holders_one_coordinator();
}
