//! Whether a device should interrupt the driver after using buffers: the part virtio-queue's
//! `needs_notification` leaves out. Shared by every device's queue loop.

use std::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// `VIRTQ_AVAIL_F_NO_INTERRUPT`: the driver polls the used ring and asks for no interrupts.
const AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Whether the driver asked for no used-buffer notifications: without `EVENT_IDX`, the avail
/// ring's `VIRTQ_AVAIL_F_NO_INTERRUPT` flag (virtio 1.2, 2.7.7.2: the device SHOULD NOT
/// notify; virtio-queue's `needs_notification` ignores it). With `EVENT_IDX` the flag is
/// meaningless and `used_event` decides. A flag that cannot be read counts as not set.
///
/// A driver that polls (Linux between `virtqueue_disable_cb` and `virtqueue_enable_cb`, the
/// test guest's `irq=poll`) would otherwise cost the device an interrupt injection (an eventfd
/// write into KVM) per request for nothing.
pub(crate) fn interrupts_suppressed(queue: &Queue, mem: &GuestMemoryMmap) -> bool {
    !queue.event_idx_enabled()
        && mem
            .load::<u16>(GuestAddress(queue.avail_ring()), Ordering::Acquire)
            .is_ok_and(|flags| u16::from_le(flags) & AVAIL_F_NO_INTERRUPT != 0)
}

/// Whether the driver wants an interrupt for the chains `queue` used since the last time this
/// was asked: virtio-queue's `needs_notification` (with `EVENT_IDX`, whether `used_event` lies
/// in the span used since the last question; it then starts a new span, so ask once per
/// batch, after its last `add_used`) and, without `EVENT_IDX`, not [`interrupts_suppressed`].
pub(crate) fn wants_interrupt(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
) -> Result<bool, virtio_queue::Error> {
    Ok(queue.needs_notification(mem)? && !interrupts_suppressed(queue, mem))
}

#[cfg(test)]
mod tests {
    use virtio_queue::mock::MockSplitQueue;

    use super::*;

    const QSIZE: u16 = 16;
    /// The queue's own used ring, clear of the mock's rings (see rng's tests).
    const USED: u64 = 0x800;

    fn queue(mem: &GuestMemoryMmap, event_idx: bool) -> (Queue, GuestAddress) {
        let vq = MockSplitQueue::new(mem, QSIZE);
        let mut q: Queue = vq.create_queue().unwrap();
        q.set_used_ring_address(Some(USED as u32), Some(0));
        q.set_event_idx(event_idx);
        (q, vq.avail_addr())
    }

    /// Marks `n` chains (head 0) used.
    fn use_chains(q: &mut Queue, mem: &GuestMemoryMmap, n: u16) {
        for _ in 0..n {
            q.add_used(mem, 0, 0).unwrap();
        }
    }

    #[test]
    fn the_avail_flag_decides_without_event_idx() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x4000)]).unwrap();
        let (mut q, avail) = queue(&mem, false);
        use_chains(&mut q, &mem, 3);
        assert!(wants_interrupt(&mut q, &mem).unwrap(), "flags 0: interrupt");
        mem.write_obj(AVAIL_F_NO_INTERRUPT, avail).unwrap();
        use_chains(&mut q, &mem, 1);
        assert!(interrupts_suppressed(&q, &mem));
        assert!(!wants_interrupt(&mut q, &mem).unwrap(), "the driver polls");
        mem.write_obj(0u16, avail).unwrap();
        assert!(wants_interrupt(&mut q, &mem).unwrap(), "flag cleared again");
    }

    #[test]
    fn used_event_decides_with_event_idx_and_the_flag_is_ignored() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x4000)]).unwrap();
        let (mut q, avail) = queue(&mem, true);
        // The flag means nothing with EVENT_IDX.
        mem.write_obj(AVAIL_F_NO_INTERRUPT, avail).unwrap();
        assert!(!interrupts_suppressed(&q, &mem));
        // used_event (after the avail ring's entries) = 4: the driver wants to hear once the
        // used index moves past 4.
        let used_event = avail.0 + 4 + 2 * u64::from(QSIZE);
        mem.write_obj(4u16, GuestAddress(used_event)).unwrap();
        // 0 → 2, then 2 → 4: used_event 4 not passed yet.
        use_chains(&mut q, &mem, 2);
        assert!(!wants_interrupt(&mut q, &mem).unwrap());
        use_chains(&mut q, &mem, 2);
        assert!(!wants_interrupt(&mut q, &mem).unwrap());
        // 4 → 7 in one batch: passes 4, one interrupt for the three.
        use_chains(&mut q, &mem, 3);
        assert!(wants_interrupt(&mut q, &mem).unwrap());
        // 7 → 8: 4 already behind.
        use_chains(&mut q, &mem, 1);
        assert!(!wants_interrupt(&mut q, &mem).unwrap());
    }
}
