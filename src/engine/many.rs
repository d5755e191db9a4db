//! Requests for several permits at once: all or nothing, without deadlock, and without
//! being starved by a stream of single requests.
//!
//! A request first tries the fast path: all `n` permits in one script, if they are free and
//! no other request for several holds the **gate**. Otherwise it takes the gate (a token of
//! its own list, `G`, taken into the holder's list like a permit, so a crash gives it back
//! by reclaim), waiting for it on the server in arrival order, then collects its permits,
//! free ones at once and the others one by one from a blocking wait, and gives the gate
//! back once it has them all. Only the gate holder collects, so two requests never hold
//! parts of what the other needs (no deadlock). While the gate is held, single acquires no
//! longer take the fast path: they queue on the server behind the collector, so the
//! collector gets at least one permit per turn of that queue and completes after at most
//! `n` turns.

use std::sync::Arc;
use std::time::Duration;

use super::waiters::outcome_unknown;
use super::{Engine, Generation, Kind, MAX_BLOCK};
use crate::connection::not_executed;
use crate::runtime::Runtime;
use crate::scripts::{GIVE_BACK, GIVE_GATE, TAKE_MANY, TAKE_SOME};
use crate::{Error, Invalid, Result};

/// Tries of a request whose generation was lost or tainted before it completed.
const ATTEMPTS: usize = 3;

/// `n` permits held under one generation; dropped, they go back in one call.
#[derive(Debug)]
pub(crate) struct HeldMany<R: Runtime> {
    pub(crate) engine: Arc<Engine<R>>,
    pub(crate) gen: Arc<Generation>,
    pub(crate) n: usize,
    /// The write fence of a write lock's grant (0 otherwise).
    pub(crate) fence: u64,
    armed: bool,
}

impl<R: Runtime> HeldMany<R> {
    /// Gives all of them back and reports how that went; dropped, the call still
    /// completes on the runtime.
    pub(crate) async fn release(mut self) -> Result<()> {
        self.armed = false;
        let (engine, gen, n) = (self.engine.clone(), self.gen.clone(), self.n);
        let give = engine.give_back_many(gen, n, false);
        engine
            .run_detached(give)
            .await
            .unwrap_or(Err(Error::Closed))
    }
}

impl<R: Runtime> Drop for HeldMany<R> {
    fn drop(&mut self) {
        if self.armed {
            self.armed = false;
            let give = self.engine.give_back_many(self.gen.clone(), self.n, false);
            let engine = self.engine.clone();
            self.engine.rt.spawn(async move {
                if let Err(e @ Error::Redis(_)) = give.await {
                    engine.background_error("release of several permits from Drop", &e);
                }
            });
        }
    }
}

/// A call that may move tokens into `gen`'s list, reserved on it. Dropped before
/// [`InFlight::done`] (the caller's future was dropped mid-call), its outcome is unknown:
/// the generation is tainted, so that once drained it gives back whatever its list holds,
/// and a blocking connection it used is closed (which ends the wait on the server)
/// instead of going back to the pool with the wait still there.
struct InFlight<R: Runtime> {
    engine: Arc<Engine<R>>,
    gen: Arc<Generation>,
    lent: Option<crate::context::Lent>,
    done: bool,
}

impl<R: Runtime> InFlight<R> {
    /// Reserves a call on `gen`; `None` when it takes no more grants (lost or tainted).
    fn start(engine: &Arc<Engine<R>>, gen: &Arc<Generation>) -> Option<Self> {
        gen.try_reserve().then(|| InFlight {
            engine: engine.clone(),
            gen: gen.clone(),
            lent: None,
            done: false,
        })
    }

    /// The call returned (whatever it returned): ends the reservation.
    fn done(mut self) -> Option<crate::context::Lent> {
        self.done = true;
        self.gen.end_call();
        self.lent.take()
    }
}

impl<R: Runtime> Drop for InFlight<R> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Some(lent) = self.lent.take() {
            lent.discard();
        }
        self.gen.end_call();
        self.engine.taint(&self.gen);
    }
}

/// What a request being collected holds so far: given back if it does not complete (an
/// error, a timeout, a dropped future).
struct Collecting<R: Runtime> {
    engine: Arc<Engine<R>>,
    gen: Arc<Generation>,
    permits: usize,
    gate: bool,
}

impl<R: Runtime> Drop for Collecting<R> {
    fn drop(&mut self) {
        if self.permits == 0 && !self.gate {
            // A tainted generation with nothing out is retired now.
            self.engine.maybe_retire(&self.gen);
            return;
        }
        let give = self
            .engine
            .give_back_many(self.gen.clone(), self.permits, self.gate);
        let engine = self.engine.clone();
        self.engine.rt.spawn(async move {
            if let Err(e @ Error::Redis(_)) = give.await {
                engine.background_error("give-back of an incomplete request", &e);
            }
        });
    }
}

impl<R: Runtime> Engine<R> {
    /// Checks `n` against the count.
    pub(crate) fn check_many(&self, n: u32) -> Result<()> {
        let count = self.count.load(std::sync::atomic::Ordering::Acquire);
        if n == 0 || n > count {
            return Err(Error::InvalidArgument(Invalid::PermitsOutOfRange {
                n,
                count,
            }));
        }
        Ok(())
    }

    /// `n` permits if they are free now and no request for several is being collected;
    /// with `fence`, the grant takes the next write fence.
    pub(crate) async fn try_take_many(
        self: &Arc<Self>,
        n: u32,
        fence: bool,
    ) -> Result<Option<HeldMany<R>>> {
        self.check_many(n)?;
        self.flush_outbox().await;
        for _ in 0..ATTEMPTS {
            let gen = self.reserve_gen().await?;
            let keys = &self.cfg.keys;
            let mut inv = TAKE_MANY.prepare_invoke();
            inv.key(&keys.pool)
                .key(&gen.held_key)
                .key(&keys.leases)
                .key(&keys.gate)
                .key(keys.meta_or_pool())
                .arg(&gen.id)
                .arg(self.held_ttl_ms())
                .arg(n)
                .arg(u8::from(fence));
            let mut conn = self.conn.clone();
            // `reserve_gen` reserved the call; the guard ends it, or taints if dropped.
            let call = InFlight {
                engine: self.clone(),
                gen: gen.clone(),
                lent: None,
                done: false,
            };
            let reply: redis::RedisResult<redis::Value> = inv.invoke_async(&mut conn).await;
            let reply = reply.and_then(|v| match v {
                redis::Value::Int(code) => Ok((code, 0)),
                v => redis::from_redis_value::<(i64, u64)>(v).map_err(redis::RedisError::from),
            });
            let out = match reply {
                Ok((-1, _)) => {
                    self.lose(&gen);
                    call.done();
                    continue;
                }
                Ok((0, _)) => {
                    call.done();
                    self.maybe_retire(&gen);
                    Ok(None)
                }
                Ok((got, fence)) => {
                    let mut held = self.hold_many(&gen, got as usize);
                    held.fence = fence;
                    call.done();
                    if self.lose_if_expired(&gen) {
                        drop(held);
                        continue;
                    }
                    Ok(Some(held))
                }
                Err(e) => {
                    if outcome_unknown(&e) {
                        gen.mark_dirty();
                    }
                    call.done();
                    self.maybe_retire(&gen);
                    if outcome_unknown(&e) {
                        continue;
                    }
                    Err(e.into())
                }
            };
            return out;
        }
        Err(Error::LeaseLost)
    }

    /// `n` permits, waiting as long as it takes (see the module's documentation); with
    /// `fence`, the grant takes the next write fence.
    pub(crate) async fn take_many(self: &Arc<Self>, n: u32, fence: bool) -> Result<HeldMany<R>> {
        if let Some(held) = self.try_take_many(n, fence).await? {
            return Ok(held);
        }
        let mut last = Error::LeaseLost;
        for _ in 0..ATTEMPTS {
            // Boxed: the collecting state machine is large, and callers' futures (spawned
            // tasks) should not carry its whole type.
            match Box::pin(self.collect(n as usize, fence)).await {
                Ok(held) => return Ok(held),
                Err(e @ (Error::LeaseLost | Error::Redis(_))) => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// Takes the gate, then collects `n` permits under one generation.
    async fn collect(self: &Arc<Self>, n: usize, fence: bool) -> Result<HeldMany<R>> {
        let gen = self.current_gen().await?;
        let mut got = Collecting {
            engine: self.clone(),
            gen: gen.clone(),
            permits: 0,
            gate: false,
        };
        let block = MAX_BLOCK
            .min(self.cfg.lease / 4)
            .max(Duration::from_millis(100));
        let mut conn = None;
        while !got.gate || got.permits < n {
            if self.is_closed() {
                return Err(Error::Closed);
            }
            let count = self.count.load(std::sync::atomic::Ordering::Acquire) as usize;
            if n > count {
                // The count was lowered below this request: it can never complete.
                return Err(Error::InvalidArgument(Invalid::PermitsOutOfRange {
                    n: n as u32,
                    count: count as u32,
                }));
            }
            // Whatever is free now, in one script.
            let Some(call) = InFlight::start(self, &gen) else {
                return Err(Error::LeaseLost);
            };
            let keys = &self.cfg.keys;
            let mut inv = TAKE_SOME.prepare_invoke();
            inv.key(&keys.pool)
                .key(&gen.held_key)
                .key(&keys.leases)
                .key(&keys.gate)
                .key(keys.meta_or_pool())
                .arg(&gen.id)
                .arg(self.held_ttl_ms())
                .arg(u8::from(!got.gate))
                .arg(if got.gate { n - got.permits } else { 0 });
            let mut shared = self.conn.clone();
            let reply: redis::RedisResult<redis::Value> = inv.invoke_async(&mut shared).await;
            match reply {
                Ok(redis::Value::Int(-1)) => {
                    call.done();
                    self.lose(&gen);
                    return Err(Error::LeaseLost);
                }
                Ok(v) => {
                    let parsed: redis::RedisResult<(u8, usize)> =
                        redis::from_redis_value(v).map_err(redis::RedisError::from);
                    let Ok((gate, permits)) = parsed else {
                        // Unreadable: unknown what moved (the guard taints).
                        drop(call);
                        return Err(Error::LeaseLost);
                    };
                    for _ in 0..usize::from(gate) + permits {
                        gen.add_outstanding();
                    }
                    got.gate |= gate == 1;
                    got.permits += permits;
                    call.done();
                }
                Err(e) => {
                    call.done();
                    if outcome_unknown(&e) {
                        // Whatever it moved is given back when the generation is retired.
                        self.taint(&gen);
                    }
                    return Err(e.into());
                }
            }
            if self.lose_if_expired(&gen) {
                return Err(Error::LeaseLost);
            }
            if got.gate && got.permits >= n {
                break;
            }
            // Then one from a blocking wait: the gate, or a permit. While other waits queue
            // for a pooled connection, this one gives its connection back between waits and
            // blocks only for a slice (the pump's rotation, see `context::pool`).
            if self.ctx.pool.contended() {
                drop(conn.take());
            }
            if conn.is_none() {
                conn = Some(
                    self.ctx
                        .pool
                        .checkout(&self.conn, &self.cfg.keys.pool, block)
                        .await?,
                );
            }
            let from = if got.gate {
                &self.cfg.keys.pool
            } else {
                &self.cfg.keys.gate
            };
            let Some(mut call) = InFlight::start(self, &gen) else {
                return Err(Error::LeaseLost);
            };
            // The connection travels with the call: dropped mid-wait, it is closed.
            call.lent = conn.take();
            let wait = match call.lent.as_ref() {
                Some(lent) => lent.begin_wait(block, super::waiters::SLICE, false).0,
                None => block,
            };
            let Some(bc) = call.lent.as_mut().and_then(|l| l.conn()) else {
                call.done();
                continue;
            };
            let reply: redis::RedisResult<Option<String>> = redis::cmd("BLMOVE")
                .arg(from)
                .arg(&gen.held_key)
                .arg("LEFT")
                .arg("RIGHT")
                .arg(wait.as_secs_f64())
                .query_async(&mut bc.conn)
                .await;
            if let Some(lent) = call.lent.as_ref() {
                lent.end_wait();
            }
            match reply {
                Ok(Some(token)) => {
                    gen.add_outstanding();
                    if token == super::GATE_TOKEN {
                        got.gate = true;
                    } else {
                        got.permits += 1;
                    }
                    conn = call.done();
                }
                Ok(None) => {
                    conn = call.done();
                    self.kick_reclaim();
                }
                Err(e) => {
                    if let Some(lent) = call.done() {
                        lent.discard();
                    }
                    if not_executed(&e) && e.code() != Some("UNBLOCKED") {
                        self.conn.note_blocking_error(&e);
                        self.rt.sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    // Unknown whether a token moved: the generation gives back whatever
                    // its list holds once drained.
                    self.taint(&gen);
                    return Err(e.into());
                }
            }
            if self.lose_if_expired(&gen) {
                return Err(Error::LeaseLost);
            }
        }
        // All here: the gate goes back, the permits stay. The permits are in an armed
        // guard from now on, moved into a call that runs on the runtime: if the caller is
        // dropped meanwhile, the guard is dropped with the undelivered result and gives
        // them back.
        let permits = std::mem::take(&mut got.permits);
        got.gate = false;
        drop(got);
        drop(conn);
        let held = HeldMany {
            engine: self.clone(),
            gen: gen.clone(),
            n: permits,
            fence: 0,
            armed: true,
        };
        let engine = self.clone();
        let finish = async move {
            match engine.clone().give_gate(gen.clone(), fence).await {
                Ok(Some(f)) => {
                    let mut held = held;
                    held.fence = f;
                    Ok(held)
                }
                Ok(None) => {
                    engine.lose(&gen);
                    drop(held);
                    Err(Error::LeaseLost)
                }
                Err(e) => Err(e),
            }
        };
        self.run_detached(finish)
            .await
            .unwrap_or(Err(Error::Closed))
    }

    /// Gives the gate back from `gen`'s list: `Some(write fence, or 1)`, or `None` when it
    /// was not there (reclaimed).
    async fn give_gate(self: Arc<Self>, gen: Arc<Generation>, fence: bool) -> Result<Option<u64>> {
        let gen = &gen;
        gen.begin_call();
        let mut conn = self.conn.clone();
        let reply: redis::RedisResult<i64> = GIVE_GATE
            .key(&gen.held_key)
            .key(&self.cfg.keys.gate)
            .key(self.cfg.keys.meta_or_pool())
            .arg(self.key_ttl_ms())
            .arg(u8::from(fence))
            .invoke_async(&mut conn)
            .await;
        gen.end_call();
        let out = match reply {
            Ok(f) if f > 0 => {
                gen.sub_outstanding();
                Ok(Some(f as u64))
            }
            Ok(_) => {
                gen.sub_outstanding();
                Ok(None)
            }
            Err(e) => {
                // The gate stays in the list of a generation that is retired once
                // drained, which puts it back.
                gen.mark_dirty();
                gen.sub_outstanding();
                Err(e.into())
            }
        };
        self.maybe_retire(gen);
        out
    }

    /// Runs `fut` on the runtime: dropping the returned future does not cancel it (a call
    /// that must reach its end to keep the generation's books right). `None` if the
    /// runtime dropped it unfinished.
    pub(super) fn run_detached<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = T> + Send + 'static,
    ) -> impl std::future::Future<Output = Option<T>> {
        let (tx, rx) = futures::channel::oneshot::channel();
        self.rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        async move { rx.await.ok() }
    }

    fn hold_many(self: &Arc<Self>, gen: &Arc<Generation>, n: usize) -> HeldMany<R> {
        for _ in 0..n {
            gen.add_outstanding();
        }
        HeldMany {
            engine: self.clone(),
            gen: gen.clone(),
            n,
            fence: 0,
            armed: true,
        }
    }

    /// Gives back `n` permits (and the gate, with `gate`) from `gen`'s list, in one call
    /// set up before the returned future is first polled.
    pub(crate) fn give_back_many(
        self: &Arc<Self>,
        gen: Arc<Generation>,
        n: usize,
        gate: bool,
    ) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
        let keys = &self.cfg.keys;
        let mut inv = GIVE_BACK.prepare_invoke();
        inv.key(&keys.pool)
            .key(&gen.held_key)
            .key(&keys.gate)
            .key(keys.meta_or_pool())
            .key(&keys.leases)
            .key(&keys.graves)
            .arg(self.key_ttl_ms())
            .arg(self.give_back_side())
            .arg(keys.has_meta())
            .arg(n)
            .arg(u8::from(gate))
            .arg(u8::from(self.is_fenced()))
            .arg(&gen.id);
        let mut conn = self.conn.clone();
        gen.begin_call();
        let engine = self.clone();
        debug_assert!(engine.cfg.kind != Kind::Event);
        async move {
            let reply: redis::RedisResult<i64> = inv.invoke_async(&mut conn).await;
            gen.end_call();
            let out = match reply {
                Ok(given) if given as usize >= n && !gen.is_lost() => Ok(()),
                // Nothing asked (only the gate of an incomplete request).
                Ok(_) if n == 0 => Ok(()),
                Ok(_) => {
                    engine.lose(&gen);
                    Err(Error::LeaseLost)
                }
                Err(e) => {
                    gen.mark_dirty();
                    if outcome_unknown(&e) {
                        Ok(())
                    } else {
                        Err(e.into())
                    }
                }
            };
            for _ in 0..n + usize::from(gate) {
                gen.sub_outstanding();
            }
            engine.maybe_retire(&gen);
            out
        }
    }
}
