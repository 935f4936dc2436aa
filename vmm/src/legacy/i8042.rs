//! The i8042 keyboard controller, present so that a guest's reset through it (command 0xfe on
//! port 0x64) ends svmm as a reboot. vm-superio provides the device model.

use vm_superio::{I8042Device, Trigger};

use super::PioDevice;
use crate::vm_events::{VmEvent, VmEvents};

/// Turns the i8042's CPU-reset line into a [`VmEvent::Reboot`].
pub struct ResetTrigger(VmEvents);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.request(VmEvent::Reboot);
        Ok(())
    }
}

/// The i8042 at ports 0x60..=0x64.
pub struct I8042(I8042Device<ResetTrigger>);

impl I8042 {
    /// An i8042 whose reset reports to `control`.
    pub fn new(control: VmEvents) -> Self {
        Self(I8042Device::new(ResetTrigger(control)))
    }
}

impl PioDevice for I8042 {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        // Cannot truncate: the device spans five ports.
        let value = self.0.read(offset as u8);
        data.fill(value);
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        if let Some(&value) = data.first() {
            // Cannot truncate: the device spans five ports. The trigger cannot fail.
            let _ = self.0.write(offset as u8, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_reboots() {
        let (control, rx) = VmEvents::new();
        let mut dev = I8042::new(control);
        dev.write(4, &[0x20]);
        assert!(rx.try_recv().is_err());
        dev.write(4, &[0xfe]);
        assert_eq!(rx.try_recv().unwrap(), VmEvent::Reboot);
    }
}
