//! Turning the queue configurations of a validated `Activate` into `virtio_queue::Queue`s.
//!
//! The message was already checked against the device's layout (`VmmToWorker::validate`: index
//! range, power-of-two sizes, ring alignment, no duplicates); this adds the check only guest
//! memory can answer: every ring lies inside guest RAM (`Queue::is_valid`).

use devices::Queue;
use ipc::{DeviceErrorKind, QueueConfig};
use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Why the queues of an activation cannot be built.
#[derive(Debug, PartialEq, Eq)]
pub enum QueueSetupError {
    /// virtio-queue refused a size or an address (cannot happen after validation).
    Refused(u16),
    /// A ring of the queue lies outside guest memory.
    OutsideMemory(u16),
}

impl QueueSetupError {
    /// What the VMM is told.
    pub fn kind(&self) -> DeviceErrorKind {
        match self {
            QueueSetupError::Refused(_) => DeviceErrorKind::BadActivation,
            QueueSetupError::OutsideMemory(_) => DeviceErrorKind::GuestMemory,
        }
    }
}

/// One `Queue` per queue index `0..num_queues`, each of `max_size`: the ones listed in
/// `configs` set up and ready, the others left not ready (the backend decides whether it can
/// run without them).
pub fn build(
    num_queues: u16,
    max_size: u16,
    configs: &[QueueConfig],
    mem: &GuestMemoryMmap,
) -> Result<Vec<Queue>, QueueSetupError> {
    (0..num_queues)
        .map(|index| {
            let mut queue = Queue::new(max_size).map_err(|_| QueueSetupError::Refused(index))?;
            if let Some(config) = configs.iter().find(|c| c.index == index) {
                configure(&mut queue, config).map_err(|_| QueueSetupError::Refused(index))?;
                if !queue.is_valid(mem) {
                    return Err(QueueSetupError::OutsideMemory(index));
                }
            }
            Ok(queue)
        })
        .collect()
}

fn configure(queue: &mut Queue, config: &QueueConfig) -> Result<(), virtio_queue::Error> {
    queue.try_set_size(config.size)?;
    queue.try_set_desc_table_address(GuestAddress(config.desc_table))?;
    queue.try_set_avail_ring_address(GuestAddress(config.avail_ring))?;
    queue.try_set_used_ring_address(GuestAddress(config.used_ring))?;
    queue.set_ready(true);
    Ok(())
}
