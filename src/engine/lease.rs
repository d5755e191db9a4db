//! Leases: the watchdog that renews this handle's leases and keeps the keys alive, and the
//! reclaim that gives back the tokens of holders whose lease expired.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use futures::future::{select, Either};
use redis::RedisResult;

use super::{Engine, Generation, Kind, GRAVE};
use crate::runtime::Runtime;
use crate::scripts::{RECLAIM, RENEW};
use crate::Result;

/// Renews every `lease / 3` (±20% jitter so that many clients do not renew in step), and
/// retries sooner after an error.
pub(super) fn spawn_watchdog<R: Runtime>(engine: &Arc<Engine<R>>, stop: oneshot::Receiver<()>) {
    let weak: Weak<Engine<R>> = Arc::downgrade(engine);
    let rt = engine.rt.clone();
    let period = engine.cfg.lease / 3;
    engine.rt.spawn(async move {
        let mut stop = stop;
        let mut failing = false;
        loop {
            let wait = if failing {
                period.min(Duration::from_millis(250))
            } else {
                period.mul_f64(0.8 + 0.4 * fastrand::f64())
            };
            let sleep = Box::pin(rt.sleep(wait));
            if let Either::Left(_) = select(&mut stop, sleep).await {
                return;
            }
            let Some(engine) = weak.upgrade() else { return };
            failing = renew_once(&engine).await.is_err();
            if failing {
                // Redis is unreachable: once a lease has certainly expired on the server,
                // its holders must stop trusting their permits.
                let now = Instant::now();
                for gen in live_gens(&engine) {
                    if gen.certainly_expired(now) {
                        engine.lose(&gen);
                    }
                }
            }
        }
    });
}

fn live_gens<R: Runtime>(engine: &Engine<R>) -> Vec<Arc<Generation>> {
    engine
        .state()
        .gens
        .iter()
        .filter(|g| !g.is_lost() && !g.is_retired())
        .cloned()
        .collect()
}

/// One renewal: extends this handle's leases, keeps the keys alive, re-creates a pool whose
/// metadata vanished (Redis restarted without persistence), and reclaims expired holders.
pub(crate) async fn renew_once<R: Runtime>(engine: &Arc<Engine<R>>) -> Result<()> {
    let gens = live_gens(engine);
    let keys = &engine.cfg.keys;
    let meta = keys.meta.as_ref().unwrap_or(&keys.pool);
    let mut inv = RENEW.prepare_invoke();
    inv.key(&keys.leases)
        .key(&keys.graves)
        .key(&keys.pool)
        .key(meta);
    for g in &gens {
        inv.key(&g.held_key);
    }
    inv.arg(engine.ttl_ms())
        .arg(u8::from(engine.keep_pool_ttl()))
        .arg(GRAVE.as_millis() as u64)
        .arg(engine.give_back_side());
    for g in &gens {
        inv.arg(&g.id);
    }
    let mut conn = engine.conn.clone();
    let (meta_ok, status, expired, graves): (i64, Vec<i64>, Vec<String>, Vec<String>) =
        inv.invoke_async(&mut conn).await?;
    let expires_by = Instant::now() + engine.cfg.lease;
    for (gen, renewed) in gens.iter().zip(status) {
        if renewed == 1 {
            gen.renewed(expires_by);
        } else {
            engine.lose(gen);
        }
    }
    let count = engine.count.load(std::sync::atomic::Ordering::Acquire);
    if meta_ok == 0 && engine.cfg.kind == Kind::Semaphore && count > 0 && !engine.is_closed() {
        crate::init::ensure_pool(engine, count).await?;
    }
    let mine: HashSet<&str> = gens
        .iter()
        .filter(|g| !g.is_lost())
        .map(|g| g.id.as_str())
        .collect();
    let mut seen = HashSet::new();
    let others: Vec<String> = expired
        .into_iter()
        .chain(graves)
        .filter(|h| !mine.contains(h.as_str()) && seen.insert(h.clone()))
        .collect();
    if !others.is_empty() {
        reclaim_call(engine, others, 0).await?;
    }
    Ok(())
}

/// A reclaim of `holders` (the first `force` of them retired whatever their lease) as an
/// owned future, so it can run on the runtime after its caller is gone.
pub(super) fn reclaim_call<R: Runtime>(
    engine: &Engine<R>,
    holders: Vec<String>,
    force: usize,
) -> impl Future<Output = RedisResult<i64>> + Send + 'static {
    let keys = engine.cfg.keys.clone();
    let ttl = engine.key_ttl_ms();
    let side = engine.give_back_side();
    let mut conn = engine.conn.clone();
    async move {
        let mut inv = RECLAIM.prepare_invoke();
        inv.key(&keys.leases).key(&keys.graves).key(&keys.pool);
        for h in &holders {
            inv.key(keys.held(h));
        }
        inv.arg(ttl)
            .arg(GRAVE.as_millis() as u64)
            .arg(side)
            .arg(force);
        for h in &holders {
            inv.arg(h);
        }
        inv.invoke_async(&mut conn).await
    }
}
