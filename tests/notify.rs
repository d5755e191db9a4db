//! `Notify`, the broadcast event: set/clear/wait semantics, `notify_waiters` waking only
//! current waiters, one push serving every client blocked on the gate, wake-ups that
//! survive a killed blocking connection and a Redis restart, 1,000 waiters on one
//! blocking connection, and 1,000 waiters over 4 processes. Every scenario runs on tokio,
//! smol and async-std. Tests that count connections or blocked clients, or kill
//! connections, use a redis-server of their own.

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
use futures::StreamExt;
use redis::AsyncCommands;
use redis_sync::{Coordinator, CountDownLatch, Error, Invalid, Notify, Runtime};
use scenarios::{eventually, raw_conn, spawn};

use kids::{within, Kid};

runtime_tests! {
    set_wait_clear => set_wait_clear();
    clear_then_wait_blocks_again => clear_then_wait_blocks_again();
    notify_waiters_wakes_only_current => notify_waiters_wakes_only_current();
    one_push_serves_every_blocked_client => one_push_serves_every_blocked_client();
    killed_blocking_connection_still_wakes => killed_blocking_connection_still_wakes();
    lost_generation_detected_by_epoch => lost_generation_detected_by_epoch();
    redis_restart_then_notify_wakes => redis_restart_then_notify_wakes();
    thousand_waiters_one_blocking_connection => thousand_waiters_one_blocking_connection();
    thousand_waiters_over_four_processes => thousand_waiters_over_four_processes();
    coordinator_shutdown_fails_waiters => coordinator_shutdown_fails_waiters();
    last_waiter_leaving_ends_the_blocking_wait => last_waiter_leaving_ends_the_blocking_wait();
    few_blocking_connections_rotate => few_blocking_connections_rotate();
    through_the_readme_acl => through_the_readme_acl();
    bad_names_settings_and_types => bad_names_settings_and_types();
}

/// Waits are cancel safe, and every public future is `Send` (checked at compile time).
#[cfg(feature = "tokio")]
#[allow(dead_code)]
fn futures_are_send(n: Notify<redis_sync::Tokio>) {
    fn send<T: Send>(_: T) {}
    send(n.wait());
    send(n.wait_timeout(Duration::from_secs(1)));
    send(n.set());
    send(n.clear());
    send(n.is_set());
    send(n.notify_waiters());
    send(n.inspect());
}

async fn open<R: Runtime>(client: &redis::Client, prefix: &str, name: &str) -> Notify<R> {
    Notify::<R>::builder(client, name)
        .key_prefix(prefix)
        .open()
        .await
        .unwrap()
}

fn gate_key(prefix: &str, name: &str) -> String {
    format!("{prefix}:{{{name}}}:gate")
}

/// Connections the server has now (our admin connection included).
async fn connections(admin: &mut redis::aio::MultiplexedConnection) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(admin)
        .await
        .unwrap();
    list.lines().filter(|l| !l.trim().is_empty()).count()
}

async fn blocked_clients(admin: &mut redis::aio::MultiplexedConnection) -> usize {
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query_async(admin)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("blocked_clients:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(usize::MAX)
}

/// The ids of the clients blocked in `BLMOVE` now.
async fn blmove_clients(admin: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(admin)
        .await
        .unwrap();
    list.lines()
        .filter(|l| l.contains("cmd=blmove"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|f| f.strip_prefix("id="))
                .map(str::to_owned)
        })
        .collect()
}

/// Waits until `n` (and its clones) has `k` waiters registered.
async fn until_waiting<R: Runtime>(n: &Notify<R>, k: usize) {
    eventually::<R, _, _, _>("waiters registered", || async {
        match n.waiting() {
            w if w == k => Ok(()),
            w => Err(format!("{w} of {k} waiting")),
        }
    })
    .await;
}

/// Waits until the server has `k` blocked clients.
async fn until_blocked<R: Runtime>(admin: &mut redis::aio::MultiplexedConnection, k: usize) {
    for _ in 0..500 {
        if blocked_clients(admin).await == k {
            return;
        }
        scenarios::sleep::<R>(Duration::from_millis(20)).await;
    }
    panic!(
        "expected {k} blocked clients, have {}",
        blocked_clients(admin).await
    );
}

/// Every spawned wait finishes within `limit`, successfully.
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

/// `set` releases a waiter blocked before it and every later wait; `clear` closes it
/// again; `inspect` counts generations.
async fn set_wait_clear<R: Runtime>() {
    let client = common::client();
    let prefix = common::unique_prefix("nt_basic");
    let n = open::<R>(&client, &prefix, "go").await;
    assert!(!n.is_set().await.unwrap());
    let st = n.inspect().await.unwrap();
    assert_eq!(
        (st.is_set, st.generation, st.epoch.clone()),
        (false, 0, None)
    );
    match n.wait_timeout(Duration::from_millis(50)).await {
        Err(Error::Timeout(d)) => assert_eq!(d, Duration::from_millis(50)),
        other => panic!("expected Timeout, got {other:?}"),
    }

    // A waiter on another handle, blocked before the set.
    let other = open::<R>(&client, &prefix, "go").await;
    let o = other.clone();
    let w = spawn::<R, _>(async move { o.wait().await });
    until_waiting(&other, 1).await;
    n.set().await.unwrap();
    all_ok::<R, _>(
        "waiter blocked before set",
        vec![w],
        Duration::from_secs(10),
    )
    .await;
    assert!(n.is_set().await.unwrap());
    // Every later wait returns at once while set, on any handle.
    for _ in 0..3 {
        n.wait().await.unwrap();
        other.wait_timeout(Duration::from_secs(5)).await.unwrap();
    }
    n.set().await.unwrap();
    let st = n.inspect().await.unwrap();
    assert!(st.is_set);
    assert_eq!(st.generation, 2);
    assert!(st.epoch.is_some());
    assert_eq!(n.waiting() + other.waiting(), 0);
}

/// After `clear`, a wait blocks again (until the next `set`).
async fn clear_then_wait_blocks_again<R: Runtime>() {
    let client = common::client();
    let prefix = common::unique_prefix("nt_clear");
    let n = open::<R>(&client, &prefix, "go").await;
    n.set().await.unwrap();
    n.wait().await.unwrap();
    n.clear().await.unwrap();
    assert!(!n.is_set().await.unwrap());
    let started = Instant::now();
    assert!(matches!(
        n.wait_timeout(Duration::from_millis(300)).await,
        Err(Error::Timeout(_))
    ));
    assert!(started.elapsed() >= Duration::from_millis(300));
    // The timed-out wait left nothing behind: a new wait is released by the next set.
    let n2 = n.clone();
    let w = spawn::<R, _>(async move { n2.wait().await });
    until_waiting(&n, 1).await;
    n.set().await.unwrap();
    all_ok::<R, _>("wait after clear", vec![w], Duration::from_secs(10)).await;
}

/// `notify_waiters` wakes the waiters of every handle that wait now, and not later ones;
/// it leaves the notify clear and no mark in the gate.
async fn notify_waiters_wakes_only_current<R: Runtime>() {
    let client = common::client();
    let prefix = common::unique_prefix("nt_waiters");
    let sync = Coordinator::<R>::connect(&client).await.unwrap();
    let a = sync
        .notify("tick")
        .key_prefix(&prefix)
        .open()
        .await
        .unwrap();
    let b = open::<R>(&client, &prefix, "tick").await;
    let c = open::<R>(&client, &prefix, "tick").await;
    let mut waits = Vec::new();
    for _ in 0..50 {
        let a = a.clone();
        waits.push(spawn::<R, _>(async move { a.wait().await }).boxed());
    }
    for _ in 0..10 {
        let b = b.clone();
        waits.push(spawn::<R, _>(async move { b.wait().await }).boxed());
    }
    until_waiting(&a, 50).await;
    until_waiting(&b, 10).await;
    let before = c.inspect().await.unwrap().generation;
    c.notify_waiters().await.unwrap();
    all_ok::<R, _>("current waiters", waits, Duration::from_secs(10)).await;
    let st = c.inspect().await.unwrap();
    assert!(!st.is_set);
    assert_eq!(st.generation, before + 1);
    let mut raw = raw_conn(&client).await;
    let marks: usize = raw.llen(gate_key(&prefix, "tick")).await.unwrap();
    assert_eq!(marks, 0, "notify_waiters left a mark in the gate");
    // A wait that starts after it is not woken by it.
    for h in [&a, &b, &c] {
        assert!(matches!(
            h.wait_timeout(Duration::from_millis(300)).await,
            Err(Error::Timeout(_))
        ));
    }
    sync.shutdown().await.unwrap();
}

/// What the design relies on, checked on the server: a push and a removal inside one
/// script serve no blocked client, while `notify_waiters` (two commands) serves every
/// client blocked in `BLMOVE gate gate`, one after the other; then the same for 20
/// handles of the library, each with its own blocking connection.
async fn one_push_serves_every_blocked_client<R: Runtime>() {
    const RAW: usize = 20;
    let server = RedisServer::start();
    let client = redis::Client::open(server.url.as_str()).unwrap();
    let prefix = common::unique_prefix("nt_push");
    let gate = gate_key(&prefix, "go");
    let mut admin = raw_conn(&client).await;
    let n = open::<R>(&client, &prefix, "go").await;

    let mut raws = Vec::new();
    for _ in 0..RAW {
        let mut c = raw_conn(&client).await;
        let gate = gate.clone();
        raws.push(spawn::<R, _>(async move {
            redis::cmd("BLMOVE")
                .arg(&gate)
                .arg(&gate)
                .arg("LEFT")
                .arg("RIGHT")
                .arg(0)
                .query_async::<Option<String>>(&mut c)
                .await
        }));
    }
    until_blocked::<R>(&mut admin, RAW).await;
    let _: i64 = redis::cmd("EVAL")
        .arg("redis.call('RPUSH', KEYS[1], 'n'); redis.call('DEL', KEYS[1]); return 1")
        .arg(1)
        .arg(&gate)
        .query_async(&mut admin)
        .await
        .unwrap();
    // Blocked clients are served right after the command that pushed, before the next.
    assert_eq!(
        blocked_clients(&mut admin).await,
        RAW,
        "a push inside a script served a blocked client"
    );
    n.notify_waiters().await.unwrap();
    assert_eq!(
        blocked_clients(&mut admin).await,
        0,
        "notify_waiters left clients blocked"
    );
    let got = within::<R, _>(Duration::from_secs(10), futures::future::join_all(raws))
        .await
        .expect("raw BLMOVEs served");
    for g in got {
        assert_eq!(g.unwrap().as_deref(), Some("n"));
    }
    let len: usize = admin.llen(&gate).await.unwrap();
    assert_eq!(len, 0);

    // The library: 20 handles on one coordinator, a pump (a blocked client) each.
    let sync = Coordinator::<R>::connect(&client).await.unwrap();
    let mut handles = Vec::new();
    let mut waits = Vec::new();
    for _ in 0..RAW {
        let h = sync.notify("go").key_prefix(&prefix).open().await.unwrap();
        let h2 = h.clone();
        waits.push(spawn::<R, _>(async move { h2.wait().await }));
        handles.push(h);
    }
    for h in &handles {
        until_waiting(h, 1).await;
    }
    until_blocked::<R>(&mut admin, RAW).await;
    let started = Instant::now();
    n.notify_waiters().await.unwrap();
    all_ok::<R, _>("20 handles", waits, Duration::from_secs(10)).await;
    println!(
        "{RAW} handles blocked on the server woken by one notify_waiters in {:?}",
        started.elapsed()
    );
    sync.shutdown().await.unwrap();
}

/// A waiter whose blocking connection is killed just before the wake-up still wakes: by
/// `set` then `clear` at once (the gate is closed again before its new connection can
/// block), and by `notify_waiters`.
async fn killed_blocking_connection_still_wakes<R: Runtime>() {
    let server = RedisServer::start();
    let client = redis::Client::open(server.url.as_str()).unwrap();
    let prefix = common::unique_prefix("nt_killed");
    let mut admin = raw_conn(&client).await;
    let setter = open::<R>(&client, &prefix, "go").await;
    for how in ["set+clear", "notify_waiters"] {
        let n = open::<R>(&client, &prefix, "go").await;
        let n2 = n.clone();
        let w = spawn::<R, _>(async move { n2.wait().await });
        until_waiting(&n, 1).await;
        until_blocked::<R>(&mut admin, 1).await;
        let ids = blmove_clients(&mut admin).await;
        assert_eq!(ids.len(), 1, "{ids:?}");
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(&ids[0])
            .query_async(&mut admin)
            .await
            .unwrap();
        assert_eq!(killed, 1);
        if how == "set+clear" {
            setter.set().await.unwrap();
            setter.clear().await.unwrap();
        } else {
            setter.notify_waiters().await.unwrap();
        }
        all_ok::<R, _>(how, vec![w], Duration::from_secs(10)).await;
        assert!(!setter.is_set().await.unwrap());
    }
}

/// Redis loses the keys (as in a restart without persistence) while a waiter waits with
/// generation 5 in mind: the next wake-up, even from the same handle, writes a new epoch
/// with generation 1, and the waiter knows that is a wake-up. (`notify_waiters` leaves
/// the notify clear, so only the generation can wake it.)
async fn lost_generation_detected_by_epoch<R: Runtime>() {
    let client = common::client();
    let prefix = common::unique_prefix("nt_epoch");
    let n = open::<R>(&client, &prefix, "go").await;
    for _ in 0..5 {
        n.set().await.unwrap();
        n.clear().await.unwrap();
    }
    let before = n.inspect().await.unwrap();
    assert_eq!(before.generation, 5);
    let n2 = n.clone();
    let w = spawn::<R, _>(async move { n2.wait().await });
    until_waiting(&n, 1).await;
    let mut raw = raw_conn(&client).await;
    let _: i64 = raw
        .del(&[gate_key(&prefix, "go"), format!("{prefix}:{{go}}:gen")])
        .await
        .unwrap();
    n.notify_waiters().await.unwrap();
    all_ok::<R, _>(
        "waiter across a data loss",
        vec![w],
        Duration::from_secs(10),
    )
    .await;
    let after = n.inspect().await.unwrap();
    assert_eq!(after.generation, 1);
    assert_ne!(after.epoch, before.epoch);
}

/// A real restart without persistence while a task waits: its wait survives the outage
/// and is released by the first wake-up after it (a `notify_waiters`, so that only the
/// new epoch can tell the waiter: the generation restarts at 1, below the 3 it saw).
async fn redis_restart_then_notify_wakes<R: Runtime>() {
    let mut server = RedisServer::start();
    let client = redis::Client::open(server.url.as_str()).unwrap();
    let prefix = common::unique_prefix("nt_restart");
    let n = open::<R>(&client, &prefix, "go").await;
    for _ in 0..3 {
        n.set().await.unwrap();
        n.clear().await.unwrap();
    }
    let n2 = n.clone();
    let w = spawn::<R, _>(async move { n2.wait().await });
    until_waiting(&n, 1).await;
    server.restart();
    // The first requests after the restart may meet the dead connections.
    let mut notified = false;
    for _ in 0..50 {
        if n.notify_waiters().await.is_ok() {
            notified = true;
            break;
        }
        scenarios::sleep::<R>(Duration::from_millis(50)).await;
    }
    assert!(notified, "notify_waiters never succeeded after the restart");
    all_ok::<R, _>("waiter across a restart", vec![w], Duration::from_secs(10)).await;
    let st = n.inspect().await.unwrap();
    assert!(!st.is_set);
    assert_eq!(st.generation, 1);
}

/// 1,000 tasks wait on one handle: one shared connection and one blocking connection for
/// all of them, and one `set` releases them all.
async fn thousand_waiters_one_blocking_connection<R: Runtime>() {
    const WAITERS: usize = 1_000;
    let server = RedisServer::start();
    let client = redis::Client::open(server.url.as_str()).unwrap();
    let prefix = common::unique_prefix("nt_thousand");
    let mut admin = raw_conn(&client).await;
    let before = connections(&mut admin).await;
    let sync = Coordinator::<R>::connect(&client).await.unwrap();
    let n = sync.notify("go").key_prefix(&prefix).open().await.unwrap();
    let started = Instant::now();
    let waits: Vec<_> = (0..WAITERS)
        .map(|_| {
            let n = n.clone();
            spawn::<R, _>(async move { n.wait().await })
        })
        .collect();
    until_waiting(&n, WAITERS).await;
    until_blocked::<R>(&mut admin, 1).await;
    let queued = started.elapsed();
    let open = connections(&mut admin).await - before;
    let stats = sync.stats();
    println!(
        "{WAITERS} waiters in one process: {open} connections ({} blocking, {} blocked on \
         the server); queued in {queued:?}",
        stats.blocking_connections,
        blocked_clients(&mut admin).await
    );
    assert_eq!(open, 2, "1 shared + 1 blocking connection");
    assert_eq!(stats.blocking_connections, 1);
    let woke = Instant::now();
    n.set().await.unwrap();
    all_ok::<R, _>("1,000 waiters", waits, Duration::from_secs(20)).await;
    println!("{WAITERS} waiters released in {:?}", woke.elapsed());
    assert_eq!(n.waiting(), 0);
    sync.shutdown().await.unwrap();
}

/// 1,000 waiters over 4 processes (250 each, one coordinator each) all wake for one
/// `set`; then, after `clear`, all wake for one `notify_waiters`.
async fn thousand_waiters_over_four_processes<R: Runtime>() {
    const KIDS: usize = 4;
    const EACH: usize = 250;
    let client = common::client();
    let prefix = common::unique_prefix("nt_procs");
    let n = open::<R>(&client, &prefix, "go").await;
    let runtime = kids::runtime_name::<R>();
    let envs = [
        (kids::NAME, "go".to_owned()),
        (kids::PREFIX, prefix.clone()),
        (kids::WAITERS, EACH.to_string()),
    ];
    let mut kids: Vec<Kid> = (0..KIDS)
        .map(|i| Kid::spawn("notify", &format!("notify child {i}"), runtime, &envs))
        .collect();
    for kid in &mut kids {
        kid.expect::<R>("READY", Duration::from_secs(60)).await;
    }
    let started = Instant::now();
    n.set().await.unwrap();
    for kid in &mut kids {
        let woke = kid.expect::<R>("WOKE", Duration::from_secs(30)).await;
        assert_eq!(woke, EACH.to_string(), "{}", kid.label);
    }
    println!(
        "{} waiters in {KIDS} processes released by one set in {:?}",
        KIDS * EACH,
        started.elapsed()
    );
    n.clear().await.unwrap();
    for kid in &mut kids {
        kid.send("AGAIN");
    }
    for kid in &mut kids {
        kid.expect::<R>("READY", Duration::from_secs(60)).await;
    }
    let started = Instant::now();
    n.notify_waiters().await.unwrap();
    for kid in &mut kids {
        let woke = kid.expect::<R>("WOKE", Duration::from_secs(30)).await;
        assert_eq!(woke, EACH.to_string(), "{}", kid.label);
    }
    println!(
        "{} waiters in {KIDS} processes released by one notify_waiters in {:?}",
        KIDS * EACH,
        started.elapsed()
    );
    for kid in kids {
        kid.exits_ok::<R>(Duration::from_secs(30)).await;
    }
    assert!(!n.is_set().await.unwrap());
}

/// The child side of `thousand_waiters_over_four_processes`.
async fn notify_child<R: Runtime>() {
    let client = common::client();
    let name = std::env::var(kids::NAME).unwrap();
    let prefix = std::env::var(kids::PREFIX).unwrap();
    let each: usize = std::env::var(kids::WAITERS).unwrap().parse().unwrap();
    let sync = Coordinator::<R>::connect(&client).await.unwrap();
    let n = sync.notify(&name).key_prefix(&prefix).open().await.unwrap();
    let mut stdin = kids::stdin_lines();
    for round in 0..2 {
        if round == 1 {
            assert_eq!(stdin.next().await.as_deref(), Some("AGAIN"));
        }
        let waits: Vec<_> = (0..each)
            .map(|_| {
                let n = n.clone();
                spawn::<R, _>(async move { n.wait().await })
            })
            .collect();
        until_waiting(&n, each).await;
        kids::report("READY");
        let done = within::<R, _>(Duration::from_secs(60), futures::future::join_all(waits))
            .await
            .expect("woken");
        let ok = done.iter().filter(|r| r.is_ok()).count();
        kids::report(&format!("WOKE {ok}"));
    }
    sync.shutdown().await.unwrap();
}

/// A coordinator's shutdown fails the waits of its notifies with `Closed`, and it opens
/// no more.
async fn coordinator_shutdown_fails_waiters<R: Runtime>() {
    let client = common::client();
    let prefix = common::unique_prefix("nt_shutdown");
    let sync = Coordinator::<R>::connect(&client).await.unwrap();
    let n = sync.notify("go").key_prefix(&prefix).open().await.unwrap();
    let n2 = n.clone();
    let w = spawn::<R, _>(async move { n2.wait().await });
    until_waiting(&n, 1).await;
    sync.shutdown().await.unwrap();
    let res = within::<R, _>(Duration::from_secs(10), w)
        .await
        .expect("wait ended after shutdown");
    assert!(matches!(res, Err(Error::Closed)), "{res:?}");
    assert!(matches!(n.wait().await, Err(Error::Closed)));
    assert!(matches!(
        sync.notify("other").key_prefix(&prefix).open().await,
        Err(Error::Closed)
    ));
}

/// When the last waiter of a handle times out, its blocking wait is ended on the server
/// at once (`CLIENT UNBLOCK`), not left to run out its 2 s, and its connection is kept:
/// every wait of the handle uses the same blocking connection.
async fn last_waiter_leaving_ends_the_blocking_wait<R: Runtime>() {
    let server = RedisServer::start();
    let client = redis::Client::open(server.url.as_str()).unwrap();
    let prefix = common::unique_prefix("nt_cut");
    let mut admin = raw_conn(&client).await;
    let n = open::<R>(&client, &prefix, "go").await;
    let mut ids = Vec::new();
    for round in 0..3 {
        let n2 = n.clone();
        let w = spawn::<R, _>(async move { n2.wait_timeout(Duration::from_secs(30)).await });
        until_waiting(&n, 1).await;
        until_blocked::<R>(&mut admin, 1).await;
        ids.extend(blmove_clients(&mut admin).await);
        // A second waiter that gives up: the first still waits.
        assert!(matches!(
            n.wait_timeout(Duration::from_millis(100)).await,
            Err(Error::Timeout(_))
        ));
        assert_eq!(n.waiting(), 1);
        n.set().await.unwrap();
        all_ok::<R, _>("the remaining waiter", vec![w], Duration::from_secs(10)).await;
        n.clear().await.unwrap();
        // Now the only waiter times out: its pump's wait ends at once.
        let timed_out = n.wait_timeout(Duration::from_millis(500));
        let (res, ids_then) = futures::join!(timed_out, async {
            until_blocked::<R>(&mut admin, 1).await;
            blmove_clients(&mut admin).await
        });
        ids.extend(ids_then);
        assert!(
            matches!(res, Err(Error::Timeout(_))),
            "round {round}: {res:?}"
        );
        let left = Instant::now();
        until_blocked::<R>(&mut admin, 0).await;
        let ended = left.elapsed();
        println!("round {round}: blocking wait ended {ended:?} after its last waiter left");
        assert!(
            ended < Duration::from_millis(1500),
            "the blocking wait ran on for {ended:?} after its last waiter left"
        );
    }
    ids.dedup();
    assert_eq!(
        ids.len(),
        1,
        "the blocking connection was not kept: {ids:?}"
    );
}

/// 12 notifies with a waiter each on a coordinator with 3 blocking connections: the
/// connections rotate (never more than 3 blocked clients), and every waiter is released.
async fn few_blocking_connections_rotate<R: Runtime>() {
    const NAMES: usize = 12;
    const CAP: usize = 3;
    let server = RedisServer::start();
    let client = redis::Client::open(server.url.as_str()).unwrap();
    let prefix = common::unique_prefix("nt_rotate");
    let mut admin = raw_conn(&client).await;
    let sync = Coordinator::<R>::builder(&client)
        .max_blocking_connections(CAP)
        .connect()
        .await
        .unwrap();
    let mut handles = Vec::new();
    let mut waits = Vec::new();
    for i in 0..NAMES {
        let h = sync
            .notify(&format!("n{i}"))
            .key_prefix(&prefix)
            .open()
            .await
            .unwrap();
        let h2 = h.clone();
        waits.push(spawn::<R, _>(async move { h2.wait().await }));
        handles.push(h);
    }
    for h in &handles {
        until_waiting(h, 1).await;
    }
    for _ in 0..10 {
        let blocked = blocked_clients(&mut admin).await;
        assert!(
            blocked <= CAP,
            "{blocked} blocked clients with a cap of {CAP}"
        );
        assert!(sync.stats().blocking_connections <= CAP);
        scenarios::sleep::<R>(Duration::from_millis(30)).await;
    }
    let started = Instant::now();
    for (i, h) in handles.iter().enumerate() {
        // Half are set, half notified: a waiter whose turn comes after the wake-up learns
        // of it from the generation.
        if i % 2 == 0 {
            h.set().await.unwrap();
        } else {
            h.notify_waiters().await.unwrap();
        }
    }
    all_ok::<R, _>("rotating waiters", waits, Duration::from_secs(20)).await;
    println!(
        "{NAMES} notifies on {CAP} blocking connections all released in {:?}",
        started.elapsed()
    );
    sync.shutdown().await.unwrap();
}

/// Both broadcast primitives through an ACL user with exactly the commands the README
/// lists (its minimal ACL plus the line of the broadcast section) and no `CLIENT
/// UNBLOCK`: everything works, and a wait whose last waiter leaves is cut short by
/// dropping its connection.
async fn through_the_readme_acl<R: Runtime>() {
    const COMMANDS: &str = "+evalsha +script|load +blmove +client|id +info \
         +time +zscore +zadd +zrem +zrange +zrangebyscore +zrevrangebyscore +zcard \
         +lmove +lpush +lpop +rpush +ltrim +llen +del +exists +type +pttl +pexpire \
         +hget +hset +hexists +watch +unwatch +multi +exec \
         +lpos +lrem +hsetnx +hincrby +hmget +get +set +decr";
    const KEYS: &str = "~redsync:notify:* ~redsync:latch:*";
    let server = RedisServer::start();
    let admin_client = redis::Client::open(server.url.as_str()).unwrap();
    let mut admin = raw_conn(&admin_client).await;
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER")
        .arg("sync")
        .arg("reset")
        .arg("on")
        .arg(">s3cret");
    for rule in KEYS.split_whitespace().chain(COMMANDS.split_whitespace()) {
        cmd.arg(rule);
    }
    let _: () = cmd.query_async(&mut admin).await.unwrap();
    let client =
        redis::Client::open(format!("redis://sync:s3cret@127.0.0.1:{}/", server.port)).unwrap();
    let name = common::unique_prefix("acl").replace(':', "-");

    let n = Notify::<R>::open(&client, &name).await.unwrap();
    let n2 = n.clone();
    let w = spawn::<R, _>(async move { n2.wait().await });
    until_waiting(&n, 1).await;
    n.set().await.unwrap();
    all_ok::<R, _>("acl: set", vec![w], Duration::from_secs(10)).await;
    assert!(n.is_set().await.unwrap());
    n.clear().await.unwrap();
    // Times out: the pump's wait is cut by dropping its connection (no CLIENT UNBLOCK).
    assert!(matches!(
        n.wait_timeout(Duration::from_millis(200)).await,
        Err(Error::Timeout(_))
    ));
    let n2 = n.clone();
    let w = spawn::<R, _>(async move { n2.wait().await });
    until_waiting(&n, 1).await;
    n.notify_waiters().await.unwrap();
    all_ok::<R, _>("acl: notify_waiters", vec![w], Duration::from_secs(10)).await;
    let st = n.inspect().await.unwrap();
    assert_eq!((st.is_set, st.generation), (false, 2));

    let l = CountDownLatch::<R>::open(&client, &name).await.unwrap();
    assert!(l.try_set_count(2).await.unwrap());
    assert!(matches!(
        l.set_count(1).await,
        Err(Error::LatchNotZero { count: 2 })
    ));
    let l2 = l.clone();
    let w = spawn::<R, _>(async move { l2.wait().await });
    assert_eq!(l.count_down().await.unwrap(), 1);
    assert_eq!(l.count().await.unwrap(), 1);
    assert_eq!(l.count_down().await.unwrap(), 0);
    all_ok::<R, _>("acl: latch", vec![w], Duration::from_secs(10)).await;
    assert!(matches!(l.count_down().await, Err(Error::LatchAlreadyZero)));
    assert_eq!(l.inspect().await.unwrap().generation, 1);
}

/// Bad names and settings are refused before anything reaches Redis; keys holding
/// something else are refused with `WrongType`.
async fn bad_names_settings_and_types<R: Runtime>() {
    let client = common::client();
    let prefix = common::unique_prefix("nt_bad");
    let err = Notify::<R>::open(&client, "").await.unwrap_err();
    assert!(
        matches!(err, Error::InvalidArgument(Invalid::EmptyName)),
        "{err:?}"
    );
    let err = Notify::<R>::open(&client, "a{b").await.unwrap_err();
    assert!(
        matches!(err, Error::InvalidArgument(Invalid::BracesInName(_))),
        "{err:?}"
    );
    let sync = Coordinator::<R>::connect(&client).await.unwrap();
    let err = sync
        .notify("go")
        .response_timeout(Duration::from_secs(1))
        .open()
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidArgument(Invalid::CoordinatorSetting(_))),
        "{err:?}"
    );
    let mut raw = raw_conn(&client).await;
    let gate = gate_key(&prefix, "taken");
    let _: () = raw.set(&gate, "not a list").await.unwrap();
    match open_err::<R>(&client, &prefix, "taken").await {
        Error::WrongType { key, found } => assert_eq!((key, found.as_str()), (gate, "string")),
        other => panic!("expected WrongType, got {other:?}"),
    }
    sync.shutdown().await.unwrap();
}

async fn open_err<R: Runtime>(client: &redis::Client, prefix: &str, name: &str) -> Error {
    Notify::<R>::builder(client, name)
        .key_prefix(prefix)
        .open()
        .await
        .unwrap_err()
}

/// The child side of the tests above. Does nothing unless spawned by one of them.
#[test]
#[ignore = "child process of the tests in this file; runs only when spawned by them"]
fn child() {
    let Ok(role) = std::env::var(kids::ROLE) else {
        return;
    };
    match role.as_str() {
        "notify" => run_child_on_runtime!(notify_child),
        other => panic!("unknown role {other}"),
    }
}
