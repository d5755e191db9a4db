//! The `loadgen` modes for the primitives beyond the semaphore's cycle: `mutex`, `many`,
//! `rwlock` and `fanout`. Each measures its baseline in the same process, on the same
//! redis-server, in the same run, so that the ratios it prints hold on a noisy machine:
//!
//! - `mutex`: lock/unlock against acquire/release on a semaphore of count 1, same tasks
//!   and handles, in `--pairs` pairs whose order alternates;
//! - `many`: `acquire_many(k)` + release against `k` single acquires then their `k`
//!   releases (when that cannot deadlock), pairs as above;
//! - `rwlock`: a mix of reads and writes against acquire/release on a semaphore of
//!   `--max-readers` permits (what a read is made of), pairs as above;
//! - `fanout`: the wake-up latency of the last of `--waiters` tasks waiting on a `Notify`
//!   after `set()`, against the PING round trip on a dedicated connection (and the plain
//!   redis-rs handoff RPUSH → BLMOVE) measured in the same run.
//!
//! The output formats are documented at the top of `examples/loadgen.rs`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use futures::{FutureExt, StreamExt};
use redis_sync::{Coordinator, Mutex, Notify, Runtime, RwLock, Semaphore};

use super::nodes::{Nodes, NodesDelta};
use super::scenarios::{
    self, micros, quantile, within, ConnCount, CycleReport, ManyCycle, Monitor, MutexCycle, Op,
    Res, RwCycle, SemCycle, SinglesCycle, Stop,
};
use crate::{Args, Topo};

/// Where the handles of a run come from: one coordinator (one shared connection plus its
/// pool of blocking connections), or the client (each handle its own connections).
enum Maker<R: Runtime> {
    Coordinator(Coordinator<R>),
    Client(Box<redis::Client>),
}

impl<R: Runtime> Maker<R> {
    async fn new(args: &Args, topo: &Topo, max_blocking: usize) -> Res<Self> {
        Ok(if args.coordinator {
            Maker::Coordinator(topo.coordinator::<R>(max_blocking).await?)
        } else {
            Maker::Client(Box::new(topo.client()?.clone()))
        })
    }

    async fn semaphore(&self, name: &str, count: u32) -> Res<Semaphore<R>> {
        Ok(match self {
            Maker::Coordinator(c) => c.semaphore(name).create(count).await?,
            Maker::Client(c) => Semaphore::<R>::create(c, name, count).await?,
        })
    }

    async fn mutex(&self, name: &str) -> Res<Mutex<R>> {
        Ok(match self {
            Maker::Coordinator(c) => c.mutex(name).open().await?,
            Maker::Client(c) => Mutex::<R>::open(c, name).await?,
        })
    }

    async fn rwlock(&self, name: &str, max_readers: u32) -> Res<RwLock<R>> {
        Ok(match self {
            Maker::Coordinator(c) => c.rwlock(name).max_readers(max_readers).open().await?,
            Maker::Client(c) => {
                RwLock::<R>::builder(c, name)
                    .max_readers(max_readers)
                    .open()
                    .await?
            }
        })
    }

    async fn notify(&self, name: &str) -> Res<Notify<R>> {
        Ok(match self {
            Maker::Coordinator(c) => c.notify(name).open().await?,
            Maker::Client(c) => Notify::<R>::open(c, name).await?,
        })
    }

    async fn shutdown(self) -> Res<()> {
        if let Maker::Coordinator(c) = self {
            c.shutdown().await?;
        }
        Ok(())
    }
}

/// `n` handles made by `make`, wrapped for the tasks.
async fn handles<T, F, Fut>(n: usize, make: F) -> Res<Vec<Arc<T>>>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Res<T>>,
{
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(Arc::new(make().await?));
    }
    Ok(out)
}

/// One measured run of a load, with what the server counted meanwhile.
struct Phase {
    report: CycleReport,
    /// `EVALSHA` and `BLMOVE` calls per cycle.
    evalsha: f64,
    blmove: f64,
    /// Connections the server accepted during the run.
    opened: u64,
}

impl Phase {
    fn ops_per_sec(&self) -> f64 {
        self.report.ops_per_sec()
    }

    fn p(&self, q: f64) -> f64 {
        micros(quantile(&self.report.latencies, q))
    }

    fn class_p(&self, class: usize, q: f64) -> f64 {
        micros(quantile(self.report.class(class), q))
    }

    fn class_per_sec(&self, class: usize) -> f64 {
        self.report.class(class).len() as f64 / self.report.elapsed.as_secs_f64()
    }

    fn line(&self) -> String {
        format!(
            "ops_per_sec={:.0} p50_us={:.1} p99_us={:.1} evalsha={:.3} blmove={:.3} opened={}",
            self.ops_per_sec(),
            self.p(0.50),
            self.p(0.99),
            self.evalsha,
            self.blmove,
            self.opened,
        )
    }
}

async fn phase<R: Runtime, O: Op>(
    rt: &R,
    nodes: &mut Nodes,
    ops: &[Arc<O>],
    tasks: usize,
    secs: f64,
) -> Res<Phase> {
    let before = nodes.snapshot().await?;
    let report = scenarios::cycle_ops(
        rt,
        ops,
        tasks,
        Stop::After(Duration::from_secs_f64(secs)),
        true,
    )
    .await?;
    let after = nodes.snapshot().await?;
    let d = NodesDelta::between(nodes, &before, &after);
    let per = |n: u64| n as f64 / report.ops.max(1) as f64;
    Ok(Phase {
        evalsha: per(d.calls_of("evalsha")),
        blmove: per(d.calls_of("blmove")),
        opened: d.opened_total(),
        report,
    })
}

/// Connections the server accepted while `fut` ran (creating handles).
async fn opened_by<T>(
    nodes: &mut Nodes,
    fut: impl std::future::Future<Output = Res<T>>,
) -> Res<(T, u64)> {
    let before = nodes.snapshot().await?;
    let out = fut.await?;
    let after = nodes.snapshot().await?;
    Ok((
        out,
        NodesDelta::between(nodes, &before, &after).opened_total(),
    ))
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn list(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.2}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `pairs` pairs of (subject, baseline) runs, the order alternating (subject first in odd
/// pairs); prints one line per run. Returns the runs of each.
async fn pairs<R: Runtime, A: Op, B: Op>(
    rt: &R,
    args: &Args,
    nodes: &mut Nodes,
    tasks: usize,
    (name_a, a): (&str, &[Arc<A>]),
    (name_b, b): (&str, Option<&[Arc<B>]>),
) -> Res<(Vec<Phase>, Vec<Phase>)> {
    let (mut pa, mut pb) = (Vec::new(), Vec::new());
    for i in 1..=args.pairs {
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let load = load
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ");
        println!("loadgen: pair {i}/{} (load {load})", args.pairs);
        let a_first = i % 2 == 1;
        for step in 0..2 {
            if (step == 0) == a_first {
                let p = phase(rt, nodes, a, tasks, args.secs).await?;
                println!("loadgen: pair {i} {name_a}: {}", p.line());
                pa.push(p);
            } else if let Some(b) = b {
                let p = phase(rt, nodes, b, tasks, args.secs).await?;
                println!("loadgen: pair {i} {name_b}: {}", p.line());
                pb.push(p);
            }
        }
    }
    Ok((pa, pb))
}

/// Per-pair ratios `f(a) / f(b)`.
fn ratios(a: &[Phase], b: &[Phase], f: impl Fn(&Phase) -> f64) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| f(x) / f(y)).collect()
}

fn med(v: &[Phase], f: impl Fn(&Phase) -> f64) -> f64 {
    median(v.iter().map(f).collect())
}

/// `--mode mutex`.
pub async fn mutex<R: Runtime>(rt: &R, args: &Args, topo: &Topo) -> Res<()> {
    let tasks = args.tasks.unwrap_or(4);
    let h = args.handles;
    let max_blocking = args.max_blocking.unwrap_or(64);
    println!(
        "loadgen: mode=mutex runtime={} tasks={tasks} handles={h} coordinator={} secs={} pairs={} release={:?}",
        args.runtime,
        u8::from(args.coordinator),
        args.secs,
        args.pairs,
        args.release
    );
    let mut nodes = Nodes::connect(&topo.nodes()).await?;
    let maker = Maker::<R>::new(args, topo, max_blocking).await?;
    let (name_m, name_s) = (
        format!("{}:mutex", args.name),
        format!("{}:sem1", args.name),
    );
    let (locks, conn_m) = opened_by(&mut nodes, handles(h, || maker.mutex(&name_m))).await?;
    let (sems, conn_s) = opened_by(&mut nodes, handles(h, || maker.semaphore(&name_s, 1))).await?;
    let release = args.release;
    let mops: Vec<_> = locks
        .iter()
        .map(|lock| {
            Arc::new(MutexCycle {
                lock: lock.clone(),
                release,
            })
        })
        .collect();
    let sops: Vec<_> = sems
        .iter()
        .map(|sem| {
            Arc::new(SemCycle {
                sem: sem.clone(),
                release,
            })
        })
        .collect();
    let (m, s) = pairs(
        rt,
        args,
        &mut nodes,
        tasks,
        ("mutex", mops.as_slice()),
        ("semaphore1", Some(sops.as_slice())),
    )
    .await?;
    let r = ratios(&m, &s, Phase::ops_per_sec);
    let r50 = ratios(&m, &s, |p| p.p(0.50));
    let conn_m = conn_m + m.iter().map(|p| p.opened).sum::<u64>();
    let conn_s = conn_s + s.iter().map(|p| p.opened).sum::<u64>();
    let state = locks[0].inspect().await?;
    maker.shutdown().await?;
    println!(
        "loadgen: mutex evalsha={:.3} blmove={:.3} per cycle; semaphore1 evalsha={:.3} blmove={:.3}; \
         mutex after: free={} held={} next_fence={}",
        med(&m, |p| p.evalsha),
        med(&m, |p| p.blmove),
        med(&s, |p| p.evalsha),
        med(&s, |p| p.blmove),
        state.free,
        state.held(),
        state.next_fence.map_or("none".into(), |f| f.to_string()),
    );
    println!(
        "mutex: tasks={tasks} handles={h} coordinator={} pairs={} ops_per_sec={:.0} p50_us={:.1} p99_us={:.1} \
         sem1_ops_per_sec={:.0} sem1_p50_us={:.1} sem1_p99_us={:.1} ratio={:.3} ratios={} p50_ratio={:.3} \
         connections={conn_m} sem1_connections={conn_s}",
        u8::from(args.coordinator),
        args.pairs,
        med(&m, Phase::ops_per_sec),
        med(&m, |p| p.p(0.50)),
        med(&m, |p| p.p(0.99)),
        med(&s, Phase::ops_per_sec),
        med(&s, |p| p.p(0.50)),
        med(&s, |p| p.p(0.99)),
        median(r.clone()),
        list(&r),
        median(r50),
    );
    Ok(())
}

/// `--mode many`.
pub async fn many<R: Runtime>(rt: &R, args: &Args, topo: &Topo) -> Res<()> {
    let tasks = args.tasks.unwrap_or(1);
    let count = args.count.unwrap_or(8);
    let (k, h) = (args.k, args.handles);
    let max_blocking = args.max_blocking.unwrap_or(64);
    if k > count {
        return Err(format!("--k {k} is above --count {count}").into());
    }
    // k singles held together deadlock once every task can hold k - 1 and the pool is
    // empty: only run them when that cannot happen.
    let singles_ok = (tasks as u64) * u64::from(k - 1) < u64::from(count);
    println!(
        "loadgen: mode=many runtime={} k={k} count={count} tasks={tasks} handles={h} coordinator={} \
         secs={} pairs={} release={:?} baseline={}",
        args.runtime,
        u8::from(args.coordinator),
        args.secs,
        args.pairs,
        args.release,
        if singles_ok {
            "singles"
        } else {
            "skipped(tasks*(k-1)>=count: k singles held together could deadlock)"
        },
    );
    let mut nodes = Nodes::connect(&topo.nodes()).await?;
    let maker = Maker::<R>::new(args, topo, max_blocking).await?;
    let (name_m, name_s) = (
        format!("{}:many", args.name),
        format!("{}:singles", args.name),
    );
    let (msems, conn_m) =
        opened_by(&mut nodes, handles(h, || maker.semaphore(&name_m, count))).await?;
    let (ssems, conn_s) =
        opened_by(&mut nodes, handles(h, || maker.semaphore(&name_s, count))).await?;
    let release = args.release;
    let mops: Vec<_> = msems
        .iter()
        .map(|sem| {
            Arc::new(ManyCycle {
                sem: sem.clone(),
                k,
                release,
            })
        })
        .collect();
    let sops: Vec<_> = ssems
        .iter()
        .map(|sem| {
            Arc::new(SinglesCycle {
                sem: sem.clone(),
                k,
                release,
            })
        })
        .collect();
    let (m, s) = pairs(
        rt,
        args,
        &mut nodes,
        tasks,
        ("many", mops.as_slice()),
        ("singles", singles_ok.then_some(sops.as_slice())),
    )
    .await?;
    let state = msems[0].inspect().await?;
    maker.shutdown().await?;
    let conn_m = conn_m + m.iter().map(|p| p.opened).sum::<u64>();
    println!(
        "loadgen: many evalsha={:.3} blmove={:.3} per cycle; after: free={} held={} gate_holder={:?}",
        med(&m, |p| p.evalsha),
        med(&m, |p| p.blmove),
        state.free,
        state.held(),
        state.gate_holder,
    );
    let base = if singles_ok {
        let r = ratios(&m, &s, Phase::ops_per_sec);
        let r50 = ratios(&m, &s, |p| p.p(0.50));
        println!(
            "loadgen: singles evalsha={:.3} blmove={:.3} per cycle (of {k} permits)",
            med(&s, |p| p.evalsha),
            med(&s, |p| p.blmove),
        );
        format!(
            "singles_ops_per_sec={:.0} singles_p50_us={:.1} singles_p99_us={:.1} ratio={:.3} ratios={} \
             p50_ratio={:.3} singles_connections={}",
            med(&s, Phase::ops_per_sec),
            med(&s, |p| p.p(0.50)),
            med(&s, |p| p.p(0.99)),
            median(r.clone()),
            list(&r),
            median(r50),
            conn_s + s.iter().map(|p| p.opened).sum::<u64>(),
        )
    } else {
        "singles=skipped".to_owned()
    };
    println!(
        "many: k={k} count={count} tasks={tasks} handles={h} coordinator={} pairs={} ops_per_sec={:.0} \
         permits_per_sec={:.0} p50_us={:.1} p99_us={:.1} connections={conn_m} {base}",
        u8::from(args.coordinator),
        args.pairs,
        med(&m, Phase::ops_per_sec),
        med(&m, Phase::ops_per_sec) * f64::from(k),
        med(&m, |p| p.p(0.50)),
        med(&m, |p| p.p(0.99)),
    );
    Ok(())
}

/// `--mode rwlock`.
pub async fn rwlock<R: Runtime>(rt: &R, args: &Args, topo: &Topo) -> Res<()> {
    let tasks = args.tasks.unwrap_or(8);
    let (h, max_readers, write_pct) = (args.handles, args.max_readers, args.write_pct);
    let max_blocking = args.max_blocking.unwrap_or(64);
    println!(
        "loadgen: mode=rwlock runtime={} tasks={tasks} handles={h} coordinator={} max_readers={max_readers} \
         write_pct={write_pct} secs={} pairs={} release={:?}",
        args.runtime,
        u8::from(args.coordinator),
        args.secs,
        args.pairs,
        args.release
    );
    let mut nodes = Nodes::connect(&topo.nodes()).await?;
    let maker = Maker::<R>::new(args, topo, max_blocking).await?;
    let (name_l, name_s) = (format!("{}:rw", args.name), format!("{}:semr", args.name));
    let (locks, conn_l) = opened_by(
        &mut nodes,
        handles(h, || maker.rwlock(&name_l, max_readers)),
    )
    .await?;
    let (sems, conn_s) = opened_by(
        &mut nodes,
        handles(h, || maker.semaphore(&name_s, max_readers)),
    )
    .await?;
    let release = args.release;
    let lops: Vec<_> = locks
        .iter()
        .map(|lock| {
            Arc::new(RwCycle {
                lock: lock.clone(),
                write_pct,
                release,
            })
        })
        .collect();
    let sops: Vec<_> = sems
        .iter()
        .map(|sem| {
            Arc::new(SemCycle {
                sem: sem.clone(),
                release,
            })
        })
        .collect();
    let (l, s) = pairs(
        rt,
        args,
        &mut nodes,
        tasks,
        ("rwlock", lops.as_slice()),
        ("semaphore", Some(sops.as_slice())),
    )
    .await?;
    for (i, p) in l.iter().enumerate() {
        println!(
            "loadgen: pair {} rwlock reads: per_sec={:.0} p50_us={:.1} p99_us={:.1}; writes: per_sec={:.0} \
             p50_us={:.1} p99_us={:.1}",
            i + 1,
            p.class_per_sec(0),
            p.class_p(0, 0.50),
            p.class_p(0, 0.99),
            p.class_per_sec(1),
            p.class_p(1, 0.50),
            p.class_p(1, 0.99),
        );
    }
    let state = locks[0].inspect().await?;
    maker.shutdown().await?;
    let r = ratios(&l, &s, Phase::ops_per_sec);
    let r50 = ratios(&l, &s, |p| p.class_p(0, 0.50));
    println!(
        "loadgen: rwlock evalsha={:.3} blmove={:.3} per cycle; semaphore evalsha={:.3} blmove={:.3}; \
         after: readers={} writer={:?} writer_waiting={:?} last_write_fence={}",
        med(&l, |p| p.evalsha),
        med(&l, |p| p.blmove),
        med(&s, |p| p.evalsha),
        med(&s, |p| p.blmove),
        state.readers,
        state.writer,
        state.writer_waiting,
        state.last_write_fence,
    );
    println!(
        "rwlock: tasks={tasks} handles={h} coordinator={} max_readers={max_readers} write_pct={write_pct} \
         pairs={} ops_per_sec={:.0} reads_per_sec={:.0} writes_per_sec={:.0} read_p50_us={:.1} \
         read_p99_us={:.1} write_p50_us={:.1} write_p99_us={:.1} sem_ops_per_sec={:.0} sem_p50_us={:.1} \
         sem_p99_us={:.1} ratio={:.3} ratios={} read_p50_ratio={:.3} connections={} sem_connections={}",
        u8::from(args.coordinator),
        args.pairs,
        med(&l, Phase::ops_per_sec),
        med(&l, |p| p.class_per_sec(0)),
        med(&l, |p| p.class_per_sec(1)),
        med(&l, |p| p.class_p(0, 0.50)),
        med(&l, |p| p.class_p(0, 0.99)),
        med(&l, |p| p.class_p(1, 0.50)),
        med(&l, |p| p.class_p(1, 0.99)),
        med(&s, Phase::ops_per_sec),
        med(&s, |p| p.p(0.50)),
        med(&s, |p| p.p(0.99)),
        median(r.clone()),
        list(&r),
        median(r50),
        conn_l + l.iter().map(|p| p.opened).sum::<u64>(),
        conn_s + s.iter().map(|p| p.opened).sum::<u64>(),
    );
    Ok(())
}

/// One round of `fanout`: when `set()` was called and when each waiter woke.
struct FanRound {
    first: Duration,
    last: Duration,
    set: Duration,
    open: u64,
}

/// Every waiter waits (registered on its handle, every handle's blocking wait on the
/// server), then `set()`; the time from the call to `set()` to each waiter's return.
async fn fan_round<R: Runtime>(
    rt: &R,
    mon: &mut Monitor,
    conns: &ConnCount,
    handles: &[Notify<R>],
    waiters: usize,
) -> Res<FanRound> {
    handles[0].clear().await?;
    let blocked0 = mon.blocked_clients().await?;
    let (tx, mut rx) = mpsc::unbounded();
    for i in 0..waiters {
        let (notify, tx) = (handles[i % handles.len()].clone(), tx.clone());
        rt.spawn(async move {
            let woke = notify.wait().await.map(|()| Instant::now());
            let _ = tx.unbounded_send(woke);
        });
    }
    drop(tx);
    let want = blocked0 + handles.len() as u64;
    within(
        rt,
        Duration::from_secs(30),
        "fanout: waiters queue",
        async {
            loop {
                if handles.iter().map(Notify::waiting).sum::<usize>() < waiters {
                    rt.sleep(Duration::from_micros(100)).await;
                } else if mon.blocked_clients().await? >= want {
                    return Ok::<_, scenarios::BoxError>(());
                }
            }
        },
    )
    .await??;
    let open = conns.open_now(mon).await?;
    let t0 = Instant::now();
    handles[0].set().await?;
    let set = t0.elapsed();
    let (mut first, mut last) = (Duration::MAX, Duration::ZERO);
    let mut got = 0;
    within(rt, Duration::from_secs(30), "fanout: wake-ups", async {
        while let Some(woke) = rx.next().await {
            let d = woke?.saturating_duration_since(t0);
            first = first.min(d);
            last = last.max(d);
            got += 1;
        }
        Ok::<_, scenarios::BoxError>(())
    })
    .await??;
    if got != waiters {
        return Err(format!("fanout: {got} of {waiters} waiters woke").into());
    }
    Ok(FanRound {
        first,
        last,
        set,
        open,
    })
}

/// The in-process floor of a fan-out on this runtime: `waiters` tasks wait on one shared
/// future (each polled once, so registered, before it fires); the time from firing it until
/// the last task has returned.
async fn local_round<R: Runtime>(rt: &R, waiters: usize) -> Res<Duration> {
    let (fire, rx) = futures::channel::oneshot::channel::<()>();
    let shared = rx.shared();
    let ready = Arc::new(AtomicUsize::new(0));
    let (tx, mut woke) = mpsc::unbounded();
    for _ in 0..waiters {
        let (mut fut, ready, tx) = (shared.clone(), ready.clone(), tx.clone());
        rt.spawn(async move {
            if futures::poll!(&mut fut).is_pending() {
                ready.fetch_add(1, Ordering::Release);
                let _ = fut.await;
            }
            let _ = tx.unbounded_send(Instant::now());
        });
    }
    drop(tx);
    within(
        rt,
        Duration::from_secs(30),
        "fanout: local waiters",
        async {
            while ready.load(Ordering::Acquire) < waiters {
                rt.sleep(Duration::from_micros(100)).await;
            }
        },
    )
    .await?;
    let t0 = Instant::now();
    let _ = fire.send(());
    let mut last = Duration::ZERO;
    within(
        rt,
        Duration::from_secs(30),
        "fanout: local wake-ups",
        async {
            while let Some(t) = woke.next().await {
                last = last.max(t.saturating_duration_since(t0));
            }
        },
    )
    .await?;
    Ok(last)
}

/// `--mode fanout`.
pub async fn fanout<R: Runtime>(rt: &R, args: &Args, topo: &Topo) -> Res<()> {
    let client = topo.client()?;
    let (n, h) = (args.waiters, args.handles);
    let rounds = args.rounds.unwrap_or(200);
    let max_blocking = args
        .max_blocking
        .unwrap_or(h.max(redis_sync::DEFAULT_COORDINATOR_BLOCKING_CONNECTIONS));
    if h > n {
        return Err(format!("--handles {h} is above --waiters {n}").into());
    }
    println!(
        "loadgen: mode=fanout runtime={} waiters={n} handles={h} coordinator={} rounds={rounds}",
        args.runtime,
        u8::from(args.coordinator),
    );
    let mut mon = Monitor::connect(client).await?;
    let conns = ConnCount::start(&mut mon).await?;
    let maker = Maker::<R>::new(args, topo, max_blocking).await?;
    let name = format!("{}:fanout", args.name);
    let mut handles = Vec::with_capacity(h);
    for _ in 0..h {
        handles.push(maker.notify(&name).await?);
    }
    // Warm up: scripts loaded, blocking connections opened.
    for _ in 0..rounds.min(10) {
        fan_round(rt, &mut mon, &conns, &handles, n).await?;
    }
    let calls0 = mon.command_calls().await?;
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        samples.push(fan_round(rt, &mut mon, &conns, &handles, n).await?);
    }
    let calls1 = mon.command_calls().await?;
    let opened = conns.opened(&mut mon).await?;
    let open_peak = samples.iter().map(|s| s.open).max().unwrap_or(0);
    handles[0].clear().await?;
    drop(handles);
    maker.shutdown().await?;
    // The baselines, after the connections were counted: PING round trips on the
    // monitor's dedicated connection, and the plain redis-rs handoff to one waiter.
    let mut rtts = mon.ping_rtts(2000).await?;
    let mut raw =
        scenarios::raw_handoff(rt, client, &format!("{name}:raw"), rounds.max(200)).await?;
    rtts.extend(mon.ping_rtts(2000).await?);
    let mut local = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        local.push(local_round(rt, n).await?);
    }
    rtts.sort_unstable();
    raw.sort_unstable();
    local.sort_unstable();
    let per_round = |cmd: &str| {
        let d = calls1.get(cmd).copied().unwrap_or(0) - calls0.get(cmd).copied().unwrap_or(0);
        d as f64 / rounds as f64
    };
    let sorted = |f: fn(&FanRound) -> Duration| {
        let mut v: Vec<Duration> = samples.iter().map(f).collect();
        v.sort_unstable();
        v
    };
    let (last, first, set) = (sorted(|s| s.last), sorted(|s| s.first), sorted(|s| s.set));
    let rtt = quantile(&rtts, 0.5);
    let expected = if args.coordinator { 1 + h } else { 2 * h } as u64;
    println!(
        "loadgen: ping_rtt_p50_us={:.1} ping_rtt_p99_us={:.1} (redis-rs, dedicated connection, {} pings)",
        micros(rtt),
        micros(quantile(&rtts, 0.99)),
        rtts.len()
    );
    println!(
        "loadgen: raw_redis_rs_handoff_p50_us={:.1} p99_us={:.1} (RPUSH on one connection to BLMOVE on another, {} samples)",
        micros(quantile(&raw, 0.5)),
        micros(quantile(&raw, 0.99)),
        raw.len()
    );
    println!(
        "loadgen: local_last_p50_us={:.1} local_last_p99_us={:.1} (the same {n} tasks woken in process \
         by one shared future, no Redis: this runtime's floor)",
        micros(quantile(&local, 0.5)),
        micros(quantile(&local, 0.99)),
    );
    println!(
        "loadgen: set_call_p50_us={:.1} first_p50_us={:.1} first_p99_us={:.1} last_p90_us={:.1} \
         commands_per_round: evalsha={:.2} blmove={:.2} client_unblock={:.2} (waiters' reads, clear and set included)",
        micros(quantile(&set, 0.5)),
        micros(quantile(&first, 0.5)),
        micros(quantile(&first, 0.99)),
        micros(quantile(&last, 0.9)),
        per_round("evalsha"),
        per_round("blmove"),
        per_round("client|unblock"),
    );
    println!(
        "fanout: waiters={n} handles={h} coordinator={} rounds={rounds} last_p50_us={:.1} last_p99_us={:.1} \
         last_max_us={:.1} first_p50_us={:.1} rtt_p50_us={:.1} last_p50_in_rtts={:.2} \
         raw_handoff_p50_us={:.1} local_last_p50_us={:.1} connections={opened} expected_connections={expected} \
         open_while_waiting={open_peak} connections_ok={}",
        u8::from(args.coordinator),
        micros(quantile(&last, 0.5)),
        micros(quantile(&last, 0.99)),
        micros(quantile(&last, 1.0)),
        micros(quantile(&first, 0.5)),
        micros(rtt),
        quantile(&last, 0.5).as_secs_f64() / rtt.as_secs_f64(),
        micros(quantile(&raw, 0.5)),
        micros(quantile(&local, 0.5)),
        opened == expected && open_peak == expected,
    );
    Ok(())
}
