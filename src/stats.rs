//! What a handle has done and holds, counted in the process: no Redis call to read it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// A snapshot of one handle's activity, from [`Semaphore::stats`](crate::Semaphore::stats)
/// or [`Event::stats`](crate::Event::stats): plain numbers, cheap to read (no Redis call),
/// in the style of deadpool's `Status`.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(sem: redis_sync::Semaphore<redis_sync::Tokio>) -> redis_sync::Result<()> {
/// let s = sem.stats();
/// println!("{} waiting, {} held, {} granted, {} timed out, {} leases lost",
///          s.waiting, s.held, s.grants, s.timeouts, s.lost_leases);
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Tasks of this handle waiting for a permit (or a signal) now.
    pub waiting: usize,
    /// Permits (or taken signals) this handle holds now, guards and detached ones.
    pub held: usize,
    /// Permits (or signals) granted to this handle since it started.
    pub grants: u64,
    /// Waits of this handle that ended with [`Error::Timeout`](crate::Error::Timeout).
    pub timeouts: u64,
    /// Leases of this handle found lost while permits were out under them (each may have
    /// held several permits).
    pub lost_leases: u64,
    /// Permits of expired holders (other handles, crashed processes) this handle gave back
    /// to the pool by its reclaims.
    pub reclaimed: u64,
    /// Failures of background work (renewals, releases from `Drop`, reclaims, retirement):
    /// never silently dropped; also traced with the `tracing` feature.
    pub background_errors: u64,
    /// Dedicated blocking connections open now.
    pub blocking_connections: usize,
    /// Permits this handle released straight to another handle of the same semaphore on
    /// the same coordinator (one `TRANSFER` script each, no blocking wait).
    pub handed_to_siblings: u64,
}

impl Stats {
    /// Adds `other` to this (for a coordinator's totals).
    pub(crate) fn accumulate(&mut self, other: &Stats) {
        self.waiting += other.waiting;
        self.held += other.held;
        self.grants += other.grants;
        self.timeouts += other.timeouts;
        self.lost_leases += other.lost_leases;
        self.reclaimed += other.reclaimed;
        self.background_errors += other.background_errors;
        self.blocking_connections += other.blocking_connections;
        self.handed_to_siblings += other.handed_to_siblings;
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub grants: AtomicU64,
    pub timeouts: AtomicU64,
    pub lost_leases: AtomicU64,
    pub reclaimed: AtomicU64,
    pub background_errors: AtomicU64,
    pub blocking_connections: Arc<AtomicUsize>,
    pub handed_to_siblings: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, waiting: usize, held: usize) -> Stats {
        Stats {
            waiting,
            held,
            grants: self.grants.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            lost_leases: self.lost_leases.load(Ordering::Relaxed),
            reclaimed: self.reclaimed.load(Ordering::Relaxed),
            background_errors: self.background_errors.load(Ordering::Relaxed),
            blocking_connections: self.blocking_connections.load(Ordering::Relaxed),
            handed_to_siblings: self.handed_to_siblings.load(Ordering::Relaxed),
        }
    }
}

/// Counts one open blocking connection for as long as it lives.
#[derive(Debug)]
pub(crate) struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    pub(crate) fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        OpenConnection(count.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
