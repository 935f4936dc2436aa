//! Virtio device backends: one trait, one queue runner, one plain struct per device.
//!
//! This crate owns what a virtio device *does*: the features it offers, its config space, its
//! queue loop and its request parsing (copy-in, validate, then act). It does not know whether it
//! runs in a sandboxed worker process or on a thread of the VMM, and it never touches KVM:
//!
//! - [`VirtioBackend`] is the one trait every device implements. Queues move in on
//!   [`VirtioBackend::activate`] and come back on [`VirtioBackend::reset`].
//! - [`Interrupt`] is the only way a device raises an interrupt; the runner's owner implements
//!   it (a shared status word plus an irqfd, or a test recorder).
//! - [`runner`] is the single event loop that turns queue notifications (ioeventfds) into
//!   [`VirtioBackend::process_queue`] calls, and a backend's own fds ([`events`]) into
//!   [`VirtioBackend::process_event`] calls, used unchanged by workers and in-process threads.
//! - [`EventRegistry`] is how a backend adds event sources of its own (tap fds, timerfds,
//!   sockets) to that loop without knowing it.
//! - [`kind`] is what a device *kind* declares about itself — its command-line grammar and
//!   config, host resources, sandbox needs and how its backend is built — as the [`Kind`]
//!   trait each kind implements in its own folder (`<kind>/kind.rs`).
//! - [`rng`] is virtio-rng.
//! - [`blk`] is virtio-blk.
//! - [`wl`] is virtio-wl (Wayland): it asks the VMM for host services through [`services`].
//! - [`net`] is virtio-net.
//!
//! Device life cycle, as the transport drives it:
//!
//! ```text
//!            activate(features, mem, queues, interrupt)
//!   ┌──────────┐ ───────────────────────────────▶ ┌──────────┐  process_queue(i) ─┐
//!   │ inactive │                                  │  active  │ ◀──────────────────┘
//!   └──────────┘ ◀─────────────────────────────── └──────────┘
//!        ▲        reset() → Some(queues)               │ guest fault that cannot be completed
//!        │                                             ▼ (process_queue returned Err)
//!        │        reset() → Some(queues)          ┌──────────┐  process_queue(i): ignored
//!        └─────────────────────────────────────── │  broken  │
//!                                                 └──────────┘
//! ```
//!
//! The state machine is written once (`lifecycle::Lifecycle`), together with the activation
//! checks every device makes; a device supplies only what it holds while active and how it
//! serves.
//!
//! Guest memory is only ever accessed through `vm-memory`'s volatile copies; no Rust reference
//! into guest memory is ever created. The crate denies `unsafe` code; the fenced exceptions are
//! virtio-blk's I/O engine (`blk::engine`), which hands guest buffers to the kernel as iovecs
//! (`preadv2`/`pwritev2`, io_uring), and virtio-net's tap ioctls (`net::sys`), each allowing
//! `unsafe` in that module only.
#![deny(unsafe_code)]

use std::io;
use std::sync::Arc;

pub use events::{EventRegistry, EventSet, NoEvents};
pub use kind::{DeviceConfig, DeviceKind, Kind};
pub use virtio_queue::Queue;
pub use vm_memory::GuestMemoryMmap;

mod activation;
pub mod blk;
pub mod chain;
pub mod events;
pub mod fs;
pub mod irq_status;
pub mod kind;
mod lifecycle;
pub mod net;
mod notify;
pub mod rng;
pub mod runner;
pub mod services;
pub mod wl;

/// Feature bit mask: the device complies with virtio 1.0+ (bit 32). Every device offers it.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Feature bit mask: the driver may use indirect descriptor tables (bit 28).
pub const VIRTIO_F_RING_INDIRECT_DESC: u64 = 1 << 28;
/// Feature bit mask: `used_event` / `avail_event` notification suppression (bit 29).
pub const VIRTIO_F_RING_EVENT_IDX: u64 = 1 << 29;

/// virtio device ID of a network card.
pub const VIRTIO_ID_NET: u32 = 1;
/// virtio device ID of a block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;
/// virtio device ID of an entropy source.
pub const VIRTIO_ID_RNG: u32 = 4;
/// virtio device ID of a file system device (virtio-fs).
pub const VIRTIO_ID_FS: u32 = 26;
/// Device ID of virtio-wayland (not in the virtio spec; the value crosvm and Linux's
/// out-of-tree driver use).
pub const VIRTIO_ID_WL: u32 = 63;

/// `InterruptStatus` bit: the device used a buffer in one of its queues.
pub const INT_VRING: u32 = 1 << 0;
/// `InterruptStatus` bit: the device's config space changed.
pub const INT_CONFIG: u32 = 1 << 1;

/// Raises interrupts for one device. Implemented by the runner (worker or in-process), never by
/// a device.
pub trait Interrupt: Send + Sync {
    /// Used-buffer notification: set [`INT_VRING`] (bit 0) in the shared status word, then signal.
    fn signal_used_queue(&self);
    /// Config change: set [`INT_CONFIG`] (bit 1), then signal.
    fn signal_config_change(&self);
}

/// One virtio device backend; knows nothing about workers, KVM, or transports.
///
/// All methods are called from one thread at a time (the runner's). Nothing here may panic on
/// guest-controlled data: a malformed request is completed with an error (or 0 bytes) and the
/// device keeps serving; only a queue the device cannot complete any more makes
/// [`process_queue`](Self::process_queue) return an error, after which the device ignores
/// notifications until [`reset`](Self::reset).
pub trait VirtioBackend: Send {
    /// virtio device ID (rng = [`VIRTIO_ID_RNG`]).
    fn device_type(&self) -> u32;
    /// Number of queues the device has; [`activate`](Self::activate) must get exactly this many.
    fn num_queues(&self) -> u16;
    /// Largest queue size the device accepts (`QueueNumMax`).
    fn max_queue_size(&self) -> u16;
    /// Features offered; includes [`VIRTIO_F_VERSION_1`].
    fn features(&self) -> u64;
    /// The whole device-specific config space (rng: empty).
    fn config(&self) -> Vec<u8>;
    /// The guest wrote `data` at `offset` into the config space. Out-of-range writes are ignored.
    fn write_config(&mut self, offset: u32, data: &[u8]);
    /// Starts the device.
    ///
    /// Queues arrive ready (`virtio_queue::Queue` with addresses, size and `ready` set), indexed
    /// by position; `mem` is the guest memory, `interrupt` the handle the device signals with.
    /// Fails, consuming the queues, if the device is already active, if `driver_features` is not
    /// a subset of [`features`](Self::features), or if the queues do not fit the device.
    fn activate(
        &mut self,
        driver_features: u64,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<dyn Interrupt>,
    ) -> Result<(), DeviceError>;
    /// Called by the loop right after every successful [`activate`](Self::activate): add the
    /// backend's own fds (a tap, a timerfd, a socket) to `events`. Devices without fds of their
    /// own keep the default, which adds none. An error fails the activation: the loop resets
    /// the device and reports the error.
    fn register_events(&mut self, events: &mut dyn EventRegistry) -> Result<(), DeviceError> {
        let _ = events;
        Ok(())
    }
    /// Called by the runner when queue `index` was notified (its ioeventfd fired).
    ///
    /// Processes every available chain. Notifications before activation (or after the device
    /// broke) are ignored and return `Ok`. `events` lets the device change what it watches
    /// (e.g. net watches its tap for `EPOLLOUT` when a write would block).
    fn process_queue(
        &mut self,
        index: u16,
        events: &mut dyn EventRegistry,
    ) -> Result<(), DeviceError>;
    /// One of the backend's own fds is ready: `token` is the number the backend gave it when it
    /// added it, `ready` what epoll reported. Like [`process_queue`](Self::process_queue), an
    /// error means the device stops serving until reset (the loop then removes the backend's
    /// fds itself).
    fn process_event(
        &mut self,
        token: u32,
        ready: EventSet,
        events: &mut dyn EventRegistry,
    ) -> Result<(), DeviceError> {
        let _ = (token, ready, events);
        Ok(())
    }
    /// Stops the device and gives back the queues as they are (`None` if not active). The loop
    /// removes the fds the backend added to its [`EventRegistry`] itself.
    fn reset(&mut self) -> Option<Vec<Queue>>;
    /// Counters since activation, one entry per queue. Devices without counters keep the
    /// default (no entries).
    fn stats(&self) -> ipc::DeviceStats {
        ipc::DeviceStats::default()
    }
}

/// Why a device refused an activation or stopped serving its queues.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// `activate` on a device that is already active.
    #[error("device is already active; reset it first")]
    AlreadyActive,
    /// The driver acknowledged features the device never offered.
    #[error("driver acknowledged features {0:#x} that the device does not offer")]
    UnsupportedFeatures(u64),
    /// `activate` got the wrong number of queues.
    #[error("device has {expected} queues, activation brought {got}")]
    QueueCount {
        /// [`VirtioBackend::num_queues`].
        expected: u16,
        /// Number of queues passed to `activate`.
        got: usize,
    },
    /// A queue is not ready, larger than the device allows, or not inside guest memory.
    #[error("queue {index} is not ready, too large, or outside guest memory")]
    InvalidQueue {
        /// Position of the queue in the activation.
        index: u16,
    },
    /// `process_queue` for a queue the device does not have (a runner bug, not the guest's).
    #[error("device has no queue {0}")]
    UnknownQueue(u16),
    /// The guest made a descriptor head available that is not a descriptor of the queue, so
    /// the chain cannot be returned through the used ring.
    #[error("guest made descriptor {head} available in a queue of size {size}")]
    BadHeadIndex {
        /// The head index read from the available ring.
        head: u16,
        /// The queue's size.
        size: u16,
    },
    /// Reading the available ring or writing the used ring failed.
    #[error("virtqueue access failed")]
    Queue(#[source] virtio_queue::Error),
    /// The host resource behind the device failed (entropy source, image file, ...).
    #[error("host resource I/O failed")]
    HostIo(#[source] io::Error),
    /// The event loop refused one of the backend's own fds (`EventRegistry` add, modify or
    /// remove failed).
    #[error("cannot watch the device's own fds")]
    Events(#[source] io::Error),
}

impl From<&DeviceError> for ipc::DeviceErrorKind {
    fn from(err: &DeviceError) -> Self {
        use ipc::DeviceErrorKind as Kind;
        match err {
            DeviceError::AlreadyActive
            | DeviceError::UnsupportedFeatures(_)
            | DeviceError::QueueCount { .. }
            | DeviceError::InvalidQueue { .. } => Kind::BadActivation,
            DeviceError::UnknownQueue(_) | DeviceError::Events(_) => Kind::Internal,
            DeviceError::BadHeadIndex { .. } => Kind::GuestFault,
            DeviceError::Queue(e) => match e {
                virtio_queue::Error::AddressOverflow
                | virtio_queue::Error::GuestMemory(_)
                | virtio_queue::Error::GuestMemoryError(_)
                | virtio_queue::Error::VolatileMemoryError(_)
                | virtio_queue::Error::FindMemoryRegion => Kind::GuestMemory,
                _ => Kind::GuestFault,
            },
            DeviceError::HostIo(e) => Kind::HostIo {
                errno: e.raw_os_error().unwrap_or(EIO),
            },
        }
    }
}

/// `EIO`, reported when a host I/O error carries no OS error number.
const EIO: i32 = 5;

#[cfg(test)]
mod tests {
    use super::*;
    use ipc::DeviceErrorKind as Kind;

    #[test]
    fn errors_map_to_protocol_kinds() {
        let cases = [
            (DeviceError::AlreadyActive, Kind::BadActivation),
            (DeviceError::UnsupportedFeatures(1), Kind::BadActivation),
            (
                DeviceError::QueueCount {
                    expected: 1,
                    got: 2,
                },
                Kind::BadActivation,
            ),
            (DeviceError::InvalidQueue { index: 0 }, Kind::BadActivation),
            (DeviceError::UnknownQueue(3), Kind::Internal),
            (
                DeviceError::Events(io::Error::other("epoll")),
                Kind::Internal,
            ),
            (
                DeviceError::BadHeadIndex { head: 9, size: 8 },
                Kind::GuestFault,
            ),
            (
                DeviceError::Queue(virtio_queue::Error::InvalidAvailRingIndex),
                Kind::GuestFault,
            ),
            (
                DeviceError::Queue(virtio_queue::Error::AddressOverflow),
                Kind::GuestMemory,
            ),
            (
                DeviceError::HostIo(io::Error::from_raw_os_error(13)),
                Kind::HostIo { errno: 13 },
            ),
            (
                DeviceError::HostIo(io::Error::other("no errno")),
                Kind::HostIo { errno: 5 },
            ),
        ];
        for (err, kind) in cases {
            assert_eq!(Kind::from(&err), kind, "{err}");
        }
    }

    #[test]
    fn feature_bits_are_the_spec_values() {
        assert_eq!(VIRTIO_F_VERSION_1, 0x1_0000_0000);
        assert_eq!(VIRTIO_F_RING_INDIRECT_DESC, 0x1000_0000);
        assert_eq!(VIRTIO_F_RING_EVENT_IDX, 0x2000_0000);
    }
}
