//! ACPI tables for the guest: RSDP, XSDT, FADT (hardware-reduced), DSDT and MADT.
//!
//! Stock distribution kernels have no way to learn about virtio-mmio devices except ACPI (Debian
//! builds without `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`), so this module describes them in the
//! DSDT, together with the power-off protocol (`\_S5_` + the FADT's sleep registers) and the
//! interrupt controllers (MADT). Everything is written into guest memory at
//! [`layout::ACPI_START`], RSDP first so that a legacy scan of 0xe0000..0x100000 finds it:
//!
//! ```text
//! ACPI_START  RSDP ──► XSDT ──► FADT ──► DSDT
//!                           └─► MADT
//! ```
//!
//! Tables are placed one after the other (16-byte aligned) as RSDP, DSDT, FADT, MADT, XSDT; the
//! XSDT goes last because its entries are the other tables' addresses.

mod dsdt;
mod fadt;
mod madt;
#[cfg(test)]
mod tests;

use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError};

use crate::layout;

/// OEM ID in every table header.
const OEM_ID: [u8; 6] = *b"SVMM  ";
/// OEM revision in every table header.
const OEM_REVISION: u32 = 1;
/// Alignment of every table in guest memory (the RSDP's legacy scan needs 16).
const TABLE_ALIGN: u64 = 16;

/// One virtio-mmio device as the guest should find it in the DSDT.
#[derive(Clone, Copy, Debug)]
pub struct VirtioMmioDevice {
    /// Guest-physical base of the device's register window (must lie below 4 GiB).
    pub addr: u64,
    /// Size of the register window in bytes.
    pub size: u64,
    /// GSI the device interrupts on (an IOAPIC pin, edge-triggered).
    pub irq: u32,
}

/// What the tables describe.
#[derive(Clone, Copy, Debug)]
pub struct AcpiConfig<'a> {
    /// Number of vCPUs; APIC IDs and ACPI processor UIDs are `0..num_cpus`.
    pub num_cpus: u8,
    /// The virtio-mmio devices, named `V000`, `V001`, ... in this order.
    pub virtio_mmio: &'a [VirtioMmioDevice],
}

/// Why the tables could not be built or written.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// `num_cpus` was 0.
    #[error("the MADT needs at least one vCPU")]
    NoCpus,
    /// More devices than the `Vnnn` naming scheme can name.
    #[error("{count} virtio-mmio devices is more than the DSDT can name (at most {max})")]
    TooManyDevices {
        /// Devices asked for.
        count: usize,
        /// Largest number supported.
        max: usize,
    },
    /// A device window that `Memory32Fixed` cannot describe.
    #[error("virtio-mmio device {index}: window {addr:#x}+{size:#x} is empty or not below 4 GiB")]
    DeviceWindow {
        /// Index of the device in [`AcpiConfig::virtio_mmio`].
        index: usize,
        /// Window base.
        addr: u64,
        /// Window size.
        size: u64,
    },
    /// A device interrupt that no IOAPIC pin serves.
    #[error("virtio-mmio device {index}: GSI {irq} is not an IOAPIC pin (0..{pins})")]
    DeviceIrq {
        /// Index of the device in [`AcpiConfig::virtio_mmio`].
        index: usize,
        /// The GSI asked for.
        irq: u32,
        /// Number of IOAPIC pins.
        pins: u32,
    },
    /// The tables need more room than the ACPI area has.
    #[error("the {table} ({len} bytes at {addr:#x}) overflows the ACPI area ending at {end:#x}")]
    TooLarge {
        /// The table that did not fit.
        table: &'static str,
        /// Where it would have gone.
        addr: u64,
        /// Its length.
        len: usize,
        /// End (exclusive) of the ACPI area.
        end: u64,
    },
    /// Writing a table into guest memory failed.
    #[error("cannot write the {table} to guest memory at {addr:#x}")]
    GuestMemory {
        /// The table being written.
        table: &'static str,
        /// Where it was going.
        addr: u64,
        /// What guest memory said.
        #[source]
        source: GuestMemoryError,
    },
}

/// Writes RSDP, XSDT, FADT (+DSDT), MADT into guest memory at [`layout::ACPI_START`].. and
/// returns the RSDP's address (which is `ACPI_START`).
///
/// Fails, writing nothing, if `cfg` cannot be described (no vCPUs, a device window above 4 GiB or
/// empty, a device GSI beyond the IOAPIC, more than 1000 devices) or the tables would not fit
/// below [`layout::ACPI_END`]; fails part-way if guest memory does not cover the ACPI area.
pub fn create_acpi_tables<M: GuestMemory>(
    mem: &M,
    cfg: &AcpiConfig,
) -> Result<GuestAddress, AcpiError> {
    let tables = build_tables(cfg, layout::ACPI_START, layout::ACPI_END)?;
    for table in &tables {
        mem.write_slice(&table.bytes, GuestAddress(table.addr))
            .map_err(|source| AcpiError::GuestMemory {
                table: table.name,
                addr: table.addr,
                source,
            })?;
    }
    Ok(GuestAddress(layout::ACPI_START))
}

/// One table, serialised, with the guest-physical address it belongs at.
struct PlacedTable {
    name: &'static str,
    addr: u64,
    bytes: Vec<u8>,
}

/// Builds all tables for the area `[start, end)`; the RSDP is the first and sits at `start`.
fn build_tables(cfg: &AcpiConfig, start: u64, end: u64) -> Result<Vec<PlacedTable>, AcpiError> {
    let dsdt = dsdt::build(cfg.virtio_mmio)?;
    let madt = madt::build(cfg.num_cpus)?;

    let mut area = Area { end, next: start };
    let rsdp_addr = area.place("RSDP", Rsdp::len())?;
    let dsdt_addr = area.place("DSDT", dsdt.len())?;
    let fadt = fadt::build(dsdt_addr);
    let fadt_addr = area.place("FADT", fadt.len())?;
    let madt_addr = area.place("MADT", madt.len())?;

    let mut xsdt = XSDT::new(OEM_ID, *b"SVMMXSDT", OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt = to_bytes(&xsdt);
    let xsdt_addr = area.place("XSDT", xsdt.len())?;
    let rsdp = to_bytes(&Rsdp::new(OEM_ID, xsdt_addr));

    let table = |name, addr, bytes| PlacedTable { name, addr, bytes };
    Ok(vec![
        table("RSDP", rsdp_addr, rsdp),
        table("DSDT", dsdt_addr, dsdt),
        table("FADT", fadt_addr, fadt),
        table("MADT", madt_addr, madt),
        table("XSDT", xsdt_addr, xsdt),
    ])
}

/// Serialises any table the crate builds.
fn to_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

/// Hands out aligned, non-overlapping places in `[start, end)`.
struct Area {
    end: u64,
    next: u64,
}

impl Area {
    /// Reserves `len` bytes at the next aligned address and returns that address.
    fn place(&mut self, table: &'static str, len: usize) -> Result<u64, AcpiError> {
        let too_large = |addr| AcpiError::TooLarge {
            table,
            addr,
            len,
            end: self.end,
        };
        let addr = self
            .next
            .checked_next_multiple_of(TABLE_ALIGN)
            .ok_or_else(|| too_large(self.next))?;
        let table_end = u64::try_from(len)
            .ok()
            .and_then(|len| addr.checked_add(len))
            .filter(|&table_end| table_end <= self.end)
            .ok_or_else(|| too_large(addr))?;
        self.next = table_end;
        Ok(addr)
    }
}
