//! Chaos run: worker processes hammer one semaphore while this program SIGKILLs and
//! restarts random workers and kills random Redis client connections, and checks the
//! invariants with its own record, not the library's bookkeeping.
//!
//! ```text
//! cargo run --release --example chaos -- --processes 8 --count 3 --secs 30
//! ```
//!
//! Options: `--processes N` (8), `--count C` (3), `--secs S` (30), `--lease-ms L` (2000).
//! Uses `REDIS_URL` when set, else starts a private `redis-server` (from PATH).
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
//!
//! The last line is `chaos: ok ...` (exit 0) or `chaos: FAILED ...` (exit 1).

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
    use std::time::{Duration, Instant};

    use redis_sync::{Error, Runtime, Semaphore};

    use super::server;

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
        processes: usize,
        count: u32,
        secs: u64,
        lease: Duration,
        url: String,
        name: String,
        id: usize,
    }

    fn parse_args() -> Result<Args, String> {
        let mut a = Args {
            worker: false,
            processes: 8,
            count: 3,
            secs: 30,
            lease: Duration::from_millis(2000),
            url: String::new(),
            name: String::new(),
            id: 0,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            if flag == "--worker" {
                a.worker = true;
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
                eprintln!("usage: chaos [--processes N] [--count C] [--secs S] [--lease-ms L]");
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
                    Err(e) => {
                        eprintln!("worker {}: attach: {e}", args.id);
                        return 1;
                    }
                }
            };
            let mut rec = loop {
                match client.get_connection_manager().await {
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
                seq += 1;
                let member = format!("{me}-{seq}");
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
                    eprintln!("worker {}: cannot record an entry", args.id);
                    return 1;
                }
                acquired += 1;
                let hold = match fastrand::u8(0..100) {
                    0..=69 => fastrand::u64(0..20),
                    70..=94 => fastrand::u64(20..200),
                    _ => fastrand::u64(500..1500),
                };
                sleep(Duration::from_millis(hold)).await;
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

    fn spawn_worker(
        args: &Args,
        url: &str,
        name: &str,
        id: usize,
        out: &mpsc::Sender<String>,
    ) -> Worker {
        let exe = std::env::current_exe().expect("own path");
        let mut child = Command::new(exe)
            .args(["--worker", "--url", url, "--name", name])
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

    fn client_ids(con: &mut redis::Connection) -> redis::RedisResult<Vec<u64>> {
        let list: String = redis::cmd("CLIENT").arg("LIST").query(con)?;
        Ok(list
            .lines()
            .filter_map(|l| l.strip_prefix("id="))
            .filter_map(|l| l.split(' ').next())
            .filter_map(|id| id.parse().ok())
            .collect())
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
        println!(
            "chaos: {} workers, count {}, lease {:?}, {} s on {url} (semaphore {name})",
            args.processes, args.count, args.lease, args.secs
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

        let mut con = client.get_connection().expect("parent connection");
        let my_id: u64 = redis::cmd("CLIENT").arg("ID").query(&mut con).unwrap();
        let totals = redis::Script::new(TOTALS);
        let b = base(&name);
        let (pool, pattern) = (format!("{b}:list"), format!("{b}:held:*"));

        let (out_tx, out_rx) = mpsc::channel::<String>();
        let mut workers: Vec<Worker> = (0..args.processes)
            .map(|i| spawn_worker(&args, &url, &name, i, &out_tx))
            .collect();
        let mut next_id = args.processes;

        let start = Instant::now();
        let end = start + Duration::from_secs(args.secs);
        let mut next_kill = start + Duration::from_millis(fastrand::u64(700..1300));
        let mut next_conn_kill = start + Duration::from_millis(fastrand::u64(100..400));
        let (mut kills, mut conn_kills, mut samples, mut crashed) = (0u64, 0u64, 0u64, 0u64);
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
                    *w = spawn_worker(&args, &url, &name, next_id, &out_tx);
                    next_id += 1;
                }
            }
            if now >= next_kill {
                let i = fastrand::usize(..workers.len());
                let _ = workers[i].child.kill();
                let _ = workers[i].child.wait();
                kills += 1;
                workers[i] = spawn_worker(&args, &url, &name, next_id, &out_tx);
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
                        break;
                    }
                    _ => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        drop(out_tx);
        let mut worker_stats: HashMap<String, u64> = HashMap::new();
        while let Ok(line) = out_rx.recv_timeout(Duration::from_millis(200)) {
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
        let (st, live_held, waited) = match end_state {
            Ok(x) => x,
            Err(e) => {
                println!("chaos: FAILED cannot inspect the semaphore at the end: {e}");
                return 1;
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
        let get = |k: &str| stats.get(k).copied().unwrap_or(0);
        let acquisitions = get("acquisitions");
        let max_inside = get("max");
        let permits_end = st.free + live_held;

        println!(
            "chaos: workers: {:?}; samples {samples}; {} entries without a valid lease; \
             end state after {waited:?}: {st:?}",
            worker_stats,
            get("entered_without_lease")
        );
        let mut failures = Vec::new();
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
        if permits_end != args.count as usize || st.count != Some(args.count) {
            failures.push(format!(
                "at the end free + held by live leases = {permits_end}, count {:?}",
                st.count
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
             max_inside={max_inside} permits_end={permits_end}"
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
