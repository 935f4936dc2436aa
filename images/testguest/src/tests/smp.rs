//! `smp` (by name only): starts every other CPU the MP table lists and leaves them writing
//! memory in a loop, for the harness's VM-teardown checks: the test passes once each AP has
//! written its buffer over and over, and the guest then ends (exit port, or power-off) while
//! the APs are still writing. The VMM must stop them before it unmaps guest RAM.
//!
//! How the APs start: the MP table (`mptable`) gives the APIC IDs; the AP trampoline below is
//! copied to [`TRAMPOLINE`] (below 1 MiB, where a started-up AP begins, in real mode), and each
//! AP in turn gets INIT, then STARTUP twice (vector = the trampoline's page), as the MP
//! specification's universal start-up algorithm says. The trampoline goes real mode → 32-bit
//! protected mode → 64-bit mode with the BSP's page tables, loads the BSP's IDT and calls
//! [`ap_main`] on the AP's own stack. APs run in ring 0 with interrupts off and never print.
//!
//! Reports `aps=N writes=W` (the smallest number of buffer passes any AP had made).

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU64, Ordering};

use crate::arch::apic;
use crate::cmdline::MmioDevice;
use crate::fig;
use crate::line::Line;
use crate::tests::{Ctx, Outcome};

/// Where the trampoline is copied: page 1 (start-up vector 1). Free in svmm's and QEMU's maps.
const TRAMPOLINE: usize = 0x1000;
/// Most APs started.
const MAX_APS: usize = 7;
/// Each AP's stack.
const STACK_BYTES: usize = 16 * 1024;
/// Each AP's buffer: 64 KiB, 16 pages, rewritten in a loop.
const BUF_WORDS: usize = 8 * 1024;
/// Buffer passes every AP must have made before the test passes.
const MIN_PASSES: u64 = 3;

/// Set by AP `k` when it runs Rust code (it has taken its start-up parameters).
static ALIVE: [AtomicU64; MAX_APS] = [const { AtomicU64::new(0) }; MAX_APS];
/// Buffer passes AP `k` completed.
static PASSES: [AtomicU64; MAX_APS] = [const { AtomicU64::new(0) }; MAX_APS];

#[repr(C, align(4096))]
struct Stacks([[u8; STACK_BYTES]; MAX_APS]);
#[link_section = ".noinit.smp_stacks"]
static mut STACKS: Stacks = Stacks([[0; STACK_BYTES]; MAX_APS]);

#[repr(C, align(4096))]
struct Buffers([[AtomicU64; BUF_WORDS]; MAX_APS]);
#[link_section = ".noinit.smp_buffers"]
static BUFFERS: Buffers = Buffers([const { [const { AtomicU64::new(0) }; BUF_WORDS] }; MAX_APS]);

pub fn applies(_devices: &[MmioDevice]) -> bool {
    false
}

pub fn run(ctx: &Ctx) -> Outcome {
    let bsp = apic::init().map_err(|e| fig!("apic {}", e))?;
    let cpus = mptable::cpus().map_err(|e| fig!("mptable {}", e))?;
    let aps: heapless_ids::Ids = cpus.iter().filter(|&id| id != bsp).collect();
    if aps.is_empty() {
        return Err(fig!("no_ap cpus={}", cpus.len()));
    }
    if aps.len() > MAX_APS {
        return Err(fig!("too_many_aps aps={}", aps.len()));
    }
    install_trampoline();
    for (k, apic_id) in aps.iter().enumerate() {
        start_ap(ctx, k, apic_id)?;
    }
    // Every AP writes its buffer again and again.
    let deadline = ctx.timer.deadline_ms(10_000);
    loop {
        let least = (0..aps.len())
            .map(|k| PASSES[k].load(Ordering::Relaxed))
            .min()
            .unwrap_or(0);
        if least >= MIN_PASSES {
            return Ok(fig!("aps={} writes={}", aps.len(), least));
        }
        if ctx.timer.expired(deadline) {
            return Err(fig!("ap_stalled passes={}", least));
        }
        crate::timer::cpu_relax();
    }
}

/// INIT, then STARTUP twice, to AP number `k` with APIC ID `apic_id`; waits until it runs.
fn start_ap(ctx: &Ctx, k: usize, apic_id: u32) -> Result<(), Line> {
    // SAFETY: the parameter block is part of the trampoline copy at TRAMPOLINE, which nothing
    // else uses; the AP that reads it is not started yet (APs are started one at a time, each
    // only once the previous one has taken its parameters).
    unsafe {
        // SAFETY (address): STACKS is only ever reached through this raw pointer.
        let stack = (&raw mut STACKS.0[k]).cast::<u8>().add(STACK_BYTES);
        param(&raw const ap_stack).write_volatile(stack as u64);
        param(&raw const ap_arg).write_volatile(k as u64);
    }
    apic::send_init(apic_id);
    ctx.timer.sleep_ms(10);
    let vector = (TRAMPOLINE >> 12) as u8;
    for _ in 0..2 {
        apic::send_startup(apic_id, vector);
        ctx.timer.sleep_ms(1);
    }
    let deadline = ctx.timer.deadline_ms(2_000);
    while ALIVE[k].load(Ordering::Relaxed) == 0 {
        if ctx.timer.expired(deadline) {
            return Err(fig!("ap_not_started apic_id={}", apic_id));
        }
        crate::timer::cpu_relax();
    }
    Ok(())
}

/// What AP `k` runs: rewrites its buffer for ever, counting passes.
#[no_mangle]
extern "C" fn ap_main(k: u64) -> ! {
    let k = k as usize % MAX_APS;
    ALIVE[k].store(1, Ordering::Relaxed);
    let mut pass: u64 = 0;
    loop {
        for word in &BUFFERS.0[k] {
            word.store(pass, Ordering::Relaxed);
        }
        pass += 1;
        PASSES[k].store(pass, Ordering::Relaxed);
    }
}

/// The trampoline copy's address of the trampoline symbol `symbol`.
fn param(symbol: *const u8) -> *mut u64 {
    let offset = symbol as usize - (&raw const ap_tramp_start) as usize;
    (TRAMPOLINE + offset) as *mut u64
}

/// Copies the trampoline to [`TRAMPOLINE`] and fills in what every AP shares: the BSP's page
/// tables and IDT.
fn install_trampoline() {
    let start = (&raw const ap_tramp_start) as usize;
    let len = (&raw const ap_tramp_end) as usize - start;
    let cr3: u64;
    let mut idt = [0u8; 10];
    // SAFETY: reading CR3 and storing the IDT register into a local buffer have no other effect.
    unsafe {
        asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack, preserves_flags));
        asm!("sidt [{}]", in(reg) idt.as_mut_ptr(), options(nostack, preserves_flags));
    }
    // SAFETY: [TRAMPOLINE, TRAMPOLINE + len) is guest RAM below 1 MiB that no Rust object and
    // no boot structure occupies (the VMMs put theirs at 0x7000 and up); the source is the
    // trampoline's code and data in this image. Nothing runs there until an AP is started.
    unsafe {
        core::ptr::copy_nonoverlapping(start as *const u8, TRAMPOLINE as *mut u8, len);
        param(&raw const ap_cr3).write_volatile(cr3);
        let idt_copy = param(&raw const ap_idt_desc).cast::<u8>();
        core::ptr::copy_nonoverlapping(idt.as_ptr(), idt_copy, idt.len());
    }
}

extern "C" {
    static ap_tramp_start: u8;
    static ap_tramp_end: u8;
    static ap_cr3: u8;
    static ap_idt_desc: u8;
    static ap_stack: u8;
    static ap_arg: u8;
}

// The AP trampoline: position-dependent on TRAMPOLINE (every absolute address below is
// `label - ap_tramp_start + 0x1000`). Real mode (CS = 0x0100, IP = 0) → a flat 32-bit code
// segment → paging with the BSP's CR3 and EFER.LME → 64-bit mode, the way Linux's own
// trampoline goes. Its GDT: null, 64-bit code (0x08), data (0x10), 32-bit code (0x18) — the
// same 0x08/0x10 as the BSP's, which the IDT's gates name.
global_asm!(
    r#"
    .section .text.ap_trampoline, "ax"
    .code16
    .globl ap_tramp_start
ap_tramp_start:
    cli
    cld
    xorw %ax, %ax
    movw %ax, %ds
    lgdtl ap_gdt_desc - ap_tramp_start + 0x1000
    movl %cr0, %eax
    orl $1, %eax                    /* CR0.PE */
    movl %eax, %cr0
    ljmpl $0x18, $(ap_tramp32 - ap_tramp_start + 0x1000)

    .code32
ap_tramp32:
    movl $0x10, %eax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl %cr4, %eax
    orl $0x20, %eax                 /* CR4.PAE */
    movl %eax, %cr4
    movl ap_cr3 - ap_tramp_start + 0x1000, %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx          /* IA32_EFER */
    rdmsr
    orl $0x100, %eax                /* EFER.LME */
    wrmsr
    movl %cr0, %eax
    orl $0x80000000, %eax           /* CR0.PG */
    movl %eax, %cr0
    ljmp $0x08, $(ap_tramp64 - ap_tramp_start + 0x1000)

    .code64
ap_tramp64:
    movl $0x10, %eax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    lidt ap_idt_desc - ap_tramp_start + 0x1000
    movq ap_stack - ap_tramp_start + 0x1000, %rsp
    movq ap_arg - ap_tramp_start + 0x1000, %rdi
    movabsq $ap_main, %rax
    callq *%rax
1:  cli
    hlt
    jmp 1b

    .balign 8
ap_gdt:
    .quad 0
    .quad 0x00AF9B000000FFFF
    .quad 0x00CF93000000FFFF
    .quad 0x00CF9B000000FFFF
ap_gdt_end:
    .balign 8
ap_gdt_desc:
    .word ap_gdt_end - ap_gdt - 1
    .long ap_gdt - ap_tramp_start + 0x1000
    .balign 8
    .globl ap_idt_desc
ap_idt_desc:
    .quad 0, 0
    .globl ap_cr3
ap_cr3:
    .quad 0
    .globl ap_stack
ap_stack:
    .quad 0
    .globl ap_arg
ap_arg:
    .quad 0
    .globl ap_tramp_end
ap_tramp_end:
    "#,
    options(att_syntax)
);

/// A few APIC IDs, without an allocator.
mod heapless_ids {
    /// At most 32 IDs.
    #[derive(Clone, Copy)]
    pub struct Ids {
        ids: [u32; 32],
        len: usize,
    }

    impl Ids {
        pub const fn new() -> Ids {
            Ids {
                ids: [0; 32],
                len: 0,
            }
        }

        pub fn push(&mut self, id: u32) -> bool {
            if self.len == self.ids.len() {
                return false;
            }
            self.ids[self.len] = id;
            self.len += 1;
            true
        }

        pub fn len(&self) -> usize {
            self.len
        }

        pub fn is_empty(&self) -> bool {
            self.len == 0
        }

        pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
            self.ids[..self.len].iter().copied()
        }
    }

    impl FromIterator<u32> for Ids {
        fn from_iter<I: IntoIterator<Item = u32>>(iter: I) -> Ids {
            let mut ids = Ids::new();
            for id in iter {
                ids.push(id);
            }
            ids
        }
    }
}

/// Reading the MP table (MP specification 1.4) the VMM wrote: the floating pointer in the
/// first KiB of the EBDA (639 KiB), or in the BIOS area 0xF0000..0x100000, then the processor
/// entries of its configuration table.
mod mptable {
    use super::heapless_ids::Ids;
    use core::fmt;

    pub enum Error {
        /// No "_MP_" floating pointer with a valid checksum.
        NoFloatingPointer,
        /// The configuration table's signature, length or checksum is wrong.
        BadTable,
    }

    impl fmt::Display for Error {
        fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(match self {
                Error::NoFloatingPointer => "no_floating_pointer",
                Error::BadTable => "bad_table",
            })
        }
    }

    fn byte(addr: usize) -> u8 {
        // SAFETY: low guest-physical memory (below 1 MiB, or a table address the VMM wrote
        // into a checksummed floating pointer, checked below 4 GiB), identity mapped; read-only.
        unsafe { core::ptr::read_volatile(addr as *const u8) }
    }

    fn sum(addr: usize, len: usize) -> u8 {
        (addr..addr + len).fold(0u8, |s, a| s.wrapping_add(byte(a)))
    }

    fn word(addr: usize) -> u32 {
        u32::from_le_bytes([byte(addr), byte(addr + 1), byte(addr + 2), byte(addr + 3)])
    }

    fn find_floating_pointer() -> Option<usize> {
        [(639 * 1024, 1024), (0xf_0000, 0x1_0000)]
            .into_iter()
            .flat_map(|(start, len)| (start..start + len).step_by(16))
            .find(|&a| word(a) == u32::from_le_bytes(*b"_MP_") && sum(a, 16) == 0)
    }

    /// The APIC IDs of the enabled processors.
    pub fn cpus() -> Result<Ids, Error> {
        let fp = find_floating_pointer().ok_or(Error::NoFloatingPointer)?;
        let table = word(fp + 4) as usize;
        if table == 0 || table >= 0x1_0000_0000 || word(table) != u32::from_le_bytes(*b"PCMP") {
            return Err(Error::BadTable);
        }
        let len = usize::from(u16::from_le_bytes([byte(table + 4), byte(table + 5)]));
        if len < 44 || sum(table, len) != 0 {
            return Err(Error::BadTable);
        }
        let mut ids = Ids::new();
        let mut at = table + 44;
        while at < table + len {
            match byte(at) {
                0 => {
                    if byte(at + 3) & 1 != 0 {
                        ids.push(u32::from(byte(at + 1)));
                    }
                    at += 20;
                }
                1..=4 => at += 8,
                _ => return Err(Error::BadTable),
            }
        }
        Ok(ids)
    }
}
