//! The virtio-mmio register file, version 2 ("modern"), virtio 1.2 §4.2.2. Every register is
//! 32 bits wide and accessed with one volatile 32-bit load or store (each is a VM exit); the
//! device-specific configuration space after it is read with accesses of each field's width.

use super::Error;
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
pub const SHM_SEL: usize = 0x0ac;
pub const SHM_LEN_LOW: usize = 0x0b0;
pub const SHM_LEN_HIGH: usize = 0x0b4;
pub const SHM_BASE_LOW: usize = 0x0b8;
pub const SHM_BASE_HIGH: usize = 0x0bc;
pub const CONFIG_GENERATION: usize = 0x0fc;

/// Registers end here; the device-specific configuration space follows.
const REGISTERS_END: u64 = 0x100;
/// The boot page tables identity-map the first 4 GiB only.
const MAPPED_END: u64 = 1 << 32;
/// Reads of a 64-bit configuration field before giving up on a changing ConfigGeneration.
const CONFIG_TRIES: u32 = 16;

/// One device's register window (identity mapped, uncached in the top GiB).
#[derive(Clone, Copy)]
pub struct Mmio {
    base: usize,
    /// Bytes of the window the guest can reach (at least the 0x100 bytes of registers).
    len: u64,
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
            len: dev.size.min(MAPPED_END - dev.addr),
        })
    }

    /// The address of register `reg` (for ring-3 code that accesses it directly).
    pub fn addr(&self, reg: usize) -> usize {
        self.base + reg
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

    /// Shared-memory region `id` (§4.2.2: SHMSel, then SHMLen and SHMBase, each as two
    /// halves): `(base, len)`, or `None` when the device has no such region (length all ones).
    pub fn shm_region(&self, id: u32) -> Option<(u64, u64)> {
        self.write(SHM_SEL, id);
        let len = u64::from(self.read(SHM_LEN_LOW)) | (u64::from(self.read(SHM_LEN_HIGH)) << 32);
        if len == u64::MAX {
            return None;
        }
        let base = u64::from(self.read(SHM_BASE_LOW)) | (u64::from(self.read(SHM_BASE_HIGH)) << 32);
        Some((base, len))
    }

    /// The address of a `width`-byte field at `offset` in the configuration space, if it lies
    /// inside the window and is naturally aligned.
    fn config_addr(&self, offset: usize, width: usize) -> Result<usize, Error> {
        let end = REGISTERS_END + offset as u64 + width as u64;
        if end > self.len || !offset.is_multiple_of(width) {
            return Err(Error::ConfigOutside { offset });
        }
        Ok(self.base + REGISTERS_END as usize + offset)
    }

    // Configuration space (§4.2.2.2): 16- and 32-bit fields are read with one access of their
    // own width (8-bit fields would be too; none is used); 64-bit fields as two 32-bit halves
    // under ConfigGeneration (`config64`).

    pub fn config16(&self, offset: usize) -> Result<u16, Error> {
        let addr = self.config_addr(offset, 2)?;
        // SAFETY: inside the device's window and aligned (checked), which is MMIO below 4 GiB,
        // identity mapped and owned by no Rust object.
        Ok(unsafe { read_volatile(addr as *const u16) })
    }

    pub fn config32(&self, offset: usize) -> Result<u32, Error> {
        let addr = self.config_addr(offset, 4)?;
        // SAFETY: as for `config16`.
        Ok(unsafe { read_volatile(addr as *const u32) })
    }

    /// A 64-bit field: low half, high half, retried until ConfigGeneration is the same before
    /// and after (§2.5.1: the device may change the field between the two reads).
    pub fn config64(&self, offset: usize) -> Result<u64, Error> {
        for _ in 0..CONFIG_TRIES {
            let before = self.read(CONFIG_GENERATION);
            let low = self.config32(offset)?;
            let high = self.config32(offset + 4)?;
            if self.read(CONFIG_GENERATION) == before {
                return Ok((u64::from(high) << 32) | u64::from(low));
            }
        }
        Err(Error::ConfigUnstable { offset })
    }
}
