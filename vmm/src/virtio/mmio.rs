//! The virtio-mmio transport, version 2 (virtio 1.2 §4.2.2), modern devices only: the register
//! file of one device window and the device-status state machine, driving a [`DeviceProxy`].
//!
//! The transport owns the transport state (features, queue addresses, status), so that a device
//! whose backend died can be reset and set up again. It answers every guest access without
//! panicking: registers are 32-bit and read or written with 4-byte accesses only, anything else
//! (wrong width, unknown offset, write to a read-only register, out-of-order status) is ignored,
//! reads of it returning 0, and reported once per kind on stderr. The config space at
//! [`CONFIG_OFFSET`] takes 1, 2, 4 and 8-byte accesses inside the device's config; reads outside
//! it return 0.
//!
//! # Device status
//!
//! ```text
//!  any state ── Status = 0 ──▶ proxy.reset(); features, queues, selectors, latch cleared ──▶ 0
//!
//!  0
//!  │ ACKNOWLEDGE
//!  ▼
//!  ACK
//!  │ DRIVER
//!  ▼
//!  ACK|DRIVER ◀─────────────┐ refused, FEATURES_OK reads clear: driver features not a subset
//!  │ FEATURES_OK            │ of the offer, no VIRTIO_F_VERSION_1, or the proxy is broken
//!  ├────────────────────────┘         (DriverFeatures writable until accepted)
//!  ▼
//!  ACK|DRIVER|FEATURES_OK             (queue registers writable, see below)
//!  │ DRIVER_OK: ready queues validated, proxy.activate()
//!  ├─ ok ────▶ ACK|DRIVER|FEATURES_OK|DRIVER_OK                      queue registers locked
//!  └─ fails ─▶ ACK|DRIVER|FEATURES_OK|DRIVER_OK|DEVICE_NEEDS_RESET   + config interrupt
//!
//!  FAILED: may be added in any non-zero state; then only a reset is accepted.
//!  DEVICE_NEEDS_RESET: device-owned. Reads set in any non-zero state while the proxy is
//!  broken, or once latched (activation failed, or `mark_needs_reset`), until the driver
//!  resets. A reset device reads 0 even when broken, so a driver waiting for 0 after a reset
//!  never hangs; the broken device then refuses FEATURES_OK.
//! ```
//!
//! Several steps may come in one write (each is checked in order; the first refused one ends
//! it), a write that clears bits other than by writing 0 is ignored, and so are reserved bits.
//!
//! # Queues
//!
//! `QueueNum`, the ring addresses and `QueueReady` of the queue `QueueSel` selects are writable
//! until DRIVER_OK, `QueueNum` and the addresses only while that queue is not ready. `QueueNum` takes powers
//! of two up to `QueueNumMax` (it starts at `QueueNumMax`); `QueueReady` takes 0 or 1. Queues at
//! or past the device's queue count read `QueueNumMax` 0 and take no writes. On DRIVER_OK the
//! ready queues are checked with the same `ipc` validation the worker runs (sizes, ring
//! alignment, wrap-around) before the proxy sees them.
//!
//! `QueueNotify` is normally caught by KVM ioeventfds registered at [`QUEUE_NOTIFY_OFFSET`]; a
//! write that reaches this code is forwarded to [`DeviceProxy::notify`] for a ready queue after
//! DRIVER_OK. `InterruptStatus` and `InterruptACK` go to the status word the proxy shares with
//! the backend, masked to the two defined bits.

use ipc::{DeviceLayout, QueueConfig, VmmToWorker};

use super::status::{ACKNOWLEDGE, DEVICE_NEEDS_RESET, DRIVER, DRIVER_OK, FAILED, FEATURES_OK};
use super::{DeviceProxy, ProxyError, INT_CONFIG, INT_VRING, VIRTIO_F_VERSION_1};
use crate::mmio_bus::MmioDevice;
use worker::report::one_line;

#[cfg(test)]
mod tests;

/// `MagicValue`: "virt" read as a little-endian u32.
pub const MAGIC_VALUE: u32 = 0x7472_6976;
/// `Version`: 2, the virtio 1.x ("modern") register layout.
pub const VERSION: u32 = 2;
/// `VendorID`: "SVMM" read as a little-endian u32 (0x4d4d5653). Drivers only print it.
pub const VENDOR_ID: u32 = u32::from_le_bytes(*b"SVMM");
/// Offset of `QueueNotify`, where the VMM registers one 4-byte ioeventfd per queue with the
/// queue index as datamatch.
pub const QUEUE_NOTIFY_OFFSET: u64 = reg::QUEUE_NOTIFY;
/// Offset of the device-specific config space in the window.
pub const CONFIG_OFFSET: u64 = 0x100;

/// Reserved feature bits this transport does not implement, never offered whatever the device
/// says: SR_IOV (37, PCI only), NOTIFICATION_DATA (38: notifications would carry more than the
/// queue index the ioeventfds match), NOTIF_CONFIG_DATA (39, PCI only), RING_RESET (40: no
/// `QueueReset` register) and ADMIN_VQ (41).
pub const UNSUPPORTED_FEATURES: u64 = 0x1f << 37;

/// Status bits the driver may set; [`DEVICE_NEEDS_RESET`] is the device's and ignored in writes.
const DRIVER_STATUS_BITS: u32 = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK | FAILED;
/// Initialisation steps, in the only order the device accepts them.
const STEPS: [u32; 4] = [ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK];
/// Most queues one transport tracks (the protocol's own bound on a device's queue count).
const MAX_QUEUES: u16 = ipc::Limits::VIRTIO_MMIO.max_queues;

/// Register offsets (virtio 1.2 §4.2.2, table "MMIO Device Register Layout").
mod reg {
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_SEL: u64 = 0x0ac;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
}

/// One queue as the driver set it up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct QueueState {
    size: u16,
    ready: bool,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
}

impl QueueState {
    fn new(max_size: u16) -> Self {
        Self {
            size: max_size,
            ready: false,
            desc_table: 0,
            avail_ring: 0,
            used_ring: 0,
        }
    }
}

/// The three parts of a split virtqueue, each with a 64-bit address in two registers.
#[derive(Clone, Copy, Debug)]
enum Ring {
    Desc,
    Driver,
    Device,
}

/// Kinds of odd guest behaviour, each reported once per transport.
#[derive(Clone, Copy, Debug)]
enum Oddity {
    Width,
    UnknownRegister,
    ReadOnly,
    ConfigBounds,
    ConfigWrite,
    Status,
    FeaturesLocked,
    QueueLocked,
    QueueSelect,
    QueueNum,
    QueueReady,
    Notify,
    Refused,
    Activation,
    Reset,
}

/// Why the transport refused FEATURES_OK or DRIVER_OK.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("the device is broken")]
    Broken,
    #[error("the driver accepted features {0:#x} the device does not offer")]
    Unoffered(u64),
    #[error("the driver did not accept VIRTIO_F_VERSION_1 (legacy drivers are not supported)")]
    NotModern,
    #[error("invalid queue set-up")]
    Queues(#[from] ipc::ProtocolError),
    #[error("the device did not start")]
    Proxy(#[from] ProxyError),
}

/// The register file of one virtio-mmio device window, in front of the device's proxy `P`.
pub struct MmioTransport<P> {
    /// Names the device in reports ("rng#0").
    name: String,
    proxy: P,
    /// Status bits the driver set and the device accepted (never DEVICE_NEEDS_RESET).
    status: u32,
    /// DEVICE_NEEDS_RESET latched by the transport until the next reset.
    needs_reset: bool,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    /// One per device queue, at most [`MAX_QUEUES`].
    queues: Vec<QueueState>,
    /// Bit `Oddity as u32` is set once that kind was reported.
    reported: u32,
    /// The device's shared-memory regions, `(base, len)` by region id (virtio 1.2 §4.2.2:
    /// `SHMSel`, `SHMLen`, `SHMBase`); fixed when the device is set up.
    shm_regions: Vec<(u64, u64)>,
    /// `SHMSel`.
    shm_sel: u32,
}

impl<P: DeviceProxy> MmioTransport<P> {
    /// A transport in the reset state for the device behind `proxy`; `name` identifies it in
    /// reports.
    pub fn new(name: impl Into<String>, proxy: P) -> Self {
        let mut transport = Self {
            name: name.into(),
            proxy,
            status: 0,
            needs_reset: false,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues: Vec::new(),
            reported: 0,
            shm_regions: Vec::new(),
            shm_sel: 0,
        };
        transport.clear();
        transport
    }

    /// With shared-memory regions `(base, len)`, region id = position.
    pub fn with_shm_regions(mut self, regions: Vec<(u64, u64)>) -> Self {
        self.shm_regions = regions;
        self
    }

    /// The selected shared-memory region's `(base, len)`, or all ones for a region the device
    /// does not have (the spec's "length of -1").
    fn selected_shm(&self) -> (u64, u64) {
        usize::try_from(self.shm_sel)
            .ok()
            .and_then(|i| self.shm_regions.get(i).copied())
            .unwrap_or((u64::MAX, u64::MAX))
    }

    /// The device's proxy.
    pub fn proxy(&self) -> &P {
        &self.proxy
    }

    /// The device's proxy, for its owner (for instance to deliver a worker's messages).
    pub fn proxy_mut(&mut self) -> &mut P {
        &mut self.proxy
    }

    /// The features the driver wrote (0 after a reset), for the statistics at VM end.
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// `Status` as the guest reads it, DEVICE_NEEDS_RESET included.
    pub fn device_status(&self) -> u32 {
        let needs_reset = self.status != 0 && (self.needs_reset || self.proxy.is_broken());
        self.status | if needs_reset { DEVICE_NEEDS_RESET } else { 0 }
    }

    /// Latches DEVICE_NEEDS_RESET until the driver resets the device, with a config-change
    /// interrupt if the driver had set DRIVER_OK (virtio 1.2 §2.1.2). For the VMM when a worker
    /// dies or misbehaves. Does nothing on a device in the reset state (there is nothing to
    /// reset; a broken proxy refuses the next initialisation instead), or if already latched.
    pub fn mark_needs_reset(&mut self) {
        if self.status == 0 || self.needs_reset {
            return;
        }
        self.needs_reset = true;
        if self.status & DRIVER_OK != 0 {
            self.proxy.signal_config_change();
        }
    }

    /// What a worker started in place of a dead one needs to carry on (`crate::supervisor`):
    /// the driver's features and the ready queues, if the driver set DRIVER_OK and the device
    /// is running — no reset pending, no failed activation. `None` otherwise: a device the
    /// driver has not started yet gets its `Activate` in the usual way.
    pub fn running_state(&self) -> Option<(u64, Vec<QueueConfig>)> {
        let running = self.status & DRIVER_OK != 0
            && self.status & FAILED == 0
            && !self.needs_reset
            && !self.proxy.is_broken();
        running.then(|| (self.driver_features, self.ready_queues()))
    }

    /// Whether the driver has begun initialising the device (`Status` is not 0).
    pub fn initialising(&self) -> bool {
        self.status != 0
    }

    /// The queues the driver made ready, in index order.
    fn ready_queues(&self) -> Vec<QueueConfig> {
        (0u16..)
            .zip(&self.queues)
            .filter(|(_, q)| q.ready)
            .map(|(index, q)| QueueConfig {
                index,
                size: q.size,
                desc_table: q.desc_table,
                avail_ring: q.avail_ring,
                used_ring: q.used_ring,
            })
            .collect()
    }

    /// Features offered to the driver: the device's, minus what this transport cannot do.
    fn offered_features(&self) -> u64 {
        self.proxy.info().device_features & !UNSUPPORTED_FEATURES
    }

    /// Returns every register to its reset value, sizing the queues from the proxy's info.
    fn clear(&mut self) {
        let info = self.proxy.info();
        let count = info.num_queues.min(MAX_QUEUES);
        let queue = QueueState::new(info.max_queue_size);
        self.status = 0;
        self.needs_reset = false;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.queues = vec![queue; usize::from(count)];
        self.shm_sel = 0;
    }

    /// Reports `kind` of odd guest behaviour on stderr, the first time only.
    fn report(&mut self, kind: Oddity, detail: impl FnOnce() -> String) {
        let bit = 1 << kind as u32;
        if self.reported & bit == 0 {
            self.reported |= bit;
            eprintln!("svmm: {}: {} (reported once)", self.name, detail());
        }
    }

    /// The value of the register at `offset`, `None` for an unknown one.
    fn read_register(&mut self, offset: u64) -> Option<u32> {
        let info = self.proxy.info();
        let selected = self.selected_queue().map(|i| self.queues[i]);
        Some(match offset {
            reg::MAGIC_VALUE => MAGIC_VALUE,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => info.device_type,
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => selected.map_or(0, |_| u32::from(info.max_queue_size)),
            reg::QUEUE_READY => selected.map_or(0, |q| u32::from(q.ready)),
            reg::INTERRUPT_STATUS => self.proxy.interrupt_status() & (INT_VRING | INT_CONFIG),
            reg::STATUS => self.device_status(),
            reg::CONFIG_GENERATION => info.config_generation,
            reg::SHM_LEN_LOW => self.selected_shm().1 as u32,
            reg::SHM_LEN_HIGH => (self.selected_shm().1 >> 32) as u32,
            reg::SHM_BASE_LOW => self.selected_shm().0 as u32,
            reg::SHM_BASE_HIGH => (self.selected_shm().0 >> 32) as u32,
            // Write-only registers read as 0.
            reg::DEVICE_FEATURES_SEL
            | reg::DRIVER_FEATURES
            | reg::DRIVER_FEATURES_SEL
            | reg::QUEUE_SEL
            | reg::QUEUE_NUM
            | reg::QUEUE_NOTIFY
            | reg::INTERRUPT_ACK
            | reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH
            | reg::SHM_SEL => 0,
            _ => return None,
        })
    }

    /// Handles a 4-byte write of `value` to the register at `offset`.
    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::DRIVER_FEATURES => self.write_driver_features(value),
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            reg::QUEUE_SEL => self.queue_sel = value,
            reg::QUEUE_NUM => self.write_queue_num(value),
            reg::QUEUE_READY => self.write_queue_ready(value),
            reg::QUEUE_NOTIFY => self.notify(value),
            reg::INTERRUPT_ACK => self.proxy.interrupt_ack(value & (INT_VRING | INT_CONFIG)),
            reg::STATUS => self.write_status(value),
            reg::QUEUE_DESC_LOW => self.write_ring_address(Ring::Desc, false, value),
            reg::QUEUE_DESC_HIGH => self.write_ring_address(Ring::Desc, true, value),
            reg::QUEUE_DRIVER_LOW => self.write_ring_address(Ring::Driver, false, value),
            reg::QUEUE_DRIVER_HIGH => self.write_ring_address(Ring::Driver, true, value),
            reg::QUEUE_DEVICE_LOW => self.write_ring_address(Ring::Device, false, value),
            reg::QUEUE_DEVICE_HIGH => self.write_ring_address(Ring::Device, true, value),
            reg::SHM_SEL => self.shm_sel = value,
            reg::MAGIC_VALUE
            | reg::VERSION
            | reg::DEVICE_ID
            | reg::VENDOR_ID
            | reg::DEVICE_FEATURES
            | reg::QUEUE_NUM_MAX
            | reg::INTERRUPT_STATUS
            | reg::SHM_LEN_LOW
            | reg::SHM_LEN_HIGH
            | reg::SHM_BASE_LOW
            | reg::SHM_BASE_HIGH
            | reg::CONFIG_GENERATION => self.report(Oddity::ReadOnly, || {
                format!("write to read-only register {offset:#x} ignored")
            }),
            _ => self.report(Oddity::UnknownRegister, || {
                format!("write to unknown register {offset:#x} ignored")
            }),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status & FEATURES_OK != 0 {
            return self.report(Oddity::FeaturesLocked, || {
                "DriverFeatures written after FEATURES_OK; ignored".into()
            });
        }
        let value = u64::from(value);
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | value,
            1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (value << 32),
            // Feature words past 64 bits: nothing is offered there, nothing can be accepted.
            _ => {}
        }
    }

    /// Index of queue `index` if the device has it, by its current info and our state.
    fn queue_index(&self, index: u32) -> Option<usize> {
        let count = self
            .queues
            .len()
            .min(usize::from(self.proxy.info().num_queues));
        usize::try_from(index).ok().filter(|&i| i < count)
    }

    /// Index of the queue `QueueSel` names, if the device has it.
    fn selected_queue(&self) -> Option<usize> {
        self.queue_index(self.queue_sel)
    }

    /// The selected queue if its set-up may still change: before DRIVER_OK, and (unless
    /// `ready_ok`) while not ready. Otherwise reports why the write to `register` is ignored.
    fn editable_queue(&mut self, register: &'static str, ready_ok: bool) -> Option<usize> {
        if self.status & DRIVER_OK != 0 {
            self.report(Oddity::QueueLocked, || {
                format!("{register} written after DRIVER_OK; ignored")
            });
            return None;
        }
        let Some(index) = self.selected_queue() else {
            let sel = self.queue_sel;
            self.report(Oddity::QueueSelect, || {
                format!("{register} written for queue {sel}, which the device lacks; ignored")
            });
            return None;
        };
        if !ready_ok && self.queues[index].ready {
            self.report(Oddity::QueueLocked, || {
                format!("{register} written while queue {index} is ready; ignored")
            });
            return None;
        }
        Some(index)
    }

    /// Whether `size` is a queue size the device takes: a power of two up to `QueueNumMax`.
    fn valid_queue_size(&self, size: u32) -> bool {
        size.is_power_of_two() && size <= u32::from(self.proxy.info().max_queue_size)
    }

    fn write_queue_num(&mut self, value: u32) {
        let Some(index) = self.editable_queue("QueueNum", false) else {
            return;
        };
        match u16::try_from(value) {
            Ok(size) if self.valid_queue_size(value) => self.queues[index].size = size,
            _ => self.report(Oddity::QueueNum, || {
                format!("QueueNum {value} is not a power of two up to QueueNumMax; ignored")
            }),
        }
    }

    fn write_queue_ready(&mut self, value: u32) {
        let Some(index) = self.editable_queue("QueueReady", true) else {
            return;
        };
        match value {
            0 => self.queues[index].ready = false,
            1 if self.valid_queue_size(u32::from(self.queues[index].size)) => {
                self.queues[index].ready = true;
            }
            _ => self.report(Oddity::QueueReady, || {
                format!("QueueReady {value} for queue {index} refused")
            }),
        }
    }

    fn write_ring_address(&mut self, ring: Ring, high: bool, value: u32) {
        let Some(index) = self.editable_queue("a queue address register", false) else {
            return;
        };
        let queue = &mut self.queues[index];
        let addr = match ring {
            Ring::Desc => &mut queue.desc_table,
            Ring::Driver => &mut queue.avail_ring,
            Ring::Device => &mut queue.used_ring,
        };
        let value = u64::from(value);
        *addr = if high {
            (*addr & 0xffff_ffff) | (value << 32)
        } else {
            (*addr & !0xffff_ffff) | value
        };
    }

    /// A `QueueNotify` write that KVM's ioeventfds did not take.
    fn notify(&mut self, value: u32) {
        let index = self
            .queue_index(value)
            .filter(|&i| self.queues.get(i).is_some_and(|q| q.ready));
        match index.and_then(|i| u16::try_from(i).ok()) {
            Some(queue) if self.status & DRIVER_OK != 0 => {
                if let Err(e) = self.proxy.notify(queue) {
                    self.report(Oddity::Notify, || {
                        format!("notifying queue {queue} failed: {}", one_line(&e))
                    });
                }
            }
            _ => self.report(Oddity::Notify, || {
                format!("QueueNotify {value} for no live queue; ignored")
            }),
        }
    }

    /// A write to `Status`: 0 resets, anything else adds initialisation steps (see the module
    /// docs for the state machine).
    fn write_status(&mut self, value: u32) {
        if value == 0 {
            return self.reset();
        }
        let value = value & !DEVICE_NEEDS_RESET;
        let current = self.status;
        let refuse = |why: &'static str| move || format!("Status {value:#x} {why}; ignored");
        if value & !DRIVER_STATUS_BITS != 0 {
            return self.report(Oddity::Status, refuse("sets reserved bits"));
        }
        if value & current != current {
            return self.report(Oddity::Status, refuse("clears bits without a reset"));
        }
        if current & FAILED != 0 && value != current {
            return self.report(Oddity::Status, refuse("follows FAILED"));
        }
        let added = value & !current;
        if added & FAILED != 0 {
            self.status |= FAILED;
            return;
        }
        for step in STEPS.into_iter().filter(|step| added & step != 0) {
            if !self.take_step(step) {
                return;
            }
        }
    }

    /// Tries to add one initialisation `step` to the status; returns whether it was taken.
    fn take_step(&mut self, step: u32) -> bool {
        let required = match step {
            ACKNOWLEDGE => 0,
            DRIVER => ACKNOWLEDGE,
            FEATURES_OK => ACKNOWLEDGE | DRIVER,
            _ => ACKNOWLEDGE | DRIVER | FEATURES_OK,
        };
        if self.status != required {
            let status = self.status;
            self.report(Oddity::Status, || {
                format!("status bit {step:#x} out of order (status {status:#x}); ignored")
            });
            return false;
        }
        match step {
            FEATURES_OK => {
                if let Err(e) = self.check_features() {
                    self.report(Oddity::Refused, || {
                        format!("FEATURES_OK refused: {}", one_line(&e))
                    });
                    return false;
                }
                self.status |= FEATURES_OK;
            }
            DRIVER_OK => {
                // The driver set DRIVER_OK whatever happens next: the device is live, or broken.
                self.status |= DRIVER_OK;
                if let Err(e) = self.activate() {
                    self.report(Oddity::Activation, || {
                        format!("activation failed: {}", one_line(&e))
                    });
                    self.mark_needs_reset();
                }
            }
            _ => self.status |= step,
        }
        true
    }

    /// Whether the driver's features can be accepted.
    fn check_features(&self) -> Result<(), Refusal> {
        if self.proxy.is_broken() {
            return Err(Refusal::Broken);
        }
        let unoffered = self.driver_features & !self.offered_features();
        if unoffered != 0 {
            return Err(Refusal::Unoffered(unoffered));
        }
        if self.driver_features & (1 << VIRTIO_F_VERSION_1) == 0 {
            return Err(Refusal::NotModern);
        }
        Ok(())
    }

    /// Starts the device with the ready queues, after validating them.
    fn activate(&mut self) -> Result<(), Refusal> {
        if self.proxy.is_broken() {
            return Err(Refusal::Broken);
        }
        let queues = self.ready_queues();
        let info = self.proxy.info();
        let layout = DeviceLayout {
            device_features: self.offered_features(),
            num_queues: info.num_queues.min(MAX_QUEUES),
            max_queue_size: info.max_queue_size,
            config_len: info.config.len(),
        };
        // The checks the worker runs on `Activate`, so that the guest's mistakes stop here.
        VmmToWorker::Activate {
            driver_features: self.driver_features,
            queues: queues.clone(),
        }
        .validate(&layout)?;
        self.proxy.activate(self.driver_features, &queues)?;
        Ok(())
    }

    /// The driver wrote 0 to `Status`.
    fn reset(&mut self) {
        if let Err(e) = self.proxy.reset() {
            self.report(Oddity::Reset, || {
                format!("device reset failed: {}", one_line(&e))
            });
        }
        self.clear();
    }

    /// A read of the config space at `offset` (from its start).
    fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        let len = data.len();
        let config_len = self.proxy.info().config.len();
        match config_range(offset, len, config_len) {
            Some(range) => data.copy_from_slice(&self.proxy.info().config[range]),
            None => self.report(Oddity::ConfigBounds, || {
                format!(
                    "{len}-byte config read at {offset:#x} outside the {config_len}-byte \
                     config space or of an odd width; read as 0"
                )
            }),
        }
    }

    /// A write to the config space at `offset` (from its start).
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let len = data.len();
        let config_len = self.proxy.info().config.len();
        let Some(range) = config_range(offset, len, config_len) else {
            return self.report(Oddity::ConfigBounds, || {
                format!(
                    "{len}-byte config write at {offset:#x} outside the {config_len}-byte \
                     config space or of an odd width; ignored"
                )
            });
        };
        // Cannot fail: the range lies inside a config space held in memory.
        let Ok(offset) = u32::try_from(range.start) else {
            return;
        };
        if let Err(e) = self.proxy.write_config(offset, data) {
            self.report(Oddity::ConfigWrite, || {
                format!("config write failed: {}", one_line(&e))
            });
        }
    }
}

/// The bytes of a `len`-byte config access at `offset`, if the width is one the spec allows and
/// the access lies inside a `config_len`-byte config space.
fn config_range(offset: u64, len: usize, config_len: usize) -> Option<std::ops::Range<usize>> {
    if !matches!(len, 1 | 2 | 4 | 8) {
        return None;
    }
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(len)?;
    (end <= config_len).then_some(start..end)
}

impl<P: DeviceProxy> MmioDevice for MmioTransport<P> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let len = data.len();
        if offset >= CONFIG_OFFSET {
            self.read_config(offset - CONFIG_OFFSET, data);
        } else if len != 4 {
            self.report(Oddity::Width, || {
                format!("{len}-byte read of register {offset:#x} read as 0")
            });
        } else if let Some(value) = self.read_register(offset) {
            data.copy_from_slice(&value.to_le_bytes());
        } else {
            self.report(Oddity::UnknownRegister, || {
                format!("read of unknown register {offset:#x} read as 0")
            });
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            return self.write_config(offset - CONFIG_OFFSET, data);
        }
        match <[u8; 4]>::try_from(data) {
            Ok(bytes) => self.write_register(offset, u32::from_le_bytes(bytes)),
            Err(_) => {
                let len = data.len();
                self.report(Oddity::Width, || {
                    format!("{len}-byte write to register {offset:#x} ignored")
                });
            }
        }
    }
}
