//! Running a closure in ring 3: [`run`] saves the kernel's callee-saved registers and stack
//! pointer, `iretq`s to a trampoline on its own user stack (CS/SS with RPL 3, IF as asked),
//! which calls the closure and then executes `ud2`. The #UD handler sees that it came from
//! ring 3 and resumes the saved kernel context (see `idt`); [`run`] recognises the `ud2` at
//! `ring3_return_ud2` and returns the closure's result. Any other exception from ring 3 (a
//! page fault, a #GP from a privileged instruction) ends the run the same way and comes back
//! as [`Error::Fault`]; a panic in ring 3 records its message and leaves through a second
//! `ud2` ([`Error::Panic`]). `syscall` is not used: PVM does not pass it to an unmodified
//! guest kernel.
//!
//! Ring-3 code may not do port I/O or anything else privileged (no IOPL), so it cannot
//! print: it leaves its figures in memory for ring 0 to report. Everything is mapped
//! user-accessible (`boot.rs`), so it reaches the statics, the kernel stack the closure's
//! captures live on, the rings, buffers and the virtio-mmio windows.

use super::idt::{KERNEL_RSP, RING3_EXIT};
use super::Page;
use crate::boot::{USER_CS, USER_DS};
use crate::line::Line;
use core::arch::{asm, global_asm};
use core::cell::UnsafeCell;
use core::fmt;

const USER_STACK: usize = 64 * 1024;
const RFLAGS_RESERVED: u64 = 0x2;
const RFLAGS_IF: u64 = 0x200;
const UD: u64 = 6;

#[link_section = ".noinit.stacks"]
static USER_STACK_MEM: Page<[u8; USER_STACK]> = Page(UnsafeCell::new([0; USER_STACK]));

/// The message of a panic in ring 3 (written there, read by ring 0 afterwards).
static PANIC_LINE: Page<Line> = Page(UnsafeCell::new(Line::new()));

extern "C" {
    fn ring3_enter(arg: usize, func: usize, stack_top: usize, rflags: u64);
    fn ring3_return_ud2();
    fn ring3_panic_ud2();
}

global_asm!(
    r#"
    .section .text.ring3, "ax"
    /* ring3_enter(rdi = arg, rsi = func, rdx = user stack top, rcx = rflags) */
    .globl ring3_enter
ring3_enter:
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
    mov [rip + {krsp}], rsp
    push {uds}
    push rdx
    push rcx
    push {ucs}
    lea rax, [rip + ring3_trampoline]
    push rax
    iretq
ring3_trampoline:
    call rsi
    .globl ring3_return_ud2
ring3_return_ud2:
    ud2
    .globl ring3_panic_ud2
ring3_panic_ud2:
    ud2
    "#,
    krsp = sym KERNEL_RSP,
    uds = const USER_DS,
    ucs = const USER_CS,
);

/// A ring-3 run that did not end with the closure returning.
#[derive(Clone, Copy)]
pub enum Error {
    /// An exception from ring 3: vector, error code, RIP, CR2 (meaningful for #PF).
    Fault {
        vector: u64,
        err: u64,
        rip: u64,
        cr2: u64,
    },
    /// The closure panicked; the message is in `PANIC_LINE`.
    Panic,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match *self {
            Error::Fault {
                vector,
                err,
                rip,
                cr2,
            } => write!(
                f,
                "ring3_fault vector={vector} rip={rip:#x} err={err:#x} cr2={cr2:#x}"
            ),
            Error::Panic => {
                // SAFETY: ring 3 has finished; nothing writes the line now.
                let line = unsafe { &*PANIC_LINE.0.get() };
                let text = core::str::from_utf8(line.as_bytes()).unwrap_or("?");
                write!(f, "ring3_panic {text}")
            }
        }
    }
}

extern "C" fn call<F: FnMut() -> u64>(f: *mut F) -> u64 {
    // SAFETY: `run` passes a pointer to its `&mut F`, alive until ring 3 is left.
    unsafe { (*f)() }
}

/// Runs `f` in ring 3 on the user stack, with interrupts enabled there if `interrupts`.
/// Returns its result, or how ring 3 was left otherwise. Must be called from ring 0.
pub fn run<F: FnMut() -> u64>(interrupts: bool, f: &mut F) -> Result<u64, Error> {
    let stack_top = USER_STACK_MEM.0.get() as usize + USER_STACK;
    let rflags = RFLAGS_RESERVED | if interrupts { RFLAGS_IF } else { 0 };
    // SAFETY: `ring3_enter` saves the callee-saved registers and the stack pointer, and the
    // exception stub restores both when ring 3 is left, so to this code it is a call that
    // clobbers the caller-saved registers (clobber_abi) and any memory. `f` lives on this
    // stack frame until then; the user stack is not used by anything else.
    unsafe {
        asm!(
            "call {enter}",
            enter = sym ring3_enter,
            in("rdi") f as *mut F as usize,
            in("rsi") call::<F> as *const () as usize,
            in("rdx") stack_top,
            in("rcx") rflags,
            clobber_abi("C"),
        );
    }
    let [rax, vector, err, rip, cr2] = RING3_EXIT.each_ref().map(|w| w.get());
    if vector == UD && rip == ring3_return_ud2 as *const () as usize as u64 {
        Ok(rax)
    } else if vector == UD && rip == ring3_panic_ud2 as *const () as usize as u64 {
        Err(Error::Panic)
    } else {
        Err(Error::Fault {
            vector,
            err,
            rip,
            cr2,
        })
    }
}

/// Called by the panic handler in ring 3: keeps the message and leaves ring 3.
pub fn panic_exit(info: &core::panic::PanicInfo) -> ! {
    let line = PANIC_LINE.0.get();
    // SAFETY: only this function (in ring 3, once) and `Error`'s Display (in ring 0, after
    // ring 3 has been left) touch the line.
    unsafe {
        *line = Line::new();
        let _ = match info.location() {
            Some(at) => fmt::write(
                &mut *line,
                format_args!("{} at {}:{}", info.message(), at.file(), at.line()),
            ),
            None => fmt::write(&mut *line, format_args!("{}", info.message())),
        };
        asm!("jmp {0}", sym ring3_panic_ud2, options(noreturn));
    }
}
