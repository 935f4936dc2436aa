//! Ways the guest ends the VM: the ACPI hardware-reduced sleep registers (power-off) and the
//! test-guest exit port (a status, like QEMU's `isa-debug-exit`).

use super::PioDevice;
use crate::layout::S5_SLEEP_TYPE;
use crate::vm_events::{VmEvent, VmEvents};

/// `SLP_EN` in the sleep control register.
const SLP_EN: u8 = 1 << 5;
/// `SLP_TYPx` field in the sleep control register (bits 4:2).
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;

/// FADT `X_SLEEP_CONTROL_REG` (offset 0) and `X_SLEEP_STATUS_REG` (offset 1). Entering S5
/// (the `_S5_` type our DSDT declares) powers the VM off; other sleep states are not supported
/// and ignored, so the guest sees them fail and carries on.
pub struct AcpiSleep {
    control: VmEvents,
}

impl AcpiSleep {
    /// A sleep device that reports power-off to `control`.
    pub fn new(control: VmEvents) -> Self {
        Self { control }
    }
}

impl PioDevice for AcpiSleep {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        let (0, Some(&value)) = (offset, data.first()) else {
            return;
        };
        let sleep_type = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
        if value & SLP_EN != 0 && sleep_type == S5_SLEEP_TYPE {
            self.control.request(VmEvent::PowerOff);
        }
    }
}

/// The exit port: a write of up to four bytes (little endian) ends the VM with that status.
pub struct ExitPort {
    control: VmEvents,
}

impl ExitPort {
    /// An exit port that reports to `control`.
    pub fn new(control: VmEvents) -> Self {
        Self { control }
    }
}

impl PioDevice for ExitPort {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u16, data: &[u8]) {
        let mut bytes = [0u8; 4];
        for (b, d) in bytes.iter_mut().zip(data) {
            *b = *d;
        }
        self.control
            .request(VmEvent::GuestStatus(u32::from_le_bytes(bytes)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_powers_off_and_other_states_do_not() {
        let (control, rx) = VmEvents::new();
        let mut dev = AcpiSleep::new(control);
        dev.write(0, &[(3 << SLP_TYP_SHIFT) | SLP_EN]);
        dev.write(0, &[S5_SLEEP_TYPE << SLP_TYP_SHIFT]);
        dev.write(1, &[0xff]);
        assert!(rx.try_recv().is_err());
        dev.write(0, &[(S5_SLEEP_TYPE << SLP_TYP_SHIFT) | SLP_EN]);
        assert_eq!(rx.try_recv().unwrap(), VmEvent::PowerOff);
    }

    #[test]
    fn exit_port_reports_status() {
        let (control, rx) = VmEvents::new();
        let mut dev = ExitPort::new(control);
        dev.write(0, &[5, 0, 0, 0]);
        dev.write(0, &[7]);
        assert_eq!(rx.try_recv().unwrap(), VmEvent::GuestStatus(5));
        assert_eq!(rx.try_recv().unwrap(), VmEvent::GuestStatus(7));
    }
}
