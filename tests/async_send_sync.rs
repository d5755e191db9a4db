//! Compile-time checks that the public futures of `redis-sync` are `Send` (so they can be
//! spawned on multi-threaded executors) and that the handles are `Send + Sync`, in the
//! manner of tokio's `tests/async_send_sync.rs`.
//!
//! Nothing here runs: if a future stops being `Send`, this file stops compiling. Each check
//! is made once for any runtime `R` and once per concrete runtime type behind its feature.

#![allow(dead_code)]

use std::time::Duration;

use redis_sync::{
    Event, EventBuilder, LeaseLostFuture, Permit, Runtime, Semaphore, SemaphoreBuilder,
    SemaphoreState,
};

fn require_send<T: Send>(_: &T) {}
fn require_send_sync<T: Send + Sync>() {}

/// Expands the checks for one runtime type `$rt` (a type or a generic parameter).
macro_rules! check_runtime {
    ($fn_name:ident => $rt:ty) => {
        check_runtime! { $fn_name<> => $rt }
    };
    ($fn_name:ident < $($gen:ident : $bound:path)? > => $rt:ty) => {
        fn $fn_name<$($gen: $bound)?>(
            client: &redis::Client,
            sem: &Semaphore<$rt>,
            permit: Permit<$rt>,
            ev: &Event<$rt>,
        ) {
            require_send_sync::<Semaphore<$rt>>();
            require_send_sync::<Permit<$rt>>();
            require_send_sync::<Event<$rt>>();
            require_send_sync::<SemaphoreBuilder<$rt>>();
            require_send_sync::<EventBuilder<$rt>>();
            require_send_sync::<SemaphoreState>();
            require_send_sync::<$rt>();

            // Semaphore.
            let f = Semaphore::<$rt>::create(client, "n", 1);
            require_send(&f);
            let f = Semaphore::<$rt>::attach(client, "n", Some(Duration::from_secs(1)));
            require_send(&f);
            let f = Semaphore::<$rt>::attach(client, "n", None);
            require_send(&f);
            let f = sem.acquire();
            require_send(&f);
            let f = sem.acquire_timeout(Duration::from_secs(1));
            require_send(&f);
            let f = sem.try_acquire();
            require_send(&f);
            let f = sem.release();
            require_send(&f);
            let f = sem.inspect();
            require_send(&f);

            // The builder's futures.
            let f = Semaphore::<$rt>::builder(client, "n").create(1);
            require_send(&f);
            let f = Semaphore::<$rt>::builder(client, "n").attach(None);
            require_send(&f);
            let f = Semaphore::<$rt>::builder(client, "n").inspect();
            require_send(&f);

            // Permit.
            let lost: LeaseLostFuture = permit.lost();
            require_send(&lost);
            let f = permit.release();
            require_send(&f);

            // Event.
            let f = Event::<$rt>::open(client, "n");
            require_send(&f);
            let f = Event::<$rt>::builder(client, "n").open();
            require_send(&f);
            let f = ev.set();
            require_send(&f);
            let f = ev.wait();
            require_send(&f);
            let f = ev.wait_timeout(Duration::from_secs(1));
            require_send(&f);
            let f = ev.clear();
            require_send(&f);
            let f = ev.is_set();
            require_send(&f);
        }
    };
}

// Any runtime at all (what generic code relies on).
check_runtime! { generic<R: Runtime> => R }

#[cfg(feature = "tokio")]
check_runtime! { tokio_runtime => redis_sync::Tokio }

#[cfg(feature = "smol")]
check_runtime! { smol_runtime => redis_sync::Smol }

#[cfg(feature = "async-std")]
check_runtime! { async_std_runtime => redis_sync::AsyncStd }

fn lease_lost_future_is_send_sync() {
    require_send_sync::<LeaseLostFuture>();
}

/// The checks above are made by the compiler; this test only makes the file show up in a
/// test run.
#[test]
fn public_futures_are_send() {}
