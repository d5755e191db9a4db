//! One Redis server (a fixed address, or the primary a Sentinel names): a shared
//! multiplexed connection that is replaced when it fails or goes silent, and dedicated
//! connections for blocking waits.

use std::sync::Arc;
use std::time::Duration;

use futures::future::FutureExt;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::io::tcp::{socket2::TcpKeepalive, TcpSettings};
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};

use super::reconnect::{Opener, Reconnecting};
use super::Sleeper;

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
    let info = client
        .get_connection_info()
        .clone()
        .set_tcp_settings(tcp_settings());
    redis::Client::open(info)
}

/// TCP keepalive and, on Linux, `TCP_USER_TIMEOUT`, for every connection the library opens.
pub(crate) fn tcp_settings() -> TcpSettings {
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
    tcp
}

/// Whether the connection that carried a failed request must be replaced: it broke, or a
/// reply did not come in time (a silent peer). An error reply from Redis leaves it usable.
/// A `READONLY` reply means the server is now a replica (a failover): the next connection
/// must find the new primary.
pub(crate) fn connection_broken(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
        || e.code() == Some("READONLY")
}

/// Where the server is: a fixed client, or the primary that Sentinel names now (asked
/// again for every new connection, so a failover is followed).
#[derive(Clone)]
// Made once per context or builder: the size of a `redis::Client` does not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Source {
    Fixed(redis::Client),
    #[cfg(feature = "sentinel")]
    Sentinel(Arc<futures::lock::Mutex<redis::sentinel::SentinelClient>>),
}

impl Source {
    /// The client of the server to connect to now, with this library's TCP settings; a
    /// Sentinel lookup that takes longer than `timeout` fails (`sleep` measures it).
    pub(crate) async fn client(
        &self,
        timeout: Duration,
        sleep: Option<&Sleeper>,
    ) -> RedisResult<redis::Client> {
        match self {
            Source::Fixed(client) => {
                let _ = (timeout, sleep);
                Ok(client.clone())
            }
            #[cfg(feature = "sentinel")]
            Source::Sentinel(sentinel) => {
                let lookup = async {
                    let client = sentinel.lock().await.async_get_client().await?;
                    with_tcp_settings(&client)
                };
                let Some(sleep) = sleep else {
                    return lookup.await;
                };
                futures::pin_mut!(lookup);
                match futures::future::select(lookup, sleep(timeout)).await {
                    futures::future::Either::Left((res, _)) => res,
                    futures::future::Either::Right(_) => {
                        Err(RedisError::from(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "no sentinel named the primary in time",
                        )))
                    }
                }
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Source::Fixed(client) => client.get_connection_info().addr().to_string(),
            #[cfg(feature = "sentinel")]
            Source::Sentinel(_) => "sentinel".to_owned(),
        }
    }
}

struct Inner {
    source: Source,
    response_timeout: Duration,
    sleep: Option<Sleeper>,
    conn: Reconnecting<MultiplexedConnection>,
}

/// The shared multiplexed connection to one server: cheap to clone, usable wherever
/// redis-rs takes an async connection (`Script::invoke_async`, `query_async`).
#[derive(Clone)]
pub(crate) struct SharedConn {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SharedConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedConn")
            .field("server", &self.inner.source.describe())
            .finish_non_exhaustive()
    }
}

impl SharedConn {
    /// Connects now, so that a wrong address or credentials fail at once.
    /// Connects now, so that a wrong address or credentials fail at once. `sleep` bounds
    /// Sentinel lookups (none for a fixed server).
    pub(crate) async fn connect(
        source: Source,
        response_timeout: Duration,
        sleep: Option<Sleeper>,
    ) -> RedisResult<Self> {
        let (opener_source, opener_sleep) = (source.clone(), sleep.clone());
        let open: Opener<MultiplexedConnection> = Arc::new(move || {
            open(
                opener_source.clone(),
                opener_sleep.clone(),
                Some(response_timeout),
                response_timeout,
            )
            .boxed()
        });
        let conn = SharedConn {
            inner: Arc::new(Inner {
                source,
                response_timeout,
                sleep,
                conn: Reconnecting::new(open),
            }),
        };
        conn.inner.conn.get().await?;
        Ok(conn)
    }

    /// Drops the current connection (not one being opened): the next request opens a new one.
    pub(crate) fn reset(&self) {
        self.inner.conn.reset();
    }

    fn check<T>(&self, epoch: u64, res: RedisResult<T>) -> RedisResult<T> {
        if let Err(e) = &res {
            if connection_broken(e) {
                self.inner.conn.replace(epoch);
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
            self.inner.source.clone(),
            self.inner.sleep.clone(),
            Some(longest_block + timeout),
            timeout,
        )
        .await
    }
}

async fn open(
    source: Source,
    sleep: Option<Sleeper>,
    response_timeout: Option<Duration>,
    connection_timeout: Duration,
) -> RedisResult<MultiplexedConnection> {
    let client = source.client(connection_timeout, sleep.as_ref()).await?;
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
            let (epoch, mut conn) = self.inner.conn.get().await?;
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
            let (epoch, mut conn) = self.inner.conn.get().await?;
            let res = conn.req_packed_commands(pipeline, offset, count).await;
            self.check(epoch, res)
        })
    }

    fn get_db(&self) -> i64 {
        match &self.inner.source {
            Source::Fixed(client) => client.get_connection_info().redis_settings().db(),
            #[cfg(feature = "sentinel")]
            Source::Sentinel(_) => 0,
        }
    }
}
