//! PVH entry: the ELF note that announces the 32-bit entry point, and the stub that goes from
//! 32-bit protected mode (paging off, flat segments, `ebx` = `hvm_start_info`) to 64-bit mode
//! and calls `rust_main(start_info_paddr)`.
//!
//! The page tables identity-map the first 4 GiB with 2 MiB pages. They are assembled as data
//! (no loop runs to build them): on a PVM host every guest ring-0 instruction is emulated, so
//! the stub does as little as it can. The top GiB (0xC000_0000..4 GiB: IOAPIC, LAPIC, MMIO
//! windows) is mapped uncached. None of the pages is user-accessible yet; tests that later run
//! in ring 3 set the U bit where they need it.
//!
//! The note's descriptor is 8 bytes (the entry address in the low 4, zero above), as in
//! Linux's 64-bit `vmlinux`: QEMU reads a pointer-sized descriptor from ELF64 notes,
//! linux-loader reads the low 32 bits.

use core::arch::global_asm;

/// Selector of the 64-bit code segment in the boot GDT.
pub const KERNEL_CS: u16 = 0x08;
/// Selector of the data segment in the boot GDT.
pub const KERNEL_DS: u16 = 0x10;

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

    /* ---- GDT: null, 64-bit code (0x08), data (0x10); accessed bits preset ---- */
    .section .data.pvh_gdt, "aw"
    .balign 16
pvh_gdt:
    .quad 0
    .quad 0x00AF9B000000FFFF
    .quad 0x00CF93000000FFFF
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
    .quad pvh_pdpt + 0x3            /* present, writable */
    .fill 511, 8, 0
pvh_pdpt:
    .quad pvh_pd + 0x0003
    .quad pvh_pd + 0x1003
    .quad pvh_pd + 0x2003
    .quad pvh_pd + 0x3003
    .fill 508, 8, 0
    .globl pvh_pd
pvh_pd:
    .set pvh_i, 0
    .rept 2048
    .if pvh_i < 1536
    .quad (pvh_i << 21) | 0x83      /* present, writable, 2 MiB */
    .else
    .quad (pvh_i << 21) | 0x9b      /* ... and PWT | PCD: top GiB is MMIO */
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
