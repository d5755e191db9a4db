//! Event scenarios, each written once and generic over the runtime `R`. Instantiated per
//! runtime by `tests/event.rs`.
//!
//! Port of redsync 2.0's event tests, plus what this library promises beyond them: a
//! cancelled or timed-out wait never swallows a signal.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use futures::future::{self, Either};
use futures::StreamExt;
use redis::AsyncCommands;
use redis_sync::{Error, Event, KeyLayout, Runtime};

use crate::common;
use crate::scenarios::{eventually, raw_conn, sleep, spawn, Barrier};

/// An event under a key prefix of its own (default layout).
async fn open<R: Runtime>(client: &redis::Client, prefix: &str, name: &str) -> Event<R> {
    Event::<R>::builder(client, name)
        .key_prefix(prefix)
        .open()
        .await
        .unwrap()
}

/// The list of pending signals in the default (hash-tagged) layout.
fn signal_key(prefix: &str, name: &str) -> String {
    format!("{prefix}:{{{name}}}")
}

/// `set` then `wait`: the wait returns at once and consumes the signal.
pub async fn set_then_wait<R: Runtime>() {
    let client = common::client();
    let prefix = common::unique_prefix("ev_set_wait");
    let ev = open::<R>(&client, &prefix, "done").await;
    assert!(!ev.is_set().await.unwrap());
    ev.set().await.unwrap();
    assert!(ev.is_set().await.unwrap());
    ev.wait().await.unwrap();
    assert!(!ev.is_set().await.unwrap());
}

/// A waiter blocked in `wait` (on another handle) is woken by `set`.
pub async fn wait_then_set<R: Runtime>() {
    let client = common::client();
    let prefix = common::unique_prefix("ev_wait_set");
    let waiter_ev = open::<R>(&client, &prefix, "done").await;
    let setter = open::<R>(&client, &prefix, "done").await;
    let waiter = spawn::<R, _>(async move { waiter_ev.wait().await });
    // The waiter may or may not be blocked yet: the signal persists either way.
    setter.set().await.unwrap();
    waiter.await.unwrap();
    assert!(!setter.is_set().await.unwrap());
}

/// `wait_timeout` without a signal fails with `Timeout`, also below Redis's timer tick;
/// the timed-out waits swallow no later signal.
pub async fn wait_timeout<R: Runtime>() {
    let client = common::client();
    let prefix = common::unique_prefix("ev_timeout");
    let ev = open::<R>(&client, &prefix, "done").await;
    for ms in [10u64, 150] {
        let t = Duration::from_millis(ms);
        let start = Instant::now();
        let res = ev.wait_timeout(t).await;
        println!("wait_timeout({ms} ms) returned after {:?}", start.elapsed());
        match res {
            Err(Error::Timeout(d)) => assert_eq!(d, t),
            other => panic!("expected Timeout, got {other:?}"),
        }
    }
    // A signal set after the timeouts is still there for the next wait.
    ev.set().await.unwrap();
    ev.wait_timeout(Duration::from_secs(30)).await.unwrap();
    let other = open::<R>(&client, &prefix, "done").await;
    assert!(matches!(
        other.wait_timeout(Duration::from_millis(10)).await,
        Err(Error::Timeout(_))
    ));
}

/// `clear` removes every pending signal; `is_set` follows.
pub async fn clear<R: Runtime>() {
    let client = common::client();
    let prefix = common::unique_prefix("ev_clear");
    let ev = open::<R>(&client, &prefix, "done").await;
    for _ in 0..3 {
        ev.set().await.unwrap();
    }
    assert!(ev.is_set().await.unwrap());
    ev.clear().await.unwrap();
    assert!(!ev.is_set().await.unwrap());
    ev.clear().await.unwrap(); // clearing nothing is fine
    assert!(!ev.is_set().await.unwrap());
    ev.set().await.unwrap();
    assert!(ev.is_set().await.unwrap());
    ev.wait_timeout(Duration::from_secs(30)).await.unwrap();
    assert!(!ev.is_set().await.unwrap());
    // The cleared signals are gone for good.
    assert!(matches!(
        ev.wait_timeout(Duration::from_millis(50)).await,
        Err(Error::Timeout(_))
    ));
}

/// After a timed-out `wait_timeout`, a signal just set is pending (`is_set`) at once: no
/// waiter exists any more, so nothing may have taken it. Repeated to catch the race with
/// the timed-out wait's leftover blocking move.
pub async fn is_set_after_timed_out_wait<R: Runtime>() {
    let client = common::client();
    let prefix = common::unique_prefix("ev_set_after_timeout");
    let waiter = open::<R>(&client, &prefix, "done").await;
    let setter = open::<R>(&client, &prefix, "done").await;
    let mut misses = Vec::new();
    for round in 0..30 {
        assert!(matches!(
            waiter.wait_timeout(Duration::from_millis(20)).await,
            Err(Error::Timeout(_))
        ));
        setter.set().await.unwrap();
        if !setter.is_set().await.unwrap() {
            misses.push(round);
        }
        setter.wait_timeout(Duration::from_secs(30)).await.unwrap();
    }
    assert!(
        misses.is_empty(),
        "is_set() was false right after set() with no live waiter, in rounds {misses:?}"
    );
}

/// Signals set while nobody waits stay until waiters come, even waiters of a handle
/// opened later: one wait per set, then none.
pub async fn signal_persists<R: Runtime>() {
    let client = common::client();
    let prefix = common::unique_prefix("ev_persist");
    {
        let setter = open::<R>(&client, &prefix, "done").await;
        for _ in 0..3 {
            setter.set().await.unwrap();
        }
    }
    let late = open::<R>(&client, &prefix, "done").await;
    assert!(late.is_set().await.unwrap());
    for _ in 0..3 {
        late.wait_timeout(Duration::from_secs(30)).await.unwrap();
    }
    assert!(!late.is_set().await.unwrap());
    assert!(matches!(
        late.wait_timeout(Duration::from_millis(50)).await,
        Err(Error::Timeout(_))
    ));
}

/// N + 1 waiters, N sets: exactly N wake, each set waking one; the last set wakes the last
/// waiter. With `shared`, all waiters use one handle (local queue, more waiters than
/// blocking connections); otherwise each has its own handle.
pub async fn one_waiter_per_set<R: Runtime>(shared: bool) {
    const N: usize = 5;
    let client = common::client();
    let prefix = common::unique_prefix("ev_one_per_set");
    let setter = open::<R>(&client, &prefix, "done").await;
    let shared_ev = Arc::new(open::<R>(&client, &prefix, "done").await);
    let (tx, mut woke_rx) = mpsc::unbounded::<usize>();
    let mut waiters = Vec::new();
    for i in 0..=N {
        let ev = if shared {
            shared_ev.clone()
        } else {
            Arc::new(open::<R>(&client, &prefix, "done").await)
        };
        let tx = tx.clone();
        waiters.push(spawn::<R, _>(async move {
            ev.wait().await.unwrap();
            tx.unbounded_send(i).unwrap();
        }));
    }
    drop(tx);
    for _ in 0..N {
        setter.set().await.unwrap();
    }
    let mut woke = HashSet::new();
    for _ in 0..N {
        let i = woke_rx.next().await.expect("a waiter");
        assert!(woke.insert(i), "waiter {i} woke twice");
    }
    // Give a faulty implementation (one set waking two waiters) time to show itself; a
    // correct one passes whatever the timing.
    sleep::<R>(Duration::from_millis(200)).await;
    assert!(
        woke_rx.try_recv().is_err(),
        "more waiters woke than signals were set"
    );
    assert_eq!(woke.len(), N);
    assert!(!setter.is_set().await.unwrap(), "a signal was not consumed");

    setter.set().await.unwrap();
    let last = woke_rx.next().await.expect("the last waiter");
    assert!(!woke.contains(&last));
    for w in waiters {
        w.await;
    }
    assert!(woke_rx.next().await.is_none());
    assert!(!setter.is_set().await.unwrap());
}

/// Waits dropped at random points (timeouts, and `select` against a sleep) while signals
/// are set never swallow a signal: at the end, signals set == signals consumed by
/// successful waits + signals still pending.
pub async fn cancelled_waits_never_swallow<R: Runtime>() {
    const SETS: usize = 60;
    const WAITERS: usize = 4;
    let client = common::client();
    let prefix = common::unique_prefix("ev_cancel");
    let name = "done";
    let consumed = Arc::new(AtomicUsize::new(0));
    let setting = Arc::new(AtomicBool::new(true));
    let barrier = Barrier::new(WAITERS + 1);
    let shared = Arc::new(open::<R>(&client, &prefix, name).await);

    let mut waiters = Vec::new();
    for w in 0..WAITERS {
        // Half the waiters share a handle, half have their own.
        let ev = if w % 2 == 0 {
            shared.clone()
        } else {
            Arc::new(open::<R>(&client, &prefix, name).await)
        };
        let (consumed, setting, barrier) = (consumed.clone(), setting.clone(), barrier.clone());
        waiters.push(spawn::<R, _>(async move {
            barrier.wait().await;
            let mut attempts = 0usize;
            while setting.load(SeqCst) || attempts < 20 {
                attempts += 1;
                let t = Duration::from_micros(fastrand::u64(0..3000));
                let ok = if fastrand::bool() {
                    match ev.wait_timeout(t).await {
                        Ok(()) => true,
                        Err(Error::Timeout(_)) => false,
                        Err(e) => panic!("wait_timeout: {e}"),
                    }
                } else {
                    // Drop the wait future at an arbitrary point.
                    let wait = ev.wait();
                    let stop = sleep::<R>(t);
                    futures::pin_mut!(wait);
                    futures::pin_mut!(stop);
                    match future::select(wait, stop).await {
                        Either::Left((res, _)) => {
                            res.unwrap();
                            true
                        }
                        Either::Right(((), _)) => false,
                    }
                };
                if ok {
                    consumed.fetch_add(1, SeqCst);
                }
            }
            attempts
        }));
    }

    let setter = open::<R>(&client, &prefix, name).await;
    barrier.wait().await;
    for _ in 0..SETS {
        setter.set().await.unwrap();
        sleep::<R>(Duration::from_micros(fastrand::u64(0..2000))).await;
    }
    setting.store(false, SeqCst);
    let mut attempts = 0;
    for w in waiters {
        attempts += w.await;
    }
    drop(shared);

    let key = signal_key(&prefix, name);
    let mut raw = raw_conn(&client).await;
    let (consumed_n, pending) =
        eventually::<R, _, _, _>("signals set == signals consumed + signals pending", || {
            let (key, consumed) = (key.clone(), consumed.clone());
            let mut raw = raw.clone();
            async move {
                let pending: usize = raw.llen(&key).await.map_err(|e| e.to_string())?;
                let c = consumed.load(SeqCst);
                if c + pending == SETS {
                    Ok((c, pending))
                } else {
                    Err(format!("set {SETS}, consumed {c}, pending {pending}"))
                }
            }
        })
        .await;
    println!("{attempts} waits: {consumed_n} consumed a signal, {pending} signals pending");
    // What is pending is still deliverable.
    for _ in 0..pending {
        setter.wait_timeout(Duration::from_secs(30)).await.unwrap();
    }
    assert!(!setter.is_set().await.unwrap());
    let left: usize = raw.llen(&key).await.unwrap();
    assert_eq!(left, 0);
}

/// `close` fails waits with `Closed`; `set` of another handle is unaffected.
pub async fn close_fails_waits<R: Runtime>() {
    let client = common::client();
    let prefix = common::unique_prefix("ev_close");
    let ev = Arc::new(open::<R>(&client, &prefix, "done").await);
    let setter = open::<R>(&client, &prefix, "done").await;
    let waiting = {
        let ev = ev.clone();
        spawn::<R, _>(async move { ev.wait().await })
    };
    // Give the waiter a moment to block, so that close usually meets a waiting wait. The
    // assertions hold whichever comes first.
    sleep::<R>(Duration::from_millis(30)).await;
    ev.close();
    assert!(matches!(waiting.await, Err(Error::Closed)));
    assert!(matches!(ev.wait().await, Err(Error::Closed)));
    assert!(matches!(
        ev.wait_timeout(Duration::from_secs(1)).await,
        Err(Error::Closed)
    ));
    setter.set().await.unwrap();
    setter.wait_timeout(Duration::from_secs(30)).await.unwrap();
}

/// `KeyLayout::Redsync2` uses redsync 2.0's key (`{prefix}:{name}`, a list of "1"
/// tokens), and a simulated Python process (LPUSH 1 / BLPOP / LLEN / DEL) shares the event
/// with a Rust handle both ways. The default layout hash-tags the name.
pub async fn redsync2_key_layout<R: Runtime>() {
    let client = common::client();
    let prefix = common::unique_prefix("ev_redsync2");
    let name = "task_done";
    let key = format!("{prefix}:{name}");
    let ev = Arc::new(
        Event::<R>::builder(&client, name)
            .key_prefix(&prefix)
            .key_layout(KeyLayout::Redsync2)
            .open()
            .await
            .unwrap(),
    );
    let mut py = raw_conn(&client).await;

    // Rust sets: the token is redsync's; Python's is_set and wait see it.
    ev.set().await.unwrap();
    let kind: String = redis::cmd("TYPE")
        .arg(&key)
        .query_async(&mut py)
        .await
        .unwrap();
    assert_eq!(kind, "list");
    let tokens: Vec<String> = py.lrange(&key, 0, -1).await.unwrap();
    assert_eq!(tokens, vec!["1"]);
    let (k, token): (String, String) = redis::cmd("BLPOP")
        .arg(&key)
        .arg(0)
        .query_async(&mut py)
        .await
        .unwrap();
    assert_eq!((k.as_str(), token.as_str()), (key.as_str(), "1"));
    assert!(!ev.is_set().await.unwrap());

    // Python sets: Rust's wait gets it.
    let _: i64 = py.lpush(&key, "1").await.unwrap();
    assert!(ev.is_set().await.unwrap());
    ev.wait_timeout(Duration::from_secs(30)).await.unwrap();

    // A Rust waiter blocked first is woken by Python's set.
    let rust_waiter = {
        let ev = ev.clone();
        spawn::<R, _>(async move { ev.wait().await })
    };
    let _: i64 = py.lpush(&key, "1").await.unwrap();
    rust_waiter.await.unwrap();

    // A Python waiter (a process of its own) is woken by Rust's set.
    let py_waiter = {
        let (client, key) = (client.clone(), key.clone());
        spawn::<R, _>(async move {
            let mut py2 = raw_conn(&client).await;
            let got: Option<(String, String)> = redis::cmd("BLPOP")
                .arg(&key)
                .arg(30)
                .query_async(&mut py2)
                .await
                .unwrap();
            got
        })
    };
    ev.set().await.unwrap();
    assert_eq!(py_waiter.await.expect("python waiter timed out").1, "1");

    // Python's clear is Rust's clear.
    ev.set().await.unwrap();
    let _: i64 = py.del(&key).await.unwrap();
    assert!(!ev.is_set().await.unwrap());

    // Default layout: `{prefix}:{<name>}`.
    let tagged = open::<R>(&client, &prefix, name).await;
    tagged.set().await.unwrap();
    let n: usize = py.llen(signal_key(&prefix, name)).await.unwrap();
    assert_eq!(n, 1);
    let n: usize = py.llen(&key).await.unwrap();
    assert_eq!(n, 0, "the two layouts must not share a key");
    tagged.wait_timeout(Duration::from_secs(30)).await.unwrap();
}
