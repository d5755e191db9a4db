//! Shared code of the tests that try to break the invariants (`leases.rs`,
//! `cancellation.rs`, `processes.rs`): an independent view of where the permits are (raw
//! Redis, never the library's bookkeeping), runtime-generic task helpers, and the thin
//! per-runtime wrappers that run one generic scenario body on tokio, smol and async-std.

#![allow(dead_code)]

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use futures::FutureExt;
use redis::aio::MultiplexedConnection;
use redis_sync::Runtime;

/// `<base>` of a semaphore with the default prefix and hash-tagged layout.
pub fn sem_base(name: &str) -> String {
    format!("redsync:semaphore:{{{name}}}")
}

/// `<base>` of an event with the default prefix and hash-tagged layout (also its list).
pub fn event_base(name: &str) -> String {
    format!("redsync:event:{{{name}}}")
}

/// One atomic look at the tokens: `{LLEN pool, sum of LLEN over every <base>:held:*,
/// number of non-empty held lists}`. Reads every held list that exists, whether or not the
/// library still knows its holder, so a token can hide nowhere but in a key that vanished.
const TOTALS_LUA: &str = r#"
local held, lists = 0, 0
for _, k in ipairs(redis.call('KEYS', ARGV[2])) do
  local n = redis.call('LLEN', k)
  if n > 0 then held = held + n; lists = lists + 1 end
end
return {redis.call('LLEN', ARGV[1]), held, lists}
"#;

/// Tokens of a primitive as Redis has them right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Totals {
    /// In the pool list.
    pub free: usize,
    /// In all held lists together.
    pub held: usize,
    /// Held lists with at least one token.
    pub lists: usize,
}

impl Totals {
    pub fn total(&self) -> usize {
        self.free + self.held
    }
}

/// Reads [`Totals`] atomically (one script) for a primitive whose pool is `pool` and whose
/// held lists are `<base>:held:*`.
pub async fn totals_at<C>(conn: &mut C, pool: &str, base: &str) -> redis::RedisResult<Totals>
where
    C: redis::aio::ConnectionLike + Send,
{
    let pattern = format!("{}:held:*", glob_escape(base));
    let (free, held, lists): (usize, usize, usize) = redis::Script::new(TOTALS_LUA)
        .arg(pool)
        .arg(pattern)
        .invoke_async(conn)
        .await?;
    Ok(Totals { free, held, lists })
}

/// [`Totals`] of the semaphore `name` (default prefix, hash-tagged).
pub async fn sem_totals<C>(conn: &mut C, name: &str) -> redis::RedisResult<Totals>
where
    C: redis::aio::ConnectionLike + Send,
{
    let base = sem_base(name);
    totals_at(conn, &format!("{base}:list"), &base).await
}

/// [`Totals`] of the event `name` (default prefix, hash-tagged).
pub async fn event_totals<C>(conn: &mut C, name: &str) -> redis::RedisResult<Totals>
where
    C: redis::aio::ConnectionLike + Send,
{
    let base = event_base(name);
    totals_at(conn, &base, &base).await
}

fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A raw multiplexed connection of the test itself (never one of the library's).
pub async fn raw_conn(client: &redis::Client) -> redis::aio::MultiplexedConnection {
    client
        .get_multiplexed_async_connection()
        .await
        .expect("raw test connection")
}

/// Spawns `fut` on the runtime `R` the caller runs on; the receiver yields its output, or
/// the panic it raised.
pub fn spawn<R, F, T>(fut: F) -> Joiner<T>
where
    R: Runtime,
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    R::try_current().expect("runtime").spawn(async move {
        let out = AssertUnwindSafe(fut).catch_unwind().await;
        let _ = tx.send(out);
    });
    Joiner(rx)
}

/// The output of a task started by [`spawn`].
pub struct Joiner<T>(oneshot::Receiver<std::thread::Result<T>>);

impl<T> Joiner<T> {
    /// Waits for the task; re-raises its panic here.
    pub async fn join(self) -> T {
        match self.0.await {
            Ok(Ok(v)) => v,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => panic!("a spawned task vanished without finishing (runtime shut down?)"),
        }
    }

    /// True when the task already finished (its output is then lost: use only to check a
    /// task is still pending).
    pub fn is_finished(&mut self) -> bool {
        !matches!(self.0.try_recv(), Ok(None))
    }
}

/// Runs a blocking closure on a thread of its own, so that the executor keeps running.
pub async fn blocking<T, F>(f: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    std::thread::spawn(move || {
        let out = std::panic::catch_unwind(AssertUnwindSafe(f));
        let _ = tx.send(out);
    });
    match rx.await.expect("blocking thread vanished") {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Sleeps on the runtime `R`.
pub async fn sleep<R: Runtime>(d: Duration) {
    R::try_current().expect("runtime").sleep(d).await;
}

/// Runs `fut`, failing the test if it takes longer than `limit` (a hang detector, never a
/// timing assertion).
pub async fn within<R: Runtime, F: Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    let timer = sleep::<R>(limit);
    futures::pin_mut!(fut);
    futures::pin_mut!(timer);
    match futures::future::select(fut, timer).await {
        futures::future::Either::Left((out, _)) => out,
        futures::future::Either::Right(_) => panic!("{what}: still not done after {limit:?}"),
    }
}

/// Like [`within`], but on timeout the failure message also shows `explain` (typically
/// [`describe`] of the primitive's keys), evaluated then.
pub async fn within_explained<R, F, E>(limit: Duration, what: &str, fut: F, explain: E) -> F::Output
where
    R: Runtime,
    F: Future,
    E: Future<Output = String>,
{
    let timer = sleep::<R>(limit);
    futures::pin_mut!(fut);
    futures::pin_mut!(timer);
    match futures::future::select(fut, timer).await {
        futures::future::Either::Left((out, _)) => out,
        futures::future::Either::Right(_) => {
            let why = explain.await;
            panic!("{what}: still not done after {limit:?}; Redis has: {why}")
        }
    }
}

/// Every key of a primitive (`<base>*`) with its type, length and TTL, and the lease set
/// with each holder's remaining lease by the server clock: for failure messages.
pub async fn describe(client: &redis::Client, base: &str) -> String {
    const LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for _, k in ipairs(redis.call('KEYS', ARGV[1])) do
  local ty = redis.call('TYPE', k)['ok']
  local len = ''
  if ty == 'list' then len = ' len=' .. redis.call('LLEN', k) end
  if ty == 'zset' then
    local z = redis.call('ZRANGE', k, 0, -1, 'WITHSCORES')
    for i = 1, #z, 2 do len = len .. ' ' .. z[i] .. '@' .. (tonumber(z[i + 1]) - now) .. 'ms' end
  end
  table.insert(out, k .. ' ' .. ty .. len .. ' pttl=' .. redis.call('PTTL', k))
end
return out
"#;
    let mut conn = match client.get_multiplexed_async_connection().await {
        Ok(c) => c,
        Err(e) => return format!("(cannot connect: {e})"),
    };
    let pattern = format!("{}*", glob_escape(base));
    match redis::Script::new(LUA)
        .arg(pattern)
        .invoke_async::<Vec<String>>(&mut conn)
        .await
    {
        Ok(lines) => format!("\n  {}", lines.join("\n  ")),
        Err(e) => format!("(cannot read: {e})"),
    }
}

/// Two handles of one semaphore with lease `lease`: one creates it with `count` permits,
/// the other attaches (shared, for spawned tasks).
pub async fn creator_and_attacher<R: Runtime>(
    client: &redis::Client,
    name: &str,
    lease: Duration,
    count: u32,
) -> (redis_sync::Semaphore<R>, Arc<redis_sync::Semaphore<R>>) {
    let creator = redis_sync::Semaphore::<R>::builder(client, name)
        .lease_ttl(lease)
        .create(count)
        .await
        .unwrap();
    let attacher = redis_sync::Semaphore::<R>::builder(client, name)
        .lease_ttl(lease)
        .attach(Some(Duration::from_secs(5)))
        .await
        .unwrap();
    (creator, Arc::new(attacher))
}

/// Waits up to `limit` until no permit of semaphore `name` is recorded as held (releases
/// and reclaims run in the background, with no signal to await); returns the totals then.
pub async fn until_nothing_held<R: Runtime>(
    raw: &MultiplexedConnection,
    name: &str,
    limit: Duration,
    what: &str,
) -> Totals {
    poll_until::<R, _, _, _, _>(limit, what, || {
        let mut raw = raw.clone();
        let name = name.to_owned();
        async move {
            let t = sem_totals(&mut raw, &name).await.unwrap();
            if t.held == 0 {
                Ok(t)
            } else {
                Err(t)
            }
        }
    })
    .await
}

/// Polls `check` every 20 ms until it returns `Some`, or fails the test with the last
/// observation after `limit`. For outcomes that have no signal (a background release or
/// reclaim landing in Redis).
pub async fn poll_until<R, T, D, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    R: Runtime,
    D: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, D>>,
{
    let start = Instant::now();
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) => {
                if start.elapsed() > limit {
                    panic!("{what}: not reached after {limit:?}; last seen: {last:?}");
                }
            }
        }
        sleep::<R>(Duration::from_millis(20)).await;
    }
}

/// Yields once to the executor.
pub async fn yield_now() {
    struct YieldNow(bool);
    impl Future for YieldNow {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.0 {
                Poll::Ready(())
            } else {
                self.0 = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }
    YieldNow(false).await
}

/// Samples the semaphore's token total atomically in the background and records every
/// sample where pool + held lists != `count` (a permit created or destroyed).
pub struct Conservation {
    stop: Arc<AtomicBool>,
    task: Option<Joiner<()>>,
    samples: Arc<AtomicUsize>,
    bad: Arc<Mutex<Vec<Totals>>>,
}

impl Conservation {
    /// Starts sampling every `every` on its own raw connection.
    pub fn start<R: Runtime>(client: &redis::Client, name: &str, count: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(AtomicUsize::new(0));
        let bad = Arc::new(Mutex::new(Vec::new()));
        let (client, name) = (client.clone(), name.to_owned());
        let (st, sa, b) = (stop.clone(), samples.clone(), bad.clone());
        let task = spawn::<R, _, _>(async move {
            let mut conn = None;
            while !st.load(Ordering::Acquire) {
                if conn.is_none() {
                    conn = client.get_multiplexed_async_connection().await.ok();
                }
                if let Some(c) = conn.as_mut() {
                    match sem_totals(c, &name).await {
                        Ok(t) => {
                            sa.fetch_add(1, Ordering::Relaxed);
                            if t.total() != count {
                                b.lock().unwrap().push(t);
                            }
                        }
                        // Killed by a chaos step, or the server restarts: reconnect.
                        Err(_) => conn = None,
                    }
                }
                sleep::<R>(Duration::from_millis(5)).await;
            }
        });
        Conservation {
            stop,
            task: Some(task),
            samples,
            bad,
        }
    }

    /// Stops sampling; fails the test if any sample saw a total other than `count`.
    pub async fn finish(mut self, what: &str) -> usize {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.task.take() {
            t.join().await;
        }
        let bad = self.bad.lock().unwrap().clone();
        let n = self.samples.load(Ordering::Relaxed);
        assert!(
            bad.is_empty(),
            "{what}: pool + held lists != count in {} of {n} atomic samples, e.g. {:?}",
            bad.len(),
            &bad[..bad.len().min(5)]
        );
        n
    }
}

impl Drop for Conservation {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// The tokio flavour every tokio wrapper uses: multi-threaded, 2 workers.
pub fn run_tokio<F: Future>(fut: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(fut)
}

/// Runs on smol, on a thread that has no tokio context (so redis-rs picks smol).
pub fn run_smol<F: Future>(fut: F) -> F::Output {
    assert!(tokio::runtime::Handle::try_current().is_err());
    smol::block_on(fut)
}

/// Runs on async-std, on a thread that has no tokio context.
pub fn run_async_std<F: Future>(fut: F) -> F::Output {
    assert!(tokio::runtime::Handle::try_current().is_err());
    async_std::task::block_on(fut)
}

/// `per_runtime!(scenario_fn)` defines module `scenario_fn` with one `#[test]` per enabled
/// runtime (`tokio`, `smol`, `async_std`), each running `scenario_fn::<Runtime>()`.
#[macro_export]
macro_rules! per_runtime {
    ($($body:ident),* $(,)?) => {$(
        mod $body {
            #[cfg(feature = "tokio")]
            #[test]
            fn tokio() {
                $crate::chaos_support::run_tokio(super::$body::<redis_sync::Tokio>());
            }

            #[cfg(feature = "smol")]
            #[test]
            fn smol() {
                $crate::chaos_support::run_smol(super::$body::<redis_sync::Smol>());
            }

            #[cfg(feature = "async-std")]
            #[test]
            fn async_std() {
                $crate::chaos_support::run_async_std(super::$body::<redis_sync::AsyncStd>());
            }
        }
    )*};
}
