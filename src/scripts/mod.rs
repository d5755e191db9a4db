//! The Lua scripts: every multi-step change to Redis happens in one of them, so nothing is
//! ever left half-done. Every key a script touches is passed in `KEYS`.
//!
//! Leases use the server clock (`TIME`), never a client's.

use std::sync::LazyLock;

use redis::{FromRedisValue, ParsingError, Script, Value};

/// The reply of [`TAKE`].
#[derive(Debug)]
pub(crate) enum Taken {
    /// The token taken (a mutex's is its fence).
    Token(String),
    /// The pool was empty, or a request for several permits holds the gate.
    Empty,
    /// The holder's lease is gone or expired.
    LeaseGone,
}

impl FromRedisValue for Taken {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        match v {
            Value::Int(-1) => Ok(Taken::LeaseGone),
            Value::Int(_) | Value::Nil => Ok(Taken::Empty),
            other => Ok(Taken::Token(String::from_redis_value(other)?)),
        }
    }
}

/// Helpers shared by every script.
const PRELUDE: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- Extends a key's TTL to at least `ms`, never shortens it; leaves absent keys alone, and
-- every key alone when `ms` is 0 (keys that never expire).
local function keep(key, ms)
  if ms <= 0 then return end
  local t = redis.call('PTTL', key)
  if t == -1 or (t >= 0 and t < ms) then redis.call('PEXPIRE', key, ms) end
end
-- The next fence after token `t`: one more than the counter, and than `t` itself, so that
-- fences keep growing even if the metadata (the counter) was lost meanwhile.
local function next_fence(t, meta)
  local c = redis.call('HINCRBY', meta, 'fence', 1)
  local n = tonumber(t) or 0
  if c <= n then
    c = n + 1
    redis.call('HSET', meta, 'fence', c)
  end
  return tostring(c)
end
-- Puts back one token `t` a holder gave up: the gate token (`G`) to the gate list; a
-- permit owed to a lowered count (`debt`) nowhere; a fenced token (a mutex's: `fenced`
-- is '1', told by the caller, which knows what it opened) as the next fence, so that every
-- grant carries a number greater than all before; any other token to the pool, on
-- `side`. `meta` is '' for primitives without metadata (events).
-- Returns 1 for a permit (or signal) put back or destroyed, 0 for the gate token, and
-- whether the push created the pool (it was empty, hence deleted, so it has no TTL).
local function put(t, pool, gate, meta, side, fenced)
  if t == 'G' then
    redis.call('RPUSH', gate, t)
    return 0, false
  end
  if meta ~= '' then
    local d = redis.call('HGET', meta, 'debt')
    if d and tonumber(d) > 0 then
      redis.call('HINCRBY', meta, 'debt', -1)
      return 1, false
    end
    if fenced == '1' then t = next_fence(t, meta) end
  end
  local n
  if side == 'LEFT' then n = redis.call('LPUSH', pool, t) else n = redis.call('RPUSH', pool, t) end
  return 1, n == 1
end
-- Puts back every token of `from` (see `put`); returns how many permits went back. Reads
-- the metadata once, not once per token: a mass reclaim stays cheap.
local function drain(from, pool, gate, meta, side, fenced)
  local debt = 0
  if meta ~= '' then debt = tonumber(redis.call('HGET', meta, 'debt') or '0') end
  local n, destroyed = 0, 0
  while true do
    local t = redis.call('LPOP', from)
    if not t then break end
    if t == 'G' then
      redis.call('RPUSH', gate, t)
    elseif debt > destroyed then
      destroyed = destroyed + 1
      n = n + 1
    else
      if fenced == '1' and meta ~= '' then t = next_fence(t, meta) end
      if side == 'LEFT' then redis.call('LPUSH', pool, t) else redis.call('RPUSH', pool, t) end
      n = n + 1
    end
  end
  if destroyed > 0 then redis.call('HINCRBY', meta, 'debt', -destroyed) end
  return n
end
-- True while a request for several permits holds the gate (see `TAKE_MANY`): single
-- grants then wait their turn instead of taking the fast path.
local function gate_taken(gate, meta)
  return meta ~= '' and redis.call('LLEN', gate) == 0 and redis.call('HEXISTS', meta, 'gate') == 1
end
"#;

/// Loads every script into the server's script cache, concurrently (one round trip on a
/// multiplexed connection).
pub(crate) async fn load_all(conn: &crate::connection::Conn) -> redis::RedisResult<()> {
    let scripts = [
        &*TAKE,
        &*GIVE_BACK,
        &*TRANSFER,
        &*REGISTER,
        &*RENEW,
        &*DUE,
        &*RECLAIM,
        &*INIT,
        &*TAKE_MANY,
        &*TAKE_SOME,
        &*GIVE_GATE,
        &*RESIZE,
        &*HARDEN,
        &*EXTEND,
        &*GATE_READ,
        &*GATE_SET,
        &*LATCH_SET_COUNT,
        &*LATCH_COUNT_DOWN,
    ];
    let loads = scripts.map(|s| {
        let mut conn = conn.clone();
        async move { s.load_async(&mut conn).await.map(drop) }
    });
    futures::future::try_join_all(loads).await.map(drop)
}

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}{body}"))
}

/// Fast path: take one token into the holder's list if its lease is valid and no request
/// for several permits holds the gate.
/// KEYS: pool, held, leases, gate, meta (or pool when there is none). ARGV: holder, held
/// list TTL in ms (0: none), has_meta (1/0).
/// Returns the token taken (a mutex's is its fence), 0 pool empty (or gate held), -1 lease
/// gone or expired.
pub(crate) static TAKE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local e = redis.call('ZSCORE', KEYS[3], ARGV[1])
if not e or tonumber(e) <= now_ms() then return -1 end
local meta = ''
if ARGV[3] == '1' then meta = KEYS[5] end
if gate_taken(KEYS[4], meta) then return 0 end
local t = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
if not t then return 0 end
if tonumber(ARGV[2]) > 0 and meta ~= '' then
  -- The held list expires with the metadata, never after it (see `RENEW`; the pool may
  -- have just been emptied and deleted): one read and one write on the hot path.
  local p = redis.call('PTTL', meta)
  if p > 0 then redis.call('PEXPIRE', KEYS[2], p) end
end
return t
"#,
    )
});

/// Give up to `n` permits back from the holder's list (see `put`), and with `gate` the
/// gate too. The gate token is never given back by mistake: a request of the same holder
/// may be collecting under it.
/// A holder that is neither leased nor a grave is unknown: its records were lost while its
/// list survived (every key of the semaphore but that list expired during a stall of
/// Redis longer than the lease plus the grave period, right after a blocking grant created
/// the list with no TTL), and the pool may have been created anew since. Its tokens are
/// destroyed, never given back on top of the new pool.
/// KEYS: pool, held, gate, meta (or pool), leases, graves. ARGV: pool ttl_ms (0: the pool
/// keeps no TTL), side, has_meta (1/0), n, gate (1/0), fenced (1/0), holder.
/// Returns how many permits went back: 0 when the holder's list was empty (reclaimed) or
/// the holder unknown.
pub(crate) static GIVE_BACK: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local meta = ''
if ARGV[3] == '1' then meta = KEYS[4] end
local given = 0
local seen_gate = false
local known = false
local created = false
while given < tonumber(ARGV[4]) do
  local t = redis.call('LPOP', KEYS[2])
  if not t then break end
  if not known then
    if not (redis.call('ZSCORE', KEYS[5], ARGV[7]) or redis.call('ZSCORE', KEYS[6], ARGV[7])) then
      redis.call('DEL', KEYS[2])
      return 0
    end
    known = true
  end
  if t == 'G' then
    redis.call('RPUSH', KEYS[2], t)
    if seen_gate then break end
    seen_gate = true
  else
    local g, fresh = put(t, KEYS[1], KEYS[3], meta, ARGV[2], ARGV[6])
    given = given + g
    created = created or fresh
  end
end
if ARGV[5] == '1' and redis.call('LREM', KEYS[2], 1, 'G') == 1 then
  redis.call('RPUSH', KEYS[3], 'G')
end
-- A pool that existed keeps the TTL its renewals give it; one this call created gets one.
local ms = tonumber(ARGV[1])
if ms > 0 and created then keep(KEYS[1], ms) end
return given
"#,
    )
});

/// The reply of [`TRANSFER`] for one move.
#[derive(Debug)]
pub(crate) enum Transferred {
    /// The token moved into the receiving holder's list.
    Moved,
    /// The giving holder's list held no permit: its lease expired and it was reclaimed
    /// (or a move into it of unknown outcome never ran).
    FromEmpty,
    /// The receiving holder's lease is gone or expired: nothing moved.
    ToGone,
}

impl FromRedisValue for Transferred {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        match v {
            Value::Int(-1) => Ok(Transferred::ToGone),
            Value::Int(_) | Value::Nil => Ok(Transferred::FromEmpty),
            other => String::from_redis_value(other).map(|_| Transferred::Moved),
        }
    }
}

/// Records moves of permits between holders of the same semaphore (handles of one
/// context, see `context::siblings`), several pairs in one call: each token moves from the
/// giver's list straight into the receiver's, with the receiver's lease checked as `TAKE`
/// checks it. The permit is already in the receiver's hands (the move is written behind
/// a local handoff, see `engine::transfer`): like local handoff, a move is not refused
/// for the gate or a lowered count; the reply says whether either waits, so that the
/// handles stop handing permits over and send them back through the pool.
/// KEYS: leases, gate, meta (or pool), then per pair: giver's held list, receiver's.
/// ARGV: has_meta (1/0), held list TTL in ms (0: none), then per pair: receiver.
/// Returns {1 if the gate is taken or a debt is to pay else 0, {per pair: the token
/// moved, 0 the giver's list held no permit, -1 the receiver's lease is gone or expired}}.
pub(crate) static TRANSFER: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local now = now_ms()
local meta = ''
if ARGV[1] == '1' then meta = KEYS[3] end
local waiting = gate_taken(KEYS[2], meta)
if not waiting and meta ~= '' then
  local d = redis.call('HGET', meta, 'debt')
  waiting = d ~= false and tonumber(d) > 0
end
-- As in `TAKE`: a held list expires with the metadata, never after it.
local ttl = 0
if tonumber(ARGV[2]) > 0 and meta ~= '' then ttl = redis.call('PTTL', meta) end
local out = {}
for i = 1, (#KEYS - 3) / 2 do
  local from, to = KEYS[2 + 2 * i], KEYS[3 + 2 * i]
  local e = redis.call('ZSCORE', KEYS[1], ARGV[2 + i])
  if not e or tonumber(e) <= now then
    out[i] = -1
  else
    -- A permit of the giver, never the gate token a request of the same holder may hold.
    local t = redis.call('LPOP', from)
    if t == 'G' then
      redis.call('RPUSH', from, t)
      t = redis.call('LPOP', from)
      if t == 'G' then
        redis.call('RPUSH', from, t)
        t = false
      end
    end
    if t then
      -- A list that existed already has its TTL.
      if redis.call('RPUSH', to, t) == 1 and ttl > 0 then redis.call('PEXPIRE', to, ttl) end
      out[i] = t
    else
      out[i] = 0
    end
  end
end
if waiting then return {1, out} end
return {0, out}
"#,
    )
});

/// Start a holder's lease. KEYS: leases. ARGV: holder, lease ms, key TTL ms (0: none).
pub(crate) static REGISTER: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
redis.call('ZADD', KEYS[1], now_ms() + tonumber(ARGV[2]), ARGV[1])
if tonumber(ARGV[3]) > 0 then keep(KEYS[1], tonumber(ARGV[3])) end
return 1
"#,
    )
});

/// Renew the leases of this handle's holders and keep the primitive's keys alive.
/// A holder whose lease expired is reclaimed on the spot (its tokens go back).
/// Key TTLs (semaphores only, `expiring` = 1): every key (pool, metadata, lease set, gate
/// and held lists) lives `lease + grave` past the last renewal, so that held lists outlive
/// the leases they are reclaimed after, and never the pool (a pool that expired and was
/// created anew while held lists survived would let their tokens in as extra permits). Event keys never expire: like a pending signal, a taken
/// one waits for the next client, however late. The graves set always lives `lease +
/// grave` past its last change, long enough for every member's final sweep.
/// KEYS: leases, graves, pool, meta (or pool again), gate, held_1..held_n.
/// ARGV: lease ms, expiring (1/0), grave_ms, side, has_meta (1/0), fenced (1/0),
/// holder_1..holder_n.
/// Returns {meta_ok, {status_i (1 renewed, 0 lost)}, {expired holders}, {due graves},
/// {newest graves}, count}: at most 64 expired holders and 64 due graves (call `DUE` for
/// the next batches), the 16 newest graves, the likeliest to receive a late move, and the
/// count and pending reduction (`debt`) in the metadata (0 when none), so that every
/// handle learns a resize.
pub(crate) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local ms = tonumber(ARGV[1])
local grave = tonumber(ARGV[3])
local now = now_ms()
local meta = ''
if ARGV[5] == '1' then meta = KEYS[4] end
local status = {}
for i = 1, #ARGV - 6 do
  local h = ARGV[6 + i]
  local held = KEYS[5 + i]
  local e = redis.call('ZSCORE', KEYS[1], h)
  if e and tonumber(e) > now then
    redis.call('ZADD', KEYS[1], 'XX', now + ms, h)
    if ARGV[2] == '1' then keep(held, ms + grave) end
    status[i] = 1
  else
    if e then
      drain(held, KEYS[3], KEYS[5], meta, ARGV[4], ARGV[6])
      redis.call('ZREM', KEYS[1], h)
      redis.call('ZADD', KEYS[2], now + grave, h)
    end
    status[i] = 0
  end
end
local meta_ok = 1
if ARGV[2] == '1' then
  -- Every key of a semaphore lives `lease + grave` past the last renewal, held lists
  -- included, so that a stall of Redis (a paused server, a failover) longer than the
  -- lease never leaves held lists behind a pool that expired and was created anew.
  keep(KEYS[1], ms + grave)
  keep(KEYS[3], ms + grave)
  keep(KEYS[4], ms + grave)
  keep(KEYS[5], ms + grave)
end
-- Metadata gone while clients live (Redis lost its data): the caller re-creates it.
if meta ~= '' and redis.call('HEXISTS', meta, 'count') == 0 then meta_ok = 0 end
local count, debt = 0, 0
if meta ~= '' then
  local m = redis.call('HMGET', meta, 'count', 'debt')
  count = tonumber(m[1] or '0')
  debt = tonumber(m[2] or '0')
end
keep(KEYS[2], ms + grave)
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 64)
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 64)
local newest = redis.call('ZREVRANGEBYSCORE', KEYS[2], '+inf', '(' .. now, 'LIMIT', 0, 16)
return {meta_ok, status, expired, due, newest, count, debt}
"#,
    )
});

/// The next batches of expired holders and due graves, after `RENEW` returned full ones.
/// KEYS: leases, graves. Returns {{expired holders}, {due graves}}, at most 64 each.
pub(crate) static DUE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local now = now_ms()
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 64)
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 64)
return {expired, due}
"#,
    )
});

/// Give back every token of expired holders (and of the first `force` holders, whatever
/// their lease), then watch their lists as "graves" for a while, so that a blocking move
/// still in flight for them when they were reclaimed is given back too. A grave past its
/// time gets a last sweep and is removed.
/// KEYS: leases, graves, pool, gate, meta (or pool), held_1..held_n. ARGV: key TTL ms
/// (0: none), grave_ms, side, force, graves TTL ms, has_meta (1/0), fenced (1/0),
/// holder_1..holder_n.
/// Returns how many permits (or signals) went back; a gate token goes back to the gate.
pub(crate) static RECLAIM: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local ms = tonumber(ARGV[1])
local grave = tonumber(ARGV[2])
local force = tonumber(ARGV[4])
local now = now_ms()
local meta = ''
if ARGV[6] == '1' then meta = KEYS[5] end
local moved = 0
for i = 1, #ARGV - 7 do
  local h = ARGV[7 + i]
  local held = KEYS[5 + i]
  local e = redis.call('ZSCORE', KEYS[1], h)
  if e then
    if i <= force or tonumber(e) <= now then
      moved = moved + drain(held, KEYS[3], KEYS[4], meta, ARGV[3], ARGV[7])
      redis.call('ZREM', KEYS[1], h)
      redis.call('ZADD', KEYS[2], now + grave, h)
    end
  else
    local g = redis.call('ZSCORE', KEYS[2], h)
    if g then
      moved = moved + drain(held, KEYS[3], KEYS[4], meta, ARGV[3], ARGV[7])
      if tonumber(g) <= now then redis.call('ZREM', KEYS[2], h) end
    end
  end
end
if ms > 0 and moved > 0 then keep(KEYS[3], ms) end
keep(KEYS[2], tonumber(ARGV[5]))
return moved
"#,
    )
});

/// Create the permit pool, or validate it. Never re-creates a full pool while permits are
/// held: the permits recorded in holders' lists are subtracted.
/// With `strict` (`KeyLayout::Redsync2`, whose peers record no holders), a pool left
/// without its metadata is not touched.
/// On creation it also creates the gate of requests for several permits (`G` in the gate
/// list), and for a mutex (`fenced`) its fence counter, the pool's token being the first
/// fence; a pool created by an earlier version gets its gate on the next call.
/// KEYS: meta, pool, leases, gate, held_1..held_n (the lease holders seen by the caller).
/// ARGV: count, token, ttl_ms, strict (1/0), fenced (1/0), holder_1..holder_n.
/// Returns the count in Redis, -1 when the holders changed meanwhile (call again), or -2
/// when `strict` and the pool exists without metadata.
pub(crate) static INIT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local ms = tonumber(ARGV[3])
local c = redis.call('HGET', KEYS[1], 'count')
if c then
  if redis.call('HSETNX', KEYS[1], 'gate', 1) == 1 then redis.call('RPUSH', KEYS[4], 'G') end
  keep(KEYS[1], ms)
  keep(KEYS[2], ms)
  keep(KEYS[4], ms)
  return tonumber(c)
end
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then return -2 end
local members = #ARGV - 5
if redis.call('ZCARD', KEYS[3]) ~= members then return -1 end
local held = 0
for i = 1, members do
  if not redis.call('ZSCORE', KEYS[3], ARGV[5 + i]) then return -1 end
  local n = redis.call('LLEN', KEYS[4 + i])
  -- The gate token is not a permit.
  n = n - #redis.call('LPOS', KEYS[4 + i], 'G', 'COUNT', 0)
  held = held + n
end
local count = tonumber(ARGV[1])
local want = math.max(count - held, 0)
local free = redis.call('LLEN', KEYS[2])
-- A mutex (re-)created: its fence starts above every token still held or free (its
-- metadata may have been lost under live holders), so that tokens never go back.
local top = 0
if ARGV[5] == '1' then
  for _, t in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do top = math.max(top, tonumber(t) or 0) end
  for i = 1, members do
    for _, t in ipairs(redis.call('LRANGE', KEYS[4 + i], 0, -1)) do
      top = math.max(top, tonumber(t) or 0)
    end
  end
end
if free < want then
  local t = {}
  for i = 1, want - free do
    if ARGV[5] == '1' then
      top = top + 1
      t[i] = tostring(top)
    else
      t[i] = ARGV[2]
    end
  end
  redis.call('RPUSH', KEYS[2], unpack(t))
elseif free > want then
  if want == 0 then redis.call('DEL', KEYS[2]) else redis.call('LTRIM', KEYS[2], 0, want - 1) end
end
redis.call('HSET', KEYS[1], 'count', count)
if ARGV[5] == '1' then redis.call('HSET', KEYS[1], 'fenced', 1, 'fence', math.max(top, 1)) end
redis.call('HDEL', KEYS[1], 'debt')
-- A gate held by a live holder stays with it; otherwise there is one in the gate list.
local gate_held = false
for i = 1, members do
  if redis.call('LPOS', KEYS[4 + i], 'G') then gate_held = true end
end
redis.call('DEL', KEYS[4])
if not gate_held then redis.call('RPUSH', KEYS[4], 'G') end
redis.call('HSET', KEYS[1], 'gate', 1)
keep(KEYS[1], ms)
keep(KEYS[2], ms)
keep(KEYS[3], ms)
keep(KEYS[4], ms)
return count
"#,
    )
});

/// Fast path of a request for `n` permits: all of them, or none, and only while no other
/// request for several holds the gate. With `fence` (a write lock), the grant also takes
/// the next write fence.
/// KEYS: pool, held, leases, gate, meta. ARGV: holder, held list TTL ms (0: none), n,
/// fence (1/0).
/// Returns {n, fence or 0} taken, 0 not now, -1 lease gone or expired.
pub(crate) static TAKE_MANY: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local e = redis.call('ZSCORE', KEYS[3], ARGV[1])
if not e or tonumber(e) <= now_ms() then return -1 end
if gate_taken(KEYS[4], KEYS[5]) then return 0 end
local n = tonumber(ARGV[3])
if redis.call('LLEN', KEYS[1]) < n then return 0 end
for _ = 1, n do redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT') end
local ms = tonumber(ARGV[2])
if ms > 0 then keep(KEYS[2], ms) end
local fence = 0
if ARGV[4] == '1' then fence = redis.call('HINCRBY', KEYS[5], 'wfence', 1) end
return {n, fence}
"#,
    )
});

/// Takes the gate into the holder's list if it is free now, and up to `want` free permits
/// with it (a request for several permits that holds the gate may take them one by one:
/// nobody else takes the fast path meanwhile). A pool of an earlier version gets its gate
/// first.
/// KEYS: pool, held, leases, gate, meta. ARGV: holder, held list TTL ms (0: none),
/// take_gate (1/0), want.
/// Returns {gate taken (1/0), permits taken}, or -1 when the lease is gone or expired.
pub(crate) static TAKE_SOME: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local e = redis.call('ZSCORE', KEYS[3], ARGV[1])
if not e or tonumber(e) <= now_ms() then return -1 end
if redis.call('HEXISTS', KEYS[5], 'count') == 1 and redis.call('HSETNX', KEYS[5], 'gate', 1) == 1 then
  redis.call('RPUSH', KEYS[4], 'G')
end
local gate = 0
if ARGV[3] == '1' then
  if not redis.call('LMOVE', KEYS[4], KEYS[2], 'LEFT', 'RIGHT') then return {0, 0} end
  gate = 1
end
local n = 0
for _ = 1, tonumber(ARGV[4]) do
  if not redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT') then break end
  n = n + 1
end
local ms = tonumber(ARGV[2])
if ms > 0 then keep(KEYS[2], ms) end
return {gate, n}
"#,
    )
});

/// Gives the gate back from the holder's list, the request it was taken for being
/// complete; with `fence` (a write lock: the holder now has every permit) also takes the
/// next write fence. KEYS: held, gate, meta. ARGV: gate TTL ms (0: none), fence (1/0).
/// Returns the fence (or 1 without `fence`), or 0 when the gate was not there (the holder
/// was reclaimed).
pub(crate) static GIVE_GATE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if redis.call('LREM', KEYS[1], 1, 'G') == 0 then return 0 end
redis.call('RPUSH', KEYS[2], 'G')
keep(KEYS[2], tonumber(ARGV[1]))
if ARGV[2] == '1' then return redis.call('HINCRBY', KEYS[3], 'wfence', 1) end
return 1
"#,
    )
});

/// Changes the permit count. Raising it cancels pending destruction first, then adds free
/// permits; lowering it removes free permits, and what it cannot remove (permits held now)
/// is destroyed as they come back (`debt`): a held permit is never revoked.
/// KEYS: meta, pool. ARGV: 'set' or 'add', n (may be negative for 'add'), token, ttl ms.
/// Returns the new count, -1 out of 1..=4096, -2 no such semaphore.
pub(crate) static RESIZE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local c = redis.call('HGET', KEYS[1], 'count')
if not c then return -2 end
c = tonumber(c)
local target = tonumber(ARGV[2])
if ARGV[1] == 'add' then target = c + target end
if target < 1 or target > 4096 then return -1 end
local debt = tonumber(redis.call('HGET', KEYS[1], 'debt') or '0')
if target > c then
  local k = target - c
  local cancel = math.min(k, debt)
  debt = debt - cancel
  k = k - cancel
  if k > 0 then
    local t = {}
    for i = 1, k do t[i] = ARGV[3] end
    redis.call('RPUSH', KEYS[2], unpack(t))
  end
elseif target < c then
  local k = c - target
  while k > 0 and redis.call('LPOP', KEYS[2]) do k = k - 1 end
  debt = debt + k
end
redis.call('HSET', KEYS[1], 'count', target, 'debt', debt)
local ms = tonumber(ARGV[4])
keep(KEYS[1], ms)
keep(KEYS[2], ms)
return target
"#,
    )
});

/// Moves one token from a holder's list to a holder of its own whose lease is not renewed
/// (a permit with a hard lease) and starts that lease.
/// KEYS: leases, held, hard held. ARGV: holder, hard holder, hard lease ms, held list TTL
/// ms (0: none). Returns the token, 0 when the list was empty, -1 lease gone or expired.
pub(crate) static HARDEN: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local now = now_ms()
local e = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not e or tonumber(e) <= now then return -1 end
-- A permit, never the gate token a request of the same handle may be collecting under.
local t = redis.call('RPOP', KEYS[2])
if t == 'G' then
  redis.call('LPUSH', KEYS[2], t)
  t = redis.call('RPOP', KEYS[2])
  if t == 'G' then
    redis.call('RPUSH', KEYS[2], t)
    t = nil
  end
end
if not t then return 0 end
redis.call('RPUSH', KEYS[3], t)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
local ms = tonumber(ARGV[4])
if ms > 0 then keep(KEYS[3], ms + tonumber(ARGV[3])) end
return t
"#,
    )
});

/// Extends a hard lease to at least `ms` from now, never shortening it.
/// KEYS: leases, held. ARGV: holder, lease ms, held list TTL extra ms (0: none).
/// Returns 1, or 0 when the lease is gone or expired.
pub(crate) static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local now = now_ms()
local e = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not e or tonumber(e) <= now then return 0 end
redis.call('ZADD', KEYS[1], 'XX', 'GT', now + tonumber(ARGV[2]), ARGV[1])
local extra = tonumber(ARGV[3])
if extra > 0 then keep(KEYS[2], tonumber(ARGV[2]) + extra) end
return 1
"#,
    )
});

#[cfg(test)]
mod model;

// Broadcast primitives (`Notify`, `CountDownLatch`): a gate list that blocked waiters
// rotate (`BLMOVE gate gate`), and a generation hash (`epoch`, `n`). Counts and
// generations travel as strings: Lua numbers are doubles.

/// Reads a broadcast primitive: whether it is open, and its generation.
/// KEYS: gate, gen[, count] (a latch passes its count). ARGV: tidy ('1': first remove the
/// marks a `notify_waiters` left, which have served every blocked waiter already).
/// Returns {state, epoch, n}: state is '1'/'0' (a notify is set) or the latch's count
/// ('0' when absent); epoch '' and n '0' when the generation hash is absent.
pub(crate) static GATE_READ: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if ARGV[1] == '1' then redis.call('LREM', KEYS[1], 0, 'n') end
local state
if KEYS[3] then
  state = redis.call('GET', KEYS[3]) or '0'
elseif redis.call('LPOS', KEYS[1], 'set') then
  state = '1'
else
  state = '0'
end
local g = redis.call('HMGET', KEYS[2], 'epoch', 'n')
return {state, g[1] or '', g[2] or '0'}
"#,
    )
});

/// A new generation of a notify, and its mark in the gate (pushed if absent): `set` for
/// `set()`, `n` for `notify_waiters()` (removed by a separate command right after, so
/// that Redis serves every blocked waiter in between).
/// KEYS: gate, gen. ARGV: epoch (used if the hash is new), mark.
/// Returns the new generation, as a string.
pub(crate) static GATE_SET: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
redis.call('HSETNX', KEYS[2], 'epoch', ARGV[1])
redis.call('HINCRBY', KEYS[2], 'n', 1)
if not redis.call('LPOS', KEYS[1], ARGV[2]) then redis.call('RPUSH', KEYS[1], ARGV[2]) end
return redis.call('HGET', KEYS[2], 'n')
"#,
    )
});

/// Sets a latch's count, only if it is zero or absent; closes the gate.
/// KEYS: count, gate, gen. ARGV: count (a positive integer, or '0': change nothing),
/// epoch (used if the hash is new).
/// Returns {1, count} when set, {0, current count} when the latch is still counting.
pub(crate) static LATCH_SET_COUNT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local c = redis.call('GET', KEYS[1])
if c and tonumber(c) > 0 then return {0, c} end
if ARGV[1] ~= '0' then
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('DEL', KEYS[2])
  redis.call('HSETNX', KEYS[3], 'epoch', ARGV[2])
end
return {1, ARGV[1]}
"#,
    )
});

/// Counts a latch down by one; at zero deletes the count, starts a new generation and
/// opens the gate, all at once.
/// KEYS: count, gate, gen. ARGV: epoch (used if the hash is new).
/// Returns the count left as a string, or '-1' when the latch was already zero or absent.
pub(crate) static LATCH_COUNT_DOWN: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local c = redis.call('GET', KEYS[1])
if not c or tonumber(c) <= 0 then return '-1' end
if redis.call('DECR', KEYS[1]) > 0 then return redis.call('GET', KEYS[1]) end
redis.call('DEL', KEYS[1])
redis.call('HSETNX', KEYS[3], 'epoch', ARGV[1])
redis.call('HINCRBY', KEYS[3], 'n', 1)
if not redis.call('LPOS', KEYS[2], 'set') then redis.call('RPUSH', KEYS[2], 'set') end
return '0'
"#,
    )
});
