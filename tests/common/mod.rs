//! Test support shared by every test file.

#![allow(dead_code)]

pub mod cluster;
pub mod relay;
pub mod sentinel;
pub mod server;
pub mod tls;

#[allow(unused_imports)]
pub use server::{redis_url, RedisServer};

/// A key prefix of its own for each test, so tests run in parallel safely.
pub fn unique_prefix(test: &str) -> String {
    format!("test:{test}:{:08x}", fastrand::u32(..))
}

pub fn client() -> redis::Client {
    redis::Client::open(redis_url()).expect("bad REDIS_URL")
}
