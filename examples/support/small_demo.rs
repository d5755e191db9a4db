//! The body of the smol and async-std examples, written once for any runtime.

use std::time::Duration;

use redis_sync::{Event, Runtime, Semaphore};

pub async fn run<R: Runtime>(url: String, label: &str) -> redis_sync::Result<()> {
    let client = redis::Client::open(url)?;
    let name = format!("{label}-quickstart-{}", std::process::id());
    let sem = Semaphore::<R>::create(&client, &name, 2).await?;
    let a = sem.acquire().await?;
    let b = sem.acquire().await?;
    assert!(sem.try_acquire().await?.is_none(), "only two permits");
    drop(a);
    let c = sem.acquire_timeout(Duration::from_secs(5)).await?;
    println!("{label}: held two permits, dropped one, took it again");
    b.release().await?;
    c.release().await?;

    let ev = Event::<R>::open(&client, &name).await?;
    ev.set().await?;
    ev.wait_timeout(Duration::from_secs(5)).await?;
    println!("{label}: event delivered");
    Ok(())
}

/// `REDIS_URL`, or a redis-server of our own for as long as the returned guard lives.
pub fn redis_url() -> (String, Option<super::server::RedisServer>) {
    match std::env::var("REDIS_URL") {
        Ok(url) => (url, None),
        Err(_) => {
            let server = super::server::RedisServer::start();
            (server.url.clone(), Some(server))
        }
    }
}
