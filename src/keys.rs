//! Where a primitive lives in Redis: one place that names every key.

use crate::{Error, Invalid, Result};

/// How key names are built.
///
/// # Examples
///
/// ```
/// use redis_sync::KeyLayout;
/// assert_eq!(KeyLayout::default(), KeyLayout::HashTagged);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyLayout {
    /// `{prefix}:{<name>}:...`: every key of one primitive shares the Redis Cluster hash
    /// tag `{name}`, so they land in one slot.
    #[default]
    HashTagged,
    /// The exact key names of the Python package redsync 2.x (`{prefix}:<name>:list`,
    /// `{prefix}:<name>:meta`, event `{prefix}:<name>`), so a Python process and a Rust
    /// process can share one semaphore or event. No hash tag: single-node Redis only.
    Redsync2,
}

/// The key names of one primitive.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    /// The list of free permits (semaphore) or pending signals (event).
    pub pool: String,
    /// Semaphore metadata (`count`); absent for events.
    pub meta: Option<String>,
    /// Sorted set: holder id -> lease expiry (ms, server clock).
    pub leases: String,
    /// Sorted set: holder id -> time until which its held list is swept for stragglers.
    pub graves: String,
    /// The gate of requests for several permits: holds `G` while none is accumulating.
    pub gate: String,
    /// Prefix of a holder's held list; the holder id follows.
    held_prefix: String,
    /// The layout the names follow.
    pub layout: KeyLayout,
}

impl Keys {
    pub(crate) fn semaphore(prefix: &str, name: &str, layout: KeyLayout) -> Result<Self> {
        let base = base(prefix, name, layout)?;
        Ok(Keys {
            pool: format!("{base}:list"),
            meta: Some(format!("{base}:meta")),
            leases: format!("{base}:leases"),
            graves: format!("{base}:graves"),
            gate: format!("{base}:gate"),
            held_prefix: format!("{base}:held:"),
            layout,
        })
    }

    pub(crate) fn event(prefix: &str, name: &str, layout: KeyLayout) -> Result<Self> {
        let base = base(prefix, name, layout)?;
        Ok(Keys {
            pool: base.clone(),
            meta: None,
            leases: format!("{base}:leases"),
            graves: format!("{base}:graves"),
            gate: format!("{base}:gate"),
            held_prefix: format!("{base}:held:"),
            layout,
        })
    }

    /// The metadata key, or the pool's name where there is none (scripts declare every
    /// key they may touch; `has_meta` tells them which).
    pub(crate) fn meta_or_pool(&self) -> &str {
        self.meta.as_deref().unwrap_or(&self.pool)
    }

    /// `1` when there is metadata (a script argument).
    pub(crate) fn has_meta(&self) -> u8 {
        u8::from(self.meta.is_some())
    }

    /// The list recording what holder `holder` has taken.
    pub(crate) fn held(&self, holder: &str) -> String {
        format!("{}{holder}", self.held_prefix)
    }
}

fn base(prefix: &str, name: &str, layout: KeyLayout) -> Result<String> {
    let invalid = |why| Err(Error::InvalidArgument(why));
    if name.is_empty() {
        return invalid(Invalid::EmptyName);
    }
    if prefix.contains(['{', '}']) {
        return invalid(Invalid::BracesInPrefix(prefix.to_owned()));
    }
    let prefix = prefix.trim_end_matches(':');
    if prefix.is_empty() {
        return invalid(Invalid::EmptyPrefix);
    }
    Ok(match layout {
        KeyLayout::HashTagged => {
            if name.contains(['{', '}']) {
                return invalid(Invalid::BracesInName(name.to_owned()));
            }
            format!("{prefix}:{{{name}}}")
        }
        KeyLayout::Redsync2 => format!("{prefix}:{name}"),
    })
}

/// The key names of a broadcast primitive ([`Notify`](crate::Notify),
/// [`CountDownLatch`](crate::CountDownLatch)); always hash-tagged `{name}`.
#[derive(Clone, Debug)]
pub(crate) struct GateKeys {
    /// The list that blocked waiters rotate (`BLMOVE gate gate`): holds `set` while the
    /// notify is set or the latch is open, and `n` for the instant of a `notify_waiters`.
    pub gate: String,
    /// Hash: `epoch` (a random id made with the hash) and `n` (the generation counter).
    pub gen: String,
    /// A latch's count (a string holding an integer); absent for a notify.
    pub count: Option<String>,
}

impl GateKeys {
    pub(crate) fn notify(prefix: &str, name: &str) -> Result<Self> {
        let base = base(prefix, name, KeyLayout::HashTagged)?;
        Ok(GateKeys {
            gate: format!("{base}:gate"),
            gen: format!("{base}:gen"),
            count: None,
        })
    }

    pub(crate) fn latch(prefix: &str, name: &str) -> Result<Self> {
        let base = base(prefix, name, KeyLayout::HashTagged)?;
        Ok(GateKeys {
            gate: format!("{base}:gate"),
            gen: format!("{base}:gen"),
            count: Some(format!("{base}:count")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redsync2_names_match_python() {
        let k = Keys::semaphore("redsync:semaphore:", "jobs", KeyLayout::Redsync2).unwrap();
        assert_eq!(k.pool, "redsync:semaphore:jobs:list");
        assert_eq!(k.meta.as_deref(), Some("redsync:semaphore:jobs:meta"));
        let e = Keys::event("redsync:event", "done", KeyLayout::Redsync2).unwrap();
        assert_eq!(e.pool, "redsync:event:done");
    }

    #[test]
    fn gate_keys_share_a_tag() {
        let n = GateKeys::notify("redsync:notify", "go").unwrap();
        assert_eq!(n.gate, "redsync:notify:{go}:gate");
        assert_eq!(n.gen, "redsync:notify:{go}:gen");
        assert!(n.count.is_none());
        let l = GateKeys::latch("redsync:latch:", "boot").unwrap();
        assert_eq!(l.count.as_deref(), Some("redsync:latch:{boot}:count"));
        assert!(GateKeys::latch("p", "a}b").is_err());
        assert!(GateKeys::notify("p{", "a").is_err());
    }

    #[test]
    fn hash_tagged_names_share_a_tag() {
        let k = Keys::semaphore("redsync:semaphore", "jobs", KeyLayout::HashTagged).unwrap();
        assert_eq!(k.pool, "redsync:semaphore:{jobs}:list");
        assert_eq!(k.held("abc"), "redsync:semaphore:{jobs}:held:abc");
        assert!(Keys::semaphore("p", "a{b", KeyLayout::HashTagged).is_err());
        assert!(Keys::semaphore("p", "", KeyLayout::Redsync2).is_err());
        assert!(Keys::semaphore("", "a", KeyLayout::HashTagged).is_err());
        assert!(Keys::semaphore(":", "a", KeyLayout::HashTagged).is_err());
        assert!(Keys::semaphore("p{x}", "a", KeyLayout::Redsync2).is_err());
    }
}
