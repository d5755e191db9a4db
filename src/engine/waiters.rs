//! Taking and giving back tokens: the fast path over the shared connection, local FIFO
//! waiters, and the few "pumps" that block on Redis on their behalf.
//!
//! However many tasks wait, a handle opens at most `max_blocking` dedicated connections:
//! each pump blocks in `BLMOVE pool -> held list` and hands what it gets to the longest
//! local waiter; a token nobody is waiting for any more goes back to the pool.

use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::Ordering;

use futures::channel::oneshot;
use futures::future::{join_all, select, Either, FutureExt};
use redis::RedisResult;

use super::{
    Blocked, Borrowed, Detachable, Engine, Generation, Held, Kind, Settled, State, MAX_BLOCK,
};
use crate::connection::not_executed;
use crate::runtime::Runtime;
use crate::scripts::{Taken, GIVE_BACK, TAKE};
use crate::trace::trace_event;
use crate::{Error, Result};

/// How many times in a row a fast-path call may find the lease gone before giving up.
const LEASE_RETRIES: usize = 3;
/// How long, after the fast path found the pool empty, acquires queue without trying it.
const EMPTY_POOL_MEMORY_MS: u64 = 50;
/// `CLIENT UNBLOCK` attempts on a wait that was not blocked yet (2, 4, 8, 16 ms apart).
const UNBLOCK_TRIES: u32 = 5;
/// The longest a timed-out acquire waits for cut-short blocking waits to settle.
const SETTLE_GRACE: Duration = Duration::from_millis(250);
/// A blocking wait's turn while other primitives of the context queue for a connection
/// (Redis rounds it up to its timer tick, 100 ms at the default `hz 10`).
pub(super) const SLICE: Duration = Duration::from_millis(100);
/// Pauses before waiting again after a blocking wait that did not run (a redirection, a
/// failover, a slot migration): doubled from the first up to the last.
const NOT_RUN_FIRST: Duration = Duration::from_millis(20);
const NOT_RUN_MAX: Duration = Duration::from_millis(500);

/// How a blocking wait ended.
enum Outcome {
    /// Redis answered (a token, nil, or an error).
    Reply(RedisResult<Option<String>>),
    /// The wait was cut short by dropping its connection: outcome unknown.
    Abandoned,
}

impl<R: Runtime> Engine<R> {
    /// Takes a token, waiting as long as it takes.
    pub(crate) async fn take(self: &Arc<Self>) -> Result<Held<R>> {
        if !self.has_waiters() && !self.pool_recently_empty() {
            if let Some(held) = self.try_take().await? {
                return Ok(held);
            }
            self.note_pool_empty();
        }
        trace_event!(debug, primitive = %self.cfg.keys.pool, "waiting");
        let (seq, rx) = self.enqueue();
        let mut ticket = Ticket {
            engine: self,
            seq,
            rx,
        };
        match (&mut ticket.rx).await {
            Ok(Ok(held)) => {
                self.note_grant(&held.gen);
                Ok(held)
            }
            Ok(Err(e)) => Err(e),
            // The pumps never drop a waiter unanswered unless the engine is closing.
            Err(_) => Err(Error::Closed),
        }
    }

    /// Gives back, concurrently, the tokens of permits dropped since the last flush.
    ///
    /// Every give-back is under way before this future is first polled further: dropped
    /// early (a cancelled acquire, or children left unpolled by tokio's coop budget), each
    /// still completes on the runtime.
    pub(crate) fn flush_outbox(self: &Arc<Self>) -> impl std::future::Future<Output = ()> {
        self.flush_outbox_after().0
    }

    /// [`Engine::flush_outbox`], and the flushes that other tasks took from the outbox
    /// before this one and that may not have reached the connection yet (a flush task on
    /// another thread of the runtime): read in the same critical section as the outbox.
    fn flush_outbox_after(
        self: &Arc<Self>,
    ) -> (impl std::future::Future<Output = ()>, Vec<Settled>) {
        let (gens, earlier, done) = {
            let mut st = self.state();
            let earlier = st.flushing.iter().map(|(_, f)| f.clone()).collect();
            let gens = std::mem::take(&mut st.outbox);
            let done = (!gens.is_empty()).then(|| {
                let (tx, rx) = oneshot::channel();
                let id = self.next_block.fetch_add(1, Ordering::Relaxed);
                st.flushing.push((id, rx.shared()));
                FlushMark {
                    engine: self.clone(),
                    id,
                    _done: tx,
                }
            });
            (gens, earlier, done)
        };
        let calls: Vec<_> = gens.into_iter().map(|gen| self.give_back(gen)).collect();
        let engine = self.clone();
        let flush = async move {
            if !calls.is_empty() {
                for res in join_all(calls).await {
                    if let Err(e @ Error::Redis(_)) = res {
                        engine.background_error("release from Drop", &e);
                    }
                }
            }
            // Leaves the list of flushes under way and tells whoever waits for it; also
            // when this future is dropped unpolled (a cancelled acquire).
            drop(done);
        };
        (flush, earlier)
    }

    /// Takes a token if one is free now: one round trip (shared with the releases of
    /// permits dropped just before, which go first on the same connection). A release that
    /// a background task took from the outbox just before may reach Redis after this
    /// request: when the pool looked empty, such releases are waited for and the pool
    /// tried once more, so that a permit dropped on this handle is always seen free here.
    pub(crate) async fn try_take(self: &Arc<Self>) -> Result<Option<Held<R>>> {
        let (flush, earlier) = self.flush_outbox_after();
        let ((), mut taken) = futures::join!(flush, self.try_take_now());
        if matches!(taken, Ok(None)) && !earlier.is_empty() {
            for f in earlier {
                let _ = f.await;
            }
            taken = self.try_take_now().await;
        }
        if let Ok(Some(held)) = &taken {
            self.note_grant(&held.gen);
        }
        taken
    }

    async fn try_take_now(self: &Arc<Self>) -> Result<Option<Held<R>>> {
        for attempt in 0..LEASE_RETRIES {
            let gen = self.reserve_gen().await?;
            let mut conn = self.conn.clone();
            let keys = &self.cfg.keys;
            let mut inv = TAKE.prepare_invoke();
            inv.key(&keys.pool)
                .key(&gen.held_key)
                .key(&keys.leases)
                .key(&keys.gate)
                .key(keys.meta_or_pool())
                .arg(&gen.id)
                .arg(self.held_ttl_ms())
                .arg(keys.has_meta());
            let call = async move { inv.invoke_async::<Taken>(&mut conn).await };
            let (engine, g) = (self.clone(), gen.clone());
            let reply = Detachable::new(self.rt.clone(), call, move |reply| {
                // The caller is gone: a token taken for it goes back.
                match engine.settle_take(&g, reply) {
                    Ok(held) => drop(held),
                    Err(e @ Error::Redis(_)) => engine.background_error("orphaned take", &e),
                    Err(_) => {}
                }
            })
            .await;
            match self.settle_take(&gen, reply) {
                // A new lease, or after a dropped connection a new generation (the old one
                // gives back what it may have taken once drained): try again.
                Err(Error::LeaseLost) => continue,
                // Unknown outcome (the connection is replaced), or the script cache was
                // flushed between loading the script and running it: try again.
                Err(Error::Redis(e))
                    if attempt + 1 < LEASE_RETRIES
                        && (outcome_unknown(&e) || e.code() == Some("NOSCRIPT")) =>
                {
                    continue
                }
                other => return other,
            }
        }
        Err(Error::LeaseLost)
    }

    /// The current generation with a call reserved on it (see
    /// [`Generation::try_reserve`]): a generation cannot be retired between being chosen
    /// and being used.
    pub(super) async fn reserve_gen(self: &Arc<Self>) -> Result<Arc<Generation>> {
        loop {
            let gen = self.current_gen().await?;
            // A lease whose loss deadline passed (its renewal or its REGISTER reply came
            // too late) is never used: it may already be reclaimed, its list no longer
            // swept. Found by the model check (`src/scripts/model.rs`).
            if self.lose_if_expired(&gen) {
                continue;
            }
            if gen.try_reserve() {
                return Ok(gen);
            }
            self.maybe_retire(&gen);
        }
    }

    /// Turns the reply of a fast-path call into a held token (or none, or an error).
    fn settle_take(
        self: &Arc<Self>,
        gen: &Arc<Generation>,
        reply: RedisResult<Taken>,
    ) -> Result<Option<Held<R>>> {
        let out = match reply {
            Ok(Taken::Token(token)) => {
                let held = Held::new(self.clone(), gen.clone(), 0).with_token(&token);
                if self.lose_if_expired(gen) {
                    // The reply came too late to trust the lease: give the token back.
                    drop(held);
                    Err(Error::LeaseLost)
                } else {
                    Ok(Some(held))
                }
            }
            Ok(Taken::LeaseGone) => {
                self.lose(gen);
                Err(Error::LeaseLost)
            }
            Ok(Taken::Empty) => Ok(None),
            Err(e) => {
                // An error reply means the script ran and failed before its first write;
                // any other error may have lost the reply of a script that ran.
                if outcome_unknown(&e) {
                    gen.mark_dirty();
                }
                Err(e.into())
            }
        };
        gen.end_call();
        self.maybe_retire(gen);
        out
    }

    /// Under contention the fast path mostly finds the pool empty, costing a round trip
    /// before the blocking wait; for a short while after it did, waiters queue at once (a
    /// blocking move returns at once when a permit is free, so nothing is lost but a
    /// wasted call).
    fn pool_recently_empty(&self) -> bool {
        let until = self.empty_until.load(Ordering::Relaxed);
        until != 0 && (self.started.elapsed().as_millis() as u64) < until
    }

    fn note_pool_empty(&self) {
        let until = self.started.elapsed().as_millis() as u64 + EMPTY_POOL_MEMORY_MS;
        self.empty_until.store(until, Ordering::Relaxed);
    }

    fn has_waiters(&self) -> bool {
        !self.state().waiters.is_empty()
    }

    /// Queues a local waiter and makes sure enough pumps run for it.
    fn enqueue(self: &Arc<Self>) -> (u64, oneshot::Receiver<Result<Held<R>>>) {
        let (tx, rx) = oneshot::channel();
        let (seq, spawn) = {
            let mut st = self.state();
            if self.is_closed() {
                let _ = tx.send(Err(Error::Closed));
                return (u64::MAX, rx);
            }
            let seq = st.waiters.push(tx);
            let want = st.waiters.len().min(self.cfg.max_blocking);
            let spawn = st.pumps < want;
            if spawn {
                st.pumps += 1;
            }
            (seq, spawn)
        };
        if let Some(siblings) = self.siblings_if_any() {
            siblings.note_wait(self, seq);
        }
        if spawn {
            let engine = self.clone();
            self.rt.spawn(async move { engine.pump().await });
        }
        self.kick_reclaim();
        (seq, rx)
    }

    /// Fails every local waiter with `err`.
    fn fail_waiters(&self, err: Error) {
        let waiters = self.state().waiters.take_all();
        for w in waiters {
            let _ = w.send(Err(err.clone()));
        }
        self.trim_pumps();
    }

    /// A pump stops; the last one tells whoever waits for that (shutdown).
    fn pump_exits(&self, st: &mut State<R>) {
        st.pumps -= 1;
        if st.pumps == 0 {
            for tx in st.pumps_stopped.drain(..) {
                let _ = tx.send(());
            }
        }
    }

    /// Blocks on Redis for local waiters until there are none.
    async fn pump(self: Arc<Self>) {
        let mut conn: Option<Borrowed> = None;
        let mut failures = 0u32;
        let mut not_run_pause = NOT_RUN_FIRST;
        let block = MAX_BLOCK
            .min(self.cfg.lease / 4)
            .max(Duration::from_millis(100));
        loop {
            {
                let mut st = self.state();
                // More pumps than waiters: this one is not needed (a wait cut short for
                // lack of waiters lands here, instead of blocking again).
                if st.waiters.is_empty() || self.is_closed() || st.pumps > st.waiters.len() {
                    // Its connection, if any, goes back to the context's pool.
                    drop(conn.take());
                    self.pump_exits(&mut st);
                    return;
                }
            }
            // Other primitives queue for a connection: give this one back and queue too,
            // so the connections rotate fairly (see `context::pool`).
            if self.ctx.pool.contended() {
                drop(conn.take());
            }
            // The connection first: the generation is reserved right before the move.
            let mut c = match conn.take() {
                Some(c) => c,
                None => match self.blocking_conn(block).await {
                    Ok(c) => c,
                    Err(e) => {
                        self.fail_waiters(e);
                        continue;
                    }
                },
            };
            let gen = match self.reserve_gen().await {
                Ok(g) => g,
                Err(Error::Redis(e)) if failures == 0 && outcome_unknown(&e) => {
                    // The shared connection was replaced: try once more before failing.
                    failures += 1;
                    conn = Some(c);
                    continue;
                }
                Err(e) => {
                    conn = Some(c);
                    self.fail_waiters(e);
                    continue;
                }
            };
            let (reply, _settled) = match self.block_once(&mut c, &gen, block).await {
                (Outcome::Reply(reply), settled) => (reply, settled),
                (Outcome::Abandoned, _settled) => {
                    // Cut short by dropping the connection: unknown whether the move
                    // happened, so the generation gives back whatever it got once drained.
                    c.lent.discard();
                    gen.end_call();
                    self.taint(&gen);
                    continue;
                }
            };
            match reply {
                Ok(Some(token)) => {
                    let held = Held::new(self.clone(), gen.clone(), 0).with_token(&token);
                    gen.end_call();
                    conn = Some(c);
                    failures = 0;
                    not_run_pause = NOT_RUN_FIRST;
                    self.deliver(held).await;
                }
                Ok(None) => {
                    gen.end_call();
                    self.maybe_retire(&gen);
                    conn = Some(c);
                    failures = 0;
                    not_run_pause = NOT_RUN_FIRST;
                    self.kick_reclaim();
                }
                Err(e) if not_executed(&e) => {
                    // The key lives elsewhere now (a failover, a slot moved or moving).
                    // Drop this connection, learn the new owner, and meanwhile try the
                    // fast path, which follows redirections itself. A redirection or a
                    // migration in progress means nothing ran; a wait ended by a failover
                    // (UNBLOCKED) is treated as of unknown outcome, like a dropped
                    // connection: the generation gives back whatever its list holds.
                    gen.end_call();
                    if e.code() == Some("UNBLOCKED") {
                        self.taint(&gen);
                    } else {
                        self.maybe_retire(&gen);
                    }
                    c.lent.discard();
                    self.conn.note_blocking_error(&e);
                    self.rt.sleep(not_run_pause).await;
                    not_run_pause = (not_run_pause * 2).min(NOT_RUN_MAX);
                    match self.try_take_now().await {
                        Ok(Some(held)) => self.deliver(held).await,
                        Ok(None) => {}
                        Err(e) => self.background_error("fast path after a redirection", &e),
                    }
                }
                Err(e) if !outcome_unknown(&e) => {
                    // An error reply (e.g. WRONGTYPE): nothing moved.
                    gen.end_call();
                    self.maybe_retire(&gen);
                    conn = Some(c);
                    self.fail_waiters(e.into());
                }
                Err(e) => {
                    // Unknown whether the move happened: the generation is retired once
                    // drained, which gives back a token that did move. A connection that
                    // missed its deadline is silent: the shared one, opened the same way,
                    // likely is too, so it is replaced before the next request.
                    c.lent.discard();
                    gen.end_call();
                    self.taint(&gen);
                    if e.is_timeout() {
                        self.conn.reset();
                    }
                    failures += 1;
                    if failures >= 2 {
                        self.fail_waiters(e.into());
                    } else {
                        self.rt.sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }
    }

    /// One `BLMOVE pool -> held list`. When the local waiters it blocks for are all gone,
    /// the wait is cut short with `CLIENT UNBLOCK` from the shared connection, so that it
    /// does not take a permit nobody here wants; the reply (a token or nil) still arrives,
    /// so the outcome stays known. Where Redis refuses `CLIENT UNBLOCK` (an ACL, a managed
    /// service), or it fails, the wait is abandoned instead: its connection is dropped,
    /// which ends the wait on the server, and the outcome is unknown.
    async fn block_once(
        &self,
        c: &mut Borrowed,
        gen: &Generation,
        block: Duration,
    ) -> (Outcome, oneshot::Sender<()>) {
        let (switch, cut) = oneshot::channel();
        let (settled_tx, settled) = oneshot::channel();
        let ticket = self.next_block.fetch_add(1, Ordering::Relaxed);
        self.state().blocked.push(Blocked {
            ticket,
            switch,
            settled: settled.shared(),
        });
        // While other primitives queue for a connection, only a slice; otherwise a long
        // wait that a queued primitive can cut short (not where CLIENT UNBLOCK is refused:
        // cutting would cost the connection and the generation).
        let preemptible = !self.unblock_refused.load(Ordering::Relaxed);
        let (block, preempt) = c.lent.begin_wait(block, SLICE, preemptible);
        let mut cmd = redis::cmd("BLMOVE");
        cmd.arg(&self.cfg.keys.pool)
            .arg(&gen.held_key)
            .arg("LEFT")
            .arg("RIGHT")
            .arg(block.as_secs_f64());
        // A waiter may have left while this pump was getting ready: then send nothing.
        let mut cut = cut;
        self.trim_pumps();
        if !matches!(cut.try_recv(), Ok(None)) {
            c.lent.end_wait();
            self.state().blocked.retain(|b| b.ticket != ticket);
            return (Outcome::Reply(Ok(None)), settled_tx);
        }
        let Some(bc) = c.lent.conn() else {
            c.lent.end_wait();
            self.state().blocked.retain(|b| b.ticket != ticket);
            return (Outcome::Reply(Ok(None)), settled_tx);
        };
        let (id, node) = (bc.id, bc.node.clone());
        // Cut short for lack of waiters, or asked to make room in the pool.
        let stop = async move {
            match preempt {
                Some(preempt) => {
                    let _ = select(cut, preempt).await;
                }
                None => {
                    let _ = cut.await;
                }
            }
        };
        let reply = {
            let wait = cmd.query_async::<Option<String>>(&mut bc.conn);
            futures::pin_mut!(wait);
            match select(wait, Box::pin(stop)).await {
                Either::Left((reply, _)) => Outcome::Reply(reply),
                Either::Right((_, wait)) if !self.unblock_refused.load(Ordering::Relaxed) => {
                    self.unblock(id, &node, wait).await
                }
                Either::Right(_) => Outcome::Abandoned,
            }
        };
        c.lent.end_wait();
        self.state().blocked.retain(|b| b.ticket != ticket);
        // The caller drops this once it has delivered or given back what the wait got.
        (reply, settled_tx)
    }

    /// Ends the blocking wait of client `id` with `CLIENT UNBLOCK` and returns its reply.
    /// "Not blocked" means the reply is on its way, or the wait has not reached the server
    /// yet: a few more tries tell which; after that, or if Redis refuses the command, the
    /// wait is abandoned.
    async fn unblock<F>(&self, id: i64, node: &str, wait: std::pin::Pin<&mut F>) -> Outcome
    where
        F: std::future::Future<Output = RedisResult<Option<String>>>,
    {
        let mut wait = wait;
        for attempt in 0..UNBLOCK_TRIES {
            let unblocked = self.conn.unblock_client(id, node).await;
            match unblocked {
                Ok(1) => return Outcome::Reply(wait.await),
                Ok(_) if attempt + 1 < UNBLOCK_TRIES => {
                    let pause = self.rt.sleep(Duration::from_millis(2 << attempt));
                    if let Either::Left((reply, _)) = select(wait.as_mut(), Box::pin(pause)).await {
                        return Outcome::Reply(reply);
                    }
                }
                Ok(_) => return Outcome::Abandoned,
                Err(e) => {
                    if !outcome_unknown(&e) {
                        // Refused (NOPERM, unknown command): never ask again.
                        self.unblock_refused.store(true, Ordering::Relaxed);
                    }
                    return Outcome::Abandoned;
                }
            }
        }
        Outcome::Abandoned
    }

    /// Cuts short the waits of pumps beyond the number of local waiters left.
    fn trim_pumps(&self) {
        let cut: Vec<_> = {
            let mut st = self.state();
            st.settling.retain(|s| s.peek().is_none());
            let excess = st.blocked.len().saturating_sub(st.waiters.len());
            // The newest waits go: the oldest keep their place in the server's FIFO queue
            // of blocked clients, and a wait not sent yet costs nothing to cut.
            let keep = st.blocked.len() - excess;
            let cut: Vec<_> = st.blocked.drain(keep..).collect();
            st.settling.extend(cut.iter().map(|b| b.settled.clone()));
            cut
        };
        for b in cut {
            let _ = b.switch.send(());
        }
    }

    /// After a timed-out wait: waits until the blocking waits cut short for lack of
    /// waiters have given back what they got, so that a permit released right after the
    /// timeout is seen free by everyone; at most [`SETTLE_GRACE`] (a slow Redis never makes
    /// a timeout late by more).
    pub(crate) async fn settle_cut_waits(&self) {
        self.trim_pumps();
        let settling: Vec<Settled> = self.state().settling.clone();
        if !settling.is_empty() {
            let all = futures::future::join_all(settling);
            let grace = self.cfg.response_timeout.min(SETTLE_GRACE);
            let _ = crate::runtime::timeout(&self.rt, grace, all).await;
        }
    }

    /// Hands a token the pump got to the longest local waiter, or gives it back.
    async fn deliver(self: &Arc<Self>, held: Held<R>) {
        // A blocking move does not check the lease: never grant under one that may have
        // run out (the watchdog's timer may not have fired yet).
        self.lose_if_expired(&held.gen);
        if let Some(held) = self.hand_to_waiter(held, true) {
            // Nobody waits here any more (a sibling's transfer served the waiter, or it
            // gave up): to a sibling that waits, else back to the pool.
            if let Err(e @ Error::Redis(_)) = self.release_remote(held).await {
                self.background_error("give-back of an undelivered grant", &e);
            }
        }
    }

    /// Passes `held` to the longest live local waiter; returns it when there is none.
    /// With `trim`, blocking waits beyond the waiters left are cut short.
    pub(super) fn hand_to_waiter(&self, held: Held<R>, trim: bool) -> Option<Held<R>> {
        if held.gen.is_lost() || held.gen.is_retired() || self.is_closed() {
            return Some(held);
        }
        // Never sends under the state lock (see `send_to_longest`).
        match super::queue::send_to_longest(|| self.state().waiters.pop(), Ok(held)) {
            Ok(()) => {
                if trim {
                    self.trim_pumps();
                }
                None
            }
            Err(Ok(back)) => Some(back),
            // We sent `Ok`, so the value handed back is `Ok` too.
            Err(Err(_)) => None,
        }
    }

    /// Gives a token back: to a local waiter when fairness allows, else to Redis.
    pub(crate) async fn release_held(self: &Arc<Self>, held: Held<R>) -> Result<()> {
        match self.handoff(held) {
            None => Ok(()),
            Some(held) => self.release_remote(held).await,
        }
    }

    /// Drop-time release: never blocks; what needs Redis runs on the runtime.
    pub(crate) fn release_in_background(self: &Arc<Self>, held: Held<R>) {
        let Some(held) = self.handoff(held) else {
            return;
        };
        // To a waiting sibling: handed over now, its move sent on the runtime.
        let Some(held) = self.release_to_sibling(held) else {
            return;
        };
        // Disarmed before spawning: if the runtime is shutting down and drops the task
        // unrun, nothing re-enters here; the lease then expires and the permit is
        // reclaimed by another client.
        if let Some(landing) = held.unlanded() {
            // Handed over by a sibling, its move not answered yet: given back from the list
            // that holds the token (set up now, sent on the runtime).
            let gen = held.disarm().1;
            let give_back = self.to_pool(gen, Some(landing));
            let engine = self.clone();
            self.rt.spawn(async move {
                if let Err(e @ Error::Redis(_)) = give_back.await {
                    engine.background_error("release from Drop", &e);
                }
            });
            return;
        }
        // Queued in the outbox, which a task flushes; an acquire of this handle made
        // meanwhile flushes it first, on the same connection, so its request reaches
        // Redis after the release (one round trip for both).
        let gen = held.disarm().1;
        self.state().outbox.push(gen);
        let engine = self.clone();
        self.rt.spawn(async move { engine.flush_outbox().await });
    }

    /// Local handoff: a released permit goes straight to the longest local waiter, with no
    /// Redis round trip, at most `handoff_limit` times in a row; then it goes back through
    /// Redis so that waiters in other processes get their turn.
    fn handoff(&self, mut held: Held<R>) -> Option<Held<R>> {
        if !self.may_hand_over(&held) {
            return Some(held);
        }
        held.handoffs += 1;
        let mut held = self.hand_to_waiter(held, true)?;
        held.handoffs -= 1;
        Some(held)
    }

    /// Whether `held` may go to another waiter of this process without going back through
    /// the pool: within the handoff limit, under the current, usable lease, and with no
    /// lowered count waiting for permits to destroy.
    pub(super) fn may_hand_over(&self, held: &Held<R>) -> bool {
        let limit = match self.cfg.kind {
            Kind::Semaphore => self.cfg.handoff_limit,
            Kind::Event => u32::MAX,
            // A fence grows only through Redis; a waiting writer is not overtaken locally.
            Kind::Mutex | Kind::RwLock => 0,
        };
        held.handoffs < limit
            && held.gen.is_usable()
            && self.is_current(&held.gen)
            && !self.reduction_pending.load(Ordering::Acquire)
    }

    /// Moves one token of `gen` (already disarmed by the caller, still counted as
    /// outstanding) from the holder's list back to the pool in Redis.
    ///
    /// The call is set up before the returned future is first polled: dropping it, polled
    /// or not, leaves the give-back to complete on the runtime.
    pub(crate) fn give_back(
        self: &Arc<Self>,
        gen: Arc<Generation>,
    ) -> impl std::future::Future<Output = Result<()>> {
        if gen.is_entangled() {
            // Its list may lack this permit's token, which a sibling's list holds pinned
            // (see `engine::transfer`): a give-back could take another permit's token.
            // Retirement gives back whatever the list holds once the last one is out.
            gen.sub_outstanding();
            self.maybe_retire(&gen);
            return futures::future::Either::Left(futures::future::ready(Ok(())));
        }
        // Even for a lost lease the move is attempted: a blocking move that landed after the
        // reclaim left a token there that belongs to nobody.
        let mut conn = self.conn.clone();
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
            .arg(1)
            .arg(0)
            .arg(u8::from(self.is_fenced()))
            .arg(&gen.id);
        gen.begin_call();
        let call = async move { inv.invoke_async::<i64>(&mut conn).await };
        let (engine, g) = (self.clone(), gen.clone());
        let call = Detachable::new(self.rt.clone(), call, move |reply| {
            if let Err(e @ Error::Redis(_)) = engine.settle_give_back(&g, reply) {
                engine.background_error("orphaned release", &e);
            }
        });
        let engine = self.clone();
        futures::future::Either::Right(async move {
            let reply = call.await;
            engine.settle_give_back(&gen, reply)
        })
    }

    fn settle_give_back(&self, gen: &Arc<Generation>, reply: RedisResult<i64>) -> Result<()> {
        let out = match reply {
            Ok(1) if !gen.is_lost() => Ok(()),
            Ok(1) => Err(Error::LeaseLost),
            Ok(_) => {
                // The list was empty: the lease expired and the permit was reclaimed.
                self.lose(gen);
                Err(Error::LeaseLost)
            }
            // Unknown whether it moved: the generation, now dirty, is retired once drained,
            // which gives back whatever its list still holds (or, if Redis stays out of
            // reach, its lease expires and another client reclaims it). The permit comes
            // back either way: not the caller's problem.
            Err(e) if outcome_unknown(&e) => {
                gen.mark_dirty();
                Ok(())
            }
            Err(e) => {
                // An error reply: nothing moved, and the token stays in the list until the
                // generation, now dirty, is retired.
                gen.mark_dirty();
                Err(e.into())
            }
        };
        gen.end_call();
        gen.sub_outstanding();
        self.maybe_retire(gen);
        out
    }
}

/// A flush of the outbox under way, listed in the state until it ends or is dropped.
struct FlushMark<R: Runtime> {
    engine: Arc<Engine<R>>,
    id: u64,
    /// Dropped with the mark: resolves the flush's entry for whoever awaits it.
    _done: oneshot::Sender<()>,
}

impl<R: Runtime> Drop for FlushMark<R> {
    fn drop(&mut self) {
        let id = self.id;
        self.engine.state().flushing.retain(|(i, _)| *i != id);
    }
}

/// Whether a failed call may still have run on the server: anything but an error reply
/// from Redis itself (a dropped connection, a response timeout, a client-side failure).
pub(crate) fn outcome_unknown(e: &redis::RedisError) -> bool {
    e.code().is_none()
}

/// A queued waiter. Dropped before it is served (a timeout, a `select!`), it leaves the
/// queue and cuts short a blocking wait that no longer has anyone to serve.
struct Ticket<'a, R: Runtime> {
    engine: &'a Arc<Engine<R>>,
    /// Its place in the queue.
    seq: u64,
    rx: oneshot::Receiver<Result<Held<R>>>,
}

impl<R: Runtime> Drop for Ticket<'_, R> {
    fn drop(&mut self) {
        // A token already sent stays in the channel and is given back when `rx` drops; a
        // send racing this close fails, and the sender serves the next waiter.
        self.rx.close();
        // Only a waiter that gave up leaves a blocking wait with nobody to serve; one that
        // was served left it to whoever served it (a pump trims, a sibling's transfer
        // leaves the wait running for the next acquire, see `Engine::receive`).
        let gave_up = self.engine.state().waiters.cancel(self.seq);
        if gave_up {
            self.engine.trim_pumps();
        }
    }
}
