//! PVH entry: the ELF note that announces the 32-bit entry point, and the stub that goes from
//! 32-bit protected mode (paging off, flat segments, `ebx` = `hvm_start_info`) to 64-bit mode
//! and calls `rust_main(start_info_paddr)`.
//!
//! The page tables identity-map the first 4 GiB with 2 MiB pages. They are assembled as data
//! (no loop runs to build them): on a PVM host every guest ring-0 instruction is emulated, so
//! the stub does as little as it can. The top GiB (0xC000_0000..4 GiB: IOAPIC, LAPIC, MMIO
//! windows) is mapped uncached. Every entry has the U (user) bit: the benchmark loops run in
//! ring 3 (`crate::arch::user`) and touch code, stacks, rings, buffers and the virtio-mmio
//! windows there. CR4.SMEP/SMAP stay off. The guest is a test instrument, not a security
//! boundary: ring 3 is used for speed on PVM hosts (see README.md), not for isolation.
//!
//! The GDT also holds the user segments and the TSS slot that `crate::arch::gdt` fills in.
//!
//! The note's descriptor is 8 bytes (the entry address in the low 4, zero above), as in
//! Linux's 64-bit `vmlinux`: QEMU reads a pointer-sized descriptor from ELF64 notes,
//! linux-loader reads the low 32 bits.

use core::arch::global_asm;

/// Selector of the 64-bit code segment in the boot GDT.
pub const KERNEL_CS: u16 = 0x08;
/// Selector of the data segment in the boot GDT.
pub const KERNEL_DS: u16 = 0x10;
/// Selector of the user (DPL 3) data segment, RPL 3.
pub const USER_DS: u16 = 0x18 | 3;
/// Selector of the user (DPL 3) 64-bit code segment, RPL 3.
pub const USER_CS: u16 = 0x20 | 3;
/// Selector of the 64-bit TSS (two GDT slots, filled in by `crate::arch::gdt`).
pub const TSS_SEL: u16 = 0x28;

global_asm!(
    r#"
    /* ---- PVH note: name "Xen", type 18 (XEN_ELFNOTE_PHYS32_ENTRY), desc = entry ---- */
    .section .note.Xen, "a", @note
    .balign 4
    .long 4                 /* namesz ("Xen\0") */
    .long 8                 /* descsz */
    .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .quad pvh_start32
    .balign 4

    /* ---- 32-bit entry ---- */
    .section .text.pvh_entry, "ax"
    .code32
    .globl pvh_start32
pvh_start32:
    cli
    cld
    movl %ebx, %esi                 /* hvm_start_info paddr, handed to rust_main */
    movl %cr4, %eax
    orl $0x20, %eax                 /* CR4.PAE */
    movl %eax, %cr4
    movl $pvh_pml4, %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx          /* IA32_EFER */
    rdmsr
    orl $0x100, %eax                /* EFER.LME */
    wrmsr
    lgdt pvh_gdt_desc
    movl %cr0, %eax
    orl $0x80000001, %eax           /* CR0.PG | CR0.PE */
    movl %eax, %cr0
    ljmp ${cs}, $pvh_start64

    .code64
pvh_start64:
    movl ${ds}, %eax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    leaq pvh_stack_top(%rip), %rsp
    /* Zero .bss (the loader need not; the stack is outside it). */
    leaq __bss_start(%rip), %rdi
    leaq __bss_end(%rip), %rcx
    subq %rdi, %rcx
    xorl %eax, %eax
    rep stosb
    movl %esi, %edi                 /* rust_main(start_info_paddr: u32) */
    call rust_main
1:  cli
    hlt
    jmp 1b

    /* ---- GDT: null, 64-bit code (0x08), data (0x10), user data (0x18, DPL 3), user 64-bit
       code (0x20, DPL 3), 64-bit TSS (0x28, 16 bytes, written at run time); accessed bits
       preset ---- */
    .section .data.pvh_gdt, "aw"
    .balign 16
    .globl pvh_gdt
pvh_gdt:
    .quad 0
    .quad 0x00AF9B000000FFFF
    .quad 0x00CF93000000FFFF
    .quad 0x00CFF3000000FFFF
    .quad 0x00AFFB000000FFFF
    .quad 0, 0
pvh_gdt_end:
    .balign 8
pvh_gdt_desc:
    .word pvh_gdt_end - pvh_gdt - 1
    .quad pvh_gdt

    /* ---- Page tables: identity map 0..4 GiB with 2 MiB pages ---- */
    .section .data.pvh_pagetables, "aw"
    .balign 4096
    .globl pvh_pml4
pvh_pml4:
    .quad pvh_pdpt + 0x7            /* present, writable, user */
    .fill 511, 8, 0
pvh_pdpt:
    .quad pvh_pd + 0x0007
    .quad pvh_pd + 0x1007
    .quad pvh_pd + 0x2007
    .quad pvh_pd + 0x3007
    .fill 508, 8, 0
    .globl pvh_pd
pvh_pd:
    .set pvh_i, 0
    .rept 2048
    .if pvh_i < 1536
    .quad (pvh_i << 21) | 0x87      /* present, writable, user, 2 MiB */
    .else
    .quad (pvh_i << 21) | 0x9f      /* ... and PWT | PCD: top GiB is MMIO */
    .endif
    .set pvh_i, pvh_i + 1
    .endr

    /* ---- Boot stack (not zeroed, not loaded) ---- */
    .section .pvh_stack, "aw", @nobits
    .balign 4096
pvh_stack:
    .skip 65536
pvh_stack_top:
    "#,
    cs = const KERNEL_CS,
    ds = const KERNEL_DS,
    options(att_syntax)
);
