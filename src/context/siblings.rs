//! Handles of one semaphore on one context ("siblings") hand permits to each other.
//!
//! Every handle has its own holder in Redis (its own lease, its own list, its own
//! `LeaseLost`), so a permit released by one handle cannot simply go to a task of another,
//! as local handoff does between the tasks of one handle. Without help it goes back to the
//! pool (one script) and a sibling's blocked `BLMOVE` takes it (one blocking round trip on a
//! dedicated connection). With help, the releasing handle asks this queue which sibling
//! waits longest, hands the permit to that sibling's task at once, and the move of the
//! token into that sibling's list follows in a script (`TRANSFER`) on the shared, pipelined
//! connection (see `engine::transfer`). The handoff limit still bounds how many times in
//! a row a permit stays among the handles of this process before it goes back through the
//! pool, where other processes' waiters get their turn.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use crate::engine::{Engine, TransferBatch};
use crate::runtime::Runtime;

/// The queue of waits of every sibling of one semaphore, longest first: one entry per
/// local wait (the handle and the wait's number in its own queue). Entries of waits served
/// or given up meanwhile are skipped and dropped when they reach the front.
#[derive(Debug)]
pub(crate) struct Siblings<R: Runtime> {
    waits: Mutex<VecDeque<(Weak<Engine<R>>, u64)>>,
    /// Transfers waiting to be sent, several to a script (see `engine::transfer`).
    transfers: Mutex<TransferBatch<R>>,
    /// Until this instant permits go back through the pool, not to siblings: a request
    /// for several permits or a lowered count waits for them there.
    paused_until: Mutex<Option<Instant>>,
}

impl<R: Runtime> Siblings<R> {
    pub(crate) fn new() -> Self {
        Siblings {
            waits: Mutex::new(VecDeque::new()),
            transfers: Mutex::new(TransferBatch::default()),
            paused_until: Mutex::new(None),
        }
    }

    /// Sends permits back through the pool for `d` from now.
    pub(crate) fn pause(&self, d: Duration) {
        let until = Instant::now() + d;
        let mut p = self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        *p = Some(p.map_or(until, |old| old.max(until)));
    }

    /// Whether permits go back through the pool now (see [`Siblings::pause`]).
    pub(crate) fn is_paused(&self) -> bool {
        let mut p = self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        match *p {
            Some(until) if Instant::now() < until => true,
            Some(_) => {
                *p = None;
                false
            }
            None => false,
        }
    }

    /// The transfers waiting to be sent.
    pub(crate) fn transfers(&self) -> MutexGuard<'_, TransferBatch<R>> {
        self.transfers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn waits(&self) -> MutexGuard<'_, VecDeque<(Weak<Engine<R>>, u64)>> {
        // A few field updates per critical section: recover from poisoning.
        self.waits.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that `engine` queued its wait number `seq`. Never called under the engine's
    /// state lock (this queue's lock is taken first, see [`Siblings::longest`]).
    pub(crate) fn note_wait(&self, engine: &Arc<Engine<R>>, seq: u64) {
        let mut waits = self.waits();
        drop_stale_front(&mut waits);
        waits.push_back((Arc::downgrade(engine), seq));
    }

    /// The sibling other than `giver` whose wait is the longest still queued; its entry is
    /// taken (a second permit for the same handle needs another entry).
    pub(crate) fn longest(&self, giver: &Engine<R>) -> Option<Arc<Engine<R>>> {
        let mut waits = self.waits();
        while let Some((weak, seq)) = waits.pop_front() {
            let Some(engine) = weak.upgrade() else {
                continue;
            };
            if std::ptr::eq(Arc::as_ptr(&engine), giver) || !engine.is_waiting(seq) {
                continue;
            }
            return Some(engine);
        }
        None
    }
}

/// Drops the entries at the front whose wait is over, so that the queue stays as long as
/// the span of waits still queued.
fn drop_stale_front<R: Runtime>(waits: &mut VecDeque<(Weak<Engine<R>>, u64)>) {
    while let Some((weak, seq)) = waits.front() {
        match weak.upgrade() {
            Some(engine) if engine.is_waiting(*seq) => return,
            _ => {
                waits.pop_front();
            }
        }
    }
}
