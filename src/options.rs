//! Settings shared by the builders.

use std::time::Duration;

use crate::engine::{Config, Kind, MAX_LEASE, MAX_RESPONSE_TIMEOUT, MIN_LEASE};
use crate::keys::{KeyLayout, Keys};
use crate::{Error, InitStrategy, Invalid, Result};

/// The default lease: 300 s, as in redsync 2.0.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(300);
/// The default number of dedicated blocking connections per handle.
pub const DEFAULT_MAX_BLOCKING_CONNECTIONS: usize = 4;
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
    pub check_eviction: bool,
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
            response_timeout: Duration::from_secs(5),
            check_eviction: true,
        }
    }

    pub(crate) fn config(&self, kind: Kind) -> Result<Config> {
        let invalid = |why| Err(Error::InvalidArgument(why));
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
            Kind::Semaphore => Keys::semaphore(&self.key_prefix, &self.name, self.key_layout)?,
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
