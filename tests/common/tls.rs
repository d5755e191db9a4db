//! A TLS-only redis-server for the `rediss://` tests.
//!
//! At start, a throwaway CA and a server certificate for `127.0.0.1` / `localhost` are made
//! with the `openssl` CLI in a temporary directory; `redis-server` then listens on a free
//! loopback port for TLS only (`--port 0 --tls-port P`, no client certificates required),
//! with no persistence. It is stopped on drop, or, for the process-wide shared server
//! ([`shared`]), when this process exits: as in `server.rs`, a small shell watcher kills
//! it once its parent is gone, even after a SIGKILL.
//!
//! Needs `openssl` and a `redis-server` built with TLS (Debian's is) on PATH; readiness is
//! checked with `redis-cli --tls`.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A TLS-only redis-server this process started.
#[derive(Debug)]
pub struct TlsRedisServer {
    /// The TLS port (there is no plain-text port).
    pub port: u16,
    /// `rediss://127.0.0.1:P/`.
    pub url: String,
    /// The PEM of the throwaway CA that signed the server certificate.
    pub ca_pem: Vec<u8>,
    dir: PathBuf,
    child: Option<Child>,
}

impl TlsRedisServer {
    /// Makes the certificates, starts the server and waits until it answers over TLS.
    pub fn start() -> TlsRedisServer {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("redis-sync-tls-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("cannot create a temporary directory");
        make_certificates(&dir);
        let ca_pem = std::fs::read(dir.join("ca.crt")).expect("cannot read ca.crt");
        let mut server = TlsRedisServer {
            port,
            url: format!("rediss://127.0.0.1:{port}/"),
            ca_pem,
            dir,
            child: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        // The watcher shell stops redis-server (and removes the directory with the keys)
        // when this process dies, even by SIGKILL; on TERM it just stops redis-server.
        let script = format!(
            "redis-server --port 0 --tls-port {port} --bind 127.0.0.1 \
             --tls-cert-file '{dir}/server.crt' --tls-key-file '{dir}/server.key' \
             --tls-ca-cert-file '{dir}/ca.crt' --tls-auth-clients no \
             --save '' --appendonly no --dir '{dir}' --loglevel warning & rp=$!; \
             trap 'kill $rp 2>/dev/null; exit 0' TERM INT; \
             while kill -0 {parent} 2>/dev/null && kill -0 $rp 2>/dev/null; do sleep 0.2; done; \
             kill $rp 2>/dev/null; wait $rp; rm -rf '{dir}'",
            port = self.port,
            dir = self.dir.display(),
            parent = std::process::id(),
        );
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("cannot run sh");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.ping() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "redis-server with TLS exited at start ({status}): is redis-server built \
                     with TLS? (Debian's is)"
                );
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer over TLS on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `redis-cli --tls` arguments for this server, trusting the throwaway CA.
    fn cli(&self) -> Command {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["--tls", "--cacert"])
            .arg(self.dir.join("ca.crt"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stderr(Stdio::null());
        cmd
    }

    /// Whether the server answers `PING` over TLS (certificate checked against the CA).
    pub fn ping(&self) -> bool {
        self.cli()
            .arg("PING")
            .output()
            .map(|out| out.status.success() && out.stdout.starts_with(b"PONG"))
            .unwrap_or(false)
    }

    /// The `redis://` URL of the same port: plain text to a TLS-only port.
    pub fn plain_url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Stops the server (all data is lost: it has no persistence).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = self
                .cli()
                .args(["SHUTDOWN", "NOSAVE"])
                .stdout(Stdio::null())
                .status();
            // TERM, not KILL: the watcher's trap then kills redis-server if still running.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TlsRedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The TLS server shared by this whole test binary, started on first use.
pub fn shared() -> &'static TlsRedisServer {
    static SHARED: OnceLock<TlsRedisServer> = OnceLock::new();
    SHARED.get_or_init(TlsRedisServer::start)
}

/// A client for the shared TLS server that trusts its throwaway CA, through
/// `redis::Client::build_with_tls`.
#[cfg(any(feature = "tls-tokio", feature = "tls-smol", feature = "tls-async-std"))]
pub fn client() -> redis::Client {
    let server = shared();
    redis::Client::build_with_tls(
        server.url.as_str(),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(server.ca_pem.clone()),
        },
    )
    .expect("cannot build a TLS client")
}

/// Makes `ca.crt`/`ca.key` (a self-signed CA) and `server.crt`/`server.key` (signed by it,
/// for `IP:127.0.0.1` and `DNS:localhost`) in `dir`. P-256 keys, valid for two days.
fn make_certificates(dir: &Path) {
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints = critical, CA:FALSE\n\
         keyUsage = critical, digitalSignature, keyEncipherment\n\
         extendedKeyUsage = serverAuth\n\
         subjectAltName = IP:127.0.0.1, DNS:localhost\n",
    )
    .expect("cannot write server.ext");
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    openssl(
        dir,
        &[
            &["req", "-x509", "-nodes", "-days", "2"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-subj",
                "/CN=redis-sync test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat(),
    );
    openssl(
        dir,
        &[
            &["req", "-nodes"][..],
            &ec,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        ]
        .concat(),
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ],
    );
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run openssl: install it (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}
