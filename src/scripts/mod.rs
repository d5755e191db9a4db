//! The Lua scripts: every multi-step change to Redis happens in one of them, so nothing is
//! ever left half-done. Every key a script touches is passed in `KEYS`.
//!
//! Leases use the server clock (`TIME`), never a client's.

use std::sync::LazyLock;

use redis::Script;

/// Helpers shared by every script.
const PRELUDE: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- Extends a key's TTL to at least `ms`, never shortens it; leaves absent keys alone.
local function keep(key, ms)
  local t = redis.call('PTTL', key)
  if t == -1 or (t >= 0 and t < ms) then redis.call('PEXPIRE', key, ms) end
end
-- Moves every element of `from` into `to` (pushed on `side`); returns how many.
local function drain(from, to, side)
  local n = 0
  while redis.call('LMOVE', from, to, 'LEFT', side) do n = n + 1 end
  return n
end
"#;

/// Loads every script into the server's script cache, concurrently (one round trip on a
/// multiplexed connection).
pub(crate) async fn load_all(conn: &crate::connection::Conn) -> redis::RedisResult<()> {
    let scripts = [
        &*TAKE,
        &*GIVE_BACK,
        &*REGISTER,
        &*RENEW,
        &*DUE,
        &*RECLAIM,
        &*INIT,
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

/// Fast path: take one token into the holder's list if its lease is valid.
/// KEYS: pool, held, leases. ARGV: holder, held list TTL in ms (0: none).
/// Returns 1 taken, 0 pool empty, -1 lease gone or expired.
pub(crate) static TAKE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local e = redis.call('ZSCORE', KEYS[3], ARGV[1])
if not e or tonumber(e) <= now_ms() then return -1 end
if not redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT') then return 0 end
local ms = tonumber(ARGV[2])
if ms > 0 then keep(KEYS[2], ms) end
return 1
"#,
    )
});

/// Give one token back from the holder's list to the pool.
/// KEYS: pool, held. ARGV: pool ttl_ms (0: the pool keeps no TTL), side.
/// Returns 1 given back, 0 the holder's list was empty (reclaimed).
pub(crate) static GIVE_BACK: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if not redis.call('LMOVE', KEYS[2], KEYS[1], 'LEFT', ARGV[2]) then return 0 end
local ms = tonumber(ARGV[1])
if ms > 0 then keep(KEYS[1], ms) end
return 1
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
/// Key TTLs (semaphores only, `expiring` = 1): the pool, metadata and lease set live
/// `lease` past the last renewal; held lists live `lease + grave`, so that they outlive the
/// lease they are reclaimed after. Event keys never expire: like a pending signal, a taken
/// one waits for the next client, however late. The graves set always lives `lease +
/// grave` past its last change, long enough for every member's final sweep.
/// KEYS: leases, graves, pool, meta (or pool again), held_1..held_n.
/// ARGV: lease ms, expiring (1/0), grave_ms, side, holder_1..holder_n.
/// Returns {meta_ok, {status_i (1 renewed, 0 lost)}, {expired holders}, {due graves},
/// {newest graves}}: at most 64 expired holders and 64 due graves (call `DUE` for the next
/// batches), and the 16 newest graves, the likeliest to receive a late move.
pub(crate) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local ms = tonumber(ARGV[1])
local grave = tonumber(ARGV[3])
local now = now_ms()
local status = {}
for i = 1, #ARGV - 4 do
  local h = ARGV[4 + i]
  local held = KEYS[4 + i]
  local e = redis.call('ZSCORE', KEYS[1], h)
  if e and tonumber(e) > now then
    redis.call('ZADD', KEYS[1], 'XX', now + ms, h)
    if ARGV[2] == '1' then keep(held, ms + grave) end
    status[i] = 1
  else
    if e then
      drain(held, KEYS[3], ARGV[4])
      redis.call('ZREM', KEYS[1], h)
      redis.call('ZADD', KEYS[2], now + grave, h)
    end
    status[i] = 0
  end
end
local meta_ok = 1
if ARGV[2] == '1' then
  keep(KEYS[1], ms)
  keep(KEYS[3], ms)
  keep(KEYS[4], ms)
  if redis.call('HEXISTS', KEYS[4], 'count') == 0 then meta_ok = 0 end
end
keep(KEYS[2], ms + grave)
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 64)
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 64)
local newest = redis.call('ZREVRANGEBYSCORE', KEYS[2], '+inf', '(' .. now, 'LIMIT', 0, 16)
return {meta_ok, status, expired, due, newest}
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
/// KEYS: leases, graves, pool, held_1..held_n. ARGV: key TTL ms (0: none), grave_ms,
/// side, force, graves TTL ms, holder_1..holder_n. Returns how many tokens went back.
pub(crate) static RECLAIM: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local ms = tonumber(ARGV[1])
local grave = tonumber(ARGV[2])
local force = tonumber(ARGV[4])
local now = now_ms()
local moved = 0
for i = 1, #ARGV - 5 do
  local h = ARGV[5 + i]
  local held = KEYS[3 + i]
  local e = redis.call('ZSCORE', KEYS[1], h)
  if e then
    if i <= force or tonumber(e) <= now then
      moved = moved + drain(held, KEYS[3], ARGV[3])
      redis.call('ZREM', KEYS[1], h)
      redis.call('ZADD', KEYS[2], now + grave, h)
    end
  else
    local g = redis.call('ZSCORE', KEYS[2], h)
    if g then
      moved = moved + drain(held, KEYS[3], ARGV[3])
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
/// KEYS: meta, pool, leases, held_1..held_n (the lease holders seen by the caller).
/// ARGV: count, token, ttl_ms, strict (1/0), holder_1..holder_n.
/// Returns the count in Redis, -1 when the holders changed meanwhile (call again), or -2
/// when `strict` and the pool exists without metadata.
pub(crate) static INIT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local ms = tonumber(ARGV[3])
local c = redis.call('HGET', KEYS[1], 'count')
if c then
  keep(KEYS[1], ms)
  keep(KEYS[2], ms)
  return tonumber(c)
end
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then return -2 end
local members = #ARGV - 4
if redis.call('ZCARD', KEYS[3]) ~= members then return -1 end
local held = 0
for i = 1, members do
  if not redis.call('ZSCORE', KEYS[3], ARGV[4 + i]) then return -1 end
  held = held + redis.call('LLEN', KEYS[3 + i])
end
local count = tonumber(ARGV[1])
local want = math.max(count - held, 0)
local free = redis.call('LLEN', KEYS[2])
if free < want then
  local t = {}
  for i = 1, want - free do t[i] = ARGV[2] end
  redis.call('RPUSH', KEYS[2], unpack(t))
elseif free > want then
  if want == 0 then redis.call('DEL', KEYS[2]) else redis.call('LTRIM', KEYS[2], 0, want - 1) end
end
redis.call('HSET', KEYS[1], 'count', count)
keep(KEYS[1], ms)
keep(KEYS[2], ms)
keep(KEYS[3], ms)
return count
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
