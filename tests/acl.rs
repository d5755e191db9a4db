//! The library through a Redis ACL user that has exactly the commands and key patterns the
//! README lists, and no `CLIENT UNBLOCK` (as on GCP Memorystore, Dragonfly, or under a
//! policy that denies `@dangerous`): every scenario works, blocking waits are cut short by
//! dropping their connection instead, and no permit is lost or duplicated.

#[allow(unused_imports)]
mod common;
#[macro_use]
mod scenarios;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use redis_sync::{Error, Event, InitStrategy, Runtime, Semaphore};
use scenarios::{raw_conn, spawn, wait_all_free};

/// The README's minimal ACL: the commands, then the key patterns (default prefixes and the
/// custom prefix `acl-app`).
const COMMANDS: &str = "+evalsha +script|load +blmove +client|id +info \
     +time +zscore +zadd +zrem +zrange +zrangebyscore +zrevrangebyscore +zcard \
     +lmove +lpush +lpop +rpush +ltrim +llen +del +exists +type +pttl +pexpire \
     +hget +hset +hexists +hmget +hincrby +hsetnx +hdel +lpos +lrange +lindex \
     +watch +unwatch +multi +exec";
const KEYS: &str =
    "~redsync:semaphore:* ~redsync:event:* ~redsync:mutex:* ~redsync:rwlock:* ~acl-app:*";

/// A server with the restricted user `sync`.
fn acl_server() -> common::RedisServer {
    let server = common::RedisServer::start();
    let mut admin = redis::Client::open(server.url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER")
        .arg("sync")
        .arg("reset")
        .arg("on")
        .arg(">s3cret");
    for rule in KEYS.split_whitespace().chain(COMMANDS.split_whitespace()) {
        cmd.arg(rule);
    }
    let _: () = cmd.query(&mut admin).unwrap();
    server
}

fn user_client(server: &common::RedisServer) -> redis::Client {
    redis::Client::open(format!("redis://sync:s3cret@127.0.0.1:{}/", server.port)).unwrap()
}

/// The restricted user's client on a server shared by this test binary.
fn acl_client() -> redis::Client {
    static SERVER: OnceLock<common::RedisServer> = OnceLock::new();
    user_client(SERVER.get_or_init(acl_server))
}

runtime_tests! {
    acl_semaphore_lua => semaphore_through_acl(InitStrategy::Lua, None);
    acl_semaphore_optimistic => semaphore_through_acl(InitStrategy::OptimisticLocking, None);
    acl_semaphore_custom_prefix => semaphore_through_acl(InitStrategy::Lua, Some("acl-app:sem"));
    acl_event => event_through_acl();
    acl_denies_client_unblock => acl_denies_client_unblock();
}

/// Create, acquire, wait, time out (which cuts a blocking wait short), inspect, shut down.
async fn semaphore_through_acl<R: Runtime>(strategy: InitStrategy, prefix: Option<&str>) {
    let client = acl_client();
    let name = common::unique_prefix("acl");
    let builder = |client: &redis::Client| {
        let b = Semaphore::<R>::builder(client, &name)
            .init_strategy(strategy)
            .lease_ttl(Duration::from_secs(5));
        match prefix {
            Some(p) => b.key_prefix(p),
            None => b,
        }
    };
    let sem = Arc::new(builder(&client).create(2).await.unwrap());
    let other = builder(&client).attach(None).await.unwrap();
    let a = sem.acquire().await.unwrap();
    let b = other.acquire().await.unwrap();
    // Full: waits block on the server, then time out, and their waits are cut short.
    for _ in 0..3 {
        assert!(matches!(
            sem.acquire_timeout(Duration::from_millis(150)).await,
            Err(Error::Timeout(_))
        ));
    }
    let waiter = spawn::<R, _>({
        let sem = sem.clone();
        async move { sem.acquire().await.unwrap().release().await }
    });
    b.release().await.unwrap();
    waiter.await.unwrap();
    a.release().await.unwrap();
    let state = wait_all_free(&sem).await;
    assert_eq!(state.count, Some(2));
    sem.shutdown().await.unwrap();
    other.shutdown().await.unwrap();
}

async fn event_through_acl<R: Runtime>() {
    let client = acl_client();
    let name = common::unique_prefix("acl-event");
    let ev = Arc::new(Event::<R>::open(&client, &name).await.unwrap());
    assert!(matches!(
        ev.wait_timeout(Duration::from_millis(150)).await,
        Err(Error::Timeout(_))
    ));
    let waiting = spawn::<R, _>({
        let ev = ev.clone();
        async move { ev.wait().await }
    });
    let setter = Event::<R>::open(&client, &name).await.unwrap();
    setter.set().await.unwrap();
    waiting.await.unwrap();
    assert!(!setter.is_set().await.unwrap());
    setter.clear().await.unwrap();
    ev.shutdown().await.unwrap();
    setter.shutdown().await.unwrap();
}

/// The user really lacks `CLIENT UNBLOCK`; a wait cut short leaves no blocked client and no
/// permit in limbo.
async fn acl_denies_client_unblock<R: Runtime>() {
    // A server of its own: the test counts every blocked client on it.
    let server = acl_server();
    let client = user_client(&server);
    let mut conn = raw_conn(&client).await;
    let err = redis::cmd("CLIENT")
        .arg("UNBLOCK")
        .arg(1)
        .query_async::<i64>(&mut conn)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("NOPERM"), "{err}");

    let name = common::unique_prefix("acl-unblock");
    // A 20 s lease makes each blocking wait 2 s long: a wait still blocked 1 s after its
    // waiter left was not cut short.
    let sem = Semaphore::<R>::builder(&client, &name)
        .lease_ttl(Duration::from_secs(20))
        .create(1)
        .await
        .unwrap();
    let held = sem.acquire().await.unwrap();
    assert!(sem
        .acquire_timeout(Duration::from_millis(300))
        .await
        .is_err());
    let left_at = std::time::Instant::now();
    let admin_client = redis::Client::open(server.url.as_str()).unwrap();
    let mut admin = raw_conn(&admin_client).await;
    loop {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut admin)
            .await
            .unwrap();
        if !list
            .lines()
            .any(|l| l.contains("user=sync") && l.contains("cmd=blmove"))
        {
            break;
        }
        assert!(
            left_at.elapsed() < Duration::from_secs(1),
            "a blocking wait nobody needs is still blocked: {list}"
        );
        scenarios::sleep::<R>(Duration::from_millis(10)).await;
    }
    // The library did ask, was refused, and fell back.
    let log: Vec<redis::Value> = redis::cmd("ACL")
        .arg("LOG")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(
        format!("{log:?}").contains("client|unblock"),
        "no refused CLIENT UNBLOCK in the ACL log: {log:?}"
    );
    held.release().await.unwrap();
    let state = wait_all_free(&sem).await;
    assert_eq!(state.free, 1);
    sem.shutdown().await.unwrap();
}
