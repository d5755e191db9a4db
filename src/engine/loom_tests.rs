//! loom models of the in-process concurrency: the generation word, the local waiter queue
//! and the detached-call hand-off. They drive the production code (its atomics and locks
//! come from `crate::sync`, which is `loom::sync` here). Run them, and only them, with
//!
//! ```text
//! RUSTFLAGS="--cfg redis_sync_loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --lib loom
//! ```
//!
//! (the preemption bound defaults to 2 when `LOOM_MAX_PREEMPTIONS` is unset).

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use futures::FutureExt;
use loom::thread;

use super::detached::Detachable;
use super::generation::Generation;
use super::queue::{send_to_longest, WaiterQueue};
use crate::runtime::Runtime;
use crate::sync::{Arc, AtomicU64, Mutex, Ordering};

/// `loom::model` with a preemption bound of 2 unless `LOOM_MAX_PREEMPTIONS` says otherwise;
/// prints how many interleavings it ran (seen with `--nocapture`).
fn model<F: Fn() + Sync + Send + 'static>(f: F) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(2);
    }
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = runs.clone();
    builder.check(move || {
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        f()
    });
    let name = std::thread::current().name().unwrap_or("?").to_owned();
    let runs = runs.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("loom: {name}: {runs} interleavings");
}

// ---------------------------------------------------------------------------------------
// The generation word.

fn generation() -> Generation {
    Generation::new("h-0".into(), "k".into(), Instant::now())
}

/// The counts stay small: a decrement below zero would borrow from the next field or the
/// flags and show up here.
fn assert_sane(g: &Generation) {
    let (outstanding, in_flight, _, retired) = g.decode();
    assert!(
        outstanding <= 8 && in_flight <= 8,
        "count underflow: {:?}",
        g.decode()
    );
    if retired {
        assert_eq!((outstanding, in_flight), (0, 0), "retired with work left");
    }
}

/// `Engine::maybe_retire`: counts successful claims.
fn maybe_retire(g: &Generation, claims: &AtomicU64) {
    if g.claim_retirement() {
        let (outstanding, in_flight, dirty, retired) = g.decode();
        assert!(dirty && retired, "claimed a clean generation");
        assert_eq!((outstanding, in_flight), (0, 0), "claimed with work left");
        claims.fetch_add(1, Ordering::SeqCst);
    }
    assert_sane(g);
}

/// The fast path / a pump: reserve, get a token, count it as outstanding, end the call
/// (`reserve_gen`, `Held::new`, `settle_take`). True if a permit was granted.
fn grant(g: &Generation, claims: &AtomicU64) -> bool {
    if !g.try_reserve() {
        // `reserve_gen` retires what it could not reserve on, then takes the current one.
        maybe_retire(g, claims);
        return false;
    }
    assert!(!g.is_retired(), "reserved a call on a retired generation");
    assert_sane(g);
    g.add_outstanding();
    assert!(!g.is_retired(), "retired under a reserved call");
    g.end_call();
    maybe_retire(g, claims);
    true
}

/// A permit given back to Redis (`give_back`, then `settle_give_back`).
fn release(g: &Generation, claims: &AtomicU64) {
    g.begin_call();
    assert!(!g.is_retired(), "retired with a permit outstanding");
    assert_sane(g);
    g.end_call();
    g.sub_outstanding();
    maybe_retire(g, claims);
}

/// A call of unknown outcome taints the generation (`Engine::taint`).
fn taint(g: &Generation, claims: &AtomicU64) {
    g.mark_dirty();
    maybe_retire(g, claims);
}

/// After everything: retired exactly once, nothing left in the counts, no new grant.
fn assert_retired_once(g: &Generation, claims: &AtomicU64) {
    assert_eq!(claims.load(Ordering::SeqCst), 1, "retirement claimed once");
    assert_eq!(g.decode(), (0, 0, true, true));
    assert!(!g.try_reserve(), "reserved after retirement");
    assert!(!g.claim_retirement());
}

/// Two grant-and-release threads race a taint: the generation is retired exactly once,
/// only when dirty and drained, and never under a reserved call or a counted permit.
#[test]
fn generation_grants_and_releases_race_a_taint() {
    model(|| {
        let g = Arc::new(generation());
        let claims = Arc::new(AtomicU64::new(0));
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let (g, claims) = (g.clone(), claims.clone());
                thread::spawn(move || {
                    if grant(&g, &claims) {
                        release(&g, &claims);
                    }
                })
            })
            .collect();
        taint(&g, &claims);
        for w in workers {
            w.join().unwrap();
        }
        assert_retired_once(&g, &claims);
    });
}

/// A permit held across the taint, a second grant attempt, and two retirers: the
/// holder's give-back is what retires it (or whoever comes last), once.
#[test]
fn generation_retires_once_among_concurrent_claimers() {
    model(|| {
        let g = Arc::new(generation());
        let claims = Arc::new(AtomicU64::new(0));
        assert!(grant(&g, &claims));
        let holder = {
            let (g, claims) = (g.clone(), claims.clone());
            thread::spawn(move || release(&g, &claims))
        };
        let granter = {
            let (g, claims) = (g.clone(), claims.clone());
            thread::spawn(move || {
                if grant(&g, &claims) {
                    release(&g, &claims);
                }
            })
        };
        taint(&g, &claims);
        // `close()` marks every generation dirty and tries to retire it too.
        taint(&g, &claims);
        holder.join().unwrap();
        granter.join().unwrap();
        assert_retired_once(&g, &claims);
    });
}

/// Loss races a grant and a give-back: `mark_lost` reports true once, no reservation
/// succeeds after it, and the dirty generation (as after `close`) is retired once.
#[test]
fn generation_lost_races_grant_and_release() {
    model(|| {
        let g = Arc::new(generation());
        let claims = Arc::new(AtomicU64::new(0));
        let firsts = Arc::new(AtomicU64::new(0));
        let granter = {
            let (g, claims) = (g.clone(), claims.clone());
            thread::spawn(move || {
                if grant(&g, &claims) {
                    release(&g, &claims);
                }
            })
        };
        let loser = {
            let (g, firsts) = (g.clone(), firsts.clone());
            thread::spawn(move || {
                if g.mark_lost() {
                    firsts.fetch_add(1, Ordering::SeqCst);
                }
                assert!(!g.try_reserve(), "reserved on a lost generation");
            })
        };
        if g.mark_lost() {
            firsts.fetch_add(1, Ordering::SeqCst);
        }
        assert!(g.is_lost() && !g.is_usable());
        assert_eq!(g.lost_signal().now_or_never(), Some(Ok(())));
        taint(&g, &claims);
        granter.join().unwrap();
        loser.join().unwrap();
        assert_eq!(firsts.load(Ordering::SeqCst), 1, "mark_lost true once");
        assert_retired_once(&g, &claims);
    });
}

/// Seed check: with the reservation split into a check and an add (the test-only mutant
/// switch), loom finds the interleaving where a taint retires the generation between the
/// two and the call then runs on a retired generation.
#[test]
#[should_panic(expected = "reserved a call on a retired generation")]
fn generation_seed_check_split_reserve_is_caught() {
    model(|| {
        let mut g = generation();
        g.mutant_split_reserve = true;
        let g = Arc::new(g);
        let claims = Arc::new(AtomicU64::new(0));
        let worker = {
            let (g, claims) = (g.clone(), claims.clone());
            thread::spawn(move || {
                if grant(&g, &claims) {
                    release(&g, &claims);
                }
            })
        };
        taint(&g, &claims);
        worker.join().unwrap();
    });
}

// ---------------------------------------------------------------------------------------
// The local waiter queue, as the engine uses it under its state lock.

/// A granted token. Every token must end up taken by someone (a waiter, the granter, or a
/// waiter that gave up and found it in its closed channel, whose `Held` would give it
/// back); one dropped untaken is lost, and counted in `lost`.
struct Token {
    taken: bool,
    lost: Arc<AtomicU64>,
}

impl Token {
    fn new(lost: &Arc<AtomicU64>) -> Self {
        Token {
            taken: false,
            lost: lost.clone(),
        }
    }

    fn take(mut self) {
        self.taken = true;
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        if !self.taken {
            self.lost.fetch_add(1, Ordering::SeqCst);
        }
    }
}

type Queue = Arc<Mutex<WaiterQueue<Token>>>;

/// `Engine::hand_to_waiter`: pop under the lock, send outside it. A token no live waiter
/// took is returned to the granter (which gives it back); counted in `returned`.
fn hand_out(q: &Queue, token: Token, returned: &AtomicU64) {
    if let Err(token) = send_to_longest(|| q.lock().unwrap().pop(), token) {
        returned.fetch_add(1, Ordering::SeqCst);
        token.take();
    }
}

/// A waiter that gives up (`Ticket::drop`): closes its receiver, then leaves the queue
/// under the lock. A token sent before the close stays in the channel; there the engine
/// gives it back when the receiver drops (`Held::drop`); here it is taken and reported.
fn give_up(q: &Queue, seq: u64, mut rx: oneshot::Receiver<Token>) -> bool {
    rx.close();
    {
        let mut q = q.lock().unwrap();
        let live_before = q.len();
        let cancelled = q.cancel(seq);
        assert_eq!(q.len(), live_before - usize::from(cancelled));
    }
    received(&mut rx)
}

/// The token a live waiter received, if any.
fn received(rx: &mut oneshot::Receiver<Token>) -> bool {
    match rx.try_recv() {
        Ok(Some(token)) => {
            token.take();
            true
        }
        _ => false,
    }
}

/// Two granters, three waiters, the first of which gives up meanwhile: every token is
/// received by a live waiter or given back (none lost), live waiters are served first
/// come first served, and `len()` counts the live waiters still queued.
#[test]
fn queue_grants_race_a_cancel() {
    model(|| {
        let q: Queue = Arc::new(Mutex::new(WaiterQueue::default()));
        let lost = Arc::new(AtomicU64::new(0));
        let returned = Arc::new(AtomicU64::new(0));
        let mut waiters: Vec<_> = (0..3)
            .map(|_| {
                let (tx, rx) = oneshot::channel();
                (q.lock().unwrap().push(tx), rx)
            })
            .collect();
        assert_eq!(q.lock().unwrap().len(), 3);
        let (a_seq, a_rx) = waiters.remove(0);
        let granters: Vec<_> = (0..2)
            .map(|_| {
                let (q, returned) = (q.clone(), returned.clone());
                let token = Token::new(&lost);
                thread::spawn(move || hand_out(&q, token, &returned))
            })
            .collect();
        let canceller = {
            let q = q.clone();
            thread::spawn(move || give_up(&q, a_seq, a_rx))
        };
        for t in granters {
            t.join().unwrap();
        }
        let to_a = u64::from(canceller.join().unwrap());
        let b = received(&mut waiters[0].1);
        let c = received(&mut waiters[1].1);
        drop(waiters);
        assert_eq!(lost.load(Ordering::SeqCst), 0, "a token lost");
        let returned = returned.load(Ordering::SeqCst);
        assert_eq!(u64::from(b) + u64::from(c) + to_a + returned, 2);
        assert_eq!(returned, 0, "handed back while a live waiter was queued");
        assert!(b, "the longest live waiter is served first");
        assert_eq!(c, to_a == 0);
        let q = q.lock().unwrap();
        assert_eq!(q.len(), usize::from(!c), "len() counts the live waiters");
        assert_eq!(q.is_empty(), c);
    });
}

/// `close()` takes every waiter while one gives up: each waiter is either answered by
/// the closer or cancelled by itself, never both, and the queue ends empty.
#[test]
fn queue_take_all_races_a_cancel() {
    model(|| {
        let q: Queue = Arc::new(Mutex::new(WaiterQueue::default()));
        let lost = Arc::new(AtomicU64::new(0));
        let mut waiters: Vec<_> = (0..2)
            .map(|_| {
                let (tx, rx) = oneshot::channel();
                (q.lock().unwrap().push(tx), rx)
            })
            .collect();
        let (a_seq, a_rx) = waiters.remove(0);
        let closer = {
            let (q, lost) = (q.clone(), lost.clone());
            thread::spawn(move || {
                let all = q.lock().unwrap().take_all();
                assert!(q.lock().unwrap().is_empty());
                let mut answered = 0u64;
                for w in all {
                    match w.send(Token::new(&lost)) {
                        Ok(()) => answered += 1,
                        Err(token) => token.take(),
                    }
                }
                answered
            })
        };
        let canceller = {
            let q = q.clone();
            thread::spawn(move || give_up(&q, a_seq, a_rx))
        };
        let answered = closer.join().unwrap();
        let a_found_one = canceller.join().unwrap();
        assert!(received(&mut waiters[0].1), "a live waiter is answered");
        // A's answer, if sent before its close, was still in its channel.
        assert_eq!(answered, 1 + u64::from(a_found_one));
        assert_eq!(lost.load(Ordering::SeqCst), 0);
        let mut q = q.lock().unwrap();
        assert!(q.is_empty() && q.pop().is_none());
        assert!(!q.cancel(waiters[0].0));
    });
}

// ---------------------------------------------------------------------------------------
// Detached calls: a call whose caller is dropped completes on the runtime.

/// A runtime whose tasks each run to completion on a loom thread; `join` waits for them.
#[derive(Clone)]
struct LoomRt {
    tasks: Arc<Mutex<Vec<thread::JoinHandle<()>>>>,
}

impl std::fmt::Debug for LoomRt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoomRt")
    }
}

impl LoomRt {
    fn new() -> Self {
        LoomRt {
            tasks: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn join(&self) -> usize {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap());
        let n = tasks.len();
        for t in tasks {
            t.join().unwrap();
        }
        n
    }
}

impl Runtime for LoomRt {
    fn try_current() -> crate::Result<Self> {
        Err(crate::Error::NoRuntime("loom"))
    }

    fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let task = thread::spawn(move || loom::future::block_on(future));
        self.tasks.lock().unwrap().push(task);
    }

    fn sleep(&self, _: Duration) -> impl Future<Output = ()> + Send + 'static {
        async { unimplemented!("no timers in the loom runtime") }
    }
}

/// A call answered by a "server" thread; `on_orphan` records the replies it gets.
fn detachable_call(
    rt: &LoomRt,
    orphaned: &Arc<AtomicU64>,
) -> (Detachable<LoomRt, u64>, thread::JoinHandle<()>) {
    let (reply_tx, reply_rx) = oneshot::channel::<u64>();
    let server = thread::spawn(move || {
        reply_tx.send(7).unwrap();
    });
    let orphaned = orphaned.clone();
    let call = Detachable::new(
        rt.clone(),
        async move { reply_rx.await.expect("the server replies") },
        move |reply| {
            assert_eq!(reply, 7);
            orphaned.fetch_add(1, Ordering::SeqCst);
        },
    );
    (call, server)
}

/// The caller polls once (the reply may or may not be there) and then drops the call:
/// the reply reaches exactly one of the caller and `on_orphan`, and a call that
/// completed is never handed to the runtime.
#[test]
fn detached_call_dropped_mid_call_is_orphaned_once() {
    model(|| {
        let rt = LoomRt::new();
        let orphaned = Arc::new(AtomicU64::new(0));
        let (call, server) = detachable_call(&rt, &orphaned);
        let mut call = call;
        let waker = futures::task::noop_waker();
        let got = matches!(
            pin!(&mut call).poll(&mut Context::from_waker(&waker)),
            Poll::Ready(7)
        );
        drop(call);
        server.join().unwrap();
        let spawned = rt.join();
        let orphaned = orphaned.load(Ordering::SeqCst);
        assert_eq!(u64::from(got) + orphaned, 1, "the reply went to one place");
        assert_eq!(
            spawned,
            usize::from(!got),
            "only an unfinished call is detached"
        );
    });
}

/// Dropped before it was ever polled: the call still runs, on the runtime, once.
#[test]
fn detached_call_never_polled_is_orphaned_once() {
    model(|| {
        let rt = LoomRt::new();
        let orphaned = Arc::new(AtomicU64::new(0));
        let (call, server) = detachable_call(&rt, &orphaned);
        drop(call);
        server.join().unwrap();
        assert_eq!(rt.join(), 1);
        assert_eq!(orphaned.load(Ordering::SeqCst), 1);
    });
}

/// Awaited to the end: the caller gets the reply and `on_orphan` never runs.
#[test]
fn detached_call_completed_never_runs_on_orphan() {
    model(|| {
        let rt = LoomRt::new();
        let orphaned = Arc::new(AtomicU64::new(0));
        let (call, server) = detachable_call(&rt, &orphaned);
        assert_eq!(loom::future::block_on(call), 7);
        server.join().unwrap();
        assert_eq!(rt.join(), 0);
        assert_eq!(orphaned.load(Ordering::SeqCst), 0);
    });
}
