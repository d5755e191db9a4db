//! Several workers share a semaphore of count 3, then two tasks hand off work with an event,
//! all on one `Coordinator` (one shared connection, one lease watchdog); each worker has a
//! handle (a holder) of its own, as separate processes would.
//!
//! `cargo run --example quickstart` starts its own redis-server (from PATH) when `REDIS_URL`
//! is not set.

#[path = "../tests/common/server.rs"]
mod server;
#[path = "support/small_demo.rs"]
#[allow(dead_code)]
mod small_demo;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis_sync::tokio::Coordinator;

const WORKERS: usize = 8;
const COUNT: u32 = 3;
const JOBS_PER_WORKER: usize = 5;

#[tokio::main]
async fn main() -> redis_sync::Result<()> {
    let (url, _server) = small_demo::redis_url();
    let client = redis::Client::open(url)?;
    let name = format!("quickstart-{}", std::process::id());
    let sync = Coordinator::connect(&client).await?;

    // Every worker creates the same semaphore: the first creates it, the others join.
    let inside = Arc::new(AtomicUsize::new(0));
    let max_inside = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..WORKERS {
        let (sync, name) = (sync.clone(), name.clone());
        let (inside, max_inside) = (inside.clone(), max_inside.clone());
        workers.push(tokio::spawn(async move {
            let sem = sync.semaphore(&name).create(COUNT).await?;
            for _ in 0..JOBS_PER_WORKER {
                let permit = sem.acquire().await?;
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                max_inside.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(fastrand::u64(10..40))).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                permit.release().await?;
            }
            println!("worker {worker} done");
            sem.close();
            Ok::<_, redis_sync::Error>(())
        }));
    }
    for w in workers {
        w.await.expect("worker panicked")?;
    }
    println!(
        "{} jobs by {WORKERS} workers on a semaphore of count {COUNT} in {:?}: at most {} ran at once",
        WORKERS * JOBS_PER_WORKER,
        started.elapsed(),
        max_inside.load(Ordering::SeqCst)
    );

    // An event hands work from a producer to a consumer, exactly once per set().
    let ready = sync.event(&name).open().await?;
    let consumer = {
        let ready = sync.event(&name).open().await?;
        tokio::spawn(async move {
            ready.wait_timeout(Duration::from_secs(10)).await?;
            println!("consumer: got the signal");
            Ok::<_, redis_sync::Error>(())
        })
    };
    println!("producer: setting the event");
    ready.set().await?;
    consumer.await.expect("consumer panicked")?;
    let stats = sync.stats();
    println!(
        "coordinator: 1 shared connection and {} blocking ones (cap {}) for every handle",
        stats.blocking_connections, stats.max_blocking_connections
    );
    sync.shutdown().await?;
    println!("quickstart: ok");
    Ok(())
}
