//! `CountDownLatch`: counting, the typed errors (counting down past zero, setting the
//! count while it is still counting), waiters released at zero on several handles, a
//! waiter that still wakes when the latch reached zero and was set again before it could
//! look, and 50 waiters over 4 processes, one of them SIGKILLed and restarted mid-wait.
//! Every scenario runs on tokio, smol and async-std.

#[allow(unused_imports)]
mod common;
#[macro_use]
mod scenarios;
#[macro_use]
#[path = "scenarios/broadcast_kids.rs"]
mod kids;

use std::time::{Duration, Instant};

use common::RedisServer;
use futures::FutureExt;
use redis::AsyncCommands;
use redis_sync::{Coordinator, CountDownLatch, Error, Invalid, Runtime};
use scenarios::{eventually, raw_conn, spawn};

use kids::{within, Kid};

runtime_tests! {
    counting_and_typed_errors => counting_and_typed_errors();
    waiters_released_at_zero => waiters_released_at_zero();
    reset_before_the_waiter_looked => reset_before_the_waiter_looked();
    fifty_waiters_four_processes_one_killed => fifty_waiters_four_processes_one_killed();
    wrong_type => wrong_type();
}

/// Every public future is `Send` (checked at compile time).
#[cfg(feature = "tokio")]
#[allow(dead_code)]
fn futures_are_send(l: CountDownLatch<redis_sync::Tokio>) {
    fn send<T: Send>(_: T) {}
    send(l.wait());
    send(l.wait_timeout(Duration::from_secs(1)));
    send(l.try_set_count(1));
    send(l.set_count(1));
    send(l.count_down());
    send(l.count());
    send(l.inspect());
}

async fn open<R: Runtime>(client: &redis::Client, prefix: &str, name: &str) -> CountDownLatch<R> {
    CountDownLatch::<R>::builder(client, name)
        .key_prefix(prefix)
        .open()
        .await
        .unwrap()
}

async fn until_waiting<R: Runtime>(l: &CountDownLatch<R>, k: usize) {
    eventually::<R, _, _, _>("waiters registered", || async {
        match l.waiting() {
            w if w == k => Ok(()),
            w => Err(format!("{w} of {k} waiting")),
        }
    })
    .await;
}

async fn all_ok<R: Runtime, F>(what: &str, waits: Vec<F>, limit: Duration)
where
    F: std::future::Future<Output = redis_sync::Result<()>>,
{
    let n = waits.len();
    let done = within::<R, _>(limit, futures::future::join_all(waits))
        .await
        .unwrap_or_else(|| panic!("{what}: not all {n} waiters woke within {limit:?}"));
    for res in done {
        res.unwrap_or_else(|e| panic!("{what}: a wait failed: {e}"));
    }
}

/// The count, the results and the typed errors, step by step.
async fn counting_and_typed_errors<R: Runtime>() {
    let client = common::client();
    let prefix = common::unique_prefix("lt_count");
    let l = open::<R>(&client, &prefix, "boot").await;
    // Never set: open, count 0, nothing to count down.
    assert_eq!(l.count().await.unwrap(), 0);
    l.wait().await.unwrap();
    assert!(matches!(l.count_down().await, Err(Error::LatchAlreadyZero)));
    let st = l.inspect().await.unwrap();
    assert_eq!((st.count, st.generation, st.epoch), (0, 0, None));

    assert!(l.try_set_count(3).await.unwrap());
    assert_eq!(l.count().await.unwrap(), 3);
    // Setting the count while it counts: `false` (Redisson), or the typed error.
    assert!(!l.try_set_count(5).await.unwrap());
    assert!(!l.try_set_count(0).await.unwrap());
    match l.set_count(5).await {
        Err(Error::LatchNotZero { count }) => assert_eq!(count, 3),
        other => panic!("expected LatchNotZero, got {other:?}"),
    }
    assert_eq!(
        l.count().await.unwrap(),
        3,
        "a refused set changed the count"
    );
    assert!(matches!(
        l.wait_timeout(Duration::from_millis(200)).await,
        Err(Error::Timeout(_))
    ));
    assert_eq!(l.count_down().await.unwrap(), 2);
    assert_eq!(l.count_down().await.unwrap(), 1);
    assert_eq!(l.count_down().await.unwrap(), 0);
    // Past zero: the typed error, and nothing changes.
    assert!(matches!(l.count_down().await, Err(Error::LatchAlreadyZero)));
    assert_eq!(l.count().await.unwrap(), 0);
    l.wait().await.unwrap();
    let st = l.inspect().await.unwrap();
    assert_eq!((st.count, st.generation), (0, 1));
    assert!(st.epoch.is_some());

    // Reusable once at zero; `0` on an open latch changes nothing.
    assert!(l.try_set_count(0).await.unwrap());
    assert_eq!(l.count().await.unwrap(), 0);
    l.set_count(2).await.unwrap();
    assert_eq!(l.count().await.unwrap(), 2);
    assert!(matches!(
        l.wait_timeout(Duration::from_millis(200)).await,
        Err(Error::Timeout(_))
    ));
    let err = l.try_set_count(u64::MAX).await.unwrap_err();
    assert!(
        matches!(err, Error::InvalidArgument(Invalid::LatchCount(u64::MAX))),
        "{err:?}"
    );
    // Large counts are exact (no Lua float rounding).
    l.count_down().await.unwrap();
    l.count_down().await.unwrap();
    let big = (1u64 << 60) + 1;
    assert!(l.try_set_count(big).await.unwrap());
    assert_eq!(l.count_down().await.unwrap(), big - 1);
    assert_eq!(l.count().await.unwrap(), big - 1);
}

/// Waiters on two handles (a coordinator's and a private one) are all released when
/// another handle counts down to zero.
async fn waiters_released_at_zero<R: Runtime>() {
    let client = common::client();
    let prefix = common::unique_prefix("lt_zero");
    let sync = Coordinator::<R>::connect(&client).await.unwrap();
    let a = sync.latch("jobs").key_prefix(&prefix).open().await.unwrap();
    let b = open::<R>(&client, &prefix, "jobs").await;
    let c = open::<R>(&client, &prefix, "jobs").await;
    assert!(c.try_set_count(2).await.unwrap());
    let mut waits = Vec::new();
    for _ in 0..40 {
        let a = a.clone();
        waits.push(spawn::<R, _>(async move { a.wait().await }).boxed());
    }
    for _ in 0..10 {
        let b = b.clone();
        waits.push(spawn::<R, _>(async move { b.wait().await }).boxed());
    }
    until_waiting(&a, 40).await;
    until_waiting(&b, 10).await;
    assert_eq!(c.count_down().await.unwrap(), 1);
    // Still closed at 1: nobody returned.
    assert_eq!(a.waiting() + b.waiting(), 50);
    let started = Instant::now();
    assert_eq!(c.count_down().await.unwrap(), 0);
    all_ok::<R, _>("waiters at zero", waits, Duration::from_secs(10)).await;
    println!(
        "50 waiters on 2 handles released in {:?}",
        started.elapsed()
    );
    sync.shutdown().await.unwrap();
}

/// The latch reaches zero and is set again at once, while the waiter's blocking
/// connection has just been killed: it still wakes (the generation moved on), and a new
/// wait blocks on the new count.
async fn reset_before_the_waiter_looked<R: Runtime>() {
    let server = RedisServer::start();
    let client = redis::Client::open(server.url.as_str()).unwrap();
    let prefix = common::unique_prefix("lt_reset");
    let mut admin = raw_conn(&client).await;
    let l = open::<R>(&client, &prefix, "round").await;
    let other = open::<R>(&client, &prefix, "round").await;
    assert!(other.try_set_count(1).await.unwrap());
    let l2 = l.clone();
    let w = spawn::<R, _>(async move { l2.wait().await });
    until_waiting(&l, 1).await;
    let id = eventually::<R, _, _, _>("the waiter's blocking wait", || {
        let mut admin = admin.clone();
        async move {
            let list: String = redis::cmd("CLIENT")
                .arg("LIST")
                .query_async(&mut admin)
                .await
                .map_err(|e| e.to_string())?;
            list.lines()
                .filter(|l| l.contains("cmd=blmove"))
                .find_map(|l| {
                    l.split_whitespace()
                        .find_map(|f| f.strip_prefix("id="))
                        .map(str::to_owned)
                })
                .ok_or_else(|| "no blocked client yet".to_owned())
        }
    })
    .await;
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(&id)
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(killed, 1);
    assert_eq!(other.count_down().await.unwrap(), 0);
    assert!(other.try_set_count(1).await.unwrap());
    all_ok::<R, _>("waiter of a reset latch", vec![w], Duration::from_secs(10)).await;
    assert_eq!(l.count().await.unwrap(), 1);
    assert!(matches!(
        l.wait_timeout(Duration::from_millis(300)).await,
        Err(Error::Timeout(_))
    ));
    let gate: usize = admin
        .llen(format!("{prefix}:{{round}}:gate"))
        .await
        .unwrap();
    assert_eq!(gate, 0, "a set count left the gate open");
}

/// 50 waiters over 4 processes; one process is SIGKILLed mid-wait and started again
/// (its 13 waiters wait anew); counting down to zero releases all 4 live processes.
async fn fifty_waiters_four_processes_one_killed<R: Runtime>() {
    const EACH: [usize; 4] = [13, 13, 12, 12];
    let client = common::client();
    let prefix = common::unique_prefix("lt_procs");
    let l = open::<R>(&client, &prefix, "shards").await;
    assert!(l.try_set_count(3).await.unwrap());
    let runtime = kids::runtime_name::<R>();
    let spawn_kid = |i: usize, label: &str| {
        Kid::spawn(
            "latch",
            label,
            runtime,
            &[
                (kids::NAME, "shards".to_owned()),
                (kids::PREFIX, prefix.clone()),
                (kids::WAITERS, EACH[i].to_string()),
            ],
        )
    };
    let mut kids: Vec<Kid> = (0..EACH.len())
        .map(|i| spawn_kid(i, &format!("latch child {i}")))
        .collect();
    for kid in &mut kids {
        kid.expect::<R>("READY", Duration::from_secs(60)).await;
    }
    assert_eq!(l.count_down().await.unwrap(), 2);
    // Kill one waiting process and start it again: its waiters wait anew.
    kids[0].sigkill();
    kids[0] = spawn_kid(0, "latch child 0 (restarted)");
    kids[0].expect::<R>("READY", Duration::from_secs(60)).await;
    assert_eq!(l.count_down().await.unwrap(), 1);
    let started = Instant::now();
    assert_eq!(l.count_down().await.unwrap(), 0);
    for (i, kid) in kids.iter_mut().enumerate() {
        let woke = kid.expect::<R>("WOKE", Duration::from_secs(30)).await;
        assert_eq!(woke, EACH[i].to_string(), "{}", kid.label);
    }
    println!(
        "{} waiters in {} processes (one restarted) released in {:?}",
        EACH.iter().sum::<usize>(),
        EACH.len(),
        started.elapsed()
    );
    for kid in kids {
        kid.exits_ok::<R>(Duration::from_secs(30)).await;
    }
    assert!(matches!(l.count_down().await, Err(Error::LatchAlreadyZero)));
}

/// The child side of `fifty_waiters_four_processes_one_killed`.
async fn latch_child<R: Runtime>() {
    let client = common::client();
    let name = std::env::var(kids::NAME).unwrap();
    let prefix = std::env::var(kids::PREFIX).unwrap();
    let each: usize = std::env::var(kids::WAITERS).unwrap().parse().unwrap();
    let sync = Coordinator::<R>::connect(&client).await.unwrap();
    let l = sync.latch(&name).key_prefix(&prefix).open().await.unwrap();
    let waits: Vec<_> = (0..each)
        .map(|_| {
            let l = l.clone();
            spawn::<R, _>(async move { l.wait().await })
        })
        .collect();
    until_waiting(&l, each).await;
    kids::report("READY");
    let done = within::<R, _>(Duration::from_secs(60), futures::future::join_all(waits))
        .await
        .expect("woken");
    let ok = done.iter().filter(|r| r.is_ok()).count();
    kids::report(&format!("WOKE {ok}"));
    sync.shutdown().await.unwrap();
}

/// A count key holding something else is refused at open.
async fn wrong_type<R: Runtime>() {
    let client = common::client();
    let prefix = common::unique_prefix("lt_type");
    let mut raw = raw_conn(&client).await;
    let key = format!("{prefix}:{{taken}}:count");
    let _: () = raw.rpush(&key, "x").await.unwrap();
    let err = CountDownLatch::<R>::builder(&client, "taken")
        .key_prefix(&prefix)
        .open()
        .await
        .unwrap_err();
    match err {
        Error::WrongType { key: k, found } => assert_eq!((k, found.as_str()), (key, "list")),
        other => panic!("expected WrongType, got {other:?}"),
    }
}

/// The child side of the tests above. Does nothing unless spawned by one of them.
#[test]
#[ignore = "child process of the tests in this file; runs only when spawned by them"]
fn child() {
    let Ok(role) = std::env::var(kids::ROLE) else {
        return;
    };
    match role.as_str() {
        "latch" => run_child_on_runtime!(latch_child),
        other => panic!("unknown role {other}"),
    }
}
