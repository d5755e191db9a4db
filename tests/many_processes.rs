//! Several permits at once, resizing and per-permit leases across real OS processes
//! (issue #9): requests for `count - 1` from two processes never deadlock; a request for
//! the whole count is served among a stream of single requests from another process; a
//! process SIGKILLed while it holds the gate and part of its permits gives everything
//! back; the count changes under load without a new grant beyond it; hard leases run out,
//! are extended, are reported lost, and are reclaimed after the hard lease when their
//! process is killed. Two tests reproduce, in one process, defects found while writing
//! these and since fixed (a lowered count bypassed by local handoff once the handle knew
//! of it; a hard lease taking the gate token).
//!
//! The children are this test binary re-executed (`tests/kids`). Every count of holders is
//! kept in Redis by the test itself, in Lua scripts, independently of the library's
//! bookkeeping. Timings are measured and printed; the only time limits asserted are hang
//! guards far above what is documented.

#![cfg(all(feature = "tokio", unix))]

mod chaos_support;
#[allow(unused_imports)] // not every test file uses all of the harness
mod common;
mod kids;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chaos_support::{
    describe, poll_until, raw_conn, run_tokio, sem_base, sem_totals, sleep, spawn, within,
    within_explained, Totals,
};
use kids::{env, report, stdin_lines, Kid, ROLE};
use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;
use redis_sync::{Error, Semaphore, SemaphoreState, Tokio};

type R = Tokio;

const NAME: &str = "REDIS_SYNC_TEST_NAME";
const COUNT: &str = "REDIS_SYNC_TEST_COUNT";
const N: &str = "REDIS_SYNC_TEST_N";
const ROUNDS: &str = "REDIS_SYNC_TEST_ROUNDS";
const TASKS: &str = "REDIS_SYNC_TEST_TASKS";
const LEASE_MS: &str = "REDIS_SYNC_TEST_LEASE_MS";
const HARD_MS: &str = "REDIS_SYNC_TEST_HARD_MS";
const HANDOFF: &str = "REDIS_SYNC_TEST_HANDOFF";

/// A hang guard: no step of these tests comes near it unless something is broken.
const HANG: Duration = Duration::from_secs(60);

/// Records entering a critical section with `n` permits: adds `n` to the holders inside
/// and, if that exceeds `limit`, counts a violation; keeps the highest value seen and the
/// caller's number of entries. KEYS: inside, max, entries, over. ARGV: n, limit.
const ENTER: &str = r#"
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
if n > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], n) end
redis.call('INCR', KEYS[3])
if n > tonumber(ARGV[2]) then redis.call('INCR', KEYS[4]) end
return n
"#;

/// Records entering with `n` permits against the count and pending reduction (`debt`)
/// the semaphore's metadata has at that instant: the permits in existence are
/// `count + debt`, so more holders inside than that is a violation. Keeps, per count and
/// phase (`draining` while debt > 0, `settled` once it is 0), the highest number inside
/// and the number of entries. KEYS: inside, meta, stats (hash). ARGV: n.
const ENTER_RESIZED: &str = r#"
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
local m = redis.call('HMGET', KEYS[2], 'count', 'debt')
local c = tonumber(m[1] or '0')
local d = tonumber(m[2] or '0')
local phase = 'settled'
if d > 0 then phase = 'draining' end
local f = c .. ':' .. phase
redis.call('HINCRBY', KEYS[3], f .. ':entries', 1)
if n > tonumber(redis.call('HGET', KEYS[3], f .. ':max') or '0') then
  redis.call('HSET', KEYS[3], f .. ':max', n)
end
if n > c + d then
  redis.call('HINCRBY', KEYS[3], 'over', 1)
  redis.call('HSET', KEYS[3], 'over:last', n .. ' inside, count ' .. c .. ', debt ' .. d)
end
return n
"#;

fn rec(name: &str, what: &str) -> String {
    format!("{name}:rec:{what}")
}

/// Runs [`ENTER`] for `who` (its entries are counted under `entries:<who>`).
async fn enter(conn: &mut MultiplexedConnection, name: &str, who: &str, n: u32, limit: u32) {
    let _: i64 = redis::Script::new(ENTER)
        .key(rec(name, "inside"))
        .key(rec(name, "max"))
        .key(rec(name, &format!("entries:{who}")))
        .key(rec(name, "over"))
        .arg(n)
        .arg(limit)
        .invoke_async(conn)
        .await
        .unwrap();
}

async fn leave(conn: &mut MultiplexedConnection, name: &str, n: u32) {
    let _: i64 = conn.decr(rec(name, "inside"), n).await.unwrap();
}

async fn get_or_0(conn: &mut MultiplexedConnection, key: &str) -> u64 {
    let v: Option<u64> = conn.get(key).await.unwrap();
    v.unwrap_or(0)
}

/// Redis `TIME` in ms: the clock leases are kept on.
async fn server_ms(conn: &mut MultiplexedConnection) -> u64 {
    let (s, us): (u64, u64) = redis::cmd("TIME").query_async(conn).await.unwrap();
    s * 1000 + us / 1000
}

/// A holder's lease expiry (ms, Redis clock), or `None` when it has no lease.
async fn lease_end(conn: &mut MultiplexedConnection, name: &str, holder: &str) -> Option<u64> {
    let s: Option<f64> = conn
        .zscore(format!("{}:leases", sem_base(name)), holder)
        .await
        .unwrap();
    s.map(|s| s as u64)
}

/// A snapshot taken without joining the semaphore.
async fn look(client: &redis::Client, name: &str) -> SemaphoreState {
    Semaphore::<R>::builder(client, name)
        .inspect()
        .await
        .unwrap()
}

/// Everything back: `count` free, nothing held, no gate holder, no pending reduction,
/// and the raw lists agree (the gate token is the only token outside the pool).
async fn assert_all_back(client: &redis::Client, name: &str, count: u32) {
    let st = look(client, name).await;
    assert_eq!(
        (
            st.count,
            st.free,
            st.held(),
            st.gate_holder.as_deref(),
            st.pending_reduction
        ),
        (Some(count), count as usize, 0, None, 0),
        "{st:?}"
    );
    let mut raw = raw_conn(client).await;
    assert_eq!(
        sem_totals(&mut raw, name).await.unwrap(),
        Totals {
            free: count as usize,
            held: 0,
            lists: 0
        }
    );
    let gate: usize = raw.llen(format!("{}:gate", sem_base(name))).await.unwrap();
    assert_eq!(gate, 1, "the gate token is not back in its list");
}

/// 1. Two processes each ask for `count - 1` of `count`, 200 times: both finish (the gate
///    lets one collect at a time, so neither holds part of what the other waits for), and
///    never more than `count` permits are out by an independent counter in Redis.
#[test]
fn acquire_many_two_processes_no_deadlock() {
    run_tokio(async {
        const COUNT_: u32 = 4;
        const ROUNDS_: usize = 200;
        let client = common::client();
        let name = common::unique_prefix("many-deadlock-procs");
        let envs = [
            (NAME, name.clone()),
            (COUNT, COUNT_.to_string()),
            (N, (COUNT_ - 1).to_string()),
            (ROUNDS, ROUNDS_.to_string()),
        ];
        let mut kids: Vec<Kid> = (0..2)
            .map(|i| Kid::spawn("many", &format!("many child {i}"), &envs))
            .collect();
        for kid in &mut kids {
            kid.expect("READY", HANG).await;
        }
        // Both start together.
        for kid in &mut kids {
            kid.send("GO");
        }
        let started = Instant::now();
        let base = sem_base(&name);
        for kid in &mut kids {
            let done = within_explained::<R, _, _>(
                HANG,
                "a process asking for count - 1 (deadlock?)",
                kid.expect("DONE", Duration::from_secs(3600)),
                describe(&client, &base),
            )
            .await;
            println!(
                "acquire_many({}) of {COUNT_} x {ROUNDS_}: {done}",
                COUNT_ - 1
            );
        }
        let took = started.elapsed();
        for kid in kids {
            kid.exits_ok(Duration::from_secs(30)).await;
        }
        let mut raw = raw_conn(&client).await;
        let max = get_or_0(&mut raw, &rec(&name, "max")).await;
        let over = get_or_0(&mut raw, &rec(&name, "over")).await;
        let inside = get_or_0(&mut raw, &rec(&name, "inside")).await;
        let entries = get_or_0(&mut raw, &rec(&name, "entries:many")).await;
        println!(
            "two processes, {} requests for {} of {COUNT_} in {took:?}; at most {max} permits out",
            2 * ROUNDS_,
            COUNT_ - 1
        );
        assert_eq!(over, 0, "more than {COUNT_} permits out at once");
        // Two requests for 3 of 4 can never overlap.
        assert_eq!(max, u64::from(COUNT_ - 1));
        assert_eq!((entries, inside), (2 * ROUNDS_ as u64, 0));
        assert_all_back(&client, &name, COUNT_).await;
    });
}

/// Measurements of one request for the whole count among single requests.
#[derive(Debug, Default)]
struct Starvation {
    took: Vec<Duration>,
    ahead: Vec<u64>,
}

/// One child with 8 tasks taking single permits in a loop (its handle's local handoff
/// limit set to `handoff`, or the default); the parent asks for the whole count `rounds`
/// times and measures how long it waits and how many single grants go ahead of it.
async fn starvation_run(handoff: Option<u32>, rounds: usize) -> Starvation {
    const COUNT_: u32 = 4;
    let client = common::client();
    let label = match handoff {
        Some(h) => format!("handoff{h}"),
        None => "handoff-default".to_owned(),
    };
    let name = common::unique_prefix(&format!("many-starve-{label}"));
    let base = sem_base(&name);
    let big = Semaphore::<R>::create(&client, &name, COUNT_)
        .await
        .unwrap();
    let mut envs = vec![
        (NAME, name.clone()),
        (COUNT, COUNT_.to_string()),
        (TASKS, "8".to_owned()),
    ];
    if let Some(h) = handoff {
        envs.push((HANDOFF, h.to_string()));
    }
    let mut kid = Kid::spawn("singles", &format!("singles ({label})"), &envs);
    // The stream is flowing (it reports after its first 200 grants).
    kid.expect("RUNNING", HANG).await;
    let mut raw = raw_conn(&client).await;
    let singles = rec(&name, "entries:singles");
    let mut out = Starvation::default();
    for _ in 0..rounds {
        let before = get_or_0(&mut raw, &singles).await;
        let asked = Instant::now();
        let all = within_explained::<R, _, _>(
            Duration::from_secs(30),
            "a request for the whole count among single requests (starved?)",
            big.acquire_many(COUNT_),
            describe(&client, &base),
        )
        .await
        .unwrap();
        out.took.push(asked.elapsed());
        let after = get_or_0(&mut raw, &singles).await;
        out.ahead.push(after - before);
        // All or nothing: no single holder is inside with it.
        enter(&mut raw, &name, "big", COUNT_, COUNT_).await;
        leave(&mut raw, &name, COUNT_).await;
        all.release().await.unwrap();
        // The stream resumes before the next request.
        poll_until::<R, _, _, _, _>(HANG, "the single requests resuming", || {
            let mut raw = raw.clone();
            let singles = singles.clone();
            async move {
                let now = get_or_0(&mut raw, &singles).await;
                if now >= after + 50 {
                    Ok(())
                } else {
                    Err(now)
                }
            }
        })
        .await;
    }
    kid.send("STOP");
    kid.expect("DONE", HANG).await;
    kid.exits_ok(Duration::from_secs(30)).await;
    let over = get_or_0(&mut raw, &rec(&name, "over")).await;
    assert_eq!(over, 0, "more than {COUNT_} permits out at once");
    big.shutdown().await.unwrap();
    assert_all_back(&client, &name, COUNT_).await;
    out
}

/// 2. A request for the whole count (4) in this process among a continuous stream of
///    single requests from 8 tasks of another process is served, every time. Measured:
///    how long it waits and how many single grants go ahead of it, with the singles'
///    handle at its default local handoff (16) and with local handoff off. Asserted only:
///    each completes within 30 s, with at most 10x the documented number of single
///    grants ahead of it (`n × (blocked clients ahead + 1) × (local_handoff_limit + 1)`).
#[test]
fn acquire_many_not_starved_by_another_process() {
    run_tokio(async {
        for handoff in [None, Some(0)] {
            let m = starvation_run(handoff, 5).await;
            let label = match handoff {
                Some(h) => format!("local_handoff_limit({h})"),
                None => "default local handoff (16)".to_owned(),
            };
            let worst = m.took.iter().max().unwrap();
            let worst_ahead = *m.ahead.iter().max().unwrap();
            // n permits, each after at most (blocked clients ahead + 1) permits came back
            // to Redis (the singles' handle blocks on up to 4 connections), each of which
            // went through up to `local_handoff_limit` local grants first.
            let bound = 4 * (4 + 1) * (u64::from(handoff.unwrap_or(16)) + 1);
            println!(
                "acquire_many(4) among 8 single-permit tasks of another process, {label}: \
                 waited {:?} (worst {worst:?}); single grants ahead {:?} (worst {worst_ahead}, \
                 documented about {bound})",
                m.took, m.ahead
            );
            assert!(
                worst_ahead <= 10 * bound,
                "{worst_ahead} single grants went ahead, 10x the documented {bound}"
            );
        }
    });
}

/// 3. A process holding the gate and 2 of the 3 permits it asks for (another holder keeps
///    the third) is SIGKILLed: once its 1 s lease has run out, the gate and both permits
///    come back by themselves, and a new request for the whole count succeeds.
#[test]
fn killed_collector_gives_back_gate_and_permits() {
    run_tokio(async {
        const COUNT_: u32 = 3;
        let kid_lease = Duration::from_secs(1);
        let lease = Duration::from_secs(2);
        let client = common::client();
        let name = common::unique_prefix("many-killed");
        let base = sem_base(&name);
        let keeper = Semaphore::<R>::builder(&client, &name)
            .lease_ttl(lease)
            .create(COUNT_)
            .await
            .unwrap();
        let kept = keeper.acquire().await.unwrap();
        let mut kid = Kid::spawn(
            "collector",
            "collector",
            &[
                (NAME, name.clone()),
                (COUNT, COUNT_.to_string()),
                (LEASE_MS, kid_lease.as_millis().to_string()),
            ],
        );
        kid.expect("ASKING", HANG).await;
        // No signal from inside a blocked request: watch Redis until the child holds the
        // gate and every permit it can get.
        let collector = poll_until::<R, _, _, _, _>(HANG, "the child collecting", || {
            let (client, name) = (client.clone(), name.clone());
            let kept_by = kept.holder().to_owned();
            async move {
                let st = look(&client, &name).await;
                match st.gate_holder.clone() {
                    Some(h)
                        if h != kept_by
                            && st.free == 0
                            && st.holders.iter().any(|x| x.id == h && x.permits == 2) =>
                    {
                        Ok(h)
                    }
                    _ => Err(st),
                }
            }
        })
        .await;
        let mut raw = raw_conn(&client).await;
        let held: Vec<String> = raw
            .lrange(format!("{base}:held:{collector}"), 0, -1)
            .await
            .unwrap();
        assert_eq!(held.len(), 3, "gate and two permits: {held:?}");

        kid.sigkill();
        let killed = Instant::now();
        // The third permit comes back now: to the pool, or (if Redis has not yet seen the
        // connection close) into the dead child's list by its blocked move, to be
        // reclaimed with the rest.
        kept.release().await.unwrap();
        within_explained::<R, _, _>(
            kid_lease + lease.mul_f64(0.4) + Duration::from_secs(10),
            "the gate and permits of the killed collector coming back",
            poll_until::<R, _, _, _, _>(HANG, "everything back", || {
                let (client, name) = (client.clone(), name.clone());
                async move {
                    let st = look(&client, &name).await;
                    if st.free == COUNT_ as usize && st.gate_holder.is_none() && st.held() == 0 {
                        Ok(())
                    } else {
                        Err(st)
                    }
                }
            }),
            describe(&client, &base),
        )
        .await;
        println!(
            "gate and permits of a collector SIGKILLed mid-request back after {:?} (its lease {kid_lease:?})",
            killed.elapsed()
        );
        assert_eq!(lease_end(&mut raw, &name, &collector).await, None);
        assert_all_back(&client, &name, COUNT_).await;
        let all = within::<R, _>(
            Duration::from_secs(30),
            "a request for the whole count after the reclaim",
            keeper.acquire_many(COUNT_),
        )
        .await
        .unwrap();
        assert_eq!(all.count(), COUNT_);
        all.release().await.unwrap();
        keeper.shutdown().await.unwrap();
        assert_all_back(&client, &name, COUNT_).await;
    });
}

#[derive(Clone, Copy, Debug)]
enum Resize {
    Set(u32),
    Add(u32),
    Reduce(u32),
}

/// 4. The count changes under load from two processes (4 tasks each, one of them asking
///    for 2 permits at a time): 6 → 3 → 8 → 2 → 5. At every entry the holders inside are
///    at most the permits in existence (`count + pending reduction`, read from Redis in the
///    same script), so during a change never more than `max(before, after)`, and once the
///    pending reduction is paid never more than the new count. Every handle's `count()`
///    learns the new count within about one renewal interval (lease 1 s: ~0.33 s ±20%).
#[test]
fn resize_under_load_from_two_processes() {
    run_tokio(async {
        let lease = Duration::from_secs(1);
        let first = 6;
        let steps = [
            Resize::Set(3),
            Resize::Add(5),
            Resize::Reduce(6),
            Resize::Set(5),
        ];
        let client = common::client();
        let name = common::unique_prefix("many-resize");
        let resizer = Semaphore::<R>::builder(&client, &name)
            .lease_ttl(lease)
            .create(first)
            .await
            .unwrap();
        // A handle that holds nothing and never waits: it learns a new count at its
        // renewals only (the busy children also when their waits nudge a renewal).
        let idle = Semaphore::<R>::builder(&client, &name)
            .lease_ttl(lease)
            .attach(Some(Duration::from_secs(10)))
            .await
            .unwrap();
        let envs = [
            (NAME, name.clone()),
            (LEASE_MS, lease.as_millis().to_string()),
            (TASKS, "4".to_owned()),
        ];
        let mut kids: Vec<Kid> = (0..2)
            .map(|i| Kid::spawn("load", &format!("load child {i}"), &envs))
            .collect();
        for kid in &mut kids {
            kid.expect("READY", HANG).await;
        }
        let mut raw = raw_conn(&client).await;
        let stats = rec(&name, "stats");
        let settled_entries = |count: u32| {
            let (raw, stats) = (raw.clone(), stats.clone());
            async move {
                let mut raw = raw;
                let n: Option<u64> = raw
                    .hget(&stats, format!("{count}:settled:entries"))
                    .await
                    .unwrap();
                n.unwrap_or(0)
            }
        };
        // Load under the first count.
        poll_until::<R, _, _, _, _>(HANG, "load under the first count", || async {
            let n = settled_entries(first).await;
            if n >= 30 {
                Ok(())
            } else {
                Err(n)
            }
        })
        .await;
        let mut before = first;
        let mut table = Vec::new();
        let mut worst_learn = Duration::ZERO;
        let mut worst_idle = Duration::ZERO;
        for step in steps {
            let after = match step {
                Resize::Set(n) => {
                    resizer.set_count(n).await.unwrap();
                    n
                }
                Resize::Add(k) => resizer.add_permits(k).await.unwrap(),
                Resize::Reduce(k) => resizer.reduce_permits(k).await.unwrap(),
            };
            let resized = Instant::now();
            // This handle knows at once.
            assert_eq!(resizer.count(), after, "{step:?}");
            let pending_then = look(&client, &name).await.pending_reduction;
            // The pending reduction is paid as holders give permits back.
            poll_until::<R, _, _, _, _>(HANG, "the pending reduction paid", || async {
                let st = look(&client, &name).await;
                if st.pending_reduction == 0 && st.count == Some(after) {
                    Ok(())
                } else {
                    Err(st)
                }
            })
            .await;
            let paid = resized.elapsed();
            // Every other handle learns the count at its next renewal: all watched
            // together, each child asked over its stdin.
            let mut idle_learned = None;
            let mut learned: Vec<Option<Duration>> = vec![None; kids.len()];
            while idle_learned.is_none() || learned.iter().any(Option::is_none) {
                if idle_learned.is_none() && idle.count() == after {
                    idle_learned = Some(resized.elapsed());
                }
                for (kid, t) in kids.iter_mut().zip(learned.iter_mut()) {
                    if t.is_none() {
                        kid.send("COUNT");
                        let c: u32 = kid.expect("COUNT", HANG).await.parse().unwrap();
                        if c == after {
                            *t = Some(resized.elapsed());
                        }
                    }
                }
                // A hang guard, far above one renewal interval.
                assert!(
                    resized.elapsed() < Duration::from_secs(10),
                    "{step:?}: count() not learned: idle {idle_learned:?}, children {learned:?}"
                );
                sleep::<R>(Duration::from_millis(5)).await;
            }
            let idle_learned = idle_learned.unwrap();
            let learned: Vec<Duration> = learned.into_iter().map(Option::unwrap).collect();
            worst_idle = worst_idle.max(idle_learned);
            worst_learn = learned.iter().copied().fold(worst_learn, Duration::max);
            // Load under the new count once it is settled.
            poll_until::<R, _, _, _, _>(HANG, "load under the new count", || async {
                let n = settled_entries(after).await;
                if n >= 30 {
                    Ok(())
                } else {
                    Err(n)
                }
            })
            .await;
            table.push((
                step,
                before,
                after,
                pending_then,
                paid,
                idle_learned,
                learned,
            ));
            before = after;
        }
        // `create` with another count still fails; with the count in Redis it joins.
        match Semaphore::<R>::create(&client, &name, first).await {
            Err(Error::CountMismatch { requested, actual }) => {
                assert_eq!((requested, actual), (first, before));
            }
            other => panic!("create({first}) after resizing to {before}: {other:?}"),
        }
        let joined = Semaphore::<R>::create(&client, &name, before)
            .await
            .unwrap();
        assert_eq!(joined.count(), before);
        joined.shutdown().await.unwrap();

        for kid in &mut kids {
            kid.send("STOP");
        }
        for kid in &mut kids {
            kid.expect("DONE", HANG).await;
        }
        for kid in kids {
            kid.exits_ok(Duration::from_secs(30)).await;
        }
        let all: std::collections::HashMap<String, String> = raw.hgetall(&stats).await.unwrap();
        let field = |count: u32, phase: &str, what: &str| -> u64 {
            all.get(&format!("{count}:{phase}:{what}"))
                .map_or(0, |v| v.parse().unwrap())
        };
        println!(
            "resize under load (2 processes x 4 tasks, lease {lease:?}, renewal ~{:?}):",
            lease / 3
        );
        for (step, before, after, pending, paid, idle, learned) in &table {
            println!(
                "  {step:?}: {before} -> {after}, pending reduction {pending} paid after {paid:?}; \
                 inside at most {} while draining ({} entries), {} once settled ({} entries); \
                 count() learned by the idle handle after {idle:?}, by the children after {learned:?}",
                field(*after, "draining", "max"),
                field(*after, "draining", "entries"),
                field(*after, "settled", "max"),
                field(*after, "settled", "entries"),
            );
        }
        println!(
            "  worst time to learn a new count: idle handle {worst_idle:?}, busy children {worst_learn:?}"
        );
        assert_eq!(
            all.get("over"),
            None,
            "more holders inside than permits in existence: {:?}",
            all.get("over:last")
        );
        for (step, before, after, ..) in &table {
            let draining = field(*after, "draining", "max");
            let settled = field(*after, "settled", "max");
            assert!(
                draining <= u64::from((*before).max(*after)),
                "{step:?}: {draining} inside during the change"
            );
            assert!(
                settled <= u64::from(*after),
                "{step:?}: {settled} inside after the reduction was paid"
            );
        }
        let inside = get_or_0(&mut raw, &rec(&name, "inside")).await;
        assert_eq!(inside, 0);
        idle.shutdown().await.unwrap();
        resizer.shutdown().await.unwrap();
        assert_all_back(&client, &name, before).await;
    });
}

/// A handle holding both permits of a count of 2, with a third task of the same handle
/// waiting, while another handle lowers the count to 1 (pending reduction 1). One holder
/// gives its permit back. Returns the pending reduction right after that release, and
/// whether the waiting task was granted a permit then (before the second holder released).
async fn reduction_with_a_local_waiter(handoff: Option<u32>) -> (u32, bool) {
    let client = common::client();
    let name = common::unique_prefix("many-reduce-handoff");
    // A short lease: the handle learns the lowered count at its next renewal (~0.33 s).
    let mut builder = Semaphore::<R>::builder(&client, &name).lease_ttl(Duration::from_secs(1));
    if let Some(h) = handoff {
        builder = builder.local_handoff_limit(h);
    }
    let h = builder.create(2).await.unwrap();
    let other = Semaphore::<R>::create(&client, &name, 2).await.unwrap();
    let p1 = h.acquire().await.unwrap();
    let p2 = h.acquire().await.unwrap();
    let waiter = {
        let h = h.clone();
        spawn::<R, _, _>(async move { h.acquire().await })
    };
    poll_until::<R, _, _, _, _>(HANG, "the third task waiting", || {
        let waiting = h.stats().waiting;
        async move {
            if waiting == 1 {
                Ok(())
            } else {
                Err(waiting)
            }
        }
    })
    .await;
    other.set_count(1).await.unwrap();
    let st = look(&client, &name).await;
    assert_eq!((st.count, st.free, st.pending_reduction), (Some(1), 0, 1));
    // Documented: a handle hands released permits to its own waiting tasks until it learns
    // of the reduction, at its next renewal; from then on they go through Redis.
    poll_until::<R, _, _, _, _>(HANG, "the handle learning the new count", || {
        let count = h.count();
        async move {
            if count == 1 {
                Ok(())
            } else {
                Err(count)
            }
        }
    })
    .await;
    p1.release().await.unwrap();
    let pending = look(&client, &name).await.pending_reduction;
    // Settled either way once the second holder is gone.
    p2.release().await.unwrap();
    let got = within::<R, _>(Duration::from_secs(30), "the waiter", waiter.join())
        .await
        .unwrap();
    let granted_early = pending > 0;
    got.release().await.unwrap();
    h.shutdown().await.unwrap();
    other.shutdown().await.unwrap();
    assert_all_back(&client, &name, 1).await;
    (pending, granted_early)
}

/// Lowering the count: a permit given back while the reduction is pending is destroyed,
/// not granted, even to a task waiting on the same handle. Passes with local handoff off.
#[test]
fn reduction_paid_before_local_grant_without_handoff() {
    run_tokio(async {
        let (pending, early) = reduction_with_a_local_waiter(Some(0)).await;
        assert_eq!(pending, 0, "the given-back permit was not destroyed");
        assert!(!early);
    });
}

/// The same with the default local handoff, once the handle has learnt of the reduction
/// (at its next renewal): the released permit is destroyed, not handed to the waiting task.
#[test]
fn reduction_paid_before_local_grant_with_default_handoff() {
    run_tokio(async {
        let (pending, early) = reduction_with_a_local_waiter(None).await;
        assert_eq!(
            pending, 0,
            "the permit given back went to a local waiter while 1 permit was owed to the lowered count"
        );
        assert!(!early);
    });
}

/// A request for the whole count is collecting (it holds the gate and 3 of 4 permits)
/// when another handle lowers the count to 3: it can never complete. It fails with
/// `PermitsOutOfRange` once its handle learns the new count, giving back the gate and its
/// permits, and a single acquire of another handle, stalled meanwhile (the gate is held,
/// the pool empty), is served. Measured: how long that takes with the default lease
/// (blocking waits of 2 s; each nudges a renewal, which brings the count).
#[test]
fn request_beyond_a_lowered_count_fails_and_frees_the_gate() {
    run_tokio(async {
        let client = common::client();
        let name = common::unique_prefix("many-lowered");
        let base = sem_base(&name);
        let a = Semaphore::<R>::create(&client, &name, 4).await.unwrap();
        let b = Semaphore::<R>::create(&client, &name, 4).await.unwrap();
        let c = Semaphore::<R>::create(&client, &name, 4).await.unwrap();
        let one = a.acquire().await.unwrap();
        let request = {
            let b = b.clone();
            spawn::<R, _, _>(async move { b.acquire_many(4).await.map(|p| p.count()) })
        };
        poll_until::<R, _, _, _, _>(HANG, "the request collecting", || {
            let (client, name) = (client.clone(), name.clone());
            async move {
                let st = look(&client, &name).await;
                if st.gate_holder.is_some() && st.free == 0 && st.held() == 4 {
                    Ok(())
                } else {
                    Err(st)
                }
            }
        })
        .await;
        c.set_count(3).await.unwrap();
        one.release().await.unwrap();
        let lowered = Instant::now();
        let single = {
            let c = c.clone();
            spawn::<R, _, _>(async move { c.acquire().await })
        };
        let failed = within_explained::<R, _, _>(
            Duration::from_secs(30),
            "a request beyond the lowered count failing",
            request.join(),
            describe(&client, &base),
        )
        .await;
        let failed_after = lowered.elapsed();
        assert!(
            matches!(
                failed,
                Err(Error::InvalidArgument(
                    redis_sync::Invalid::PermitsOutOfRange { n: 4, count: 3 }
                ))
            ),
            "{failed:?}"
        );
        let p = within::<R, _>(Duration::from_secs(30), "a single acquire", single.join())
            .await
            .unwrap();
        println!(
            "a request for 4 collecting when the count went 4 -> 3 failed after {failed_after:?}; \
             a single acquire of another handle stalled {:?} meanwhile",
            lowered.elapsed()
        );
        p.release().await.unwrap();
        for s in [a, b, c] {
            s.shutdown().await.unwrap();
        }
        assert_all_back(&client, &name, 3).await;
    });
}

/// 5. Hard leases in one process: a permit with a 1 s hard lease on a handle with the
///    default 300 s lease runs out; its holder is told (`lost()` resolves, `is_lost()`),
///    and a waiter of another handle gets the permit after the hard lease's end on the
///    Redis clock (delay measured). `extend` keeps one past its first end and never
///    shortens it.
#[test]
fn hard_lease_runs_out_is_reported_and_extends() {
    run_tokio(async {
        let hard = Duration::from_secs(1);
        let client = common::client();
        let name = common::unique_prefix("many-hard");
        let a = Semaphore::<R>::create(&client, &name, 1).await.unwrap();
        let b = Semaphore::<R>::create(&client, &name, 1).await.unwrap();
        let mut raw = raw_conn(&client).await;

        // Runs out.
        let p = a.acquire_with_lease(hard).await.unwrap();
        let ends = lease_end(&mut raw, &name, p.holder())
            .await
            .expect("a hard lease of its own");
        let waiter = {
            let b = b.clone();
            spawn::<R, _, _>(async move { b.acquire().await })
        };
        within::<R, _>(Duration::from_secs(30), "lost() of a hard lease", p.lost()).await;
        let told = server_ms(&mut raw).await;
        assert!(p.is_lost());
        let got = within_explained::<R, _, _>(
            Duration::from_secs(30),
            "the waiter getting the permit of a run-out hard lease",
            waiter.join(),
            describe(&client, &sem_base(&name)),
        )
        .await
        .unwrap();
        let granted = server_ms(&mut raw).await;
        // Never granted before the hard lease ended on the server, and its holder knows.
        assert!(
            granted >= ends,
            "granted at {granted}, hard lease ends {ends}"
        );
        assert!(p.is_lost());
        println!(
            "hard lease {hard:?}: holder told {} ms before its end on the Redis clock; \
             another handle's waiter granted {} ms after it",
            ends as i64 - told as i64,
            granted - ends
        );
        assert!(matches!(
            p.extend(Duration::from_secs(1)).await,
            Err(Error::LeaseLost)
        ));
        assert!(matches!(p.release().await, Err(Error::LeaseLost)));
        got.release().await.unwrap();
        assert_all_back(&client, &name, 1).await;

        // Extended past its first end; never shortened.
        let q = a.acquire_with_lease(hard).await.unwrap();
        let q_holder = q.holder().to_owned();
        let e0 = lease_end(&mut raw, &name, q.holder()).await.unwrap();
        q.extend(Duration::from_secs(4)).await.unwrap();
        let e1 = lease_end(&mut raw, &name, q.holder()).await.unwrap();
        assert!(e1 > e0, "extend(4 s) moved the end from {e0} to {e1}");
        q.extend(Duration::from_millis(200)).await.unwrap();
        let e2 = lease_end(&mut raw, &name, q.holder()).await.unwrap();
        assert_eq!(e2, e1, "a shorter extend shortened the lease");
        sleep::<R>(hard + Duration::from_millis(500)).await;
        let now = server_ms(&mut raw).await;
        assert!(now > e0, "slept past the first end");
        if now < e1 {
            // Still inside the extended lease (always, unless this machine stalled 2.5 s).
            assert!(!q.is_lost());
            assert!(b.try_acquire().await.unwrap().is_none());
            q.release().await.unwrap();
        } else {
            println!("skipped the check inside the extended lease: stalled until {now} >= {e1}");
            drop(q);
        }
        // Given back (or run out), the hard holder leaves no lease behind.
        poll_until::<R, _, _, _, _>(HANG, "the hard holder's lease removed", || {
            let (mut raw, name, q_holder) = (raw.clone(), name.clone(), q_holder.clone());
            async move {
                match lease_end(&mut raw, &name, &q_holder).await {
                    None => Ok(()),
                    Some(e) => Err(e),
                }
            }
        })
        .await;
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
        assert_all_back(&client, &name, 1).await;
    });
}

/// A permit with a hard lease taken on a handle whose own request for several permits
/// holds the gate: the hard lease must carry a permit, and the gate must stay with the
/// request. Count 2: this handle holds one permit (`c`), another handle the other; this
/// handle's `acquire_many(2)` takes the gate and waits; a task of this handle waits in
/// `acquire_with_lease`, and gets `c`'s permit by local handoff when `c` is dropped.
///
/// Today `HARDEN` moves the rightmost token of the handle's list, which is the gate token
/// (`G`) here, not a permit: the hard holder's list holds `G`, `gate_holder` names the
/// hard holder, the permit stays in the handle's list owned by nobody, and the
/// `acquire_many(2)` never completes while this handle lives (the hard permit's release
/// returns `LeaseLost`; when the hard lease runs out the gate goes back to the gate list
/// while the request still believes it holds it).
#[test]
fn hard_lease_on_a_handle_whose_request_holds_the_gate() {
    run_tokio(async {
        let client = common::client();
        let name = common::unique_prefix("many-harden-gate");
        let base = sem_base(&name);
        let h = Semaphore::<R>::create(&client, &name, 2).await.unwrap();
        let other = Semaphore::<R>::create(&client, &name, 2).await.unwrap();
        let c = h.acquire().await.unwrap();
        let h_holder = c.holder().to_owned();
        let o = other.acquire().await.unwrap();
        let request = {
            let h = h.clone();
            spawn::<R, _, _>(async move { h.acquire_many(2).await.map(|p| p.count()) })
        };
        poll_until::<R, _, _, _, _>(HANG, "the request holding the gate", || {
            let (client, name, h_holder) = (client.clone(), name.clone(), h_holder.clone());
            async move {
                let st = look(&client, &name).await;
                if st.gate_holder.as_deref() == Some(h_holder.as_str()) {
                    Ok(())
                } else {
                    Err(st)
                }
            }
        })
        .await;
        let waiting = h.stats().waiting;
        let hardened = {
            let h = h.clone();
            spawn::<R, _, _>(async move { h.acquire_with_lease(Duration::from_secs(5)).await })
        };
        poll_until::<R, _, _, _, _>(HANG, "the hard-lease acquire waiting", || {
            let now = h.stats().waiting;
            async move {
                if now > waiting {
                    Ok(())
                } else {
                    Err(now)
                }
            }
        })
        .await;
        // Local handoff to the waiting task, then the hard lease.
        drop(c);
        let p = within::<R, _>(HANG, "the hard-lease acquire", hardened.join())
            .await
            .unwrap();
        let mut raw = raw_conn(&client).await;
        let hard_list: Vec<String> = raw
            .lrange(format!("{base}:held:{}", p.holder()), 0, -1)
            .await
            .unwrap();
        let handle_list: Vec<String> = raw
            .lrange(format!("{base}:held:{h_holder}"), 0, -1)
            .await
            .unwrap();
        assert!(
            !hard_list.iter().any(|t| t == "G") && hard_list.len() == 1,
            "the hard lease took {hard_list:?} (the handle's list now {handle_list:?})"
        );
        assert_eq!(
            look(&client, &name).await.gate_holder.as_deref(),
            Some(h_holder.as_str())
        );
        // The request completes once the two permits come back.
        o.release().await.unwrap();
        p.release().await.unwrap();
        let got = within_explained::<R, _, _>(
            Duration::from_secs(30),
            "the request for 2",
            request.join(),
            describe(&client, &base),
        )
        .await;
        assert_eq!(got.unwrap(), 2);
        h.shutdown().await.unwrap();
        other.shutdown().await.unwrap();
        assert_all_back(&client, &name, 2).await;
    });
}

/// 5 (processes). A process with a long normal lease (120 s) holding a permit with a
/// short hard lease (2 s) is SIGKILLed: the permit comes back after the hard lease, not
/// the normal one, to a waiter blocked in this process; the killed process's normal lease
/// is still running then.
#[test]
fn killed_process_hard_lease_reclaimed_after_hard_lease() {
    run_tokio(async {
        let normal = Duration::from_secs(120);
        let hard = Duration::from_secs(2);
        let client = common::client();
        let name = common::unique_prefix("many-hard-killed");
        let base = sem_base(&name);
        let waiter_sem = Semaphore::<R>::create(&client, &name, 1).await.unwrap();
        let mut kid = Kid::spawn(
            "hard",
            "hard-lease holder",
            &[
                (NAME, name.clone()),
                (LEASE_MS, normal.as_millis().to_string()),
                (HARD_MS, hard.as_millis().to_string()),
            ],
        );
        let hard_holder = kid.expect("HELD", HANG).await;
        let mut raw = raw_conn(&client).await;
        let ends = lease_end(&mut raw, &name, &hard_holder).await;
        let waiter = {
            let s = waiter_sem.clone();
            spawn::<R, _, _>(async move { s.acquire().await })
        };
        kid.sigkill();
        let killed = Instant::now();
        // Far below the normal lease: only the hard lease can explain a grant in time.
        let got = within_explained::<R, _, _>(
            Duration::from_secs(40),
            "the permit of a killed process's hard lease",
            waiter.join(),
            describe(&client, &base),
        )
        .await
        .unwrap();
        let granted = server_ms(&mut raw).await;
        let ends = ends.expect("the hard lease was there when the child reported");
        assert!(granted >= ends);
        println!(
            "killed process's permit (hard lease {hard:?}, normal lease {normal:?}) granted {} ms \
             after the hard lease ended, {:?} after the kill",
            granted - ends,
            killed.elapsed()
        );
        // The killed process's own lease (its handle's) is still running.
        let st = waiter_sem.inspect().await.unwrap();
        let child_base = hard_holder.rsplit_once('-').unwrap().0;
        let child = st
            .holders
            .iter()
            .find(|h| h.id.starts_with(&format!("{child_base}-")))
            .unwrap_or_else(|| panic!("the killed process's normal lease is gone: {st:?}"));
        assert_eq!(child.permits, 0);
        assert!(
            child.lease_remaining.is_some(),
            "its normal lease ran out already: {st:?}"
        );
        assert_eq!(lease_end(&mut raw, &name, &hard_holder).await, None);
        got.release().await.unwrap();
        waiter_sem.shutdown().await.unwrap();
        let st = look(&client, &name).await;
        assert_eq!((st.free, st.held()), (1, 0), "{st:?}");
    });
}

/// The child side of the tests above. Does nothing unless spawned by one of them.
#[test]
#[ignore = "child process of the other tests in this file; runs only when spawned by them"]
fn child() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let name: String = env(NAME);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let client = common::client();
            let mut builder = Semaphore::<R>::builder(&client, &name);
            if let Ok(ms) = std::env::var(LEASE_MS) {
                builder = builder.lease_ttl(Duration::from_millis(ms.parse().unwrap()));
            }
            if let Ok(h) = std::env::var(HANDOFF) {
                builder = builder.local_handoff_limit(h.parse().unwrap());
            }
            let stdin = stdin_lines();
            match role.as_str() {
                "many" => many_child(builder, &client, &name, stdin).await,
                "singles" => singles_child(builder, &client, &name, stdin).await,
                "collector" => {
                    let sem = builder.attach(Some(Duration::from_secs(10))).await.unwrap();
                    let count: u32 = env(COUNT);
                    report("ASKING");
                    let p = sem.acquire_many(count).await.unwrap();
                    // Never reached: another holder keeps a permit until this is killed.
                    report(&format!("GOT {}", p.count()));
                    std::future::pending::<()>().await;
                }
                "load" => load_child(builder, &client, &name, stdin).await,
                "hard" => {
                    let sem = builder.attach(Some(Duration::from_secs(10))).await.unwrap();
                    let hard: u64 = env(HARD_MS);
                    let p = sem
                        .acquire_with_lease(Duration::from_millis(hard))
                        .await
                        .unwrap();
                    report(&format!("HELD {}", p.holder()));
                    std::future::pending::<()>().await;
                }
                other => panic!("unknown role {other}"),
            }
        });
}

type Lines = futures::channel::mpsc::UnboundedReceiver<String>;

/// Asks for `N` of `COUNT` permits `ROUNDS` times, recording each hold.
async fn many_child(
    builder: redis_sync::SemaphoreBuilder<R>,
    client: &redis::Client,
    name: &str,
    mut stdin: Lines,
) {
    use futures::StreamExt;
    let (count, n, rounds): (u32, u32, usize) = (env(COUNT), env(N), env(ROUNDS));
    let sem = builder.create(count).await.unwrap();
    let mut rec_conn = raw_conn(client).await;
    report("READY");
    assert_eq!(stdin.next().await.as_deref(), Some("GO"));
    let started = Instant::now();
    let mut worst = Duration::ZERO;
    for i in 0..rounds {
        let asked = Instant::now();
        let p = sem.acquire_many(n).await.unwrap();
        worst = worst.max(asked.elapsed());
        assert_eq!(p.count(), n);
        enter(&mut rec_conn, name, "many", n, count).await;
        tokio::time::sleep(Duration::from_micros(fastrand::u64(0..2000))).await;
        assert!(!p.is_lost());
        leave(&mut rec_conn, name, n).await;
        // Both ways of giving back: awaited, and from `Drop`.
        if i % 2 == 0 {
            p.release().await.unwrap();
        } else {
            drop(p);
        }
    }
    report(&format!(
        "DONE {rounds} rounds in {:?}, longest wait {worst:?}",
        started.elapsed()
    ));
    sem.shutdown().await.unwrap();
}

/// `TASKS` tasks taking one permit at a time until told to stop.
async fn singles_child(
    builder: redis_sync::SemaphoreBuilder<R>,
    client: &redis::Client,
    name: &str,
    mut stdin: Lines,
) {
    use futures::StreamExt;
    let (count, tasks): (u32, usize) = (env(COUNT), env(TASKS));
    let sem = builder.attach(Some(Duration::from_secs(10))).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let grants = Arc::new(AtomicUsize::new(0));
    let rec_conn = raw_conn(client).await;
    let workers: Vec<_> = (0..tasks)
        .map(|_| {
            let (sem, stop, grants) = (sem.clone(), stop.clone(), grants.clone());
            let (mut rec_conn, name) = (rec_conn.clone(), name.to_owned());
            tokio::spawn(async move {
                while !stop.load(Ordering::Acquire) {
                    let p = sem.acquire().await.unwrap();
                    enter(&mut rec_conn, &name, "singles", 1, count).await;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    leave(&mut rec_conn, &name, 1).await;
                    drop(p);
                    if grants.fetch_add(1, Ordering::AcqRel) + 1 == 200 {
                        report("RUNNING");
                    }
                }
            })
        })
        .collect();
    assert_eq!(stdin.next().await.as_deref(), Some("STOP"));
    stop.store(true, Ordering::Release);
    for w in workers {
        w.await.unwrap();
    }
    report(&format!("DONE {}", grants.load(Ordering::Acquire)));
    sem.shutdown().await.unwrap();
}

/// `TASKS` tasks (the first asking for 2 permits at a time, the others for 1) recording
/// each hold against the count in Redis; answers `COUNT` with `count()`.
async fn load_child(
    builder: redis_sync::SemaphoreBuilder<R>,
    client: &redis::Client,
    name: &str,
    mut stdin: Lines,
) {
    use futures::StreamExt;
    let tasks: usize = env(TASKS);
    let sem = builder.attach(Some(Duration::from_secs(10))).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let rec_conn = raw_conn(client).await;
    let meta = format!("{}:meta", sem_base(name));
    let workers: Vec<_> = (0..tasks)
        .map(|i| {
            let (sem, stop) = (sem.clone(), stop.clone());
            let (mut rec_conn, name, meta) = (rec_conn.clone(), name.to_owned(), meta.clone());
            let n = if i == 0 { 2 } else { 1 };
            tokio::spawn(async move {
                let script = redis::Script::new(ENTER_RESIZED);
                while !stop.load(Ordering::Acquire) {
                    let (one, many) = if n == 1 {
                        (Some(sem.acquire().await.unwrap()), None)
                    } else {
                        (None, Some(sem.acquire_many(n).await.unwrap()))
                    };
                    let _: i64 = script
                        .key(rec(&name, "inside"))
                        .key(&meta)
                        .key(rec(&name, "stats"))
                        .arg(n)
                        .invoke_async(&mut rec_conn)
                        .await
                        .unwrap();
                    tokio::time::sleep(Duration::from_micros(fastrand::u64(0..3000))).await;
                    let lost = one.as_ref().is_some_and(|p| p.is_lost())
                        || many.as_ref().is_some_and(|p| p.is_lost());
                    if lost {
                        // Explains a violation, should one be recorded.
                        let _: i64 = rec_conn.incr(rec(&name, "lost"), 1).await.unwrap();
                    }
                    leave(&mut rec_conn, &name, n).await;
                    drop((one, many));
                }
            })
        })
        .collect();
    report("READY");
    while let Some(cmd) = stdin.next().await {
        match cmd.as_str() {
            "COUNT" => report(&format!("COUNT {}", sem.count())),
            "STOP" => break,
            other => panic!("unknown command {other}"),
        }
    }
    stop.store(true, Ordering::Release);
    for w in workers {
        w.await.unwrap();
    }
    report("DONE");
    sem.shutdown().await.unwrap();
}
