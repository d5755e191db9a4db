//! The permit guard.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::engine::{Held, LostSignal};
use crate::runtime::Runtime;
use crate::Result;

/// One permit of a [`Semaphore`](crate::Semaphore), held until this guard is released or
/// dropped.
///
/// Dropping it gives the permit back without blocking: the release runs on the runtime
/// (or goes straight to a waiting task of the same handle). Use [`Permit::release`] to
/// learn whether the release succeeded. If the process dies first, the holder's lease
/// expires and other clients reclaim the permit.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(sem: redis_sync::Semaphore<redis_sync::Tokio>) -> redis_sync::Result<()> {
/// let permit = sem.acquire().await?;
/// // ... work while holding it; `permit.lost()` resolves if the lease is lost ...
/// permit.release().await?;
/// # Ok(()) }
/// ```
#[must_use = "the permit is given back as soon as it is dropped"]
#[clippy::has_significant_drop]
#[derive(Debug)]
pub struct Permit<R: Runtime> {
    held: Held<R>,
}

impl<R: Runtime> Permit<R> {
    pub(crate) fn new(held: Held<R>) -> Self {
        Permit { held }
    }

    /// The token's fence (a mutex's fencing token; 0 for a semaphore's permit).
    pub(crate) fn fence(&self) -> u64 {
        self.held.fence
    }

    pub(crate) fn into_held(self) -> Held<R> {
        self.held
    }

    /// Pushes back the end of this permit's **hard lease** to at least `lease` from now
    /// (never shortens it). Only for permits from
    /// [`Semaphore::acquire_with_lease`](crate::Semaphore::acquire_with_lease): the others'
    /// lease is renewed for them.
    ///
    /// # Errors
    ///
    /// [`Error::LeaseLost`](crate::Error::LeaseLost) when the lease had already run out
    /// (the permit is reclaimed, or about to be); [`Error::InvalidArgument`](crate::Error::InvalidArgument)
    /// for a permit without a hard lease or a lease outside 100 ms..=30 days;
    /// [`Error::Redis`](crate::Error::Redis).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if dropped, the lease is extended or not; the permit's loss deadline
    /// only moves on a reply.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn demo(sem: redis_sync::Semaphore<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// let permit = sem.acquire_with_lease(Duration::from_secs(10)).await?;
    /// permit.extend(Duration::from_secs(10)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn extend(&self, lease: std::time::Duration) -> Result<()> {
        self.held.engine.extend(&self.held.gen, lease).await
    }

    /// Gives the permit back and reports the outcome.
    ///
    /// # Errors
    ///
    /// [`Error::LeaseLost`](crate::Error::LeaseLost) when the holder's lease expired and the
    /// permit had already been reclaimed (the pool is not grown);
    /// [`Error::Redis`](crate::Error::Redis) when Redis could not be reached (the permit is
    /// then given back as soon as the handle learns the outcome, or when its lease expires).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if the future is dropped, the release still completes in the
    /// background.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(sem: redis_sync::Semaphore<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// let permit = sem.acquire().await?;
    /// permit.release().await?;
    /// # Ok(()) }
    /// ```
    #[cfg_attr(
        feature = "tracing",
        tracing::instrument(name = "release", level = "debug", skip_all,
            fields(primitive = %self.held.engine.cfg.keys.pool, holder = %self.held.gen.id))
    )]
    pub async fn release(self) -> Result<()> {
        self.held.release().await
    }

    /// Keeps the permit held by the semaphore handle without a guard, like redsync's
    /// `acquire()`; give it back later with [`Semaphore::release`](crate::Semaphore::release)
    /// (or [`Semaphore::shutdown`](crate::Semaphore::shutdown)). Unlike tokio's
    /// `SemaphorePermit::forget`, the permit is not removed from the semaphore: it stays
    /// held, under this handle's lease.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(sem: redis_sync::Semaphore<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// sem.acquire().await?.detach();
    /// sem.release().await?;
    /// # Ok(()) }
    /// ```
    pub fn detach(self) {
        self.held.detach();
    }

    /// The former name of [`Permit::detach`]. Renamed because tokio's `forget` means the
    /// opposite (the permit is gone for good); this alias goes away in the next release.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(sem: redis_sync::Semaphore<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// #[allow(deprecated)]
    /// sem.acquire().await?.detach();
    /// sem.release().await?;
    /// # Ok(()) }
    /// ```
    #[deprecated(
        since = "0.2.0",
        note = "renamed to `detach`: tokio's `forget` means the opposite"
    )]
    pub fn forget(self) {
        self.detach();
    }

    /// True once the holder's lease was found lost: the permit may already belong to
    /// someone else, so work done under it is no longer protected.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(sem: redis_sync::Semaphore<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// let permit = sem.acquire().await?;
    /// assert!(!permit.is_lost());
    /// # Ok(()) }
    /// ```
    pub fn is_lost(&self) -> bool {
        // The watchdog's timer may not have fired yet: tell the truth now.
        self.held.engine.lose_if_expired(&self.held.gen)
    }

    /// Resolves when the holder's lease is lost (immediately if it already is), so work can
    /// be abandoned with `select!`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only observes.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn work() {}
    /// # async fn demo(sem: redis_sync::Semaphore<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// let permit = sem.acquire().await?;
    /// tokio::select! {
    ///     _ = work() => permit.release().await?,
    ///     _ = permit.lost() => eprintln!("lease lost: work abandoned"),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn lost(&self) -> LeaseLostFuture {
        LeaseLostFuture::of(&self.held.gen)
    }

    /// The holder id this permit is recorded under in Redis (see
    /// [`Semaphore::inspect`](crate::Semaphore::inspect)). A permit just handed over by
    /// another handle of the same semaphore on the same coordinator is recorded under this
    /// id once the move lands, within about a round trip; until then Redis shows it under
    /// the handle that released it.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(sem: redis_sync::Semaphore<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// let permit = sem.acquire().await?;
    /// println!("held by {}", permit.holder());
    /// # Ok(()) }
    /// ```
    pub fn holder(&self) -> &str {
        &self.held.gen.id
    }
}

/// Resolves when a permit's lease is lost. Returned by [`Permit::lost`].
///
/// # Examples
///
/// ```no_run
/// # async fn demo(sem: redis_sync::Semaphore<redis_sync::Tokio>) -> redis_sync::Result<()> {
/// let permit = sem.acquire().await?;
/// let lost: redis_sync::LeaseLostFuture = permit.lost();
/// # drop(lost); Ok(()) }
/// ```
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct LeaseLostFuture {
    signal: LostSignal,
    // Keeps the sender alive: the future resolves on a loss, never because the permit's
    // generation was dropped after its release.
    _gen: std::sync::Arc<crate::engine::Generation>,
}

impl LeaseLostFuture {
    pub(crate) fn of(gen: &std::sync::Arc<crate::engine::Generation>) -> Self {
        LeaseLostFuture {
            signal: gen.lost_signal(),
            _gen: gen.clone(),
        }
    }
}

impl Future for LeaseLostFuture {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // The sender fires on loss; `_gen` keeps it from being dropped unfired.
        Pin::new(&mut self.signal).poll(cx).map(|_| ())
    }
}
