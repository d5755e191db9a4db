//! Text and JSON renderings of what the commands read.

use std::fmt::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis_sync::SemaphoreState;

use crate::json;
use crate::list::{Kind, Primitive};

/// The widest bar; larger counts are scaled down to it.
const BAR_WIDTH: usize = 64;

/// `list` as a table.
pub fn primitives_text(found: &[Primitive]) -> String {
    if found.is_empty() {
        return "no semaphores or events found\n".to_owned();
    }
    let dash = || "-".to_owned();
    let rows: Vec<[String; 5]> = found
        .iter()
        .map(|p| match p.kind {
            Kind::Semaphore => [
                p.kind.as_str().to_owned(),
                p.name.clone(),
                p.count.map_or_else(dash, |c| c.to_string()),
                p.free.to_string(),
                dash(),
            ],
            Kind::Event => [
                p.kind.as_str().to_owned(),
                p.name.clone(),
                dash(),
                dash(),
                p.free.to_string(),
            ],
        })
        .collect();
    table(["KIND", "NAME", "COUNT", "FREE", "PENDING"], &rows)
}

/// One `list` entry as a JSON object.
pub fn primitive_json(p: &Primitive) -> String {
    match p.kind {
        Kind::Semaphore => format!(
            "{{\"kind\":\"semaphore\",\"name\":{},\"count\":{},\"free\":{}}}",
            json::string(&p.name),
            json::opt(p.count),
            p.free
        ),
        Kind::Event => format!(
            "{{\"kind\":\"event\",\"name\":{},\"pending\":{}}}",
            json::string(&p.name),
            p.free
        ),
    }
}

/// Permits taken from the pool: `count - free`.
fn used(state: &SemaphoreState) -> usize {
    (state.count.unwrap_or(0) as usize).saturating_sub(state.free)
}

/// `[###.....]`: one `#` per used permit, one `.` per free one (scaled above 64 permits; a
/// used permit always shows).
pub fn bar(used: usize, count: usize) -> String {
    let (width, hashes) = if count <= BAR_WIDTH {
        (count, used.min(count))
    } else {
        let h = (used.min(count) * BAR_WIDTH).div_ceil(count);
        (BAR_WIDTH, h)
    };
    format!("[{}{}]", "#".repeat(hashes), ".".repeat(width - hashes))
}

/// A lease left, e.g. `299.8s`, or `expired`.
fn lease(left: Option<Duration>) -> String {
    match left {
        Some(d) => format!("{:.1}s", d.as_secs_f64()),
        None => "expired".to_owned(),
    }
}

/// `inspect` as text.
pub fn state_text(name: &str, state: &SemaphoreState) -> String {
    let count = state.count.unwrap_or(0) as usize;
    let used = used(state);
    let held = state.held();
    let mut s = String::new();
    let _ = writeln!(s, "semaphore {name}");
    let _ = writeln!(s, "count {count}  free {}  held {held}", state.free);
    let _ = writeln!(s, "{} {used}/{count} used", bar(used, count));
    if state.pending_reduction > 0 {
        let _ = writeln!(
            s,
            "count lowered: {} held permits will be destroyed as they come back",
            state.pending_reduction
        );
    }
    if let Some(holder) = &state.gate_holder {
        let _ = writeln!(s, "collecting several permits: {holder} (holds the gate)");
    }
    if let Some(fence) = state.next_fence {
        let _ = writeln!(s, "fencing token: next grant gets {fence} or more");
    }
    // While a lowered count is pending, more permits are held than the count allows.
    if held != used && state.pending_reduction == 0 {
        let _ = writeln!(
            s,
            "note: {used} permits out of the pool but {held} recorded as held (in flight, \
             or taken by a client that records none, such as redsync 2.x)"
        );
    }
    if state.holders.is_empty() {
        let _ = writeln!(s, "no holders");
        return s;
    }
    let rows: Vec<[String; 3]> = state
        .holders
        .iter()
        .map(|h| {
            [
                h.id.clone(),
                h.permits.to_string(),
                lease(h.lease_remaining),
            ]
        })
        .collect();
    s.push_str(&table(["HOLDER", "PERMITS", "LEASE LEFT"], &rows));
    s
}

/// `inspect` as one JSON object; `at` (Unix ms) for `watch`.
pub fn state_json(name: &str, prefix: &str, state: &SemaphoreState, at: Option<u64>) -> String {
    let mut s = String::from("{");
    if let Some(at) = at {
        let _ = write!(s, "\"at_ms\":{at},");
    }
    let _ = write!(
        s,
        "\"kind\":\"semaphore\",\"name\":{},\"prefix\":{},\"count\":{},\"free\":{},\
         \"used\":{},\"held\":{},\"holders\":[",
        json::string(name),
        json::string(prefix.trim_end_matches(':')),
        json::opt(state.count),
        state.free,
        used(state),
        state.held(),
    );
    for (i, h) in state.holders.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(
            s,
            "{{\"id\":{},\"permits\":{},\"lease_remaining_ms\":{},\"expired\":{}}}",
            json::string(&h.id),
            h.permits,
            json::opt(h.lease_remaining.map(|d| d.as_millis())),
            h.lease_remaining.is_none()
        );
    }
    s.push_str("]}");
    s
}

/// Milliseconds since the Unix epoch, by this machine's clock.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `HH:MM:SS.mmm UTC` of a Unix time in ms.
pub fn clock(unix_ms: u64) -> String {
    let ms = unix_ms % 1000;
    let secs = unix_ms / 1000 % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{ms:03} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Left-aligned columns two spaces apart.
fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut s = String::new();
    let mut line = |cells: [&str; N]| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == N {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{cell:<w$}  ");
            }
        }
        s.push_str(l.trim_end());
        s.push('\n');
    };
    line(header);
    for row in rows {
        line(row.each_ref().map(String::as_str));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars() {
        assert_eq!(bar(3, 8), "[###.....]");
        assert_eq!(bar(0, 2), "[..]");
        assert_eq!(bar(9, 8), "[########]");
        let big = bar(1, 4096);
        assert_eq!(big.len(), BAR_WIDTH + 2);
        assert!(big.starts_with("[#."));
        assert_eq!(bar(4096, 4096), format!("[{}]", "#".repeat(BAR_WIDTH)));
    }

    #[test]
    fn clocks_and_leases() {
        assert_eq!(clock(3_723_004), "01:02:03.004 UTC");
        assert_eq!(lease(None), "expired");
        assert_eq!(lease(Some(Duration::from_millis(1260))), "1.3s");
    }

    #[test]
    fn tables_align() {
        let t = table(["A", "BB"], &[["xyz".to_owned(), "1".to_owned()]]);
        assert_eq!(t, "A    BB\nxyz  1\n");
    }
}
