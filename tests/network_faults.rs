//! Faults of the network, not of processes: connections that go silent without FIN or RST
//! (a vanished host, a failover behind a virtual IP, a NAT dropping the flow), new
//! connections that never answer, and slow links. A fault-injecting relay
//! (`tests/common/relay.rs`) sits between the handle under test and a redis-server of the
//! test's own; every scenario runs on tokio, smol and async-std.

#[allow(unused_imports)]
mod common;
#[macro_use]
mod scenarios;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::relay::Relay;
use common::RedisServer;
use futures::FutureExt;
use redis_sync::{Error, Runtime, Semaphore};
use scenarios::{sleep, spawn, wait_all_free, wait_conserved};

runtime_tests! {
    waiter_behind_silent_connections_is_served => waiter_behind_silent_connections_is_served();
    silent_holder_is_told_before_another_grant => silent_holder_is_told_before_another_grant();
    silent_new_connections_fail_on_time => silent_new_connections_fail_on_time();
    slow_link_keeps_leases => slow_link_keeps_leases();
}

/// Waits until `n` clients are blocked in a command on `server` (the test's own server).
async fn blocked_clients<R: Runtime>(server: &RedisServer, n: usize) {
    let client = redis::Client::open(server.url.as_str()).unwrap();
    let mut conn = scenarios::raw_conn(&client).await;
    scenarios::eventually::<R, _, _, _>("clients blocked on the server", || {
        let mut conn = conn.clone();
        async move {
            let list: String = redis::cmd("CLIENT")
                .arg("LIST")
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            let blocked = list.lines().filter(|l| l.contains("cmd=blmove")).count();
            if blocked >= n {
                Ok(())
            } else {
                Err(list)
            }
        }
    })
    .await;
    let _: () = redis::cmd("PING").query_async(&mut conn).await.unwrap();
}

/// A waiter blocked on a connection that goes silent gets a permit released elsewhere
/// within its deadline (block time + response timeout) plus a margin: the silent
/// connection is dropped, the wait's unknown outcome goes through the generation path,
/// and a new connection waits again.
async fn waiter_behind_silent_connections_is_served<R: Runtime>() {
    const RESPONSE: Duration = Duration::from_secs(1);
    // lease / 4 = 1 s of block time per wait.
    const LEASE: Duration = Duration::from_secs(4);
    let server = RedisServer::start();
    let relay = Relay::start_to_port(server.port);
    let direct = redis::Client::open(server.url.as_str()).unwrap();
    let relayed = redis::Client::open(relay.url()).unwrap();
    let name = common::unique_prefix("silent-waiter");
    let holder = Semaphore::<R>::builder(&direct, &name)
        .lease_ttl(LEASE)
        .create(1)
        .await
        .unwrap();
    let waiter = Arc::new(
        Semaphore::<R>::builder(&relayed, &name)
            .lease_ttl(LEASE)
            .response_timeout(RESPONSE)
            .attach(None)
            .await
            .unwrap(),
    );
    let held = holder.acquire().await.unwrap();
    let waiting = spawn::<R, _>({
        let waiter = waiter.clone();
        async move {
            let permit = waiter.acquire().await;
            (permit, Instant::now())
        }
    });
    blocked_clients::<R>(&server, 1).await;
    relay.blackhole_existing();
    let released_at = Instant::now();
    held.release().await.unwrap();
    let (permit, got_at) = waiting.await;
    let permit = permit.expect("the waiter is served, not failed");
    let took = got_at.duration_since(released_at);
    let bound = RESPONSE + LEASE / 4 + Duration::from_secs(3);
    assert!(
        took <= bound,
        "served {took:?} after the release (bound {bound:?})"
    );
    assert!(!permit.is_lost());
    assert!(
        holder.try_acquire().await.unwrap().is_none(),
        "granted twice"
    );
    permit.release().await.unwrap();
    assert_eq!(wait_all_free(&holder).await.free, 1);
    waiter.shutdown().await.unwrap();
    holder.shutdown().await.unwrap();
}

/// A holder whose connections all go silent is told its lease is lost no later than
/// another process is granted the permit, although its renewal hangs for the whole
/// response timeout (5 s here, five leases).
async fn silent_holder_is_told_before_another_grant<R: Runtime>() {
    const LEASE: Duration = Duration::from_secs(1);
    let server = RedisServer::start();
    let relay = Relay::start_to_port(server.port);
    let direct = redis::Client::open(server.url.as_str()).unwrap();
    let relayed = redis::Client::open(relay.url()).unwrap();
    let name = common::unique_prefix("silent-holder");
    let cut_off = Semaphore::<R>::builder(&relayed, &name)
        .lease_ttl(LEASE)
        .response_timeout(Duration::from_secs(5))
        .create(1)
        .await
        .unwrap();
    let other = Semaphore::<R>::builder(&direct, &name)
        .lease_ttl(LEASE)
        .attach(None)
        .await
        .unwrap();
    let permit = cut_off.acquire().await.unwrap();
    let told = spawn::<R, _>({
        let lost = permit.lost();
        async move {
            lost.await;
            Instant::now()
        }
    });
    let cut_at = Instant::now();
    relay.blackhole_existing();
    relay.blackhole_new(true);
    let granted = other.acquire().await.unwrap();
    let granted_at = Instant::now();
    let told_at = told
        .now_or_never()
        .expect("another process was granted the permit before its holder was told");
    assert!(told_at <= granted_at);
    assert!(
        told_at.duration_since(cut_at) < LEASE + Duration::from_millis(500),
        "told {:?} after the cut",
        told_at.duration_since(cut_at)
    );
    assert!(permit.is_lost());
    granted.release().await.unwrap();
    drop(permit);
    wait_conserved(&other).await;
    other.shutdown().await.unwrap();
    cut_off.close();
}

/// New connections that are accepted but never answer: `create` fails within its deadline
/// with a Redis I/O error instead of hanging.
async fn silent_new_connections_fail_on_time<R: Runtime>() {
    let server = RedisServer::start();
    let relay = Relay::start_to_port(server.port);
    relay.blackhole_new(true);
    let relayed = redis::Client::open(relay.url()).unwrap();
    let started = Instant::now();
    let res = Semaphore::<R>::builder(&relayed, &common::unique_prefix("silent-new"))
        .response_timeout(Duration::from_millis(500))
        .create(1)
        .await;
    match res {
        Err(Error::Redis(e)) => assert!(e.is_timeout() || e.is_io_error(), "{e}"),
        other => panic!("expected a Redis timeout, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// A slow link (300 ms each way, under a 2 s response timeout) is not a fault: leases are
/// kept, nothing is lost or granted twice.
async fn slow_link_keeps_leases<R: Runtime>() {
    const LEASE: Duration = Duration::from_secs(2);
    let server = RedisServer::start();
    let relay = Relay::start_to_port(server.port);
    let relayed = redis::Client::open(relay.url()).unwrap();
    let name = common::unique_prefix("slow-link");
    let sem = Semaphore::<R>::builder(&relayed, &name)
        .lease_ttl(LEASE)
        .response_timeout(Duration::from_secs(2))
        .create(2)
        .await
        .unwrap();
    let a = sem.acquire().await.unwrap();
    relay.set_delay(Duration::from_millis(300));
    let b = sem.acquire().await.unwrap();
    assert!(sem.try_acquire().await.unwrap().is_none());
    // Several renewals go through the slow link.
    sleep::<R>(LEASE * 2).await;
    assert!(!a.is_lost() && !b.is_lost());
    relay.set_delay(Duration::ZERO);
    a.release().await.unwrap();
    b.release().await.unwrap();
    assert_eq!(wait_all_free(&sem).await.free, 2);
    sem.shutdown().await.unwrap();
}
