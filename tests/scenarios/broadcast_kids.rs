//! Child processes for the broadcast tests (`tests/notify.rs`, `tests/latch.rs`): the test
//! binary re-executed to run its ignored test `child` with a role, a runtime and a name in
//! its environment (as `tests/processes.rs` does, but on any runtime). A child reports
//! over stdout lines starting with `@@` and reads commands from stdin.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use futures::channel::{mpsc, oneshot};
use futures::future::{self, Either};
use futures::StreamExt;
use redis_sync::Runtime;

use crate::common;
use crate::scenarios::rt;

pub const ROLE: &str = "REDIS_SYNC_TEST_ROLE";
pub const NAME: &str = "REDIS_SYNC_TEST_NAME";
pub const PREFIX: &str = "REDIS_SYNC_TEST_PREFIX";
pub const WAITERS: &str = "REDIS_SYNC_TEST_WAITERS";
pub const RUNTIME: &str = "REDIS_SYNC_TEST_RUNTIME";

/// The name of runtime `R`, passed to children so that they run on the same one.
pub fn runtime_name<R: Runtime>() -> &'static str {
    let name = std::any::type_name::<R>();
    if name.ends_with("Tokio") {
        "tokio"
    } else if name.ends_with("AsyncStd") {
        "async-std"
    } else if name.ends_with("Smol") {
        "smol"
    } else {
        panic!("unknown runtime {name}")
    }
}

/// `fut`, or `None` after `limit` on `R`'s clock.
pub async fn within<R: Runtime, F: std::future::Future>(
    limit: Duration,
    fut: F,
) -> Option<F::Output> {
    let sleep = rt::<R>().sleep(limit);
    futures::pin_mut!(fut);
    futures::pin_mut!(sleep);
    match future::select(fut, sleep).await {
        Either::Left((out, _)) => Some(out),
        Either::Right(_) => None,
    }
}

/// A child process; killed when dropped.
pub struct Kid {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<String>,
    pub label: String,
}

impl Kid {
    /// Runs the test `child` of this binary with `role` on runtime `runtime`.
    pub fn spawn(role: &str, label: &str, runtime: &str, envs: &[(&str, String)]) -> Kid {
        let exe = std::env::current_exe().expect("current test binary");
        let mut cmd = Command::new(exe);
        cmd.args([
            "--exact",
            "child",
            "--nocapture",
            "--ignored",
            "--test-threads=1",
        ])
        .env("REDIS_URL", common::redis_url())
        .env(ROLE, role)
        .env(RUNTIME, runtime)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn child process");
        let stdout = child.stdout.take().expect("child stdout");
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

    /// The next report line, which must start with `word`; returns the rest.
    pub async fn expect<R: Runtime>(&mut self, word: &str, limit: Duration) -> String {
        let line = within::<R, _>(limit, self.lines.next())
            .await
            .unwrap_or_else(|| panic!("{}: no {word} within {limit:?}", self.label))
            .unwrap_or_else(|| panic!("{} exited before reporting {word}", self.label));
        line.strip_prefix(word)
            .unwrap_or_else(|| panic!("{}: expected {word}, got {line:?}", self.label))
            .trim()
            .to_owned()
    }

    /// Sends a line to its stdin.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to child");
        stdin.flush().expect("flush child stdin");
    }

    pub fn sigkill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }

    /// Waits for the process to exit by itself; fails unless it succeeded.
    pub async fn exits_ok<R: Runtime>(mut self, limit: Duration) {
        let mut child = self.child.take().expect("running");
        let (tx, rx) = oneshot::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        let status = within::<R, _>(limit, rx)
            .await
            .unwrap_or_else(|| panic!("{} did not exit within {limit:?}", self.label))
            .expect("waiter thread")
            .expect("wait for child");
        assert!(status.success(), "{} failed: {status}", self.label);
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

/// In a child: reports a line to the parent.
pub fn report(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "@@{line}").expect("stdout");
    out.flush().expect("stdout");
}

/// In a child: the lines of stdin, read on a thread of their own.
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

/// In a child: runs `main` on the runtime the parent named.
macro_rules! run_child_on_runtime {
    ($main:ident) => {{
        let runtime = std::env::var(crate::kids::RUNTIME).expect("runtime");
        match runtime.as_str() {
            #[cfg(feature = "tokio")]
            "tokio" => crate::scenarios::run_tokio($main::<redis_sync::Tokio>()),
            #[cfg(feature = "smol")]
            "smol" => crate::scenarios::run_smol($main::<redis_sync::Smol>()),
            #[cfg(feature = "async-std")]
            "async-std" => crate::scenarios::run_async_std($main::<redis_sync::AsyncStd>()),
            other => panic!("unknown runtime {other}"),
        }
    }};
}
