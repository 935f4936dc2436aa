//! Linux 64-bit boot protocol: the zero page (`boot_params`) for a bzImage or an ELF vmlinux
//! without a PVH note.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::KernelLoaderResult;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::{memmap, BootEntry, BootError, BootInputs, Initrd};
use crate::layout::{CMDLINE_START, ZERO_PAGE_START};

/// "HdrS": boot protocol header magic.
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
/// Boot sector signature.
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// Loader type "undefined" (0xff): we are not one of the registered boot loaders.
const KERNEL_LOADER_OTHER: u8 = 0xff;
/// Minimum kernel alignment for a vmlinux without a setup header.
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
/// The 64-bit entry is 0x200 bytes into a bzImage's protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// Writes `boot_params` and returns the 64-bit entry.
pub fn configure(
    mem: &GuestMemoryMmap,
    inputs: &BootInputs,
    initrd: Option<Initrd>,
    loaded: &KernelLoaderResult,
) -> Result<BootEntry, BootError> {
    let mut params = boot_params::default();
    let entry = match loaded.setup_header {
        Some(hdr) => {
            params.hdr = hdr;
            loaded.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET
        }
        None => {
            params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
            params.hdr.header = KERNEL_HDR_MAGIC;
            params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
            loaded.kernel_load.0
        }
    };
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    // Cannot truncate: CMDLINE_START is below 1 MiB and the length below CMDLINE_MAX_SIZE.
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = inputs.cmdline.len() as u32 + 1;
    if let Some(initrd) = initrd {
        // Cannot truncate: the initrd is placed below 0x3800_0000 and is smaller than that.
        params.hdr.ramdisk_image = initrd.addr.0 as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    params.acpi_rsdp_addr = inputs.rsdp.map_or(0, |a| a.0);
    let map = memmap::memory_map(inputs.mem_bytes);
    for (slot, (addr, size, type_)) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: *type_,
        };
    }
    // Cannot truncate: the map has at most four entries.
    params.e820_entries = map.len() as u8;
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )
    .map_err(BootError::Configure)?;
    Ok(BootEntry::Linux64 {
        entry,
        zero_page: ZERO_PAGE_START,
    })
}
