//! One split virtqueue (virtio 1.2 §2.7) of at most 16 entries, in a static page-aligned page
//! of guest RAM, and a static page of buffer space the device writes into. Guest RAM is
//! identity mapped, so an address in this program is the guest-physical address the device
//! sees.
//!
//! Only one queue exists at a time (tests run one after the other on one vCPU) and one request
//! is in flight at a time, so there is no free list: descriptors are handed out round-robin.
//!
//! Memory shared with the device is only touched through volatile accesses. Ordering: x86 is
//! TSO (stores are seen in program order, loads are not reordered with older loads), so the
//! `Release`/`Acquire` fences below only stop the compiler from reordering; they emit no
//! instruction. No `mfence` is needed (no event-index feature), and none is used: KVM's
//! instruction emulator, which runs guest ring 0 on PVM hosts, does not know it.

use core::cell::UnsafeCell;
use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};
use core::sync::atomic::{fence, Ordering};

/// Entries in the rings this driver allocates; the device may offer fewer.
pub const MAX_SIZE: u16 = 16;
/// Bytes of buffer space (offsets in [`Buf`] are into this page).
pub const BUF_SPACE: usize = 4096;

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;

#[repr(C)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

#[repr(C)]
struct Avail {
    flags: u16,
    idx: u16,
    ring: [u16; MAX_SIZE as usize],
    used_event: u16,
}

#[repr(C)]
struct UsedElem {
    id: u32,
    len: u32,
}

#[repr(C)]
struct Used {
    flags: u16,
    idx: u16,
    ring: [UsedElem; MAX_SIZE as usize],
    avail_event: u16,
}

/// Descriptor table (16-byte aligned), then the available ring (2), then the used ring (4).
#[repr(C)]
struct Rings {
    desc: [Desc; MAX_SIZE as usize],
    avail: Avail,
    used: Used,
}

/// A page of RAM shared with the device.
#[repr(C, align(4096))]
struct Shared<T>(UnsafeCell<T>);

// SAFETY: one vCPU runs this program and nothing runs concurrently with it but the device; the
// contents are only reached through raw pointers with volatile accesses.
unsafe impl<T> Sync for Shared<T> {}

static RINGS: Shared<Rings> = Shared(UnsafeCell::new(Rings {
    desc: [const {
        Desc {
            addr: 0,
            len: 0,
            flags: 0,
            next: 0,
        }
    }; MAX_SIZE as usize],
    avail: Avail {
        flags: 0,
        idx: 0,
        ring: [0; MAX_SIZE as usize],
        used_event: 0,
    },
    used: Used {
        flags: 0,
        idx: 0,
        ring: [const { UsedElem { id: 0, len: 0 } }; MAX_SIZE as usize],
        avail_event: 0,
    },
}));

static BUFFERS: Shared<[u8; BUF_SPACE]> = Shared(UnsafeCell::new([0; BUF_SPACE]));

/// A device-writable buffer: `len` bytes at `offset` in the buffer page.
#[derive(Clone, Copy)]
pub struct Buf {
    pub offset: usize,
    pub len: u32,
}

impl Buf {
    fn check(&self) {
        assert!(
            self.offset.saturating_add(self.len as usize) <= BUF_SPACE,
            "virtio buffer outside the buffer page"
        );
    }
}

/// Sets every byte of `buf` to `value` (before a request, so that unwritten bytes show).
pub fn fill(buf: Buf, value: u8) {
    buf.check();
    let base = BUFFERS.0.get() as *mut u8;
    for i in 0..buf.len as usize {
        // SAFETY: in bounds (checked); no request is in flight, so the device does not write.
        unsafe { write_volatile(base.add(buf.offset + i), value) };
    }
}

/// Copies `buf`'s bytes into `out` (at most `out.len()`); returns how many.
pub fn read(buf: Buf, out: &mut [u8]) -> usize {
    buf.check();
    let base = BUFFERS.0.get() as *const u8;
    let n = out.len().min(buf.len as usize);
    for (i, byte) in out.iter_mut().take(n).enumerate() {
        // SAFETY: in bounds (checked); the request that filled it has completed.
        *byte = unsafe { read_volatile(base.add(buf.offset + i)) };
    }
    n
}

/// The driver side of the queue: its size and where it is in the rings.
pub struct Queue {
    size: u16,
    /// Next descriptor to hand out.
    next_desc: u16,
    /// Our copy of `avail.idx` (free-running, wraps at 2^16).
    avail_idx: u16,
    /// Used entries consumed so far (free-running).
    last_used: u16,
}

impl Queue {
    /// Zeroes the rings and returns a queue of `size` entries (a power of two, at most
    /// [`MAX_SIZE`]). The caller then gives the device the ring addresses.
    pub fn new(size: u16) -> Queue {
        assert!(size.is_power_of_two() && size <= MAX_SIZE);
        let rings = RINGS.0.get() as *mut u8;
        for i in 0..core::mem::size_of::<Rings>() {
            // SAFETY: within `RINGS`; the queue is not live (the device was reset), so the
            // device does not access it.
            unsafe { write_volatile(rings.add(i), 0) };
        }
        Queue {
            size,
            next_desc: 0,
            avail_idx: 0,
            last_used: 0,
        }
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    /// Guest-physical addresses of the descriptor table, available ring and used ring.
    pub fn addresses(&self) -> (u64, u64, u64) {
        let rings = RINGS.0.get();
        // SAFETY: only computes field addresses inside the static; nothing is read.
        unsafe {
            (
                addr_of!((*rings).desc) as u64,
                addr_of!((*rings).avail) as u64,
                addr_of!((*rings).used) as u64,
            )
        }
    }

    /// Puts a chain of device-writable buffers on the available ring; returns its head
    /// descriptor. The caller notifies the device.
    pub fn submit(&mut self, bufs: &[Buf]) -> u16 {
        assert!(!bufs.is_empty() && bufs.len() <= self.size as usize);
        let rings = RINGS.0.get();
        let buffers = BUFFERS.0.get() as u64;
        let head = self.next_desc;
        for (i, buf) in bufs.iter().enumerate() {
            buf.check();
            let index = self.next_desc;
            self.next_desc = (index + 1) % self.size;
            let last = i + 1 == bufs.len();
            let desc = Desc {
                addr: buffers + buf.offset as u64,
                len: buf.len,
                flags: DESC_F_WRITE | if last { 0 } else { DESC_F_NEXT },
                next: if last { 0 } else { self.next_desc },
            };
            // SAFETY: `index` < size <= MAX_SIZE; the descriptor is free (no request in flight).
            unsafe { write_volatile(addr_of_mut!((*rings).desc[index as usize]), desc) };
        }
        let slot = (self.avail_idx % self.size) as usize;
        // SAFETY: `slot` < size; the device reads this entry only after `avail.idx` moves.
        unsafe { write_volatile(addr_of_mut!((*rings).avail.ring[slot]), head) };
        // The descriptors and the ring entry before the index that publishes them.
        fence(Ordering::Release);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // SAFETY: a field of the static rings.
        unsafe { write_volatile(addr_of_mut!((*rings).avail.idx), self.avail_idx) };
        // The index before the caller's QueueNotify store.
        fence(Ordering::Release);
        head
    }

    /// The next used element `(id, len)`, if the device has returned one.
    pub fn pop_used(&mut self) -> Option<(u32, u32)> {
        let rings = RINGS.0.get();
        // SAFETY: a field of the static rings, written by the device.
        let used_idx = unsafe { read_volatile(addr_of!((*rings).used.idx)) };
        if used_idx == self.last_used {
            return None;
        }
        // The index before the element it publishes.
        fence(Ordering::Acquire);
        let slot = (self.last_used % self.size) as usize;
        // SAFETY: `slot` < size; the device wrote this element before moving `used.idx`.
        let elem = unsafe { read_volatile(addr_of!((*rings).used.ring[slot])) };
        self.last_used = self.last_used.wrapping_add(1);
        Some((elem.id, elem.len))
    }
}
