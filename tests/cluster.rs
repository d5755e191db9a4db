//! Redis Cluster (feature `cluster`): a local cluster of 6 redis-server processes (3
//! primaries, 3 replicas), started once for this test binary.
//!
//! The scenarios run on names spread over all three shards, on every runtime; a manual
//! failover and a live slot migration happen while holders hold and waiters block. The
//! checks are independent of the library: an in-process counter of tasks inside (never
//! more than `count`), every waiter served, and every permit back in the pool at the end.

#![cfg(feature = "cluster")]

#[allow(unused_imports)]
mod common;
#[macro_use]
mod scenarios;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::cluster::{slot_of, RedisCluster};
use redis_sync::{Coordinator, Error, InitStrategy, Invalid, KeyLayout, Runtime, Semaphore};
use scenarios::*;

/// Topology changes (failover, migration) one at a time, and not during the scenarios on
/// every shard: each test checks its own.
static TOPOLOGY: std::sync::LazyLock<futures::lock::Mutex<()>> =
    std::sync::LazyLock::new(|| futures::lock::Mutex::new(()));

async fn coordinator<R: Runtime>() -> Coordinator<R> {
    Coordinator::<R>::cluster(RedisCluster::shared().urls())
        .max_blocking_connections(64)
        .connect()
        .await
        .expect("connect to the local cluster")
}

fn name(tag: &str) -> String {
    format!("{tag}-{:08x}", fastrand::u32(..))
}

/// `tasks` tasks, each with a handle of its own on `sync`, loop acquire/release `rounds`
/// times on semaphore `name` of `count`; returns the most seen inside at once.
async fn hammer<R: Runtime>(
    sync: &Coordinator<R>,
    name: &str,
    count: u32,
    tasks: usize,
    rounds: usize,
    stop: Arc<AtomicBool>,
) -> (usize, Semaphore<R>) {
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let first = sync.semaphore(name).create(count).await.unwrap();
    let mut running = Vec::new();
    for _ in 0..tasks {
        let sem = sync.semaphore(name).create(count).await.unwrap();
        let (inside, most, stop) = (inside.clone(), most.clone(), stop.clone());
        running.push(spawn::<R, _>(async move {
            let mut done = 0;
            while done < rounds || !stop.load(Ordering::SeqCst) {
                let permit = sem.acquire().await.expect("acquire");
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                sleep::<R>(Duration::from_millis(fastrand::u64(0..3))).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                if permit.is_lost() {
                    panic!("a permit was lost while held");
                }
                drop(permit);
                done += 1;
            }
            done
        }));
    }
    for r in running {
        assert!(r.await >= rounds);
    }
    (most.load(Ordering::SeqCst), first)
}

/// Semaphores and events on names owned by each of the three primaries.
async fn scenarios_on_every_shard<R: Runtime>() {
    // Not during another test's failover: a primary that hands over holds writes for
    // seconds, as long as the response timeout (seen: 4 failures in 45 runs).
    let _one_at_a_time = TOPOLOGY.lock().await;
    let cluster = RedisCluster::shared();
    let sync = coordinator::<R>().await;
    assert!(sync.is_cluster());
    let names = cluster.names_per_shard("shard", 2);
    assert_eq!(names.len(), 3);
    let stop = Arc::new(AtomicBool::new(true));
    let mut runs = Vec::new();
    for shard in &names {
        for n in shard {
            let (sync, n, stop) = (sync.clone(), n.clone(), stop.clone());
            runs.push(spawn::<R, _>(async move {
                let (most, sem) = hammer(&sync, &n, 2, 5, 10, stop).await;
                assert!(most <= 2, "{most} inside a semaphore of 2 on {n}");
                wait_all_free(&sem).await;
                let ev = sync.event(&n).open().await.unwrap();
                let waiter = {
                    let ev = ev.clone();
                    spawn::<R, _>(async move { ev.wait().await })
                };
                ev.set().await.unwrap();
                waiter.await.unwrap();
                assert!(!ev.is_set().await.unwrap());
            }));
        }
    }
    futures::future::join_all(runs).await;
    sync.shutdown().await.unwrap();
}

/// `CLIENT UNBLOCK <id>` of a blocking wait cut short (a timed-out acquire) goes to the
/// node the wait's connection is on: client ids are numbered per node, so on another node
/// it would wake another client, or nobody. Counted in every primary's command stats.
async fn unblock_reaches_the_waits_node<R: Runtime>() {
    let _one_at_a_time = TOPOLOGY.lock().await;
    let cluster = RedisCluster::shared();
    let sync = coordinator::<R>().await;
    let n = name("unblock");
    let owner = cluster.owner_of_slot(slot_of(&format!("{{{n}}}")));
    let holder = sync.semaphore(&n).create(1).await.unwrap();
    let waiter = sync.semaphore(&n).create(1).await.unwrap();
    let held = holder.acquire().await.unwrap();
    let unblocks = || -> Vec<(u16, u64)> {
        cluster
            .on_every_primary::<String>(redis::cmd("INFO").arg("commandstats"))
            .into_iter()
            .map(|(port, info)| {
                let calls = info
                    .unwrap()
                    .lines()
                    .find(|l| l.starts_with("cmdstat_client|unblock:"))
                    .and_then(|l| l.split("calls=").nth(1))
                    .and_then(|v| v.split(',').next())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                (port, calls)
            })
            .collect()
    };
    let before = unblocks();
    for _ in 0..6 {
        let res = waiter.acquire_timeout(Duration::from_millis(150)).await;
        assert!(matches!(res, Err(Error::Timeout(_))), "{res:?}");
    }
    let after = unblocks();
    let delta = |port: u16, v: &[(u16, u64)]| v.iter().find(|(p, _)| *p == port).map_or(0, |x| x.1);
    let mut to_owner = 0;
    for &(port, calls) in &after {
        let d = calls - delta(port, &before);
        if port == owner {
            to_owner = d;
        } else {
            assert_eq!(
                d, 0,
                "CLIENT UNBLOCK sent to node {port}, not the wait's {owner}"
            );
        }
    }
    assert!(
        to_owner >= 1,
        "the timed-out waits were cut short on {owner}: {after:?}"
    );
    drop(held);
    wait_all_free(&holder).await;
}

/// What cluster mode refuses, and what it runs on one node.
async fn layouts_and_strategies<R: Runtime>() {
    let _one_at_a_time = TOPOLOGY.lock().await;
    let sync = coordinator::<R>().await;
    let err = sync
        .semaphore(&name("py"))
        .key_layout(KeyLayout::Redsync2)
        .create(1)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidArgument(Invalid::LayoutNeedsOneNode)),
        "{err:?}"
    );
    // WATCH-based init runs on a connection to the slot's owner.
    let n = name("watch");
    let sem = sync
        .semaphore(&n)
        .init_strategy(InitStrategy::OptimisticLocking)
        .create(3)
        .await
        .unwrap();
    let p = sem.acquire().await.unwrap();
    assert_eq!(sem.inspect().await.unwrap().free, 2);
    drop(p);
    wait_all_free(&sem).await;
}

/// Holders hold and waiters block while `change` alters the topology under the
/// semaphore's slot; afterwards nobody was ever over the count, every waiter was served,
/// and every permit is back.
async fn under_topology_change<R: Runtime>(change: fn(&RedisCluster, u16)) {
    let _one_at_a_time = TOPOLOGY.lock().await;
    let cluster = RedisCluster::shared();
    let sync = coordinator::<R>().await;
    let n = name("moving");
    let slot = slot_of(&format!("{{{n}}}"));
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (sync, n, stop) = (sync.clone(), n.clone(), stop.clone());
        spawn::<R, _>(async move { hammer(&sync, &n, 3, 12, 20, stop).await })
    };
    // Let the load start (holders hold, waiters block), then change the topology from a
    // thread (the harness is synchronous).
    sleep::<R>(Duration::from_millis(300)).await;
    let before = redirections(cluster);
    let (done_tx, done_rx) = futures::channel::oneshot::channel();
    std::thread::spawn(move || {
        change(RedisCluster::shared(), slot);
        let _ = done_tx.send(());
    });
    done_rx.await.expect("topology change thread");
    // Keep the load going through the new topology for a while, then stop it.
    sleep::<R>(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let (most, sem) = load.await;
    assert!(most <= 3, "{most} inside a semaphore of 3");
    wait_all_free(&sem).await;
    let after = redirections(cluster);
    let seen: Vec<String> = after
        .iter()
        .filter(|(k, n)| before.get(*k).copied().unwrap_or(0) < **n)
        .map(|(k, n)| format!("{k}+{}", n - before.get(k).copied().unwrap_or(0)))
        .collect();
    // The change was seen by the library (its requests were redirected), not slept through.
    println!(
        "error replies during the change: {seen:?}; stats {:?}",
        sync.stats()
    );
    assert!(
        seen.iter()
            .any(|s| s.starts_with("MOVED") || s.starts_with("ASK") || s.starts_with("TRYAGAIN")),
        "no redirection seen: {seen:?}"
    );
    cluster.wait_healthy("after the scenario");
    sync.shutdown().await.unwrap();
}

/// The cluster's error replies so far, by kind (`INFO errorstats` of every node).
fn redirections(cluster: &RedisCluster) -> std::collections::BTreeMap<String, u64> {
    let mut total = std::collections::BTreeMap::new();
    for (_, info) in cluster.on_every_node::<String>(redis::cmd("INFO").arg("errorstats")) {
        for line in info.unwrap_or_default().lines() {
            // errorstat_MOVED:count=12
            let Some((kind, rest)) = line
                .strip_prefix("errorstat_")
                .and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            let n: u64 = rest
                .strip_prefix("count=")
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            *total.entry(kind.to_owned()).or_insert(0) += n;
        }
    }
    total
}

fn failover(cluster: &RedisCluster, slot: u16) {
    cluster.failover(slot);
}

fn migrate(cluster: &RedisCluster, slot: u16) {
    let to = cluster.other_primary(cluster.owner_of_slot(slot));
    cluster.migrate_slot_with_pause(slot, to, Duration::from_millis(50));
}

runtime_tests! {
    cluster_scenarios_on_every_shard => scenarios_on_every_shard();
    cluster_layouts_and_init_strategies => layouts_and_strategies();
    cluster_unblock_reaches_the_waits_node => unblock_reaches_the_waits_node();
    cluster_manual_failover_under_load => under_topology_change(failover);
    cluster_slot_migration_under_load => under_topology_change(migrate);
}
