//! The connection layer: one shared multiplexed connection (one per node in a cluster,
//! each replaced on its own) for everything but blocking waits, which get dedicated
//! connections to the server that owns the key.
//!
//! Every connection the library opens has TCP keepalive and, on Linux, `TCP_USER_TIMEOUT`,
//! and every request has a deadline: the response timeout, and for a blocking wait its
//! block time plus that timeout. A request that misses its deadline, or whose connection
//! broke, makes the connection be replaced before the next request (a silent connection is
//! never reused: redis-rs keeps a multiplexed connection after a timeout). Its outcome is
//! unknown, which the engine handles with lease generations. Replies that say a request
//! certainly did not run (a redirection, a failover in progress) are retried here.

#[cfg(feature = "cluster")]
mod cluster;
mod reconnect;
mod single;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};

#[cfg(feature = "cluster")]
use single::{connection_broken, tcp_settings};
pub(crate) use single::{with_tcp_settings, SharedConn, Source};

/// Sleeps on the context's runtime (the connection layer is not generic over it).
pub(crate) type Sleeper = Arc<dyn Fn(Duration) -> BoxFuture<'static, ()> + Send + Sync>;

/// The first pause before retrying a request that did not run, doubled up to the last.
const RETRY_FIRST: Duration = Duration::from_millis(10);
const RETRY_MAX: Duration = Duration::from_millis(500);

/// Whether an error reply says the key is not served where the request went, so that it
/// must go elsewhere or later: a cluster redirection (`MOVED`, `ASK`), a slot being
/// migrated (`TRYAGAIN`), a cluster or primary down, a server loading its data, a server
/// that is a replica now (`READONLY`, after a failover): none of these ran. Also a
/// blocking wait ended by a failover (`UNBLOCKED`), which the engine nonetheless treats
/// as of unknown outcome.
pub(crate) fn not_executed(e: &RedisError) -> bool {
    matches!(
        e.code(),
        Some(
            "MOVED"
                | "ASK"
                | "TRYAGAIN"
                | "CLUSTERDOWN"
                | "LOADING"
                | "MASTERDOWN"
                | "READONLY"
                | "UNBLOCKED"
        )
    )
}

/// Not run, and worth sending again after a pause (redirections are followed at once).
fn retry_later(e: &RedisError) -> bool {
    not_executed(e) && !matches!(e.code(), Some("MOVED" | "ASK" | "UNBLOCKED"))
}

#[derive(Clone)]
enum Server {
    Single(SharedConn),
    #[cfg(feature = "cluster")]
    Cluster(cluster::ClusterConn),
}

/// The shared connection of a context: cheap to clone, usable wherever redis-rs takes an
/// async connection (`Script::invoke_async`, `query_async`).
#[derive(Clone)]
pub(crate) struct Conn {
    server: Server,
    response_timeout: Duration,
    sleep: Sleeper,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.server {
            Server::Single(c) => c.fmt(f),
            #[cfg(feature = "cluster")]
            Server::Cluster(c) => c.fmt(f),
        }
    }
}

impl Conn {
    /// One server (fixed, or found through Sentinel); connects now.
    pub(crate) async fn single(
        source: Source,
        response_timeout: Duration,
        sleep: Sleeper,
    ) -> RedisResult<Self> {
        Ok(Conn {
            server: Server::Single(
                SharedConn::connect(source, response_timeout, Some(sleep.clone())).await?,
            ),
            response_timeout,
            sleep,
        })
    }

    /// A Redis Cluster, from its seed nodes; connects now.
    #[cfg(feature = "cluster")]
    pub(crate) async fn cluster(
        nodes: Vec<redis::ConnectionInfo>,
        response_timeout: Duration,
        sleep: Sleeper,
    ) -> RedisResult<Self> {
        Ok(Conn {
            server: Server::Cluster(cluster::ClusterConn::connect(nodes, response_timeout).await?),
            response_timeout,
            sleep,
        })
    }

    pub(crate) fn is_cluster(&self) -> bool {
        !matches!(self.server, Server::Single(_))
    }

    /// After a blocking wait missed its deadline: drops the shared connection of a single
    /// server (silent too, likely), so that the next request opens a new one. In a cluster
    /// nothing is dropped: each node's connection is replaced by its own failures, and the
    /// other nodes' must not be.
    pub(crate) fn reset(&self) {
        match &self.server {
            Server::Single(c) => c.reset(),
            #[cfg(feature = "cluster")]
            Server::Cluster(c) => c.reset(),
        }
    }

    /// A dedicated connection to the server that owns `key`, whose every request (a wait
    /// of up to `longest_block` included) has a deadline; with the name of that server,
    /// by which dedicated connections are pooled.
    pub(crate) async fn dedicated(
        &self,
        key: &str,
        longest_block: Duration,
    ) -> RedisResult<(MultiplexedConnection, String)> {
        match &self.server {
            Server::Single(c) => {
                let _ = key;
                Ok((c.dedicated(longest_block).await?, String::new()))
            }
            #[cfg(feature = "cluster")]
            Server::Cluster(c) => c.dedicated_for(key, longest_block).await,
        }
    }

    /// The server that owns `key` (empty for a single server), for pooling.
    pub(crate) async fn node_of(&self, key: &str) -> RedisResult<String> {
        match &self.server {
            Server::Single(_) => {
                let _ = key;
                Ok(String::new())
            }
            #[cfg(feature = "cluster")]
            Server::Cluster(c) => c.owner_of(key).await.map(|(h, p)| format!("{h}:{p}")),
        }
    }

    /// Ends the blocking wait of client `id`, connected to `node` (as named by
    /// [`Conn::dedicated`]), with `CLIENT UNBLOCK` sent to that server: client ids are
    /// numbered per server, so in a cluster another node's client of the same id would
    /// be the one woken.
    pub(crate) async fn unblock_client(&self, id: i64, node: &str) -> RedisResult<i64> {
        let mut cmd = redis::cmd("CLIENT");
        cmd.arg("UNBLOCK").arg(id);
        match &self.server {
            Server::Single(_) => {
                let _ = node;
                cmd.query_async(&mut self.clone()).await
            }
            #[cfg(feature = "cluster")]
            Server::Cluster(c) => {
                let v = c.request_at(node, &cmd).await?;
                redis::from_redis_value(v).map_err(redis::RedisError::from)
            }
        }
    }

    /// A blocking wait on a dedicated connection failed without running (see
    /// [`not_executed`]): learn where the key lives now.
    pub(crate) fn note_blocking_error(&self, e: &RedisError) {
        match &self.server {
            Server::Single(_) => {
                let _ = e;
            }
            #[cfg(feature = "cluster")]
            Server::Cluster(c) => c.note_blocking_error(e),
        }
    }

    /// Refuses a server that may evict keys: with `maxmemory` set, any policy but
    /// `noeviction` can delete pools, held lists or leases (all of a semaphore's keys carry
    /// TTLs, so `volatile-*` policies too). Reads `INFO memory` of the server that owns
    /// `key` (CONFIG is often refused on managed Redis); where INFO itself is refused, the
    /// check is skipped.
    pub(crate) async fn check_eviction_policy(&self, key: &str) -> crate::Result<()> {
        let reply: RedisResult<String> = match &self.server {
            Server::Single(c) => {
                let _ = key;
                redis::cmd("INFO")
                    .arg("memory")
                    .query_async(&mut c.clone())
                    .await
            }
            #[cfg(feature = "cluster")]
            Server::Cluster(c) => match c.dedicated_for(key, Duration::ZERO).await {
                Ok((mut node, _)) => {
                    redis::cmd("INFO")
                        .arg("memory")
                        .query_async(&mut node)
                        .await
                }
                Err(e) => Err(e),
            },
        };
        let info = match reply {
            Ok(info) => info,
            Err(e) if e.code().is_some() => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(|v| v.trim().to_owned())
        };
        let limited = field("maxmemory").is_some_and(|m| m != "0");
        match field("maxmemory_policy") {
            Some(policy) if limited && policy != "noeviction" => {
                Err(crate::Error::EvictionPolicy { policy })
            }
            _ => Ok(()),
        }
    }

    async fn send_once(&self, what: Request<'_>) -> RedisResult<Vec<Value>> {
        match (&self.server, what) {
            (Server::Single(c), Request::Cmd(cmd)) => {
                c.clone().req_packed_command(cmd).await.map(|v| vec![v])
            }
            (Server::Single(c), Request::Pipeline(p, offset, count)) => {
                c.clone().req_packed_commands(p, offset, count).await
            }
            #[cfg(feature = "cluster")]
            (Server::Cluster(c), Request::Cmd(cmd)) => c.request(cmd).await.map(|v| vec![v]),
            #[cfg(feature = "cluster")]
            (Server::Cluster(c), Request::Pipeline(p, offset, count)) => {
                c.request_pipeline(p, offset, count).await
            }
        }
    }

    /// Sends a request, again after a pause while the reply says it did not run, until
    /// the response timeout has passed.
    async fn send(&self, what: Request<'_>) -> RedisResult<Vec<Value>> {
        let started = Instant::now();
        let mut pause = RETRY_FIRST;
        loop {
            match self.send_once(what).await {
                Err(e) if retry_later(&e) && started.elapsed() + pause < self.response_timeout => {
                    (self.sleep)(pause).await;
                    pause = (pause * 2).min(RETRY_MAX);
                }
                other => return other,
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Request<'a> {
    Cmd(&'a Cmd),
    Pipeline(&'a Pipeline, usize, usize),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let mut v = self.send(Request::Cmd(cmd)).await?;
            v.pop()
                .ok_or_else(|| RedisError::from((redis::ErrorKind::Client, "no reply")))
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move { self.send(Request::Pipeline(pipeline, offset, count)).await })
    }

    fn get_db(&self) -> i64 {
        match &self.server {
            Server::Single(c) => c.get_db(),
            #[cfg(feature = "cluster")]
            Server::Cluster(_) => 0,
        }
    }
}
