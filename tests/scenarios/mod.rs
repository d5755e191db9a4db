//! Scaffolding shared by the runtime-generic test suites (`tests/semaphore.rs`,
//! `tests/event.rs`).
//!
//! Every scenario is an `async fn name<R: redis_sync::Runtime>(..)` written once; the
//! [`runtime_tests!`] macro runs it on every runtime whose cargo feature is on:
//!
//! * `on_tokio`: a fresh multi-thread tokio runtime, `block_on`;
//! * `on_smol`: `smol::block_on` (tasks on smol's global executor);
//! * `on_async_std`: `async_std::task::block_on`.
//!
//! With every feature on, redis-rs picks a connection's runtime per connection: tokio when a
//! tokio runtime is current on the thread, else smol. The smol and async-std wrappers
//! therefore never run inside a tokio context (and check that they do not), so that their
//! connections really run on smol's reactor.
//!
//! Generic bodies never use `tokio::spawn`: [`spawn`] goes through `R::spawn` and returns
//! the result over a oneshot channel; [`sleep`] is `R::sleep`.

#![allow(dead_code)]

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use futures::future::{self, Either, FutureExt, Shared};
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use redis_sync::{Runtime, Semaphore, SemaphoreState};

/// A scenario that runs longer than this is considered hung and fails (so that a
/// deadlock fails one test instead of hanging the whole run). Far above any normal run.
pub const SCENARIO_DEADLINE: Duration = Duration::from_secs(120);

/// How long eventual conditions (background releases, give-backs) may take to settle.
pub const SETTLE: Duration = Duration::from_secs(10);

/// Expands one `#[test]` per runtime for each scenario.
///
/// ```ignore
/// runtime_tests! {
///     /// doc
///     #[ignore = "BUG: ..."]            // optional, applied to every runtime's test
///     test_name => scenario_fn(arg1, arg2);
/// }
/// ```
///
/// gives `test_name::on_tokio`, `test_name::on_smol`, `test_name::on_async_std`, each
/// calling `scenario_fn::<RuntimeType>(arg1, arg2)` under [`with_deadline`].
macro_rules! runtime_tests {
    ($(
        $(#[$meta:meta])*
        $name:ident => $body:ident ( $($arg:expr),* $(,)? );
    )*) => {$(
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[cfg(feature = "tokio")]
            #[test]
            $(#[$meta])*
            fn on_tokio() {
                crate::scenarios::run_tokio(crate::scenarios::with_deadline::<redis_sync::Tokio, _>(
                    concat!(stringify!($name), "::on_tokio"),
                    $body::<redis_sync::Tokio>($($arg),*),
                ));
            }

            #[cfg(feature = "smol")]
            #[test]
            $(#[$meta])*
            fn on_smol() {
                crate::scenarios::run_smol(crate::scenarios::with_deadline::<redis_sync::Smol, _>(
                    concat!(stringify!($name), "::on_smol"),
                    $body::<redis_sync::Smol>($($arg),*),
                ));
            }

            #[cfg(feature = "async-std")]
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

/// Runs `fut` on a fresh multi-thread tokio runtime.
#[cfg(feature = "tokio")]
pub fn run_tokio<F: Future>(fut: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("cannot build a tokio runtime")
        .block_on(fut)
}

/// Runs `fut` with `smol::block_on`, outside any tokio context.
#[cfg(feature = "smol")]
pub fn run_smol<F: Future>(fut: F) -> F::Output {
    assert_no_tokio_context();
    smol::block_on(async {
        // Tasks spawned by `Smol` run on smol's global executor: no tokio there either.
        let (tx, rx) = oneshot::channel();
        smol::spawn(async move {
            let _ = tx.send(tokio::runtime::Handle::try_current().is_ok());
        })
        .detach();
        assert!(
            !rx.await.expect("probe task"),
            "smol's executor runs inside a tokio context"
        );
    });
    smol::block_on(fut)
}

/// Runs `fut` with `async_std::task::block_on`, outside any tokio context.
#[cfg(feature = "async-std")]
pub fn run_async_std<F: Future>(fut: F) -> F::Output {
    assert_no_tokio_context();
    let in_tokio = async_std::task::block_on(async_std::task::spawn(async {
        tokio::runtime::Handle::try_current().is_ok()
    }));
    assert!(
        !in_tokio,
        "async-std's executor runs inside a tokio context"
    );
    async_std::task::block_on(fut)
}

fn assert_no_tokio_context() {
    assert!(
        tokio::runtime::Handle::try_current().is_err(),
        "the smol/async-std wrappers must not run inside a tokio runtime"
    );
}

/// The runtime of type `R` of the current thread.
pub fn rt<R: Runtime>() -> R {
    R::try_current().expect("no runtime of this type on this thread")
}

/// Sleeps on `R`'s clock.
pub async fn sleep<R: Runtime>(duration: Duration) {
    rt::<R>().sleep(duration).await;
}

/// Fails the scenario (panics) if `fut` does not finish within [`SCENARIO_DEADLINE`]: a
/// hang guard, not a timing assertion.
pub async fn with_deadline<R: Runtime, F: Future>(name: &str, fut: F) -> F::Output {
    let deadline = rt::<R>().sleep(SCENARIO_DEADLINE);
    futures::pin_mut!(fut);
    futures::pin_mut!(deadline);
    match future::select(fut, deadline).await {
        Either::Left((out, _)) => out,
        Either::Right(((), _)) => {
            panic!("scenario {name} did not finish within {SCENARIO_DEADLINE:?}: hung?")
        }
    }
}

/// Spawns `fut` on runtime `R` (via `R::spawn`) and returns a handle that resolves to its
/// output. The task starts at once and runs whether or not the handle is awaited; a panic
/// in the task is resumed in the awaiting task.
pub fn spawn<R, F>(fut: F) -> impl Future<Output = F::Output> + Send + 'static
where
    R: Runtime,
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    rt::<R>().spawn(async move {
        let out = AssertUnwindSafe(fut).catch_unwind().await;
        let _ = tx.send(out);
    });
    async move {
        match rx.await {
            Ok(Ok(out)) => out,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => panic!("a spawned task vanished before finishing (runtime shut down?)"),
        }
    }
}

/// A runtime-agnostic barrier: `wait` returns once `n` callers have called it, so that
/// tasks start an operation at the same instant.
#[derive(Clone)]
pub struct Barrier {
    left: Arc<Mutex<(usize, Option<oneshot::Sender<()>>)>>,
    go: Shared<oneshot::Receiver<()>>,
}

impl Barrier {
    pub fn new(n: usize) -> Self {
        let (tx, rx) = oneshot::channel();
        Barrier {
            left: Arc::new(Mutex::new((n, Some(tx)))),
            go: rx.shared(),
        }
    }

    pub async fn wait(&self) {
        {
            let mut left = self.left.lock().unwrap();
            left.0 = left.0.saturating_sub(1);
            if left.0 == 0 {
                if let Some(tx) = left.1.take() {
                    let _ = tx.send(());
                }
            }
        }
        self.go.clone().await.expect("barrier dropped");
    }
}

/// A plain connection with no response timeout, for raw commands (including blocking
/// ones such as `BLPOP`) that simulate another client, e.g. a Python redsync process.
pub async fn raw_conn(client: &redis::Client) -> MultiplexedConnection {
    let cfg = AsyncConnectionConfig::new()
        .set_response_timeout(None)
        .set_connection_timeout(Some(Duration::from_secs(5)));
    client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
        .expect("cannot connect to redis")
}

/// Polls `probe` (with a short sleep) until it returns `Some`, for at most [`SETTLE`]; the
/// last `None`'s description is in the panic message. Only for conditions that settle by
/// background work with no signal to await (releases from `Drop`, orphaned give-backs).
pub async fn eventually<R, T, F, Fut>(what: &str, mut probe: F) -> T
where
    R: Runtime,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + SETTLE;
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!("{what}: not reached within {SETTLE:?}; last seen: {last}")
            }
            Err(_) => sleep::<R>(Duration::from_millis(20)).await,
        }
    }
}

/// Waits until no permit of `sem` is lost or duplicated: `free + held == count`.
pub async fn wait_conserved<R: Runtime>(sem: &Semaphore<R>) -> SemaphoreState {
    let count = sem.count();
    eventually::<R, _, _, _>("permit conservation (free + held == count)", || async {
        let st = sem.inspect().await.map_err(|e| e.to_string())?;
        if st.count == Some(count) && st.free + st.held() == count as usize {
            Ok(st)
        } else {
            Err(format!("{st:?}"))
        }
    })
    .await
}

/// Waits until every permit of `sem` is back in the pool (everything was released):
/// `free == count` and `held == 0`, which implies conservation.
pub async fn wait_all_free<R: Runtime>(sem: &Semaphore<R>) -> SemaphoreState {
    let count = sem.count();
    eventually::<R, _, _, _>("all permits free after every release", || async {
        let st = sem.inspect().await.map_err(|e| e.to_string())?;
        if st.count == Some(count) && st.free == count as usize && st.held() == 0 {
            Ok(st)
        } else {
            Err(format!("{st:?}"))
        }
    })
    .await
}

/// Ends `holder`'s lease on semaphore `name` (default prefix) now, behind the library's
/// back, as if its process had been frozen past it.
pub async fn expire_lease(client: &redis::Client, name: &str, holder: &str) {
    let mut raw = raw_conn(client).await;
    let _: () = redis::cmd("ZADD")
        .arg(format!("redsync:semaphore:{{{name}}}:leases"))
        .arg("XX")
        .arg(1)
        .arg(holder)
        .query_async(&mut raw)
        .await
        .expect("ZADD on the lease set");
}
