//! Chaos run: worker processes hammer one semaphore while this program SIGKILLs and
//! restarts random workers and kills random Redis client connections, and checks the
//! invariants with its own record, not the library's bookkeeping.
//!
//! ```text
//! cargo run --release --example chaos -- --processes 8 --count 3 --secs 30
//! ```
//!
//! Options: `--processes N` (8), `--count C` (3), `--secs S` (30), `--lease-ms L` (2000),
//! `--network-faults` (off).
//! Uses `REDIS_URL` when set, else starts a private `redis-server` (from PATH).
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
//!
//! The last line is `chaos: ok ...` (exit 0) or `chaos: FAILED ...` (exit 1); both end with
//! `acquisitions=.. kills=.. conn_kills=.. max_inside=.. permits_end=.. net_faults=..
//! leases_lost=.. worst_told_delay_ms=..`.

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
    use redis_sync::{Error, Runtime, Semaphore};

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
    /// members whose holder's lease is valid now; drops members whose lease ended (it can
    /// never become valid again). Keeps the maximum, the number of entries and a record
    /// of every violation. KEYS: inside, stats, violations, leases. ARGV: member, holder,
    /// count. Idempotent for one member, so it can be retried after a killed connection.
    const ENTER: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local fresh = redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if fresh == 1 then redis.call('HINCRBY', KEYS[2], 'acquisitions', 1) end
local all = redis.call('HGETALL', KEYS[1])
local n, seen = 0, {}
for i = 1, #all, 2 do
  local m, h = all[i], all[i + 1]
  local e = redis.call('ZSCORE', KEYS[4], h)
  if e and tonumber(e) > now then
    n = n + 1
    table.insert(seen, m .. '/' .. h .. ' lease ' .. (tonumber(e) - now) .. 'ms')
  elseif m == ARGV[1] then
    redis.call('HINCRBY', KEYS[2], 'entered_without_lease', 1)
  else
    redis.call('HDEL', KEYS[1], m)
  end
end
if n > tonumber(redis.call('HGET', KEYS[2], 'max') or '0') then
  redis.call('HSET', KEYS[2], 'max', n)
end
if n > tonumber(ARGV[3]) then
  redis.call('HINCRBY', KEYS[2], 'violations', 1)
  redis.call('RPUSH', KEYS[3], table.concat(seen, ', '))
end
return n
"#;

    /// One atomic sum of the pool and of every held list: `{free, held}`.
    const TOTALS: &str = r#"
local held = 0
for _, k in ipairs(redis.call('KEYS', ARGV[2])) do held = held + redis.call('LLEN', k) end
return {redis.call('LLEN', ARGV[1]), held}
"#;

    #[derive(Clone, Debug)]
    struct Args {
        worker: bool,
        network_faults: bool,
        processes: usize,
        count: u32,
        secs: u64,
        lease: Duration,
        /// Worker: where the library connects (the relay's URL with `--network-faults`).
        url: String,
        /// Worker: where its own records go (always the direct URL).
        check_url: String,
        name: String,
        id: usize,
    }

    fn parse_args() -> Result<Args, String> {
        let mut a = Args {
            worker: false,
            network_faults: false,
            processes: 8,
            count: 3,
            secs: 30,
            lease: Duration::from_millis(2000),
            url: String::new(),
            check_url: String::new(),
            name: String::new(),
            id: 0,
        };
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
            let value = it.next().ok_or(format!("{flag} needs a value"))?;
            let bad = |_| format!("bad value {value:?} for {flag}");
            match flag.as_str() {
                "--processes" => a.processes = value.parse().map_err(bad)?,
                "--count" => a.count = value.parse().map_err(bad)?,
                "--secs" => a.secs = value.parse().map_err(bad)?,
                "--lease-ms" => a.lease = Duration::from_millis(value.parse().map_err(bad)?),
                "--url" => a.url = value,
                "--check-url" => a.check_url = value,
                "--name" => a.name = value,
                "--id" => a.id = value.parse().map_err(bad)?,
                _ => return Err(format!("unknown option {flag}")),
            }
        }
        if a.processes == 0 || a.count == 0 || a.lease < Duration::from_millis(100) {
            return Err("need --processes >= 1, --count >= 1, --lease-ms >= 100".into());
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
                     [--network-faults]"
                );
                return 2;
            }
        };
        if args.worker {
            worker(args)
        } else {
            parent(args)
        }
    }

    fn base(name: &str) -> String {
        format!("redsync:semaphore:{{{name}}}")
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
            let client = redis::Client::open(args.url.as_str()).expect("url");
            let sem = loop {
                match Semaphore::<Rt>::builder(&client, &args.name)
                    .lease_ttl(args.lease)
                    .attach(Some(Duration::from_secs(10)))
                    .await
                {
                    Ok(s) => break s,
                    // A connection killed under us: try again.
                    Err(_) if !stop.load(Ordering::Acquire) => {
                        sleep(Duration::from_millis(50)).await
                    }
                    // Asked to stop while the network fails: not a crash.
                    Err(e) if args.network_faults => {
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
            let check_client = redis::Client::open(check_url.as_str()).expect("check url");
            let mut rec = loop {
                match check_client.get_connection_manager().await {
                    Ok(c) => break c,
                    Err(_) => sleep(Duration::from_millis(50)).await,
                }
            };
            let b = base(&args.name);
            let keys = [
                format!("chaos:{{{}}}:inside", args.name),
                format!("chaos:{{{}}}:stats", args.name),
                format!("chaos:{{{}}}:violations", args.name),
                format!("{b}:leases"),
            ];
            let enter = redis::Script::new(ENTER);
            let me = format!("w{}-{}", args.id, std::process::id());
            let (mut acquired, mut timeouts, mut errors, mut lost, mut rec_errors) =
                (0u64, 0u64, 0u64, 0u64, 0u64);
            let mut seq = 0u64;
            while !stop.load(Ordering::Acquire) {
                let p = match sem.acquire_timeout(Duration::from_secs(5)).await {
                    Ok(p) => p,
                    Err(Error::Timeout(_)) => {
                        timeouts += 1;
                        continue;
                    }
                    Err(_) => {
                        errors += 1;
                        sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let entered = wall_ms();
                seq += 1;
                let member = format!("{me}-{seq}");
                // Parsed by the parent for check (c).
                println!("IN {} {seq} {} {entered}", args.id, p.holder());
                let work = async {
                    // Record the entry; retried, since our own connection may be killed too.
                    let mut recorded = false;
                    for _ in 0..100 {
                        let r: redis::RedisResult<i64> = enter
                            .key(&keys[0])
                            .key(&keys[1])
                            .key(&keys[2])
                            .key(&keys[3])
                            .arg(&member)
                            .arg(p.holder())
                            .arg(args.count)
                            .invoke_async(&mut rec)
                            .await;
                        if r.is_ok() {
                            recorded = true;
                            break;
                        }
                        rec_errors += 1;
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
                    return 1;
                }
                acquired += 1;
                if p.is_lost() {
                    lost += 1;
                }
                // Leave before giving the permit back.
                for _ in 0..100 {
                    let r: redis::RedisResult<i64> = redis::cmd("HDEL")
                        .arg(&keys[0])
                        .arg(&member)
                        .query_async(&mut rec)
                        .await;
                    if r.is_ok() {
                        break;
                    }
                    rec_errors += 1;
                    sleep(Duration::from_millis(10)).await;
                }
                if fastrand::bool() {
                    match p.release().await {
                        Ok(()) => {}
                        Err(Error::LeaseLost) => lost += 1,
                        Err(_) => errors += 1,
                    }
                } else {
                    drop(p);
                }
            }
            println!(
                "STATS id={} acquired={acquired} timeouts={timeouts} errors={errors} \
                 lost={lost} recorder_errors={rec_errors}",
                args.id
            );
            let _ = std::io::stdout().flush();
            // Give the handle's background work (drop-time releases) a moment to land.
            sem.close();
            sleep(Duration::from_millis(100)).await;
            0
        })
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
            .args(["--id", &id.to_string()])
            .args(["--lease-ms", &args.lease.as_millis().to_string()])
            .args(["--count", &args.count.to_string()])
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

    /// Ids of every client but this program's own (named [`CHECKER`]).
    fn client_ids(con: &mut redis::Connection) -> redis::RedisResult<Vec<u64>> {
        let list: String = redis::cmd("CLIENT").arg("LIST").query(con)?;
        let mine = format!(" name={CHECKER} ");
        Ok(list
            .lines()
            .filter(|l| !l.contains(&mine))
            .filter_map(|l| l.strip_prefix("id="))
            .filter_map(|l| l.split(' ').next())
            .filter_map(|id| id.parse().ok())
            .collect())
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

    /// Polls the lease set every 10 ms until `stop`, keeping each holder's latest expiry
    /// (ms, server clock). Returns it and the number of polls.
    fn spawn_lease_poller(
        client: redis::Client,
        leases: String,
        stop: Arc<AtomicBool>,
    ) -> JoinHandle<(HashMap<String, i64>, u64)> {
        std::thread::spawn(move || {
            let mut expiry: HashMap<String, i64> = HashMap::new();
            let mut polls = 0u64;
            let mut con = None;
            while !stop.load(Ordering::Acquire) {
                if con.is_none() {
                    con = named_connection(&client).ok();
                }
                if let Some(c) = con.as_mut() {
                    let r: redis::RedisResult<Vec<(String, f64)>> = redis::cmd("ZRANGE")
                        .arg(&leases)
                        .arg(0)
                        .arg(-1)
                        .arg("WITHSCORES")
                        .query(c);
                    match r {
                        Ok(members) => {
                            polls += 1;
                            for (holder, score) in members {
                                let e = expiry.entry(holder).or_insert(i64::MIN);
                                *e = (*e).max(score as i64);
                            }
                        }
                        Err(_) => con = None,
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (expiry, polls)
        })
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
        let mut _own_server = None;
        let url = match std::env::var("REDIS_URL") {
            Ok(u) => u,
            Err(_) => {
                let s = server::RedisServer::start();
                let u = s.url.clone();
                _own_server = Some(s);
                u
            }
        };
        let name = format!("chaos-{:08x}", fastrand::u32(..));
        let client = redis::Client::open(url.as_str()).expect("url");
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
        println!(
            "chaos: {} workers, count {}, lease {:?}, {} s on {url} (semaphore {name}){}",
            args.processes,
            args.count,
            args.lease,
            args.secs,
            match &relay {
                Some(_) => format!("; network faults: workers connect to {}", urls.lib),
                None => String::new(),
            }
        );
        if let Err(e) = block_on(async {
            let sem = Semaphore::<Rt>::builder(&client, &name)
                .lease_ttl(args.lease)
                .create(args.count)
                .await?;
            sem.close();
            Ok::<_, Error>(())
        }) {
            println!("chaos: FAILED cannot create the semaphore: {e}");
            return 1;
        }

        let mut con = named_connection(&client).expect("parent connection");
        let my_id: u64 = redis::cmd("CLIENT").arg("ID").query(&mut con).unwrap();
        let totals = redis::Script::new(TOTALS);
        let b = base(&name);
        let (pool, pattern) = (format!("{b}:list"), format!("{b}:held:*"));
        let poller_stop = Arc::new(AtomicBool::new(false));
        let poller = spawn_lease_poller(client.clone(), format!("{b}:leases"), poller_stop.clone());

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
        while Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
            let now = Instant::now();
            match totals
                .arg(&pool)
                .arg(&pattern)
                .invoke::<(i64, i64)>(&mut con)
            {
                Ok((free, held)) => {
                    samples += 1;
                    if free + held != i64::from(args.count) {
                        bad_samples.push((start.elapsed().as_secs_f64(), free, held));
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
                if let Ok(ids) = client_ids(&mut con) {
                    let others: Vec<u64> = ids.into_iter().filter(|&id| id != my_id).collect();
                    if !others.is_empty() {
                        let id = others[fastrand::usize(..others.len())];
                        let n: redis::RedisResult<i64> = redis::cmd("CLIENT")
                            .arg("KILL")
                            .arg("ID")
                            .arg(id)
                            .query(&mut con);
                        conn_kills += n.unwrap_or(0) as u64;
                    }
                }
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
                _ => {}
            }
            if let Some(rest) = line.strip_prefix("STATS ") {
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
            let sem = Semaphore::<Rt>::builder(&client, &name)
                .lease_ttl(args.lease)
                .attach(Some(Duration::from_secs(5)))
                .await?;
            let waited = Instant::now();
            loop {
                let st = sem.inspect().await?;
                let live_held: usize = st
                    .holders
                    .iter()
                    .filter(|h| h.lease_remaining.is_some())
                    .map(|h| h.permits)
                    .sum();
                if st.held() == 0 || waited.elapsed() > bound {
                    sem.close();
                    return Ok::<_, Error>((st, live_held, waited.elapsed()));
                }
                sleep(Duration::from_millis(50)).await;
            }
        });
        // Without the semaphore (its keys gone) report everything else all the same.
        let (st, live_held, waited, end_error) = match end_state {
            Ok((st, live, waited)) => (Some(st), live, waited, None),
            Err(e) => {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{b}*"))
                    .query(&mut con)
                    .unwrap_or_default();
                let why = format!("cannot inspect the semaphore at the end: {e}; keys: {keys:?}");
                (None, 0, Duration::ZERO, Some(why))
            }
        };
        let raw_free: i64 = redis::cmd("LLEN").arg(&pool).query(&mut con).unwrap_or(-1);
        let (raw_free2, raw_held) = totals
            .arg(&pool)
            .arg(&pattern)
            .invoke::<(i64, i64)>(&mut con)
            .unwrap_or((-1, -1));
        let stats_key = format!("chaos:{{{name}}}:stats");
        let stats: HashMap<String, i64> = redis::cmd("HGETALL")
            .arg(&stats_key)
            .query(&mut con)
            .unwrap_or_default();
        let violations: Vec<String> = redis::cmd("LRANGE")
            .arg(format!("chaos:{{{name}}}:violations"))
            .arg(0)
            .arg(9)
            .query(&mut con)
            .unwrap_or_default();
        let (leases_lost, worst_told, late, unseen) = check_told(&stays, &ended, &expiry, run_end);
        let get = |k: &str| stats.get(k).copied().unwrap_or(0);
        let acquisitions = get("acquisitions");
        let max_inside = get("max");
        let permits_end = st.as_ref().map_or(0, |st| st.free) + live_held;

        println!(
            "chaos: workers: {:?}; samples {samples}; {} entries without a valid lease; \
             end state after {waited:?}: {}",
            worker_stats,
            get("entered_without_lease"),
            st.as_ref()
                .map_or("none (no semaphore)".to_owned(), |st| format!("{st:?}"))
        );
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
        let mut failures = Vec::new();
        if !late.is_empty() {
            failures.push(format!(
                "{} stays went on more than {LATE_SLACK_MS} ms past their lease's expiry \
                 on the server without the holder being told, e.g. {:?}",
                late.len(),
                &late[..late.len().min(5)]
            ));
        }
        if get("violations") > 0 || max_inside > i64::from(args.count) {
            failures.push(format!(
                "{} entries saw more than {} holders inside with valid leases, e.g. {:?}",
                get("violations"),
                args.count,
                violations
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
        let summary = format!(
            "acquisitions={acquisitions} kills={kills} conn_kills={conn_kills} \
             max_inside={max_inside} permits_end={permits_end} net_faults={net_faults} \
             leases_lost={leases_lost} worst_told_delay_ms={}",
            worst_told.map_or("none".to_owned(), |w| w.to_string())
        );
        if failures.is_empty() {
            println!("chaos: ok {summary}");
            0
        } else {
            for f in &failures {
                println!("chaos: violation: {f}");
            }
            println!("chaos: FAILED {summary}: {}", failures.join("; "));
            1
        }
    }
}
