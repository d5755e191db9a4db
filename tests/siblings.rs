//! Handles of one semaphore on one coordinator ("siblings") hand released permits to each
//! other at once, the move recorded right after by a `TRANSFER` script: the permit moves
//! from the giver's holder to the receiver's in Redis, with no blocking wait. Every scenario checks the permit is where
//! Redis says it is, counts holders inside with an independent counter, and ends with
//! every permit back in the pool. Runs on tokio, smol and async-std.

#[allow(unused_imports)]
mod common;
#[macro_use]
mod scenarios;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::unique_prefix;
use futures::FutureExt;
use redis_sync::{Coordinator, Error, Permit, Runtime, Semaphore};
use scenarios::*;

async fn handles<R: Runtime>(
    sync: &Coordinator<R>,
    prefix: &str,
    count: u32,
    n: usize,
) -> Vec<Semaphore<R>> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            sync.semaphore("shared")
                .key_prefix(prefix)
                .create(count)
                .await
                .unwrap(),
        );
    }
    out
}

async fn waiting<R: Runtime>(sem: &Semaphore<R>, n: usize) {
    eventually::<R, _, _, _>("the handle's waits queued", || async {
        let w = sem.stats().waiting;
        if w == n {
            Ok(())
        } else {
            Err(format!("{w} waiting"))
        }
    })
    .await;
}

/// `a` takes the only permit and `b` waits for it: returns `a`'s permit, `b`'s acquire
/// (spawned), and `b`'s holder id once Redis shows its lease (read through `observer`).
async fn one_holds_one_waits<R: Runtime>(
    a: &Semaphore<R>,
    b: &Semaphore<R>,
    observer: &Semaphore<R>,
) -> (
    Permit<R>,
    impl std::future::Future<Output = redis_sync::Result<Permit<R>>>,
    String,
) {
    let held_by_a = a.acquire().await.unwrap();
    let a_holder = held_by_a.holder().to_owned();
    let b_waits = spawn::<R, _>({
        let b = b.clone();
        async move { b.acquire().await }
    });
    waiting(b, 1).await;
    let b_holder = eventually::<R, _, _, _>("the waiting sibling's lease", || async {
        let st = observer.inspect().await.map_err(|e| e.to_string())?;
        st.holders
            .iter()
            .find(|h| h.id != a_holder)
            .map(|h| h.id.clone())
            .ok_or_else(|| format!("{st:?}"))
    })
    .await;
    (held_by_a, b_waits, b_holder)
}

/// A permit released by one handle goes to the sibling that waits, recorded under the
/// sibling's holder in Redis, by one transfer and no blocking wait.
async fn released_permit_moves_to_the_waiting_sibling<R: Runtime>() {
    let prefix = unique_prefix("siblings-move");
    let client = common::client();
    let sync = Coordinator::<R>::connect(&client).await.unwrap();
    let hs = handles(&sync, &prefix, 1, 3).await;
    let (a, b, c) = (hs[0].clone(), hs[1].clone(), hs[2].clone());
    let held_by_a = a.acquire().await.unwrap();
    let b_waits = spawn::<R, _>({
        let b = b.clone();
        async move { b.acquire().await }
    });
    waiting(&b, 1).await;
    let c_waits = spawn::<R, _>({
        let c = c.clone();
        async move { c.acquire().await }
    });
    waiting(&c, 1).await;
    held_by_a.release().await.unwrap();
    let held_by_b = b_waits.await.unwrap();
    assert_eq!(a.stats().handed_to_siblings, 1, "one transfer");
    let st = b.inspect().await.unwrap();
    assert_eq!(st.free, 0);
    let holder = st
        .holders
        .iter()
        .find(|h| h.permits == 1)
        .expect("a holder with the permit");
    assert_eq!(holder.id, held_by_b.holder(), "recorded under the receiver");
    assert_eq!(st.held(), 1);
    // First come, first served among siblings: C waited after B.
    assert_eq!(c.stats().waiting, 1);
    held_by_b.release().await.unwrap();
    let held_by_c = c_waits.await.unwrap();
    assert_eq!(b.stats().handed_to_siblings, 1);
    held_by_c.release().await.unwrap();
    // Nobody waits: back to the pool.
    assert_eq!(c.stats().handed_to_siblings, 0);
    wait_all_free(&a).await;
}

/// The receiver's lease ended behind its back while it waited: it is handed the permit at
/// once (a hop is decided locally, as local handoff is), then told the lease is lost when
/// the move finds the lease gone; the token, still in the giver's list, goes back to the
/// pool, and the receiver's next permit comes under a new lease.
async fn receiver_with_an_ended_lease_is_told_and_the_permit_comes_back<R: Runtime>() {
    let prefix = unique_prefix("siblings-ended");
    let client = common::client();
    let sync = Coordinator::<R>::connect(&client).await.unwrap();
    let hs = handles(&sync, &prefix, 1, 2).await;
    let (a, b) = (hs[0].clone(), hs[1].clone());
    let (held_by_a, b_waits, b_old) = one_holds_one_waits(&a, &b, &a).await;
    let mut raw = raw_conn(&client).await;
    let _: () = redis::cmd("ZADD")
        .arg(format!("{prefix}:{{shared}}:leases"))
        .arg("XX")
        .arg(1)
        .arg(&b_old)
        .query_async(&mut raw)
        .await
        .unwrap();
    held_by_a.release().await.unwrap();
    let held_by_b = b_waits.await.unwrap();
    // Rarely, the receiver's blocking wait ended just before and found its lease gone: it
    // then waits under a new lease, which the permit goes to.
    if held_by_b.holder() == b_old {
        held_by_b.lost().await;
        // The token went back while the told task still holds its guard.
        wait_all_free(&a).await;
        assert!(matches!(held_by_b.release().await, Err(Error::LeaseLost)));
    } else {
        drop(held_by_b);
    }
    let again = b.acquire().await.unwrap();
    assert_ne!(again.holder(), b_old, "served under a new lease");
    drop(again);
    wait_all_free(&a).await;
}

/// The move's reply is lost: the shared connection goes silent just before a release, so
/// the sibling's task gets the permit at once while `TRANSFER` never reaches Redis. The two
/// holders are entangled: the token stays recorded under the giver (never given back while
/// the receiver's task uses it), the receiver is not told anything (its permit is safe),
/// nobody else can take the permit, and once it is released both holders give back what
/// their lists hold: the permit is back in the pool, once.
async fn lost_move_entangles_and_the_permit_comes_back_once<R: Runtime>() {
    let server = common::RedisServer::start();
    let relay = common::relay::Relay::start_to_port(server.port);
    let direct = redis::Client::open(server.url.as_str()).unwrap();
    let relayed = redis::Client::open(relay.url()).unwrap();
    let prefix = unique_prefix("siblings-entangled");
    let sync = Coordinator::<R>::builder(&relayed)
        .response_timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap();
    let hs = handles(&sync, &prefix, 1, 2).await;
    let (a, b) = (hs[0].clone(), hs[1].clone());
    let other = Semaphore::<R>::builder(&direct, "shared")
        .key_prefix(&prefix)
        .create(1)
        .await
        .unwrap();
    let (held_by_a, b_waits, _) = one_holds_one_waits(&a, &b, &other).await;
    let a_holder = held_by_a.holder().to_owned();
    relay.blackhole_existing();
    held_by_a.release().await.unwrap();
    let held_by_b = b_waits.await.unwrap();
    assert_ne!(held_by_b.holder(), a_holder);
    // The coordinator reconnects after the timeout (new connections are forwarded).
    eventually::<R, _, _, _>("the coordinator back", || async {
        b.inspect().await.map(|_| ()).map_err(|e| e.to_string())
    })
    .await;
    for _ in 0..3 {
        let st = other.inspect().await.unwrap();
        let under_a = st
            .holders
            .iter()
            .find(|h| h.id == a_holder)
            .map(|h| h.permits);
        assert_eq!(under_a, Some(1), "still recorded under the giver: {st:?}");
        assert_eq!(st.free, 0, "{st:?}");
        assert!(
            other.try_acquire().await.unwrap().is_none(),
            "granted twice"
        );
        assert!(
            held_by_b.lost().now_or_never().is_none(),
            "the receiver is safe"
        );
        sleep::<R>(Duration::from_millis(300)).await;
    }
    held_by_b.release().await.unwrap();
    wait_all_free(&other).await;
    // The permit is whole: another process takes it, then it is free again.
    drop(other.acquire().await.unwrap());
    wait_all_free(&other).await;
}

/// 16 handles on one coordinator, two tasks each, on a semaphore of 3, while connections
/// are killed, acquires time out and releases are dropped after one poll or not awaited
/// at all: never more than 3 inside (an independent counter), siblings do hand over, and
/// every permit is back in the pool at the end.
async fn siblings_under_faults_never_exceed_the_count<R: Runtime>() {
    const COUNT: usize = 3;
    let prefix = unique_prefix("siblings-faults");
    // A server of its own: the connections killed here are only this test's.
    let server = common::RedisServer::start();
    let client = redis::Client::open(server.url.as_str()).unwrap();
    let sync = Coordinator::<R>::builder(&client)
        .response_timeout(Duration::from_secs(2))
        .connect()
        .await
        .unwrap();
    let hs = handles(&sync, &prefix, COUNT as u32, 16).await;
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (i, sem) in hs.iter().enumerate() {
        for t in 0..2 {
            let (sem, inside, most, done) =
                (sem.clone(), inside.clone(), most.clone(), done.clone());
            tasks.push(spawn::<R, _>(async move {
                let mut rng = fastrand::Rng::with_seed((i * 2 + t) as u64);
                for _ in 0..200 {
                    let permit = match rng.u8(..10) {
                        0 => match sem.acquire_timeout(Duration::from_millis(2)).await {
                            Ok(p) => p,
                            Err(Error::Timeout(_))
                            | Err(Error::Redis(_))
                            | Err(Error::LeaseLost) => continue,
                            Err(e) => panic!("acquire_timeout: {e}"),
                        },
                        _ => match sem.acquire().await {
                            Ok(p) => p,
                            // A connection killed under a request of unknown outcome.
                            Err(Error::Redis(_)) | Err(Error::LeaseLost) => continue,
                            Err(e) => panic!("acquire: {e}"),
                        },
                    };
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    if rng.bool() {
                        sleep::<R>(Duration::from_micros(rng.u64(0..500))).await;
                    }
                    inside.fetch_sub(1, Ordering::SeqCst);
                    match rng.u8(..3) {
                        0 => drop(permit),
                        // Polled once, then dropped: the release completes on the runtime.
                        1 => drop(permit.release().now_or_never()),
                        _ => {
                            let _ = permit.release().await;
                        }
                    }
                }
                done.fetch_add(1, Ordering::SeqCst);
            }));
        }
    }
    let workers = tasks.len();
    let mut admin = raw_conn(&client).await;
    let mut kills = 0;
    while done.load(Ordering::SeqCst) < workers {
        sleep::<R>(Duration::from_millis(150)).await;
        // Every connection but the admin's: the shared one mid-transfer, blocking waits.
        let _: redis::RedisResult<i64> = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .arg("SKIPME")
            .arg("yes")
            .query_async(&mut admin)
            .await;
        kills += 1;
    }
    futures::future::join_all(tasks).await;
    assert!(kills > 0);
    let most = most.load(Ordering::SeqCst);
    assert!(most <= COUNT, "{most} inside at once on a count of {COUNT}");
    let handed: u64 = hs.iter().map(|s| s.stats().handed_to_siblings).sum();
    assert!(handed > 0, "siblings handed permits to each other");
    wait_all_free(&hs[0]).await;
}

/// A request for all the permits from another process is served while siblings hand
/// permits around: transfers respect the gate, as the fast path does.
async fn siblings_let_a_request_for_several_through<R: Runtime>() {
    const COUNT: u32 = 4;
    let prefix = unique_prefix("siblings-gate");
    let client = common::client();
    let sync = Coordinator::<R>::connect(&client).await.unwrap();
    let hs = handles(&sync, &prefix, COUNT, 8).await;
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for sem in hs.clone() {
        let (inside, most, stop) = (inside.clone(), most.clone(), stop.clone());
        tasks.push(spawn::<R, _>(async move {
            while stop.load(Ordering::SeqCst) == 0 {
                let permit = sem.acquire().await.unwrap();
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                inside.fetch_sub(1, Ordering::SeqCst);
                permit.release().await.unwrap();
            }
        }));
    }
    waiting(&hs[0], 1).await;
    let other = Semaphore::<R>::builder(&client, "shared")
        .key_prefix(&prefix)
        .create(COUNT)
        .await
        .unwrap();
    let all = match other
        .acquire_many_timeout(COUNT, Duration::from_secs(30))
        .await
    {
        Ok(all) => all,
        Err(e) => {
            let st = other.inspect().await;
            let stats: Vec<_> = hs.iter().map(|s| s.stats()).collect();
            panic!("not served while siblings hand over: {e}: {st:?} {stats:?}")
        }
    };
    assert_eq!(
        inside.load(Ordering::SeqCst),
        0,
        "nobody inside with all taken"
    );
    all.release().await.unwrap();
    stop.store(1, Ordering::SeqCst);
    futures::future::join_all(tasks).await;
    assert!(most.load(Ordering::SeqCst) <= COUNT as usize);
    assert!(hs.iter().map(|s| s.stats().handed_to_siblings).sum::<u64>() > 0);
    wait_all_free(&hs[0]).await;
}

/// Lowering the count while siblings hand permits around: the permits owed are destroyed
/// as they come back (transfers are refused while a reduction is pending), and then never
/// more than the new count are inside.
async fn lowered_count_is_honoured_between_siblings<R: Runtime>() {
    let prefix = unique_prefix("siblings-resize");
    let client = common::client();
    let sync = Coordinator::<R>::builder(&client).connect().await.unwrap();
    let hs = handles(&sync, &prefix, 6, 12).await;
    let inside = Arc::new(AtomicUsize::new(0));
    let most_after = Arc::new(AtomicUsize::new(0));
    let reduced = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for sem in hs.clone() {
        let (inside, most_after, reduced, stop) = (
            inside.clone(),
            most_after.clone(),
            reduced.clone(),
            stop.clone(),
        );
        tasks.push(spawn::<R, _>(async move {
            while stop.load(Ordering::SeqCst) == 0 {
                let permit = sem.acquire().await.unwrap();
                let counted = reduced.load(Ordering::SeqCst) == 1;
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                if counted {
                    most_after.fetch_max(now, Ordering::SeqCst);
                }
                sleep::<R>(Duration::from_micros(200)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                permit.release().await.unwrap();
            }
        }));
    }
    waiting(&hs[0], 1).await;
    hs[0].set_count(2).await.unwrap();
    eventually::<R, _, _, _>("the reduction paid", || async {
        let st = hs[0].inspect().await.map_err(|e| e.to_string())?;
        if st.count == Some(2) && st.pending_reduction == 0 {
            Ok(())
        } else {
            Err(format!("{st:?}"))
        }
    })
    .await;
    // Two permits exist from here on, held or free: at most 2 inside.
    reduced.store(1, Ordering::SeqCst);
    let granted = hs.iter().map(|s| s.stats().grants).sum::<u64>();
    eventually::<R, _, _, _>("every task went round again", || async {
        let now = hs.iter().map(|s| s.stats().grants).sum::<u64>();
        if now >= granted + 200 {
            Ok(())
        } else {
            Err(format!("{} more grants", now - granted))
        }
    })
    .await;
    stop.store(1, Ordering::SeqCst);
    futures::future::join_all(tasks).await;
    let most = most_after.load(Ordering::SeqCst);
    assert!(
        most <= 2,
        "{most} inside at once after lowering the count to 2"
    );
    wait_all_free(&hs[0]).await;
}

runtime_tests! {
    released_permit_moves_to_the_waiting_sibling => released_permit_moves_to_the_waiting_sibling();
    receiver_with_an_ended_lease => receiver_with_an_ended_lease_is_told_and_the_permit_comes_back();
    lost_move_entangles => lost_move_entangles_and_the_permit_comes_back_once();
    siblings_under_faults => siblings_under_faults_never_exceed_the_count();
    siblings_let_a_request_for_several_through => siblings_let_a_request_for_several_through();
    lowered_count_between_siblings => lowered_count_is_honoured_between_siblings();
}
