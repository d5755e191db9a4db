//! Fencing tokens in action: a storage service that refuses writes carrying a stale token.
//!
//! Two workers share a `Mutex` whose lease is 1 s. Worker A takes the lock and writes, then
//! checks that it still holds the lock and, right after that check, stalls: a stop-the-world
//! pause longer than its lease (here its thread blocks, so that its runtime cannot even
//! renew the lease, as in a long GC pause or a stopped VM). The lock goes to worker B with
//! a greater token, and B writes. When A resumes, it sends the write it had already decided
//! to make, with its old token: the storage, which remembers the highest token it has
//! accepted for each key, refuses it. Without the token check, A's late write would have
//! overwritten B's.
//!
//! `cargo run --example fencing_storage` starts its own redis-server (from PATH) when
//! `REDIS_URL` is not set.

#[path = "../tests/common/server.rs"]
mod server;
#[path = "support/small_demo.rs"]
#[allow(dead_code)]
mod small_demo;

use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis_sync::{Error, Mutex, Tokio};

type Fail = Box<dyn std::error::Error + Send + Sync>;

const LEASE: Duration = Duration::from_secs(1);

/// The storage: per key, the value and the highest fencing token accepted so far. A write
/// with a lower token is refused. KEYS: the record (a hash). ARGV: token, value.
/// Returns `{1, token}` accepted, or `{0, highest token seen}`.
const WRITE: &str = r#"
local seen = tonumber(redis.call('HGET', KEYS[1], 'token') or '0')
local t = tonumber(ARGV[1])
if t < seen then return {0, seen} end
redis.call('HSET', KEYS[1], 'token', ARGV[1], 'value', ARGV[2])
return {1, t}
"#;

/// A client of the storage service (which lives in Redis too, for the demo).
#[derive(Clone)]
struct Storage {
    conn: MultiplexedConnection,
    key: String,
}

impl Storage {
    /// Writes `value` under fencing token `token`: `Err(highest)` when refused.
    async fn write(&self, token: u64, value: &str) -> Result<Result<(), u64>, Fail> {
        let (ok, seen): (u8, u64) = redis::Script::new(WRITE)
            .key(&self.key)
            .arg(token)
            .arg(value)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(if ok == 1 { Ok(()) } else { Err(seen) })
    }

    async fn read(&self) -> Result<(u64, String), Fail> {
        let (token, value): (u64, String) = redis::cmd("HMGET")
            .arg(&self.key)
            .arg("token")
            .arg("value")
            .query_async(&mut self.conn.clone())
            .await?;
        Ok((token, value))
    }
}

fn ensure(ok: bool, what: &str) -> Result<(), Fail> {
    if ok {
        Ok(())
    } else {
        Err(format!("unexpected: {what}").into())
    }
}

#[tokio::main]
async fn main() -> Result<(), Fail> {
    let (url, _server) = small_demo::redis_url();
    let client = redis::Client::open(url)?;
    let name = format!("fencing-demo-{}", std::process::id());
    let storage = Storage {
        conn: client.get_multiplexed_async_connection().await?,
        key: format!("storage:{name}:report"),
    };
    let started = Instant::now();

    // Worker A runs on a runtime of its own, on its own thread: blocking that thread
    // freezes A entirely, its lease renewals included.
    let (a_holds_tx, a_holds) = tokio::sync::oneshot::channel::<u64>();
    let (resume_a, a_paused) = std::sync::mpsc::channel::<()>();
    let worker_a = {
        let (client, name, storage) = (client.clone(), name.clone(), storage.clone());
        std::thread::spawn(move || -> Result<(), Fail> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let lock = Mutex::<Tokio>::builder(&client, &name)
                    .lease_ttl(LEASE)
                    .open()
                    .await?;
                let guard = lock.lock().await?;
                let token = guard.fencing_token();
                println!("A: holds the lock, token {token}");
                ensure(
                    storage.write(token, "draft by A").await?.is_ok(),
                    "A's first write refused",
                )?;
                println!("A: wrote \"draft by A\" with token {token}: accepted");
                let _ = a_holds_tx.send(token);

                // A checks the lock, decides to write again ...
                ensure(!guard.is_lost(), "A lost the lock before its pause")?;
                // ... and is paused right there, longer than its lease (until B has
                // written; bounded so that a broken demo cannot hang).
                println!("A: paused (its lease of {LEASE:?} runs out)");
                a_paused.recv_timeout(Duration::from_secs(30))?;
                println!("A: resumed after {:?}", started.elapsed());

                // The write it had decided on goes out now, with its old token.
                match storage.write(token, "late overwrite by A").await? {
                    Ok(()) => return Err("the storage accepted A's stale write".into()),
                    Err(highest) => println!(
                        "A: wrote with token {token}: REJECTED, the storage has seen token {highest}"
                    ),
                }
                // A also learns it lost the lock, as soon as it runs again.
                ensure(guard.is_lost(), "A not told of its lost lease")?;
                println!("A: is_lost() = true");
                match guard.unlock().await {
                    Err(Error::LeaseLost) => println!("A: unlock() = Err(LeaseLost)"),
                    other => return Err(format!("A's unlock: {other:?}").into()),
                }
                lock.shutdown().await?;
                Ok(())
            })
        })
    };

    // Worker B, on the main runtime, waits for the lock while A is paused.
    let a_token = a_holds.await?;
    let lock = Mutex::<Tokio>::builder(&client, &name)
        .lease_ttl(LEASE)
        .open()
        .await?;
    let waiting = Instant::now();
    let guard = lock.lock_timeout(Duration::from_secs(30)).await?;
    let b_token = guard.fencing_token();
    println!(
        "B: holds the lock, token {b_token}, after waiting {:?} for A's lease to run out",
        waiting.elapsed()
    );
    ensure(b_token > a_token, "B's token is not above A's")?;
    ensure(
        storage.write(b_token, "final by B").await?.is_ok(),
        "B's write refused",
    )?;
    println!("B: wrote \"final by B\" with token {b_token}: accepted");

    resume_a.send(())?;
    tokio::task::spawn_blocking(move || worker_a.join())
        .await?
        .map_err(|_| "worker A panicked")??;

    let (token, value) = storage.read().await?;
    println!("storage: {value:?} (token {token})");
    ensure(
        token == b_token && value == "final by B",
        "the storage lost B's write",
    )?;
    guard.unlock().await?;
    lock.shutdown().await?;
    let _: () = redis::cmd("DEL")
        .arg(&storage.key)
        .query_async(&mut storage.conn.clone())
        .await?;
    println!("fencing_storage: ok");
    Ok(())
}
