//! The distributed lock with fencing tokens.

use std::sync::Arc;
use std::time::Duration;

use crate::engine::{Engine, Kind};
use crate::options::{On, Options};
use crate::runtime::{self, Runtime};
use crate::{init, Error, InitStrategy, LeaseLostFuture, Permit, Result, SemaphoreState};

/// The default key prefix of mutexes.
pub const DEFAULT_MUTEX_PREFIX: &str = "redsync:mutex";

/// A lock shared by every process that uses the same Redis and name, whose every grant
/// carries a **fencing token**: a number greater than that of every earlier grant of the
/// same lock.
///
/// It is a semaphore of one permit whose token is a number: each time the token is given
/// back (a release, a reclaim after a crash or a lost lease) Redis replaces it with the
/// next number, in the same script, so the token a holder receives, on the fast path or
/// from a blocking wait, is its fencing token. Holders have leases on the server clock
/// and are told when they lose one ([`MutexGuard::lost`]), like semaphore permits.
///
/// # What fencing does and does not protect
///
/// A lease can run out while its holder still works (a GC pause, a stopped VM, a slow
/// network): the lock then goes to someone else and two processes believe they hold it.
/// No lock service can prevent that on its own (Martin Kleppmann, "How to do distributed
/// locking", 2016). Fencing makes it harmless **where the protected resource checks the
/// token**: a storage service that remembers the highest token it has seen and refuses
/// writes carrying a lower one turns the stale holder's late write into an error. It does
/// not help with resources that do not check (a plain file, an email sent), and it does
/// not order work done before the write. Tokens survive idle periods (a mutex's keys do
/// not expire) but not the loss of Redis's data: a server restarted without persistence
/// starts again at 1. Not reentrant: a second `lock()` from the same task waits.
///
/// # Examples
///
/// ```no_run
/// use redis_sync::{Mutex, Tokio};
///
/// # async fn write(_: &[u8], _: u64) -> redis_sync::Result<()> { Ok(()) }
/// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
/// let lock = Mutex::<Tokio>::open(&client, "ledger").await?;
/// let guard = lock.lock().await?;
/// // The storage keeps the highest token seen and refuses lower ones.
/// write(b"entry", guard.fencing_token()).await?;
/// guard.unlock().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Mutex<R: Runtime> {
    engine: Arc<Engine<R>>,
}

/// Holds a [`Mutex`] until it is unlocked or dropped. Dropping it unlocks without
/// blocking (the release runs on the runtime).
///
/// # Examples
///
/// ```no_run
/// # async fn demo(lock: redis_sync::Mutex<redis_sync::Tokio>) -> redis_sync::Result<()> {
/// let guard = lock.lock().await?;
/// println!("token {}", guard.fencing_token());
/// drop(guard); // unlocked in the background
/// # Ok(()) }
/// ```
#[must_use = "the lock is released as soon as the guard is dropped"]
#[clippy::has_significant_drop]
#[derive(Debug)]
pub struct MutexGuard<R: Runtime> {
    permit: Permit<R>,
}

impl<R: Runtime> MutexGuard<R> {
    /// This grant's fencing token: greater than that of every earlier grant of this lock.
    /// Pass it along with every write to a resource the lock protects.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(lock: redis_sync::Mutex<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// let guard = lock.lock().await?;
    /// let token: u64 = guard.fencing_token();
    /// # Ok(()) }
    /// ```
    pub fn fencing_token(&self) -> u64 {
        self.permit.fence()
    }

    /// True once the holder's lease was found lost: someone else may hold the lock now.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(lock: redis_sync::Mutex<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// let guard = lock.lock().await?;
    /// assert!(!guard.is_lost());
    /// # Ok(()) }
    /// ```
    pub fn is_lost(&self) -> bool {
        self.permit.is_lost()
    }

    /// Resolves when the holder's lease is lost (at once if it already is).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only observes.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn work() {}
    /// # async fn demo(lock: redis_sync::Mutex<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// let guard = lock.lock().await?;
    /// tokio::select! {
    ///     _ = work() => guard.unlock().await?,
    ///     _ = guard.lost() => eprintln!("lock lost: work abandoned"),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn lost(&self) -> LeaseLostFuture {
        self.permit.lost()
    }

    /// The holder id the lock is recorded under in Redis.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(lock: redis_sync::Mutex<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// let guard = lock.lock().await?;
    /// println!("held by {}", guard.holder());
    /// # Ok(()) }
    /// ```
    pub fn holder(&self) -> &str {
        self.permit.holder()
    }

    /// Unlocks and reports the outcome.
    ///
    /// # Errors
    ///
    /// [`Error::LeaseLost`] when the lease had expired and the lock was already reclaimed;
    /// [`Error::Redis`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if dropped, the release completes in the background.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(lock: redis_sync::Mutex<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// lock.lock().await?.unlock().await?;
    /// # Ok(()) }
    /// ```
    pub async fn unlock(self) -> Result<()> {
        self.permit.release().await
    }
}

impl<R: Runtime> Mutex<R> {
    /// Opens the lock `name` (creating it the first time) with the default options.
    ///
    /// # Errors
    ///
    /// [`Error::Redis`], [`Error::NoRuntime`], [`Error::WrongType`] when the name's keys
    /// belong to a semaphore.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
    /// let lock = redis_sync::Mutex::<redis_sync::Tokio>::open(&client, "ledger").await?;
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
    /// let lock = redis_sync::Mutex::<redis_sync::Tokio>::builder(&client, "ledger")
    ///     .lease_ttl(std::time::Duration::from_secs(10))
    ///     .open()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn builder(client: &redis::Client, name: &str) -> MutexBuilder<R> {
        MutexBuilder {
            on: On::Client {
                client: client.clone(),
                rt: None,
            },
            opts: mutex_options(name),
        }
    }

    /// Waits for the lock, as long as it takes (blocking on the server, no polling).
    ///
    /// # Errors
    ///
    /// [`Error::Closed`], [`Error::Redis`], [`Error::LeaseLost`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if dropped, the lock is not taken, and a grant at that instant goes to
    /// the next waiter.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(lock: redis_sync::Mutex<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// let guard = lock.lock().await?;
    /// # Ok(()) }
    /// ```
    pub async fn lock(&self) -> Result<MutexGuard<R>> {
        Ok(MutexGuard {
            permit: Permit::new(self.engine.take().await?),
        })
    }

    /// Waits for the lock for at most `timeout` (enforced on the client).
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`], and those of [`Mutex::lock`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, like [`Mutex::lock`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(lock: redis_sync::Mutex<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// let guard = lock.lock_timeout(std::time::Duration::from_secs(1)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn lock_timeout(&self, timeout: Duration) -> Result<MutexGuard<R>> {
        match runtime::timeout(&self.engine.rt, timeout, self.lock()).await {
            Some(res) => res,
            None => {
                self.engine.note_timeout();
                self.engine.settle_cut_waits().await;
                Err(Error::Timeout(timeout))
            }
        }
    }

    /// Takes the lock if it is free now: one round trip.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`], [`Error::Redis`], [`Error::LeaseLost`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(lock: redis_sync::Mutex<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// if let Some(guard) = lock.try_lock().await? {
    ///     guard.unlock().await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn try_lock(&self) -> Result<Option<MutexGuard<R>>> {
        Ok(self.engine.try_take().await?.map(|held| MutexGuard {
            permit: Permit::new(held),
        }))
    }

    /// The state in Redis: whether it is held, by whom, and the next fencing token.
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
    /// # async fn demo(lock: redis_sync::Mutex<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// let s = lock.inspect().await?;
    /// println!("free: {}, next token {:?}", s.free == 1, s.next_fence);
    /// # Ok(()) }
    /// ```
    pub async fn inspect(&self) -> Result<SemaphoreState> {
        let mut conn = self.engine.conn.clone();
        crate::inspect::inspect(&mut conn, &self.engine.cfg.keys).await
    }

    /// What this handle has done and holds (no Redis call).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn demo(lock: redis_sync::Mutex<redis_sync::Tokio>) {
    /// println!("{:?}", lock.stats());
    /// # }
    /// ```
    pub fn stats(&self) -> crate::Stats {
        self.engine.stats()
    }

    /// Closes the handle and leaves nothing of it in Redis (see
    /// [`Semaphore::shutdown`](crate::Semaphore::shutdown)).
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
    /// # async fn demo(lock: redis_sync::Mutex<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// lock.shutdown().await?;
    /// # Ok(()) }
    /// ```
    pub async fn shutdown(&self) -> Result<()> {
        self.engine.shutdown().await
    }
}

fn mutex_options(name: &str) -> Options {
    let mut opts = Options::new(name, DEFAULT_MUTEX_PREFIX);
    // A fence grows only through Redis: no local handoff.
    opts.handoff_limit = 0;
    opts
}

/// Options of a [`Mutex`]: lease, key prefix, response timeout, runtime.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
/// let lock = redis_sync::Mutex::<redis_sync::Tokio>::builder(&client, "ledger")
///     .key_prefix("myapp:lock")
///     .open()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until open()"]
pub struct MutexBuilder<R: Runtime> {
    on: On<R>,
    opts: Options,
}

impl<R: Runtime> MutexBuilder<R> {
    /// A builder on `ctx` (see [`Coordinator::mutex`](crate::Coordinator::mutex)).
    pub(crate) fn on_context(ctx: Arc<crate::context::Context<R>>, name: &str) -> Self {
        MutexBuilder {
            on: On::Context(ctx),
            opts: mutex_options(name),
        }
    }

    /// The holder's lease (default 300 s, at least 100 ms), renewed every third of it.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) {
    /// let b = redis_sync::Mutex::<redis_sync::Tokio>::builder(&client, "ledger")
    ///     .lease_ttl(std::time::Duration::from_secs(10));
    /// # }
    /// ```
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.opts.lease_ttl = ttl;
        self
    }

    /// The key prefix (default `redsync:mutex`).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) {
    /// let b = redis_sync::Mutex::<redis_sync::Tokio>::builder(&client, "ledger")
    ///     .key_prefix("myapp:lock");
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
    /// let b = redis_sync::Mutex::<redis_sync::Tokio>::builder(&client, "ledger")
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
    /// use redis_sync::{Mutex, Runtime, Tokio};
    /// let b = Mutex::<Tokio>::builder(&client, "ledger").runtime(Tokio::try_current()?);
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
    /// let b = redis_sync::Mutex::<redis_sync::Tokio>::builder(&client, "ledger")
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
    /// As [`Mutex::open`], plus [`Error::InvalidArgument`] for a bad option.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
    /// let lock = redis_sync::Mutex::<redis_sync::Tokio>::builder(&client, "ledger").open().await?;
    /// # Ok(()) }
    /// ```
    pub async fn open(mut self) -> Result<Mutex<R>> {
        self.opts.init = InitStrategy::Lua;
        let engine = self.on.start(&self.opts, Kind::Mutex).await?;
        let ready = async {
            let actual = init::ensure_pool(&engine, 1).await?;
            let meta = engine.cfg.keys.meta_or_pool().to_owned();
            let fenced: Option<String> =
                redis::AsyncCommands::hget(&mut engine.conn.clone(), &meta, "fenced").await?;
            if actual != 1 || fenced.as_deref() != Some("1") {
                return Err(Error::WrongType {
                    key: meta,
                    found: "a semaphore's metadata".to_owned(),
                });
            }
            engine.count.store(1, std::sync::atomic::Ordering::Release);
            engine.current_gen().await.map(drop)
        };
        match ready.await {
            Ok(()) => Ok(Mutex { engine }),
            Err(e) => {
                engine.close();
                Err(e)
            }
        }
    }
}
