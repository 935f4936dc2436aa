//! Chains go back to the driver in the order the device took them.
//!
//! The engine finishes requests in any order (io_uring), but a queue's used ring gets them in
//! the order they were taken from the available ring: a request that finishes early waits in
//! [`InOrder`] until every earlier one of its queue is done. So at any moment the chains the
//! driver can see in the used ring are exactly the first `used index` chains taken, and a
//! worker that dies leaves a state a new one can resume from the used index alone
//! (`devices::Kind::restart`, `worker::queues::resume`): the chains after it are taken again,
//! none is returned twice and none is lost.
//!
//! The cost: a request that finishes before an earlier one is returned with it. Requests of one
//! queue mostly finish in order anyway (reads from the page cache complete at submission, a
//! FLUSH drains the writes before it and the requests after it wait for it), and a driver
//! cannot tell a late completion from a slow one.

use std::collections::VecDeque;

/// One queue's chains between being taken and being returned.
#[derive(Debug, Default)]
pub(crate) struct InOrder {
    /// Sequence number of the oldest chain not yet returned.
    next: u64,
    /// From `next` on: `None` while in flight, `(head, used length)` once finished.
    waiting: VecDeque<Option<(u16, u32)>>,
}

impl InOrder {
    /// A chain was taken: its sequence number.
    pub(crate) fn take(&mut self) -> u64 {
        let seq = self.next + self.waiting.len() as u64;
        self.waiting.push_back(None);
        seq
    }

    /// Chains taken and not yet returned.
    pub(crate) fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Chain `seq` finished with `head` and `used_len`. A number not taken is ignored.
    pub(crate) fn finish(&mut self, seq: u64, head: u16, used_len: u32) {
        let slot = seq
            .checked_sub(self.next)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.waiting.get_mut(i));
        if let Some(slot) = slot {
            *slot = Some((head, used_len));
        }
    }

    /// The oldest chain, if it has finished (it may go into the used ring now).
    pub(crate) fn pop_ready(&mut self) -> Option<(u16, u32)> {
        let ready = (*self.waiting.front()?)?;
        self.waiting.pop_front();
        self.next += 1;
        Some(ready)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_in_taking_order_whatever_the_finishing_order() {
        let mut order = InOrder::default();
        let (a, b, c) = (order.take(), order.take(), order.take());
        assert_eq!((a, b, c), (0, 1, 2));
        order.finish(c, 30, 3);
        order.finish(b, 20, 2);
        assert_eq!(order.pop_ready(), None, "a is still in flight");
        order.finish(a, 10, 1);
        assert_eq!(order.pop_ready(), Some((10, 1)));
        assert_eq!(order.pop_ready(), Some((20, 2)));
        assert_eq!(order.pop_ready(), Some((30, 3)));
        assert_eq!(order.pop_ready(), None);
        assert_eq!(order.len(), 0);
        let d = order.take();
        assert_eq!(d, 3);
        order.finish(99, 1, 1); // never taken: ignored
        order.finish(0, 1, 1); // returned already: ignored
        assert_eq!(order.pop_ready(), None);
        order.finish(d, 40, 4);
        assert_eq!(order.pop_ready(), Some((40, 4)));
    }
}
