mod common;
use redis_sync::{Event, Semaphore, Tokio};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke() {
    let client = common::client();
    let name = common::unique_prefix("smoke");
    let sem = Semaphore::<Tokio>::create(&client, &name, 2).await.unwrap();
    let a = sem.acquire().await.unwrap();
    let b = sem.acquire().await.unwrap();
    assert!(sem.try_acquire().await.unwrap().is_none());
    let e = sem.acquire_timeout(Duration::from_millis(30)).await;
    assert!(matches!(e, Err(redis_sync::Error::Timeout(_))), "{e:?}");
    let st = sem.inspect().await.unwrap();
    println!("{st:?}");
    assert_eq!(st.free, 0);
    assert_eq!(st.held(), 2);
    a.release().await.unwrap();
    let c = sem.acquire().await.unwrap();
    drop(b);
    let d = sem.acquire_timeout(Duration::from_secs(2)).await.unwrap();
    drop(c);
    drop(d);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let st = sem.inspect().await.unwrap();
    println!("{st:?}");
    assert_eq!(st.free, 2);
    // blocking path
    let p1 = sem.acquire().await.unwrap();
    let p2 = sem.acquire().await.unwrap();
    let s2 = std::sync::Arc::new(sem);
    let s3 = s2.clone();
    let h = tokio::spawn(async move { s3.acquire().await.map(|p| p.holder().to_string()) });
    tokio::time::sleep(Duration::from_millis(50)).await;
    p1.release().await.unwrap();
    println!("{:?}", h.await.unwrap());
    drop(p2);

    let ev = Event::<Tokio>::open(&client, &name).await.unwrap();
    ev.set().await.unwrap();
    assert!(ev.is_set().await.unwrap());
    ev.wait().await.unwrap();
    assert!(!ev.is_set().await.unwrap());
    assert!(ev.wait_timeout(Duration::from_millis(50)).await.is_err());
    let ev = std::sync::Arc::new(ev);
    let e2 = ev.clone();
    let h = tokio::spawn(async move { e2.wait().await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    ev.set().await.unwrap();
    h.await.unwrap().unwrap();
}
