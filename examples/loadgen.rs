//! Load generator for the semaphore and the other primitives.
//!
//! ```text
//! cargo run --release --example loadgen -- --tasks 64 --count 8 --secs 10
//! cargo run --release --example loadgen -- --coordinator 1 --handles 64 --tasks 64 --count 8
//! cargo run --release --example loadgen -- --mode names --names 1000 --secs 5
//! cargo run --release --example loadgen --features cluster -- --mode names --names 1000 --cluster
//! cargo run --release --example loadgen -- --mode handoff --rounds 2000
//! cargo run --release --example loadgen -- --mode waiters --tasks 10000
//! cargo run --release --example loadgen -- --mode longlived --cycles 1000000
//! cargo run --release --example loadgen -- --mode mutex --tasks 4 --handles 1 --secs 3
//! cargo run --release --example loadgen -- --mode many --k 4 --count 8 --tasks 1 --secs 3
//! cargo run --release --example loadgen -- --mode rwlock --tasks 8 --write-pct 10 --secs 3
//! cargo run --release --example loadgen -- --mode fanout --waiters 1000 --rounds 200
//! ```
//!
//! Modes:
//! - `cycle` (default): `--tasks` tasks on `--handles` handles (default 1) of one semaphore
//!   of `--count` permits loop acquire then release for `--secs` seconds; task `t` uses
//!   handle `t % handles`. Each handle has its own connections, unless `--coordinator 1`:
//!   then every handle is made from ONE [`Coordinator`] (one shared connection plus at most
//!   `--max-blocking` blocking connections, default 64 here), as an application with one
//!   coordinator would. `--handles 64 --tasks 64 --count 8` is 64 holders, one handle per
//!   task: the shape of redis-semaphore's bench (`../shared/bench/node/bench.js`).
//!   The last line is
//!   `loadgen: ops_per_sec=... p50_us=... p99_us=... connections=...`, where the latency is
//!   one acquire+release cycle (waiting included) and `connections` the client connections
//!   the server(s) accepted from before the handles (and the coordinator) were created to
//!   the end of the run. Before it: `loadgen: server commands per cycle: evalsha=...
//!   blmove=... client_unblock=...` (`INFO commandstats` of the primaries), `loadgen:
//!   server commands (those scripts run included): ...`, `loadgen: server cpu: ...`, one
//!   `loadgen: node ...` line per node, with a coordinator `loadgen: coordinator: ...`
//!   (these as in `names`), and `loadgen: ops=... peak_open_connections=...
//!   free_after=... held_after=...`.
//!   `--release drop` drops the permit instead of awaiting `permit.release()`.
//! - `names`: `--names N` (default 100) semaphores of `--count` permits (default 1) on ONE
//!   coordinator (`--max-blocking`, default the library's 32), and `--tasks` tasks (default
//!   2 per name), task `t` with a handle of its own on name `t % N`: with the defaults every
//!   name has one holder and one waiter at any time, every cycle goes through Redis (no
//!   local handoff between tasks: each is a holder of its own) and up to N waits want a
//!   blocking connection at once, more than the cap from 33 names on, so the connections
//!   rotate. Loops acquire/release for `--secs`. After the run, `inspect()` of every name
//!   checks `free + held == count`. Output, last line first:
//!   `names: names=N tasks=T count=C ops_per_sec=... p50_us=... p99_us=... connections=...
//!   peak_open=... blocking_peak=... max_blocking=... queued_peak=... redirections=...
//!   permits_ok=true|false`, where `connections` counts the connections the server(s)
//!   accepted from before the coordinator was created to the end (on a cluster: summed
//!   over every primary and replica), `peak_open` the most open at once beyond the
//!   baseline (sampled every 100 ms), `blocking_peak`/`queued_peak` the most blocking
//!   connections / waits queued for one in the coordinator's `stats()` (sampled too), and
//!   `redirections` the `MOVED`/`ASK`/`TRYAGAIN` replies the nodes gave. Before it, the
//!   lines `loadgen: server commands per cycle: ...`, `loadgen: server cpu: ...`, one
//!   `loadgen: node PORT primary|replica: opened=... peak_open=... cpu_s=...` per node, and
//!   `loadgen: coordinator: primitives=... blocking_connections=... peak_blocking=...
//!   max_blocking=... queued_waits=... peak_queued=... grants=... timeouts=...
//!   lost_leases=... background_errors=...`.
//! - `handoff`: a permit released by one handle reaches a task waiting on a second handle,
//!   created separately, through Redis; `--rounds` samples (default 2,000), compared with
//!   the PING round trip on a dedicated connection measured in the same run, and with the
//!   same handoff done with plain redis-rs (RPUSH to a task blocked in BLMOVE).
//! - `waiters`: `--tasks` tasks queue one by one behind the only permit of one handle;
//!   every `--cancel-every`-th (default 3) is cancelled while queued and every
//!   `--race-every`-th (default 10) while the permit goes down the queue. Checks FIFO
//!   order, that every other task is served and that no permit is lost; reports the
//!   connections (counted on the server) and the peak RSS.
//! - `longlived`: `--tasks` tasks (default 64) on one handle of `--count` permits (default
//!   8) run `--cycles` acquire+release cycles (default 1,000,000) in all; every
//!   `--kill-every` cycles (default 50,000; 0: never) another connection `CLIENT KILL`s
//!   the handle's connections, so that it reconnects and its generations change. Reports
//!   the process's RSS and the semaphore's keys (`SCAN MATCH *{name}*`, lease set, graves)
//!   at the start, after the first `--kill-every` cycles and at the end; the last line is
//!   `longlived: ok|FAILED cycles=... rss_start_kb=... rss_end_kb=... keys_start=...
//!   keys_end=...`.
//! - `mutex`: `--tasks` tasks (default 4) on `--handles` handles (default 1; from one
//!   coordinator with `--coordinator 1`) of one `Mutex` loop `lock()` then `unlock()`
//!   (`--release drop`: drop the guard); the baseline, in the same process and on the same
//!   server, is the `cycle` above with the same tasks and handles on a semaphore of one
//!   permit. `--pairs` pairs (default 3) of `--secs` runs each, the order alternating
//!   (mutex first in odd pairs). One line per run: `loadgen: pair I mutex|semaphore1:
//!   ops_per_sec=... p50_us=... p99_us=... evalsha=... blmove=... opened=...` (commands
//!   per cycle and connections opened, as the server counted them), then `loadgen: mutex
//!   evalsha=... blmove=... per cycle; semaphore1 ...; mutex after: free=... held=...
//!   next_fence=...`, and last: `mutex: tasks=... handles=... coordinator=0|1 pairs=...
//!   ops_per_sec=... p50_us=... p99_us=... sem1_ops_per_sec=... sem1_p50_us=...
//!   sem1_p99_us=... ratio=... ratios=r1,r2,... p50_ratio=... connections=...
//!   sem1_connections=...`: medians over the pairs; `ratio` is the median of the per-pair
//!   ratios mutex / semaphore (throughput), `p50_ratio` the same for the p50 latency;
//!   `connections` are those the server accepted for each kind's handles (creation and
//!   runs). With `--coordinator 1` both kinds share the coordinator's connections: its
//!   shared connection is opened before either count starts, and the blocking connections
//!   opened by whichever kind ran first are reused by the other (so `1 + connections +
//!   sem1_connections` is the process's total).
//! - `many`: `--tasks` tasks (default 1) on `--handles` handles of one semaphore of
//!   `--count` permits (default 8) loop `acquire_many(--k)` (default 4) then release (one
//!   call for all `k`). Baseline, paired as in `mutex`: the same tasks take `k` single
//!   permits one after the other, hold them together, then release them one by one
//!   (`--release drop`: drop them), on a second semaphore of the same count. The baseline
//!   can deadlock once `tasks × (k − 1) >= count` (every task holding `k − 1`): then it is
//!   skipped (`singles=skipped`). Per run: `loadgen: pair I many|singles: ...` as in
//!   `mutex`; last: `many: k=... count=... tasks=... handles=... coordinator=0|1 pairs=...
//!   ops_per_sec=... permits_per_sec=... p50_us=... p99_us=... connections=...
//!   singles_ops_per_sec=... singles_p50_us=... singles_p99_us=... ratio=... ratios=...
//!   p50_ratio=... singles_connections=...`, an operation being one grant of `k` permits
//!   and its release either way; `ratio` is acquire_many / singles (throughput).
//! - `rwlock`: `--tasks` tasks (default 8) on `--handles` handles of one `RwLock` of
//!   `--max-readers` (default 64) each loop a write (`write()` then unlock) with
//!   probability `--write-pct` % (default 10), else a read (`read()` then unlock).
//!   Baseline, paired as in `mutex`: acquire/release on a semaphore of `--max-readers`
//!   permits (what a read is made of), same tasks and handles. Per run: `loadgen: pair I
//!   rwlock|semaphore: ...` as in `mutex`, then per pair `loadgen: pair I rwlock reads:
//!   per_sec=... p50_us=... p99_us=...; writes: per_sec=... p50_us=... p99_us=...`; last:
//!   `rwlock: tasks=... handles=... coordinator=0|1 max_readers=... write_pct=... pairs=...
//!   ops_per_sec=... reads_per_sec=... writes_per_sec=... read_p50_us=... read_p99_us=...
//!   write_p50_us=... write_p99_us=... sem_ops_per_sec=... sem_p50_us=... sem_p99_us=...
//!   ratio=... ratios=... read_p50_ratio=... connections=... sem_connections=...` (`ratio`:
//!   rwlock / semaphore throughput; `read_p50_ratio`: rwlock read p50 / semaphore p50).
//! - `fanout`: `--waiters` tasks (default 1,000) wait on one `Notify`, task `i` on handle
//!   `i % --handles` (default 1; several handles each have their own connections, or
//!   share one coordinator with `--coordinator 1`), then `set()` releases them all. Per
//!   round (`--rounds`, default 200, after 10 warm-up rounds): `clear()`, the waiters start
//!   and are seen waiting (every one registered on its handle, every handle's blocking
//!   wait counted in `blocked_clients` on the server), then the time from the call to
//!   `set()` until each waiter's `wait()` has returned in its task; the round's sample is
//!   its last (and its first) waiter. Baselines measured in the same process after the
//!   rounds: 4,000 PINGs on a dedicated connection, the plain redis-rs handoff (RPUSH to
//!   one task blocked in BLMOVE), and the same number of tasks woken in process by one
//!   shared future (no Redis: what waking them costs this runtime). Lines: `loadgen:
//!   ping_rtt_p50_us=... ping_rtt_p99_us=...`, `loadgen: raw_redis_rs_handoff_p50_us=...
//!   p99_us=...`, `loadgen: local_last_p50_us=... local_last_p99_us=...`, `loadgen:
//!   set_call_p50_us=... first_p50_us=... first_p99_us=... last_p90_us=...
//!   commands_per_round: evalsha=... blmove=... client_unblock=...`, and last:
//!   `fanout: waiters=... handles=... coordinator=0|1 rounds=... last_p50_us=...
//!   last_p99_us=... last_max_us=... first_p50_us=... rtt_p50_us=... last_p50_in_rtts=...
//!   raw_handoff_p50_us=... local_last_p50_us=... connections=... expected_connections=...
//!   open_while_waiting=... connections_ok=true|false`, where `connections` is what the server accepted from
//!   before the handles were opened to the end of the rounds, `open_while_waiting` the
//!   most open at once (beyond the baseline) with every waiter waiting, and
//!   `expected_connections` one shared plus one blocking connection per handle: `2 ×
//!   handles`, or `1 + handles` with one coordinator.
//! - `cluster-serve` (feature `cluster`): starts a local cluster (6 nodes: 3 primaries, 3
//!   replicas, `tests/common/cluster.rs`), prints
//!   `cluster: REDIS_CLUSTER_URLS=redis://127.0.0.1:P1/,...` and serves until its standard
//!   input closes (then stops the nodes). Scripts use it to run several `--cluster` runs on
//!   the same nodes.
//!
//! `--cluster` (no value; build with `--features cluster`) runs `cycle` (always with a
//! coordinator) or `names` on a Redis Cluster through [`Coordinator::cluster`]: the nodes of
//! `REDIS_CLUSTER_URLS` (every node, comma-separated), or a local cluster started for the
//! run. Names are spread over the primaries by their hash slot (`loadgen: names per
//! primary: ...`).
//!
//! `--runtime smol` runs on smol (build with `--features smol`); `--threads N` sets tokio's
//! worker threads (0: the current-thread runtime); the scenario runs as a task of the
//! runtime unless `--on-main 1`. Uses `REDIS_URL`, or starts its own redis-server from
//! PATH.

#[cfg(feature = "cluster")]
#[path = "../tests/common/cluster.rs"]
mod cluster;
#[path = "support/longlived.rs"]
mod longlived;
#[path = "support/nodes.rs"]
mod nodes;
#[path = "support/prims.rs"]
mod prims;
#[path = "support/scenarios.rs"]
#[allow(dead_code)]
mod scenarios;
#[path = "../tests/common/server.rs"]
mod server;
#[path = "support/small_demo.rs"]
#[allow(dead_code)]
mod small_demo;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use nodes::{NodeSnap, Nodes, NodesDelta};
use redis_sync::{Coordinator, Runtime, Semaphore};
use scenarios::{micros, quantile, Release, Res, Stop};

const USAGE: &str = "usage: loadgen \
[--mode cycle|names|handoff|waiters|longlived|mutex|many|rwlock|fanout|cluster-serve] \
[--tasks N] [--count N] [--secs S] [--handles N] [--coordinator 0|1] [--max-blocking N] \
[--names N] [--cluster] [--rounds N] [--cancel-every N] [--race-every N] \
[--cycles N] [--kill-every N] [--pairs N] [--k N] [--max-readers N] [--write-pct P] \
[--waiters N] \
[--release await|drop] [--runtime tokio|smol] [--threads N] [--on-main 0|1] [--name NAME]";

#[derive(Clone, Debug)]
struct Args {
    mode: String,
    tasks: Option<usize>,
    count: Option<u32>,
    secs: f64,
    handles: usize,
    coordinator: bool,
    max_blocking: Option<usize>,
    names: usize,
    cluster: bool,
    rounds: Option<usize>,
    cancel_every: usize,
    race_every: usize,
    cycles: u64,
    kill_every: u64,
    runtime: String,
    threads: Option<usize>,
    on_main: bool,
    release: Release,
    name: String,
    pairs: usize,
    k: u32,
    max_readers: u32,
    write_pct: u32,
    waiters: usize,
}

impl Args {
    fn parse(mut it: impl Iterator<Item = String>) -> Res<Args> {
        let mut a = Args {
            mode: "cycle".into(),
            tasks: None,
            count: None,
            secs: 10.0,
            handles: 1,
            coordinator: false,
            max_blocking: None,
            names: 100,
            cluster: false,
            rounds: None,
            cancel_every: 3,
            race_every: 10,
            cycles: 1_000_000,
            kill_every: 50_000,
            runtime: "tokio".into(),
            threads: None,
            on_main: false,
            release: Release::Await,
            name: format!("loadgen-{}-{:08x}", std::process::id(), fastrand::u32(..)),
            pairs: 3,
            k: 4,
            max_readers: redis_sync::DEFAULT_MAX_READERS,
            write_pct: 10,
            waiters: 1000,
        };
        while let Some(flag) = it.next() {
            if flag == "-h" || flag == "--help" {
                println!("{USAGE}");
                std::process::exit(0);
            }
            if flag == "--cluster" {
                a.cluster = true;
                continue;
            }
            let value = it
                .next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
            let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
            match flag.as_str() {
                "--mode" => a.mode = value,
                "--tasks" => a.tasks = Some(value.parse().map_err(|e| bad(&e))?),
                "--count" => a.count = Some(value.parse().map_err(|e| bad(&e))?),
                "--secs" => a.secs = value.parse().map_err(|e| bad(&e))?,
                "--handles" => a.handles = value.parse().map_err(|e| bad(&e))?,
                "--coordinator" => a.coordinator = value == "1",
                "--max-blocking" => a.max_blocking = Some(value.parse().map_err(|e| bad(&e))?),
                "--names" => a.names = value.parse().map_err(|e| bad(&e))?,
                "--rounds" => a.rounds = Some(value.parse().map_err(|e| bad(&e))?),
                "--cancel-every" => a.cancel_every = value.parse().map_err(|e| bad(&e))?,
                "--race-every" => a.race_every = value.parse().map_err(|e| bad(&e))?,
                "--cycles" => a.cycles = value.parse().map_err(|e| bad(&e))?,
                "--kill-every" => a.kill_every = value.parse().map_err(|e| bad(&e))?,
                "--runtime" => a.runtime = value,
                "--threads" => a.threads = Some(value.parse().map_err(|e| bad(&e))?),
                "--on-main" => a.on_main = value == "1",
                "--release" => {
                    a.release = match value.as_str() {
                        "await" => Release::Await,
                        "drop" => Release::Drop,
                        _ => return Err(bad(&"expected await or drop").into()),
                    }
                }
                "--name" => a.name = value,
                "--pairs" => a.pairs = value.parse().map_err(|e| bad(&e))?,
                "--k" => a.k = value.parse().map_err(|e| bad(&e))?,
                "--max-readers" => a.max_readers = value.parse().map_err(|e| bad(&e))?,
                "--write-pct" => a.write_pct = value.parse().map_err(|e| bad(&e))?,
                "--waiters" => a.waiters = value.parse().map_err(|e| bad(&e))?,
                _ => return Err(format!("unknown flag {flag}\n{USAGE}").into()),
            }
        }
        if a.handles == 0
            || a.tasks == Some(0)
            || a.rounds == Some(0)
            || a.names == 0
            || a.max_blocking == Some(0)
            || a.pairs == 0
            || a.k == 0
            || a.waiters == 0
        {
            return Err(format!(
                "--handles, --tasks, --rounds, --names, --max-blocking, --pairs, --k and --waiters \
                 must be at least 1\n{USAGE}"
            )
            .into());
        }
        if a.write_pct > 100 {
            return Err(format!("--write-pct is a percentage (0..=100)\n{USAGE}").into());
        }
        if a.cluster && !matches!(a.mode.as_str(), "cycle" | "names") {
            return Err(format!("--cluster works with --mode cycle or names\n{USAGE}").into());
        }
        Ok(a)
    }

    /// Whether the handles come from one coordinator.
    fn coordinated(&self) -> bool {
        self.coordinator || self.cluster || self.mode == "names"
    }
}

/// Where the run goes: one server, or a cluster (every node, to count on).
#[derive(Clone, Debug)]
enum Topo {
    Single {
        client: redis::Client,
        host: String,
        port: u16,
    },
    #[cfg(feature = "cluster")]
    Cluster {
        urls: Vec<String>,
        /// `(host, port, is_primary)` of every node.
        nodes: Vec<(String, u16, bool)>,
        /// `(first slot, last slot, owner port)`.
        slots: Vec<(u16, u16, u16)>,
    },
}

impl Topo {
    fn client(&self) -> Res<&redis::Client> {
        match self {
            Topo::Single { client, .. } => Ok(client),
            #[cfg(feature = "cluster")]
            Topo::Cluster { .. } => Err("this mode needs one server, not --cluster".into()),
        }
    }

    fn nodes(&self) -> Vec<(String, u16, bool)> {
        match self {
            Topo::Single { host, port, .. } => vec![(host.clone(), *port, true)],
            #[cfg(feature = "cluster")]
            Topo::Cluster { nodes, .. } => nodes.clone(),
        }
    }

    fn label(&self) -> String {
        match self {
            Topo::Single { port, .. } => format!("single(port {port})"),
            #[cfg(feature = "cluster")]
            Topo::Cluster { nodes, .. } => format!(
                "cluster({} primaries, {} nodes)",
                nodes.iter().filter(|n| n.2).count(),
                nodes.len()
            ),
        }
    }

    /// `PORT=n ...`: how many of `names` each primary owns (a cluster), or `None`.
    fn names_per_primary(&self, names: &[String]) -> Option<String> {
        match self {
            Topo::Single { .. } => {
                let _ = names;
                None
            }
            #[cfg(feature = "cluster")]
            Topo::Cluster { nodes, slots, .. } => {
                let mut per: Vec<(u16, usize)> = nodes
                    .iter()
                    .filter(|n| n.2)
                    .map(|n| (n.1, 0usize))
                    .collect();
                for name in names {
                    // The keys of a primitive share the hash tag `{name}`.
                    let slot = cluster::slot_of(&format!("{{{name}}}"));
                    if let Some(&(_, _, owner)) =
                        slots.iter().find(|&&(a, b, _)| a <= slot && slot <= b)
                    {
                        if let Some(p) = per.iter_mut().find(|p| p.0 == owner) {
                            p.1 += 1;
                        }
                    }
                }
                Some(
                    per.iter()
                        .map(|(p, n)| format!("{p}={n}"))
                        .collect::<Vec<_>>()
                        .join(" "),
                )
            }
        }
    }

    async fn coordinator<R: Runtime>(&self, max_blocking: usize) -> Res<Coordinator<R>> {
        Ok(match self {
            Topo::Single { client, .. } => {
                Coordinator::<R>::builder(client)
                    .max_blocking_connections(max_blocking)
                    .connect()
                    .await?
            }
            #[cfg(feature = "cluster")]
            Topo::Cluster { urls, .. } => {
                Coordinator::<R>::cluster(urls.iter().map(String::as_str))
                    .max_blocking_connections(max_blocking)
                    .connect()
                    .await?
            }
        })
    }
}

/// What keeps the servers of the run alive (a redis-server or a cluster of our own).
type Keep = Box<dyn std::any::Any>;

fn open_topo(args: &Args) -> Res<(Topo, Keep)> {
    if args.cluster {
        return open_cluster();
    }
    let (url, server) = small_demo::redis_url();
    let client = redis::Client::open(url)?;
    let (host, port) = match client.get_connection_info().addr() {
        redis::ConnectionAddr::Tcp(h, p) => (h.clone(), *p),
        other => return Err(format!("loadgen counts connections over TCP, not {other}").into()),
    };
    Ok((Topo::Single { client, host, port }, Box::new(server)))
}

#[cfg(feature = "cluster")]
fn open_cluster() -> Res<(Topo, Keep)> {
    let c = match std::env::var("REDIS_CLUSTER_URLS") {
        Ok(v) if !v.trim().is_empty() => {
            let urls = v
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>();
            cluster::RedisCluster::external(&urls)
        }
        _ => cluster::RedisCluster::start(),
    };
    let slots = c.slot_map();
    let primaries = c.primaries();
    let nodes = c
        .urls()
        .iter()
        .zip(c.ports())
        .map(|(url, port)| {
            let host = url
                .trim_start_matches("redis://")
                .rsplit_once(':')
                .map_or("127.0.0.1", |(h, _)| h)
                .to_owned();
            (host, port, primaries.contains(&port))
        })
        .collect();
    let topo = Topo::Cluster {
        urls: c.urls(),
        nodes,
        slots,
    };
    Ok((topo, Box::new(c)))
}

#[cfg(not(feature = "cluster"))]
fn open_cluster() -> Res<(Topo, Keep)> {
    Err("--cluster needs the cargo feature `cluster`: \
         cargo run --release --example loadgen --features cluster -- ..."
        .into())
}

/// `--mode cluster-serve`: a local cluster until standard input closes.
fn cluster_serve() -> Res<()> {
    #[cfg(feature = "cluster")]
    {
        use std::io::Read;
        let c = cluster::RedisCluster::start();
        println!("cluster: REDIS_CLUSTER_URLS={}", c.urls().join(","));
        // Serves until standard input closes (the script that started it is gone).
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        drop(c);
        Ok(())
    }
    #[cfg(not(feature = "cluster"))]
    {
        open_cluster().map(drop)
    }
}

fn main() -> Res<()> {
    let args = Args::parse(std::env::args().skip(1))?;
    if args.mode == "cluster-serve" {
        return cluster_serve();
    }
    let (topo, _keep) = open_topo(&args)?;
    match args.runtime.as_str() {
        #[cfg(feature = "tokio")]
        "tokio" => {
            let mut b = match args.threads {
                Some(0) => tokio::runtime::Builder::new_current_thread(),
                _ => tokio::runtime::Builder::new_multi_thread(),
            };
            if let Some(n) = args.threads.filter(|&n| n > 0) {
                b.worker_threads(n);
            }
            b.enable_all()
                .build()?
                .block_on(run_spawned::<redis_sync::Tokio>(args, topo))
        }
        #[cfg(feature = "smol")]
        "smol" => smol::block_on(run_spawned::<redis_sync::Smol>(args, topo)),
        other => {
            Err(format!("runtime {other} is unknown or not compiled in (see --features)").into())
        }
    }
}

/// Runs the scenario as a task of the runtime, where an application's code runs, rather
/// than on the thread that blocks on the runtime (`--on-main 1` keeps it there).
async fn run_spawned<R: Runtime>(args: Args, topo: Topo) -> Res<()> {
    if args.on_main {
        return run::<R>(&args, &topo).await;
    }
    let rt = R::try_current()?;
    scenarios::spawned(&rt, async move { run::<R>(&args, &topo).await }).await?
}

async fn run<R: Runtime>(args: &Args, topo: &Topo) -> Res<()> {
    let rt = R::try_current()?;
    match args.mode.as_str() {
        "cycle" => cycle(&rt, args, topo).await,
        "names" => names(&rt, args, topo).await,
        "handoff" => handoff(&rt, args, topo.client()?).await,
        "waiters" => waiters(&rt, args, topo.client()?).await,
        "longlived" => long_lived(&rt, args, topo.client()?).await,
        "mutex" => prims::mutex(&rt, args, topo).await,
        "many" => prims::many(&rt, args, topo).await,
        "rwlock" => prims::rwlock(&rt, args, topo).await,
        "fanout" => prims::fanout(&rt, args, topo).await,
        other => Err(format!("unknown mode {other}\n{USAGE}").into()),
    }
}

/// The most seen while the load ran (sampled every 100 ms).
#[derive(Debug, Default)]
struct Peaks {
    /// Connections open beyond the baseline, summed over the nodes.
    open: u64,
    /// The same, per node.
    open_per_node: Vec<u64>,
    /// The coordinator's blocking connections and queued waits.
    blocking: usize,
    queued: usize,
}

/// Samples until `done`: open connections on every node, and the coordinator's stats.
async fn sample<R: Runtime>(
    rt: &R,
    nodes: &mut Nodes,
    base: &[NodeSnap],
    sync: Option<&Coordinator<R>>,
    done: &AtomicBool,
) -> Res<Peaks> {
    let mut p = Peaks {
        open_per_node: vec![0; base.len()],
        ..Peaks::default()
    };
    while !done.load(Ordering::Acquire) {
        let now = nodes.connected().await?;
        let mut sum = 0;
        for ((peak, n), b) in p.open_per_node.iter_mut().zip(&now).zip(base) {
            let open = n.saturating_sub(b.connected);
            *peak = (*peak).max(open);
            sum += open;
        }
        p.open = p.open.max(sum);
        if let Some(sync) = sync {
            let s = sync.stats();
            p.blocking = p.blocking.max(s.blocking_connections);
            p.queued = p.queued.max(s.queued_waits);
        }
        rt.sleep(Duration::from_millis(100)).await;
    }
    Ok(p)
}

/// Commands per cycle as the primaries counted them (this process's own INFO polls aside).
fn print_commands(d: &NodesDelta, ops: u64) {
    let per_op = |n: u64| n as f64 / ops.max(1) as f64;
    println!(
        "loadgen: server commands per cycle: evalsha={:.3} blmove={:.3} client_unblock={:.3} (INFO commandstats)",
        per_op(d.calls_of("evalsha")),
        per_op(d.calls_of("blmove")),
        per_op(d.calls_of("client|unblock")),
    );
    let mut top: Vec<_> = d.calls.iter().filter(|(_, &v)| v > 0).collect();
    top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    println!(
        "loadgen: server commands (those scripts run included): {}",
        top.iter()
            .take(8)
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
}

/// Per node: connections opened (`all`: since the baseline), the most open at once, and
/// CPU seconds while the load ran (`run`).
fn print_nodes(nodes: &Nodes, all: &NodesDelta, run: &NodesDelta, peaks: &Peaks, ops: u64) {
    println!(
        "loadgen: server cpu: total_s={:.3} per_op_us={:.2} (INFO cpu, user+sys, every node)",
        run.cpu_total(),
        run.cpu_total() * 1e6 / ops.max(1) as f64,
    );
    for (i, n) in nodes.nodes.iter().enumerate() {
        println!(
            "loadgen: node {} {}: opened={} peak_open={} cpu_s={:.3}",
            n.port,
            if n.primary { "primary" } else { "replica" },
            all.opened.get(i).copied().unwrap_or(0),
            peaks.open_per_node.get(i).copied().unwrap_or(0),
            run.cpu_s.get(i).copied().unwrap_or(0.0),
        );
    }
}

fn print_coordinator<R: Runtime>(sync: &Coordinator<R>, peaks: &Peaks) {
    let s = sync.stats();
    println!(
        "loadgen: coordinator: primitives={} blocking_connections={} peak_blocking={} max_blocking={} \
         queued_waits={} peak_queued={} grants={} handed_to_siblings={} timeouts={} lost_leases={} \
         background_errors={}",
        s.primitives,
        s.blocking_connections,
        peaks.blocking,
        s.max_blocking_connections,
        s.queued_waits,
        peaks.queued,
        s.totals.grants,
        s.totals.handed_to_siblings,
        s.totals.timeouts,
        s.totals.lost_leases,
        s.totals.background_errors,
    );
}

async fn cycle<R: Runtime>(rt: &R, args: &Args, topo: &Topo) -> Res<()> {
    let (tasks, count) = (args.tasks.unwrap_or(64), args.count.unwrap_or(8));
    let coordinated = args.coordinated();
    let max_blocking = args.max_blocking.unwrap_or(64);
    print!(
        "loadgen: mode=cycle runtime={} tasks={tasks} count={count} handles={} secs={} release={:?}",
        args.runtime, args.handles, args.secs, args.release
    );
    if coordinated {
        print!(
            " coordinator=1 max_blocking={max_blocking} topology={}",
            topo.label()
        );
    }
    println!();
    let mut nodes = Nodes::connect(&topo.nodes()).await?;
    let base = nodes.snapshot().await?;
    let (sync, sems) = if coordinated {
        let sync = topo.coordinator::<R>(max_blocking).await?;
        let mut sems = Vec::with_capacity(args.handles);
        for _ in 0..args.handles {
            sems.push(Arc::new(sync.semaphore(&args.name).create(count).await?));
        }
        (Some(sync), sems)
    } else {
        let client = topo.client()?;
        let sems = scenarios::open_handles::<R>(client, &args.name, count, args.handles).await?;
        (None, sems)
    };
    let before = nodes.snapshot().await?;
    // Sample the connections open while the load runs.
    let done = Arc::new(AtomicBool::new(false));
    let load = async {
        let r = scenarios::cycle(
            rt,
            &sems,
            tasks,
            Stop::After(Duration::from_secs_f64(args.secs)),
            args.release,
            true,
        )
        .await;
        done.store(true, Ordering::Release);
        r
    };
    let sampling = sample(rt, &mut nodes, &base, sync.as_ref(), &done);
    let (report, peaks) = futures::join!(load, sampling);
    let (report, peaks) = (report?, peaks?);
    let after = nodes.snapshot().await?;
    let run = NodesDelta::between(&nodes, &before, &after);
    let all = NodesDelta::between(&nodes, &base, &after);
    let opened = all.opened_total();
    print_commands(&run, report.ops);
    print_nodes(&nodes, &all, &run, &peaks, report.ops);
    if let Some(sync) = &sync {
        print_coordinator(sync, &peaks);
    }
    let state = sems[0].inspect().await?;
    match &sync {
        Some(sync) => sync.shutdown().await?,
        None => sems.iter().for_each(|s| s.close()),
    }
    let lat = &report.latencies;
    println!(
        "loadgen: ops={} elapsed_s={:.3} p90_us={:.1} max_us={:.1} peak_open_connections={} \
         free_after={} held_after={}",
        report.ops,
        report.elapsed.as_secs_f64(),
        micros(quantile(lat, 0.90)),
        micros(quantile(lat, 1.0)),
        peaks.open,
        state.free,
        state.held(),
    );
    println!(
        "loadgen: ops_per_sec={:.0} p50_us={:.1} p99_us={:.1} connections={opened}",
        report.ops_per_sec(),
        micros(quantile(lat, 0.50)),
        micros(quantile(lat, 0.99)),
    );
    Ok(())
}

async fn names<R: Runtime>(rt: &R, args: &Args, topo: &Topo) -> Res<()> {
    let n = args.names;
    let count = args.count.unwrap_or(1);
    let tasks = args.tasks.unwrap_or(2 * n);
    let max_blocking = args
        .max_blocking
        .unwrap_or(redis_sync::DEFAULT_COORDINATOR_BLOCKING_CONNECTIONS);
    println!(
        "loadgen: mode=names runtime={} topology={} names={n} tasks={tasks} count={count} \
         max_blocking={max_blocking} secs={} release={:?}",
        args.runtime,
        topo.label(),
        args.secs,
        args.release
    );
    let names: Vec<String> = (0..n).map(|i| format!("{}-{i}", args.name)).collect();
    if let Some(per) = topo.names_per_primary(&names) {
        println!("loadgen: names per primary: {per}");
    }
    let mut nodes = Nodes::connect(&topo.nodes()).await?;
    let base = nodes.snapshot().await?;
    let sync = topo.coordinator::<R>(max_blocking).await?;
    // Task t's handle is on name t % n; 64 creations in flight at once.
    let sems: Vec<Arc<Semaphore<R>>> = futures::stream::iter(0..tasks)
        .map(|t| {
            let (sync, name) = (sync.clone(), names[t % n].clone());
            async move { sync.semaphore(&name).create(count).await.map(Arc::new) }
        })
        .buffered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let before = nodes.snapshot().await?;
    let done = Arc::new(AtomicBool::new(false));
    let load = async {
        let r = scenarios::cycle(
            rt,
            &sems,
            tasks,
            Stop::After(Duration::from_secs_f64(args.secs)),
            args.release,
            true,
        )
        .await;
        done.store(true, Ordering::Release);
        r
    };
    let sampling = sample(rt, &mut nodes, &base, Some(&sync), &done);
    let (report, peaks) = futures::join!(load, sampling);
    let (report, peaks) = (report?, peaks?);
    let after = nodes.snapshot().await?;
    let run = NodesDelta::between(&nodes, &before, &after);
    let all = NodesDelta::between(&nodes, &base, &after);
    print_commands(&run, report.ops);
    print_nodes(&nodes, &all, &run, &peaks, report.ops);
    print_coordinator(&sync, &peaks);
    // No permit lost or doubled: every name's pool plus its held permits is its count.
    let states = futures::stream::iter(sems.iter().take(n).cloned())
        .map(|s| async move { s.inspect().await })
        .buffered(64)
        .collect::<Vec<_>>()
        .await;
    let (mut free, mut held, mut wrong) = (0usize, 0usize, 0usize);
    for st in states {
        let st = st?;
        free += st.free;
        held += st.held();
        if st.free + st.held() != count as usize || st.is_partial() {
            wrong += 1;
        }
    }
    sync.shutdown().await?;
    let lat = &report.latencies;
    println!(
        "loadgen: ops={} elapsed_s={:.3} p90_us={:.1} max_us={:.1} peak_open_connections={} \
         free_after={free} held_after={held} names_wrong={wrong} server_cpu_us_per_op={:.2}",
        report.ops,
        report.elapsed.as_secs_f64(),
        micros(quantile(lat, 0.90)),
        micros(quantile(lat, 1.0)),
        peaks.open,
        run.cpu_total() * 1e6 / report.ops.max(1) as f64,
    );
    println!(
        "names: names={n} tasks={tasks} count={count} ops_per_sec={:.0} p50_us={:.1} p99_us={:.1} \
         connections={} peak_open={} blocking_peak={} max_blocking={max_blocking} queued_peak={} \
         redirections={} permits_ok={}",
        report.ops_per_sec(),
        micros(quantile(lat, 0.50)),
        micros(quantile(lat, 0.99)),
        all.opened_total(),
        peaks.open,
        peaks.blocking,
        peaks.queued,
        run.redirections(),
        wrong == 0,
    );
    Ok(())
}

async fn handoff<R: Runtime>(rt: &R, args: &Args, client: &redis::Client) -> Res<()> {
    let rounds = args.rounds.unwrap_or(2000);
    println!(
        "loadgen: mode=handoff runtime={} rounds={rounds}",
        args.runtime
    );
    let mut h = scenarios::Handoff::<R>::new(rt, client, &args.name).await?;
    // Warm up: scripts loaded, blocking connection opened, caches hot.
    h.rounds(50.min(rounds)).await?;
    let mut rtts = h.mon.ping_rtts(rounds).await?;
    let mut samples = h.rounds(rounds).await?;
    rtts.extend(h.mon.ping_rtts(rounds).await?);
    h.close();
    let mut raw = scenarios::raw_handoff(rt, client, &format!("{}:raw", args.name), rounds).await?;
    raw.sort_unstable();
    samples.sort_unstable();
    rtts.sort_unstable();
    let rtt = quantile(&rtts, 0.5);
    let p50 = quantile(&samples, 0.5);
    println!(
        "loadgen: ping_rtt_p50_us={:.1} ping_rtt_p99_us={:.1} (redis-rs, dedicated connection, {} pings)",
        micros(rtt),
        micros(quantile(&rtts, 0.99)),
        rtts.len()
    );
    println!(
        "loadgen: raw_redis_rs_handoff_p50_us={:.1} p99_us={:.1} (RPUSH on one connection to BLMOVE on another)",
        micros(quantile(&raw, 0.5)),
        micros(quantile(&raw, 0.99)),
    );
    println!(
        "handoff: rounds={} p50_us={:.1} p90_us={:.1} p99_us={:.1} rtt_p50_us={:.1} p50_in_rtts={:.2}",
        samples.len(),
        micros(p50),
        micros(quantile(&samples, 0.90)),
        micros(quantile(&samples, 0.99)),
        micros(rtt),
        p50.as_secs_f64() / rtt.as_secs_f64(),
    );
    Ok(())
}

async fn waiters<R: Runtime>(rt: &R, args: &Args, client: &redis::Client) -> Res<()> {
    let tasks = args.tasks.unwrap_or(10_000);
    println!(
        "loadgen: mode=waiters runtime={} tasks={tasks} cancel_every={} race_every={}",
        args.runtime, args.cancel_every, args.race_every
    );
    let r = scenarios::waiters(
        rt,
        client,
        &args.name,
        tasks,
        args.cancel_every,
        args.race_every,
    )
    .await?;
    for e in r.errors.iter().take(10) {
        println!("loadgen: error: {e}");
    }
    println!(
        "loadgen: queue_ms={:.1} drain_ms={:.1} cancelled_queued={} racing_served={} racing_cancelled={} \
         rss_before_kb={} rss_queued_kb={} conns_opened={}",
        r.queue_time.as_secs_f64() * 1e3,
        r.drain_time.as_secs_f64() * 1e3,
        r.cancelled_queued,
        r.racing_served,
        r.racing_cancelled,
        r.rss_before_kb,
        r.rss_queued_kb,
        r.conns_opened,
    );
    println!(
        "waiters: tasks={} served={} live_unserved={} fifo={} errors={} connections={} vm_hwm_kb={} \
         count={} free={} held={} ok={}",
        r.tasks,
        r.served,
        r.live_unserved,
        r.fifo,
        r.errors.len(),
        r.conns_waiting,
        r.hwm_kb,
        r.count.map_or("none".to_string(), |c| c.to_string()),
        r.free,
        r.held,
        r.ok(),
    );
    if r.ok() {
        Ok(())
    } else {
        Err("waiters: a check failed (see above)".into())
    }
}

async fn long_lived<R: Runtime>(rt: &R, args: &Args, client: &redis::Client) -> Res<()> {
    let (tasks, count) = (args.tasks.unwrap_or(64), args.count.unwrap_or(8));
    println!(
        "loadgen: mode=longlived runtime={} tasks={tasks} count={count} cycles={} kill_every={}",
        args.runtime, args.cycles, args.kill_every
    );
    let prefix = redis_sync::DEFAULT_SEMAPHORE_PREFIX;
    let r = longlived::longlived(
        rt,
        client,
        prefix,
        &args.name,
        args.cycles,
        tasks,
        count,
        args.kill_every,
    )
    .await?;
    for e in &r.first_errors {
        println!("loadgen: error (during a kill): {e}");
    }
    let samples = [
        ("start", &r.start),
        ("warm", &r.warm),
        ("end", &r.end),
        ("after_shutdown", &r.after_shutdown),
    ];
    for (when, s) in samples {
        println!(
            "loadgen: {when}: rss_kb={} vm_hwm_kb={} keys={} leases={} graves={}",
            s.rss_kb, s.hwm_kb, s.keys, s.leases, s.graves
        );
    }
    println!(
        "loadgen: elapsed_s={:.1} cycles_per_sec={:.0} kills={} killed_connections={} errors={} generations={} settle_ms={}",
        r.elapsed.as_secs_f64(),
        r.cycles as f64 / r.elapsed.as_secs_f64(),
        r.kills,
        r.killed_connections,
        r.errors,
        r.generations,
        r.settle.as_millis(),
    );
    println!(
        "longlived: {} cycles={} rss_start_kb={} rss_end_kb={} keys_start={} keys_end={} \
         generations={} leases_end={} graves_end={}",
        if r.ok() { "ok" } else { "FAILED" },
        r.cycles,
        r.start.rss_kb,
        r.end.rss_kb,
        r.start.keys,
        r.end.keys,
        r.generations,
        r.end.leases,
        r.end.graves,
    );
    if r.ok() {
        Ok(())
    } else {
        Err("longlived: not bounded (see above)".into())
    }
}
