//! Scale (issue #11): a fleet of 5,000 holders crashes at once, holding all 4,096 permits;
//! one live handle gets every permit back within its lease plus a few renewals, and no
//! script blocks Redis for more than 10 ms on the way. `inspect()` reads 5,000 holders in
//! bounded pages. Each test runs on a private redis-server. Run with `--nocapture` to see
//! the measured times.

mod common;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::RedisServer;
use redis::aio::MultiplexedConnection;
use redis_sync::{Semaphore, Tokio};

/// The largest permit count.
const COUNT: u32 = 4096;
/// Holders of the crashed fleet.
const FLEET: usize = 5_000;
/// Holders registered per setup script call.
const SETUP_BATCH: usize = 250;
/// The live handle's lease.
const LEASE: Duration = Duration::from_secs(1);
/// Every permit must be back this long after the crash.
const RECOVERY_BOUND: Duration = Duration::from_secs(10);
const PREFIX: &str = "scale";
const NAME: &str = "fleet";

/// The tests share two CPUs: one at a time, so that their timings mean something.
static SERIAL: Mutex<()> = Mutex::new(());

/// Registers holders the way the library does (a lease in the lease set, expiring `ms` from
/// now on the server clock) and moves one token from the pool into each one's held list
/// while the pool has any.
const CRASH: &str = r#"
local t = redis.call('TIME')
local expiry = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 3, #KEYS do
  redis.call('ZADD', KEYS[1], expiry, ARGV[i - 1])
  redis.call('LMOVE', KEYS[2], KEYS[i], 'LEFT', 'RIGHT')
end
return redis.call('LLEN', KEYS[2])
"#;

fn key(suffix: &str) -> String {
    format!("{PREFIX}:{{{NAME}}}:{suffix}")
}

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn create(client: &redis::Client, lease: Duration) -> Semaphore<Tokio> {
    Semaphore::<Tokio>::builder(client, NAME)
        .key_prefix(PREFIX)
        .lease_ttl(lease)
        .create(COUNT)
        .await
        .unwrap()
}

/// `FLEET` holders with leases `lease_ms` ahead take every free permit, in batches.
async fn crash_fleet(conn: &mut MultiplexedConnection, lease_ms: u64) {
    let script = redis::Script::new(CRASH);
    let ids: Vec<String> = (0..FLEET).map(|i| format!("crashed-{i:05}")).collect();
    let mut left = -1;
    for chunk in ids.chunks(SETUP_BATCH) {
        let mut inv = script.prepare_invoke();
        inv.key(key("leases")).key(key("list"));
        inv.arg(lease_ms);
        for id in chunk {
            inv.key(key(&format!("held:{id}"))).arg(id);
        }
        left = inv.invoke_async(conn).await.unwrap();
    }
    assert_eq!(left, 0, "the pool must be empty after the crash");
}

/// A connection with no response timeout (a full slow log is a large reply).
async fn raw_conn(client: &redis::Client) -> MultiplexedConnection {
    let cfg = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
        .unwrap()
}

async fn reset_stats(conn: &mut MultiplexedConnection) {
    let () = redis::pipe()
        .cmd("SLOWLOG")
        .arg("RESET")
        .cmd("CONFIG")
        .arg("RESETSTAT")
        .cmd("LATENCY")
        .arg("RESET")
        .query_async(conn)
        .await
        .unwrap();
}

/// `INFO commandstats` as command -> (calls, usec, usec_per_call).
async fn commandstats(conn: &mut MultiplexedConnection) -> HashMap<String, (u64, u64, f64)> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    let mut out = HashMap::new();
    for line in info.lines() {
        let Some((name, fields)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let field = |f: &str| {
            fields
                .split(',')
                .find_map(|kv| kv.strip_prefix(f)?.strip_prefix('='))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        out.insert(
            name.to_owned(),
            (
                field("calls") as u64,
                field("usec") as u64,
                field("usec_per_call"),
            ),
        );
    }
    out
}

/// The slow log: (duration in µs, command name, argument count).
async fn slowlog(conn: &mut MultiplexedConnection) -> Vec<(u64, String, usize)> {
    let entries: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(-1)
        .query_async(conn)
        .await
        .unwrap();
    entries
        .into_iter()
        .map(|e| {
            let (_, _, micros, args): (u64, u64, u64, Vec<String>) =
                redis::from_redis_value(match &e {
                    redis::Value::Array(v) => redis::Value::Array(v[..4].to_vec()),
                    other => panic!("slowlog entry {other:?}"),
                })
                .unwrap();
            let name = args.first().cloned().unwrap_or_default().to_lowercase();
            (micros, name, args.len())
        })
        .collect()
}

/// The longest latency `LATENCY LATEST` recorded per event, in ms.
async fn latency_max_ms(conn: &mut MultiplexedConnection) -> Vec<(String, u64)> {
    let rows: Vec<(String, u64, u64, u64)> = redis::cmd("LATENCY")
        .arg("LATEST")
        .query_async(conn)
        .await
        .unwrap();
    rows.into_iter().map(|(ev, _, _, max)| (ev, max)).collect()
}

struct Recovery {
    recovered: Duration,
    first_permit: Duration,
}

/// The fleet crashes; the live handle (lease 1 s) acquires all 4,096 permits.
async fn crash_and_recover(client: &redis::Client, conn: &mut MultiplexedConnection) -> Recovery {
    let sem = create(client, LEASE).await;
    crash_fleet(conn, LEASE.as_millis() as u64).await;
    reset_stats(conn).await;
    let crashed = Instant::now();
    let mut permits = Vec::with_capacity(COUNT as usize);
    let mut first_permit = Duration::ZERO;
    while permits.len() < COUNT as usize {
        let left = RECOVERY_BOUND.saturating_sub(crashed.elapsed());
        let permit = sem.acquire_timeout(left).await.unwrap_or_else(|e| {
            panic!(
                "{} of {COUNT} permits back after {:?}: {e}",
                permits.len(),
                crashed.elapsed()
            )
        });
        if permits.is_empty() {
            first_permit = crashed.elapsed();
        }
        permits.push(permit);
    }
    let recovered = crashed.elapsed();
    let st = sem.inspect().await.unwrap();
    assert_eq!((st.free, st.held()), (0, COUNT as usize), "{st:?}");
    for p in permits {
        p.release().await.unwrap();
    }
    sem.shutdown().await.unwrap();
    Recovery {
        recovered,
        first_permit,
    }
}

#[test]
fn mass_reclaim_no_script_over_10ms() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let srv = RedisServer::start_with(&[
        "--slowlog-log-slower-than",
        "10000",
        "--latency-monitor-threshold",
        "1",
    ]);
    let client = redis::Client::open(srv.url.as_str()).unwrap();
    tokio_rt().block_on(async {
        let mut conn = raw_conn(&client).await;
        let r = crash_and_recover(&client, &mut conn).await;
        let slow = slowlog(&mut conn).await;
        let stats = commandstats(&mut conn).await;
        let latency = latency_max_ms(&mut conn).await;
        let evalsha = stats.get("evalsha").copied().unwrap_or_default();
        println!(
            "mass reclaim: {FLEET} holders, {COUNT} permits: first permit back after {:?}, \
             all after {:?}; evalsha calls={} usec_per_call={:.1}; slowlog over 10 ms: {}; \
             LATENCY LATEST max (ms, events over 1 ms): {latency:?}",
            r.first_permit,
            r.recovered,
            evalsha.0,
            evalsha.2,
            slow.len(),
        );
        assert!(
            r.recovered <= RECOVERY_BOUND,
            "recovered after {:?}",
            r.recovered
        );
        assert!(slow.is_empty(), "commands over 10 ms: {slow:?}");
    });
}

/// The same crash on a server that logs every command: the longest script, exactly.
#[test]
fn mass_reclaim_longest_script() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let srv = RedisServer::start_with(&[
        "--slowlog-log-slower-than",
        "0",
        "--slowlog-max-len",
        "100000",
    ]);
    let client = redis::Client::open(srv.url.as_str()).unwrap();
    tokio_rt().block_on(async {
        let mut conn = raw_conn(&client).await;
        let r = crash_and_recover(&client, &mut conn).await;
        let mut slow = slowlog(&mut conn).await;
        slow.sort_unstable_by_key(|e| std::cmp::Reverse(e.0));
        println!(
            "five longest commands (us, command, args): {:?}",
            &slow[..5]
        );
        let scripts = slow.iter().filter(|(_, name, _)| name.starts_with("eval"));
        let longest = scripts.max_by_key(|(us, _, _)| *us).cloned().unwrap();
        let any = slow.iter().max_by_key(|(us, _, _)| *us).cloned().unwrap();
        println!(
            "mass reclaim (slowlog of every command, {} entries): all permits back after {:?}; \
             longest script {} us ({} args: {}), longest command {} us ({})",
            slow.len(),
            r.recovered,
            longest.0,
            longest.2,
            longest.1,
            any.0,
            any.1,
        );
        assert!(longest.0 < 10_000, "a script ran {} us", longest.0);
    });
}

#[test]
fn inspect_5000_holders_in_pages() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let srv = RedisServer::start_with(&["--slowlog-log-slower-than", "10000"]);
    let client = redis::Client::open(srv.url.as_str()).unwrap();
    tokio_rt().block_on(async {
        let mut conn = raw_conn(&client).await;
        // Leases far ahead: nobody is reclaimed while we look.
        let sem = create(&client, Duration::from_secs(300)).await;
        crash_fleet(&mut conn, 600_000).await;
        reset_stats(&mut conn).await;
        let t = Instant::now();
        let st = sem.inspect().await.unwrap();
        let took = t.elapsed();
        let stats = commandstats(&mut conn).await;
        // The fleet and the live handle's own lease.
        assert_eq!(st.holders_total, FLEET + 1);
        assert_eq!(st.holders.len(), FLEET + 1);
        assert!(!st.is_partial());
        assert_eq!((st.count, st.free, st.held()), (Some(COUNT), 0, COUNT as usize));
        let mut ids: Vec<&str> = st.holders.iter().map(|h| h.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), FLEET + 1, "a holder listed twice");
        assert!(st.holders.iter().all(|h| h.lease_remaining.is_some()));
        // One page of 1,000 per request: 6 ZRANGEs, and as many LLEN pipelines.
        let zrange = stats.get("zrange").map_or(0, |s| s.0);
        let llen = stats.get("llen").map_or(0, |s| s.0);
        println!(
            "inspect of {} holders: {took:?}, zrange calls={zrange} ({:.0} us/call), llen calls={llen}",
            st.holders_total,
            stats.get("zrange").map_or(0.0, |s| s.2),
        );
        assert_eq!(zrange, 6);
        assert_eq!(llen as usize, FLEET + 2);
        assert!(slowlog(&mut conn).await.is_empty());

        // Shutdown looks up this handle's own lease ids, never the fleet's 5,000.
        reset_stats(&mut conn).await;
        sem.shutdown().await.unwrap();
        let stats = commandstats(&mut conn).await;
        assert_eq!(stats.get("zrange").map_or(0, |s| s.0), 0, "{stats:?}");
        let left: usize = redis::cmd("ZCARD")
            .arg(key("leases"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(left, FLEET);

        // Another handle joins: its creation does not read the 5,000 holders either.
        reset_stats(&mut conn).await;
        let joined = create(&client, Duration::from_secs(300)).await;
        let stats = commandstats(&mut conn).await;
        assert_eq!(stats.get("zrange").map_or(0, |s| s.0), 0, "{stats:?}");
        joined.shutdown().await.unwrap();
    });
}

/// Connections killed again and again under load: every generation the handle starts and
/// gives up leaves the lease set, including those whose registration reply was lost.
#[test]
fn killed_connections_leave_no_orphan_lease() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let srv = RedisServer::start();
    let client = redis::Client::open(srv.url.as_str()).unwrap();
    tokio_rt().block_on(async {
        let mut conn = raw_conn(&client).await;
        let me: u64 = redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut conn)
            .await
            .unwrap();
        let sem = std::sync::Arc::new(
            Semaphore::<Tokio>::builder(&client, "kills")
                .key_prefix(PREFIX)
                .create(8)
                .await
                .unwrap(),
        );
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let (sem, stop) = (sem.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // Calls in flight on a killed connection fail: that is expected.
                    if let Ok(p) = sem.acquire().await {
                        let _ = p.release().await;
                    }
                }
            }));
        }
        for _ in 0..60 {
            tokio::time::sleep(Duration::from_millis(25)).await;
            // One at a time, as an operator would: the handle reconnects in between.
            let list: String = redis::cmd("CLIENT")
                .arg("LIST")
                .query_async(&mut conn)
                .await
                .unwrap();
            let ids = list.lines().filter_map(|l| {
                l.strip_prefix("id=")?
                    .split(' ')
                    .next()?
                    .parse::<u64>()
                    .ok()
            });
            for id in ids.filter(|&id| id != me) {
                let _: redis::Value = redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("ID")
                    .arg(id)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        let leases = format!("{PREFIX}:{{kills}}:leases");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ids: Vec<String> = redis::cmd("ZRANGE")
                .arg(&leases)
                .arg(0)
                .arg(-1)
                .query_async(&mut conn)
                .await
                .unwrap();
            if ids.len() <= 1 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "leases left 10 s after the last kill (client {me}): {ids:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // A move that landed in a retired generation's list after its reclaim is swept back
        // shortly after (the list stays a grave): every permit is back within seconds.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let st = sem.inspect().await.unwrap();
            if st.free + st.held() == 8 {
                break;
            }
            if Instant::now() >= deadline {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{PREFIX}:{{kills}}:*"))
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                let mut lists = Vec::new();
                for k in keys {
                    let kind: String = redis::cmd("TYPE")
                        .arg(&k)
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                    if kind == "list" {
                        let n: usize = redis::cmd("LLEN")
                            .arg(&k)
                            .query_async(&mut conn)
                            .await
                            .unwrap();
                        lists.push(format!("{k}={n}"));
                    }
                }
                panic!("a permit is missing: {st:?}; lists: {lists:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sem.shutdown().await.unwrap();
    });
}
