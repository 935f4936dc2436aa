//! Semantic checks on decoded messages: sizes, queue indices, offsets inside config space.
//!
//! Decoding only proves the bytes have the right shape; these checks prove the values make
//! sense before anyone acts on them. The VMM validates every [`WorkerToVmm`] (a worker is
//! hostile once compromised) against [`Limits`]: its own policy until the worker's `Ready`, then
//! the narrower [`DeviceLayout::limits`] the worker declared. The worker validates every
//! [`VmmToWorker`] against its own [`DeviceLayout`]. Both are stateless per message.

use crate::messages::{QueueConfig, VmmToWorker, WorkerToVmm};

/// Largest split virtqueue the virtio spec allows.
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// Bounds the VMM holds a worker's messages to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest config space accepted, in bytes.
    pub max_config_len: usize,
    /// Most queues a device may declare (and report statistics for).
    pub max_queues: u16,
}

impl Limits {
    /// virtio-mmio with the usual 0x200-byte register window: config space runs from 0x100 to
    /// the end of the window, 256 bytes.
    pub const VIRTIO_MMIO: Limits = Limits {
        max_config_len: 256,
        max_queues: 64,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::VIRTIO_MMIO
    }
}

/// The device shape a worker declared in a validated [`WorkerToVmm::Ready`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceLayout {
    /// Features the device offers.
    pub device_features: u64,
    /// Number of queues.
    pub num_queues: u16,
    /// Largest queue size accepted; a power of two ≤ [`MAX_QUEUE_SIZE`].
    pub max_queue_size: u16,
    /// Length of the config space in bytes.
    pub config_len: usize,
}

impl DeviceLayout {
    /// Limits for the worker's later messages: no more queues or config than it declared.
    pub fn limits(&self) -> Limits {
        Limits {
            max_config_len: self.config_len,
            max_queues: self.num_queues,
        }
    }
}

/// A decoded message whose values are out of bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// virtio device ID 0 is reserved.
    #[error("device type 0 is reserved")]
    ReservedDeviceType,
    /// A device must have at least one queue.
    #[error("device declares no queues")]
    NoQueues,
    /// More queues than allowed (declared, activated or in statistics).
    #[error("{count} queues, at most {max} allowed")]
    TooManyQueues {
        /// Queues in the message.
        count: usize,
        /// The bound.
        max: u16,
    },
    /// `max_queue_size` must be a power of two in `1..=32768`.
    #[error("maximum queue size {0} is not a power of two in 1..={MAX_QUEUE_SIZE}")]
    BadMaxQueueSize(u16),
    /// Config space longer than allowed.
    #[error("config space of {len} bytes, at most {max} allowed")]
    ConfigTooLong {
        /// Bytes in the message.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The driver acknowledged features the device never offered.
    #[error("driver features {extra:#x} were not offered")]
    UnofferedFeatures {
        /// The acknowledged bits that were not offered.
        extra: u64,
    },
    /// A queue index at or beyond the device's queue count.
    #[error("queue index {index} out of range (device has {num_queues})")]
    QueueIndexOutOfRange {
        /// The index.
        index: u16,
        /// The device's queue count.
        num_queues: u16,
    },
    /// The same queue listed twice in one activation.
    #[error("queue {0} listed twice")]
    DuplicateQueue(u16),
    /// A queue size of zero, not a power of two, or above the device's maximum.
    #[error("queue {index}: size {size} is not a power of two in 1..={max}")]
    BadQueueSize {
        /// The queue.
        index: u16,
        /// The size requested.
        size: u16,
        /// The device's maximum.
        max: u16,
    },
    /// A ring address that breaks the virtio alignment rules or wraps around the address space.
    #[error("queue {index}: {ring} at {addr:#x} is misaligned or wraps")]
    BadRingAddress {
        /// The queue.
        index: u16,
        /// Which ring ("descriptor table", "available ring", "used ring").
        ring: &'static str,
        /// Its guest-physical address.
        addr: u64,
    },
    /// More pending chains than the queues can hold.
    #[error("{pending} pending chains, at most {max} possible")]
    TooManyPending {
        /// Chains the worker reported.
        pending: u32,
        /// The bound: queues times the largest queue size.
        max: u64,
    },
    /// A config write that does not lie entirely inside the config space.
    #[error(
        "config write of {len} bytes at offset {offset} outside a {config_len}-byte config space"
    )]
    ConfigWriteOutOfRange {
        /// Offset of the write.
        offset: u32,
        /// Bytes written.
        len: usize,
        /// Length of the config space.
        config_len: usize,
    },
}

fn check_config_len(config: &[u8], limits: &Limits) -> Result<(), ProtocolError> {
    if config.len() > limits.max_config_len {
        return Err(ProtocolError::ConfigTooLong {
            len: config.len(),
            max: limits.max_config_len,
        });
    }
    Ok(())
}

fn check_queue_count(count: usize, max: u16) -> Result<(), ProtocolError> {
    if count > usize::from(max) {
        return Err(ProtocolError::TooManyQueues { count, max });
    }
    Ok(())
}

impl WorkerToVmm {
    /// Checks the values a worker sent against `limits` (run by the VMM on every message).
    pub fn validate(&self, limits: &Limits) -> Result<(), ProtocolError> {
        match self {
            WorkerToVmm::Ready {
                device_type,
                num_queues,
                max_queue_size,
                config,
                device_features: _,
            } => {
                if *device_type == 0 {
                    return Err(ProtocolError::ReservedDeviceType);
                }
                if *num_queues == 0 {
                    return Err(ProtocolError::NoQueues);
                }
                check_queue_count(usize::from(*num_queues), limits.max_queues)?;
                if !max_queue_size.is_power_of_two() || *max_queue_size > MAX_QUEUE_SIZE {
                    return Err(ProtocolError::BadMaxQueueSize(*max_queue_size));
                }
                check_config_len(config, limits)
            }
            WorkerToVmm::ConfigChanged { config } => check_config_len(config, limits),
            WorkerToVmm::Stats(stats) => check_queue_count(stats.queues.len(), limits.max_queues),
            WorkerToVmm::Resumed { pending } => {
                // At most one pending chain per descriptor of every queue.
                let max = u64::from(limits.max_queues) * u64::from(MAX_QUEUE_SIZE);
                if u64::from(*pending) > max {
                    return Err(ProtocolError::TooManyPending {
                        pending: *pending,
                        max,
                    });
                }
                Ok(())
            }
            WorkerToVmm::Activated
            | WorkerToVmm::ResetDone
            | WorkerToVmm::DeviceError { .. }
            | WorkerToVmm::SeccompViolation { .. } => Ok(()),
        }
    }

    /// The layout a `Ready` declares (`None` for other messages). Validate first.
    pub fn layout(&self) -> Option<DeviceLayout> {
        match self {
            WorkerToVmm::Ready {
                device_features,
                num_queues,
                max_queue_size,
                config,
                ..
            } => Some(DeviceLayout {
                device_features: *device_features,
                num_queues: *num_queues,
                max_queue_size: *max_queue_size,
                config_len: config.len(),
            }),
            _ => None,
        }
    }
}

/// Checks one ring: `align`-byte alignment and `addr + len` not wrapping the address space.
fn check_ring(
    q: &QueueConfig,
    ring: &'static str,
    addr: u64,
    align: u64,
    len: u64,
) -> Result<(), ProtocolError> {
    if addr % align != 0 || addr.checked_add(len).is_none() {
        return Err(ProtocolError::BadRingAddress {
            index: q.index,
            ring,
            addr,
        });
    }
    Ok(())
}

fn check_queue(q: &QueueConfig, layout: &DeviceLayout) -> Result<(), ProtocolError> {
    if q.index >= layout.num_queues {
        return Err(ProtocolError::QueueIndexOutOfRange {
            index: q.index,
            num_queues: layout.num_queues,
        });
    }
    if !q.size.is_power_of_two() || q.size > layout.max_queue_size {
        return Err(ProtocolError::BadQueueSize {
            index: q.index,
            size: q.size,
            max: layout.max_queue_size,
        });
    }
    // Split virtqueue layout (virtio 1.2, 2.7): alignment and size of each part.
    let size = u64::from(q.size);
    check_ring(q, "descriptor table", q.desc_table, 16, 16 * size)?;
    check_ring(q, "available ring", q.avail_ring, 2, 6 + 2 * size)?;
    check_ring(q, "used ring", q.used_ring, 4, 6 + 8 * size)
}

impl VmmToWorker {
    /// Checks the values the VMM sent against the worker's own `layout` (run by the worker).
    pub fn validate(&self, layout: &DeviceLayout) -> Result<(), ProtocolError> {
        match self {
            VmmToWorker::Activate {
                driver_features,
                queues,
            }
            | VmmToWorker::Resume {
                driver_features,
                queues,
            } => {
                let extra = driver_features & !layout.device_features;
                if extra != 0 {
                    return Err(ProtocolError::UnofferedFeatures { extra });
                }
                check_queue_count(queues.len(), layout.num_queues)?;
                for q in queues {
                    check_queue(q, layout)?;
                }
                let mut indices: Vec<u16> = queues.iter().map(|q| q.index).collect();
                indices.sort_unstable();
                if let Some(pair) = indices.windows(2).find(|pair| pair[0] == pair[1]) {
                    return Err(ProtocolError::DuplicateQueue(pair[0]));
                }
                Ok(())
            }
            VmmToWorker::WriteConfig { offset, data } => {
                let fits = usize::try_from(*offset)
                    .ok()
                    .and_then(|offset| offset.checked_add(data.len()))
                    .is_some_and(|end| end <= layout.config_len);
                if !fits {
                    return Err(ProtocolError::ConfigWriteOutOfRange {
                        offset: *offset,
                        len: data.len(),
                        config_len: layout.config_len,
                    });
                }
                Ok(())
            }
            VmmToWorker::Reset | VmmToWorker::Shutdown | VmmToWorker::GetStats => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
