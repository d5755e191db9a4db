//! What operators see: `stats()` against what a scenario did (on every runtime), and the
//! `tracing` events of a lease loss and of a background error.

#[allow(unused_imports)]
mod common;
#[macro_use]
mod scenarios;

use std::time::Duration;

use common::relay::Relay;
use redis_sync::{Error, Runtime, Semaphore};
use scenarios::{eventually, expire_lease, spawn, wait_all_free};

runtime_tests! {
    stats_count_what_happened => stats_count_what_happened();
    background_errors_are_counted => background_errors_are_counted();
}

async fn stats_count_what_happened<R: Runtime>() {
    let client = common::client();
    let name = common::unique_prefix("stats");
    let sem = Semaphore::<R>::builder(&client, &name)
        .lease_ttl(Duration::from_secs(1))
        .create(2)
        .await
        .unwrap();
    let other = Semaphore::<R>::builder(&client, &name)
        .lease_ttl(Duration::from_secs(30))
        .attach(None)
        .await
        .unwrap();
    assert_eq!(sem.stats(), redis_sync::Stats::default());

    let a = sem.acquire().await.unwrap();
    let b = sem.acquire().await.unwrap();
    let s = sem.stats();
    assert_eq!((s.held, s.grants), (2, 2), "{s:?}");
    assert!(matches!(
        sem.acquire_timeout(Duration::from_millis(100)).await,
        Err(Error::Timeout(_))
    ));
    assert_eq!(sem.stats().timeouts, 1);

    let waiter = spawn::<R, _>({
        let sem = sem.clone();
        async move { sem.acquire().await.unwrap() }
    });
    eventually::<R, _, _, _>("a task waits on a blocking connection", || {
        let s = sem.stats();
        async move {
            if s.waiting == 1 && s.blocking_connections >= 1 {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        }
    })
    .await;
    a.release().await.unwrap();
    let c = waiter.await;
    let s = sem.stats();
    assert_eq!((s.waiting, s.held, s.grants), (0, 2, 3), "{s:?}");

    // The handle's lease ends behind its back: it counts one lost lease (its renewal gives
    // its 2 permits back on the spot).
    expire_lease(&client, &name, b.holder()).await;
    eventually::<R, _, _, _>("the lease loss is counted", || {
        let s = sem.stats();
        async move {
            if s.lost_leases == 1 && s.held == 0 {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        }
    })
    .await;
    // Another holder "crashes" (closed, lease ended): the reclaim that gives its permit back
    // is counted by the handle that ran it.
    let crashed = Semaphore::<R>::builder(&client, &name)
        .lease_ttl(Duration::from_secs(30))
        .attach(None)
        .await
        .unwrap();
    let stranded = crashed.acquire().await.unwrap();
    crashed.close();
    expire_lease(&client, &name, stranded.holder()).await;
    assert_eq!(other.reclaim_expired().await.unwrap(), 1);
    assert_eq!(other.stats().reclaimed, 1);
    drop(stranded);
    drop((b, c));
    assert_eq!(wait_all_free(&other).await.free, 2);
    assert_eq!(sem.stats().background_errors, 0);
    sem.shutdown().await.unwrap();
    assert_eq!(
        sem.stats().lost_leases,
        1,
        "a shutdown with nothing out gives its leases up without counting a loss"
    );
    other.shutdown().await.unwrap();
}

/// A renewal that fails (its connection reset) is counted, not dropped; the handle recovers.
async fn background_errors_are_counted<R: Runtime>() {
    let server = common::RedisServer::start();
    let relay = Relay::start_to_port(server.port);
    let relayed = redis::Client::open(relay.url()).unwrap();
    let sem = Semaphore::<R>::builder(&relayed, "bg-errors")
        .lease_ttl(Duration::from_secs(1))
        .create(1)
        .await
        .unwrap();
    relay.reset_all();
    eventually::<R, _, _, _>("the failed renewal is counted", || {
        let s = sem.stats();
        async move {
            if s.background_errors >= 1 {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        }
    })
    .await;
    let p = sem
        .acquire()
        .await
        .expect("the handle recovers on a new connection");
    p.release().await.unwrap();
    sem.shutdown().await.unwrap();
}

/// With the `tracing` feature, a lease loss is a warn event naming the holder.
#[cfg(all(feature = "tracing", feature = "tokio"))]
#[test]
fn a_lease_loss_is_traced() {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl Write for Buffer {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let out = Buffer::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // One thread: the watchdog's events reach this thread's subscriber.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let client = common::client();
            let name = common::unique_prefix("traced");
            let sem = Semaphore::<redis_sync::Tokio>::builder(&client, &name)
                .lease_ttl(Duration::from_secs(1))
                .create(1)
                .await
                .unwrap();
            let permit = sem.acquire().await.unwrap();
            let holder = permit.holder().to_owned();
            expire_lease(&client, &name, &holder).await;
            permit.lost().await;
            assert!(matches!(permit.release().await, Err(Error::LeaseLost)));
            sem.shutdown().await.unwrap();
            let log = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
            let lost = log
                .lines()
                .find(|l| l.contains("WARN") && l.contains("lease lost"))
                .unwrap_or_else(|| panic!("no lease-loss event in:\n{log}"));
            assert!(lost.contains(&holder), "{lost}");
            assert!(log.contains("granted"), "{log}");
        });
}
