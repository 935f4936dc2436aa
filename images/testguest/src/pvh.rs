//! The PVH `hvm_start_info` the loader passes in `ebx`, and the command line it points to.

/// `hvm_start_info.magic`.
pub const START_INFO_MAGIC: u32 = 0x336e_c578;

/// Everything below this address is identity mapped by `boot.rs`.
const MAPPED_END: u64 = 1 << 32;

/// Longest command line read (Linux's x86 limit is 2048).
const CMDLINE_MAX: usize = 4096;

/// `struct hvm_start_info` (xen/include/public/arch-x86/hvm/start_info.h), version 0 and 1
/// share this prefix.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StartInfo {
    pub magic: u32,
    pub version: u32,
    pub flags: u32,
    pub nr_modules: u32,
    pub modlist_paddr: u64,
    pub cmdline_paddr: u64,
    pub rsdp_paddr: u64,
    pub memmap_paddr: u64,
    pub memmap_entries: u32,
    pub reserved: u32,
}

/// Why the command line could not be read.
pub enum Error {
    BadStartInfoAddress(u32),
    BadMagic(u32),
    BadCmdlineAddress(u64),
    NotUtf8,
}

fn in_mapped_range(paddr: u64, len: u64) -> bool {
    paddr != 0 && paddr.checked_add(len).is_some_and(|end| end <= MAPPED_END)
}

/// Copies the start info out of guest memory (it is in the identity-mapped first 4 GiB).
pub fn start_info(paddr: u32) -> Result<StartInfo, Error> {
    let size = core::mem::size_of::<StartInfo>() as u64;
    if !in_mapped_range(u64::from(paddr), size) {
        return Err(Error::BadStartInfoAddress(paddr));
    }
    // SAFETY: the address is non-null and inside the identity map, and the loader placed the
    // structure there; an unaligned read copes with any alignment.
    let info = unsafe { core::ptr::read_unaligned(paddr as usize as *const StartInfo) };
    if info.magic != START_INFO_MAGIC {
        return Err(Error::BadMagic(info.magic));
    }
    Ok(info)
}

/// The NUL-terminated command line at `info.cmdline_paddr` ("" when the address is 0).
pub fn cmdline(info: &StartInfo) -> Result<&'static str, Error> {
    let paddr = info.cmdline_paddr;
    if paddr == 0 {
        return Ok("");
    }
    if !in_mapped_range(paddr, CMDLINE_MAX as u64) {
        return Err(Error::BadCmdlineAddress(paddr));
    }
    let base = paddr as usize as *const u8;
    // Scan byte by byte rather than slicing CMDLINE_MAX bytes up front: the command line may
    // sit at the very end of RAM, and reading past RAM would be an MMIO access.
    let mut len = 0;
    // SAFETY: every address read is inside the identity map (checked above for the whole
    // CMDLINE_MAX range) and the scan stops at the terminating NUL the loader wrote.
    while len < CMDLINE_MAX && unsafe { base.add(len).read() } != 0 {
        len += 1;
    }
    // SAFETY: these `len` bytes were just read and are followed by the NUL (or the cap). The
    // loader wrote them and nothing writes that memory while the guest runs (one vCPU, no
    // device DMA there), so a shared slice over them stays valid for the rest of the program.
    let bytes = unsafe { core::slice::from_raw_parts(base, len) };
    core::str::from_utf8(bytes).map_err(|_| Error::NotUtf8)
}
