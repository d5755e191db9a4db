//! Criterion benches of the semaphore, on tokio and (with `--features smol`) on smol:
//!
//! - `ping_rtt`: one PING on a dedicated connection, the round trip the others compare to;
//! - `seq_1task_count1`: one task, count 1, acquire then release in a loop;
//! - `64tasks_count8`: 64 tasks sharing one handle of a semaphore of count 8;
//! - `mutex_1task`: one task, `lock()` then `unlock().await` on a `Mutex` in a loop (compare
//!   with `seq_1task_count1`, a semaphore of count 1);
//! - `many4_count8_1task`: one task, `acquire_many(4)` then `release().await` on a semaphore
//!   of count 8;
//! - `singles4_count8_1task`: its baseline: one task takes 4 single permits one after the
//!   other, then releases them one by one (`release().await` each); for both, an element
//!   is one grant of 4 permits and its release;
//! - `handoff_2handles`: from a release on one handle until a task waiting on a second handle
//!   (created separately, so the permit goes through Redis) holds the permit;
//! - `waiters_10k`: 10,000 tasks queue one by one behind the only permit (every 3rd is
//!   cancelled while queued, every 10th while the permit goes down the queue), then the
//!   permit is released until every live task was served; each sample checks FIFO order,
//!   that every live task was served and that the permit is back, and panics otherwise.
//!
//! `cargo bench --bench acquire_release [--features smol] [-- FILTER]`. Uses `REDIS_URL`, or
//! starts its own redis-server from PATH. The throughput is per acquire+release cycle (per
//! handoff, per waiter); see `examples/loadgen.rs` and `scripts/bench.sh` for the
//! comparison with the Python reference.

#[path = "../examples/support/scenarios.rs"]
#[allow(dead_code)]
mod scenarios;
#[path = "../tests/common/server.rs"]
mod server;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use redis_sync::Runtime;
use scenarios::{Handoff, ManyCycle, Monitor, MutexCycle, Op, Release, SinglesCycle, Stop};

/// What a runtime must offer the benches: running a future to completion from outside.
trait Exec {
    fn block_on<F: Future>(&self, fut: F) -> F::Output;
}

#[cfg(feature = "tokio")]
struct TokioExec(tokio::runtime::Runtime);

#[cfg(feature = "tokio")]
impl Exec for TokioExec {
    fn block_on<F: Future>(&self, fut: F) -> F::Output {
        self.0.block_on(fut)
    }
}

#[cfg(feature = "smol")]
struct SmolExec;

#[cfg(feature = "smol")]
impl Exec for SmolExec {
    fn block_on<F: Future>(&self, fut: F) -> F::Output {
        smol::block_on(fut)
    }
}

/// Runs `fut` as a task of the runtime and waits for it.
fn on_runtime<R, E, T, F>(exec: &E, rt: &R, fut: F) -> T
where
    R: Runtime,
    E: Exec,
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    exec.block_on(scenarios::spawned(rt, fut))
        .expect("benchmark task vanished")
}

fn unique(what: &str) -> String {
    format!(
        "bench:{what}:{}:{:08x}",
        std::process::id(),
        fastrand::u32(..)
    )
}

fn suite<R: Runtime, E: Exec>(c: &mut Criterion, label: &str, exec: &E) {
    let client = redis::Client::open(server::redis_url()).expect("bad REDIS_URL");
    let rt = exec
        .block_on(async { R::try_current() })
        .expect("no runtime");

    let mut g = c.benchmark_group(label);
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));

    let mut mon = Some(exec.block_on(Monitor::connect(&client)).expect("connect"));
    g.bench_function("ping_rtt", |b| {
        b.iter_custom(|iters| {
            let m = mon.take().expect("monitor");
            let (m, took) = on_runtime(exec, &rt, async move {
                let mut m = m;
                let t = Instant::now();
                m.ping_rtts(iters as usize).await.expect("PING");
                (m, t.elapsed())
            });
            mon = Some(m);
            took
        })
    });

    let one = exec
        .block_on(scenarios::open_handles::<R>(&client, &unique("seq"), 1, 1))
        .expect("create");
    g.bench_function("seq_1task_count1", |b| {
        b.iter_custom(|iters| {
            exec.block_on(scenarios::cycle(
                &rt,
                &one,
                1,
                Stop::Ops(iters),
                Release::Await,
                false,
            ))
            .expect("cycle")
            .elapsed
        })
    });

    let eight = exec
        .block_on(scenarios::open_handles::<R>(&client, &unique("conc"), 8, 1))
        .expect("create");
    g.bench_function("64tasks_count8", |b| {
        b.iter_custom(|iters| {
            exec.block_on(scenarios::cycle(
                &rt,
                &eight,
                64,
                Stop::Ops(iters),
                Release::Await,
                false,
            ))
            .expect("cycle")
            .elapsed
        })
    });

    let lock = Arc::new(
        exec.block_on(redis_sync::Mutex::<R>::open(&client, &unique("mutex")))
            .expect("open"),
    );
    let mutex = [Arc::new(MutexCycle {
        lock: lock.clone(),
        release: Release::Await,
    })];
    g.bench_function("mutex_1task", |b| {
        b.iter_custom(|iters| ops_1task(exec, &rt, &mutex, iters))
    });

    let sem8 = exec
        .block_on(scenarios::open_handles::<R>(&client, &unique("many"), 8, 1))
        .expect("create");
    let many = [Arc::new(ManyCycle {
        sem: sem8[0].clone(),
        k: 4,
        release: Release::Await,
    })];
    g.bench_function("many4_count8_1task", |b| {
        b.iter_custom(|iters| ops_1task(exec, &rt, &many, iters))
    });
    let singles = [Arc::new(SinglesCycle {
        sem: sem8[0].clone(),
        k: 4,
        release: Release::Await,
    })];
    g.bench_function("singles4_count8_1task", |b| {
        b.iter_custom(|iters| ops_1task(exec, &rt, &singles, iters))
    });

    let mut pair = Some(
        exec.block_on(Handoff::<R>::new(&rt, &client, &unique("handoff")))
            .expect("create"),
    );
    g.measurement_time(Duration::from_secs(2));
    g.bench_function("handoff_2handles", |b| {
        b.iter_custom(|iters| {
            let h = pair.take().expect("handles");
            let (h, samples) = on_runtime(exec, &rt, async move {
                let mut h = h;
                let s = h.rounds(iters as usize).await.expect("handoff");
                (h, s)
            });
            pair = Some(h);
            samples.iter().sum()
        })
    });

    const WAITERS: usize = 10_000;
    g.sampling_mode(SamplingMode::Flat)
        .measurement_time(Duration::from_secs(6))
        .throughput(Throughput::Elements(WAITERS as u64));
    g.bench_function("waiters_10k", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (rt2, client2, name) = (rt.clone(), client.clone(), unique("waiters"));
                let rep = on_runtime(exec, &rt, async move {
                    scenarios::waiters(&rt2, &client2, &name, WAITERS, 3, 10).await
                })
                .expect("waiters");
                assert!(rep.ok(), "waiters scenario failed: {rep:?}");
                assert!(rep.conns_waiting <= 8, "too many connections: {rep:?}");
                total += rep.queue_time + rep.drain_time;
            }
            total
        })
    });
    g.finish();

    if let Some(h) = pair {
        h.close();
    }
    for s in one.iter().chain(&eight).chain(&sem8) {
        s.close();
    }
    let _ = exec.block_on(lock.shutdown());
}

/// One task running `op` `iters` times; the time it took.
fn ops_1task<R: Runtime, E: Exec, O: Op>(exec: &E, rt: &R, op: &[Arc<O>], iters: u64) -> Duration {
    exec.block_on(scenarios::cycle_ops(rt, op, 1, Stop::Ops(iters), false))
        .expect("cycle")
        .elapsed
}

fn all(c: &mut Criterion) {
    #[cfg(feature = "tokio")]
    {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        suite::<redis_sync::Tokio, _>(c, "tokio", &TokioExec(rt));
    }
    #[cfg(feature = "smol")]
    suite::<redis_sync::Smol, _>(c, "smol", &SmolExec);
}

criterion_group!(benches, all);
criterion_main!(benches);
