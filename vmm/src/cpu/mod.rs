//! vCPU state at power-on: CPUID, MSRs, FPU, local APIC, and the registers of the boot
//! protocol the kernel uses (PVH 32-bit entry or Linux 64-bit entry).

mod cpuid;
mod gdt;

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::boot::BootEntry;
use crate::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START,
};

/// Configuring a vCPU failed.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// KVM_GET_SUPPORTED_CPUID failed.
    #[error("cannot read KVM's supported CPUID")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
    /// A vCPU ioctl failed.
    #[error("cannot set vCPU {what}")]
    Ioctl {
        /// Which state.
        what: &'static str,
        /// The ioctl error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM accepted only some of the boot MSRs.
    #[error("KVM accepted only {set} of {wanted} boot MSRs")]
    Msrs {
        /// Accepted count.
        set: usize,
        /// Requested count.
        wanted: usize,
    },
    /// Building the MSR list failed.
    #[error("cannot build the MSR list")]
    MsrList,
    /// Writing boot page tables or the GDT failed.
    #[error("cannot write boot page tables or GDT to guest memory")]
    Memory(#[source] vm_memory::GuestMemoryError),
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> CpuError {
    move |source| CpuError::Ioctl { what, source }
}

/// The CPUID KVM supports on this host; read once and filtered per vCPU.
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, CpuError> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(CpuError::SupportedCpuid)
}

/// Sets CPUID, MSRs, FPU and LAPIC of vCPU `id` (of `count`); for the boot vCPU (`boot` is
/// `Some`) also the registers the boot protocol expects. Application processors wait for
/// INIT/SIPI from the guest in KVM's in-kernel LAPIC.
pub fn configure_vcpu(
    vcpu: &VcpuFd,
    base_cpuid: &CpuId,
    id: u8,
    count: u8,
    boot: Option<(&BootEntry, &GuestMemoryMmap)>,
) -> Result<(), CpuError> {
    let mut cpuid = base_cpuid.clone();
    cpuid::filter_cpuid(&mut cpuid, id, count);
    vcpu.set_cpuid2(&cpuid).map_err(ioctl("CPUID"))?;
    set_msrs(vcpu)?;
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(ioctl("FPU state"))?;
    set_lint(vcpu)?;
    if let Some((entry, mem)) = boot {
        match *entry {
            BootEntry::Pvh { entry, start_info } => set_pvh_regs(vcpu, mem, entry, start_info)?,
            BootEntry::Linux64 { entry, zero_page } => {
                set_linux64_regs(vcpu, mem, entry, zero_page)?
            }
        }
    }
    Ok(())
}

/// MSRs a kernel expects to find zeroed or set at reset. The TSC is left alone: KVM starts
/// every vCPU's TSC in step, and writing it per vCPU at different moments would skew them.
fn set_msrs(vcpu: &VcpuFd) -> Result<(), CpuError> {
    const IA32_SYSENTER_CS: u32 = 0x174;
    const IA32_SYSENTER_ESP: u32 = 0x175;
    const IA32_SYSENTER_EIP: u32 = 0x176;
    const IA32_MISC_ENABLE: u32 = 0x1a0;
    const MISC_ENABLE_FAST_STRING: u64 = 1;
    const MTRR_DEF_TYPE: u32 = 0x2ff;
    const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;
    const STAR: u32 = 0xc000_0081;
    const LSTAR: u32 = 0xc000_0082;
    const CSTAR: u32 = 0xc000_0083;
    const SYSCALL_MASK: u32 = 0xc000_0084;
    const KERNEL_GS_BASE: u32 = 0xc000_0102;
    let entries: Vec<kvm_msr_entry> = [
        (IA32_SYSENTER_CS, 0),
        (IA32_SYSENTER_ESP, 0),
        (IA32_SYSENTER_EIP, 0),
        (STAR, 0),
        (CSTAR, 0),
        (KERNEL_GS_BASE, 0),
        (SYSCALL_MASK, 0),
        (LSTAR, 0),
        (IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
    ]
    .iter()
    .map(|&(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| CpuError::MsrList)?;
    let set = vcpu.set_msrs(&msrs).map_err(ioctl("MSRs"))?;
    if set != entries.len() {
        return Err(CpuError::Msrs {
            set,
            wanted: entries.len(),
        });
    }
    Ok(())
}

/// LINT0 as ExtINT (the legacy PIC's path) and LINT1 as NMI, as firmware leaves them.
fn set_lint(vcpu: &VcpuFd) -> Result<(), CpuError> {
    const APIC_LVT0: usize = 0x350;
    const APIC_LVT1: usize = 0x360;
    const DELIVERY_EXTINT: u32 = 0x7 << 8;
    const DELIVERY_NMI: u32 = 0x4 << 8;
    const DELIVERY_MASK: u32 = 0x7 << 8;
    let mut lapic = vcpu.get_lapic().map_err(ioctl("LAPIC (read)"))?;
    for (offset, mode) in [(APIC_LVT0, DELIVERY_EXTINT), (APIC_LVT1, DELIVERY_NMI)] {
        let reg = &mut lapic.regs[offset..offset + 4];
        let mut bytes = [0u8; 4];
        for (b, r) in bytes.iter_mut().zip(reg.iter()) {
            // Cannot truncate meaningfully: c_char and u8 have the same width.
            *b = *r as u8;
        }
        let value = (u32::from_le_bytes(bytes) & !DELIVERY_MASK) | mode;
        for (r, b) in reg.iter_mut().zip(value.to_le_bytes()) {
            *r = b as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(ioctl("LAPIC"))
}

/// PVH entry: 32-bit protected mode, paging off, flat segments, `ebx` = start_info.
fn set_pvh_regs(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    entry: u64,
    start_info: u64,
) -> Result<(), CpuError> {
    write_gdt(mem, &gdt::GDT_32)?;
    let mut sregs = vcpu
        .get_sregs()
        .map_err(ioctl("segment registers (read)"))?;
    let code = gdt::segment_from_gdt(&gdt::GDT_32, 1);
    let data = gdt::segment_from_gdt(&gdt::GDT_32, 2);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = gdt::segment_from_gdt(&gdt::GDT_32, 3);
    set_descriptor_tables(&mut sregs, gdt::GDT_32.len());
    sregs.cr0 = 0x1 | 0x10; // PE | ET
    sregs.cr4 = 0;
    sregs.efer = 0;
    vcpu.set_sregs(&sregs).map_err(ioctl("segment registers"))?;
    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        rbx: start_info,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(ioctl("registers"))
}

/// Linux 64-bit entry: long mode, identity-mapped first GiB, `rsi` = zero page.
fn set_linux64_regs(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    entry: u64,
    zero_page: u64,
) -> Result<(), CpuError> {
    const X86_CR0_PE: u64 = 0x1;
    const X86_CR0_ET: u64 = 0x10;
    const X86_CR0_PG: u64 = 0x8000_0000;
    const X86_CR4_PAE: u64 = 0x20;
    const EFER_LME: u64 = 0x100;
    const EFER_LMA: u64 = 0x400;
    write_gdt(mem, &gdt::GDT_64)?;
    write_identity_page_tables(mem)?;
    let mut sregs = vcpu
        .get_sregs()
        .map_err(ioctl("segment registers (read)"))?;
    let code = gdt::segment_from_gdt(&gdt::GDT_64, 1);
    let data = gdt::segment_from_gdt(&gdt::GDT_64, 2);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = gdt::segment_from_gdt(&gdt::GDT_64, 3);
    set_descriptor_tables(&mut sregs, gdt::GDT_64.len());
    sregs.cr3 = PML4_START;
    sregs.cr4 = X86_CR4_PAE;
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
    sregs.efer = EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs).map_err(ioctl("segment registers"))?;
    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: zero_page,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(ioctl("registers"))
}

fn set_descriptor_tables(sregs: &mut kvm_bindings::kvm_sregs, gdt_entries: usize) {
    sregs.gdt.base = BOOT_GDT_START;
    // Cannot truncate: the boot GDTs have four 8-byte entries.
    sregs.gdt.limit = (gdt_entries * 8 - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
}

fn write_gdt(mem: &GuestMemoryMmap, table: &[u64]) -> Result<(), CpuError> {
    for (i, entry) in (0u64..).zip(table) {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + i * 8))
            .map_err(CpuError::Memory)?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(CpuError::Memory)
}

/// PML4 -> one PDPT -> one page directory of 2 MiB pages: the first GiB identity-mapped.
fn write_identity_page_tables(mem: &GuestMemoryMmap) -> Result<(), CpuError> {
    const PRESENT_RW: u64 = 0x3;
    const PAGE_SIZE_2M: u64 = 0x80;
    mem.write_obj(PDPTE_START | PRESENT_RW, GuestAddress(PML4_START))
        .map_err(CpuError::Memory)?;
    mem.write_obj(PDE_START | PRESENT_RW, GuestAddress(PDPTE_START))
        .map_err(CpuError::Memory)?;
    for i in 0..512u64 {
        mem.write_obj(
            (i << 21) | PAGE_SIZE_2M | PRESENT_RW,
            GuestAddress(PDE_START + i * 8),
        )
        .map_err(CpuError::Memory)?;
    }
    Ok(())
}
