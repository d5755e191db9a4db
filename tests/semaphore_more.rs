//! Several permits at once, resizing a live semaphore, and permits with a hard lease, on
//! every runtime. Process-level checks are in `tests/many_processes.rs`.

#[allow(unused_imports)]
mod common;
#[macro_use]
mod scenarios;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis_sync::{Error, Invalid, Runtime, Semaphore};
use scenarios::*;

async fn sem<R: Runtime>(prefix: &str, count: u32) -> Semaphore<R> {
    Semaphore::<R>::builder(&common::client(), "s")
        .key_prefix(prefix)
        .create(count)
        .await
        .unwrap()
}

/// All or nothing; bad sizes are typed errors; released in one call.
async fn many_basics<R: Runtime>() {
    let prefix = common::unique_prefix("many-basics");
    let s = sem::<R>(&prefix, 4).await;
    assert!(matches!(
        s.acquire_many(5).await,
        Err(Error::InvalidArgument(Invalid::PermitsOutOfRange {
            n: 5,
            count: 4
        }))
    ));
    assert!(matches!(
        s.try_acquire_many(0).await,
        Err(Error::InvalidArgument(Invalid::PermitsOutOfRange {
            n: 0,
            ..
        }))
    ));
    let three = s.acquire_many(3).await.unwrap();
    assert_eq!(three.count(), 3);
    assert!(s.try_acquire_many(2).await.unwrap().is_none());
    let st = s.inspect().await.unwrap();
    assert_eq!((st.free, st.held()), (1, 3), "{st:?}");
    three.release().await.unwrap();
    wait_all_free(&s).await;
}

/// Two handles each asking for count - 1 of count, over and over: never a deadlock, never
/// more than count out (independent counter).
async fn many_no_deadlock<R: Runtime>() {
    let prefix = common::unique_prefix("many-deadlock");
    let count = 4;
    let a = sem::<R>(&prefix, count).await;
    let b = sem::<R>(&prefix, count).await;
    let out = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .map(|s| {
            let out = out.clone();
            spawn::<R, _>(async move {
                for _ in 0..15 {
                    let p = s.acquire_many(count - 1).await.unwrap();
                    let now = out.fetch_add(3, Ordering::SeqCst) + 3;
                    assert!(now <= count as usize, "{now} permits out");
                    sleep::<R>(Duration::from_millis(2)).await;
                    out.fetch_sub(3, Ordering::SeqCst);
                    p.release().await.unwrap();
                }
            })
        })
        .collect();
    futures::future::join_all(tasks).await;
    wait_all_free(&a).await;
}

/// A request for the whole count among a stream of single requests is served.
async fn many_not_starved<R: Runtime>() {
    let prefix = common::unique_prefix("many-starve");
    let count = 4;
    let big = sem::<R>(&prefix, count).await;
    let stop = Arc::new(AtomicBool::new(false));
    let singles: Vec<_> = (0..6)
        .map(|_| {
            let stop = stop.clone();
            let prefix = prefix.clone();
            spawn::<R, _>(async move {
                let s = sem::<R>(&prefix, count).await;
                let mut n = 0u32;
                while !stop.load(Ordering::SeqCst) {
                    let p = s.acquire().await.unwrap();
                    sleep::<R>(Duration::from_millis(1)).await;
                    drop(p);
                    n += 1;
                }
                n
            })
        })
        .collect();
    sleep::<R>(Duration::from_millis(100)).await;
    let started = Instant::now();
    for _ in 0..3 {
        let all = big.acquire_many(count).await.unwrap();
        all.release().await.unwrap();
    }
    let took = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let served: u32 = futures::future::join_all(singles).await.into_iter().sum();
    println!("3 whole-count requests took {took:?} among {served} single grants");
    wait_all_free(&big).await;
}

/// Dropping a request midway (a timeout) gives back what it collected, and the gate.
async fn many_cancelled_midway<R: Runtime>() {
    let prefix = common::unique_prefix("many-cancel");
    let s = sem::<R>(&prefix, 3).await;
    let holder = sem::<R>(&prefix, 3).await;
    let one = holder.acquire().await.unwrap();
    // Needs 3, gets 2, times out.
    assert!(matches!(
        s.acquire_many_timeout(3, Duration::from_millis(300)).await,
        Err(Error::Timeout(_))
    ));
    drop(one);
    let st = wait_all_free(&s).await;
    assert_eq!(st.gate_holder, None);
    // The gate is back: another request completes.
    s.acquire_many(3).await.unwrap().release().await.unwrap();
}

/// Resize up and down under holders: never more than the current count out.
async fn resize_live<R: Runtime>() {
    let prefix = common::unique_prefix("resize");
    let a = sem::<R>(&prefix, 4).await;
    let b = sem::<R>(&prefix, 4).await;
    let held: Vec<_> = futures::future::join_all((0..4).map(|_| a.acquire()))
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    a.set_count(2).await.unwrap();
    assert_eq!(a.count(), 2);
    let st = a.inspect().await.unwrap();
    assert_eq!(
        (st.count, st.free, st.pending_reduction),
        (Some(2), 0, 2),
        "{st:?}"
    );
    drop(held);
    let st = eventually::<R, _, _, _>("reduction done", || async {
        let st = a.inspect().await.map_err(|e| e.to_string())?;
        if st.free == 2 && st.pending_reduction == 0 {
            Ok(st)
        } else {
            Err(format!("{st:?}"))
        }
    })
    .await;
    assert_eq!(st.held(), 0);
    assert_eq!(a.add_permits(3).await.unwrap(), 5);
    assert_eq!(a.reduce_permits(1).await.unwrap(), 4);
    assert!(matches!(
        a.reduce_permits(10).await,
        Err(Error::CountOutOfRange(_))
    ));
    // The other handle learns the count at its next renewal (lease 300 s: not yet) or
    // when it resizes itself.
    b.set_count(4).await.unwrap();
    assert_eq!(b.count(), 4);
    wait_all_free(&a).await;
}

/// A hard lease runs out unless extended, is reclaimed and reported lost.
async fn hard_lease<R: Runtime>() {
    let prefix = common::unique_prefix("hard");
    let s = sem::<R>(&prefix, 1).await;
    let other = sem::<R>(&prefix, 1).await;
    let p = s
        .acquire_with_lease(Duration::from_millis(2_000))
        .await
        .unwrap();
    let normal = other.try_acquire().await.unwrap();
    assert!(normal.is_none());
    // Extended twice: still held after more than its first lease (generous margins: a
    // loaded machine may wake late).
    sleep::<R>(Duration::from_millis(1_000)).await;
    p.extend(Duration::from_millis(2_000)).await.unwrap();
    sleep::<R>(Duration::from_millis(1_000)).await;
    p.extend(Duration::from_millis(2_000)).await.unwrap();
    assert!(!p.is_lost());
    // Then it runs out: lost, and the other handle gets the permit.
    p.lost().await;
    let again = other
        .acquire_timeout(Duration::from_secs(10))
        .await
        .unwrap();
    assert!(matches!(
        p.extend(Duration::from_secs(1)).await,
        Err(Error::LeaseLost)
    ));
    drop(again);
    let plain = s.acquire().await.unwrap();
    assert!(matches!(
        plain.extend(Duration::from_secs(1)).await,
        Err(Error::InvalidArgument(Invalid::NotHardLease))
    ));
    drop(plain);
    // Released normally, it goes back and leaves no lease behind.
    let q = s
        .try_acquire_with_lease(Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    q.release().await.unwrap();
    let st = wait_all_free(&s).await;
    assert!(st.holders.iter().all(|h| h.permits == 0));
}

runtime_tests! {
    many_all_or_nothing => many_basics();
    many_never_deadlocks => many_no_deadlock();
    many_not_starved_by_singles => many_not_starved();
    many_cancelled_gives_back => many_cancelled_midway();
    resize_live_semaphore => resize_live();
    hard_lease_expires_unless_extended => hard_lease();
}
