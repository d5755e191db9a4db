#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]

mod broadcast;
mod connection;
mod context;
mod coordinator;
mod engine;
mod error;
mod event;
mod init;
mod inspect;
mod keys;
mod latch;
mod mutex;
mod notify;
mod options;
mod permit;
mod runtime;
mod rwlock;
mod scripts;
mod semaphore;
mod semaphore_more;
mod stats;
mod sync;
mod trace;

pub use coordinator::{Coordinator, CoordinatorBuilder, CoordinatorStats};
pub use error::{Error, Invalid, Result};
pub use event::{Event, EventBuilder, DEFAULT_EVENT_PREFIX};
pub use init::InitStrategy;
pub use inspect::{HolderState, SemaphoreState};
pub use keys::KeyLayout;
pub use latch::{CountDownLatch, CountDownLatchBuilder, LatchState, DEFAULT_LATCH_PREFIX};
pub use mutex::{Mutex, MutexBuilder, MutexGuard, DEFAULT_MUTEX_PREFIX};
pub use notify::{Notify, NotifyBuilder, NotifyState, DEFAULT_NOTIFY_PREFIX};
pub use options::{
    DEFAULT_COORDINATOR_BLOCKING_CONNECTIONS, DEFAULT_LEASE_TTL, DEFAULT_LOCAL_HANDOFF_LIMIT,
    DEFAULT_MAX_BLOCKING_CONNECTIONS, DEFAULT_RESPONSE_TIMEOUT,
};
pub use permit::{LeaseLostFuture, Permit};
#[cfg(feature = "async-std")]
pub use runtime::AsyncStd;
pub use runtime::Runtime;
#[cfg(feature = "smol")]
pub use runtime::Smol;
#[cfg(feature = "tokio")]
pub use runtime::Tokio;
pub use rwlock::{
    ReadGuard, RwLock, RwLockBuilder, RwLockState, WriteGuard, DEFAULT_MAX_READERS,
    DEFAULT_RWLOCK_PREFIX,
};
pub use semaphore::{Semaphore, SemaphoreBuilder, DEFAULT_SEMAPHORE_PREFIX};
pub use semaphore_more::Permits;
pub use stats::Stats;

// Re-exported so users need not depend on the same `redis` version themselves.
pub use redis;

/// The per-runtime type aliases of `redis_sync::tokio`, `::smol` and `::async_std`.
macro_rules! runtime_aliases {
    ($rt:ty, $name:literal) => {
        #[doc = concat!("[`Semaphore`](crate::Semaphore) on ", $name, ".")]
        ///
        /// # Examples
        ///
        /// ```no_run
        /// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
        /// # #[cfg(feature = "tokio")]
        /// let sem = redis_sync::tokio::Semaphore::create(&client, "jobs", 2).await?;
        /// # Ok(()) }
        /// ```
        pub type Semaphore = crate::Semaphore<$rt>;
        #[doc = concat!("[`SemaphoreBuilder`](crate::SemaphoreBuilder) on ", $name, ".")]
        ///
        /// # Examples
        ///
        /// ```no_run
        /// # async fn demo(client: redis_sync::redis::Client) {
        /// # #[cfg(feature = "tokio")]
        /// let b: redis_sync::tokio::SemaphoreBuilder =
        ///     redis_sync::tokio::Semaphore::builder(&client, "jobs");
        /// # }
        /// ```
        pub type SemaphoreBuilder = crate::SemaphoreBuilder<$rt>;
        #[doc = concat!("[`Permit`](crate::Permit) on ", $name, ".")]
        ///
        /// # Examples
        ///
        /// ```no_run
        /// # #[cfg(feature = "tokio")]
        /// # async fn demo(sem: redis_sync::tokio::Semaphore) -> redis_sync::Result<()> {
        /// let permit: redis_sync::tokio::Permit = sem.acquire().await?;
        /// # Ok(()) }
        /// ```
        pub type Permit = crate::Permit<$rt>;
        #[doc = concat!("[`Permits`](crate::Permits) on ", $name, ".")]
        ///
        /// # Examples
        ///
        /// ```no_run
        /// # #[cfg(feature = "tokio")]
        /// # async fn demo(sem: redis_sync::tokio::Semaphore) -> redis_sync::Result<()> {
        /// let permits: redis_sync::tokio::Permits = sem.acquire_many(2).await?;
        /// # Ok(()) }
        /// ```
        pub type Permits = crate::Permits<$rt>;
        #[doc = concat!("[`Event`](crate::Event) on ", $name, ".")]
        ///
        /// # Examples
        ///
        /// ```no_run
        /// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
        /// # #[cfg(feature = "tokio")]
        /// let ev = redis_sync::tokio::Event::open(&client, "ready").await?;
        /// # Ok(()) }
        /// ```
        pub type Event = crate::Event<$rt>;
        #[doc = concat!("[`EventBuilder`](crate::EventBuilder) on ", $name, ".")]
        ///
        /// # Examples
        ///
        /// ```no_run
        /// # async fn demo(client: redis_sync::redis::Client) {
        /// # #[cfg(feature = "tokio")]
        /// let b: redis_sync::tokio::EventBuilder = redis_sync::tokio::Event::builder(&client, "ready");
        /// # }
        /// ```
        pub type EventBuilder = crate::EventBuilder<$rt>;
        #[doc = concat!("[`Coordinator`](crate::Coordinator) on ", $name, ".")]
        ///
        /// # Examples
        ///
        /// ```no_run
        /// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
        /// # #[cfg(feature = "tokio")]
        /// let sync = redis_sync::tokio::Coordinator::connect(&client).await?;
        /// # Ok(()) }
        /// ```
        pub type Coordinator = crate::Coordinator<$rt>;
        #[doc = concat!("[`Mutex`](crate::Mutex) on ", $name, ".")]
        ///
        /// # Examples
        ///
        /// ```no_run
        /// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
        /// # #[cfg(feature = "tokio")]
        /// let lock = redis_sync::tokio::Mutex::open(&client, "ledger").await?;
        /// # Ok(()) }
        /// ```
        pub type Mutex = crate::Mutex<$rt>;
        #[doc = concat!("[`MutexGuard`](crate::MutexGuard) on ", $name, ".")]
        ///
        /// # Examples
        ///
        /// ```no_run
        /// # #[cfg(feature = "tokio")]
        /// # async fn demo(lock: redis_sync::tokio::Mutex) -> redis_sync::Result<()> {
        /// let guard: redis_sync::tokio::MutexGuard = lock.lock().await?;
        /// # Ok(()) }
        /// ```
        pub type MutexGuard = crate::MutexGuard<$rt>;
        #[doc = concat!("[`RwLock`](crate::RwLock) on ", $name, ".")]
        ///
        /// # Examples
        ///
        /// ```no_run
        /// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
        /// # #[cfg(feature = "tokio")]
        /// let lock = redis_sync::tokio::RwLock::open(&client, "catalog").await?;
        /// # Ok(()) }
        /// ```
        pub type RwLock = crate::RwLock<$rt>;
        #[doc = concat!("[`ReadGuard`](crate::ReadGuard) on ", $name, ".")]
        ///
        /// # Examples
        ///
        /// ```no_run
        /// # #[cfg(feature = "tokio")]
        /// # async fn demo(lock: redis_sync::tokio::RwLock) -> redis_sync::Result<()> {
        /// let r: redis_sync::tokio::ReadGuard = lock.read().await?;
        /// # Ok(()) }
        /// ```
        pub type ReadGuard = crate::ReadGuard<$rt>;
        #[doc = concat!("[`WriteGuard`](crate::WriteGuard) on ", $name, ".")]
        ///
        /// # Examples
        ///
        /// ```no_run
        /// # #[cfg(feature = "tokio")]
        /// # async fn demo(lock: redis_sync::tokio::RwLock) -> redis_sync::Result<()> {
        /// let w: redis_sync::tokio::WriteGuard = lock.write().await?;
        /// # Ok(()) }
        /// ```
        pub type WriteGuard = crate::WriteGuard<$rt>;
        #[doc = concat!("[`CoordinatorBuilder`](crate::CoordinatorBuilder) on ", $name, ".")]
        ///
        /// # Examples
        ///
        /// ```no_run
        /// # async fn demo(client: redis_sync::redis::Client) {
        /// # #[cfg(feature = "tokio")]
        /// let b: redis_sync::tokio::CoordinatorBuilder =
        ///     redis_sync::tokio::Coordinator::builder(&client).max_blocking_connections(8);
        /// # }
        /// ```
        pub type CoordinatorBuilder = crate::CoordinatorBuilder<$rt>;
        #[doc = concat!("[`Notify`](crate::Notify) on ", $name, ".")]
        ///
        /// # Examples
        ///
        /// ```no_run
        /// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
        /// # #[cfg(feature = "tokio")]
        /// let go = redis_sync::tokio::Notify::open(&client, "go").await?;
        /// # Ok(()) }
        /// ```
        pub type Notify = crate::Notify<$rt>;
        #[doc = concat!("[`NotifyBuilder`](crate::NotifyBuilder) on ", $name, ".")]
        ///
        /// # Examples
        ///
        /// ```no_run
        /// # async fn demo(client: redis_sync::redis::Client) {
        /// # #[cfg(feature = "tokio")]
        /// let b: redis_sync::tokio::NotifyBuilder = redis_sync::tokio::Notify::builder(&client, "go");
        /// # }
        /// ```
        pub type NotifyBuilder = crate::NotifyBuilder<$rt>;
        #[doc = concat!("[`CountDownLatch`](crate::CountDownLatch) on ", $name, ".")]
        ///
        /// # Examples
        ///
        /// ```no_run
        /// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
        /// # #[cfg(feature = "tokio")]
        /// let latch = redis_sync::tokio::CountDownLatch::open(&client, "boot").await?;
        /// # Ok(()) }
        /// ```
        pub type CountDownLatch = crate::CountDownLatch<$rt>;
        #[doc = concat!("[`CountDownLatchBuilder`](crate::CountDownLatchBuilder) on ", $name, ".")]
        ///
        /// # Examples
        ///
        /// ```no_run
        /// # async fn demo(client: redis_sync::redis::Client) {
        /// # #[cfg(feature = "tokio")]
        /// let b: redis_sync::tokio::CountDownLatchBuilder =
        ///     redis_sync::tokio::CountDownLatch::builder(&client, "boot");
        /// # }
        /// ```
        pub type CountDownLatchBuilder = crate::CountDownLatchBuilder<$rt>;
    };
}

/// The primitives on tokio without a type parameter: `redis_sync::tokio::Semaphore` is
/// [`Semaphore<Tokio>`](crate::Semaphore).
///
/// # Examples
///
/// ```no_run
/// use redis_sync::tokio::Semaphore;
///
/// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
/// let sem = Semaphore::create(&client, "exports", 3).await?;
/// # Ok(()) }
/// ```
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub mod tokio {
    runtime_aliases!(crate::Tokio, "tokio");
}

/// The primitives on smol without a type parameter: `redis_sync::smol::Semaphore` is
/// [`Semaphore<Smol>`](crate::Semaphore).
///
/// # Examples
///
/// ```no_run
/// use redis_sync::smol::Semaphore;
///
/// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
/// let sem = Semaphore::create(&client, "exports", 3).await?;
/// # Ok(()) }
/// ```
#[cfg(feature = "smol")]
#[cfg_attr(docsrs, doc(cfg(feature = "smol")))]
pub mod smol {
    runtime_aliases!(crate::Smol, "smol");
}

/// The primitives on async-std without a type parameter: `redis_sync::async_std::Semaphore`
/// is [`Semaphore<AsyncStd>`](crate::Semaphore).
///
/// # Examples
///
/// ```no_run
/// use redis_sync::async_std::Semaphore;
///
/// # async fn demo(client: redis_sync::redis::Client) -> redis_sync::Result<()> {
/// let sem = Semaphore::create(&client, "exports", 3).await?;
/// # Ok(()) }
/// ```
#[cfg(feature = "async-std")]
#[cfg_attr(docsrs, doc(cfg(feature = "async-std")))]
pub mod async_std {
    runtime_aliases!(crate::AsyncStd, "async-std");
}
