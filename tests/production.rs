//! What production needs besides crash safety: a clean shutdown that leaves nothing in
//! Redis, `close` telling holders their leases ran out, and refusing a server that may
//! evict the library's keys. Each scenario runs on tokio, smol and async-std.

#[allow(unused_imports)]
mod common;
#[macro_use]
mod scenarios;

use std::time::{Duration, Instant};

use futures::FutureExt;
use redis_sync::{Error, Event, Runtime, Semaphore};
use scenarios::{raw_conn, spawn, wait_all_free};

runtime_tests! {
    shutdown_gives_everything_back => shutdown_gives_everything_back();
    shutdown_of_an_event => shutdown_of_an_event();
    close_marks_held_permits_lost_at_expiry => close_marks_held_permits_lost_at_expiry();
    eviction_policies_are_refused => eviction_policies_are_refused();
    huge_or_zero_options_are_refused => huge_or_zero_options_are_refused();
    clones_share_one_handle => clones_share_one_handle();
    bad_prefixes_are_refused => bad_prefixes_are_refused();
    reclaim_expired_on_demand => reclaim_expired_on_demand();
}

/// `reclaim_expired` gives back an expired holder's permits at once, and never touches a
/// holder whose lease is valid.
async fn reclaim_expired_on_demand<R: Runtime>() {
    let client = common::client();
    let name = common::unique_prefix("reclaim-now");
    let sem = Semaphore::<R>::builder(&client, &name)
        .lease_ttl(Duration::from_secs(60))
        .create(3)
        .await
        .unwrap();
    let crashed = Semaphore::<R>::builder(&client, &name)
        .lease_ttl(Duration::from_secs(60))
        .attach(None)
        .await
        .unwrap();
    let valid = sem.acquire().await.unwrap();
    let gone = crashed.acquire().await.unwrap();
    let gone2 = crashed.acquire().await.unwrap();
    assert_eq!(
        sem.reclaim_expired().await.unwrap(),
        0,
        "nothing has expired"
    );
    // The crashed holder's lease ends now, behind the library's back.
    scenarios::expire_lease(&client, &name, gone.holder()).await;
    assert_eq!(sem.reclaim_expired().await.unwrap(), 2);
    assert_eq!(sem.available_permits().await.unwrap(), 2);
    assert!(!valid.is_lost());
    valid.release().await.unwrap();
    crashed.close();
    drop((gone, gone2));
    assert_eq!(wait_all_free(&sem).await.free, 3);
    sem.shutdown().await.unwrap();
}

/// A clone is the same handle: one lease, one queue; `available_permits` reads Redis.
async fn clones_share_one_handle<R: Runtime>() {
    let client = common::client();
    let name = common::unique_prefix("clones");
    let sem = Semaphore::<R>::create(&client, &name, 3).await.unwrap();
    let twin = sem.clone();
    assert_eq!(sem.available_permits().await.unwrap(), 3);
    let a = twin.acquire().await.unwrap();
    let b = sem.acquire().await.unwrap();
    assert_eq!(a.holder(), b.holder(), "clones hold under one lease");
    assert_eq!(sem.available_permits().await.unwrap(), 1);
    twin.acquire().await.unwrap().detach();
    sem.release()
        .await
        .expect("a permit detached through a clone is the handle's");
    drop((a, b));
    assert_eq!(wait_all_free(&sem).await.free, 3);
    twin.shutdown().await.unwrap();
    assert!(sem.is_closed(), "closing a clone closes the handle");
}

/// An empty prefix, or braces in it, are refused with a typed reason.
async fn bad_prefixes_are_refused<R: Runtime>() {
    use redis_sync::Invalid;
    let client = common::client();
    for (prefix, why) in [
        ("", Invalid::EmptyPrefix),
        (":", Invalid::EmptyPrefix),
        ("app:{x}", Invalid::BracesInPrefix("app:{x}".into())),
    ] {
        match Semaphore::<R>::builder(&client, "jobs")
            .key_prefix(prefix)
            .create(1)
            .await
        {
            Err(Error::InvalidArgument(got)) => assert_eq!(got, why),
            other => panic!("prefix {prefix:?}: expected InvalidArgument({why:?}), got {other:?}"),
        }
    }
    match Event::<R>::builder(&client, "").open().await {
        Err(Error::InvalidArgument(Invalid::EmptyName)) => {}
        other => panic!("expected InvalidArgument(EmptyName), got {other:?}"),
    }
}

/// `shutdown` sends the release of a dropped permit, gives back a forgotten one and one
/// still held by a guard, fails a waiting acquire, and gives up every lease of the handle:
/// afterwards Redis shows no holder of it and every permit free; the guard is lost.
async fn shutdown_gives_everything_back<R: Runtime>() {
    let client = common::client();
    let name = common::unique_prefix("shutdown");
    let sem = Semaphore::<R>::builder(&client, &name)
        .lease_ttl(Duration::from_secs(60))
        .create(3)
        .await
        .unwrap();
    let kept = sem.acquire().await.unwrap();
    sem.acquire().await.unwrap().detach();
    let dropped = sem.acquire().await.unwrap();
    let holder = kept.holder().to_owned();
    let base = holder.rsplit_once('-').unwrap().0.to_owned();
    let sem = std::sync::Arc::new(sem);
    let waiter = spawn::<R, _>({
        let sem = sem.clone();
        async move { sem.acquire().await.map(drop) }
    });
    // The waiter is queued once a pump blocks for it; `shutdown` fails it either way.
    drop(dropped);
    sem.shutdown().await.unwrap();
    assert!(matches!(waiter.await, Err(Error::Closed)));
    assert!(kept.is_lost(), "a permit still out after shutdown is lost");
    kept.lost().await;

    let state = sem.inspect().await.unwrap();
    assert!(
        state.holders.iter().all(|h| !h.id.starts_with(&base)),
        "shutdown left a lease of this handle: {state:?}"
    );
    assert_eq!(state.free, 3, "{state:?}");
    assert!(matches!(kept.release().await, Err(Error::LeaseLost)));
    // The pool did not grow, and nothing is left to settle.
    let other = Semaphore::<R>::attach(&client, &name, None).await.unwrap();
    assert_eq!(wait_all_free(&other).await.free, 3);
    assert!(matches!(sem.acquire().await, Err(Error::Closed)));
    sem.shutdown().await.unwrap();
    other.shutdown().await.unwrap();
}

/// An event's shutdown leaves no lease behind and fails waits; a pending signal stays.
async fn shutdown_of_an_event<R: Runtime>() {
    let client = common::client();
    let name = common::unique_prefix("shutdown-event");
    let ev = std::sync::Arc::new(Event::<R>::open(&client, &name).await.unwrap());
    let waiting = spawn::<R, _>({
        let ev = ev.clone();
        async move { ev.wait().await }
    });
    ev.shutdown().await.unwrap();
    assert!(matches!(waiting.await, Err(Error::Closed)));
    let other = Event::<R>::open(&client, &name).await.unwrap();
    other.set().await.unwrap();
    let mut raw = raw_conn(&client).await;
    let leases: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("redsync:event:{{{name}}}:leases"))
        .arg(0)
        .arg(-1)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(leases.is_empty(), "leases left after shutdown: {leases:?}");
    other
        .wait_timeout(Duration::from_secs(10))
        .await
        .expect("the signal set after the shutdown is still there");
    other.shutdown().await.unwrap();
}

/// After `close`, a held permit's lease is no longer renewed: the permit is marked lost no
/// later than another handle is granted it.
async fn close_marks_held_permits_lost_at_expiry<R: Runtime>() {
    const LEASE: Duration = Duration::from_secs(1);
    let client = common::client();
    let name = common::unique_prefix("close-lost");
    let a = Semaphore::<R>::builder(&client, &name)
        .lease_ttl(LEASE)
        .create(1)
        .await
        .unwrap();
    let b = Semaphore::<R>::builder(&client, &name)
        .lease_ttl(LEASE)
        .attach(None)
        .await
        .unwrap();
    let permit = a.acquire().await.unwrap();
    let closed_at = Instant::now();
    a.close();
    assert!(
        !permit.is_lost(),
        "close does not end a lease that is still valid"
    );
    let lost_at = spawn::<R, _>({
        let lost = permit.lost();
        async move {
            lost.await;
            Instant::now()
        }
    });
    let granted = b.acquire().await.unwrap();
    let granted_at = Instant::now();
    let lost_at = lost_at.now_or_never().expect(
        "another handle was granted the permit before its holder was told the lease was lost",
    );
    assert!(lost_at <= granted_at);
    assert!(
        lost_at.duration_since(closed_at) <= LEASE + Duration::from_millis(500),
        "told {:?} after close",
        lost_at.duration_since(closed_at)
    );
    assert!(permit.is_lost());
    assert!(matches!(permit.release().await, Err(Error::LeaseLost)));
    granted.release().await.unwrap();
    b.shutdown().await.unwrap();
}

/// A server whose eviction policy could delete the library's keys is refused with a typed
/// error, unless the builder opts out; `noeviction`, or no memory limit, is accepted.
async fn eviction_policies_are_refused<R: Runtime>() {
    let server = common::RedisServer::start_with(&[
        "--maxmemory",
        "100mb",
        "--maxmemory-policy",
        "allkeys-lru",
    ]);
    let client = redis::Client::open(server.url.as_str()).unwrap();
    let refused = |res: Result<(), Error>, policy: &str| match res {
        Err(Error::EvictionPolicy { policy: p }) => assert_eq!(p, policy),
        other => panic!("expected Error::EvictionPolicy({policy}), got {other:?}"),
    };
    refused(
        Semaphore::<R>::create(&client, "evict", 2).await.map(drop),
        "allkeys-lru",
    );
    refused(
        Semaphore::<R>::attach(&client, "evict", Some(Duration::from_millis(10)))
            .await
            .map(drop),
        "allkeys-lru",
    );
    refused(
        Event::<R>::open(&client, "evict").await.map(drop),
        "allkeys-lru",
    );
    let mut raw = raw_conn(&client).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(keys.is_empty(), "a refused create wrote {keys:?}");

    let sem = Semaphore::<R>::builder(&client, "evict")
        .allow_eviction_policy(true)
        .create(2)
        .await
        .expect("the opt-out accepts the server");
    sem.shutdown().await.unwrap();
    Event::<R>::builder(&client, "evict")
        .allow_eviction_policy(true)
        .open()
        .await
        .unwrap()
        .shutdown()
        .await
        .unwrap();

    let config = |policy: &'static str| {
        let mut raw = raw.clone();
        async move {
            let _: () = redis::cmd("CONFIG")
                .arg("SET")
                .arg("maxmemory-policy")
                .arg(policy)
                .query_async(&mut raw)
                .await
                .unwrap();
        }
    };
    config("volatile-ttl").await;
    refused(
        Semaphore::<R>::create(&client, "evict2", 2).await.map(drop),
        "volatile-ttl",
    );
    config("noeviction").await;
    Semaphore::<R>::create(&client, "evict2", 2)
        .await
        .unwrap()
        .shutdown()
        .await
        .unwrap();
    config("allkeys-lru").await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(0)
        .query_async(&mut raw)
        .await
        .unwrap();
    Semaphore::<R>::create(&client, "evict3", 2)
        .await
        .expect("no memory limit: nothing is ever evicted")
        .shutdown()
        .await
        .unwrap();
}

/// Options out of range are refused before anything reaches Redis, never a panic.
async fn huge_or_zero_options_are_refused<R: Runtime>() {
    let client = common::client();
    let name = common::unique_prefix("options");
    for lease in [
        Duration::MAX,
        Duration::from_secs(u64::MAX / 2),
        Duration::from_millis(99),
    ] {
        let res = Semaphore::<R>::builder(&client, &name)
            .lease_ttl(lease)
            .create(1)
            .await;
        assert!(
            matches!(res, Err(Error::InvalidArgument(_))),
            "{lease:?}: {res:?}"
        );
        let res = Event::<R>::builder(&client, &name)
            .lease_ttl(lease)
            .open()
            .await;
        assert!(
            matches!(res, Err(Error::InvalidArgument(_))),
            "{lease:?}: {res:?}"
        );
    }
    for timeout in [Duration::ZERO, Duration::MAX] {
        let res = Semaphore::<R>::builder(&client, &name)
            .response_timeout(timeout)
            .attach(Some(Duration::from_millis(1)))
            .await;
        assert!(
            matches!(res, Err(Error::InvalidArgument(_))),
            "{timeout:?}: {res:?}"
        );
    }
    let mut raw = raw_conn(&client).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("*{name}*"))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(keys.is_empty(), "refused options wrote {keys:?}");
}
