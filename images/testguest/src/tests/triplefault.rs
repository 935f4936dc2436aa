//! `triplefault`: loads an empty IDT and raises an exception, so the CPU cannot deliver it, nor
//! the double fault that follows, and shuts down. Lets the harness check that a guest crash ends
//! the VMM with its crash code and a one-line reason, never a hang or a panic. Never in the
//! default set.

use crate::cmdline::MmioDevice;
use crate::tests::{Ctx, Outcome};

pub fn applies(_devices: &[MmioDevice]) -> bool {
    false
}

pub fn run(_ctx: &Ctx) -> Outcome {
    #[repr(C, packed)]
    struct Idtr {
        limit: u16,
        base: u64,
    }
    let empty = Idtr { limit: 0, base: 0 };
    // SAFETY: deliberately fatal. With a zero-limit IDT the `ud2` raises #UD, whose delivery
    // fails (#GP, then #DF) and the CPU shuts down; nothing runs after this block.
    unsafe {
        core::arch::asm!("lidt [{0}]", "ud2", in(reg) &empty, options(noreturn));
    }
}
