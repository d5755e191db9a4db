//! The semaphore and the event on smol:
//! `cargo run --example smol_quickstart --features smol`.
//! Starts its own redis-server when `REDIS_URL` is not set.

#[path = "../tests/common/server.rs"]
mod server;
#[path = "support/small_demo.rs"]
mod small_demo;

fn main() -> redis_sync::Result<()> {
    let (url, _server) = small_demo::redis_url();
    smol::block_on(small_demo::run::<redis_sync::Smol>(url, "smol"))
}
