//! The local waiter queue: first come, first served, O(1) amortised per enqueue, grant and
//! cancel, however many tasks wait.
//!
//! Each waiter has a sequence number; its slot sits at `seq - front` in a ring buffer. A
//! cancelled waiter empties its slot in place (no scan) and empty slots are dropped when
//! they reach the front. The queue is only used under the engine's state lock.

use std::collections::VecDeque;

use futures::channel::oneshot;

/// Waiting tasks, longest first, each with the sender its grant goes to.
#[derive(Debug)]
pub(crate) struct WaiterQueue<T> {
    slots: VecDeque<Option<oneshot::Sender<T>>>,
    /// The sequence number of `slots[0]`.
    front: u64,
    /// Slots still holding a waiter.
    live: usize,
}

impl<T> Default for WaiterQueue<T> {
    fn default() -> Self {
        WaiterQueue {
            slots: VecDeque::new(),
            front: 0,
            live: 0,
        }
    }
}

impl<T> WaiterQueue<T> {
    /// Queues a waiter at the back; returns its number, for [`WaiterQueue::cancel`].
    pub(crate) fn push(&mut self, waiter: oneshot::Sender<T>) -> u64 {
        let seq = self.front + self.slots.len() as u64;
        self.slots.push_back(Some(waiter));
        self.live += 1;
        seq
    }

    /// Removes waiter `seq` if it is still queued; false if it was already taken.
    pub(crate) fn cancel(&mut self, seq: u64) -> bool {
        let Some(index) = seq.checked_sub(self.front) else {
            return false;
        };
        let taken = usize::try_from(index)
            .ok()
            .and_then(|i| self.slots.get_mut(i))
            .and_then(Option::take)
            .is_some();
        if taken {
            self.live -= 1;
            self.drop_empty_front();
        }
        taken
    }

    /// Whether waiter `seq` is still queued.
    pub(crate) fn contains(&self, seq: u64) -> bool {
        seq.checked_sub(self.front)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.slots.get(i))
            .is_some_and(Option::is_some)
    }

    /// Takes the longest waiter. Its receiver may be gone by the time it is sent to (the
    /// waiter gave up meanwhile): then the send fails and the caller takes the next.
    pub(crate) fn pop(&mut self) -> Option<oneshot::Sender<T>> {
        self.drop_empty_front();
        let waiter = self.slots.pop_front()??;
        self.front += 1;
        self.live -= 1;
        self.drop_empty_front();
        Some(waiter)
    }

    /// Takes every waiter, longest first.
    pub(crate) fn take_all(&mut self) -> Vec<oneshot::Sender<T>> {
        self.front += self.slots.len() as u64;
        self.live = 0;
        self.slots.drain(..).flatten().collect()
    }

    /// Waiters still queued.
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.live == 0
    }

    fn drop_empty_front(&mut self) {
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.front += 1;
        }
    }
}

/// Sends `value` to the longest waiter still listening: `pop` takes the next waiter from
/// the queue (under the state lock, released before it returns) and the send happens
/// outside the lock, since a value that cannot be delivered may be dropped by the channel
/// and dropping a token takes that lock. A waiter whose receiver is closed hands the value
/// back and the next one is tried. Returns the value when no waiter is left.
pub(crate) fn send_to_longest<T>(
    mut pop: impl FnMut() -> Option<oneshot::Sender<T>>,
    mut value: T,
) -> Result<(), T> {
    loop {
        let Some(waiter) = pop() else {
            return Err(value);
        };
        match waiter.send(value) {
            Ok(()) => return Ok(()),
            Err(back) => value = back,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiter(q: &mut WaiterQueue<u32>) -> (u64, oneshot::Receiver<u32>) {
        let (tx, rx) = oneshot::channel();
        (q.push(tx), rx)
    }

    #[test]
    fn first_come_first_served_with_cancels_anywhere() {
        let mut q = WaiterQueue::default();
        let ws: Vec<_> = (0..6).map(|_| waiter(&mut q)).collect();
        assert_eq!(q.len(), 6);
        assert!(q.contains(ws[0].0) && q.contains(ws[5].0));
        assert!(q.cancel(ws[0].0), "the front");
        assert!(!q.contains(ws[0].0) && !q.contains(u64::MAX));
        assert!(q.cancel(ws[3].0), "the middle");
        assert!(q.cancel(ws[5].0), "the back");
        assert!(!q.cancel(ws[3].0), "once");
        assert_eq!(q.len(), 3);
        let mut served = Vec::new();
        while let Some(tx) = q.pop() {
            served.push(tx);
        }
        assert_eq!(served.len(), 3);
        for (i, tx) in served.into_iter().enumerate() {
            tx.send(i as u32).unwrap();
        }
        let mut ws = ws;
        for (i, expect) in [(1, 0), (2, 1), (4, 2)] {
            assert_eq!(ws[i].1.try_recv().unwrap(), Some(expect));
        }
        assert!(q.is_empty());
        assert!(!q.cancel(ws[1].0), "served waiters cannot be cancelled");
    }

    #[test]
    fn cancelled_slots_do_not_pile_up_behind_the_front() {
        let mut q = WaiterQueue::<u32>::default();
        let first = waiter(&mut q);
        for _ in 0..1000 {
            let (seq, _rx) = waiter(&mut q);
            assert!(q.cancel(seq));
        }
        // Only the span from the oldest live waiter is kept.
        assert_eq!(q.len(), 1);
        assert!(q.cancel(first.0));
        assert!(q.slots.is_empty());
        let (seq, _rx) = waiter(&mut q);
        assert_eq!(seq, 1001);
        assert!(q.pop().is_some());
        assert!(q.pop().is_none());
    }

    #[test]
    fn take_all_empties_it() {
        let mut q = WaiterQueue::<u32>::default();
        let a = waiter(&mut q);
        let b = waiter(&mut q);
        assert!(q.cancel(a.0));
        assert_eq!(q.take_all().len(), 1);
        assert!(q.is_empty());
        assert!(!q.cancel(b.0));
        assert!(q.pop().is_none());
    }
}
