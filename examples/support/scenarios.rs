//! Load scenarios shared by `examples/loadgen.rs` and `benches/acquire_release.rs`, written
//! once for any runtime: the acquire+release cycle (and the same loop over any [`Op`]: a
//! mutex, `acquire_many`, a read-write lock), the handoff between two handles, and
//! thousands of tasks waiting on one handle.
//!
//! Connections are counted on the server (`INFO`), never guessed from the client side.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::channel::{mpsc, oneshot};
use futures::future::{abortable, select, AbortHandle, Either, FutureExt};
use futures::StreamExt;
use redis::aio::MultiplexedConnection;
use redis_sync::{Mutex as Lock, Runtime, RwLock, Semaphore};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Res<T> = std::result::Result<T, BoxError>;

/// Runs `fut` for at most `limit` on `rt`'s clock.
pub async fn within<R: Runtime, F: Future>(
    rt: &R,
    limit: Duration,
    what: &str,
    fut: F,
) -> Res<F::Output> {
    let sleep = rt.sleep(limit);
    futures::pin_mut!(fut);
    futures::pin_mut!(sleep);
    match select(fut, sleep).await {
        Either::Left((out, _)) => Ok(out),
        Either::Right(_) => Err(format!("{what}: no progress within {limit:?} (hang?)").into()),
    }
}

/// Runs `fut` as a task of the runtime, where application code runs (rather than on the
/// thread that blocks on the runtime), and waits for its output.
pub async fn spawned<R, T, F>(rt: &R, fut: F) -> Res<T>
where
    R: Runtime,
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    rt.spawn(async move {
        let _ = tx.send(fut.await);
    });
    Ok(rx.await?)
}

/// A connection of our own to watch the server: client counts, blocked clients, PING.
pub struct Monitor {
    conn: MultiplexedConnection,
}

impl Monitor {
    pub async fn connect(client: &redis::Client) -> Res<Self> {
        Ok(Monitor {
            conn: client.get_multiplexed_async_connection().await?,
        })
    }

    async fn info_field(&mut self, section: &str, field: &str) -> Res<u64> {
        let info: redis::InfoDict = redis::cmd("INFO")
            .arg(section)
            .query_async(&mut self.conn)
            .await?;
        info.get(field)
            .ok_or_else(|| format!("INFO {section} has no {field}").into())
    }

    /// Connections the server accepted since it started (counts short-lived ones too).
    pub async fn connections_received(&mut self) -> Res<u64> {
        self.info_field("stats", "total_connections_received").await
    }

    /// Client connections open now.
    pub async fn connected_clients(&mut self) -> Res<u64> {
        self.info_field("clients", "connected_clients").await
    }

    /// Clients blocked in a blocking command now.
    pub async fn blocked_clients(&mut self) -> Res<u64> {
        self.info_field("clients", "blocked_clients").await
    }

    /// Polls (no sleeping: one round trip per check) until more than `baseline` clients
    /// are blocked.
    pub async fn wait_blocked(&mut self, baseline: u64, limit: Duration) -> Res<()> {
        let deadline = Instant::now() + limit;
        while self.blocked_clients().await? <= baseline {
            if Instant::now() > deadline {
                return Err(format!("no client blocked within {limit:?}").into());
            }
        }
        Ok(())
    }

    /// Calls per command since the server started (`INFO commandstats`).
    pub async fn command_calls(&mut self) -> Res<HashMap<String, u64>> {
        let text: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut self.conn)
            .await?;
        Ok(text
            .lines()
            .filter_map(|l| {
                let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = rest
                    .strip_prefix("calls=")?
                    .split(',')
                    .next()?
                    .parse()
                    .ok()?;
                Some((name.to_owned(), calls))
            })
            .collect())
    }

    /// Round-trip times of `n` sequential PINGs on this dedicated connection.
    pub async fn ping_rtts(&mut self, n: usize) -> Res<Vec<Duration>> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let _: String = redis::cmd("PING").query_async(&mut self.conn).await?;
            out.push(t.elapsed());
        }
        Ok(out)
    }
}

/// Connections opened since a baseline, as the server counts them.
pub struct ConnCount {
    received: u64,
    connected: u64,
}

impl ConnCount {
    pub async fn start(mon: &mut Monitor) -> Res<Self> {
        Ok(ConnCount {
            received: mon.connections_received().await?,
            connected: mon.connected_clients().await?,
        })
    }

    /// Connections accepted since the baseline.
    pub async fn opened(&self, mon: &mut Monitor) -> Res<u64> {
        Ok(mon
            .connections_received()
            .await?
            .saturating_sub(self.received))
    }

    /// Connections open now beyond those open at the baseline.
    pub async fn open_now(&self, mon: &mut Monitor) -> Res<u64> {
        Ok(mon
            .connected_clients()
            .await?
            .saturating_sub(self.connected))
    }
}

/// `VmRSS`, `VmHWM`, ... of this process in KiB (0 when /proc is unavailable).
pub fn vm_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The `p`-quantile (0..=1) of sorted samples.
pub fn quantile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// `handles` handles (each with its own connections) on one semaphore of `count` permits.
pub async fn open_handles<R: Runtime>(
    client: &redis::Client,
    name: &str,
    count: u32,
    handles: usize,
) -> Res<Vec<Arc<Semaphore<R>>>> {
    let mut out = Vec::with_capacity(handles);
    for _ in 0..handles.max(1) {
        out.push(Arc::new(Semaphore::<R>::create(client, name, count).await?));
    }
    Ok(out)
}

/// When the cycle stops.
#[derive(Clone, Copy, Debug)]
pub enum Stop {
    /// After this many acquire+release cycles in all (split evenly over the tasks).
    Ops(u64),
    /// When this much time has passed.
    After(Duration),
}

#[derive(Debug)]
pub struct CycleReport {
    pub ops: u64,
    pub elapsed: Duration,
    /// One sample per cycle (acquire, including any wait, then release), sorted; empty
    /// unless recorded.
    pub latencies: Vec<Duration>,
    /// The same samples by the class [`Op::once`] returned (index = class), each sorted;
    /// empty when every cycle was of class 0 (then [`CycleReport::class`] gives
    /// `latencies`).
    pub classes: Vec<Vec<Duration>>,
}

impl CycleReport {
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    /// The samples of `class` (sorted; empty if none).
    pub fn class(&self, class: usize) -> &[Duration] {
        match self.classes.get(class) {
            Some(c) => c,
            None if class == 0 && self.classes.is_empty() => &self.latencies,
            None => &[],
        }
    }
}

/// How a cycle gives its permit back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// `permit.release().await`: waits for the outcome.
    Await,
    /// `drop(permit)`: the release runs in the background.
    Drop,
}

/// One cycle of a load: take something, give it back.
pub trait Op: Send + Sync + 'static {
    /// Runs one cycle; returns its class (for example 0 for a read, 1 for a write), by
    /// which [`CycleReport::classes`] splits the latencies.
    fn once(&self) -> impl Future<Output = Res<usize>> + Send;
}

/// `acquire` then release on a semaphore.
pub struct SemCycle<R: Runtime> {
    pub sem: Arc<Semaphore<R>>,
    pub release: Release,
}

impl<R: Runtime> Op for SemCycle<R> {
    async fn once(&self) -> Res<usize> {
        let permit = self.sem.acquire().await?;
        match self.release {
            Release::Await => permit.release().await?,
            Release::Drop => drop(permit),
        }
        Ok(0)
    }
}

/// `lock()` then unlock.
pub struct MutexCycle<R: Runtime> {
    pub lock: Arc<Lock<R>>,
    pub release: Release,
}

impl<R: Runtime> Op for MutexCycle<R> {
    async fn once(&self) -> Res<usize> {
        let guard = self.lock.lock().await?;
        match self.release {
            Release::Await => guard.unlock().await?,
            Release::Drop => drop(guard),
        }
        Ok(0)
    }
}

/// `acquire_many(k)` then release, all `k` in one call.
pub struct ManyCycle<R: Runtime> {
    pub sem: Arc<Semaphore<R>>,
    pub k: u32,
    pub release: Release,
}

impl<R: Runtime> Op for ManyCycle<R> {
    async fn once(&self) -> Res<usize> {
        let permits = self.sem.acquire_many(self.k).await?;
        match self.release {
            Release::Await => permits.release().await?,
            Release::Drop => drop(permits),
        }
        Ok(0)
    }
}

/// What one would write without `acquire_many`: `k` acquires one after the other, held
/// together, then their `k` releases.
pub struct SinglesCycle<R: Runtime> {
    pub sem: Arc<Semaphore<R>>,
    pub k: u32,
    pub release: Release,
}

impl<R: Runtime> Op for SinglesCycle<R> {
    async fn once(&self) -> Res<usize> {
        let mut held = Vec::with_capacity(self.k as usize);
        for _ in 0..self.k {
            held.push(self.sem.acquire().await?);
        }
        for permit in held {
            match self.release {
                Release::Await => permit.release().await?,
                Release::Drop => drop(permit),
            }
        }
        Ok(0)
    }
}

/// A read (class 0) or, `write_pct` times in 100, a write (class 1).
pub struct RwCycle<R: Runtime> {
    pub lock: Arc<RwLock<R>>,
    pub write_pct: u32,
    pub release: Release,
}

impl<R: Runtime> Op for RwCycle<R> {
    async fn once(&self) -> Res<usize> {
        if fastrand::u32(0..100) < self.write_pct {
            let w = self.lock.write().await?;
            match self.release {
                Release::Await => w.unlock().await?,
                Release::Drop => drop(w),
            }
            Ok(1)
        } else {
            let r = self.lock.read().await?;
            match self.release {
                Release::Await => r.unlock().await?,
                Release::Drop => drop(r),
            }
            Ok(0)
        }
    }
}

/// `tasks` tasks, task `t` on handle `t % sems.len()`, each looping acquire then release.
pub async fn cycle<R: Runtime>(
    rt: &R,
    sems: &[Arc<Semaphore<R>>],
    tasks: usize,
    stop: Stop,
    release: Release,
    record: bool,
) -> Res<CycleReport> {
    let ops: Vec<Arc<SemCycle<R>>> = sems
        .iter()
        .map(|sem| {
            Arc::new(SemCycle {
                sem: sem.clone(),
                release,
            })
        })
        .collect();
    cycle_ops(rt, &ops, tasks, stop, record).await
}

/// `tasks` tasks, task `t` looping `ops[t % ops.len()]`.
pub async fn cycle_ops<R: Runtime, O: Op>(
    rt: &R,
    ops: &[Arc<O>],
    tasks: usize,
    stop: Stop,
    record: bool,
) -> Res<CycleReport> {
    let (start_tx, start_rx) = oneshot::channel::<Instant>();
    let start = start_rx.shared();
    let (done_tx, mut done_rx) = mpsc::unbounded();
    for t in 0..tasks {
        let op = ops[t % ops.len()].clone();
        let (start, done) = (start.clone(), done_tx.clone());
        let quota = match stop {
            Stop::Ops(n) => Some(n / tasks as u64 + u64::from((t as u64) < n % tasks as u64)),
            Stop::After(_) => None,
        };
        rt.spawn(async move {
            let res = match start.await {
                Ok(deadline) => cycles(&*op, quota, deadline, record).await,
                Err(_) => Ok((0, Vec::new())),
            };
            let _ = done.unbounded_send(res);
        });
    }
    drop(done_tx);
    let began = Instant::now();
    let deadline = match stop {
        Stop::Ops(_) => began + Duration::from_secs(3600),
        Stop::After(d) => began + d,
    };
    let _ = start_tx.send(deadline);
    let mut ops = 0;
    let mut classes: Vec<Vec<Duration>> = Vec::new();
    let mut first_err = None;
    let limit = match stop {
        Stop::Ops(_) => Duration::from_secs(600),
        Stop::After(d) => d + Duration::from_secs(60),
    };
    within(rt, limit, "cycle", async {
        while let Some(res) = done_rx.next().await {
            match res {
                Ok((n, lat)) => {
                    ops += n;
                    if classes.len() < lat.len() {
                        classes.resize_with(lat.len(), Vec::new);
                    }
                    for (all, mine) in classes.iter_mut().zip(lat) {
                        all.extend(mine);
                    }
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
    })
    .await?;
    let elapsed = began.elapsed();
    if let Some(e) = first_err {
        return Err(e);
    }
    // One class (the common case): its samples are the latencies, not copied.
    let mut latencies = if classes.len() <= 1 {
        classes.pop().unwrap_or_default()
    } else {
        classes.iter_mut().for_each(|c| c.sort_unstable());
        classes.iter().flatten().copied().collect()
    };
    latencies.sort_unstable();
    Ok(CycleReport {
        ops,
        elapsed,
        latencies,
        classes,
    })
}

/// One task's loop; its latencies by class.
async fn cycles<O: Op>(
    op: &O,
    quota: Option<u64>,
    deadline: Instant,
    record: bool,
) -> Res<(u64, Vec<Vec<Duration>>)> {
    let mut lat: Vec<Vec<Duration>> = Vec::new();
    let mut ops = 0u64;
    loop {
        let t0 = Instant::now();
        match quota {
            Some(q) if ops >= q => break,
            None if t0 >= deadline => break,
            _ => {}
        }
        let class = op.once().await?;
        if record {
            if lat.len() <= class {
                lat.resize_with(class + 1, Vec::new);
            }
            lat[class].push(t0.elapsed());
        }
        ops += 1;
    }
    Ok((ops, lat))
}

/// Two handles of one semaphore of count 1, created separately (each with its own
/// connections), so a permit released by `a` reaches a waiter of `b` through Redis.
pub struct Handoff<R: Runtime> {
    rt: R,
    a: Semaphore<R>,
    b: Arc<Semaphore<R>>,
    pub mon: Monitor,
}

impl<R: Runtime> Handoff<R> {
    pub async fn new(rt: &R, client: &redis::Client, name: &str) -> Res<Self> {
        Ok(Handoff {
            rt: rt.clone(),
            a: Semaphore::<R>::create(client, name, 1).await?,
            b: Arc::new(Semaphore::<R>::create(client, name, 1).await?),
            mon: Monitor::connect(client).await?,
        })
    }

    /// `n` rounds of: `a` holds the permit; a task acquires on `b` and is seen blocked on
    /// the server; `a` releases. Each sample is the time from the call to release until
    /// `b`'s acquire returned in its task.
    pub async fn rounds(&mut self, n: usize) -> Res<Vec<Duration>> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let held = self.a.acquire().await?;
            let blocked = self.mon.blocked_clients().await?;
            let (tx, rx) = oneshot::channel();
            let b = self.b.clone();
            self.rt.spawn(async move {
                let res = b.acquire().await.map(|p| (Instant::now(), p));
                let _ = tx.send(res);
            });
            self.mon
                .wait_blocked(blocked, Duration::from_secs(10))
                .await?;
            let t0 = Instant::now();
            held.release().await?;
            let (t1, permit) = within(&self.rt, Duration::from_secs(10), "handoff", rx).await???;
            out.push(t1.saturating_duration_since(t0));
            permit.release().await?;
        }
        Ok(out)
    }

    pub fn close(&self) {
        self.a.close();
        self.b.close();
    }
}

/// The floor of a handoff through Redis with plain redis-rs: a task blocks in `BLMOVE` on
/// a dedicated connection, another connection pushes; each sample is the time from the
/// push until the blocked task has the element.
pub async fn raw_handoff<R: Runtime>(
    rt: &R,
    client: &redis::Client,
    key: &str,
    n: usize,
) -> Res<Vec<Duration>> {
    let cfg = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    let mut pusher = client.get_multiplexed_async_connection().await?;
    let blocker = client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await?;
    let mut mon = Monitor::connect(client).await?;
    let (src, dst) = (format!("{key}:src"), format!("{key}:dst"));
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let blocked = mon.blocked_clients().await?;
        let (tx, rx) = oneshot::channel();
        let (mut c, src2, dst2) = (blocker.clone(), src.clone(), dst.clone());
        rt.spawn(async move {
            let r: redis::RedisResult<Option<String>> = redis::cmd("BLMOVE")
                .arg(&src2)
                .arg(&dst2)
                .arg("LEFT")
                .arg("RIGHT")
                .arg(5)
                .query_async(&mut c)
                .await;
            let _ = tx.send(r.map(|v| (Instant::now(), v)));
        });
        mon.wait_blocked(blocked, Duration::from_secs(10)).await?;
        let t0 = Instant::now();
        let _: i64 = redis::cmd("RPUSH")
            .arg(&src)
            .arg("42")
            .query_async(&mut pusher)
            .await?;
        let (t1, got) = within(rt, Duration::from_secs(10), "raw handoff", rx).await???;
        if got.is_none() {
            return Err("raw handoff: BLMOVE timed out".into());
        }
        out.push(t1.saturating_duration_since(t0));
    }
    let _: i64 = redis::cmd("DEL")
        .arg(&src)
        .arg(&dst)
        .query_async(&mut pusher)
        .await?;
    Ok(out)
}

#[derive(Debug)]
enum Outcome {
    Done,
    Aborted,
    Failed(String),
}

#[derive(Debug, Default)]
pub struct WaitersReport {
    pub tasks: usize,
    /// Tasks that got the permit.
    pub served: usize,
    /// Tasks cancelled while queued, before the permit was released.
    pub cancelled_queued: usize,
    /// Tasks cancelled while the permit went down the queue: served before the cancel
    /// landed, or not.
    pub racing_served: usize,
    pub racing_cancelled: usize,
    /// Tasks never cancelled that were not served: must be 0.
    pub live_unserved: usize,
    /// Served in the order they queued.
    pub fifo: bool,
    pub errors: Vec<String>,
    /// Connections open beyond the baseline while every task waited.
    pub conns_waiting: u64,
    /// Connections accepted by the server from the creation of the handle to the end.
    pub conns_opened: u64,
    pub queue_time: Duration,
    pub drain_time: Duration,
    pub rss_before_kb: u64,
    pub rss_queued_kb: u64,
    pub hwm_kb: u64,
    pub count: Option<u32>,
    pub free: usize,
    pub held: usize,
}

impl WaitersReport {
    /// Every check of the scenario.
    pub fn ok(&self) -> bool {
        self.fifo
            && self.errors.is_empty()
            && self.live_unserved == 0
            && self.count == Some(1)
            && self.free + self.held == 1
            && self.free == 1
    }
}

/// `n` tasks queue one at a time behind the only permit of one handle (each is in the
/// local queue before the next starts), every `cancel_every`-th is cancelled while
/// queued, then the permit is released while a canceller races the grants by cancelling
/// every `race_every`-th task. Checks FIFO order, that every live task is served, and
/// that the permit is back in the pool at the end.
pub async fn waiters<R: Runtime>(
    rt: &R,
    client: &redis::Client,
    name: &str,
    n: usize,
    cancel_every: usize,
    race_every: usize,
) -> Res<WaitersReport> {
    let cancelled_queued = |i: usize| cancel_every > 0 && i % cancel_every == cancel_every - 1;
    let racing =
        |i: usize| race_every > 0 && i % race_every == race_every / 2 && !cancelled_queued(i);
    let mut mon = Monitor::connect(client).await?;
    let conns = ConnCount::start(&mut mon).await?;
    let mut rep = WaitersReport {
        tasks: n,
        rss_before_kb: vm_kb("VmRSS"),
        ..WaitersReport::default()
    };
    let sem = Arc::new(Semaphore::<R>::create(client, name, 1).await?);
    let holder = sem.acquire().await?;
    let blocked = mon.blocked_clients().await?;
    let order = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let (done_tx, mut done_rx) = mpsc::unbounded::<(usize, Outcome)>();
    let mut aborts: Vec<AbortHandle> = Vec::with_capacity(n);
    let t_queue = Instant::now();
    for i in 0..n {
        let (sem, order, done) = (sem.clone(), order.clone(), done_tx.clone());
        let (inner, abort) = abortable(async move {
            let permit = sem.acquire().await?;
            order.lock().unwrap_or_else(|e| e.into_inner()).push(i);
            permit.release().await
        });
        let mut task: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
            let outcome = match inner.await {
                Ok(Ok(())) => Outcome::Done,
                Ok(Err(e)) => Outcome::Failed(e.to_string()),
                Err(_) => Outcome::Aborted,
            };
            let _ = done.unbounded_send((i, outcome));
        });
        // The first poll runs the acquire up to its wait in the handle's local queue
        // (synchronously once a waiter is queued), so task i queues before task i + 1.
        if futures::poll!(task.as_mut()).is_pending() {
            rt.spawn(task);
        }
        if i == 0 {
            // The very first waiter makes a round trip before it queues; its queueing is
            // visible as a blocking connection on the server.
            mon.wait_blocked(blocked, Duration::from_secs(10)).await?;
        }
        aborts.push(abort);
    }
    rep.queue_time = t_queue.elapsed();
    rep.rss_queued_kb = vm_kb("VmRSS");
    rep.conns_waiting = conns.open_now(&mut mon).await?;

    let mut outcomes: Vec<Option<Outcome>> = (0..n).map(|_| None).collect();
    let mut pending = n;
    let cancel_now: Vec<usize> = (0..n).filter(|&i| cancelled_queued(i)).collect();
    for &i in &cancel_now {
        aborts[i].abort();
    }
    // Let the cancelled tasks finish before the permit moves, so they are cancelled
    // while queued and nothing else.
    within(
        rt,
        Duration::from_secs(60),
        "cancel queued waiters",
        async {
            let mut left = cancel_now.len();
            while left > 0 {
                let Some((i, o)) = done_rx.next().await else {
                    break;
                };
                if cancelled_queued(i) {
                    left -= 1;
                }
                outcomes[i] = Some(o);
                pending -= 1;
            }
        },
    )
    .await?;

    let racers: Vec<(usize, AbortHandle)> = (0..n)
        .filter(|&i| racing(i))
        .map(|i| (i, aborts[i].clone()))
        .collect();
    let t_drain = Instant::now();
    holder.release().await?;
    let stop_racing = Arc::new(AtomicBool::new(false));
    {
        // Cancel the racers just ahead of the last task served, so that cancels land
        // while their permit is on its way to them.
        let (rt2, stop, order) = (rt.clone(), stop_racing.clone(), order.clone());
        let window = 3 * race_every;
        rt.spawn(async move {
            let mut next = 0;
            while next < racers.len() && !stop.load(Ordering::Relaxed) {
                let last = order
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .last()
                    .copied()
                    .unwrap_or(0);
                while next < racers.len() && racers[next].0 <= last + window {
                    racers[next].1.abort();
                    next += 1;
                }
                rt2.sleep(Duration::from_micros(200)).await;
            }
        });
    }
    within(rt, Duration::from_secs(120), "drain waiters", async {
        while pending > 0 {
            let Some((i, o)) = done_rx.next().await else {
                break;
            };
            outcomes[i] = Some(o);
            pending -= 1;
        }
    })
    .await?;
    rep.drain_time = t_drain.elapsed();
    stop_racing.store(true, Ordering::Relaxed);

    let order = std::mem::take(&mut *order.lock().unwrap_or_else(|e| e.into_inner()));
    rep.served = order.len();
    rep.fifo = order.windows(2).all(|w| w[0] < w[1]);
    let served: HashSet<usize> = order.iter().copied().collect();
    for (i, o) in outcomes.iter().enumerate() {
        match o {
            Some(Outcome::Failed(e)) => rep.errors.push(format!("task {i}: {e}")),
            None => rep.errors.push(format!("task {i}: no outcome")),
            _ => {}
        }
        if cancelled_queued(i) {
            rep.cancelled_queued += 1;
            if served.contains(&i) {
                rep.errors
                    .push(format!("task {i} was served after its cancel"));
            }
        } else if racing(i) {
            if served.contains(&i) {
                rep.racing_served += 1;
            } else {
                rep.racing_cancelled += 1;
            }
        } else if !served.contains(&i) || !matches!(o, Some(Outcome::Done)) {
            rep.live_unserved += 1;
        }
    }
    // Permits dropped by cancelled tasks go back on the runtime: let them settle.
    let settle = Instant::now() + Duration::from_secs(5);
    loop {
        let st = sem.inspect().await?;
        (rep.count, rep.free, rep.held) = (st.count, st.free, st.held());
        if (rep.free == 1 && rep.held == 0) || Instant::now() > settle {
            break;
        }
        rt.sleep(Duration::from_millis(10)).await;
    }
    rep.conns_opened = conns.opened(&mut mon).await?;
    rep.hwm_kb = vm_kb("VmHWM");
    sem.close();
    Ok(rep)
}
