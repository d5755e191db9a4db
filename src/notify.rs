//! The distributed broadcast event: a gate that releases every waiter.

use std::sync::Arc;
use std::time::Duration;

use crate::broadcast::{new_epoch, Builder, Gate, GateKind};
use crate::options::On;
use crate::runtime::{self, Runtime};
use crate::scripts::GATE_SET;
use crate::{Error, Result};

/// The default key prefix of [`Notify`] keys.
pub const DEFAULT_NOTIFY_PREFIX: &str = "redsync:notify";

/// A broadcast event across processes, manual-reset like Python's `asyncio.Event`:
/// [`set`](Notify::set) releases every task waiting now and every later
/// [`wait`](Notify::wait), until [`clear`](Notify::clear).
/// [`notify_waiters`](Notify::notify_waiters) releases only those waiting now.
///
/// Waiting blocks on the server (no polling), and however many tasks of one handle wait,
/// they share one blocking connection: clone the handle to share it. A generation counter
/// stored with the event makes wake-ups reliable: a waiter whose connection dies, or that
/// is not served before the event is cleared again, still learns that it was set after it
/// started waiting.
///
/// Unlike [`Event`](crate::Event) (one `set`, one waiter), nothing is consumed: the
/// state lives in Redis, with no lease and no TTL, until [`clear`](Notify::clear).
///
/// # Examples
///
/// ```no_run
/// use redis_sync::{Notify, Tokio};
///
/// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
/// let ready = Notify::<Tokio>::open(&client, "config-loaded").await?;
/// // In every worker process:
/// ready.wait().await?;                  // returns once ready.set() was called anywhere
/// // In the process that loads the configuration:
/// ready.set().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Notify<R: Runtime> {
    gate: Arc<Gate<R>>,
}

/// What [`Notify::inspect`] reads in Redis.
///
/// How many processes wait is not recorded in Redis; [`Notify::waiting`] counts this
/// handle's waiters.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(ready: redis_sync::Notify<redis_sync::Tokio>) -> redis_sync::Result<()> {
/// let st = ready.inspect().await?;
/// println!("set: {}, generation {}", st.is_set, st.generation);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NotifyState {
    /// Set: waits return at once.
    pub is_set: bool,
    /// How many `set` and `notify_waiters` calls it has seen since its keys were created
    /// (or since Redis lost them).
    pub generation: u64,
    /// The random id written when its generation counter was created (`None` before the
    /// first `set`); a new one means Redis lost the keys and they were made anew.
    pub epoch: Option<String>,
}

impl<R: Runtime> Notify<R> {
    /// Opens the notify `name` with the default options, on a private connection (use
    /// [`Coordinator::notify`](crate::Coordinator::notify) to share one).
    ///
    /// Nothing is written to Redis: a notify that was never set is clear.
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
    /// let go = redis_sync::Notify::<redis_sync::Tokio>::open(&client, "go").await?;
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
    /// let go = redis_sync::Notify::<redis_sync::Tokio>::builder(&client, "go")
    ///     .key_prefix("myapp:notify")
    ///     .open()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn builder(client: &redis::Client, name: &str) -> NotifyBuilder<R> {
        let on = On::Client {
            client: client.clone(),
            rt: None,
        };
        NotifyBuilder {
            inner: Builder::new(on, name, DEFAULT_NOTIFY_PREFIX),
        }
    }

    /// Sets it: every task waiting now, in every process, returns, and so does every
    /// later wait until [`clear`](Notify::clear). Setting it when set changes nothing but
    /// the generation.
    ///
    /// # Errors
    ///
    /// [`Error::Redis`]; with a dropped connection it is unknown whether it was set.
    ///
    /// # Cancel safety
    ///
    /// A dropped call may or may not have set it (it is one script: all or nothing).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(go: redis_sync::Notify<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// go.set().await?;
    /// assert!(go.is_set().await?);
    /// # Ok(()) }
    /// ```
    pub async fn set(&self) -> Result<()> {
        self.bump("set").await
    }

    /// Clears it: later waits block until the next [`set`](Notify::set). Waiters already
    /// released stay released.
    ///
    /// # Errors
    ///
    /// [`Error::Redis`].
    ///
    /// # Cancel safety
    ///
    /// A dropped call may or may not have cleared it.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(go: redis_sync::Notify<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// go.clear().await?;
    /// assert!(!go.is_set().await?);
    /// # Ok(()) }
    /// ```
    pub async fn clear(&self) -> Result<()> {
        let _: i64 = redis::cmd("LREM")
            .arg(&self.gate.keys.gate)
            .arg(0)
            .arg("set")
            .query_async(&mut self.gate.ctx.conn.clone())
            .await?;
        Ok(())
    }

    /// True while it is set.
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
    /// # async fn demo(go: redis_sync::Notify<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// if !go.is_set().await? {
    ///     go.wait().await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn is_set(&self) -> Result<bool> {
        let pos: Option<i64> = redis::cmd("LPOS")
            .arg(&self.gate.keys.gate)
            .arg("set")
            .query_async(&mut self.gate.ctx.conn.clone())
            .await?;
        Ok(pos.is_some())
    }

    /// Wakes every task waiting now, in every process, without setting it: waits that
    /// start after this call returns block until the next wake-up.
    ///
    /// It sends two commands in one round trip: a script that starts a new generation and
    /// pushes a mark into the gate list, then the removal of the mark. Redis serves every
    /// client blocked on the gate between the two (it never does inside one script). A
    /// waiter that was between two blocking waits at that instant learns of it from the
    /// generation when it reads next, within one blocking period (at most 2 s).
    ///
    /// # Errors
    ///
    /// [`Error::Redis`]; with a dropped connection it is unknown whether it woke anyone.
    ///
    /// # Cancel safety
    ///
    /// A dropped call may or may not have woken the waiters. A mark left behind (the
    /// connection died between the two commands) is removed by the next waiter's read.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(tick: redis_sync::Notify<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// tick.notify_waiters().await?;      // wakes the current waiters
    /// assert!(!tick.is_set().await?);    // and leaves it clear
    /// # Ok(()) }
    /// ```
    pub async fn notify_waiters(&self) -> Result<()> {
        let g = &self.gate;
        let mut inv = GATE_SET.prepare_invoke();
        inv.key(&g.keys.gate)
            .key(&g.keys.gen)
            .arg(new_epoch())
            .arg("n");
        let mut pipe = redis::pipe();
        pipe.invoke_script(&inv)
            .cmd("LREM")
            .arg(&g.keys.gate)
            .arg(0)
            .arg("n")
            .ignore();
        let mut conn = g.ctx.conn.clone();
        for attempt in 0..2 {
            match pipe.query_async::<(String,)>(&mut conn).await {
                Ok(_) => return Ok(()),
                // The script cache was flushed (a restart): nothing ran but the removal.
                Err(e) if attempt == 0 && e.code() == Some("NOSCRIPT") => {
                    inv.load_async(&mut conn).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Waits until it is set, or until a [`notify_waiters`](Notify::notify_waiters), in
    /// any process, after this call started. Returns at once if it is set.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] (its coordinator was shut down), [`Error::Redis`] (Redis answered
    /// with an error, or could not be reached for the response timeout).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped wait changes nothing in Redis, and the last waiter of a
    /// handle to leave ends its blocking wait.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(go: redis_sync::Notify<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// go.wait().await?;
    /// # Ok(()) }
    /// ```
    pub async fn wait(&self) -> Result<()> {
        self.gate.wait().await
    }

    /// [`wait`](Notify::wait) for at most `timeout` (enforced on the client, so it fires on
    /// time also below Redis's 100 ms timer tick).
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`], and those of [`wait`](Notify::wait).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, like [`wait`](Notify::wait).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn demo(go: redis_sync::Notify<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// match go.wait_timeout(Duration::from_secs(5)).await {
    ///     Ok(()) => println!("go"),
    ///     Err(redis_sync::Error::Timeout(_)) => println!("not set within 5 s"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn wait_timeout(&self, timeout: Duration) -> Result<()> {
        match runtime::timeout(&self.gate.ctx.rt, timeout, self.wait()).await {
            Some(res) => res,
            None => Err(Error::Timeout(timeout)),
        }
    }

    /// Reads its state and generation in Redis.
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
    /// # async fn demo(go: redis_sync::Notify<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// println!("{:?}", go.inspect().await?);
    /// # Ok(()) }
    /// ```
    pub async fn inspect(&self) -> Result<NotifyState> {
        let snap = self.gate.read(false).await?;
        Ok(NotifyState {
            is_set: snap.state != 0,
            generation: snap.n,
            epoch: Some(snap.epoch).filter(|e| !e.is_empty()),
        })
    }

    /// Tasks of this handle (and its clones) waiting now; no Redis call.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn demo(go: redis_sync::Notify<redis_sync::Tokio>) {
    /// println!("{} tasks wait here", go.waiting());
    /// # }
    /// ```
    pub fn waiting(&self) -> usize {
        self.gate.waiting()
    }

    /// Starts a new generation and pushes `mark` into the gate if it is not there.
    async fn bump(&self, mark: &str) -> Result<()> {
        let g = &self.gate;
        let _generation: String = GATE_SET
            .key(&g.keys.gate)
            .key(&g.keys.gen)
            .arg(new_epoch())
            .arg(mark)
            .invoke_async(&mut g.ctx.conn.clone())
            .await?;
        Ok(())
    }
}

/// Builds a [`Notify`] with options; from [`Notify::builder`] or
/// [`Coordinator::notify`](crate::Coordinator::notify).
///
/// # Examples
///
/// ```no_run
/// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
/// let go = redis_sync::Notify::<redis_sync::Tokio>::builder(&client, "go")
///     .key_prefix("myapp:notify")
///     .open()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until open()"]
pub struct NotifyBuilder<R: Runtime> {
    inner: Builder<R>,
}

impl<R: Runtime> NotifyBuilder<R> {
    /// A builder on `ctx` (see [`Coordinator::notify`](crate::Coordinator::notify)).
    pub(crate) fn on_context(ctx: Arc<crate::context::Context<R>>, name: &str) -> Self {
        NotifyBuilder {
            inner: Builder::new(On::Context(ctx), name, DEFAULT_NOTIFY_PREFIX),
        }
    }

    /// The key prefix (default `redsync:notify`): its keys are `<prefix>:{<name>}:gate`
    /// and `<prefix>:{<name>}:gen`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) {
    /// let b = redis_sync::Notify::<redis_sync::Tokio>::builder(&client, "go").key_prefix("app:n");
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
    /// let b = redis_sync::Notify::<redis_sync::Tokio>::builder(&client, "go")
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
    /// use redis_sync::{Notify, Runtime, Tokio};
    /// let go = Notify::<Tokio>::builder(&client, "go").runtime(Tokio::try_current()?).open().await?;
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
    /// let b = redis_sync::Notify::<redis_sync::Tokio>::builder(&client, "go")
    ///     .allow_eviction_policy(true);
    /// # }
    /// ```
    pub fn allow_eviction_policy(mut self, allow: bool) -> Self {
        self.inner.allow_eviction_policy(allow);
        self
    }

    /// Opens the notify, checking that its keys, if present, have the right types.
    ///
    /// # Errors
    ///
    /// As [`Notify::open`]; on a coordinator also [`Error::Closed`] (it was shut down) and
    /// [`Error::InvalidArgument`] for a setting that is the coordinator's.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
    /// let go = redis_sync::Notify::<redis_sync::Tokio>::builder(&client, "go").open().await?;
    /// # Ok(()) }
    /// ```
    pub async fn open(self) -> Result<Notify<R>> {
        let gate = self.inner.start(GateKind::Notify).await?;
        Ok(Notify { gate })
    }
}
