//! The checks every device makes when the transport activates it: the driver accepted only
//! offered features, the transport handed over exactly the device's queues, and every queue the
//! device will serve fits it and lies in guest memory. One place, so that no device forgets one.

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use crate::DeviceError;

/// What a device offers, for [`check`].
pub(crate) struct Offer {
    /// The feature bits the device offered.
    pub features: u64,
    /// How many queues it has.
    pub num_queues: u16,
    /// The largest queue size it accepts.
    pub max_queue_size: u16,
}

/// Checks `driver_features` and `queues` against `offer`. Queue 0 must be usable; any other
/// queue only if the driver made it ready (a driver without MQ, or with fewer CPUs, leaves the
/// others not ready, and devices never touch them).
pub(crate) fn check(
    offer: &Offer,
    driver_features: u64,
    mem: &GuestMemoryMmap,
    queues: &[Queue],
) -> Result<(), DeviceError> {
    let unsupported = driver_features & !offer.features;
    if unsupported != 0 {
        return Err(DeviceError::UnsupportedFeatures(unsupported));
    }
    if queues.len() != usize::from(offer.num_queues) {
        return Err(DeviceError::QueueCount {
            expected: offer.num_queues,
            got: queues.len(),
        });
    }
    for (index, queue) in (0u16..).zip(queues) {
        let usable = queue.size() <= offer.max_queue_size && queue.is_valid(mem);
        if (index == 0 || queue.ready()) && !usable {
            return Err(DeviceError::InvalidQueue { index });
        }
    }
    Ok(())
}
