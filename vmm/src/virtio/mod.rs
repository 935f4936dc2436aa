//! virtio on the VMM side: the virtio-mmio transport ([`mmio`]) and the [`DeviceProxy`] trait
//! through which it reaches a device backend.
//!
//! Owns transport state only — features, queue addresses, status — as DESIGN.md asks: the VMM
//! never parses descriptors or runs device logic. Where the backend runs (a sandboxed worker behind
//! a control socket, or a thread of this process) is hidden behind [`DeviceProxy`]; the transport
//! knows no concrete device and no worker.
//!
//! ```text
//!   vCPU ── MMIO exit ──▶ MmioBus ──▶ MmioTransport (registers, state machine)
//!                                           │ DeviceProxy: activate / write_config / reset /
//!                                           ▼            interrupt status / notify / is_broken
//!                                  worker proxy (ipc) or in-process proxy
//! ```

pub mod mmio;
pub mod worker_proxy;

use std::time::Duration;

/// Device status bits (virtio 1.2 §2.1), as the driver reads and writes them in `Status`.
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 0x01;
    /// The guest knows how to drive the device.
    pub const DRIVER: u32 = 0x02;
    /// The driver is set up and the device is live.
    pub const DRIVER_OK: u32 = 0x04;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 0x08;
    /// The device hit an error it cannot recover from; the driver must reset it. Device-owned.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 0x80;
}

/// `InterruptStatus` bit 0: a used buffer was returned on some queue.
pub const INT_VRING: u32 = 0x1;
/// `InterruptStatus` bit 1: the configuration (or `DEVICE_NEEDS_RESET`) changed.
pub const INT_CONFIG: u32 = 0x2;

/// Feature bit: the device and driver follow virtio 1.0 or later (no legacy interface).
pub const VIRTIO_F_VERSION_1: u32 = 32;

/// What the transport needs to know about a device, published by its backend (for a worker, in
/// its `Ready` message, and updated by `ConfigChanged`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    /// virtio device ID (rng = 4); the guest reads it as `DeviceID`.
    pub device_type: u32,
    /// Features the device offers; must include [`VIRTIO_F_VERSION_1`].
    pub device_features: u64,
    /// Number of queues; queues at or above this index read `QueueNumMax` = 0.
    pub num_queues: u16,
    /// Largest queue size (`QueueNumMax`), a power of two.
    pub max_queue_size: u16,
    /// Cached copy of the whole device-specific config space; guest reads are served from it.
    pub config: Vec<u8>,
    /// `ConfigGeneration`: the proxy increments it (wrapping) each time it replaces `config`, so
    /// that a driver reading a multi-word field notices a change in the middle.
    pub config_generation: u32,
}

/// Why a proxy could not carry out a request. The transport only logs these and reacts to the
/// failure; the proxy reports the details of a dying worker itself.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The device is broken: its worker died, misbehaved or was killed.
    #[error("the device is broken")]
    Broken,
    /// The worker did not answer in time (it is then treated as broken).
    #[error("the device worker did not answer {request} within {timeout:?}")]
    Timeout {
        /// The request that went unanswered ("activate", "reset", ...).
        request: &'static str,
        /// How long the VMM waited.
        timeout: Duration,
    },
    /// The control channel failed.
    #[error("control channel to the device worker failed")]
    Channel(#[from] ipc::ChannelError),
    /// The worker answered with something other than the expected reply, or an invalid one.
    #[error("the device worker sent an unexpected or invalid reply to {request}")]
    BadReply {
        /// The request being answered.
        request: &'static str,
    },
    /// The worker's `Ready` describes another device than the kind that was started.
    #[error("the device worker announced a device this kind is not: {0}")]
    WrongDevice(String),
    /// The worker attached fds to a message (none of its messages takes any); the kernel
    /// discarded them unopened.
    #[error("the device worker attached fds to a message")]
    FdsAttached,
    /// The device itself refused or failed the request.
    #[error("the device failed the request: {0:?}")]
    Device(ipc::DeviceErrorKind),
    /// The worker's seccomp filter trapped this system call before it was ready.
    #[error("the device worker made a system call its seccomp profile forbids: {0}")]
    SeccompViolation(String),
}

/// The transport's handle on one device backend, wherever it runs.
///
/// Every method is called from a vCPU thread with the transport locked, so none may block without
/// a deadline: a proxy that waits for a worker's reply gives up after a bounded time, marks the
/// device broken and returns [`ProxyError::Timeout`].
pub trait DeviceProxy: Send {
    /// Device type, features, queue shape and the cached config space.
    fn info(&self) -> &DeviceInfo;
    /// The driver set `DRIVER_OK`: start the device with `driver_features` (a validated subset of
    /// the offer, with `VIRTIO_F_VERSION_1`) and the ready `queues` (validated with
    /// `ipc::VmmToWorker::validate`, in index order).
    fn activate(
        &mut self,
        driver_features: u64,
        queues: &[ipc::QueueConfig],
    ) -> Result<(), ProxyError>;
    /// The guest wrote `data` at `offset` inside the config space (the write fits in it). Not
    /// acknowledged by the device; a changed config comes back through [`DeviceInfo::config`].
    fn write_config(&mut self, offset: u32, data: &[u8]) -> Result<(), ProxyError>;
    /// The driver wrote 0 to `Status`: stop the device and release its queues. Called on every
    /// such write, active or not, so it must be cheap when nothing runs.
    fn reset(&mut self) -> Result<(), ProxyError>;
    /// The `InterruptStatus` bits from the status word shared with the backend.
    fn interrupt_status(&self) -> u32;
    /// Clears `bits` (already masked to [`INT_VRING`] | [`INT_CONFIG`]) in the shared status word.
    fn interrupt_ack(&mut self, bits: u32);
    /// The device cannot work any more (worker dead or misbehaving): the transport shows
    /// `DEVICE_NEEDS_RESET` and refuses `FEATURES_OK` and `DRIVER_OK`. Called on every `Status`
    /// read, so it must be cheap (a flag, not a round trip).
    fn is_broken(&self) -> bool;
    /// A `QueueNotify` write for `queue` reached user space (normally KVM's ioeventfd takes it).
    /// A worker proxy should signal the queue's ioeventfd, so the backend sees the same event.
    fn notify(&mut self, queue: u16) -> Result<(), ProxyError>;
    /// Raise a configuration-change interrupt: set [`INT_CONFIG`] in the shared status word, then
    /// signal the device's interrupt. Must work even when the backend is dead (the VMM keeps the
    /// irqfd and the status word).
    fn signal_config_change(&mut self);
}

impl<P: DeviceProxy + ?Sized> DeviceProxy for Box<P> {
    fn info(&self) -> &DeviceInfo {
        (**self).info()
    }
    fn activate(
        &mut self,
        driver_features: u64,
        queues: &[ipc::QueueConfig],
    ) -> Result<(), ProxyError> {
        (**self).activate(driver_features, queues)
    }
    fn write_config(&mut self, offset: u32, data: &[u8]) -> Result<(), ProxyError> {
        (**self).write_config(offset, data)
    }
    fn reset(&mut self) -> Result<(), ProxyError> {
        (**self).reset()
    }
    fn interrupt_status(&self) -> u32 {
        (**self).interrupt_status()
    }
    fn interrupt_ack(&mut self, bits: u32) {
        (**self).interrupt_ack(bits)
    }
    fn is_broken(&self) -> bool {
        (**self).is_broken()
    }
    fn notify(&mut self, queue: u16) -> Result<(), ProxyError> {
        (**self).notify(queue)
    }
    fn signal_config_change(&mut self) {
        (**self).signal_config_change()
    }
}

/// The transport of one device, shared by the MMIO bus, its monitor and the VM's owner.
pub type Transport =
    std::sync::Arc<std::sync::Mutex<mmio::MmioTransport<worker_proxy::WorkerProxy>>>;

/// Locks a transport; a poisoned lock (a panic elsewhere) still holds a usable register state.
pub fn lock(
    transport: &Transport,
) -> std::sync::MutexGuard<'_, mmio::MmioTransport<worker_proxy::WorkerProxy>> {
    transport.lock().unwrap_or_else(|e| e.into_inner())
}
