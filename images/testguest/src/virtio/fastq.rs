//! The benchmark tests' queue: queue 0 of a device with up to [`MAX_SIZE`] entries, in static
//! ring memory of its own, driven from ring 3 (see `crate::arch::user`). Unlike `queue`, it
//! keeps no per-descriptor bookkeeping: the caller owns fixed descriptors per request slot
//! (e.g. `3 s .. 3 s + 2` for slot `s`), rewrites them for every request, publishes the head
//! and maps a used element's id back to its slot.
//!
//! Two ring sets exist: set 0 for a device, set 1 for the in-guest device simulation of
//! `bench_cpu`. Each is three pages: descriptors, available ring, used ring. Only the ring
//! headers are zeroed when a set is taken (the device reads descriptors and ring entries only
//! up to the indexes), so taking one costs a few ring-0 instructions.
//!
//! Ordering as in `queue`: volatile accesses, compiler fences for the TSO orders, and one
//! full fence (`mfence`) in [`FastRing::kick`] between publishing `avail.idx` and reading
//! `used.flags` (VIRTQ_USED_F_NO_NOTIFY), a store→load order TSO does not give. `kick`
//! runs in ring 3 only: KVM's emulator, which runs ring 0 on PVM hosts, lacks `mfence`.

use super::mmio::{self, Mmio};
use super::{set_status, Error, Negotiated, ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK};
use crate::arch::Page;
use core::cell::UnsafeCell;
use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{fence, Ordering};

/// Most entries of a benchmark queue.
pub const MAX_SIZE: u16 = 256;
/// Ring sets: 0 for a device, 1 for the simulation.
pub const SET_DEVICE: usize = 0;
pub const SET_SIMULATED: usize = 1;

const PAGE: usize = 4096;
const AVAIL: usize = PAGE;
const USED: usize = 2 * PAGE;
const SET_BYTES: usize = 3 * PAGE;

pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;
const AVAIL_F_NO_INTERRUPT: u16 = 1;
const USED_F_NO_NOTIFY: u16 = 1;

#[link_section = ".noinit.bench"]
static RINGS: Page<[u8; 2 * SET_BYTES]> = Page(UnsafeCell::new([0; 2 * SET_BYTES]));

/// The driver's side of a benchmark queue. All methods touch only the rings (and the notify
/// register), so they run in ring 3.
pub struct FastRing {
    base: usize,
    size: u16,
    avail_idx: u16,
    last_used: u16,
    /// Address of the device's QueueNotify register; 0 for the simulation (no device).
    notify: usize,
    /// QueueNotify writes done (the device did not ask to skip them).
    pub notifies: u64,
}

impl FastRing {
    /// Takes ring set `set` with `size` entries (a power of two, at most [`MAX_SIZE`]),
    /// zeroing its ring headers. `notify`: the QueueNotify address, or 0.
    pub fn new(set: usize, size: u16, notify: usize) -> FastRing {
        assert!(set < 2 && size.is_power_of_two() && size <= MAX_SIZE);
        let base = RINGS.0.get() as usize + set * SET_BYTES;
        // SAFETY: the headers (flags and idx) of this set's rings, inside RINGS; no device
        // uses the set now (its device was reset, or there is none).
        unsafe {
            write_volatile((base + AVAIL) as *mut u32, 0);
            write_volatile((base + USED) as *mut u32, 0);
        }
        FastRing {
            base,
            size,
            avail_idx: 0,
            last_used: 0,
            notify,
            notifies: 0,
        }
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    /// Guest-physical addresses of the descriptor table, available ring and used ring.
    pub fn addresses(&self) -> (u64, u64, u64) {
        let base = self.base as u64;
        (base, base + AVAIL as u64, base + USED as u64)
    }

    /// Writes descriptor `index`.
    #[inline]
    pub fn set_desc(&mut self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        assert!(index < self.size);
        let at = self.base + 16 * usize::from(index);
        // SAFETY: descriptor `index` < size of this set's table; the caller's slot owns it and
        // it is not in flight.
        unsafe {
            write_volatile(at as *mut u64, addr);
            write_volatile((at + 8) as *mut u32, len);
            write_volatile((at + 12) as *mut u16, flags);
            write_volatile((at + 14) as *mut u16, next);
        }
    }

    /// Reads descriptor `index` (the simulated device's side): address, length, flags, next.
    #[inline]
    pub fn desc(&self, index: u16) -> (u64, u32, u16, u16) {
        assert!(index < self.size);
        let at = self.base + 16 * usize::from(index);
        // SAFETY: descriptor `index` < size, inside this set.
        unsafe {
            (
                read_volatile(at as *const u64),
                read_volatile((at + 8) as *const u32),
                read_volatile((at + 12) as *const u16),
                read_volatile((at + 14) as *const u16),
            )
        }
    }

    /// Asks the device not to interrupt (VIRTQ_AVAIL_F_NO_INTERRUPT), or to interrupt.
    pub fn set_no_interrupt(&mut self, no_interrupt: bool) {
        let flags = if no_interrupt {
            AVAIL_F_NO_INTERRUPT
        } else {
            0
        };
        // SAFETY: avail.flags of this set.
        unsafe { write_volatile((self.base + AVAIL) as *mut u16, flags) };
    }

    /// Puts `head` on the available ring and publishes it (no notify).
    #[inline]
    pub fn publish(&mut self, head: u16) {
        let slot = usize::from(self.avail_idx % self.size);
        // SAFETY: avail.ring[slot], slot < size; the device reads it only after avail.idx
        // moves past it.
        unsafe { write_volatile((self.base + AVAIL + 4 + 2 * slot) as *mut u16, head) };
        // The descriptors and the entry before the index that publishes them.
        fence(Ordering::Release);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // SAFETY: avail.idx of this set.
        unsafe { write_volatile((self.base + AVAIL + 2) as *mut u16, self.avail_idx) };
    }

    /// Notifies the device unless it set VIRTQ_USED_F_NO_NOTIFY. Ring 3 only (`mfence`).
    #[inline]
    pub fn kick(&mut self) {
        // avail.idx must be visible before used.flags is read (store→load), or the device
        // could miss the new entries while we skip the notify.
        fence(Ordering::SeqCst);
        // SAFETY: used.flags of this set, written by the device.
        let flags = unsafe { read_volatile((self.base + USED) as *const u16) };
        if flags & USED_F_NO_NOTIFY == 0 && self.notify != 0 {
            // SAFETY: the device's QueueNotify register (MMIO, identity mapped, owned by no
            // Rust object); queue 0.
            unsafe { write_volatile(self.notify as *mut u32, 0) };
            self.notifies += 1;
        }
    }

    /// The device's used.idx.
    #[inline]
    pub fn used_idx(&self) -> u16 {
        // SAFETY: used.idx of this set, written by the device.
        unsafe { read_volatile((self.base + USED + 2) as *const u16) }
    }

    /// Whether the device returned something not consumed yet.
    #[inline]
    pub fn has_used(&self) -> bool {
        self.used_idx() != self.last_used
    }

    /// The next used element `(id, len)`, if any.
    #[inline]
    pub fn pop_used(&mut self) -> Option<(u32, u32)> {
        if self.used_idx() == self.last_used {
            return None;
        }
        // The index before the element it publishes.
        fence(Ordering::Acquire);
        let at = self.base + USED + 4 + 8 * usize::from(self.last_used % self.size);
        // SAFETY: used.ring[last_used % size], written by the device before it moved used.idx.
        let elem = unsafe {
            (
                read_volatile(at as *const u32),
                read_volatile((at + 4) as *const u32),
            )
        };
        self.last_used = self.last_used.wrapping_add(1);
        Some(elem)
    }

    /// The simulated device (set 1 only): takes the next available head, if any, and returns
    /// it as used with `len`; `serve` sees the chain's descriptors.
    #[inline]
    pub fn simulate_device(
        &mut self,
        next_avail: &mut u16,
        mut serve: impl FnMut(u64, u32, u16) -> u32,
    ) -> bool {
        // SAFETY: avail.idx of this set (written by the driver side of the same loop).
        let idx = unsafe { read_volatile((self.base + AVAIL + 2) as *const u16) };
        if idx == *next_avail {
            return false;
        }
        fence(Ordering::Acquire);
        let slot = usize::from(*next_avail % self.size);
        // SAFETY: avail.ring[slot], slot < size.
        let head = unsafe { read_volatile((self.base + AVAIL + 4 + 2 * slot) as *const u16) };
        *next_avail = next_avail.wrapping_add(1);
        let (mut index, mut len) = (head, 0);
        for _ in 0..self.size {
            let (addr, dlen, flags, next) = self.desc(index);
            len += serve(addr, dlen, flags);
            if flags & DESC_F_NEXT == 0 {
                break;
            }
            index = next;
        }
        let used_idx = self.used_idx();
        let at = self.base + USED + 4 + 8 * usize::from(used_idx % self.size);
        // SAFETY: used.ring[used_idx % size] and used.idx of this set; the simulation is the
        // only writer.
        unsafe {
            write_volatile(at as *mut u32, u32::from(head));
            write_volatile((at + 4) as *mut u32, len);
            fence(Ordering::Release);
            write_volatile((self.base + USED + 2) as *mut u16, used_idx.wrapping_add(1));
        }
        true
    }
}

impl Negotiated<'_> {
    /// Sets up queue 0 only, in ring set 0 with the largest power of two up to
    /// min(QueueNumMax, `max_size`) entries, then DRIVER_OK. The caller drives the returned
    /// ring and resets the device (`virtio::reset`) when done.
    pub fn start_fast(self, max_size: u16) -> Result<(Mmio, FastRing), Error> {
        let mmio = self.mmio;
        mmio.write(mmio::QUEUE_SEL, 0);
        if mmio.read(mmio::QUEUE_READY) != 0 {
            return Err(Error::QueueBusy);
        }
        let max = mmio.read(mmio::QUEUE_NUM_MAX);
        if max == 0 {
            return Err(Error::QueueSize { max });
        }
        let size = 1u16 << max.min(u32::from(max_size.min(MAX_SIZE))).ilog2();
        let ring = FastRing::new(SET_DEVICE, size, mmio.addr(mmio::QUEUE_NOTIFY));
        let (desc, avail, used) = ring.addresses();
        mmio.write(mmio::QUEUE_NUM, u32::from(size));
        mmio.write_addr(mmio::QUEUE_DESC_LOW, mmio::QUEUE_DESC_HIGH, desc);
        mmio.write_addr(mmio::QUEUE_DRIVER_LOW, mmio::QUEUE_DRIVER_HIGH, avail);
        mmio.write_addr(mmio::QUEUE_DEVICE_LOW, mmio::QUEUE_DEVICE_HIGH, used);
        mmio.write(mmio::QUEUE_READY, 1);
        set_status(mmio, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK)?;
        Ok((mmio, ring))
    }
}
