//! The fault-injecting relay of `tests/common/relay.rs`, checked against a real
//! redis-server: forwarding, black holes (existing and new connections), delay, reset, and
//! a prompt drop.

#![cfg(feature = "tokio")]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::relay::Relay;
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;

/// `host:port` of the test server (from `redis_url()`: `redis://[user:pass@]host:port[/db]`).
fn upstream() -> String {
    let url = common::redis_url();
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(&url);
    let rest = rest.rsplit_once('@').map(|(_, r)| r).unwrap_or(rest);
    rest.split('/').next().unwrap_or(rest).to_owned()
}

async fn connect(url: &str, timeout: Duration) -> redis::RedisResult<MultiplexedConnection> {
    let cfg = AsyncConnectionConfig::new()
        .set_response_timeout(Some(timeout))
        .set_connection_timeout(Some(timeout));
    redis::Client::open(url)?
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
}

async fn ping(con: &mut MultiplexedConnection) -> redis::RedisResult<String> {
    redis::cmd("PING").query_async(con).await
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn forwards_and_blackholes_existing_connections() {
    let relay = Relay::start(&upstream());
    rt().block_on(async {
        let mut con = connect(&relay.url(), Duration::from_secs(1)).await.unwrap();
        assert_eq!(ping(&mut con).await.unwrap(), "PONG");
        assert_eq!(relay.accepted(), 1);
        assert_eq!(relay.open(), 1);

        relay.blackhole_existing();
        assert_eq!(relay.open(), 0);
        let t = Instant::now();
        let r = ping(&mut con).await;
        assert!(r.is_err(), "a black-holed connection answered: {r:?}");
        assert!(
            t.elapsed() >= Duration::from_millis(900),
            "failed after {:?} (not a timeout?): {r:?}",
            t.elapsed()
        );

        let mut fresh = connect(&relay.url(), Duration::from_secs(1)).await.unwrap();
        assert_eq!(ping(&mut fresh).await.unwrap(), "PONG");
        assert_eq!(relay.accepted(), 2);
        assert_eq!(relay.open(), 1);
    });
}

#[test]
fn blackholed_connection_sees_silence_not_a_close() {
    let relay = Relay::start(&upstream());
    let mut s = TcpStream::connect(("127.0.0.1", relay.port())).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    s.write_all(b"PING\r\n").unwrap();
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"+PONG\r\n");

    relay.blackhole_existing();
    s.write_all(b"PING\r\n").unwrap();
    let r = s.read(&mut buf);
    assert!(
        matches!(&r, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "expected silence, got {r:?}"
    );
}

#[test]
fn blackhole_new_makes_new_connections_silent() {
    let relay = Relay::start(&upstream());
    rt().block_on(async {
        let mut old = connect(&relay.url(), Duration::from_secs(1)).await.unwrap();
        relay.blackhole_new(true);
        let t = Instant::now();
        let r = match connect(&relay.url(), Duration::from_millis(700)).await {
            Ok(mut con) => ping(&mut con).await,
            Err(e) => Err(e),
        };
        assert!(r.is_err(), "a black-holed new connection answered: {r:?}");
        assert!(t.elapsed() >= Duration::from_millis(600), "{r:?}");
        assert_eq!(relay.accepted(), 2, "accepted by TCP all the same");
        // Existing connections are not affected.
        assert_eq!(ping(&mut old).await.unwrap(), "PONG");

        relay.blackhole_new(false);
        let mut con = connect(&relay.url(), Duration::from_secs(1)).await.unwrap();
        assert_eq!(ping(&mut con).await.unwrap(), "PONG");
    });
}

#[test]
fn delay_slows_every_round_trip() {
    let relay = Relay::start(&upstream());
    rt().block_on(async {
        let mut con = connect(&relay.url(), Duration::from_secs(3)).await.unwrap();
        relay.set_delay(Duration::from_millis(200));
        let t = Instant::now();
        assert_eq!(ping(&mut con).await.unwrap(), "PONG");
        let took = t.elapsed();
        // 200 ms each way.
        assert!(took >= Duration::from_millis(400), "PING took {took:?}");

        // Pipelined commands keep their order.
        let (a, b, c): (String, String, String) = redis::pipe()
            .cmd("ECHO")
            .arg("a")
            .cmd("ECHO")
            .arg("b")
            .cmd("ECHO")
            .arg("c")
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!((a.as_str(), b.as_str(), c.as_str()), ("a", "b", "c"));

        relay.set_delay(Duration::ZERO);
        let t = Instant::now();
        assert_eq!(ping(&mut con).await.unwrap(), "PONG");
        assert!(
            t.elapsed() < Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );
    });
}

#[test]
fn reset_all_breaks_existing_connections() {
    let relay = Relay::start(&upstream());
    rt().block_on(async {
        let mut con = connect(&relay.url(), Duration::from_secs(2)).await.unwrap();
        assert_eq!(ping(&mut con).await.unwrap(), "PONG");
        relay.reset_all();
        assert_eq!(relay.open(), 0);
        let t = Instant::now();
        let r = ping(&mut con).await;
        assert!(r.is_err(), "a reset connection answered: {r:?}");
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "failed only after {:?} (a timeout, not the reset): {r:?}",
            t.elapsed()
        );
        let mut fresh = connect(&relay.url(), Duration::from_secs(1)).await.unwrap();
        assert_eq!(ping(&mut fresh).await.unwrap(), "PONG");
    });
}

/// On Linux the reset is a real RST (ECONNRESET), not a FIN (end of stream).
#[cfg(target_os = "linux")]
#[test]
fn reset_all_sends_rst() {
    let relay = Relay::start(&upstream());
    let mut s = TcpStream::connect(("127.0.0.1", relay.port())).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    s.write_all(b"PING\r\n").unwrap();
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).unwrap();
    relay.reset_all();
    let r = s.read(&mut buf);
    assert!(
        matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "expected ECONNRESET, got {r:?}"
    );
}

#[test]
fn drop_is_prompt_and_closes_everything() {
    let relay = Relay::start(&upstream());
    let port = relay.port();
    let mut live = TcpStream::connect(("127.0.0.1", port)).unwrap();
    live.write_all(b"PING\r\n").unwrap();
    let mut buf = [0u8; 7];
    live.read_exact(&mut buf).unwrap();
    let mut silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    silent.write_all(b"PING\r\n").unwrap();
    silent.read_exact(&mut buf).unwrap();
    relay.blackhole_existing();
    relay.set_delay(Duration::from_millis(100));
    #[cfg(target_os = "linux")]
    assert_eq!(relay_threads(port), 5, "accept + 2 per connection");

    let t = Instant::now();
    drop(relay);
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    for s in [&mut live, &mut silent] {
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let r = s.read(&mut buf);
        assert!(
            matches!(r, Ok(0)) || matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionReset),
            "socket still open after drop: {r:?}"
        );
    }
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "still listening"
    );
    #[cfg(target_os = "linux")]
    assert_eq!(relay_threads(port), 0, "threads of the relay still running");
}

/// Threads of this process named `relay-{port}-...` (Linux only).
#[cfg(target_os = "linux")]
fn relay_threads(port: u16) -> usize {
    let prefix = format!("relay-{port}-");
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with(&prefix))
        .count()
}
