#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]

mod connection;
mod engine;
mod error;
mod event;
mod init;
mod inspect;
mod keys;
mod options;
mod permit;
mod runtime;
mod scripts;
mod semaphore;
mod sync;

pub use error::{Error, Result};
pub use event::{Event, EventBuilder, DEFAULT_EVENT_PREFIX};
pub use init::InitStrategy;
pub use inspect::{HolderState, SemaphoreState};
pub use keys::KeyLayout;
pub use options::{
    DEFAULT_LEASE_TTL, DEFAULT_LOCAL_HANDOFF_LIMIT, DEFAULT_MAX_BLOCKING_CONNECTIONS,
};
pub use permit::{LeaseLostFuture, Permit};
#[cfg(feature = "async-std")]
pub use runtime::AsyncStd;
pub use runtime::Runtime;
#[cfg(feature = "smol")]
pub use runtime::Smol;
#[cfg(feature = "tokio")]
pub use runtime::Tokio;
pub use semaphore::{Semaphore, SemaphoreBuilder, DEFAULT_SEMAPHORE_PREFIX};

// Re-exported so users need not depend on the same `redis` version themselves.
pub use redis;
