//! Guest RAM: one sealed memfd, mapped into a vm-memory `GuestMemoryMmap` — the VMM makes it
//! ([`create_guest_ram`]) and every device worker maps the same pages ([`map_guest_ram`]), at the
//! guest-physical places [`ram_ranges`] gives, so both sides agree on it here, once (the VMM's
//! memory map, `vmm/src/layout.rs`, takes [`RAM_START`] and the MMIO gap from here).
//!
//! All of guest RAM is a single memfd so that device workers can map the very same pages.
//! The memfd is sealed against shrinking and growing (and further sealing) before anything is
//! mapped, so no process holding it can truncate it and crash the VMM with `SIGBUS`.
//!
//! **Huge pages.** The VMM's mapping is `madvise(MADV_HUGEPAGE)`d: where the host lets shared
//! memory use transparent huge pages (`/sys/kernel/mm/transparent_hugepage/shmem_enabled` is
//! `advise`, `within_size` or `always`), guest RAM is then allocated in 2 MiB pages (the VMM,
//! through KVM, touches every page first; workers map the same page-cache pages). That matters
//! to blk: a host I/O into guest memory has one scatter-gather segment per physically
//! contiguous piece, so a 1 MiB transfer is 1 segment in a huge page and 256 in 4 KiB pages,
//! and disks pay per segment (BENCHMARKS.md: 1 MiB `O_DIRECT` reads into 4 KiB pages took about
//! twice as long on the benchmark host's disk as into a huge page). QEMU's private anonymous
//! RAM gets huge pages from the anonymous-memory setting (`enabled`, usually `madvise`); a
//! shareable memfd needs the shared-memory one, often `never` by default.
//!
//! With `--hugepages` ([`Backing::HugeTlb`]) the memfd is a hugetlbfs one
//! (`MFD_HUGETLB | MFD_HUGE_2MB`) instead: its pages come from the host's reserved pool
//! ([`crate::hugepages`]), whatever `shmem_enabled` says, and every page is reserved when the
//! memfd is made, so a short pool is one clear error at start rather than a `SIGBUS` when the
//! guest first touches a page (vm-memory's mappings are `MAP_NORESERVE`). The reservation is a
//! throwaway mapping without `MAP_NORESERVE`: hugetlbfs keeps a shared file's reservation for
//! the file's life, and pages are still zeroed only when first touched, as with 4 KiB pages, so
//! start-up does not pay for zeroing all of RAM. Workers map the same memfd exactly as they
//! map the default one.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};

use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Start of guest RAM.
pub const RAM_START: u64 = 0;
/// Start of the 32-bit MMIO gap; RAM that does not fit below it goes above 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End (exclusive) of the 32-bit MMIO gap.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;

/// Failure to create guest RAM.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// memfd_create failed.
    #[error("cannot create the guest RAM memfd")]
    Memfd(#[source] io::Error),
    /// ftruncate failed.
    #[error("cannot size the guest RAM memfd to {1} bytes")]
    Size(#[source] io::Error, u64),
    /// F_ADD_SEALS failed.
    #[error("cannot seal the guest RAM memfd")]
    Seal(#[source] io::Error),
    /// Duplicating the memfd for a mapping failed.
    #[error("cannot duplicate the guest RAM memfd")]
    Dup(#[source] io::Error),
    /// The size does not fit this host's address space.
    #[error("guest RAM of {0} bytes does not fit the address space")]
    TooLarge(u64),
    /// mmap of a region failed.
    #[error("cannot map guest RAM")]
    Map(#[source] vm_memory::mmap::FromRangesError),
    /// The size is not a whole number of huge pages.
    #[error("--hugepages needs guest RAM in whole 2 MiB pages, not {0} bytes")]
    HugeSize(u64),
    /// The host's 2 MiB pool cannot be read (no hugetlbfs in this kernel).
    #[error("--hugepages: cannot read this host's 2 MiB huge page pool ({pool})", pool = crate::hugepages::POOL_DIR)]
    NoHugePages(#[source] io::Error),
    /// Too few free pages in the host's pool.
    #[error("--hugepages: guest RAM needs {needed} free 2 MiB huge pages, this host has {available} ({total} reserved); {advice}")]
    HugePagesShort {
        /// Pages the guest RAM takes.
        needed: u64,
        /// Pages free and not promised to anyone.
        available: u64,
        /// Pages in the pool.
        total: u64,
        /// The command that reserves enough.
        advice: String,
    },
    /// Allocating the huge pages failed for another reason.
    #[error("--hugepages: cannot allocate {0} bytes of guest RAM in huge pages")]
    HugeAlloc(#[source] io::Error, u64),
}

/// What guest RAM's memfd is made of.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backing {
    /// Ordinary shared memory (4 KiB pages, or transparent huge pages where the host's
    /// `shmem_enabled` allows them).
    #[default]
    Shmem,
    /// 2 MiB pages from the host's reserved hugetlb pool (`--hugepages`).
    HugeTlb,
}

/// Guest RAM and the memfd behind it.
pub struct GuestRam {
    /// The mapped guest memory.
    pub memory: GuestMemoryMmap,
    /// The sealed memfd; offset `o` in the file is the `o`-th byte of RAM, low region first.
    pub memfd: File,
}

/// The guest-physical ranges that `size` bytes of RAM occupy: below the MMIO gap first, the rest
/// above 4 GiB. Each entry is (guest address, length, offset in the memfd).
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, u64, u64)> {
    let low = size.min(MMIO_GAP_START - RAM_START);
    let mut ranges = vec![(GuestAddress(RAM_START), low, 0)];
    if size > low {
        ranges.push((GuestAddress(MMIO_GAP_END), size - low, low));
    }
    ranges
}

/// Creates `size` bytes of guest RAM backed by a sealed memfd of the given backing.
pub fn create_guest_ram(size: u64, backing: Backing) -> Result<GuestRam, MemoryError> {
    let mut flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    if backing == Backing::HugeTlb {
        if size % crate::hugepages::HUGE_PAGE_SIZE != 0 {
            return Err(MemoryError::HugeSize(size));
        }
        let pool = crate::hugepages::Pool::read().map_err(MemoryError::NoHugePages)?;
        short_of_huge_pages(size, pool)?;
        flags |= libc::MFD_HUGETLB | libc::MFD_HUGE_2MB;
    }
    // SAFETY: the name is a NUL-terminated literal and the flags are valid; the returned fd is
    // checked before use and owned by the File below.
    let fd = unsafe { libc::memfd_create(c"svmm-guest-ram".as_ptr(), flags) };
    if fd < 0 {
        return Err(MemoryError::Memfd(io::Error::last_os_error()));
    }
    // SAFETY: fd was just returned by memfd_create, is valid, and nothing else owns it.
    let memfd = unsafe { File::from_raw_fd(fd) };
    memfd
        .set_len(size)
        .map_err(|e| MemoryError::Size(e, size))?;
    if backing == Backing::HugeTlb {
        reserve_huge_pages(&memfd, size)?;
    }
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: F_ADD_SEALS takes an int argument; the fd is a valid memfd owned by `memfd`.
    if unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, seals) } < 0 {
        return Err(MemoryError::Seal(io::Error::last_os_error()));
    }
    let memory = map_guest_ram(memfd.try_clone().map_err(MemoryError::Dup)?, size)?;
    // hugetlb pages are huge already (and refuse the advice).
    for region in memory.iter().filter(|_| backing == Backing::Shmem) {
        // A hint: it fails (EINVAL) only on kernels without transparent huge pages, which
        // then simply use 4 KiB pages.
        // SAFETY: the range is exactly one of `memory`'s own mappings, alive here; the advice
        // changes how the kernel backs it, never its contents or validity.
        let _ = unsafe {
            libc::madvise(
                region.as_ptr().cast(),
                region.len() as usize,
                libc::MADV_HUGEPAGE,
            )
        };
    }
    Ok(GuestRam { memory, memfd })
}

/// The error for `size` bytes of huge-page RAM when the pool has too few available pages.
fn short_of_huge_pages(size: u64, pool: crate::hugepages::Pool) -> Result<(), MemoryError> {
    let needed = crate::hugepages::pages_for(size);
    if pool.available >= needed {
        return Ok(());
    }
    Err(MemoryError::HugePagesShort {
        needed,
        available: pool.available,
        total: pool.total,
        advice: crate::hugepages::how_to_reserve(needed, pool),
    })
}

/// Reserves every huge page of the memfd now: the mappings are `MAP_NORESERVE`, so a page the
/// pool could not supply later would be a `SIGBUS` in whichever process touched it first. A
/// shared mapping without `MAP_NORESERVE` reserves the file's pages in the pool (`ENOMEM` when
/// it is short), and hugetlbfs keeps that reservation after the mapping goes, until the file
/// is closed for good.
fn reserve_huge_pages(memfd: &File, size: u64) -> Result<(), MemoryError> {
    let len = usize::try_from(size).map_err(|_| MemoryError::TooLarge(size))?;
    // SAFETY: a new read-only shared mapping of our own memfd at an address the kernel picks;
    // nothing reads it, and it is unmapped right below.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            memfd.as_raw_fd(),
            0,
        )
    };
    if addr != libc::MAP_FAILED {
        // SAFETY: exactly the mapping made above, which nothing else knows of.
        unsafe { libc::munmap(addr, len) };
        return Ok(());
    }
    let error = io::Error::last_os_error();
    // Someone took the pages between the check and now: say so the same way.
    if matches!(error.raw_os_error(), Some(libc::ENOSPC | libc::ENOMEM)) {
        if let Ok(pool) = crate::hugepages::Pool::read() {
            short_of_huge_pages(size, pool)?;
        }
    }
    Err(MemoryError::HugeAlloc(error, size))
}

/// Maps the first `size` bytes of the guest RAM memfd at the guest-physical places
/// [`ram_ranges`] gives them: the VMM's own view, and a device worker's view of the same pages.
/// The mapping keeps `memfd` (the last range's region owns it, earlier ranges a duplicate), so a
/// worker holds one fd for guest RAM, not two.
pub fn map_guest_ram(memfd: File, size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let ranges = ram_ranges(size);
    let mut regions = Vec::with_capacity(ranges.len());
    let last = ranges.len().saturating_sub(1);
    let mut memfd = Some(memfd);
    for (i, (addr, len, offset)) in ranges.into_iter().enumerate() {
        // Only the last range takes `memfd` itself, so it is there for every earlier one.
        let Some(fd) = memfd.take() else { break };
        let file = if i < last {
            let dup = fd.try_clone().map_err(MemoryError::Dup)?;
            memfd = Some(fd);
            dup
        } else {
            fd
        };
        let len = usize::try_from(len).map_err(|_| MemoryError::TooLarge(size))?;
        regions.push((addr, len, Some(FileOffset::new(file, offset))));
    }
    GuestMemoryMmap::from_ranges_with_files(regions).map_err(MemoryError::Map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn ranges_split_around_the_gap() {
        assert_eq!(ram_ranges(1 << 30), vec![(GuestAddress(0), 1 << 30, 0)]);
        let big = MMIO_GAP_START + (1 << 30);
        assert_eq!(
            ram_ranges(big),
            vec![
                (GuestAddress(0), MMIO_GAP_START, 0),
                (GuestAddress(MMIO_GAP_END), 1 << 30, MMIO_GAP_START)
            ]
        );
    }

    #[test]
    fn memfd_is_sealed_and_shared() {
        let ram = create_guest_ram(4 << 20, Backing::Shmem).unwrap();
        assert_eq!(ram.memory.num_regions(), 1);
        ram.memory
            .write_obj(0x1234_5678u32, GuestAddress(0x1000))
            .unwrap();
        // The bytes are in the memfd, where a worker would see them.
        let mut buf = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(&ram.memfd, &mut buf, 0x1000).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0x1234_5678);
        // Sealed: neither shrinking nor growing is possible.
        assert!(ram.memfd.set_len(1 << 20).is_err());
        assert!(ram.memfd.set_len(8 << 20).is_err());
        // SAFETY: F_GET_SEALS only reads the seal set of a valid fd.
        let seals = unsafe {
            libc::fcntl(
                std::os::fd::AsRawFd::as_raw_fd(&ram.memfd),
                libc::F_GET_SEALS,
            )
        };
        let want = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        assert_eq!(seals & want, want);
    }
}
