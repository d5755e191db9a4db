//! The semaphore and the event on async-std (discontinued upstream, still supported):
//! `cargo run --example async_std_quickstart --features async-std`.
//! Starts its own redis-server when `REDIS_URL` is not set.

#[path = "../tests/common/server.rs"]
mod server;
#[path = "support/small_demo.rs"]
mod small_demo;

fn main() -> redis_sync::Result<()> {
    let (url, _server) = small_demo::redis_url();
    async_std::task::block_on(small_demo::run::<redis_sync::AsyncStd>(url, "async-std"))
}
