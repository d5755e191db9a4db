//! Leases under attack: expired by force, connections killed mid-storm, the server
//! restarted, a waiter holding an event signal expiring. Every scenario is one generic body
//! run on each enabled runtime, and checks Redis directly (pool + every held list, read in
//! one script), never only the library's own bookkeeping.

mod chaos_support;
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chaos_support::{
    creator_and_attacher, describe, event_base, event_totals, poll_until, raw_conn, sem_base,
    sem_totals, sleep, spawn, until_nothing_held, within, within_explained, Conservation, Totals,
};
use redis::AsyncCommands;
use redis_sync::{Error, Event, Runtime, Semaphore};

/// The longest a reclaim may take once a lease has ended: the lease, one renewal interval
/// (`lease / 3` + 20% jitter) and generous slack for a loaded 2-core machine.
fn reclaim_bound(lease: Duration) -> Duration {
    lease + lease.mul_f64(0.4) + Duration::from_secs(5)
}

/// Asserts that `fut` stays pending for `d` (a double grant would complete it).
async fn stays_pending<R: Runtime, F: std::future::Future + Unpin>(fut: &mut F, d: Duration)
where
    F::Output: std::fmt::Debug,
{
    let timer = sleep::<R>(d);
    futures::pin_mut!(timer);
    if let futures::future::Either::Left((out, _)) = futures::future::select(fut, timer).await {
        panic!("completed while it should still wait: {out:?}");
    }
}

/// A holder's lease is pushed into the past behind the library's back (`ZADD` on the
/// lease set): another handle blocked in `acquire` gets the permit, the old guard learns
/// it is lost, its `release()` reports `LeaseLost` and does not grow the pool.
async fn forced_expiry<R: Runtime>() {
    within::<R, _>(Duration::from_secs(60), "forced_expiry", async {
        const LEASE: Duration = Duration::from_secs(3);
        let client = common::client();
        let name = common::unique_prefix("forced_expiry");
        let base = sem_base(&name);
        let mut raw = raw_conn(&client).await;
        let (a, b) = creator_and_attacher::<R>(&client, &name, LEASE, 1).await;
        let cons = Conservation::start::<R>(&client, &name, 1);

        let p = a.acquire().await.unwrap();
        assert!(!p.is_lost());
        let holder = p.holder().to_owned();
        assert_eq!(
            sem_totals(&mut raw, &name).await.unwrap(),
            Totals {
                free: 0,
                held: 1,
                lists: 1
            }
        );
        let held_key = format!("{base}:held:{holder}");
        let n: usize = raw.llen(&held_key).await.unwrap();
        assert_eq!(n, 1, "the permit is not recorded under Permit::holder()");

        let b2 = b.clone();
        let waiter = spawn::<R, _, _>(async move { b2.acquire().await });
        let mut waiter = Box::pin(waiter.join());
        stays_pending::<R, _>(&mut waiter, Duration::from_millis(300)).await;

        // Expire the lease now, as if the holder's process had stalled.
        let score: Option<f64> = raw.zscore(format!("{base}:leases"), &holder).await.unwrap();
        assert!(score.is_some(), "holder {holder} has no lease entry");
        let _: i64 = redis::cmd("ZADD")
            .arg(format!("{base}:leases"))
            .arg("XX")
            .arg(1)
            .arg(&holder)
            .query_async(&mut raw)
            .await
            .unwrap();
        let started = Instant::now();

        let q = within_explained::<R, _, _>(
            reclaim_bound(LEASE),
            "waiter after forced expiry",
            waiter,
            describe(&client, &base),
        )
        .await
        .expect("the waiter failed instead of getting the reclaimed permit");
        assert_ne!(q.holder(), holder);
        within::<R, _>(
            reclaim_bound(LEASE),
            "lost() of the expired holder",
            p.lost(),
        )
        .await;
        assert!(p.is_lost());
        println!("reclaimed and reported lost after {:?}", started.elapsed());

        // The new holder owns the only permit; the old guard's release must not add one.
        assert_eq!(sem_totals(&mut raw, &name).await.unwrap().total(), 1);
        let r = p.release().await;
        assert!(matches!(r, Err(Error::LeaseLost)), "{r:?}");
        assert_eq!(
            sem_totals(&mut raw, &name).await.unwrap(),
            Totals {
                free: 0,
                held: 1,
                lists: 1
            }
        );
        assert!(a.try_acquire().await.unwrap().is_none());
        q.release().await.unwrap();

        let t = sem_totals(&mut raw, &name).await.unwrap();
        assert_eq!(
            t,
            Totals {
                free: 1,
                held: 0,
                lists: 0
            }
        );
        let st = a.inspect().await.unwrap();
        assert_eq!((st.count, st.free, st.held()), (Some(1), 1, 0), "{st:?}");
        // Still fully usable by the handle whose lease was lost.
        a.acquire_timeout(Duration::from_secs(5))
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
        cons.finish("forced_expiry").await;
    })
    .await;
}

/// A holder whose handle is closed keeps its permit only until its lease ends (nobody
/// renews it): a handle blocked in `acquire` then gets it, and the old guard's release
/// reports `LeaseLost`.
async fn closed_holder_expires<R: Runtime>() {
    within::<R, _>(Duration::from_secs(60), "closed_holder_expires", async {
        const LEASE: Duration = Duration::from_secs(1);
        let client = common::client();
        let name = common::unique_prefix("closed_holder");
        let mut raw = raw_conn(&client).await;
        let (a, b) = creator_and_attacher::<R>(&client, &name, LEASE, 2).await;
        let cons = Conservation::start::<R>(&client, &name, 2);
        let p1 = a.acquire().await.unwrap();
        let p2 = a.acquire().await.unwrap();
        a.close();
        let started = Instant::now();
        let (b1, b2) = (b.clone(), b.clone());
        let w1 = spawn::<R, _, _>(async move { b1.acquire().await });
        let w2 = spawn::<R, _, _>(async move { b2.acquire().await });
        // The closed handle's permits come back once its lease ends.
        let base = sem_base(&name);
        let q1 = within_explained::<R, _, _>(
            reclaim_bound(LEASE),
            "first waiter after the holder's lease ended",
            w1.join(),
            describe(&client, &base),
        )
        .await
        .unwrap();
        let q2 = within_explained::<R, _, _>(
            reclaim_bound(LEASE),
            "second waiter after the holder's lease ended",
            w2.join(),
            describe(&client, &base),
        )
        .await
        .unwrap();
        println!("both permits reclaimed after {:?}", started.elapsed());
        assert_eq!(sem_totals(&mut raw, &name).await.unwrap().total(), 2);
        let r1 = p1.release().await;
        assert!(matches!(r1, Err(Error::LeaseLost)), "{r1:?}");
        drop(p2);
        assert!(b.try_acquire().await.unwrap().is_none(), "the pool grew");
        q1.release().await.unwrap();
        q2.release().await.unwrap();
        // p2's drop-time release runs in the background: let it land.
        let t = until_nothing_held::<R>(&raw, &name, Duration::from_secs(10), "pool back").await;
        assert_eq!(
            t,
            Totals {
                free: 2,
                held: 0,
                lists: 0
            }
        );
        cons.finish("closed_holder_expires").await;
    })
    .await;
}

/// Many tasks on two handles acquire and release while another connection kills every
/// client connection of a private server over and over. Errors are allowed (and counted);
/// more than `count` inside at once, or a permit created or destroyed, is not. Afterwards
/// both handles work again and exactly `count` permits exist.
async fn client_kill_storm<R: Runtime>() {
    within::<R, _>(Duration::from_secs(80), "client_kill_storm", async {
        const COUNT: usize = 3;
        const LEASE: Duration = Duration::from_secs(5);
        const TASKS_PER_HANDLE: usize = 4;
        let server = common::RedisServer::start();
        let client = redis::Client::open(server.url.as_str()).unwrap();
        let name = common::unique_prefix("kill_storm");
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
        let killing = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let inside = Arc::new(AtomicUsize::new(0));
        let max_inside = Arc::new(AtomicUsize::new(0));
        let after_storm = Arc::new(AtomicUsize::new(0));

        let killer = {
            let client = client.clone();
            let killing = killing.clone();
            spawn::<R, _, _>(async move {
                let mut raw = raw_conn(&client).await;
                let (mut rounds, mut killed) = (0usize, 0usize);
                while killing.load(Ordering::Acquire) {
                    let n: usize = redis::cmd("CLIENT")
                        .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"])
                        .query_async(&mut raw)
                        .await
                        .expect("CLIENT KILL from the test's own connection");
                    rounds += 1;
                    killed += n;
                    sleep::<R>(Duration::from_millis(fastrand::u64(20..150))).await;
                }
                (rounds, killed)
            })
        };

        let mut workers = Vec::new();
        for (i, sem) in sems.iter().enumerate() {
            for _ in 0..TASKS_PER_HANDLE {
                let (sem, running, killing) = (sem.clone(), running.clone(), killing.clone());
                let (inside, max_inside, after) =
                    (inside.clone(), max_inside.clone(), after_storm.clone());
                workers.push(spawn::<R, _, _>(async move {
                    let (mut ok, mut timeouts, mut errors, mut lost) = (0usize, 0, 0, 0);
                    while running.load(Ordering::Acquire) {
                        let wait = Duration::from_millis(fastrand::u64(20..400));
                        match sem.acquire_timeout(wait).await {
                            Ok(p) => {
                                let now = inside.fetch_add(1, Ordering::AcqRel) + 1;
                                max_inside.fetch_max(now, Ordering::AcqRel);
                                assert!(
                                    now <= COUNT || p.is_lost(),
                                    "handle {i}: {now} holders inside with count {COUNT}"
                                );
                                ok += 1;
                                if !killing.load(Ordering::Acquire) {
                                    after.fetch_add(1, Ordering::Relaxed);
                                }
                                if fastrand::bool() {
                                    sleep::<R>(Duration::from_millis(fastrand::u64(0..3))).await;
                                }
                                inside.fetch_sub(1, Ordering::AcqRel);
                                if fastrand::bool() {
                                    match p.release().await {
                                        Ok(()) => {}
                                        Err(Error::LeaseLost) => lost += 1,
                                        Err(_) => errors += 1,
                                    }
                                } else {
                                    drop(p);
                                }
                            }
                            Err(Error::Timeout(_)) => timeouts += 1,
                            Err(_) => {
                                errors += 1;
                                sleep::<R>(Duration::from_millis(5)).await;
                            }
                        }
                    }
                    (ok, timeouts, errors, lost)
                }));
            }
        }

        sleep::<R>(Duration::from_secs(3)).await;
        killing.store(false, Ordering::Release);
        let (rounds, killed) = killer.join().await;
        // The storm is over: the handles must recover and grant again.
        poll_until::<R, _, _, _, _>(
            reclaim_bound(LEASE),
            "an acquisition after the storm",
            || {
                let n = after_storm.load(Ordering::Relaxed);
                async move {
                    if n >= 20 {
                        Ok(())
                    } else {
                        Err(n)
                    }
                }
            },
        )
        .await;
        running.store(false, Ordering::Release);
        let (mut ok, mut timeouts, mut errors, mut lost) = (0, 0, 0, 0);
        for w in workers {
            let (a, b, c, d) = w.join().await;
            ok += a;
            timeouts += b;
            errors += c;
            lost += d;
        }
        println!(
            "storm: {rounds} kill rounds, {killed} connections killed; acquired {ok}, \
             timeouts {timeouts}, errors {errors}, lost on release {lost}, max inside {}",
            max_inside.load(Ordering::Relaxed)
        );
        assert!(ok > 0);
        assert!(max_inside.load(Ordering::Relaxed) <= COUNT);

        // Permits taken by calls whose outcome was unknown come back (at once, or when the
        // lease of the generation that holds them ends).
        let raw = raw_conn(&client).await;
        let started = Instant::now();
        let t =
            until_nothing_held::<R>(&raw, &name, reclaim_bound(LEASE), "all permits free").await;
        println!("all permits free {:?} after the storm", started.elapsed());
        assert_eq!(
            t,
            Totals {
                free: COUNT,
                held: 0,
                lists: 0
            }
        );
        let st = sems[0].inspect().await.unwrap();
        assert_eq!(st.count, Some(COUNT as u32), "{st:?}");
        assert_eq!((st.free, st.held()), (COUNT, 0), "{st:?}");
        cons.finish("client_kill_storm").await;
        // Every handle can still take every permit.
        for sem in &sems {
            let mut ps = Vec::new();
            for _ in 0..COUNT {
                ps.push(sem.acquire_timeout(Duration::from_secs(5)).await.unwrap());
            }
            assert!(sem.try_acquire().await.unwrap().is_none());
            for p in ps {
                p.release().await.unwrap();
            }
        }
        drop(sems);
        drop(server);
    })
    .await;
}

/// The server restarts empty while permits are held and a task waits: the holders learn
/// their leases are gone, the semaphore is re-created with its count, works again, and the
/// old guards' releases do not grow the pool.
async fn server_restart<R: Runtime>() {
    within::<R, _>(Duration::from_secs(80), "server_restart", async {
        const COUNT: usize = 2;
        const LEASE: Duration = Duration::from_secs(2);
        let server = common::RedisServer::start();
        let client = redis::Client::open(server.url.as_str()).unwrap();
        let name = common::unique_prefix("restart");
        let (a, b) = creator_and_attacher::<R>(&client, &name, LEASE, COUNT as u32).await;
        let p1 = a.acquire().await.unwrap();
        let p2 = a.acquire().await.unwrap();
        let b2 = b.clone();
        let waiter = spawn::<R, _, _>(async move { b2.acquire().await });
        let mut waiter = Box::pin(waiter.join());
        stays_pending::<R, _>(&mut waiter, Duration::from_millis(200)).await;

        let mut server = chaos_support::blocking(move || {
            let mut server = server;
            server.restart();
            server
        })
        .await;
        let started = Instant::now();

        within::<R, _>(reclaim_bound(LEASE), "p1.lost() after restart", p1.lost()).await;
        within::<R, _>(reclaim_bound(LEASE), "p2.lost() after restart", p2.lost()).await;
        println!(
            "holders learnt of the restart after {:?}",
            started.elapsed()
        );

        // The waiter gets a permit of the re-created pool (or fails, which is allowed),
        // but does not hang while permits are free.
        let w = within::<R, _>(
            reclaim_bound(LEASE),
            "the waiter across the restart",
            waiter,
        )
        .await;
        println!(
            "waiter across the restart: {:?}",
            w.as_ref().map(|p| p.holder())
        );
        let q = within::<R, _>(
            reclaim_bound(LEASE),
            "acquire after restart",
            a.acquire_timeout(reclaim_bound(LEASE)),
        )
        .await
        .expect("the semaphore is not usable after the restart");
        assert!(!q.is_lost());

        let mut raw = raw_conn(&client).await;
        let st = a.inspect().await.unwrap();
        assert_eq!(st.count, Some(COUNT as u32), "{st:?}");
        assert_eq!(st.free + st.held(), COUNT, "{st:?}");
        assert_eq!(sem_totals(&mut raw, &name).await.unwrap().total(), COUNT);

        // The old guards' permits died with the server: releasing them must not add any.
        let r = p1.release().await;
        assert!(matches!(r, Err(Error::LeaseLost)), "{r:?}");
        drop(p2);
        q.release().await.unwrap();
        if let Ok(p) = w {
            p.release().await.unwrap();
        }
        let t = until_nothing_held::<R>(&raw, &name, Duration::from_secs(10), "pool settled").await;
        assert_eq!(
            t,
            Totals {
                free: COUNT,
                held: 0,
                lists: 0
            }
        );
        let mut ps = Vec::new();
        for _ in 0..COUNT {
            ps.push(b.acquire_timeout(Duration::from_secs(5)).await.unwrap());
        }
        assert!(a.try_acquire().await.unwrap().is_none(), "the pool grew");
        drop(ps);
        server.stop();
    })
    .await;
}

/// A signal that a waiter had taken (it sits in the waiter's held list) when the waiter's
/// lease expired goes back to the event, and a live waiter receives it, exactly once.
async fn event_expired_waiter<R: Runtime>() {
    within::<R, _>(Duration::from_secs(60), "event_expired_waiter", async {
        const LEASE: Duration = Duration::from_secs(2);
        let client = common::client();
        let name = common::unique_prefix("event_expired");
        let base = event_base(&name);
        let mut raw = raw_conn(&client).await;
        let ev = Event::<R>::builder(&client, &name)
            .lease_ttl(LEASE)
            .open()
            .await
            .unwrap();
        assert!(!ev.is_set().await.unwrap());

        // A waiter "crashed" after taking a signal: its token is in its held list and its
        // lease ended a long time ago.
        let fake = format!("crashed-{:08x}", fastrand::u32(..));
        let _: i64 = raw.rpush(format!("{base}:held:{fake}"), "1").await.unwrap();
        let _: i64 = raw.zadd(format!("{base}:leases"), &fake, 1).await.unwrap();
        assert!(!ev.is_set().await.unwrap(), "the signal is not pending yet");
        assert_eq!(event_totals(&mut raw, &name).await.unwrap().held, 1);

        let started = Instant::now();
        ev.wait_timeout(reclaim_bound(LEASE))
            .await
            .expect("the signal of the expired waiter never reached a live waiter");
        println!("signal returned and received after {:?}", started.elapsed());

        let t = event_totals(&mut raw, &name).await.unwrap();
        assert_eq!(
            t,
            Totals {
                free: 0,
                held: 0,
                lists: 0
            }
        );
        let still: Option<f64> = raw.zscore(format!("{base}:leases"), &fake).await.unwrap();
        assert!(
            still.is_none(),
            "the expired waiter still has a lease entry"
        );
        // Exactly one signal existed: a second wait must not get one.
        let r = ev.wait_timeout(Duration::from_millis(300)).await;
        assert!(matches!(r, Err(Error::Timeout(_))), "{r:?}");
        assert!(!ev.is_set().await.unwrap());
        // And the event still works both ways.
        ev.set().await.unwrap();
        ev.wait_timeout(Duration::from_secs(5)).await.unwrap();
        let t = event_totals(&mut raw, &name).await.unwrap();
        assert_eq!(
            t,
            Totals {
                free: 0,
                held: 0,
                lists: 0
            }
        );
    })
    .await;
}

/// A permit kept with `forget()` whose lease is expired behind the library's back: it is
/// reclaimed, and `Semaphore::release` then reports `LeaseLost` without growing the pool.
async fn forgotten_permit_expired<R: Runtime>() {
    within::<R, _>(Duration::from_secs(60), "forgotten_permit_expired", async {
        const LEASE: Duration = Duration::from_secs(2);
        let client = common::client();
        let name = common::unique_prefix("forgotten");
        let base = sem_base(&name);
        let raw = raw_conn(&client).await;
        let sem = Semaphore::<R>::builder(&client, &name)
            .lease_ttl(LEASE)
            .create(2)
            .await
            .unwrap();
        let cons = Conservation::start::<R>(&client, &name, 2);
        let p = sem.acquire().await.unwrap();
        let holder = p.holder().to_owned();
        p.detach();
        let _: i64 = redis::cmd("ZADD")
            .arg(format!("{base}:leases"))
            .arg("XX")
            .arg(1)
            .arg(&holder)
            .query_async(&mut raw.clone())
            .await
            .unwrap();
        let t = until_nothing_held::<R>(
            &raw,
            &name,
            reclaim_bound(LEASE),
            "forgotten permit reclaimed",
        )
        .await;
        assert_eq!(
            t,
            Totals {
                free: 2,
                held: 0,
                lists: 0
            }
        );
        let r = sem.release().await;
        assert!(matches!(r, Err(Error::LeaseLost)), "{r:?}");
        assert_eq!(
            sem_totals(&mut raw.clone(), &name).await.unwrap(),
            Totals {
                free: 2,
                held: 0,
                lists: 0
            }
        );
        let r = sem.release().await;
        assert!(matches!(r, Err(Error::NotAcquired)), "{r:?}");
        let a = sem.acquire_timeout(Duration::from_secs(5)).await.unwrap();
        let b = sem.acquire_timeout(Duration::from_secs(5)).await.unwrap();
        assert!(sem.try_acquire().await.unwrap().is_none(), "the pool grew");
        a.release().await.unwrap();
        b.release().await.unwrap();
        cons.finish("forgotten_permit_expired").await;
    })
    .await;
}

/// Event waiters on two handles while every client connection of a private server is
/// killed over and over and signals are pushed from the killer's own connection (which
/// survives). A signal may be lost only to a wait that reported an error (its consume
/// may have run unanswered); none may be delivered twice; the event works afterwards.
async fn event_kill_storm<R: Runtime>() {
    within::<R, _>(Duration::from_secs(80), "event_kill_storm", async {
        const SIGNALS: usize = 200;
        const LEASE: Duration = Duration::from_secs(3);
        let server = common::RedisServer::start();
        let client = redis::Client::open(server.url.as_str()).unwrap();
        let name = common::unique_prefix("event_storm");
        let base = event_base(&name);
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
        let killing = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let got = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(AtomicUsize::new(0));
        // One connection, spared by its own CLIENT KILL: it kills and it sets.
        let killer_conn = raw_conn(&client).await;
        let killer = {
            let (killing, mut raw) = (killing.clone(), killer_conn.clone());
            spawn::<R, _, _>(async move {
                let mut killed = 0usize;
                while killing.load(Ordering::Acquire) {
                    let n: usize = redis::cmd("CLIENT")
                        .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"])
                        .query_async(&mut raw)
                        .await
                        .unwrap();
                    killed += n;
                    sleep::<R>(Duration::from_millis(fastrand::u64(20..150))).await;
                }
                killed
            })
        };
        let setter = {
            let (mut raw, base) = (killer_conn.clone(), base.clone());
            spawn::<R, _, _>(async move {
                for _ in 0..SIGNALS {
                    let _: i64 = raw.lpush(&base, "1").await.unwrap();
                    sleep::<R>(Duration::from_millis(fastrand::u64(0..12))).await;
                }
            })
        };
        let mut waiters = Vec::new();
        for ev in &evs {
            for _ in 0..2 {
                let (ev, running, got, errors) =
                    (ev.clone(), running.clone(), got.clone(), errors.clone());
                waiters.push(spawn::<R, _, _>(async move {
                    while running.load(Ordering::Acquire) {
                        let wait = Duration::from_millis(fastrand::u64(50..300));
                        match ev.wait_timeout(wait).await {
                            Ok(()) => {
                                got.fetch_add(1, Ordering::AcqRel);
                            }
                            Err(Error::Timeout(_)) => {}
                            Err(_) => {
                                errors.fetch_add(1, Ordering::AcqRel);
                                sleep::<R>(Duration::from_millis(5)).await;
                            }
                        }
                    }
                }));
            }
        }
        setter.join().await;
        sleep::<R>(Duration::from_millis(500)).await;
        killing.store(false, Ordering::Release);
        let killed = killer.join().await;
        // Every signal still in Redis gets delivered once the storm is over.
        let started = Instant::now();
        let raw = raw_conn(&client).await;
        within_explained::<R, _, _>(
            reclaim_bound(LEASE) + Duration::from_secs(2),
            "every remaining signal delivered after the storm",
            poll_until::<R, _, _, _, _>(Duration::from_secs(3600), "", || {
                let mut raw = raw.clone();
                let name = name.clone();
                async move {
                    let t = event_totals(&mut raw, &name).await.unwrap();
                    if t.total() == 0 {
                        Ok(())
                    } else {
                        Err(t)
                    }
                }
            }),
            describe(&client, &base),
        )
        .await;
        running.store(false, Ordering::Release);
        for w in waiters {
            w.join().await;
        }
        let t = event_totals(&mut raw.clone(), &name).await.unwrap();
        let (got, errors) = (got.load(Ordering::Acquire), errors.load(Ordering::Acquire));
        println!(
            "event storm: {killed} connections killed; {SIGNALS} set, {got} received, \
             {errors} wait errors, left {t:?}, drained {:?} after the storm",
            started.elapsed()
        );
        assert!(got + t.total() <= SIGNALS, "a signal was delivered twice");
        assert!(
            SIGNALS - got - t.total() <= errors,
            "{} signals vanished but only {errors} waits reported an error",
            SIGNALS - got - t.total()
        );
        evs[0].set().await.unwrap();
        evs[1].wait_timeout(Duration::from_secs(5)).await.unwrap();
        drop(server);
    })
    .await;
}

per_runtime!(
    forced_expiry,
    closed_holder_expires,
    client_kill_storm,
    server_restart,
    event_expired_waiter,
    forgotten_permit_expired,
    event_kill_storm,
);
