//! A holder generation: one lease in Redis and the list of what it holds.
//!
//! A handle starts a new generation when its lease is lost, or when a Redis call that could
//! have taken or given back a token ended without a known outcome (the connection died
//! mid-call). Such a "dirty" generation keeps its lease until its last local permit is gone,
//! then is retired: whatever is still in its list (the token of that unknown outcome, if
//! it was taken) goes back to the pool. This is how no permit is ever lost to an
//! unanswered request.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use futures::channel::oneshot;
use futures::future::{FutureExt, Shared};

pub(crate) type LostSignal = Shared<oneshot::Receiver<()>>;

#[derive(Debug)]
pub(crate) struct Generation {
    /// The holder id in the lease set.
    pub id: String,
    /// The key of its held list.
    pub held_key: String,
    lost: AtomicBool,
    dirty: AtomicBool,
    retired: AtomicBool,
    /// Permits granted under this generation and not yet given back (guards, detached
    /// permits, permits in transit to a waiter).
    outstanding: AtomicUsize,
    /// Redis calls in flight that may add a token to the held list.
    inflight: AtomicUsize,
    /// After this instant the lease has certainly expired on the server (the last renewal
    /// reply plus the lease time).
    expires_by: Mutex<Instant>,
    lost_tx: Mutex<Option<oneshot::Sender<()>>>,
    lost_rx: LostSignal,
}

impl Generation {
    pub(crate) fn new(id: String, held_key: String, expires_by: Instant) -> Self {
        let (tx, rx) = oneshot::channel();
        Generation {
            id,
            held_key,
            lost: AtomicBool::new(false),
            dirty: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            outstanding: AtomicUsize::new(0),
            inflight: AtomicUsize::new(0),
            expires_by: Mutex::new(expires_by),
            lost_tx: Mutex::new(Some(tx)),
            lost_rx: rx.shared(),
        }
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::Acquire)
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

    pub(crate) fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Release);
    }

    pub(crate) fn lost_signal(&self) -> LostSignal {
        self.lost_rx.clone()
    }

    pub(crate) fn add_outstanding(&self) {
        self.outstanding.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn sub_outstanding(&self) {
        self.outstanding.fetch_sub(1, Ordering::AcqRel);
    }

    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Acquire)
    }

    pub(crate) fn begin_call(&self) {
        self.inflight.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn end_call(&self) {
        self.inflight.fetch_sub(1, Ordering::AcqRel);
    }

    /// A dirty generation with nothing outstanding and nothing in flight can be retired.
    /// Returns true exactly once, to the caller that must retire it.
    pub(crate) fn claim_retirement(&self) -> bool {
        self.is_dirty()
            && self.outstanding() == 0
            && self.inflight.load(Ordering::Acquire) == 0
            && !self.retired.swap(true, Ordering::AcqRel)
    }

    pub(crate) fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    pub(crate) fn renewed(&self, expires_by: Instant) {
        if let Ok(mut e) = self.expires_by.lock() {
            *e = expires_by;
        }
    }

    pub(crate) fn certainly_expired(&self, now: Instant) -> bool {
        self.expires_by.lock().map(|e| now >= *e).unwrap_or(true)
    }
}
