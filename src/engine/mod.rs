//! The engine shared by every primitive: a pool of identical tokens in a Redis list that
//! holders take into lists of their own, under leases on the server clock.
//!
//! A semaphore is a pool of `count` permits; an event is a pool of pending signals that a
//! waiter takes and then consumes. Everything about Redis (keys, scripts, leases, blocking
//! waits, reclaim) lives here once and is shared by both.

mod detached;
mod generation;
mod hard;
mod held;
mod lease;
#[cfg(all(test, redis_sync_loom))]
mod loom_tests;
mod many;
mod queue;
mod transfer;
mod waiters;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::channel::oneshot;

use crate::connection::Conn;
use crate::context::{Context, Lent, RenewalClock, Siblings};
use crate::keys::Keys;
use crate::runtime::Runtime;
use crate::stats::{Counters, OpenConnection, Stats};
use crate::trace::trace_event;
use crate::{Error, Result};

pub(crate) use detached::Detachable;
pub(crate) use generation::{Generation, LostSignal};
pub(crate) use hard::check_lease;
pub(crate) use held::Held;
pub(crate) use lease::renew_once;
pub(crate) use many::HeldMany;
pub(crate) use transfer::{Landing, TransferBatch};

/// The token stored for each permit or signal. redsync 2.0 uses `42` for permits and `1`
/// for signals; keeping them lets Python and Rust processes share a primitive.
pub(crate) const PERMIT_TOKEN: &str = "42";
pub(crate) const SIGNAL_TOKEN: &str = "1";
/// The token of the gate that requests for several permits take in turn.
pub(crate) const GATE_TOKEN: &str = "G";
/// A mutex's first fencing token.
const FIRST_FENCE: &str = "1";

/// How long a reclaimed holder's list is still swept for a blocking move that was already
/// on the server when it was reclaimed. Must exceed the longest blocking wait.
const GRAVE: Duration = Duration::from_secs(60);
/// The longest single blocking wait on the server; waits longer than this are re-issued,
/// which also lets a waiting client notice expired holders.
const MAX_BLOCK: Duration = Duration::from_secs(2);
/// Attempts to retire a generation before leaving it to lease expiry.
const RETIRE_ATTEMPTS: usize = 5;
/// The shortest and longest lease a builder accepts.
pub(crate) const MIN_LEASE: Duration = Duration::from_millis(100);
pub(crate) const MAX_LEASE: Duration = Duration::from_secs(30 * 24 * 3600);
/// The longest response timeout a builder accepts.
pub(crate) const MAX_RESPONSE_TIMEOUT: Duration = Duration::from_secs(3600);

/// What the pool holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Permits: given back to the tail of the pool, the pool keeps a TTL.
    Semaphore,
    /// Signals: given back to the head (the next waiter gets it), no TTL on the pool.
    Event,
    /// One fenced token: its value grows by one each time it is given back, so that every
    /// grant carries a number greater than all before. Its keys never expire (the fence
    /// must survive idle periods), and it is never handed over locally.
    Mutex,
    /// A read-write lock: a pool of `max_readers` permits, a writer takes them all (through
    /// the gate). Its keys never expire (the write fence must survive idle periods), and
    /// permits are never handed over locally (writers wait behind the gate, not behind a
    /// chain of local readers).
    RwLock,
}

/// Tuning that a builder passes down.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub kind: Kind,
    pub keys: Keys,
    pub lease: Duration,
    pub max_blocking: usize,
    pub handoff_limit: u32,
    pub response_timeout: Duration,
    pub init: crate::InitStrategy,
    /// Refuse a server whose eviction policy can delete this primitive's keys.
    pub check_eviction: bool,
}

/// Resolves once a pump has dealt with the reply of a blocking wait.
pub(crate) type Settled = futures::future::Shared<oneshot::Receiver<()>>;

/// A pump blocked in Redis.
#[derive(Debug)]
pub(crate) struct Blocked {
    ticket: u64,
    /// Fired (or dropped) to cut the wait short.
    switch: oneshot::Sender<()>,
    settled: Settled,
}

/// A pooled blocking connection lent to one of this handle's pumps, counted in
/// [`Stats::blocking_connections`](crate::Stats) while it is.
#[derive(Debug)]
pub(crate) struct Borrowed {
    pub lent: Lent,
    _counted: OpenConnection,
}

#[derive(Debug)]
struct State<R: Runtime> {
    /// The generation new grants go to.
    current: Option<Arc<Generation>>,
    /// Every generation whose lease this handle still renews.
    gens: Vec<Arc<Generation>>,
    /// Local waiters, longest first.
    waiters: queue::WaiterQueue<Result<Held<R>>>,
    /// Running waiter pumps.
    pumps: usize,
    /// Pumps blocked in Redis right now, each with the switch that cuts its wait short.
    blocked: Vec<Blocked>,
    /// Waits cut short whose outcome (a token given back, or none) has not landed yet.
    settling: Vec<Settled>,
    /// Permits dropped whose give-back has not been sent yet, by generation.
    outbox: Vec<Arc<Generation>>,
    /// Flushes of the outbox under way (by number), each resolved once its give-backs
    /// are answered; a flush leaves the list when it ends.
    flushing: Vec<(u64, Settled)>,
    /// One entry per detached permit (`Permit::forget`), newest last, with the move of
    /// its token Redis has not answered yet, if any.
    detached: Vec<(Arc<Generation>, Option<Arc<Landing>>)>,
    /// Told when the last pump has stopped (see [`Engine::shutdown`]).
    pumps_stopped: Vec<oneshot::Sender<()>>,
    /// Moves of permits from this handle to siblings that may not have landed yet: its
    /// lists hold their tokens until they do (see `engine::transfer`).
    moving: Vec<Arc<Landing>>,
}

/// One handle's view of one primitive in Redis.
pub(crate) struct Engine<R: Runtime> {
    pub rt: R,
    /// The context's shared connection: everything but blocking waits.
    pub conn: Conn,
    /// What this handle shares with the other primitives of its context.
    pub(crate) ctx: Arc<Context<R>>,
    /// The other handles of this semaphore on the same context, which permits released
    /// here may go to (see [`Siblings`]); none for the other primitives.
    siblings: Option<Arc<Siblings<R>>>,
    /// When the context's watchdog renews this handle's leases next.
    renewal: Mutex<RenewalClock>,
    pub cfg: Config,
    /// The permit count once known (0 until then); events leave it 0.
    pub count: AtomicU32,
    /// A lowered count still has permits to destroy as they come back: released permits
    /// then go through Redis (where they are destroyed), not to a local waiter.
    pub(crate) reduction_pending: AtomicBool,
    holder_base: String,
    next_gen: AtomicU64,
    /// What it did, for [`Stats`].
    pub(crate) counters: Counters,
    /// Itself, for background tasks that must not keep it alive.
    me: std::sync::Weak<Engine<R>>,
    /// Numbers the blocking waits, to find a pump's switch again.
    next_block: AtomicU64,
    closed: AtomicBool,
    /// Set once Redis refused `CLIENT UNBLOCK` (ACL, managed service): blocking waits are
    /// then cut short by dropping their connection.
    pub(crate) unblock_refused: AtomicBool,
    /// Milliseconds since `started` of the last reclaim pass a waiter asked for.
    last_kick: AtomicU64,
    /// Milliseconds since `started` until which the fast path is skipped (0: never).
    pub(crate) empty_until: AtomicU64,
    pub(crate) started: Instant,
    register_lock: futures::lock::Mutex<()>,
    state: Mutex<State<R>>,
}

impl<R: Runtime> std::fmt::Debug for Engine<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("pool", &self.cfg.keys.pool)
            .field("holder", &self.holder_base)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<R: Runtime> Engine<R> {
    /// Starts a handle on `ctx`, whose watchdog renews its leases from now on.
    pub(crate) async fn start(ctx: Arc<Context<R>>, cfg: Config) -> Result<Arc<Self>> {
        if ctx.is_closed() {
            return Err(Error::Closed);
        }
        if ctx.conn.is_cluster() && cfg.keys.layout == crate::KeyLayout::Redsync2 {
            return Err(Error::InvalidArgument(crate::Invalid::LayoutNeedsOneNode));
        }
        if cfg.check_eviction {
            ctx.check_eviction(&cfg.keys.pool).await?;
        }
        // A fence grows only through the pool, and a writer is not overtaken by readers
        // handing permits around: only semaphores with local handoff hand over to siblings.
        let siblings = (cfg.kind == Kind::Semaphore && cfg.handoff_limit > 0)
            .then(|| ctx.siblings(&cfg.keys.pool));
        let engine = Arc::new_cyclic(|me| Engine {
            me: me.clone(),
            siblings,
            rt: ctx.rt.clone(),
            conn: ctx.conn.clone(),
            renewal: Mutex::new(RenewalClock::new(cfg.lease / 3)),
            ctx: ctx.clone(),
            cfg,
            count: AtomicU32::new(0),
            reduction_pending: AtomicBool::new(false),
            holder_base: format!("{:016x}", fastrand::u64(..)),
            next_gen: AtomicU64::new(0),
            next_block: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            counters: Counters::default(),
            unblock_refused: AtomicBool::new(false),
            last_kick: AtomicU64::new(0),
            empty_until: AtomicU64::new(0),
            started: Instant::now(),
            register_lock: futures::lock::Mutex::new(()),
            state: Mutex::new(State {
                current: None,
                gens: Vec::new(),
                waiters: queue::WaiterQueue::default(),
                pumps: 0,
                blocked: Vec::new(),
                settling: Vec::new(),
                detached: Vec::new(),
                outbox: Vec::new(),
                flushing: Vec::new(),
                pumps_stopped: Vec::new(),
                moving: Vec::new(),
            }),
        });
        ctx.register(&engine);
        Ok(engine)
    }

    /// The watchdog's schedule for this handle.
    pub(crate) fn renewal_clock(&self) -> MutexGuard<'_, RenewalClock> {
        self.renewal.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn state(&self) -> MutexGuard<'_, State<R>> {
        // A panic while holding this lock cannot leave the state inconsistent (every
        // critical section is a few field updates), so recover from poisoning.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Whether local wait number `seq` is still queued.
    pub(crate) fn is_waiting(&self, seq: u64) -> bool {
        self.state().waiters.contains(seq)
    }

    pub(crate) fn keep_pool_ttl(&self) -> bool {
        self.cfg.kind == Kind::Semaphore
    }

    /// Whether tokens carry fencing numbers (a mutex).
    pub(crate) fn is_fenced(&self) -> bool {
        self.cfg.kind == Kind::Mutex
    }

    /// The token a new pool is filled with.
    pub(crate) fn first_token(&self) -> &'static str {
        if self.is_fenced() {
            FIRST_FENCE
        } else {
            PERMIT_TOKEN
        }
    }

    /// The lease, in ms.
    pub(crate) fn ttl_ms(&self) -> u64 {
        self.cfg.lease.as_millis() as u64
    }

    /// TTL of the pool, metadata, lease set and gate: a semaphore's keys expire `lease +
    /// grave` after its last client is gone, the same as its held lists (see `RENEW`);
    /// the other primitives' never do (0).
    pub(crate) fn key_ttl_ms(&self) -> u64 {
        if self.keep_pool_ttl() {
            self.ttl_ms() + GRAVE.as_millis() as u64
        } else {
            0
        }
    }

    /// TTL of a held list: longer than the lease, so that the list is still there when the
    /// lease has expired and another client reclaims it (0 for events: never expires).
    pub(crate) fn held_ttl_ms(&self) -> u64 {
        if self.keep_pool_ttl() {
            self.ttl_ms() + GRAVE.as_millis() as u64
        } else {
            0
        }
    }

    /// Which end of the pool a token goes back to.
    pub(crate) fn give_back_side(&self) -> &'static str {
        match self.cfg.kind {
            Kind::Semaphore | Kind::Mutex | Kind::RwLock => "RIGHT",
            Kind::Event => "LEFT",
        }
    }

    /// The generation new grants go to, starting a new lease when there is none.
    pub(crate) async fn current_gen(self: &Arc<Self>) -> Result<Arc<Generation>> {
        if let Some(g) = self.usable_current()? {
            return Ok(g);
        }
        let _registering = self.register_lock.lock().await;
        if let Some(g) = self.usable_current()? {
            return Ok(g);
        }
        let n = self.next_gen.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{n}", self.holder_base);
        let held_key = self.cfg.keys.held(&id);
        let mut conn = self.conn.clone();
        // The lease is counted from before the request is sent: the server starts it later.
        let sent = Instant::now();
        let registered: redis::RedisResult<i64> = crate::scripts::REGISTER
            .key(&self.cfg.keys.leases)
            .arg(&id)
            .arg(self.ttl_ms())
            .arg(self.key_ttl_ms())
            .invoke_async(&mut conn)
            .await;
        if let Err(e) = registered {
            // The script may have run and only its reply been lost (connection killed):
            // such a lease would stay, renewed by nobody, until it expires. Nothing was
            // granted under `id`: give it up, late arrivals included.
            self.give_up_in_background(id, 1);
            return Err(e.into());
        }
        let deadline = self.loss_deadline(sent);
        if Instant::now() >= deadline {
            // The reply came after the lease it started may have run out: never use it.
            self.give_up_in_background(id, 1);
            return Err(Error::LeaseLost);
        }
        let gen = Arc::new(Generation::new(id, held_key, deadline));
        if n > 0 {
            trace_event!(
                warn,
                primitive = %self.cfg.keys.pool,
                holder = %gen.id,
                "new lease generation: the previous one was lost or had a request of unknown outcome"
            );
        }
        let mut st = self.state();
        if self.is_closed() {
            gen.mark_dirty();
            drop(st);
            self.maybe_retire(&gen);
            return Err(Error::Closed);
        }
        st.current = Some(gen.clone());
        st.gens.push(gen.clone());
        Ok(gen)
    }

    fn usable_current(&self) -> Result<Option<Arc<Generation>>> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        Ok(self.state().current.clone().filter(|g| g.is_usable()))
    }

    /// True when `gen` is the generation new grants go to.
    pub(crate) fn is_current(&self, gen: &Arc<Generation>) -> bool {
        self.state()
            .current
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, gen))
    }

    /// The lease of `gen` is gone: its permits are reclaimed (or about to be) by the server.
    pub(crate) fn lose(&self, gen: &Arc<Generation>) {
        if !gen.mark_lost() {
            return;
        }
        if let Some(group) = gen.group() {
            // A token this generation's list holds may be in use by a task of another.
            group.lose_all();
        }
        // So may the tokens of moves to siblings that have not landed yet.
        let moving: Vec<Arc<Landing>> = self.state().moving.clone();
        for landing in moving {
            landing.giver_lost(gen);
        }
        {
            let mut st = self.state();
            st.gens.retain(|g| !Arc::ptr_eq(g, gen));
            if st.current.as_ref().is_some_and(|c| Arc::ptr_eq(c, gen)) {
                st.current = None;
            }
        }
        // A lease lost with nothing out (a generation given up at shutdown, an idle one
        // after a pause) costs nobody anything: neither counted nor traced.
        if gen.outstanding() > 0 {
            Counters::add(&self.counters.lost_leases, 1);
            trace_event!(
                warn,
                primitive = %self.cfg.keys.pool,
                holder = %gen.id,
                permits = gen.outstanding(),
                "lease lost: its permits may be granted to others; work under them is no longer protected"
            );
        }
    }

    /// A call on `gen` ended with an unknown outcome: grant no more under it, and give back
    /// whatever is left in its list once its last local permit is gone.
    pub(crate) fn taint(&self, gen: &Arc<Generation>) {
        gen.mark_dirty();
        self.maybe_retire(gen);
    }

    /// Retires `gen` if it is dirty and drained.
    pub(crate) fn maybe_retire(&self, gen: &Arc<Generation>) {
        if let Some(group) = gen.group() {
            // Entangled: all at once, when none of them may have a permit in use.
            if group.all_drained() {
                group.retire_all();
            }
            return;
        }
        if gen.claim_retirement() {
            self.retire(gen.clone());
        }
    }

    pub(super) fn retire(&self, gen: Arc<Generation>) {
        {
            let mut st = self.state();
            st.gens.retain(|g| !Arc::ptr_eq(g, &gen));
            if st.current.as_ref().is_some_and(|c| Arc::ptr_eq(c, &gen)) {
                st.current = None;
            }
        }
        if gen.is_lost() {
            return;
        }
        self.give_up_in_background(gen.id.clone(), 0);
    }

    /// Gives up the lease of holder `id` (and whatever its list holds) in the background,
    /// retried while the connection recovers, then sweeps its list once more; `sweep_force`
    /// 1 also removes a lease that a late request re-created meanwhile.
    fn give_up_in_background(&self, id: String, sweep_force: usize) {
        let engine_rt = self.rt.clone();
        let ids = vec![id];
        let calls: Vec<_> = (0..RETIRE_ATTEMPTS)
            .map(|_| lease::reclaim_call(self, ids.clone(), 1))
            .collect();
        // A request of unknown outcome may still be on its way to the server on its
        // (dropped) connection and land in the list after the reclaim: the list, now a
        // grave, is swept once more when that can no longer happen.
        let sweep = lease::reclaim_call(self, ids, sweep_force);
        let late = self.cfg.response_timeout.min(Duration::from_secs(1));
        let weak = self.me.clone();
        self.rt.spawn(async move {
            // Retried while the connection recovers; if every attempt fails, the lease is no
            // longer renewed: it expires and any live client reclaims what is left.
            let mut delay = Duration::from_millis(50);
            for call in calls {
                match call.await {
                    Ok(_) => {
                        engine_rt.sleep(late).await;
                        if let (Err(e), Some(engine)) = (sweep.await, weak.upgrade()) {
                            engine.background_error("sweep of a retired generation", &e);
                        }
                        return;
                    }
                    Err(e) => {
                        if let Some(engine) = weak.upgrade() {
                            engine.background_error("retirement", &e);
                        }
                    }
                }
                engine_rt.sleep(delay).await;
                delay *= 2;
            }
        });
    }

    /// The instant by which a lease renewed (or started) by a request sent at `sent` has
    /// certainly expired on the server, less a margin for timers that fire late: the server
    /// extends a lease from the moment it runs the request, which is after `sent`.
    pub(crate) fn loss_deadline(&self, sent: Instant) -> Instant {
        sent + self.cfg.lease - loss_margin(self.cfg.lease)
    }

    /// Marks `gen` lost if its lease may have run out by now; true if it is lost.
    pub(crate) fn lose_if_expired(&self, gen: &Arc<Generation>) -> bool {
        if !gen.is_lost() && gen.certainly_expired(Instant::now()) {
            self.lose(gen);
        }
        gen.is_lost()
    }

    /// Marks lost every generation whose lease has certainly expired by `now`; returns the
    /// earliest loss deadline of those left.
    pub(crate) fn lose_expired(&self, now: Instant) -> Option<Instant> {
        let gens: Vec<Arc<Generation>> = self.state().gens.clone();
        let mut next: Option<Instant> = None;
        for gen in gens {
            if gen.is_lost() || gen.is_retired() {
                continue;
            }
            let by = gen.expires_by();
            if now >= by {
                self.lose(&gen);
            } else {
                next = Some(next.map_or(by, |n| n.min(by)));
            }
        }
        next
    }

    /// Stops renewing, stops the pumps, fails local waiters with [`Error::Closed`], and
    /// gives up the leases of generations that hold nothing. Permits still out keep their
    /// lease until it expires; the watchdog marks them lost at that instant.
    pub(crate) fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let (waiters, gens) = {
            let mut st = self.state();
            st.current = None;
            // Dropping the switches cuts every blocked pump's wait short.
            st.blocked.clear();
            (st.waiters.take_all(), st.gens.clone())
        };
        for w in waiters {
            let _ = w.send(Err(Error::Closed));
        }
        for gen in gens {
            // Held permits keep their lease until it expires (nobody renews it now);
            // generations with nothing outstanding are given up at once.
            gen.mark_dirty();
            self.maybe_retire(&gen);
        }
    }

    /// Closes the handle and leaves nothing of it in Redis: sends the releases of dropped
    /// permits, gives back permits kept without a guard, lets cut-short blocking waits give
    /// back what they got, then gives up every lease of this handle with whatever its lists
    /// still hold. Permits still out are marked lost.
    pub(crate) async fn shutdown(self: &Arc<Self>) -> Result<()> {
        self.close();
        // No lease registration may be in flight past this point: later ones see `closed`.
        let registering = self.register_lock.lock().await;
        drop(registering);
        let detached = std::mem::take(&mut self.state().detached);
        let give_backs = detached
            .into_iter()
            .map(|(gen, landing)| self.to_pool(gen, landing));
        let ((), _) = futures::join!(self.flush_outbox(), futures::future::join_all(give_backs));
        self.pumps_stopped().await;
        // A sibling's task uses the token of a move not landed yet: it stays in this
        // handle's list until the move lands, so the leases are given up after that.
        let moving = std::mem::take(&mut self.state().moving);
        futures::future::join_all(moving.iter().map(|l| l.wait())).await;
        let gens: Vec<Arc<Generation>> = self.state().gens.clone();
        let started = self.next_gen.load(Ordering::Relaxed);
        let out = lease::give_up_all(self, &self.holder_base, started).await;
        for gen in gens {
            self.lose(&gen);
        }
        out
    }

    /// Reclaims now the permits of every holder whose lease expired (what any live client
    /// does at each renewal); returns how many went back.
    pub(crate) async fn reclaim_expired(&self) -> Result<u64> {
        Ok(lease::reclaim_expired(self).await?.max(0) as u64)
    }

    /// Resolves once no pump runs (bounded: a pump's blocking wait has a deadline).
    async fn pumps_stopped(&self) {
        let rx = {
            let mut st = self.state();
            if st.pumps == 0 {
                return;
            }
            let (tx, rx) = oneshot::channel();
            st.pumps_stopped.push(tx);
            rx
        };
        let bound = MAX_BLOCK + self.cfg.response_timeout * 2;
        let _ = crate::runtime::timeout(&self.rt, bound, rx).await;
    }

    /// Nudges a reclaim pass (rate limited): a client about to block, or whose wait timed
    /// out, checks for crashed holders without waiting for its watchdog.
    pub(crate) fn kick_reclaim(self: &Arc<Self>) {
        if self.is_closed() {
            return;
        }
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.last_kick.load(Ordering::Relaxed);
        let min_gap = (self.cfg.lease.as_millis() as u64 / 10).clamp(50, 1000);
        if now.saturating_sub(last) < min_gap
            || self
                .last_kick
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let engine = self.clone();
        self.rt.spawn(async move {
            if let Err(e) = lease::renew_once(&engine).await {
                engine.background_error("reclaim", &e);
            }
        });
    }

    /// A failure in background work: counted in [`Stats`], traced with the `tracing`
    /// feature, never silently dropped.
    pub(crate) fn background_error(&self, what: &'static str, err: &dyn std::fmt::Display) {
        Counters::add(&self.counters.background_errors, 1);
        trace_event!(warn, primitive = %self.cfg.keys.pool, task = what, error = %err, "background error");
        let _ = (what, err);
    }

    /// A wait of this handle timed out.
    pub(crate) fn note_timeout(&self) {
        Counters::add(&self.counters.timeouts, 1);
        trace_event!(debug, primitive = %self.cfg.keys.pool, "wait timed out");
    }

    /// A token was granted to a caller of this handle.
    pub(crate) fn note_grant(&self, gen: &Generation) {
        Counters::add(&self.counters.grants, 1);
        trace_event!(debug, primitive = %self.cfg.keys.pool, holder = %gen.id, "granted");
        let _ = gen;
    }

    /// What this handle has done and holds, without a Redis call.
    pub(crate) fn stats(&self) -> Stats {
        let st = self.state();
        let held = st.gens.iter().map(|g| g.outstanding()).sum();
        self.counters.snapshot(st.waiters.len(), held)
    }

    /// Records a permit kept without a guard.
    pub(crate) fn add_detached(&self, gen: Arc<Generation>, landing: Option<Arc<Landing>>) {
        self.state().detached.push((gen, landing));
    }

    /// Takes back a permit kept without a guard, if there is one.
    pub(crate) fn take_detached(self: &Arc<Self>) -> Option<Held<R>> {
        let (gen, landing) = self.state().detached.pop()?;
        Some(Held::adopt(self.clone(), gen, landing))
    }

    /// A pooled connection for blocking waits only, to the server that owns the pool;
    /// every request on it, a wait of up to `block` included, has a deadline.
    async fn blocking_conn(&self, block: Duration) -> Result<Borrowed> {
        let lent = self
            .ctx
            .pool
            .checkout(&self.conn, &self.cfg.keys.pool, block)
            .await?;
        Ok(Borrowed {
            lent,
            _counted: OpenConnection::new(&self.counters.blocking_connections),
        })
    }
}

/// How much earlier than the lease a holder counts its permits lost: timers and the
/// wake-up of a task that awaits `lost()` may run late by a few milliseconds on a loaded
/// machine, and a permit must never be trusted after another client could be granted it.
pub(crate) fn loss_margin(lease: Duration) -> Duration {
    (lease / 10).min(Duration::from_secs(1))
}

impl<R: Runtime> Drop for Engine<R> {
    fn drop(&mut self) {
        // Nothing is outstanding any more (permits hold the engine alive): give up the
        // leases now instead of letting them expire.
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        for tx in st.pumps_stopped.drain(..) {
            let _ = tx.send(());
        }
        let ids: Vec<String> = st
            .gens
            .iter()
            .filter(|g| !g.is_lost() && !g.is_retired())
            .map(|g| g.id.clone())
            .collect();
        if !ids.is_empty() {
            let n = ids.len();
            let call = lease::reclaim_call(self, ids, n);
            // The engine is gone: nothing left to count this in; traced only.
            self.rt.spawn(async move {
                if let Err(e) = call.await {
                    trace_event!(warn, error = %e, "background error: giving up the leases of a dropped handle");
                    let _ = e;
                }
            });
        }
    }
}
