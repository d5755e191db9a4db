//! Regression tests for four defects found by review of the new primitives (issues #9 and
//! #10), each a scenario that failed before its fix: a cancelled or faulted hard lease gave
//! back another permit's token (a permit handed out twice); a request for several permits
//! cancelled while giving its gate back leaked them; an unknown outcome while collecting
//! left a dirty generation (and possibly the gate) forever; a collector kept its pooled
//! blocking connection and starved the other primitives of a coordinator. F5: a release
//! after the semaphore was lost and created anew added a permit. F6: `try_acquire` right
//! after a drop on the same handle could miss the permit.

#[allow(unused_imports)]
mod common;

use std::time::Duration;

use common::relay::Relay;
use redis_sync::tokio::{Coordinator, Semaphore};

fn direct() -> redis::Client {
    common::client()
}

fn upstream() -> String {
    let url = common::redis_url();
    let hostport = url
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_owned();
    hostport
}

async fn sem(client: &redis::Client, prefix: &str, count: u32) -> Semaphore {
    Semaphore::builder(client, "s")
        .key_prefix(prefix)
        .lease_ttl(Duration::from_secs(3))
        .create(count)
        .await
        .unwrap()
}

/// F1: acquire_with_lease dropped while HARDEN is in flight: the dropped Held gives back
/// a token of ANOTHER local permit; a second client gets a permit it should not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f1_harden_cancel_duplicates_permit() {
    let prefix = common::unique_prefix("rv-f1");
    let relay = Relay::start(&upstream());
    let via = redis::Client::open(relay.url()).unwrap();
    let s = sem(&via, &prefix, 2).await;
    let other = sem(&direct(), &prefix, 2).await;
    let a = s.acquire().await.unwrap(); // permit A, plain
    let d = Duration::from_millis(300);
    relay.set_delay(d);
    let s2 = s.clone();
    let task =
        tokio::spawn(async move { s2.try_acquire_with_lease(Duration::from_secs(20)).await });
    // TAKE: reply at ~2d; HARDEN sent at ~2d, runs at ~3d, reply at ~4d. Drop at ~3d.
    tokio::time::sleep(d * 3).await;
    task.abort();
    let _ = task.await;
    relay.set_delay(Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let st = other.inspect().await.unwrap();
    println!("after cancel: {st:?}");
    // The cancelled request keeps nothing (its permit, hardened or not, is given back), and
    // A, still held and not lost, is still recorded under its holder: before the fix, the
    // dropped request gave back A's token instead, and a third holder could get in.
    assert!(!a.is_lost());
    let a_recorded = st
        .holders
        .iter()
        .find(|h| h.id == a.holder())
        .map_or(0, |h| h.permits);
    assert_eq!(
        a_recorded, 1,
        "A's token was given back by someone else: {st:?}"
    );
    assert_eq!(st.free + st.held(), 2, "{st:?}");
}

/// F2: acquire_many dropped while GIVE_GATE is in flight: the collected permits are
/// counted as outstanding but owned by nobody: never given back while the handle lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f2_acquire_many_cancel_at_give_gate_leaks_permits() {
    let prefix = common::unique_prefix("rv-f2");
    let relay = Relay::start(&upstream());
    let via = redis::Client::open(relay.url()).unwrap();
    let s = sem(&via, &prefix, 3).await;
    let h = sem(&direct(), &prefix, 3).await;
    let one = h.acquire().await.unwrap();
    let s2 = s.clone();
    let task = tokio::spawn(async move { s2.acquire_many(3).await });
    tokio::time::sleep(Duration::from_millis(800)).await; // collecting: gate + 2, blocked
    let d = Duration::from_millis(300);
    relay.set_delay(d);
    drop(one); // BLMOVE reply at +d, GIVE_GATE at server +2d, reply +3d
    tokio::time::sleep(d * 2).await;
    task.abort();
    let _ = task.await;
    relay.set_delay(Duration::ZERO);
    let mut last = None;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let st = h.inspect().await.unwrap();
        if st.free == 3 {
            return;
        }
        last = Some(st);
    }
    panic!(
        "BUG: permits never came back after a cancelled acquire_many: {last:?}, stats of the handle {:?}",
        s.stats()
    );
}

/// F3: a collect whose blocking wait for the gate fails with an unknown outcome (connection
/// reset) leaves a dirty generation that is never retired; when the gate had moved, it is
/// kept (renewed) forever: every acquire_many everywhere waits forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f3_collect_error_keeps_gate_forever() {
    let prefix = common::unique_prefix("rv-f3");
    let relay = Relay::start(&upstream());
    let via = redis::Client::open(relay.url()).unwrap();
    let s = sem(&via, &prefix, 2).await;
    let x = sem(&direct(), &prefix, 2).await;
    let h = sem(&direct(), &prefix, 2).await;
    let one = h.acquire().await.unwrap();
    // X collects: takes the gate and 1 permit, waits for the other.
    let x2 = x.clone();
    let xt = tokio::spawn(async move { x2.acquire_many(2).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // S waits for the gate (BLMOVE gate -> held, through the relay).
    let s2 = s.clone();
    let st_task =
        tokio::spawn(async move { s2.acquire_many_timeout(1, Duration::from_secs(60)).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    relay.set_delay(Duration::from_millis(600));
    drop(one); // X completes and gives the gate back; the server moves it to S's list
    let xp = xt.await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    relay.reset_all(); // S's reply (the gate) is lost
    relay.set_delay(Duration::ZERO);
    xp.release().await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await; // > 3 leases
                                                       // S retries after the lost reply (a new generation) and gets its one permit; the gate
                                                       // that landed in its first generation's list comes back when that one is retired.
    let s_result = tokio::time::timeout(Duration::from_secs(30), st_task)
        .await
        .expect("S's request ended")
        .unwrap();
    drop(s_result);
    let st = h.inspect().await.unwrap();
    println!("state 10 s later: {st:?}");
    let y = sem(&direct(), &prefix, 2).await;
    let r = y.acquire_many_timeout(2, Duration::from_secs(5)).await;
    assert!(
        r.is_ok(),
        "BUG: gate held forever by a dirty generation ({:?}): {r:?}",
        st.gate_holder
    );
}

/// F4: a collector keeps its pooled blocking connection for the whole collection: with
/// the cap reached, another primitive's waiter is never served, although its permit is
/// free (here: a deadlock with cap 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f4_collector_hogs_blocking_connection() {
    f4(1).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f4_control_cap2() {
    f4(2).await
}

async fn f4(cap: usize) {
    let prefix = common::unique_prefix("rv-f4");
    let c = direct();
    let sync = Coordinator::builder(&c)
        .max_blocking_connections(cap)
        .connect()
        .await
        .unwrap();
    let s = sync
        .semaphore("s")
        .key_prefix(&prefix)
        .create(2)
        .await
        .unwrap();
    let t = sync
        .semaphore("t")
        .key_prefix(&prefix)
        .create(1)
        .await
        .unwrap();
    let outside_s = Semaphore::builder(&c, "s")
        .key_prefix(&prefix)
        .create(2)
        .await
        .unwrap();
    let outside_t = Semaphore::builder(&c, "t")
        .key_prefix(&prefix)
        .create(1)
        .await
        .unwrap();
    let hold_s = outside_s.acquire().await.unwrap();
    let hold_t = outside_t.acquire().await.unwrap();
    let s2 = s.clone();
    let collector = tokio::spawn(async move { s2.acquire_many(2).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t2 = t.clone();
    let waiter =
        tokio::spawn(async move { t2.acquire_timeout(Duration::from_secs(8)).await.map(drop) });
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(hold_t); // T's permit is free now
    let got = waiter.await.unwrap();
    drop(hold_s);
    let _ = collector.await;
    assert!(
        got.is_ok(),
        "BUG: T's waiter starved by S's collector: {got:?}"
    );
}

/// F5: every key of a semaphore but one holder's list expired (a stall of Redis longer
/// than the lease plus the grave period, right after a blocking grant created that list
/// with no TTL) and the semaphore was created anew: the old holder's release must not add
/// its token to the new pool (count + 1 permits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_after_the_semaphore_was_lost_and_recreated_adds_no_permit() {
    let c = direct();
    let prefix = common::unique_prefix("reg-f5");
    let old = sem(&c, &prefix, 1).await;
    let permit = old.acquire().await.unwrap();
    let mut raw = c.get_multiplexed_async_connection().await.unwrap();
    let base = format!("{prefix}:{{s}}");
    for key in ["list", "meta", "leases", "graves", "gate"] {
        let _: () = redis::cmd("DEL")
            .arg(format!("{base}:{key}"))
            .query_async(&mut raw)
            .await
            .unwrap();
    }
    let held: usize = redis::cmd("LLEN")
        .arg(format!("{base}:held:{}", permit.holder()))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(held, 1, "the holder's list survived");
    let new = Semaphore::builder(&c, "s")
        .key_prefix(&prefix)
        .create(1)
        .await
        .unwrap();
    let released = permit.release().await;
    assert!(
        matches!(released, Err(redis_sync::Error::LeaseLost)),
        "the old holder learns its permit was lost: {released:?}"
    );
    let st = new.inspect().await.unwrap();
    assert_eq!(
        (st.count, st.free, st.held()),
        (Some(1), 1, 0),
        "BUG: the old token was given back on top of the new pool: {st:?}"
    );
    drop(old);
}

/// F6: a permit dropped on a handle (its release sent by a background task) and
/// `try_acquire` on the same handle right after: the background task could take the
/// release from the outbox and send it after the try, which then found the pool empty.
/// On smol, whose executor runs the background task on another thread at once.
#[test]
fn try_acquire_right_after_a_drop_sees_the_permit() {
    smol::block_on(async {
        let c = direct();
        let prefix = common::unique_prefix("reg-f6");
        let s = redis_sync::smol::Semaphore::builder(&c, "s")
            .key_prefix(&prefix)
            .create(1)
            .await
            .unwrap();
        for round in 0..2000 {
            let permit = s.acquire().await.unwrap();
            drop(permit);
            let again = s.try_acquire().await.unwrap();
            assert!(
                again.is_some(),
                "BUG: round {round}: the permit dropped just before was not free"
            );
        }
    });
}
