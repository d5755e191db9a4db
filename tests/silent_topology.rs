//! Silent peers (connections that go quiet without FIN or RST) in front of a Redis Cluster
//! node and of a Sentinel-managed primary and its sentinel: every call still returns within
//! its deadline, errors are typed, the library recovers once the path is back, and no
//! permit is lost or granted twice.
//!
//! The topologies are this binary's own (the shared ones of `tests/cluster.rs` and
//! `tests/sentinel.rs` are not touched), started once, with a fault-injecting relay
//! (`tests/common/relay.rs`) in the path:
//!
//! * cluster: 3 primaries, no replicas; each node announces its relay's port
//!   (`cluster-announce-port`), so `CLUSTER SLOTS` names the relays and every connection
//!   the library opens (the cluster client's and the dedicated blocking ones) goes
//!   through them. The cluster bus is direct: the silent node stays healthy for its peers.
//! * sentinel: one primary and one sentinel that monitors it through a relay (so the
//!   sentinel names the relay's address), and a second relay between the library and the
//!   sentinel.
//!
//! The checks are independent of the library: a bound on every call's duration, an
//! in-process counter of tasks inside (never more than `count`), and every permit back
//! in the pool at the end.

#![cfg(all(feature = "cluster", feature = "sentinel"))]

#[allow(unused_imports)]
mod common;
#[macro_use]
mod scenarios;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::cluster::{free_ports, node_conn_at, slot_of, temp_dir, WatchedServer};
use common::relay::Relay;
use futures::future::{self, Either};
use redis::sentinel::{SentinelClient, SentinelServerType};
use redis_sync::{Coordinator, Error, Runtime, Semaphore};
use scenarios::*;

runtime_tests! {
    cluster_silent_node => cluster_silent_node();
    sentinel_silent_primary_then_sentinel => sentinel_silent_primary_then_sentinel();
    cluster_healthy_node_unaffected_by_silent_node =>
        cluster_healthy_node_unaffected(RESPONSE, LEASE, SILENCE * 2);
    /// The same with longer timeouts: a 2 s response timeout, 10 s leases, 20 s of silence.
    cluster_healthy_node_unaffected_longer_timeouts =>
        cluster_healthy_node_unaffected(
            Duration::from_secs(2),
            Duration::from_secs(10),
            Duration::from_secs(20),
        );
}

/// The response timeout of the coordinators under test.
const RESPONSE: Duration = Duration::from_millis(750);
/// Short leases, so that silence outlasts them and permits come back soon.
const LEASE: Duration = Duration::from_millis(1500);
/// How long a path stays silent.
const SILENCE: Duration = Duration::from_millis(2500);
/// The wait of each `acquire_timeout` of the load.
const ACQUIRE_WAIT: Duration = Duration::from_secs(2);
/// No call may take longer: its own wait, plus a request, a reconnection and a lookup,
/// each bounded by the response timeout, plus scheduling slack on a busy machine.
const CALL_BOUND: Duration = Duration::from_millis(2000 + 4 * 750 + 2000);
/// Calls on a healthy cluster node while another node is silent: their requests go only to
/// the healthy node's own connection (and, when the slot map was just forgotten, to every
/// known node at once for `CLUSTER SLOTS`, the first answer winning), so none waits for
/// the silent node. They answered within 15 ms here (this file's cluster scenarios);
/// the bound is one response timeout plus the 500 ms of scheduling slack that
/// `cluster_healthy_node_unaffected` allows a call, below what a single wait on the silent
/// node costs (a connection plus a response timeout, 1.5 s).
const OTHER_NODE_BOUND: Duration = Duration::from_millis(RESPONSE.as_millis() as u64 + 500);
/// A call still running after this is hung (recorded, and the scenario fails).
const HANG: Duration = Duration::from_secs(30);
/// Once the path is back, the load must be granted permits again within this.
const RECOVER_BOUND: Duration = Duration::from_secs(10);
/// Tasks looping acquire/release on a semaphore of [`COUNT`].
const WORKERS: usize = 6;
const COUNT: u32 = 3;

/// One scenario at a time per topology (the runtimes' tests share it).
static CLUSTER_LOCK: LazyLock<futures::lock::Mutex<()>> =
    LazyLock::new(|| futures::lock::Mutex::new(()));
static SENTINEL_LOCK: LazyLock<futures::lock::Mutex<()>> =
    LazyLock::new(|| futures::lock::Mutex::new(()));

const STEP: Duration = Duration::from_millis(50);
const SETUP_WAIT: Duration = Duration::from_secs(30);

fn wait_until<T>(what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if start.elapsed() > SETUP_WAIT => {
                panic!("timed out after {SETUP_WAIT:?} waiting for {what}: {e}")
            }
            Err(_) => std::thread::sleep(STEP),
        }
    }
}

// ---- the cluster -----------------------------------------------------------------------

/// Slot ranges of the three primaries, in node order.
const RANGES: [(u16, u16); 3] = [(0, 5460), (5461, 10922), (10923, 16383)];

/// 3 primaries (no replicas), each reached by clients only through its relay.
struct RelayedCluster {
    /// `relays[i]` is in front of node `i`, whose slots are `RANGES[i]`.
    relays: Vec<Relay>,
    procs: Vec<WatchedServer>,
}

impl RelayedCluster {
    fn shared() -> &'static RelayedCluster {
        static SHARED: OnceLock<RelayedCluster> = OnceLock::new();
        SHARED.get_or_init(RelayedCluster::start)
    }

    fn start() -> RelayedCluster {
        let ports = free_ports(6);
        // The relays come first: a node announces its relay's port from the start.
        let relays: Vec<Relay> = ports[..3]
            .iter()
            .map(|&p| Relay::start_to_port(p))
            .collect();
        let mut procs = Vec::new();
        for i in 0..3 {
            let (port, bus, announced) = (ports[i], ports[3 + i], relays[i].port());
            let dir = temp_dir(&format!("relayed-cluster-{port}"));
            let args = format!(
                "--port {port} --bind 127.0.0.1 --save '' --appendonly no --dir '{dir}' \
                 --cluster-enabled yes --cluster-config-file nodes-{port}.conf \
                 --cluster-port {bus} --cluster-node-timeout 5000 \
                 --cluster-announce-ip 127.0.0.1 --cluster-announce-port {announced} \
                 --cluster-announce-bus-port {bus} \
                 --loglevel notice --logfile redis.log --maxclients 20000",
                dir = dir.display(),
            );
            procs.push(WatchedServer::spawn(port, dir, &args));
        }
        let cluster = RelayedCluster { relays, procs };
        for p in &cluster.procs {
            p.wait_ready();
        }
        for (i, p) in cluster.procs.iter().enumerate() {
            let mut c = node_conn_at("127.0.0.1", p.port).expect("cluster node");
            redis::cmd("CLUSTER")
                .arg("SET-CONFIG-EPOCH")
                .arg(i + 1)
                .query::<()>(&mut c)
                .expect("CLUSTER SET-CONFIG-EPOCH");
            redis::cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(RANGES[i].0)
                .arg(RANGES[i].1)
                .query::<()>(&mut c)
                .expect("CLUSTER ADDSLOTSRANGE");
        }
        let mut first = node_conn_at("127.0.0.1", cluster.procs[0].port).expect("node 0");
        for i in 1..3 {
            redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(cluster.relays[i].port())
                .arg(ports[3 + i])
                .query::<()>(&mut first)
                .expect("CLUSTER MEET");
        }
        wait_until("the relayed cluster to be ok", || cluster.check());
        cluster
    }

    /// Ok when every node (asked directly) says the cluster is ok with 3 nodes, and its
    /// `CLUSTER SLOTS` names the relays as the owners; and a node answers through a relay.
    fn check(&self) -> Result<(), String> {
        for p in &self.procs {
            let mut c = node_conn_at("127.0.0.1", p.port).map_err(|e| e.to_string())?;
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query(&mut c)
                .map_err(|e| e.to_string())?;
            if !info.contains("cluster_state:ok") || !info.contains("cluster_known_nodes:3") {
                return Err(format!("node {}: {info}", p.port));
            }
            let slots: redis::Value = redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query(&mut c)
                .map_err(|e| e.to_string())?;
            let mut seen = slots_of(&slots);
            seen.sort_unstable();
            let want: Vec<(u16, u16, String, u16)> = RANGES
                .iter()
                .zip(&self.relays)
                .map(|(&(a, b), r)| (a, b, "127.0.0.1".to_owned(), r.port()))
                .collect();
            if seen != want {
                return Err(format!("node {}: CLUSTER SLOTS {seen:?}", p.port));
            }
        }
        for r in &self.relays {
            let mut c = node_conn_at("127.0.0.1", r.port()).map_err(|e| e.to_string())?;
            let _: String = redis::cmd("PING")
                .query(&mut c)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn seeds(&self) -> Vec<String> {
        self.relays.iter().map(Relay::url).collect()
    }
}

/// `(start, end, host, port)` of each range's primary in a `CLUSTER SLOTS` reply.
fn slots_of(reply: &redis::Value) -> Vec<(u16, u16, String, u16)> {
    let mut out = Vec::new();
    let redis::Value::Array(ranges) = reply else {
        return out;
    };
    for range in ranges {
        let redis::Value::Array(parts) = range else {
            continue;
        };
        let (Some(redis::Value::Int(a)), Some(redis::Value::Int(b)), Some(redis::Value::Array(p))) =
            (parts.first(), parts.get(1), parts.get(2))
        else {
            continue;
        };
        let host = match p.first() {
            Some(redis::Value::BulkString(h)) => String::from_utf8_lossy(h).into_owned(),
            Some(redis::Value::SimpleString(h)) => h.clone(),
            _ => continue,
        };
        let Some(redis::Value::Int(port)) = p.get(1) else {
            continue;
        };
        out.push((*a as u16, *b as u16, host, *port as u16));
    }
    out
}

/// A fresh semaphore name whose slot (hash tag `{name}`) is served by node `node`.
fn name_on_node(tag: &str, node: usize) -> String {
    let (a, b) = RANGES[node];
    loop {
        let n = format!("{tag}-{:08x}", fastrand::u32(..));
        let slot = slot_of(&format!("{{{n}}}"));
        if a <= slot && slot <= b {
            return n;
        }
    }
}

// ---- sentinel --------------------------------------------------------------------------

/// One primary and one sentinel; the sentinel reaches the primary through
/// `primary_relay` (and names that address), the library reaches the sentinel through
/// `sentinel_relay`.
struct RelayedSentinel {
    primary_relay: Relay,
    sentinel_relay: Relay,
    master_name: String,
    /// Kept to stop the processes on drop.
    _procs: Vec<WatchedServer>,
}

impl RelayedSentinel {
    fn shared() -> &'static RelayedSentinel {
        static SHARED: OnceLock<RelayedSentinel> = OnceLock::new();
        SHARED.get_or_init(RelayedSentinel::start)
    }

    fn start() -> RelayedSentinel {
        let ports = free_ports(2);
        let (primary, sentinel) = (ports[0], ports[1]);
        let primary_relay = Relay::start_to_port(primary);
        let sentinel_relay = Relay::start_to_port(sentinel);
        let master_name = format!("relayed{:06x}", fastrand::u32(..0x100_0000));
        let mut procs = Vec::new();
        let dir = temp_dir(&format!("relayed-primary-{primary}"));
        let args = format!(
            "--port {primary} --bind 127.0.0.1 --save '' --appendonly no --dir '{}' \
             --loglevel notice --logfile redis.log --maxclients 20000",
            dir.display()
        );
        procs.push(WatchedServer::spawn(primary, dir, &args));
        procs[0].wait_ready();
        let dir = temp_dir(&format!("relayed-sentinel-{sentinel}"));
        let conf = dir.join("sentinel.conf");
        // No replica, and a down-after far beyond the silences here: no failover; the
        // sentinel keeps naming the primary (the relay's address) all along.
        let text = format!(
            "port {sentinel}\nbind 127.0.0.1\ndir \"{dir}\"\nlogfile \"sentinel.log\"\n\
             sentinel monitor {m} 127.0.0.1 {relay} 1\n\
             sentinel down-after-milliseconds {m} 60000\n\
             sentinel failover-timeout {m} 180000\n",
            dir = dir.display(),
            m = master_name,
            relay = primary_relay.port(),
        );
        std::fs::write(&conf, text).expect("write sentinel.conf");
        let args = format!("'{}' --sentinel", conf.display());
        procs.push(WatchedServer::spawn(sentinel, dir, &args));
        procs[1].wait_ready();
        let s = RelayedSentinel {
            primary_relay,
            sentinel_relay,
            master_name,
            _procs: procs,
        };
        wait_until("the sentinel to name the relayed primary", || {
            let mut c = node_conn_at("127.0.0.1", sentinel).map_err(|e| e.to_string())?;
            let master: std::collections::HashMap<String, String> = redis::cmd("SENTINEL")
                .arg("MASTER")
                .arg(&s.master_name)
                .query(&mut c)
                .map_err(|e| e.to_string())?;
            let get = |k: &str| master.get(k).map(String::as_str).unwrap_or("");
            if get("port") == s.primary_relay.port().to_string() && get("flags") == "master" {
                Ok(())
            } else {
                Err(format!("{master:?}"))
            }
        });
        s
    }

    fn sentinel_client(&self) -> SentinelClient {
        SentinelClient::build(
            vec![self.sentinel_relay.url()],
            self.master_name.clone(),
            None,
            SentinelServerType::Master,
        )
        .expect("sentinel client")
    }
}

// ---- the load and its independent checks -----------------------------------------------

/// What the load saw, independently of the library.
#[derive(Default)]
struct Watch {
    inside: AtomicUsize,
    most: AtomicUsize,
    /// Holders that found their permit lost when leaving the critical section.
    lost_inside: AtomicUsize,
    log: Mutex<Log>,
}

#[derive(Default)]
struct Log {
    granted: Vec<Instant>,
    /// Error kinds and how often.
    errors: BTreeMap<String, usize>,
    /// The slowest call: how long, what.
    slowest: (Duration, String),
    /// Calls past [`CALL_BOUND`], hung calls and errors of an unexpected kind.
    violations: Vec<String>,
    calls: usize,
    /// Calls that took longer than two response timeouts: what, how long, outcome.
    slow: Vec<String>,
}

impl Watch {
    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn granted_since(&self, t: Instant) -> usize {
        self.log().granted.iter().filter(|g| **g >= t).count()
    }

    fn report(&self, label: &str) -> String {
        let log = self.log();
        format!(
            "{label}: {} calls, {} grants, most inside {}, lost inside {}, slowest {:?} ({}), \
             errors {:?}, slow calls {:?}",
            log.calls,
            log.granted.len(),
            self.most.load(Ordering::SeqCst),
            self.lost_inside.load(Ordering::SeqCst),
            log.slowest.0,
            log.slowest.1,
            log.errors,
            log.slow,
        )
    }
}

/// The kind of an error the library returned, or `Err` if it is not one a silent peer may
/// cause (a timeout or I/O error from Redis, a lost lease, an acquire's own timeout).
fn kind_of(e: &Error) -> Result<String, String> {
    match e {
        Error::Redis(r) if r.is_timeout() => Ok("Redis(timeout)".to_owned()),
        Error::Redis(r) if r.is_connection_dropped() => Ok("Redis(dropped)".to_owned()),
        Error::Redis(r) if r.is_connection_refusal() => Ok("Redis(refused)".to_owned()),
        Error::Redis(r) if r.is_io_error() => Ok("Redis(io)".to_owned()),
        Error::Redis(r) => Ok(format!("Redis({:?}: {r})", r.kind())),
        Error::LeaseLost => Ok("LeaseLost".to_owned()),
        Error::Timeout(_) => Ok("Timeout".to_owned()),
        other => Err(format!("{other:?}")),
    }
}

/// Runs `fut` (one library call), bounded by [`HANG`]; records its duration and outcome.
async fn timed<R: Runtime, T>(
    watch: &Watch,
    what: &str,
    fut: impl Future<Output = Result<T, Error>>,
) -> Option<T> {
    timed_within::<R, T>(watch, what, CALL_BOUND, fut).await
}

/// [`timed`] with another bound than [`CALL_BOUND`].
async fn timed_within<R: Runtime, T>(
    watch: &Watch,
    what: &str,
    bound: Duration,
    fut: impl Future<Output = Result<T, Error>>,
) -> Option<T> {
    let start = Instant::now();
    let hang = sleep::<R>(HANG);
    futures::pin_mut!(fut);
    futures::pin_mut!(hang);
    let out = match future::select(fut, hang).await {
        Either::Left((out, _)) => Some(out),
        Either::Right(_) => None,
    };
    let took = start.elapsed();
    let mut log = watch.log();
    log.calls += 1;
    if took > log.slowest.0 {
        log.slowest = (took, what.to_owned());
    }
    let Some(out) = out else {
        log.violations
            .push(format!("{what}: no answer after {took:?} (hung)"));
        return None;
    };
    let res = match &out {
        Ok(_) => "Ok".to_owned(),
        Err(e) => e.to_string(),
    };
    if took > 2 * RESPONSE {
        log.slow.push(format!("{what} {took:?}: {res}"));
    }
    if took > bound {
        log.violations
            .push(format!("{what} took {took:?} (bound {bound:?}): {res}"));
    }
    match out {
        Ok(v) => Some(v),
        Err(e) => {
            match kind_of(&e) {
                Ok(k) => *log.errors.entry(format!("{what}: {k}")).or_insert(0) += 1,
                Err(k) => log.violations.push(format!("{what}: unexpected error {k}")),
            }
            None
        }
    }
}

/// Loops acquire / short hold / release until `stop`.
async fn worker<R: Runtime>(sem: Semaphore<R>, watch: Arc<Watch>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        let Some(permit) =
            timed::<R, _>(&watch, "acquire", sem.acquire_timeout(ACQUIRE_WAIT)).await
        else {
            sleep::<R>(Duration::from_millis(50)).await;
            continue;
        };
        let now = watch.inside.fetch_add(1, Ordering::SeqCst) + 1;
        watch.most.fetch_max(now, Ordering::SeqCst);
        watch.log().granted.push(Instant::now());
        sleep::<R>(Duration::from_millis(fastrand::u64(0..100))).await;
        if permit.is_lost() {
            watch.lost_inside.fetch_add(1, Ordering::SeqCst);
        }
        watch.inside.fetch_sub(1, Ordering::SeqCst);
        timed::<R, _>(&watch, "release", permit.release()).await;
    }
}

type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

struct Load<R: Runtime> {
    first: Semaphore<R>,
    watch: Arc<Watch>,
    stop: Arc<AtomicBool>,
    tasks: Vec<Task>,
}

impl<R: Runtime> Load<R> {
    async fn start(sync: &Coordinator<R>, name: &str) -> Load<R> {
        let first = sync
            .semaphore(name)
            .lease_ttl(LEASE)
            .create(COUNT)
            .await
            .expect("create");
        let watch = Arc::new(Watch::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks: Vec<Task> = Vec::new();
        for _ in 0..WORKERS {
            let sem = sync
                .semaphore(name)
                .lease_ttl(LEASE)
                .create(COUNT)
                .await
                .expect("create");
            tasks.push(Box::pin(spawn::<R, _>(worker(
                sem,
                watch.clone(),
                stop.clone(),
            ))));
        }
        Load {
            first,
            watch,
            stop,
            tasks,
        }
    }

    /// A long holder holds across the silence made by `cut` (for [`SILENCE`], then
    /// `restore`), while the workers go on; `during` runs in the silence. Checks the
    /// holder was told its lease is lost and the workers are granted permits again.
    async fn silent_phase<D: Future<Output = ()>>(
        &self,
        label: &str,
        cut: impl FnOnce(),
        during: impl FnOnce(Instant) -> D,
        restore: impl FnOnce(),
    ) {
        let holder = timed::<R, _>(&self.watch, "long holder acquire", self.first.acquire())
            .await
            .expect("the long holder gets a permit before the silence");
        sleep::<R>(Duration::from_millis(300)).await;
        assert!(
            self.watch
                .granted_since(Instant::now() - Duration::from_secs(1))
                > 0,
            "{label}: no grant before the silence; {}",
            self.watch.report(label)
        );
        cut();
        let cut_at = Instant::now();
        during(cut_at + SILENCE).await;
        let left = (cut_at + SILENCE).saturating_duration_since(Instant::now());
        sleep::<R>(left).await;
        restore();
        let restored_at = Instant::now();
        let recovered = loop {
            if self.watch.granted_since(restored_at) > 0 {
                break restored_at.elapsed();
            }
            assert!(
                restored_at.elapsed() < RECOVER_BOUND,
                "{label}: no grant within {RECOVER_BOUND:?} of the restore; {}",
                self.watch.report(label)
            );
            sleep::<R>(Duration::from_millis(20)).await;
        };
        assert!(
            holder.is_lost(),
            "{label}: the long holder was not told its lease ({LEASE:?}) was lost over \
             {SILENCE:?} of silence"
        );
        let released = timed::<R, _>(&self.watch, "long holder release", holder.release()).await;
        // Let the load run through the restored path for a while.
        sleep::<R>(Duration::from_millis(700)).await;
        println!(
            "{label}: first grant {recovered:?} after the restore; long holder's release: \
             {released:?}"
        );
    }

    /// Stops the load and checks: no call past its bound, no unexpected error, never more
    /// than `count` inside, every permit back.
    async fn finish(self, label: &str) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await;
        }
        println!("{}", self.watch.report(label));
        let violations = self.watch.log().violations.clone();
        assert!(violations.is_empty(), "{label}: {violations:#?}");
        let most = self.watch.most.load(Ordering::SeqCst);
        assert!(
            most <= COUNT as usize,
            "{label}: {most} inside a semaphore of {COUNT}"
        );
        let st = wait_all_free(&self.first).await;
        assert_eq!(st.free, COUNT as usize, "{label}: {st:?}");
        // All of them can really be taken, once each.
        let mut all = Vec::new();
        for _ in 0..COUNT {
            let p = self.first.try_acquire().await.expect("try_acquire");
            all.push(p.expect("a permit is missing from the pool"));
        }
        assert!(
            self.first
                .try_acquire()
                .await
                .expect("try_acquire")
                .is_none(),
            "{label}: more permits than the count"
        );
        for p in all {
            p.release().await.expect("release");
        }
        wait_all_free(&self.first).await;
    }
}

// ---- scenarios -------------------------------------------------------------------------

/// The node serving the semaphore goes silent (existing and new connections) for
/// [`SILENCE`] while holders hold and waiters block on it; a semaphore on another node is
/// used meanwhile.
async fn cluster_silent_node<R: Runtime>() {
    let _one_at_a_time = CLUSTER_LOCK.lock().await;
    let topo = RelayedCluster::shared();
    topo.check().expect("a healthy relayed cluster");
    let sync = Coordinator::<R>::cluster(topo.seeds())
        .response_timeout(RESPONSE)
        .max_blocking_connections(64)
        .connect()
        .await
        .expect("connect to the relayed cluster");
    let load = Load::start(&sync, &name_on_node("silent-node", 0)).await;
    let other = sync
        .semaphore(&name_on_node("other-node", 1))
        .lease_ttl(LEASE)
        .create(1)
        .await
        .expect("create on node 1");
    // Every connection to node 0 goes through its relay (the library learns the relay's
    // address from CLUSTER SLOTS): counted here to show the path was really used.
    let accepted_before = topo.relays[0].accepted();
    let side = Watch::default();
    let (side_ref, other_ref) = (&side, &other);
    let relay = &topo.relays[0];
    sleep::<R>(Duration::from_millis(500)).await;
    load.silent_phase(
        "cluster: node 0 silent",
        || {
            relay.blackhole_existing();
            relay.blackhole_new(true);
        },
        |until| async move {
            // The healthy node's semaphore, meanwhile.
            while Instant::now() < until {
                let bound = OTHER_NODE_BOUND;
                let got = timed_within::<R, _>(
                    side_ref,
                    "node 1 try_acquire",
                    bound,
                    other_ref.try_acquire(),
                )
                .await;
                if let Some(Some(p)) = got {
                    side_ref.log().granted.push(Instant::now());
                    timed_within::<R, _>(side_ref, "node 1 release", bound, p.release()).await;
                }
                sleep::<R>(Duration::from_millis(100)).await;
            }
        },
        || relay.blackhole_new(false),
    )
    .await;
    load.finish("cluster: node 0 silent").await;
    let accepted = topo.relays[0].accepted() - accepted_before;
    println!("cluster: {accepted} connections through node 0's relay");
    assert!(accepted > 0, "no connection went through node 0's relay");
    println!("{}", side.report("cluster: node 1 meanwhile"));
    let violations = side.log().violations.clone();
    assert!(violations.is_empty(), "node 1: {violations:#?}");
    // The healthy node stayed usable (most of its calls succeed).
    assert!(
        !side.log().granted.is_empty(),
        "{}",
        side.report("node 1 never granted while node 0 was silent")
    );
    wait_all_free(&other).await;
    let shut = timed::<R, _>(&side, "shutdown", sync.shutdown()).await;
    assert!(shut.is_some(), "shutdown: {:?}", side.log().violations);
    topo.check()
        .expect("the relayed cluster is healthy after the scenario");
}

/// First the primary goes silent (the sentinel keeps naming it: no failover), then the
/// sentinel does while the primary's connections are reset (so that every new connection
/// needs a lookup that goes unanswered).
async fn sentinel_silent_primary_then_sentinel<R: Runtime>() {
    let _one_at_a_time = SENTINEL_LOCK.lock().await;
    let topo = RelayedSentinel::shared();
    let sync = Coordinator::<R>::sentinel(topo.sentinel_client())
        .response_timeout(RESPONSE)
        .max_blocking_connections(64)
        .connect()
        .await
        .expect("connect through the sentinel");
    let before = (
        topo.primary_relay.accepted(),
        topo.sentinel_relay.accepted(),
    );
    let load = Load::start(&sync, &format!("sentinel-silent-{:08x}", fastrand::u32(..))).await;
    sleep::<R>(Duration::from_millis(500)).await;
    let primary = &topo.primary_relay;
    load.silent_phase(
        "sentinel: primary silent",
        || {
            primary.blackhole_existing();
            primary.blackhole_new(true);
        },
        |_| async {},
        || primary.blackhole_new(false),
    )
    .await;
    let sentinel = &topo.sentinel_relay;
    load.silent_phase(
        "sentinel: sentinel silent",
        || {
            sentinel.blackhole_existing();
            sentinel.blackhole_new(true);
            primary.reset_all();
        },
        |_| async {},
        || sentinel.blackhole_new(false),
    )
    .await;
    load.finish("sentinel").await;
    let accepted = (
        topo.primary_relay.accepted() - before.0,
        topo.sentinel_relay.accepted() - before.1,
    );
    println!("sentinel: connections through the relays (primary, sentinel): {accepted:?}");
    assert!(accepted.0 > 0 && accepted.1 > 0, "{accepted:?}");
    let watch = Watch::default();
    let shut = timed::<R, _>(&watch, "shutdown", sync.shutdown()).await;
    assert!(shut.is_some(), "shutdown: {:?}", watch.log().violations);
}

/// What a silent node should not do to the healthy ones: while node 0 is silent (with a
/// holder and a waiter on it), a holder on node 1 keeps its lease and every `try_acquire`
/// on node 1 answers within the response timeout plus a margin.
///
/// Before each node had its own connection, this failed on every runtime: a timeout on
/// node 0 replaced the whole cluster connection, whose reopening spent a connection and a
/// response timeout on the silent node while every request waited for it, and redis-rs's
/// cluster client stopped all dispatch while it refreshed its slot map, pinging and
/// reconnecting the silent node with its map locked. A `try_acquire` on node 1 took 2 to
/// 4.5 s (6 to 18 s with the longer timeouts) and node 1's holder lost its lease.
async fn cluster_healthy_node_unaffected<R: Runtime>(
    response: Duration,
    lease: Duration,
    silence: Duration,
) {
    let _one_at_a_time = CLUSTER_LOCK.lock().await;
    let topo = RelayedCluster::shared();
    topo.check().expect("a healthy relayed cluster");
    let sync = Coordinator::<R>::cluster(topo.seeds())
        .response_timeout(response)
        .connect()
        .await
        .expect("connect to the relayed cluster");
    let n0 = name_on_node("silent", 0);
    let s0 = sync
        .semaphore(&n0)
        .lease_ttl(lease)
        .create(1)
        .await
        .unwrap();
    let waiter = sync
        .semaphore(&n0)
        .lease_ttl(lease)
        .create(1)
        .await
        .unwrap();
    let s1 = sync
        .semaphore(&name_on_node("healthy", 1))
        .lease_ttl(lease)
        .create(2)
        .await
        .unwrap();
    let held0 = s0.acquire().await.unwrap();
    let held1 = s1.acquire().await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let waiting = {
        let stop = stop.clone();
        spawn::<R, _>(async move {
            while !stop.load(Ordering::SeqCst) {
                if let Ok(p) = waiter.acquire_timeout(Duration::from_secs(1)).await {
                    let _ = p.release().await;
                }
            }
        })
    };
    sleep::<R>(Duration::from_millis(300)).await;
    let relay = &topo.relays[0];
    relay.blackhole_existing();
    relay.blackhole_new(true);
    let cut_at = Instant::now();
    let mut failures = Vec::new();
    let mut slowest = Duration::ZERO;
    while cut_at.elapsed() < silence {
        let t = Instant::now();
        let r = s1.try_acquire().await;
        let took = t.elapsed();
        slowest = slowest.max(took);
        let at = cut_at.elapsed();
        match r {
            Ok(Some(p)) => {
                let _ = p.release().await;
            }
            Ok(None) => failures.push(format!("{at:?}: node 1 had no free permit")),
            Err(e) => failures.push(format!("{at:?}: node 1 try_acquire: {e} after {took:?}")),
        }
        if took > response + Duration::from_millis(500) {
            failures.push(format!("{at:?}: node 1 try_acquire took {took:?}"));
        }
        if held1.is_lost() {
            failures.push(format!("{at:?}: node 1's holder lost its lease"));
            break;
        }
        sleep::<R>(Duration::from_millis(100)).await;
    }
    // Restored before any assertion: the topology is shared with the other scenarios.
    relay.blackhole_new(false);
    stop.store(true, Ordering::SeqCst);
    waiting.await;
    println!("while node 0 was silent: slowest try_acquire on node 1 {slowest:?}; {failures:#?}");
    drop(held0);
    drop(held1);
    // Leases lost in the silence are taken back by a reclaim.
    let _ = s1.reclaim_expired().await;
    let _ = s0.reclaim_expired().await;
    wait_all_free(&s1).await;
    wait_all_free(&s0).await;
    let _ = sync.shutdown().await;
    assert!(failures.is_empty(), "{failures:#?}");
}
