//! The one error type of the crate.

use std::time::Duration;

/// The smallest and largest permit count a semaphore accepts (redsync 2.0's range).
pub const COUNT_RANGE: std::ops::RangeInclusive<i64> = 1..=4096;

/// Everything that can go wrong in `redis-sync`.
///
/// Each variant is a distinction a caller may act on; Redis failures keep their cause.
///
/// # Examples
///
/// ```
/// use redis_sync::Error;
///
/// let err = Error::CountOutOfRange(0);
/// assert_eq!(err.to_string(), "semaphore count 0 is out of range 1..=4096");
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A wait (acquire, attach, event wait) did not succeed within its timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// `Semaphore::release` was called while this handle holds no detached permit.
    #[error("release called but this handle holds no permit")]
    NotAcquired,
    /// The requested count is outside `1..=4096`.
    #[error("semaphore count {0} is out of range 1..=4096")]
    CountOutOfRange(i64),
    /// `create` asked for one count but the semaphore in Redis has another.
    #[error("semaphore count mismatch: requested {requested}, Redis has {actual}")]
    CountMismatch {
        /// The count passed to `create`.
        requested: u32,
        /// The count stored in Redis.
        actual: u32,
    },
    /// The holder's lease expired (or vanished, e.g. after a Redis restart) and its permits
    /// were given back to the pool: the permit is no longer held.
    #[error("the lease of this holder was lost; its permits went back to the pool")]
    LeaseLost,
    /// The handle was closed with `close()`.
    #[error("the handle is closed")]
    Closed,
    /// An option or name is not acceptable; the reason says which and why. Nothing was
    /// sent to Redis.
    #[error("invalid argument: {0}")]
    InvalidArgument(Invalid),
    /// Other clients kept changing the semaphore's keys while this one tried to create it
    /// (64 attempts); trying again later usually succeeds.
    #[error("could not initialise the semaphore: other clients kept changing it")]
    InitContention,
    /// The semaphore's pool exists but its metadata is gone, with
    /// [`KeyLayout::Redsync2`](crate::KeyLayout::Redsync2): permits held by other clients
    /// (Python redsync records none) cannot be counted, so the pool is not topped up.
    #[error(
        "the semaphore's pool exists but its metadata is gone: with KeyLayout::Redsync2, \
         permits held by other clients cannot be seen, so it is not re-created; delete its \
         keys or wait until they expire"
    )]
    MetadataMissing,
    /// The Redis server has a memory limit and an eviction policy that may delete this
    /// library's keys under memory pressure, which would silently lose or duplicate permits.
    /// Set `maxmemory-policy noeviction`, or opt out with the builder's
    /// `allow_eviction_policy(true)`.
    #[error(
        "redis has maxmemory set with maxmemory-policy {policy}, which may evict this \
         library's keys (permits would be lost or duplicated); use noeviction, or opt out \
         with allow_eviction_policy(true)"
    )]
    EvictionPolicy {
        /// The server's `maxmemory-policy`.
        policy: String,
    },
    /// A key of the primitive holds a value of another type (another application uses the
    /// same name); nothing was changed.
    #[error("key {key} holds a {found}, not what this primitive stores there")]
    WrongType {
        /// The key.
        key: String,
        /// Its Redis type.
        found: String,
    },
    /// No async runtime of the requested kind is running on this thread.
    #[error("no {0} runtime is running on this thread")]
    NoRuntime(&'static str),
    /// Redis answered with an error or could not be reached. Displays as the Redis error
    /// itself, so an error chain does not repeat it.
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    /// [`CountDownLatch::count_down`](crate::CountDownLatch::count_down) on a latch whose
    /// count is already zero, or that was never set: nothing was changed.
    #[error("the latch is already at zero (or was never set): nothing to count down")]
    LatchAlreadyZero,
    /// [`CountDownLatch::set_count`](crate::CountDownLatch::set_count) while the latch is
    /// still counting down: its count can be set only once it has reached zero. Nothing
    /// was changed.
    #[error("the latch is still counting down ({count} left): set its count once it is zero")]
    LatchNotZero {
        /// The count in Redis.
        count: u64,
    },
}

impl Error {
    /// True for a wait that timed out ([`Error::Timeout`]) and for a Redis request that
    /// missed its deadline.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// assert!(redis_sync::Error::Timeout(Duration::from_secs(1)).is_timeout());
    /// assert!(!redis_sync::Error::Closed.is_timeout());
    /// ```
    pub fn is_timeout(&self) -> bool {
        match self {
            Error::Timeout(_) => true,
            Error::Redis(e) => e.is_timeout(),
            _ => false,
        }
    }

    /// True when Redis could not be reached or the connection failed (refused, reset,
    /// timed out): trying again later may succeed. An error reply from Redis is not one.
    ///
    /// # Examples
    ///
    /// ```
    /// let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
    /// let err = redis_sync::redis::RedisError::from(refused);
    /// assert!(redis_sync::Error::from(err).is_connection());
    /// assert!(!redis_sync::Error::LeaseLost.is_connection());
    /// ```
    pub fn is_connection(&self) -> bool {
        match self {
            Error::Redis(e) => {
                e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
            }
            _ => false,
        }
    }
}

/// Why an argument was refused: the reason of [`Error::InvalidArgument`].
///
/// # Examples
///
/// ```
/// use redis_sync::{Error, Invalid};
///
/// let err = Error::InvalidArgument(Invalid::EmptyName);
/// assert_eq!(err.to_string(), "invalid argument: the name must not be empty");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Invalid {
    /// The primitive's name is empty.
    #[error("the name must not be empty")]
    EmptyName,
    /// The name contains `{` or `}`, which would break its hash tag.
    #[error("the name {0:?} must not contain '{{' or '}}' with KeyLayout::HashTagged")]
    BracesInName(String),
    /// The key prefix is empty (or only `:`).
    #[error("the key prefix must not be empty")]
    EmptyPrefix,
    /// The key prefix contains `{` or `}`: the hash tag is the name's.
    #[error("the key prefix {0:?} must not contain '{{' or '}}': the hash tag is the name's")]
    BracesInPrefix(String),
    /// `lease_ttl` is outside 100 ms..=30 days.
    #[error("lease_ttl must be between 100ms and 30 days, got {0:?}")]
    LeaseTtl(Duration),
    /// `response_timeout` is zero or above an hour.
    #[error("response_timeout must be above zero and at most 1 hour, got {0:?}")]
    ResponseTimeout(Duration),
    /// `max_blocking_connections` is zero.
    #[error("max_blocking_connections must be at least 1")]
    NoBlockingConnections,
    /// [`KeyLayout::Redsync2`](crate::KeyLayout::Redsync2) in cluster mode: its keys have
    /// no hash tag, so one primitive's keys would fall in different slots.
    #[error(
        "KeyLayout::Redsync2 cannot be used on a Redis Cluster (its keys share no hash tag, \
         so they fall in different slots); use KeyLayout::HashTagged"
    )]
    LayoutNeedsOneNode,
    /// A setting that belongs to the [`Coordinator`](crate::Coordinator) was set on a
    /// builder of one of its primitives (the coordinator's applies to all of them).
    #[error("{0} is a setting of the Coordinator: set it on the CoordinatorBuilder")]
    CoordinatorSetting(&'static str),
    /// A request for `n` permits with `n` zero or above the semaphore's count (it could
    /// never be granted).
    #[error("cannot acquire {n} permits of a semaphore of {count}: ask for 1..={count}")]
    PermitsOutOfRange {
        /// Permits asked for.
        n: u32,
        /// The semaphore's count.
        count: u32,
    },
    /// `extend` on a permit that has no hard lease of its own (only permits from
    /// `acquire_with_lease` have one; the others' lease is renewed for them).
    #[error("extend applies to permits from acquire_with_lease only")]
    NotHardLease,
    /// A setting that the layout of the keys cannot support, e.g. resizing a semaphore
    /// shared with redsync 2.0 processes (they know nothing of a lowered count).
    #[error("{0} is not supported with KeyLayout::Redsync2 (redsync 2.0 peers would ignore it)")]
    NotWithRedsync2(&'static str),
    /// A cluster was given no seed node, or one that is not a valid address.
    #[error("invalid cluster seed nodes: {0}")]
    SeedNodes(String),
    /// A latch count above `i64::MAX` (Redis counts with signed 64-bit integers).
    #[error("a latch count must be at most 9223372036854775807 (i64::MAX), got {0}")]
    LatchCount(u64),
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
