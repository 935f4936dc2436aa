//! The FADT: a hardware-reduced ACPI platform whose only fixed hardware is the pair of sleep
//! registers used to power off.
//!
//! With `HW_REDUCED_ACPI` set the guest expects no PM1/GPE blocks, no SCI and no FACS. It powers
//! off by writing `(SLP_TYP << 2) | SLP_EN` (SLP_EN = 1 << 5), with SLP_TYP from the DSDT's
//! `\_S5_`, to `X_SLEEP_CONTROL_REG`; before that it writes WAK_STS (1 << 7) to
//! `X_SLEEP_STATUS_REG`. Both are one-byte I/O ports from [`crate::layout`].

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};

use super::{to_bytes, OEM_ID, OEM_REVISION};
use crate::layout;

/// IAPC_BOOT_ARCH bit 2: probing for VGA is not safe, there is none.
const IAPC_BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;
/// IAPC_BOOT_ARCH bit 3: no MSI (there is no PCI bus at all).
const IAPC_BOOT_ARCH_MSI_NOT_SUPPORTED: u16 = 1 << 3;
/// IAPC_BOOT_ARCH bit 4: the OS must not enable PCIe ASPM (there is no PCIe to manage).
const IAPC_BOOT_ARCH_PCIE_ASPM_CONTROLS: u16 = 1 << 4;
/// IAPC_BOOT_ARCH bit 5: no CMOS RTC at ports 0x70/0x71, so Linux registers no `rtc_cmos`.
const IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;

/// What the FADT says about legacy hardware. Bit 0 (LEGACY_DEVICES) and bit 1 (8042) stay clear:
/// the i8042 exists only so that a guest can reset through it (Linux's reboot path writes 0xfe to
/// port 0x64 without probing for the controller); the model emulates nothing else, so announcing
/// it would only make Linux's i8042 driver probe a controller that does not answer.
const IAPC_BOOT_ARCH: u16 = IAPC_BOOT_ARCH_VGA_NOT_PRESENT
    | IAPC_BOOT_ARCH_MSI_NOT_SUPPORTED
    | IAPC_BOOT_ARCH_PCIE_ASPM_CONTROLS
    | IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT;

/// FADT `HYPERVISOR_VENDOR_IDENTITY`.
const HYPERVISOR_VENDOR_ID: [u8; 8] = *b"SVMM-KVM";

/// A one-byte system I/O register at `port`.
fn io_byte_register(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

/// Builds the FADT (revision 6) pointing at the DSDT at `dsdt_addr` through `X_DSDT`.
pub(super) fn build(dsdt_addr: u64) -> Vec<u8> {
    let mut fadt = FADTBuilder::new(OEM_ID, *b"SVMMFACP", OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi);
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    fadt.sleep_control_reg = io_byte_register(layout::ACPI_SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = io_byte_register(layout::ACPI_SLEEP_STATUS_PORT);
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(HYPERVISOR_VENDOR_ID).into();
    // `finalize` computes the checksum over the fields set above.
    to_bytes(&fadt.finalize())
}
