//! A released permit handed to a sibling handle of the same context (see
//! [`Siblings`](crate::context::Siblings)) at once, with the move recorded in Redis right
//! after: a `TRANSFER` script on the shared connection moves the token from the giver's
//! list into the receiver's.
//!
//! **Write-behind.** The sibling's task gets the permit before Redis has recorded the move,
//! so a hop costs no round trip. Until the move lands, the token is still in the giver's
//! list and the giver's generation stays pinned (the permit counted as outstanding in it),
//! so the giver can neither retire it nor give it back: at every instant the token is in
//! the list of a live (or expiring) holder of this process, and every task using it holds
//! it alone. A permit that moves on again before its move was sent is retargeted (one
//! move, from the first giver to the last receiver); one given back to the pool before
//! then is given back from the giver's list. Once the move was sent, anything that needs
//! the token in the receiver's list (a give-back, a hard lease) waits for its reply.
//!
//! One sender per semaphore and context sends the moves, up to [`MAX_BATCH`] to a script,
//! and the next script only after the previous reply was settled: a move queued behind
//! another of the same permit is always run after it. A move is never refused for the
//! gate or a lowered count (the permit is in use already, as with local handoff); the
//! reply says whether either waits, and then permits go back through the pool.
//!
//! When a move does not land as expected (no reply, or the giver's list found empty after
//! a move into it of unknown outcome), the token is in the giver's list or the receiver's
//! while the receiver's task uses it: the two generations are **entangled** (see
//! [`Generation::entangle`]): both dirty, retired together once neither has a permit out,
//! and lost together. A move whose receiver's lease is gone leaves the token with the
//! giver, which gives it back (the receiver's task is told its lease is lost); a giver's
//! list found empty otherwise means the giver's lease expired and was reclaimed (both
//! tasks are told).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use futures::channel::oneshot;
use futures::future::{BoxFuture, FutureExt, Shared};

use super::generation::Member;
use super::{Engine, Generation, Held};
use crate::context::Siblings;
use crate::runtime::Runtime;
use crate::scripts::{Transferred, TRANSFER};
use crate::stats::Counters;
use crate::Result;

/// The most moves in one script.
const MAX_BATCH: usize = 64;

/// The moves of one semaphore's siblings not sent yet.
#[derive(Debug)]
pub(crate) struct TransferBatch<R: Runtime> {
    pending: Vec<Pending<R>>,
    /// A task sends moves now.
    sending: bool,
}

impl<R: Runtime> Default for TransferBatch<R> {
    fn default() -> Self {
        TransferBatch {
            pending: Vec::new(),
            sending: false,
        }
    }
}

/// Whether Redis has answered the move of a permit's token into its holder's list.
pub(crate) struct Landing {
    settled: AtomicBool,
    /// The giver's generation, whose list holds the token until the move lands.
    giver: Weak<Generation>,
    /// Tells the task that uses the permit now that its lease is lost: set when queued,
    /// and again when the move is retargeted.
    lose_receiver: Mutex<Option<LoseReceiver>>,
    tx: Mutex<Option<oneshot::Sender<()>>>,
    rx: Shared<oneshot::Receiver<()>>,
}

type LoseReceiver = Box<dyn Fn() + Send + Sync>;

impl std::fmt::Debug for Landing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Landing")
            .field("settled", &self.is_settled())
            .finish_non_exhaustive()
    }
}

impl Landing {
    fn new(giver: &Arc<Generation>) -> Arc<Self> {
        let (tx, rx) = oneshot::channel();
        Arc::new(Landing {
            settled: AtomicBool::new(false),
            giver: Arc::downgrade(giver),
            lose_receiver: Mutex::new(None),
            tx: Mutex::new(Some(tx)),
            rx: rx.shared(),
        })
    }

    /// Names the receiver that uses the permit while the move is not answered.
    fn received_by<R: Runtime>(&self, to: &Arc<Engine<R>>, to_gen: &Arc<Generation>) {
        let (to, to_gen) = (Arc::downgrade(to), to_gen.clone());
        let lose: LoseReceiver = Box::new(move || {
            if let Some(to) = to.upgrade() {
                to.lose(&to_gen);
            }
        });
        if let Ok(mut l) = self.lose_receiver.lock() {
            *l = Some(lose);
        }
    }

    /// `giver` lost its lease: the token in its list may be reclaimed and granted again,
    /// so the task that uses the permit is told, unless the move has landed.
    pub(crate) fn giver_lost(&self, giver: &Arc<Generation>) {
        if self.is_settled() || !std::ptr::eq(self.giver.as_ptr(), Arc::as_ptr(giver)) {
            return;
        }
        let lose = self.lose_receiver.lock().ok().and_then(|mut l| l.take());
        if let Some(lose) = lose {
            lose();
        }
    }

    pub(crate) fn is_settled(&self) -> bool {
        self.settled.load(Ordering::Acquire)
    }

    fn settle(&self) {
        self.settled.store(true, Ordering::Release);
        if let Some(tx) = self.tx.lock().ok().and_then(|mut tx| tx.take()) {
            let _ = tx.send(());
        }
    }

    /// Resolves once the move is settled (or its sender is gone, which settles it too).
    pub(crate) async fn wait(&self) {
        if !self.is_settled() {
            let _ = self.rx.clone().await;
        }
    }
}

/// One permit's move from a sibling's list to another's, queued or in flight.
#[derive(Debug)]
struct Pending<R: Runtime> {
    from: Arc<Engine<R>>,
    /// The giver's generation, pinned: the permit still counted as outstanding in it, with
    /// a call begun on it.
    gen: Arc<Generation>,
    to: Arc<Engine<R>>,
    /// The receiver's generation: the permit counted in it, and a call reserved on it.
    to_gen: Arc<Generation>,
    landing: Arc<Landing>,
    /// The giver's own move of this token, still unanswered when this one was queued.
    after: Option<Arc<Landing>>,
}

/// A sibling chosen to receive a permit, with its generation reserved.
pub(super) struct Taker<R: Runtime> {
    siblings: Arc<Siblings<R>>,
    to: Arc<Engine<R>>,
    to_gen: Arc<Generation>,
}

impl<R: Runtime> Engine<R> {
    /// Gives a released permit back, not locally: to the sibling handle that waits
    /// longest, when the handoff limit allows, else through the pool.
    pub(crate) async fn release_remote(self: &Arc<Self>, held: Held<R>) -> Result<()> {
        let Some(held) = self.release_to_sibling(held) else {
            return Ok(());
        };
        let landing = held.unlanded();
        self.to_pool(held.disarm().1, landing).await
    }

    /// Hands `held` to the sibling that waits longest, now; returns it when it must go
    /// through the pool instead.
    pub(super) fn release_to_sibling(self: &Arc<Self>, held: Held<R>) -> Option<Held<R>> {
        match self.sibling_for(&held) {
            Some(taker) => {
                self.hand_to_sibling(held, taker);
                None
            }
            None => Some(held),
        }
    }

    /// The sibling that waits longest for a permit, with its current generation reserved
    /// for the move; none when `held` must go back through the pool.
    fn sibling_for(&self, held: &Held<R>) -> Option<Taker<R>> {
        let siblings = self.siblings_if_any()?;
        if !self.may_hand_over(held) || siblings.is_paused() {
            return None;
        }
        // Each turn takes one entry off the queue: the loop ends.
        loop {
            let to = siblings.longest(self)?;
            if let Some(to_gen) = to.reserve_current_now() {
                return Some(Taker {
                    siblings: siblings.clone(),
                    to,
                    to_gen,
                });
            }
        }
    }

    /// The queue this handle shares with its siblings, when it has any: a handle alone
    /// on its coordinator (the queue's only owner) skips the bookkeeping.
    pub(super) fn siblings_if_any(&self) -> Option<&Arc<Siblings<R>>> {
        self.siblings.as_ref().filter(|s| Arc::strong_count(s) > 1)
    }

    /// The current generation with a call reserved on it, if there is a usable one now
    /// (a waiting handle has one: its pump reserved it); never starts a lease.
    fn reserve_current_now(&self) -> Option<Arc<Generation>> {
        let gen = self.state().current.clone()?;
        if self.is_closed() || !gen.is_usable() || self.lose_if_expired(&gen) {
            return None;
        }
        gen.try_reserve().then_some(gen)
    }

    /// Gives the permit of `held` to the taker's longest waiter at once, and queues the
    /// move of its token (or retargets the move still queued for it).
    fn hand_to_sibling(self: &Arc<Self>, held: Held<R>, taker: Taker<R>) {
        let handoffs = held.handoffs + 1;
        let Taker {
            siblings,
            to,
            to_gen,
        } = taker;
        let unlanded = held.unlanded();
        let (_, gen, _) = held.disarm();
        let (landing, start, retargeted) = {
            let mut batch = siblings.transfers();
            let queued = unlanded.as_ref().and_then(|l| {
                batch
                    .pending
                    .iter()
                    .position(|p| Arc::ptr_eq(&p.landing, l) && Arc::ptr_eq(&p.to_gen, &gen))
            });
            match queued {
                Some(at) if Arc::ptr_eq(&batch.pending[at].gen, &to_gen) => {
                    // Back to its giver's generation before the move was sent: no move at
                    // all. The giver's count of the permit becomes its waiter's.
                    let p = batch.pending.remove(at);
                    drop(batch);
                    p.landing.settle();
                    p.gen.end_call();
                    to_gen.end_call();
                    gen.end_call();
                    gen.sub_outstanding();
                    self.maybe_retire(&gen);
                    let mut back = Held::adopt(to.clone(), to_gen, p.after);
                    back.handoffs = handoffs;
                    Counters::add(&self.counters.handed_to_siblings, 1);
                    to.receive(back);
                    return;
                }
                Some(at) => {
                    // Not sent yet: one move, from the first giver to this receiver.
                    let p = &mut batch.pending[at];
                    p.to = to.clone();
                    p.to_gen = to_gen.clone();
                    p.landing.received_by(&to, &to_gen);
                    (p.landing.clone(), false, true)
                }
                None => {
                    // Sent already (or never moved): a move of its own, sent after the
                    // one in flight; `gen` stays pinned until it lands.
                    gen.begin_call();
                    let landing = Landing::new(&gen);
                    landing.received_by(&to, &to_gen);
                    batch.pending.push(Pending {
                        from: self.clone(),
                        gen: gen.clone(),
                        to: to.clone(),
                        to_gen: to_gen.clone(),
                        landing: landing.clone(),
                        after: unlanded.clone(),
                    });
                    let start = !batch.sending;
                    batch.sending = true;
                    (landing, start, false)
                }
            }
        };
        if !retargeted {
            let mut st = self.state();
            st.moving.retain(|l| !l.is_settled());
            st.moving.push(landing.clone());
        }
        if retargeted {
            // This handle's part ends: its reservation, and its count of the permit.
            gen.end_call();
            gen.sub_outstanding();
            self.maybe_retire(&gen);
        }
        if start {
            // The guard is made here, not in the task: dropped unpolled (a runtime shut
            // down), the task still settles what it was started for.
            self.rt.spawn(send_transfers(Sending {
                siblings,
                batch: Vec::new(),
                finished: false,
            }));
        }
        Counters::add(&self.counters.handed_to_siblings, 1);
        let mut out = Held::new(to.clone(), to_gen, handoffs);
        out.landing = Some(landing);
        to.receive(out);
    }

    /// Gives the permit of `gen` (disarmed by the caller, still counted as outstanding)
    /// back to the pool, from the list that holds its token: if its move from a sibling
    /// is still queued, the move is dropped and the giver gives it back; if the move is in
    /// flight, once it has landed.
    ///
    /// Set up before the returned future is first polled: dropping it, polled or not,
    /// leaves the give-back to complete on the runtime.
    pub(crate) fn to_pool(
        self: &Arc<Self>,
        gen: Arc<Generation>,
        landing: Option<Arc<Landing>>,
    ) -> BoxFuture<'static, Result<()>> {
        let cancelled = landing
            .as_ref()
            .filter(|l| !l.is_settled())
            .and_then(|landing| {
                let mut batch = self.siblings.as_ref()?.transfers();
                let at = batch.pending.iter().position(|p| {
                    Arc::ptr_eq(&p.landing, landing) && Arc::ptr_eq(&p.to_gen, &gen)
                })?;
                Some(batch.pending.remove(at))
            });
        if let Some(p) = cancelled {
            // The token never left the giver's list: the giver gives it back (once its own
            // move into that list, if any, has landed).
            p.landing.settle();
            p.to_gen.end_call();
            p.to_gen.sub_outstanding();
            p.to.maybe_retire(&p.to_gen);
            p.gen.end_call();
            return p.from.give_back_after(p.gen, p.after);
        }
        self.give_back_after(gen, landing)
    }

    /// Gives back the permit of `gen` once `landing` (the move of its token into `gen`'s
    /// list) is settled; on the runtime, so that a caller that goes away cannot strand it.
    fn give_back_after(
        self: &Arc<Self>,
        gen: Arc<Generation>,
        landing: Option<Arc<Landing>>,
    ) -> BoxFuture<'static, Result<()>> {
        let Some(landing) = landing.filter(|l| !l.is_settled()) else {
            return self.give_back(gen).boxed();
        };
        let engine = self.clone();
        let give_back = self.run_detached(async move {
            landing.wait().await;
            engine.give_back(gen).await
        });
        // Dropped unrun (the runtime shutting down): the lease expires and the permit
        // is reclaimed, as for any release then.
        async move { give_back.await.unwrap_or(Ok(())) }.boxed()
    }

    /// A permit a sibling handed over: to the longest local waiter, else out again (to
    /// another sibling, or through the pool) as a released permit.
    fn receive(&self, held: Held<R>) {
        // Never granted under a lease that may have run out meanwhile.
        self.lose_if_expired(&held.gen);
        // A pump blocked for the waiter served here keeps blocking: cutting its wait short
        // would cost a `CLIENT UNBLOCK`, and the same handle usually waits again at once.
        // It stops at the end of its wait if nobody waits here by then, and whatever it
        // gets meanwhile is handed on like this permit.
        if let Some(back) = self.hand_to_waiter(held, false) {
            drop(back);
        }
    }
}

/// Settles one move; `reply` is `None` when its outcome is unknown. Returns the give-back
/// of the giver's permit when the token stayed in the giver's list and nobody uses it.
fn settle<R: Runtime>(
    p: Pending<R>,
    reply: Option<Transferred>,
) -> Option<BoxFuture<'static, Result<()>>> {
    let Pending {
        from,
        gen,
        to,
        to_gen,
        landing,
        after: _,
    } = p;
    gen.end_call();
    to_gen.end_call();
    let give_back = match reply {
        Some(Transferred::Moved) => {
            gen.sub_outstanding();
            from.maybe_retire(&gen);
            None
        }
        Some(Transferred::ToGone) => {
            // The receiver's lease ended: its task is told, and the token, still in the
            // giver's list, goes back.
            to.lose(&to_gen);
            Some(from.give_back(gen).boxed())
        }
        Some(Transferred::FromEmpty) if !gen.is_dirty() => {
            // The giver's lease expired and its list was reclaimed: the receiver's task
            // holds a permit nobody records.
            from.lose(&gen);
            to.lose(&to_gen);
            gen.sub_outstanding();
            from.maybe_retire(&gen);
            None
        }
        _ => {
            entangle(&from, &gen, &to, &to_gen);
            gen.sub_outstanding();
            from.maybe_retire(&gen);
            None
        }
    };
    landing.settle();
    give_back
}

/// The token is in the giver's list or the receiver's, and the receiver's task uses it:
/// the two generations are entangled (see [`Generation::entangle`]), so that neither
/// gives back its list while a task of the other may use the token, and the receiver's,
/// whose list may lack it, gives nothing back permit by permit.
fn entangle<R: Runtime>(
    from: &Arc<Engine<R>>,
    gen: &Arc<Generation>,
    to: &Arc<Engine<R>>,
    to_gen: &Arc<Generation>,
) {
    gen.mark_dirty();
    to_gen.mark_dirty();
    to_gen.mark_entangled();
    Generation::entangle((gen, member(from, gen)), (to_gen, member(to, to_gen)));
    if gen.is_lost() || to_gen.is_lost() {
        // Lost before they were tied: the loss is both's.
        from.lose(gen);
        to.lose(to_gen);
        if let Some(group) = gen.group() {
            group.lose_all();
        }
    }
}

fn member<R: Runtime>(engine: &Arc<Engine<R>>, gen: &Arc<Generation>) -> Member {
    let (e, g) = (Arc::downgrade(engine), Arc::downgrade(gen));
    let (e2, g2) = (e.clone(), g.clone());
    Member {
        gen: Arc::downgrade(gen),
        retire: Arc::new(move || {
            if let (Some(e), Some(g)) = (e.upgrade(), g.upgrade()) {
                if g.claim_retirement() {
                    e.retire(g);
                }
            }
        }),
        lose: Arc::new(move || {
            if let (Some(e), Some(g)) = (e2.upgrade(), g2.upgrade()) {
                e.lose(&g);
            }
        }),
    }
}

/// Sends the queued moves of one semaphore's siblings, a script at a time, until none is
/// left.
async fn send_transfers<R: Runtime>(mut sending: Sending<R>) {
    loop {
        {
            let mut queued = sending.siblings.transfers();
            if queued.pending.is_empty() {
                queued.sending = false;
                sending.finished = true;
                return;
            }
            let n = queued.pending.len().min(MAX_BATCH);
            sending.batch = queued.pending.drain(..n).collect();
        }
        let replies = run_batch(&sending.batch).await;
        let mut give_backs = Vec::new();
        let mut rt = None;
        for (p, reply) in std::mem::take(&mut sending.batch).into_iter().zip(replies) {
            rt.get_or_insert_with(|| p.from.rt.clone());
            let from = p.from.clone();
            if let Some(give_back) = settle(p, reply) {
                give_backs.push(async move {
                    if let Err(e @ crate::Error::Redis(_)) = give_back.await {
                        from.background_error("give-back after a refused transfer", &e);
                    }
                });
            }
        }
        if let (Some(rt), false) = (rt, give_backs.is_empty()) {
            // Set up already, sent on the runtime: this sender goes on meanwhile.
            rt.spawn(async move {
                futures::future::join_all(give_backs).await;
            });
        }
    }
}

/// One script for `batch`; per move its reply, or `None` when the outcome is unknown.
async fn run_batch<R: Runtime>(batch: &[Pending<R>]) -> Vec<Option<Transferred>> {
    let unknown = || batch.iter().map(|_| None).collect();
    let Some(first) = batch.first() else {
        return Vec::new();
    };
    let engine = &first.from;
    let keys = &engine.cfg.keys;
    let mut inv = TRANSFER.prepare_invoke();
    inv.key(&keys.leases)
        .key(&keys.gate)
        .key(keys.meta_or_pool());
    for p in batch {
        inv.key(&p.gen.held_key).key(&p.to_gen.held_key);
    }
    inv.arg(keys.has_meta()).arg(engine.held_ttl_ms());
    for p in batch {
        inv.arg(&p.to_gen.id);
    }
    let mut conn = engine.conn.clone();
    match inv.invoke_async::<(i64, Vec<Transferred>)>(&mut conn).await {
        Ok((waiting, replies)) if replies.len() == batch.len() => {
            if waiting == 1 {
                // A request for several permits, or a lowered count, waits for permits in
                // the pool: they go back there for a while (a move after that learns again).
                if let Some(siblings) = &engine.siblings {
                    siblings.pause(engine.cfg.lease / 3);
                }
            }
            replies.into_iter().map(Some).collect()
        }
        // A script that failed part way may have moved some tokens: every move of the
        // batch is of unknown outcome (an error reply included).
        Ok(_) => unknown(),
        Err(e) => {
            if e.code().is_some() {
                engine.background_error("transfer", &e);
            }
            unknown()
        }
    }
}

/// A sender of moves; dropped unfinished (the runtime shutting down), it settles what it
/// and the queue still hold as of unknown outcome, so that no generation stays reserved
/// forever and every permit comes back by retirement or reclaim.
struct Sending<R: Runtime> {
    siblings: Arc<Siblings<R>>,
    batch: Vec<Pending<R>>,
    finished: bool,
}

impl<R: Runtime> Drop for Sending<R> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let queued = {
            let mut q = self.siblings.transfers();
            q.sending = false;
            std::mem::take(&mut q.pending)
        };
        for p in std::mem::take(&mut self.batch).into_iter().chain(queued) {
            // Nothing is given back from here: the runtime is going away.
            drop(settle(p, None));
        }
    }
}
