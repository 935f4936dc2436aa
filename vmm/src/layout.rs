//! Guest physical memory map and I/O port assignments.
//!
//! Everything the guest can find at a fixed place is defined here once, so that boot code, ACPI
//! tables and device models agree.
//!
//! ```text
//! 0x0000_0000  real-mode IVT/BDA (reserved in e820 below 0x1000)
//! 0x0000_7000  zero page (boot_params) / PVH start_info
//! 0x0000_8000  e820 / PVH memmap table
//! 0x0000_9000  boot GDT, then page tables (PML4 at 0x9000, PDPTE 0xa000, PDE 0xb000..)
//! 0x0002_0000  kernel command line (up to CMDLINE_MAX_SIZE)
//! 0x0008_0000  stack top for the 64-bit boot path
//! 0x0009_fc00  EBDA start: [0x9fc00, 0x100000) is reserved in e820
//! 0x000e_0000  ACPI tables (RSDP first, legacy-scan friendly), up to 0x100000
//! 0x0010_0000  kernel load address (HIMEM_START)
//! ...          RAM up to MMIO_GAP_START, the rest above 4 GiB
//! 0xc000_0000  MMIO gap (1 GiB): virtio-mmio devices, IOAPIC, LAPIC
//! 0xd000_0000  virtio-mmio device windows (with the device issues)
//! 0xfec0_0000  IOAPIC
//! 0xfee0_0000  local APIC
//! ```

/// Start of guest RAM.
pub const RAM_START: u64 = 0;
/// The zero page (Linux boot protocol) or `hvm_start_info` (PVH).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// The PVH memory map table (`hvm_memmap_table_entry` array).
pub const PVH_MEMMAP_START: u64 = 0x8000;
/// Boot GDT for the 64-bit entry path.
pub const BOOT_GDT_START: u64 = 0x500;
/// Boot IDT (empty) for the 64-bit entry path.
pub const BOOT_IDT_START: u64 = 0x520;
/// Identity page tables for the 64-bit entry path.
pub const PML4_START: u64 = 0x9000;
/// Page directory pointer table for the 64-bit entry path.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory for the 64-bit entry path.
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line we pass (Linux's COMMAND_LINE_SIZE on x86 is 2048).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Initial stack pointer for the 64-bit boot path.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Start of the reserved EBDA / legacy BIOS area.
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables live here; the RSDP comes first so a legacy scan of 0xe0000..0x100000 finds it.
pub const ACPI_START: u64 = 0xe0000;
/// End (exclusive) of the ACPI table area.
pub const ACPI_END: u64 = 0x10_0000;
/// Where kernels are loaded: 1 MiB.
pub const HIMEM_START: u64 = 0x10_0000;

/// Start of the 32-bit MMIO gap; RAM that does not fit below it goes above 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End (exclusive) of the 32-bit MMIO gap.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// IOAPIC MMIO base.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC MMIO base.
pub const APIC_START: u64 = 0xfee0_0000;

/// Number of IOAPIC pins KVM's in-kernel IOAPIC provides.
pub const IOAPIC_PINS: u32 = 24;

/// COM1 16550 UART.
pub const SERIAL_PORT: u16 = 0x3f8;
/// COM1 interrupt line.
pub const SERIAL_IRQ: u32 = 4;
/// i8042 data port.
pub const I8042_DATA_PORT: u16 = 0x60;
/// ACPI hardware-reduced sleep control register (FADT `X_SLEEP_CONTROL_REG`), one byte.
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x3c0;
/// ACPI hardware-reduced sleep status register (FADT `X_SLEEP_STATUS_REG`), one byte.
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x3c1;
/// The test-guest exit port: a write of status S ends svmm with exit code S (0..=63).
/// Same place and width as QEMU's `isa-debug-exit,iobase=0xf4,iosize=0x04`.
pub const EXIT_PORT: u16 = 0xf4;
/// `SLP_TYP` value our DSDT's `_S5_` object declares; the guest writes it to power off.
pub const S5_SLEEP_TYPE: u8 = 5;
