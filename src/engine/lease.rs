//! Leases: the renewal of a handle's leases (run by its context's watchdog), which keeps
//! the keys alive; and the reclaim that gives back the tokens of holders whose lease
//! expired.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use redis::{AsyncCommands, RedisResult};

use super::{Engine, Generation, Kind, GRAVE};
use crate::runtime::Runtime;
use crate::scripts::{DUE, RECLAIM, RENEW};
use crate::stats::Counters;
use crate::trace::trace_event;
use crate::{Error, Result};

/// How many holders one reclaim call handles: bounded work per script call, repeated until
/// done, so that a mass expiry never blocks Redis for long.
const BATCH: usize = 64;
/// At most this many batches per renewal (64 × 64 = 4,096 holders); the rest wait for the
/// next renewal.
const MAX_BATCHES: usize = 64;
/// Holders read per request when a handle gives up all its leases.
const PAGE: usize = 1_000;

fn live_gens<R: Runtime>(engine: &Engine<R>) -> Vec<Arc<Generation>> {
    engine
        .state()
        .gens
        .iter()
        // A hard lease is never renewed: it runs out unless its holder extends it.
        .filter(|g| !g.is_lost() && !g.is_retired() && !g.hard)
        .cloned()
        .collect()
}

/// One renewal: extends this handle's leases, keeps the keys alive, re-creates a pool whose
/// metadata vanished (Redis restarted without persistence), and reclaims expired holders.
pub(crate) async fn renew_once<R: Runtime>(engine: &Arc<Engine<R>>) -> Result<()> {
    if engine.is_closed() {
        return Ok(());
    }
    let gens = live_gens(engine);
    let keys = &engine.cfg.keys;
    let meta = keys.meta.as_ref().unwrap_or(&keys.pool);
    let mut inv = RENEW.prepare_invoke();
    inv.key(&keys.leases)
        .key(&keys.graves)
        .key(&keys.pool)
        .key(meta)
        .key(&keys.gate);
    for g in &gens {
        inv.key(&g.held_key);
    }
    inv.arg(engine.ttl_ms())
        .arg(u8::from(engine.keep_pool_ttl()))
        .arg(GRAVE.as_millis() as u64)
        .arg(engine.give_back_side())
        .arg(keys.has_meta())
        .arg(u8::from(engine.is_fenced()));
    for g in &gens {
        inv.arg(&g.id);
    }
    let mut conn = engine.conn.clone();
    let sent = Instant::now();
    type Renewed = (
        i64,
        Vec<i64>,
        Vec<String>,
        Vec<String>,
        Vec<String>,
        u32,
        u32,
    );
    let (meta_ok, status, expired, due, newest, count, debt): Renewed =
        inv.invoke_async(&mut conn).await?;
    engine
        .reduction_pending
        .store(debt > 0, std::sync::atomic::Ordering::Release);
    let expires_by = engine.loss_deadline(sent);
    trace_event!(trace, primitive = %keys.pool, leases = gens.len(), took = ?sent.elapsed(), "renewed");
    for (gen, renewed) in gens.iter().zip(status) {
        if renewed == 1 {
            gen.renewed(expires_by);
        } else {
            engine.lose(gen);
        }
    }
    // Every handle learns a resize at its next renewal.
    if count > 0 {
        engine
            .count
            .store(count, std::sync::atomic::Ordering::Release);
    }
    let count = engine.count.load(std::sync::atomic::Ordering::Acquire);
    // Metadata gone while this handle lives (Redis lost its data): re-created, so that
    // waiters do not wait forever for a pool that no longer exists.
    if meta_ok == 0 && engine.cfg.kind != Kind::Event && count > 0 && !engine.is_closed() {
        match crate::init::ensure_pool(engine, count).await {
            // Nothing this handle can repair: `create` reports it to whoever asks.
            Ok(_) | Err(Error::MetadataMissing) => {}
            Err(e) => return Err(e),
        }
    }
    let mine: HashSet<String> = gens
        .iter()
        .filter(|g| !g.is_lost())
        .map(|g| g.id.clone())
        .collect();
    let mut batch = (expired, due);
    for round in 0..MAX_BATCHES {
        let full = batch.0.len() >= BATCH || batch.1.len() >= BATCH;
        let mut seen = HashSet::new();
        let mut others: Vec<String> = batch.0.into_iter().chain(batch.1).collect();
        if round == 0 {
            others.extend(newest.iter().cloned());
        }
        others.retain(|h| !mine.contains(h) && seen.insert(h.clone()));
        for chunk in others.chunks(BATCH) {
            let moved = reclaim_call(engine, chunk.to_vec(), 0).await?;
            note_reclaimed(engine, moved);
        }
        if !full {
            break;
        }
        let mut inv = DUE.prepare_invoke();
        inv.key(&keys.leases).key(&keys.graves);
        batch = inv.invoke_async(&mut conn).await?;
    }
    Ok(())
}

/// Reclaims now every expired holder and due grave of the primitive, in bounded batches;
/// returns how many tokens went back to the pool.
pub(crate) async fn reclaim_expired<R: Runtime>(engine: &Engine<R>) -> Result<i64> {
    let keys = &engine.cfg.keys;
    let mut conn = engine.conn.clone();
    let mut moved = 0;
    for _ in 0..MAX_BATCHES {
        let mut inv = DUE.prepare_invoke();
        inv.key(&keys.leases).key(&keys.graves);
        let (expired, due): (Vec<String>, Vec<String>) = inv.invoke_async(&mut conn).await?;
        let full = expired.len() >= BATCH || due.len() >= BATCH;
        let mut seen = HashSet::new();
        let holders: Vec<String> = expired
            .into_iter()
            .chain(due)
            .filter(|h| seen.insert(h.clone()))
            .collect();
        for chunk in holders.chunks(BATCH) {
            let n = reclaim_call(engine, chunk.to_vec(), 0).await?;
            note_reclaimed(engine, n);
            moved += n;
        }
        if !full {
            break;
        }
    }
    Ok(moved)
}

fn note_reclaimed<R: Runtime>(engine: &Engine<R>, moved: i64) {
    if moved > 0 {
        Counters::add(&engine.counters.reclaimed, moved as u64);
        trace_event!(info, primitive = %engine.cfg.keys.pool, permits = moved, "reclaimed from expired holders");
    }
}

/// Gives up every lease whose holder id starts with `holder_base` (every generation of one
/// handle, including those whose retirement is still in flight), with whatever their lists
/// hold, in bounded batches. `gens` generations were ever started (ids `base-0` to
/// `base-{gens - 1}`): their scores are looked up by id, so the cost follows this handle's
/// history, not the number of holders of the whole fleet, unless that is smaller (then the
/// lease set is read whole, as it is smaller than this handle's history).
pub(super) async fn give_up_all<R: Runtime>(
    engine: &Engine<R>,
    holder_base: &str,
    gens: u64,
) -> Result<()> {
    let mut conn = engine.conn.clone();
    let leases = &engine.cfg.keys.leases;
    let total: u64 = conn.zcard(leases).await?;
    let mut mine = Vec::new();
    if gens <= total {
        let ids: Vec<String> = (0..gens).map(|n| format!("{holder_base}-{n}")).collect();
        for page in ids.chunks(PAGE) {
            // ZSCOREs in a pipeline (not ZMSCORE: the README's minimal ACL lacks it).
            let mut pipe = redis::pipe();
            for id in page {
                pipe.zscore(leases, id);
            }
            let scores: Vec<Option<f64>> = pipe.query_async(&mut conn).await?;
            mine.extend(
                page.iter()
                    .zip(scores)
                    .filter(|(_, s)| s.is_some())
                    .map(|(id, _)| id.clone()),
            );
        }
    } else {
        // Fewer holders than this handle ever had generations: one read of them all (in one
        // command, so that no member is skipped while others come and go).
        let prefix = format!("{holder_base}-");
        let all: Vec<String> = conn.zrange(leases, 0, -1).await?;
        mine.extend(all.into_iter().filter(|h| h.starts_with(&prefix)));
    }
    for chunk in mine.chunks(BATCH) {
        reclaim_call(engine, chunk.to_vec(), chunk.len()).await?;
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
    let graves_ttl = engine.ttl_ms() + GRAVE.as_millis() as u64;
    let side = engine.give_back_side();
    let fenced = u8::from(engine.is_fenced());
    let mut conn = engine.conn.clone();
    async move {
        let mut inv = RECLAIM.prepare_invoke();
        inv.key(&keys.leases)
            .key(&keys.graves)
            .key(&keys.pool)
            .key(&keys.gate)
            .key(keys.meta_or_pool());
        for h in &holders {
            inv.key(keys.held(h));
        }
        inv.arg(ttl)
            .arg(GRAVE.as_millis() as u64)
            .arg(side)
            .arg(force)
            .arg(graves_ttl)
            .arg(keys.has_meta())
            .arg(fenced);
        for h in &holders {
            inv.arg(h);
        }
        inv.invoke_async(&mut conn).await
    }
}
