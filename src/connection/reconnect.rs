//! A connection that is opened once for every caller that needs it, and replaced (only
//! the one that failed) when a request on it breaks or misses its deadline.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::future::{BoxFuture, FutureExt, Shared};
use redis::RedisResult;

type Connecting<C> = Shared<BoxFuture<'static, RedisResult<C>>>;

/// Opens a new connection.
pub(crate) type Opener<C> = Arc<dyn Fn() -> BoxFuture<'static, RedisResult<C>> + Send + Sync>;

enum Slot<C: Clone> {
    Empty,
    /// One connection attempt shared by every caller that needs it now.
    Connecting(u64, Connecting<C>),
    Ready(u64, C),
}

/// The current connection of type `C` (cheap to clone: a multiplexed handle), with the
/// epoch that numbers it, so that a failure replaces only the connection that failed.
pub(crate) struct Reconnecting<C: Clone> {
    open: Opener<C>,
    slot: Mutex<Slot<C>>,
    next_epoch: AtomicU64,
}

impl<C> Reconnecting<C>
where
    C: Clone + Send + Sync + 'static,
{
    pub(crate) fn new(open: Opener<C>) -> Self {
        Reconnecting {
            open,
            slot: Mutex::new(Slot::Empty),
            next_epoch: AtomicU64::new(0),
        }
    }

    fn slot(&self) -> MutexGuard<'_, Slot<C>> {
        // Every critical section only swaps a value: a panic cannot leave it inconsistent.
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current connection, opening one (once, for every caller) when there is none.
    pub(crate) async fn get(&self) -> RedisResult<(u64, C)> {
        let (epoch, fut) = {
            let mut slot = self.slot();
            match &*slot {
                Slot::Ready(epoch, c) => return Ok((*epoch, c.clone())),
                Slot::Connecting(epoch, f) => (*epoch, f.clone()),
                Slot::Empty => {
                    let epoch = self.next_epoch.fetch_add(1, Ordering::Relaxed);
                    let f = (self.open)().shared();
                    *slot = Slot::Connecting(epoch, f.clone());
                    (epoch, f)
                }
            }
        };
        let res = fut.await;
        let mut slot = self.slot();
        let ours = matches!(&*slot, Slot::Connecting(e, _) if *e == epoch);
        match res {
            Ok(c) => {
                if ours {
                    *slot = Slot::Ready(epoch, c.clone());
                }
                Ok((epoch, c))
            }
            Err(e) => {
                // The next caller tries again.
                if ours {
                    *slot = Slot::Empty;
                }
                Err(e)
            }
        }
    }

    /// Drops connection `epoch` if it is still the current one.
    pub(crate) fn replace(&self, epoch: u64) {
        let mut slot = self.slot();
        if matches!(&*slot, Slot::Ready(e, _) if *e == epoch) {
            *slot = Slot::Empty;
        }
    }

    /// Drops the current connection: the next request opens a new one. Requests in flight
    /// on the old one keep it until they end (each has its deadline). A connection being
    /// opened is kept: it is new already, and its callers would otherwise wait for it
    /// while the next request opens another.
    pub(crate) fn reset(&self) {
        let mut slot = self.slot();
        if matches!(&*slot, Slot::Ready(..)) {
            *slot = Slot::Empty;
        }
    }
}
