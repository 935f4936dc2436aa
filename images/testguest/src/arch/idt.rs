//! The IDT (64 entries, all interrupt gates): exceptions 0..31 and the interrupt vectors of
//! `apic` (timer, device, spurious).
//!
//! An exception from ring 3 (the CS it interrupted has RPL 3) ends the ring-3 run: the stub
//! saves the vector, error code, RIP, CR2 and the user's RAX in [`RING3_EXIT`] and resumes
//! the kernel context `user::run` saved (setjmp/longjmp-like); `user::run` then decides
//! whether it was the `ud2` that returns normally. An exception in ring 0 is fatal: it is
//! reported as `testguest: fault FAIL vector=... rip=... err=... cr2=...` followed by the
//! `done` line, status 3 (like a panic), instead of a triple fault. The double fault runs on
//! its own stack (IST1).
//!
//! The interrupt handlers are a few instructions of assembly each (every ring-0 instruction
//! costs ~0.5 µs on PVM hosts): the timer's counts and remembers the interrupted CS, the
//! device's reads `InterruptStatus` of the device `apic::set_device` named, acknowledges it,
//! ORs it into a word and counts; both write the local APIC's EOI. The spurious vector only
//! returns.

use super::apic::{DEVICE_VECTOR, LAPIC_EOI, SPURIOUS_VECTOR, TIMER_VECTOR};
use super::{Page, Word};
use crate::boot::{KERNEL_CS, KERNEL_DS};
use crate::say;
use core::arch::{asm, global_asm};
use core::cell::UnsafeCell;
use core::ptr::{addr_of, write_volatile};

const ENTRIES: usize = 64;
/// Present, DPL 0, 64-bit interrupt gate (IF cleared on entry).
const INTERRUPT_GATE: u64 = 0x8e;
/// #DF runs on IST1.
const DOUBLE_FAULT: usize = 8;

static IDT: Page<[[u64; 2]; ENTRIES]> = Page(UnsafeCell::new([[0; 2]; ENTRIES]));

/// Kernel stack pointer saved by `user::run` on entry to ring 3 (callee-saved registers are
/// on that stack).
pub static KERNEL_RSP: Word = Word::new(0);
/// Filled by the exception stub when ring 3 is left: the user's RAX, vector, error code, RIP,
/// CR2.
pub static RING3_EXIT: [Word; 5] = [const { Word::new(0) }; 5];

/// Timer interrupts taken, and the CS the last one interrupted.
pub static TIMER_COUNT: Word = Word::new(0);
pub static TIMER_CS: Word = Word::new(0);
/// Device interrupts taken, the OR of the `InterruptStatus` values they read, and the base
/// of the device's register window (0: none; the handler then only counts and EOIs).
pub static DEVICE_COUNT: Word = Word::new(0);
pub static DEVICE_STATUS: Word = Word::new(0);
pub static DEVICE_MMIO: Word = Word::new(0);

extern "C" {
    static exc_stubs: [u64; 32];
    fn irq_timer();
    fn irq_device();
    fn irq_spurious();
}

global_asm!(
    r#"
    .macro EXC_NOERR v
    exc_stub_\v:
        push 0
        push \v
        jmp exc_common
    .endm
    .macro EXC_ERR v
    exc_stub_\v:
        push \v
        jmp exc_common
    .endm

    .section .text.exceptions, "ax"
    .irp v, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31
    EXC_NOERR \v
    .endr
    .irp v, 8,10,11,12,13,14,17,21,29,30
    EXC_ERR \v
    .endr

    /* [rsp] vector, +8 error code, +16 RIP, +24 CS, +32 RFLAGS, +40 RSP, +48 SS */
exc_common:
    test byte ptr [rsp + 24], 3
    jz 2f
    /* From ring 3: record, then resume the kernel context saved by user::run. */
    mov [rip + {exit}], rax
    pop rax
    mov [rip + {exit} + 8], rax
    pop rax
    mov [rip + {exit} + 16], rax
    pop rax
    mov [rip + {exit} + 24], rax
    mov rax, cr2
    mov [rip + {exit} + 32], rax
    mov eax, {kds}
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov rsp, [rip + {krsp}]
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    ret
2:
    /* From ring 0: fatal, report it. */
    mov rdi, rsp
    and rsp, -16
    call {kernel_fault}
    ud2

    .globl irq_timer
irq_timer:
    push rax
    mov rax, [rsp + 16]
    mov [rip + {tcs}], rax
    inc qword ptr [rip + {tcount}]
    movabs rax, {eoi}
    mov dword ptr [rax], 0
    pop rax
    iretq

    .globl irq_device
irq_device:
    push rax
    push rcx
    mov rax, [rip + {dmmio}]
    test rax, rax
    jz 2f
    mov ecx, [rax + 0x60]
    mov [rax + 0x64], ecx
    or [rip + {dstatus}], rcx
2:
    inc qword ptr [rip + {dcount}]
    movabs rax, {eoi}
    mov dword ptr [rax], 0
    pop rcx
    pop rax
    iretq

    .globl irq_spurious
irq_spurious:
    iretq

    .section .rodata.exc_stubs, "a"
    .balign 8
    .globl exc_stubs
exc_stubs:
    .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad exc_stub_\v
    .endr
    "#,
    exit = sym RING3_EXIT,
    krsp = sym KERNEL_RSP,
    kds = const KERNEL_DS,
    kernel_fault = sym kernel_fault,
    tcs = sym TIMER_CS,
    tcount = sym TIMER_COUNT,
    dmmio = sym DEVICE_MMIO,
    dstatus = sym DEVICE_STATUS,
    dcount = sym DEVICE_COUNT,
    eoi = const LAPIC_EOI,
);

fn gate(handler: u64, ist: u64) -> [u64; 2] {
    let low = (handler & 0xffff)
        | (u64::from(KERNEL_CS) << 16)
        | (ist << 32)
        | (INTERRUPT_GATE << 40)
        | (((handler >> 16) & 0xffff) << 48);
    [low, handler >> 32]
}

pub fn init() {
    let idt = IDT.0.get();
    // SAFETY: `exc_stubs` is a read-only table assembled above.
    let stubs = unsafe { &*addr_of!(exc_stubs) };
    let set = |vector: usize, handler: u64, ist: u64| {
        // SAFETY: `vector` < ENTRIES; the IDT is not loaded yet (or the entry is rewritten
        // with the same value), and interrupts are off.
        unsafe { write_volatile(&raw mut (*idt)[vector], gate(handler, ist)) };
    };
    for (vector, &stub) in stubs.iter().enumerate() {
        set(vector, stub, if vector == DOUBLE_FAULT { 1 } else { 0 });
    }
    set(
        usize::from(TIMER_VECTOR),
        irq_timer as *const () as usize as u64,
        0,
    );
    set(
        usize::from(DEVICE_VECTOR),
        irq_device as *const () as usize as u64,
        0,
    );
    set(
        usize::from(SPURIOUS_VECTOR),
        irq_spurious as *const () as usize as u64,
        0,
    );

    #[repr(C, packed)]
    struct Idtr {
        limit: u16,
        base: u64,
    }
    let idtr = Idtr {
        limit: (ENTRIES * 16 - 1) as u16,
        base: idt as u64,
    };
    // SAFETY: the IDT is a static with valid gates for every vector that can occur (the
    // others are not present and would fault into #GP, itself present).
    unsafe { asm!("lidt [{0}]", in(reg) &idtr, options(readonly, nostack, preserves_flags)) };
}

/// An exception in ring 0: report it and end the VM (status 3, like a panic).
extern "C" fn kernel_fault(frame: *const [u64; 7]) -> ! {
    // SAFETY: the stub passes its stack pointer, where the vector, error code and the CPU's
    // frame lie.
    let [vector, err, rip, cs, _rflags, rsp, _ss] = unsafe { frame.read() };
    let cr2: u64;
    // SAFETY: reads CR2; no other effect.
    unsafe { asm!("mov {0}, cr2", out(reg) cr2, options(nomem, nostack, preserves_flags)) };
    say!(
        "fault FAIL vector={} rip={:#x} err={:#x} cr2={:#x} cs={:#x} rsp={:#x}",
        vector,
        rip,
        err,
        cr2,
        cs,
        rsp
    );
    crate::runner::finish_after_panic()
}
