//! `rediss://`: a semaphore and an event over TLS, against a TLS-only redis-server with a
//! throwaway CA (`tests/common/tls.rs`, started once for this test binary), on every runtime
//! whose TLS feature is on (`tls-tokio`, `tls-smol`, `tls-async-std`).
//!
//! Also: a plain `redis://` URL to the TLS port, and `rediss://` without the CA, both fail
//! with an error within a few seconds (no hang, no silent fallback).
//!
//! Run with `cargo test --all-features --test tls`; without a TLS feature this file is empty.

#![cfg(any(feature = "tls-tokio", feature = "tls-smol", feature = "tls-async-std"))]

#[allow(unused_imports)]
mod common;
#[allow(unused_macros)]
#[macro_use]
mod scenarios;

use std::time::{Duration, Instant};

use futures::future::{self, Either};
use redis_sync::{Error, Event, Runtime, Semaphore};

/// Like `runtime_tests!`, but each runtime's test is behind that runtime's TLS feature.
macro_rules! tls_runtime_tests {
    ($(
        $(#[$meta:meta])*
        $name:ident => $body:ident ( $($arg:expr),* $(,)? );
    )*) => {$(
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[cfg(feature = "tls-tokio")]
            #[test]
            $(#[$meta])*
            fn on_tokio() {
                crate::scenarios::run_tokio(crate::scenarios::with_deadline::<redis_sync::Tokio, _>(
                    concat!(stringify!($name), "::on_tokio"),
                    $body::<redis_sync::Tokio>($($arg),*),
                ));
            }

            #[cfg(feature = "tls-smol")]
            #[test]
            $(#[$meta])*
            fn on_smol() {
                crate::scenarios::run_smol(crate::scenarios::with_deadline::<redis_sync::Smol, _>(
                    concat!(stringify!($name), "::on_smol"),
                    $body::<redis_sync::Smol>($($arg),*),
                ));
            }

            #[cfg(feature = "tls-async-std")]
            #[test]
            $(#[$meta])*
            fn on_async_std() {
                crate::scenarios::run_async_std(
                    crate::scenarios::with_deadline::<redis_sync::AsyncStd, _>(
                        concat!(stringify!($name), "::on_async_std"),
                        $body::<redis_sync::AsyncStd>($($arg),*),
                    ),
                );
            }
        }
    )*};
}

tls_runtime_tests! {
    semaphore_over_tls => semaphore_over_tls();
    event_over_tls => event_over_tls();
    plain_url_to_tls_port_fails => plain_url_to_tls_port_fails();
    untrusted_certificate_fails => untrusted_certificate_fails();
}

/// How long a failing connection attempt may take before it counts as a hang.
const FAIL_WITHIN: Duration = Duration::from_secs(5);

/// Count 2 over TLS: two acquires, a third times out, a release lets the next one in, and
/// `inspect` sees the holder. The timed-out wait ran on its own blocking connection, over
/// TLS as well.
async fn semaphore_over_tls<R: Runtime>() {
    let client = common::tls::client();
    let name = common::unique_prefix("tls_sem");
    let sem = Semaphore::<R>::create(&client, &name, 2).await.unwrap();
    let first = sem.acquire().await.unwrap();
    let second = sem.acquire().await.unwrap();
    match sem.acquire_timeout(Duration::from_millis(200)).await {
        Err(Error::Timeout(_)) => {}
        other => panic!("expected a timeout with both permits held, got {other:?}"),
    }
    first.release().await.unwrap();
    let third = sem.acquire_timeout(Duration::from_secs(5)).await.unwrap();
    let state = sem.inspect().await.unwrap();
    assert_eq!(state.count, Some(2));
    assert_eq!(state.free, 0, "{state:?}");
    assert_eq!(state.held(), 2, "{state:?}");
    assert!(
        state.holders.iter().any(|h| h.id == third.holder()),
        "holder {} not in {state:?}",
        third.holder()
    );
    second.release().await.unwrap();
    third.release().await.unwrap();
    let state = sem.inspect().await.unwrap();
    assert_eq!((state.free, state.held()), (2, 0), "{state:?}");
    sem.close();
}

/// `set` then `wait` over TLS: the wait returns and consumes the signal.
async fn event_over_tls<R: Runtime>() {
    let client = common::tls::client();
    let name = common::unique_prefix("tls_event");
    let ev = Event::<R>::open(&client, &name).await.unwrap();
    ev.set().await.unwrap();
    assert!(ev.is_set().await.unwrap());
    ev.wait_timeout(Duration::from_secs(5)).await.unwrap();
    assert!(!ev.is_set().await.unwrap());
    ev.close();
}

/// Plain text to the TLS-only port: `create` fails with a Redis (I/O) error, quickly.
async fn plain_url_to_tls_port_fails<R: Runtime>() {
    let client = redis::Client::open(common::tls::shared().plain_url()).unwrap();
    let name = common::unique_prefix("tls_plain");
    let result = fails_quickly::<R, _>(Semaphore::<R>::create(&client, &name, 1)).await;
    match result {
        Err(Error::Redis(e)) => eprintln!("error: {e} (kind {:?})", e.kind()),
        other => panic!("expected Error::Redis, got {other:?}"),
    }
}

/// `rediss://` with the system trust store only (the throwaway CA is not in it): the
/// certificate is rejected, quickly. Shows the other tests really verify certificates.
async fn untrusted_certificate_fails<R: Runtime>() {
    let client = redis::Client::open(common::tls::shared().url.as_str()).unwrap();
    let name = common::unique_prefix("tls_untrusted");
    let result = fails_quickly::<R, _>(Semaphore::<R>::create(&client, &name, 1)).await;
    match result {
        Err(Error::Redis(e)) => {
            eprintln!("error: {e} (kind {:?})", e.kind());
            assert!(
                e.to_string().contains("certificate"),
                "expected a certificate error, got {e}"
            );
        }
        other => panic!("expected Error::Redis, got {other:?}"),
    }
}

/// Awaits `fut`, failing the test if it takes [`FAIL_WITHIN`] or more.
async fn fails_quickly<R: Runtime, F: std::future::Future>(fut: F) -> F::Output {
    let started = Instant::now();
    let limit = scenarios::rt::<R>().sleep(FAIL_WITHIN);
    futures::pin_mut!(fut);
    futures::pin_mut!(limit);
    match future::select(fut, limit).await {
        Either::Left((out, _)) => {
            eprintln!("failed after {:?}", started.elapsed());
            out
        }
        Either::Right(((), _)) => panic!("no answer within {FAIL_WITHIN:?}: hung?"),
    }
}
