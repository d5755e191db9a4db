//! The distributed count-down latch.

use std::sync::Arc;
use std::time::Duration;

use crate::broadcast::{new_epoch, Builder, Gate, GateKind};
use crate::options::On;
use crate::runtime::{self, Runtime};
use crate::scripts::{LATCH_COUNT_DOWN, LATCH_SET_COUNT};
use crate::{Error, Invalid, Result};

/// The default key prefix of [`CountDownLatch`] keys.
pub const DEFAULT_LATCH_PREFIX: &str = "redsync:latch";

/// A count-down latch across processes, like Java's `CountDownLatch` and Redisson's
/// `RCountDownLatch`: [`wait`](CountDownLatch::wait) returns once
/// [`count_down`](CountDownLatch::count_down) has been called as many times as the count
/// that [`try_set_count`](CountDownLatch::try_set_count) set, by any processes.
///
/// A latch whose count is zero, or that was never set, is open: waits return at once.
/// Reaching zero releases every waiter of every process at once; after that the count can
/// be set again (the latch is reusable, as in Redisson).
///
/// **A process that crashes never counts down**, and nothing in Redis can tell: a latch
/// waits for its count, not for processes (as in Java and Redisson). Where a participant
/// may die, wait with [`wait_timeout`](CountDownLatch::wait_timeout).
///
/// # Examples
///
/// ```no_run
/// use redis_sync::{CountDownLatch, Tokio};
///
/// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
/// let shards = CountDownLatch::<Tokio>::open(&client, "shards-loaded").await?;
/// shards.try_set_count(3).await?;      // once, by the coordinator of the job
/// // In each of the 3 loader processes, when its shard is loaded:
/// shards.count_down().await?;
/// // In every process that needs all 3 shards:
/// shards.wait().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct CountDownLatch<R: Runtime> {
    gate: Arc<Gate<R>>,
}

/// What [`CountDownLatch::inspect`] reads in Redis.
///
/// How many processes wait is not recorded in Redis; [`CountDownLatch::waiting`] counts
/// this handle's waiters.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(latch: redis_sync::CountDownLatch<redis_sync::Tokio>) -> redis_sync::Result<()> {
/// let st = latch.inspect().await?;
/// println!("{} left, reached zero {} times", st.count, st.generation);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LatchState {
    /// The count left (0: open, or never set).
    pub count: u64,
    /// How many times it has reached zero since its keys were created (or since Redis
    /// lost them).
    pub generation: u64,
    /// The random id written when its generation counter was created (`None` before its
    /// count was first set); a new one means Redis lost the keys and they were made anew.
    pub epoch: Option<String>,
}

impl<R: Runtime> CountDownLatch<R> {
    /// Opens the latch `name` with the default options, on a private connection (use
    /// [`Coordinator::latch`](crate::Coordinator::latch) to share one).
    ///
    /// Nothing is written to Redis: a latch never set is open (count 0).
    ///
    /// # Errors
    ///
    /// [`Error::Redis`], [`Error::NoRuntime`], [`Error::InvalidArgument`] (an empty name, a
    /// bad option), [`Error::WrongType`] (its keys hold something else),
    /// [`Error::EvictionPolicy`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
    /// let latch = redis_sync::CountDownLatch::<redis_sync::Tokio>::open(&client, "boot").await?;
    /// # Ok(()) }
    /// ```
    pub async fn open(client: &redis::Client, name: &str) -> Result<Self> {
        Self::builder(client, name).open().await
    }

    /// Options: key prefix, response timeout, runtime.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
    /// let latch = redis_sync::CountDownLatch::<redis_sync::Tokio>::builder(&client, "boot")
    ///     .key_prefix("myapp:latch")
    ///     .open()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn builder(client: &redis::Client, name: &str) -> CountDownLatchBuilder<R> {
        let on = On::Client {
            client: client.clone(),
            rt: None,
        };
        CountDownLatchBuilder {
            inner: Builder::new(on, name, DEFAULT_LATCH_PREFIX),
        }
    }

    /// Sets the count to `count` if the latch is open (at zero, or never set), closing it:
    /// later waits block until it is counted down to zero. Returns `false`, changing
    /// nothing, while it is still counting down (Redisson's `trySetCount`). `0` changes
    /// nothing and returns `true` when the latch is open.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] with [`Invalid::LatchCount`] above `i64::MAX`,
    /// [`Error::Redis`], [`Error::WrongType`].
    ///
    /// # Cancel safety
    ///
    /// A dropped call may or may not have set the count (it is one script: all or
    /// nothing).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(latch: redis_sync::CountDownLatch<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// if !latch.try_set_count(3).await? {
    ///     println!("still counting down: {} left", latch.count().await?);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn try_set_count(&self, count: u64) -> Result<bool> {
        Ok(self.set_count_script(count).await?.is_ok())
    }

    /// Sets the count to `count` if the latch is open (at zero, or never set), like
    /// [`try_set_count`](CountDownLatch::try_set_count), but a latch still counting down
    /// is an error.
    ///
    /// # Errors
    ///
    /// [`Error::LatchNotZero`] (with the count left) while it is still counting down;
    /// those of [`try_set_count`](CountDownLatch::try_set_count).
    ///
    /// # Cancel safety
    ///
    /// As [`try_set_count`](CountDownLatch::try_set_count).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(latch: redis_sync::CountDownLatch<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// match latch.set_count(3).await {
    ///     Ok(()) => {}
    ///     Err(redis_sync::Error::LatchNotZero { count }) => println!("{count} left"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn set_count(&self, count: u64) -> Result<()> {
        match self.set_count_script(count).await? {
            Ok(()) => Ok(()),
            Err(left) => Err(Error::LatchNotZero { count: left }),
        }
    }

    /// Runs the set-count script: `Err(count left)` when the latch is still counting.
    async fn set_count_script(&self, count: u64) -> Result<std::result::Result<(), u64>> {
        if count > i64::MAX as u64 {
            return Err(Error::InvalidArgument(Invalid::LatchCount(count)));
        }
        let g = &self.gate;
        let (set, left): (i64, String) = LATCH_SET_COUNT
            .key(count_key(g))
            .key(&g.keys.gate)
            .key(&g.keys.gen)
            .arg(count.to_string())
            .arg(new_epoch())
            .invoke_async(&mut g.ctx.conn.clone())
            .await?;
        if set == 1 {
            Ok(Ok(()))
        } else {
            Ok(Err(parse_count(g, &left)?))
        }
    }

    /// Counts down by one and returns the count left; at zero it releases every waiter
    /// of every process (in the same script).
    ///
    /// # Errors
    ///
    /// [`Error::LatchAlreadyZero`] when the latch is already at zero or was never set
    /// (nothing changes), [`Error::Redis`] (with a dropped connection it is unknown
    /// whether it counted down: do not simply retry), [`Error::WrongType`].
    ///
    /// # Cancel safety
    ///
    /// A dropped call may or may not have counted down (it is one script: all or
    /// nothing).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(latch: redis_sync::CountDownLatch<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// if latch.count_down().await? == 0 {
    ///     println!("this call opened the latch");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn count_down(&self) -> Result<u64> {
        let g = &self.gate;
        let left: String = LATCH_COUNT_DOWN
            .key(count_key(g))
            .key(&g.keys.gate)
            .key(&g.keys.gen)
            .arg(new_epoch())
            .invoke_async(&mut g.ctx.conn.clone())
            .await?;
        if left == "-1" {
            return Err(Error::LatchAlreadyZero);
        }
        parse_count(g, &left)
    }

    /// The count left (0 when open or never set).
    ///
    /// # Errors
    ///
    /// [`Error::Redis`], [`Error::WrongType`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(latch: redis_sync::CountDownLatch<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// println!("{} left", latch.count().await?);
    /// # Ok(()) }
    /// ```
    pub async fn count(&self) -> Result<u64> {
        let g = &self.gate;
        let count: Option<String> = redis::cmd("GET")
            .arg(count_key(g))
            .query_async(&mut g.ctx.conn.clone())
            .await?;
        match count {
            Some(c) => parse_count(g, &c),
            None => Ok(0),
        }
    }

    /// Waits until the count is zero: returns at once when it is zero or was never set,
    /// else once it reaches zero, in any process, even if the count was set again before
    /// this wait could look.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] (its coordinator was shut down), [`Error::Redis`] (Redis answered
    /// with an error, or could not be reached for the response timeout),
    /// [`Error::WrongType`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped wait changes nothing in Redis, and the last waiter of a
    /// handle to leave ends its blocking wait.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(latch: redis_sync::CountDownLatch<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// latch.wait().await?;
    /// # Ok(()) }
    /// ```
    pub async fn wait(&self) -> Result<()> {
        self.gate.wait().await
    }

    /// [`wait`](CountDownLatch::wait) for at most `timeout` (enforced on the client): the
    /// way to stop waiting for participants that may have crashed.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`], and those of [`wait`](CountDownLatch::wait).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, like [`wait`](CountDownLatch::wait).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn demo(latch: redis_sync::CountDownLatch<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// if let Err(redis_sync::Error::Timeout(_)) = latch.wait_timeout(Duration::from_secs(60)).await {
    ///     println!("{} participants did not finish", latch.count().await?);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn wait_timeout(&self, timeout: Duration) -> Result<()> {
        match runtime::timeout(&self.gate.ctx.rt, timeout, self.wait()).await {
            Some(res) => res,
            None => Err(Error::Timeout(timeout)),
        }
    }

    /// Reads its count and generation in Redis.
    ///
    /// # Errors
    ///
    /// [`Error::Redis`], [`Error::WrongType`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(latch: redis_sync::CountDownLatch<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// println!("{:?}", latch.inspect().await?);
    /// # Ok(()) }
    /// ```
    pub async fn inspect(&self) -> Result<LatchState> {
        let snap = self.gate.read(false).await?;
        Ok(LatchState {
            count: snap.state,
            generation: snap.n,
            epoch: Some(snap.epoch).filter(|e| !e.is_empty()),
        })
    }

    /// Tasks of this handle (and its clones) waiting now; no Redis call.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn demo(latch: redis_sync::CountDownLatch<redis_sync::Tokio>) {
    /// println!("{} tasks wait here", latch.waiting());
    /// # }
    /// ```
    pub fn waiting(&self) -> usize {
        self.gate.waiting()
    }
}

/// The latch's count key (always present for a latch).
fn count_key<R: Runtime>(g: &Gate<R>) -> &str {
    g.keys.count.as_deref().unwrap_or(&g.keys.gate)
}

fn parse_count<R: Runtime>(g: &Gate<R>, value: &str) -> Result<u64> {
    match value.parse::<i64>() {
        Ok(v) => Ok(v.max(0) as u64),
        Err(_) => Err(Error::WrongType {
            key: count_key(g).to_owned(),
            found: format!("string {value:?} (not an integer)"),
        }),
    }
}

/// Builds a [`CountDownLatch`] with options; from [`CountDownLatch::builder`] or
/// [`Coordinator::latch`](crate::Coordinator::latch).
///
/// # Examples
///
/// ```no_run
/// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
/// let latch = redis_sync::CountDownLatch::<redis_sync::Tokio>::builder(&client, "boot")
///     .key_prefix("myapp:latch")
///     .open()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until open()"]
pub struct CountDownLatchBuilder<R: Runtime> {
    inner: Builder<R>,
}

impl<R: Runtime> CountDownLatchBuilder<R> {
    /// A builder on `ctx` (see [`Coordinator::latch`](crate::Coordinator::latch)).
    pub(crate) fn on_context(ctx: Arc<crate::context::Context<R>>, name: &str) -> Self {
        CountDownLatchBuilder {
            inner: Builder::new(On::Context(ctx), name, DEFAULT_LATCH_PREFIX),
        }
    }

    /// The key prefix (default `redsync:latch`): its keys are `<prefix>:{<name>}:count`,
    /// `:gate` and `:gen`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) {
    /// let b = redis_sync::CountDownLatch::<redis_sync::Tokio>::builder(&client, "boot")
    ///     .key_prefix("app:latch");
    /// # }
    /// ```
    pub fn key_prefix(mut self, prefix: &str) -> Self {
        self.inner.key_prefix(prefix);
        self
    }

    /// The deadline of every Redis request (default 5 s); only on a handle with a private
    /// connection (a coordinator's primitives use the coordinator's).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) {
    /// let b = redis_sync::CountDownLatch::<redis_sync::Tokio>::builder(&client, "boot")
    ///     .response_timeout(std::time::Duration::from_secs(2));
    /// # }
    /// ```
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.inner.response_timeout(timeout);
        self
    }

    /// The runtime for its background work, instead of `R::try_current()`; only on a
    /// handle with a private connection.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
    /// use redis_sync::{CountDownLatch, Runtime, Tokio};
    /// let latch = CountDownLatch::<Tokio>::builder(&client, "boot")
    ///     .runtime(Tokio::try_current()?)
    ///     .open()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn runtime(mut self, rt: R) -> Self {
        self.inner.runtime(rt);
        self
    }

    /// Whether to accept a Redis server whose eviction policy may delete keys (default
    /// `false`: `open` fails with [`Error::EvictionPolicy`]; on a coordinator, its
    /// setting).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) {
    /// let b = redis_sync::CountDownLatch::<redis_sync::Tokio>::builder(&client, "boot")
    ///     .allow_eviction_policy(true);
    /// # }
    /// ```
    pub fn allow_eviction_policy(mut self, allow: bool) -> Self {
        self.inner.allow_eviction_policy(allow);
        self
    }

    /// Opens the latch, checking that its keys, if present, have the right types.
    ///
    /// # Errors
    ///
    /// As [`CountDownLatch::open`]; on a coordinator also [`Error::Closed`] (it was shut
    /// down) and [`Error::InvalidArgument`] for a setting that is the coordinator's.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
    /// let latch = redis_sync::CountDownLatch::<redis_sync::Tokio>::builder(&client, "boot")
    ///     .open()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn open(self) -> Result<CountDownLatch<R>> {
        let gate = self.inner.start(GateKind::Latch).await?;
        Ok(CountDownLatch { gate })
    }
}
