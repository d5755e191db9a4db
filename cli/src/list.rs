//! `list`: finds primitives by their keys with `SCAN` (never `KEYS`, which blocks Redis).

use std::collections::BTreeSet;

use redis_sync::redis::{self, RedisResult};
use redis_sync::KeyLayout;

/// What kind of primitive a [`Primitive`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A `redis_sync::Semaphore`.
    Semaphore,
    /// A `redis_sync::Event`.
    Event,
}

impl Kind {
    /// Its name in output.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Semaphore => "semaphore",
            Kind::Event => "event",
        }
    }
}

/// One primitive found by [`scan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Primitive {
    /// Semaphore or event.
    pub kind: Kind,
    /// Its name.
    pub name: String,
    /// A semaphore's permit count (`None` for events, or when the metadata has no count).
    pub count: Option<u32>,
    /// A semaphore's free permits, or an event's pending signals.
    pub free: usize,
}

/// The prefix as the library uses it (a trailing `:` is ignored), or a usage error.
pub fn clean_prefix(prefix: &str) -> Result<&str, String> {
    let p = prefix.trim_end_matches(':');
    if p.is_empty() {
        return Err(format!("invalid prefix {prefix:?}: it is empty"));
    }
    if p.contains(['{', '}']) {
        return Err(format!("invalid prefix {prefix:?}: it contains a brace"));
    }
    Ok(p)
}

/// Escapes the glob characters of `SCAN MATCH`.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Every key matching `pattern`, by `SCAN` (keys need not be UTF-8: they are read lossily).
async fn scan_keys<C>(conn: &mut C, pattern: &str) -> RedisResult<Vec<String>>
where
    C: redis::aio::ConnectionLike + Send,
{
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        keys.extend(
            batch
                .into_iter()
                .map(|k| String::from_utf8_lossy(&k).into_owned()),
        );
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

/// The name of the semaphore whose metadata key is `key`, if it is one.
fn semaphore_name(key: &str, prefix: &str, layout: KeyLayout) -> Option<String> {
    let rest = key.strip_prefix(prefix)?.strip_prefix(':')?;
    let name = match layout {
        KeyLayout::Redsync2 => {
            let name = rest.strip_suffix(":meta")?;
            // A hash-tagged semaphore under the same prefix.
            if name.starts_with('{') && name.ends_with('}') {
                return None;
            }
            name
        }
        _ => rest.strip_prefix('{')?.strip_suffix("}:meta")?,
    };
    let braces = layout != KeyLayout::Redsync2 && name.contains(['{', '}']);
    (!name.is_empty() && !braces).then(|| name.to_owned())
}

/// The name of the event that key `key` belongs to (its list, leases, graves or a held
/// list), if it is one.
fn event_name(key: &str, prefix: &str, layout: KeyLayout) -> Option<String> {
    let rest = key.strip_prefix(prefix)?.strip_prefix(':')?;
    let name = match layout {
        KeyLayout::Redsync2 => {
            let name = match rest.find(":held:") {
                Some(i) => &rest[..i],
                None => rest
                    .strip_suffix(":leases")
                    .or_else(|| rest.strip_suffix(":graves"))
                    .unwrap_or(rest),
            };
            if name.starts_with('{') {
                return None;
            }
            name
        }
        _ => {
            let rest = rest.strip_prefix('{')?;
            let end = rest.find('}')?;
            let after = &rest[end + 1..];
            if !(after.is_empty() || after.starts_with(':')) {
                return None;
            }
            &rest[..end]
        }
    };
    (!name.is_empty()).then(|| name.to_owned())
}

/// The base of a primitive's key names (`<prefix>:{name}` or `<prefix>:name`).
fn base(prefix: &str, name: &str, layout: KeyLayout) -> String {
    match layout {
        KeyLayout::Redsync2 => format!("{prefix}:{name}"),
        _ => format!("{prefix}:{{{name}}}"),
    }
}

/// Finds the semaphores (by their `:meta` key) under `prefix` and the events (by any of
/// their keys: an event shows while it has pending signals or holders) under
/// `event_prefix`, sorted by kind and name.
pub async fn scan(
    client: &redis::Client,
    prefix: &str,
    event_prefix: &str,
    layout: KeyLayout,
) -> RedisResult<Vec<Primitive>> {
    let mut conn = client.get_multiplexed_async_connection().await?;
    let redsync2 = layout == KeyLayout::Redsync2;

    let pattern = if redsync2 {
        format!("{}:*:meta", glob_escape(prefix))
    } else {
        format!("{}:{{*}}:meta", glob_escape(prefix))
    };
    let semaphores: BTreeSet<String> = scan_keys(&mut conn, &pattern)
        .await?
        .iter()
        .filter_map(|k| semaphore_name(k, prefix, layout))
        .collect();

    let pattern = if redsync2 {
        format!("{}:*", glob_escape(event_prefix))
    } else {
        format!("{}:{{*", glob_escape(event_prefix))
    };
    let events: BTreeSet<String> = scan_keys(&mut conn, &pattern)
        .await?
        .iter()
        .filter_map(|k| event_name(k, event_prefix, layout))
        .collect();

    let mut found = Vec::with_capacity(semaphores.len() + events.len());
    if !semaphores.is_empty() {
        let mut pipe = redis::pipe();
        for name in &semaphores {
            let b = base(prefix, name, layout);
            pipe.hget(format!("{b}:meta"), "count")
                .llen(format!("{b}:list"));
        }
        let sizes: Vec<(Option<u32>, usize)> = pipe.query_async(&mut conn).await?;
        for (name, (count, free)) in semaphores.into_iter().zip(sizes) {
            found.push(Primitive {
                kind: Kind::Semaphore,
                name,
                count,
                free,
            });
        }
    }
    if !events.is_empty() {
        let mut pipe = redis::pipe();
        for name in &events {
            pipe.llen(base(event_prefix, name, layout));
        }
        let pending: Vec<usize> = pipe.query_async(&mut conn).await?;
        for (name, free) in events.into_iter().zip(pending) {
            found.push(Primitive {
                kind: Kind::Event,
                name,
                count: None,
                free,
            });
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: KeyLayout = KeyLayout::HashTagged;
    const R: KeyLayout = KeyLayout::Redsync2;

    #[test]
    fn semaphore_names() {
        let p = "redsync:semaphore";
        assert_eq!(
            semaphore_name("redsync:semaphore:{jobs}:meta", p, H).as_deref(),
            Some("jobs")
        );
        assert_eq!(semaphore_name("redsync:semaphore:{jobs}:list", p, H), None);
        assert_eq!(semaphore_name("redsync:semaphore:{}:meta", p, H), None);
        assert_eq!(semaphore_name("redsync:semaphorex:{a}:meta", p, H), None);
        assert_eq!(
            semaphore_name("redsync:semaphore:a:b:meta", p, R).as_deref(),
            Some("a:b")
        );
        assert_eq!(semaphore_name("redsync:semaphore:{jobs}:meta", p, R), None);
    }

    #[test]
    fn event_names() {
        let p = "redsync:event";
        for key in [
            "redsync:event:{done}",
            "redsync:event:{done}:leases",
            "redsync:event:{done}:held:abc-1",
        ] {
            assert_eq!(event_name(key, p, H).as_deref(), Some("done"), "{key}");
        }
        assert_eq!(event_name("redsync:event:{done}x", p, H), None);
        assert_eq!(
            event_name("redsync:event:done:held:abc-1", p, R).as_deref(),
            Some("done")
        );
        assert_eq!(
            event_name("redsync:event:done:leases", p, R).as_deref(),
            Some("done")
        );
        assert_eq!(
            event_name("redsync:event:done", p, R).as_deref(),
            Some("done")
        );
    }

    #[test]
    fn prefixes() {
        assert_eq!(clean_prefix("a:b:"), Ok("a:b"));
        assert!(clean_prefix(":").is_err());
        assert!(clean_prefix("a{b").is_err());
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
