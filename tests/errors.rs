//! Bad input and Redis failures become typed errors, and leave nothing half-done in Redis.
//! Each scenario runs on tokio, smol and async-std.

#[allow(unused_imports)]
mod common;
#[macro_use]
mod scenarios;

use std::time::Duration;

use redis::AsyncCommands;
use redis_sync::InitStrategy::{self, Lua, OptimisticLocking};
use redis_sync::{Error, Event, Runtime, Semaphore};

runtime_tests! {
    wrongtype_is_a_redis_error_lua => wrongtype_is_a_redis_error(Lua);
    wrongtype_is_a_redis_error_optimistic => wrongtype_is_a_redis_error(OptimisticLocking);
    connection_refused_is_a_redis_error => connection_refused_is_a_redis_error();
    scripts_reload_after_script_flush => scripts_reload_after_script_flush();
    bad_arguments_write_nothing => bad_arguments_write_nothing();
}

/// A foreign value under the pool's key: `create` fails with the server's WRONGTYPE, and
/// no metadata is written.
async fn wrongtype_is_a_redis_error<R: Runtime>(strategy: InitStrategy) {
    let client = common::client();
    let prefix = common::unique_prefix("wrongtype");
    let mut raw = scenarios::raw_conn(&client).await;
    let pool = format!("{prefix}:{{jobs}}:list");
    let meta = format!("{prefix}:{{jobs}}:meta");
    let _: () = raw.set(&pool, "not a list").await.unwrap();
    let err = Semaphore::<R>::builder(&client, "jobs")
        .key_prefix(&prefix)
        .init_strategy(strategy)
        .create(2)
        .await
        .expect_err("create over a string key must fail");
    match &err {
        Error::Redis(e) => assert_eq!(e.code(), Some("WRONGTYPE"), "{e}"),
        other => panic!("expected Error::Redis(WRONGTYPE), got {other:?}"),
    }
    let meta_exists: bool = raw.exists(&meta).await.unwrap();
    assert!(!meta_exists, "a failed create left metadata behind");
    let value: String = raw.get(&pool).await.unwrap();
    assert_eq!(value, "not a list");

    // An event whose key holds a string: `open` refuses it with a typed error.
    let ev_key = format!("{prefix}:{{done}}");
    let _: () = raw.set(&ev_key, "x").await.unwrap();
    match Event::<R>::builder(&client, "done")
        .key_prefix(&prefix)
        .open()
        .await
    {
        Err(Error::WrongType { key, found }) => {
            assert_eq!(key, ev_key);
            assert_eq!(found, "string");
        }
        other => panic!("expected Error::WrongType, got {other:?}"),
    }
    // A key that turns into a string after `open`: set/wait report Redis's WRONGTYPE.
    let _: () = raw.del(&ev_key).await.unwrap();
    let ev = Event::<R>::builder(&client, "done")
        .key_prefix(&prefix)
        .open()
        .await
        .unwrap();
    let _: () = raw.set(&ev_key, "x").await.unwrap();
    assert!(matches!(ev.set().await, Err(Error::Redis(_))));
    assert!(matches!(
        ev.wait_timeout(Duration::from_secs(5)).await,
        Err(Error::Redis(_))
    ));
}

/// Nothing listens on the port: a typed Redis error with the cause, not a panic or a hang.
async fn connection_refused_is_a_redis_error<R: Runtime>() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    match Semaphore::<R>::create(&client, "nobody-home", 1).await {
        Err(Error::Redis(e)) => assert!(
            e.is_connection_refusal() || e.is_io_error(),
            "unexpected redis error kind: {e}"
        ),
        other => panic!("expected Error::Redis, got {other:?}"),
    }
}

/// After `SCRIPT FLUSH` (as after a restart), the scripts are loaded again by themselves.
async fn scripts_reload_after_script_flush<R: Runtime>() {
    let client = common::client();
    let name = common::unique_prefix("noscript");
    let sem = Semaphore::<R>::create(&client, &name, 1).await.unwrap();
    sem.acquire().await.unwrap().release().await.unwrap();
    let mut raw = scenarios::raw_conn(&client).await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut raw)
        .await
        .unwrap();
    let permit = sem.acquire().await.unwrap();
    assert!(sem.try_acquire().await.unwrap().is_none());
    permit.release().await.unwrap();
    let state = scenarios::wait_all_free(&sem).await;
    assert_eq!(state.free, 1);
}

/// Rejected input writes nothing at all under the prefix.
async fn bad_arguments_write_nothing<R: Runtime>() {
    let client = common::client();
    let prefix = common::unique_prefix("badargs");
    let builder = || Semaphore::<R>::builder(&client, "jobs").key_prefix(&prefix);
    assert!(matches!(
        builder().create(0).await,
        Err(Error::CountOutOfRange(0))
    ));
    assert!(matches!(
        builder()
            .lease_ttl(Duration::from_millis(10))
            .create(1)
            .await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        builder().max_blocking_connections(0).create(1).await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        Semaphore::<R>::builder(&client, "a{b}")
            .key_prefix(&prefix)
            .create(1)
            .await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        Semaphore::<R>::builder(&client, "")
            .key_prefix(&prefix)
            .create(1)
            .await,
        Err(Error::InvalidArgument(_))
    ));
    let mut raw = scenarios::raw_conn(&client).await;
    let keys: Vec<String> = raw.keys(format!("{prefix}*")).await.unwrap();
    assert!(keys.is_empty(), "rejected calls wrote {keys:?}");
}
