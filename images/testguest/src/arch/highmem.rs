//! Mapping guest-physical memory above the boot page tables' 4 GiB: a device's shared-memory
//! region (virtio-wl's buffers) that the VMM places above RAM.
//!
//! The boot tables (`boot.rs`) map 0..4 GiB through PML4 entry 0, PDPT entries 0..3 and 2 MiB
//! pages. [`map`] fills more PDPT entries of the same PDPT with page directories from a small
//! static pool (each covers 1 GiB), identity-maps the range with cacheable 2 MiB user pages,
//! and reloads CR3. Ranges below 4 GiB are already mapped and are left alone.

use core::arch::asm;
use core::ptr::{read_volatile, write_volatile};

use super::Page;

/// Page directories available for high mappings: 4 GiB of them.
const POOL: usize = 4;
const TWO_MIB: u64 = 1 << 21;
const ONE_GIB: u64 = 1 << 30;
/// Present, writable, user.
const TABLE: u64 = 0x7;
/// Present, writable, user, 2 MiB page; write-back (no PWT/PCD).
const LARGE: u64 = 0x87;

static PDS: [Page<[u64; 512]>; POOL] =
    [const { Page(core::cell::UnsafeCell::new([0; 512])) }; POOL];
/// Page directories of the pool handed out so far.
static USED: super::Word = super::Word::new(0);

/// Why a range cannot be mapped.
#[derive(Clone, Copy, Debug)]
pub enum MapError {
    /// Not 2 MiB-aligned, or past the first 512 GiB (PML4 entry 0).
    Range,
    /// More GiB than the pool covers.
    Pool,
}

fn cr3() -> u64 {
    let value: u64;
    // SAFETY: reading CR3 has no side effect; ring 0.
    unsafe { asm!("mov {0}, cr3", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// Identity-maps `[base, base + len)` (2 MiB-aligned) with cacheable pages.
pub fn map(base: u64, len: u64) -> Result<(), MapError> {
    let end = base.checked_add(len).ok_or(MapError::Range)?;
    if !base.is_multiple_of(TWO_MIB) || !end.is_multiple_of(TWO_MIB) || end > 512 * ONE_GIB {
        return Err(MapError::Range);
    }
    let pml4 = (cr3() & !0xfff) as *mut u64;
    // SAFETY: the boot PML4 is identity mapped; entry 0 points at the boot PDPT.
    let pdpt = (unsafe { read_volatile(pml4) } & !0xfff & ((1 << 52) - 1)) as *mut u64;
    let mut page = base.max(4 * ONE_GIB);
    while page < end {
        let gib = (page / ONE_GIB) as usize;
        // SAFETY: `gib` < 512: an entry of the boot PDPT, identity mapped, written only here.
        let entry = unsafe { read_volatile(pdpt.add(gib)) };
        let pd = if entry & 1 != 0 {
            (entry & !0xfff & ((1 << 52) - 1)) as *mut u64
        } else {
            let used = USED.get() as usize;
            if used == POOL {
                return Err(MapError::Pool);
            }
            USED.set(used as u64 + 1);
            let pd = PDS[used].0.get() as *mut u64;
            // SAFETY: a page-aligned page of the pool, not yet in use; the PDPT entry makes
            // it live only after its entries are written below.
            unsafe { write_volatile(pdpt.add(gib), pd as u64 | TABLE) };
            pd
        };
        let index = ((page % ONE_GIB) / TWO_MIB) as usize;
        // SAFETY: `index` < 512, inside a page directory this module owns.
        unsafe { write_volatile(pd.add(index), page | LARGE) };
        page += TWO_MIB;
    }
    // SAFETY: reloading CR3 with its own value flushes the TLB; the tables stay valid.
    unsafe { asm!("mov cr3, {0}", in(reg) cr3(), options(nostack, preserves_flags)) };
    Ok(())
}
