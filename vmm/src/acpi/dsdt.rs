//! The DSDT: AML for `\_S5_` (how to power off), COM1, and one `LNRO0005` device per
//! virtio-mmio window, which is how kernels without virtio-mmio command-line support find them.
//!
//! ```text
//! Name (\_S5_, Package () { S5_SLEEP_TYPE, 0, 0, 0 })
//! Scope (\_SB_) {
//!     Device (COM1) { _HID PNP0501, _UID 0, _CRS { IO 0x3f8 len 8, Interrupt (edge, high) 4 } }
//!     Device (V000) { _HID "LNRO0005", _UID 0, _CCA 1,
//!                     _CRS { Memory32Fixed (RW, addr, size), Interrupt (edge, high) irq } }
//!     ...
//! }
//! ```

use acpi_tables::aml::{
    self, Device, EISAName, Interrupt, Memory32Fixed, Name, Package, Path, ResourceTemplate, Scope,
    IO,
};
use acpi_tables::sdt::Sdt;
use acpi_tables::Aml;

use super::{AcpiError, VirtioMmioDevice, OEM_ID, OEM_REVISION};
use crate::layout;

/// DSDT revision; 2 and later mean 64-bit AML integers.
const DSDT_REVISION: u8 = 6;
/// Length of a table header without a body.
const HEADER_LEN: u32 = 36;
/// `Vnnn` names three decimal digits.
pub(super) const MAX_VIRTIO_DEVICES: usize = 1000;
/// The `_HID` the Linux `virtio_mmio` driver matches in ACPI.
const VIRTIO_MMIO_HID: &str = "LNRO0005";
/// COM1 spans eight ports.
const SERIAL_PORT_LEN: u8 = 8;

/// An interrupt as an extended IRQ descriptor: consumer, edge-triggered, active-high, exclusive.
fn edge_interrupt(gsi: u32) -> Interrupt {
    Interrupt::new(true, true, false, false, gsi)
}

/// `Name (\_S5_, Package () { SLP_TYPa, SLP_TYPb, reserved, reserved })`; with a hardware-reduced
/// FADT only SLP_TYPa is used, and it goes to the sleep control register.
fn s5(sink: &mut Vec<u8>) {
    let slp_typ = layout::S5_SLEEP_TYPE;
    let package = Package::new(vec![&slp_typ, &aml::ZERO, &aml::ZERO, &aml::ZERO]);
    Name::new(Path::new("\\_S5_"), &package).to_aml_bytes(sink);
}

/// COM1, the 16550 at `layout::SERIAL_PORT` on `layout::SERIAL_IRQ`.
fn com1(sink: &mut Vec<u8>) {
    let port = layout::SERIAL_PORT;
    let io = IO::new(port, port, 0, SERIAL_PORT_LEN);
    let irq = edge_interrupt(layout::SERIAL_IRQ);
    let crs = ResourceTemplate::new(vec![&io, &irq]);
    let hid = EISAName::new("PNP0501");
    let uid: u32 = 0;
    Device::new(
        Path::new("COM1"),
        vec![
            &Name::new(Path::new("_HID"), &hid),
            &Name::new(Path::new("_UID"), &uid),
            &Name::new(Path::new("_CRS"), &crs),
        ],
    )
    .to_aml_bytes(sink);
}

/// Device `Vnnn` for the virtio-mmio window `dev`, which is `index`-th in the configuration.
fn virtio_mmio(sink: &mut Vec<u8>, index: usize, dev: &VirtioMmioDevice) -> Result<(), AcpiError> {
    let window = || AcpiError::DeviceWindow {
        index,
        addr: dev.addr,
        size: dev.size,
    };
    // Memory32Fixed holds a 32-bit base and length, and the window must end below 4 GiB.
    let base = u32::try_from(dev.addr).map_err(|_| window())?;
    let size = u32::try_from(dev.size)
        .ok()
        .filter(|&size| size > 0 && base.checked_add(size - 1).is_some())
        .ok_or_else(window)?;
    if dev.irq >= layout::IOAPIC_PINS {
        return Err(AcpiError::DeviceIrq {
            index,
            irq: dev.irq,
            pins: layout::IOAPIC_PINS,
        });
    }
    let uid = u32::try_from(index).map_err(|_| AcpiError::TooManyDevices {
        count: index,
        max: MAX_VIRTIO_DEVICES,
    })?;

    let mem = Memory32Fixed::new(true, base, size);
    let irq = edge_interrupt(dev.irq);
    let crs = ResourceTemplate::new(vec![&mem, &irq]);
    let hid = VIRTIO_MMIO_HID;
    Device::new(
        Path::new(&format!("V{index:03}")),
        vec![
            &Name::new(Path::new("_HID"), &hid),
            &Name::new(Path::new("_UID"), &uid),
            &Name::new(Path::new("_CCA"), &aml::ONE),
            &Name::new(Path::new("_CRS"), &crs),
        ],
    )
    .to_aml_bytes(sink);
    Ok(())
}

/// Builds the DSDT describing `devices` (plus `\_S5_` and COM1).
pub(super) fn build(devices: &[VirtioMmioDevice]) -> Result<Vec<u8>, AcpiError> {
    // Checked first: `Path::new` panics on a name that is not four characters.
    if devices.len() > MAX_VIRTIO_DEVICES {
        return Err(AcpiError::TooManyDevices {
            count: devices.len(),
            max: MAX_VIRTIO_DEVICES,
        });
    }
    let mut aml = Vec::new();
    s5(&mut aml);

    let mut sb = Vec::new();
    com1(&mut sb);
    for (index, dev) in devices.iter().enumerate() {
        virtio_mmio(&mut sb, index, dev)?;
    }
    aml.extend(Scope::raw(Path::new("\\_SB_"), sb));

    let mut dsdt = Sdt::new(
        *b"DSDT",
        HEADER_LEN,
        DSDT_REVISION,
        OEM_ID,
        *b"SVMMDSDT",
        OEM_REVISION,
    );
    dsdt.append_slice(&aml);
    Ok(dsdt.as_slice().to_vec())
}
