//! Redis Cluster: one multiplexed connection per primary, each opened and replaced on its
//! own, requests routed here by the slot of their key, and dedicated connections to the
//! primary that owns a key's slot for blocking waits.
//!
//! Why not redis-rs's cluster client: it serves every node from one task, and while it
//! refreshes its slot map (after a `MOVED`, or when a request finds no connection to its
//! node) it dispatches nothing, holding its map locked while it pings and reconnects every
//! node, the silent one included. A node that went silent (no reply, no FIN) then delays every request to
//! every node by a connection and a response timeout or more, each time; and a timeout
//! does not make it reconnect that node at all. Here a silent node costs only the requests
//! routed to it: the others use their own nodes' connections, and the slot map is asked
//! of every known node at once, the first answer winning.
//!
//! Nothing is re-sent after a timeout or a dropped connection, which could run a script
//! twice (a permit taken twice): its outcome is unknown, the error is returned, and the
//! engine handles it with lease generations. Only what certainly did not run is sent
//! again: `MOVED` and `ASK` at once, to the node named (`ASK` after `ASKING`), and, after a
//! pause (in [`super::Conn`]), `TRYAGAIN`, `CLUSTERDOWN`, `LOADING`, `MASTERDOWN` and
//! `READONLY` (see [`super::not_executed`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::FutureExt;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{
    Arg, AsyncConnectionConfig, Cmd, ConnectionAddr, ConnectionInfo, Pipeline, RedisError,
    RedisResult, Value,
};

use super::reconnect::{Opener, Reconnecting};
use super::{connection_broken, not_executed, tcp_settings};

/// How many redirections one request follows before giving up (a slot moving back and
/// forth faster than this is not a state to keep chasing).
const MAX_REDIRECTS: usize = 8;

/// A node: host and port.
type Addr = (String, u16);

/// Where a request goes after a redirection.
#[derive(Clone, Debug)]
enum Redirect {
    Moved(Addr),
    Ask(Addr),
}

struct Inner {
    /// The first node's settings (credentials, TLS, database): connections to other nodes
    /// use them with another address.
    template: ConnectionInfo,
    response_timeout: Duration,
    /// The seed nodes, asked for the slot map with the known primaries.
    seeds: Vec<Addr>,
    /// The shared connection of each node, opened when first needed.
    nodes: Mutex<HashMap<Addr, Arc<Reconnecting<MultiplexedConnection>>>>,
    /// The primary of each slot range as last seen: start slot -> (end slot, host, port).
    owners: Mutex<BTreeMap<u16, (u16, String, u16)>>,
    /// One slot-map refresh at a time: callers that find the map empty wait for it.
    refreshing: futures::lock::Mutex<()>,
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
    /// Reads the slot map from the seed nodes now, so that a wrong address or credentials
    /// fail at once.
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
        let mut seeds = Vec::new();
        for info in &nodes {
            match info.addr() {
                ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
                    seeds.push((host.clone(), *port));
                }
                other => {
                    return Err(RedisError::from((
                        redis::ErrorKind::InvalidClientConfig,
                        "cluster nodes are reached over TCP",
                        other.to_string(),
                    )))
                }
            }
        }
        let conn = ClusterConn {
            inner: Arc::new(Inner {
                template,
                response_timeout,
                seeds,
                nodes: Mutex::new(HashMap::new()),
                owners: Mutex::new(BTreeMap::new()),
                refreshing: futures::lock::Mutex::new(()),
            }),
        };
        conn.refresh_owners().await?;
        Ok(conn)
    }

    /// Nothing to drop: each node's connection is replaced when a request on it fails (a
    /// blocking wait's timeout says nothing of the other nodes, whose connections must
    /// stay, nor of a connection being opened).
    pub(crate) fn reset(&self) {}

    /// The settings of a connection to node `host:port` (the seed's credentials and TLS).
    fn node_info(&self, host: &str, port: u16) -> ConnectionInfo {
        let addr = match self.inner.template.addr() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(host.to_owned(), port),
        };
        self.inner.template.clone().set_addr(addr)
    }

    /// The shared connection of node `addr` (not opened yet if it is new).
    fn node(&self, addr: &Addr) -> Arc<Reconnecting<MultiplexedConnection>> {
        let mut nodes = self.inner.nodes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(node) = nodes.get(addr) {
            return node.clone();
        }
        let info = self.node_info(&addr.0, addr.1);
        let timeout = self.inner.response_timeout;
        let open: Opener<MultiplexedConnection> = Arc::new(move || {
            let info = info.clone();
            async move {
                let cfg = AsyncConnectionConfig::new()
                    .set_response_timeout(Some(timeout))
                    .set_connection_timeout(Some(timeout));
                redis::Client::open(info)?
                    .get_multiplexed_async_connection_with_config(&cfg)
                    .await
            }
            .boxed()
        });
        let node = Arc::new(Reconnecting::new(open));
        nodes.insert(addr.clone(), node.clone());
        node
    }

    /// Sends `what` to node `addr` on its shared connection (after `ASKING` if `asking`).
    /// A reply that says the request did not run there is returned as an error; a
    /// connection that broke or missed the deadline is replaced before the next request
    /// to that node.
    async fn send_to(
        &self,
        addr: &Addr,
        what: &Request<'_>,
        asking: bool,
    ) -> RedisResult<Vec<Value>> {
        let node = self.node(addr);
        let (epoch, mut conn) = node.get().await?;
        let res = match (asking, what) {
            (false, Request::Cmd(cmd)) => conn.req_packed_command(cmd).await.map(|v| vec![v]),
            (false, Request::Pipeline(p, offset, count)) => {
                conn.req_packed_commands(p, *offset, *count).await
            }
            (true, Request::Cmd(cmd)) => {
                // ASKING and the command back to back on the node's connection.
                // The replies after ASKING's: `offset` 1.
                let mut pipe = redis::pipe();
                pipe.cmd("ASKING").add_command((*cmd).clone());
                conn.req_packed_commands(&pipe, 1, 1).await
            }
            (true, Request::Pipeline(p, offset, count)) => {
                let mut pipe = redis::pipe();
                pipe.cmd("ASKING");
                for cmd in p.cmd_iter() {
                    pipe.add_command(cmd.clone());
                }
                conn.req_packed_commands(&pipe, *offset + 1, *count).await
            }
        };
        match res {
            Ok(values) => {
                // Redirections and the like come as error values, not errors.
                for v in &values {
                    if let Value::ServerError(_) = v {
                        if let Err(e) = v.clone().extract_error() {
                            if not_executed(&e) {
                                return Err(e);
                            }
                        }
                    }
                }
                Ok(values)
            }
            Err(e) => {
                if connection_broken(&e) && e.code().is_none() {
                    node.replace(epoch);
                    // A node that refuses or drops connections may have failed over:
                    // a silent one (a timeout) keeps its slots.
                    if !e.is_timeout() {
                        self.forget_owners();
                    }
                }
                Err(e)
            }
        }
    }

    /// Sends `cmd` (or `pipeline[offset..offset + count]`) where its key lives, following
    /// `MOVED` and `ASK` at once.
    async fn routed(&self, what: Request<'_>) -> RedisResult<Vec<Value>> {
        let mut redirect: Option<Redirect> = None;
        for _ in 0..=MAX_REDIRECTS {
            let (addr, asking) = match redirect.take() {
                Some(Redirect::Moved(addr)) => (addr, false),
                Some(Redirect::Ask(addr)) => (addr, true),
                None => match what.key() {
                    Some(key) => (self.owner_of_slot(slot_of(key)).await?, false),
                    None => (self.any_primary().await?, false),
                },
            };
            match self.send_to(&addr, &what, asking).await {
                Err(e) if e.code() == Some("MOVED") || e.code() == Some("ASK") => {
                    let Some((to, slot)) = e.redirect_node() else {
                        return Err(e);
                    };
                    let Some((host, port)) = split_addr(to) else {
                        return Err(e);
                    };
                    if e.code() == Some("MOVED") {
                        self.note_owner(slot, &host, port);
                        redirect = Some(Redirect::Moved((host, port)));
                    } else {
                        redirect = Some(Redirect::Ask((host, port)));
                    }
                }
                Err(e) => {
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

    /// Sends `cmd` to every primary (`SCRIPT LOAD`, `SCRIPT FLUSH`), each on its own
    /// connection, and waits for all (each within its deadline): a reply that is not an
    /// error if any node gave one, else the first reply or error. A node that missed the
    /// script answers `NOSCRIPT` later, and its caller loads it again.
    async fn to_all_primaries(&self, cmd: &Cmd) -> RedisResult<Vec<Value>> {
        let primaries = self.primaries().await?;
        let what = Request::Cmd(cmd);
        let sends = primaries
            .iter()
            .map(|addr| self.send_to(addr, &what, false));
        let mut results = futures::future::join_all(sends).await;
        let clean = |r: &RedisResult<Vec<Value>>| matches!(r, Ok(v) if !v.iter().any(|x| matches!(x, Value::ServerError(_))));
        let best = results
            .iter()
            .position(clean)
            .or_else(|| results.iter().position(|r| r.is_ok()))
            .unwrap_or(0);
        if best < results.len() {
            results.swap_remove(best)
        } else {
            Err(no_primary())
        }
    }

    /// Sends `cmd` to the node at `addr` ("host:port"), with no redirection: for commands
    /// about that node's own clients.
    pub(crate) async fn request_at(&self, addr: &str, cmd: &Cmd) -> RedisResult<Value> {
        let addr = split_addr(addr)
            .ok_or_else(|| RedisError::from((redis::ErrorKind::Client, "not a node address")))?;
        let mut v = self.send_to(&addr, &Request::Cmd(cmd), false).await?;
        v.pop()
            .ok_or_else(|| RedisError::from((redis::ErrorKind::Client, "no reply from the node")))
    }

    pub(crate) async fn request(&self, cmd: &Cmd) -> RedisResult<Value> {
        let mut v = if to_all_primaries(cmd) {
            self.to_all_primaries(cmd).await?
        } else {
            self.routed(Request::Cmd(cmd)).await?
        };
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

    /// Forgets the slot map: the next request asks the cluster again.
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

    fn owner_cached(&self, slot: u16) -> Option<Addr> {
        let owners = self.inner.owners.lock().unwrap_or_else(|e| e.into_inner());
        let (_, (end, host, port)) = owners.range(..=slot).next_back()?;
        (slot <= *end).then(|| (host.clone(), *port))
    }

    /// Asks every known node (the seeds and the primaries last seen) for `CLUSTER SLOTS`
    /// at once, and keeps the first answer: a silent node delays nobody. Callers that find
    /// the map empty meanwhile wait for this one refresh.
    async fn refresh_owners(&self) -> RedisResult<()> {
        let mut candidates = self.inner.seeds.clone();
        {
            let owners = self.inner.owners.lock().unwrap_or_else(|e| e.into_inner());
            for (_, host, port) in owners.values() {
                candidates.push((host.clone(), *port));
            }
        }
        candidates.sort_unstable();
        candidates.dedup();
        let slots_cmd = redis::cmd("CLUSTER").arg("SLOTS").clone();
        let asks = candidates.iter().map(|addr| {
            let what = Request::Cmd(&slots_cmd);
            async move {
                let mut reply = self.send_to(addr, &what, false).await?;
                let reply = reply.pop().unwrap_or(Value::Nil).extract_error()?;
                let ranges = parse_slots(&reply, &addr.0);
                if ranges.is_empty() {
                    return Err(no_primary());
                }
                Ok(ranges)
            }
            .boxed()
        });
        let asks: Vec<_> = asks.collect();
        if asks.is_empty() {
            return Err(no_primary());
        }
        let (ranges, _) = futures::future::select_ok(asks).await?;
        let mut owners = self.inner.owners.lock().unwrap_or_else(|e| e.into_inner());
        owners.clear();
        for (start, end, host, port) in ranges {
            owners.insert(start, (end, host, port));
        }
        // Connections to nodes that left the cluster are dropped (they stay open while
        // a request holds them).
        let keep: Vec<Addr> = owners
            .values()
            .map(|(_, h, p)| (h.clone(), *p))
            .chain(self.inner.seeds.iter().cloned())
            .collect();
        drop(owners);
        self.inner
            .nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|addr, _| keep.contains(addr));
        Ok(())
    }

    /// The primary that owns `slot`: from the map, else after a refresh.
    async fn owner_of_slot(&self, slot: u16) -> RedisResult<Addr> {
        if let Some(owner) = self.owner_cached(slot) {
            return Ok(owner);
        }
        let _one = self.inner.refreshing.lock().await;
        if let Some(owner) = self.owner_cached(slot) {
            return Ok(owner);
        }
        self.refresh_owners().await?;
        self.owner_cached(slot).ok_or_else(no_primary)
    }

    /// Every primary in the map (refreshed if empty).
    async fn primaries(&self) -> RedisResult<Vec<Addr>> {
        let known = || {
            let owners = self.inner.owners.lock().unwrap_or_else(|e| e.into_inner());
            let mut all: Vec<Addr> = owners.values().map(|(_, h, p)| (h.clone(), *p)).collect();
            all.sort_unstable();
            all.dedup();
            all
        };
        let all = known();
        if !all.is_empty() {
            return Ok(all);
        }
        let _one = self.inner.refreshing.lock().await;
        let all = known();
        if !all.is_empty() {
            return Ok(all);
        }
        self.refresh_owners().await?;
        Ok(known())
    }

    /// A primary for a request without a key: any will do.
    async fn any_primary(&self) -> RedisResult<Addr> {
        let all = self.primaries().await?;
        if all.is_empty() {
            return Err(no_primary());
        }
        Ok(all[fastrand::usize(..all.len())].clone())
    }

    /// The primary that owns `key`'s slot: from the map, else from `CLUSTER SLOTS`.
    pub(crate) async fn owner_of(&self, key: &str) -> RedisResult<Addr> {
        self.owner_of_slot(slot_of(key.as_bytes())).await
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
        let client = redis::Client::open(self.node_info(&host, port))?;
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

fn no_primary() -> RedisError {
    RedisError::from((
        redis::ErrorKind::Server(redis::ServerErrorKind::ClusterDown),
        "no primary owns the slot",
    ))
}

/// Whether `cmd` goes to every primary (scripts are cached per node).
fn to_all_primaries(cmd: &Cmd) -> bool {
    let mut args = cmd.args_iter().map(|a| match a {
        Arg::Simple(b) => b,
        _ => &[][..],
    });
    args.next()
        .is_some_and(|c| c.eq_ignore_ascii_case(b"SCRIPT"))
        && args
            .next()
            .is_some_and(|s| s.eq_ignore_ascii_case(b"LOAD") || s.eq_ignore_ascii_case(b"FLUSH"))
}

/// The key by which `cmd` is routed: the first key of a script call (`EVAL`, `EVALSHA`,
/// `FCALL`, none if it declares none), none for the commands without keys this library
/// and its users' pipelines send, else the first argument.
fn key_of(cmd: &Cmd) -> Option<&[u8]> {
    let mut args = cmd.args_iter().map(|a| match a {
        Arg::Simple(b) => b,
        _ => &[][..],
    });
    let name = args.next()?.to_ascii_uppercase();
    match name.as_slice() {
        b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" | b"FCALL_RO" => {
            let _script = args.next()?;
            let numkeys: usize = std::str::from_utf8(args.next()?).ok()?.parse().ok()?;
            if numkeys == 0 {
                return None;
            }
            args.next()
        }
        b"PING" | b"TIME" | b"INFO" | b"ECHO" | b"SCRIPT" | b"FUNCTION" | b"CLUSTER"
        | b"CLIENT" | b"CONFIG" | b"DBSIZE" | b"MULTI" | b"EXEC" | b"DISCARD" | b"UNWATCH"
        | b"ASKING" | b"READONLY" | b"READWRITE" | b"WAIT" | b"ROLE" | b"COMMAND" | b"HELLO"
        | b"AUTH" | b"SELECT" | b"MEMORY" | b"LASTSAVE" | b"RANDOMKEY" => None,
        _ => args.next(),
    }
}

enum Request<'a> {
    Cmd(&'a Cmd),
    Pipeline(&'a Pipeline, usize, usize),
}

impl Request<'_> {
    /// The key that routes the request: a pipeline's first (all of a primitive's keys
    /// share one hash tag, so one slot).
    fn key(&self) -> Option<&[u8]> {
        match self {
            Request::Cmd(cmd) => key_of(cmd),
            Request::Pipeline(p, _, _) => p.cmd_iter().find_map(key_of),
        }
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

/// `CLUSTER SLOTS`: `[[start, end, [host, port, id, ..], replicas..], ..]`, as answered by
/// node `asked` (an empty or `?` host means that node's host).
fn parse_slots(reply: &Value, asked: &str) -> Vec<(u16, u16, String, u16)> {
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
        let host = if host.is_empty() || host == "?" {
            asked.to_owned()
        } else {
            host
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
    fn routing_keys() {
        let mut eval = redis::cmd("EVALSHA");
        eval.arg("abc").arg(2).arg("{k}:a").arg("{k}:b").arg("x");
        assert_eq!(key_of(&eval), Some(&b"{k}:a"[..]));
        let mut no_keys = redis::cmd("evalsha");
        no_keys.arg("abc").arg(0).arg("x");
        assert_eq!(key_of(&no_keys), None);
        let mut hmget = redis::cmd("HMGET");
        hmget.arg("{k}:meta").arg("count");
        assert_eq!(key_of(&hmget), Some(&b"{k}:meta"[..]));
        let mut unblock = redis::cmd("CLIENT");
        unblock.arg("UNBLOCK").arg(7);
        assert_eq!(key_of(&unblock), None);
        // A pipeline is routed by its first command with a key.
        let mut pipe = redis::pipe();
        pipe.cmd("TIME").cmd("HMGET").arg("{k}:meta").arg("count");
        let req = Request::Pipeline(&pipe, 0, 2);
        assert_eq!(req.key(), Some(&b"{k}:meta"[..]));

        let mut load = redis::cmd("SCRIPT");
        load.arg("load").arg("return 1");
        assert!(to_all_primaries(&load));
        let mut exists = redis::cmd("SCRIPT");
        exists.arg("EXISTS").arg("abc");
        assert!(!to_all_primaries(&exists));
        assert!(!to_all_primaries(&eval));
    }

    #[test]
    fn slots_reply_without_host_names_the_node_asked() {
        let node = |host: &str, port| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![Value::Int(0), Value::Int(99), node("", 7000)]),
            Value::Array(vec![
                Value::Int(100),
                Value::Int(16383),
                node("10.0.0.2", 7001),
            ]),
        ]);
        assert_eq!(
            parse_slots(&reply, "10.0.0.1"),
            vec![
                (0, 99, "10.0.0.1".to_owned(), 7000),
                (100, 16383, "10.0.0.2".to_owned(), 7001)
            ]
        );
    }

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
