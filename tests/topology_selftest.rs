//! The topology harnesses of `tests/common/cluster.rs` and `tests/common/sentinel.rs`,
//! checked against real redis-server processes: a 6-node cluster (data on every shard,
//! failovers, a slot migration with its MIGRATING/ASK window) and a sentinel setup
//! (two failovers, data kept).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::{crc16, redirect_port, slot_of, RedisCluster};
use common::sentinel::{role, RedisSentinel};
use redis::Commands;

fn get(c: &mut redis::Connection, key: &str) -> redis::RedisResult<Option<String>> {
    c.get(key)
}

#[test]
fn hash_slots_follow_the_cluster_spec() {
    assert_eq!(crc16(b"123456789"), 0x31C3);
    assert_eq!(slot_of("foo"), 12182);
    assert_eq!(slot_of("bar"), 5061);
    assert_eq!(slot_of("{user1000}.following"), slot_of("user1000"));
    assert_eq!(slot_of("{user1000}.followers"), slot_of("user1000"));
    assert_eq!(slot_of("foo{}{bar}"), crc16(b"foo{}{bar}") % 16384);
    assert_eq!(slot_of("foo{{bar}}zap"), slot_of("{bar"));
    assert_eq!(slot_of("foo{bar}{zap}"), slot_of("bar"));
    assert_eq!(slot_of("lib:{name}:permits"), slot_of("name"));
}

#[test]
fn cluster_serves_fails_over_and_migrates() {
    let t0 = Instant::now();
    let c = RedisCluster::shared();
    eprintln!("cluster: up after {:?}", t0.elapsed());
    assert_eq!(c.ports().len(), 6);
    assert_eq!(c.urls().len(), 6);
    let primaries = c.primaries();
    assert_eq!(primaries.len(), 3, "primaries {primaries:?}");
    assert_eq!(c.replicas().len(), 3);
    for &p in &primaries {
        assert!(!primaries.contains(&c.replica_of(p)));
    }

    // Our slot computation agrees with the server's.
    let mut con = c.node_conn(primaries[0]);
    for i in 0..200 {
        let key = match i % 3 {
            0 => format!("k{i}"),
            1 => format!("lib:{{n{i}}}:x"),
            _ => format!("a{{}}b{{c{i}}}"),
        };
        let server: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&key)
            .query(&mut con)
            .unwrap();
        assert_eq!(slot_of(&key), server, "slot of {key:?}");
    }

    // A key on each shard: readable from its owner, MOVED elsewhere, replicated.
    let names = c.tagged_names_per_shard(2);
    assert_eq!(names.len(), 3);
    let mut keys = Vec::new();
    for (&primary, names) in primaries.iter().zip(&names) {
        assert_eq!(names.len(), 2);
        for name in names {
            let key = format!("selftest:{{{name}}}:k");
            assert_eq!(c.owner_of_slot(slot_of(&key)), primary);
            let mut own = c.node_conn(primary);
            let _: () = own.set(&key, name).unwrap();
            assert_eq!(get(&mut own, &key).unwrap().as_deref(), Some(name.as_str()));
            let other = c.other_primary(primary);
            let err = get(&mut c.node_conn(other), &key).unwrap_err();
            assert_eq!(err.code(), Some("MOVED"), "{err}");
            assert_eq!(redirect_port(&err), Some(primary), "{err}");
            let replica = c.replica_of(primary);
            c.wait_for(
                "the replica to have the key",
                Duration::from_secs(10),
                || {
                    let mut r = c.node_conn(replica);
                    let _: () = redis::cmd("READONLY").query(&mut r).unwrap();
                    match get(&mut r, &key) {
                        Ok(Some(v)) if v == *name => Ok(()),
                        other => Err(format!("{other:?}")),
                    }
                },
            );
            keys.push((key, name.clone()));
        }
    }
    eprintln!("cluster: data checked after {:?}", t0.elapsed());

    // Failover: the slot's replica becomes its primary and has the data.
    let (key0, value0) = keys[0].clone();
    let slot0 = slot_of(&key0);
    let old = c.owner_of_slot(slot0);
    let new = c.failover(slot0);
    assert_ne!(new, old);
    assert_eq!(c.owner_of_slot(slot0), new);
    assert_eq!(c.replica_of(new), old);
    assert!(c.replicas().contains(&old));
    assert_eq!(
        get(&mut c.node_conn(new), &key0).unwrap().as_deref(),
        Some(value0.as_str())
    );
    let err = get(&mut c.node_conn(old), &key0).unwrap_err();
    assert_eq!(err.code(), Some("MOVED"), "{err}");
    eprintln!("cluster: first failover done after {:?}", t0.elapsed());

    // Step-by-step migration with a window in which MIGRATING/IMPORTING and ASK show.
    let tag = format!("mig{:08x}", fastrand::u32(..));
    let mkeys = (0..5)
        .map(|i| format!("selftest:{{{tag}}}:{i}"))
        .collect::<Vec<_>>();
    let (slot, from, to) = c.migration_plan(&mkeys[0]);
    assert_ne!(from, to);
    {
        let mut src = c.node_conn(from);
        for k in &mkeys {
            let _: () = src.set(k, k).unwrap();
        }
    }
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let done = done.clone();
        let mkeys = mkeys.clone();
        std::thread::spawn(move || {
            let c = RedisCluster::shared();
            let (mut migrating, mut importing, mut ask) = (false, false, false);
            while !done.load(Ordering::SeqCst) {
                migrating |= c.is_migrating(from, slot);
                importing |= c.is_importing(to, slot);
                let mut src = c.node_conn(from);
                for k in &mkeys {
                    if let Err(e) = get(&mut src, k) {
                        if e.code() == Some("ASK") {
                            assert_eq!(redirect_port(&e), Some(to), "{e}");
                            ask = true;
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (migrating, importing, ask)
        })
    };
    c.migrate_slot_with_pause(slot, to, Duration::from_millis(200));
    done.store(true, Ordering::SeqCst);
    let (migrating, importing, ask) = watcher.join().unwrap();
    assert!(migrating, "MIGRATING was never seen on {from}");
    assert!(importing, "IMPORTING was never seen on {to}");
    assert!(ask, "no ASK from {from} during the migration");
    assert_eq!(c.owner_of_slot(slot), to);
    assert!(!c.is_migrating(from, slot) && !c.is_importing(to, slot));
    let mut dst = c.node_conn(to);
    for k in &mkeys {
        assert_eq!(get(&mut dst, k).unwrap().as_deref(), Some(k.as_str()));
        let err = get(&mut c.node_conn(from), k).unwrap_err();
        assert_eq!(err.code(), Some("MOVED"), "{err}");
    }
    let left: u64 = redis::cmd("CLUSTER")
        .arg("COUNTKEYSINSLOT")
        .arg(slot)
        .query(&mut c.node_conn(from))
        .unwrap();
    assert_eq!(left, 0);
    eprintln!("cluster: migration done after {:?}", t0.elapsed());

    // A second failover of the same shard: back to the first primary, data kept.
    let back = c.failover(slot0);
    assert_eq!(back, old);
    assert_eq!(c.replica_of(old), new);
    assert_eq!(
        get(&mut c.node_conn(back), &key0).unwrap().as_deref(),
        Some(value0.as_str())
    );
    for (key, value) in &keys {
        let owner = c.owner_of_slot(slot_of(key));
        assert_eq!(
            get(&mut c.node_conn(owner), key).unwrap().as_deref(),
            Some(value.as_str())
        );
    }
    eprintln!("cluster: second failover done after {:?}", t0.elapsed());
}

#[test]
fn sentinel_fails_over_twice_and_keeps_data() {
    let t0 = Instant::now();
    let s = RedisSentinel::shared();
    eprintln!("sentinel: up after {:?}", t0.elapsed());
    assert!(!s.master_name().is_empty());
    assert_eq!(s.sentinel_urls().len(), 3);
    for &p in &s.sentinel_ports() {
        assert_eq!(role(p).unwrap(), "sentinel");
    }
    let p0 = s.primary_port();
    let r0 = s.replica_port();
    assert_eq!(role(p0).unwrap(), "master");
    assert_eq!(role(r0).unwrap(), "slave");

    let write = |port: u16, key: &str| {
        let mut c = s.node_conn(port);
        let _: () = c.set(key, key).unwrap();
        // Replicated before the failover (SENTINEL FAILOVER does not wait for it).
        let acked: i64 = redis::cmd("WAIT").arg(1).arg(5000).query(&mut c).unwrap();
        assert_eq!(acked, 1, "WAIT on {port}");
    };
    write(p0, "selftest:s:a");

    let p1 = s.failover();
    assert_eq!(p1, r0);
    assert_eq!(s.primary_port(), p1);
    assert_eq!(role(p1).unwrap(), "master");
    assert_eq!(role(p0).unwrap(), "slave");
    let mut c = s.node_conn(p1);
    assert_eq!(
        get(&mut c, "selftest:s:a").unwrap().as_deref(),
        Some("selftest:s:a")
    );
    write(p1, "selftest:s:b");
    eprintln!("sentinel: first failover done after {:?}", t0.elapsed());

    let p2 = s.failover();
    assert_eq!(p2, p0);
    assert_eq!(role(p2).unwrap(), "master");
    assert_eq!(role(p1).unwrap(), "slave");
    let mut c = s.node_conn(p2);
    for k in ["selftest:s:a", "selftest:s:b"] {
        assert_eq!(get(&mut c, k).unwrap().as_deref(), Some(k));
    }
    eprintln!("sentinel: second failover done after {:?}", t0.elapsed());
}
