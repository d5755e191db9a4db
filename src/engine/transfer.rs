//! A released permit handed to a sibling handle of the same context (see
//! [`Siblings`](crate::context::Siblings)): a `TRANSFER` script on the shared connection
//! instead of a give-back and a blocking move on a dedicated one.
//!
//! The permit stays recorded in Redis at every instant: the script moves the token from
//! the giver's list into the receiver's, after checking the receiver's lease, in one step.
//! Whatever happens to the reply, the token is in one of the two lists, and each list is
//! given back by its own generation's retirement or by reclaim.
//!
//! Transfers released at about the same time go out together, several to a script: the
//! permits of a busy semaphore travel in convoys (a reply wakes several receivers, which
//! release at about the same time), so a script usually carries several grants.

use std::future::Future;
use std::sync::Arc;

use futures::channel::oneshot;

use super::{Engine, Generation, Held};
use crate::context::Siblings;
use crate::runtime::Runtime;
use crate::scripts::{Transferred, TRANSFER};
use crate::stats::Counters;
use crate::{Error, Result};

/// The most transfers in one script.
const MAX_BATCH: usize = 64;
/// The most scripts of transfers in flight at once for one semaphore on one context: more
/// pipeline better on a fast link, fewer carry more transfers each.
const MAX_IN_FLIGHT: usize = 2;

/// The transfers of one semaphore's siblings not sent yet.
#[derive(Debug)]
pub(crate) struct TransferBatch<R: Runtime> {
    pending: Vec<Pending<R>>,
    /// Tasks sending transfers now.
    senders: usize,
}

impl<R: Runtime> Default for TransferBatch<R> {
    fn default() -> Self {
        TransferBatch {
            pending: Vec::new(),
            senders: 0,
        }
    }
}

/// One permit on its way from one sibling to another.
#[derive(Debug)]
struct Pending<R: Runtime> {
    from: Arc<Engine<R>>,
    /// The giver's generation: the permit is disarmed, still counted as outstanding, with
    /// a call begun on it.
    gen: Arc<Generation>,
    handoffs: u32,
    to: Arc<Engine<R>>,
    /// The receiver's generation, reserved (a call begun on it).
    to_gen: Arc<Generation>,
    /// The giver's release learns here how it went; `None` for a release from `Drop`,
    /// whose failures are counted as background errors.
    done: Option<oneshot::Sender<Result<()>>>,
}

impl<R: Runtime> Pending<R> {
    fn report(self, out: Result<()>) {
        match self.done {
            Some(done) => {
                let _ = done.send(out);
            }
            None => {
                if let Err(e @ Error::Redis(_)) = out {
                    self.from.background_error("release from Drop", &e);
                }
            }
        }
    }
}

/// A sibling chosen to receive a permit, with its generation reserved.
pub(super) struct Taker<R: Runtime> {
    siblings: Arc<Siblings<R>>,
    to: Arc<Engine<R>>,
    to_gen: Arc<Generation>,
}

/// What is left to do after a transfer.
enum Landed {
    /// Nothing: the permit moved, or it comes back by other means.
    Done(Result<()>),
    /// Nothing moved: the permit of this generation goes back through the pool.
    GiveBack(Arc<Generation>),
}

impl<R: Runtime> Engine<R> {
    /// Gives a released permit back, not locally: to the sibling handle that waits
    /// longest, when the handoff limit allows, else through the pool.
    pub(crate) async fn release_remote(self: &Arc<Self>, held: Held<R>) -> Result<()> {
        match self.sibling_for(&held) {
            Some(taker) => {
                let (_, gen, handoffs) = held.disarm();
                self.transfer(gen, handoffs, taker).await
            }
            None => self.give_back(held.disarm().1).await,
        }
    }

    /// [`Engine::release_remote`] from `Drop`: queues a transfer to a waiting sibling and
    /// returns nothing, or hands `held` back when it must go through the pool.
    pub(super) fn release_to_sibling_detached(self: &Arc<Self>, held: Held<R>) -> Option<Held<R>> {
        let Some(taker) = self.sibling_for(&held) else {
            return Some(held);
        };
        let (_, gen, handoffs) = held.disarm();
        self.queue_transfer(gen, handoffs, taker, None);
        None
    }

    /// The sibling that waits longest for a permit, with its current generation reserved
    /// for the transfer; none when `held` must go back through the pool.
    pub(super) fn sibling_for(&self, held: &Held<R>) -> Option<Taker<R>> {
        let siblings = self.siblings_if_any()?;
        if !self.may_hand_over(held) {
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

    /// Moves the permit of `gen` (disarmed by the caller, still counted as outstanding)
    /// into the list of the taker's reserved generation, and hands it to that sibling's
    /// longest waiter. Falls back to the pool when the transfer is refused.
    ///
    /// Queued before the returned future is first polled: dropping it, polled or not,
    /// leaves the transfer (and the fallback) to complete on the runtime.
    pub(super) fn transfer(
        self: &Arc<Self>,
        gen: Arc<Generation>,
        handoffs: u32,
        taker: Taker<R>,
    ) -> impl Future<Output = Result<()>> {
        let (done, rx) = oneshot::channel();
        self.queue_transfer(gen, handoffs, taker, Some(done));
        // A sender never drops a transfer unanswered, unless the runtime drops it: the
        // permit then comes back by retirement or reclaim.
        async move { rx.await.unwrap_or(Ok(())) }
    }

    fn queue_transfer(
        self: &Arc<Self>,
        gen: Arc<Generation>,
        handoffs: u32,
        taker: Taker<R>,
        done: Option<oneshot::Sender<Result<()>>>,
    ) {
        gen.begin_call();
        let Taker {
            siblings,
            to,
            to_gen,
        } = taker;
        let start = {
            let mut batch = siblings.transfers();
            batch.pending.push(Pending {
                from: self.clone(),
                gen,
                handoffs,
                to,
                to_gen,
                done,
            });
            let start = batch.senders < MAX_IN_FLIGHT;
            if start {
                batch.senders += 1;
            }
            start
        };
        if start {
            let rt = self.rt.clone();
            // The guard is made here, not in the task: dropped unpolled (a runtime shut
            // down), the task still settles what it was started for.
            rt.spawn(send_transfers(Sending {
                siblings,
                batch: Vec::new(),
                finished: false,
            }));
        }
    }

    /// Settles one transfer; `reply` is `None` when the outcome is unknown.
    fn settle_transfer(self: &Arc<Self>, p: &Pending<R>, reply: Option<Transferred>) -> Landed {
        let (gen, to, to_gen) = (&p.gen, &p.to, &p.to_gen);
        // The giver's permit stays counted as outstanding until it is settled below, so
        // its generation cannot be retired in between.
        gen.end_call();
        let out = match reply {
            Some(Transferred::Moved(token)) => {
                // Counted in the receiver's generation before its call ends: it cannot be
                // retired in between either.
                let held = Held::new(to.clone(), to_gen.clone(), p.handoffs + 1).with_token(&token);
                to_gen.end_call();
                Counters::add(&self.counters.handed_to_siblings, 1);
                to.receive(held);
                if gen.is_lost() {
                    Err(Error::LeaseLost)
                } else {
                    Ok(())
                }
            }
            Some(Transferred::FromEmpty) => {
                // The giver's lease expired and its permits were reclaimed.
                to_gen.end_call();
                to.maybe_retire(to_gen);
                self.lose(gen);
                Err(Error::LeaseLost)
            }
            Some(Transferred::ToGone) => {
                to_gen.end_call();
                to.lose(to_gen);
                return Landed::GiveBack(gen.clone());
            }
            Some(Transferred::Refused) => {
                to_gen.end_call();
                to.maybe_retire(to_gen);
                return Landed::GiveBack(gen.clone());
            }
            None => {
                // The token is in one of the two lists: both generations, now dirty, give
                // back what their lists hold once drained (or their leases expire and any
                // client reclaims them). The permit comes back either way.
                gen.mark_dirty();
                to_gen.end_call();
                to.taint(to_gen);
                Ok(())
            }
        };
        gen.sub_outstanding();
        self.maybe_retire(gen);
        Landed::Done(out)
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

/// Sends the queued transfers of one semaphore's siblings, a script at a time, until none
/// is left.
async fn send_transfers<R: Runtime>(mut sending: Sending<R>) {
    loop {
        {
            let mut queued = sending.siblings.transfers();
            if queued.pending.is_empty() {
                queued.senders -= 1;
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
            match p.from.settle_transfer(&p, reply) {
                Landed::Done(out) => p.report(out),
                Landed::GiveBack(gen) => {
                    // Set up now, sent on the runtime: this sender goes on meanwhile.
                    let give_back = p.from.give_back(gen);
                    rt.get_or_insert_with(|| p.from.rt.clone());
                    give_backs.push(async move { p.report(give_back.await) });
                }
            }
        }
        if let Some(rt) = rt {
            rt.spawn(async move {
                futures::future::join_all(give_backs).await;
            });
        }
    }
}

/// One script for `batch`; per transfer its reply, or `None` when the outcome is unknown.
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
    match inv.invoke_async::<Vec<Transferred>>(&mut conn).await {
        Ok(replies) if replies.len() == batch.len() => replies.into_iter().map(Some).collect(),
        // A script that failed part way may have moved some tokens: every transfer of
        // the batch is of unknown outcome (an error reply included).
        Ok(_) => unknown(),
        Err(e) => {
            if e.code().is_some() {
                engine.background_error("transfer", &e);
            }
            unknown()
        }
    }
}

/// A sender of transfers; dropped unfinished (the runtime shutting down), it settles what
/// it and the queue still hold as of unknown outcome, so that no generation stays
/// reserved forever and every permit comes back by retirement or reclaim.
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
            q.senders = q.senders.saturating_sub(1);
            std::mem::take(&mut q.pending)
        };
        for p in std::mem::take(&mut self.batch).into_iter().chain(queued) {
            if let Landed::Done(out) = p.from.settle_transfer(&p, None) {
                p.report(out);
            }
        }
    }
}
