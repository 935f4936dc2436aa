//! Port-I/O devices the guest finds at fixed ports: 16550 serial, i8042 (for reset), the ACPI
//! sleep registers (for power-off) and the test-guest exit port, and the bus that routes vCPU
//! port accesses to them.

mod i8042;
mod power;
mod serial;

pub use i8042::I8042;
pub use power::{AcpiSleep, ExitPort};
pub use serial::{ConsoleInput, ConsoleSerial};

use std::sync::{Arc, Mutex};

/// A device reachable through port I/O. `offset` is relative to the device's base port.
pub trait PioDevice: Send {
    /// Guest reads `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u16, data: &mut [u8]);
    /// Guest writes `data` at `offset`.
    fn write(&mut self, offset: u16, data: &[u8]);
}

/// Shared handle to a port-I/O device.
pub type SharedPioDevice = Arc<Mutex<dyn PioDevice>>;

/// Routes port accesses to devices by range. Unclaimed ports read as all-ones, like an
/// unpopulated ISA bus, and writes to them are ignored.
#[derive(Default)]
pub struct PioBus {
    ranges: Vec<(u16, u16, SharedPioDevice)>,
}

impl PioBus {
    /// Adds `device` at ports `base..base + len`. Ranges are fixed at build time and must not
    /// overlap; an overlap is a programming error caught by the unit tests.
    pub fn insert(&mut self, base: u16, len: u16, device: SharedPioDevice) {
        debug_assert!(self
            .ranges
            .iter()
            .all(|(b, l, _)| base >= b + l || base + len <= *b));
        self.ranges.push((base, len, device));
    }

    fn find(&self, port: u16) -> Option<(u16, &SharedPioDevice)> {
        self.ranges
            .iter()
            .find(|(base, len, _)| port >= *base && port - base < *len)
            .map(|(base, _, dev)| (port - base, dev))
    }

    /// Handles a guest `in`.
    pub fn read(&self, port: u16, data: &mut [u8]) {
        match self.find(port) {
            Some((offset, dev)) => lock(dev).read(offset, data),
            None => data.fill(0xff),
        }
    }

    /// Handles a guest `out`.
    pub fn write(&self, port: u16, data: &[u8]) {
        if let Some((offset, dev)) = self.find(port) {
            lock(dev).write(offset, data);
        }
    }
}

/// Locks a device, recovering from a poisoned lock: device state stays usable because every
/// device method leaves it consistent between statements.
fn lock(dev: &SharedPioDevice) -> std::sync::MutexGuard<'_, dyn PioDevice + 'static> {
    dev.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Recorder(Vec<(u16, Vec<u8>)>);
    impl PioDevice for Recorder {
        fn read(&mut self, offset: u16, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u16, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_range() {
        let rec = Arc::new(Mutex::new(Recorder(Vec::new())));
        let mut bus = PioBus::default();
        bus.insert(0x100, 4, rec.clone());
        let mut b = [0u8; 1];
        bus.read(0x102, &mut b);
        assert_eq!(b, [2]);
        bus.read(0x104, &mut b);
        assert_eq!(b, [0xff]);
        bus.write(0x103, &[7]);
        bus.write(0x99, &[7]);
        assert_eq!(rec.lock().unwrap().0, vec![(3, vec![7])]);
    }
}
