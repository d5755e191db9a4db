//! The `redis-sync` binary against a real redis-server: every command, its text and JSON
//! output, and its exit codes.

#[path = "../../tests/common/server.rs"]
mod server;
// Its `client()` is for the library's own `tls-*` features, which this crate lacks.
#[allow(unexpected_cfgs)]
#[path = "../../tests/common/tls.rs"]
mod tls;

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use redis_sync::{redis, Event, Semaphore, Tokio};
use serde_json::Value;

/// A key prefix of its own for each test, so tests run in parallel safely.
fn unique(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "test:cli:{what}:{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs the binary with `args`; stdout and stderr are captured.
fn run(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_redis-sync"))
        .args(args)
        .env_remove("REDIS_URL")
        .output()
        .expect("cannot run the redis-sync binary");
    eprintln!(
        "$ redis-sync {}\n{}{}(exit {:?})",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        out.status.code()
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("stdout is not UTF-8")
}

fn json_lines(s: &str) -> Vec<Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON {l:?}: {e}")))
        .collect()
}

/// A semaphore of 8 under `prefix`: handle `a` holds 2 permits, handle `b` holds 1.
struct Fixture {
    client: redis::Client,
    a: Semaphore<Tokio>,
    b: Semaphore<Tokio>,
    permits: Vec<redis_sync::Permit<Tokio>>,
}

async fn fixture(url: &str, prefix: &str) -> Fixture {
    let client = redis::Client::open(url).unwrap();
    let builder = || Semaphore::<Tokio>::builder(&client, "jobs").key_prefix(prefix);
    let a = builder().create(8).await.unwrap();
    let b = builder().create(8).await.unwrap();
    let permits = vec![
        a.acquire().await.unwrap(),
        a.acquire().await.unwrap(),
        b.acquire().await.unwrap(),
    ];
    Fixture {
        client,
        a,
        b,
        permits,
    }
}

/// The CLI runs on a blocking thread, so the handles' tasks keep running meanwhile.
async fn cli(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&args)
    })
    .await
    .unwrap()
}

async fn cli_ok(args: &[&str]) -> String {
    let out = cli(args).await;
    assert_eq!(out.status.code(), Some(0), "{args:?} failed");
    stdout(&out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_finds_semaphores_and_events() {
    let url = server::redis_url();
    let prefix = unique("sem");
    let event_prefix = unique("ev");
    let f = fixture(&url, &prefix).await;
    let done = Event::<Tokio>::builder(&f.client, "done")
        .key_prefix(&event_prefix)
        .open()
        .await
        .unwrap();
    done.set().await.unwrap();
    done.set().await.unwrap();
    let common = ["--url", &url, "list", "--prefix", &prefix];
    let mut args = common.to_vec();
    args.extend(["--event-prefix", &event_prefix]);

    let text = cli_ok(&args).await;
    let lines: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["KIND", "NAME", "COUNT", "FREE", "PENDING"]);
    assert!(
        lines.contains(&vec!["semaphore", "jobs", "8", "5", "-"]),
        "{text}"
    );
    assert!(
        lines.contains(&vec!["event", "done", "-", "-", "2"]),
        "{text}"
    );
    assert_eq!(lines.len(), 3, "{text}");

    args.insert(0, "--json");
    let found = json_lines(&cli_ok(&args).await);
    assert_eq!(found.len(), 2);
    let sem = &found[0];
    assert_eq!(sem["kind"], "semaphore");
    assert_eq!(sem["name"], "jobs");
    assert_eq!(sem["count"], 8);
    assert_eq!(sem["free"], 5);
    assert_eq!(found[1]["kind"], "event");
    assert_eq!(found[1]["name"], "done");
    assert_eq!(found[1]["pending"], 2);

    // Nothing under another prefix; a trailing ':' is ignored as by the library.
    let empty = unique("empty");
    let none = cli_ok(&["--url", &url, "--json", "list", "--prefix", &empty]).await;
    assert!(!none.contains("semaphore"), "{none}");
    let with_colon = format!("{prefix}:");
    let again = cli_ok(&["--url", &url, "list", "--prefix", &with_colon]).await;
    assert!(again.contains("jobs"), "{again}");

    drop(f.permits);
    f.a.shutdown().await.unwrap();
    f.b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_and_watch_show_holders() {
    let url = server::redis_url();
    let prefix = unique("inspect");
    let f = fixture(&url, &prefix).await;

    let text = cli_ok(&["--url", &url, "inspect", "jobs", "--prefix", &prefix]).await;
    assert!(text.contains("count 8  free 5  held 3"), "{text}");
    assert!(text.contains("[###.....] 3/8 used"), "{text}");
    assert!(text.contains("HOLDER"), "{text}");
    let state = f.a.inspect().await.unwrap();
    assert_eq!(state.holders.len(), 2);
    for h in &state.holders {
        assert!(text.contains(&h.id), "{text}");
    }

    let found = json_lines(
        &cli_ok(&[
            "--url", &url, "inspect", "jobs", "--prefix", &prefix, "--json",
        ])
        .await,
    );
    assert_eq!(found.len(), 1);
    let s = &found[0];
    assert_eq!(s["name"], "jobs");
    assert_eq!(s["prefix"], prefix.as_str());
    assert_eq!((&s["count"], &s["free"]), (&8.into(), &5.into()));
    assert_eq!((&s["used"], &s["held"]), (&3.into(), &3.into()));
    let holders = s["holders"].as_array().unwrap();
    assert_eq!(holders.len(), 2);
    let mut permits: Vec<u64> = holders
        .iter()
        .map(|h| h["permits"].as_u64().unwrap())
        .collect();
    permits.sort();
    assert_eq!(permits, [1, 2]);
    for h in holders {
        assert!(h["lease_remaining_ms"].as_u64().unwrap() > 0, "{h}");
        assert_eq!(h["expired"], false);
    }

    // REDIS_URL is read when --url is absent.
    let out = tokio::task::spawn_blocking({
        let (url, prefix) = (url.clone(), prefix.clone());
        move || {
            Command::new(env!("CARGO_BIN_EXE_redis-sync"))
                .args(["inspect", "jobs", "--prefix", &prefix])
                .env("REDIS_URL", &url)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("3/8 used"));

    let watch = ["--url", &url, "watch", "jobs", "--prefix", &prefix];
    let mut args = watch.to_vec();
    args.extend(["--count", "2", "--interval", "50"]);
    let text = cli_ok(&args).await;
    assert_eq!(text.matches("3/8 used").count(), 2, "{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("# ")).count(), 2);
    args.push("--json");
    let frames = json_lines(&cli_ok(&args).await);
    assert_eq!(frames.len(), 2);
    for frame in &frames {
        assert_eq!(frame["free"], 5);
        assert!(frame["at_ms"].as_u64().unwrap() > 0);
    }
    assert!(frames[1]["at_ms"].as_u64() >= frames[0]["at_ms"].as_u64());

    drop(f.permits);
    f.a.shutdown().await.unwrap();
    f.b.shutdown().await.unwrap();
    let text = cli_ok(&["--url", &url, "inspect", "jobs", "--prefix", &prefix]).await;
    assert!(text.contains("[........] 0/8 used"), "{text}");
    assert!(text.contains("no holders"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reclaim_gives_back_expired_holders() {
    let url = server::redis_url();
    let prefix = unique("reclaim");
    let f = fixture(&url, &prefix).await;
    let state = f.b.inspect().await.unwrap();
    let b_id = state
        .holders
        .iter()
        .find(|h| h.permits == 1)
        .unwrap()
        .id
        .clone();
    // `b` crashes: nobody renews its lease, which we push into the past.
    f.b.close();
    let mut conn = f.client.get_multiplexed_async_connection().await.unwrap();
    let changed: i64 = redis::cmd("ZADD")
        .arg(format!("{prefix}:{{jobs}}:leases"))
        .arg("XX")
        .arg("CH")
        .arg(1)
        .arg(&b_id)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(changed, 1);

    let text = cli_ok(&["--url", &url, "inspect", "jobs", "--prefix", &prefix]).await;
    assert!(text.contains("expired"), "{text}");
    let s = &json_lines(
        &cli_ok(&[
            "--url", &url, "--json", "inspect", "jobs", "--prefix", &prefix,
        ])
        .await,
    )[0];
    let expired: Vec<&Value> = s["holders"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["expired"] == true)
        .collect();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0]["lease_remaining_ms"], Value::Null);

    let text = cli_ok(&["--url", &url, "reclaim", "jobs", "--prefix", &prefix]).await;
    assert!(
        text.contains(": 1 permit of expired holders went back"),
        "{text}"
    );
    let after = f.a.inspect().await.unwrap();
    assert_eq!(after.free, 6);
    assert_eq!(
        after.holders.len(),
        1,
        "the CLI's own handle left nothing behind"
    );
    assert_eq!(after.held(), 2);

    // Nothing more to reclaim.
    let again = json_lines(
        &cli_ok(&[
            "--url", &url, "--json", "reclaim", "jobs", "--prefix", &prefix,
        ])
        .await,
    );
    assert_eq!(again[0]["reclaimed"], 0);
    assert_eq!(again[0]["name"], "jobs");

    drop(f.permits);
    f.a.shutdown().await.unwrap();
}

#[test]
fn a_missing_semaphore_exits_3() {
    let url = server::redis_url();
    let prefix = unique("missing");
    for cmd in ["inspect", "watch", "reclaim"] {
        let out = run(&["--url", &url, cmd, "nope", "--prefix", &prefix]);
        assert_eq!(out.status.code(), Some(3), "{cmd}");
        assert!(out.stdout.is_empty());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("semaphore nope does not exist"), "{err}");
    }
}

#[test]
fn an_unreachable_redis_exits_1() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}/");
    for args in [
        vec!["list"],
        vec!["inspect", "jobs"],
        vec!["watch", "jobs", "--count", "1"],
        vec!["reclaim", "jobs"],
        vec!["--json", "list"],
    ] {
        let mut all = vec!["--url", url.as_str()];
        all.extend(args.iter().copied());
        let out = run(&all);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&url), "{err}");
    }
}

#[test]
fn usage_errors_exit_2() {
    let url = server::redis_url();
    for args in [
        vec!["inspect"],
        vec!["frobnicate"],
        vec!["list", "--prefix", "a{b}"],
        vec!["inspect", "a{b}"],
        vec!["inspect", "x", "--prefix", ":"],
        vec!["watch", "x", "--interval", "0"],
        vec!["set-count", "x", "3"],
    ] {
        let mut all = vec!["--url", url.as_str()];
        all.extend(args.iter().copied());
        assert_eq!(run(&all).status.code(), Some(2), "{args:?}");
    }
    let help = stdout(&run(&["--help"]));
    assert!(help.contains("Exit codes:"), "{help}");
    assert!(help.contains("set-count"), "{help}");
}

/// `rediss://` works, with the server's certificate checked against a CA given by
/// `SSL_CERT_FILE` (read by rustls-native-certs), and fails with exit 1 when the CA is
/// not trusted.
#[test]
fn rediss_urls_work() {
    let server = tls::TlsRedisServer::start();
    let ca = std::env::temp_dir().join(format!("redis-sync-cli-ca-{}.crt", server.port));
    std::fs::write(&ca, &server.ca_pem).unwrap();
    let run_tls = |ca: Option<&std::path::Path>, args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_redis-sync"));
        cmd.args(["--url", &server.url]).args(args);
        cmd.env_remove("REDIS_URL").env_remove("SSL_CERT_DIR");
        match ca {
            Some(ca) => cmd.env("SSL_CERT_FILE", ca),
            None => cmd.env_remove("SSL_CERT_FILE"),
        };
        cmd.output().unwrap()
    };
    let out = run_tls(Some(&ca), &["--json", "list"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = run_tls(Some(&ca), &["inspect", "nope"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let out = run_tls(None, &["list"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "an unknown CA must fail: {out:?}"
    );
    let _ = std::fs::remove_file(&ca);
}
