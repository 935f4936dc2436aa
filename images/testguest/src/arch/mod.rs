//! What running code in ring 3 and taking interrupts needs: the TSS and user segments
//! (`gdt`), the IDT with exception and interrupt handlers (`idt`), entering ring 3 and coming
//! back through `ud2` (`user`), and the interrupt controllers (`apic`).
//!
//! Why ring 3 at all: on PVM hosts (see README.md) guest ring-0 code is emulated at ~0.5 µs
//! per instruction while ring 3 runs natively, so the benchmark request loops run in ring 3
//! and ring 0 only sets up, handles interrupts and reports. Every ring-0 path here is kept
//! short for that reason, and uses no instruction KVM's emulator lacks (no locked or fence
//! instructions, no `int3`).

pub mod apic;
pub mod gdt;
pub mod highmem;
pub mod idt;
pub mod user;

use core::cell::UnsafeCell;

/// Memory this program shares between ring 0, ring 3 and interrupt handlers on its one vCPU,
/// reached only through raw pointers with volatile accesses.
#[repr(C, align(4096))]
pub struct Page<T>(pub UnsafeCell<T>);

// SAFETY: one vCPU; ring 3, ring 0 and the handlers never run at the same time, and the
// contents are only reached through raw pointers with volatile accesses.
unsafe impl<T> Sync for Page<T> {}

/// A 64-bit word shared between ring 0, ring 3 and the interrupt handlers (which reach it
/// from assembly by symbol), read and written with volatile accesses only.
#[repr(transparent)]
pub struct Word(UnsafeCell<u64>);

// SAFETY: one vCPU; every access is a single volatile load or store of an aligned word.
unsafe impl Sync for Word {}

impl Word {
    pub const fn new(value: u64) -> Word {
        Word(UnsafeCell::new(value))
    }

    pub fn get(&self) -> u64 {
        // SAFETY: an aligned word of a static, only ever accessed whole and volatile.
        unsafe { core::ptr::read_volatile(self.0.get()) }
    }

    pub fn set(&self, value: u64) {
        // SAFETY: as for `get`.
        unsafe { core::ptr::write_volatile(self.0.get(), value) }
    }
}

/// Loads the TSS and the IDT. Cheap (a few hundred emulated instructions); done at boot so
/// that any exception is reported instead of ending in a triple fault.
pub fn init() {
    gdt::init();
    idt::init();
}

/// The current privilege level (CS.RPL).
pub fn cpl() -> u16 {
    let cs: u16;
    // SAFETY: reads the CS selector into a register; no other effect.
    unsafe {
        core::arch::asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags))
    };
    cs & 3
}
