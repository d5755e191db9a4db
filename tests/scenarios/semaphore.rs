//! Semaphore scenarios, each written once and generic over the runtime `R`. Instantiated
//! per runtime by `tests/semaphore.rs`.
//!
//! Port of redsync 2.0's test suite (both init strategies), plus what this library
//! promises beyond it (no permit lost to a timed-out wait, `inspect`, interop with Python
//! processes through `KeyLayout::Redsync2`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::{self, Either};
use redis::AsyncCommands;
use redis_sync::{Error, InitStrategy, KeyLayout, Runtime, Semaphore, SemaphoreBuilder};

use crate::common;
use crate::scenarios::{raw_conn, sleep, spawn, wait_all_free, wait_conserved, Barrier};

fn builder<R: Runtime>(
    client: &redis::Client,
    name: &str,
    strategy: InitStrategy,
) -> SemaphoreBuilder<R> {
    Semaphore::<R>::builder(client, name).init_strategy(strategy)
}

async fn create<R: Runtime>(
    client: &redis::Client,
    name: &str,
    count: u32,
    strategy: InitStrategy,
) -> Semaphore<R> {
    builder::<R>(client, name, strategy)
        .create(count)
        .await
        .unwrap_or_else(|e| panic!("create({name:?}, {count}) failed: {e}"))
}

/// Counts the tasks inside the critical section independently of Redis.
#[derive(Default)]
struct Occupancy {
    inside: AtomicUsize,
    max_seen: AtomicUsize,
    entries: AtomicUsize,
}

impl Occupancy {
    fn enter(&self) {
        let now = self.inside.fetch_add(1, SeqCst) + 1;
        self.max_seen.fetch_max(now, SeqCst);
        self.entries.fetch_add(1, SeqCst);
    }

    fn leave(&self) {
        self.inside.fetch_sub(1, SeqCst);
    }
}

/// Works inside the critical section for a few milliseconds.
async fn critical_section<R: Runtime>(occ: &Occupancy) {
    occ.enter();
    sleep::<R>(Duration::from_millis(fastrand::u64(1..=4))).await;
    occ.leave();
}

/// `tasks` tasks, each with a handle of its own (as separate processes would have),
/// created at the same instant, take turns `rounds` times on a semaphore of `count`
/// permits: never more than `count` inside at once.
pub async fn never_more_than_count_separate_handles<R: Runtime>(
    strategy: InitStrategy,
    count: u32,
    tasks: usize,
    rounds: usize,
) {
    let client = common::client();
    let name = common::unique_prefix("exclusion_separate");
    let occ = Arc::new(Occupancy::default());
    let barrier = Barrier::new(tasks);
    let mut joins = Vec::new();
    for _ in 0..tasks {
        let (client, name, occ, barrier) =
            (client.clone(), name.clone(), occ.clone(), barrier.clone());
        joins.push(spawn::<R, _>(async move {
            barrier.wait().await;
            let sem = create::<R>(&client, &name, count, strategy).await;
            for _ in 0..rounds {
                let permit = sem.acquire().await.unwrap();
                critical_section::<R>(&occ).await;
                permit.release().await.unwrap();
            }
            sem
        }));
    }
    let mut sems = Vec::new();
    for j in joins {
        sems.push(j.await);
    }
    let max = occ.max_seen.load(SeqCst);
    println!("count {count}, {tasks} tasks x {rounds} rounds: at most {max} inside at once");
    assert_eq!(occ.entries.load(SeqCst), tasks * rounds);
    assert!(
        max <= count as usize,
        "{max} tasks inside a semaphore of {count}"
    );
    assert!(max >= 1);
    wait_all_free(&sems[0]).await;
}

/// The same through one handle shared by every task (local queue, local handoff).
pub async fn never_more_than_count_shared_handle<R: Runtime>(
    strategy: InitStrategy,
    count: u32,
    tasks: usize,
    rounds: usize,
) {
    let client = common::client();
    let name = common::unique_prefix("exclusion_shared");
    let sem = Arc::new(create::<R>(&client, &name, count, strategy).await);
    let occ = Arc::new(Occupancy::default());
    let barrier = Barrier::new(tasks);
    let mut joins = Vec::new();
    for i in 0..tasks {
        let (sem, occ, barrier) = (sem.clone(), occ.clone(), barrier.clone());
        joins.push(spawn::<R, _>(async move {
            barrier.wait().await;
            for r in 0..rounds {
                let permit = sem.acquire().await.unwrap();
                critical_section::<R>(&occ).await;
                // Both ways of giving back: the explicit release and the guard's drop.
                if (i + r) % 2 == 0 {
                    permit.release().await.unwrap();
                } else {
                    drop(permit);
                }
            }
        }));
    }
    for j in joins {
        j.await;
    }
    let max = occ.max_seen.load(SeqCst);
    println!("count {count}, {tasks} tasks x {rounds} rounds on one handle: at most {max} inside");
    assert_eq!(occ.entries.load(SeqCst), tasks * rounds);
    assert!(
        max <= count as usize,
        "{max} tasks inside a semaphore of {count}"
    );
    wait_all_free(&sem).await;
}

/// `create` refuses counts outside 1..=4096 before touching Redis, and accepts the bounds.
pub async fn count_out_of_range<R: Runtime>(strategy: InitStrategy) {
    let client = common::client();
    let name = common::unique_prefix("count_range");
    for bad in [0u32, 4097, 42000, u32::MAX] {
        match builder::<R>(&client, &name, strategy).create(bad).await {
            Err(Error::CountOutOfRange(n)) => assert_eq!(n, i64::from(bad)),
            other => panic!("create({bad}): expected CountOutOfRange, got {other:?}"),
        }
    }
    // Nothing was created by the refused calls.
    let st = builder::<R>(&client, &name, strategy)
        .inspect()
        .await
        .unwrap();
    assert_eq!(st.count, None, "{st:?}");
    assert_eq!(st.free, 0);

    let one = create::<R>(&client, &format!("{name}:one"), 1, strategy).await;
    assert_eq!(one.count(), 1);
    wait_all_free(&one).await;
    let max = create::<R>(&client, &format!("{name}:max"), 4096, strategy).await;
    assert_eq!(max.count(), 4096);
    let st = wait_all_free(&max).await;
    assert_eq!(st.free, 4096);
}

/// `Semaphore::release` without a permit kept by `forget` is `NotAcquired`, also while a
/// guarded permit is held (that one is released through its guard).
pub async fn release_without_acquire<R: Runtime>(strategy: InitStrategy) {
    let client = common::client();
    let name = common::unique_prefix("release_unacquired");
    let sem = create::<R>(&client, &name, 2, strategy).await;
    assert!(matches!(sem.release().await, Err(Error::NotAcquired)));

    let permit = sem.acquire().await.unwrap();
    assert!(matches!(sem.release().await, Err(Error::NotAcquired)));
    let st = sem.inspect().await.unwrap();
    assert_eq!((st.free, st.held()), (1, 1), "{st:?}");
    permit.release().await.unwrap();
    assert!(matches!(sem.release().await, Err(Error::NotAcquired)));
    wait_all_free(&sem).await;
}

/// `acquire_timeout` on a full semaphore fails with `Timeout`, also for timeouts below
/// Redis's 100 ms timer tick (enforced on the client), from the holder's handle and from
/// another; a timeout long enough succeeds when the holder releases; nothing is lost.
pub async fn acquire_timeout<R: Runtime>(strategy: InitStrategy) {
    let client = common::client();
    let name = common::unique_prefix("acquire_timeout");
    let sem = create::<R>(&client, &name, 1, strategy).await;
    let other = Arc::new(create::<R>(&client, &name, 1, strategy).await);
    let held = sem.acquire().await.unwrap();

    for (handle, label) in [(&sem, "holder's handle"), (&*other, "other handle")] {
        for ms in [10u64, 150] {
            let t = Duration::from_millis(ms);
            let start = Instant::now();
            let res = handle.acquire_timeout(t).await;
            println!(
                "acquire_timeout({ms} ms) on the {label} returned after {:?}",
                start.elapsed()
            );
            match res {
                Err(Error::Timeout(d)) => assert_eq!(d, t),
                other => panic!("expected Timeout, got {other:?}"),
            }
        }
    }

    // A waiter with a generous timeout gets the permit when it is released.
    let waiter = {
        let other = other.clone();
        spawn::<R, _>(async move {
            let p = other.acquire_timeout(Duration::from_secs(30)).await?;
            p.release().await
        })
    };
    held.release().await.unwrap();
    waiter.await.unwrap();
    wait_all_free(&sem).await;
}

/// Timed-out or dropped waits racing with releases never lose a permit (redsync 2.0 loses
/// one when a BLPOP is cancelled after the server popped): after many such races (by
/// `acquire_timeout`, by dropping `acquire` in a `select`, by dropping `try_acquire`
/// mid-call), every permit is back.
pub async fn timeouts_racing_releases<R: Runtime>(strategy: InitStrategy) {
    const ROUNDS: usize = 30;
    let client = common::client();
    let name = common::unique_prefix("timeout_race");
    let holder = Arc::new(create::<R>(&client, &name, 1, strategy).await);
    let waiter = Arc::new(create::<R>(&client, &name, 1, strategy).await);
    let mut got = 0;
    for round in 0..ROUNDS {
        let permit = holder.acquire().await.unwrap();
        let release_after = Duration::from_micros(fastrand::u64(0..4000));
        let releaser = spawn::<R, _>(async move {
            sleep::<R>(release_after).await;
            permit.release().await.unwrap();
        });
        let t = Duration::from_micros(fastrand::u64(500..4000));
        let res = match round % 3 {
            0 => waiter.acquire_timeout(t).await.map(Some),
            1 => {
                let acquire = waiter.acquire();
                let stop = sleep::<R>(t);
                futures::pin_mut!(acquire);
                futures::pin_mut!(stop);
                match future::select(acquire, stop).await {
                    Either::Left((res, _)) => res.map(Some),
                    Either::Right(((), _)) => Ok(None),
                }
            }
            _ => {
                sleep::<R>(t).await;
                let attempt = waiter.try_acquire();
                let stop = sleep::<R>(Duration::from_micros(fastrand::u64(0..300)));
                futures::pin_mut!(attempt);
                futures::pin_mut!(stop);
                match future::select(attempt, stop).await {
                    Either::Left((res, _)) => res,
                    Either::Right(((), _)) => Ok(None),
                }
            }
        };
        match res {
            Ok(Some(p)) => {
                got += 1;
                drop(p);
            }
            Ok(None) | Err(Error::Timeout(_)) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
        releaser.await;
    }
    println!("{got} of {ROUNDS} racing waits got the permit");
    let st = wait_all_free(&holder).await;
    assert_eq!(st.free, 1);
}

/// `attach` learns the count set by the creator; the attached handle shares the permits.
pub async fn attach_learns_count<R: Runtime>(strategy: InitStrategy) {
    let client = common::client();
    let name = common::unique_prefix("attach");
    let creator = create::<R>(&client, &name, 5, strategy).await;
    let worker = Semaphore::<R>::attach(&client, &name, Some(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(worker.count(), 5);
    let mut permits = Vec::new();
    for _ in 0..3 {
        permits.push(worker.acquire().await.unwrap());
    }
    for _ in 0..2 {
        permits.push(creator.acquire().await.unwrap());
    }
    assert!(worker.try_acquire().await.unwrap().is_none());
    assert!(creator.try_acquire().await.unwrap().is_none());
    let st = creator.inspect().await.unwrap();
    assert_eq!((st.free, st.held()), (0, 5), "{st:?}");
    for p in permits {
        p.release().await.unwrap();
    }
    wait_all_free(&worker).await;
}

/// `attach` called before the creator waits for it (no count needed).
pub async fn attach_waits_for_creator<R: Runtime>(strategy: InitStrategy) {
    let client = common::client();
    let name = common::unique_prefix("attach_wait");
    let attaching = {
        let (client, name) = (client.clone(), name.clone());
        spawn::<R, _>(async move {
            Semaphore::<R>::attach(&client, &name, Some(Duration::from_secs(30))).await
        })
    };
    let creator = create::<R>(&client, &name, 4, strategy).await;
    let worker = attaching.await.unwrap();
    assert_eq!(worker.count(), 4);
    let p = worker.acquire().await.unwrap();
    p.release().await.unwrap();
    wait_all_free(&creator).await;
}

/// `attach` to a semaphore nobody creates fails with `Timeout`.
pub async fn attach_timeout<R: Runtime>() {
    let client = common::client();
    let name = common::unique_prefix("attach_timeout");
    for ms in [0u64, 150] {
        let t = Duration::from_millis(ms);
        let start = Instant::now();
        let res = Semaphore::<R>::attach(&client, &name, Some(t)).await;
        println!(
            "attach timeout {ms} ms returned after {:?}",
            start.elapsed()
        );
        match res {
            Err(Error::Timeout(d)) => assert_eq!(d, t),
            other => panic!("expected Timeout, got {other:?}"),
        }
    }
    // The failed attaches created nothing.
    let st = Semaphore::<R>::builder(&client, &name)
        .inspect()
        .await
        .unwrap();
    assert_eq!(st.count, None, "{st:?}");
}

/// `create` with another count than the existing one is `CountMismatch`; the semaphore is
/// untouched.
pub async fn count_mismatch<R: Runtime>(strategy: InitStrategy) {
    let client = common::client();
    let name = common::unique_prefix("mismatch");
    let sem = create::<R>(&client, &name, 2, strategy).await;
    for (requested, s) in [
        (3, strategy),
        (1, strategy),
        (3, InitStrategy::Lua),
        (3, InitStrategy::OptimisticLocking),
    ] {
        match builder::<R>(&client, &name, s).create(requested).await {
            Err(Error::CountMismatch {
                requested: r,
                actual,
            }) => assert_eq!((r, actual), (requested, 2)),
            other => panic!("expected CountMismatch, got {other:?}"),
        }
    }
    // Same count: idempotent.
    let again = create::<R>(&client, &name, 2, strategy).await;
    assert_eq!(again.count(), 2);
    let st = wait_all_free(&sem).await;
    assert_eq!(st.count, Some(2));
}

/// Eight handles create the same semaphore at the same instant: all succeed and the pool
/// has exactly `count` permits (not 8 x count). With `mixed`, the handles alternate init
/// strategies. A few rounds, each on a fresh name, to meet the race more than once.
pub async fn concurrent_creators<R: Runtime>(strategy: InitStrategy, mixed: bool) {
    let base = common::unique_prefix("concurrent_create");
    for round in 0..3 {
        concurrent_creators_once::<R>(&format!("{base}:{round}"), strategy, mixed).await;
    }
}

async fn concurrent_creators_once<R: Runtime>(name: &str, strategy: InitStrategy, mixed: bool) {
    const CREATORS: usize = 8;
    const COUNT: u32 = 3;
    let client = common::client();
    let barrier = Barrier::new(CREATORS);
    let mut joins = Vec::new();
    for i in 0..CREATORS {
        let s = match (mixed, i % 2) {
            (true, 1) => InitStrategy::OptimisticLocking,
            (true, _) => InitStrategy::Lua,
            (false, _) => strategy,
        };
        let (client, name, barrier) = (client.clone(), name.to_owned(), barrier.clone());
        joins.push(spawn::<R, _>(async move {
            barrier.wait().await;
            builder::<R>(&client, &name, s).create(COUNT).await
        }));
    }
    let mut sems = Vec::new();
    for j in joins {
        let sem = j.await.unwrap();
        assert_eq!(sem.count(), COUNT);
        sems.push(sem);
    }
    let st = sems[0].inspect().await.unwrap();
    assert_eq!(st.count, Some(COUNT), "{st:?}");
    assert_eq!(st.free, COUNT as usize, "{st:?}");
    assert_eq!(st.held(), 0, "{st:?}");
    // And they really share those permits.
    let mut permits = Vec::new();
    for sem in sems.iter().take(COUNT as usize) {
        permits.push(sem.acquire().await.unwrap());
    }
    for sem in &sems {
        assert!(sem.try_acquire().await.unwrap().is_none());
    }
    for p in permits {
        p.release().await.unwrap();
    }
    wait_all_free(&sems[CREATORS - 1]).await;
}

/// Creators racing with different counts: exactly one count wins; the others get
/// `CountMismatch` naming it, and the pool has exactly that many permits. A few rounds.
pub async fn concurrent_creators_disagree<R: Runtime>(strategy: InitStrategy) {
    let base = common::unique_prefix("create_disagree");
    for round in 0..3 {
        concurrent_creators_disagree_once::<R>(&format!("{base}:{round}"), strategy).await;
    }
}

async fn concurrent_creators_disagree_once<R: Runtime>(name: &str, strategy: InitStrategy) {
    const CREATORS: usize = 8;
    let client = common::client();
    let barrier = Barrier::new(CREATORS);
    let mut joins = Vec::new();
    for i in 0..CREATORS {
        let count = if i % 2 == 0 { 2 } else { 5 };
        let (client, name, barrier) = (client.clone(), name.to_owned(), barrier.clone());
        joins.push(spawn::<R, _>(async move {
            barrier.wait().await;
            (
                count,
                builder::<R>(&client, &name, strategy).create(count).await,
            )
        }));
    }
    let mut winners = HashSet::new();
    let mut losers = Vec::new();
    let mut sems = Vec::new();
    for j in joins {
        match j.await {
            (count, Ok(sem)) => {
                assert_eq!(sem.count(), count);
                winners.insert(count);
                sems.push(sem);
            }
            (count, Err(Error::CountMismatch { requested, actual })) => {
                assert_eq!(requested, count);
                losers.push(actual);
            }
            (count, Err(e)) => panic!("create({count}): unexpected error {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "several counts won: {winners:?}");
    let won = *winners.iter().next().unwrap();
    assert!(losers.iter().all(|&a| a == won), "{losers:?} vs {won}");
    assert_eq!(sems.len() + losers.len(), CREATORS);
    let st = wait_all_free(&sems[0]).await;
    assert_eq!(st.count, Some(won));
    assert_eq!(st.free, won as usize);
}

/// `try_acquire` takes free permits and answers `None` when the semaphore is full.
pub async fn try_acquire_when_full<R: Runtime>(strategy: InitStrategy) {
    let client = common::client();
    let name = common::unique_prefix("try_acquire");
    let sem = create::<R>(&client, &name, 2, strategy).await;
    let other = create::<R>(&client, &name, 2, strategy).await;
    let a = sem.try_acquire().await.unwrap().expect("a free permit");
    let b = other.try_acquire().await.unwrap().expect("a free permit");
    assert!(sem.try_acquire().await.unwrap().is_none());
    assert!(other.try_acquire().await.unwrap().is_none());
    let st = sem.inspect().await.unwrap();
    assert_eq!((st.free, st.held()), (0, 2), "{st:?}");
    a.release().await.unwrap();
    let c = other
        .try_acquire()
        .await
        .unwrap()
        .expect("the released permit");
    assert!(sem.try_acquire().await.unwrap().is_none());
    b.release().await.unwrap();
    c.release().await.unwrap();
    wait_all_free(&sem).await;
}

/// `Permit::forget` keeps the permit held by the handle (redsync's `acquire()`);
/// `Semaphore::release` gives it back (redsync's `release()`), once per forgotten permit.
pub async fn forget_then_release<R: Runtime>(strategy: InitStrategy) {
    let client = common::client();
    let name = common::unique_prefix("forget");
    let sem = create::<R>(&client, &name, 3, strategy).await;
    sem.acquire().await.unwrap().detach();
    sem.acquire().await.unwrap().detach();
    let st = sem.inspect().await.unwrap();
    assert_eq!((st.free, st.held()), (1, 2), "{st:?}");
    let guarded = sem.acquire().await.unwrap();
    assert!(sem.try_acquire().await.unwrap().is_none());

    sem.release().await.unwrap();
    let st = sem.inspect().await.unwrap();
    assert_eq!((st.free, st.held()), (1, 2), "{st:?}");
    sem.release().await.unwrap();
    assert!(matches!(sem.release().await, Err(Error::NotAcquired)));
    guarded.release().await.unwrap();
    assert!(matches!(sem.release().await, Err(Error::NotAcquired)));
    wait_all_free(&sem).await;
}

/// `close` fails a waiting acquire and every later one with `Closed`; a permit held
/// through the closed handle can still be released; other handles are not affected.
pub async fn close_fails_acquires<R: Runtime>(strategy: InitStrategy) {
    let client = common::client();
    let name = common::unique_prefix("close");
    let owner = create::<R>(&client, &name, 2, strategy).await;
    let closing = Arc::new(create::<R>(&client, &name, 2, strategy).await);
    let held = owner.acquire().await.unwrap();
    let held_by_closing = closing.acquire().await.unwrap();

    let waiting = {
        let closing = closing.clone();
        spawn::<R, _>(async move { closing.acquire().await.map(drop) })
    };
    // Give the waiter a moment to queue up, so that close usually meets a waiting
    // acquire. The assertions hold whichever comes first.
    sleep::<R>(Duration::from_millis(30)).await;
    assert!(!closing.is_closed());
    closing.close();
    assert!(closing.is_closed());
    match waiting.await {
        Err(Error::Closed) => {}
        other => panic!("waiting acquire: expected Closed, got {other:?}"),
    }
    assert!(matches!(closing.acquire().await, Err(Error::Closed)));
    assert!(matches!(closing.try_acquire().await, Err(Error::Closed)));
    assert!(matches!(
        closing.acquire_timeout(Duration::from_secs(1)).await,
        Err(Error::Closed)
    ));
    closing.close(); // idempotent

    // What the closed handle holds can still be given back.
    held_by_closing.release().await.unwrap();
    let st = wait_conserved(&owner).await;
    assert_eq!((st.free, st.held()), (1, 1), "{st:?}");

    // The other handle is unaffected.
    held.release().await.unwrap();
    let p = owner
        .acquire_timeout(Duration::from_secs(30))
        .await
        .unwrap();
    p.release().await.unwrap();
    wait_all_free(&owner).await;
}

/// Dropping a handle gives back the permits it kept with `Permit::forget` (they are not
/// leaked until their lease expires).
pub async fn dropping_handle_returns_forgotten_permits<R: Runtime>(strategy: InitStrategy) {
    let client = common::client();
    let name = common::unique_prefix("drop_forgotten");
    let observer = create::<R>(&client, &name, 3, strategy).await;
    let sem = create::<R>(&client, &name, 3, strategy).await;
    sem.acquire().await.unwrap().detach();
    sem.acquire().await.unwrap().detach();
    let st = observer.inspect().await.unwrap();
    assert_eq!((st.free, st.held()), (1, 2), "{st:?}");
    drop(sem);
    let st = wait_all_free(&observer).await;
    assert_eq!(st.free, 3);
}

/// Explicit release reports `Ok`, a dropped guard gives the permit back in the background,
/// and `inspect` shows the holder while a permit is held.
pub async fn release_reports_ok<R: Runtime>(strategy: InitStrategy) {
    let client = common::client();
    let name = common::unique_prefix("release_ok");
    let sem = create::<R>(&client, &name, 2, strategy).await;
    let p = sem.acquire().await.unwrap();
    let holder = p.holder().to_owned();
    assert!(!p.is_lost());
    let st = sem.inspect().await.unwrap();
    assert_eq!(st.count, Some(2));
    assert_eq!((st.free, st.held()), (1, 1), "{st:?}");
    let h = st
        .holders
        .iter()
        .find(|h| h.id == holder)
        .expect("the holder is listed");
    assert_eq!(h.permits, 1);
    assert!(h.lease_remaining.is_some(), "{h:?}");
    let res: redis_sync::Result<()> = p.release().await;
    assert!(res.is_ok(), "explicit release: {res:?}");

    let q = sem.acquire().await.unwrap();
    drop(q); // released in the background
    wait_all_free(&sem).await;
}

/// `KeyLayout::Redsync2` stores the exact key names and values of redsync 2.0:
/// `{prefix}:{name}:list` holds `count` tokens "42" and `{prefix}:{name}:meta` has field
/// `count`; a trailing ':' of the prefix is ignored.
pub async fn redsync2_key_layout<R: Runtime>(strategy: InitStrategy) {
    let client = common::client();
    let prefix = common::unique_prefix("redsync2_layout");
    let name = "jobs";
    let list = format!("{prefix}:{name}:list");
    let meta = format!("{prefix}:{name}:meta");
    let sem = builder::<R>(&client, name, strategy)
        .key_prefix(&format!("{prefix}:"))
        .key_layout(KeyLayout::Redsync2)
        .create(3)
        .await
        .unwrap();
    let mut raw = raw_conn(&client).await;
    let kind: String = redis::cmd("TYPE")
        .arg(&list)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(kind, "list");
    let tokens: Vec<String> = raw.lrange(&list, 0, -1).await.unwrap();
    assert_eq!(tokens, vec!["42"; 3]);
    let kind: String = redis::cmd("TYPE")
        .arg(&meta)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(kind, "hash");
    let count: Option<String> = raw.hget(&meta, "count").await.unwrap();
    assert_eq!(count.as_deref(), Some("3"));
    // Both keys expire when every client is gone, like redsync's.
    for key in [&list, &meta] {
        let ttl: i64 = raw.pttl(key).await.unwrap();
        assert!(ttl > 0, "{key} has no TTL ({ttl})");
    }

    let p = sem.acquire().await.unwrap();
    let n: usize = raw.llen(&list).await.unwrap();
    assert_eq!(n, 2);
    p.release().await.unwrap();
    let tokens: Vec<String> = raw.lrange(&list, 0, -1).await.unwrap();
    assert_eq!(tokens, vec!["42"; 3]);
    wait_all_free(&sem).await;
}

/// The default layout puts the name in a hash tag: `{prefix}:{<name>}:list`.
pub async fn default_key_layout<R: Runtime>(strategy: InitStrategy) {
    let client = common::client();
    let prefix = common::unique_prefix("default_layout");
    let sem = builder::<R>(&client, "jobs", strategy)
        .key_prefix(&prefix)
        .create(2)
        .await
        .unwrap();
    let mut raw = raw_conn(&client).await;
    let tokens: Vec<String> = raw
        .lrange(format!("{prefix}:{{jobs}}:list"), 0, -1)
        .await
        .unwrap();
    assert_eq!(tokens.len(), 2);
    let count: Option<u32> = raw
        .hget(format!("{prefix}:{{jobs}}:meta"), "count")
        .await
        .unwrap();
    assert_eq!(count, Some(2));
    wait_all_free(&sem).await;
}

/// A Python redsync 2.0 process (simulated with its raw commands: BLPOP to acquire,
/// RPUSH "42" to release) and a Rust handle share one semaphore created by Rust.
pub async fn python_interop_rust_creates<R: Runtime>(strategy: InitStrategy) {
    let client = common::client();
    let prefix = common::unique_prefix("interop");
    let name = "shared";
    let list = format!("{prefix}:{name}:list");
    let meta = format!("{prefix}:{name}:meta");
    let sem = Arc::new(
        builder::<R>(&client, name, strategy)
            .key_prefix(&prefix)
            .key_layout(KeyLayout::Redsync2)
            .create(2)
            .await
            .unwrap(),
    );
    let mut py = raw_conn(&client).await;

    // Python's create(count=2) reads the count and agrees.
    let count: Option<String> = py.hget(&meta, "count").await.unwrap();
    assert_eq!(count.as_deref(), Some("2"));

    // Python acquires one permit.
    let (key, token): (String, String) = redis::cmd("BLPOP")
        .arg(&list)
        .arg(0)
        .query_async(&mut py)
        .await
        .unwrap();
    assert_eq!((key.as_str(), token.as_str()), (list.as_str(), "42"));

    // Rust gets the other one, and then none.
    let rust_permit = sem.try_acquire().await.unwrap().expect("one permit left");
    assert!(sem.try_acquire().await.unwrap().is_none());

    // A Rust waiter is woken by Python's release.
    let rust_waiter = {
        let sem = sem.clone();
        spawn::<R, _>(async move { sem.acquire().await })
    };
    let _: i64 = py.rpush(&list, "42").await.unwrap();
    let second = rust_waiter.await.unwrap();
    assert!(sem.try_acquire().await.unwrap().is_none());

    // A Python waiter (its own connection, as a second process) is woken by Rust's release.
    let py_waiter = {
        let client = client.clone();
        let list = list.clone();
        spawn::<R, _>(async move {
            let mut py2 = raw_conn(&client).await;
            let got: Option<(String, String)> = redis::cmd("BLPOP")
                .arg(&list)
                .arg(30)
                .query_async(&mut py2)
                .await
                .unwrap();
            got
        })
    };
    rust_permit.release().await.unwrap();
    let got = py_waiter.await.expect("python waiter timed out");
    assert_eq!(got.1, "42");
    assert!(sem.try_acquire().await.unwrap().is_none());

    // Python releases what it holds; Rust releases its last permit.
    let _: i64 = py.rpush(&list, "42").await.unwrap();
    second.release().await.unwrap();
    let st = wait_all_free(&*sem).await;
    assert_eq!(st.free, 2);
    let tokens: Vec<String> = py.lrange(&list, 0, -1).await.unwrap();
    assert_eq!(tokens, vec!["42"; 2]);
}

/// A semaphore created by a Python redsync 2.0 process (simulated: RPUSH the tokens, HSET
/// the count) is joined by Rust: `attach` learns the count, `create` validates it, and the
/// permits are shared.
pub async fn python_interop_python_creates<R: Runtime>(strategy: InitStrategy) {
    let client = common::client();
    let prefix = common::unique_prefix("interop_py");
    let name = "shared";
    let list = format!("{prefix}:{name}:list");
    let meta = format!("{prefix}:{name}:meta");
    let mut py = raw_conn(&client).await;
    let _: () = redis::pipe()
        .atomic()
        .rpush(&list, vec!["42"; 3])
        .ignore()
        .hset(&meta, "count", 3)
        .ignore()
        .expire(&list, 300)
        .ignore()
        .expire(&meta, 300)
        .ignore()
        .query_async(&mut py)
        .await
        .unwrap();

    let attached = Semaphore::<R>::builder(&client, name)
        .key_prefix(&prefix)
        .key_layout(KeyLayout::Redsync2)
        .attach(Some(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(attached.count(), 3);
    let created = builder::<R>(&client, name, strategy)
        .key_prefix(&prefix)
        .key_layout(KeyLayout::Redsync2)
        .create(3)
        .await
        .unwrap();
    match builder::<R>(&client, name, strategy)
        .key_prefix(&prefix)
        .key_layout(KeyLayout::Redsync2)
        .create(4)
        .await
    {
        Err(Error::CountMismatch { requested, actual }) => assert_eq!((requested, actual), (4, 3)),
        other => panic!("expected CountMismatch, got {other:?}"),
    }

    // Python holds one; the Rust handles share the other two.
    let _: (String, String) = redis::cmd("BLPOP")
        .arg(&list)
        .arg(0)
        .query_async(&mut py)
        .await
        .unwrap();
    let a = attached.acquire().await.unwrap();
    let b = created.acquire().await.unwrap();
    assert!(attached.try_acquire().await.unwrap().is_none());
    assert!(created.try_acquire().await.unwrap().is_none());
    a.release().await.unwrap();
    b.release().await.unwrap();
    let _: i64 = py.rpush(&list, "42").await.unwrap();
    let st = wait_all_free(&created).await;
    assert_eq!(st.free, 3);
    let tokens: Vec<String> = py.lrange(&list, 0, -1).await.unwrap();
    assert_eq!(tokens, vec!["42"; 3]);
}

/// Many tasks waiting on one handle while permits are released by another: FIFO local
/// queue, a handful of blocking connections, and conservation while permits are held
/// (`free + held == count` at a quiet moment, not only at the end).
pub async fn conservation_while_held<R: Runtime>(strategy: InitStrategy) {
    let client = common::client();
    let name = common::unique_prefix("conservation");
    let a = create::<R>(&client, &name, 3, strategy).await;
    let b = Arc::new(create::<R>(&client, &name, 3, strategy).await);
    let held: Vec<_> = futures::future::join_all((0..3).map(|_| a.acquire()))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let st = wait_conserved(&a).await;
    assert_eq!((st.free, st.held()), (0, 3), "{st:?}");

    let waiters: Vec<_> = (0..6)
        .map(|_| {
            let b = b.clone();
            spawn::<R, _>(async move {
                let p = b.acquire().await.unwrap();
                p.release().await.unwrap();
            })
        })
        .collect();
    for p in held {
        p.release().await.unwrap();
    }
    for w in waiters {
        w.await;
    }
    wait_all_free(&a).await;
}

/// After a timed-out `acquire_timeout`, a permit released (and the release awaited) is
/// free for `try_acquire` at once: no waiter exists any more, so nothing may hold it.
/// Repeated to catch the race with the timed-out wait's leftover blocking move.
pub async fn try_acquire_after_timed_out_wait<R: Runtime>(strategy: InitStrategy) {
    let client = common::client();
    let name = common::unique_prefix("try_after_timeout");
    let holder = create::<R>(&client, &name, 1, strategy).await;
    let timed_out = create::<R>(&client, &name, 1, strategy).await;
    let third = create::<R>(&client, &name, 1, strategy).await;
    let mut misses = Vec::new();
    for round in 0..30 {
        let p = holder.acquire().await.unwrap();
        assert!(matches!(
            timed_out.acquire_timeout(Duration::from_millis(20)).await,
            Err(Error::Timeout(_))
        ));
        p.release().await.unwrap();
        // Nobody waits and nobody holds: the permit must be free.
        match third.try_acquire().await.unwrap() {
            Some(p) => p.release().await.unwrap(),
            None => {
                let st = third.inspect().await.unwrap();
                misses.push(format!("round {round}: {st:?}"));
            }
        }
        wait_all_free(&holder).await;
    }
    assert!(
        misses.is_empty(),
        "try_acquire found no free permit although nobody held or waited:\n{}",
        misses.join("\n")
    );
}
