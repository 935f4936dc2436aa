//! Turning the queue configurations of a validated `Activate` into `virtio_queue::Queue`s.
//!
//! The message was already checked against the device's layout (`VmmToWorker::validate`: index
//! range, power-of-two sizes, ring alignment, no duplicates); this adds the check only guest
//! memory can answer: every ring lies inside guest RAM (`Queue::is_valid`).
//!
//! For a `Resume` (a worker started again after its predecessor died) each queue starts where
//! the guest sees the device's work end: its next chain to take and its next used entry are
//! both the used ring's index (read once from guest memory). The kinds that resume return
//! chains in the order they take them (`devices::Kind::restart`), so the chains before that
//! index are exactly the completed ones and every chain after it is taken (again). The
//! available index may not run more than the queue's size ahead of it: a ring in that state
//! was not made by a driver, and the resume fails as a guest fault.

use std::sync::atomic::Ordering;

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
    /// Resuming: the available index is more than the queue's size ahead of the used index.
    Pending(u16),
}

impl QueueSetupError {
    /// What the VMM is told.
    pub fn kind(&self) -> DeviceErrorKind {
        match self {
            QueueSetupError::Refused(_) => DeviceErrorKind::BadActivation,
            QueueSetupError::OutsideMemory(_) => DeviceErrorKind::GuestMemory,
            QueueSetupError::Pending(_) => DeviceErrorKind::GuestFault,
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

/// [`build`] for a `Resume`: each ready queue starts at its used index (see the module docs).
/// Also returns the chains pending over all queues: made available, not yet used.
pub fn resume(
    num_queues: u16,
    max_size: u16,
    configs: &[QueueConfig],
    mem: &GuestMemoryMmap,
) -> Result<(Vec<Queue>, u32), QueueSetupError> {
    let mut queues = build(num_queues, max_size, configs, mem)?;
    let mut pending = 0u32;
    for (index, queue) in (0u16..).zip(&mut queues) {
        if !queue.ready() {
            continue;
        }
        let outside = |_| QueueSetupError::OutsideMemory(index);
        let used = queue.used_idx(mem, Ordering::Acquire).map_err(outside)?;
        let avail = queue.avail_idx(mem, Ordering::Acquire).map_err(outside)?;
        let ahead = (avail - used).0;
        if ahead > queue.size() {
            return Err(QueueSetupError::Pending(index));
        }
        queue.set_next_avail(used.0);
        queue.set_next_used(used.0);
        pending += u32::from(ahead);
    }
    Ok((queues, pending))
}

fn configure(queue: &mut Queue, config: &QueueConfig) -> Result<(), virtio_queue::Error> {
    queue.try_set_size(config.size)?;
    queue.try_set_desc_table_address(GuestAddress(config.desc_table))?;
    queue.try_set_avail_ring_address(GuestAddress(config.avail_ring))?;
    queue.try_set_used_ring_address(GuestAddress(config.used_ring))?;
    queue.set_ready(true);
    Ok(())
}
