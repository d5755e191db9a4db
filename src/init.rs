//! Creating the permit pool (two strategies) and waiting for one to exist.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::AsyncCommands;

use crate::engine::{Engine, GATE_TOKEN};
use crate::runtime::Runtime;
use crate::scripts::INIT;
use crate::{Error, KeyLayout, Result};

/// How a semaphore's permit pool is created the first time.
///
/// Both are atomic and safe when many processes create the same semaphore at once: the
/// first creates the pool, the others validate the count. Neither re-creates a full pool
/// while permits are held.
///
/// # Examples
///
/// ```
/// use redis_sync::InitStrategy;
/// assert_eq!(InitStrategy::default(), InitStrategy::Lua);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InitStrategy {
    /// One Lua script checks and fills the pool atomically (redsync's `LUA`).
    #[default]
    Lua,
    /// `WATCH`/`MULTI`/`EXEC`, retried when another client changed the keys meanwhile
    /// (redsync's `OPTIMISTIC_LOCKING`). Runs on a connection of its own, because `WATCH`
    /// state belongs to a connection.
    OptimisticLocking,
}

/// Attempts before giving up when other clients keep changing the keys.
const ATTEMPTS: usize = 64;

/// Makes sure the pool exists; returns the count stored in Redis.
pub(crate) async fn ensure_pool<R: Runtime>(engine: &Arc<Engine<R>>, count: u32) -> Result<u32> {
    for attempt in 0..ATTEMPTS {
        let done = match engine.cfg.init {
            InitStrategy::Lua => init_lua(engine, count).await?,
            InitStrategy::OptimisticLocking => init_optimistic(engine, count).await?,
        };
        if let Some(actual) = done {
            return Ok(actual);
        }
        // Contention: back off a little, with jitter, before the next attempt.
        let ms = fastrand::u64(1..=(2 + attempt as u64 * 2).min(50));
        engine.rt.sleep(Duration::from_millis(ms)).await;
    }
    Err(Error::InitContention)
}

/// With redsync 2.0's key names, other clients (Python redsync) take permits without
/// recording them: a pool without its metadata cannot be topped up safely.
fn strict<R: Runtime>(engine: &Engine<R>) -> bool {
    engine.cfg.keys.layout == KeyLayout::Redsync2
}

async fn init_lua<R: Runtime>(engine: &Arc<Engine<R>>, count: u32) -> Result<Option<u32>> {
    let keys = &engine.cfg.keys;
    let Some(meta) = keys.meta.as_ref() else {
        return Ok(Some(count));
    };
    // First without the holders: when the metadata exists (nearly always) or nobody holds
    // anything, that is the whole answer, at a constant cost however many holders there
    // are. Only a pool to re-create under live holders needs their list (-1).
    if let Some(done) = init_lua_with(engine, meta, count, &[]).await? {
        return Ok(Some(done));
    }
    let mut conn = engine.conn.clone();
    let holders: Vec<String> = conn.zrange(&keys.leases, 0, -1).await?;
    init_lua_with(engine, meta, count, &holders).await
}

/// One `INIT` call listing `holders`; `None` when they are not the lease set's members.
async fn init_lua_with<R: Runtime>(
    engine: &Arc<Engine<R>>,
    meta: &str,
    count: u32,
    holders: &[String],
) -> Result<Option<u32>> {
    let keys = &engine.cfg.keys;
    let mut conn = engine.conn.clone();
    let mut inv = INIT.prepare_invoke();
    inv.key(meta)
        .key(&keys.pool)
        .key(&keys.leases)
        .key(&keys.gate);
    for h in holders {
        inv.key(keys.held(h));
    }
    inv.arg(count)
        .arg(engine.first_token())
        .arg(engine.key_ttl_ms())
        .arg(u8::from(strict(engine)))
        .arg(u8::from(engine.is_fenced()));
    for h in holders {
        inv.arg(h);
    }
    let actual: i64 = inv.invoke_async(&mut conn).await?;
    if actual == -2 {
        return Err(Error::MetadataMissing);
    }
    Ok(u32::try_from(actual).ok())
}

async fn init_optimistic<R: Runtime>(engine: &Arc<Engine<R>>, count: u32) -> Result<Option<u32>> {
    let keys = &engine.cfg.keys;
    let Some(meta) = keys.meta.as_ref() else {
        return Ok(Some(count));
    };
    let ttl = engine.key_ttl_ms() as i64;
    // WATCH belongs to the connection: never on the shared one.
    // On the server that owns the keys (in a cluster, a connection to that node).
    let (mut conn, _) = engine.conn.dedicated(meta, Duration::ZERO).await?;
    redis::cmd("WATCH")
        .arg(meta)
        .arg(&keys.pool)
        .arg(&keys.leases)
        .exec_async(&mut conn)
        .await?;
    let existing: Option<u32> = conn.hget(meta, "count").await?;
    if existing.is_some() {
        redis::cmd("UNWATCH").exec_async(&mut conn).await?;
        // The script's "exists" branch: lengthens TTLs (never shortens: a live semaphore
        // may have a longer lease than ours) and gives a pool of an earlier version its
        // gate, atomically.
        return init_lua_with(engine, meta, count, &[]).await;
    }
    if strict(engine) && conn.exists(&keys.pool).await? {
        redis::cmd("UNWATCH").exec_async(&mut conn).await?;
        return Err(Error::MetadataMissing);
    }
    let holders: Vec<String> = conn.zrange(&keys.leases, 0, -1).await?;
    let mut held = 0u32;
    let mut gate_held = false;
    for h in &holders {
        let items: Vec<String> = conn.lrange(keys.held(h), 0, -1).await?;
        gate_held |= items.iter().any(|t| t == GATE_TOKEN);
        held += items.iter().filter(|t| *t != GATE_TOKEN).count() as u32;
    }
    let free: u32 = conn.llen(&keys.pool).await?;
    let want = count.saturating_sub(held);
    let mut tx = redis::pipe();
    tx.atomic();
    tx.hset(meta, "count", count).ignore();
    tx.hdel(meta, "debt").ignore();
    tx.hset(meta, "gate", 1).ignore();
    tx.del(&keys.gate).ignore();
    if !gate_held {
        tx.rpush(&keys.gate, GATE_TOKEN).ignore();
    }
    if engine.is_fenced() {
        tx.hset(meta, "fenced", 1).ignore();
        tx.hset(meta, "fence", engine.first_token()).ignore();
    }
    if free < want {
        tx.rpush(
            &keys.pool,
            vec![engine.first_token(); (want - free) as usize],
        )
        .ignore();
    } else if free > want {
        if want == 0 {
            tx.del(&keys.pool).ignore();
        } else {
            tx.ltrim(&keys.pool, 0, want as isize - 1).ignore();
        }
    }
    if ttl > 0 {
        tx.pexpire(meta, ttl).ignore();
        lengthen_ttl(&mut tx, &keys.pool, ttl);
        lengthen_ttl(&mut tx, &keys.leases, ttl);
        lengthen_ttl(&mut tx, &keys.gate, ttl);
    }
    // EXEC answers nil when a watched key changed: someone else got there first.
    let committed: Option<()> = tx.query_async(&mut conn).await?;
    Ok(committed.map(|()| count))
}

/// Sets a TTL of `ms` on `key` if it has none, and lengthens a shorter one; never shortens
/// it (the `keep` of the Lua scripts). Leaves an absent key alone.
fn lengthen_ttl(pipe: &mut redis::Pipeline, key: &str, ms: i64) {
    pipe.cmd("PEXPIRE").arg(key).arg(ms).arg("NX").ignore();
    pipe.cmd("PEXPIRE").arg(key).arg(ms).arg("GT").ignore();
}

/// Waits until a creator has set the semaphore up; returns its count.
///
/// Polls with a backoff that grows to 250 ms: a few requests a second at most.
pub(crate) async fn wait_for_count<R: Runtime>(
    engine: &Arc<Engine<R>>,
    timeout: Option<Duration>,
) -> Result<u32> {
    // Only semaphores (which have metadata) attach.
    let meta = engine
        .cfg
        .keys
        .meta
        .as_ref()
        .unwrap_or(&engine.cfg.keys.pool);
    let start = Instant::now();
    let mut delay = Duration::from_millis(5);
    let mut conn = engine.conn.clone();
    loop {
        let count: Option<i64> = conn.hget(meta, "count").await?;
        if let Some(c) = count {
            return u32::try_from(c)
                .ok()
                .filter(|c| crate::error::COUNT_RANGE.contains(&i64::from(*c)))
                .ok_or(Error::CountOutOfRange(c));
        }
        let mut pause = delay;
        if let Some(t) = timeout {
            let left = t.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(Error::Timeout(t));
            }
            pause = pause.min(left);
        }
        engine.rt.sleep(pause).await;
        delay = (delay * 2).min(Duration::from_millis(250));
    }
}
