//! The connection layer: a shared multiplexed connection that is replaced when it fails or
//! goes silent, and dedicated connections for blocking waits.
//!
//! Every connection the library opens has TCP keepalive and, on Linux, `TCP_USER_TIMEOUT`,
//! and every request has a deadline: the shared connection's response timeout, and for a
//! blocking wait its block time plus that timeout. A request that misses its deadline, or
//! whose connection broke, makes the connection be replaced before the next request (a
//! silent connection is never reused: redis-rs keeps a multiplexed connection after a
//! timeout). Its outcome is unknown, which the engine handles with lease generations.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt, Shared};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::io::tcp::{socket2::TcpKeepalive, TcpSettings};
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};

/// Idle time before the first keepalive probe, then the probe interval and count: a peer
/// that vanished without FIN/RST is noticed by an idle connection within about 11 s.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(5);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
const KEEPALIVE_RETRIES: u32 = 3;
/// Data unacknowledged for this long aborts the connection (Linux `TCP_USER_TIMEOUT`).
/// Well under the 60 s during which reclaimed holders' lists are swept, so that a blocking
/// move stuck in a dead network path can never land later than that.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(20);

/// The user's client with this library's TCP settings (keepalive, user timeout); TLS and
/// authentication settings are kept.
pub(crate) fn with_tcp_settings(client: &redis::Client) -> RedisResult<redis::Client> {
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    let tcp = TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(keepalive);
    #[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
    let tcp = tcp.set_user_timeout(TCP_USER_TIMEOUT);
    #[cfg(not(any(target_os = "android", target_os = "fuchsia", target_os = "linux")))]
    let _ = TCP_USER_TIMEOUT;
    let info = client.get_connection_info().clone().set_tcp_settings(tcp);
    redis::Client::open(info)
}

/// Whether the connection that carried a failed request must be replaced: it broke, or a
/// reply did not come in time (a silent peer). An error reply from Redis leaves it usable.
pub(crate) fn connection_broken(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_unrecoverable_error()
}

type Connecting = Shared<BoxFuture<'static, RedisResult<MultiplexedConnection>>>;

#[derive(Default)]
enum Slot {
    #[default]
    Empty,
    /// One connection attempt shared by every caller that needs it now.
    Connecting(u64, Connecting),
    Ready(u64, MultiplexedConnection),
}

struct Inner {
    client: redis::Client,
    response_timeout: Duration,
    slot: Mutex<Slot>,
    /// Numbers each connection, so a failure replaces only the connection that failed.
    next_epoch: std::sync::atomic::AtomicU64,
}

/// The shared multiplexed connection of one handle: cheap to clone, usable wherever
/// redis-rs takes an async connection (`Script::invoke_async`, `query_async`).
#[derive(Clone)]
pub(crate) struct SharedConn {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SharedConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedConn")
            .field("addr", &self.inner.client.get_connection_info().addr())
            .finish_non_exhaustive()
    }
}

impl SharedConn {
    /// Connects now, so that a wrong address or credentials fail at once.
    pub(crate) async fn connect(
        client: redis::Client,
        response_timeout: Duration,
    ) -> RedisResult<Self> {
        let conn = SharedConn {
            inner: Arc::new(Inner {
                client,
                response_timeout,
                slot: Mutex::new(Slot::Empty),
                next_epoch: std::sync::atomic::AtomicU64::new(0),
            }),
        };
        conn.get().await?;
        Ok(conn)
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        // Every critical section only swaps a value: a panic cannot leave it inconsistent.
        self.inner.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current connection, opening one (once, for every caller) when there is none.
    async fn get(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        let connecting = {
            let mut slot = self.slot();
            match &*slot {
                Slot::Ready(epoch, c) => return Ok((*epoch, c.clone())),
                Slot::Connecting(epoch, f) => (*epoch, f.clone()),
                Slot::Empty => {
                    let epoch = self
                        .inner
                        .next_epoch
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let f = open(
                        self.inner.client.clone(),
                        Some(self.inner.response_timeout),
                        self.inner.response_timeout,
                    )
                    .boxed()
                    .shared();
                    *slot = Slot::Connecting(epoch, f.clone());
                    (epoch, f)
                }
            }
        };
        let (epoch, fut) = connecting;
        let res = fut.await;
        let mut slot = self.slot();
        let ours = matches!(&*slot, Slot::Connecting(e, _) if *e == epoch);
        match res {
            Ok(c) => {
                if ours {
                    *slot = Slot::Ready(epoch, c.clone());
                }
                Ok((epoch, c))
            }
            Err(e) => {
                // The next caller tries again.
                if ours {
                    *slot = Slot::Empty;
                }
                Err(e)
            }
        }
    }

    /// Drops connection `epoch` if it is still the current one.
    fn replace(&self, epoch: u64) {
        let mut slot = self.slot();
        if matches!(&*slot, Slot::Ready(e, _) if *e == epoch) {
            *slot = Slot::Empty;
        }
    }

    /// Drops the current connection, whatever its state: the next request opens a new one.
    /// Requests in flight on the old one keep it until they end (each has its deadline).
    pub(crate) fn reset(&self) {
        *self.slot() = Slot::Empty;
    }

    fn check<T>(&self, epoch: u64, res: RedisResult<T>) -> RedisResult<T> {
        if let Err(e) = &res {
            if connection_broken(e) {
                self.replace(epoch);
            }
        }
        res
    }

    /// A dedicated connection for one blocking wait at a time, whose every request (the
    /// wait included, up to `longest_block`) has a deadline.
    pub(crate) async fn dedicated(
        &self,
        longest_block: Duration,
    ) -> RedisResult<MultiplexedConnection> {
        let timeout = self.inner.response_timeout;
        open(
            self.inner.client.clone(),
            Some(longest_block + timeout),
            timeout,
        )
        .await
    }
}

/// Refuses a server that may evict keys: with `maxmemory` set, any policy but
/// `noeviction` can delete pools, held lists or leases (all of a semaphore's keys carry
/// TTLs, so `volatile-*` policies too). Reads `INFO memory` (CONFIG is often refused on
/// managed Redis); where INFO itself is refused, the check is skipped.
pub(crate) async fn check_eviction_policy(conn: &SharedConn) -> crate::Result<()> {
    let mut conn = conn.clone();
    let info: String = match redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await
    {
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

async fn open(
    client: redis::Client,
    response_timeout: Option<Duration>,
    connection_timeout: Duration,
) -> RedisResult<MultiplexedConnection> {
    let cfg = AsyncConnectionConfig::new()
        .set_response_timeout(response_timeout)
        .set_connection_timeout(Some(connection_timeout));
    client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
}

impl ConnectionLike for SharedConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let (epoch, mut conn) = self.get().await?;
            let res = conn.req_packed_command(cmd).await;
            self.check(epoch, res)
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let (epoch, mut conn) = self.get().await?;
            let res = conn.req_packed_commands(pipeline, offset, count).await;
            self.check(epoch, res)
        })
    }

    fn get_db(&self) -> i64 {
        self.inner
            .client
            .get_connection_info()
            .redis_settings()
            .db()
    }
}
