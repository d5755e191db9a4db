//! What an operator sees when asking "who holds this semaphore?".
//!
//! The read is bounded however many holders there are: the lease set is read in pages of
//! [`PAGE`] holders, each page a request of its own followed by one pipeline of the held
//! lists' lengths, and at most [`MAX_HOLDERS`] holders are listed. Redis never runs one long
//! command for it, so other clients are not held up.

use std::collections::HashSet;
use std::time::Duration;

use crate::engine::GATE_TOKEN;
use crate::keys::Keys;
use crate::Result;

/// Holders read per request (and held-list lengths per pipeline).
pub(crate) const PAGE: usize = 1_000;
/// At most this many holders are listed by one `inspect`.
pub(crate) const MAX_HOLDERS: usize = 10_000;

/// A snapshot of a semaphore in Redis, from [`Semaphore::inspect`](crate::Semaphore::inspect)
/// or [`SemaphoreBuilder::inspect`](crate::SemaphoreBuilder::inspect).
///
/// With more than 1,000 holders the snapshot is read in several requests (1,000 holders
/// each), and at most 10,000 holders are listed: [`holders_total`](Self::holders_total)
/// tells how many there are, [`is_partial`](Self::is_partial) whether some are missing.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(sem: redis_sync::Semaphore<redis_sync::Tokio>) -> redis_sync::Result<()> {
/// let state = sem.inspect().await?;
/// println!("{} of {:?} free", state.free, state.count);
/// for h in &state.holders {
///     println!("{} holds {} (lease {:?})", h.id, h.permits, h.lease_remaining);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SemaphoreState {
    /// The permit count, or `None` when the semaphore does not exist (any more).
    pub count: Option<u32>,
    /// Permits in the pool.
    pub free: usize,
    /// The holders with a lease, longest lease last: all of them, or the first 10,000
    /// when there are more (see [`is_partial`](Self::is_partial)).
    pub holders: Vec<HolderState>,
    /// How many holders had a lease when the snapshot started (`ZCARD` of the lease set),
    /// whether or not all are listed in [`holders`](Self::holders).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(sem: redis_sync::Semaphore<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// let s = sem.inspect().await?;
    /// println!("{} holders, {} listed", s.holders_total, s.holders.len());
    /// # Ok(()) }
    /// ```
    pub holders_total: usize,
    /// For a [`Mutex`](crate::Mutex): the fencing token the next grant would carry if the
    /// lock is free now (the number in the pool), else the last one handed out.
    pub next_fence: Option<u64>,
    /// Permits that will be destroyed, not returned to the pool, when given back: what is
    /// left of a count lowered below the permits held then (see
    /// [`Semaphore::set_count`](crate::Semaphore::set_count)).
    pub pending_reduction: u32,
    /// The holder whose request for several permits holds the gate now (see
    /// [`Semaphore::acquire_many`](crate::Semaphore::acquire_many)), if any.
    pub gate_holder: Option<String>,
}

impl SemaphoreState {
    /// Permits recorded as held by the listed holders (all holders unless
    /// [`is_partial`](Self::is_partial)).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(sem: redis_sync::Semaphore<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// let s = sem.inspect().await?;
    /// assert_eq!(s.free + s.held(), s.count.unwrap_or(0) as usize);
    /// # Ok(()) }
    /// ```
    pub fn held(&self) -> usize {
        self.holders.iter().map(|h| h.permits).sum()
    }

    /// Whether fewer holders are listed than [`holders_total`](Self::holders_total): the
    /// listing stopped at its cap of 10,000, or holders left while it was being read (a
    /// snapshot of more than 1,000 holders takes several requests). When it is,
    /// [`held`](Self::held) counts the listed holders only.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(sem: redis_sync::Semaphore<redis_sync::Tokio>) -> redis_sync::Result<()> {
    /// let s = sem.inspect().await?;
    /// if s.is_partial() {
    ///     println!("showing {} of {} holders", s.holders.len(), s.holders_total);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn is_partial(&self) -> bool {
        self.holders.len() < self.holders_total
    }
}

/// One holder in a [`SemaphoreState`].
///
/// # Examples
///
/// ```
/// use redis_sync::HolderState;
/// fn expired(h: &HolderState) -> bool { h.lease_remaining.is_none() }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HolderState {
    /// The holder id (a handle's random id and generation).
    pub id: String,
    /// Permits it holds.
    pub permits: usize,
    /// Time left on its lease by the server's clock; `None` when it has expired and the
    /// next reclaim will take its permits back.
    pub lease_remaining: Option<Duration>,
}

pub(crate) async fn inspect<C>(conn: &mut C, keys: &Keys) -> Result<SemaphoreState>
where
    C: redis::aio::ConnectionLike + Send,
{
    inspect_paged(conn, keys, PAGE, MAX_HOLDERS).await
}

/// `inspect` reading `page` holders per request and listing at most `cap` of them.
pub(crate) async fn inspect_paged<C>(
    conn: &mut C,
    keys: &Keys,
    page: usize,
    cap: usize,
) -> Result<SemaphoreState>
where
    C: redis::aio::ConnectionLike + Send,
{
    let (page, cap) = (page.max(1), cap.max(1));
    let meta = keys.meta.as_deref().unwrap_or(&keys.pool);
    type Head = (
        (u64, u64),
        (Option<u32>, Option<u32>, Option<u64>),
        usize,
        Option<String>,
        usize,
        Vec<(String, f64)>,
    );
    // The first page comes with the rest: one request for up to `page` holders.
    let ((secs, micros), (count, debt, fence), free, first_free, total, mut leases): Head =
        redis::pipe()
            .cmd("TIME")
            .cmd("HMGET")
            .arg(meta)
            .arg("count")
            .arg("debt")
            .arg("fence")
            .llen(&keys.pool)
            .lindex(&keys.pool, 0)
            .zcard(&keys.leases)
            .zrange_withscores(&keys.leases, 0, page.min(cap) as isize - 1)
            .query_async(conn)
            .await?;
    let now_ms = secs * 1000 + micros / 1000;
    let mut holders = Vec::with_capacity(total.min(cap));
    // A holder renewed while the pages are read moves towards the end: never list it twice.
    let mut seen = HashSet::new();
    let mut gate_holder = None;
    let mut start = 0;
    loop {
        let full = leases.len() >= page;
        leases.retain(|(id, _)| seen.insert(id.clone()));
        leases.truncate(cap - holders.len());
        if !leases.is_empty() {
            let mut pipe = redis::pipe();
            for (id, _) in &leases {
                pipe.llen(keys.held(id));
                // The gate token is not a permit.
                pipe.cmd("LPOS").arg(keys.held(id)).arg(GATE_TOKEN);
            }
            let replies: Vec<Option<usize>> = pipe.query_async(conn).await?;
            let held = replies
                .chunks(2)
                .map(|pair| (pair[0].unwrap_or(0), pair.get(1).copied().flatten()));
            for ((id, expiry), (len, gate)) in leases.drain(..).zip(held) {
                let left = expiry as i64 - now_ms as i64;
                if gate.is_some() {
                    gate_holder = Some(id.clone());
                }
                holders.push(HolderState {
                    id,
                    permits: len - usize::from(gate.is_some()),
                    lease_remaining: (left > 0).then(|| Duration::from_millis(left as u64)),
                });
            }
        }
        start += page;
        if !full || holders.len() >= cap {
            break;
        }
        let stop = start + page.min(cap - holders.len()) - 1;
        leases = redis::cmd("ZRANGE")
            .arg(&keys.leases)
            .arg(start)
            .arg(stop)
            .arg("WITHSCORES")
            .query_async(conn)
            .await?;
    }
    // A free mutex's pool holds the next fence; a held one's, nothing.
    let next_fence = fence.map(|last| first_free.and_then(|t| t.parse().ok()).unwrap_or(last));
    Ok(SemaphoreState {
        count,
        free,
        holders,
        holders_total: total,
        next_fence,
        pending_reduction: debt.unwrap_or(0),
        gate_holder,
    })
}

#[cfg(test)]
#[path = "../tests/common/server.rs"]
mod test_server;

#[cfg(test)]
mod tests {
    use super::test_server as server;
    use super::*;
    use crate::KeyLayout;

    /// `n` holders, holder `i` with `i % 3` permits, expiries far ahead (by the local clock,
    /// near enough to the server's on loopback).
    async fn fill(conn: &mut redis::aio::MultiplexedConnection, keys: &Keys, n: usize) {
        let far = 4_000_000_000_000u64;
        let mut pipe = redis::pipe();
        pipe.hset(keys.meta.as_deref().unwrap(), "count", 100_000)
            .ignore();
        pipe.rpush(&keys.pool, vec!["1"; 7]).ignore();
        for i in 0..n {
            let id = format!("h{i:06}");
            pipe.zadd(&keys.leases, &id, far + i as u64).ignore();
            if i % 3 > 0 {
                pipe.rpush(keys.held(&id), vec!["1"; i % 3]).ignore();
            }
        }
        let () = pipe.query_async(conn).await.unwrap();
    }

    fn held(n: usize) -> usize {
        (0..n).map(|i| i % 3).sum()
    }

    #[test]
    fn pages_and_cap() {
        let srv = server::RedisServer::start();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let client = redis::Client::open(srv.url.as_str()).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let keys = Keys::semaphore("t", "pages", KeyLayout::HashTagged).unwrap();
            fill(&mut conn, &keys, 2_500).await;

            // Complete, over 25 pages.
            let s = inspect_paged(&mut conn, &keys, 100, 10_000).await.unwrap();
            assert_eq!(
                (s.holders_total, s.holders.len(), s.free),
                (2_500, 2_500, 7)
            );
            assert!(!s.is_partial());
            assert_eq!(s.held(), held(2_500));
            assert_eq!(s.holders[0].id, "h000000");
            assert_eq!(s.holders[2_499].id, "h002499");
            assert!(s.holders.iter().all(|h| h.lease_remaining.is_some()));

            // Capped within a page, and at a page boundary.
            for (page, cap) in [(100, 250), (100, 300), (1_000, 1), (3_000, 2_000)] {
                let s = inspect_paged(&mut conn, &keys, page, cap).await.unwrap();
                assert_eq!(s.holders.len(), cap, "page {page} cap {cap}");
                assert_eq!(s.holders_total, 2_500);
                assert!(s.is_partial());
                assert_eq!(s.held(), held(cap));
                assert_eq!(s.holders[cap - 1].id, format!("h{:06}", cap - 1));
            }

            // A last page exactly full: the next one comes back empty.
            let s = inspect_paged(&mut conn, &keys, 500, 10_000).await.unwrap();
            assert_eq!((s.holders.len(), s.held()), (2_500, held(2_500)));

            // The public entry point: one page of 1,000 at most, all listed.
            let s = inspect(&mut conn, &keys).await.unwrap();
            assert_eq!(s.holders.len(), 2_500);

            // No holders at all.
            let empty = Keys::semaphore("t", "empty", KeyLayout::HashTagged).unwrap();
            let s = inspect(&mut conn, &empty).await.unwrap();
            assert_eq!((s.count, s.free, s.holders_total), (None, 0, 0));
            assert!(s.holders.is_empty() && !s.is_partial());
        });
    }
}
