//! Child processes for tests that need real OS processes: the test binary re-executed to
//! run its ignored test `child` with a role in its environment. A child reports over
//! stdout lines starting with `@@` and reads commands from stdin, one a line; the parent
//! can SIGKILL it. Used by `tests/processes.rs` and `tests/many_processes.rs`.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use futures::channel::mpsc;
use futures::StreamExt;

use crate::chaos_support::{blocking, within};
use redis_sync::Tokio;

/// The environment variable that carries a child's role.
pub const ROLE: &str = "REDIS_SYNC_TEST_ROLE";

/// A child process running the test `child` with a role; killed when dropped.
pub struct Kid {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<String>,
    label: String,
}

impl Kid {
    /// Starts the test binary's ignored test `child` with `ROLE=role` and `envs`, talking
    /// to the same Redis as this process.
    pub fn spawn(role: &str, label: &str, envs: &[(&str, String)]) -> Kid {
        let exe = std::env::current_exe().expect("current test binary");
        let mut cmd = Command::new(exe);
        cmd.args([
            "--exact",
            "child",
            "--nocapture",
            "--ignored",
            "--test-threads=1",
        ])
        .env("REDIS_URL", crate::common::redis_url())
        .env(ROLE, role)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn child process");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::unbounded();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest may print "test child ... " on the same line first.
                if let Some(i) = line.find("@@") {
                    if tx.unbounded_send(line[i + 2..].to_owned()).is_err() {
                        break;
                    }
                }
            }
        });
        Kid {
            stdin: child.stdin.take(),
            child: Some(child),
            lines: rx,
            label: label.to_owned(),
        }
    }

    /// The child's process id (for SIGSTOP/SIGCONT).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The next report line, which must start with `word`; returns the rest. Fails the
    /// test after `limit` (a hang guard).
    pub async fn expect(&mut self, word: &str, limit: Duration) -> String {
        let label = self.label.clone();
        let line = within::<Tokio, _>(
            limit,
            &format!("{label}: waiting for {word}"),
            self.lines.next(),
        )
        .await
        .unwrap_or_else(|| panic!("{label} exited before reporting {word}"));
        let rest = line
            .strip_prefix(word)
            .unwrap_or_else(|| panic!("{label}: expected {word}, got {line:?}"));
        rest.trim().to_owned()
    }

    /// Sends one command line.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to child");
        stdin.flush().unwrap();
    }

    /// Waits for the process to exit by itself; fails unless it succeeded.
    pub async fn exits_ok(mut self, limit: Duration) {
        let label = self.label.clone();
        let mut child = self.child.take().expect("running");
        let status = within::<Tokio, _>(
            limit,
            &format!("{label} exiting"),
            blocking(move || child.wait()),
        )
        .await
        .unwrap();
        assert!(status.success(), "{label} failed: {status}");
    }

    /// SIGKILL, then reaps it.
    pub fn sigkill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// In a child: one report line for the parent.
pub fn report(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "@@{line}").unwrap();
    out.flush().unwrap();
}

/// In a child: the lines of its stdin, read on a thread of their own.
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

/// An environment variable of a child, parsed.
pub fn env<T: std::str::FromStr>(key: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    std::env::var(key)
        .unwrap_or_else(|_| panic!("{key} not set"))
        .parse()
        .unwrap_or_else(|e| panic!("{key}: {e:?}"))
}
