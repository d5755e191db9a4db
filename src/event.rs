//! The distributed one-to-one event.

use std::sync::Arc;
use std::time::Duration;

use redis::{AsyncCommands, RedisResult};

use crate::engine::{Detachable, Engine, Held, Kind, SIGNAL_TOKEN};
use crate::options::{On, Options};
use crate::runtime::{self, Runtime};
use crate::{Error, KeyLayout, Result};

/// The default key prefix of events, as in redsync 2.0.
pub const DEFAULT_EVENT_PREFIX: &str = "redsync:event";

/// A one-to-one signal between processes: each [`Event::set`] wakes exactly one
/// [`Event::wait`]; a signal set while nobody waits stays in Redis until a waiter comes.
///
/// A waiter first moves a signal into a list of its own, under a lease, and only then
/// consumes it, so a wait that is cancelled or times out at that moment, or a waiter that
/// crashes, puts the signal back instead of swallowing it.
///
/// # Examples
///
/// ```no_run
/// use redis_sync::{Event, Tokio};
///
/// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
/// let done = Event::<Tokio>::open(&client, "task_done").await?;
/// done.set().await?;                 // in one process
/// done.wait().await?;                // in another: returns once per set()
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Event<R: Runtime> {
    engine: Arc<Engine<R>>,
}

impl<R: Runtime> Event<R> {
    /// Opens the event `name` with the default options.
    ///
    /// # Errors
    ///
    /// [`Error::Redis`], [`Error::NoRuntime`], [`Error::InvalidArgument`] (empty name or
    /// bad option), [`Error::WrongType`] (the event's key holds something else),
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
    /// let ev = redis_sync::Event::<redis_sync::Tokio>::open(&client, "ready").await?;
    /// # Ok(()) }
    /// ```
    pub async fn open(client: &redis::Client, name: &str) -> Result<Self> {
        Self::builder(client, name).open().await
    }

    /// Options: key prefix and layout, lease, blocking connections.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
    /// let ev = redis_sync::Event::<redis_sync::Tokio>::builder(&client, "ready")
    ///     .key_layout(redis_sync::KeyLayout::Redsync2)
    ///     .open()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn builder(client: &redis::Client, name: &str) -> EventBuilder<R> {
        EventBuilder {
            on: On::Client {
                client: client.clone(),
                rt: None,
            },
            opts: Options::new(name, DEFAULT_EVENT_PREFIX),
        }
    }

    /// Sets one signal: wakes exactly one waiter, now or whenever one comes.
    ///
    /// # Errors
    ///
    /// [`Error::Redis`].
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe in the sense that a dropped call may or may not have set the signal.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(ev: redis_sync::Event<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// ev.set().await?;
    /// # Ok(()) }
    /// ```
    pub async fn set(&self) -> Result<()> {
        let mut conn = self.engine.conn.clone();
        let _: i64 = conn.lpush(&self.engine.cfg.keys.pool, SIGNAL_TOKEN).await?;
        Ok(())
    }

    /// Waits for a signal and consumes it.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`], [`Error::Redis`]. If Redis fails in the very last step (the
    /// consume), it is unknown whether this call consumed the signal; if it did not, the
    /// signal is still recorded under this handle and goes back to the event, to be
    /// delivered to another wait. A signal is never delivered twice.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped wait never swallows a signal; one taken for it goes back.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(ev: redis_sync::Event<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// ev.wait().await?;
    /// # Ok(()) }
    /// ```
    #[cfg_attr(
        feature = "tracing",
        tracing::instrument(name = "wait", level = "debug", skip_all,
            fields(primitive = %self.engine.cfg.keys.pool))
    )]
    pub async fn wait(&self) -> Result<()> {
        loop {
            let held = self.engine.take().await?;
            if consume(held).await? {
                return Ok(());
            }
            // The lease was lost and the signal reclaimed into the event: wait again.
        }
    }

    /// Waits for a signal for at most `timeout` (enforced on the client).
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`], and those of [`Event::wait`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, like [`Event::wait`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn demo(ev: redis_sync::Event<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// if ev.wait_timeout(Duration::from_secs(5)).await.is_err() {
    ///     println!("no signal in 5 s");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn wait_timeout(&self, timeout: Duration) -> Result<()> {
        match runtime::timeout(&self.engine.rt, timeout, self.wait()).await {
            Some(res) => res,
            None => {
                self.engine.note_timeout();
                self.engine.settle_cut_waits().await;
                Err(Error::Timeout(timeout))
            }
        }
    }

    /// What this handle has done and holds (see [`Stats`](crate::Stats)); no Redis call.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(ev: redis_sync::Event<redis_sync::Tokio>) {
    /// println!("{} waiting", ev.stats().waiting);
    /// # }
    /// ```
    pub fn stats(&self) -> crate::Stats {
        self.engine.stats()
    }

    /// Removes every pending signal.
    ///
    /// # Errors
    ///
    /// [`Error::Redis`].
    ///
    /// # Cancel safety
    ///
    /// A dropped call may or may not have cleared.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(ev: redis_sync::Event<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// ev.clear().await?;
    /// assert!(!ev.is_set().await?);
    /// # Ok(()) }
    /// ```
    pub async fn clear(&self) -> Result<()> {
        let mut conn = self.engine.conn.clone();
        let _: i64 = conn.del(&self.engine.cfg.keys.pool).await?;
        Ok(())
    }

    /// True when at least one signal is pending.
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
    /// # async fn demo(ev: redis_sync::Event<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// ev.set().await?;
    /// assert!(ev.is_set().await?);
    /// # Ok(()) }
    /// ```
    pub async fn is_set(&self) -> Result<bool> {
        let mut conn = self.engine.conn.clone();
        let n: i64 = conn.llen(&self.engine.cfg.keys.pool).await?;
        Ok(n > 0)
    }

    /// Stops renewing this handle's leases and fails its waits with [`Error::Closed`], at
    /// once and without a Redis call.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(ev: redis_sync::Event<redis_sync::Tokio>) {
    /// ev.close();
    /// # }
    /// ```
    pub fn close(&self) {
        self.engine.close();
    }

    /// Closes the handle and leaves nothing of it in Redis: waits fail with
    /// [`Error::Closed`], blocking waits are ended, and a signal taken by a wait that did
    /// not consume it goes back to the event; this handle's leases are given up. Call it
    /// before a process exits.
    ///
    /// # Errors
    ///
    /// [`Error::Redis`] when Redis could not be reached: the handle is closed anyway and
    /// its leases expire by themselves.
    ///
    /// # Cancel safety
    ///
    /// The handle is closed at the first poll; dropped midway, the rest is left to lease
    /// expiry. Call it again to finish.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(ev: redis_sync::Event<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// ev.shutdown().await?;
    /// # Ok(()) }
    /// ```
    pub async fn shutdown(&self) -> Result<()> {
        self.engine.shutdown().await
    }
}

/// Consumes a taken signal. Returns false when it was reclaimed meanwhile (lease lost).
async fn consume<R: Runtime>(held: Held<R>) -> Result<bool> {
    let (engine, gen, _) = held.disarm();
    let mut conn = engine.conn.clone();
    let key = gen.held_key.clone();
    gen.begin_call();
    let call = async move { conn.lpop::<_, Option<String>>(key, None).await };
    let (e2, g2) = (engine.clone(), gen.clone());
    let reply = Detachable::new(engine.rt.clone(), call, move |reply: RedisResult<_>| {
        // Consumed for a waiter that is gone: put the signal back.
        if let Ok(Some(_)) = reply {
            let mut conn = e2.conn.clone();
            let pool = e2.cfg.keys.pool.clone();
            let engine = e2.clone();
            e2.rt.spawn(async move {
                let put_back: RedisResult<i64> = conn.lpush(pool, SIGNAL_TOKEN).await;
                if let Err(e) = put_back {
                    engine.background_error("putting back a signal taken for a gone waiter", &e);
                }
            });
        }
        settle(&e2, &g2, reply.is_err());
    })
    .await;
    settle(&engine, &gen, reply.is_err());
    match reply {
        Ok(Some(_)) => Ok(true),
        Ok(None) => {
            engine.lose(&gen);
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

fn settle<R: Runtime>(engine: &Engine<R>, gen: &Arc<crate::engine::Generation>, unknown: bool) {
    if unknown {
        gen.mark_dirty();
    }
    gen.end_call();
    gen.sub_outstanding();
    engine.maybe_retire(gen);
}

/// Builds an [`Event`] with options; from [`Event::builder`].
///
/// # Examples
///
/// ```no_run
/// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
/// let ev = redis_sync::Event::<redis_sync::Tokio>::builder(&client, "ready")
///     .key_prefix("myapp:event")
///     .open()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until open()"]
pub struct EventBuilder<R: Runtime> {
    on: On<R>,
    opts: Options,
}

impl<R: Runtime> EventBuilder<R> {
    /// A builder on `ctx` (see [`Coordinator::event`](crate::Coordinator::event)).
    pub(crate) fn on_context(ctx: Arc<crate::context::Context<R>>, name: &str) -> Self {
        EventBuilder {
            on: On::Context(ctx),
            opts: Options::new(name, DEFAULT_EVENT_PREFIX),
        }
    }

    /// The key prefix (default `redsync:event`).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) {
    /// let b = redis_sync::Event::<redis_sync::Tokio>::builder(&client, "ready").key_prefix("app:ev");
    /// # }
    /// ```
    pub fn key_prefix(mut self, prefix: &str) -> Self {
        self.opts.key_prefix = prefix.to_owned();
        self
    }

    /// Hash-tagged keys (default) or redsync 2.0's exact key name.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) {
    /// let b = redis_sync::Event::<redis_sync::Tokio>::builder(&client, "ready")
    ///     .key_layout(redis_sync::KeyLayout::Redsync2);
    /// # }
    /// ```
    pub fn key_layout(mut self, layout: KeyLayout) -> Self {
        self.opts.key_layout = layout;
        self
    }

    /// The lease under which a waiter holds a signal it has taken but not yet consumed
    /// (default 300 s): a waiter that crashes in between gives the signal back after it.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) {
    /// let b = redis_sync::Event::<redis_sync::Tokio>::builder(&client, "ready")
    ///     .lease_ttl(std::time::Duration::from_secs(10));
    /// # }
    /// ```
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.opts.lease_ttl = ttl;
        self
    }

    /// At most this many dedicated connections block on Redis for this handle's waiters
    /// (default 4).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) {
    /// let b = redis_sync::Event::<redis_sync::Tokio>::builder(&client, "ready")
    ///     .max_blocking_connections(1);
    /// # }
    /// ```
    pub fn max_blocking_connections(mut self, n: usize) -> Self {
        self.opts.max_blocking = n;
        self
    }

    /// The deadline of every Redis request (default 5 s); see
    /// [`SemaphoreBuilder::response_timeout`](crate::SemaphoreBuilder::response_timeout).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) {
    /// let b = redis_sync::Event::<redis_sync::Tokio>::builder(&client, "ready")
    ///     .response_timeout(std::time::Duration::from_secs(2));
    /// # }
    /// ```
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.opts.response_timeout = timeout;
        self.opts.response_timeout_set = true;
        self
    }

    /// The runtime to run this handle's background work on, instead of
    /// `R::try_current()`; see [`SemaphoreBuilder::runtime`](crate::SemaphoreBuilder::runtime).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
    /// use redis_sync::{Event, Runtime, Tokio};
    /// let ev = Event::<Tokio>::builder(&client, "ready").runtime(Tokio::try_current()?).open().await?;
    /// # Ok(()) }
    /// ```
    pub fn runtime(mut self, rt: R) -> Self {
        self.on.set_runtime(&mut self.opts, rt);
        self
    }

    /// Whether to accept a Redis server whose eviction policy may delete this library's
    /// keys (default `false`: `open` fails with [`Error::EvictionPolicy`]); see
    /// [`SemaphoreBuilder::allow_eviction_policy`](crate::SemaphoreBuilder::allow_eviction_policy).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) {
    /// let b = redis_sync::Event::<redis_sync::Tokio>::builder(&client, "ready")
    ///     .allow_eviction_policy(true);
    /// # }
    /// ```
    pub fn allow_eviction_policy(mut self, allow: bool) -> Self {
        self.opts.check_eviction = !allow;
        self.opts.check_eviction_set = true;
        self
    }

    /// Opens the event, checking that its key, if present, is a list.
    ///
    /// # Errors
    ///
    /// As [`Event::open`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
    /// let ev = redis_sync::Event::<redis_sync::Tokio>::builder(&client, "ready").open().await?;
    /// # Ok(()) }
    /// ```
    pub async fn open(self) -> Result<Event<R>> {
        let engine = self.on.start(&self.opts, Kind::Event).await?;
        let mut conn = engine.conn.clone();
        let kind: String = match redis::cmd("TYPE")
            .arg(&engine.cfg.keys.pool)
            .query_async(&mut conn)
            .await
        {
            Ok(kind) => kind,
            Err(e) => {
                engine.close();
                return Err(e.into());
            }
        };
        if kind != "list" && kind != "none" {
            engine.close();
            return Err(Error::WrongType {
                key: engine.cfg.keys.pool.clone(),
                found: kind,
            });
        }
        Ok(Event { engine })
    }
}
