//! x86 port I/O and the exit port.

use core::arch::asm;

/// QEMU's `isa-debug-exit` port (svmm uses the same one): a 32-bit write of the status ends
/// the VM. QEMU then exits with `(status << 1) | 1`, svmm with `status`.
pub const EXIT_PORT: u16 = 0xf4;

pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: `in` touches no memory the program owns; the ports this guest reads (UART, PIT
    // speaker control) have no side effect on its memory.
    unsafe {
        asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags));
    }
    value
}

pub fn outb(port: u16, value: u8) {
    // SAFETY: as for `inb`: the devices written (UART, PIT) do no DMA and cannot change memory
    // the program relies on.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags));
    }
}

pub fn outl(port: u16, value: u32) {
    // SAFETY: as for `outb`; used only for the exit port.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags));
    }
}

/// Ends the VM with `status`. If the port did not end it, stops the vCPU for good.
pub fn exit(status: u32) -> ! {
    outl(EXIT_PORT, status);
    loop {
        // SAFETY: interrupts off and halt: the vCPU stops here, nothing else runs.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}
