//! Builds the tables into guest memory and parses them back the way a guest would.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap()
}

/// Device windows as the transport will place them: 4 KiB each from 0xd000_0000, GSIs from 5.
fn devices(n: usize) -> Vec<VirtioMmioDevice> {
    const WINDOW: u64 = 0x1000;
    (0..n)
        .map(|i| VirtioMmioDevice {
            addr: 0xd000_0000 + i as u64 * WINDOW,
            size: WINDOW,
            irq: 5 + (i as u32 % (layout::IOAPIC_PINS - 5)),
        })
        .collect()
}

fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
    buf
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |acc, x| acc.wrapping_add(*x))
}

/// Reads a whole table (length from its header), checks it lies in the ACPI area, is aligned
/// and sums to 0.
fn table(mem: &GuestMemoryMmap, addr: u64, signature: &[u8; 4]) -> Vec<u8> {
    assert_eq!(addr % TABLE_ALIGN, 0);
    let header = read(mem, addr, 36);
    assert_eq!(&header[0..4], signature);
    let len = u32_at(&header, 4) as usize;
    assert!(addr >= layout::ACPI_START && addr + len as u64 <= layout::ACPI_END);
    let bytes = read(mem, addr, len);
    assert_eq!(
        sum(&bytes),
        0,
        "{} checksum",
        String::from_utf8_lossy(signature)
    );
    bytes
}

/// The parsed result: (FADT, MADT, DSDT).
fn parse(mem: &GuestMemoryMmap, rsdp_addr: GuestAddress) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    assert_eq!(rsdp_addr.0, layout::ACPI_START);
    let rsdp = read(mem, rsdp_addr.0, 36);
    assert_eq!(&rsdp[0..8], b"RSD PTR ");
    assert_eq!(sum(&rsdp[0..20]), 0, "RSDP checksum");
    assert_eq!(rsdp[15], 2, "RSDP revision");
    assert_eq!(u32_at(&rsdp, 20), 36, "RSDP length");
    assert_eq!(sum(&rsdp), 0, "RSDP extended checksum");

    let xsdt = table(mem, u64_at(&rsdp, 24), b"XSDT");
    assert_eq!(xsdt.len(), 36 + 2 * 8);
    let fadt = table(mem, u64_at(&xsdt, 36), b"FACP");
    let madt = table(mem, u64_at(&xsdt, 44), b"APIC");
    let dsdt = table(mem, u64_at(&fadt, 140), b"DSDT");
    (fadt, madt, dsdt)
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

#[test]
fn tables_parse_back() {
    let mem = memory();
    let devs = devices(3);
    let cfg = AcpiConfig {
        num_cpus: 2,
        virtio_mmio: &devs,
    };
    let rsdp = create_acpi_tables(&mem, &cfg).unwrap();
    let (fadt, _, dsdt) = parse(&mem, rsdp);

    // FADT: revision 6, hardware-reduced, 32-bit DSDT unused, sleep registers as byte ports.
    assert_eq!(fadt.len(), 276);
    assert_eq!(fadt[8], 6);
    assert_eq!(u32_at(&fadt, 40), 0);
    assert_ne!(u32_at(&fadt, 112) & (1 << 20), 0, "HW_REDUCED_ACPI");
    assert_eq!(u16_at(&fadt, 109), 0b11_1100, "IAPC_BOOT_ARCH");
    let sleep_control = [1, 8, 0, 1];
    assert_eq!(fadt[244..248], sleep_control);
    assert_eq!(
        u64_at(&fadt, 248),
        u64::from(layout::ACPI_SLEEP_CONTROL_PORT)
    );
    assert_eq!(fadt[256..260], sleep_control);
    assert_eq!(
        u64_at(&fadt, 260),
        u64::from(layout::ACPI_SLEEP_STATUS_PORT)
    );
    assert_eq!(&fadt[268..276], b"SVMM-KVM");

    // DSDT: one LNRO0005 per device, one \_S5_, COM1.
    assert_eq!(count(&dsdt, b"LNRO0005"), 3);
    assert_eq!(count(&dsdt, b"_S5_"), 1);
    assert_eq!(count(&dsdt, b"COM1"), 1);
    for name in [b"V000", b"V001", b"V002"] {
        assert_eq!(count(&dsdt, name), 1);
    }
    // Device 1's Memory32Fixed and extended interrupt descriptors, byte for byte.
    let mut mem32 = vec![0x86, 9, 0, 1];
    mem32.extend((devs[1].addr as u32).to_le_bytes());
    mem32.extend((devs[1].size as u32).to_le_bytes());
    assert_eq!(count(&dsdt, &mem32), 1);
    let mut irq = vec![0x89, 6, 0, 0b0011, 1];
    irq.extend(devs[1].irq.to_le_bytes());
    assert_eq!(count(&dsdt, &irq), 1);
}

#[test]
fn madt_entries() {
    let mem = memory();
    let cfg = AcpiConfig {
        num_cpus: 4,
        virtio_mmio: &[],
    };
    let (_, madt, _) = parse(&mem, create_acpi_tables(&mem, &cfg).unwrap());
    assert_eq!(u32_at(&madt, 36) as u64, layout::APIC_START);
    assert_eq!(u32_at(&madt, 40), 1, "PCAT_COMPAT");

    let (mut lapics, mut ioapics, mut overrides, mut nmis) = (0u8, 0, 0, 0);
    let mut off = 44;
    while off < madt.len() {
        let (kind, len) = (madt[off], madt[off + 1] as usize);
        let e = &madt[off..off + len];
        match kind {
            0 => {
                assert_eq!((len, e[2], e[3], u32_at(e, 4)), (8, lapics, lapics, 1));
                lapics += 1;
            }
            1 => {
                assert_eq!((len, e[2]), (12, 4));
                assert_eq!(u32_at(e, 4) as u64, layout::IOAPIC_START);
                assert_eq!(u32_at(e, 8), 0);
                ioapics += 1;
            }
            2 => {
                assert_eq!(
                    (len, e[2], e[3], u32_at(e, 4), u16_at(e, 8)),
                    (10, 0, 0, 2, 0)
                );
                overrides += 1;
            }
            4 => {
                assert_eq!((len, e[2], u16_at(e, 3), e[5]), (6, 0xff, 0, 1));
                nmis += 1;
            }
            other => panic!("unexpected MADT entry type {other}"),
        }
        off += len;
    }
    assert_eq!(off, madt.len());
    assert_eq!((lapics, ioapics, overrides, nmis), (4, 1, 1, 1));
}

#[test]
fn largest_config_fits() {
    let mem = memory();
    let devs = devices(24);
    let cfg = AcpiConfig {
        num_cpus: 255,
        virtio_mmio: &devs,
    };
    let (_, madt, dsdt) = parse(&mem, create_acpi_tables(&mem, &cfg).unwrap());
    assert_eq!(count(&madt[44..], &[0, 8]), 255);
    assert_eq!(count(&dsdt, b"LNRO0005"), 24);

    // As many devices as can be named: fits too (about 80 bytes each).
    let devs = devices(MAX_DEVICES);
    let cfg = AcpiConfig {
        num_cpus: 255,
        virtio_mmio: &devs,
    };
    let (_, _, dsdt) = parse(&mem, create_acpi_tables(&mem, &cfg).unwrap());
    assert_eq!(count(&dsdt, b"LNRO0005"), MAX_DEVICES);
}

const MAX_DEVICES: usize = dsdt::MAX_VIRTIO_DEVICES;

#[test]
fn bad_configs_are_errors() {
    let mem = memory();
    let run = |num_cpus, devs: &[VirtioMmioDevice]| {
        let cfg = AcpiConfig {
            num_cpus,
            virtio_mmio: devs,
        };
        create_acpi_tables(&mem, &cfg)
    };
    let build = |num_cpus, devs: &[VirtioMmioDevice]| run(num_cpus, devs).unwrap_err();
    assert!(matches!(build(0, &[]), AcpiError::NoCpus));
    assert!(matches!(
        build(1, &devices(MAX_DEVICES + 1)),
        AcpiError::TooManyDevices { count: 1001, .. }
    ));
    let dev = devices(1)[0];
    for (addr, size) in [(1 << 32, 0x1000), (0xffff_f000, 0x1001), (0xd000_0000, 0)] {
        let err = build(1, &[dev, VirtioMmioDevice { addr, size, irq: 6 }]);
        assert!(
            matches!(err, AcpiError::DeviceWindow { index: 1, .. }),
            "{err}"
        );
    }
    // The last page below 4 GiB is fine.
    let top = VirtioMmioDevice {
        addr: 0xffff_f000,
        ..dev
    };
    assert!(run(1, &[top]).is_ok());
    let irq = VirtioMmioDevice {
        irq: layout::IOAPIC_PINS,
        ..dev
    };
    let err = build(1, &[irq]);
    assert!(matches!(err, AcpiError::DeviceIrq { irq: 24, .. }), "{err}");
}

#[test]
fn too_small_area_is_an_error() {
    let devs = devices(24);
    let cfg = AcpiConfig {
        num_cpus: 255,
        virtio_mmio: &devs,
    };
    let start = layout::ACPI_START;
    assert!(build_tables(&cfg, start, start + 0x10000).is_ok());
    let err = build_tables(&cfg, start, start + 0x800).err().unwrap();
    assert!(matches!(err, AcpiError::TooLarge { .. }), "{err}");
    let err = build_tables(&cfg, u64::MAX - 8, u64::MAX).err().unwrap();
    assert!(matches!(err, AcpiError::TooLarge { .. }), "{err}");
}

#[test]
fn memory_without_acpi_area_is_an_error() {
    let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
    let cfg = AcpiConfig {
        num_cpus: 1,
        virtio_mmio: &[],
    };
    let err = create_acpi_tables(&mem, &cfg).unwrap_err();
    assert!(
        matches!(err, AcpiError::GuestMemory { table: "RSDP", .. }),
        "{err}"
    );
}

/// Each virtio device's `_CRS` declares its GSI as an edge-triggered, active-high, exclusive
/// interrupt (what an irqfd pulse delivers): an Extended IRQ descriptor with flags 0x03.
#[test]
fn virtio_interrupts_are_declared_edge_triggered_active_high() {
    let mem = memory();
    let devs = devices(3);
    let cfg = AcpiConfig {
        num_cpus: 1,
        virtio_mmio: &devs,
    };
    let rsdp = create_acpi_tables(&mem, &cfg).unwrap();
    let (_, _, dsdt) = parse(&mem, rsdp);
    for dev in &devs {
        // Tag 0x89, length 6, flags (consumer | edge), one interrupt: the GSI.
        let mut descriptor = vec![0x89, 0x06, 0x00, 0x03, 0x01];
        descriptor.extend_from_slice(&dev.irq.to_le_bytes());
        assert_eq!(count(&dsdt, &descriptor), 1, "GSI {}", dev.irq);
    }
}
