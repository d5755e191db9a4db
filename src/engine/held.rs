//! One token taken from the pool and recorded in a holder's list in Redis.

use std::sync::Arc;

use super::{Engine, Generation, Landing};
use crate::runtime::Runtime;
use crate::Result;

/// A held token. Dropping it gives the token back (to a local waiter, or to Redis on the
/// runtime), so a token can never be forgotten by accident.
#[derive(Debug)]
pub(crate) struct Held<R: Runtime> {
    pub(crate) engine: Arc<Engine<R>>,
    pub(crate) gen: Arc<Generation>,
    /// How many times this token went from one local holder to the next without going
    /// back to Redis.
    pub(crate) handoffs: u32,
    /// The token's number, for a mutex: its fencing token (0 otherwise).
    pub(crate) fence: u64,
    /// For a permit handed over by a sibling: the move of its token into this holder's
    /// list, which Redis may not have recorded yet (see `engine::transfer`).
    pub(crate) landing: Option<Arc<Landing>>,
    armed: bool,
}

impl<R: Runtime> Held<R> {
    /// Records a newly granted token (counted as outstanding in its generation).
    pub(crate) fn new(engine: Arc<Engine<R>>, gen: Arc<Generation>, handoffs: u32) -> Self {
        gen.add_outstanding();
        Held {
            engine,
            gen,
            handoffs,
            fence: 0,
            landing: None,
            armed: true,
        }
    }

    /// Records the token's value: a mutex's token is its fence.
    pub(crate) fn with_token(mut self, token: &str) -> Self {
        self.fence = token.parse().unwrap_or(0);
        self
    }

    /// Takes over a token already counted as outstanding (a detached permit).
    pub(crate) fn adopt(
        engine: Arc<Engine<R>>,
        gen: Arc<Generation>,
        landing: Option<Arc<Landing>>,
    ) -> Self {
        Held {
            engine,
            gen,
            handoffs: 0,
            fence: 0,
            landing,
            armed: true,
        }
    }

    /// The move of this token that Redis has not answered yet, if any.
    pub(crate) fn unlanded(&self) -> Option<Arc<Landing>> {
        self.landing.clone().filter(|l| !l.is_settled())
    }

    /// Stops the drop-time release; the caller takes over the outstanding count.
    pub(crate) fn disarm(mut self) -> (Arc<Engine<R>>, Arc<Generation>, u32) {
        self.armed = false;
        (self.engine.clone(), self.gen.clone(), self.handoffs)
    }

    /// Gives the token back and reports how that went.
    pub(crate) async fn release(self) -> Result<()> {
        let engine = self.engine.clone();
        engine.release_held(self).await
    }

    /// Keeps the token held by the handle with no guard; `Semaphore::release` gives it back.
    pub(crate) fn detach(self) {
        let landing = self.unlanded();
        let (engine, gen, _) = self.disarm();
        engine.add_detached(gen, landing);
    }
}

impl<R: Runtime> Drop for Held<R> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.armed = false;
        // Re-wrap without counting it twice: the outstanding count moves to the new value.
        let again = Held {
            engine: self.engine.clone(),
            gen: self.gen.clone(),
            handoffs: self.handoffs,
            fence: self.fence,
            landing: self.landing.take(),
            armed: true,
        };
        self.engine.release_in_background(again);
    }
}
