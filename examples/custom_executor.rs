//! Bring your own executor: `Runtime` implemented for `futures::executor::ThreadPool`, with
//! `async-io` timers, and a semaphore and an event running on it.
//!
//! ```text
//! cargo run --example custom_executor --features smol
//! ```
//!
//! What such a user must enable: redis-rs drives its connections with either tokio's or
//! smol's reactor. Outside a tokio runtime it uses smol's (`async-io`, which runs its own
//! reactor thread), so enable this crate's `smol` feature (it turns on redis-rs's
//! `smol-comp`). The executor only has to run futures and provide a timer.
//!
//! Uses `REDIS_URL`, or starts its own redis-server from PATH.

#[path = "../tests/common/server.rs"]
mod server;

use std::future::Future;
use std::time::Duration;

use futures::executor::ThreadPool;
use futures::FutureExt;
use redis_sync::{Error, Event, Runtime, Semaphore};

/// A fourth runtime: a thread pool from `futures`, timers from `async-io`.
#[derive(Clone, Debug)]
struct Pool(ThreadPool);

impl Runtime for Pool {
    fn try_current() -> redis_sync::Result<Self> {
        // A thread pool has no notion of "the current one": pass it to the builders with
        // `.runtime(..)` instead.
        Err(Error::NoRuntime("futures ThreadPool"))
    }

    fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.0.spawn_ok(future);
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send + 'static {
        async_io::Timer::after(duration).map(drop)
    }
}

fn main() -> redis_sync::Result<()> {
    let pool = Pool(ThreadPool::new().map_err(|_| Error::NoRuntime("futures ThreadPool"))?);
    let url = server::redis_url();
    let client = redis_sync::redis::Client::open(url.as_str())?;
    futures::executor::block_on(async {
        let sem = Semaphore::builder(&client, "custom-executor")
            .runtime(pool.clone())
            .lease_ttl(Duration::from_secs(5))
            .create(2)
            .await?;
        // Eight tasks on the pool share two permits.
        let (tx, rx) = futures::channel::mpsc::unbounded();
        for i in 0..8 {
            let (sem, tx) = (sem.clone(), tx.clone());
            pool.spawn(async move {
                let res = async {
                    let permit = sem.acquire_timeout(Duration::from_secs(10)).await?;
                    async_io::Timer::after(Duration::from_millis(20)).await;
                    permit.release().await
                }
                .await;
                let _ = tx.unbounded_send((i, res));
            });
        }
        drop(tx);
        let done: Vec<_> = futures::StreamExt::collect(rx).await;
        for (i, res) in &done {
            res.as_ref().map_err(Clone::clone)?;
            println!("task {i}: acquired and released a permit");
        }
        assert_eq!(done.len(), 8);
        let ev = Event::builder(&client, "custom-executor")
            .runtime(pool.clone())
            .open()
            .await?;
        ev.set().await?;
        ev.wait_timeout(Duration::from_secs(5)).await?;
        println!("event: set and received");
        let state = sem.inspect().await?;
        println!(
            "custom executor: ok, {} of {:?} permits free",
            state.free, state.count
        );
        ev.shutdown().await?;
        sem.shutdown().await
    })
}
