//! The coordinator: one set of connections and one lease watchdog for any number of
//! primitives, on one Redis server, a Sentinel-managed primary, or a Redis Cluster.

use std::sync::Arc;
use std::time::Duration;

use crate::context::{Context, Settings, Target};
use crate::runtime::Runtime;
use crate::{
    EventBuilder, Result, SemaphoreBuilder, Stats, DEFAULT_COORDINATOR_BLOCKING_CONNECTIONS,
    DEFAULT_RESPONSE_TIMEOUT,
};

/// Hands out any number of semaphores and events that share its connections and its
/// lease watchdog.
///
/// * **One multiplexed connection** (one per primary in a cluster) carries every
///   non-blocking request of every primitive: idle primitives and held permits cost no
///   connection of their own.
/// * **A bounded pool of dedicated connections** (at most
///   [`max_blocking_connections`](CoordinatorBuilder::max_blocking_connections), default
///   32) carries the blocking waits. When more primitives have waiters than the pool has
///   connections, the connections rotate: first come, first served, each wait a 100 ms
///   slice while others queue (see the README's "Connections").
/// * **One watchdog** renews the leases of all its primitives, the renewals that fall due
///   together in one round trip.
///
/// So a process with a coordinator opens at most `1 + max_blocking_connections`
/// connections per Redis server (a cluster: per primary), however many primitives it uses.
/// Clones share everything. [`Semaphore::create`](crate::Semaphore::create) and the other
/// constructors that take a client keep working: each such handle has a private
/// coordinator.
///
/// # Examples
///
/// ```no_run
/// use redis_sync::{Coordinator, Tokio};
///
/// # async fn demo() -> redis_sync::Result<()> {
/// let client = redis_sync::redis::Client::open("redis://127.0.0.1/")?;
/// let sync = Coordinator::<Tokio>::connect(&client).await?;
/// let exports = sync.semaphore("exports").create(3).await?;
/// let ready = sync.event("ready").open().await?;
/// let permit = exports.acquire().await?;
/// ready.set().await?;
/// permit.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Coordinator<R: Runtime> {
    ctx: Arc<Context<R>>,
}

/// Settings of a [`Coordinator`]: response timeout, blocking-connection cap, runtime.
///
/// # Examples
///
/// ```no_run
/// # use std::time::Duration;
/// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
/// let sync = redis_sync::Coordinator::<redis_sync::Tokio>::builder(&client)
///     .max_blocking_connections(8)
///     .response_timeout(Duration::from_secs(2))
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "a builder does nothing until connect()"]
pub struct CoordinatorBuilder<R: Runtime> {
    target: Result<Target>,
    settings: Settings,
    rt: Option<R>,
}

/// What a [`Coordinator`] has open and what its primitives did: plain numbers, no Redis
/// call.
///
/// # Examples
///
/// ```no_run
/// # fn demo(sync: redis_sync::Coordinator<redis_sync::Tokio>) {
/// let s = sync.stats();
/// println!("{} primitives, {}/{} blocking connections, {} waits queued for one",
///          s.primitives, s.blocking_connections, s.max_blocking_connections, s.queued_waits);
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CoordinatorStats {
    /// Live primitive handles made from it.
    pub primitives: usize,
    /// Dedicated blocking connections open now (lent or idle).
    pub blocking_connections: usize,
    /// The cap on them.
    pub max_blocking_connections: usize,
    /// Blocking waits queued for a connection now (more primitives wait than the cap).
    pub queued_waits: usize,
    /// The sum of every live primitive's [`Stats`].
    pub totals: Stats,
}

impl<R: Runtime> Coordinator<R> {
    /// Connects to one Redis server with the default settings.
    ///
    /// # Errors
    ///
    /// [`Error::Redis`](crate::Error::Redis) (unreachable, refused credentials),
    /// [`Error::NoRuntime`](crate::Error::NoRuntime).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: nothing is left behind.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
    /// let sync = redis_sync::Coordinator::<redis_sync::Tokio>::connect(&client).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(client: &redis::Client) -> Result<Self> {
        Self::builder(client).connect().await
    }

    /// Settings beyond the defaults, for one Redis server.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
    /// let sync = redis_sync::Coordinator::<redis_sync::Tokio>::builder(&client)
    ///     .max_blocking_connections(4)
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn builder(client: &redis::Client) -> CoordinatorBuilder<R> {
        CoordinatorBuilder::new(Ok(Target::Client(client.clone())))
    }

    /// Settings for a Redis Cluster, from one or more of its nodes (feature `cluster`).
    ///
    /// Credentials, TLS and the database of the first node apply to every node. Requests
    /// are routed by key; redirections (`MOVED`, `ASK`), slot migrations (`TRYAGAIN`) and
    /// failovers (`CLUSTERDOWN`, `READONLY`) are retried only when the reply says the
    /// request did not run, and never re-sent after a timeout (its outcome is handled by
    /// lease generations). Blocking waits use connections to the primary that owns the
    /// primitive's slot. Primitives must use [`KeyLayout::HashTagged`](crate::KeyLayout)
    /// (the default): all keys of one primitive share the hash tag `{name}`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo() -> redis_sync::Result<()> {
    /// let sync = redis_sync::Coordinator::<redis_sync::Tokio>::cluster([
    ///     "redis://10.0.0.1:6379/",
    ///     "redis://10.0.0.2:6379/",
    /// ])
    /// .connect()
    /// .await?;
    /// let sem = sync.semaphore("exports").create(3).await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "cluster")]
    #[cfg_attr(docsrs, doc(cfg(feature = "cluster")))]
    pub fn cluster<T: redis::IntoConnectionInfo>(
        nodes: impl IntoIterator<Item = T>,
    ) -> CoordinatorBuilder<R> {
        let nodes: redis::RedisResult<Vec<redis::ConnectionInfo>> = nodes
            .into_iter()
            .map(|n| n.into_connection_info())
            .collect();
        let target = match nodes {
            Ok(nodes) if nodes.is_empty() => Err(crate::Error::InvalidArgument(
                crate::Invalid::SeedNodes("no node given".to_owned()),
            )),
            Ok(nodes) => Ok(Target::Cluster(nodes)),
            Err(e) => Err(crate::Error::InvalidArgument(crate::Invalid::SeedNodes(
                e.to_string(),
            ))),
        };
        CoordinatorBuilder::new(target)
    }

    /// Settings for the primary that Redis Sentinel names (feature `sentinel`).
    ///
    /// The primary is asked of the sentinels for every new connection: after a failover
    /// (a `READONLY` or `UNBLOCKED` reply, a dropped connection) the shared and the
    /// blocking connections are opened again to the new primary.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo() -> redis_sync::Result<()> {
    /// use redis_sync::redis::sentinel::{SentinelClient, SentinelServerType};
    /// let sentinel = SentinelClient::build(
    ///     vec!["redis://10.0.0.1:26379/", "redis://10.0.0.2:26379/"],
    ///     "mymaster".to_owned(),
    ///     None,
    ///     SentinelServerType::Master,
    /// )?;
    /// let sync = redis_sync::Coordinator::<redis_sync::Tokio>::sentinel(sentinel)
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "sentinel")]
    #[cfg_attr(docsrs, doc(cfg(feature = "sentinel")))]
    pub fn sentinel(client: redis::sentinel::SentinelClient) -> CoordinatorBuilder<R> {
        CoordinatorBuilder::new(Ok(Target::Sentinel(Arc::new(futures::lock::Mutex::new(
            client,
        )))))
    }

    /// A semaphore named `name` on this coordinator: its builder, then
    /// [`create`](SemaphoreBuilder::create) or [`attach`](SemaphoreBuilder::attach).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(sync: redis_sync::Coordinator<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// let sem = sync.semaphore("tenant-42").create(5).await?;
    /// # Ok(()) }
    /// ```
    pub fn semaphore(&self, name: &str) -> SemaphoreBuilder<R> {
        SemaphoreBuilder::on_context(self.ctx.clone(), name)
    }

    /// An event named `name` on this coordinator: its builder, then
    /// [`open`](EventBuilder::open).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(sync: redis_sync::Coordinator<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// let ev = sync.event("ready").open().await?;
    /// # Ok(()) }
    /// ```
    pub fn event(&self, name: &str) -> EventBuilder<R> {
        EventBuilder::on_context(self.ctx.clone(), name)
    }

    /// A lock with fencing tokens named `name` on this coordinator: its builder, then
    /// [`open`](crate::MutexBuilder::open).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(sync: redis_sync::Coordinator<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// let lock = sync.mutex("ledger").open().await?;
    /// let guard = lock.lock().await?;
    /// println!("token {}", guard.fencing_token());
    /// # Ok(()) }
    /// ```
    pub fn mutex(&self, name: &str) -> crate::MutexBuilder<R> {
        crate::MutexBuilder::on_context(self.ctx.clone(), name)
    }

    /// A read-write lock named `name` on this coordinator: its builder, then
    /// [`open`](crate::RwLockBuilder::open).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(sync: redis_sync::Coordinator<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// let lock = sync.rwlock("catalog").max_readers(16).open().await?;
    /// # Ok(()) }
    /// ```
    pub fn rwlock(&self, name: &str) -> crate::RwLockBuilder<R> {
        crate::RwLockBuilder::on_context(self.ctx.clone(), name)
    }

    /// A broadcast event ([`Notify`](crate::Notify)) named `name` on this coordinator:
    /// its builder, then [`open`](crate::NotifyBuilder::open). Its waiters share the
    /// coordinator's connections: one blocking connection per handle however many tasks
    /// wait on it.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(sync: redis_sync::Coordinator<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// let go = sync.notify("go").open().await?;
    /// go.set().await?;
    /// # Ok(()) }
    /// ```
    pub fn notify(&self, name: &str) -> crate::NotifyBuilder<R> {
        crate::NotifyBuilder::on_context(self.ctx.clone(), name)
    }

    /// A count-down latch ([`CountDownLatch`](crate::CountDownLatch)) named `name` on
    /// this coordinator: its builder, then [`open`](crate::CountDownLatchBuilder::open).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(sync: redis_sync::Coordinator<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// let boot = sync.latch("boot").open().await?;
    /// boot.try_set_count(3).await?;
    /// # Ok(()) }
    /// ```
    pub fn latch(&self, name: &str) -> crate::CountDownLatchBuilder<R> {
        crate::CountDownLatchBuilder::on_context(self.ctx.clone(), name)
    }

    /// Whether it is connected to a Redis Cluster.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn demo(sync: redis_sync::Coordinator<redis_sync::Tokio>) {
    /// println!("cluster: {}", sync.is_cluster());
    /// # }
    /// ```
    pub fn is_cluster(&self) -> bool {
        self.ctx.conn.is_cluster()
    }

    /// What it has open, and the sum of its primitives' [`Stats`], without a Redis call.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn demo(sync: redis_sync::Coordinator<redis_sync::Tokio>) {
    /// println!("{:?}", sync.stats());
    /// # }
    /// ```
    pub fn stats(&self) -> CoordinatorStats {
        let engines = self.ctx.engines();
        let mut totals = Stats::default();
        for e in &engines {
            totals.accumulate(&e.stats());
        }
        CoordinatorStats {
            primitives: engines.iter().filter(|e| !e.is_closed()).count(),
            blocking_connections: self.ctx.pool.open(),
            max_blocking_connections: self.ctx.pool.cap(),
            queued_waits: self.ctx.pool.queued(),
            totals,
        }
    }

    /// Shuts down every primitive made from it (as their own `shutdown` does: releases
    /// sent, leases given up, nothing of this process left in Redis), then refuses new
    /// ones and closes its idle connections.
    ///
    /// # Errors
    ///
    /// The first [`Error::Redis`](crate::Error::Redis) met; every primitive is shut down
    /// regardless.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: what is not done is left to lease expiry.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(sync: redis_sync::Coordinator<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// sync.shutdown().await?;
    /// # Ok(()) }
    /// ```
    pub async fn shutdown(&self) -> Result<()> {
        self.ctx.close();
        let engines = self.ctx.engines();
        let results = futures::future::join_all(engines.iter().map(|e| e.shutdown())).await;
        self.ctx.pool.close_idle();
        results.into_iter().collect::<Result<Vec<()>>>().map(drop)
    }
}

impl<R: Runtime> CoordinatorBuilder<R> {
    fn new(target: Result<Target>) -> Self {
        CoordinatorBuilder {
            target,
            settings: Settings {
                response_timeout: DEFAULT_RESPONSE_TIMEOUT,
                max_blocking: DEFAULT_COORDINATOR_BLOCKING_CONNECTIONS,
                check_eviction: true,
            },
            rt: None,
        }
    }

    /// The deadline of every Redis request of every primitive (default 5 s): the response
    /// timeout of the shared connection, and for a blocking wait, its block time (at most
    /// 2 s) plus this.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) {
    /// let b = redis_sync::Coordinator::<redis_sync::Tokio>::builder(&client)
    ///     .response_timeout(std::time::Duration::from_secs(2));
    /// # }
    /// ```
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.settings.response_timeout = timeout;
        self
    }

    /// The most dedicated connections open at once for blocking waits, shared by every
    /// primitive (default 32, at least 1). Each primitive also keeps its own
    /// `max_blocking_connections` (default 4) as a limit on its share.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) {
    /// let b = redis_sync::Coordinator::<redis_sync::Tokio>::builder(&client)
    ///     .max_blocking_connections(8);
    /// # }
    /// ```
    pub fn max_blocking_connections(mut self, n: usize) -> Self {
        self.settings.max_blocking = n;
        self
    }

    /// The runtime for the background work of every primitive, instead of
    /// `R::try_current()`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
    /// use redis_sync::{Coordinator, Runtime, Tokio};
    /// let b = Coordinator::<Tokio>::builder(&client).runtime(Tokio::try_current()?);
    /// # Ok(()) }
    /// ```
    pub fn runtime(mut self, rt: R) -> Self {
        self.rt = Some(rt);
        self
    }

    /// The default of its primitives' `allow_eviction_policy` (default `false`: refuse a
    /// server whose eviction policy may delete keys). A primitive's builder can still set
    /// its own.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) {
    /// let b = redis_sync::Coordinator::<redis_sync::Tokio>::builder(&client)
    ///     .allow_eviction_policy(true);
    /// # }
    /// ```
    pub fn allow_eviction_policy(mut self, allow: bool) -> Self {
        self.settings.check_eviction = !allow;
        self
    }

    /// Connects, loads the scripts, and starts the watchdog.
    ///
    /// # Errors
    ///
    /// [`Error::Redis`](crate::Error::Redis), [`Error::NoRuntime`](crate::Error::NoRuntime),
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
    /// let sync = redis_sync::Coordinator::<redis_sync::Tokio>::builder(&client).connect().await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(self) -> Result<Coordinator<R>> {
        let ctx = Context::connect(self.target?, self.settings, self.rt).await?;
        Ok(Coordinator { ctx })
    }
}
