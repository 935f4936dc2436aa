//! A small virtio-mmio driver (transport version 2 only, split virtqueues, polled), enough for
//! tests to drive a device and check what the transport reports.
//!
//! [`find`] probes the `virtio_mmio.device=` entries for a device ID. [`Device::init`] runs
//! the initialisation of virtio 1.2 §3.1.1 and sets up queue 0; it is [`Device::negotiate`]
//! (reset, features, FEATURES_OK) followed by [`Negotiated::start`] (N queues, DRIVER_OK),
//! between which a test may read the configuration space (e.g. how many queues there are).
//! [`Device::request`] puts one chain on queue 0, notifies, and waits — polling the used rings
//! and `InterruptStatus` (interrupts stay off in this guest) — until the device has returned
//! the chain *and* raised the used-buffer interrupt (bit 0), acknowledging what it sees. A
//! chain returned without that bit is an error ([`Error::NoVringInterrupt`]): Linux's driver
//! ignores the rings when bit 0 is clear, so a transport that forgets it must not pass a
//! polling test. [`Device::submit`], [`Device::notify`] and [`Device::wait`] do the same for
//! several chains in flight at once, on one queue or several. `DEVICE_NEEDS_RESET` is
//! reported as its own error wherever the status is read.

pub mod fastq;
pub mod mmio;
pub mod net;
pub mod netq;
pub mod queue;

use crate::cmdline::MmioDevice;
use crate::timer::Timer;
use core::fmt;
use mmio::Mmio;
use queue::{Buf, Queue, MAX_QUEUES};

/// Device IDs (virtio 1.2 §5). 0 marks an empty transport slot.
pub const ID_BLOCK: u32 = 2;
pub const ID_RNG: u32 = 4;
/// virtio-wl (crosvm's Wayland device; not in the spec).
pub const ID_WL: u32 = 63;

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
    /// QueueNumMax is 0: the device has no such queue.
    QueueSize { max: u32 },
    /// The device returned a chain with a head we did not submit (`expected`: the oldest
    /// chain still in flight on that queue).
    UsedId { expected: u16, got: u32 },
    /// A configuration-space field lies outside the device's window (or is misaligned).
    ConfigOutside { offset: usize },
    /// ConfigGeneration kept changing while a 64-bit field was read.
    ConfigUnstable { offset: usize },
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
            Error::ConfigOutside { offset } => write!(f, "config_outside offset={offset:#x}"),
            Error::ConfigUnstable { offset } => write!(f, "config_unstable offset={offset:#x}"),
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

/// A device whose features are agreed (status FEATURES_OK), before its queues are set up.
pub struct Negotiated<'t> {
    mmio: Mmio,
    features: u64,
    timer: &'t Timer,
}

/// An initialised device with queues 0..N live (status DRIVER_OK).
pub struct Device<'t> {
    mmio: Mmio,
    features: u64,
    queues: [Option<Queue>; MAX_QUEUES],
    timer: &'t Timer,
}

/// A chain in flight: the queue it is on, its head descriptor, and — once the device returned
/// it — the used length.
#[derive(Clone, Copy)]
pub struct Pending {
    pub queue: usize,
    pub head: u16,
    pub len: Option<u32>,
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

/// The 64 feature bits the device offers (selects and reads DeviceFeatures; no other effect).
pub fn device_features(mmio: Mmio) -> u64 {
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
    /// Resets the device and initialises it with queue 0 only: [`Device::negotiate`], then
    /// [`Negotiated::start`] with one queue.
    pub fn init(mmio: Mmio, accept: u64, timer: &'t Timer) -> Result<Device<'t>, Error> {
        Device::negotiate(mmio, accept, timer)?.start(1)
    }

    /// Resets the device, then ACKNOWLEDGE, DRIVER, features (VERSION_1 plus those of
    /// `accept` the device offers), FEATURES_OK (checked).
    pub fn negotiate(mmio: Mmio, accept: u64, timer: &'t Timer) -> Result<Negotiated<'t>, Error> {
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
        Ok(Negotiated {
            mmio,
            features,
            timer,
        })
    }

    /// The features agreed on.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// How many queues are live.
    pub fn queues(&self) -> usize {
        self.queues.iter().filter(|q| q.is_some()).count()
    }

    /// Size of queue `queue` (0 if it is not live).
    pub fn queue_size(&self, queue: usize) -> u16 {
        self.queues[queue].as_ref().map_or(0, Queue::size)
    }

    /// Submits `bufs` as one chain on queue 0, notifies and waits (up to 2 s) for the chain to
    /// come back with a used-buffer interrupt. Returns the used length (bytes the device
    /// wrote).
    pub fn request(&mut self, bufs: &[Buf]) -> Result<u32, Error> {
        self.request_on(0, bufs, REQUEST_TIMEOUT_MS)
    }

    /// [`Device::request`] on queue `queue`, waiting up to `timeout_ms`.
    pub fn request_on(
        &mut self,
        queue: usize,
        bufs: &[Buf],
        timeout_ms: u64,
    ) -> Result<u32, Error> {
        let mut pending = [self.submit(queue, bufs)];
        self.notify(queue);
        self.wait(&mut pending, timeout_ms)?;
        Ok(pending[0].len.unwrap_or(0))
    }

    /// Puts `bufs` as one chain on queue `queue` without notifying. Panics if the queue is not
    /// live or lacks free descriptors.
    pub fn submit(&mut self, queue: usize, bufs: &[Buf]) -> Pending {
        let q = self.queues[queue].as_mut().expect("virtqueue not set up");
        Pending {
            queue,
            head: q.submit(bufs),
            len: None,
        }
    }

    /// [`submit`](Self::submit) through an indirect table at `table` (see
    /// `Queue::submit_indirect`).
    pub fn submit_indirect(&mut self, queue: usize, table: Buf, bufs: &[Buf]) -> Pending {
        let q = self.queues[queue].as_mut().expect("virtqueue not set up");
        Pending {
            queue,
            head: q.submit_indirect(table, bufs),
            len: None,
        }
    }

    /// QueueNotify for queue `queue`.
    pub fn notify(&self, queue: usize) {
        self.mmio.write(mmio::QUEUE_NOTIFY, queue as u32);
    }

    /// Waits up to `timeout_ms` until every chain of `pending` is back (its `len` set) and the
    /// used-buffer interrupt was seen at least once since the call began.
    pub fn wait(&mut self, pending: &mut [Pending], timeout_ms: u64) -> Result<(), Error> {
        let deadline = self.timer.deadline_ms(timeout_ms);
        let mut interrupt = false;
        loop {
            let status = self.mmio.read(mmio::INTERRUPT_STATUS);
            if status != 0 {
                self.mmio.write(mmio::INTERRUPT_ACK, status);
                interrupt |= status & INT_VRING != 0;
                if status & INT_CONFIG != 0 && self.needs_reset() {
                    return Err(Error::NeedsReset);
                }
            }
            for index in 0..MAX_QUEUES {
                if !pending.iter().any(|p| p.queue == index && p.len.is_none()) {
                    continue;
                }
                let Some(queue) = self.queues[index].as_mut() else {
                    continue;
                };
                while let Some((id, len)) = queue.pop_used() {
                    let waiting = pending
                        .iter_mut()
                        .filter(|p| p.queue == index && p.len.is_none());
                    let mut oldest = None;
                    let mut matched = false;
                    for p in waiting {
                        oldest.get_or_insert(p.head);
                        if u32::from(p.head) == id {
                            p.len = Some(len);
                            matched = true;
                            break;
                        }
                    }
                    if !matched {
                        return Err(Error::UsedId {
                            expected: oldest.unwrap_or(u16::MAX),
                            got: id,
                        });
                    }
                }
            }
            let done = pending.iter().all(|p| p.len.is_some());
            // The device may publish a chain a moment before it sets the interrupt bit.
            if done && interrupt {
                return Ok(());
            }
            if self.timer.expired(deadline) {
                if self.needs_reset() {
                    return Err(Error::NeedsReset);
                }
                return Err(if done {
                    Error::NoVringInterrupt
                } else {
                    Error::Timeout { interrupt }
                });
            }
        }
    }

    /// Waits up to `timeout_ms` for the next chain the device returns on queue `queue`, in
    /// whatever order (for queues the device fills on its own, like virtio-wl's in queue):
    /// `(head, used length)`. Polls the used ring only; acknowledges interrupts it sees.
    pub fn wait_any(&mut self, queue: usize, timeout_ms: u64) -> Result<(u16, u32), Error> {
        let deadline = self.timer.deadline_ms(timeout_ms);
        loop {
            let status = self.mmio.read(mmio::INTERRUPT_STATUS);
            if status != 0 {
                self.mmio.write(mmio::INTERRUPT_ACK, status);
                if status & INT_CONFIG != 0 && self.needs_reset() {
                    return Err(Error::NeedsReset);
                }
            }
            let q = self.queues[queue].as_mut().expect("virtqueue not set up");
            if let Some((id, len)) = q.pop_used() {
                return u16::try_from(id)
                    .map(|head| (head, len))
                    .map_err(|_| Error::UsedId {
                        expected: u16::MAX,
                        got: id,
                    });
            }
            if self.timer.expired(deadline) {
                if self.needs_reset() {
                    return Err(Error::NeedsReset);
                }
                return Err(Error::Timeout { interrupt: false });
            }
        }
    }

    /// The next used element of queue `queue`, if any: the used ring only, no register access
    /// (for ring-3 loops that must not exit to the VMM while they poll).
    pub fn poll_used(&mut self, queue: usize) -> Option<(u32, u32)> {
        self.queues[queue].as_mut()?.pop_used()
    }

    /// Sets or clears `VIRTQ_AVAIL_F_NO_INTERRUPT` on queue `queue` (see
    /// `Queue::set_no_interrupt`).
    pub fn set_no_interrupt(&mut self, queue: usize, no_interrupt: bool) {
        if let Some(q) = self.queues[queue].as_mut() {
            q.set_no_interrupt(no_interrupt);
        }
    }

    /// The timer the device's waits use.
    pub fn timer(&self) -> &'t Timer {
        self.timer
    }

    fn needs_reset(&self) -> bool {
        self.mmio.read(mmio::STATUS) & DEVICE_NEEDS_RESET != 0
    }

    /// Resets the device (status 0); the queues are dead afterwards.
    pub fn reset(self) -> Result<(), Error> {
        reset(self.mmio, self.timer)
    }
}

impl<'t> Negotiated<'t> {
    /// The features agreed on.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Sets up queues 0..`queues` (at most [`MAX_QUEUES`]; for each, QueueReady must be 0,
    /// size the largest power of two up to min(QueueNumMax, 16)), then DRIVER_OK.
    pub fn start(self, queues: usize) -> Result<Device<'t>, Error> {
        assert!((1..=MAX_QUEUES).contains(&queues));
        let mmio = self.mmio;
        let mut live = [const { None }; MAX_QUEUES];
        for (index, slot) in live.iter_mut().enumerate().take(queues) {
            mmio.write(mmio::QUEUE_SEL, index as u32);
            if mmio.read(mmio::QUEUE_READY) != 0 {
                return Err(Error::QueueBusy);
            }
            let max = mmio.read(mmio::QUEUE_NUM_MAX);
            if max == 0 {
                return Err(Error::QueueSize { max });
            }
            // The largest power of two not above either limit.
            let size = 1u16 << (max.min(u32::from(queue::MAX_SIZE)).ilog2());
            let queue = Queue::new(index, size);
            let (desc, avail, used) = queue.addresses();
            mmio.write(mmio::QUEUE_NUM, u32::from(queue.size()));
            mmio.write_addr(mmio::QUEUE_DESC_LOW, mmio::QUEUE_DESC_HIGH, desc);
            mmio.write_addr(mmio::QUEUE_DRIVER_LOW, mmio::QUEUE_DRIVER_HIGH, avail);
            mmio.write_addr(mmio::QUEUE_DEVICE_LOW, mmio::QUEUE_DEVICE_HIGH, used);
            mmio.write(mmio::QUEUE_READY, 1);
            *slot = Some(queue);
        }
        set_status(mmio, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK)?;
        Ok(Device {
            mmio,
            features: self.features,
            queues: live,
            timer: self.timer,
        })
    }
}
