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
