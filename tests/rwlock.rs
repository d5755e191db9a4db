//! The read-write lock on every runtime: exclusion checked with independent counters,
//! writer preference, crashed readers and writers, dropped futures, write fencing.

#[allow(unused_imports)]
mod common;
#[macro_use]
mod scenarios;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis_sync::{Error, Runtime, RwLock};
use scenarios::*;

async fn lock<R: Runtime>(prefix: &str, readers: u32) -> RwLock<R> {
    RwLock::<R>::builder(&common::client(), "rw")
        .key_prefix(prefix)
        .max_readers(readers)
        .lease_ttl(Duration::from_secs(2))
        .open()
        .await
        .unwrap()
}

/// Readers and writers from several handles: never a writer with anyone else, never more
/// than `max_readers` readers, write tokens strictly increasing.
async fn exclusion<R: Runtime>() {
    let prefix = common::unique_prefix("rw-excl");
    let readers = Arc::new(AtomicUsize::new(0));
    let writers = Arc::new(AtomicUsize::new(0));
    let tokens = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let l = lock::<R>(&prefix, 3).await;
        let (readers, writers, tokens) = (readers.clone(), writers.clone(), tokens.clone());
        tasks.push(spawn::<R, _>(async move {
            for round in 0..12 {
                if (i + round) % 4 == 0 {
                    let w = l.write().await.unwrap();
                    assert_eq!(writers.fetch_add(1, Ordering::SeqCst), 0, "two writers");
                    assert_eq!(readers.load(Ordering::SeqCst), 0, "writer with readers");
                    tokens.lock().unwrap().push(w.fencing_token());
                    sleep::<R>(Duration::from_millis(2)).await;
                    writers.fetch_sub(1, Ordering::SeqCst);
                    w.unlock().await.unwrap();
                } else {
                    let r = l.read().await.unwrap();
                    let now = readers.fetch_add(1, Ordering::SeqCst) + 1;
                    assert!(now <= 3, "{now} readers");
                    assert_eq!(writers.load(Ordering::SeqCst), 0, "reader with a writer");
                    sleep::<R>(Duration::from_millis(2)).await;
                    readers.fetch_sub(1, Ordering::SeqCst);
                    r.unlock().await.unwrap();
                }
            }
        }));
    }
    futures::future::join_all(tasks).await;
    let tokens = tokens.lock().unwrap().clone();
    assert!(!tokens.is_empty());
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
    let st = lock::<R>(&prefix, 3).await.inspect().await.unwrap();
    assert_eq!((st.readers, st.writer.clone()), (0, None), "{st:?}");
    assert_eq!(st.last_write_fence, *tokens.last().unwrap());
}

/// A writer among a continuous stream of readers gets the lock, and readers that arrive
/// while it waits do not go ahead of it.
async fn writer_not_starved<R: Runtime>() {
    let prefix = common::unique_prefix("rw-starve");
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..6)
        .map(|_| {
            let (prefix, stop) = (prefix.clone(), stop.clone());
            spawn::<R, _>(async move {
                let l = lock::<R>(&prefix, 4).await;
                let mut n = 0u32;
                while !stop.load(Ordering::SeqCst) {
                    let r = l.read().await.unwrap();
                    sleep::<R>(Duration::from_millis(3)).await;
                    drop(r);
                    n += 1;
                }
                n
            })
        })
        .collect();
    sleep::<R>(Duration::from_millis(100)).await;
    let writer = lock::<R>(&prefix, 4).await;
    let started = Instant::now();
    for _ in 0..3 {
        writer.write().await.unwrap().unlock().await.unwrap();
    }
    let took = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let reads: u32 = futures::future::join_all(readers).await.into_iter().sum();
    println!("3 writes among {reads} reads took {took:?}");
}

/// A crashed reader (its lease ended behind the library's back) and a crashed writer are
/// reclaimed: the lock comes back.
async fn crashed_holders<R: Runtime>() {
    let prefix = common::unique_prefix("rw-crash");
    let client = common::client();
    let a = lock::<R>(&prefix, 2).await;
    let b = lock::<R>(&prefix, 2).await;
    let mut raw = raw_conn(&client).await;
    let end_lease = |holder: String| {
        let cmd = redis::cmd("ZADD")
            .arg(format!("{prefix}:{{rw}}:leases"))
            .arg("XX")
            .arg(1)
            .arg(holder)
            .clone();
        cmd
    };
    let r = a.read().await.unwrap();
    let _: () = end_lease(r.holder().to_owned())
        .query_async(&mut raw)
        .await
        .unwrap();
    let w = b.write_timeout(Duration::from_secs(10)).await.unwrap();
    r.lost().await;
    let _: () = end_lease(w.holder().to_owned())
        .query_async(&mut raw)
        .await
        .unwrap();
    let w2 = a.write_timeout(Duration::from_secs(10)).await.unwrap();
    assert!(w2.fencing_token() > w.fencing_token());
    w.lost().await;
    assert!(matches!(w.unlock().await, Err(Error::LeaseLost)));
    w2.unlock().await.unwrap();
}

/// A write that times out while readers hold the lock gives back what it collected: the
/// readers' lock stays, and later readers and writers get in.
async fn dropped_write<R: Runtime>() {
    let prefix = common::unique_prefix("rw-drop");
    let l = lock::<R>(&prefix, 3).await;
    let r = l.read().await.unwrap();
    assert!(matches!(
        l.write_timeout(Duration::from_millis(200)).await,
        Err(Error::Timeout(_))
    ));
    let r2 = l.read_timeout(Duration::from_secs(10)).await.unwrap();
    drop((r, r2));
    let w = l.write_timeout(Duration::from_secs(10)).await.unwrap();
    assert!(l.try_read().await.unwrap().is_none());
    drop(w);
    let st = eventually::<R, _, _, _>("lock free", || async {
        let st = l.inspect().await.map_err(|e| e.to_string())?;
        if st.readers == 0 && st.writer.is_none() && st.writer_waiting.is_none() {
            Ok(st)
        } else {
            Err(format!("{st:?}"))
        }
    })
    .await;
    assert_eq!(st.max_readers, Some(3));
}

runtime_tests! {
    rwlock_exclusion_and_fencing => exclusion();
    rwlock_writer_not_starved => writer_not_starved();
    rwlock_crashed_reader_and_writer => crashed_holders();
    rwlock_dropped_write_gives_back => dropped_write();
}
