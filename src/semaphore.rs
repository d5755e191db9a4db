//! The distributed counting semaphore.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::engine::{Engine, Kind};
use crate::options::{On, Options};
use crate::runtime::{self, Runtime};
use crate::{init, Error, InitStrategy, KeyLayout, Permit, Result, SemaphoreState};

/// The default key prefix of semaphores, as in redsync 2.0.
pub const DEFAULT_SEMAPHORE_PREFIX: &str = "redsync:semaphore";

/// A counting semaphore shared by every process that uses the same Redis and name.
///
/// At no instant do more than `count` holders hold a permit while their leases are valid,
/// and every permit is always either free in Redis or recorded as held by a holder whose
/// lease, once expired, lets any client reclaim it.
///
/// Each handle renews its leases from a background task on its runtime `R`. Many tasks can
/// share one handle: it is cheap to clone (an `Arc` inside; clones are the same handle, with
/// one lease and one queue), and its waiting tasks queue locally, first come first served,
/// on a few blocking connections.
///
/// # Examples
///
/// ```no_run
/// use redis_sync::{Semaphore, Tokio};
///
/// # async fn demo() -> redis_sync::Result<()> {
/// let client = redis_sync::redis::Client::open("redis://127.0.0.1/")?;
/// let sem = Semaphore::<Tokio>::create(&client, "exports", 3).await?;
/// let permit = sem.acquire().await?;
/// // at most 3 holders across every process are here
/// permit.release().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Semaphore<R: Runtime> {
    engine: Arc<Engine<R>>,
}

impl<R: Runtime> Semaphore<R> {
    /// Creates the semaphore with `count` permits, or joins it if it exists with the same
    /// count. Idempotent across processes. Uses the default options; see
    /// [`Semaphore::builder`] for the others.
    ///
    /// # Errors
    ///
    /// [`Error::CountOutOfRange`] unless `1 <= count <= 4096`; [`Error::CountMismatch`] when
    /// it exists with another count; [`Error::Redis`]; [`Error::NoRuntime`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping it leaves at most a lease that expires by itself.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
    /// let sem = redis_sync::Semaphore::<redis_sync::Tokio>::create(&client, "jobs", 5).await?;
    /// assert_eq!(sem.count(), 5);
    /// # Ok(()) }
    /// ```
    pub async fn create(client: &redis::Client, name: &str, count: u32) -> Result<Self> {
        Self::builder(client, name).create(count).await
    }

    /// Joins a semaphore that a creator set up, learning its count; waits up to `timeout`
    /// for it to exist (`None`: forever).
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when it does not appear in time; [`Error::Redis`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
    /// let sem = redis_sync::Semaphore::<redis_sync::Tokio>::attach(
    ///     &client, "jobs", Some(Duration::from_secs(60))).await?;
    /// println!("{} permits", sem.count());
    /// # Ok(()) }
    /// ```
    pub async fn attach(
        client: &redis::Client,
        name: &str,
        timeout: Option<Duration>,
    ) -> Result<Self> {
        Self::builder(client, name).attach(timeout).await
    }

    /// Options beyond the defaults: lease, init strategy, key prefix and layout, blocking
    /// connections, local handoff.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// use redis_sync::{InitStrategy, KeyLayout, Semaphore, Tokio};
    /// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
    /// let sem = Semaphore::<Tokio>::builder(&client, "jobs")
    ///     .lease_ttl(Duration::from_secs(30))
    ///     .init_strategy(InitStrategy::OptimisticLocking)
    ///     .key_layout(KeyLayout::Redsync2)
    ///     .create(4)
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn builder(client: &redis::Client, name: &str) -> SemaphoreBuilder<R> {
        SemaphoreBuilder {
            on: On::Client {
                client: client.clone(),
                rt: None,
            },
            opts: Options::new(name, DEFAULT_SEMAPHORE_PREFIX),
        }
    }

    pub(crate) fn engine(&self) -> &Arc<Engine<R>> {
        &self.engine
    }

    /// The number of permits (redsync's `get_count`), known since `create`/`attach`, and
    /// kept up to date with resizes (see [`Semaphore::set_count`]).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(sem: redis_sync::Semaphore<redis_sync::Tokio>) {
    /// println!("{}", sem.count());
    /// # }
    /// ```
    pub fn count(&self) -> u32 {
        self.engine.count.load(Ordering::Acquire)
    }

    /// Waits for a permit, as long as it takes.
    ///
    /// Takes a free permit in one round trip; otherwise queues behind this handle's earlier
    /// waiters while a blocking connection waits on Redis (no polling).
    ///
    /// # Errors
    ///
    /// [`Error::Closed`], [`Error::Redis`] (Redis unreachable), [`Error::LeaseLost`] (the
    /// handle's lease could not be kept).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if dropped, no permit is taken, and a permit granted at that instant goes
    /// to the next waiter or back to Redis.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(sem: redis_sync::Semaphore<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// let _permit = sem.acquire().await?;
    /// # Ok(()) }
    /// ```
    #[cfg_attr(
        feature = "tracing",
        tracing::instrument(name = "acquire", level = "debug", skip_all,
            fields(primitive = %self.engine.cfg.keys.pool, holder = tracing::field::Empty))
    )]
    pub async fn acquire(&self) -> Result<Permit<R>> {
        let permit = Permit::new(self.engine.take().await?);
        #[cfg(feature = "tracing")]
        tracing::Span::current().record("holder", permit.holder());
        Ok(permit)
    }

    async fn acquire_untraced(&self) -> Result<Permit<R>> {
        Ok(Permit::new(self.engine.take().await?))
    }

    /// Waits for a permit for at most `timeout`, enforced on the client (also below the
    /// Redis timer resolution).
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`], and those of [`Semaphore::acquire`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, like [`Semaphore::acquire`]; a timeout that races a grant gives the
    /// permit back. On a timeout it returns once this handle's cut-short blocking waits
    /// have given back anything they got, so a permit released after the timeout is free
    /// for everyone at once.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn demo(sem: redis_sync::Semaphore<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// match sem.acquire_timeout(Duration::from_secs(2)).await {
    ///     Ok(permit) => permit.release().await?,
    ///     Err(redis_sync::Error::Timeout(_)) => println!("busy"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    #[cfg_attr(
        feature = "tracing",
        tracing::instrument(name = "acquire", level = "debug", skip_all,
            fields(primitive = %self.engine.cfg.keys.pool, ?timeout))
    )]
    pub async fn acquire_timeout(&self, timeout: Duration) -> Result<Permit<R>> {
        match runtime::timeout(&self.engine.rt, timeout, self.acquire_untraced()).await {
            Some(res) => res,
            None => {
                self.engine.note_timeout();
                self.engine.settle_cut_waits().await;
                self.engine.kick_reclaim();
                Err(Error::Timeout(timeout))
            }
        }
    }

    /// Takes a permit if one is free now; `Ok(None)` if not. One round trip.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`], [`Error::Redis`], [`Error::LeaseLost`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a permit taken for a dropped call is given back.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(sem: redis_sync::Semaphore<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// if let Some(permit) = sem.try_acquire().await? {
    ///     permit.release().await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn try_acquire(&self) -> Result<Option<Permit<R>>> {
        Ok(self.engine.try_take().await?.map(Permit::new))
    }

    /// The number of free permits in Redis now (one round trip): a snapshot, which other
    /// processes may change at once (tokio's `available_permits`).
    ///
    /// # Errors
    ///
    /// [`Error::Redis`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(sem: redis_sync::Semaphore<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// println!("{} of {} free", sem.available_permits().await?, sem.count());
    /// # Ok(()) }
    /// ```
    pub async fn available_permits(&self) -> Result<usize> {
        let mut conn = self.engine.conn.clone();
        Ok(redis::AsyncCommands::llen(&mut conn, &self.engine.cfg.keys.pool).await?)
    }

    /// Gives back one permit kept with [`Permit::detach`] (redsync's `release()`).
    ///
    /// # Errors
    ///
    /// [`Error::NotAcquired`] when this handle holds no such permit; [`Error::LeaseLost`];
    /// [`Error::Redis`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: once started, the release completes in the background.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(sem: redis_sync::Semaphore<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// sem.acquire().await?.detach();
    /// sem.release().await?;
    /// assert!(matches!(sem.release().await, Err(redis_sync::Error::NotAcquired)));
    /// # Ok(()) }
    /// ```
    pub async fn release(&self) -> Result<()> {
        let held = self.engine.take_detached().ok_or(Error::NotAcquired)?;
        held.release().await
    }

    /// Stops renewing this handle's leases and fails its waiting and future acquires with
    /// [`Error::Closed`], at once and without a Redis call. Permits still held keep their
    /// lease until it expires (nobody renews it); at that instant they are marked lost
    /// ([`Permit::is_lost`], [`Permit::lost`]), and other clients then reclaim them. To give
    /// everything back at once, use [`Semaphore::shutdown`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(sem: redis_sync::Semaphore<redis_sync::Tokio>) {
    /// sem.close();
    /// assert!(sem.is_closed());
    /// # }
    /// ```
    pub fn close(&self) {
        self.engine.close();
    }

    /// Closes the handle and leaves nothing of it in Redis: the releases of dropped permits
    /// are sent, permits kept with [`Permit::detach`] are given back, waiting acquires fail
    /// with [`Error::Closed`], blocking waits are ended, and every lease of this handle is
    /// given up with whatever it still holds. When it returns `Ok`, [`Semaphore::inspect`]
    /// shows no holder of this handle and every permit it held is free. Permits still out
    /// (guards not yet dropped) are marked lost: their work is no longer protected, and
    /// releasing them later returns [`Error::LeaseLost`] without growing the pool.
    ///
    /// Call it before a process exits (a rolling deploy, a `main` that returns): a handle
    /// merely dropped, or a runtime shut down, cannot finish work in the background, and
    /// its permits then stay held until the lease expires (`lease_ttl`, 300 s by default).
    /// Calling it again does nothing more.
    ///
    /// # Errors
    ///
    /// [`Error::Redis`] when Redis could not be reached: the handle is closed anyway and its
    /// leases expire by themselves.
    ///
    /// # Cancel safety
    ///
    /// The handle is closed at the first poll. Dropped midway, what was sent completes in
    /// the background, and what was not is left to lease expiry; call it again to finish.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(sem: redis_sync::Semaphore<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// let permit = sem.acquire().await?;
    /// drop(permit);
    /// sem.shutdown().await?; // the permit is free in Redis, no lease of ours is left
    /// # Ok(()) }
    /// ```
    pub async fn shutdown(&self) -> Result<()> {
        self.engine.shutdown().await
    }

    /// True after [`Semaphore::close`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(sem: redis_sync::Semaphore<redis_sync::Tokio>) {
    /// assert!(!sem.is_closed());
    /// # }
    /// ```
    pub fn is_closed(&self) -> bool {
        self.engine.is_closed()
    }

    /// What this handle has done and holds: waiting tasks, held permits, grants, timeouts,
    /// lost leases, reclaims, background errors, blocking connections. Plain numbers read
    /// without a Redis call.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(sem: redis_sync::Semaphore<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// let _permit = sem.acquire().await?;
    /// assert_eq!(sem.stats().held, 1);
    /// # Ok(()) }
    /// ```
    pub fn stats(&self) -> crate::Stats {
        self.engine.stats()
    }

    /// Gives back, now, the permits of every holder whose lease has expired (a crashed or
    /// cut-off process), and sweeps reclaimed holders' lists, instead of waiting for the
    /// next renewal of some live client. Returns how many permits went back. Safe to run
    /// from any process at any time: holders with a valid lease are never touched.
    ///
    /// # Errors
    ///
    /// [`Error::Redis`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: each batch is one atomic script; a dropped call leaves the rest for
    /// the next reclaim.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(sem: redis_sync::Semaphore<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// let back = sem.reclaim_expired().await?;
    /// println!("{back} permits of expired holders are free again");
    /// # Ok(()) }
    /// ```
    pub async fn reclaim_expired(&self) -> Result<u64> {
        self.engine.reclaim_expired().await
    }

    /// What Redis records for this semaphore: count, free permits, and each holder with its
    /// permits and remaining lease (server clock).
    ///
    /// # Errors
    ///
    /// [`Error::Redis`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(sem: redis_sync::Semaphore<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// let state = sem.inspect().await?;
    /// println!("{state:#?}");
    /// # Ok(()) }
    /// ```
    pub async fn inspect(&self) -> Result<SemaphoreState> {
        let mut conn = self.engine.conn.clone();
        crate::inspect::inspect(&mut conn, &self.engine.cfg.keys).await
    }
}

/// Builds a [`Semaphore`] with options; from [`Semaphore::builder`].
///
/// # Examples
///
/// ```no_run
/// # use std::time::Duration;
/// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
/// let sem = redis_sync::Semaphore::<redis_sync::Tokio>::builder(&client, "jobs")
///     .key_prefix("myapp:sem")
///     .lease_ttl(Duration::from_secs(20))
///     .create(2)
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until create() or attach()"]
pub struct SemaphoreBuilder<R: Runtime> {
    on: On<R>,
    opts: Options,
}

impl<R: Runtime> SemaphoreBuilder<R> {
    /// The lease of each holder, and the TTL of the keys when every client is gone
    /// (default 300 s, at least 100 ms). Renewed every `lease_ttl / 3` (±20% jitter).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) {
    /// let b = redis_sync::Semaphore::<redis_sync::Tokio>::builder(&client, "jobs")
    ///     .lease_ttl(std::time::Duration::from_secs(10));
    /// # }
    /// ```
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.opts.lease_ttl = ttl;
        self
    }

    /// How the pool is created the first time (default [`InitStrategy::Lua`]).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) {
    /// let b = redis_sync::Semaphore::<redis_sync::Tokio>::builder(&client, "jobs")
    ///     .init_strategy(redis_sync::InitStrategy::OptimisticLocking);
    /// # }
    /// ```
    pub fn init_strategy(mut self, strategy: InitStrategy) -> Self {
        self.opts.init = strategy;
        self
    }

    /// The key prefix (default `redsync:semaphore`; a trailing `:` is ignored).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) {
    /// let b = redis_sync::Semaphore::<redis_sync::Tokio>::builder(&client, "jobs")
    ///     .key_prefix("myapp:sem");
    /// # }
    /// ```
    pub fn key_prefix(mut self, prefix: &str) -> Self {
        self.opts.key_prefix = prefix.to_owned();
        self
    }

    /// Hash-tagged keys (default) or redsync 2.0's exact key names.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) {
    /// let b = redis_sync::Semaphore::<redis_sync::Tokio>::builder(&client, "jobs")
    ///     .key_layout(redis_sync::KeyLayout::Redsync2);
    /// # }
    /// ```
    pub fn key_layout(mut self, layout: KeyLayout) -> Self {
        self.opts.key_layout = layout;
        self
    }

    /// At most this many dedicated connections block on Redis for this handle's waiters,
    /// however many tasks wait (default 4, at least 1).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) {
    /// let b = redis_sync::Semaphore::<redis_sync::Tokio>::builder(&client, "jobs")
    ///     .max_blocking_connections(2);
    /// # }
    /// ```
    pub fn max_blocking_connections(mut self, n: usize) -> Self {
        self.opts.max_blocking = n;
        self
    }

    /// How many times in a row a released permit may go straight to a waiting task of the
    /// same handle (no Redis round trip), or to a waiting handle of the same semaphore on
    /// the same coordinator (one `TRANSFER` script), before it must go back through Redis
    /// where other processes' waiters get their turn (default 16; 0 disables both).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) {
    /// let b = redis_sync::Semaphore::<redis_sync::Tokio>::builder(&client, "jobs")
    ///     .local_handoff_limit(0);
    /// # }
    /// ```
    pub fn local_handoff_limit(mut self, n: u32) -> Self {
        self.opts.handoff_limit = n;
        self
    }

    /// The deadline of every Redis request (default 5 s): the response timeout of the
    /// shared connection, and for a blocking wait, its block time (at most 2 s) plus this.
    /// A connection that misses it is replaced, and the request's outcome is handled as
    /// unknown (never a lost or duplicated permit).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) {
    /// let b = redis_sync::Semaphore::<redis_sync::Tokio>::builder(&client, "jobs")
    ///     .response_timeout(std::time::Duration::from_secs(2));
    /// # }
    /// ```
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.opts.response_timeout = timeout;
        self.opts.response_timeout_set = true;
        self
    }

    /// The runtime to run this handle's background work on (lease renewal, blocking-wait
    /// pumps, releases from `Drop`), instead of `R::try_current()`: for an executor of your
    /// own that has no notion of "current" (see the `custom_executor` example).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
    /// use redis_sync::{Runtime, Semaphore, Tokio};
    /// let sem = Semaphore::<Tokio>::builder(&client, "jobs")
    ///     .runtime(Tokio::try_current()?)
    ///     .create(2)
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn runtime(mut self, rt: R) -> Self {
        self.on.set_runtime(&mut self.opts, rt);
        self
    }

    /// Whether to accept a Redis server whose eviction policy may delete this library's
    /// keys (default `false`: `create`/`attach` fail with [`Error::EvictionPolicy`] when
    /// `maxmemory` is set with any `maxmemory-policy` but `noeviction`). Evicted keys mean
    /// lost or duplicated permits; opt out only where memory can never run short.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) {
    /// let b = redis_sync::Semaphore::<redis_sync::Tokio>::builder(&client, "jobs")
    ///     .allow_eviction_policy(true);
    /// # }
    /// ```
    pub fn allow_eviction_policy(mut self, allow: bool) -> Self {
        self.opts.check_eviction = !allow;
        self.opts.check_eviction_set = true;
        self
    }

    /// With `true`, [`create`](Self::create) on a semaphore that exists with another count
    /// sets its count to the one asked for (see [`Semaphore::set_count`]) instead of
    /// failing with [`Error::CountMismatch`] (default `false`).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
    /// // Deploying a new limit: the first process to start with it resizes the semaphore.
    /// let sem = redis_sync::Semaphore::<redis_sync::Tokio>::builder(&client, "jobs")
    ///     .resize(true)
    ///     .create(8)
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn resize(mut self, resize: bool) -> Self {
        self.opts.resize = resize;
        self
    }

    /// Creates the semaphore with `count` permits or validates that it has that count.
    ///
    /// # Errors
    ///
    /// As [`Semaphore::create`], plus [`Error::InvalidArgument`] for a bad option.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
    /// let sem = redis_sync::Semaphore::<redis_sync::Tokio>::builder(&client, "jobs")
    ///     .create(3)
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn create(self, count: u32) -> Result<Semaphore<R>> {
        if !crate::error::COUNT_RANGE.contains(&i64::from(count)) {
            return Err(Error::CountOutOfRange(i64::from(count)));
        }
        let engine = self.on.start(&self.opts, Kind::Semaphore).await?;
        let actual = match init::ensure_pool(&engine, count).await {
            Ok(actual) => actual,
            Err(e) => {
                engine.close();
                return Err(e);
            }
        };
        if actual != count && !self.opts.resize {
            engine.close();
            return Err(Error::CountMismatch {
                requested: count,
                actual,
            });
        }
        let sem = Self::ready(engine, actual).await?;
        if actual != count {
            if let Err(e) = sem.set_count(count).await {
                sem.close();
                return Err(e);
            }
        }
        Ok(sem)
    }

    /// Joins an existing semaphore, waiting up to `timeout` (`None`: forever) for its
    /// creator.
    ///
    /// # Errors
    ///
    /// As [`Semaphore::attach`], plus [`Error::InvalidArgument`] for a bad option.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
    /// let sem = redis_sync::Semaphore::<redis_sync::Tokio>::builder(&client, "jobs")
    ///     .attach(None)
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn attach(self, timeout: Option<Duration>) -> Result<Semaphore<R>> {
        let engine = self.on.start(&self.opts, Kind::Semaphore).await?;
        let count = match init::wait_for_count(&engine, timeout).await {
            Ok(c) => c,
            Err(e) => {
                engine.close();
                return Err(e);
            }
        };
        Self::ready(engine, count).await
    }

    /// Reads the state of the semaphore without joining it (no lease, no watchdog).
    ///
    /// # Errors
    ///
    /// [`Error::Redis`], [`Error::InvalidArgument`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
    /// let state = redis_sync::Semaphore::<redis_sync::Tokio>::builder(&client, "jobs")
    ///     .inspect()
    ///     .await?;
    /// println!("{} holders", state.holders.len());
    /// # Ok(()) }
    /// ```
    pub async fn inspect(self) -> Result<SemaphoreState> {
        self.on.inspect(&self.opts).await
    }

    /// A builder on `ctx` (see [`Coordinator::semaphore`](crate::Coordinator::semaphore)).
    pub(crate) fn on_context(ctx: Arc<crate::context::Context<R>>, name: &str) -> Self {
        SemaphoreBuilder {
            on: On::Context(ctx),
            opts: Options::new(name, DEFAULT_SEMAPHORE_PREFIX),
        }
    }

    async fn ready(engine: Arc<Engine<R>>, count: u32) -> Result<Semaphore<R>> {
        engine.count.store(count, Ordering::Release);
        // Start the lease now, so that the first acquire costs one round trip.
        if let Err(e) = engine.current_gen().await {
            engine.close();
            return Err(e);
        }
        Ok(Semaphore { engine })
    }
}
