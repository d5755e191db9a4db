//! One watchdog per context: renews the leases of every primitive of the context, and
//! tells holders the instant a lease may have run out.
//!
//! Renewals that fall due close together are sent together: every primitive whose
//! renewal is due within a quarter of its period is renewed at once, each in its own
//! task, so that the requests go out back to back on the shared multiplexed connection
//! (one round trip for all of them, not one each). Between renewals, and while one is in
//! flight, the watchdog wakes at each lease's loss deadline and marks the holder lost,
//! whatever the network does.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures::future::{select, Either};

use super::Context;
use crate::engine::{renew_once, Engine};
use crate::runtime::Runtime;

/// The longest the watchdog sleeps with nothing to do (a new primitive wakes it).
const IDLE: Duration = Duration::from_secs(60);
/// Retry delay of a failed renewal.
const RETRY: Duration = Duration::from_millis(250);

/// When an engine's next renewal is due, and whether one is in flight.
#[derive(Debug)]
pub(crate) struct RenewalClock {
    next: Instant,
    in_flight: bool,
}

impl RenewalClock {
    pub(crate) fn new(period: Duration) -> Self {
        RenewalClock {
            next: Instant::now() + jittered(period),
            in_flight: false,
        }
    }
}

/// `period` ±20%, so that many clients do not renew in step.
fn jittered(period: Duration) -> Duration {
    period.mul_f64(0.8 + 0.4 * fastrand::f64())
}

pub(super) fn spawn<R: Runtime>(ctx: &Arc<Context<R>>) {
    let weak: Weak<Context<R>> = Arc::downgrade(ctx);
    let rt = ctx.rt.clone();
    ctx.rt.spawn(async move {
        loop {
            let Some(ctx) = weak.upgrade() else { return };
            let wake = ctx.arm_wake();
            let now = Instant::now();
            let mut until = now + IDLE;
            for engine in ctx.engines() {
                let next_loss = engine.lose_expired(now);
                if engine.is_closed() {
                    // Only the loss timers of permits still out are kept.
                    match next_loss {
                        Some(loss) => until = until.min(loss),
                        None => ctx.unregister(&engine),
                    }
                    continue;
                }
                if let Some(loss) = next_loss {
                    until = until.min(loss);
                }
                if let Some(at) = renew_if_due(&ctx, &engine, now) {
                    until = until.min(at);
                }
            }
            drop(ctx);
            let sleep = Box::pin(rt.sleep(until.saturating_duration_since(Instant::now())));
            if let Either::Right((Err(_), _)) = select(sleep, wake).await {
                // The context is gone.
                if weak.strong_count() == 0 {
                    return;
                }
            }
        }
    });
}

/// Starts `engine`'s renewal if it is due (or nearly); returns when it will be due, or
/// `None` while one is in flight.
fn renew_if_due<R: Runtime>(
    ctx: &Arc<Context<R>>,
    engine: &Arc<Engine<R>>,
    now: Instant,
) -> Option<Instant> {
    let period = engine.cfg.lease / 3;
    {
        let mut clock = engine.renewal_clock();
        if clock.in_flight {
            return None;
        }
        // Renewing a little early costs nothing and lets nearby renewals share a round trip.
        if now + period / 4 < clock.next {
            return Some(clock.next);
        }
        clock.in_flight = true;
    }
    let engine = engine.clone();
    let weak_ctx = Arc::downgrade(ctx);
    ctx.rt.spawn(async move {
        // Spaced from when it was sent, not from its reply: on a slow link the reply then
        // still comes before the lease could run out.
        let sent = Instant::now();
        let res = renew_once(&engine).await;
        {
            let mut clock = engine.renewal_clock();
            clock.in_flight = false;
            clock.next = sent
                + match res {
                    Ok(()) => jittered(period),
                    Err(_) => period.min(RETRY),
                };
        }
        if let Err(e) = res {
            engine.background_error("renewal", &e);
        }
        if let Some(ctx) = weak_ctx.upgrade() {
            ctx.wake();
        }
    });
    None
}
