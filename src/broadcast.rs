//! What the broadcast primitives ([`Notify`](crate::Notify) and
//! [`CountDownLatch`](crate::CountDownLatch)) share: a gate that wakes every blocked
//! waiter at once, a generation counter that makes wake-ups reliable, and one pump per
//! handle that blocks on Redis for all of that handle's waiters.
//!
//! **The gate** is a list. While the primitive is open (a notify set, a latch at zero) it
//! holds the element `set`; for the instant of a `notify_waiters` it holds `n`. A pump
//! blocks in `BLMOVE gate gate LEFT RIGHT <secs>`: the element goes back into the same
//! list, so when it is pushed, Redis serves every client blocked on the key one after the
//! other (it serves blocked clients after each command, never inside a script or
//! `MULTI`).
//!
//! **The generation** is a hash `{epoch, n}`: every `set`, `notify_waiters` and latch
//! reaching zero increments `n` in the same script that pushes the element. A waiter reads
//! the generation when it starts waiting (with the state, in one script); after *any*
//! return of a blocking wait (an element, a timeout, an error, a killed connection) its
//! pump reads again and wakes it if the primitive is open or the generation moved on. So a
//! wake-up is never missed, even by a waiter whose connection died just before the push,
//! or when the gate was closed again before its pump was served. `epoch` is a random id
//! written when the hash is created: after Redis lost its data (a restart without
//! persistence), a different epoch with `n >= 1` means "a wake happened since".
//!
//! **Local broadcast.** However many tasks of one handle wait, one pump blocks for them on
//! one dedicated connection of the context's pool, and wakes each from the same reads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use futures::future::{select, Either};
use redis::RedisResult;

use crate::connection::not_executed;
use crate::context::{Context, Lent, Settings, Target};
use crate::keys::GateKeys;
use crate::options::{On, Options};
use crate::runtime::Runtime;
use crate::scripts::GATE_READ;
use crate::{Error, Invalid, Result};

/// The longest single blocking wait; the pump then reads again (which also notices a
/// closed coordinator) and blocks anew.
const BLOCK: Duration = Duration::from_secs(2);
/// A blocking wait's turn while other primitives of the context queue for a connection.
const SLICE: Duration = Duration::from_millis(100);
/// Pauses between retries while Redis cannot be reached, doubled from the first up to the
/// last; waiters fail once it has been unreachable for the response timeout.
const RETRY_FIRST: Duration = Duration::from_millis(20);
const RETRY_MAX: Duration = Duration::from_millis(1000);

/// One read of a broadcast primitive.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Snapshot {
    /// Notify: 1 when set, else 0. Latch: its count (0 when absent).
    pub state: u64,
    /// The random id of the generation hash ("" when absent).
    pub epoch: String,
    /// The generation.
    pub n: u64,
}

impl Snapshot {
    /// True when a wake-up (a `set`, a `notify_waiters`, a latch reaching zero) happened
    /// after `base` was read: the generation moved on, or the hash was re-created (Redis
    /// lost it) and has seen one since.
    pub(crate) fn advanced_since(&self, base: &Snapshot) -> bool {
        if self.epoch == base.epoch {
            self.n > base.n
        } else {
            self.n >= 1
        }
    }
}

/// Which primitive a gate serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GateKind {
    Notify,
    Latch,
}

/// A local waiter: what it read when it started, and where to tell it.
struct Waiter {
    id: u64,
    base: Snapshot,
    tx: oneshot::Sender<Result<()>>,
}

#[derive(Default)]
struct Local {
    /// Waiters of this handle, by id (increasing with registration).
    waiters: Vec<Waiter>,
    next_id: u64,
    /// A pump runs.
    pump: bool,
    /// Fired when the last waiter leaves: ends the pump's checkout or blocking wait.
    cut: Option<oneshot::Sender<()>>,
}

/// How a blocking wait ended.
enum Outcome {
    /// Redis answered: the element, nil (timed out), or an error.
    Reply(RedisResult<Option<String>>),
    /// Cut short (no waiter left, or the pool asked for room); `kept` when the connection
    /// is still in a known state (`CLIENT UNBLOCK` ended the wait and its reply came).
    Cut { kept: bool },
}

/// One handle's gate: its keys, its context, its local waiters and their pump.
pub(crate) struct Gate<R: Runtime> {
    pub ctx: Arc<Context<R>>,
    pub keys: GateKeys,
    pub kind: GateKind,
    /// Redis refused `CLIENT UNBLOCK` (an ACL, a managed service): cut waits by dropping
    /// their connection.
    unblock_refused: AtomicBool,
    local: Mutex<Local>,
}

impl<R: Runtime> std::fmt::Debug for Gate<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("gate", &self.keys.gate)
            .field("kind", &self.kind)
            .field("waiting", &self.waiting())
            .finish_non_exhaustive()
    }
}

/// Starts a gate for a builder: on a private context made from a client, or on a
/// coordinator's. Checks the keys' types (nothing is written).
pub(crate) async fn start<R: Runtime>(
    on: On<R>,
    opts: &Options,
    kind: GateKind,
) -> Result<Arc<Gate<R>>> {
    if let Some(why) = &opts.misuse {
        return Err(Error::InvalidArgument(why.clone()));
    }
    let keys = match kind {
        GateKind::Notify => GateKeys::notify(&opts.key_prefix, &opts.name)?,
        GateKind::Latch => GateKeys::latch(&opts.key_prefix, &opts.name)?,
    };
    let (ctx, check_eviction) = match on {
        On::Client { client, rt } => {
            let settings = Settings {
                response_timeout: opts.response_timeout,
                // One pump per handle: one blocking connection at most.
                max_blocking: 1,
                check_eviction: opts.check_eviction,
            };
            let ctx = Context::connect(Target::Client(client), settings, rt).await?;
            (ctx, opts.check_eviction)
        }
        On::Context(ctx) => {
            if opts.response_timeout_set {
                return Err(Error::InvalidArgument(Invalid::CoordinatorSetting(
                    "response_timeout",
                )));
            }
            if ctx.is_closed() {
                return Err(Error::Closed);
            }
            let check = if opts.check_eviction_set {
                opts.check_eviction
            } else {
                ctx.settings.check_eviction
            };
            (ctx, check)
        }
    };
    if check_eviction {
        ctx.check_eviction(&keys.gate).await?;
    }
    check_types(&ctx, &keys).await?;
    Ok(Arc::new(Gate {
        ctx,
        keys,
        kind,
        unblock_refused: AtomicBool::new(false),
        local: Mutex::new(Local::default()),
    }))
}

/// Fails with [`Error::WrongType`] when a key holds something else (another application
/// uses the name).
async fn check_types<R: Runtime>(ctx: &Context<R>, keys: &GateKeys) -> Result<()> {
    let mut expected = vec![(&keys.gate, "list"), (&keys.gen, "hash")];
    if let Some(count) = &keys.count {
        expected.push((count, "string"));
    }
    let mut pipe = redis::pipe();
    for (key, _) in &expected {
        pipe.cmd("TYPE").arg(*key);
    }
    let found: Vec<String> = pipe.query_async(&mut ctx.conn.clone()).await?;
    for ((key, want), found) in expected.into_iter().zip(found) {
        if found != want && found != "none" {
            return Err(Error::WrongType {
                key: key.clone(),
                found,
            });
        }
    }
    Ok(())
}

/// A fresh epoch for a write that may create the generation hash (`HSETNX`): fresh for
/// every write, so that a hash Redis lost and that is created again, by whichever handle,
/// never gets the epoch it had.
pub(crate) fn new_epoch() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

/// Parses a count or generation read as a string; a negative count reads as zero.
fn parse(key: &str, value: &str) -> Result<u64> {
    match value.parse::<i64>() {
        Ok(v) => Ok(v.max(0) as u64),
        Err(_) => Err(Error::WrongType {
            key: key.to_owned(),
            found: format!("string {value:?} (not an integer)"),
        }),
    }
}

impl<R: Runtime> Gate<R> {
    fn local(&self) -> MutexGuard<'_, Local> {
        // Every critical section is a few field updates: recover from poisoning.
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Local waiters now.
    pub(crate) fn waiting(&self) -> usize {
        self.local().waiters.len()
    }

    /// True when waiters return at once: a notify is set, a latch is at zero.
    pub(crate) fn is_open(&self, snap: &Snapshot) -> bool {
        match self.kind {
            GateKind::Notify => snap.state != 0,
            GateKind::Latch => snap.state == 0,
        }
    }

    /// Reads state and generation in one script; `tidy` first removes the marks of
    /// `notify_waiters` calls (which served every blocked waiter already).
    pub(crate) async fn read(&self, tidy: bool) -> Result<Snapshot> {
        let mut inv = GATE_READ.prepare_invoke();
        inv.key(&self.keys.gate).key(&self.keys.gen);
        if let Some(count) = &self.keys.count {
            inv.key(count);
        }
        inv.arg(if tidy { "1" } else { "0" });
        let (state, epoch, n): (String, String, String) =
            inv.invoke_async(&mut self.ctx.conn.clone()).await?;
        let state_key = self.keys.count.as_deref().unwrap_or(&self.keys.gate);
        Ok(Snapshot {
            state: parse(state_key, &state)?,
            epoch,
            n: parse(&self.keys.gen, &n)?,
        })
    }

    /// Waits until the primitive is open, or a wake-up happens after this call read the
    /// generation. Cancel safe: nothing in Redis depends on this waiter.
    pub(crate) async fn wait(self: &Arc<Self>) -> Result<()> {
        if self.ctx.is_closed() {
            return Err(Error::Closed);
        }
        let base = self.read(true).await?;
        if self.is_open(&base) {
            return Ok(());
        }
        let (id, rx) = self.register(base);
        let _registered = Registered { gate: self, id };
        match rx.await {
            Ok(res) => res,
            // The pump never drops a waiter unanswered.
            Err(_) => Err(Error::Closed),
        }
    }

    /// Adds a local waiter; starts the pump if none runs.
    fn register(self: &Arc<Self>, base: Snapshot) -> (u64, oneshot::Receiver<Result<()>>) {
        let (tx, rx) = oneshot::channel();
        let (id, spawn) = {
            let mut l = self.local();
            let id = l.next_id;
            l.next_id += 1;
            l.waiters.push(Waiter { id, base, tx });
            let spawn = !l.pump;
            l.pump = true;
            (id, spawn)
        };
        if spawn {
            let gate = self.clone();
            self.ctx.rt.spawn(async move { gate.pump().await });
        }
        (id, rx)
    }

    /// A waiter leaves (served, timed out or cancelled); the last one cuts the pump's
    /// wait short.
    fn leave(&self, id: u64) {
        let cut = {
            let mut l = self.local();
            if let Some(i) = l.waiters.iter().position(|w| w.id == id) {
                l.waiters.swap_remove(i);
            }
            if l.waiters.is_empty() {
                l.cut.take()
            } else {
                None
            }
        };
        if let Some(cut) = cut {
            let _ = cut.send(());
        }
    }

    /// Wakes the waiters registered before `mark` that `snap` releases.
    fn wake(&self, snap: &Snapshot, mark: u64) {
        let open = self.is_open(snap);
        let woken = {
            let mut l = self.local();
            let mut woken = Vec::new();
            let mut i = 0;
            while i < l.waiters.len() {
                let w = &l.waiters[i];
                if w.id < mark && (open || snap.advanced_since(&w.base)) {
                    woken.push(l.waiters.swap_remove(i).tx);
                } else {
                    i += 1;
                }
            }
            woken
        };
        for tx in woken {
            let _ = tx.send(Ok(()));
        }
    }

    /// Fails every local waiter with `err`.
    fn fail_all(&self, err: Error) {
        let waiters = std::mem::take(&mut self.local().waiters);
        for w in waiters {
            let _ = w.tx.send(Err(err.clone()));
        }
    }

    /// Blocks on Redis for the local waiters until there are none. After every return of
    /// a blocking wait, whatever ended it, it reads the state and generation again and
    /// wakes whom they release.
    async fn pump(self: Arc<Self>) {
        let mut conn: Option<Lent> = None;
        // Since when Redis has been unreachable, and the pause before the next try.
        let mut trouble: Option<Instant> = None;
        let mut pause = RETRY_FIRST;
        loop {
            // Anyone left? Then arm the switch that the last waiter to leave fires.
            let (cut_tx, mut cut) = oneshot::channel();
            {
                let mut l = self.local();
                if l.waiters.is_empty() {
                    l.pump = false;
                    l.cut = None;
                    // Its connection, if any, goes back to the context's pool.
                    return;
                }
                l.cut = Some(cut_tx);
            }
            if self.ctx.is_closed() {
                self.fail_all(Error::Closed);
                continue;
            }
            // Other primitives queue for a connection: give this one back and queue too,
            // so that the connections rotate (see `context::pool`).
            if self.ctx.pool.contended() {
                drop(conn.take());
            }
            let mut lent = match conn.take() {
                Some(c) => c,
                None => {
                    let checkout = self
                        .ctx
                        .pool
                        .checkout(&self.ctx.conn, &self.keys.gate, BLOCK);
                    futures::pin_mut!(checkout);
                    match select(checkout, &mut cut).await {
                        Either::Left((Ok(c), _)) => c,
                        Either::Left((Err(e), _)) => {
                            self.trouble(&mut trouble, &mut pause, e.into()).await;
                            continue;
                        }
                        // Nobody waits any more (a cancelled checkout gives back what
                        // it was granted).
                        Either::Right(_) => continue,
                    }
                }
            };
            // Read right before blocking (a wait for a connection can be long), and wake
            // whom the read releases among those registered before it was sent.
            let mark = self.local().next_id;
            match self.read(true).await {
                Ok(snap) => {
                    trouble = None;
                    pause = RETRY_FIRST;
                    self.wake(&snap, mark);
                }
                Err(e) => {
                    conn = Some(lent);
                    self.trouble(&mut trouble, &mut pause, e).await;
                    continue;
                }
            }
            {
                let mut l = self.local();
                if l.waiters.is_empty() {
                    drop(l);
                    conn = Some(lent);
                    continue;
                }
                // The switch fired (the last waiter left) but others came since: a fresh
                // one, so that this wait is not cut as soon as it starts.
                if !matches!(cut.try_recv(), Ok(None)) {
                    let (cut_tx, fresh) = oneshot::channel();
                    l.cut = Some(cut_tx);
                    cut = fresh;
                }
            }
            match self.block_once(&mut lent, &mut cut).await {
                Outcome::Reply(Ok(_)) | Outcome::Cut { kept: true } => conn = Some(lent),
                Outcome::Cut { kept: false } => lent.discard(),
                Outcome::Reply(Err(e)) if not_executed(&e) => {
                    // The key lives elsewhere now (a failover, a slot moved): learn
                    // where, and read again after a pause.
                    self.ctx.conn.note_blocking_error(&e);
                    lent.discard();
                    self.ctx.rt.sleep(pause).await;
                    pause = (pause * 2).min(RETRY_MAX);
                }
                Outcome::Reply(Err(e)) if e.code().is_some() => {
                    // An error reply (WRONGTYPE, NOPERM): waiting cannot work.
                    conn = Some(lent);
                    self.fail_all(e.into());
                }
                Outcome::Reply(Err(e)) => {
                    // A killed or silent connection: read again at once (the read tells
                    // whether Redis is reachable). A silent one was likely not alone:
                    // the shared connection is replaced before its next request.
                    lent.discard();
                    if e.is_timeout() {
                        self.ctx.conn.reset();
                    }
                }
            }
        }
    }

    /// Redis could not be reached: pause, or, once that has lasted the response timeout,
    /// fail the waiters with the error. An error reply fails them at once.
    async fn trouble(&self, since: &mut Option<Instant>, pause: &mut Duration, err: Error) {
        let transient = matches!(&err, Error::Redis(e) if e.code().is_none());
        let started = *since.get_or_insert_with(Instant::now);
        if !transient || started.elapsed() >= self.ctx.settings.response_timeout {
            *since = None;
            *pause = RETRY_FIRST;
            self.fail_all(err);
            return;
        }
        self.ctx.rt.sleep(*pause).await;
        *pause = (*pause * 2).min(RETRY_MAX);
    }

    /// One `BLMOVE gate gate`, cut short when the last waiter leaves or when the pool
    /// asks for room.
    async fn block_once(&self, lent: &mut Lent, cut: &mut oneshot::Receiver<()>) -> Outcome {
        let preemptible = !self.unblock_refused.load(Ordering::Relaxed);
        let (block, preempt) = lent.begin_wait(BLOCK, SLICE, preemptible);
        let out = self.block_on(lent, block, preempt, cut).await;
        lent.end_wait();
        out
    }

    async fn block_on(
        &self,
        lent: &mut Lent,
        block: Duration,
        preempt: Option<oneshot::Receiver<()>>,
        cut: &mut oneshot::Receiver<()>,
    ) -> Outcome {
        let Some(bc) = lent.conn() else {
            return Outcome::Cut { kept: false };
        };
        let (id, node) = (bc.id, bc.node.clone());
        let mut cmd = redis::cmd("BLMOVE");
        cmd.arg(&self.keys.gate)
            .arg(&self.keys.gate)
            .arg("LEFT")
            .arg("RIGHT")
            .arg(block.as_secs_f64());
        let wait = cmd.query_async::<Option<String>>(&mut bc.conn);
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
        futures::pin_mut!(wait);
        futures::pin_mut!(stop);
        match select(wait, stop).await {
            Either::Left((reply, _)) => Outcome::Reply(reply),
            Either::Right(((), wait)) => self.unblock(id, &node, wait).await,
        }
    }

    /// Ends the blocking wait of client `id` with `CLIENT UNBLOCK`, keeping its
    /// connection; where that is refused or the wait was not blocked (yet), the caller
    /// drops the connection instead, which ends the wait on the server. Either is safe:
    /// the move puts the element back into the list it took it from.
    async fn unblock<F>(&self, id: i64, node: &str, wait: std::pin::Pin<&mut F>) -> Outcome
    where
        F: std::future::Future<Output = RedisResult<Option<String>>>,
    {
        if self.unblock_refused.load(Ordering::Relaxed) {
            return Outcome::Cut { kept: false };
        }
        let unblocked = self.ctx.conn.unblock_client(id, node).await;
        match unblocked {
            Ok(1) => {
                let limit = self.ctx.settings.response_timeout;
                match crate::runtime::timeout(&self.ctx.rt, limit, wait).await {
                    Some(Ok(_)) => Outcome::Cut { kept: true },
                    _ => Outcome::Cut { kept: false },
                }
            }
            Ok(_) => Outcome::Cut { kept: false },
            Err(e) => {
                if e.code().is_some() {
                    // Refused (NOPERM, unknown command): never ask again.
                    self.unblock_refused.store(true, Ordering::Relaxed);
                }
                Outcome::Cut { kept: false }
            }
        }
    }
}

/// A registered waiter; dropped (served, timed out, cancelled), it leaves.
struct Registered<'a, R: Runtime> {
    gate: &'a Arc<Gate<R>>,
    id: u64,
}

impl<R: Runtime> Drop for Registered<'_, R> {
    fn drop(&mut self) {
        self.gate.leave(self.id);
    }
}

/// The [`Options`] of a broadcast builder, and what it starts on.
#[derive(Clone, Debug)]
pub(crate) struct Builder<R: Runtime> {
    pub on: On<R>,
    pub opts: Options,
}

impl<R: Runtime> Builder<R> {
    pub(crate) fn new(on: On<R>, name: &str, prefix: &str) -> Self {
        Builder {
            on,
            opts: Options::new(name, prefix),
        }
    }

    pub(crate) fn key_prefix(&mut self, prefix: &str) {
        self.opts.key_prefix = prefix.to_owned();
    }

    pub(crate) fn response_timeout(&mut self, timeout: Duration) {
        self.opts.response_timeout = timeout;
        self.opts.response_timeout_set = true;
    }

    pub(crate) fn runtime(&mut self, rt: R) {
        self.on.set_runtime(&mut self.opts, rt);
    }

    pub(crate) fn allow_eviction_policy(&mut self, allow: bool) {
        self.opts.check_eviction = !allow;
        self.opts.check_eviction_set = true;
    }

    pub(crate) async fn start(self, kind: GateKind) -> Result<Arc<Gate<R>>> {
        start(self.on, &self.opts, kind).await
    }
}

#[cfg(test)]
mod tests {
    use super::Snapshot;

    fn snap(epoch: &str, n: u64) -> Snapshot {
        Snapshot {
            state: 0,
            epoch: epoch.to_owned(),
            n,
        }
    }

    #[test]
    fn generation_moves_on() {
        assert!(!snap("a", 3).advanced_since(&snap("a", 3)));
        assert!(snap("a", 4).advanced_since(&snap("a", 3)));
        // Never created, then created by a wake-up.
        assert!(!snap("", 0).advanced_since(&snap("", 0)));
        assert!(snap("a", 1).advanced_since(&snap("", 0)));
        // A latch whose count was set (epoch written) but that has not reached zero.
        assert!(!snap("a", 0).advanced_since(&snap("", 0)));
    }

    #[test]
    fn lost_generation_is_detected_by_its_epoch() {
        // Redis lost the hash (restart without persistence): gone, then re-created by a
        // wake-up with a new epoch and a counter below the old one.
        assert!(!snap("", 0).advanced_since(&snap("a", 7)));
        assert!(snap("b", 1).advanced_since(&snap("a", 7)));
        assert!(!snap("b", 0).advanced_since(&snap("a", 7)));
    }
}
