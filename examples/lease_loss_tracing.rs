//! What the `tracing` feature shows when a holder loses its lease: a permit is held, its
//! lease is ended behind the library's back (as if the process had been frozen past it),
//! and the handle reports the loss, a new lease generation, and the permit's `release`.
//!
//! ```text
//! cargo run --example lease_loss_tracing --features tracing
//! ```
//!
//! Uses `REDIS_URL`, or starts its own redis-server from PATH.

#[path = "../tests/common/server.rs"]
mod server;

use std::time::Duration;

use redis_sync::{Error, Semaphore, Tokio};

#[tokio::main(flavor = "current_thread")]
async fn main() -> redis_sync::Result<()> {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_target(false)
        .without_time()
        .with_ansi(false)
        .init();
    let url = server::redis_url();
    let client = redis_sync::redis::Client::open(url.as_str())?;
    let sem = Semaphore::<Tokio>::builder(&client, "reports")
        .lease_ttl(Duration::from_secs(1))
        .create(1)
        .await?;
    let permit = sem.acquire().await?;
    // Another process would see this lease expired now and reclaim the permit.
    let mut raw = client.get_multiplexed_async_connection().await?;
    let _: () = redis_sync::redis::cmd("ZADD")
        .arg("redsync:semaphore:{reports}:leases")
        .arg("XX")
        .arg(1)
        .arg(permit.holder())
        .query_async(&mut raw)
        .await?;
    permit.lost().await;
    println!("lost() resolved: is_lost = {}", permit.is_lost());
    match permit.release().await {
        Err(Error::LeaseLost) => println!("release: LeaseLost (the pool did not grow)"),
        other => println!("release: {other:?}"),
    }
    let again = sem.acquire().await?;
    again.release().await?;
    sem.shutdown().await
}
