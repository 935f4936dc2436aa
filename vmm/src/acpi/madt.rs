//! The MADT: one local APIC per vCPU, KVM's in-kernel IOAPIC, and the legacy wiring Linux expects
//! of a PC (IRQ0 on GSI2, NMI on LINT1).
//!
//! The crate's `MADT` type cannot set the MADT flags and has no entry types for interrupt source
//! overrides or local APIC NMIs, so the table is assembled on the crate's generic `Sdt` (which
//! keeps length and checksum right); the crate's `ProcessorLocalApic` and `IoApic` entries are
//! reused.

use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::sdt::Sdt;

use super::{to_bytes, AcpiError, OEM_ID, OEM_REVISION};
use crate::layout;

/// MADT revision (ACPI 6.2 and later).
const MADT_REVISION: u8 = 5;
/// Header, local interrupt controller address, flags.
const MADT_HEADER_LEN: u32 = 44;
/// MADT flags bit 0: a dual 8259 PIC is present too (KVM's in-kernel irqchip has one).
const PCAT_COMPAT: u32 = 1;

/// Entry type: interrupt source override.
const TYPE_INTERRUPT_SOURCE_OVERRIDE: u8 = 2;
/// Entry type: local APIC NMI.
const TYPE_LOCAL_APIC_NMI: u8 = 4;
/// MPS INTI flags 0: polarity and trigger mode conform to the bus (ISA: active high, edge).
const MPS_INTI_CONFORMING: u16 = 0;
/// Local APIC NMI entry processor UID meaning "all processors".
const ALL_PROCESSORS: u8 = 0xff;

/// The ISA bus, source of the legacy IRQs.
const ISA_BUS: u8 = 0;
/// The PIT's ISA IRQ...
const PIT_ISA_IRQ: u8 = 0;
/// ...arrives on IOAPIC pin 2 (KVM's in-kernel PIT is wired that way, as on real PCs).
const PIT_GSI: u32 = 2;
/// LINT1 carries NMI.
const NMI_LINT: u8 = 1;

/// The local APIC base as the 32-bit field the MADT has for it.
const LAPIC_ADDR: u32 = {
    assert!(layout::APIC_START <= u32::MAX as u64);
    layout::APIC_START as u32
};
/// The IOAPIC base as the 32-bit field the IOAPIC entry has for it.
const IOAPIC_ADDR: u32 = {
    assert!(layout::IOAPIC_START <= u32::MAX as u64);
    layout::IOAPIC_START as u32
};

/// Interrupt source override entry (ACPI 6.5 §5.2.12.5).
fn interrupt_source_override(bus: u8, source: u8, gsi: u32, flags: u16) -> Vec<u8> {
    let mut entry = vec![TYPE_INTERRUPT_SOURCE_OVERRIDE, 10, bus, source];
    entry.extend_from_slice(&gsi.to_le_bytes());
    entry.extend_from_slice(&flags.to_le_bytes());
    entry
}

/// Local APIC NMI entry (ACPI 6.5 §5.2.12.7).
fn local_apic_nmi(processor_uid: u8, flags: u16, lint: u8) -> Vec<u8> {
    let mut entry = vec![TYPE_LOCAL_APIC_NMI, 6, processor_uid];
    entry.extend_from_slice(&flags.to_le_bytes());
    entry.push(lint);
    entry
}

/// Builds the MADT for `num_cpus` vCPUs with APIC IDs and processor UIDs `0..num_cpus`, and the
/// IOAPIC (GSIs from 0) with ID `num_cpus` so it clashes with no local APIC.
pub(super) fn build(num_cpus: u8) -> Result<Vec<u8>, AcpiError> {
    if num_cpus == 0 {
        return Err(AcpiError::NoCpus);
    }
    let mut madt = Sdt::new(
        *b"APIC",
        MADT_HEADER_LEN,
        MADT_REVISION,
        OEM_ID,
        *b"SVMMAPIC",
        OEM_REVISION,
    );
    madt.write_u32(36, LAPIC_ADDR);
    madt.write_u32(40, PCAT_COMPAT);

    let mut entries = Vec::new();
    for cpu in 0..num_cpus {
        entries.extend(to_bytes(&ProcessorLocalApic::new(
            cpu,
            cpu,
            EnabledStatus::Enabled,
        )));
    }
    entries.extend(to_bytes(&IoApic::new(num_cpus, IOAPIC_ADDR, 0)));
    entries.extend(interrupt_source_override(
        ISA_BUS,
        PIT_ISA_IRQ,
        PIT_GSI,
        MPS_INTI_CONFORMING,
    ));
    entries.extend(local_apic_nmi(
        ALL_PROCESSORS,
        MPS_INTI_CONFORMING,
        NMI_LINT,
    ));
    // One append: `Sdt` recomputes the checksum over the whole table on every append.
    madt.append_slice(&entries);
    Ok(madt.as_slice().to_vec())
}
