//! Redis Cluster: requests routed by key over redis-rs's cluster connection, with every
//! redirection handled here, and dedicated connections to the primary that owns a key's
//! slot for blocking waits.
//!
//! redis-rs re-sends a request by itself after a timeout or a dropped connection, which
//! could run a script twice (a permit taken twice). This library's cluster client is
//! therefore built with no retries, and it retries itself only what certainly did not run:
//! `MOVED` and `ASK` (sent again to the node named, `ASK` after `ASKING`), and, after a
//! pause, `TRYAGAIN`, `CLUSTERDOWN`, `LOADING`, `MASTERDOWN` and `READONLY` (see
//! [`super::not_executed`]). A timeout or a dropped connection is returned: its outcome is
//! unknown, and the engine handles it with lease generations.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::FutureExt;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, ConnectionInfo, Pipeline, RedisError, RedisResult,
    Value,
};

use super::reconnect::{Opener, Reconnecting};
use super::{connection_broken, tcp_settings};

/// How many redirections one request follows before giving up (a slot moving back and
/// forth faster than this is not a state to keep chasing).
const MAX_REDIRECTS: usize = 8;

/// Where a request goes after a redirection.
#[derive(Clone, Debug)]
enum Redirect {
    Moved(String, u16),
    Ask(String, u16),
}

struct Inner {
    /// The first node's settings (credentials, TLS, database): dedicated connections to
    /// other nodes use them with another address.
    template: ConnectionInfo,
    response_timeout: Duration,
    conn: Reconnecting<ClusterConnection>,
    /// The primary of each slot range as last seen: start slot -> (end slot, host, port).
    owners: Mutex<BTreeMap<u16, (u16, String, u16)>>,
}

/// The cluster connection of a context: cheap to clone.
#[derive(Clone)]
pub(crate) struct ClusterConn {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ClusterConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConn")
            .field("seed", &self.inner.template.addr().to_string())
            .finish_non_exhaustive()
    }
}

impl ClusterConn {
    /// Builds the cluster client from the seed nodes (no retries of its own, this
    /// library's deadlines and TCP settings) and connects now.
    pub(crate) async fn connect(
        nodes: Vec<ConnectionInfo>,
        response_timeout: Duration,
    ) -> RedisResult<Self> {
        let template = nodes.first().cloned().ok_or_else(|| {
            RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "a cluster needs at least one seed node",
            ))
        })?;
        let template = template.set_tcp_settings(tcp_settings());
        let client = ClusterClientBuilder::new(nodes)
            .retries(0)
            .response_timeout(response_timeout)
            .connection_timeout(response_timeout)
            .tcp_settings(tcp_settings())
            .build()?;
        let open_client = client.clone();
        let open: Opener<ClusterConnection> = Arc::new(move || {
            let client = open_client.clone();
            async move { client.get_async_connection().await }.boxed()
        });
        let conn = ClusterConn {
            inner: Arc::new(Inner {
                template,
                response_timeout,
                conn: Reconnecting::new(open),
                owners: Mutex::new(BTreeMap::new()),
            }),
        };
        conn.inner.conn.get().await?;
        Ok(conn)
    }

    /// Drops the cluster connection: the next request opens a new one.
    pub(crate) fn reset(&self) {
        self.inner.conn.reset();
    }

    /// Sends `cmd` (or `pipeline[offset..offset + count]`) where its key lives, following
    /// `MOVED` and `ASK` at once.
    async fn routed(&self, what: Request<'_>) -> RedisResult<Vec<Value>> {
        let mut redirect: Option<Redirect> = None;
        for _ in 0..=MAX_REDIRECTS {
            let (epoch, mut conn) = self.inner.conn.get().await?;
            let res = match (&redirect, &what) {
                (None, Request::Cmd(cmd)) => conn.req_packed_command(cmd).await.map(|v| vec![v]),
                (None, Request::Pipeline(p, offset, count)) => {
                    conn.req_packed_commands(p, *offset, *count).await
                }
                (Some(Redirect::Moved(host, port)), Request::Cmd(cmd)) => {
                    let to = by_address(host, *port);
                    conn.route_command((*cmd).clone(), RoutingInfo::SingleNode(to))
                        .await
                        .map(|v| vec![v])
                }
                (Some(Redirect::Moved(host, port)), Request::Pipeline(p, offset, count)) => {
                    conn.route_pipeline((*p).clone(), *offset, *count, by_address(host, *port))
                        .await
                }
                (Some(Redirect::Ask(host, port)), Request::Cmd(cmd)) => {
                    // ASKING and the command back to back on the node's connection.
                    // The replies after ASKING's: `offset` 1.
                    let mut pipe = redis::pipe();
                    pipe.cmd("ASKING").add_command((*cmd).clone());
                    conn.route_pipeline(pipe, 1, 1, by_address(host, *port))
                        .await
                }
                (Some(Redirect::Ask(host, port)), Request::Pipeline(p, offset, count)) => {
                    let mut pipe = redis::pipe();
                    pipe.cmd("ASKING");
                    for cmd in p.cmd_iter() {
                        pipe.add_command(cmd.clone());
                    }
                    conn.route_pipeline(pipe, *offset + 1, *count, by_address(host, *port))
                        .await
                }
            };
            match res {
                Err(e) if e.code() == Some("MOVED") || e.code() == Some("ASK") => {
                    let Some((addr, slot)) = e.redirect_node() else {
                        return Err(e);
                    };
                    let Some((host, port)) = split_addr(addr) else {
                        return Err(e);
                    };
                    if e.code() == Some("MOVED") {
                        self.note_owner(slot, &host, port);
                        redirect = Some(Redirect::Moved(host, port));
                    } else {
                        redirect = Some(Redirect::Ask(host, port));
                    }
                }
                Err(e) => {
                    if connection_broken(&e) && e.code().is_none() {
                        self.inner.conn.replace(epoch);
                    }
                    if e.code() == Some("READONLY") || e.code() == Some("CLUSTERDOWN") {
                        self.forget_owners();
                    }
                    return Err(e);
                }
                Ok(v) => return Ok(v),
            }
        }
        Err(RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::TryAgain),
            "too many cluster redirections",
        )))
    }

    pub(crate) async fn request(&self, cmd: &Cmd) -> RedisResult<Value> {
        let mut v = self.routed(Request::Cmd(cmd)).await?;
        v.pop().ok_or_else(|| {
            RedisError::from((redis::ErrorKind::Client, "no reply from the cluster"))
        })
    }

    pub(crate) async fn request_pipeline(
        &self,
        pipeline: &Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        self.routed(Request::Pipeline(pipeline, offset, count))
            .await
    }

    fn note_owner(&self, slot: u16, host: &str, port: u16) {
        let mut owners = self.inner.owners.lock().unwrap_or_else(|e| e.into_inner());
        // One slot learnt from a MOVED: a range of its own (ranges are refreshed whole).
        owners.retain(|start, (end, _, _)| !(*start <= slot && slot <= *end));
        owners.insert(slot, (slot, host.to_owned(), port));
    }

    /// Forgets the slot map: the next dedicated connection asks the cluster again.
    pub(crate) fn forget_owners(&self) {
        self.inner
            .owners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// What a blocking wait on `key` learnt from its error: a `MOVED` names the new owner;
    /// anything else that did not run means the map may be stale.
    pub(crate) fn note_blocking_error(&self, e: &RedisError) {
        match (e.code(), e.redirect_node()) {
            (Some("MOVED"), Some((addr, slot))) => {
                if let Some((host, port)) = split_addr(addr) {
                    self.note_owner(slot, &host, port);
                }
            }
            _ => self.forget_owners(),
        }
    }

    fn owner_cached(&self, slot: u16) -> Option<(String, u16)> {
        let owners = self.inner.owners.lock().unwrap_or_else(|e| e.into_inner());
        let (_, (end, host, port)) = owners.range(..=slot).next_back()?;
        (slot <= *end).then(|| (host.clone(), *port))
    }

    /// The primary that owns `key`'s slot: from the map, else from `CLUSTER SLOTS`.
    pub(crate) async fn owner_of(&self, key: &str) -> RedisResult<(String, u16)> {
        let slot = slot_of(key.as_bytes());
        if let Some(owner) = self.owner_cached(slot) {
            return Ok(owner);
        }
        let (_, mut conn) = self.inner.conn.get().await?;
        let reply = conn
            .route_command(
                redis::cmd("CLUSTER").arg("SLOTS").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary),
            )
            .await?;
        let ranges = parse_slots(&reply);
        {
            let mut owners = self.inner.owners.lock().unwrap_or_else(|e| e.into_inner());
            owners.clear();
            for (start, end, host, port) in ranges {
                owners.insert(start, (end, host, port));
            }
        }
        self.owner_cached(slot).ok_or_else(|| {
            RedisError::from((
                redis::ErrorKind::Server(redis::ServerErrorKind::ClusterDown),
                "no primary owns the slot",
            ))
        })
    }

    /// A plain connection to the primary that owns `key` now, whose every request (a
    /// blocking wait of up to `longest_block` included) has a deadline; with the node's
    /// address, by which connections are pooled.
    pub(crate) async fn dedicated_for(
        &self,
        key: &str,
        longest_block: Duration,
    ) -> RedisResult<(MultiplexedConnection, String)> {
        let (host, port) = self.owner_of(key).await?;
        let addr = match self.inner.template.addr() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host: host.clone(),
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(host.clone(), port),
        };
        let info = self.inner.template.clone().set_addr(addr);
        let client = redis::Client::open(info)?;
        let timeout = self.inner.response_timeout;
        let cfg = AsyncConnectionConfig::new()
            .set_response_timeout(Some(longest_block + timeout))
            .set_connection_timeout(Some(timeout));
        let conn = client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await?;
        Ok((conn, format!("{host}:{port}")))
    }
}

enum Request<'a> {
    Cmd(&'a Cmd),
    Pipeline(&'a Pipeline, usize, usize),
}

fn by_address(host: &str, port: u16) -> SingleNodeRoutingInfo {
    SingleNodeRoutingInfo::ByAddress {
        host: host.to_owned(),
        port,
    }
}

/// `host:port` (the host may be an IPv6 address with colons).
fn split_addr(addr: &str) -> Option<(String, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    Some((host.to_owned(), port.parse().ok()?))
}

/// The cluster slot of `key`: CRC16 (XMODEM) of its hash tag (the text inside the first
/// `{...}`, if not empty) or of the whole key, modulo 16384. redis-rs's `Slot` has no
/// public accessor for the number.
pub(crate) fn slot_of(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16_xmodem(tagged) % 16384
}

fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// `CLUSTER SLOTS`: `[[start, end, [host, port, id, ..], replicas..], ..]`.
fn parse_slots(reply: &Value) -> Vec<(u16, u16, String, u16)> {
    let mut out = Vec::new();
    let Value::Array(ranges) = reply else {
        return out;
    };
    for range in ranges {
        let Value::Array(parts) = range else { continue };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(primary))) =
            (parts.first(), parts.get(1), parts.get(2))
        else {
            continue;
        };
        let host = match primary.first() {
            Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(Value::SimpleString(s)) => s.clone(),
            _ => continue,
        };
        let Some(Value::Int(port)) = primary.get(1) else {
            continue;
        };
        out.push((*start as u16, *end as u16, host, *port as u16));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(
            slot_of(b"{user1000}.following"),
            slot_of(b"{user1000}.followers")
        );
        assert_eq!(slot_of(b"x:{jobs}:list"), slot_of(b"jobs"));
        // The same slot as redis-rs's own routing.
        use redis::cluster_routing::{Route, SlotAddr};
        for key in [
            "a",
            "redsync:semaphore:{jobs}:list",
            "{}",
            "{{a}}",
            "x{y}z{w}",
        ] {
            assert_eq!(
                Route::with_key(key, SlotAddr::Master),
                Route::new(slot_of(key.as_bytes()), SlotAddr::Master),
                "{key}"
            );
        }
    }
}
