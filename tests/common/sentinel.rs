//! A real Redis Sentinel setup for tests: one primary, one replica and three sentinels
//! (quorum 2) on free loopback ports, with failover.
//!
//! Each process runs in a temporary directory of its own, with no persistence, under the
//! shell watcher of `cluster.rs` (stopped when this process dies, even by SIGKILL). The
//! sentinels' config files are written there (sentinels rewrite them). Everything uses the
//! sync redis API, so it works from any test runtime; waits poll every 20 ms against a
//! deadline and panic with the sentinels' view when it passes.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::cluster::{free_ports, node_conn_at, temp_dir, WatchedServer};

const STEP: Duration = Duration::from_millis(20);
const WAIT: Duration = Duration::from_secs(30);
/// Sentinel timings set with `SENTINEL DEBUG` (defaults 10000 and 2000 ms).
const INFO_PERIOD_MS: u64 = 1000;
const PUBLISH_PERIOD_MS: u64 = 500;

/// A primary, a replica and three sentinels monitoring them.
pub struct RedisSentinel {
    master_name: String,
    /// The two data nodes (the first started as primary).
    data_ports: [u16; 2],
    sentinel_ports: [u16; 3],
    procs: Vec<WatchedServer>,
}

impl RedisSentinel {
    /// Starts the primary, its replica (waits for the link) and three sentinels, and waits
    /// until every sentinel knows the primary, the replica (link ok) and the two others.
    pub fn start() -> RedisSentinel {
        let ports = free_ports(5);
        let data_ports = [ports[0], ports[1]];
        let sentinel_ports = [ports[2], ports[3], ports[4]];
        let mut s = RedisSentinel {
            master_name: format!("m{:06x}", fastrand::u32(..0x100_0000)),
            data_ports,
            sentinel_ports,
            procs: Vec::new(),
        };
        let primary = data_ports[0];
        for (i, &port) in data_ports.iter().enumerate() {
            let dir = temp_dir(&format!("sentinel-data-{port}"));
            let mut args = format!(
                "--port {port} --bind 127.0.0.1 --save '' --appendonly no --dir '{}' \
                 --repl-diskless-sync-delay 0 --loglevel notice --logfile redis.log \
                 --maxclients 20000",
                dir.display()
            );
            if i == 1 {
                args += &format!(" --replicaof 127.0.0.1 {primary}");
            }
            s.procs.push(WatchedServer::spawn(port, dir, &args));
        }
        for p in &s.procs {
            p.wait_ready();
        }
        s.wait_for("the replica's link to the primary", || {
            replica_link_up(data_ports[1], primary)
        });
        for (i, &port) in sentinel_ports.iter().enumerate() {
            let dir = temp_dir(&format!("sentinel-{port}"));
            let conf = dir.join(format!("sentinel-{i}.conf"));
            let text = format!(
                "port {port}\nbind 127.0.0.1\ndir \"{dir}\"\nlogfile \"sentinel.log\"\n\
                 sentinel monitor {m} 127.0.0.1 {primary} 2\n\
                 sentinel down-after-milliseconds {m} 1000\n\
                 sentinel failover-timeout {m} 5000\n\
                 sentinel parallel-syncs {m} 1\n",
                dir = dir.display(),
                m = s.master_name,
            );
            std::fs::write(&conf, text)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", conf.display()));
            let args = format!("'{}' --sentinel", conf.display());
            s.procs.push(WatchedServer::spawn(port, dir, &args));
        }
        for p in &s.procs[2..] {
            p.wait_ready();
            // Speed only (Redis 7.0's test knobs): INFO every 1 s instead of 10 s, hello
            // messages every 500 ms instead of 2 s. The old primary is turned into a
            // replica 4 publish periods after a failover: ~2 s instead of ~8 s.
            let mut c = node_conn_at("127.0.0.1", p.port)
                .unwrap_or_else(|e| panic!("sentinel {}: {e}", p.port));
            redis::cmd("SENTINEL")
                .arg("DEBUG")
                .arg("info-period")
                .arg(INFO_PERIOD_MS)
                .arg("publish-period")
                .arg(PUBLISH_PERIOD_MS)
                .query::<()>(&mut c)
                .unwrap_or_else(|e| panic!("SENTINEL DEBUG on {}: {e}", p.port));
        }
        s.wait_for(
            "the sentinels to know the primary, the replica and each other",
            || s.check_ready(primary),
        );
        s
    }

    /// Started once for this whole test binary.
    pub fn shared() -> &'static RedisSentinel {
        static SHARED: OnceLock<RedisSentinel> = OnceLock::new();
        SHARED.get_or_init(RedisSentinel::start)
    }

    /// The name the sentinels monitor the primary under (unique per start).
    pub fn master_name(&self) -> &str {
        &self.master_name
    }

    /// `redis://127.0.0.1:P/` of the three sentinels.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinel_ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}/"))
            .collect()
    }

    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinel_ports.to_vec()
    }

    /// Ports of the two data nodes (primary and replica, in start order).
    pub fn data_ports(&self) -> Vec<u16> {
        self.data_ports.to_vec()
    }

    /// `redis://127.0.0.1:P/` of the two data nodes.
    pub fn data_urls(&self) -> Vec<String> {
        self.data_ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}/"))
            .collect()
    }

    /// The primary's port according to the first sentinel that answers
    /// (`SENTINEL GET-MASTER-ADDR-BY-NAME`).
    pub fn primary_port(&self) -> u16 {
        self.wait_for("a sentinel to name the primary", || {
            let mut last = String::new();
            for &s in &self.sentinel_ports {
                match self.primary_by(s) {
                    Ok(p) => return Ok(p),
                    Err(e) => last = e,
                }
            }
            Err(last)
        })
    }

    /// The data node that is not the primary (per [`RedisSentinel::primary_port`]).
    pub fn replica_port(&self) -> u16 {
        let p = self.primary_port();
        self.data_ports.into_iter().find(|&d| d != p).unwrap()
    }

    /// A sync connection to a local node (data node or sentinel) with 5 s timeouts.
    pub fn node_conn(&self, port: u16) -> redis::Connection {
        node_conn_at("127.0.0.1", port)
            .unwrap_or_else(|e| panic!("cannot connect to 127.0.0.1:{port}: {e}"))
    }

    /// `SENTINEL FAILOVER` (again while it answers NOGOODSLAVE/INPROG), then waits until
    /// all three sentinels name the replica as primary, it answers ROLE master, the old
    /// primary answers ROLE slave with `master_link_status:up` to it, and every sentinel
    /// lists the old primary as a replica with its link ok (so another failover can
    /// follow). Returns the new primary's port.
    pub fn failover(&self) -> u16 {
        let start = Instant::now();
        let old = self.primary_port();
        let new = self.data_ports.into_iter().find(|&d| d != old).unwrap();
        self.wait_for("SENTINEL FAILOVER to be accepted", || {
            let mut c =
                node_conn_at("127.0.0.1", self.sentinel_ports[0]).map_err(|e| e.to_string())?;
            redis::cmd("SENTINEL")
                .arg("FAILOVER")
                .arg(&self.master_name)
                .query::<()>(&mut c)
                .map_err(|e| format!("SENTINEL FAILOVER: {e}"))
        });
        self.wait_for(&format!("the sentinels to promote {new}"), || {
            for &s in &self.sentinel_ports {
                let p = self.primary_by(s)?;
                if p != new {
                    return Err(format!("sentinel {s} names {p}"));
                }
            }
            match role(new)?.as_str() {
                "master" => Ok(()),
                r => Err(format!("{new} has role {r}")),
            }
        });
        let promoted = start.elapsed();
        self.wait_for(&format!("{old} to become a replica of {new}"), || {
            match role(old)?.as_str() {
                "slave" => {}
                r => return Err(format!("{old} has role {r}")),
            }
            replica_link_up(old, new)?;
            self.check_ready(new)
        });
        eprintln!(
            "sentinel: failover {old} -> {new}: promoted after {promoted:?}, \
             old primary a replica after {:?}",
            start.elapsed()
        );
        new
    }

    /// Ok when every sentinel names `primary`, sees it as a healthy master with one
    /// replica (healthy, link ok) and knows the two other sentinels.
    pub fn check_ready(&self, primary: u16) -> Result<(), String> {
        for &s in &self.sentinel_ports {
            let mut c = node_conn_at("127.0.0.1", s).map_err(|e| format!("sentinel {s}: {e}"))?;
            let master: HashMap<String, String> = redis::cmd("SENTINEL")
                .arg("MASTER")
                .arg(&self.master_name)
                .query(&mut c)
                .map_err(|e| format!("SENTINEL MASTER on {s}: {e}"))?;
            let get = |k: &str| master.get(k).map(String::as_str).unwrap_or("");
            if get("port") != primary.to_string() || get("flags") != "master" {
                return Err(format!(
                    "sentinel {s}: master port {} flags {}",
                    get("port"),
                    get("flags")
                ));
            }
            if get("num-other-sentinels") != "2" {
                return Err(format!(
                    "sentinel {s} knows {} other sentinels",
                    get("num-other-sentinels")
                ));
            }
            let replicas: Vec<HashMap<String, String>> = redis::cmd("SENTINEL")
                .arg("REPLICAS")
                .arg(&self.master_name)
                .query(&mut c)
                .map_err(|e| format!("SENTINEL REPLICAS on {s}: {e}"))?;
            let replica = self.data_ports.into_iter().find(|&d| d != primary).unwrap();
            let ok = replicas.iter().any(|r| {
                r.get("port").map(String::as_str) == Some(&replica.to_string())
                    && r.get("flags").map(String::as_str) == Some("slave")
                    && r.get("master-link-status").map(String::as_str) == Some("ok")
                    && r.get("master-port").map(String::as_str) == Some(&primary.to_string())
            });
            if !ok {
                return Err(format!(
                    "sentinel {s} does not list {replica} as a healthy replica: {replicas:?}"
                ));
            }
        }
        Ok(())
    }

    fn primary_by(&self, sentinel: u16) -> Result<u16, String> {
        let mut c =
            node_conn_at("127.0.0.1", sentinel).map_err(|e| format!("sentinel {sentinel}: {e}"))?;
        let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(&self.master_name)
            .query(&mut c)
            .map_err(|e| format!("GET-MASTER-ADDR-BY-NAME on {sentinel}: {e}"))?;
        addr.map(|(_, p)| p)
            .ok_or_else(|| format!("sentinel {sentinel} does not know {}", self.master_name))
    }

    /// Every sentinel's `SENTINEL MASTER` and `SENTINEL REPLICAS`, for panic messages.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for &s in &self.sentinel_ports {
            let r = node_conn_at("127.0.0.1", s).and_then(|mut c| {
                let m: HashMap<String, String> = redis::cmd("SENTINEL")
                    .arg("MASTER")
                    .arg(&self.master_name)
                    .query(&mut c)?;
                let r: Vec<HashMap<String, String>> = redis::cmd("SENTINEL")
                    .arg("REPLICAS")
                    .arg(&self.master_name)
                    .query(&mut c)?;
                Ok((m, r))
            });
            out += &match r {
                Ok((m, r)) => format!("--- sentinel {s}: master {m:?}\n    replicas {r:?}\n"),
                Err(e) => format!("--- sentinel {s}: {e}\n"),
            };
        }
        for &d in &self.data_ports {
            out += &format!("--- {d}: role {:?}\n", role(d));
        }
        out
    }

    fn wait_for<T>(&self, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
        let start = Instant::now();
        loop {
            match f() {
                Ok(v) => return v,
                Err(e) if start.elapsed() >= WAIT => panic!(
                    "timed out after {:?} waiting for {what}: {e}\n{}",
                    start.elapsed(),
                    self.describe()
                ),
                Err(_) => std::thread::sleep(STEP),
            }
        }
    }

    /// Stops every process and removes their directories.
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

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The first element of `ROLE` on a local node: `master`, `slave` or `sentinel`.
pub fn role(port: u16) -> Result<String, String> {
    let mut c = node_conn_at("127.0.0.1", port).map_err(|e| format!("{port}: {e}"))?;
    let v: Vec<redis::Value> = redis::cmd("ROLE")
        .query(&mut c)
        .map_err(|e| format!("ROLE on {port}: {e}"))?;
    let first = v.into_iter().next().ok_or("empty ROLE")?;
    redis::from_redis_value(first).map_err(|e| format!("ROLE on {port}: {e}"))
}

/// Ok when the node on `port` is a replica of `primary` with `master_link_status:up`.
fn replica_link_up(port: u16, primary: u16) -> Result<(), String> {
    let mut c = node_conn_at("127.0.0.1", port).map_err(|e| format!("{port}: {e}"))?;
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query(&mut c)
        .map_err(|e| format!("INFO on {port}: {e}"))?;
    let has = |l: &str| info.lines().any(|x| x.trim() == l);
    if has("role:slave") && has(&format!("master_port:{primary}")) && has("master_link_status:up") {
        Ok(())
    } else {
        Err(format!("{port} is not a linked replica of {primary}"))
    }
}
