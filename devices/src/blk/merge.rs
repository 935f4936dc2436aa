//! Request merging: adjacent reads (or writes) of one batch become one vectored host I/O.
//!
//! While the queue loop pops a batch of chains, each plain read or write whose payload goes
//! straight to guest memory (no bounce buffer) is *staged* here instead of being submitted at
//! once. A staged request joins the open [`Run`] when it continues it: same direction, its
//! first byte right after the run's last, and the run stays
//! within [`MAX_MERGE_BYTES`] and [`MAX_MERGE_IOVECS`]. Otherwise the run is submitted as one
//! engine operation and a new run begins. Every other request (a flush, a discard, a bounced
//! read, ...) submits the open run first, so a `FLUSH` still starts after every write popped
//! before it. The batch's last run is submitted when the loop stops popping.
//!
//! This is QEMU's `request-merging` (on by default there too). What it buys: one system call
//! entry and one host request per run instead of one per guest request, and, for writes the
//! driver did not make cacheable (no `FLUSH` negotiated, so every write is followed by
//! `fdatasync`), one cache flush of the host disk per run instead of per request. Nothing is reordered: a run is
//! made of requests in the order the driver made them available, at ascending offsets.
//!
//! A merged operation completes all its members together. When it fails or transfers less than
//! all of its bytes, every member completes with `IOERR`: the host reported one result for the
//! whole range, and a member cannot tell whether its own part arrived.

use super::engine::IoVecs;

/// Largest run in bytes. Bounds what the first member of a run waits for the others; larger
/// host requests are split by the host's block layer anyway (its `max_sectors_kb`, commonly
/// 512 KiB to 4 MiB).
pub(crate) const MAX_MERGE_BYTES: usize = 2 << 20;
/// Most iovecs in one run: `UIO_MAXIOV`, the limit of `preadv2`/`pwritev2` and of io_uring's
/// `READV`/`WRITEV`.
pub(crate) const MAX_MERGE_IOVECS: usize = 1024;

/// Which kind of transfer a staged request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// A read from the image into guest memory.
    Read,
    /// A write to the image.
    Write,
}

/// Consecutive staged requests that will be one engine operation.
#[derive(Debug)]
pub(crate) struct Run {
    pub direction: Direction,
    /// Byte offset in the image of the first member.
    pub offset: u64,
    /// Total bytes.
    pub len: usize,
    /// Total iovecs.
    iovecs: usize,
    /// The members' request slots, in order; the first is the leader whose slot tags the op.
    pub slots: Vec<usize>,
    /// The members' iovecs, in order.
    pub parts: Vec<IoVecs>,
}

impl Run {
    /// A run of one request.
    pub(crate) fn new(direction: Direction, offset: u64, iov: IoVecs, slot: usize) -> Run {
        Run {
            direction,
            offset,
            len: iov.len(),
            iovecs: iov.count() as usize,
            slots: vec![slot],
            parts: vec![iov],
        }
    }

    /// Whether a request `(direction, offset, iov)` continues this run within the limits.
    pub(crate) fn continues(&self, direction: Direction, offset: u64, iov: &IoVecs) -> bool {
        direction == self.direction
            && self.offset.checked_add(self.len as u64) == Some(offset)
            && self.len + iov.len() <= MAX_MERGE_BYTES
            && self.iovecs + iov.count() as usize <= MAX_MERGE_IOVECS
    }

    /// Appends a request that [`continues`](Self::continues) the run.
    pub(crate) fn push(&mut self, iov: IoVecs, slot: usize) {
        self.len += iov.len();
        self.iovecs += iov.count() as usize;
        self.slots.push(slot);
        self.parts.push(iov);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use vm_memory::{GuestAddress, GuestMemoryMmap};

    use super::*;
    use crate::blk::request::Segment;

    fn iov(mem: &Arc<GuestMemoryMmap>, addr: u64, len: u32) -> IoVecs {
        let seg = Segment {
            addr: GuestAddress(addr),
            len,
        };
        IoVecs::guest(mem, &[seg], 1, true).unwrap().unwrap()
    }

    #[test]
    fn a_run_takes_only_what_continues_it_within_the_limits() {
        let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap());
        let mut run = Run::new(Direction::Read, 4096, iov(&mem, 0, 4096), 0);
        assert!(run.continues(Direction::Read, 8192, &iov(&mem, 0x10000, 512)));
        // A gap, an overlap, the other direction.
        assert!(!run.continues(Direction::Read, 8704, &iov(&mem, 0, 512)));
        assert!(!run.continues(Direction::Read, 4096, &iov(&mem, 0, 512)));
        assert!(!run.continues(Direction::Write, 8192, &iov(&mem, 0, 512)));
        let mut w = Run::new(Direction::Write, 0, iov(&mem, 0, 512), 1);
        assert!(w.continues(Direction::Write, 512, &iov(&mem, 0, 512)));
        w.push(iov(&mem, 512, 512), 2);
        assert_eq!((w.len, w.slots.clone()), (1024, vec![1, 2]));

        // Byte limit: exactly MAX_MERGE_BYTES fits, one more sector does not.
        run.push(iov(&mem, 4096, 4096), 1);
        let room = MAX_MERGE_BYTES - run.len;
        let big = iov(&mem, 0x10_0000, room as u32);
        assert!(run.continues(Direction::Read, 12288, &big));
        run.push(big, 2);
        let end = 4096 + run.len as u64;
        assert!(!run.continues(Direction::Read, end, &iov(&mem, 0, 512)));
    }

    #[test]
    fn a_run_stops_at_the_iovec_limit() {
        let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap());
        let mut run = Run::new(Direction::Read, 0, iov(&mem, 0, 512), 0);
        for i in 1..MAX_MERGE_IOVECS {
            let next = iov(&mem, 1024 * i as u64, 512);
            assert!(run.continues(Direction::Read, 512 * i as u64, &next));
            run.push(next, i);
        }
        let end = 512 * MAX_MERGE_IOVECS as u64;
        assert!(!run.continues(Direction::Read, end, &iov(&mem, 0, 512)));
    }
}
