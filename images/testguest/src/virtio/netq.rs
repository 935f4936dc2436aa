//! The virtio-net driver's queues: up to [`MAX_QUEUES`] split rings of up to [`MAX_SIZE`]
//! entries in static memory of their own, each with its own buffer area. Descriptor `i` always
//! points at buffer slot `i` (`stride` bytes), one descriptor per chain, so a used element's id
//! is its slot. The control queue is the exception: its chain is three descriptors (command,
//! data, ack) over slot 0.
//!
//! Used from ring 3 (the net tests and benchmarks run there; see `crate::arch::user`), so
//! [`NetRing::kick`] may use a full fence; ring-0 callers use [`NetRing::kick_always`].
//! Ordering as in `queue` and `fastq`: volatile accesses, compiler fences for TSO.

use crate::arch::Page;
use core::cell::UnsafeCell;
use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{fence, Ordering};

/// Most entries per ring.
pub const MAX_SIZE: u16 = 256;
/// Rings: receive and transmit of two pairs, and the control queue.
pub const MAX_QUEUES: usize = 5;
const PAGE: usize = 4096;
const AVAIL: usize = PAGE;
const USED: usize = 2 * PAGE;
const RING_BYTES: usize = 3 * PAGE;
/// Buffer bytes per ring.
pub const AREA: usize = 512 << 10;

pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;
const USED_F_NO_NOTIFY: u16 = 1;
const AVAIL_F_NO_INTERRUPT: u16 = 1;

#[link_section = ".noinit.net"]
static RINGS: Page<[u8; MAX_QUEUES * RING_BYTES]> =
    Page(UnsafeCell::new([0; MAX_QUEUES * RING_BYTES]));

#[link_section = ".noinit.net"]
static AREAS: Page<[u8; MAX_QUEUES * AREA]> = Page(UnsafeCell::new([0; MAX_QUEUES * AREA]));

/// One ring and its buffer area.
pub struct NetRing {
    /// The virtio queue index.
    pub index: u16,
    base: usize,
    size: u16,
    /// Buffer slot `i` is at `area + i * stride`.
    area: usize,
    stride: usize,
    avail_idx: u16,
    last_used: u16,
    notify: usize,
    /// QueueNotify writes.
    pub notifies: u64,
}

impl NetRing {
    /// Ring set `set` (< [`MAX_QUEUES`]) as queue `index` with `size` entries (a power of two)
    /// and slots of `stride` bytes (size × stride ≤ [`AREA`]); `notify` is the address of the
    /// device's QueueNotify register. Zeroes the ring headers.
    pub fn new(set: usize, index: u16, size: u16, stride: usize, notify: usize) -> NetRing {
        assert!(set < MAX_QUEUES && size.is_power_of_two() && size <= MAX_SIZE);
        assert!(usize::from(size) * stride <= AREA);
        let base = RINGS.0.get() as usize + set * RING_BYTES;
        // SAFETY: the headers (flags and idx) of this set's rings; no device uses them now.
        unsafe {
            write_volatile((base + AVAIL) as *mut u32, 0);
            write_volatile((base + USED) as *mut u32, 0);
        }
        NetRing {
            index,
            base,
            size,
            area: AREAS.0.get() as usize + set * AREA,
            stride,
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
        let b = self.base as u64;
        (b, b + AVAIL as u64, b + USED as u64)
    }

    /// The address of buffer slot `slot`.
    pub fn slot(&self, slot: u16) -> usize {
        assert!(slot < self.size);
        self.area + usize::from(slot) * self.stride
    }

    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Writes descriptor `index`.
    pub fn set_desc(&mut self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        assert!(index < self.size);
        let at = self.base + 16 * usize::from(index);
        // SAFETY: descriptor `index` < size in this set's table; not in flight.
        unsafe {
            write_volatile(at as *mut u64, addr);
            write_volatile((at + 8) as *mut u32, len);
            write_volatile((at + 12) as *mut u16, flags);
            write_volatile((at + 14) as *mut u16, next);
        }
    }

    /// Offers slot `slot` as one descriptor of `len` bytes (device-writable if `writable`)
    /// and publishes it (no notify).
    pub fn post(&mut self, slot: u16, len: u32, writable: bool) {
        let flags = if writable { DESC_F_WRITE } else { 0 };
        self.set_desc(slot, self.slot(slot) as u64, len, flags, 0);
        self.publish(slot);
    }

    /// Puts `head` on the available ring and publishes it.
    pub fn publish(&mut self, head: u16) {
        let at = self.base + AVAIL + 4 + 2 * usize::from(self.avail_idx % self.size);
        // SAFETY: avail.ring[avail_idx % size] of this set.
        unsafe { write_volatile(at as *mut u16, head) };
        fence(Ordering::Release);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // SAFETY: avail.idx of this set.
        unsafe { write_volatile((self.base + AVAIL + 2) as *mut u16, self.avail_idx) };
        fence(Ordering::Release);
    }

    /// Asks the device not to interrupt for this ring, or to.
    pub fn set_no_interrupt(&mut self, no: bool) {
        let flags = if no { AVAIL_F_NO_INTERRUPT } else { 0 };
        // SAFETY: avail.flags of this set.
        unsafe { write_volatile((self.base + AVAIL) as *mut u16, flags) };
    }

    /// Notifies the device unless it set VIRTQ_USED_F_NO_NOTIFY. Ring 3 only (full fence).
    pub fn kick(&mut self) {
        fence(Ordering::SeqCst);
        // SAFETY: used.flags of this set, written by the device.
        let flags = unsafe { read_volatile((self.base + USED) as *const u16) };
        if flags & USED_F_NO_NOTIFY == 0 {
            self.kick_always();
        }
    }

    /// Notifies the device (any ring).
    pub fn kick_always(&mut self) {
        // SAFETY: the device's QueueNotify register (MMIO, identity mapped, owned by no Rust
        // object).
        unsafe { write_volatile(self.notify as *mut u32, u32::from(self.index)) };
        self.notifies += 1;
    }

    /// Whether the device returned something not consumed yet.
    pub fn has_used(&self) -> bool {
        // SAFETY: used.idx of this set, written by the device.
        unsafe { read_volatile((self.base + USED + 2) as *const u16) != self.last_used }
    }

    /// The next used element `(id, len)`, if any.
    pub fn pop_used(&mut self) -> Option<(u32, u32)> {
        if !self.has_used() {
            return None;
        }
        fence(Ordering::Acquire);
        let at = self.base + USED + 4 + 8 * usize::from(self.last_used % self.size);
        // SAFETY: used.ring[last_used % size], written before used.idx moved.
        let elem = unsafe {
            (
                read_volatile(at as *const u32),
                read_volatile((at + 4) as *const u32),
            )
        };
        self.last_used = self.last_used.wrapping_add(1);
        Some(elem)
    }

    /// For failure reports: (our avail.idx, used elements consumed, the device's used.idx,
    /// used.flags).
    pub fn state(&self) -> (u16, u16, u16, u16) {
        // SAFETY: used.idx and used.flags of this set.
        let (used, flags) = unsafe {
            (
                read_volatile((self.base + USED + 2) as *const u16),
                read_volatile((self.base + USED) as *const u16),
            )
        };
        (self.avail_idx, self.last_used, used, flags)
    }

    /// Chains published and not yet returned.
    pub fn in_flight(&self) -> u16 {
        self.avail_idx.wrapping_sub(self.last_used)
    }
}

/// Copies `len` bytes from `from` to `to` (addresses in this program's memory, one of them
/// shared with the device while not in flight), a word at a time where it can.
pub fn copy(from: usize, to: usize, len: usize) {
    let mut i = 0;
    while i + 8 <= len {
        // SAFETY: the callers pass ranges inside their buffers; unaligned word accesses are
        // fine on x86.
        unsafe {
            write_volatile(
                (to + i) as *mut u64,
                read_volatile((from + i) as *const u64),
            )
        };
        i += 8;
    }
    while i < len {
        // SAFETY: as above.
        unsafe { write_volatile((to + i) as *mut u8, read_volatile((from + i) as *const u8)) };
        i += 1;
    }
}
