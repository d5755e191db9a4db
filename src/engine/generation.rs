//! A holder generation: one lease in Redis and the list of what it holds.
//!
//! A handle starts a new generation when its lease is lost, or when a Redis call that could
//! have taken or given back a token ended without a known outcome (the connection died
//! mid-call). Such a "dirty" generation keeps its lease until its last local permit is gone,
//! then is retired: whatever is still in its list (the token of that unknown outcome, if
//! it was taken) goes back to the pool. This is how no permit is ever lost to an
//! unanswered request.

use std::sync::{Arc, Weak};
use std::time::Instant;

use futures::channel::oneshot;
use futures::future::{FutureExt, Shared};

use crate::sync::{AtomicBool, AtomicU64, Mutex, Ordering};

pub(crate) type LostSignal = Shared<oneshot::Receiver<()>>;

const OUTSTANDING_ONE: u64 = 1;
const INFLIGHT_ONE: u64 = 1 << 31;
const DIRTY: u64 = 1 << 62;
const RETIRED: u64 = 1 << 63;

/// One generation's part in a [`Group`]: how to retire it and how to mark it lost, on
/// its own handle (closures, so that generations need not know the runtime type).
pub(crate) struct Member {
    pub(crate) gen: Weak<Generation>,
    /// Retires it if nobody else did (its engine claims the retirement).
    pub(crate) retire: Arc<dyn Fn() + Send + Sync>,
    pub(crate) lose: Arc<dyn Fn() + Send + Sync>,
}

/// Generations entangled by moves of permits between siblings whose outcome is uncertain
/// (see `engine::transfer`): a token may be in any of their lists while a task of another
/// uses it, so they are retired together, once every one of them is drained, and a lease
/// lost by one is lost by all.
#[derive(Default)]
pub(crate) struct Group {
    members: std::sync::Mutex<Vec<Member>>,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.members.lock().map(|m| m.len()).unwrap_or(0);
        f.debug_struct("Group").field("members", &n).finish()
    }
}

impl Group {
    fn members(&self) -> std::sync::MutexGuard<'_, Vec<Member>> {
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every member is dirty and drained (or gone).
    pub(crate) fn all_drained(&self) -> bool {
        self.members()
            .iter()
            .all(|m| m.gen.upgrade().map_or(true, |g| g.is_drained()))
    }

    /// Retires every member not retired yet. Called once all are drained: none can take
    /// a new permit or start a call any more.
    pub(crate) fn retire_all(&self) {
        let retire: Vec<_> = self.members().iter().map(|m| m.retire.clone()).collect();
        retire.iter().for_each(|f| f());
    }

    /// Marks every member lost (each only once: see `Generation::mark_lost`).
    pub(crate) fn lose_all(&self) {
        let lose: Vec<_> = self.members().iter().map(|m| m.lose.clone()).collect();
        lose.iter().for_each(|f| f());
    }

    fn contains(&self, gen: &Arc<Generation>) -> bool {
        self.members()
            .iter()
            .any(|m| std::ptr::eq(m.gen.as_ptr(), Arc::as_ptr(gen)))
    }
}

#[derive(Debug)]
pub(crate) struct Generation {
    /// The holder id in the lease set.
    pub id: String,
    /// The key of its held list.
    pub held_key: String,
    /// Its lease is one permit's hard lease: never renewed by the watchdog, only by
    /// `Permit::extend`.
    pub hard: bool,
    lost: AtomicBool,
    /// A sibling's permit moved into its list with an uncertain outcome (see
    /// `engine::transfer`): the list may lack a token for one of its permits, so permits
    /// are not given back one by one; retirement gives back whatever the list holds.
    entangled: AtomicBool,
    /// Dirty and retired flags and two counts in one word, so that retiring (dirty, nothing
    /// outstanding, nothing in flight) and reserving a call for a new grant can never
    /// interleave. Outstanding: permits granted under this generation and not yet given
    /// back (guards, detached permits, permits in transit to a waiter). In flight: Redis
    /// calls that may move a token into or out of the held list.
    word: AtomicU64,
    /// From this instant on, the lease may have expired on the server: the send time of
    /// the last successful renewal plus the lease, less a margin.
    expires_by: Mutex<Instant>,
    lost_tx: Mutex<Option<oneshot::Sender<()>>>,
    lost_rx: LostSignal,
    /// The generations it is entangled with, if any (see [`Group`]).
    group: std::sync::Mutex<Option<Arc<Group>>>,
    /// Loom seed check only: reserve with a separate check and add (see
    /// `loom_tests::seed_check_split_reserve_is_caught`).
    #[cfg(all(test, redis_sync_loom))]
    pub(crate) mutant_split_reserve: bool,
}

impl Generation {
    pub(crate) fn new(id: String, held_key: String, expires_by: Instant) -> Self {
        let (tx, rx) = oneshot::channel();
        Generation {
            id,
            held_key,
            hard: false,
            lost: AtomicBool::new(false),
            entangled: AtomicBool::new(false),
            word: AtomicU64::new(0),
            expires_by: Mutex::new(expires_by),
            lost_tx: Mutex::new(Some(tx)),
            lost_rx: rx.shared(),
            group: std::sync::Mutex::new(None),
            #[cfg(all(test, redis_sync_loom))]
            mutant_split_reserve: false,
        }
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    pub(crate) fn is_dirty(&self) -> bool {
        self.word.load(Ordering::SeqCst) & DIRTY != 0
    }

    /// Usable for new grants: neither lost nor dirty.
    pub(crate) fn is_usable(&self) -> bool {
        !self.is_lost() && !self.is_dirty()
    }

    /// Marks the lease lost and wakes everyone awaiting [`Self::lost_signal`].
    /// Returns true the first time.
    pub(crate) fn mark_lost(&self) -> bool {
        if self.lost.swap(true, Ordering::AcqRel) {
            return false;
        }
        if let Ok(mut tx) = self.lost_tx.lock() {
            if let Some(tx) = tx.take() {
                let _ = tx.send(());
            }
        }
        true
    }

    /// The generations this one is entangled with, if any.
    pub(crate) fn group(&self) -> Option<Arc<Group>> {
        self.group.lock().ok().and_then(|g| g.clone())
    }

    /// Entangles `a` and `b` (and the groups they are in already): calls for one
    /// semaphore are made by one task at a time (its siblings' sender).
    pub(crate) fn entangle(a: (&Arc<Generation>, Member), b: (&Arc<Generation>, Member)) {
        let group = a.0.group().or_else(|| b.0.group()).unwrap_or_default();
        for (gen, member) in [a, b] {
            match gen.group() {
                Some(g) if Arc::ptr_eq(&g, &group) => {}
                Some(other) => {
                    // Merged: every member of the other group joins this one.
                    let moved = std::mem::take(&mut *other.members());
                    for m in &moved {
                        if let Some(g) = m.gen.upgrade() {
                            g.set_group(&group);
                        }
                    }
                    group.members().extend(moved);
                }
                None => {
                    if !group.contains(gen) {
                        group.members().push(member);
                    }
                    gen.set_group(&group);
                }
            }
        }
    }

    fn set_group(&self, group: &Arc<Group>) {
        if let Ok(mut g) = self.group.lock() {
            *g = Some(group.clone());
        }
    }

    /// Dirty, with nothing outstanding and nothing in flight (retired or not).
    pub(crate) fn is_drained(&self) -> bool {
        self.word.load(Ordering::SeqCst) & !RETIRED == DIRTY
    }

    pub(crate) fn mark_entangled(&self) {
        self.entangled.store(true, Ordering::Release);
    }

    pub(crate) fn is_entangled(&self) -> bool {
        self.entangled.load(Ordering::Acquire)
    }

    pub(crate) fn mark_dirty(&self) {
        self.word.fetch_or(DIRTY, Ordering::SeqCst);
    }

    pub(crate) fn lost_signal(&self) -> LostSignal {
        self.lost_rx.clone()
    }

    /// Counts a newly granted permit. Only after a reserved call returned it, so the
    /// generation cannot be retired meanwhile.
    pub(crate) fn add_outstanding(&self) {
        self.word.fetch_add(OUTSTANDING_ONE, Ordering::SeqCst);
    }

    /// Permits granted under this generation and not yet given back.
    pub(crate) fn outstanding(&self) -> usize {
        (self.word.load(Ordering::SeqCst) & (INFLIGHT_ONE - 1)) as usize
    }

    pub(crate) fn sub_outstanding(&self) {
        self.word.fetch_sub(OUTSTANDING_ONE, Ordering::SeqCst);
    }

    /// Reserves a call that may grant a new permit: fails on a dirty, lost or retired
    /// generation (then take the current one again).
    pub(crate) fn try_reserve(&self) -> bool {
        if self.is_lost() {
            return false;
        }
        #[cfg(all(test, redis_sync_loom))]
        if self.mutant_split_reserve {
            // The bug this guards against: check, then count, in two steps.
            if self.word.load(Ordering::SeqCst) & (DIRTY | RETIRED) != 0 {
                return false;
            }
            self.word.fetch_add(INFLIGHT_ONE, Ordering::SeqCst);
            return true;
        }
        self.word
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                (w & (DIRTY | RETIRED) == 0).then_some(w + INFLIGHT_ONE)
            })
            .is_ok()
    }

    /// Starts a call on behalf of a permit still counted as outstanding (a give-back, a
    /// consume): allowed on a dirty generation, which cannot be retired while the permit
    /// is counted.
    pub(crate) fn begin_call(&self) {
        self.word.fetch_add(INFLIGHT_ONE, Ordering::SeqCst);
    }

    pub(crate) fn end_call(&self) {
        self.word.fetch_sub(INFLIGHT_ONE, Ordering::SeqCst);
    }

    /// A dirty generation with nothing outstanding and nothing in flight can be retired.
    /// Returns true exactly once, to the caller that must retire it.
    pub(crate) fn claim_retirement(&self) -> bool {
        self.word
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                (w == DIRTY).then_some(w | RETIRED)
            })
            .is_ok()
    }

    pub(crate) fn is_retired(&self) -> bool {
        self.word.load(Ordering::SeqCst) & RETIRED != 0
    }

    /// The word decoded, for the loom tests: (outstanding, in flight, dirty, retired).
    #[cfg(all(test, redis_sync_loom))]
    pub(crate) fn decode(&self) -> (u64, u64, bool, bool) {
        let w = self.word.load(Ordering::SeqCst);
        (
            w & (INFLIGHT_ONE - 1),
            (w & (DIRTY - 1)) >> 31,
            w & DIRTY != 0,
            w & RETIRED != 0,
        )
    }

    /// A renewal sent earlier succeeded: the lease lasts at least until `expires_by`.
    /// Replies of concurrent renewals may arrive out of order: the latest deadline wins.
    pub(crate) fn renewed(&self, expires_by: Instant) {
        if let Ok(mut e) = self.expires_by.lock() {
            *e = (*e).max(expires_by);
        }
    }

    /// After this instant the lease may have expired on the server (conservative: counted
    /// from when the last successful renewal was sent, less a margin).
    pub(crate) fn expires_by(&self) -> Instant {
        self.expires_by
            .lock()
            .map(|e| *e)
            .unwrap_or_else(|_| Instant::now())
    }

    pub(crate) fn certainly_expired(&self, now: Instant) -> bool {
        now >= self.expires_by()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gen() -> Generation {
        Generation::new("h-0".into(), "k".into(), Instant::now())
    }

    #[test]
    fn retires_only_when_dirty_and_drained() {
        let g = gen();
        assert!(g.try_reserve());
        g.mark_dirty();
        assert!(!g.claim_retirement(), "a call is in flight");
        g.add_outstanding();
        g.end_call();
        assert!(!g.claim_retirement(), "a permit is outstanding");
        g.begin_call();
        g.sub_outstanding();
        assert!(!g.claim_retirement(), "its give-back is in flight");
        g.end_call();
        assert!(g.claim_retirement());
        assert!(!g.claim_retirement(), "claimed once");
        assert!(g.is_retired());
    }

    #[test]
    fn no_new_grant_on_a_dirty_lost_or_retired_generation() {
        let g = gen();
        g.mark_dirty();
        assert!(!g.try_reserve());
        let g = gen();
        g.mark_lost();
        assert!(!g.try_reserve());
        let g = gen();
        assert!(!g.claim_retirement(), "a clean generation is never retired");
        assert!(g.try_reserve());
    }
}
