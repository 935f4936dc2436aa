//! The MMIO bus: routes the guest-physical accesses KVM hands to user space (MMIO exits) to the
//! device whose window contains them.
//!
//! Only accesses that KVM does not handle itself arrive here: the in-kernel LAPIC and IOAPIC, and
//! the virtio `QueueNotify` writes caught by ioeventfds, never do. An access that no window
//! contains entirely reads as all-ones (a floating bus, as unclaimed ports do on the
//! [`crate::legacy::PioBus`]) and a write to it is dropped.

use std::sync::{Arc, Mutex, MutexGuard};

/// A device reachable through MMIO. `offset` is relative to the base of its window, and the
/// whole access `[offset, offset + data.len())` lies inside the window.
pub trait MmioDevice: Send {
    /// Guest reads `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Guest writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Shared handle to an MMIO device.
pub type SharedMmioDevice = Arc<Mutex<dyn MmioDevice>>;

/// Why a window could not be added to the bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MmioBusError {
    /// An empty window, or one that runs past the end of the address space.
    #[error("MMIO window {base:#x}+{len:#x} is empty or wraps the address space")]
    BadWindow {
        /// Requested base.
        base: u64,
        /// Requested length.
        len: u64,
    },
    /// The window overlaps one already on the bus.
    #[error("MMIO window {base:#x}+{len:#x} overlaps {other_base:#x}+{other_len:#x}")]
    Overlap {
        /// Requested base.
        base: u64,
        /// Requested length.
        len: u64,
        /// Base of the window already there.
        other_base: u64,
        /// Length of the window already there.
        other_len: u64,
    },
}

/// One device window.
struct Window {
    base: u64,
    len: u64,
    device: SharedMmioDevice,
}

/// Routes MMIO accesses to devices by address. Windows are kept sorted by base and never overlap.
#[derive(Default)]
pub struct MmioBus {
    windows: Vec<Window>,
}

impl MmioBus {
    /// Adds `device` at `[base, base + len)`. Fails, changing nothing, if the window is empty,
    /// wraps, or overlaps a window already on the bus.
    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        device: SharedMmioDevice,
    ) -> Result<(), MmioBusError> {
        if len == 0 || base.checked_add(len - 1).is_none() {
            return Err(MmioBusError::BadWindow { base, len });
        }
        // Only two neighbours can overlap: the last window starting below `base` (from below),
        // and the first starting at or above it (from inside); any later one starts even later.
        let at = self.windows.partition_point(|w| w.base < base);
        let neighbours = [at.checked_sub(1), Some(at)];
        for w in neighbours
            .into_iter()
            .flatten()
            .filter_map(|i| self.windows.get(i))
        {
            // Both windows are non-empty and do not wrap, so `x - 1` is their last byte.
            if base <= w.base + (w.len - 1) && w.base <= base + (len - 1) {
                return Err(MmioBusError::Overlap {
                    base,
                    len,
                    other_base: w.base,
                    other_len: w.len,
                });
            }
        }
        self.windows.insert(at, Window { base, len, device });
        Ok(())
    }

    /// The device whose window contains all of `[addr, addr + len)`, and the offset of `addr`.
    fn find(&self, addr: u64, len: usize) -> Option<(u64, &SharedMmioDevice)> {
        let at = self.windows.partition_point(|w| w.base <= addr);
        let w = self.windows.get(at.checked_sub(1)?)?;
        let offset = addr - w.base;
        let end = offset.checked_add(u64::try_from(len).ok()?)?;
        (end <= w.len).then_some((offset, &w.device))
    }

    /// Handles a guest MMIO read (a `KVM_EXIT_MMIO` with `is_write` = 0).
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr, data.len()) {
            Some((offset, dev)) => lock(dev).read(offset, data),
            None => data.fill(0xff),
        }
    }

    /// Handles a guest MMIO write.
    pub fn write(&self, addr: u64, data: &[u8]) {
        if let Some((offset, dev)) = self.find(addr, data.len()) {
            lock(dev).write(offset, data);
        }
    }
}

/// Locks a device, recovering from a poisoned lock: device models never panic on guest input,
/// and their state stays consistent between statements.
fn lock(dev: &SharedMmioDevice) -> MutexGuard<'_, dyn MmioDevice + 'static> {
    dev.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads return the low byte of the offset; writes are recorded.
    #[derive(Default)]
    struct Recorder(Vec<(u64, Vec<u8>)>);
    impl MmioDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    fn recorder() -> Arc<Mutex<Recorder>> {
        Arc::new(Mutex::new(Recorder::default()))
    }

    #[test]
    fn routes_by_window() {
        let (a, b) = (recorder(), recorder());
        let mut bus = MmioBus::default();
        bus.insert(0xd000_1000, 0x1000, b.clone()).unwrap();
        bus.insert(0xd000_0000, 0x1000, a.clone()).unwrap();
        let mut word = [0u8; 4];
        bus.read(0xd000_0010, &mut word);
        assert_eq!(word, [0x10; 4]);
        bus.read(0xd000_1ffc, &mut word);
        assert_eq!(word, [0xfc; 4]);
        bus.write(0xd000_1004, &[1, 2]);
        bus.write(0xd000_0000, &[3]);
        assert_eq!(a.lock().unwrap().0, vec![(0, vec![3])]);
        assert_eq!(b.lock().unwrap().0, vec![(4, vec![1, 2])]);
    }

    #[test]
    fn unclaimed_and_straddling_accesses_float() {
        let a = recorder();
        let mut bus = MmioBus::default();
        bus.insert(0x1000, 0x100, a.clone()).unwrap();
        let mut word = [0u8; 4];
        for addr in [0xfff, 0x10fe, 0x1100, 0, u64::MAX - 1, u64::MAX] {
            word = [0; 4];
            bus.read(addr, &mut word);
            assert_eq!(word, [0xff; 4], "read at {addr:#x}");
            bus.write(addr, &[1, 2, 3, 4]);
        }
        assert!(a.lock().unwrap().0.is_empty());
        // The last bytes of the window are reachable.
        bus.read(0x10fc, &mut word);
        assert_eq!(word, [0xfc; 4]);
    }

    #[test]
    fn rejects_overlaps_and_bad_windows() {
        let mut bus = MmioBus::default();
        bus.insert(0x2000, 0x1000, recorder()).unwrap();
        bus.insert(0x4000, 0x1000, recorder()).unwrap();
        for (base, len) in [
            (0x2000, 0x1000),
            (0x1fff, 2),
            (0x2fff, 1),
            (0x1000, 0x5000),
            (0x3fff, 2),
            (0x4800, 0x10),
        ] {
            assert!(
                matches!(
                    bus.insert(base, len, recorder()),
                    Err(MmioBusError::Overlap { .. })
                ),
                "{base:#x}+{len:#x}"
            );
        }
        assert_eq!(
            bus.insert(0x9000, 0, recorder()),
            Err(MmioBusError::BadWindow {
                base: 0x9000,
                len: 0
            })
        );
        assert!(bus.insert(u64::MAX, 2, recorder()).is_err());
        // Adjacent windows fit, including one that ends at the top of the address space.
        bus.insert(0x3000, 0x1000, recorder()).unwrap();
        bus.insert(0x1000, 0x1000, recorder()).unwrap();
        bus.insert(u64::MAX, 1, recorder()).unwrap();
        assert_eq!(bus.windows.len(), 5);
        assert!(bus.windows.windows(2).all(|p| p[0].base < p[1].base));
    }
}
