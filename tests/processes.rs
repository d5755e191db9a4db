//! Real OS processes sharing one semaphore: mutual exclusion across 10 processes (as in
//! redsync's own test), holders SIGKILLed while holding, a holder paused with SIGSTOP
//! past its lease. The child processes are this test binary re-executed to run the
//! ignored test `child` with a role in its environment; they report over stdout lines
//! starting with `@@`, and the parent checks Redis itself, not the library's bookkeeping.

#![cfg(all(feature = "tokio", unix))]

mod chaos_support;
#[allow(unused_imports)] // not every test file uses all of the harness
mod common;
mod kids;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chaos_support::{
    describe, raw_conn, run_tokio, sem_base, sem_totals, sleep, spawn, within_explained, Totals,
};
use futures::StreamExt;
use redis::AsyncCommands;
use redis_sync::{Error, Semaphore, Tokio};

type R = Tokio;

use kids::{report, stdin_lines, Kid, ROLE};
const NAME: &str = "REDIS_SYNC_TEST_NAME";
const LEASE_MS: &str = "REDIS_SYNC_TEST_LEASE_MS";
const ITERATIONS: &str = "REDIS_SYNC_TEST_ITERATIONS";
const RUNTIME: &str = "REDIS_SYNC_TEST_RUNTIME";

/// The longest a reclaim may take once a lease has ended: the lease, one renewal interval
/// of the client that reclaims (`its lease / 3` + 20% jitter), and generous slack.
fn reclaim_bound(lease: Duration, reclaimer_lease: Duration) -> Duration {
    lease + reclaimer_lease.mul_f64(0.4) + Duration::from_secs(5)
}

fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(st.success(), "kill {sig} {pid} failed");
}

/// Records entering the critical section: returns how many are inside now, and keeps
/// the highest value seen and the number of entries. KEYS: inside, max, total.
const ENTER: &str = r#"
local n = redis.call('INCR', KEYS[1])
if n > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], n) end
redis.call('INCR', KEYS[3])
return n
"#;

/// (i) redsync's parity test: 10 processes on a semaphore of count 1 never overlap.
#[test]
fn ten_processes_never_overlap() {
    run_tokio(async {
        const KIDS: usize = 10;
        const EACH: usize = 20;
        let client = common::client();
        let name = common::unique_prefix("parity");
        let mut kids: Vec<Kid> = (0..KIDS)
            .map(|i| {
                Kid::spawn(
                    "parity",
                    &format!("parity child {i}"),
                    &[(NAME, name.clone()), (ITERATIONS, EACH.to_string())],
                )
            })
            .collect();
        for kid in &mut kids {
            let done = kid.expect("DONE", Duration::from_secs(60)).await;
            assert_eq!(done, EACH.to_string());
        }
        for kid in kids {
            kid.exits_ok(Duration::from_secs(20)).await;
        }
        let mut raw = raw_conn(&client).await;
        let max: usize = raw.get(format!("{name}:rec:max")).await.unwrap();
        let total: usize = raw.get(format!("{name}:rec:total")).await.unwrap();
        let inside: usize = raw.get(format!("{name}:rec:inside")).await.unwrap();
        println!("{total} entries, at most {max} inside at once");
        assert_eq!(max, 1, "processes overlapped on a semaphore of count 1");
        assert_eq!(total, KIDS * EACH);
        assert_eq!(inside, 0);
        assert_eq!(
            sem_totals(&mut raw, &name).await.unwrap(),
            Totals {
                free: 1,
                held: 0,
                lists: 0
            }
        );
    });
}

/// (ii) Holder processes are SIGKILLed while holding every permit; a client in the parent
/// is blocked in `acquire` meanwhile, so the reclaim must happen while every client waits.
#[test]
fn killed_holders_permits_come_back() {
    run_tokio(async {
        const COUNT: usize = 3;
        let kid_lease = Duration::from_secs(1);
        let lease = Duration::from_secs(2);
        let client = common::client();
        let name = common::unique_prefix("killed");
        let base = sem_base(&name);
        let sem = Arc::new(
            Semaphore::<R>::builder(&client, &name)
                .lease_ttl(lease)
                .create(COUNT as u32)
                .await
                .unwrap(),
        );
        let mut kids: Vec<Kid> = (0..COUNT)
            .map(|i| {
                Kid::spawn(
                    "holder",
                    &format!("holder {i}"),
                    &[
                        (NAME, name.clone()),
                        (LEASE_MS, kid_lease.as_millis().to_string()),
                    ],
                )
            })
            .collect();
        let mut holders = Vec::new();
        for kid in &mut kids {
            holders.push(kid.expect("HELD", Duration::from_secs(30)).await);
        }
        holders.sort();
        let mut raw = raw_conn(&client).await;
        assert_eq!(
            sem_totals(&mut raw, &name).await.unwrap(),
            Totals {
                free: 0,
                held: COUNT,
                lists: COUNT
            }
        );
        for h in &holders {
            let n: usize = raw.llen(format!("{base}:held:{h}")).await.unwrap();
            assert_eq!(n, 1, "child holder {h} has no permit recorded");
        }

        let mut waiters = Vec::new();
        for _ in 0..COUNT {
            let sem = sem.clone();
            waiters.push(spawn::<R, _, _>(async move { sem.acquire().await }));
        }
        sleep::<R>(Duration::from_millis(300)).await;
        for w in &mut waiters {
            assert!(
                !w.is_finished(),
                "a waiter got a permit held by a live child"
            );
        }

        for kid in &mut kids {
            kid.sigkill();
        }
        let killed = Instant::now();
        let mut permits = Vec::new();
        for w in waiters {
            let p = within_explained::<R, _, _>(
                reclaim_bound(kid_lease, lease),
                "blocked acquire after the holders were SIGKILLed",
                w.join(),
                describe(&client, &base),
            )
            .await
            .expect("acquire failed");
            assert!(!holders.contains(&p.holder().to_owned()));
            permits.push(p);
        }
        println!(
            "permits of killed holders back after {:?}",
            killed.elapsed()
        );
        assert_eq!(
            sem_totals(&mut raw, &name).await.unwrap(),
            Totals {
                free: 0,
                held: COUNT,
                lists: 1
            }
        );
        assert!(sem.try_acquire().await.unwrap().is_none());
        for p in permits {
            p.release().await.unwrap();
        }
        assert_eq!(
            sem_totals(&mut raw, &name).await.unwrap(),
            Totals {
                free: COUNT,
                held: 0,
                lists: 0
            }
        );
        let st = sem.inspect().await.unwrap();
        assert_eq!(
            (st.count, st.free, st.held()),
            (Some(COUNT as u32), COUNT, 0)
        );
    });
}

/// (iii) A holder paused with SIGSTOP past its lease: meanwhile another process gets the
/// permit; once resumed, the paused holder's guard reports the loss, its release returns
/// `LeaseLost`, and the pool never exceeds the count.
#[test]
fn paused_holder_loses_its_permit() {
    run_tokio(async {
        let lease = Duration::from_secs(1);
        let client = common::client();
        let name = common::unique_prefix("paused");
        let base = sem_base(&name);
        let sem = Semaphore::<R>::builder(&client, &name)
            .lease_ttl(lease)
            .create(1)
            .await
            .unwrap();
        let envs = [
            (NAME, name.clone()),
            (LEASE_MS, lease.as_millis().to_string()),
        ];
        let mut a = Kid::spawn("stop_holder", "paused holder", &envs);
        let a_holder = a.expect("HELD", Duration::from_secs(30)).await;
        signal(a.pid(), "-STOP");
        let paused = Instant::now();

        let mut b = Kid::spawn("taker", "taker", &envs);
        let b_holder = within_explained::<R, _, _>(
            reclaim_bound(lease, lease) + Duration::from_secs(5),
            "the taker getting the paused holder's permit",
            b.expect("GOT", Duration::from_secs(3600)),
            describe(&client, &base),
        )
        .await;
        println!(
            "taker got the permit {:?} after the pause",
            paused.elapsed()
        );
        assert_ne!(a_holder, b_holder);
        let mut raw = raw_conn(&client).await;
        assert_eq!(
            sem_totals(&mut raw, &name).await.unwrap(),
            Totals {
                free: 0,
                held: 1,
                lists: 1
            }
        );
        let n: usize = raw.llen(format!("{base}:held:{b_holder}")).await.unwrap();
        assert_eq!(n, 1, "the permit is not recorded under the taker");

        signal(a.pid(), "-CONT");
        a.send("CHECK");
        let lost = a.expect("LOST", Duration::from_secs(30)).await;
        assert_eq!(
            lost, "is_lost=true",
            "the resumed holder did not learn of its loss"
        );
        let released = a.expect("RELEASE", Duration::from_secs(30)).await;
        assert_eq!(released, "LeaseLost");
        a.exits_ok(Duration::from_secs(20)).await;
        // The resumed holder's release must not have grown the pool.
        assert_eq!(
            sem_totals(&mut raw, &name).await.unwrap(),
            Totals {
                free: 0,
                held: 1,
                lists: 1
            }
        );
        assert!(sem.try_acquire().await.unwrap().is_none());

        b.send("RELEASE");
        assert_eq!(b.expect("RELEASED", Duration::from_secs(30)).await, "Ok");
        b.exits_ok(Duration::from_secs(20)).await;
        assert_eq!(
            sem_totals(&mut raw, &name).await.unwrap(),
            Totals {
                free: 1,
                held: 0,
                lists: 0
            }
        );
    });
}

/// A process that drops its permit (and keeps one without a guard) and calls `shutdown`
/// before returning from its runtime, like a service in a rolling deploy, leaves every
/// permit free and no lease: 20 runs out of 20 on each runtime, with the default 300 s
/// lease, so a stranded permit could not come back during the test.
#[test]
fn shutdown_before_exit_leaves_nothing() {
    run_tokio(async {
        let client = common::client();
        let mut raw = raw_conn(&client).await;
        let mut runtimes = vec!["tokio"];
        if cfg!(feature = "smol") {
            runtimes.push("smol");
        }
        if cfg!(feature = "async-std") {
            runtimes.push("async-std");
        }
        for runtime in runtimes {
            let name = common::unique_prefix(&format!("shutdown-exit-{runtime}"));
            let creator = Semaphore::<R>::create(&client, &name, 2).await.unwrap();
            let leases_key = format!("{}:leases", sem_base(&name));
            let creators: Vec<String> = raw.zrange(&leases_key, 0, -1).await.unwrap();
            for run in 0..20 {
                let label = format!("shutdown child {runtime} #{run}");
                let kid = Kid::spawn(
                    "shutdown",
                    &label,
                    &[(NAME, name.clone()), (RUNTIME, runtime.to_owned())],
                );
                kid.exits_ok(Duration::from_secs(30)).await;
                let leases: Vec<String> = raw.zrange(&leases_key, 0, -1).await.unwrap();
                assert_eq!(leases, creators, "{label} left a lease");
                let totals = sem_totals(&mut raw, &name).await.unwrap();
                assert_eq!(
                    (totals.free, totals.held),
                    (2, 0),
                    "{label} left a permit held: {totals:?}"
                );
            }
            creator.shutdown().await.unwrap();
        }
    });
}

/// The child side of `shutdown_before_exit_leaves_nothing`, generic over the runtime.
async fn drop_then_shutdown<Rt: redis_sync::Runtime>(name: String) {
    let client = common::client();
    let sem = Semaphore::<Rt>::attach(&client, &name, Some(Duration::from_secs(10)))
        .await
        .unwrap();
    let dropped = sem.acquire().await.unwrap();
    sem.acquire().await.unwrap().detach();
    drop(dropped);
    sem.shutdown().await.unwrap();
}

/// The child side of the tests above. Does nothing unless spawned by one of them.
#[test]
#[ignore = "child process of the other tests in this file; runs only when spawned by them"]
fn child() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let name = std::env::var(NAME).expect("name");
    if role == "shutdown" {
        match std::env::var(RUNTIME).as_deref() {
            Ok("tokio") => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(drop_then_shutdown::<Tokio>(name)),
            #[cfg(feature = "smol")]
            Ok("smol") => smol::block_on(drop_then_shutdown::<redis_sync::Smol>(name)),
            #[cfg(feature = "async-std")]
            Ok("async-std") => {
                async_std::task::block_on(drop_then_shutdown::<redis_sync::AsyncStd>(name))
            }
            other => panic!("unknown runtime {other:?}"),
        }
        return;
    }
    let lease = std::env::var(LEASE_MS)
        .ok()
        .map(|ms| Duration::from_millis(ms.parse().unwrap()));
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let client = common::client();
            let mut builder = Semaphore::<R>::builder(&client, &name);
            if let Some(lease) = lease {
                builder = builder.lease_ttl(lease);
            }
            let mut stdin = stdin_lines();
            match role.as_str() {
                "parity" => {
                    let each: usize = std::env::var(ITERATIONS).unwrap().parse().unwrap();
                    let sem = builder.create(1).await.unwrap();
                    let mut rec = raw_conn(&client).await;
                    let enter = redis::Script::new(ENTER);
                    for i in 0..each {
                        let p = sem.acquire().await.unwrap();
                        let _: i64 = enter
                            .key(format!("{name}:rec:inside"))
                            .key(format!("{name}:rec:max"))
                            .key(format!("{name}:rec:total"))
                            .invoke_async(&mut rec)
                            .await
                            .unwrap();
                        let hold = Duration::from_micros(fastrand::u64(0..3000));
                        tokio::time::sleep(hold).await;
                        assert!(!p.is_lost());
                        let _: i64 = rec.decr(format!("{name}:rec:inside"), 1).await.unwrap();
                        if i + 1 == each || fastrand::bool() {
                            p.release().await.unwrap();
                        } else {
                            drop(p);
                        }
                    }
                    report(&format!("DONE {each}"));
                }
                "holder" => {
                    let sem = builder.attach(Some(Duration::from_secs(10))).await.unwrap();
                    let p = sem.acquire().await.unwrap();
                    report(&format!("HELD {}", p.holder()));
                    std::future::pending::<()>().await;
                }
                "stop_holder" => {
                    let sem = builder.attach(Some(Duration::from_secs(10))).await.unwrap();
                    let p = sem.acquire().await.unwrap();
                    report(&format!("HELD {}", p.holder()));
                    assert_eq!(stdin.next().await.as_deref(), Some("CHECK"));
                    let resolved = tokio::time::timeout(Duration::from_secs(10), p.lost())
                        .await
                        .is_ok();
                    report(&format!("LOST is_lost={}", resolved && p.is_lost()));
                    let r = p.release().await;
                    report(&format!(
                        "RELEASE {}",
                        match r {
                            Err(Error::LeaseLost) => "LeaseLost".to_owned(),
                            other => format!("{other:?}"),
                        }
                    ));
                }
                "taker" => {
                    let sem = builder.attach(Some(Duration::from_secs(10))).await.unwrap();
                    let p = sem.acquire().await.unwrap();
                    report(&format!("GOT {}", p.holder()));
                    assert_eq!(stdin.next().await.as_deref(), Some("RELEASE"));
                    match p.release().await {
                        Ok(()) => report("RELEASED Ok"),
                        Err(e) => report(&format!("RELEASED {e:?}")),
                    }
                }
                other => panic!("unknown role {other}"),
            }
        });
}
