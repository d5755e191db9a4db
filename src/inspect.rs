//! What an operator sees when asking "who holds this semaphore?".

use std::time::Duration;

use crate::keys::Keys;
use crate::Result;

/// A snapshot of a semaphore in Redis, from [`Semaphore::inspect`](crate::Semaphore::inspect)
/// or [`SemaphoreBuilder::inspect`](crate::SemaphoreBuilder::inspect).
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
    /// Every holder with a lease, longest lease last.
    pub holders: Vec<HolderState>,
}

impl SemaphoreState {
    /// Permits recorded as held by some holder.
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
    let meta = keys.meta.as_deref().unwrap_or(&keys.pool);
    type Snapshot = ((u64, u64), Option<u32>, usize, Vec<(String, f64)>);
    let ((secs, micros), count, free, leases): Snapshot = redis::pipe()
        .cmd("TIME")
        .hget(meta, "count")
        .llen(&keys.pool)
        .zrange_withscores(&keys.leases, 0, -1)
        .query_async(conn)
        .await?;
    let now_ms = secs * 1000 + micros / 1000;
    let mut pipe = redis::pipe();
    for (id, _) in &leases {
        pipe.llen(keys.held(id));
    }
    let held: Vec<usize> = if leases.is_empty() {
        Vec::new()
    } else {
        pipe.query_async(conn).await?
    };
    let holders = leases
        .into_iter()
        .zip(held)
        .map(|((id, expiry), permits)| {
            let left = expiry as i64 - now_ms as i64;
            HolderState {
                id,
                permits,
                lease_remaining: (left > 0).then(|| Duration::from_millis(left as u64)),
            }
        })
        .collect();
    Ok(SemaphoreState {
        count,
        free,
        holders,
    })
}
