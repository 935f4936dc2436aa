//! The 64-bit TSS: `rsp0`, the stack the CPU switches to when an interrupt or exception
//! arrives from ring 3, and IST1, the stack of the double-fault handler. The GDT itself (with
//! the user segments and the TSS slot) is assembled in `boot.rs`; this fills in the TSS
//! descriptor and loads the task register.

use super::Page;
use crate::boot::TSS_SEL;
use core::arch::asm;
use core::cell::UnsafeCell;
use core::ptr::{addr_of, addr_of_mut, write_volatile};

/// Bytes of the interrupt stack (ring 3 → ring 0) and of the double-fault stack.
const INTERRUPT_STACK: usize = 16 * 1024;
const FAULT_STACK: usize = 8 * 1024;

/// The 64-bit TSS (104 bytes, no I/O permission bitmap).
#[repr(C, packed)]
struct Tss {
    reserved0: u32,
    rsp: [u64; 3],
    reserved1: u64,
    ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    iomap_base: u16,
}

static TSS: Page<Tss> = Page(UnsafeCell::new(Tss {
    reserved0: 0,
    rsp: [0; 3],
    reserved1: 0,
    ist: [0; 7],
    reserved2: 0,
    reserved3: 0,
    iomap_base: core::mem::size_of::<Tss>() as u16,
}));

#[link_section = ".noinit.stacks"]
static INTERRUPT_STACK_MEM: Page<[u8; INTERRUPT_STACK]> =
    Page(UnsafeCell::new([0; INTERRUPT_STACK]));
#[link_section = ".noinit.stacks"]
static FAULT_STACK_MEM: Page<[u8; FAULT_STACK]> = Page(UnsafeCell::new([0; FAULT_STACK]));

extern "C" {
    /// The GDT in `boot.rs`.
    static pvh_gdt: [u64; 7];
}

pub fn init() {
    let tss = TSS.0.get();
    let rsp0 = INTERRUPT_STACK_MEM.0.get() as u64 + INTERRUPT_STACK as u64;
    let ist1 = FAULT_STACK_MEM.0.get() as u64 + FAULT_STACK as u64;
    let base = tss as u64;
    let limit = core::mem::size_of::<Tss>() as u64 - 1;
    // Present, DPL 0, type 9 (available 64-bit TSS).
    let low = (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (0x89 << 40)
        | (((limit >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56);
    let high = base >> 32;
    let slot = usize::from(TSS_SEL / 8);
    // SAFETY: the TSS is a static only this function writes, before `ltr`; the GDT's slots
    // `slot` and `slot + 1` are the TSS descriptor reserved in boot.rs, not yet in use; then
    // the task register is loaded with that descriptor.
    unsafe {
        write_volatile(addr_of_mut!((*tss).rsp[0]), rsp0);
        write_volatile(addr_of_mut!((*tss).ist[0]), ist1);
        let gdt = addr_of!(pvh_gdt) as *mut u64;
        write_volatile(gdt.add(slot), low);
        write_volatile(gdt.add(slot + 1), high);
        asm!("ltr {0:x}", in(reg) TSS_SEL, options(nostack, preserves_flags));
    }
}
