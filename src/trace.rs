//! Diagnostics through `tracing`, behind the optional `tracing` feature: without it these
//! macros expand to nothing, and their arguments are not evaluated.
//!
//! Levels: warn for a lost lease, a generation change and a background error; info for
//! reclaims; debug for waits and timeouts; trace for renewals.

macro_rules! trace_event {
    ($level:ident, $($arg:tt)*) => {{
        #[cfg(feature = "tracing")]
        {
            ::tracing::$level!($($arg)*);
        }
    }};
}

pub(crate) use trace_event;
