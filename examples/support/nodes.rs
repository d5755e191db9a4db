//! Watching the redis-server processes a run talks to: one server, or every node of a
//! cluster (primaries and replicas). Each node is watched over a connection of its own,
//! opened before the baseline, so the counts below are the run's, not the watcher's.
//!
//! Connections are counted on the servers (`INFO stats total_connections_received`,
//! `INFO clients connected_clients`), commands on the primaries (`INFO commandstats`: a
//! replica counts the commands it replays too), error replies such as `MOVED` and `ASK` on
//! every node (`INFO errorstats`), and the server's CPU time (`INFO cpu`).

use std::collections::HashMap;

use redis::aio::MultiplexedConnection;

use super::scenarios::Res;

/// One watched node.
pub struct Node {
    pub port: u16,
    pub primary: bool,
    conn: MultiplexedConnection,
}

/// What one node said at one moment.
#[derive(Clone, Debug, Default)]
pub struct NodeSnap {
    /// `total_connections_received`.
    pub received: u64,
    /// `connected_clients`.
    pub connected: u64,
    /// Calls per command (`INFO commandstats`).
    pub calls: HashMap<String, u64>,
    /// Error replies per kind (`INFO errorstats`: `MOVED`, `ASK`, ...).
    pub errors: HashMap<String, u64>,
    /// `used_cpu_user + used_cpu_sys`, seconds.
    pub cpu_s: f64,
}

/// Every node of the run.
pub struct Nodes {
    pub nodes: Vec<Node>,
}

fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|r| r.strip_prefix(':'))
            .map(str::trim)
    })
}

/// `prefix_NAME:count=N,...` or `prefix_NAME:calls=N,...` lines into NAME -> N.
fn stat_lines(text: &str, prefix: &str, key: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix(prefix)?.split_once(':')?;
            let n = rest
                .strip_prefix(key)?
                .strip_prefix('=')?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), n))
        })
        .collect()
}

impl Nodes {
    /// Connects to every node, `(host, port, is_primary)` each.
    pub async fn connect(nodes: &[(String, u16, bool)]) -> Res<Self> {
        let mut out = Vec::with_capacity(nodes.len());
        for (host, port, primary) in nodes {
            let client = redis::Client::open(format!("redis://{host}:{port}/"))?;
            out.push(Node {
                port: *port,
                primary: *primary,
                conn: client.get_multiplexed_async_connection().await?,
            });
        }
        Ok(Nodes { nodes: out })
    }

    /// Every node's counters now (one `INFO` per node).
    pub async fn snapshot(&mut self) -> Res<Vec<NodeSnap>> {
        let mut out = Vec::with_capacity(self.nodes.len());
        for n in &mut self.nodes {
            let text: String = redis::cmd("INFO")
                .arg("stats")
                .arg("clients")
                .arg("cpu")
                .arg("commandstats")
                .arg("errorstats")
                .query_async(&mut n.conn)
                .await?;
            let num = |name: &str| -> Res<f64> {
                field(&text, name)
                    .ok_or_else(|| format!("node {}: INFO has no {name}", n.port))?
                    .parse::<f64>()
                    .map_err(|e| format!("node {}: {name}: {e}", n.port).into())
            };
            out.push(NodeSnap {
                received: num("total_connections_received")? as u64,
                connected: num("connected_clients")? as u64,
                calls: stat_lines(&text, "cmdstat_", "calls"),
                errors: stat_lines(&text, "errorstat_", "count"),
                cpu_s: num("used_cpu_user")? + num("used_cpu_sys")?,
            });
        }
        Ok(out)
    }

    /// `connected_clients` of every node now (cheap: `INFO clients`).
    pub async fn connected(&mut self) -> Res<Vec<u64>> {
        let mut out = Vec::with_capacity(self.nodes.len());
        for n in &mut self.nodes {
            let text: String = redis::cmd("INFO")
                .arg("clients")
                .query_async(&mut n.conn)
                .await?;
            out.push(
                field(&text, "connected_clients")
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| format!("node {}: no connected_clients", n.port))?,
            );
        }
        Ok(out)
    }
}

/// What the nodes did between two snapshots.
#[derive(Clone, Debug, Default)]
pub struct NodesDelta {
    /// Per node: connections accepted.
    pub opened: Vec<u64>,
    /// Commands run on the primaries, by name.
    pub calls: HashMap<String, u64>,
    /// Error replies on every node, by kind.
    pub errors: HashMap<String, u64>,
    /// Per node: CPU seconds.
    pub cpu_s: Vec<f64>,
}

impl NodesDelta {
    pub fn between(nodes: &Nodes, before: &[NodeSnap], after: &[NodeSnap]) -> NodesDelta {
        let mut d = NodesDelta::default();
        for ((n, b), a) in nodes.nodes.iter().zip(before).zip(after) {
            d.opened.push(a.received.saturating_sub(b.received));
            d.cpu_s.push((a.cpu_s - b.cpu_s).max(0.0));
            if n.primary {
                for (k, v) in &a.calls {
                    let was = b.calls.get(k).copied().unwrap_or(0);
                    *d.calls.entry(k.clone()).or_insert(0) += v.saturating_sub(was);
                }
            }
            for (k, v) in &a.errors {
                let was = b.errors.get(k).copied().unwrap_or(0);
                *d.errors.entry(k.clone()).or_insert(0) += v.saturating_sub(was);
            }
        }
        d
    }

    pub fn opened_total(&self) -> u64 {
        self.opened.iter().sum()
    }

    pub fn calls_of(&self, cmd: &str) -> u64 {
        self.calls.get(cmd).copied().unwrap_or(0)
    }

    /// `MOVED` + `ASK` + `TRYAGAIN` replies.
    pub fn redirections(&self) -> u64 {
        ["MOVED", "ASK", "TRYAGAIN"]
            .iter()
            .map(|k| self.errors.get(*k).copied().unwrap_or(0))
            .sum()
    }

    pub fn cpu_total(&self) -> f64 {
        self.cpu_s.iter().sum()
    }
}
