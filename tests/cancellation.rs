//! Cancellation at random points: acquire, try_acquire and event waits dropped after
//! random, very short delays, thousands of times on several tasks. Checked against an
//! independent in-process counter of holders inside, and Redis itself (pool + every held
//! list, read atomically): never more than `count` inside, no permit created or
//! destroyed, no signal swallowed or duplicated. Each scenario is one generic body run on
//! each enabled runtime.

mod chaos_support;
#[allow(unused_imports)] // not every test file uses all of the harness
mod common;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chaos_support::{
    describe, event_base, event_totals, poll_until, raw_conn, sem_base, sleep, spawn,
    until_nothing_held, within, within_explained, yield_now, Conservation, Totals,
};
use futures::future::{select, Either};
use redis_sync::{Error, Event, Permit, Runtime, Semaphore};

/// Leases are short enough that a permit which only comes back when a lease ends still
/// comes back within the test's bounds, and long enough never to end on their own here.
const LEASE: Duration = Duration::from_secs(5);

fn reclaim_bound() -> Duration {
    LEASE + LEASE.mul_f64(0.4) + Duration::from_secs(5)
}

/// Races `fut` against a timer of `d`; `None` when the timer won (and `fut` was dropped).
/// Half the time the timer is polled first, so that `fut` is also dropped when its result
/// arrived since it was last polled (a grant "at that instant").
async fn race<R: Runtime, F: Future>(fut: F, d: Duration) -> Option<F::Output> {
    let timer = sleep::<R>(d);
    futures::pin_mut!(fut);
    futures::pin_mut!(timer);
    if fastrand::bool() {
        match select(fut, timer).await {
            Either::Left((out, _)) => Some(out),
            Either::Right(_) => None,
        }
    } else {
        match select(timer, fut).await {
            Either::Left(_) => None,
            Either::Right((out, _)) => Some(out),
        }
    }
}

/// A random delay of 0 to 3 ms, in microseconds so that sub-millisecond races happen too.
fn short() -> Duration {
    Duration::from_micros(fastrand::u64(0..=3000))
}

/// Counts holders inside the critical section, independently of the library.
#[derive(Default)]
struct Inside {
    now: AtomicUsize,
    max: AtomicUsize,
    entries: AtomicUsize,
}

impl Inside {
    fn enter<R: Runtime>(&self, p: &Permit<R>, count: usize) {
        let n = self.now.fetch_add(1, Ordering::AcqRel) + 1;
        self.max.fetch_max(n, Ordering::AcqRel);
        self.entries.fetch_add(1, Ordering::Relaxed);
        assert!(
            n <= count || p.is_lost(),
            "{n} holders inside with count {count}"
        );
    }

    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Holds a granted permit briefly (or not at all), then releases or drops it.
async fn hold_and_give_back<R: Runtime>(p: Permit<R>, inside: &Inside, count: usize) {
    inside.enter(&p, count);
    match fastrand::u8(0..4) {
        0 => {}
        1 => yield_now().await,
        _ => sleep::<R>(Duration::from_micros(fastrand::u64(0..=2000))).await,
    }
    inside.leave();
    if fastrand::bool() {
        p.release().await.expect("release of a held permit");
    } else {
        drop(p);
    }
}

/// Waits until every permit is back in the pool (releases from `Drop` and of orphaned
/// calls run in the background) and checks there are exactly `count`.
async fn all_back<R: Runtime>(client: &redis::Client, name: &str, count: usize) {
    let started = Instant::now();
    let raw = raw_conn(client).await;
    let t =
        until_nothing_held::<R>(&raw, name, reclaim_bound(), "every permit back in the pool").await;
    let took = started.elapsed();
    if took > Duration::from_secs(2) {
        println!("WARNING: permits came back only after {took:?} (a lease had to end?)");
    }
    assert_eq!(
        t,
        Totals {
            free: count,
            held: 0,
            lists: 0
        }
    );
}

/// Each handle can still take every permit, and not one more.
async fn still_usable<R: Runtime>(client: &redis::Client, name: &str, sems: &[Arc<Semaphore<R>>]) {
    for sem in sems {
        let count = sem.count() as usize;
        let mut ps = Vec::new();
        for _ in 0..count {
            let p = within_explained::<R, _, _>(
                Duration::from_secs(10),
                "acquiring every permit after the storm",
                sem.acquire(),
                describe(client, &sem_base(name)),
            )
            .await
            .unwrap();
            ps.push(p);
        }
        assert!(
            sem.try_acquire().await.unwrap().is_none(),
            "more than count"
        );
        for p in ps {
            p.release().await.unwrap();
        }
    }
}

/// Acquires dropped at random points: `acquire_timeout` with 0–3 ms timeouts, and
/// `acquire` raced against 0–3 ms timers, on 6 tasks over 2 handles sharing 2 permits.
async fn dropped_acquires<R: Runtime>() {
    within::<R, _>(Duration::from_secs(80), "dropped_acquires", async {
        const COUNT: usize = 2;
        const TASKS_PER_HANDLE: usize = 3;
        const ITERATIONS: usize = 400;
        let client = common::client();
        let name = common::unique_prefix("dropped_acquires");
        let mut sems = Vec::new();
        for _ in 0..2 {
            sems.push(Arc::new(
                Semaphore::<R>::builder(&client, &name)
                    .lease_ttl(LEASE)
                    .create(COUNT as u32)
                    .await
                    .unwrap(),
            ));
        }
        let cons = Conservation::start::<R>(&client, &name, COUNT);
        let inside = Arc::new(Inside::default());
        let mut tasks = Vec::new();
        for sem in &sems {
            for _ in 0..TASKS_PER_HANDLE {
                let (sem, inside) = (sem.clone(), inside.clone());
                tasks.push(spawn::<R, _, _>(async move {
                    let (mut got, mut cancelled) = (0usize, 0usize);
                    for _ in 0..ITERATIONS {
                        let res = if fastrand::bool() {
                            match sem.acquire_timeout(short()).await {
                                Err(Error::Timeout(_)) => None,
                                other => Some(other),
                            }
                        } else {
                            race::<R, _>(sem.acquire(), short()).await
                        };
                        match res {
                            Some(Ok(p)) => {
                                got += 1;
                                hold_and_give_back(p, &inside, COUNT).await;
                            }
                            Some(Err(e)) => panic!("acquire failed: {e}"),
                            None => {
                                cancelled += 1;
                                // Sometimes stay away for a moment, so that the cancelled
                                // wait is still queued when a permit is released.
                                if fastrand::bool() {
                                    sleep::<R>(short()).await;
                                }
                            }
                        }
                    }
                    (got, cancelled)
                }));
            }
        }
        let (mut got, mut cancelled) = (0, 0);
        for t in tasks {
            let (g, c) = t.join().await;
            got += g;
            cancelled += c;
        }
        println!(
            "acquired {got}, cancelled {cancelled}, max inside {}",
            inside.max.load(Ordering::Relaxed)
        );
        all_back::<R>(&client, &name, COUNT).await;
        let samples = cons.finish("dropped_acquires").await;
        println!("{samples} conservation samples");
        assert!(got > 0 && cancelled > 0, "the races never went both ways");
        assert_eq!(inside.entries.load(Ordering::Relaxed), got);
        assert!(inside.max.load(Ordering::Relaxed) <= COUNT);
        still_usable(&client, &name, &sems).await;
    })
    .await;
}

/// `try_acquire` futures polled 0–3 times (their request may already be on the wire) or
/// raced against sub-millisecond timers, then dropped.
async fn dropped_try_acquires<R: Runtime>() {
    within::<R, _>(Duration::from_secs(80), "dropped_try_acquires", async {
        const COUNT: usize = 3;
        const TASKS: usize = 4;
        const ITERATIONS: usize = 500;
        let client = common::client();
        let name = common::unique_prefix("dropped_try");
        let sem = Arc::new(
            Semaphore::<R>::builder(&client, &name)
                .lease_ttl(LEASE)
                .create(COUNT as u32)
                .await
                .unwrap(),
        );
        let cons = Conservation::start::<R>(&client, &name, COUNT);
        let inside = Arc::new(Inside::default());
        let mut tasks = Vec::new();
        for _ in 0..TASKS {
            let (sem, inside) = (sem.clone(), inside.clone());
            tasks.push(spawn::<R, _, _>(async move {
                let (mut got, mut dropped) = (0usize, 0usize);
                for _ in 0..ITERATIONS {
                    let res = if fastrand::u8(0..3) == 0 {
                        race::<R, _>(
                            sem.try_acquire(),
                            Duration::from_micros(fastrand::u64(0..300)),
                        )
                        .await
                    } else {
                        let mut fut = Box::pin(sem.try_acquire());
                        let mut out = None;
                        for _ in 0..fastrand::usize(0..=3) {
                            if let std::task::Poll::Ready(r) = futures::poll!(&mut fut) {
                                out = Some(r);
                                break;
                            }
                            yield_now().await;
                        }
                        out
                    };
                    match res {
                        Some(Ok(Some(p))) => {
                            got += 1;
                            hold_and_give_back(p, &inside, COUNT).await;
                        }
                        Some(Ok(None)) => {}
                        Some(Err(e)) => panic!("try_acquire failed: {e}"),
                        None => dropped += 1,
                    }
                }
                (got, dropped)
            }));
        }
        let (mut got, mut dropped) = (0, 0);
        for t in tasks {
            let (g, d) = t.join().await;
            got += g;
            dropped += d;
        }
        println!(
            "try_acquire: granted {got}, dropped {dropped}, max inside {}",
            inside.max.load(Ordering::Relaxed)
        );
        all_back::<R>(&client, &name, COUNT).await;
        cons.finish("dropped_try_acquires").await;
        assert!(got > 0 && dropped > 0, "the races never went both ways");
        assert!(inside.max.load(Ordering::Relaxed) <= COUNT);
        still_usable(&client, &name, &[sem]).await;
    })
    .await;
}

/// Event waits raced against 0–3 ms timers on 6 tasks over 2 handles while another task
/// sets `SIGNALS` signals: every signal is received exactly once.
async fn dropped_event_waits<R: Runtime>() {
    within::<R, _>(Duration::from_secs(80), "dropped_event_waits", async {
        const SIGNALS: usize = 300;
        const TASKS_PER_HANDLE: usize = 3;
        let client = common::client();
        let name = common::unique_prefix("dropped_waits");
        let mut evs = Vec::new();
        for _ in 0..2 {
            evs.push(Arc::new(
                Event::<R>::builder(&client, &name)
                    .lease_ttl(LEASE)
                    .open()
                    .await
                    .unwrap(),
            ));
        }
        let received = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut waiters = Vec::new();
        for ev in &evs {
            for _ in 0..TASKS_PER_HANDLE {
                let (ev, received, stop) = (ev.clone(), received.clone(), stop.clone());
                waiters.push(spawn::<R, _, _>(async move {
                    let mut cancelled = 0usize;
                    while !stop.load(Ordering::Acquire) {
                        let res = if fastrand::bool() {
                            match ev.wait_timeout(short()).await {
                                Err(Error::Timeout(_)) => None,
                                other => Some(other),
                            }
                        } else {
                            race::<R, _>(ev.wait(), short()).await
                        };
                        match res {
                            Some(Ok(())) => {
                                received.fetch_add(1, Ordering::AcqRel);
                            }
                            Some(Err(e)) => panic!("wait failed: {e}"),
                            None => cancelled += 1,
                        }
                    }
                    cancelled
                }));
            }
        }
        let setter = {
            let ev = evs[0].clone();
            spawn::<R, _, _>(async move {
                for i in 0..SIGNALS {
                    ev.set().await.unwrap();
                    if i % 3 == 0 {
                        sleep::<R>(Duration::from_micros(fastrand::u64(0..=2000))).await;
                    }
                }
            })
        };
        setter.join().await;
        let r = received.clone();
        let base = event_base(&name);
        within_explained::<R, _, _>(
            reclaim_bound(),
            "every signal received",
            poll_until::<R, _, _, _, _>(reclaim_bound() * 2, "", || {
                let n = r.load(Ordering::Acquire);
                async move {
                    if n >= SIGNALS {
                        Ok(())
                    } else {
                        Err(n)
                    }
                }
            }),
            async {
                format!(
                    "received {} of {SIGNALS}; {}",
                    received.load(Ordering::Acquire),
                    describe(&client, &base).await
                )
            },
        )
        .await;
        stop.store(true, Ordering::Release);
        let mut cancelled = 0;
        for w in waiters {
            cancelled += w.join().await;
        }
        // Signals taken for waits that were dropped go back in the background: let them
        // land, then nothing may be left over (a duplicate) or missing.
        let raw = raw_conn(&client).await;
        let t = poll_until::<R, _, _, _, _>(reclaim_bound(), "no signal in transit", || {
            let mut raw = raw.clone();
            let name = name.clone();
            async move {
                let t = event_totals(&mut raw, &name).await.unwrap();
                if t.held == 0 {
                    Ok(t)
                } else {
                    Err(t)
                }
            }
        })
        .await;
        let got = received.load(Ordering::Acquire);
        println!("signals: set {SIGNALS}, received {got}, waits cancelled {cancelled}, left {t:?}");
        assert!(cancelled > 0);
        assert_eq!(got + t.free, SIGNALS, "signals lost or duplicated: {t:?}");
        assert_eq!(got, SIGNALS, "a signal was delivered twice");
        assert!(!evs[1].is_set().await.unwrap());
        let r = evs[1].wait_timeout(Duration::from_millis(100)).await;
        assert!(matches!(r, Err(Error::Timeout(_))), "{r:?}");
    })
    .await;
}

per_runtime!(dropped_acquires, dropped_try_acquires, dropped_event_waits);
