//! The Intel MultiProcessor table (MP specification 1.4): how a kernel without ACPI finds the
//! vCPUs, the IOAPIC and the legacy interrupt wiring.
//!
//! Kernels built without ACPI (Firecracker's guest configs and many microVM kernels), or booted
//! with `acpi=off`, learn the CPUs only from an MP table; without one Linux runs on the boot CPU
//! alone ("SMP disabled") after scanning low memory for the floating pointer. svmm writes the
//! table beside the ACPI tables, always: a kernel with ACPI prefers the MADT and ignores it.
//!
//! ```text
//! MPTABLE_START  floating pointer "_MP_" (16 bytes) ──► configuration table "PCMP":
//!                  header (44 bytes), then the entries:
//!                  processor × num_cpus (APIC IDs 0..num_cpus, CPU 0 the bootstrap processor)
//!                  bus 0 "ISA"
//!                  IOAPIC (ID num_cpus, at layout::IOAPIC_START)
//!                  I/O interrupt × IOAPIC_PINS: ISA IRQ i → IOAPIC pin i (edge, active high)
//!                  local interrupt × 2: ExtINT on LINT0, NMI on LINT1 (every local APIC)
//! ```
//!
//! The floating pointer sits at the start of the EBDA, the first place Linux scans
//! (`smp_scan_config` of the KiB at 639 KiB); the configuration table follows it and may run on
//! into the reserved area below the ACPI tables (room for [`MAX_CPUS`](crate::cli::MAX_CPUS)).
//!
//! ISA IRQ i goes to IOAPIC pin i, including the PIT's IRQ 0: that is how KVM's default GSI
//! routing (which svmm keeps) delivers the in-kernel PIT and every irqfd.

use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError};

use crate::layout::{ACPI_START, APIC_START, IOAPIC_PINS, IOAPIC_START, MPTABLE_START};

/// MP specification revision 1.4.
const SPEC_REV: u8 = 4;
/// Entry type: processor.
const ENTRY_PROCESSOR: u8 = 0;
/// Entry type: bus.
const ENTRY_BUS: u8 = 1;
/// Entry type: I/O APIC.
const ENTRY_IOAPIC: u8 = 2;
/// Entry type: I/O interrupt assignment.
const ENTRY_IO_INTERRUPT: u8 = 3;
/// Entry type: local interrupt assignment.
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
/// Processor flag: enabled.
const CPU_ENABLED: u8 = 1;
/// Processor flag: the bootstrap processor.
const CPU_BOOTSTRAP: u8 = 2;
/// Local APIC version of an integrated (xAPIC) local APIC, as KVM's reports.
const LAPIC_VERSION: u8 = 0x14;
/// I/O APIC version of the 82093AA KVM emulates.
const IOAPIC_VERSION: u8 = 0x11;
/// I/O APIC flag: usable.
const IOAPIC_ENABLED: u8 = 1;
/// CPU signature in processor entries: family 6 (Linux reads only the APIC ID and the flags).
const CPU_SIGNATURE: u32 = 0x600;
/// CPUID.1:EDX feature flags in processor entries: FPU and on-chip APIC.
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
/// Interrupt type: vectored interrupt through the I/O APIC.
const INT_VECTORED: u8 = 0;
/// Interrupt type: non-maskable.
const INT_NMI: u8 = 1;
/// Interrupt type: external (8259) interrupt.
const INT_EXTINT: u8 = 3;
/// Interrupt flags 0: polarity and trigger conform to the bus (ISA: active high, edge).
const CONFORMING: u16 = 0;
/// The one bus: ISA, ID 0.
const ISA_BUS: u8 = 0;
/// Destination of local interrupt entries: every local APIC.
const ALL_LOCAL_APICS: u8 = 0xff;

/// Length of the floating pointer structure.
const FLOATING_POINTER_LEN: usize = 16;
/// Length of the configuration table header.
const HEADER_LEN: usize = 44;
/// Length of a processor entry; every other entry type is 8 bytes long.
const PROCESSOR_LEN: usize = 20;

/// Why the table could not be written.
#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    /// No vCPU to describe.
    #[error("an MP table needs at least one vCPU")]
    NoCpus,
    /// So many vCPUs that the table would reach the ACPI tables (cannot happen within `--cpus`).
    #[error("an MP table for {0} vCPUs does not fit below the ACPI tables")]
    TooLarge(u8),
    /// Writing into guest memory failed.
    #[error("cannot write the MP table into guest memory")]
    Memory(#[source] GuestMemoryError),
}

/// Writes the MP table for `num_cpus` vCPUs (APIC IDs `0..num_cpus`; the IOAPIC's ID is
/// `num_cpus`, as in the MADT) at [`MPTABLE_START`].
pub fn write<M: GuestMemory>(mem: &M, num_cpus: u8) -> Result<(), MpTableError> {
    let table = build(num_cpus)?;
    mem.write_slice(&table, GuestAddress(MPTABLE_START))
        .map_err(MpTableError::Memory)
}

/// The floating pointer followed by the configuration table, as bytes for [`MPTABLE_START`].
fn build(num_cpus: u8) -> Result<Vec<u8>, MpTableError> {
    if num_cpus == 0 {
        return Err(MpTableError::NoCpus);
    }
    let config = config_table(num_cpus);
    if (MPTABLE_START as usize) + FLOATING_POINTER_LEN + config.len() > ACPI_START as usize {
        return Err(MpTableError::TooLarge(num_cpus));
    }
    let config_addr = u32::try_from(MPTABLE_START + FLOATING_POINTER_LEN as u64)
        .map_err(|_| MpTableError::TooLarge(num_cpus))?;
    let mut table = floating_pointer(config_addr).to_vec();
    table.extend_from_slice(&config);
    Ok(table)
}

/// The 16-byte floating pointer: signature, the configuration table's address, length in
/// 16-byte units, revision, checksum; feature bytes 0 (a configuration table is present, no
/// IMCR).
fn floating_pointer(config_addr: u32) -> [u8; FLOATING_POINTER_LEN] {
    let mut fp = [0u8; FLOATING_POINTER_LEN];
    fp[..4].copy_from_slice(b"_MP_");
    fp[4..8].copy_from_slice(&config_addr.to_le_bytes());
    fp[8] = 1;
    fp[9] = SPEC_REV;
    fp[10] = checksum(&fp);
    fp
}

/// The configuration table: header and entries, with length, entry count and checksum set.
fn config_table(num_cpus: u8) -> Vec<u8> {
    let ioapic_id = num_cpus;
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    let mut push = |entry: &[u8]| {
        entries.extend_from_slice(entry);
        count += 1;
    };
    for cpu in 0..num_cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTSTRAP } else { 0 };
        let mut entry = [0u8; PROCESSOR_LEN];
        entry[..4].copy_from_slice(&[ENTRY_PROCESSOR, cpu, LAPIC_VERSION, flags]);
        entry[4..8].copy_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entry[8..12].copy_from_slice(&CPU_FEATURES.to_le_bytes());
        push(&entry);
    }
    push(&[ENTRY_BUS, ISA_BUS, b'I', b'S', b'A', b' ', b' ', b' ']);
    let ioapic_addr = (IOAPIC_START as u32).to_le_bytes();
    push(&[
        ENTRY_IOAPIC,
        ioapic_id,
        IOAPIC_VERSION,
        IOAPIC_ENABLED,
        ioapic_addr[0],
        ioapic_addr[1],
        ioapic_addr[2],
        ioapic_addr[3],
    ]);
    let flags = CONFORMING.to_le_bytes();
    for pin in 0..IOAPIC_PINS as u8 {
        push(&[
            ENTRY_IO_INTERRUPT,
            INT_VECTORED,
            flags[0],
            flags[1],
            ISA_BUS,
            pin,
            ioapic_id,
            pin,
        ]);
    }
    for (lint, kind) in [(0u8, INT_EXTINT), (1u8, INT_NMI)] {
        push(&[
            ENTRY_LOCAL_INTERRUPT,
            kind,
            flags[0],
            flags[1],
            ISA_BUS,
            0,
            ALL_LOCAL_APICS,
            lint,
        ]);
    }

    let length = u16::try_from(HEADER_LEN + entries.len()).unwrap_or(u16::MAX);
    let mut table = vec![0u8; HEADER_LEN];
    table[..4].copy_from_slice(b"PCMP");
    table[4..6].copy_from_slice(&length.to_le_bytes());
    table[6] = SPEC_REV;
    table[8..16].copy_from_slice(b"SVMM    ");
    table[16..28].copy_from_slice(b"svmm        ");
    table[34..36].copy_from_slice(&count.to_le_bytes());
    table[36..40].copy_from_slice(&(APIC_START as u32).to_le_bytes());
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);
    table
}

/// The byte that makes `bytes` (with the checksum field still 0) sum to 0 modulo 256.
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::MAX_CPUS;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    /// The entries of a configuration table as (type, bytes).
    fn entries(config: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        let mut rest = &config[HEADER_LEN..];
        while let Some(&kind) = rest.first() {
            let len = if kind == ENTRY_PROCESSOR {
                PROCESSOR_LEN
            } else {
                8
            };
            out.push(&rest[..len]);
            rest = &rest[len..];
        }
        out
    }

    #[test]
    fn two_cpus_as_linux_reads_them() {
        let table = build(2).unwrap();
        let (fp, config) = table.split_at(FLOATING_POINTER_LEN);
        assert_eq!(&fp[..4], b"_MP_");
        assert_eq!(sum(fp), 0, "floating pointer checksum");
        let config_addr = u32::from_le_bytes(fp[4..8].try_into().unwrap());
        assert_eq!(u64::from(config_addr), MPTABLE_START + 16);
        assert_eq!(
            (fp[8], fp[9], fp[11]),
            (1, 4, 0),
            "length, revision, table present"
        );

        assert_eq!(&config[..4], b"PCMP");
        let length = u16::from_le_bytes(config[4..6].try_into().unwrap());
        assert_eq!(usize::from(length), config.len());
        assert_eq!(sum(config), 0, "configuration table checksum");
        let lapic = u32::from_le_bytes(config[36..40].try_into().unwrap());
        assert_eq!(u64::from(lapic), APIC_START);

        let entries = entries(config);
        let count = u16::from_le_bytes(config[34..36].try_into().unwrap());
        assert_eq!(usize::from(count), entries.len());
        assert_eq!(entries.len(), 2 + 1 + 1 + IOAPIC_PINS as usize + 2);
        // Processors: APIC IDs 0 and 1, both enabled, CPU 0 the bootstrap processor.
        assert_eq!(&entries[0][..4], &[0, 0, LAPIC_VERSION, 3]);
        assert_eq!(&entries[1][..4], &[0, 1, LAPIC_VERSION, 1]);
        assert_eq!(entries[2], b"\x01\x00ISA   ");
        // The IOAPIC after the local APIC IDs, at its base.
        assert_eq!(&entries[3][..4], &[2, 2, IOAPIC_VERSION, 1]);
        assert_eq!(
            u32::from_le_bytes(entries[3][4..8].try_into().unwrap()),
            IOAPIC_START as u32
        );
        // ISA IRQ i on pin i of that IOAPIC, for every pin.
        for (pin, entry) in entries[4..4 + IOAPIC_PINS as usize].iter().enumerate() {
            assert_eq!(*entry, &[3, 0, 0, 0, 0, pin as u8, 2, pin as u8]);
        }
        // ExtINT on LINT0 and NMI on LINT1 of every local APIC.
        let n = entries.len();
        assert_eq!(entries[n - 2], &[4, INT_EXTINT, 0, 0, 0, 0, 0xff, 0]);
        assert_eq!(entries[n - 1], &[4, INT_NMI, 0, 0, 0, 0, 0xff, 1]);
    }

    #[test]
    fn the_largest_guest_fits_below_the_acpi_tables() {
        let table = build(MAX_CPUS).unwrap();
        assert!(MPTABLE_START + table.len() as u64 <= ACPI_START);
        assert_eq!(sum(&table[FLOATING_POINTER_LEN..]), 0);
        assert!(matches!(build(0), Err(MpTableError::NoCpus)));
    }

    #[test]
    fn written_where_linux_scans() {
        use vm_memory::GuestMemoryMmap;
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write(&mem, 1).unwrap();
        // Linux scans the KiB at 639 KiB (the EBDA) for the signature on a 16-byte boundary.
        assert_eq!(MPTABLE_START, 639 * 1024);
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(MPTABLE_START))
            .unwrap();
        assert_eq!(&sig, b"_MP_");
    }
}
