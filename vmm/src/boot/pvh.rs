//! PVH boot: `hvm_start_info`, its memory map and module list (the initrd).

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::{memmap, BootEntry, BootError, BootInputs, Initrd};
use crate::layout::{CMDLINE_START, PVH_MEMMAP_START, ZERO_PAGE_START};

/// `hvm_start_info.magic`.
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
/// The module list goes right after the start_info structure.
const MODLIST_START: u64 = ZERO_PAGE_START + 0x100;

/// Writes `hvm_start_info` and returns the PVH entry.
pub fn configure(
    mem: &GuestMemoryMmap,
    inputs: &BootInputs,
    initrd: Option<Initrd>,
    entry: GuestAddress,
) -> Result<BootEntry, BootError> {
    let memmap: Vec<hvm_memmap_table_entry> = memmap::memory_map(inputs.mem_bytes)
        .into_iter()
        .map(|(addr, size, type_)| hvm_memmap_table_entry {
            addr,
            size,
            type_,
            reserved: 0,
        })
        .collect();
    let mut start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        rsdp_paddr: inputs.rsdp.map_or(0, |a| a.0),
        memmap_paddr: PVH_MEMMAP_START,
        // Cannot truncate: the map has at most four entries.
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let mut params = BootParams::new(&start_info, GuestAddress(ZERO_PAGE_START));
    if let Some(initrd) = initrd {
        start_info.nr_modules = 1;
        start_info.modlist_paddr = MODLIST_START;
        params = BootParams::new(&start_info, GuestAddress(ZERO_PAGE_START));
        let module = hvm_modlist_entry {
            paddr: initrd.addr.0,
            size: initrd.size,
            ..Default::default()
        };
        params.set_modules(&[module], GuestAddress(MODLIST_START));
    }
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    PvhBootConfigurator::write_bootparams(&params, mem).map_err(BootError::Configure)?;
    Ok(BootEntry::Pvh {
        entry: entry.0,
        start_info: ZERO_PAGE_START,
    })
}
