//! The bounded pool of dedicated connections that blocking waits use, shared by every
//! primitive of a context.
//!
//! At most `cap` connections are open (lent, idle or being opened). A pump that finds
//! none free queues, first come first served; while anyone queues, every blocking wait is
//! short (a slice) and its connection goes back to the pool after each wait, so the
//! connections rotate over every primitive that has waiters, and a long wait already on
//! the server is cut short (`CLIENT UNBLOCK`) to make room. Connections are pooled by
//! server: in a cluster, a free connection to another node is closed to open one to the
//! node a queued wait needs.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::channel::oneshot;
use redis::aio::MultiplexedConnection;

use crate::connection::Conn;
use crate::stats::OpenConnection;

/// A dedicated connection, its Redis client id (by which another connection can cut its
/// wait short with `CLIENT UNBLOCK`) and the server it is connected to.
#[derive(Debug)]
pub(crate) struct BlockingConn {
    pub conn: MultiplexedConnection,
    pub id: i64,
    /// The server it is connected to (see `Conn::dedicated`).
    pub node: String,
    /// Counted in the context's open blocking connections while it lives.
    _open: OpenConnection,
}

/// What the pool hands a queued checkout: the right to one connection, with a free one
/// when there is one. Dropped unused (its checkout was cancelled), it goes back.
struct Grant {
    pool: Arc<BlockingPool>,
    conn: Option<BlockingConn>,
    armed: bool,
}

impl Drop for Grant {
    fn drop(&mut self) {
        if self.armed {
            self.pool.put_back(self.conn.take());
        }
    }
}

struct Lending {
    ticket: u64,
    /// Fired to ask the wait on this connection to end early; set while it blocks long.
    preempt: Option<oneshot::Sender<()>>,
}

#[derive(Default)]
struct PoolState {
    /// Connections open, lent or idle, plus those being opened.
    used: usize,
    idle: Vec<BlockingConn>,
    /// Checkouts waiting for a connection, oldest first, with the server each needs.
    queue: VecDeque<(String, oneshot::Sender<Grant>)>,
    lent: Vec<Lending>,
    next_ticket: u64,
}

/// The pool of a context.
pub(crate) struct BlockingPool {
    cap: usize,
    state: Mutex<PoolState>,
    /// Open dedicated connections, for stats.
    pub(crate) open: Arc<AtomicUsize>,
    /// Checkouts waiting now, for stats.
    queued: AtomicUsize,
}

impl std::fmt::Debug for BlockingPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockingPool")
            .field("cap", &self.cap)
            .field("open", &self.open.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// A pooled connection lent to one pump; it goes back to the pool when dropped, unless
/// it was [discarded](Lent::discard).
#[derive(Debug)]
pub(crate) struct Lent {
    pool: Arc<BlockingPool>,
    conn: Option<BlockingConn>,
    ticket: u64,
}

impl Lent {
    pub(crate) fn conn(&mut self) -> Option<&mut BlockingConn> {
        self.conn.as_mut()
    }

    /// The connection is broken or its state unknown: close it; its place in the pool
    /// goes to the next checkout.
    pub(crate) fn discard(mut self) {
        self.conn = None;
    }

    /// Starts a wait on this connection: long when nobody queues for a connection (then
    /// the returned signal asks it to end early if somebody starts queueing), else a
    /// slice. Returns the block time and that signal.
    pub(crate) fn begin_wait(
        &self,
        long: Duration,
        slice: Duration,
        preemptible: bool,
    ) -> (Duration, Option<oneshot::Receiver<()>>) {
        let mut st = self.pool.state();
        if !st.queue.is_empty() {
            return (slice.min(long), None);
        }
        if !preemptible {
            return (long, None);
        }
        let (tx, rx) = oneshot::channel();
        if let Some(l) = st.lent.iter_mut().find(|l| l.ticket == self.ticket) {
            l.preempt = Some(tx);
        }
        (long, Some(rx))
    }

    /// The wait ended: it can no longer be asked to end early.
    pub(crate) fn end_wait(&self) {
        let mut st = self.pool.state();
        if let Some(l) = st.lent.iter_mut().find(|l| l.ticket == self.ticket) {
            l.preempt = None;
        }
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        self.pool.unlend(self.ticket);
        self.pool.put_back(self.conn.take());
    }
}

enum Step {
    Ready(BlockingConn),
    Open,
    Wait(oneshot::Receiver<Grant>),
}

impl BlockingPool {
    pub(crate) fn new(cap: usize) -> Arc<Self> {
        Arc::new(BlockingPool {
            cap,
            state: Mutex::new(PoolState::default()),
            open: Arc::new(AtomicUsize::new(0)),
            queued: AtomicUsize::new(0),
        })
    }

    fn state(&self) -> MutexGuard<'_, PoolState> {
        // Every critical section is a few field updates: recover from poisoning.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True while checkouts queue for a connection: waits should be short and give their
    /// connection back after each turn.
    pub(crate) fn contended(&self) -> bool {
        self.queued.load(Ordering::Relaxed) > 0
    }

    /// Checkouts waiting for a connection now.
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    /// A connection to the server that owns `key`, for waits of up to `longest_block`:
    /// a free one, a new one while under the cap, or, at the cap, the next one given back
    /// (first come, first served).
    ///
    /// Cancel safe: a connection granted to a cancelled checkout goes back to the pool.
    pub(crate) async fn checkout(
        self: &Arc<Self>,
        conn: &Conn,
        key: &str,
        longest_block: Duration,
    ) -> redis::RedisResult<Lent> {
        let node = conn.node_of(key).await?;
        let step = {
            let mut st = self.state();
            if let Some(i) = st.idle.iter().position(|c| c.node == node) {
                Step::Ready(st.idle.swap_remove(i))
            } else if st.used < self.cap {
                st.used += 1;
                Step::Open
            } else if !st.idle.is_empty() {
                // A free connection to another node: closed, its place used for this one.
                st.idle.swap_remove(0);
                Step::Open
            } else {
                let (tx, rx) = oneshot::channel();
                st.queue.push_back((node.clone(), tx));
                self.queued.fetch_add(1, Ordering::Relaxed);
                // Ask one long wait to end early and make room.
                if let Some(preempt) = st.lent.iter_mut().find_map(|l| l.preempt.take()) {
                    let _ = preempt.send(());
                }
                Step::Wait(rx)
            }
        };
        let reuse = match step {
            Step::Ready(c) => return Ok(self.lend(Some(c))),
            Step::Open => None,
            Step::Wait(rx) => {
                let granted = rx.await;
                match granted {
                    Ok(mut grant) => {
                        grant.armed = false;
                        grant.conn.take().filter(|c| c.node == node)
                    }
                    // The pool cannot drop a queued sender while it lives: treat as a
                    // closed context.
                    Err(_) => {
                        return Err(redis::RedisError::from((
                            redis::ErrorKind::Client,
                            "the blocking connection pool is gone",
                        )))
                    }
                }
            }
        };
        // From here this checkout owns one place in the pool.
        let mut lent = self.lend(reuse);
        if lent.conn.is_none() {
            lent.conn = Some(self.open_one(conn, key, longest_block).await?);
        }
        Ok(lent)
    }

    /// Opens a connection to the server that owns `key` and asks its client id.
    async fn open_one(
        &self,
        conn: &Conn,
        key: &str,
        longest_block: Duration,
    ) -> redis::RedisResult<BlockingConn> {
        let (mut c, node) = conn.dedicated(key, longest_block).await?;
        let _open = OpenConnection::new(&self.open);
        let id: i64 = redis::cmd("CLIENT").arg("ID").query_async(&mut c).await?;
        Ok(BlockingConn {
            conn: c,
            id,
            node,
            _open,
        })
    }

    fn lend(self: &Arc<Self>, conn: Option<BlockingConn>) -> Lent {
        let mut st = self.state();
        st.next_ticket += 1;
        let ticket = st.next_ticket;
        st.lent.push(Lending {
            ticket,
            preempt: None,
        });
        Lent {
            pool: self.clone(),
            conn,
            ticket,
        }
    }

    fn unlend(&self, ticket: u64) {
        self.state().lent.retain(|l| l.ticket != ticket);
    }

    /// A place in the pool comes back, with its connection if it is still usable: to a
    /// queued checkout, else idle (or closed). The checkout served is the oldest one for
    /// the connection's server among the first `cap` queued, so that a connection is
    /// reused rather than closed and opened again elsewhere (a cluster's waits need
    /// different nodes), else the oldest: nobody waits more than `cap` turns behind
    /// checkouts for other servers.
    fn put_back(self: &Arc<Self>, mut conn: Option<BlockingConn>) {
        loop {
            let next = {
                let mut st = self.state();
                let same_node = conn.as_ref().and_then(|c| {
                    st.queue
                        .iter()
                        .take(self.cap)
                        .position(|(node, _)| *node == c.node)
                });
                match same_node
                    .and_then(|i| st.queue.remove(i))
                    .or_else(|| st.queue.pop_front())
                {
                    Some((_, tx)) => {
                        self.queued.fetch_sub(1, Ordering::Relaxed);
                        tx
                    }
                    None => {
                        match conn.take() {
                            Some(c) => st.idle.push(c),
                            None => st.used -= 1,
                        }
                        return;
                    }
                }
            };
            // Sent outside the lock: a grant dropped on a failed send re-enters here.
            let grant = Grant {
                pool: self.clone(),
                conn: conn.take(),
                armed: true,
            };
            match next.send(grant) {
                Ok(()) => return,
                Err(mut grant) => {
                    // That checkout was cancelled: the next one gets it.
                    grant.armed = false;
                    conn = grant.conn.take();
                }
            }
        }
    }

    /// Closes every idle connection (their places are freed).
    pub(crate) fn close_idle(&self) {
        let mut st = self.state();
        let n = st.idle.len();
        st.idle.clear();
        st.used -= n;
    }
}
