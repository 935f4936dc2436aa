//! The interrupt status word a device runner shares with the virtio-mmio transport.
//!
//! The guest reads `InterruptStatus` from the transport (in the VMM), but interrupts are raised by
//! whoever runs the device (a worker process or an in-process thread) by writing an irqfd, without
//! a round trip through the VMM. So the two share one 32-bit word in a small sealed memfd page:
//! the runner sets `INT_VRING`/`INT_CONFIG` in it *before* it writes the irqfd, and the transport
//! serves `InterruptStatus` from it and clears bits on `InterruptACK`. Both sides use atomic
//! read-modify-write operations, so neither loses the other's bits.
//!
//! Trust: the VMM creates the page and seals it against shrinking and growing, so a compromised
//! worker cannot truncate it under the VMM (no SIGBUS). A worker can still write any value into
//! the word; [`IrqStatus::pending`] masks it to the two bits the transport defines.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};

use rustix::fs::{MemfdFlags, SealFlags};
use vm_memory::mmap::MmapRegion;
use vm_memory::{FileOffset, VolatileMemory};

use crate::{INT_CONFIG, INT_VRING};

/// Size of the shared page (one page: the word sits at offset 0).
pub const PAGE_SIZE: usize = 4096;

/// Bits of the status word the transport defines (virtio-mmio `InterruptStatus`).
pub const INT_MASK: u32 = INT_VRING | INT_CONFIG;

/// One device's shared interrupt status word.
pub struct IrqStatus {
    /// The mapped page; it owns the memfd (one fd per side, no duplicate).
    region: MmapRegion,
}

impl IrqStatus {
    /// Creates a new zeroed, sealed page (VMM side).
    pub fn create() -> io::Result<IrqStatus> {
        let fd = rustix::fs::memfd_create(
            "svmm-irq-status",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )?;
        rustix::fs::ftruncate(&fd, PAGE_SIZE as u64)?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
        IrqStatus::map(fd)
    }

    /// Maps a page received from the VMM (runner side). Refuses a file smaller than a page.
    pub fn from_fd(fd: OwnedFd) -> io::Result<IrqStatus> {
        let size = rustix::fs::fstat(&fd)?.st_size;
        if size < PAGE_SIZE as i64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("interrupt status page is {size} bytes, expected {PAGE_SIZE}"),
            ));
        }
        IrqStatus::map(fd)
    }

    fn map(fd: OwnedFd) -> io::Result<IrqStatus> {
        let offset = FileOffset::new(File::from(fd), 0);
        let region = MmapRegion::from_file(offset, PAGE_SIZE)
            .map_err(|e| io::Error::other(format!("cannot map the interrupt status page: {e}")))?;
        Ok(IrqStatus { region })
    }

    /// The memfd, to pass to the runner.
    pub fn fd(&self) -> BorrowedFd<'_> {
        // `map` always maps from a file, so the region has one; a `None` would be a bug here.
        self.region
            .file_offset()
            .map(|offset| offset.file().as_fd())
            .expect("the status page is mapped from its memfd")
    }

    fn word(&self) -> &AtomicU32 {
        // Offset 0 of a page-sized, page-aligned mapping: in bounds and aligned, so this cannot
        // fail; an error here would be a bug in this module.
        self.region
            .get_atomic_ref::<AtomicU32>(0)
            .expect("offset 0 of a mapped page holds an aligned u32")
    }

    /// Sets `bits` (runner side, before writing the irqfd).
    pub fn raise(&self, bits: u32) {
        self.word().fetch_or(bits, Ordering::SeqCst);
    }

    /// The pending bits, masked to those the transport defines (VMM side: `InterruptStatus`).
    pub fn pending(&self) -> u32 {
        self.word().load(Ordering::SeqCst) & INT_MASK
    }

    /// Clears `bits` (VMM side: `InterruptACK`).
    pub fn ack(&self, bits: u32) {
        self.word().fetch_and(!bits, Ordering::SeqCst);
    }

    /// Clears every bit (device reset).
    pub fn clear(&self) {
        self.word().store(0, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_mappings_see_the_same_word() {
        let vmm = IrqStatus::create().unwrap();
        let runner = IrqStatus::from_fd(vmm.fd().try_clone_to_owned().unwrap()).unwrap();
        assert_eq!(vmm.pending(), 0);
        runner.raise(INT_VRING);
        assert_eq!(vmm.pending(), INT_VRING);
        runner.raise(INT_CONFIG);
        vmm.ack(INT_VRING);
        assert_eq!(vmm.pending(), INT_CONFIG);
        assert_eq!(runner.pending(), INT_CONFIG);
        vmm.clear();
        assert_eq!(runner.pending(), 0);
    }

    #[test]
    fn garbage_from_the_runner_is_masked() {
        let vmm = IrqStatus::create().unwrap();
        let runner = IrqStatus::from_fd(vmm.fd().try_clone_to_owned().unwrap()).unwrap();
        runner.raise(0xffff_fff0);
        assert_eq!(vmm.pending(), 0);
    }

    #[test]
    fn page_is_sealed_against_resizing() {
        let vmm = IrqStatus::create().unwrap();
        assert!(rustix::fs::ftruncate(vmm.fd(), 0).is_err());
        assert!(rustix::fs::ftruncate(vmm.fd(), 2 * PAGE_SIZE as u64).is_err());
    }

    #[test]
    fn small_file_is_refused() {
        let fd = rustix::fs::memfd_create("small", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, 2).unwrap();
        assert!(IrqStatus::from_fd(fd).is_err());
    }
}
