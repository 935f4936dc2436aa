//! A small virtio-mmio driver (transport version 2 only, one split virtqueue, polled), enough
//! for tests to drive a device and check what the transport reports.
//!
//! [`find`] probes the `virtio_mmio.device=` entries for a device ID. [`Device::init`] runs
//! the initialisation of virtio 1.2 §3.1.1 and sets up queue 0; [`Device::request`] puts a
//! chain of device-writable buffers on it, notifies, and waits — polling the used ring and
//! `InterruptStatus` (interrupts stay off in this guest) — until the device has returned the
//! chain *and* raised the used-buffer interrupt (bit 0), acknowledging what it sees. A chain
//! returned without that bit is an error ([`Error::NoVringInterrupt`]): Linux's driver ignores
//! the rings when bit 0 is clear, so a transport that forgets it must not pass a polling test.
//! `DEVICE_NEEDS_RESET` is reported as its own error wherever the status is read.

pub mod mmio;
pub mod queue;

use crate::cmdline::MmioDevice;
use crate::timer::Timer;
use core::fmt;
use mmio::Mmio;
use queue::{Buf, Queue};

/// Device IDs (virtio 1.2 §5). 0 marks an empty transport slot.
pub const ID_RNG: u32 = 4;

// Device status bits (§2.1).
const ACKNOWLEDGE: u32 = 1;
const DRIVER: u32 = 2;
const DRIVER_OK: u32 = 4;
const FEATURES_OK: u32 = 8;
const DEVICE_NEEDS_RESET: u32 = 0x40;

/// VIRTIO_F_VERSION_1 (bit 32): required, always accepted.
pub const F_VERSION_1: u64 = 1 << 32;

// InterruptStatus bits (§4.2.2).
const INT_VRING: u32 = 1;
const INT_CONFIG: u32 = 2;

/// How long a reset, or one request, may take.
const RESET_TIMEOUT_MS: u64 = 1000;
const REQUEST_TIMEOUT_MS: u64 = 2000;

/// Why the driver gave up. `Display` gives the reason word a test prints after `FAIL`.
#[derive(Clone, Copy, Debug)]
pub enum Error {
    /// The status register showed DEVICE_NEEDS_RESET (0x40).
    NeedsReset,
    /// The device cleared FEATURES_OK after the driver set it.
    FeaturesOkRefused,
    /// The device does not offer VIRTIO_F_VERSION_1.
    NoVersion1,
    /// After writing 0 to Status, it did not read back 0 in time.
    ResetTimeout { status: u32 },
    /// QueueReady was already 1 right after a reset.
    QueueBusy,
    /// QueueNumMax is 0: the device has no queue 0.
    QueueSize { max: u32 },
    /// The device returned a chain with a head we did not submit.
    UsedId { expected: u16, got: u32 },
    /// The device returned the chain but InterruptStatus bit 0 was never set.
    NoVringInterrupt,
    /// The chain did not come back in time.
    Timeout { interrupt: bool },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match *self {
            Error::NeedsReset => write!(f, "needs_reset"),
            Error::FeaturesOkRefused => write!(f, "features_ok_refused"),
            Error::NoVersion1 => write!(f, "no_version_1"),
            Error::ResetTimeout { status } => write!(f, "reset_timeout status={status:#x}"),
            Error::QueueBusy => write!(f, "queue_busy"),
            Error::QueueSize { max } => write!(f, "queue_size max={max}"),
            Error::UsedId { expected, got } => {
                write!(f, "used_id expected={expected} got={got}")
            }
            Error::NoVringInterrupt => write!(f, "no_vring_interrupt"),
            Error::Timeout { interrupt } => {
                write!(f, "timeout interrupt={}", if interrupt { 1 } else { 0 })
            }
        }
    }
}

/// What a `virtio_mmio.device=` entry turned out to be. `Display`: `id=N`, `version=N`,
/// `magic=0x...` or `unmapped`.
#[derive(Clone, Copy)]
pub enum Probe {
    /// A version-2 transport; `id` 0 means no device behind it.
    Device { mmio: Mmio, id: u32 },
    /// A transport of another version (1: legacy, which this driver does not speak).
    Version(u32),
    /// No virtio-mmio magic value.
    NotVirtio { magic: u32 },
    /// Outside what the guest maps, or too small for the registers.
    Unmapped,
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match *self {
            Probe::Device { id, .. } => write!(f, "id={id}"),
            Probe::Version(version) => write!(f, "version={version}"),
            Probe::NotVirtio { magic } => write!(f, "magic={magic:#x}"),
            Probe::Unmapped => write!(f, "unmapped"),
        }
    }
}

/// Reads MagicValue, Version and DeviceID, which have no side effects.
pub fn probe(dev: &MmioDevice) -> Probe {
    let Some(mmio) = Mmio::new(dev) else {
        return Probe::Unmapped;
    };
    let magic = mmio.read(mmio::MAGIC_VALUE);
    if magic != mmio::MAGIC {
        return Probe::NotVirtio { magic };
    }
    match mmio.read(mmio::VERSION_REG) {
        mmio::VERSION => Probe::Device {
            mmio,
            id: mmio.read(mmio::DEVICE_ID),
        },
        version => Probe::Version(version),
    }
}

/// The first device on the command line with device ID `id`.
pub fn find(devices: &[MmioDevice], id: u32) -> Option<Mmio> {
    find_nth(devices, id, 0)
}

/// The `n`-th (from 0) device on the command line with device ID `id`.
pub fn find_nth(devices: &[MmioDevice], id: u32, n: usize) -> Option<Mmio> {
    devices
        .iter()
        .filter_map(|dev| match probe(dev) {
            Probe::Device { mmio, id: found } if found == id => Some(mmio),
            _ => None,
        })
        .nth(n)
}

/// An initialised device with queue 0 live (status DRIVER_OK).
pub struct Device<'t> {
    mmio: Mmio,
    queue: Queue,
    timer: &'t Timer,
}

/// Writes 0 to Status and waits until it reads back 0.
pub fn reset(mmio: Mmio, timer: &Timer) -> Result<(), Error> {
    mmio.write(mmio::STATUS, 0);
    let deadline = timer.deadline_ms(RESET_TIMEOUT_MS);
    loop {
        let status = mmio.read(mmio::STATUS);
        if status == 0 {
            return Ok(());
        }
        if status & DEVICE_NEEDS_RESET != 0 {
            return Err(Error::NeedsReset);
        }
        if timer.expired(deadline) {
            return Err(Error::ResetTimeout { status });
        }
    }
}

/// Writes `status` and reads it back; DEVICE_NEEDS_RESET in the answer is an error.
fn set_status(mmio: Mmio, status: u32) -> Result<u32, Error> {
    mmio.write(mmio::STATUS, status);
    let now = mmio.read(mmio::STATUS);
    if now & DEVICE_NEEDS_RESET != 0 {
        return Err(Error::NeedsReset);
    }
    Ok(now)
}

fn device_features(mmio: Mmio) -> u64 {
    mmio.write(mmio::DEVICE_FEATURES_SEL, 0);
    let low = mmio.read(mmio::DEVICE_FEATURES);
    mmio.write(mmio::DEVICE_FEATURES_SEL, 1);
    let high = mmio.read(mmio::DEVICE_FEATURES);
    (u64::from(high) << 32) | u64::from(low)
}

fn set_driver_features(mmio: Mmio, features: u64) {
    mmio.write(mmio::DRIVER_FEATURES_SEL, 0);
    mmio.write(mmio::DRIVER_FEATURES, features as u32);
    mmio.write(mmio::DRIVER_FEATURES_SEL, 1);
    mmio.write(mmio::DRIVER_FEATURES, (features >> 32) as u32);
}

impl<'t> Device<'t> {
    /// Resets the device and initialises it: ACKNOWLEDGE, DRIVER, features (VERSION_1 plus
    /// those of `accept` the device offers), FEATURES_OK (checked), queue 0, DRIVER_OK.
    pub fn init(mmio: Mmio, accept: u64, timer: &'t Timer) -> Result<Device<'t>, Error> {
        reset(mmio, timer)?;
        set_status(mmio, ACKNOWLEDGE)?;
        set_status(mmio, ACKNOWLEDGE | DRIVER)?;

        let offered = device_features(mmio);
        if offered & F_VERSION_1 == 0 {
            return Err(Error::NoVersion1);
        }
        let features = offered & (accept | F_VERSION_1);
        set_driver_features(mmio, features);
        let status = set_status(mmio, ACKNOWLEDGE | DRIVER | FEATURES_OK)?;
        if status & FEATURES_OK == 0 {
            return Err(Error::FeaturesOkRefused);
        }

        mmio.write(mmio::QUEUE_SEL, 0);
        if mmio.read(mmio::QUEUE_READY) != 0 {
            return Err(Error::QueueBusy);
        }
        let max = mmio.read(mmio::QUEUE_NUM_MAX);
        if max == 0 {
            return Err(Error::QueueSize { max });
        }
        // The largest power of two not above either limit.
        let size = 1u16 << (max.min(u32::from(queue::MAX_SIZE)).ilog2());
        let queue = Queue::new(size);
        let (desc, avail, used) = queue.addresses();
        mmio.write(mmio::QUEUE_NUM, u32::from(queue.size()));
        mmio.write_addr(mmio::QUEUE_DESC_LOW, mmio::QUEUE_DESC_HIGH, desc);
        mmio.write_addr(mmio::QUEUE_DRIVER_LOW, mmio::QUEUE_DRIVER_HIGH, avail);
        mmio.write_addr(mmio::QUEUE_DEVICE_LOW, mmio::QUEUE_DEVICE_HIGH, used);
        mmio.write(mmio::QUEUE_READY, 1);

        set_status(mmio, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK)?;
        Ok(Device { mmio, queue, timer })
    }

    /// Submits `bufs` as one chain, notifies queue 0 and waits for the chain to come back
    /// with a used-buffer interrupt. Returns the used length (bytes the device wrote).
    pub fn request(&mut self, bufs: &[Buf]) -> Result<u32, Error> {
        let head = self.queue.submit(bufs);
        self.mmio.write(mmio::QUEUE_NOTIFY, 0);
        let deadline = self.timer.deadline_ms(REQUEST_TIMEOUT_MS);
        let mut interrupt = false;
        let mut used = None;
        loop {
            let pending = self.mmio.read(mmio::INTERRUPT_STATUS);
            if pending != 0 {
                self.mmio.write(mmio::INTERRUPT_ACK, pending);
                interrupt |= pending & INT_VRING != 0;
                if pending & INT_CONFIG != 0 && self.needs_reset() {
                    return Err(Error::NeedsReset);
                }
            }
            if used.is_none() {
                used = self.queue.pop_used();
            }
            // The device may publish the chain a moment before it sets the interrupt bit.
            if let (Some((id, len)), true) = (used, interrupt) {
                if id != u32::from(head) {
                    return Err(Error::UsedId {
                        expected: head,
                        got: id,
                    });
                }
                return Ok(len);
            }
            if self.timer.expired(deadline) {
                if self.needs_reset() {
                    return Err(Error::NeedsReset);
                }
                return Err(match used {
                    Some(_) => Error::NoVringInterrupt,
                    None => Error::Timeout { interrupt },
                });
            }
        }
    }

    fn needs_reset(&self) -> bool {
        self.mmio.read(mmio::STATUS) & DEVICE_NEEDS_RESET != 0
    }

    /// Resets the device (status 0); the queue is dead afterwards.
    pub fn reset(self) -> Result<(), Error> {
        reset(self.mmio, self.timer)
    }
}
