//! A fault-injecting TCP relay for tests and examples: it sits between Redis clients and a
//! real redis-server and, on command, turns connections silent (a host that vanished),
//! delays traffic, or resets connections.
//!
//! Only `std`: usable from tests (`mod common;`) and from examples
//! (`#[path = "../tests/common/relay.rs"] mod relay;`).
//!
//! Threads (named `relay-{port}-...`): one accept thread, and one thread per direction of
//! every connection. A
//! forwarding thread blocks in `read` (with a timeout only while delayed chunks wait, and
//! a 250 ms backstop); the relay wakes it on drop or reset with `shutdown(Read)` on its
//! socket, which sends nothing to the peer. Idle connections cost no CPU.
//!
//! Resets: on Linux, [`Relay::reset_all`] sends a real RST (it sets `SO_LINGER` to zero
//! through `setsockopt` from the C library std already links, then closes the sockets).
//! Elsewhere it falls back to closing both sockets (FIN).

#![allow(dead_code)]

use std::collections::VecDeque;
use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The longest a forwarding thread sleeps in `read` before it looks at the stop flag again
/// (a backstop: drop and reset wake it at once).
const IDLE_WAIT: Duration = Duration::from_millis(250);
/// A write to a peer that does not read gives up after this long, to look at the state.
const WRITE_WAIT: Duration = Duration::from_millis(50);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A TCP relay on a free `127.0.0.1` port in front of one upstream address, with fault
/// injection. Dropping it stops every thread and closes every socket.
pub struct Relay {
    inner: Arc<Inner>,
    port: u16,
    acceptor: Option<JoinHandle<()>>,
}

struct Inner {
    upstream: String,
    port: u16,
    stop: AtomicBool,
    blackhole_new: AtomicBool,
    delay_ns: AtomicU64,
    accepted: AtomicUsize,
    conns: Mutex<Vec<Arc<Conn>>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Bytes flow both ways.
    Forwarding,
    /// Incoming bytes are read and discarded; sockets stay open until the relay is dropped.
    Blackholed,
    /// One side closed or failed: both sockets were shut down (the close was passed on).
    Closed,
    /// Being closed abruptly by `reset_all`.
    Reset,
}

struct Conn {
    client: TcpStream,
    upstream: Option<TcpStream>,
    /// Every write happens under this lock after checking the state, so that once
    /// `blackhole_existing` (or `reset_all`) returns, not one more byte is forwarded.
    state: Mutex<State>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Conn {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake(&self) {
        let _ = self.client.shutdown(Shutdown::Read);
        if let Some(u) = &self.upstream {
            let _ = u.shutdown(Shutdown::Read);
        }
    }

    fn join(&self) {
        let handles: Vec<_> = std::mem::take(&mut *lock(&self.threads));
        for h in handles {
            let _ = h.join();
        }
    }

    fn finished(&self) -> bool {
        lock(&self.threads).iter().all(|h| h.is_finished())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Relay {
    /// Listens on a free 127.0.0.1 port and forwards every accepted connection to
    /// `upstream` (`"127.0.0.1:6379"` form).
    pub fn start(upstream: &str) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("relay: cannot bind a port");
        let port = listener.local_addr().expect("relay: local addr").port();
        let inner = Arc::new(Inner {
            upstream: upstream.to_owned(),
            port,
            stop: AtomicBool::new(false),
            blackhole_new: AtomicBool::new(false),
            delay_ns: AtomicU64::new(0),
            accepted: AtomicUsize::new(0),
            conns: Mutex::new(Vec::new()),
        });
        let acceptor = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name(format!("relay-{port}-acc"))
                .spawn(move || accept_loop(listener, inner))
                .expect("relay: spawn")
        };
        Relay {
            inner,
            port,
            acceptor: Some(acceptor),
        }
    }

    /// [`Relay::start`] in front of `127.0.0.1:{port}`.
    pub fn start_to_port(port: u16) -> Relay {
        Relay::start(&format!("127.0.0.1:{port}"))
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:{port}/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Every connection open now stops forwarding in both directions without closing either
    /// socket: both peers see silence (no FIN, no RST), like a host that vanished. Those
    /// sockets stay open (their incoming bytes read and discarded) until the relay is
    /// dropped. New connections are not affected. When it returns, no further byte of
    /// those connections is forwarded.
    pub fn blackhole_existing(&self) {
        for c in lock(&self.inner.conns).iter() {
            let mut st = c.state();
            if *st == State::Forwarding {
                *st = State::Blackholed;
            }
        }
    }

    /// While on, new connections are accepted by TCP but never forwarded (silence, kept
    /// open as with [`Relay::blackhole_existing`]).
    pub fn blackhole_new(&self, on: bool) {
        self.inner.blackhole_new.store(on, Ordering::SeqCst);
    }

    /// Adds `d` of delay to every chunk forwarded from now on, in both directions, on all
    /// connections (`Duration::ZERO`: none). A chunk is due `d` after it was read; the
    /// order of bytes is preserved (a chunk never overtakes an earlier one).
    pub fn set_delay(&self, d: Duration) {
        self.inner.delay_ns.store(
            d.as_nanos().min(u128::from(u64::MAX)) as u64,
            Ordering::SeqCst,
        );
    }

    /// Closes every connection that is forwarding now abruptly. On Linux both peers get an
    /// RST (`SO_LINGER` 0, then close); elsewhere a FIN (plain close). Black-holed
    /// connections are left as they are. Returns once the sockets are closed.
    pub fn reset_all(&self) {
        let victims: Vec<Arc<Conn>> = {
            let mut conns = lock(&self.inner.conns);
            let mut victims = Vec::new();
            conns.retain(|c| {
                let mut st = c.state();
                if *st == State::Forwarding {
                    *st = State::Reset;
                    victims.push(c.clone());
                    false
                } else {
                    true
                }
            });
            victims
        };
        for c in &victims {
            set_linger_zero(&c.client);
            if let Some(u) = &c.upstream {
                set_linger_zero(u);
            }
            c.wake();
        }
        for c in &victims {
            c.join();
        }
        // The threads are gone: dropping the last references closes the sockets.
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.inner.accepted.load(Ordering::SeqCst)
    }

    /// Connections open and forwarding now.
    pub fn open(&self) -> usize {
        lock(&self.inner.conns)
            .iter()
            .filter(|c| *c.state() == State::Forwarding)
            .count()
    }
}

impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("port", &self.port)
            .field("upstream", &self.inner.upstream)
            .field("accepted", &self.accepted())
            .field("open", &self.open())
            .field(
                "delay",
                &Duration::from_nanos(self.inner.delay_ns.load(Ordering::SeqCst)),
            )
            .field(
                "blackhole_new",
                &self.inner.blackhole_new.load(Ordering::SeqCst),
            )
            .finish()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        // Wake the accept thread with a connection of our own; it sees the flag and ends.
        let woke = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_secs(1),
        )
        .is_ok();
        if let Some(a) = self.acceptor.take() {
            if woke {
                let _ = a.join();
            }
        }
        let conns: Vec<Arc<Conn>> = std::mem::take(&mut *lock(&self.inner.conns));
        for c in &conns {
            c.wake();
        }
        for c in &conns {
            c.join();
        }
    }
}

fn accept_loop(listener: TcpListener, inner: Arc<Inner>) {
    for stream in listener.incoming() {
        if inner.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = stream else {
            // Out of descriptors or similar: do not spin.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        inner.accepted.fetch_add(1, Ordering::SeqCst);
        let _ = client.set_nodelay(true);
        let _ = client.set_write_timeout(Some(WRITE_WAIT));
        let blackholed = inner.blackhole_new.load(Ordering::SeqCst);
        let upstream = if blackholed {
            None
        } else {
            match connect(&inner.upstream) {
                Some(u) => Some(u),
                // Upstream down: the client sees its connection closed.
                None => continue,
            }
        };
        let conn = Arc::new(Conn {
            client,
            upstream,
            state: Mutex::new(if blackholed {
                State::Blackholed
            } else {
                State::Forwarding
            }),
            threads: Mutex::new(Vec::new()),
        });
        {
            let mut conns = lock(&inner.conns);
            // Forget connections that ended by themselves.
            conns.retain(|c| !(*c.state() == State::Closed && c.finished()));
            conns.push(conn.clone());
        }
        let mut handles = Vec::new();
        for to_upstream in [true, false] {
            if conn.upstream.is_none() && !to_upstream {
                continue;
            }
            let (c, i) = (conn.clone(), inner.clone());
            let spawned = std::thread::Builder::new()
                .name(format!(
                    "relay-{}-{}",
                    inner.port,
                    if to_upstream { "up" } else { "dn" }
                ))
                .spawn(move || pump(&c, &i, to_upstream));
            match spawned {
                Ok(h) => handles.push(h),
                Err(_) => close(&conn),
            }
        }
        lock(&conn.threads).extend(handles);
    }
}

fn connect(addr: &str) -> Option<TcpStream> {
    let addr = addr.to_socket_addrs().ok()?.next()?;
    let s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).ok()?;
    let _ = s.set_nodelay(true);
    let _ = s.set_write_timeout(Some(WRITE_WAIT));
    Some(s)
}

/// Passes a close on: both sockets shut down both ways (the peers see FIN).
fn close(conn: &Conn) {
    let mut st = conn.state();
    if *st == State::Forwarding {
        *st = State::Closed;
        let _ = conn.client.shutdown(Shutdown::Both);
        if let Some(u) = &conn.upstream {
            let _ = u.shutdown(Shutdown::Both);
        }
    }
}

/// One direction of one connection: reads from its source, and forwards each chunk when it
/// is due, as long as the connection is forwarding.
fn pump(conn: &Conn, inner: &Inner, to_upstream: bool) {
    let (mut src, dst) = if to_upstream {
        (&conn.client, conn.upstream.as_ref())
    } else {
        (
            conn.upstream.as_ref().expect("upstream"),
            Some(&conn.client),
        )
    };
    let mut queue: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut last_timeout = None;
    loop {
        if inner.stop.load(Ordering::SeqCst) {
            return;
        }
        let state = *conn.state();
        match state {
            State::Forwarding => {}
            State::Blackholed => queue.clear(),
            State::Closed | State::Reset => return,
        }
        // Forward what is due.
        let now = Instant::now();
        while queue.front().is_some_and(|(due, _)| *due <= now) {
            let (_, chunk) = queue.pop_front().expect("front");
            if let Some(dst) = dst {
                if !forward(conn, inner, dst, &chunk) {
                    break;
                }
            }
        }
        let wait = match queue.front() {
            Some((due, _)) => due
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(1), IDLE_WAIT),
            None => IDLE_WAIT,
        };
        if last_timeout != Some(wait) {
            let _ = src.set_read_timeout(Some(wait));
            last_timeout = Some(wait);
        }
        match src.read(&mut buf) {
            Ok(0) => {
                if inner.stop.load(Ordering::SeqCst) {
                    return;
                }
                let state = *conn.state();
                match state {
                    // Pass the close on once what was read before is delivered.
                    State::Forwarding => {
                        for (due, chunk) in queue.drain(..) {
                            std::thread::sleep(due.saturating_duration_since(Instant::now()));
                            if let Some(dst) = dst {
                                if !forward(conn, inner, dst, &chunk) {
                                    break;
                                }
                            }
                        }
                        close(conn);
                    }
                    // Silence: the other side learns nothing; sockets stay until drop.
                    State::Blackholed | State::Closed | State::Reset => {}
                }
                return;
            }
            Ok(n) => {
                if *conn.state() != State::Forwarding {
                    continue;
                }
                let delay = Duration::from_nanos(inner.delay_ns.load(Ordering::SeqCst));
                if delay.is_zero() && queue.is_empty() {
                    if let Some(dst) = dst {
                        forward(conn, inner, dst, &buf[..n]);
                    }
                } else {
                    queue.push_back((Instant::now() + delay, buf[..n].to_vec()));
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => {
                if *conn.state() == State::Forwarding {
                    close(conn);
                }
                return;
            }
        }
    }
}

/// Writes `chunk` to `dst` while the connection forwards; false if it stopped forwarding
/// or the write failed (then the connection is closed).
fn forward(conn: &Conn, inner: &Inner, mut dst: &TcpStream, chunk: &[u8]) -> bool {
    let mut off = 0;
    while off < chunk.len() {
        if inner.stop.load(Ordering::SeqCst) {
            return false;
        }
        let st = conn.state();
        if *st != State::Forwarding {
            return false;
        }
        match dst.write(&chunk[off..]) {
            Ok(0) => {
                drop(st);
                close(conn);
                return false;
            }
            Ok(n) => off += n,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => {
                drop(st);
                close(conn);
                return false;
            }
        }
    }
    true
}

/// `SO_LINGER` {on, 0}: the next close sends RST instead of FIN. True if set.
#[cfg(all(
    target_os = "linux",
    any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "riscv64"
    )
))]
fn set_linger_zero(s: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    use std::os::raw::{c_int, c_void};

    #[repr(C)]
    struct Linger {
        l_onoff: c_int,
        l_linger: c_int,
    }
    extern "C" {
        fn setsockopt(
            socket: c_int,
            level: c_int,
            name: c_int,
            value: *const c_void,
            len: u32,
        ) -> c_int;
    }
    const SOL_SOCKET: c_int = 1;
    const SO_LINGER: c_int = 13;
    let l = Linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid descriptor owned by `s`, and a pointer to a live `struct linger` of
    // the size passed.
    unsafe {
        setsockopt(
            s.as_raw_fd(),
            SOL_SOCKET,
            SO_LINGER,
            (&l as *const Linger).cast(),
            std::mem::size_of::<Linger>() as u32,
        ) == 0
    }
}

/// Not available here: `reset_all` closes with FIN.
#[cfg(not(all(
    target_os = "linux",
    any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "riscv64"
    )
)))]
fn set_linger_zero(_s: &TcpStream) -> bool {
    false
}
