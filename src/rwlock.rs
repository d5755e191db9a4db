//! The distributed read-write lock.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::engine::{Engine, HeldMany, Kind};
use crate::options::{On, Options};
use crate::runtime::{self, Runtime};
use crate::{init, Error, LeaseLostFuture, Permit, Result};

/// The default key prefix of read-write locks.
pub const DEFAULT_RWLOCK_PREFIX: &str = "redsync:rwlock";
/// The default number of readers a read-write lock admits at once.
pub const DEFAULT_MAX_READERS: u32 = 64;

/// Many readers or one writer, across every process that uses the same Redis and name.
///
/// It is a semaphore of `max_readers` permits: a reader takes one, a writer takes them
/// all, through the gate of [`Semaphore::acquire_many`](crate::Semaphore::acquire_many).
/// Readers and writers have leases on the server clock; a crashed reader or writer is
/// reclaimed like a crashed semaphore holder, and a holder that lost its lease is told.
///
/// **Writers are not starved by a stream of readers** (writer preference): a writer
/// takes the gate in arrival order among writers, and from then on no new reader gets
/// the lock by the fast path; readers that arrive then queue on the server behind the
/// writer, which collects the permits as the readers already inside leave. So a writer
/// waits at most for the readers inside when it arrived (and those already queued on the
/// server before it), never for readers that came after it. Permits are never handed from
/// one local reader to the next without going through Redis.
///
/// Each write grant carries a **fencing token** greater than that of every earlier write
/// grant of the lock, with the same guarantee as [`Mutex`](crate::Mutex) (see there for
/// what fencing does and does not protect). The keys never expire, so the token survives
/// idle periods.
///
/// # Examples
///
/// ```no_run
/// use redis_sync::{RwLock, Tokio};
///
/// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
/// let lock = RwLock::<Tokio>::open(&client, "catalog").await?;
/// {
///     let _r = lock.read().await?; // many readers at once
/// }
/// let w = lock.write().await?; // alone
/// println!("write token {}", w.fencing_token());
/// w.unlock().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RwLock<R: Runtime> {
    engine: Arc<Engine<R>>,
}

/// A read lock on a [`RwLock`]; dropping it unlocks in the background.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(lock: redis_sync::RwLock<redis_sync::Tokio>) -> redis_sync::Result<()> {
/// let r = lock.read().await?;
/// r.unlock().await?;
/// # Ok(()) }
/// ```
#[must_use = "the lock is released as soon as the guard is dropped"]
#[clippy::has_significant_drop]
#[derive(Debug)]
pub struct ReadGuard<R: Runtime> {
    permit: Permit<R>,
}

/// The write lock on a [`RwLock`], with its fencing token; dropping it unlocks in the
/// background.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(lock: redis_sync::RwLock<redis_sync::Tokio>) -> redis_sync::Result<()> {
/// let w = lock.write().await?;
/// println!("token {}", w.fencing_token());
/// w.unlock().await?;
/// # Ok(()) }
/// ```
#[must_use = "the lock is released as soon as the guard is dropped"]
#[clippy::has_significant_drop]
#[derive(Debug)]
pub struct WriteGuard<R: Runtime> {
    held: HeldMany<R>,
}

/// A snapshot of a [`RwLock`] in Redis, from [`RwLock::inspect`].
///
/// # Examples
///
/// ```no_run
/// # async fn demo(lock: redis_sync::RwLock<redis_sync::Tokio>) -> redis_sync::Result<()> {
/// let s = lock.inspect().await?;
/// println!("{} readers, writer {:?}, waiting writer {:?}", s.readers, s.writer, s.writer_waiting);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RwLockState {
    /// Readers admitted at once (the semaphore's count), `None` if it does not exist.
    pub max_readers: Option<u32>,
    /// Read locks held now.
    pub readers: usize,
    /// The holder of the write lock, if it is write-locked.
    pub writer: Option<String>,
    /// A writer collecting the lock (it holds the gate: new readers wait), if any.
    pub writer_waiting: Option<String>,
    /// The fencing token of the last write grant (0 before the first).
    pub last_write_fence: u64,
}

macro_rules! guard_common {
    ($guard:ident, $lost:expr, $lost_future:expr, $holder:expr) => {
        impl<R: Runtime> $guard<R> {
            /// True once the holder's lease was found lost: the lock may be someone
            /// else's now.
            ///
            /// # Examples
            ///
            /// ```no_run
            /// # async fn demo(lock: redis_sync::RwLock<redis_sync::Tokio>) -> redis_sync::Result<()> {
            /// assert!(!lock.read().await?.is_lost());
            /// # Ok(()) }
            /// ```
            pub fn is_lost(&self) -> bool {
                let f: fn(&Self) -> bool = $lost;
                f(self)
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
            /// # async fn demo(lock: redis_sync::RwLock<redis_sync::Tokio>) -> redis_sync::Result<()> {
            /// let w = lock.write().await?;
            /// let lost = w.lost();
            /// # drop(lost); Ok(()) }
            /// ```
            pub fn lost(&self) -> LeaseLostFuture {
                let f: fn(&Self) -> LeaseLostFuture = $lost_future;
                f(self)
            }

            /// The holder id the lock is recorded under in Redis.
            ///
            /// # Examples
            ///
            /// ```no_run
            /// # async fn demo(lock: redis_sync::RwLock<redis_sync::Tokio>) -> redis_sync::Result<()> {
            /// println!("{}", lock.read().await?.holder());
            /// # Ok(()) }
            /// ```
            pub fn holder(&self) -> &str {
                let f: fn(&Self) -> &str = $holder;
                f(self)
            }
        }
    };
}

guard_common!(
    ReadGuard,
    |g| g.permit.is_lost(),
    |g| g.permit.lost(),
    |g| g.permit.holder()
);
guard_common!(
    WriteGuard,
    |g| g.held.engine.lose_if_expired(&g.held.gen),
    |g| LeaseLostFuture::of(&g.held.gen),
    |g| &g.held.gen.id
);

impl<R: Runtime> ReadGuard<R> {
    /// Unlocks and reports the outcome.
    ///
    /// # Errors
    ///
    /// [`Error::LeaseLost`] when the lease had expired and the lock was reclaimed;
    /// [`Error::Redis`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if dropped, the release completes in the background.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(lock: redis_sync::RwLock<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// lock.read().await?.unlock().await?;
    /// # Ok(()) }
    /// ```
    pub async fn unlock(self) -> Result<()> {
        self.permit.release().await
    }
}

impl<R: Runtime> WriteGuard<R> {
    /// This write grant's fencing token: greater than that of every earlier write grant.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(lock: redis_sync::RwLock<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// let token = lock.write().await?.fencing_token();
    /// # Ok(()) }
    /// ```
    pub fn fencing_token(&self) -> u64 {
        self.held.fence
    }

    /// Unlocks and reports the outcome.
    ///
    /// # Errors
    ///
    /// [`Error::LeaseLost`] when the lease had expired and the lock was reclaimed;
    /// [`Error::Redis`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if dropped, the release completes in the background.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(lock: redis_sync::RwLock<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// lock.write().await?.unlock().await?;
    /// # Ok(()) }
    /// ```
    pub async fn unlock(self) -> Result<()> {
        self.held.release().await
    }
}

impl<R: Runtime> RwLock<R> {
    /// Opens the lock `name` (creating it the first time) with the default options
    /// ([`DEFAULT_MAX_READERS`] readers at once).
    ///
    /// # Errors
    ///
    /// [`Error::CountMismatch`] when it exists with another `max_readers`;
    /// [`Error::Redis`]; [`Error::NoRuntime`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
    /// let lock = redis_sync::RwLock::<redis_sync::Tokio>::open(&client, "catalog").await?;
    /// # Ok(()) }
    /// ```
    pub async fn open(client: &redis::Client, name: &str) -> Result<Self> {
        Self::builder(client, name).open().await
    }

    /// Options beyond the defaults.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
    /// let lock = redis_sync::RwLock::<redis_sync::Tokio>::builder(&client, "catalog")
    ///     .max_readers(16)
    ///     .open()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn builder(client: &redis::Client, name: &str) -> RwLockBuilder<R> {
        RwLockBuilder {
            on: On::Client {
                client: client.clone(),
                rt: None,
            },
            opts: rwlock_options(name),
            max_readers: DEFAULT_MAX_READERS,
        }
    }

    /// Waits for a read lock (blocking on the server, no polling).
    ///
    /// # Errors
    ///
    /// [`Error::Closed`], [`Error::Redis`], [`Error::LeaseLost`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if dropped, no lock is kept.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(lock: redis_sync::RwLock<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// let r = lock.read().await?;
    /// # Ok(()) }
    /// ```
    pub async fn read(&self) -> Result<ReadGuard<R>> {
        Ok(ReadGuard {
            permit: Permit::new(self.engine.take().await?),
        })
    }

    /// Waits for a read lock for at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`], and those of [`RwLock::read`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(lock: redis_sync::RwLock<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// let r = lock.read_timeout(std::time::Duration::from_secs(1)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn read_timeout(&self, timeout: Duration) -> Result<ReadGuard<R>> {
        match runtime::timeout(&self.engine.rt, timeout, self.read()).await {
            Some(res) => res,
            None => {
                self.engine.note_timeout();
                self.engine.settle_cut_waits().await;
                Err(Error::Timeout(timeout))
            }
        }
    }

    /// A read lock if one is free now and no writer is waiting.
    ///
    /// # Errors
    ///
    /// As [`RwLock::read`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(lock: redis_sync::RwLock<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// if let Some(r) = lock.try_read().await? { r.unlock().await?; }
    /// # Ok(()) }
    /// ```
    pub async fn try_read(&self) -> Result<Option<ReadGuard<R>>> {
        Ok(self.engine.try_take().await?.map(|held| ReadGuard {
            permit: Permit::new(held),
        }))
    }

    /// Waits for the write lock: every reader gone, no other writer.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`], [`Error::Redis`], [`Error::LeaseLost`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if dropped, what it had collected, and the gate, go back.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(lock: redis_sync::RwLock<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// let w = lock.write().await?;
    /// # Ok(()) }
    /// ```
    pub async fn write(&self) -> Result<WriteGuard<R>> {
        let all = self.engine.count.load(Ordering::Acquire);
        Ok(WriteGuard {
            held: self.engine.take_many(all, true).await?,
        })
    }

    /// Waits for the write lock for at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`], and those of [`RwLock::write`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(lock: redis_sync::RwLock<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// let w = lock.write_timeout(std::time::Duration::from_secs(1)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn write_timeout(&self, timeout: Duration) -> Result<WriteGuard<R>> {
        match runtime::timeout(&self.engine.rt, timeout, self.write()).await {
            Some(res) => res,
            None => {
                self.engine.note_timeout();
                Err(Error::Timeout(timeout))
            }
        }
    }

    /// The write lock if nobody holds the lock and no other writer is waiting.
    ///
    /// # Errors
    ///
    /// As [`RwLock::write`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(lock: redis_sync::RwLock<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// if let Some(w) = lock.try_write().await? { w.unlock().await?; }
    /// # Ok(()) }
    /// ```
    pub async fn try_write(&self) -> Result<Option<WriteGuard<R>>> {
        let all = self.engine.count.load(Ordering::Acquire);
        Ok(self
            .engine
            .try_take_many(all, true)
            .await?
            .map(|held| WriteGuard { held }))
    }

    /// The lock's state in Redis: readers, writer, waiting writer, last write fence.
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
    /// # async fn demo(lock: redis_sync::RwLock<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// println!("{:?}", lock.inspect().await?);
    /// # Ok(()) }
    /// ```
    pub async fn inspect(&self) -> Result<RwLockState> {
        let mut conn = self.engine.conn.clone();
        let keys = &self.engine.cfg.keys;
        let st = crate::inspect::inspect(&mut conn, keys).await?;
        let fence: Option<u64> =
            redis::AsyncCommands::hget(&mut conn, keys.meta_or_pool(), "wfence").await?;
        let all = st.count.unwrap_or(0) as usize;
        let writer = st
            .holders
            .iter()
            .find(|h| all > 0 && h.permits >= all)
            .map(|h| h.id.clone());
        Ok(RwLockState {
            max_readers: st.count,
            readers: if writer.is_some() { 0 } else { st.held() },
            writer,
            writer_waiting: st.gate_holder.clone(),
            last_write_fence: fence.unwrap_or(0),
        })
    }

    /// What this handle has done and holds (no Redis call).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn demo(lock: redis_sync::RwLock<redis_sync::Tokio>) {
    /// println!("{:?}", lock.stats());
    /// # }
    /// ```
    pub fn stats(&self) -> crate::Stats {
        self.engine.stats()
    }

    /// Closes the handle and leaves nothing of it in Redis.
    ///
    /// # Errors
    ///
    /// [`Error::Redis`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: what is not done is left to lease expiry.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(lock: redis_sync::RwLock<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// lock.shutdown().await?;
    /// # Ok(()) }
    /// ```
    pub async fn shutdown(&self) -> Result<()> {
        self.engine.shutdown().await
    }
}

fn rwlock_options(name: &str) -> Options {
    let mut opts = Options::new(name, DEFAULT_RWLOCK_PREFIX);
    opts.handoff_limit = 0;
    opts
}

/// Options of a [`RwLock`].
///
/// # Examples
///
/// ```no_run
/// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
/// let lock = redis_sync::RwLock::<redis_sync::Tokio>::builder(&client, "catalog")
///     .max_readers(8)
///     .lease_ttl(std::time::Duration::from_secs(10))
///     .open()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until open()"]
pub struct RwLockBuilder<R: Runtime> {
    on: On<R>,
    opts: Options,
    max_readers: u32,
}

impl<R: Runtime> RwLockBuilder<R> {
    /// A builder on `ctx` (see [`Coordinator::rwlock`](crate::Coordinator::rwlock)).
    pub(crate) fn on_context(ctx: Arc<crate::context::Context<R>>, name: &str) -> Self {
        RwLockBuilder {
            on: On::Context(ctx),
            opts: rwlock_options(name),
            max_readers: DEFAULT_MAX_READERS,
        }
    }

    /// Readers admitted at once (default 64, 1..=4096); every process must agree.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) {
    /// let b = redis_sync::RwLock::<redis_sync::Tokio>::builder(&client, "catalog").max_readers(8);
    /// # }
    /// ```
    pub fn max_readers(mut self, n: u32) -> Self {
        self.max_readers = n;
        self
    }

    /// Each holder's lease (default 300 s), renewed every third of it.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) {
    /// let b = redis_sync::RwLock::<redis_sync::Tokio>::builder(&client, "catalog")
    ///     .lease_ttl(std::time::Duration::from_secs(10));
    /// # }
    /// ```
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.opts.lease_ttl = ttl;
        self
    }

    /// The key prefix (default `redsync:rwlock`).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) {
    /// let b = redis_sync::RwLock::<redis_sync::Tokio>::builder(&client, "catalog").key_prefix("app:rw");
    /// # }
    /// ```
    pub fn key_prefix(mut self, prefix: &str) -> Self {
        self.opts.key_prefix = prefix.to_owned();
        self
    }

    /// The deadline of every Redis request (default 5 s); not on a coordinator's builder.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) {
    /// let b = redis_sync::RwLock::<redis_sync::Tokio>::builder(&client, "catalog")
    ///     .response_timeout(std::time::Duration::from_secs(2));
    /// # }
    /// ```
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.opts.response_timeout = timeout;
        self.opts.response_timeout_set = true;
        self
    }

    /// The runtime for background work; not on a coordinator's builder.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
    /// use redis_sync::{RwLock, Runtime, Tokio};
    /// let b = RwLock::<Tokio>::builder(&client, "catalog").runtime(Tokio::try_current()?);
    /// # Ok(()) }
    /// ```
    pub fn runtime(mut self, rt: R) -> Self {
        self.on.set_runtime(&mut self.opts, rt);
        self
    }

    /// Whether to accept a server whose eviction policy may delete keys (default `false`).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) {
    /// let b = redis_sync::RwLock::<redis_sync::Tokio>::builder(&client, "catalog")
    ///     .allow_eviction_policy(true);
    /// # }
    /// ```
    pub fn allow_eviction_policy(mut self, allow: bool) -> Self {
        self.opts.check_eviction = !allow;
        self.opts.check_eviction_set = true;
        self
    }

    /// Opens the lock, creating it the first time (idempotent across processes).
    ///
    /// # Errors
    ///
    /// As [`RwLock::open`], plus [`Error::CountOutOfRange`] for `max_readers` outside
    /// 1..=4096 and [`Error::InvalidArgument`] for a bad option.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
    /// let lock = redis_sync::RwLock::<redis_sync::Tokio>::builder(&client, "catalog").open().await?;
    /// # Ok(()) }
    /// ```
    pub async fn open(self) -> Result<RwLock<R>> {
        let n = self.max_readers;
        if !crate::error::COUNT_RANGE.contains(&i64::from(n)) {
            return Err(Error::CountOutOfRange(i64::from(n)));
        }
        let engine = self.on.start(&self.opts, Kind::RwLock).await?;
        let ready = async {
            let actual = init::ensure_pool(&engine, n).await?;
            if actual != n {
                return Err(Error::CountMismatch {
                    requested: n,
                    actual,
                });
            }
            engine.count.store(n, Ordering::Release);
            engine.current_gen().await.map(drop)
        };
        match ready.await {
            Ok(()) => Ok(RwLock { engine }),
            Err(e) => {
                engine.close();
                Err(e)
            }
        }
    }
}
