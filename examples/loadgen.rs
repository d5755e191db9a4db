//! Load generator for the semaphore.
//!
//! ```text
//! cargo run --release --example loadgen -- --tasks 64 --count 8 --secs 10
//! cargo run --release --example loadgen -- --mode handoff --rounds 2000
//! cargo run --release --example loadgen -- --mode waiters --tasks 10000
//! cargo run --release --example loadgen -- --mode longlived --cycles 1000000
//! ```
//!
//! Modes:
//! - `cycle` (default): `--tasks` tasks on `--handles` handles (default 1) of one semaphore
//!   of `--count` permits loop acquire then release for `--secs` seconds. The last line is
//!   `loadgen: ops_per_sec=... p50_us=... p99_us=... connections=...`, where the latency is
//!   one acquire+release cycle (waiting included) and `connections` the client connections
//!   the server accepted from the creation of the handles to the end of the run.
//!   `--release drop` drops the permit instead of awaiting `permit.release()`.
//! - `handoff`: a permit released by one handle reaches a task waiting on a second handle,
//!   created separately, through Redis; `--rounds` samples, compared with the PING round
//!   trip on a dedicated connection measured in the same run, and with the same handoff
//!   done with plain redis-rs (RPUSH to a task blocked in BLMOVE).
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
//!
//! `--runtime smol` runs on smol (build with `--features smol`); `--threads N` sets tokio's
//! worker threads (0: the current-thread runtime); the scenario runs as a task of the
//! runtime unless `--on-main 1`. Uses `REDIS_URL`, or starts its own redis-server from
//! PATH.

#[path = "support/longlived.rs"]
mod longlived;
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

use redis_sync::Runtime;
use scenarios::{micros, quantile, BoxError, ConnCount, Monitor, Release, Res, Stop};

const USAGE: &str = "usage: loadgen [--mode cycle|handoff|waiters|longlived] [--tasks N] \
[--count N] [--secs S] [--handles N] [--rounds N] [--cancel-every N] [--race-every N] \
[--cycles N] [--kill-every N] \
[--release await|drop] [--runtime tokio|smol] [--threads N] [--on-main 0|1] [--name NAME]";

#[derive(Clone, Debug)]
struct Args {
    mode: String,
    tasks: Option<usize>,
    count: Option<u32>,
    secs: f64,
    handles: usize,
    rounds: usize,
    cancel_every: usize,
    race_every: usize,
    cycles: u64,
    kill_every: u64,
    runtime: String,
    threads: Option<usize>,
    on_main: bool,
    release: Release,
    name: String,
}

impl Args {
    fn parse(mut it: impl Iterator<Item = String>) -> Res<Args> {
        let mut a = Args {
            mode: "cycle".into(),
            tasks: None,
            count: None,
            secs: 10.0,
            handles: 1,
            rounds: 2000,
            cancel_every: 3,
            race_every: 10,
            cycles: 1_000_000,
            kill_every: 50_000,
            runtime: "tokio".into(),
            threads: None,
            on_main: false,
            release: Release::Await,
            name: format!("loadgen-{}-{:08x}", std::process::id(), fastrand::u32(..)),
        };
        while let Some(flag) = it.next() {
            if flag == "-h" || flag == "--help" {
                println!("{USAGE}");
                std::process::exit(0);
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
                "--rounds" => a.rounds = value.parse().map_err(|e| bad(&e))?,
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
                _ => return Err(format!("unknown flag {flag}\n{USAGE}").into()),
            }
        }
        if a.handles == 0 || a.tasks == Some(0) || a.rounds == 0 {
            return Err(
                format!("--handles, --tasks and --rounds must be at least 1\n{USAGE}").into(),
            );
        }
        Ok(a)
    }
}

fn main() -> Res<()> {
    let args = Args::parse(std::env::args().skip(1))?;
    let (url, _server) = small_demo::redis_url();
    let client = redis::Client::open(url)?;
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
                .block_on(run_spawned::<redis_sync::Tokio>(args, client))
        }
        #[cfg(feature = "smol")]
        "smol" => smol::block_on(run_spawned::<redis_sync::Smol>(args, client)),
        other => {
            Err(format!("runtime {other} is unknown or not compiled in (see --features)").into())
        }
    }
}

/// Runs the scenario as a task of the runtime, where an application's code runs, rather
/// than on the thread that blocks on the runtime (`--on-main 1` keeps it there).
async fn run_spawned<R: Runtime>(args: Args, client: redis::Client) -> Res<()> {
    if args.on_main {
        return run::<R>(&args, &client).await;
    }
    let rt = R::try_current()?;
    scenarios::spawned(&rt, async move { run::<R>(&args, &client).await }).await?
}

async fn run<R: Runtime>(args: &Args, client: &redis::Client) -> Res<()> {
    let rt = R::try_current()?;
    match args.mode.as_str() {
        "cycle" => cycle(&rt, args, client).await,
        "handoff" => handoff(&rt, args, client).await,
        "waiters" => waiters(&rt, args, client).await,
        "longlived" => long_lived(&rt, args, client).await,
        other => Err(format!("unknown mode {other}\n{USAGE}").into()),
    }
}

async fn cycle<R: Runtime>(rt: &R, args: &Args, client: &redis::Client) -> Res<()> {
    let (tasks, count) = (args.tasks.unwrap_or(64), args.count.unwrap_or(8));
    println!(
        "loadgen: mode=cycle runtime={} tasks={tasks} count={count} handles={} secs={} release={:?}",
        args.runtime, args.handles, args.secs, args.release
    );
    let mut mon = Monitor::connect(client).await?;
    let conns = ConnCount::start(&mut mon).await?;
    let sems = scenarios::open_handles::<R>(client, &args.name, count, args.handles).await?;
    let calls_before = mon.command_calls().await?;
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
    let sample = async {
        let mut peak = 0;
        while !done.load(Ordering::Acquire) {
            peak = peak.max(conns.open_now(&mut mon).await?);
            rt.sleep(Duration::from_millis(100)).await;
        }
        Ok::<_, BoxError>(peak)
    };
    let (report, peak) = futures::join!(load, sample);
    let (report, peak) = (report?, peak?);
    let calls_after = mon.command_calls().await?;
    let opened = conns.opened(&mut mon).await?;
    // Commands per cycle as the server counted them (this process's own INFO polls aside).
    let per_op = |cmd: &str| {
        let n = calls_after
            .get(cmd)
            .copied()
            .unwrap_or(0)
            .saturating_sub(calls_before.get(cmd).copied().unwrap_or(0));
        n as f64 / report.ops.max(1) as f64
    };
    println!(
        "loadgen: server commands per cycle: evalsha={:.3} blmove={:.3} (INFO commandstats)",
        per_op("evalsha"),
        per_op("blmove"),
    );
    let state = sems[0].inspect().await?;
    for s in &sems {
        s.close();
    }
    let lat = &report.latencies;
    println!(
        "loadgen: ops={} elapsed_s={:.3} p90_us={:.1} max_us={:.1} peak_open_connections={peak} \
         free_after={} held_after={}",
        report.ops,
        report.elapsed.as_secs_f64(),
        micros(quantile(lat, 0.90)),
        micros(quantile(lat, 1.0)),
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

async fn handoff<R: Runtime>(rt: &R, args: &Args, client: &redis::Client) -> Res<()> {
    println!(
        "loadgen: mode=handoff runtime={} rounds={}",
        args.runtime, args.rounds
    );
    let mut h = scenarios::Handoff::<R>::new(rt, client, &args.name).await?;
    // Warm up: scripts loaded, blocking connection opened, caches hot.
    h.rounds(50.min(args.rounds)).await?;
    let mut rtts = h.mon.ping_rtts(args.rounds).await?;
    let mut samples = h.rounds(args.rounds).await?;
    rtts.extend(h.mon.ping_rtts(args.rounds).await?);
    h.close();
    let mut raw =
        scenarios::raw_handoff(rt, client, &format!("{}:raw", args.name), args.rounds).await?;
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
