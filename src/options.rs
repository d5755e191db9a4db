//! Settings shared by the builders.

use std::time::Duration;

use std::sync::Arc;

use crate::context::{Context, Settings, Target};
use crate::engine::{Config, Engine, Kind, MAX_LEASE, MAX_RESPONSE_TIMEOUT, MIN_LEASE};
use crate::keys::{KeyLayout, Keys};
use crate::runtime::Runtime;
use crate::{Error, InitStrategy, Invalid, Result};

/// What a primitive's builder starts it on: a context of its own, made from a client, or
/// a [`Coordinator`](crate::Coordinator)'s.
#[derive(Clone, Debug)]
// Made once per context or builder: the size of a `redis::Client` does not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum On<R: Runtime> {
    Client {
        client: redis::Client,
        rt: Option<R>,
    },
    Context(Arc<Context<R>>),
}

impl<R: Runtime> On<R> {
    /// Sets the runtime of a private context; on a coordinator's, records the misuse.
    pub(crate) fn set_runtime(&mut self, opts: &mut Options, runtime: R) {
        match self {
            On::Client { rt, .. } => *rt = Some(runtime),
            On::Context(_) => opts.misuse = Some(Invalid::CoordinatorSetting("runtime")),
        }
    }

    /// Starts an engine of `kind` with `opts`, on its context.
    pub(crate) async fn start(self, opts: &Options, kind: Kind) -> Result<Arc<Engine<R>>> {
        let mut cfg = opts.config(kind)?;
        let ctx = match self {
            On::Client { client, rt } => {
                let settings = Settings {
                    response_timeout: opts.response_timeout,
                    max_blocking: opts.max_blocking,
                    check_eviction: opts.check_eviction,
                };
                Context::connect(Target::Client(client), settings, rt).await?
            }
            On::Context(ctx) => {
                if opts.response_timeout_set {
                    return Err(Error::InvalidArgument(Invalid::CoordinatorSetting(
                        "response_timeout",
                    )));
                }
                cfg.response_timeout = ctx.settings.response_timeout;
                if !opts.check_eviction_set {
                    cfg.check_eviction = ctx.settings.check_eviction;
                }
                ctx
            }
        };
        Engine::start(ctx, cfg).await
    }

    /// Reads a semaphore's state without joining it (no lease, no watchdog).
    pub(crate) async fn inspect(&self, opts: &Options) -> Result<crate::SemaphoreState> {
        let cfg = opts.config(Kind::Semaphore)?;
        match self {
            On::Client { client, .. } => {
                let client = crate::connection::with_tcp_settings(client)?;
                let mut conn = crate::connection::SharedConn::connect(
                    crate::connection::Source::Fixed(client),
                    opts.response_timeout,
                    None,
                )
                .await?;
                crate::inspect::inspect(&mut conn, &cfg.keys).await
            }
            On::Context(ctx) => crate::inspect::inspect(&mut ctx.conn.clone(), &cfg.keys).await,
        }
    }
}

/// The default lease: 300 s, as in redsync 2.0.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(300);
/// The default number of dedicated blocking connections per handle.
pub const DEFAULT_MAX_BLOCKING_CONNECTIONS: usize = 4;
/// The default cap on dedicated blocking connections of a
/// [`Coordinator`](crate::Coordinator), shared by all its primitives.
pub const DEFAULT_COORDINATOR_BLOCKING_CONNECTIONS: usize = 32;
/// The default deadline of every Redis request.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// The default number of times a released permit may go straight to a local waiter before
/// it must go back through Redis.
pub const DEFAULT_LOCAL_HANDOFF_LIMIT: u32 = 16;

#[derive(Clone, Debug)]
pub(crate) struct Options {
    pub name: String,
    pub key_prefix: String,
    pub key_layout: KeyLayout,
    pub lease_ttl: Duration,
    pub init: InitStrategy,
    pub max_blocking: usize,
    pub handoff_limit: u32,
    pub response_timeout: Duration,
    /// `response_timeout` was set on the builder (an error on a coordinator's).
    pub response_timeout_set: bool,
    pub check_eviction: bool,
    /// `check_eviction` was set on the builder (else a coordinator's default applies).
    pub check_eviction_set: bool,
    /// `create` with another count resizes instead of failing.
    pub resize: bool,
    /// A setting that does not apply where it was set, reported when the builder runs.
    pub misuse: Option<Invalid>,
}

impl Options {
    pub(crate) fn new(name: &str, key_prefix: &str) -> Self {
        Options {
            name: name.to_owned(),
            key_prefix: key_prefix.to_owned(),
            key_layout: KeyLayout::default(),
            lease_ttl: DEFAULT_LEASE_TTL,
            init: InitStrategy::default(),
            max_blocking: DEFAULT_MAX_BLOCKING_CONNECTIONS,
            handoff_limit: DEFAULT_LOCAL_HANDOFF_LIMIT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            response_timeout_set: false,
            check_eviction: true,
            check_eviction_set: false,
            resize: false,
            misuse: None,
        }
    }

    pub(crate) fn config(&self, kind: Kind) -> Result<Config> {
        let invalid = |why| Err(Error::InvalidArgument(why));
        if let Some(why) = &self.misuse {
            return invalid(why.clone());
        }
        if !(MIN_LEASE..=MAX_LEASE).contains(&self.lease_ttl) {
            return invalid(Invalid::LeaseTtl(self.lease_ttl));
        }
        if self.response_timeout.is_zero() || self.response_timeout > MAX_RESPONSE_TIMEOUT {
            return invalid(Invalid::ResponseTimeout(self.response_timeout));
        }
        if self.max_blocking == 0 {
            return invalid(Invalid::NoBlockingConnections);
        }
        let keys = match kind {
            Kind::Semaphore | Kind::Mutex | Kind::RwLock => {
                Keys::semaphore(&self.key_prefix, &self.name, self.key_layout)?
            }
            Kind::Event => Keys::event(&self.key_prefix, &self.name, self.key_layout)?,
        };
        Ok(Config {
            kind,
            keys,
            lease: self.lease_ttl,
            max_blocking: self.max_blocking,
            handoff_limit: self.handoff_limit,
            response_timeout: self.response_timeout,
            init: self.init,
            check_eviction: self.check_eviction,
        })
    }
}
