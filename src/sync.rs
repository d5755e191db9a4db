//! The synchronisation primitives of the in-process state machines: `std::sync` normally,
//! `loom::sync` in the loom tests (`--cfg redis_sync_loom`, see `src/engine/loom_tests.rs`),
//! so that loom checks the production code itself.

#[cfg(not(all(test, redis_sync_loom)))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
#[cfg(not(all(test, redis_sync_loom)))]
pub(crate) use std::sync::Mutex;

#[cfg(all(test, redis_sync_loom))]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering};
#[cfg(all(test, redis_sync_loom))]
pub(crate) use loom::sync::{Arc, Mutex};
