//! The virtio-mmio register file, version 2 ("modern"), virtio 1.2 §4.2.2. Every register is
//! 32 bits wide and accessed with one volatile 32-bit load or store (each is a VM exit).

use crate::cmdline::MmioDevice;
use core::ptr::{read_volatile, write_volatile};

/// "virt" in little-endian.
pub const MAGIC: u32 = 0x7472_6976;
/// The only transport version this driver speaks (1 is the legacy interface).
pub const VERSION: u32 = 2;

// Register offsets.
pub const MAGIC_VALUE: usize = 0x000;
pub const VERSION_REG: usize = 0x004;
pub const DEVICE_ID: usize = 0x008;
pub const DEVICE_FEATURES: usize = 0x010;
pub const DEVICE_FEATURES_SEL: usize = 0x014;
pub const DRIVER_FEATURES: usize = 0x020;
pub const DRIVER_FEATURES_SEL: usize = 0x024;
pub const QUEUE_SEL: usize = 0x030;
pub const QUEUE_NUM_MAX: usize = 0x034;
pub const QUEUE_NUM: usize = 0x038;
pub const QUEUE_READY: usize = 0x044;
pub const QUEUE_NOTIFY: usize = 0x050;
pub const INTERRUPT_STATUS: usize = 0x060;
pub const INTERRUPT_ACK: usize = 0x064;
pub const STATUS: usize = 0x070;
pub const QUEUE_DESC_LOW: usize = 0x080;
pub const QUEUE_DESC_HIGH: usize = 0x084;
pub const QUEUE_DRIVER_LOW: usize = 0x090;
pub const QUEUE_DRIVER_HIGH: usize = 0x094;
pub const QUEUE_DEVICE_LOW: usize = 0x0a0;
pub const QUEUE_DEVICE_HIGH: usize = 0x0a4;

/// Registers end here; device-specific config space follows (none used yet).
const REGISTERS_END: u64 = 0x100;
/// The boot page tables identity-map the first 4 GiB only.
const MAPPED_END: u64 = 1 << 32;

/// One device's register window (identity mapped, uncached in the top GiB).
#[derive(Clone, Copy)]
pub struct Mmio {
    base: usize,
}

impl Mmio {
    /// The window of a `virtio_mmio.device=` entry, if the guest can reach all its registers:
    /// 4-byte aligned, at least 0x100 bytes, below 4 GiB.
    pub fn new(dev: &MmioDevice) -> Option<Mmio> {
        let usable = dev.addr.is_multiple_of(4)
            && dev.size >= REGISTERS_END
            && dev.addr.checked_add(REGISTERS_END)? <= MAPPED_END;
        usable.then_some(Mmio {
            base: dev.addr as usize,
        })
    }

    pub fn read(&self, reg: usize) -> u32 {
        // SAFETY: `new` checked that the register lies in the device's window below 4 GiB, which
        // the boot page tables identity-map; the window is the VMM's MMIO, not guest memory, so
        // the read cannot alias anything this program owns.
        unsafe { read_volatile((self.base + reg) as *const u32) }
    }

    pub fn write(&self, reg: usize, value: u32) {
        // SAFETY: as for `read`: an MMIO register, mapped, owned by no Rust object.
        unsafe { write_volatile((self.base + reg) as *mut u32, value) }
    }

    /// Writes a 64-bit guest-physical address into a LOW/HIGH register pair.
    pub fn write_addr(&self, low: usize, high: usize, addr: u64) {
        self.write(low, addr as u32);
        self.write(high, (addr >> 32) as u32);
    }
}
