//! The semaphore beyond one permit at a time: several permits at once, changing the
//! count of a live semaphore, and permits with a hard lease of their own.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::engine::{check_lease, HeldMany};
use crate::runtime::{self, Runtime};
use crate::scripts::RESIZE;
use crate::{Error, Invalid, KeyLayout, LeaseLostFuture, Permit, Result, Semaphore};

/// Several permits of a [`Semaphore`] taken together by
/// [`acquire_many`](Semaphore::acquire_many), held until released or dropped, then given
/// back together in one call.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(sem: redis_sync::Semaphore<redis_sync::Tokio>) -> redis_sync::Result<()> {
/// let permits = sem.acquire_many(3).await?;
/// assert_eq!(permits.count(), 3);
/// permits.release().await?;
/// # Ok(()) }
/// ```
#[must_use = "the permits are given back as soon as this is dropped"]
#[clippy::has_significant_drop]
#[derive(Debug)]
pub struct Permits<R: Runtime> {
    held: HeldMany<R>,
}

impl<R: Runtime> Permits<R> {
    /// How many permits it holds.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(sem: redis_sync::Semaphore<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// println!("{}", sem.acquire_many(2).await?.count());
    /// # Ok(()) }
    /// ```
    pub fn count(&self) -> u32 {
        self.held.n as u32
    }

    /// Gives all of them back in one call and reports the outcome.
    ///
    /// # Errors
    ///
    /// [`Error::LeaseLost`] when the lease had expired and they were reclaimed;
    /// [`Error::Redis`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if dropped, the release completes in the background.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(sem: redis_sync::Semaphore<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// sem.acquire_many(2).await?.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn release(self) -> Result<()> {
        self.held.release().await
    }

    /// True once the holder's lease was found lost.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(sem: redis_sync::Semaphore<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// assert!(!sem.acquire_many(2).await?.is_lost());
    /// # Ok(()) }
    /// ```
    pub fn is_lost(&self) -> bool {
        self.held.engine.lose_if_expired(&self.held.gen)
    }

    /// Resolves when the holder's lease is lost.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only observes.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(sem: redis_sync::Semaphore<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// let permits = sem.acquire_many(2).await?;
    /// let lost = permits.lost();
    /// # drop(lost); Ok(()) }
    /// ```
    pub fn lost(&self) -> LeaseLostFuture {
        LeaseLostFuture::of(&self.held.gen)
    }

    /// The holder id they are recorded under in Redis.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(sem: redis_sync::Semaphore<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// println!("{}", sem.acquire_many(2).await?.holder());
    /// # Ok(()) }
    /// ```
    pub fn holder(&self) -> &str {
        &self.held.gen.id
    }
}

impl<R: Runtime> Semaphore<R> {
    /// Waits for `n` permits at once: all of them or none.
    ///
    /// Fairness: a request for several permits takes a **gate** in arrival order (one
    /// request collects at a time, so two requests never hold parts of what the other
    /// needs: no deadlock), then collects its permits. While it collects, single acquires
    /// no longer take the fast path: they queue on the server behind it, so it gets at
    /// least one permit per turn of that queue, and completes after at most `n` turns
    /// however many single requests keep coming. Its permits are recorded under this
    /// handle's lease as they come, so a crash midway loses none of them.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] with [`Invalid::PermitsOutOfRange`] unless
    /// `1 <= n <= count`; those of [`Semaphore::acquire`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if dropped, no permit is kept; those collected so far, and the gate,
    /// are given back in the background.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(sem: redis_sync::Semaphore<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// let batch = sem.acquire_many(4).await?;
    /// // ... work that needs four slots ...
    /// batch.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn acquire_many(&self, n: u32) -> Result<Permits<R>> {
        Ok(Permits {
            held: self.engine().take_many(n, false).await?,
        })
    }

    /// Waits for `n` permits for at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`], and those of [`Semaphore::acquire_many`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, like [`Semaphore::acquire_many`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn demo(sem: redis_sync::Semaphore<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// let batch = sem.acquire_many_timeout(4, Duration::from_secs(5)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn acquire_many_timeout(&self, n: u32, timeout: Duration) -> Result<Permits<R>> {
        self.engine().check_many(n)?;
        match runtime::timeout(&self.engine().rt, timeout, self.acquire_many(n)).await {
            Some(res) => res,
            None => {
                self.engine().note_timeout();
                Err(Error::Timeout(timeout))
            }
        }
    }

    /// Takes `n` permits if they are free now and no other request for several is being
    /// collected: one round trip.
    ///
    /// # Errors
    ///
    /// As [`Semaphore::acquire_many`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(sem: redis_sync::Semaphore<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// if let Some(batch) = sem.try_acquire_many(2).await? {
    ///     batch.release().await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn try_acquire_many(&self, n: u32) -> Result<Option<Permits<R>>> {
        Ok(self
            .engine()
            .try_take_many(n, false)
            .await?
            .map(|held| Permits { held }))
    }

    /// Sets the count of the live semaphore to `n`, atomically in Redis (Redisson's
    /// `trySetPermits` on a live semaphore, plus `addPermits`/`reducePermits`).
    ///
    /// Raising it adds free permits at once. Lowering it removes free permits, and never
    /// revokes a held one: permits held beyond the new count are destroyed as they come
    /// back, and until then new grants wait ([`SemaphoreState::pending_reduction`]
    /// shows how many are still to go). This handle knows the new count at once; every
    /// other handle learns it at its next lease renewal, so [`Semaphore::count`] is stale
    /// for at most one renewal interval (`lease_ttl / 3`, ±20%).
    ///
    /// # Errors
    ///
    /// [`Error::CountOutOfRange`] unless `1 <= n <= 4096`; [`Error::InvalidArgument`] with
    /// [`Invalid::NotWithRedsync2`] for [`KeyLayout::Redsync2`] (redsync 2.0 peers would
    /// give back permits the count no longer has); [`Error::Redis`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the change is one script, done or not.
    ///
    /// [`SemaphoreState::pending_reduction`]: crate::SemaphoreState::pending_reduction
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(sem: redis_sync::Semaphore<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// sem.set_count(10).await?;
    /// assert_eq!(sem.count(), 10);
    /// # Ok(()) }
    /// ```
    pub async fn set_count(&self, n: u32) -> Result<()> {
        if !crate::error::COUNT_RANGE.contains(&i64::from(n)) {
            return Err(Error::CountOutOfRange(i64::from(n)));
        }
        self.resize("set", i64::from(n)).await.map(drop)
    }

    /// Adds `k` permits to the live semaphore (see [`Semaphore::set_count`]); returns the
    /// new count.
    ///
    /// # Errors
    ///
    /// [`Error::CountOutOfRange`] when the count would leave 1..=4096; as
    /// [`Semaphore::set_count`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(sem: redis_sync::Semaphore<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// let count = sem.add_permits(2).await?;
    /// # Ok(()) }
    /// ```
    pub async fn add_permits(&self, k: u32) -> Result<u32> {
        self.resize("add", i64::from(k)).await
    }

    /// Removes `k` permits from the live semaphore (see [`Semaphore::set_count`]: held
    /// permits are never revoked); returns the new count.
    ///
    /// # Errors
    ///
    /// [`Error::CountOutOfRange`] when the count would leave 1..=4096; as
    /// [`Semaphore::set_count`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(sem: redis_sync::Semaphore<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// let count = sem.reduce_permits(1).await?;
    /// # Ok(()) }
    /// ```
    pub async fn reduce_permits(&self, k: u32) -> Result<u32> {
        self.resize("add", -i64::from(k)).await
    }

    async fn resize(&self, mode: &str, n: i64) -> Result<u32> {
        let engine = self.engine();
        let keys = &engine.cfg.keys;
        if keys.layout == KeyLayout::Redsync2 {
            return Err(Error::InvalidArgument(Invalid::NotWithRedsync2("resizing")));
        }
        let mut conn = engine.conn.clone();
        let count: i64 = RESIZE
            .key(keys.meta_or_pool())
            .key(&keys.pool)
            .arg(mode)
            .arg(n)
            .arg(crate::engine::PERMIT_TOKEN)
            .arg(engine.key_ttl_ms())
            .invoke_async(&mut conn)
            .await?;
        match count {
            -2 => Err(Error::MetadataMissing),
            c if c < 1 => {
                let current = i64::from(engine.count.load(Ordering::Acquire));
                Err(Error::CountOutOfRange(if mode == "add" {
                    current + n
                } else {
                    n
                }))
            }
            c => {
                let before = engine.count.swap(c as u32, Ordering::AcqRel);
                if (c as u32) < before {
                    // Held permits may be owed to the reduction: until the next renewal
                    // says none are, releases go through Redis.
                    engine.reduction_pending.store(true, Ordering::Release);
                }
                Ok(c as u32)
            }
        }
    }

    /// Waits for a permit with a **hard lease** of `lease`: the watchdog does not renew it,
    /// so it runs out `lease` after the grant unless [`Permit::extend`] pushes it back,
    /// whatever happens to this process (Redisson's `RPermitExpirableSemaphore`). When it
    /// runs out the permit is reclaimed and reported lost like any other
    /// ([`Permit::is_lost`], [`Permit::lost`]). An upper bound on holding time.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] unless 100 ms <= `lease` <= 30 days; those of
    /// [`Semaphore::acquire`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if dropped, no permit is kept.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn demo(sem: redis_sync::Semaphore<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// let permit = sem.acquire_with_lease(Duration::from_secs(30)).await?;
    /// // at most 30 s unless extended
    /// permit.extend(Duration::from_secs(30)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn acquire_with_lease(&self, lease: Duration) -> Result<Permit<R>> {
        check_lease(lease)?;
        let permit = self.acquire().await?;
        self.harden(permit, lease).await
    }

    /// [`Semaphore::acquire_with_lease`] waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`], and those of [`Semaphore::acquire_with_lease`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn demo(sem: redis_sync::Semaphore<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// let permit = sem
    ///     .acquire_with_lease_timeout(Duration::from_secs(30), Duration::from_secs(1))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn acquire_with_lease_timeout(
        &self,
        lease: Duration,
        timeout: Duration,
    ) -> Result<Permit<R>> {
        check_lease(lease)?;
        let permit = self.acquire_timeout(timeout).await?;
        self.harden(permit, lease).await
    }

    /// [`Semaphore::acquire_with_lease`] if a permit is free now.
    ///
    /// # Errors
    ///
    /// As [`Semaphore::acquire_with_lease`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn demo(sem: redis_sync::Semaphore<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// if let Some(permit) = sem.try_acquire_with_lease(Duration::from_secs(30)).await? {
    ///     permit.release().await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn try_acquire_with_lease(&self, lease: Duration) -> Result<Option<Permit<R>>> {
        check_lease(lease)?;
        match self.try_acquire().await? {
            Some(permit) => Ok(Some(self.harden(permit, lease).await?)),
            None => Ok(None),
        }
    }

    async fn harden(&self, permit: Permit<R>, lease: Duration) -> Result<Permit<R>> {
        let held = permit.into_held();
        Ok(Permit::new(self.engine().harden(held, lease).await?))
    }
}
