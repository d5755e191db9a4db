//! A real Redis Cluster for tests: 6 `redis-server` processes (3 primaries, 1 replica
//! each) on free loopback ports, with failover and step-by-step slot migration.
//!
//! `REDIS_CLUSTER_URLS` (comma-separated `redis://host:port/` of every node) wins for
//! [`RedisCluster::shared`]: those nodes are used and nothing is started. Otherwise each node
//! runs in a temporary directory of its own, with no persistence, under a small shell
//! watcher that stops it when this process dies (even by SIGKILL), like `server.rs`.
//!
//! Everything here uses the sync redis API (one short-lived `redis::Connection` per
//! question), so it works from any test runtime. Waits poll every 20 ms against a deadline
//! and panic with the cluster's state when it passes.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Number of hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;
/// Poll step of every wait.
const STEP: Duration = Duration::from_millis(20);
/// Default deadline of a wait.
const WAIT: Duration = Duration::from_secs(30);
/// Connect, read and write timeout of the helper connections.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// `CLUSTER FAILOVER` is sent again if the replica is not primary after this long (a
/// manual failover gives up after 5 s on the server).
const FAILOVER_RETRY: Duration = Duration::from_secs(7);

/// A running Redis Cluster (started here, or external via `REDIS_CLUSTER_URLS`).
pub struct RedisCluster {
    /// `(host, port)` of every node, in start order.
    nodes: Vec<(String, u16)>,
    /// The processes this value started (empty for an external cluster).
    procs: Vec<WatchedServer>,
}

/// One node's line of `CLUSTER NODES`.
#[derive(Clone, Debug)]
pub struct NodeLine {
    pub id: String,
    pub host: String,
    pub port: u16,
    pub flags: Vec<String>,
    /// The primary's id, for a replica.
    pub master_id: Option<String>,
    pub connected: bool,
    /// Inclusive slot ranges served by this node (primaries).
    pub slots: Vec<(u16, u16)>,
    /// `[slot->-id]`: slots this node is migrating to node `id` (only on the `myself` line).
    pub migrating: Vec<(u16, String)>,
    /// `[slot-<-id]`: slots this node is importing from node `id` (only on the `myself` line).
    pub importing: Vec<(u16, String)>,
}

impl NodeLine {
    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }
    pub fn is_primary(&self) -> bool {
        self.has_flag("master")
    }
    pub fn is_replica(&self) -> bool {
        self.has_flag("slave")
    }
    pub fn is_myself(&self) -> bool {
        self.has_flag("myself")
    }
    /// Failing, suspected, unknown or still joining.
    pub fn is_troubled(&self) -> bool {
        ["fail", "fail?", "handshake", "noaddr", "nofailover"]
            .iter()
            .any(|f| self.has_flag(f))
    }
    pub fn owns(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| a <= slot && slot <= b)
    }
}

impl RedisCluster {
    /// Starts 6 nodes, creates the cluster (3 primaries with one replica each) and waits
    /// until it is healthy (see [`RedisCluster::check_healthy`]).
    pub fn start() -> RedisCluster {
        let ports = free_ports(12);
        let mut cluster = RedisCluster {
            nodes: ports[..6]
                .iter()
                .map(|&p| ("127.0.0.1".to_owned(), p))
                .collect(),
            procs: Vec::new(),
        };
        for i in 0..6 {
            let (port, bus) = (ports[i], ports[6 + i]);
            let dir = temp_dir(&format!("cluster-{port}"));
            // Speed only: `repl-diskless-sync-delay 0` starts the replicas' first sync at
            // once (not after 5 s); `repl-ping-replica-period 1` gives a replica a non-zero
            // offset within 1 s (not 10 s) on an idle primary, and CLUSTER SLOTS lists a
            // replica only once its offset is non-zero.
            let args = format!(
                "--port {port} --bind 127.0.0.1 --save '' --appendonly no --dir '{dir}' \
                 --cluster-enabled yes --cluster-config-file nodes-{port}.conf \
                 --cluster-port {bus} --cluster-node-timeout 2000 \
                 --repl-diskless-sync-delay 0 --repl-ping-replica-period 1 \
                 --loglevel notice --logfile redis.log --maxclients 20000",
                dir = dir.display(),
            );
            cluster.procs.push(WatchedServer::spawn(port, dir, &args));
        }
        for p in &cluster.procs {
            p.wait_ready();
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for &(_, port) in &cluster.nodes {
            create.arg(format!("127.0.0.1:{port}"));
        }
        create.args(["--cluster-replicas", "1", "--cluster-yes"]);
        let out = create
            .stdin(Stdio::null())
            .output()
            .expect("cannot run redis-cli: is redis-tools installed?");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && text.contains("All 16384 slots covered"),
            "redis-cli --cluster create failed ({}):\n{text}",
            out.status
        );
        cluster.wait_healthy("the new cluster to be healthy");
        cluster
    }

    /// Uses already running nodes (`redis://host:port/` each); nothing is stopped on drop.
    pub fn external(urls: &[String]) -> RedisCluster {
        let nodes = urls
            .iter()
            .map(|u| parse_host_port(u).unwrap_or_else(|| panic!("bad cluster node URL {u:?}")))
            .collect::<Vec<_>>();
        assert!(!nodes.is_empty(), "no cluster node URLs");
        RedisCluster {
            nodes,
            procs: Vec::new(),
        }
    }

    /// `REDIS_CLUSTER_URLS`, or a cluster started once for this whole test binary.
    pub fn shared() -> &'static RedisCluster {
        static SHARED: OnceLock<RedisCluster> = OnceLock::new();
        SHARED.get_or_init(|| match std::env::var("REDIS_CLUSTER_URLS") {
            Ok(v) if !v.trim().is_empty() => {
                let urls = v
                    .split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>();
                RedisCluster::external(&urls)
            }
            _ => RedisCluster::start(),
        })
    }

    /// `redis://host:port/` of every node (primaries and replicas).
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|(h, p)| format!("redis://{h}:{p}/"))
            .collect()
    }

    /// Port of every node (primaries and replicas).
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|&(_, p)| p).collect()
    }

    fn host_of(&self, port: u16) -> &str {
        self.nodes
            .iter()
            .find(|(_, p)| *p == port)
            .map(|(h, _)| h.as_str())
            .unwrap_or("127.0.0.1")
    }

    // ---- connections -------------------------------------------------------------------

    /// A sync connection to the node on `port` (5 s timeouts). Panics if it cannot connect.
    pub fn node_conn(&self, port: u16) -> redis::Connection {
        node_conn_at(self.host_of(port), port)
            .unwrap_or_else(|e| panic!("cannot connect to cluster node {port}: {e}"))
    }

    /// Runs `cmd` on every node; the answers in [`RedisCluster::ports`] order.
    pub fn on_every_node<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> Vec<(u16, redis::RedisResult<T>)> {
        self.ports()
            .into_iter()
            .map(|p| {
                let r = node_conn_at(self.host_of(p), p).and_then(|mut c| cmd.query(&mut c));
                (p, r)
            })
            .collect()
    }

    /// Runs `cmd` on every current primary.
    pub fn on_every_primary<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> Vec<(u16, redis::RedisResult<T>)> {
        self.primaries()
            .into_iter()
            .map(|p| {
                let r = node_conn_at(self.host_of(p), p).and_then(|mut c| cmd.query(&mut c));
                (p, r)
            })
            .collect()
    }

    /// `FLUSHALL` on every primary.
    pub fn flushall(&self) {
        for (p, r) in self.on_every_primary::<()>(&redis::cmd("FLUSHALL")) {
            r.unwrap_or_else(|e| panic!("FLUSHALL on {p}: {e}"));
        }
    }

    // ---- topology ----------------------------------------------------------------------

    /// `CLUSTER NODES` as seen by the node on `port`.
    pub fn cluster_nodes(&self, port: u16) -> Vec<NodeLine> {
        self.try_cluster_nodes(port)
            .unwrap_or_else(|e| panic!("CLUSTER NODES on {port}: {e}"))
    }

    fn try_cluster_nodes(&self, port: u16) -> Result<Vec<NodeLine>, String> {
        let mut c = node_conn_at(self.host_of(port), port).map_err(|e| e.to_string())?;
        cluster_nodes_on(&mut c)
    }

    /// The node id of the node on `port` (`CLUSTER MYID`).
    pub fn node_id(&self, port: u16) -> String {
        redis::cmd("CLUSTER")
            .arg("MYID")
            .query(&mut self.node_conn(port))
            .unwrap_or_else(|e| panic!("CLUSTER MYID on {port}: {e}"))
    }

    /// Ports of the current primaries that serve slots, sorted (as agreed by the nodes; it
    /// waits for agreement).
    pub fn primaries(&self) -> Vec<u16> {
        let map = self.slot_map();
        let mut ports = map.iter().map(|&(_, _, p)| p).collect::<Vec<_>>();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// Ports of the current replicas, sorted.
    pub fn replicas(&self) -> Vec<u16> {
        let primaries = self.primaries();
        let mut r = self
            .ports()
            .into_iter()
            .filter(|p| !primaries.contains(p))
            .collect::<Vec<_>>();
        r.sort_unstable();
        r
    }

    /// `(first slot, last slot, owner port)` ranges covering all slots, as agreed by every
    /// reachable node (it waits for agreement).
    pub fn slot_map(&self) -> Vec<(u16, u16, u16)> {
        self.wait_for("the nodes to agree on the slot map", WAIT, || {
            let mut first: Option<Vec<(u16, u16, u16)>> = None;
            for port in self.ports() {
                let view = self.try_cluster_nodes(port)?;
                let map = slot_map_of(&view);
                match &first {
                    None => first = Some(map),
                    Some(f) if *f == map => {}
                    Some(_) => return Err(format!("node {port} sees another slot map")),
                }
            }
            let map = first.unwrap_or_default();
            let covered: u32 = map.iter().map(|&(a, b, _)| u32::from(b - a) + 1).sum();
            if covered != u32::from(SLOTS) {
                return Err(format!("only {covered} slots assigned"));
            }
            Ok(map)
        })
    }

    /// Port of the primary owning `slot` now: a primary that claims it itself and that the
    /// first node answering agrees with.
    pub fn owner_of_slot(&self, slot: u16) -> u16 {
        assert!(slot < SLOTS, "slot {slot} out of range");
        self.wait_for(&format!("an agreed owner of slot {slot}"), WAIT, || {
            let mut last = String::new();
            for port in self.ports() {
                let view = match self.try_cluster_nodes(port) {
                    Ok(v) => v,
                    Err(e) => {
                        last = e;
                        continue;
                    }
                };
                let Some(owner) = view.iter().find(|n| n.is_primary() && n.owns(slot)) else {
                    return Err(format!("node {port} sees no owner of slot {slot}"));
                };
                let own = self.try_cluster_nodes(owner.port)?;
                if own
                    .iter()
                    .any(|n| n.is_myself() && n.is_primary() && n.owns(slot))
                {
                    return Ok(owner.port);
                }
                return Err(format!(
                    "node {port} says {} owns slot {slot}; it does not agree",
                    owner.port
                ));
            }
            Err(last)
        })
    }

    /// Port of the (first healthy) replica of the primary on `primary_port`, from the
    /// primary's own view.
    pub fn replica_of(&self, primary_port: u16) -> u16 {
        self.wait_for(&format!("a replica of {primary_port}"), WAIT, || {
            let view = self.try_cluster_nodes(primary_port)?;
            let me = view
                .iter()
                .find(|n| n.is_myself())
                .ok_or("no myself line")?;
            if !me.is_primary() {
                return Err(format!("{primary_port} is not a primary"));
            }
            view.iter()
                .filter(|n| {
                    n.is_replica()
                        && !n.is_troubled()
                        && n.master_id.as_deref() == Some(me.id.as_str())
                })
                .map(|n| n.port)
                .min()
                .ok_or_else(|| format!("{primary_port} has no healthy replica"))
        })
    }

    /// A primary other than `port`.
    pub fn other_primary(&self, port: u16) -> u16 {
        self.primaries()
            .into_iter()
            .find(|&p| p != port)
            .expect("the cluster has a single primary")
    }

    /// For a migration test: `(slot of key, its owner now, another primary)`.
    pub fn migration_plan(&self, key: &str) -> (u16, u16, u16) {
        let slot = slot_of(key);
        let from = self.owner_of_slot(slot);
        (slot, from, self.other_primary(from))
    }

    /// For each primary of [`RedisCluster::primaries`] (in that order), `n` names such
    /// that the hash tag `{name}` lands on it. Names are random, so tests do not collide.
    pub fn tagged_names_per_shard(&self, n: usize) -> Vec<Vec<String>> {
        self.names_per_shard(&format!("t{:08x}", fastrand::u32(..)), n)
    }

    /// Like [`RedisCluster::tagged_names_per_shard`], names `{prefix}-{i}`.
    pub fn names_per_shard(&self, prefix: &str, n: usize) -> Vec<Vec<String>> {
        // The map and the list of primaries are read apart: a failover run by another test
        // in between makes them disagree, and then both are read again.
        'consistent: loop {
            let map = self.slot_map();
            let primaries = self.primaries();
            let mut out = vec![Vec::new(); primaries.len()];
            let mut i = 0u64;
            while out.iter().any(|v| v.len() < n) {
                let name = format!("{prefix}-{i}");
                i += 1;
                let slot = slot_of(&name);
                let owner = owner_in_map(&map, slot);
                let Some(idx) = primaries.iter().position(|&p| p == owner) else {
                    std::thread::sleep(STEP);
                    continue 'consistent;
                };
                if out[idx].len() < n {
                    out[idx].push(name);
                }
            }
            return out;
        }
    }

    /// `n_per_shard` names `{prefix}-{i}` for each primary, flattened (primary by primary).
    pub fn names_on_each_shard(&self, prefix: &str, n_per_shard: usize) -> Vec<String> {
        self.names_per_shard(prefix, n_per_shard)
            .into_iter()
            .flatten()
            .collect()
    }

    // ---- health ------------------------------------------------------------------------

    /// Ok when every node answers, reports `cluster_state:ok` with all slots ok and every
    /// node known, sees no failing/joining node, no migrating/importing slot, the same slot
    /// map as the others, every primary with its replica(s) (also in `CLUSTER SLOTS`), and
    /// every replica reports `master_link_status:up`.
    pub fn check_healthy(&self) -> Result<(), String> {
        let n = self.nodes.len();
        let mut first_map: Option<Vec<(u16, u16, u16)>> = None;
        for port in self.ports() {
            let mut c =
                node_conn_at(self.host_of(port), port).map_err(|e| format!("node {port}: {e}"))?;
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query(&mut c)
                .map_err(|e| format!("CLUSTER INFO on {port}: {e}"))?;
            for want in [
                "cluster_state:ok".to_owned(),
                format!("cluster_slots_ok:{SLOTS}"),
                format!("cluster_known_nodes:{n}"),
            ] {
                if !info.lines().any(|l| l.trim() == want) {
                    return Err(format!("node {port}: no {want} in CLUSTER INFO"));
                }
            }
            let view = cluster_nodes_on(&mut c)?;
            if view.len() != n {
                return Err(format!("node {port} knows {} nodes", view.len()));
            }
            if let Some(bad) = view.iter().find(|l| l.is_troubled() || !l.connected) {
                return Err(format!(
                    "node {port} sees {} as {:?} connected={}",
                    bad.port, bad.flags, bad.connected
                ));
            }
            let me = view
                .iter()
                .find(|l| l.is_myself())
                .ok_or_else(|| format!("node {port}: no myself line"))?;
            if !me.migrating.is_empty() || !me.importing.is_empty() {
                return Err(format!(
                    "node {port} migrating {:?} importing {:?}",
                    me.migrating, me.importing
                ));
            }
            let primaries = view
                .iter()
                .filter(|l| l.is_primary() && !l.slots.is_empty())
                .collect::<Vec<_>>();
            let per = (n - primaries.len()) / primaries.len().max(1);
            for p in &primaries {
                let replicas = view
                    .iter()
                    .filter(|l| l.is_replica() && l.master_id.as_deref() == Some(p.id.as_str()))
                    .count();
                if replicas < per {
                    return Err(format!(
                        "node {port}: primary {} has {replicas} replicas",
                        p.port
                    ));
                }
            }
            let map = slot_map_of(&view);
            match &first_map {
                None => first_map = Some(map),
                Some(f) if *f == map => {}
                Some(f) => {
                    return Err(format!(
                        "node {port} sees slot map {map:?}, the first node {f:?}"
                    ))
                }
            }
            if per > 0 {
                let slots: redis::Value = redis::cmd("CLUSTER")
                    .arg("SLOTS")
                    .query(&mut c)
                    .map_err(|e| format!("CLUSTER SLOTS on {port}: {e}"))?;
                let redis::Value::Array(ranges) = slots else {
                    return Err(format!("CLUSTER SLOTS on {port}: {slots:?}"));
                };
                if let Some(r) = ranges
                    .iter()
                    .find(|r| !matches!(r, redis::Value::Array(v) if v.len() >= 3 + per))
                {
                    return Err(format!(
                        "node {port}: CLUSTER SLOTS range without replica {r:?}"
                    ));
                }
            }
            if me.is_replica() {
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query(&mut c)
                    .map_err(|e| format!("INFO on {port}: {e}"))?;
                if !info.lines().any(|l| l.trim() == "master_link_status:up") {
                    return Err(format!("replica {port}: master link not up"));
                }
            }
        }
        Ok(())
    }

    /// Waits until [`RedisCluster::check_healthy`] passes (30 s), or panics.
    pub fn wait_healthy(&self, what: &str) {
        self.wait_for(what, WAIT, || self.check_healthy());
    }

    /// Polls `f` every 20 ms until it returns Ok or `limit` passes; then panics with its
    /// last error and every node's view.
    pub fn wait_for<T>(
        &self,
        what: &str,
        limit: Duration,
        mut f: impl FnMut() -> Result<T, String>,
    ) -> T {
        let start = Instant::now();
        loop {
            match f() {
                Ok(v) => return v,
                Err(e) if start.elapsed() >= limit => panic!(
                    "timed out after {:?} waiting for {what}: {e}\n{}",
                    start.elapsed(),
                    self.describe()
                ),
                Err(_) => std::thread::sleep(STEP),
            }
        }
    }

    /// Every node's `CLUSTER NODES` (or the error), for panic messages.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for port in self.ports() {
            let text = node_conn_at(self.host_of(port), port)
                .and_then(|mut c| redis::cmd("CLUSTER").arg("NODES").query::<String>(&mut c));
            match text {
                Ok(t) => s += &format!("--- CLUSTER NODES on {port}:\n{t}"),
                Err(e) => s += &format!("--- node {port}: {e}\n"),
            }
        }
        s
    }

    // ---- failover ----------------------------------------------------------------------

    /// Manual failover (`CLUSTER FAILOVER`, no FORCE) of the shard owning `slot`, on its
    /// replica. Waits until every node sees the replica as the slot's primary, the old
    /// primary is its replica with link up and the cluster is healthy. Returns the new
    /// owner's port.
    pub fn failover(&self, slot: u16) -> u16 {
        self.wait_healthy("a healthy cluster before a failover");
        let old = self.owner_of_slot(slot);
        let new = self.replica_of(old);
        let new_id = self.node_id(new);
        let start = Instant::now();
        let mut sent: Option<Instant> = None;
        self.wait_for(
            &format!("failover of slot {slot} from {old} to {new}"),
            WAIT,
            || {
                if sent.map_or(true, |t: Instant| t.elapsed() >= FAILOVER_RETRY) {
                    // Again only if the replica is still a replica (the last attempt gave up).
                    let still_replica = self
                        .try_cluster_nodes(new)
                        .map(|v| v.iter().any(|l| l.is_myself() && l.is_replica()))
                        .unwrap_or(false);
                    if sent.is_none() || still_replica {
                        let r: redis::RedisResult<()> = node_conn_at(self.host_of(new), new)
                            .and_then(|mut c| redis::cmd("CLUSTER").arg("FAILOVER").query(&mut c));
                        if let Err(e) = r {
                            return Err(format!("CLUSTER FAILOVER on {new}: {e}"));
                        }
                        sent = Some(Instant::now());
                    }
                }
                for port in self.ports() {
                    let view = self.try_cluster_nodes(port)?;
                    let owner = view.iter().find(|l| l.is_primary() && l.owns(slot));
                    if owner.map(|l| l.id.as_str()) != Some(new_id.as_str()) {
                        return Err(format!("node {port} does not see {new} owning slot {slot}"));
                    }
                    let old_line = view.iter().find(|l| l.port == old).ok_or("old gone")?;
                    if !old_line.is_replica() || old_line.master_id.as_deref() != Some(&new_id) {
                        return Err(format!(
                            "node {port} does not see {old} as replica of {new}"
                        ));
                    }
                }
                self.check_healthy()
            },
        );
        eprintln!(
            "cluster: failover of slot {slot} from {old} to {new} took {:?}",
            start.elapsed()
        );
        new
    }

    // ---- slot migration ----------------------------------------------------------------

    /// Moves `slot` to the primary on `to_port` (see [`RedisCluster::migrate_slot_with_pause`]),
    /// without pauses.
    pub fn migrate_slot(&self, slot: u16, to_port: u16) {
        self.migrate_slot_with_pause(slot, to_port, Duration::ZERO);
    }

    /// Moves `slot` to the primary on `to_port` step by step, the way `redis-cli --cluster
    /// reshard` does: `SETSLOT IMPORTING` on the target, `SETSLOT MIGRATING` on the source,
    /// then `MIGRATE` one key at a time (`pause` after the MIGRATING mark and after each key,
    /// so tests see ASK/TRYAGAIN), then `SETSLOT NODE` on the target, the source and the
    /// other primaries. Waits until every node agrees on the new owner and the cluster is
    /// healthy. Nothing happens if `to_port` already owns the slot.
    pub fn migrate_slot_with_pause(&self, slot: u16, to_port: u16, pause: Duration) {
        self.wait_healthy("a healthy cluster before a migration");
        let from = self.owner_of_slot(slot);
        if from == to_port {
            return;
        }
        let primaries = self.primaries();
        assert!(
            primaries.contains(&to_port),
            "migrate_slot: {to_port} is not a primary (primaries: {primaries:?})"
        );
        let start = Instant::now();
        let (src_id, dst_id) = (self.node_id(from), self.node_id(to_port));
        let mut src = self.node_conn(from);
        let mut dst = self.node_conn(to_port);
        let setslot = |c: &mut redis::Connection, port: u16, how: &str, id: &str| {
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg(how)
                .arg(id)
                .query::<()>(c)
                .unwrap_or_else(|e| panic!("CLUSTER SETSLOT {slot} {how} {id} on {port}: {e}"));
        };
        setslot(&mut dst, to_port, "IMPORTING", &src_id);
        setslot(&mut src, from, "MIGRATING", &dst_id);
        pause_for(pause);
        let mut moved = 0usize;
        loop {
            let keys: Vec<Vec<u8>> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(10)
                .query(&mut src)
                .unwrap_or_else(|e| panic!("CLUSTER GETKEYSINSLOT {slot} on {from}: {e}"));
            if keys.is_empty() {
                break;
            }
            for key in keys {
                let r: redis::Value = redis::cmd("MIGRATE")
                    .arg(self.host_of(to_port))
                    .arg(to_port)
                    .arg("")
                    .arg(0)
                    .arg(5000)
                    .arg("KEYS")
                    .arg(&key)
                    .query(&mut src)
                    .unwrap_or_else(|e| {
                        panic!(
                            "MIGRATE {} to {to_port} on {from}: {e}",
                            String::from_utf8_lossy(&key)
                        )
                    });
                let _ = r; // OK, or NOKEY if it expired meanwhile.
                moved += 1;
                pause_for(pause);
            }
        }
        setslot(&mut dst, to_port, "NODE", &dst_id);
        setslot(&mut src, from, "NODE", &dst_id);
        for p in primaries {
            if p != from && p != to_port {
                setslot(&mut self.node_conn(p), p, "NODE", &dst_id);
            }
        }
        self.wait_for(
            &format!("slot {slot} to move from {from} to {to_port}"),
            WAIT,
            || {
                for port in self.ports() {
                    let view = self.try_cluster_nodes(port)?;
                    let owner = view.iter().find(|l| l.is_primary() && l.owns(slot));
                    if owner.map(|l| l.port) != Some(to_port) {
                        return Err(format!("node {port} does not see {to_port} owning {slot}"));
                    }
                }
                self.check_healthy()
            },
        );
        eprintln!(
            "cluster: slot {slot} moved from {from} to {to_port} ({moved} keys) in {:?}",
            start.elapsed()
        );
    }

    /// The node on `port` marks `slot` as migrating (to another node).
    pub fn is_migrating(&self, port: u16, slot: u16) -> bool {
        self.cluster_nodes(port)
            .iter()
            .any(|l| l.is_myself() && l.migrating.iter().any(|(s, _)| *s == slot))
    }

    /// The node on `port` marks `slot` as importing (from another node).
    pub fn is_importing(&self, port: u16, slot: u16) -> bool {
        self.cluster_nodes(port)
            .iter()
            .any(|l| l.is_myself() && l.importing.iter().any(|(s, _)| *s == slot))
    }

    /// Stops every node this value started and removes their directories.
    pub fn stop(&mut self) {
        for p in &self.procs {
            p.send_shutdown();
        }
        for p in &mut self.procs {
            p.stop();
        }
        self.procs.clear();
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---- hash slots ------------------------------------------------------------------------

/// The cluster hash slot of `key`: CRC16 (XMODEM) of its hash tag (the text inside the
/// first `{...}` when that is not empty) or of the whole key, modulo 16384.
pub fn slot_of(key: &str) -> u16 {
    slot_of_bytes(key.as_bytes())
}

/// [`slot_of`] for binary keys.
pub fn slot_of_bytes(key: &[u8]) -> u16 {
    let mut hashed = key;
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                hashed = &key[open + 1..open + 1 + len];
            }
        }
    }
    crc16(hashed) % SLOTS
}

/// CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0, as Redis Cluster uses.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
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

/// The port a `MOVED`/`ASK` error points to (`-MOVED slot host:port`).
pub fn redirect_port(err: &redis::RedisError) -> Option<u16> {
    let (addr, _slot) = err.redirect_node()?;
    addr.rsplit_once(':')?.1.parse().ok()
}

// ---- helpers shared with sentinel.rs ---------------------------------------------------

/// A sync connection to `host:port` with 5 s connect/read/write timeouts.
pub fn node_conn_at(host: &str, port: u16) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(format!("redis://{host}:{port}/"))?;
    let c = client.get_connection_with_timeout(IO_TIMEOUT)?;
    c.set_read_timeout(Some(IO_TIMEOUT))?;
    c.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(c)
}

/// One `redis-server` started under a watcher shell: it is stopped when this process dies
/// (even by SIGKILL), and its directory removed.
pub struct WatchedServer {
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
}

impl WatchedServer {
    /// Runs `redis-server {args}` (args already shell-quoted) in `dir`, under a watcher.
    /// Does not wait: see [`WatchedServer::wait_ready`].
    pub fn spawn(port: u16, dir: PathBuf, args: &str) -> WatchedServer {
        let script = format!(
            "cd '{dir}' || exit 1; redis-server {args} & rp=$!; \
             trap 'kill $rp 2>/dev/null; exit 0' TERM INT; \
             while kill -0 {parent} 2>/dev/null && kill -0 $rp 2>/dev/null; do sleep 0.2; done; \
             kill $rp 2>/dev/null; wait $rp; rm -rf '{dir}'",
            dir = dir.display(),
            parent = std::process::id(),
        );
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("cannot run sh: is redis-server installed (apt-get install redis-server)?");
        WatchedServer {
            port,
            dir,
            child: Some(child),
        }
    }

    /// Waits (10 s) until the server answers PING.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ping(self.port) {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on port {}: is it installed and on PATH? log:\n{}",
                self.port,
                self.log_tail()
            );
            std::thread::sleep(STEP);
        }
    }

    /// The last lines of the server's log file (`redis.log` or `sentinel.log` in its dir).
    pub fn log_tail(&self) -> String {
        for name in ["redis.log", "sentinel.log"] {
            if let Ok(s) = std::fs::read_to_string(self.dir.join(name)) {
                let lines = s.lines().collect::<Vec<_>>();
                return lines[lines.len().saturating_sub(20)..].join("\n");
            }
        }
        String::from("(no log)")
    }

    /// Sends `SHUTDOWN NOSAVE NOW` (no wait for replicas) if it runs, ignoring errors.
    pub fn send_shutdown(&self) {
        if self.child.is_some() && ping(self.port) {
            if let Ok(mut c) = node_conn_at("127.0.0.1", self.port) {
                let _ = c.set_read_timeout(Some(Duration::from_millis(500)));
                let _: redis::RedisResult<()> = redis::cmd("SHUTDOWN")
                    .arg("NOSAVE")
                    .arg("NOW")
                    .query(&mut c);
            }
        }
    }

    /// Stops the server, kills the watcher and removes the directory.
    pub fn stop(&mut self) {
        self.send_shutdown();
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while ping(self.port) && Instant::now() < deadline {
                std::thread::sleep(STEP);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for WatchedServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A fresh temporary directory for one server.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "redis-sync-{}-{name}-{:06x}",
        std::process::id(),
        fastrand::u32(..0x100_0000)
    ));
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// `n` distinct free loopback ports (all held open while choosing).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("no free loopback port"))
        .collect::<Vec<_>>();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local_addr").port())
        .collect()
}

/// The server on loopback `port` answers PING.
pub fn ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// Sleeps `d` unless it is zero (a deliberate window, not synchronization).
fn pause_for(d: Duration) {
    if !d.is_zero() {
        std::thread::sleep(d);
    }
}

/// `host` and `port` of `redis://[user:pass@]host:port[/db]`.
fn parse_host_port(url: &str) -> Option<(String, u16)> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let rest = rest.rsplit_once('@').map(|(_, r)| r).unwrap_or(rest);
    let hostport = rest.split('/').next()?;
    let (host, port) = hostport.rsplit_once(':')?;
    Some((host.to_owned(), port.parse().ok()?))
}

fn cluster_nodes_on(c: &mut redis::Connection) -> Result<Vec<NodeLine>, String> {
    let text: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query(c)
        .map_err(|e| format!("CLUSTER NODES: {e}"))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(parse_node_line)
        .collect()
}

/// Parses `id ip:port@cport[,hostname] flags master ping pong epoch link slot...`.
pub fn parse_node_line(line: &str) -> Result<NodeLine, String> {
    let f = line.split_whitespace().collect::<Vec<_>>();
    if f.len() < 8 {
        return Err(format!("bad CLUSTER NODES line {line:?}"));
    }
    let addr = f[1].split([',', '@']).next().unwrap_or("");
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("bad address in {line:?}"))?;
    let mut node = NodeLine {
        id: f[0].to_owned(),
        host: host.to_owned(),
        port: port.parse().map_err(|_| format!("bad port in {line:?}"))?,
        flags: f[2].split(',').map(str::to_owned).collect(),
        master_id: (f[3] != "-").then(|| f[3].to_owned()),
        connected: f[7] == "connected",
        slots: Vec::new(),
        migrating: Vec::new(),
        importing: Vec::new(),
    };
    let bad = || format!("bad slot in {line:?}");
    for s in &f[8..] {
        if let Some(mark) = s.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            if let Some((slot, id)) = mark.split_once("->-") {
                node.migrating
                    .push((slot.parse().map_err(|_| bad())?, id.to_owned()));
            } else if let Some((slot, id)) = mark.split_once("-<-") {
                node.importing
                    .push((slot.parse().map_err(|_| bad())?, id.to_owned()));
            }
        } else if let Some((a, b)) = s.split_once('-') {
            node.slots
                .push((a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?));
        } else {
            let a = s.parse().map_err(|_| bad())?;
            node.slots.push((a, a));
        }
    }
    Ok(node)
}

/// `(first, last, owner port)` ranges of a view, merged and sorted.
fn slot_map_of(view: &[NodeLine]) -> Vec<(u16, u16, u16)> {
    let mut ranges = BTreeMap::new();
    for l in view.iter().filter(|l| l.is_primary()) {
        for &(a, b) in &l.slots {
            ranges.insert(a, (b, l.port));
        }
    }
    let mut out: Vec<(u16, u16, u16)> = Vec::new();
    for (a, (b, p)) in ranges {
        match out.last_mut() {
            Some(last) if last.2 == p && last.1 + 1 == a => last.1 = b,
            _ => out.push((a, b, p)),
        }
    }
    out
}

fn owner_in_map(map: &[(u16, u16, u16)], slot: u16) -> u16 {
    map.iter()
        .find(|&&(a, b, _)| a <= slot && slot <= b)
        .map(|&(_, _, p)| p)
        .unwrap_or_else(|| panic!("slot {slot} is not assigned"))
}
