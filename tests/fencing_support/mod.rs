//! Child processes and independent records for `tests/fencing.rs`.
//!
//! The children are the test binary re-executed to run its ignored test `child` with a role
//! in the environment (as in `tests/processes.rs`). They report on stdout, one line per
//! report starting with `@@`, and read commands on stdin. Their records go to Redis through
//! plain connections of their own, named [`RECORDER`] so that the parent's `CLIENT KILL`s
//! spare them: only the library's connections are killed.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use futures::channel::mpsc;
use futures::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;

use crate::chaos_support::{blocking, within};

type R = redis_sync::Tokio;

/// The environment variable that carries a child's role.
pub const ROLE: &str = "REDIS_SYNC_FENCING_ROLE";
/// `CLIENT SETNAME` of the children's record connections.
pub const RECORDER: &str = "fencing-recorder";
/// `CLIENT SETNAME` of the parent's own connection.
pub const CHECKER: &str = "fencing-checker";

/// A child process; SIGCONTed and SIGKILLed when dropped.
pub struct Kid {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    /// Its reports, unless they go to a shared channel (see [`Kid::spawn_tagged`]).
    lines: Option<mpsc::UnboundedReceiver<String>>,
    pub label: String,
}

impl Kid {
    /// Starts the child test `child` with role `role`, Redis at `url`; its reports are read
    /// with [`Kid::expect`].
    pub fn spawn(role: &str, label: &str, url: &str, envs: &[(&str, String)]) -> Kid {
        let (tx, rx) = mpsc::unbounded();
        let mut kid = Self::start(role, label, url, envs, move |line| {
            tx.unbounded_send(line).is_ok()
        });
        kid.lines = Some(rx);
        kid
    }

    /// Like [`Kid::spawn`], but its reports go to `tx`, tagged with `tag`.
    pub fn spawn_tagged(
        role: &str,
        label: &str,
        url: &str,
        envs: &[(&str, String)],
        tag: usize,
        tx: mpsc::UnboundedSender<(usize, String)>,
    ) -> Kid {
        Self::start(role, label, url, envs, move |line| {
            tx.unbounded_send((tag, line)).is_ok()
        })
    }

    fn start(
        role: &str,
        label: &str,
        url: &str,
        envs: &[(&str, String)],
        mut sink: impl FnMut(String) -> bool + Send + 'static,
    ) -> Kid {
        let exe = std::env::current_exe().expect("current test binary");
        let mut cmd = Command::new(exe);
        cmd.args([
            "--exact",
            "child",
            "--nocapture",
            "--ignored",
            "--test-threads=1",
        ])
        .env("REDIS_URL", url)
        .env(ROLE, role)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn child process");
        let stdout = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest may print "test child ... " on the same line first.
                if let Some(i) = line.find("@@") {
                    if !sink(line[i + 2..].to_owned()) {
                        break;
                    }
                }
            }
        });
        Kid {
            stdin: child.stdin.take(),
            child: Some(child),
            lines: None,
            label: label.to_owned(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The next report, which must start with `word`; returns the rest.
    pub async fn expect(&mut self, word: &str, limit: Duration) -> String {
        let label = self.label.clone();
        let lines = self.lines.as_mut().expect("reports read with expect()");
        let line = within::<R, _>(limit, &format!("{label}: waiting for {word}"), lines.next())
            .await
            .unwrap_or_else(|| panic!("{label} exited before reporting {word}"));
        let rest = line
            .strip_prefix(word)
            .unwrap_or_else(|| panic!("{label}: expected {word}, got {line:?}"));
        rest.trim().to_owned()
    }

    /// Sends one command line; false when the child is gone.
    pub fn send(&mut self, line: &str) -> bool {
        let Some(stdin) = self.stdin.as_mut() else {
            return false;
        };
        writeln!(stdin, "{line}").is_ok() && stdin.flush().is_ok()
    }

    /// Waits for the process to exit by itself; fails unless it succeeded.
    pub async fn exits_ok(mut self, limit: Duration) {
        let label = self.label.clone();
        let mut child = self.child.take().expect("running");
        let status = within::<R, _>(
            limit,
            &format!("{label} exiting"),
            blocking(move || child.wait()),
        )
        .await
        .expect("wait for a child");
        assert!(status.success(), "{label} failed: {status}");
    }

    /// Its exit status if it has exited (by itself), without waiting.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGKILL, and reap.
    pub fn sigkill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Ok too if it has just exited by itself.
            let _ = child.kill();
            child.wait().expect("reap");
        }
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends `sig` (e.g. `-STOP`) to `pid`.
pub fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(st.success(), "kill {sig} {pid} failed");
}

/// Child side: one report line to the parent.
pub fn report(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "@@{line}").expect("report to the parent");
    out.flush().expect("report to the parent");
}

/// Child side: the lines of stdin, read on a thread of their own.
pub fn stdin_lines() -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.unbounded_send(line.trim().to_owned()).is_err() {
                break;
            }
        }
    });
    rx
}

/// A plain connection (no response timeout) named `name` with `CLIENT SETNAME`. Retried:
/// the parent may kill it in the instant before it has its name.
pub async fn named_conn(client: &redis::Client, name: &str) -> MultiplexedConnection {
    let cfg = AsyncConnectionConfig::new()
        .set_response_timeout(None)
        .set_connection_timeout(Some(Duration::from_secs(5)));
    let mut last = None;
    for _ in 0..100 {
        match client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
        {
            Ok(mut c) => {
                let named: redis::RedisResult<()> = redis::cmd("CLIENT")
                    .arg("SETNAME")
                    .arg(name)
                    .query_async(&mut c)
                    .await;
                match named {
                    Ok(()) => return c,
                    Err(e) => last = Some(e),
                }
            }
            Err(e) => last = Some(e),
        }
        crate::chaos_support::sleep::<R>(Duration::from_millis(10)).await;
    }
    panic!("cannot open a named connection: {last:?}")
}

/// The storage service of the fencing examples: it keeps, per key, the value and the
/// highest fencing token it has accepted, and refuses a write whose token is lower (a
/// write with the same token, by the same holder, is accepted). KEYS: the record (a hash).
/// ARGV: token, value. Returns `{1, token}` accepted, or `{0, highest token seen}`.
pub const STORE: &str = r#"
local seen = tonumber(redis.call('HGET', KEYS[1], 'token') or '0')
local t = tonumber(ARGV[1])
if t < seen then return {0, seen} end
redis.call('HSET', KEYS[1], 'token', ARGV[1], 'value', ARGV[2])
return {1, t}
"#;

/// The storage's answer to a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    Accepted,
    /// Refused: the storage has seen this higher token.
    Rejected {
        highest: u64,
    },
}

/// Writes `value` to the storage record `key` under fencing token `token`.
pub async fn store(
    conn: &mut MultiplexedConnection,
    key: &str,
    token: u64,
    value: &str,
) -> redis::RedisResult<Stored> {
    let (ok, seen): (u8, u64) = redis::Script::new(STORE)
        .key(key)
        .arg(token)
        .arg(value)
        .invoke_async(conn)
        .await?;
    Ok(if ok == 1 {
        Stored::Accepted
    } else {
        Stored::Rejected { highest: seen }
    })
}
