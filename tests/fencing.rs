//! Fencing tokens of the `Mutex` across real OS processes (issue #9): strictly increasing
//! over 10,000 grants while holders are SIGKILLed, the library's connections are killed
//! and `lock()` futures are dropped mid-wait; and a holder paused with SIGSTOP past its
//! lease, whose late write a storage that checks tokens refuses. Also: a self-test of the
//! records these checks rely on, and what a lock must do when Redis loses its keys (two
//! defects found while writing these, since fixed).
//!
//! The children are this test binary re-executed (see `tests/fencing_support/`). Every
//! check reads records the holders wrote to Redis themselves, on plain connections of
//! their own, and the lock's lease set; never the library's bookkeeping.

#![cfg(all(feature = "tokio", unix))]

mod chaos_support;
#[allow(unused_imports)] // not every test file uses all of the harness
mod common;
mod fencing_support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chaos_support::{describe, run_tokio, sleep, within, within_explained};
use fencing_support::{
    named_conn, report, signal, stdin_lines, store, Kid, Stored, CHECKER, RECORDER, ROLE,
};
use futures::channel::mpsc;
use futures::future::{select, Either};
use futures::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;
use redis_sync::{Error, Mutex, Tokio};

type R = Tokio;

/// The lock's name; every test has a key prefix of its own.
const NAME: &str = "m";
const PREFIX: &str = "REDIS_SYNC_FENCING_PREFIX";
const TARGET: &str = "REDIS_SYNC_FENCING_TARGET";
const LEASE_MS: &str = "REDIS_SYNC_FENCING_LEASE_MS";

/// The lock's keys (`<prefix>:{m}:...`).
fn lock_base(prefix: &str) -> String {
    format!("{prefix}:{{{NAME}}}")
}

/// The keys of the holders' records.
struct RecKeys {
    /// Hash: token -> holder id, for the grants whose holders are inside.
    inside: String,
    /// Counter: INCR on entering, DECR on leaving (by the holder, or by the next entry on
    /// behalf of a holder whose lease has ended: a killed holder never leaves).
    count: String,
    /// Hash: `entries`, `top` (highest token entered), `max_inside`, `entered_stale`,
    /// `violations`.
    stats: String,
    /// List: what each violation saw.
    violations: String,
    /// List: every token, RPUSHed by its holder while it holds the lock, in append order.
    appends: String,
    /// Set: tokens whose holder's lease had ended when it left (after its append).
    late: String,
    /// The lock's lease set.
    leases: String,
}

impl RecKeys {
    fn new(prefix: &str) -> Self {
        let rec = format!("{prefix}:rec");
        RecKeys {
            inside: format!("{rec}:inside"),
            count: format!("{rec}:count"),
            stats: format!("{rec}:stats"),
            violations: format!("{rec}:violations"),
            appends: format!("{rec}:appends"),
            late: format!("{rec}:late"),
            leases: format!("{}:leases", lock_base(prefix)),
        }
    }
}

/// A holder enters: atomically, on the server clock, it records itself (token -> holder),
/// counts the holders inside whose lease is valid now, and drops those whose lease has
/// ended (a lease never becomes valid again). A violation is recorded when two holders are
/// inside with valid leases, or when a holder with a valid lease enters with a token not
/// above every token entered before (a newer grant existed while its lease was valid).
/// KEYS: inside, stats, violations, leases, count. ARGV: token, holder.
/// Returns the number of entries so far, this one included.
const ENTER: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local token = tonumber(ARGV[1])
local own = redis.call('ZSCORE', KEYS[4], ARGV[2])
local valid = own and tonumber(own) > now
local entries = redis.call('HINCRBY', KEYS[2], 'entries', 1)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('INCR', KEYS[5])
local bad = {}
local top = tonumber(redis.call('HGET', KEYS[2], 'top') or '0')
if valid then
  if token <= top then
    table.insert(bad, 'token ' .. token .. ' entered with a valid lease after token ' .. top)
  end
else
  redis.call('HINCRBY', KEYS[2], 'entered_stale', 1)
end
if token > top then redis.call('HSET', KEYS[2], 'top', token) end
local n, seen = 0, {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local m, h = all[i], all[i + 1]
  local e = redis.call('ZSCORE', KEYS[4], h)
  if e and tonumber(e) > now then
    n = n + 1
    table.insert(seen, 'token ' .. m .. ' of ' .. h .. ' (lease ' .. (tonumber(e) - now) .. ' ms)')
  elseif m ~= ARGV[1] then
    redis.call('HDEL', KEYS[1], m)
    redis.call('DECR', KEYS[5])
  end
end
if n > tonumber(redis.call('HGET', KEYS[2], 'max_inside') or '0') then
  redis.call('HSET', KEYS[2], 'max_inside', n)
end
if n > 1 then
  table.insert(bad, n .. ' holders inside with valid leases: ' .. table.concat(seen, ', '))
end
if #bad > 0 then
  redis.call('HINCRBY', KEYS[2], 'violations', 1)
  redis.call('RPUSH', KEYS[3], table.concat(bad, '; '))
end
return entries
"#;

/// A holder leaves: records its token as late if its lease had ended by now (so its append
/// may have come after a newer grant), and removes itself if still recorded inside.
/// KEYS: inside, late, leases, count. ARGV: token, holder. Returns 1 if the lease was
/// still valid.
const LEAVE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local e = redis.call('ZSCORE', KEYS[3], ARGV[2])
local valid = e and tonumber(e) > now
if not valid then redis.call('SADD', KEYS[2], ARGV[1]) end
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then redis.call('DECR', KEYS[4]) end
if valid then return 1 end
return 0
"#;

/// Records an entry ([`ENTER`]); returns the number of entries so far.
async fn enter(rec: &mut MultiplexedConnection, keys: &RecKeys, token: u64, holder: &str) -> u64 {
    redis::Script::new(ENTER)
        .key(&keys.inside)
        .key(&keys.stats)
        .key(&keys.violations)
        .key(&keys.leases)
        .key(&keys.count)
        .arg(token)
        .arg(holder)
        .invoke_async(rec)
        .await
        .expect("record an entry")
}

/// Records a leave ([`LEAVE`]); returns whether the holder's lease was still valid.
async fn leave(rec: &mut MultiplexedConnection, keys: &RecKeys, token: u64, holder: &str) -> bool {
    let valid: u8 = redis::Script::new(LEAVE)
        .key(&keys.inside)
        .key(&keys.late)
        .key(&keys.leases)
        .key(&keys.count)
        .arg(token)
        .arg(holder)
        .invoke_async(rec)
        .await
        .expect("record a leave");
    valid == 1
}

/// The appended tokens: no duplicate at all, and strictly increasing in append order once
/// the appends of holders whose lease had ended when they left (`late`) are left out.
fn check_appends(appends: &[u64], late: &HashSet<u64>) -> Result<(), String> {
    let mut distinct = HashSet::new();
    let dups: Vec<u64> = appends
        .iter()
        .copied()
        .filter(|t| !distinct.insert(*t))
        .collect();
    if !dups.is_empty() {
        return Err(format!("tokens granted twice: {dups:?}"));
    }
    let valid: Vec<u64> = appends
        .iter()
        .copied()
        .filter(|t| !late.contains(t))
        .collect();
    match valid.windows(2).position(|w| w[0] >= w[1]) {
        None => Ok(()),
        Some(i) => Err(format!(
            "appends not strictly increasing at {i}: {:?} (late appends left out: {late:?})",
            &valid[i.saturating_sub(5)..(i + 6).min(valid.len())]
        )),
    }
}

/// How long a lock held by a SIGKILLed or stopped holder may take to come back: the lease,
/// one renewal interval of the client that reclaims (`lease / 3` + 20% jitter), and
/// generous slack for a loaded 2-core machine.
fn reclaim_bound(lease: Duration) -> Duration {
    lease + lease.mul_f64(0.4) + Duration::from_secs(5)
}

// ---------------------------------------------------------------- 10,000 grants

/// Grants in the whole run (at least: processes still waiting at the end take one more).
const GRANTS: u64 = 10_000;
const PROCESSES: usize = 4;
/// Progress (entries) at which a holder is told to hang inside, then SIGKILLed.
const HANG_AT: [u64; 4] = [1_000, 3_000, 5_000, 7_000];
/// Progress at which a random process is SIGKILLed, wherever it is.
const KILL_AT: [u64; 4] = [2_000, 4_000, 6_000, 8_000];
const KID_LEASE: Duration = Duration::from_secs(1);

/// Fencing tokens strictly increase over 10,000 grants from 4 processes (2 tasks each, on
/// one handle) on a private server, while: holders are SIGKILLed inside (4 told to hang,
/// then killed) and processes are SIGKILLed wherever they are (4 more), each replaced by a
/// new process; a random library connection is killed every 20-100 ms (sometimes all of
/// them), sparing only the record connections; and a quarter of the `lock()` calls are
/// dropped mid-wait by a 0.1-3 ms timer (others use `try_lock` or a short `lock_timeout`).
///
/// Checked on the holders' own records: the list of tokens RPUSHed by holders while they
/// hold the lock has no duplicate and, leaving out the appends of holders whose lease had
/// ended by the time they left, is strictly increasing in append order; at no entry were
/// two holders inside with valid leases, nor did a holder with a valid lease enter with a
/// token not above every earlier one; and the next grant after the run carries a greater
/// token than all of them.
#[test]
fn tokens_strictly_increase_across_kills_and_drops() {
    let server = common::RedisServer::start();
    let url = server.url.clone();
    run_tokio(within::<R, _>(
        Duration::from_secs(240),
        "10,000 grants with kills",
        grants_under_chaos(url),
    ));
    drop(server);
}

async fn grants_under_chaos(url: String) {
    let client = redis::Client::open(url.as_str()).unwrap();
    let prefix = common::unique_prefix("fencing-grants");
    let keys = RecKeys::new(&prefix);
    let mut checker = named_conn(&client, CHECKER).await;
    let my_id: u64 = redis::cmd("CLIENT")
        .arg("ID")
        .query_async(&mut checker)
        .await
        .unwrap();
    // Created once, so that the children only join it.
    let lock = Mutex::<R>::builder(&client, NAME)
        .key_prefix(&prefix)
        .lease_ttl(KID_LEASE)
        .open()
        .await
        .unwrap();
    let first = lock.inspect().await.unwrap().next_fence;
    assert_eq!(first, Some(1), "a new lock's first token");
    lock.shutdown().await.unwrap();

    let started = Instant::now();
    let (tx, mut rx) = mpsc::unbounded::<(usize, String)>();
    let envs = vec![
        (PREFIX, prefix.clone()),
        (TARGET, GRANTS.to_string()),
        (LEASE_MS, KID_LEASE.as_millis().to_string()),
    ];
    let spawn = |id: usize| {
        Kid::spawn_tagged(
            "grants",
            &format!("grants child {id}"),
            &url,
            &envs,
            id,
            tx.clone(),
        )
    };
    let mut kids: HashMap<usize, Kid> = (0..PROCESSES).map(|id| (id, spawn(id))).collect();
    let mut next_id = PROCESSES;
    let mut finished: HashSet<usize> = HashSet::new();
    let mut done_reports: Vec<String> = Vec::new();
    let (mut hangs, mut kills) = (0usize, 0usize);
    let (mut hang_kills, mut random_kills, mut conn_kills, mut mass_kills) = (0, 0, 0u64, 0);
    let mut hang_asked: Option<usize> = None;
    let mut entries = 0u64;
    loop {
        let tick = sleep::<R>(Duration::from_millis(fastrand::u64(20..100)));
        futures::pin_mut!(tick);
        match select(rx.next(), tick).await {
            Either::Left((Some((id, line)), _)) => {
                if let Some(token) = line.strip_prefix("HANG ") {
                    // It holds the lock and will not let go: SIGKILL it inside.
                    if let Some(mut kid) = kids.remove(&id) {
                        kid.sigkill();
                        hang_kills += 1;
                        println!("SIGKILLed child {id} holding token {token}");
                    }
                    hang_asked = None;
                    if entries < GRANTS {
                        kids.insert(next_id, spawn(next_id));
                        next_id += 1;
                    }
                } else if let Some(stats) = line.strip_prefix("DONE ") {
                    finished.insert(id);
                    done_reports.push(stats.to_owned());
                }
            }
            Either::Left((None, _)) => unreachable!("the parent keeps a sender"),
            Either::Right(_) => {
                if entries < GRANTS {
                    let (one, all) = kill_library_connections(&mut checker, my_id).await;
                    conn_kills += one;
                    mass_kills += all;
                }
            }
        }
        entries = checker
            .hget::<_, _, Option<u64>>(&keys.stats, "entries")
            .await
            .unwrap()
            .unwrap_or(0);
        let running: Vec<usize> = kids
            .keys()
            .copied()
            .filter(|id| !finished.contains(id))
            .collect();
        if hangs < HANG_AT.len() && entries >= HANG_AT[hangs] && hang_asked.is_none() {
            if let Some(&id) = running.get(fastrand::usize(..running.len().max(1))) {
                if kids.get_mut(&id).is_some_and(|k| k.send("HANG")) {
                    hang_asked = Some(id);
                    hangs += 1;
                }
            }
        }
        if kills < KILL_AT.len() && entries >= KILL_AT[kills] {
            let candidates: Vec<usize> = running
                .iter()
                .copied()
                .filter(|&id| Some(id) != hang_asked)
                .collect();
            if !candidates.is_empty() {
                let id = candidates[fastrand::usize(..candidates.len())];
                if let Some(mut kid) = kids.remove(&id) {
                    kid.sigkill();
                    random_kills += 1;
                    println!("SIGKILLed child {id} at {entries} entries");
                }
                if entries < GRANTS {
                    kids.insert(next_id, spawn(next_id));
                    next_id += 1;
                }
            }
            kills += 1;
        }
        for (id, kid) in kids.iter_mut() {
            if let Some(status) = kid.exit_status() {
                assert!(status.success(), "child {id} failed: {status}");
            }
        }
        if entries >= GRANTS && kids.keys().all(|id| finished.contains(id)) {
            break;
        }
    }
    for (_, kid) in kids.drain() {
        kid.exits_ok(Duration::from_secs(30)).await;
    }
    let elapsed = started.elapsed();

    // The records.
    let stats: HashMap<String, i64> = checker.hgetall(&keys.stats).await.unwrap();
    let violations: Vec<String> = checker.lrange(&keys.violations, 0, -1).await.unwrap();
    let appends: Vec<u64> = checker.lrange(&keys.appends, 0, -1).await.unwrap();
    let late: HashSet<u64> = checker.smembers(&keys.late).await.unwrap();
    let count: i64 = checker.get(&keys.count).await.unwrap();
    let inside: usize = checker.hlen(&keys.inside).await.unwrap();
    println!(
        "{} entries, {} appends in {elapsed:?}; {hang_kills} holders SIGKILLed inside, \
         {random_kills} processes SIGKILLed anywhere, {conn_kills} connections killed \
         ({mass_kills} times all of them); records {stats:?}; {} late appends",
        stats.get("entries").copied().unwrap_or(0),
        appends.len(),
        late.len()
    );
    for r in &done_reports {
        println!("child: {r}");
    }
    assert!(
        violations.is_empty(),
        "fencing violated:\n  {}",
        violations.join("\n  ")
    );
    let entries = stats.get("entries").copied().unwrap_or(0) as u64;
    assert!(entries >= GRANTS, "only {entries} grants");
    assert_eq!(stats.get("max_inside"), Some(&1));
    // Every entry appends, except those of holders killed between entering and appending.
    let killed = (hang_kills + random_kills) as u64;
    assert!(
        appends.len() as u64 <= entries && appends.len() as u64 + killed >= entries,
        "{} appends for {entries} entries and {killed} kills",
        appends.len()
    );
    if let Err(e) = check_appends(&appends, &late) {
        panic!("{e}");
    }
    assert_eq!(count, inside as i64, "the INCR/DECR counter drifted");
    assert_eq!(hang_kills, HANG_AT.len(), "holders killed inside");
    assert_eq!(random_kills, KILL_AT.len(), "processes killed anywhere");
    assert!(conn_kills > 0, "no connection was killed");
    let dropped: u64 = done_reports.iter().map(|r| field(r, "dropped")).sum();
    assert!(dropped > 0, "no lock() future was dropped mid-wait");

    // The next grant, after all that, is above every token handed out.
    let top = *appends.iter().max().unwrap();
    let lock = Mutex::<R>::builder(&client, NAME)
        .key_prefix(&prefix)
        .lease_ttl(KID_LEASE)
        .open()
        .await
        .unwrap();
    let guard = within_explained::<R, _, _>(
        reclaim_bound(KID_LEASE),
        "the lock after the run",
        lock.lock(),
        describe(&client, &lock_base(&prefix)),
    )
    .await
    .unwrap();
    let last = guard.fencing_token();
    assert!(last > top, "token {last} after the run, {top} during it");
    guard.unlock().await.unwrap();
    assert_eq!(lock.inspect().await.unwrap().next_fence, Some(last + 1));
    lock.shutdown().await.unwrap();
}

/// `name=value` from a report line, as a number (0 when absent).
fn field(report: &str, name: &str) -> u64 {
    report
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Kills one random library connection (every client but the records' and this test's
/// own), or one time in ten all of them. Returns (connections killed, 1 if all).
async fn kill_library_connections(checker: &mut MultiplexedConnection, my_id: u64) -> (u64, u64) {
    let Ok(list) = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async::<String>(checker)
        .await
    else {
        return (0, 0);
    };
    let spared = [format!(" name={RECORDER} "), format!(" name={CHECKER} ")];
    let ids: Vec<u64> = list
        .lines()
        .filter(|l| !spared.iter().any(|s| l.contains(s.as_str())))
        .filter_map(|l| l.strip_prefix("id="))
        .filter_map(|l| l.split(' ').next())
        .filter_map(|id| id.parse().ok())
        .filter(|&id| id != my_id)
        .collect();
    if ids.is_empty() {
        return (0, 0);
    }
    let all = fastrand::u8(0..10) == 0;
    let victims = if all {
        ids
    } else {
        vec![ids[fastrand::usize(..ids.len())]]
    };
    let mut n = 0;
    for id in victims {
        let killed: redis::RedisResult<u64> = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query_async(checker)
            .await;
        n += killed.unwrap_or(0);
    }
    (n, u64::from(all))
}

/// What a child counts (reported with `DONE`).
#[derive(Default)]
struct Counts {
    grants: AtomicU64,
    dropped: AtomicU64,
    timeouts: AtomicU64,
    try_misses: AtomicU64,
    errors: AtomicU64,
    late: AtomicU64,
    unlock_lost: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Child: two tasks on one handle take the lock until the run has `TARGET` entries,
/// recording each grant; on `HANG` (stdin) the next holder reports and never lets go.
async fn grants_child() {
    let client = common::client();
    let prefix = std::env::var(PREFIX).expect("prefix");
    let target: u64 = std::env::var(TARGET).expect("target").parse().unwrap();
    let lease = Duration::from_millis(std::env::var(LEASE_MS).expect("lease").parse().unwrap());
    let keys = Arc::new(RecKeys::new(&prefix));
    let rec = named_conn(&client, RECORDER).await;
    // Our connections may be killed while we join: try again.
    let lock = loop {
        match Mutex::<R>::builder(&client, NAME)
            .key_prefix(&prefix)
            .lease_ttl(lease)
            .open()
            .await
        {
            Ok(lock) => break lock,
            Err(_) => sleep::<R>(Duration::from_millis(10)).await,
        }
    };
    let hang = Arc::new(AtomicBool::new(false));
    {
        let hang = hang.clone();
        let mut stdin = stdin_lines();
        tokio::spawn(async move {
            while let Some(line) = stdin.next().await {
                if line == "HANG" {
                    hang.store(true, Ordering::SeqCst);
                }
            }
        });
    }
    let counts = Arc::new(Counts::default());
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let (lock, rec, keys) = (lock.clone(), rec.clone(), keys.clone());
            let (hang, counts) = (hang.clone(), counts.clone());
            tokio::spawn(take_turns(lock, rec, keys, target, hang, counts))
        })
        .collect();
    for t in tasks {
        t.await.expect("a task of the child panicked");
    }
    let c = &counts;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    report(&format!(
        "DONE grants={} dropped={} timeouts={} try_misses={} errors={} late={} unlock_lost={}",
        get(&c.grants),
        get(&c.dropped),
        get(&c.timeouts),
        get(&c.try_misses),
        get(&c.errors),
        get(&c.late),
        get(&c.unlock_lost),
    ));
    // Best effort: the parent may still be killing connections.
    let _ = lock.shutdown().await;
}

async fn take_turns(
    lock: Mutex<R>,
    mut rec: MultiplexedConnection,
    keys: Arc<RecKeys>,
    target: u64,
    hang: Arc<AtomicBool>,
    counts: Arc<Counts>,
) {
    loop {
        let taken = match fastrand::u8(0..100) {
            0..=54 => lock.lock().await,
            // Dropped mid-wait (or not: the grant may come first).
            55..=79 => {
                let wait = lock.lock();
                let timer = tokio::time::sleep(Duration::from_micros(fastrand::u64(100..3000)));
                futures::pin_mut!(wait);
                futures::pin_mut!(timer);
                match select(wait, timer).await {
                    Either::Left((taken, _)) => taken,
                    Either::Right(_) => {
                        bump(&counts.dropped);
                        continue;
                    }
                }
            }
            80..=89 => match lock.try_lock().await {
                Ok(Some(guard)) => Ok(guard),
                Ok(None) => {
                    bump(&counts.try_misses);
                    lock.lock().await
                }
                Err(e) => Err(e),
            },
            _ => match lock
                .lock_timeout(Duration::from_millis(fastrand::u64(1..30)))
                .await
            {
                Err(Error::Timeout(_)) => {
                    bump(&counts.timeouts);
                    continue;
                }
                other => other,
            },
        };
        let guard = match taken {
            Ok(guard) => guard,
            // A killed connection: try again.
            Err(_) => {
                bump(&counts.errors);
                sleep::<R>(Duration::from_millis(5)).await;
                continue;
            }
        };
        bump(&counts.grants);
        let token = guard.fencing_token();
        let holder = guard.holder().to_owned();
        let entries = enter(&mut rec, &keys, token, &holder).await;
        if hang.load(Ordering::SeqCst) {
            report(&format!("HANG {token}"));
            std::future::pending::<()>().await;
        }
        let _: u64 = rec
            .rpush(&keys.appends, token)
            .await
            .expect("append a token");
        if !leave(&mut rec, &keys, token, &holder).await {
            bump(&counts.late);
        }
        if fastrand::bool() {
            match guard.unlock().await {
                Ok(()) => {}
                Err(Error::LeaseLost) => bump(&counts.unlock_lost),
                Err(_) => bump(&counts.errors),
            }
        } else {
            drop(guard);
        }
        if entries >= target {
            return;
        }
    }
}

/// The records catch what they are meant to, and only that: two holders inside with valid
/// leases, a holder with a valid lease entering with a token not above an earlier one, a
/// token appended twice or out of order; not a holder whose lease had ended, nor a killed
/// holder that never left. Leases are written by hand in a lease set of their own.
#[test]
fn records_catch_violations() {
    run_tokio(async {
        let client = common::client();
        let prefix = common::unique_prefix("fencing-selftest");
        let keys = RecKeys::new(&prefix);
        let mut conn = named_conn(&client, CHECKER).await;
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
        let hour_on = secs * 1000 + micros / 1000 + 3_600_000;
        let _: () = redis::cmd("ZADD")
            .arg(&keys.leases)
            .arg(hour_on)
            .arg("a")
            .arg(hour_on)
            .arg("b")
            .arg(1)
            .arg("ended")
            .query_async(&mut conn)
            .await
            .unwrap();
        let violations = |conn: &mut MultiplexedConnection| {
            let mut conn = conn.clone();
            let key = keys.violations.clone();
            async move { conn.llen::<_, usize>(&key).await.unwrap() }
        };

        enter(&mut conn, &keys, 1, "a").await;
        assert_eq!(violations(&mut conn).await, 0);
        enter(&mut conn, &keys, 2, "b").await;
        assert_eq!(violations(&mut conn).await, 1, "two valid holders inside");
        assert!(leave(&mut conn, &keys, 1, "a").await);
        assert!(leave(&mut conn, &keys, 2, "b").await);
        enter(&mut conn, &keys, 2, "a").await;
        assert_eq!(violations(&mut conn).await, 2, "a token entered twice");
        assert!(leave(&mut conn, &keys, 2, "a").await);
        // A holder whose lease has ended enters and leaves late: counted, not a violation.
        enter(&mut conn, &keys, 1, "ended").await;
        assert!(!leave(&mut conn, &keys, 1, "ended").await);
        // A killed holder never leaves: the next entry drops it once its lease has ended.
        enter(&mut conn, &keys, 3, "ended").await;
        enter(&mut conn, &keys, 4, "a").await;
        assert!(leave(&mut conn, &keys, 4, "a").await);
        assert_eq!(violations(&mut conn).await, 2);
        let stats: HashMap<String, i64> = conn.hgetall(&keys.stats).await.unwrap();
        assert_eq!(stats.get("entries"), Some(&6));
        assert_eq!(stats.get("entered_stale"), Some(&2));
        assert_eq!(stats.get("max_inside"), Some(&2));
        assert_eq!(stats.get("top"), Some(&4));
        let count: i64 = conn.get(&keys.count).await.unwrap();
        let inside: usize = conn.hlen(&keys.inside).await.unwrap();
        assert_eq!((count, inside), (0, 0));
        let late: HashSet<u64> = conn.smembers(&keys.late).await.unwrap();
        assert_eq!(late, HashSet::from([1]));

        assert!(check_appends(&[1, 2, 5, 9], &HashSet::new()).is_ok());
        assert!(check_appends(&[1, 2, 2, 3], &HashSet::new()).is_err());
        assert!(check_appends(&[1, 3, 2], &HashSet::new()).is_err());
        assert!(check_appends(&[1, 3, 2], &HashSet::from([3])).is_ok());
        assert!(check_appends(&[1, 3, 3], &HashSet::from([3])).is_err());
    });
}

// ---------------------------------------------------------------- paused holder

/// A holder paused with SIGSTOP past its lease: meanwhile the lock goes to a new holder
/// with a greater token, whose write the storage accepts. Resumed, the paused holder sends
/// the write it was about to make with its old token: the storage, which keeps the highest
/// token it has seen per key, refuses it. The resumed holder sees `is_lost()` at once, its
/// `lost()` resolves, and `unlock()` returns `LeaseLost`; the new holder is unaffected.
#[test]
fn paused_holder_write_is_fenced_off() {
    run_tokio(within::<R, _>(
        Duration::from_secs(120),
        "paused holder",
        paused_holder(),
    ));
}

async fn paused_holder() {
    let lease = Duration::from_secs(1);
    let client = common::client();
    let prefix = common::unique_prefix("fencing-paused");
    let doc = format!("{prefix}:storage:doc");
    let envs = [
        (PREFIX, prefix.clone()),
        (LEASE_MS, lease.as_millis().to_string()),
    ];
    let mut a = Kid::spawn("paused", "paused holder", &common::redis_url(), &envs);
    let held = a.expect("HELD", Duration::from_secs(30)).await;
    let mut parts = held.split_whitespace();
    let old: u64 = parts.next().unwrap().parse().unwrap();
    assert_eq!(parts.next(), Some("accepted"), "its first write: {held}");
    signal(a.pid(), "-STOP");
    let paused = Instant::now();

    let lock = Mutex::<R>::builder(&client, NAME)
        .key_prefix(&prefix)
        .lease_ttl(lease)
        .open()
        .await
        .unwrap();
    let guard = within_explained::<R, _, _>(
        reclaim_bound(lease),
        "the lock of the paused holder",
        lock.lock(),
        describe(&client, &lock_base(&prefix)),
    )
    .await
    .unwrap();
    let new = guard.fencing_token();
    println!(
        "paused holder's token {old}; new holder's {new}, granted {:?} after the pause",
        paused.elapsed()
    );
    assert!(
        new > old,
        "new token {new} not above the paused holder's {old}"
    );
    let mut conn = named_conn(&client, CHECKER).await;
    assert_eq!(
        store(&mut conn, &doc, new, "written by the new holder")
            .await
            .unwrap(),
        Stored::Accepted
    );

    // Resumed, it sends the write it was about to make when it was paused.
    assert!(a.send("WRITE"));
    signal(a.pid(), "-CONT");
    let wrote = a.expect("WROTE", Duration::from_secs(30)).await;
    assert_eq!(
        wrote,
        format!("rejected {new}"),
        "the storage took the stale write"
    );
    let lost = a.expect("LOST", Duration::from_secs(30)).await;
    assert_eq!(
        lost, "is_lost=true lost_resolved=true",
        "the resumed holder was not told"
    );
    let unlocked = a.expect("UNLOCK", Duration::from_secs(30)).await;
    assert_eq!(unlocked, "LeaseLost");
    a.exits_ok(Duration::from_secs(30)).await;

    let record: HashMap<String, String> = conn.hgetall(&doc).await.unwrap();
    assert_eq!(record.get("token"), Some(&new.to_string()));
    assert_eq!(
        record.get("value").map(String::as_str),
        Some("written by the new holder")
    );
    assert!(!guard.is_lost());
    guard.unlock().await.unwrap();
    assert_eq!(lock.inspect().await.unwrap().next_fence, Some(new + 1));
    lock.shutdown().await.unwrap();
}

/// Child: takes the lock, writes once, reports; after `WRITE` (sent while it is stopped)
/// writes again with the same token, then reports what it was told.
async fn paused_child() {
    let client = common::client();
    let prefix = std::env::var(PREFIX).expect("prefix");
    let lease = Duration::from_millis(std::env::var(LEASE_MS).expect("lease").parse().unwrap());
    let doc = format!("{prefix}:storage:doc");
    let mut conn = named_conn(&client, RECORDER).await;
    let lock = Mutex::<R>::builder(&client, NAME)
        .key_prefix(&prefix)
        .lease_ttl(lease)
        .open()
        .await
        .unwrap();
    let guard = lock.lock().await.unwrap();
    let token = guard.fencing_token();
    let first = store(&mut conn, &doc, token, "written by the first holder")
        .await
        .unwrap();
    report(&format!("HELD {token} {}", show(first)));
    let mut stdin = stdin_lines();
    assert_eq!(stdin.next().await.as_deref(), Some("WRITE"));
    let late = store(&mut conn, &doc, token, "late write of the paused holder")
        .await
        .unwrap();
    report(&format!("WROTE {}", show(late)));
    let is_lost = guard.is_lost();
    let resolved = tokio::time::timeout(Duration::from_secs(10), guard.lost())
        .await
        .is_ok();
    report(&format!("LOST is_lost={is_lost} lost_resolved={resolved}"));
    let unlocked = guard.unlock().await;
    report(&format!(
        "UNLOCK {}",
        match unlocked {
            Err(Error::LeaseLost) => "LeaseLost".to_owned(),
            other => format!("{other:?}"),
        }
    ));
    lock.shutdown().await.unwrap();
}

fn show(s: Stored) -> String {
    match s {
        Stored::Accepted => "accepted".to_owned(),
        Stored::Rejected { highest } => format!("rejected {highest}"),
    }
}

// ---------------------------------------------------------------- data loss

/// After Redis restarts without persistence (every key gone), a live handle's `lock()`
/// must not wait forever: it gets the lock again (the tokens start again at 1, as
/// documented) or fails. A semaphore's watchdog re-creates its pool in this situation.
#[test]
fn lock_comes_back_after_redis_restart() {
    let mut server = common::RedisServer::start();
    let client = redis::Client::open(server.url.as_str()).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let lease = Duration::from_secs(1);
    let prefix = common::unique_prefix("fencing-restart");
    let lock = rt.block_on(async {
        let lock = Mutex::<R>::builder(&client, NAME)
            .key_prefix(&prefix)
            .lease_ttl(lease)
            .open()
            .await
            .unwrap();
        lock.lock().await.unwrap().unlock().await.unwrap();
        lock
    });
    server.restart();
    rt.block_on(async {
        match lock.lock_timeout(reclaim_bound(lease)).await {
            Ok(guard) => guard.unlock().await.unwrap(),
            Err(Error::Timeout(t)) => panic!(
                "lock() still waiting {t:?} after the restart; Redis has: {}",
                describe(&client, &lock_base(&prefix)).await
            ),
            // Refusing is acceptable: only waiting forever is not.
            Err(_) => {}
        }
        lock.shutdown().await.unwrap();
    });
}

/// If the lock's metadata hash disappears while its token survives (deleted by hand, or
/// evicted on a server allowed to evict with `allow_eviction_policy(true)`), no later
/// grant may carry a token handed out before: the lock may refuse or wait, but a repeated
/// token lets a stale holder past a storage that accepts equal tokens.
#[test]
fn tokens_never_repeat_after_metadata_loss() {
    run_tokio(async {
        let client = common::client();
        let prefix = common::unique_prefix("fencing-metaloss");
        let lock = Mutex::<R>::builder(&client, NAME)
            .key_prefix(&prefix)
            .lease_ttl(Duration::from_secs(1))
            .open()
            .await
            .unwrap();
        let guard = lock.lock().await.unwrap();
        let mut highest = guard.fencing_token();
        let mut conn = named_conn(&client, CHECKER).await;
        let _: () = conn
            .del(format!("{}:meta", lock_base(&prefix)))
            .await
            .unwrap();
        let _ = guard.unlock().await;
        for _ in 0..3 {
            // Refusing or waiting (an error) is safe; a repeated token is not.
            if let Ok(guard) = lock.lock_timeout(Duration::from_secs(3)).await {
                let token = guard.fencing_token();
                assert!(
                    token > highest,
                    "token {token} granted after token {highest}"
                );
                highest = token;
                let _ = guard.unlock().await;
            }
        }
        let _ = lock.shutdown().await;
    });
}

// ---------------------------------------------------------------- children

/// The child side of the tests above. Does nothing unless spawned by one of them.
#[test]
#[ignore = "child process of the other tests in this file; runs only when spawned by them"]
fn child() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    match role.as_str() {
        "grants" => rt.block_on(grants_child()),
        "paused" => rt.block_on(paused_child()),
        other => panic!("unknown role {other}"),
    }
}
