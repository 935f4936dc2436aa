//! Guest memory between `PROT_NONE` guard pages, so that any access outside it faults.
//!
//! Test-only; the one other place in this crate that allows `unsafe`, for `mmap`/`mprotect`
//! and for handing the mapping to vm-memory.
#![allow(unsafe_code)]

use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

const PAGE: usize = 4096;

/// `size` bytes (a multiple of the page size) of guest memory at guest address 0, with an
/// inaccessible page right below and right above it. The mapping is never unmapped (tests are
/// short-lived processes, and vm-memory does not own a raw mapping).
pub(crate) fn guarded_memory(size: usize) -> GuestMemoryMmap {
    assert_eq!(size % PAGE, 0);
    let total = size + 2 * PAGE;
    // SAFETY: a fresh anonymous private mapping with no address hint: it cannot alias any
    // existing memory. The result is checked below.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            total,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED, "mmap failed");
    let inner = base.cast::<u8>().wrapping_add(PAGE);
    // SAFETY: `[inner, inner + size)` lies inside the mapping just made (it starts one page in
    // and ends one page before its end); only its protection changes.
    let rc = unsafe { libc::mprotect(inner.cast(), size, libc::PROT_READ | libc::PROT_WRITE) };
    assert_eq!(rc, 0, "mprotect failed");
    // SAFETY: `inner` points to `size` readable and writable bytes that stay mapped for the
    // rest of the process (never unmapped, see above), and nothing else uses them except
    // through this `MmapRegion` (volatile accesses only).
    let region = unsafe {
        MmapRegion::build_raw(
            inner,
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        )
    }
    .unwrap();
    let region = GuestRegionMmap::new(region, GuestAddress(0)).unwrap();
    GuestMemoryMmap::from_regions(vec![region]).unwrap()
}
