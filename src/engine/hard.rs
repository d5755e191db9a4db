//! Permits with a hard lease: each under a holder of its own whose lease the watchdog
//! does not renew, so it runs out `d` after it was granted (or last extended), whatever
//! happens to the process that holds it.
//!
//! A permit is first granted like any other, then moved, in one script, from the
//! handle's list to the list of a new holder whose lease starts then. That holder is a
//! generation marked dirty from the start: it takes no other grant, and once its permit
//! is given back it is retired, which removes its lease.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::waiters::outcome_unknown;
use super::{loss_margin, Engine, Generation, Held, MAX_LEASE, MIN_LEASE};
use crate::runtime::Runtime;
use crate::scripts::{EXTEND, HARDEN};
use crate::{Error, Invalid, Result};

pub(crate) fn check_lease(d: Duration) -> Result<()> {
    if !(MIN_LEASE..=MAX_LEASE).contains(&d) {
        return Err(Error::InvalidArgument(Invalid::LeaseTtl(d)));
    }
    Ok(())
}

impl<R: Runtime> Engine<R> {
    /// Moves the permit of `held` under a hard lease of `d`. Runs on the runtime: dropped
    /// by its caller, the move still completes, and a permit it produced is released.
    pub(crate) async fn harden(self: &Arc<Self>, held: Held<R>, d: Duration) -> Result<Held<R>> {
        let call = self.clone().harden_now(held, d);
        self.run_detached(call).await.unwrap_or(Err(Error::Closed))
    }

    async fn harden_now(self: Arc<Self>, held: Held<R>, d: Duration) -> Result<Held<R>> {
        // The move is of a token in this holder's list: a sibling's handoff lands first.
        if let Some(landing) = held.unlanded() {
            landing.wait().await;
        }
        let n = self.next_gen.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{n}", self.holder_base);
        let mut hard = Generation::new(
            id,
            self.cfg.keys.held(&format!("{}-{n}", self.holder_base)),
            Instant::now(),
        );
        hard.hard = true;
        let hard = Arc::new(hard);
        // Never a second grant under it; retired (lease removed) once its permit is back.
        hard.mark_dirty();
        let from = held.gen.clone();
        from.begin_call();
        let sent = Instant::now();
        let mut conn = self.conn.clone();
        let reply: redis::RedisResult<redis::Value> = HARDEN
            .key(&self.cfg.keys.leases)
            .key(&from.held_key)
            .key(&hard.held_key)
            .arg(&from.id)
            .arg(&hard.id)
            .arg(d.as_millis() as u64)
            .arg(self.held_ttl_ms())
            .invoke_async(&mut conn)
            .await;
        from.end_call();
        let reply = reply.and_then(|v| match v {
            redis::Value::Int(code) => Ok(Err(code)),
            v => redis::from_redis_value::<String>(v)
                .map(Ok)
                .map_err(redis::RedisError::from),
        });
        match reply {
            Ok(Err(_)) => {
                // The handle's lease was gone (-1) or its list empty (0): the permit was
                // reclaimed meanwhile. Lost first, so that it is not handed on locally.
                self.lose(&from);
                drop(held);
                Err(Error::LeaseLost)
            }
            Ok(Ok(token)) => {
                hard.renewed(sent + d - loss_margin(d));
                self.state().gens.push(hard.clone());
                // Its loss deadline may come before anything the watchdog waits for.
                self.ctx.wake();
                // The permit leaves the handle's generation for the hard one.
                let (_, from, _) = held.disarm();
                from.sub_outstanding();
                self.maybe_retire(&from);
                let out = Held::new(self.clone(), hard, 0).with_token(&token);
                Ok(out)
            }
            Err(e) => {
                if outcome_unknown(&e) || e.code().is_none() {
                    // Unknown whether it moved: the token is in one list or the other, so it
                    // is not given back from the handle's list (that could give back
                    // another permit's token). Both lists are swept instead: the handle's
                    // generation once drained, the hard holder at once (its lease, if it
                    // started, is given up).
                    let (_, from, _) = held.disarm();
                    from.mark_dirty();
                    from.sub_outstanding();
                    self.maybe_retire(&from);
                    self.give_up_hard(&hard);
                } else {
                    // An error reply: the script did not run.
                    drop(held);
                }
                Err(e.into())
            }
        }
    }

    fn give_up_hard(self: &Arc<Self>, hard: &Arc<Generation>) {
        // Nothing outstanding and dirty: retiring gives up its lease with what it holds.
        self.state().gens.push(hard.clone());
        self.maybe_retire(hard);
    }

    /// Extends the hard lease of `gen` to at least `d` from now.
    pub(crate) async fn extend(self: &Arc<Self>, gen: &Arc<Generation>, d: Duration) -> Result<()> {
        if !gen.hard {
            return Err(Error::InvalidArgument(Invalid::NotHardLease));
        }
        check_lease(d)?;
        if self.lose_if_expired(gen) {
            return Err(Error::LeaseLost);
        }
        let sent = Instant::now();
        let mut conn = self.conn.clone();
        let extra = if self.keep_pool_ttl() {
            self.held_ttl_ms().saturating_sub(self.ttl_ms())
        } else {
            0
        };
        let extended: i64 = EXTEND
            .key(&self.cfg.keys.leases)
            .key(&gen.held_key)
            .arg(&gen.id)
            .arg(d.as_millis() as u64)
            .arg(extra)
            .invoke_async(&mut conn)
            .await?;
        if extended == 1 {
            gen.renewed(sent + d - loss_margin(d));
            Ok(())
        } else {
            self.lose(gen);
            Err(Error::LeaseLost)
        }
    }
}
