//! The runtime layer: the only thing the primitives need from an executor is to spawn a
//! detached task (lease watchdog, waiter pumps, releases from `Drop`) and to sleep.
//!
//! One marker type per cargo feature: `Tokio`, `Smol`, `AsyncStd`. Features are
//! additive; with several on, pick the runtime by the type parameter.

use std::future::Future;
use std::time::Duration;

use crate::Result;

/// An async executor the primitives can run their background work on.
///
/// Implemented by `Tokio`, `Smol` and `AsyncStd` (each behind its cargo feature).
/// The Redis connections are driven by redis-rs: `Tokio` uses its `tokio-comp` support and
/// `Smol`/`AsyncStd` its `smol-comp` support.
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "tokio")]
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use redis_sync::{Runtime, Tokio};
/// use std::time::Duration;
///
/// let rt = Tokio::try_current().unwrap();
/// rt.sleep(Duration::from_millis(1)).await;
/// # });
/// ```
pub trait Runtime: Clone + Send + Sync + std::fmt::Debug + 'static {
    /// The runtime this thread is running on, or [`crate::Error::NoRuntime`].
    fn try_current() -> Result<Self>;

    /// Runs `future` to completion in the background; the caller does not wait for it.
    fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static;

    /// Completes after `duration`.
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send + 'static;
}

/// The tokio runtime (feature `tokio`, on by default).
///
/// Holds the handle of the runtime it was created on, so a permit dropped on a thread
/// outside the runtime still hands its release to that runtime.
///
/// # Examples
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use redis_sync::{Runtime, Tokio};
/// assert!(Tokio::try_current().is_ok());
/// # });
/// ```
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
#[derive(Clone, Debug)]
pub struct Tokio(tokio::runtime::Handle);

#[cfg(feature = "tokio")]
impl Runtime for Tokio {
    fn try_current() -> Result<Self> {
        tokio::runtime::Handle::try_current()
            .map(Tokio)
            .map_err(|_| crate::Error::NoRuntime("tokio"))
    }

    fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        drop(self.0.spawn(future));
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send + 'static {
        tokio::time::sleep(duration)
    }
}

/// The smol runtime (feature `smol`): tasks go to smol's global executor.
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "smol")]
/// smol::block_on(async {
///     use redis_sync::{Runtime, Smol};
///     Smol::try_current().unwrap().sleep(std::time::Duration::from_millis(1)).await;
/// });
/// ```
#[cfg(feature = "smol")]
#[cfg_attr(docsrs, doc(cfg(feature = "smol")))]
#[derive(Clone, Copy, Debug, Default)]
pub struct Smol;

#[cfg(feature = "smol")]
impl Runtime for Smol {
    fn try_current() -> Result<Self> {
        Ok(Smol)
    }

    fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        smol::spawn(future).detach();
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send + 'static {
        use futures::FutureExt;
        smol::Timer::after(duration).map(drop)
    }
}

/// The async-std runtime (feature `async-std`). async-std is discontinued upstream; it is
/// supported because it still runs in many applications. Its Redis connections are
/// driven by redis-rs's `smol-comp` support, which shares async-std's reactor.
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "async-std")]
/// async_std::task::block_on(async {
///     use redis_sync::{AsyncStd, Runtime};
///     AsyncStd::try_current().unwrap().sleep(std::time::Duration::from_millis(1)).await;
/// });
/// ```
#[cfg(feature = "async-std")]
#[cfg_attr(docsrs, doc(cfg(feature = "async-std")))]
#[derive(Clone, Copy, Debug, Default)]
pub struct AsyncStd;

#[cfg(feature = "async-std")]
impl Runtime for AsyncStd {
    fn try_current() -> Result<Self> {
        Ok(AsyncStd)
    }

    fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        drop(async_std::task::spawn(future));
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send + 'static {
        async_std::task::sleep(duration)
    }
}

/// Runs `future` with a deadline measured on `rt`'s clock.
pub(crate) async fn timeout<R: Runtime, F: Future>(
    rt: &R,
    duration: Duration,
    future: F,
) -> Option<F::Output> {
    use futures::future::{select, Either};
    let sleep = rt.sleep(duration);
    futures::pin_mut!(future);
    futures::pin_mut!(sleep);
    match select(future, sleep).await {
        Either::Left((out, _)) => Some(out),
        Either::Right(((), _)) => None,
    }
}
