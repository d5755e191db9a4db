//! Redis calls that finish even when the caller stops waiting.
//!
//! Dropping a request future does not cancel the command on the server: once written, it
//! runs. If the caller's future is dropped mid-call (a timeout, a `select!`), the call is
//! handed to the runtime, which awaits the reply and runs `on_orphan` with it, so that a
//! token the server moved for a caller who is gone is given back.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::runtime::Runtime;

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
type Orphan<T> = Box<dyn FnOnce(T) + Send + 'static>;

/// A call whose reply is never dropped unread.
pub(crate) struct Detachable<R: Runtime, T: Send + 'static> {
    rt: R,
    call: Option<BoxFut<T>>,
    on_orphan: Option<Orphan<T>>,
}

impl<R: Runtime, T: Send + 'static> Detachable<R, T> {
    pub(crate) fn new<F, O>(rt: R, call: F, on_orphan: O) -> Self
    where
        F: Future<Output = T> + Send + 'static,
        O: FnOnce(T) + Send + 'static,
    {
        Detachable {
            rt,
            call: Some(Box::pin(call)),
            on_orphan: Some(Box::new(on_orphan)),
        }
    }
}

impl<R: Runtime, T: Send + 'static> Future for Detachable<R, T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let Some(call) = self.call.as_mut() else {
            // Polled after completion: never happens through `.await`.
            return Poll::Pending;
        };
        match call.as_mut().poll(cx) {
            Poll::Ready(out) => {
                self.call = None;
                self.on_orphan = None;
                Poll::Ready(out)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<R: Runtime, T: Send + 'static> Drop for Detachable<R, T> {
    fn drop(&mut self) {
        if let (Some(call), Some(on_orphan)) = (self.call.take(), self.on_orphan.take()) {
            self.rt.spawn(async move { on_orphan(call.await) });
        }
    }
}

// The boxed future is Unpin; the struct holds nothing pinned.
impl<R: Runtime, T: Send + 'static> Unpin for Detachable<R, T> {}
