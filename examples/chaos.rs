//! Chaos run: worker processes hammer one semaphore while this program SIGKILLs and
//! restarts random workers and kills random Redis client connections, and checks the
//! invariants with its own record, not the library's bookkeeping.
//!
//! ```text
//! cargo run --release --example chaos -- --processes 8 --count 3 --secs 30
//! ```
//!
//! Options: `--processes N` (8), `--count C` (3), `--secs S` (30), `--lease-ms L` (2000),
//! `--network-faults` (off), `--cluster` (off), `--no-migrations` (off), `--primitive P`
//! (`semaphore`), `--handles H` (1).
//! Uses `REDIS_URL` when set, else starts a private `redis-server` (from PATH).
//!
//! `--primitive` chooses what the workers hammer (every fault injection below applies to
//! each, with `--network-faults` or with `--cluster`):
//! - `semaphore` (the default): `Semaphore::acquire`, one permit at a time, of `count`.
//! - `mutex`: `Mutex::lock` (one permit: `--count` must be 1 or left out). Besides the
//!   checks below, every holder records its fencing token with its entry (d).
//! - `many`: `Semaphore::acquire_many(k)` with a random `k` in `1..=count` each time; the
//!   checks count permits (the sum of the `k` inside), and the gate token `G` of requests
//!   for several permits is checked too (e).
//! - `rwlock`: `RwLock` with `max_readers` = `count`; each worker reads (80 %) or writes
//!   (20 %). A writer counts as `count` permits, a reader as one; besides (a), never a
//!   writer together with anyone else and never more than `count` readers; the write
//!   fencing tokens are checked as in (d), the gate as in (e).
//!
//! `--handles H` (`semaphore` and `many` only): each worker makes one `Coordinator` (on
//! its URL: the relay's with `--network-faults`; `Coordinator::cluster` with `--cluster`)
//! and `H` handles of the semaphore from it, siblings that hand a released permit straight
//! to one another (the `TRANSFER` script) rather than through the pool, and runs `H`
//! loops at once, one a handle, each doing what the one loop of `H` = 1 does. (`H` = 1,
//! the default, is the plain run: one handle, made without a coordinator but on a
//! cluster.) The loops share one connection for their records and one sequence for their
//! stays; the checks are the same, per holder (every handle has its own). A worker reports
//! the permits its handles handed to siblings (`Semaphore::stats().handed_to_siblings`)
//! in a `SIBLINGS id n` line after a stay whenever the number grew, and in its `STATS`
//! line; the last line adds `handles=.. handed_to_siblings=..`, the sum of every worker's
//! last report (a killed worker's as of its last stay). With `semaphore` a run where it
//! is 0 fails (the path was never taken); `acquire_many`'s permits never go to a sibling,
//! so with `many` it stays 0 (the handles still share one coordinator).
//!
//! `--network-faults`: the workers' library connections go through a fault-injecting TCP
//! relay (`tests/common/relay.rs`); this program, its checks and the workers' own records
//! keep the direct URL. About every 1-2 s (at most one per second of the run, none in its
//! last lease + 1 s, so that workers can recover before the end-state checks) one fault
//! hits all the workers' connections open at that moment: a black hole (they fall silent,
//! no FIN or RST, and stay so: the library must notice and use new connections), a delay
//! of 50-300 ms each way for 1-2 s, or a reset (RST). Some stays in the critical section
//! (3%) then outlast the lease, so that a fault can take the lease from a holder inside; a
//! worker asked to stop before it could attach exits cleanly.
//!
//! `--cluster` (needs `--features cluster`): the run is on a Redis Cluster, the one in
//! `REDIS_CLUSTER_URLS` (comma-separated `redis://host:port/` of every node) or else a
//! local one this program starts (6 `redis-server` processes, 3 primaries and 3 replicas:
//! `tests/common/cluster.rs`). The workers use `Coordinator::cluster`, their records a
//! cluster connection. Besides the process kills and the connection kills (on the primary
//! that owns the semaphore's slot), one topology change hits the shard of that slot about
//! every 2-4 s: a manual failover (`CLUSTER FAILOVER` on its replica) or, every second
//! change, a migration of the slot key by key (with pauses, so that clients meet ASK and
//! TRYAGAIN) to another primary, and back the next time; none in the last lease + 1 s.
//! Connections are killed only between changes (the harness's own connections must
//! survive them). `--no-migrations`: failovers only. The checks are the same, with this
//! program's connections on the slot's owner (following MOVED and ASK); the sums of (b)
//! taken while the slot migrates are skipped (its keys are on two nodes then), and the end
//! state is read on the node that owns the slot at the end.
//!
//! What is checked:
//! - (a) At no instant are more than `count` workers inside the critical section while
//!   their leases are valid. Each worker, right after `acquire` returns and right before it
//!   releases, records itself in a hash of its own (`chaos:{name}:inside`, member → holder
//!   id) with a Lua script that, atomically, counts the members whose holder's lease is
//!   still valid on the server clock. A worker killed while inside stays in the hash, so
//!   it counts until its lease could have expired (the lease is renewed by nobody once it
//!   is dead). Entering is the only moment the number can grow, so checking there finds
//!   the maximum.
//! - (b) No permit is ever created or destroyed: every ~20 ms, one script sums the pool
//!   list and every held list of the semaphore (whatever the library thinks of them); the
//!   sum must always be `count`. At the end, after the workers stopped and expired leases
//!   were reclaimed, a fresh handle's `inspect` must show free + held by live leases ==
//!   count, and the raw pool list must hold exactly `count` permits.
//! - (c) No worker is inside its critical section past its lease's expiry without having
//!   been told. A worker leaves at once when `permit.lost()` resolves, and reports on its
//!   stdout when it entered, left and was told (wall-clock ms). A thread of this program
//!   polls the lease set (`...:leases`, holder -> expiry in ms on the server clock, the
//!   same machine's clock) every 10 ms and keeps each holder's latest expiry (a renewal
//!   never revives an expired lease, so for a lost lease that is when it expired). For
//!   every lost lease, the told delay is the instant the holder was told minus that expiry
//!   (negative: told before it expired); the worst is `worst_told_delay_ms` (`none` when no
//!   holder was told). A worker still inside more than 50 ms after its lease expired, told
//!   or not (a killed worker counts as inside until its kill), fails the run.
//! - (d) `mutex`, `rwlock`: fencing tokens grow. The entry script of (a) also appends the
//!   grant's fencing token (`rwlock`: of write grants only) to `chaos:{name}:tokens` when
//!   the holder's lease is valid on the server clock at that instant, else to
//!   `chaos:{name}:stale_tokens` (a holder that lost its lease before it could record).
//!   A valid record precedes the end of that grant (its release or reclaim), which
//!   precedes the next grant, so at the end the list must be strictly increasing (and so
//!   free of duplicates). `max_token` is its last token.
//! - (e) `mutex`, `many`, `rwlock`: the gate token `G` is conserved: every sum of (b) also
//!   counts the `G`s in the gate list and in the held lists (where `G` is not counted as
//!   a permit); there must always be exactly one. At the end, nobody holding it, the gate
//!   list must be exactly `[G]`.
//!
//! For the end state of (b), every primitive also waits for a snapshot in which free +
//! held by live leases adds up to `count` (up to the same bound):
//! `inspect` reads the pool and the held lists in two requests, so a reclaim in between
//! (by the checking handle's own renewal) can hide a permit from one snapshot.
//!
//! The last line is `chaos: ok ...` (exit 0) or `chaos: FAILED ...` (exit 1); both end with
//! `acquisitions=.. kills=.. conn_kills=.. max_inside=.. permits_end=.. net_faults=..
//! leases_lost=.. worst_told_delay_ms=..` (with `--cluster`, then `failovers=..
//! migrations=..`; with `--handles` > 1, then `handles=.. handed_to_siblings=..`). Other
//! primitives than `semaphore` start it with `primitive=..` and
//! add `max_token=.. stale_tokens=..` (`mutex`), `max_readers=.. writes=.. max_token=..
//! stale_tokens=..` (`rwlock`); `max_inside` and `permits_end` count permits.

#[cfg(feature = "cluster")]
#[path = "../tests/common/cluster.rs"]
mod cluster;
#[path = "../tests/common/relay.rs"]
mod relay;
#[path = "../tests/common/server.rs"]
mod server;

#[cfg(not(any(feature = "tokio", feature = "smol", feature = "async-std")))]
fn main() {
    eprintln!("the chaos example needs one of the features tokio, smol, async-std");
    std::process::exit(2);
}

#[cfg(any(feature = "tokio", feature = "smol", feature = "async-std"))]
fn main() {
    std::process::exit(chaos::main());
}

#[cfg(any(feature = "tokio", feature = "smol", feature = "async-std"))]
mod chaos {
    use std::collections::HashMap;
    use std::future::Future;
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Child, Command, Stdio};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{mpsc, Arc};
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    use futures::future::{select, Either};
    use redis_sync::{
        Coordinator, Error, LeaseLostFuture, Mutex, MutexGuard, Permit, Permits, ReadGuard,
        Runtime, RwLock, Semaphore, WriteGuard,
    };

    use super::{relay::Relay, server};

    /// `CLIENT SETNAME` of this program's own connections: never killed by the chaos.
    const CHECKER: &str = "chaos-checker";
    /// How long a worker may stay inside past its lease's expiry (scheduling slack).
    const LATE_SLACK_MS: i64 = 50;

    #[cfg(feature = "tokio")]
    type Rt = redis_sync::Tokio;
    #[cfg(all(feature = "smol", not(feature = "tokio")))]
    type Rt = redis_sync::Smol;
    #[cfg(all(feature = "async-std", not(any(feature = "tokio", feature = "smol"))))]
    type Rt = redis_sync::AsyncStd;

    fn block_on<F: Future>(f: F) -> F::Output {
        #[cfg(feature = "tokio")]
        {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime")
                .block_on(f)
        }
        #[cfg(all(feature = "smol", not(feature = "tokio")))]
        {
            smol::block_on(f)
        }
        #[cfg(all(feature = "async-std", not(any(feature = "tokio", feature = "smol"))))]
        {
            async_std::task::block_on(f)
        }
    }

    async fn sleep(d: Duration) {
        Rt::try_current().expect("runtime").sleep(d).await;
    }

    /// Wall-clock ms since the epoch: comparable with Redis `TIME` on the same machine.
    fn wall_ms() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }

    /// Records an entry: adds `member` (→ `holder`) to the inside hash and counts the
    /// permits of the members whose holder's lease is valid now; drops members whose lease
    /// ended (it can never become valid again). Keeps the maximum, the number of entries
    /// and a record of every violation. KEYS: inside, stats, violations, leases, tokens,
    /// stale tokens. ARGV: member, holder, count, permits of this entry, kind (`''` for
    /// the semaphore, whose members are recorded as their holder alone; else `p` a request
    /// for several, `m` a mutex, `r` a reader, `w` a writer, recorded as `holder permits
    /// kind`), fencing token (`''`: none). The token goes to the tokens list when this
    /// holder's lease is valid now, else to the stale list. Idempotent for one member, so
    /// it can be retried after a killed connection.
    const ENTER: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local count = tonumber(ARGV[3])
local value = ARGV[2]
if ARGV[5] ~= '' then value = ARGV[2] .. ' ' .. ARGV[4] .. ' ' .. ARGV[5] end
local fresh = redis.call('HSET', KEYS[1], ARGV[1], value)
if fresh == 1 then
  redis.call('HINCRBY', KEYS[2], 'acquisitions', 1)
  if ARGV[5] == 'w' then redis.call('HINCRBY', KEYS[2], 'writes', 1) end
end
local all = redis.call('HGETALL', KEYS[1])
local n, readers, writers, mine, seen = 0, 0, 0, false, {}
for i = 1, #all, 2 do
  local m, v = all[i], all[i + 1]
  local h, w, k = string.match(v, '^(%S+) (%d+) (%a)$')
  if not h then h, w, k = v, '1', '' end
  local e = redis.call('ZSCORE', KEYS[4], h)
  if e and tonumber(e) > now then
    n = n + tonumber(w)
    if k == 'r' then readers = readers + 1 elseif k == 'w' then writers = writers + 1 end
    if m == ARGV[1] then mine = true end
    local s = m .. '/' .. h .. ' lease ' .. (tonumber(e) - now) .. 'ms'
    if k ~= '' then s = s .. ' ' .. k .. w end
    table.insert(seen, s)
  elseif m == ARGV[1] then
    redis.call('HINCRBY', KEYS[2], 'entered_without_lease', 1)
  else
    redis.call('HDEL', KEYS[1], m)
  end
end
if fresh == 1 and ARGV[6] ~= '' then
  if mine then
    redis.call('RPUSH', KEYS[5], ARGV[6] .. ' ' .. ARGV[1] .. ' ' .. ARGV[2])
  else
    redis.call('RPUSH', KEYS[6], ARGV[6] .. ' ' .. ARGV[1] .. ' ' .. ARGV[2])
  end
end
if n > tonumber(redis.call('HGET', KEYS[2], 'max') or '0') then
  redis.call('HSET', KEYS[2], 'max', n)
end
if readers > tonumber(redis.call('HGET', KEYS[2], 'max_readers') or '0') then
  redis.call('HSET', KEYS[2], 'max_readers', readers)
end
local why = {}
if n > count then table.insert(why, n .. ' permits > ' .. count) end
if writers > 1 then table.insert(why, writers .. ' writers') end
if writers > 0 and readers > 0 then table.insert(why, 'a writer with ' .. readers .. ' readers') end
if readers > count then table.insert(why, readers .. ' readers > ' .. count) end
if #why > 0 then
  redis.call('HINCRBY', KEYS[2], 'violations', 1)
  local s = table.concat(seen, ', ')
  if ARGV[5] ~= '' then s = table.concat(why, ', ') .. ': ' .. s end
  redis.call('RPUSH', KEYS[3], s)
end
return n
"#;

    /// One atomic sum of the pool and of every held list: `{free, held}`. KEYS: pool (on a
    /// cluster, the slot it routes by; the held lists share it). ARGV: held lists' pattern.
    const TOTALS: &str = r#"
local held = 0
for _, k in ipairs(redis.call('KEYS', ARGV[1])) do held = held + redis.call('LLEN', k) end
return {redis.call('LLEN', KEYS[1]), held}
"#;

    /// [`TOTALS`] with the gate token of requests for several permits: `{free, held
    /// permits, gate tokens}`, the `G`s in the held lists counted as gate tokens, not as
    /// permits. KEYS: pool, gate. ARGV: held lists' pattern.
    const TOTALS_GATE: &str = r#"
local held, gates = 0, #redis.call('LPOS', KEYS[2], 'G', 'COUNT', 0)
for _, k in ipairs(redis.call('KEYS', ARGV[1])) do
  local g = #redis.call('LPOS', k, 'G', 'COUNT', 0)
  held = held + redis.call('LLEN', k) - g
  gates = gates + g
end
return {redis.call('LLEN', KEYS[1]), held, gates}
"#;

    /// Every key of the semaphore (`ARGV[1]`: their pattern) with its type, TTL and
    /// content, and the server's clock: what a failure report shows. KEYS: pool (routing).
    const DUMP: &str = r#"
local t = redis.call('TIME')
local out = {'now=' .. (tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))}
for _, k in ipairs(redis.call('KEYS', ARGV[1])) do
  local ty = redis.call('TYPE', k)['ok']
  local v = {}
  if ty == 'list' then v = redis.call('LRANGE', k, 0, -1)
  elseif ty == 'zset' then v = redis.call('ZRANGE', k, 0, -1, 'WITHSCORES')
  elseif ty == 'hash' then v = redis.call('HGETALL', k) end
  table.insert(out, k .. ' ' .. ty .. ' pttl=' .. redis.call('PTTL', k) .. ' [' ..
    table.concat(v, ' ') .. ']')
end
return out
"#;

    /// [`DUMP`] of the semaphore's keys on the node `con` talks to, one line.
    fn dump_keys(con: &mut KeyConn, pool: &str, base: &str) -> String {
        let r: redis::RedisResult<Vec<String>> = con.query(
            redis::cmd("EVAL")
                .arg(DUMP)
                .arg(1)
                .arg(pool)
                .arg(format!("{base}:*")),
        );
        match r {
            Ok(lines) => format!("on {}: {}", con.url(), lines.join("; ")),
            Err(e) => format!("on {}: cannot read the keys: {e}", con.url()),
        }
    }

    /// What the workers hammer (`--primitive`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Prim {
        /// `Semaphore::acquire`: one permit at a time.
        Semaphore,
        /// `Mutex::lock`, with fencing tokens.
        Mutex,
        /// `Semaphore::acquire_many(k)`, `k` random in `1..=count`.
        Many,
        /// `RwLock::read` or `RwLock::write`, `max_readers` = `count`.
        RwLock,
    }

    impl Prim {
        fn parse(s: &str) -> Option<Prim> {
            Some(match s {
                "semaphore" => Prim::Semaphore,
                "mutex" => Prim::Mutex,
                "many" => Prim::Many,
                "rwlock" => Prim::RwLock,
                _ => return None,
            })
        }

        fn name(self) -> &'static str {
            match self {
                Prim::Semaphore => "semaphore",
                Prim::Mutex => "mutex",
                Prim::Many => "many",
                Prim::RwLock => "rwlock",
            }
        }

        /// The library's default key prefix of the primitive.
        fn prefix(self) -> &'static str {
            match self {
                Prim::Semaphore | Prim::Many => redis_sync::DEFAULT_SEMAPHORE_PREFIX,
                Prim::Mutex => redis_sync::DEFAULT_MUTEX_PREFIX,
                Prim::RwLock => redis_sync::DEFAULT_RWLOCK_PREFIX,
            }
        }

        /// Grants carry fencing tokens (of write grants, for a read-write lock).
        fn fenced(self) -> bool {
            matches!(self, Prim::Mutex | Prim::RwLock)
        }

        /// Checked for the gate token too (check (e)).
        fn gated(self) -> bool {
            self != Prim::Semaphore
        }
    }

    #[derive(Clone, Debug)]
    struct Args {
        worker: bool,
        primitive: Prim,
        network_faults: bool,
        /// On a Redis Cluster (feature `cluster`).
        cluster: bool,
        /// With `--cluster`: migrations of the slot too, not only failovers.
        migrations: bool,
        /// Semaphore handles of the same name per worker, from one coordinator (siblings).
        handles: usize,
        processes: usize,
        count: u32,
        secs: u64,
        lease: Duration,
        /// Worker: where the library connects (the relay's URL with `--network-faults`;
        /// with `--cluster`, every node's URL, comma-separated).
        url: String,
        /// Worker: where its own records go (always the direct URL).
        check_url: String,
        name: String,
        id: usize,
    }

    fn parse_args() -> Result<Args, String> {
        let mut a = Args {
            worker: false,
            primitive: Prim::Semaphore,
            network_faults: false,
            cluster: false,
            migrations: true,
            handles: 1,
            processes: 8,
            count: 3,
            secs: 30,
            lease: Duration::from_millis(2000),
            url: String::new(),
            check_url: String::new(),
            name: String::new(),
            id: 0,
        };
        let mut count_given = false;
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            if flag == "--worker" {
                a.worker = true;
                continue;
            }
            if flag == "--network-faults" {
                a.network_faults = true;
                continue;
            }
            if flag == "--cluster" {
                a.cluster = true;
                continue;
            }
            if flag == "--no-migrations" {
                a.migrations = false;
                continue;
            }
            let value = it.next().ok_or(format!("{flag} needs a value"))?;
            let bad = |_| format!("bad value {value:?} for {flag}");
            match flag.as_str() {
                "--processes" => a.processes = value.parse().map_err(bad)?,
                "--handles" => a.handles = value.parse().map_err(bad)?,
                "--count" => {
                    a.count = value.parse().map_err(bad)?;
                    count_given = true;
                }
                "--primitive" => {
                    a.primitive = Prim::parse(&value).ok_or(format!(
                        "bad value {value:?} for --primitive: semaphore, mutex, many or rwlock"
                    ))?
                }
                "--secs" => a.secs = value.parse().map_err(bad)?,
                "--lease-ms" => a.lease = Duration::from_millis(value.parse().map_err(bad)?),
                "--url" => a.url = value,
                "--check-url" => a.check_url = value,
                "--name" => a.name = value,
                "--id" => a.id = value.parse().map_err(bad)?,
                _ => return Err(format!("unknown option {flag}")),
            }
        }
        if a.processes == 0
            || a.handles == 0
            || a.count == 0
            || a.lease < Duration::from_millis(100)
        {
            return Err(
                "need --processes >= 1, --handles >= 1, --count >= 1, --lease-ms >= 100".into(),
            );
        }
        if a.handles > 1 && !matches!(a.primitive, Prim::Semaphore | Prim::Many) {
            return Err(format!(
                "--handles {} needs --primitive semaphore or many: only semaphore handles \
                 of one coordinator hand permits to each other (siblings), not {}",
                a.handles,
                a.primitive.name()
            ));
        }
        if a.cluster && a.network_faults {
            return Err("--network-faults is not supported with --cluster".into());
        }
        if a.primitive == Prim::Mutex {
            if count_given && a.count != 1 {
                return Err(
                    "--primitive mutex has one permit: --count must be 1 or left out".into(),
                );
            }
            a.count = 1;
        }
        Ok(a)
    }

    pub fn main() -> i32 {
        let args = match parse_args() {
            Ok(a) => a,
            Err(e) => {
                eprintln!("chaos: {e}");
                eprintln!(
                    "usage: chaos [--processes N] [--count C] [--secs S] [--lease-ms L] \
                     [--network-faults | --cluster [--no-migrations]] \
                     [--primitive semaphore|mutex|many|rwlock] [--handles H]"
                );
                return 2;
            }
        };
        if args.cluster && !cfg!(feature = "cluster") {
            eprintln!(
                "chaos: --cluster needs the cargo feature `cluster`, which this build lacks: \
                 cargo run --release --features cluster --example chaos -- ... --cluster"
            );
            return 2;
        }
        if args.worker {
            worker(args)
        } else {
            parent(args)
        }
    }

    /// `<prefix>:{name}`: the primitive's keys are this and a suffix.
    fn base(prim: Prim, name: &str) -> String {
        format!("{}:{{{name}}}", prim.prefix())
    }

    // ------------------------------------------------------------------ worker

    fn worker(args: Args) -> i32 {
        let stop = Arc::new(AtomicBool::new(false));
        {
            // The parent closes our stdin to ask for a clean stop.
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut sink = String::new();
                while std::io::stdin()
                    .read_line(&mut sink)
                    .map(|n| n > 0)
                    .unwrap_or(false)
                {}
                stop.store(true, Ordering::Release);
            });
        }
        block_on(async move {
            let sems = loop {
                match attach_worker(&args).await {
                    Ok(s) => break s,
                    // A connection killed under us: try again.
                    Err(_) if !stop.load(Ordering::Acquire) => {
                        sleep(Duration::from_millis(50)).await
                    }
                    // Asked to stop while the network fails (or the cluster fails over):
                    // not a crash.
                    Err(e) if args.network_faults || args.cluster => {
                        eprintln!("worker {}: stopped before it could attach: {e}", args.id);
                        return 0;
                    }
                    Err(e) => {
                        eprintln!("worker {}: attach: {e}", args.id);
                        return 1;
                    }
                }
            };
            // Records go straight to Redis, never through the relay: they are the checks.
            let check_url = if args.check_url.is_empty() {
                &args.url
            } else {
                &args.check_url
            };
            // One multiplexed connection, shared by the loops of every handle.
            let rec = loop {
                match Records::connect(check_url, args.cluster).await {
                    Ok(c) => break c,
                    Err(_) => sleep(Duration::from_millis(50)).await,
                }
            };
            // The stays of every loop are numbered in one sequence: `IN`/`OUT` lines and
            // the members of the inside hash stay unique in this process.
            let seq = std::cell::Cell::new(0u64);
            let handed = std::cell::Cell::new(0u64);
            let shared = Shared {
                last_seq: &seq,
                all: &sems,
                handed: &handed,
            };
            let loops = sems
                .iter()
                .map(|sem| hammer(&args, sem, rec.clone(), &shared, &stop));
            let totals = match futures::future::try_join_all(loops).await {
                Ok(all) => all.into_iter().fold(LoopStats::default(), LoopStats::add),
                Err(()) => return 1,
            };
            let LoopStats {
                acquired,
                timeouts,
                errors,
                lost,
                rec_errors,
            } = totals;
            let siblings = if args.handles > 1 {
                format!(" handed_to_siblings={}", handed_to_siblings(&sems))
            } else {
                String::new()
            };
            println!(
                "STATS id={} acquired={acquired} timeouts={timeouts} errors={errors} \
                 lost={lost} recorder_errors={rec_errors}{siblings}",
                args.id
            );
            let _ = std::io::stdout().flush();
            // Give the handles' background work (drop-time releases) a moment to land.
            for sem in sems {
                match sem {
                    Handle::Sem(sem) => sem.close(),
                    // No `close` there: dropped, the handle gives up its leases.
                    other => drop(other),
                }
            }
            sleep(Duration::from_millis(100)).await;
            0
        })
    }

    /// What the loops of one worker share.
    struct Shared<'a> {
        /// The number of the last stay of any loop.
        last_seq: &'a std::cell::Cell<u64>,
        /// Every handle of the worker.
        all: &'a [Handle],
        /// The sum of their `handed_to_siblings` last reported (`SIBLINGS` line).
        handed: &'a std::cell::Cell<u64>,
    }

    /// The permits the handles released straight to a sibling handle.
    fn handed_to_siblings(handles: &[Handle]) -> u64 {
        handles
            .iter()
            .map(|h| match h {
                Handle::Sem(s) => s.stats().handed_to_siblings,
                _ => 0,
            })
            .sum()
    }

    /// What one loop of a worker counts.
    #[derive(Default)]
    struct LoopStats {
        acquired: u64,
        timeouts: u64,
        errors: u64,
        lost: u64,
        rec_errors: u64,
    }

    impl LoopStats {
        fn add(self, o: LoopStats) -> LoopStats {
            LoopStats {
                acquired: self.acquired + o.acquired,
                timeouts: self.timeouts + o.timeouts,
                errors: self.errors + o.errors,
                lost: self.lost + o.lost,
                rec_errors: self.rec_errors + o.rec_errors,
            }
        }
    }

    /// One loop of a worker on one handle until `stop`: acquire, record the entry, stay a
    /// while, record the exit, release (or drop). The stays of every loop of this process
    /// are numbered in one sequence. With sibling handles, a `SIBLINGS id n` line reports
    /// their `handed_to_siblings` sum after a stay whenever it grew, so that a worker killed
    /// later still counts. `Err` when an entry cannot be recorded (the worker then fails).
    async fn hammer(
        args: &Args,
        sem: &Handle,
        mut rec: Records,
        shared: &Shared<'_>,
        stop: &AtomicBool,
    ) -> Result<LoopStats, ()> {
        let last_seq = shared.last_seq;
        // Attempts of each record, 10 ms apart. On a cluster a failover or a migration
        // (TRYAGAIN until it ends) can hold a record up for seconds.
        let tries = if args.cluster { 3000 } else { 100 };
        let b = base(args.primitive, &args.name);
        let keys = [
            format!("chaos:{{{}}}:inside", args.name),
            format!("chaos:{{{}}}:stats", args.name),
            format!("chaos:{{{}}}:violations", args.name),
            format!("{b}:leases"),
            format!("chaos:{{{}}}:tokens", args.name),
            format!("chaos:{{{}}}:stale_tokens", args.name),
        ];
        let enter = redis::Script::new(ENTER);
        let me = format!("w{}-{}", args.id, std::process::id());
        let mut n = LoopStats::default();
        while !stop.load(Ordering::Acquire) {
            let p = match sem.acquire(args.primitive, args.count).await {
                Ok(p) => p,
                Err(Error::Timeout(_)) => {
                    n.timeouts += 1;
                    continue;
                }
                Err(_) => {
                    n.errors += 1;
                    sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let entered = wall_ms();
            let seq = {
                let s = last_seq.get() + 1;
                last_seq.set(s);
                s
            };
            let member = format!("{me}-{seq}");
            // Parsed by the parent for check (c).
            println!("IN {} {seq} {} {entered}", args.id, p.holder());
            let (permits, kind, token) = p.record(args.count);
            let token = token.map_or(String::new(), |t| t.to_string());
            let work = async {
                // Record the entry; retried, since our own connection may be killed too.
                let mut recorded = false;
                for _ in 0..tries {
                    let r: redis::RedisResult<i64> = enter
                        .key(&keys[0])
                        .key(&keys[1])
                        .key(&keys[2])
                        .key(&keys[3])
                        .key(&keys[4])
                        .key(&keys[5])
                        .arg(&member)
                        .arg(p.holder())
                        .arg(args.count)
                        .arg(permits)
                        .arg(kind)
                        .arg(&token)
                        .invoke_async(&mut rec)
                        .await;
                    if r.is_ok() {
                        recorded = true;
                        break;
                    }
                    n.rec_errors += 1;
                    sleep(Duration::from_millis(10)).await;
                }
                if !recorded {
                    return false;
                }
                let lease_ms = args.lease.as_millis() as u64;
                let hold = match fastrand::u8(0..100) {
                    0..=69 => fastrand::u64(0..20),
                    70..=94 => fastrand::u64(20..200),
                    // With network faults, some stays outlast the lease, so that a
                    // fault can take it from a holder that is inside.
                    95..=97 if args.network_faults => fastrand::u64(lease_ms..lease_ms * 5 / 2),
                    _ => fastrand::u64(500..1500),
                };
                sleep(Duration::from_millis(hold)).await;
                true
            };
            // The work stops the moment the holder is told its lease is lost.
            let (recorded, told) =
                match select(std::pin::pin!(work), std::pin::pin!(p.lost())).await {
                    Either::Left((recorded, _)) => (recorded, None),
                    Either::Right(((), _)) => (true, Some(wall_ms())),
                };
            let left = told.unwrap_or_else(wall_ms);
            println!(
                "OUT {} {seq} {left} {}",
                args.id,
                told.map_or("-".to_owned(), |t| t.to_string())
            );
            if !recorded {
                eprintln!("worker {}: cannot record an entry", args.id);
                return Err(());
            }
            n.acquired += 1;
            if p.is_lost() {
                n.lost += 1;
            }
            // Leave before giving the permit back.
            for _ in 0..tries {
                let r: redis::RedisResult<i64> = redis::cmd("HDEL")
                    .arg(&keys[0])
                    .arg(&member)
                    .query_async(&mut rec)
                    .await;
                if r.is_ok() {
                    break;
                }
                n.rec_errors += 1;
                sleep(Duration::from_millis(10)).await;
            }
            if fastrand::bool() {
                match p.release().await {
                    Ok(()) => {}
                    Err(Error::LeaseLost) => n.lost += 1,
                    Err(_) => n.errors += 1,
                }
            } else {
                drop(p);
            }
            if args.handles > 1 {
                let handed = handed_to_siblings(shared.all);
                if handed > shared.handed.get() {
                    shared.handed.set(handed);
                    println!("SIBLINGS {} {handed}", args.id);
                }
            }
        }
        Ok(n)
    }

    /// A handle on the primitive of `--primitive`.
    enum Handle {
        /// `semaphore` and `many`.
        Sem(Semaphore<Rt>),
        Mutex(Mutex<Rt>),
        Rw(RwLock<Rt>),
    }

    /// What a worker holds while inside.
    enum Guard {
        One(Permit<Rt>),
        Many(Permits<Rt>),
        Mutex(MutexGuard<Rt>),
        Read(ReadGuard<Rt>),
        Write(WriteGuard<Rt>),
    }

    impl Handle {
        /// One grant, waiting at most 5 s: one permit, `k` random in `1..=count`, the
        /// lock, or a read lock (80 %) or the write lock (20 %).
        async fn acquire(&self, prim: Prim, count: u32) -> Result<Guard, Error> {
            let limit = Duration::from_secs(5);
            match self {
                Handle::Sem(s) if prim == Prim::Many => s
                    .acquire_many_timeout(fastrand::u32(1..=count), limit)
                    .await
                    .map(Guard::Many),
                Handle::Sem(s) => s.acquire_timeout(limit).await.map(Guard::One),
                Handle::Mutex(m) => m.lock_timeout(limit).await.map(Guard::Mutex),
                Handle::Rw(l) if fastrand::u8(0..100) < 80 => {
                    l.read_timeout(limit).await.map(Guard::Read)
                }
                Handle::Rw(l) => l.write_timeout(limit).await.map(Guard::Write),
            }
        }

        /// The parent's handle is done with: closed, or shut down (no `close` there).
        async fn finish(self) {
            match self {
                Handle::Sem(s) => s.close(),
                Handle::Mutex(m) => drop(m.shutdown().await),
                Handle::Rw(l) => drop(l.shutdown().await),
            }
        }

        /// The state in Redis, as the end-state check reads it.
        async fn snapshot(&self) -> Result<EndState, Error> {
            let of = |st: redis_sync::SemaphoreState| EndState {
                count: st.count,
                free: Some(st.free),
                held: st.held(),
                live_held: st
                    .holders
                    .iter()
                    .filter(|h| h.lease_remaining.is_some())
                    .map(|h| h.permits)
                    .sum(),
                gate_holder: st.gate_holder.clone(),
                shown: format!("{st:?}"),
            };
            Ok(match self {
                Handle::Sem(s) => of(s.inspect().await?),
                Handle::Mutex(m) => of(m.inspect().await?),
                Handle::Rw(l) => {
                    let st = l.inspect().await?;
                    let all = st.max_readers.unwrap_or(0) as usize;
                    let held = if st.writer.is_some() { all } else { st.readers };
                    // No lease per holder in the state: the raw checks see the rest.
                    EndState {
                        count: st.max_readers,
                        free: None,
                        held,
                        live_held: held,
                        gate_holder: st.writer_waiting.clone(),
                        shown: format!("{st:?}"),
                    }
                }
            })
        }
    }

    impl Guard {
        fn holder(&self) -> &str {
            match self {
                Guard::One(p) => p.holder(),
                Guard::Many(p) => p.holder(),
                Guard::Mutex(g) => g.holder(),
                Guard::Read(g) => g.holder(),
                Guard::Write(g) => g.holder(),
            }
        }

        fn lost(&self) -> LeaseLostFuture {
            match self {
                Guard::One(p) => p.lost(),
                Guard::Many(p) => p.lost(),
                Guard::Mutex(g) => g.lost(),
                Guard::Read(g) => g.lost(),
                Guard::Write(g) => g.lost(),
            }
        }

        fn is_lost(&self) -> bool {
            match self {
                Guard::One(p) => p.is_lost(),
                Guard::Many(p) => p.is_lost(),
                Guard::Mutex(g) => g.is_lost(),
                Guard::Read(g) => g.is_lost(),
                Guard::Write(g) => g.is_lost(),
            }
        }

        async fn release(self) -> Result<(), Error> {
            match self {
                Guard::One(p) => p.release().await,
                Guard::Many(p) => p.release().await,
                Guard::Mutex(g) => g.unlock().await,
                Guard::Read(g) => g.unlock().await,
                Guard::Write(g) => g.unlock().await,
            }
        }

        /// What the entry record of [`ENTER`] says: permits, kind, fencing token.
        fn record(&self, count: u32) -> (u32, &'static str, Option<u64>) {
            match self {
                Guard::One(_) => (1, "", None),
                Guard::Many(p) => (p.count(), "p", None),
                Guard::Mutex(g) => (1, "m", Some(g.fencing_token())),
                Guard::Read(_) => (1, "r", None),
                Guard::Write(g) => (count, "w", Some(g.fencing_token())),
            }
        }
    }

    /// The end state of the primitive, from a fresh handle's `inspect`.
    struct EndState {
        count: Option<u32>,
        /// Permits in the pool (`None` for a read-write lock: read raw).
        free: Option<usize>,
        /// Permits held by the holders with a lease (expired or not).
        held: usize,
        /// Permits held by the holders whose lease is valid.
        live_held: usize,
        gate_holder: Option<String>,
        /// The state as printed.
        shown: String,
    }

    /// Where a handle is built: on a client, or on a coordinator (`--cluster`).
    enum On<'a> {
        Client(&'a redis::Client),
        Sync(&'a Coordinator<Rt>),
    }

    /// A handle on `prim`: created with `create` (semaphores; mutexes and read-write
    /// locks are opened, which creates them the first time), else attached (semaphores
    /// wait up to `wait` for it) or opened.
    async fn open_handle(
        on: On<'_>,
        prim: Prim,
        name: &str,
        lease: Duration,
        count: u32,
        create: bool,
        wait: Option<Duration>,
    ) -> Result<Handle, Error> {
        match prim {
            Prim::Semaphore | Prim::Many => {
                let b = match on {
                    On::Client(c) => Semaphore::<Rt>::builder(c, name),
                    On::Sync(s) => s.semaphore(name),
                }
                .lease_ttl(lease);
                let sem = if create {
                    b.create(count).await?
                } else {
                    b.attach(wait).await?
                };
                Ok(Handle::Sem(sem))
            }
            Prim::Mutex => {
                let b = match on {
                    On::Client(c) => Mutex::<Rt>::builder(c, name),
                    On::Sync(s) => s.mutex(name),
                };
                Ok(Handle::Mutex(b.lease_ttl(lease).open().await?))
            }
            Prim::RwLock => {
                let b = match on {
                    On::Client(c) => RwLock::<Rt>::builder(c, name),
                    On::Sync(s) => s.rwlock(name),
                };
                let lock = b.max_readers(count).lease_ttl(lease).open().await?;
                Ok(Handle::Rw(lock))
            }
        }
    }

    /// The worker's handles (`--handles`, one by default): on one server, or with
    /// `--cluster` on a coordinator of the cluster whose nodes `args.url` lists. Several
    /// are made from one coordinator (on one server too), so that they are siblings.
    async fn attach_worker(args: &Args) -> Result<Vec<Handle>, Error> {
        let wait = Some(Duration::from_secs(10));
        let (prim, name, lease, count) = (args.primitive, &args.name, args.lease, args.count);
        let sync = if args.cluster {
            Some(cluster_coordinator(&args.url).await?)
        } else if args.handles > 1 {
            let client = redis::Client::open(args.url.as_str())?;
            Some(Coordinator::<Rt>::connect(&client).await?)
        } else {
            None
        };
        let Some(sync) = sync else {
            let client = redis::Client::open(args.url.as_str())?;
            let h = open_handle(On::Client(&client), prim, name, lease, count, false, wait).await?;
            return Ok(vec![h]);
        };
        let mut handles = Vec::with_capacity(args.handles);
        for _ in 0..args.handles {
            let on = On::Sync(&sync);
            handles.push(open_handle(on, prim, name, lease, count, false, wait).await?);
        }
        Ok(handles)
    }

    /// A coordinator on the cluster whose nodes `urls` lists, comma-separated.
    #[cfg(feature = "cluster")]
    async fn cluster_coordinator(urls: &str) -> Result<Coordinator<Rt>, Error> {
        Coordinator::<Rt>::cluster(urls.split(',')).connect().await
    }

    /// Without the feature `cluster` there is no `--cluster` run (`main` refuses it).
    #[cfg(not(feature = "cluster"))]
    async fn cluster_coordinator(_urls: &str) -> Result<Coordinator<Rt>, Error> {
        unreachable!("--cluster is refused without the feature cluster")
    }

    /// The connection of a worker's records: to the one server, or a cluster connection.
    /// Both are multiplexed: clones share the connection.
    #[derive(Clone)]
    enum Records {
        Single(redis::aio::ConnectionManager),
        #[cfg(feature = "cluster")]
        Cluster(redis::cluster_async::ClusterConnection),
    }

    impl Records {
        async fn connect(url: &str, cluster: bool) -> redis::RedisResult<Records> {
            if cluster {
                #[cfg(feature = "cluster")]
                {
                    let client = redis::cluster::ClusterClient::new(url.split(','))?;
                    return Ok(Records::Cluster(client.get_async_connection().await?));
                }
            }
            let client = redis::Client::open(url)?;
            Ok(Records::Single(client.get_connection_manager().await?))
        }
    }

    impl redis::aio::ConnectionLike for Records {
        fn req_packed_command<'a>(
            &'a mut self,
            cmd: &'a redis::Cmd,
        ) -> redis::RedisFuture<'a, redis::Value> {
            match self {
                Records::Single(c) => c.req_packed_command(cmd),
                #[cfg(feature = "cluster")]
                Records::Cluster(c) => c.req_packed_command(cmd),
            }
        }

        fn req_packed_commands<'a>(
            &'a mut self,
            pipeline: &'a redis::Pipeline,
            offset: usize,
            count: usize,
        ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
            match self {
                Records::Single(c) => c.req_packed_commands(pipeline, offset, count),
                #[cfg(feature = "cluster")]
                Records::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            }
        }

        fn get_db(&self) -> i64 {
            match self {
                Records::Single(c) => c.get_db(),
                #[cfg(feature = "cluster")]
                Records::Cluster(c) => c.get_db(),
            }
        }
    }

    // ------------------------------------------------------------------ parent

    struct Worker {
        child: Child,
        id: usize,
    }

    /// Where workers connect: `lib` for the library (the relay with `--network-faults`),
    /// `check` for their records.
    struct Urls {
        lib: String,
        check: String,
    }

    fn spawn_worker(
        args: &Args,
        urls: &Urls,
        name: &str,
        id: usize,
        out: &mpsc::Sender<String>,
    ) -> Worker {
        let exe = std::env::current_exe().expect("own path");
        let mut child = Command::new(exe)
            .args(["--worker", "--url", &urls.lib, "--check-url", &urls.check])
            .args(["--name", name])
            .args(args.network_faults.then_some("--network-faults"))
            .args(args.cluster.then_some("--cluster"))
            .args(["--id", &id.to_string()])
            .args(["--lease-ms", &args.lease.as_millis().to_string()])
            .args(["--count", &args.count.to_string()])
            .args(["--primitive", args.primitive.name()])
            .args(["--handles", &args.handles.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn worker");
        let stdout = child.stdout.take().unwrap();
        let out = out.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = out.send(line);
            }
        });
        Worker { child, id }
    }

    /// Ids of every client in a `CLIENT LIST` but this program's own (named [`CHECKER`]).
    fn client_ids(list: &str) -> Vec<u64> {
        let mine = format!(" name={CHECKER} ");
        list.lines()
            .filter(|l| !l.contains(&mine))
            .filter_map(|l| l.strip_prefix("id="))
            .filter_map(|l| l.split(' ').next())
            .filter_map(|id| id.parse().ok())
            .collect()
    }

    /// Kills one random client connection of the node `con` talks to, but this program's
    /// own (and with `normal_only`, but the replication links); returns how many it killed.
    fn kill_random_client(con: &mut KeyConn, my_id: Option<u64>, normal_only: bool) -> u64 {
        let mut list = redis::cmd("CLIENT");
        list.arg("LIST");
        if normal_only {
            list.arg("TYPE").arg("normal");
        }
        let Ok(text) = con.query::<String>(&list) else {
            return 0;
        };
        let others: Vec<u64> = client_ids(&text)
            .into_iter()
            .filter(|&id| Some(id) != my_id)
            .collect();
        if others.is_empty() {
            return 0;
        }
        let id = others[fastrand::usize(..others.len())];
        let n: redis::RedisResult<i64> =
            con.query(redis::cmd("CLIENT").arg("KILL").arg("ID").arg(id));
        n.unwrap_or(0) as u64
    }

    /// Byte range of `host[:port]` in a `redis://[user[:pass]@]host[:port][/db]` URL.
    fn authority(url: &str) -> Option<(usize, usize)> {
        let start = url.find("://")? + 3;
        let rest = &url[start..];
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let host = rest[..end].rfind('@').map_or(0, |i| i + 1);
        (host < end).then_some((start + host, start + end))
    }

    fn named_connection(client: &redis::Client) -> redis::RedisResult<redis::Connection> {
        let mut con = client.get_connection()?;
        con.set_read_timeout(Some(Duration::from_secs(5)))?;
        redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(CHECKER)
            .query::<()>(&mut con)?;
        Ok(con)
    }

    /// This program's own connection (named [`CHECKER`]) to the node that has the
    /// semaphore's keys: the one server, or on a cluster (`follow`) the primary that owns
    /// their slot, found by following MOVED (for good) and ASK (for one command); TRYAGAIN,
    /// CLUSTERDOWN and dropped connections are retried a few times.
    struct KeyConn {
        url: String,
        follow: bool,
        con: Option<redis::Connection>,
    }

    impl KeyConn {
        fn new(url: &str, follow: bool) -> KeyConn {
            KeyConn {
                url: url.to_owned(),
                follow,
                con: None,
            }
        }

        /// The URL of the node it talks to.
        fn url(&self) -> &str {
            &self.url
        }

        fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
            use redis::{ErrorKind, ServerErrorKind as S};
            let mut attempt = 0;
            loop {
                attempt += 1;
                let con = match self.con.as_mut() {
                    Some(c) => c,
                    None => self
                        .con
                        .insert(named_connection(&redis::Client::open(self.url.as_str())?)?),
                };
                let err = match cmd.query(con) {
                    Ok(v) => return Ok(v),
                    Err(e) => e,
                };
                let dropped = err.is_unrecoverable_error() || err.is_io_error();
                if dropped {
                    self.con = None;
                }
                if !self.follow || attempt >= 10 {
                    return Err(err);
                }
                let redirect = err
                    .redirect_node()
                    .map(|(addr, _)| format!("redis://{addr}/"));
                match (err.kind(), redirect) {
                    (ErrorKind::Server(S::Moved), Some(url)) => {
                        self.url = url;
                        self.con = None;
                    }
                    (ErrorKind::Server(S::Ask), Some(url)) => {
                        let mut c = named_connection(&redis::Client::open(url.as_str())?)?;
                        redis::cmd("ASKING").query::<()>(&mut c)?;
                        return cmd.query(&mut c);
                    }
                    (ErrorKind::Server(S::TryAgain | S::ClusterDown | S::MasterDown), _) => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    _ if dropped => std::thread::sleep(Duration::from_millis(20)),
                    _ => return Err(err),
                }
            }
        }
    }

    /// Polls the lease set every 10 ms until `stop`, keeping each holder's latest expiry
    /// (ms, server clock). Returns it and the number of polls.
    fn spawn_lease_poller(
        mut con: KeyConn,
        leases: String,
        stop: Arc<AtomicBool>,
    ) -> JoinHandle<(HashMap<String, i64>, u64)> {
        std::thread::spawn(move || {
            let mut expiry: HashMap<String, i64> = HashMap::new();
            let mut polls = 0u64;
            let mut zrange = redis::cmd("ZRANGE");
            zrange.arg(&leases).arg(0).arg(-1).arg("WITHSCORES");
            while !stop.load(Ordering::Acquire) {
                if let Ok(members) = con.query::<Vec<(String, f64)>>(&zrange) {
                    polls += 1;
                    for (holder, score) in members {
                        let e = expiry.entry(holder).or_insert(i64::MIN);
                        *e = (*e).max(score as i64);
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (expiry, polls)
        })
    }

    /// The topology changes of `--cluster`, shared between their thread and the main loop.
    #[cfg(feature = "cluster")]
    #[derive(Default)]
    struct Topology {
        /// Held during a change: connections are killed only between changes, so that the
        /// harness's own connections (and MIGRATE's) survive.
        changing: std::sync::Mutex<()>,
        /// Port of the primary that owns the slot, as of the last change.
        owner: std::sync::atomic::AtomicU16,
        /// Set from before a migration's first step until every node agrees on the new
        /// owner: the slot's keys may be on two nodes.
        migrating: AtomicBool,
        failovers: std::sync::atomic::AtomicU64,
        migrations: std::sync::atomic::AtomicU64,
        /// A change that failed (the harness panicked): the run fails.
        error: std::sync::Mutex<Option<String>>,
    }

    /// Every 2-4 s until `until` (or `stop`), one change of the shard that owns `slot`: a
    /// manual failover, or (with `migrations`, every second change) a migration of the
    /// slot to another primary, and back the next time.
    #[cfg(feature = "cluster")]
    fn spawn_topology(
        t0: Instant,
        cluster: Arc<super::cluster::RedisCluster>,
        slot: u16,
        migrations: bool,
        until: Option<Instant>,
        topo: Arc<Topology>,
        stop: Arc<AtomicBool>,
    ) -> JoinHandle<()> {
        std::thread::spawn(move || {
            // The primary of the slot's own shard (it changes with failovers there).
            let mut home = topo.owner.load(Ordering::Acquire);
            let mut away = false;
            let mut k = 0u64;
            let mut next = Instant::now() + Duration::from_millis(fastrand::u64(1500..2500));
            while !stop.load(Ordering::Acquire) && until.is_some_and(|u| Instant::now() < u) {
                std::thread::sleep(Duration::from_millis(20));
                if Instant::now() < next {
                    continue;
                }
                let _changing = topo.changing.lock().unwrap_or_else(|p| p.into_inner());
                let migrate = migrations && k % 2 == 1;
                k += 1;
                let what = if migrate { "migration" } else { "failover" };
                eprintln!(
                    "chaos: t={:.3}s {what} of slot {slot} begins",
                    t0.elapsed().as_secs_f64()
                );
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    if migrate {
                        let owner = cluster.owner_of_slot(slot);
                        let to = if away && home != owner && cluster.primaries().contains(&home) {
                            home
                        } else {
                            cluster.other_primary(owner)
                        };
                        topo.migrating.store(true, Ordering::Release);
                        cluster.migrate_slot_with_pause(slot, to, Duration::from_millis(30));
                        topo.owner.store(to, Ordering::Release);
                        topo.migrating.store(false, Ordering::Release);
                        topo.migrations.fetch_add(1, Ordering::AcqRel);
                        away = to != home;
                    } else {
                        let new = cluster.failover(slot);
                        topo.owner.store(new, Ordering::Release);
                        topo.failovers.fetch_add(1, Ordering::AcqRel);
                        if !away {
                            home = new;
                        }
                    }
                }));
                eprintln!(
                    "chaos: t={:.3}s {what} of slot {slot} ends, owner {}",
                    t0.elapsed().as_secs_f64(),
                    topo.owner.load(Ordering::Acquire)
                );
                if let Err(panic) = r {
                    let why = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_else(|| "a panic".to_owned());
                    *topo.error.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(format!("a {what} of slot {slot} failed: {why}"));
                    return;
                }
                next = Instant::now() + Duration::from_millis(fastrand::u64(2000..4000));
            }
        })
    }

    /// `--cluster`: the cluster (`REDIS_CLUSTER_URLS`, or started here), the slot of the
    /// semaphore's keys and the thread that changes its topology.
    #[cfg(feature = "cluster")]
    struct ClusterRun {
        cluster: Arc<super::cluster::RedisCluster>,
        external: bool,
        slot: u16,
        topo: Arc<Topology>,
        changes: Option<(JoinHandle<()>, Arc<AtomicBool>)>,
        /// The connection that kills clients, to the owner of the slot (its port).
        kill_con: Option<(u16, KeyConn)>,
    }

    #[cfg(feature = "cluster")]
    impl ClusterRun {
        fn start(name: &str) -> ClusterRun {
            use super::cluster::{slot_of, RedisCluster};
            let given: Vec<String> = std::env::var("REDIS_CLUSTER_URLS")
                .unwrap_or_default()
                .split(',')
                .map(|u| u.trim().to_owned())
                .filter(|u| !u.is_empty())
                .collect();
            let external = !given.is_empty();
            let started = Instant::now();
            let cluster = if external {
                RedisCluster::external(&given)
            } else {
                RedisCluster::start()
            };
            if !external {
                eprintln!("chaos: local cluster started in {:?}", started.elapsed());
            }
            let slot = slot_of(&format!("{{{name}}}"));
            let topo = Arc::new(Topology::default());
            topo.owner
                .store(cluster.owner_of_slot(slot), Ordering::Release);
            ClusterRun {
                cluster: Arc::new(cluster),
                external,
                slot,
                topo,
                changes: None,
                kill_con: None,
            }
        }

        /// Every node's URL, comma-separated (the workers' `--url`).
        fn node_urls(&self) -> String {
            self.cluster.urls().join(",")
        }

        fn node_url(&self, port: u16) -> String {
            let suffix = format!(":{port}/");
            self.cluster
                .urls()
                .into_iter()
                .find(|u| u.ends_with(&suffix))
                .unwrap_or_else(|| format!("redis://127.0.0.1:{port}/"))
        }

        fn describe(&self) -> String {
            format!(
                "a cluster of {} nodes ({}), slot {} owned by {}",
                self.cluster.ports().len(),
                if self.external {
                    "REDIS_CLUSTER_URLS"
                } else {
                    "started here"
                },
                self.slot,
                self.node_url(self.topo.owner.load(Ordering::Acquire))
            )
        }

        /// A connection to the slot's owner that follows it.
        fn key_conn(&self) -> KeyConn {
            KeyConn::new(
                &self.node_url(self.topo.owner.load(Ordering::Acquire)),
                true,
            )
        }

        /// A coordinator of its own on the cluster.
        async fn coordinator(&self) -> Result<Coordinator<Rt>, Error> {
            Coordinator::<Rt>::cluster(self.cluster.urls())
                .connect()
                .await
        }

        fn start_changes(&mut self, t0: Instant, migrations: bool, until: Option<Instant>) {
            let stop = Arc::new(AtomicBool::new(false));
            let thread = spawn_topology(
                t0,
                self.cluster.clone(),
                self.slot,
                migrations,
                until,
                self.topo.clone(),
                stop.clone(),
            );
            self.changes = Some((thread, stop));
        }

        /// Waits for the change under way, if any, and stops changing.
        fn stop_changes(&mut self) {
            if let Some((thread, stop)) = self.changes.take() {
                stop.store(true, Ordering::Release);
                let _ = thread.join();
            }
        }

        /// The slot's keys may be on two nodes now.
        fn migrating(&self) -> bool {
            self.topo.migrating.load(Ordering::Acquire)
        }

        /// Kills one random client connection of the slot's owner, but not during a change.
        fn kill_one_client(&mut self) -> u64 {
            let Ok(_quiet) = self.topo.changing.try_lock() else {
                return 0;
            };
            let owner = self.topo.owner.load(Ordering::Acquire);
            if self.kill_con.as_ref().map(|(p, _)| *p) != Some(owner) {
                self.kill_con = Some((owner, KeyConn::new(&self.node_url(owner), false)));
            }
            match self.kill_con.as_mut() {
                Some((_, con)) => kill_random_client(con, None, true),
                None => 0,
            }
        }

        /// A connection to the node that owns the slot now (as every node agrees), which
        /// does not follow redirections: the end state is read there.
        fn end_conn(&self) -> Result<KeyConn, String> {
            let cluster = &self.cluster;
            let slot = self.slot;
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cluster.owner_of_slot(slot)))
                .map(|owner| KeyConn::new(&self.node_url(owner), false))
                .map_err(|_| format!("no agreed owner of slot {slot} at the end"))
        }

        fn failovers(&self) -> u64 {
            self.topo.failovers.load(Ordering::Acquire)
        }

        fn migrations(&self) -> u64 {
            self.topo.migrations.load(Ordering::Acquire)
        }

        fn error(&self) -> Option<String> {
            self.topo
                .error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        }
    }

    /// Without the feature `cluster` there is no `--cluster` run (`main` refuses it).
    #[cfg(not(feature = "cluster"))]
    enum ClusterRun {}

    #[cfg(not(feature = "cluster"))]
    impl ClusterRun {
        fn start(_name: &str) -> ClusterRun {
            unreachable!("--cluster is refused without the feature cluster")
        }
        fn node_urls(&self) -> String {
            match *self {}
        }
        fn describe(&self) -> String {
            match *self {}
        }
        fn key_conn(&self) -> KeyConn {
            match *self {}
        }
        async fn coordinator(&self) -> Result<Coordinator<Rt>, Error> {
            match *self {}
        }
        fn start_changes(&mut self, _t0: Instant, _migrations: bool, _until: Option<Instant>) {
            match *self {}
        }
        fn stop_changes(&mut self) {
            match *self {}
        }
        fn migrating(&self) -> bool {
            match *self {}
        }
        fn kill_one_client(&mut self) -> u64 {
            match *self {}
        }
        fn end_conn(&self) -> Result<KeyConn, String> {
            match *self {}
        }
        fn failovers(&self) -> u64 {
            match *self {}
        }
        fn migrations(&self) -> u64 {
            match *self {}
        }
        fn error(&self) -> Option<String> {
            match *self {}
        }
    }

    /// A handle of this program on the primitive, on the one server at `url` or on the
    /// cluster: `create` creates it (opens a mutex or read-write lock), else attach.
    async fn parent_handle(
        url: &str,
        cluster: Option<&ClusterRun>,
        args: &Args,
        name: &str,
        create: bool,
    ) -> Result<Handle, Error> {
        let wait = Some(Duration::from_secs(5));
        let (prim, lease, count) = (args.primitive, args.lease, args.count);
        if let Some(c) = cluster {
            let sync = c.coordinator().await?;
            return open_handle(On::Sync(&sync), prim, name, lease, count, create, wait).await;
        }
        let client = redis::Client::open(url)?;
        open_handle(On::Client(&client), prim, name, lease, count, create, wait).await
    }

    /// One stay of a worker in its critical section, as it reported it (ms, wall clock).
    #[derive(Debug, Default)]
    struct Stay {
        holder: String,
        entered: i64,
        left: Option<i64>,
        told: Option<i64>,
    }

    /// Check (c): for every stay, its holder's lease expiry. Returns the number of lost
    /// leases the holder was told about while inside, the worst told delay, the stays
    /// that went on past expiry + slack (descriptions), and the stays whose lease was never
    /// seen.
    fn check_told(
        stays: &HashMap<(usize, u64), Stay>,
        ended: &HashMap<usize, i64>,
        expiry: &HashMap<String, i64>,
        run_end: i64,
    ) -> (u64, Option<i64>, Vec<String>, u64) {
        let (mut told_n, mut worst, mut late, mut unseen) = (0u64, None::<i64>, Vec::new(), 0u64);
        let mut keys: Vec<_> = stays.keys().collect();
        keys.sort();
        for key in keys {
            let st = &stays[key];
            let Some(&exp) = expiry.get(&st.holder) else {
                unseen += 1;
                continue;
            };
            // A killed worker was inside until it was killed.
            let left = st
                .left
                .or_else(|| ended.get(&key.0).copied())
                .unwrap_or(run_end);
            if let Some(t) = st.told {
                told_n += 1;
                worst = Some(worst.map_or(t - exp, |w: i64| w.max(t - exp)));
            }
            if left - exp > LATE_SLACK_MS {
                late.push(format!(
                    "worker {} holder {} inside from {:+} to {:+} ms of its lease expiry, {}",
                    key.0,
                    st.holder,
                    st.entered - exp,
                    left - exp,
                    match (st.told, st.left) {
                        (Some(t), _) => format!("told at {:+} ms", t - exp),
                        (None, Some(_)) => "never told".to_owned(),
                        (None, None) => "never told (killed or stopped inside)".to_owned(),
                    }
                ));
            }
        }
        (told_n, worst, late, unseen)
    }

    fn parent(args: Args) -> i32 {
        let name = format!("chaos-{:08x}", fastrand::u32(..));
        let mut _own_server = None;
        // With --cluster: the cluster, the semaphore's slot, the topology changes.
        let mut cluster = args.cluster.then(|| ClusterRun::start(&name));
        let url = match (&cluster, std::env::var("REDIS_URL")) {
            (Some(c), _) => c.node_urls(),
            (None, Ok(u)) => u,
            (None, Err(_)) => {
                let s = server::RedisServer::start();
                let u = s.url.clone();
                _own_server = Some(s);
                u
            }
        };
        // With --network-faults the workers' library connections go through a relay.
        let relay = if args.network_faults {
            let Some((a, b)) = authority(&url) else {
                println!("chaos: FAILED --network-faults needs a redis://host:port URL: {url}");
                return 1;
            };
            let mut upstream = url[a..b].to_owned();
            if !upstream.contains(':') || upstream.ends_with(']') {
                upstream.push_str(":6379");
            }
            Some(Relay::start(&upstream))
        } else {
            None
        };
        let urls = Urls {
            lib: match (&relay, authority(&url)) {
                (Some(r), Some((a, b))) => {
                    format!("{}127.0.0.1:{}{}", &url[..a], r.port(), &url[b..])
                }
                _ => url.clone(),
            },
            check: url.clone(),
        };
        let mut what = match args.primitive {
            Prim::Semaphore => format!("semaphore {name}"),
            Prim::Mutex => format!("mutex {name}"),
            Prim::Many => format!("semaphore {name}, acquire_many(1..={})", args.count),
            Prim::RwLock => format!("rwlock {name}, max_readers {}", args.count),
        };
        if args.handles > 1 {
            what += &format!(", {} sibling handles per worker", args.handles);
        }
        println!(
            "chaos: {} workers, count {}, lease {:?}, {} s on {} ({what}){}",
            args.processes,
            args.count,
            args.lease,
            args.secs,
            match &cluster {
                Some(c) => c.describe(),
                None => url.clone(),
            },
            match (&relay, &cluster) {
                (Some(_), _) => format!("; network faults: workers connect to {}", urls.lib),
                (None, Some(_)) => format!(
                    "; failovers{} of its shard",
                    if args.migrations {
                        " and migrations of the slot"
                    } else {
                        ""
                    }
                ),
                (None, None) => String::new(),
            }
        );
        if let Err(e) = block_on(async {
            let h = parent_handle(&url, cluster.as_ref(), &args, &name, true).await?;
            h.finish().await;
            Ok::<_, Error>(())
        }) {
            let noun = match args.primitive {
                Prim::Semaphore | Prim::Many => "semaphore",
                Prim::Mutex => "mutex",
                Prim::RwLock => "rwlock",
            };
            println!("chaos: FAILED cannot create the {noun}: {e}");
            return 1;
        }

        // This program's connections to the semaphore's keys (on a cluster, to the slot's
        // owner, wherever it moves).
        let key_conn = || match &cluster {
            Some(c) => c.key_conn(),
            None => KeyConn::new(&url, false),
        };
        let mut con = key_conn();
        let my_id: u64 = con
            .query(redis::cmd("CLIENT").arg("ID"))
            .expect("parent connection");
        let b = base(args.primitive, &name);
        let (pool, pattern) = (format!("{b}:list"), format!("{b}:held:*"));
        let gate = format!("{b}:gate");
        // `{free, held}`, and with the gate checked (e) `{free, held permits, gates}`.
        let mut totals = redis::cmd("EVAL");
        if args.primitive.gated() {
            totals.arg(TOTALS_GATE).arg(2).arg(&pool).arg(&gate);
        } else {
            totals.arg(TOTALS).arg(1).arg(&pool);
        }
        totals.arg(&pattern);
        let poller_stop = Arc::new(AtomicBool::new(false));
        let poller = spawn_lease_poller(key_conn(), format!("{b}:leases"), poller_stop.clone());

        let (out_tx, out_rx) = mpsc::channel::<String>();
        let mut workers: Vec<Worker> = (0..args.processes)
            .map(|i| spawn_worker(&args, &urls, &name, i, &out_tx))
            .collect();
        // When each worker that is gone ended (ms, wall clock): check (c) counts a worker
        // killed inside as inside until then.
        let mut ended: HashMap<usize, i64> = HashMap::new();
        let mut next_id = args.processes;

        let start = Instant::now();
        let end = start + Duration::from_secs(args.secs);
        let mut next_kill = start + Duration::from_millis(fastrand::u64(700..1300));
        let mut next_conn_kill = start + Duration::from_millis(fastrand::u64(100..400));
        let (mut kills, mut conn_kills, mut samples, mut crashed) = (0u64, 0u64, 0u64, 0u64);
        // Network faults: at most one a second of the run, none in its last lease + 1 s
        // (time to recover before the end-state checks).
        let max_faults = args.secs;
        let faults_end = end.checked_sub(args.lease + Duration::from_secs(1));
        let mut next_fault = start + Duration::from_millis(fastrand::u64(1000..2000));
        let mut delay_until: Option<Instant> = None;
        let (mut blackholes, mut delays, mut resets) = (0u64, 0u64, 0u64);
        let mut bad_samples: Vec<(f64, i64, i64)> = Vec::new();
        // Check (e): sums where the gate tokens were not exactly one (t s, gates).
        let mut bad_gates: Vec<(f64, i64)> = Vec::new();
        // Cluster: topology changes like network faults, none in the last lease + 1 s.
        if let Some(c) = cluster.as_mut() {
            c.start_changes(start, args.migrations, faults_end);
        }
        // Sums taken while the slot migrated (its keys on two nodes): not checked.
        let mut skipped_samples = 0u64;
        while Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
            let now = Instant::now();
            let migrating = || cluster.as_ref().is_some_and(|c| c.migrating());
            let migrated_before = migrating();
            match con.query::<Vec<i64>>(&totals) {
                Ok(_) | Err(_) if migrated_before || migrating() => skipped_samples += 1,
                Ok(sums) => {
                    let free = sums.first().copied().unwrap_or(-1);
                    let held = sums.get(1).copied().unwrap_or(-1);
                    samples += 1;
                    if let Some(&gates) = sums.get(2) {
                        if gates != 1 {
                            bad_gates.push((start.elapsed().as_secs_f64(), gates));
                            if bad_gates.len() == 1 {
                                println!(
                                    "chaos: first wrong number of gate tokens at t={:.3}s \
                                     ({gates}); the keys {}",
                                    start.elapsed().as_secs_f64(),
                                    dump_keys(&mut con, &pool, &b)
                                );
                            }
                        }
                    }
                    if free + held != i64::from(args.count) {
                        bad_samples.push((start.elapsed().as_secs_f64(), free, held));
                        if bad_samples.len() == 1 {
                            println!(
                                "chaos: first wrong sum at t={:.3}s (free {free}, held {held}); \
                                 the keys {}",
                                start.elapsed().as_secs_f64(),
                                dump_keys(&mut con, &pool, &b)
                            );
                        }
                    }
                }
                Err(e) => eprintln!("chaos: sample failed: {e}"),
            }
            // A worker that exited by itself crashed: restart it, but remember.
            for w in workers.iter_mut() {
                if let Ok(Some(status)) = w.child.try_wait() {
                    eprintln!("chaos: worker {} exited by itself: {status}", w.id);
                    crashed += 1;
                    ended.insert(w.id, wall_ms());
                    *w = spawn_worker(&args, &urls, &name, next_id, &out_tx);
                    next_id += 1;
                }
            }
            if now >= next_kill {
                let i = fastrand::usize(..workers.len());
                let _ = workers[i].child.kill();
                let _ = workers[i].child.wait();
                ended.insert(workers[i].id, wall_ms());
                kills += 1;
                workers[i] = spawn_worker(&args, &urls, &name, next_id, &out_tx);
                next_id += 1;
                next_kill = now + Duration::from_millis(fastrand::u64(700..1300));
            }
            if now >= next_conn_kill {
                // On a cluster, on the primary that owns the slot.
                conn_kills += match cluster.as_mut() {
                    Some(c) => c.kill_one_client(),
                    None => kill_random_client(&mut con, Some(my_id), false),
                };
                next_conn_kill = now + Duration::from_millis(fastrand::u64(100..400));
            }
            if let Some(relay) = &relay {
                if delay_until.is_some_and(|u| now >= u) {
                    relay.set_delay(Duration::ZERO);
                    delay_until = None;
                }
                if now >= next_fault
                    && faults_end.is_some_and(|e| now < e)
                    && blackholes + delays + resets < max_faults
                {
                    match fastrand::u8(0..3) {
                        0 => {
                            relay.blackhole_existing();
                            blackholes += 1;
                        }
                        1 => {
                            let d = Duration::from_millis(fastrand::u64(50..=300));
                            relay.set_delay(d);
                            delay_until =
                                Some(now + Duration::from_millis(fastrand::u64(1000..=2000)));
                            delays += 1;
                        }
                        _ => {
                            relay.reset_all();
                            resets += 1;
                        }
                    }
                    next_fault = now + Duration::from_millis(fastrand::u64(1000..=2000));
                }
            }
        }
        if let Some(relay) = &relay {
            relay.set_delay(Duration::ZERO);
        }
        let net_faults = blackholes + delays + resets;
        if let Some(c) = cluster.as_mut() {
            c.stop_changes();
        }

        // Stop: close every worker's stdin, give them time to finish, then kill stragglers.
        for w in workers.iter_mut() {
            drop(w.child.stdin.take());
        }
        let stop_deadline = Instant::now() + Duration::from_secs(10);
        for w in workers.iter_mut() {
            loop {
                match w.child.try_wait() {
                    Ok(Some(status)) => {
                        ended.insert(w.id, wall_ms());
                        if !status.success() {
                            eprintln!("chaos: worker {} failed at stop: {status}", w.id);
                            crashed += 1;
                        }
                        break;
                    }
                    _ if Instant::now() > stop_deadline => {
                        eprintln!("chaos: worker {} did not stop: killed", w.id);
                        let _ = w.child.kill();
                        let _ = w.child.wait();
                        ended.insert(w.id, wall_ms());
                        break;
                    }
                    _ => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        drop(out_tx);
        poller_stop.store(true, Ordering::Release);
        let (expiry, lease_polls) = poller.join().unwrap_or_default();
        let run_end = wall_ms();
        let mut worker_stats: HashMap<String, u64> = HashMap::new();
        let mut stays: HashMap<(usize, u64), Stay> = HashMap::new();
        // Per worker, the most permits its sibling handles reported handed to each other.
        let mut handed_by: HashMap<usize, u64> = HashMap::new();
        while let Ok(line) = out_rx.recv_timeout(Duration::from_millis(200)) {
            let f: Vec<&str> = line.split(' ').collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<i64>().ok());
            match (f.first().copied(), num(1), num(2)) {
                (Some("IN"), Some(id), Some(seq)) if f.len() == 5 => {
                    let st = stays.entry((id as usize, seq as u64)).or_default();
                    st.holder = f[3].to_owned();
                    st.entered = num(4).unwrap_or(0);
                    continue;
                }
                (Some("OUT"), Some(id), Some(seq)) if f.len() == 5 => {
                    let st = stays.entry((id as usize, seq as u64)).or_default();
                    st.left = num(3);
                    st.told = num(4);
                    continue;
                }
                (Some("SIBLINGS"), Some(id), Some(n)) if f.len() == 3 => {
                    let h = handed_by.entry(id as usize).or_default();
                    *h = (*h).max(n as u64);
                    continue;
                }
                _ => {}
            }
            if let Some(rest) = line.strip_prefix("STATS ") {
                let field = |k: &str| {
                    rest.split(' ')
                        .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
                        .and_then(|v| v.parse::<u64>().ok())
                };
                if let (Some(id), Some(n)) = (field("id"), field("handed_to_siblings")) {
                    let h = handed_by.entry(id as usize).or_default();
                    *h = (*h).max(n);
                }
                for kv in rest.split(' ') {
                    if let Some((k, v)) = kv.split_once('=') {
                        if k != "id" {
                            *worker_stats.entry(k.to_owned()).or_default() +=
                                v.parse().unwrap_or(0);
                        }
                    }
                }
            }
        }

        // Every worker is gone: a fresh handle reclaims what killed workers held, once their
        // leases end. Poll (there is no signal for it) up to lease + renewal + slack.
        let bound = args.lease + args.lease.mul_f64(0.4) + Duration::from_secs(5);
        let end_state = block_on(async {
            let h = parent_handle(&url, cluster.as_ref(), &args, &name, false).await?;
            let waited = Instant::now();
            loop {
                let st = h.snapshot().await?;
                // A killed collector may hold the gate with no permit: wait for it too.
                // `inspect` reads the pool, then the held lists, in two requests: a reclaim
                // by this handle's own renewal in between hides a permit from it. So every
                // primitive waits for a snapshot that adds up (a permit really lost never
                // does: the check below then fails, at the same bound).
                let settled = match st.free {
                    Some(free) => free + st.live_held == args.count as usize,
                    None => true,
                };
                if (st.held == 0 && st.gate_holder.is_none() && settled) || waited.elapsed() > bound
                {
                    h.finish().await;
                    return Ok::<_, Error>((st, waited.elapsed()));
                }
                sleep(Duration::from_millis(50)).await;
            }
        });
        // On a cluster the raw end state is read on the node that owns the slot now, and
        // only there (no redirection followed).
        let mut end_failures = Vec::new();
        if let Some(c) = &cluster {
            match c.end_conn() {
                Ok(end_con) => con = end_con,
                Err(e) => end_failures.push(e),
            }
        }
        // Without the semaphore (its keys gone) report everything else all the same.
        let (st, waited, end_error) = match end_state {
            Ok((st, waited)) => (Some(st), waited, None),
            Err(e) => {
                let keys: Vec<String> = con
                    .query(redis::cmd("KEYS").arg(format!("{b}*")))
                    .unwrap_or_default();
                let noun = match args.primitive {
                    Prim::Semaphore | Prim::Many => "semaphore",
                    Prim::Mutex => "mutex",
                    Prim::RwLock => "rwlock",
                };
                let why = format!("cannot inspect the {noun} at the end: {e}; keys: {keys:?}");
                (None, Duration::ZERO, Some(why))
            }
        };
        let live_held = st.as_ref().map_or(0, |st| st.live_held);
        let raw_free: i64 = con.query(redis::cmd("LLEN").arg(&pool)).unwrap_or(-1);
        let sums = con.query::<Vec<i64>>(&totals).unwrap_or_default();
        let raw_free2 = sums.first().copied().unwrap_or(-1);
        let raw_held = sums.get(1).copied().unwrap_or(-1);
        // Check (e) at the end: one gate token, in the gate list.
        let raw_gates = sums.get(2).copied();
        let gate_list: Vec<String> = if args.primitive.gated() {
            con.query(redis::cmd("LRANGE").arg(&gate).arg(0).arg(-1))
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        // Check (d): the tokens recorded with a valid lease, in the order recorded.
        let (tokens, stale_tokens) = if args.primitive.fenced() {
            let records: Vec<String> = con
                .query(
                    redis::cmd("LRANGE")
                        .arg(format!("chaos:{{{name}}}:tokens"))
                        .arg(0)
                        .arg(-1),
                )
                .unwrap_or_default();
            let stale: i64 = con
                .query(redis::cmd("LLEN").arg(format!("chaos:{{{name}}}:stale_tokens")))
                .unwrap_or(-1);
            (records, stale)
        } else {
            (Vec::new(), 0)
        };
        let parsed: Vec<Option<u64>> = tokens
            .iter()
            .map(|r| r.split(' ').next().and_then(|t| t.parse().ok()))
            .collect();
        let unreadable = parsed.iter().filter(|t| t.is_none()).count();
        let out_of_order: Vec<String> = parsed
            .windows(2)
            .enumerate()
            .filter(|(_, w)| matches!(w, [Some(a), Some(b)] if b <= a))
            .map(|(i, _)| format!("#{i} {:?} then #{} {:?}", tokens[i], i + 1, tokens[i + 1]))
            .collect();
        let distinct: std::collections::HashSet<u64> = parsed.iter().flatten().copied().collect();
        let duplicates = parsed.len() - unreadable - distinct.len();
        let max_token = parsed.iter().flatten().copied().max();
        let stats_key = format!("chaos:{{{name}}}:stats");
        let stats: HashMap<String, i64> = con
            .query(redis::cmd("HGETALL").arg(&stats_key))
            .unwrap_or_default();
        let violations: Vec<String> = con
            .query(
                redis::cmd("LRANGE")
                    .arg(format!("chaos:{{{name}}}:violations"))
                    .arg(0)
                    .arg(9),
            )
            .unwrap_or_default();
        let (leases_lost, worst_told, late, unseen) = check_told(&stays, &ended, &expiry, run_end);
        let get = |k: &str| stats.get(k).copied().unwrap_or(0);
        let acquisitions = get("acquisitions");
        let max_inside = get("max");
        // A read-write lock's state has no free permits: the raw pool list then.
        let permits_end = st
            .as_ref()
            .map_or(0, |st| st.free.unwrap_or(raw_free.max(0) as usize))
            + live_held;

        println!(
            "chaos: workers: {:?}; samples {samples}; {} entries without a valid lease; \
             end state after {waited:?}: {}",
            worker_stats,
            get("entered_without_lease"),
            st.as_ref()
                .map_or("none (no semaphore)".to_owned(), |st| st.shown.clone())
        );
        if args.primitive.fenced() {
            println!(
                "chaos: check (d): {} tokens recorded with a valid lease ({} out of order, \
                 {duplicates} duplicates, {unreadable} unreadable), {stale_tokens} by holders \
                 whose lease had ended",
                tokens.len(),
                out_of_order.len()
            );
        }
        if args.primitive.gated() {
            println!(
                "chaos: check (e): {} sums with a number of gate tokens other than 1; at the \
                 end {} gate tokens, gate list {gate_list:?}",
                bad_gates.len(),
                raw_gates.map_or("?".to_owned(), |g| g.to_string())
            );
        }
        println!(
            "chaos: check (c): {} stays, {leases_lost} lost leases told while inside, \
             {} inside past expiry + {LATE_SLACK_MS} ms, {unseen} with a lease never seen \
             ({lease_polls} polls of the lease set)",
            stays.len(),
            late.len()
        );
        if let Some(relay) = &relay {
            println!(
                "chaos: network faults: {net_faults} (black holes {blackholes}, delays \
                 {delays}, resets {resets}); the relay accepted {} connections",
                relay.accepted()
            );
        }
        let mut failures = end_failures;
        if let Some(c) = &cluster {
            println!(
                "chaos: cluster: {} failovers, {} migrations; {skipped_samples} sums skipped \
                 while the slot migrated; end state read on {}",
                c.failovers(),
                c.migrations(),
                con.url()
            );
            if let Some(e) = c.error() {
                failures.push(format!("topology change failed: {e}"));
            } else if c.failovers() == 0 {
                failures.push("no failover happened (a longer --secs?)".into());
            }
        }
        if !late.is_empty() {
            failures.push(format!(
                "{} stays went on more than {LATE_SLACK_MS} ms past their lease's expiry \
                 on the server without the holder being told, e.g. {:?}",
                late.len(),
                &late[..late.len().min(5)]
            ));
        }
        if get("violations") > 0 || max_inside > i64::from(args.count) {
            let what = match args.primitive {
                Prim::Semaphore | Prim::Mutex => format!("more than {} holders", args.count),
                Prim::Many => format!("more than {} permits", args.count),
                Prim::RwLock => format!(
                    "more than {0} permits (a writer with anyone else, or more than {0} \
                     readers)",
                    args.count
                ),
            };
            failures.push(format!(
                "{} entries saw {what} inside with valid leases, e.g. {:?}",
                get("violations"),
                violations
            ));
        }
        if args.primitive.fenced() {
            if !out_of_order.is_empty() || duplicates > 0 || unreadable > 0 {
                failures.push(format!(
                    "the fencing tokens recorded with a valid lease are not strictly \
                     increasing: {} out of order, {duplicates} duplicates, {unreadable} \
                     unreadable, e.g. {:?}",
                    out_of_order.len(),
                    &out_of_order[..out_of_order.len().min(5)]
                ));
            }
            if tokens.is_empty() {
                failures.push("no fencing token recorded with a valid lease".into());
            }
        }
        if !bad_gates.is_empty() {
            failures.push(format!(
                "gate tokens != 1 in {} of {samples} samples, first (t s, gates): {:?}",
                bad_gates.len(),
                &bad_gates[..bad_gates.len().min(5)]
            ));
        }
        if args.primitive.gated() && (raw_gates != Some(1) || gate_list != ["G"]) {
            failures.push(format!(
                "at the end {} gate tokens, the gate list {gate_list:?} (want [\"G\"])",
                raw_gates.map_or("?".to_owned(), |g| g.to_string())
            ));
        }
        if !bad_samples.is_empty() {
            failures.push(format!(
                "pool + held lists != {} in {} of {samples} samples, first (t s, free, held): {:?}",
                args.count,
                bad_samples.len(),
                &bad_samples[..bad_samples.len().min(5)]
            ));
        }
        if let Some(why) = end_error {
            failures.push(why);
        } else if permits_end != args.count as usize
            || st.as_ref().and_then(|st| st.count) != Some(args.count)
        {
            failures.push(format!(
                "at the end free + held by live leases = {permits_end}, count {:?}",
                st.as_ref().and_then(|st| st.count)
            ));
        }
        if raw_free != i64::from(args.count) || raw_free2 + raw_held != i64::from(args.count) {
            failures.push(format!(
                "at the end the pool list has {raw_free} permits and held lists {raw_held}"
            ));
        }
        if acquisitions == 0 {
            failures.push("no acquisition at all".into());
        }
        if crashed > 0 {
            failures.push(format!("{crashed} workers exited on their own"));
        }
        // Sibling handles: the permits they handed to each other, every worker's last report
        // (a killed worker's, as of its last stay).
        let handed: u64 = handed_by.values().sum();
        if args.handles > 1 && args.primitive == Prim::Semaphore && handed == 0 {
            failures.push(format!(
                "no permit was handed to a sibling handle ({} handles a worker; a longer \
                 --secs?)",
                args.handles
            ));
        }
        let mut summary = match args.primitive {
            Prim::Semaphore => String::new(),
            p => format!("primitive={} ", p.name()),
        };
        summary += &format!(
            "acquisitions={acquisitions} kills={kills} conn_kills={conn_kills} \
             max_inside={max_inside} permits_end={permits_end} net_faults={net_faults} \
             leases_lost={leases_lost} worst_told_delay_ms={}",
            worst_told.map_or("none".to_owned(), |w| w.to_string())
        );
        if args.primitive == Prim::RwLock {
            summary += &format!(
                " max_readers={} writes={}",
                get("max_readers"),
                get("writes")
            );
        }
        if args.primitive.fenced() {
            summary += &format!(
                " max_token={} stale_tokens={stale_tokens}",
                max_token.map_or("none".to_owned(), |t| t.to_string())
            );
        }
        if let Some(c) = &cluster {
            summary += &format!(" failovers={} migrations={}", c.failovers(), c.migrations());
        }
        if args.handles > 1 {
            summary += &format!(" handles={} handed_to_siblings={handed}", args.handles);
        }
        if failures.is_empty() {
            println!("chaos: ok {summary}");
            0
        } else {
            println!(
                "chaos: the keys at the end {}",
                dump_keys(&mut con, &pool, &b)
            );
            for f in &failures {
                println!("chaos: violation: {f}");
            }
            println!("chaos: FAILED {summary}: {}", failures.join("; "));
            1
        }
    }
}
