//! `loadgen --mode longlived`: one handle lives through a million acquire+release cycles
//! while its connections are killed now and then (`CLIENT KILL` from another connection),
//! so that it reconnects and its generations change. What must stay bounded: the process's
//! memory and the keys of the semaphore in Redis.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use futures::StreamExt;
use redis::aio::MultiplexedConnection;
use redis_sync::{Runtime, Semaphore};

use crate::scenarios::{vm_kb, within, Res};

/// Errors tolerated in a run (each kill fails the calls in flight on the killed
/// connections); more means the handle does not recover.
const MAX_ERRORS: u64 = 100_000;

#[derive(Debug, Default)]
pub struct Sample {
    pub rss_kb: u64,
    pub hwm_kb: u64,
    pub keys: usize,
    pub leases: usize,
    pub graves: usize,
}

#[derive(Debug, Default)]
pub struct LonglivedReport {
    pub cycles: u64,
    pub elapsed: Duration,
    pub kills: u64,
    pub killed_connections: u64,
    pub errors: u64,
    pub first_errors: Vec<String>,
    pub generations: usize,
    /// How long the lease set took to come back to the live generation alone.
    pub settle: Duration,
    pub start: Sample,
    /// After the first `kill_every` cycles: allocator pools and caches warmed up.
    pub warm: Sample,
    pub end: Sample,
    /// After `shutdown()`: no lease of the handle may be left.
    pub after_shutdown: Sample,
}

impl LonglivedReport {
    /// Bounded: memory did not grow with the cycles beyond its warm-up level (slack for
    /// allocator noise), Redis holds no more keys than at the start give or take the graves
    /// set and a held list per live generation, the graves set (generations retired in the
    /// last minute, each swept once more before it goes) grows with the kills only, and
    /// after `shutdown()` no lease is left (a generation whose retirement failed during the
    /// kills keeps its lease entry, with an empty held list, until shutdown or expiry).
    pub fn ok(&self) -> bool {
        self.cycles > 0
            && self.end.rss_kb <= self.warm.rss_kb + self.warm.rss_kb / 2 + 8 * 1024
            && self.end.keys <= self.start.keys + 4
            && self.end.leases <= 2
            && self.after_shutdown.leases == 0
            && self.after_shutdown.keys <= self.start.keys + 1
            && self.end.graves as u64 <= 8 * (self.kills + 1)
            && self.errors < MAX_ERRORS
    }
}

/// Keys under the semaphore's hash tag, and the sizes of its lease set and graves set.
async fn sample(conn: &mut MultiplexedConnection, prefix: &str, name: &str) -> Res<Sample> {
    let mut keys = 0;
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("*{{{name}}}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        keys += batch.len();
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    let (leases, graves): (usize, usize) = redis::pipe()
        .zcard(format!("{prefix}:{{{name}}}:leases"))
        .zcard(format!("{prefix}:{{{name}}}:graves"))
        .query_async(conn)
        .await?;
    Ok(Sample {
        rss_kb: vm_kb("VmRSS"),
        hwm_kb: vm_kb("VmHWM"),
        keys,
        leases,
        graves,
    })
}

/// Client ids the server lists now.
async fn client_ids(conn: &mut MultiplexedConnection) -> Res<Vec<u64>> {
    let list: String = redis::cmd("CLIENT").arg("LIST").query_async(conn).await?;
    Ok(list
        .lines()
        .filter_map(|l| l.strip_prefix("id=")?.split(' ').next()?.parse().ok())
        .collect())
}

/// Kills every connection opened after `baseline` (the handle's), except `me`.
async fn kill_newer(conn: &mut MultiplexedConnection, baseline: u64, me: u64) -> Res<u64> {
    let mut killed = 0;
    for id in client_ids(conn).await? {
        if id > baseline && id != me {
            let n: u64 = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("ID")
                .arg(id)
                .query_async(conn)
                .await?;
            killed += n;
        }
    }
    Ok(killed)
}

#[allow(clippy::too_many_arguments)]
pub async fn longlived<R: Runtime>(
    rt: &R,
    client: &redis::Client,
    prefix: &str,
    name: &str,
    cycles: u64,
    tasks: usize,
    count: u32,
    kill_every: u64,
) -> Res<LonglivedReport> {
    let mut conn = client.get_multiplexed_async_connection().await?;
    let me: u64 = redis::cmd("CLIENT")
        .arg("ID")
        .query_async(&mut conn)
        .await?;
    let baseline = client_ids(&mut conn).await?.into_iter().max().unwrap_or(0);
    let sem = Arc::new(
        Semaphore::<R>::builder(client, name)
            .key_prefix(prefix)
            .create(count)
            .await?,
    );
    let mut rep = LonglivedReport {
        start: sample(&mut conn, prefix, name).await?,
        ..LonglivedReport::default()
    };
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_errors = Arc::new(Mutex::new(Vec::new()));
    let gens = Arc::new(Mutex::new(HashSet::new()));
    let (end_tx, mut end_rx) = mpsc::unbounded::<()>();
    let began = Instant::now();
    for _ in 0..tasks {
        let (sem, done, errors, first_errors, gens, end) = (
            sem.clone(),
            done.clone(),
            errors.clone(),
            first_errors.clone(),
            gens.clone(),
            end_tx.clone(),
        );
        rt.spawn(async move {
            let mut last = String::new();
            let fail = |e: redis_sync::Error| {
                if errors.fetch_add(1, Ordering::Relaxed) < 5 {
                    first_errors.lock().unwrap().push(e.to_string());
                }
            };
            while done.load(Ordering::Relaxed) < cycles
                && errors.load(Ordering::Relaxed) < MAX_ERRORS
            {
                let permit = match sem.acquire().await {
                    Ok(p) => p,
                    Err(e) => {
                        fail(e);
                        continue;
                    }
                };
                if permit.holder() != last {
                    last = permit.holder().to_owned();
                    gens.lock().unwrap().insert(last.clone());
                }
                match permit.release().await {
                    Ok(()) => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => fail(e),
                }
            }
            let _ = end.unbounded_send(());
        });
    }
    drop(end_tx);
    // The killer: every `kill_every` cycles, from this connection, the handle's ones.
    let finished = Arc::new(AtomicBool::new(false));
    let killer = {
        let (done, finished, rt2, gens2) =
            (done.clone(), finished.clone(), rt.clone(), gens.clone());
        let (prefix, name) = (prefix.to_owned(), name.to_owned());
        async move {
            let mut next = kill_every;
            let (mut kills, mut killed) = (0, 0);
            let mut warm = None;
            let mut looked = Instant::now();
            while !finished.load(Ordering::Relaxed) {
                // Generations that never served a permit show in the lease set only.
                if looked.elapsed() >= Duration::from_millis(20) {
                    looked = Instant::now();
                    let ids: Vec<String> = redis::cmd("ZRANGE")
                        .arg(format!("{prefix}:{{{name}}}:leases"))
                        .arg(0)
                        .arg(-1)
                        .query_async(&mut conn)
                        .await?;
                    gens2.lock().unwrap().extend(ids);
                }
                let n = done.load(Ordering::Relaxed);
                if kill_every > 0 && n >= next && n < cycles {
                    if warm.is_none() {
                        warm = Some(sample(&mut conn, &prefix, &name).await?);
                    }
                    killed += kill_newer(&mut conn, baseline, me).await?;
                    kills += 1;
                    next += kill_every;
                }
                rt2.sleep(Duration::from_millis(2)).await;
            }
            Ok::<_, crate::scenarios::BoxError>((conn, kills, killed, warm))
        }
    };
    let workers = async {
        while end_rx.next().await.is_some() {}
        finished.store(true, Ordering::Relaxed);
    };
    let limit = Duration::from_secs(1800);
    let ((), kill_res) = within(rt, limit, "longlived", async {
        futures::join!(workers, killer)
    })
    .await?;
    rep.elapsed = began.elapsed();
    let (mut conn, kills, killed, warm) = kill_res?;
    rep.cycles = done.load(Ordering::Relaxed);
    rep.kills = kills;
    rep.killed_connections = killed;
    rep.errors = errors.load(Ordering::Relaxed);
    rep.first_errors = std::mem::take(&mut *first_errors.lock().unwrap());
    rep.generations = gens.lock().unwrap().len();
    // Generations retired by the last kills give their leases up in the background
    // (retried with backoff while the connection recovers): give them a few seconds.
    let settle = Instant::now();
    rep.end = sample(&mut conn, prefix, name).await?;
    while rep.end.leases > 1 && settle.elapsed() < Duration::from_secs(5) {
        rt.sleep(Duration::from_millis(100)).await;
        rep.end = sample(&mut conn, prefix, name).await?;
    }
    rep.settle = settle.elapsed();
    rep.warm = warm.unwrap_or_else(|| Sample {
        rss_kb: rep.start.rss_kb,
        ..Sample::default()
    });
    sem.shutdown().await?;
    rep.after_shutdown = sample(&mut conn, prefix, name).await?;
    Ok(rep)
}
