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
//! 0x0009_fc00  EBDA start: [0x9fc00, 0x100000) is reserved in e820; the MP table starts here
//! 0x000e_0000  ACPI tables (RSDP first, legacy-scan friendly), up to 0x100000
//! 0x0010_0000  kernel load address (HIMEM_START)
//! ...          RAM up to MMIO_GAP_START, the rest above 4 GiB
//! 0xc000_0000  MMIO gap (1 GiB): virtio-mmio devices, IOAPIC, LAPIC
//! 0xd000_0000  virtio-mmio device windows: slot i at 0xd000_0000 + i * 0x1000, 4 KiB each,
//!              VIRTIO_MMIO_SLOTS of them (see `virtio_mmio_slot`)
//! 0xfec0_0000  IOAPIC
//! 0xfee0_0000  local APIC
//! 4 GiB        RAM beyond the gap, if any
//! ...          devices' shared-memory windows (virtio-mmio SHM regions), from the first 1 GiB
//!              boundary above all RAM, each 2 MiB-aligned (see `shm_windows_start`)
//! ```

/// Where guest RAM starts and the MMIO gap it goes around: shared with every device worker,
/// which maps the same RAM (`worker::guest_ram`).
pub use worker::guest_ram::{MMIO_GAP_END, MMIO_GAP_START, RAM_START};
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
/// The MP table (floating pointer first): the first KiB of the EBDA, where Linux looks first.
pub const MPTABLE_START: u64 = EBDA_START;
/// ACPI tables live here; the RSDP comes first so a legacy scan of 0xe0000..0x100000 finds it.
pub const ACPI_START: u64 = 0xe0000;
/// End (exclusive) of the ACPI table area.
pub const ACPI_END: u64 = 0x10_0000;
/// Where kernels are loaded: 1 MiB.
pub const HIMEM_START: u64 = 0x10_0000;

/// IOAPIC MMIO base.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC MMIO base.
pub const APIC_START: u64 = 0xfee0_0000;

/// Alignment of a device's shared-memory window (a large page, so guests can map it with
/// 2 MiB pages).
pub const SHM_WINDOW_ALIGN: u64 = 2 << 20;
/// Where the shared-memory windows start: not below 4 GiB, at a 1 GiB boundary above all of
/// `ram_size` bytes of RAM (which fills the space below the MMIO gap first, then goes above
/// 4 GiB).
pub fn shm_windows_start(ram_size: u64) -> u64 {
    const GIB: u64 = 1 << 30;
    let low = MMIO_GAP_START - RAM_START;
    let end = MMIO_GAP_END + ram_size.saturating_sub(low);
    end.div_ceil(GIB) * GIB
}

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

/// Base of the first virtio-mmio window; slot `i` starts `i * VIRTIO_MMIO_SIZE` above it.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// Size of one virtio-mmio window: a page, as Linux's `virtio_mmio.device=4K@...` expects (the
/// registers take 0x100 bytes, the config space the rest).
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// IOAPIC pins of the virtio-mmio slots, in slot order (edge-triggered, active-high).
///
/// Below 16 only lines no legacy device uses: not 0/2 (PIT), 1 and 12 (i8042 keyboard and
/// mouse, which Linux may probe since the i8042 is there), 3 and 4 (COM2, COM1), 8 (RTC), 9
/// (ACPI SCI). The first eight work without an IOAPIC too (a kernel with `acpi=off` and no MP
/// table uses the 8259 PIC and knows GSIs 0-15 only); slots 8-15 need the IOAPIC, so only ACPI
/// guests (which learn the pins from the DSDT) should get that many devices.
pub const VIRTIO_MMIO_IRQS: [u32; 16] =
    [5, 6, 7, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23];
/// Number of virtio-mmio slots.
pub const VIRTIO_MMIO_SLOTS: usize = VIRTIO_MMIO_IRQS.len();

/// Window base, window size and GSI of virtio-mmio slot `i`; `None` past the last slot.
pub fn virtio_mmio_slot(i: usize) -> Option<(u64, u64, u32)> {
    let irq = *VIRTIO_MMIO_IRQS.get(i)?;
    // Cannot truncate or overflow: `i` < VIRTIO_MMIO_SLOTS.
    let addr = VIRTIO_MMIO_START + i as u64 * VIRTIO_MMIO_SIZE;
    Some((addr, VIRTIO_MMIO_SIZE, irq))
}

/// The `virtio_mmio.device=SIZE@ADDR:IRQ` command-line word for a window, in the form Linux's
/// `virtio_mmio` driver (with `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`) and the test guest parse:
/// the size in KiB with a `K` suffix when it is a whole number of KiB, the address in hex.
pub fn virtio_mmio_cmdline_entry(addr: u64, size: u64, irq: u32) -> String {
    if size % 1024 == 0 && size != 0 {
        format!("virtio_mmio.device={}K@{addr:#x}:{irq}", size / 1024)
    } else {
        format!("virtio_mmio.device={size:#x}@{addr:#x}:{irq}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtio_slots_are_disjoint_and_in_the_gap() {
        let slots: Vec<_> = (0..VIRTIO_MMIO_SLOTS).map_while(virtio_mmio_slot).collect();
        assert_eq!(slots.len(), VIRTIO_MMIO_SLOTS);
        assert_eq!(virtio_mmio_slot(VIRTIO_MMIO_SLOTS), None);
        assert_eq!(slots[0], (0xd000_0000, 0x1000, 5));
        assert_eq!(slots[1], (0xd000_1000, 0x1000, 6));
        for pair in slots.windows(2) {
            assert_eq!(pair[0].0 + pair[0].1, pair[1].0);
        }
        let (last, size, _) = slots[VIRTIO_MMIO_SLOTS - 1];
        assert!(VIRTIO_MMIO_START >= MMIO_GAP_START && last + size <= IOAPIC_START);
        let mut irqs: Vec<u32> = slots.iter().map(|s| s.2).collect();
        irqs.sort_unstable();
        irqs.dedup();
        assert_eq!(irqs.len(), VIRTIO_MMIO_SLOTS);
        for irq in irqs {
            assert!(irq < IOAPIC_PINS);
            assert!(![0, 1, 2, 3, 4, 8, 9, 12].contains(&irq) && irq != SERIAL_IRQ);
        }
    }

    #[test]
    fn shm_windows_lie_above_all_ram() {
        assert_eq!(shm_windows_start(512 << 20), 1 << 32);
        assert_eq!(shm_windows_start(MMIO_GAP_START), 1 << 32);
        // 1 GiB above the gap ends at 5 GiB.
        assert_eq!(shm_windows_start(MMIO_GAP_START + (1 << 30)), 5 << 30);
        assert_eq!(shm_windows_start(MMIO_GAP_START + 1), 5 << 30);
        assert_eq!(shm_windows_start(16 << 30) % (1 << 30), 0);
    }

    #[test]
    fn virtio_cmdline_words() {
        assert_eq!(
            virtio_mmio_cmdline_entry(0xd000_1000, 0x200, 6),
            "virtio_mmio.device=0x200@0xd0001000:6"
        );
        let (addr, size, irq) = virtio_mmio_slot(1).unwrap();
        assert_eq!(
            virtio_mmio_cmdline_entry(addr, size, irq),
            "virtio_mmio.device=4K@0xd0001000:6"
        );
    }
}
