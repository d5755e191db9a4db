//! The Mutex with fencing tokens: basic behaviour on every runtime. Heavier checks
//! (processes, kills, pauses) are in `tests/fencing.rs`.

#[allow(unused_imports)]
mod common;
#[macro_use]
mod scenarios;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis_sync::{Coordinator, Error, Mutex, Runtime};
use scenarios::*;

/// Tokens strictly increase across grants, by the fast path and by blocking waits, and
/// never two holders at once.
async fn tokens_increase<R: Runtime>() {
    let client = common::client();
    let prefix = common::unique_prefix("mutex-tokens");
    let sync = Coordinator::<R>::connect(&client).await.unwrap();
    let locks: Vec<Mutex<R>> =
        futures::future::join_all((0..4).map(|_| sync.mutex("m").key_prefix(&prefix).open()))
            .await
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap();
    let inside = Arc::new(AtomicUsize::new(0));
    let tokens = Arc::new(std::sync::Mutex::new(Vec::new()));
    let tasks: Vec<_> = locks
        .iter()
        .cloned()
        .map(|lock| {
            let (inside, tokens) = (inside.clone(), tokens.clone());
            spawn::<R, _>(async move {
                for _ in 0..25 {
                    let guard = lock.lock().await.unwrap();
                    assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders");
                    tokens.lock().unwrap().push(guard.fencing_token());
                    inside.fetch_sub(1, Ordering::SeqCst);
                    guard.unlock().await.unwrap();
                }
            })
        })
        .collect();
    futures::future::join_all(tasks).await;
    let tokens = tokens.lock().unwrap().clone();
    assert_eq!(tokens.len(), 100);
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens not strictly increasing in grant order: {tokens:?}"
    );
    let st = locks[0].inspect().await.unwrap();
    assert_eq!(st.free, 1);
    assert_eq!(st.next_fence, Some(tokens[tokens.len() - 1] + 1));
}

/// A holder whose lease runs out: the next grant's token is greater, and the stale
/// holder is told.
async fn lost_lease_gets_lower_token<R: Runtime>() {
    let client = common::client();
    let prefix = common::unique_prefix("mutex-lost");
    let a = Mutex::<R>::builder(&client, "m")
        .key_prefix(&prefix)
        .lease_ttl(Duration::from_millis(500))
        .open()
        .await
        .unwrap();
    let b = Mutex::<R>::builder(&client, "m")
        .key_prefix(&prefix)
        .open()
        .await
        .unwrap();
    let stale = a.lock().await.unwrap();
    // Freeze `a`'s lease behind its back (as a paused process): it expires on the server.
    let mut raw = raw_conn(&client).await;
    let _: () = redis::cmd("ZADD")
        .arg(format!("{prefix}:{{m}}:leases"))
        .arg("XX")
        .arg(1)
        .arg(stale.holder())
        .query_async(&mut raw)
        .await
        .unwrap();
    let fresh = b.lock().await.unwrap();
    assert!(fresh.fencing_token() > stale.fencing_token());
    stale.lost().await;
    assert!(stale.is_lost());
    assert!(matches!(stale.unlock().await, Err(Error::LeaseLost)));
    drop(fresh);
}

/// try_lock and lock_timeout on a held lock.
async fn try_and_timeout<R: Runtime>() {
    let client = common::client();
    let prefix = common::unique_prefix("mutex-try");
    let lock = Mutex::<R>::builder(&client, "m")
        .key_prefix(&prefix)
        .open()
        .await
        .unwrap();
    let other = Mutex::<R>::builder(&client, "m")
        .key_prefix(&prefix)
        .open()
        .await
        .unwrap();
    let g = lock.try_lock().await.unwrap().expect("free");
    assert!(other.try_lock().await.unwrap().is_none());
    assert!(matches!(
        other.lock_timeout(Duration::from_millis(200)).await,
        Err(Error::Timeout(_))
    ));
    let t = g.fencing_token();
    drop(g);
    let g2 = other.lock_timeout(Duration::from_secs(10)).await.unwrap();
    assert_eq!(g2.fencing_token(), t + 1);
}

runtime_tests! {
    mutex_tokens_strictly_increase => tokens_increase();
    mutex_lost_lease_lower_token => lost_lease_gets_lower_token();
    mutex_try_and_timeout => try_and_timeout();
}
