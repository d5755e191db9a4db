//! `redis-sync`: an operator CLI for the semaphores and events of the `redis-sync` library.
//!
//! One subcommand per function, as `tokio-console` sits beside tokio: `list`, `inspect`,
//! `watch` and `reclaim`. It uses only the library's public API (and its re-exported
//! `redis` crate for `SCAN`), so it reads exactly what the library writes.
//!
//! Exit codes: 0 ok; 1 Redis or connection error; 2 usage error; 3 the named primitive
//! does not exist.

#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]

mod json;
mod list;
mod render;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use redis_sync::{KeyLayout, Semaphore, SemaphoreState, Tokio, DEFAULT_SEMAPHORE_PREFIX};

/// Exit code: a Redis or connection error (or any failure that is not one below).
pub const EXIT_REDIS: u8 = 1;
/// Exit code: a usage error (bad arguments; also an invalid name or prefix).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the named primitive does not exist.
pub const EXIT_NOT_FOUND: u8 = 3;

const AFTER_HELP: &str = "\
Exit codes:
  0  ok
  1  Redis or connection error
  2  usage error (bad arguments, invalid name or prefix)
  3  the named primitive does not exist

Changing a semaphore's count (set-count) is not available yet: resizing is a future
feature of the library.";

/// Inspect and repair redis-sync semaphores and events in Redis.
#[derive(Debug, Parser)]
#[command(name = "redis-sync", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// Redis URL (`rediss://` for TLS).
    #[arg(
        long,
        global = true,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1/"
    )]
    pub url: String,
    /// Key layout the primitives were created with.
    #[arg(long, global = true, value_enum, default_value_t = Layout::HashTagged)]
    pub layout: Layout,
    /// Print JSON, one object per line, instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The key layout, as `redis_sync::KeyLayout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Layout {
    /// `<prefix>:{<name>}:...` (the library's default).
    HashTagged,
    /// redsync 2.x's names, `<prefix>:<name>:...`.
    Redsync2,
}

impl From<Layout> for KeyLayout {
    fn from(l: Layout) -> Self {
        match l {
            Layout::HashTagged => KeyLayout::HashTagged,
            Layout::Redsync2 => KeyLayout::Redsync2,
        }
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the semaphores and events found under the prefixes (SCAN).
    List {
        /// Key prefix of semaphores.
        #[arg(long, default_value = DEFAULT_SEMAPHORE_PREFIX)]
        prefix: String,
        /// Key prefix of events.
        #[arg(long, default_value = redis_sync::DEFAULT_EVENT_PREFIX)]
        event_prefix: String,
    },
    /// Show a semaphore: count, free and held permits, holders and their leases.
    Inspect(Target),
    /// Show a semaphore again and again (inspect every --interval).
    Watch {
        /// The semaphore.
        #[command(flatten)]
        target: Target,
        /// Milliseconds between refreshes.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
        interval: u64,
        /// Stop after this many refreshes (default: forever).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        count: Option<u64>,
    },
    /// Give back now the permits of holders whose lease has expired.
    Reclaim(Target),
}

/// A semaphore named on the command line.
#[derive(Debug, Args)]
pub struct Target {
    /// The semaphore's name.
    pub name: String,
    /// Key prefix of semaphores.
    #[arg(long, default_value = DEFAULT_SEMAPHORE_PREFIX)]
    pub prefix: String,
}

/// Why a command failed, mapped to an exit code.
#[derive(Debug)]
pub enum Failure {
    /// The named primitive does not exist.
    NotFound(String),
    /// An error of the library (Redis, connection, invalid argument).
    Sync(redis_sync::Error),
    /// A Redis error from the CLI's own requests (`SCAN`).
    Redis(redis_sync::redis::RedisError),
    /// A bad argument the command line parser cannot see (e.g. a prefix with braces).
    Usage(String),
    /// Writing to stdout failed (e.g. a closed pipe).
    Io(std::io::Error),
}

impl From<redis_sync::Error> for Failure {
    fn from(e: redis_sync::Error) -> Self {
        Failure::Sync(e)
    }
}

impl From<redis_sync::redis::RedisError> for Failure {
    fn from(e: redis_sync::redis::RedisError) -> Self {
        Failure::Redis(e)
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Io(e)
    }
}

impl Failure {
    fn exit_code(&self) -> u8 {
        match self {
            Failure::NotFound(_) => EXIT_NOT_FOUND,
            Failure::Usage(_) | Failure::Sync(redis_sync::Error::InvalidArgument(_)) => EXIT_USAGE,
            Failure::Sync(_) | Failure::Redis(_) | Failure::Io(_) => EXIT_REDIS,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NotFound(what) => write!(f, "{what} does not exist"),
            Failure::Sync(e) => write!(f, "{e}"),
            Failure::Redis(e) => write!(f, "{e}"),
            Failure::Io(e) => write!(f, "{e}"),
            Failure::Usage(why) => write!(f, "{why}"),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("redis-sync: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_REDIS);
        }
    };
    match runtime.block_on(run(&cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that went away (`| head`) is not an error worth a message.
        Err(Failure::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(f @ (Failure::Redis(_) | Failure::Sync(redis_sync::Error::Redis(_)))) => {
            eprintln!("redis-sync: redis at {}: {f}", redact(&cli.url));
            ExitCode::from(f.exit_code())
        }
        Err(f) => {
            eprintln!("redis-sync: {f}");
            ExitCode::from(f.exit_code())
        }
    }
}

async fn run(cli: &Cli) -> Result<(), Failure> {
    let client = redis_sync::redis::Client::open(cli.url.as_str())?;
    let mut out = std::io::stdout().lock();
    match &cli.command {
        Command::List {
            prefix,
            event_prefix,
        } => {
            let prefix = list::clean_prefix(prefix).map_err(Failure::Usage)?;
            let event_prefix = list::clean_prefix(event_prefix).map_err(Failure::Usage)?;
            let found = list::scan(&client, prefix, event_prefix, cli.layout.into()).await?;
            if cli.json {
                for p in &found {
                    writeln!(out, "{}", render::primitive_json(p))?;
                }
            } else {
                write!(out, "{}", render::primitives_text(&found))?;
            }
        }
        Command::Inspect(t) => {
            let state = inspect(&client, t, cli.layout).await?;
            if cli.json {
                writeln!(
                    out,
                    "{}",
                    render::state_json(&t.name, &t.prefix, &state, None)
                )?;
            } else {
                write!(out, "{}", render::state_text(&t.name, &state))?;
            }
        }
        Command::Watch {
            target,
            interval,
            count,
        } => {
            let clear = !cli.json && std::io::stdout().is_terminal();
            let mut n = 0u64;
            loop {
                let state = inspect(&client, target, cli.layout).await?;
                let at = render::unix_ms();
                if cli.json {
                    writeln!(
                        out,
                        "{}",
                        render::state_json(&target.name, &target.prefix, &state, Some(at))
                    )?;
                } else {
                    if clear {
                        write!(out, "\x1b[2J\x1b[H")?;
                    } else if n > 0 {
                        writeln!(out)?;
                    }
                    writeln!(out, "# {} (every {interval} ms)", render::clock(at))?;
                    write!(out, "{}", render::state_text(&target.name, &state))?;
                }
                out.flush()?;
                n += 1;
                if count.is_some_and(|c| n >= c) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(*interval)).await;
            }
        }
        Command::Reclaim(t) => {
            // Fail with "does not exist" without joining anything.
            inspect(&client, t, cli.layout).await?;
            let sem = Semaphore::<Tokio>::builder(&client, &t.name)
                .key_prefix(&t.prefix)
                .key_layout(cli.layout.into())
                // A repair must work on any server; this handle takes no permit.
                .allow_eviction_policy(true)
                .attach(Some(Duration::from_secs(2)))
                .await
                .map_err(|e| match e {
                    redis_sync::Error::Timeout(_) => not_found(&t.name),
                    e => e.into(),
                })?;
            let reclaimed = sem.reclaim_expired().await;
            let shutdown = sem.shutdown().await;
            let reclaimed = reclaimed?;
            shutdown?;
            if cli.json {
                writeln!(
                    out,
                    "{{\"kind\":\"semaphore\",\"name\":{},\"reclaimed\":{reclaimed}}}",
                    json::string(&t.name)
                )?;
            } else {
                writeln!(
                    out,
                    "semaphore {}: {reclaimed} permit{} of expired holders went back to the pool",
                    t.name,
                    if reclaimed == 1 { "" } else { "s" }
                )?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

fn not_found(name: &str) -> Failure {
    Failure::NotFound(format!("semaphore {name}"))
}

/// Reads a semaphore without joining it; [`Failure::NotFound`] when it has no count.
async fn inspect(
    client: &redis_sync::redis::Client,
    t: &Target,
    layout: Layout,
) -> Result<SemaphoreState, Failure> {
    let state = Semaphore::<Tokio>::builder(client, &t.name)
        .key_prefix(&t.prefix)
        .key_layout(layout.into())
        .inspect()
        .await?;
    if state.count.is_none() {
        return Err(not_found(&t.name));
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("rediss://:secret@h/"), "rediss://:***@h/");
        assert_eq!(redact("redis://127.0.0.1/"), "redis://127.0.0.1/");
    }
}
