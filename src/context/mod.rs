//! A context: what any number of primitives of one process share on one Redis (a server,
//! a Sentinel-managed primary, or a cluster): the runtime, one multiplexed connection for
//! everything but blocking waits, a bounded pool of dedicated connections for those, and
//! one lease watchdog.

mod pool;
mod siblings;
mod watchdog;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures::channel::oneshot;
use futures::future::FutureExt;

use crate::connection::{Conn, Sleeper, Source};
use crate::engine::Engine;
use crate::runtime::Runtime;
use crate::{Error, Result};

pub(crate) use pool::{BlockingPool, Lent};
pub(crate) use siblings::Siblings;
pub(crate) use watchdog::RenewalClock;

/// Where the context connects.
#[derive(Clone)]
// Made once per context or builder: the size of a `redis::Client` does not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Target {
    Client(redis::Client),
    #[cfg(feature = "cluster")]
    Cluster(Vec<redis::ConnectionInfo>),
    #[cfg(feature = "sentinel")]
    Sentinel(Arc<futures::lock::Mutex<redis::sentinel::SentinelClient>>),
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Client(c) => write!(f, "Client({})", c.get_connection_info().addr()),
            #[cfg(feature = "cluster")]
            Target::Cluster(nodes) => write!(f, "Cluster({} seed nodes)", nodes.len()),
            #[cfg(feature = "sentinel")]
            Target::Sentinel(_) => write!(f, "Sentinel"),
        }
    }
}

/// Settings of a context.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub response_timeout: Duration,
    /// The most dedicated blocking connections open at once.
    pub max_blocking: usize,
    /// Refuse servers whose eviction policy can delete keys (the primitives' default).
    pub check_eviction: bool,
}

/// One context; primitives hold it alive, the watchdog does not.
pub(crate) struct Context<R: Runtime> {
    pub rt: R,
    pub conn: Conn,
    pub pool: Arc<BlockingPool>,
    pub settings: Settings,
    /// Servers whose eviction policy was checked.
    checked: Mutex<HashSet<String>>,
    engines: Mutex<Vec<Weak<Engine<R>>>>,
    /// The handles of each semaphore (by pool key) that hand permits to each other.
    siblings: Mutex<HashMap<String, Weak<Siblings<R>>>>,
    wake: Mutex<Option<oneshot::Sender<()>>>,
    closed: AtomicBool,
}

impl<R: Runtime> std::fmt::Debug for Context<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("conn", &self.conn)
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

impl<R: Runtime> Context<R> {
    /// Connects (a wrong address or credentials fail here), loads the scripts and starts
    /// the watchdog.
    pub(crate) async fn connect(
        target: Target,
        settings: Settings,
        rt: Option<R>,
    ) -> Result<Arc<Self>> {
        let rt = match rt {
            Some(rt) => rt,
            None => R::try_current()?,
        };
        if settings.response_timeout.is_zero()
            || settings.response_timeout > crate::engine::MAX_RESPONSE_TIMEOUT
        {
            return Err(Error::InvalidArgument(crate::Invalid::ResponseTimeout(
                settings.response_timeout,
            )));
        }
        if settings.max_blocking == 0 {
            return Err(Error::InvalidArgument(
                crate::Invalid::NoBlockingConnections,
            ));
        }
        let sleeper_rt = rt.clone();
        let sleep: Sleeper = Arc::new(move |d| sleeper_rt.sleep(d).boxed());
        let timeout = settings.response_timeout;
        let conn = match target {
            Target::Client(client) => {
                let client = crate::connection::with_tcp_settings(&client)?;
                Conn::single(Source::Fixed(client), timeout, sleep).await?
            }
            #[cfg(feature = "cluster")]
            Target::Cluster(nodes) => Conn::cluster(nodes, timeout, sleep).await?,
            #[cfg(feature = "sentinel")]
            Target::Sentinel(sentinel) => {
                Conn::single(Source::Sentinel(sentinel), timeout, sleep).await?
            }
        };
        // Loaded now: spares the first renewal (and acquire) the NOSCRIPT round trips,
        // which on a slow link could cost a lease.
        crate::scripts::load_all(&conn).await?;
        let ctx = Arc::new(Context {
            rt,
            conn,
            pool: BlockingPool::new(settings.max_blocking),
            settings,
            checked: Mutex::new(HashSet::new()),
            engines: Mutex::new(Vec::new()),
            siblings: Mutex::new(HashMap::new()),
            wake: Mutex::new(None),
            closed: AtomicBool::new(false),
        });
        watchdog::spawn(&ctx);
        Ok(ctx)
    }

    /// Checks (once per server) that the server owning `key` does not evict keys.
    pub(crate) async fn check_eviction(&self, key: &str) -> Result<()> {
        let node = self.conn.node_of(key).await?;
        if lock(&self.checked).contains(&node) {
            return Ok(());
        }
        self.conn.check_eviction_policy(key).await?;
        lock(&self.checked).insert(node);
        Ok(())
    }

    /// Adds a primitive to the watchdog.
    pub(crate) fn register(&self, engine: &Arc<Engine<R>>) {
        lock(&self.engines).push(Arc::downgrade(engine));
        self.wake();
    }

    /// The queue shared by the handles of the semaphore whose pool is `pool` (see
    /// [`Siblings`]); kept while one of them lives.
    pub(crate) fn siblings(&self, pool: &str) -> Arc<Siblings<R>> {
        let mut map = lock(&self.siblings);
        if let Some(s) = map.get(pool).and_then(Weak::upgrade) {
            return s;
        }
        // Forget the semaphores nobody uses any more before the map would grow.
        if map.len() == map.capacity() {
            map.retain(|_, w| w.strong_count() > 0);
        }
        let s = Arc::new(Siblings::new());
        map.insert(pool.to_owned(), Arc::downgrade(&s));
        s
    }

    fn unregister(&self, engine: &Arc<Engine<R>>) {
        lock(&self.engines).retain(|w| !std::ptr::eq(w.as_ptr(), Arc::as_ptr(engine)));
    }

    /// The live primitives (dropped ones are forgotten).
    pub(crate) fn engines(&self) -> Vec<Arc<Engine<R>>> {
        let mut engines = lock(&self.engines);
        engines.retain(|w| w.strong_count() > 0);
        engines.iter().filter_map(Weak::upgrade).collect()
    }

    fn arm_wake(&self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        *lock(&self.wake) = Some(tx);
        rx
    }

    /// Wakes the watchdog to look at every primitive again.
    pub(crate) fn wake(&self) {
        if let Some(tx) = lock(&self.wake).take() {
            let _ = tx.send(());
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// No new primitives; closes idle connections.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.pool.close_idle();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a few field updates: recover from poisoning.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
