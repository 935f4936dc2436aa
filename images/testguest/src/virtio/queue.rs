//! Split virtqueues (virtio 1.2 §2.7) of at most 16 entries, each in a static page-aligned
//! page of guest RAM, and 64 KiB of static buffer space that requests point into. Guest RAM
//! is identity mapped, so an address in this program is the guest-physical address the device
//! sees.
//!
//! A device has up to [`MAX_QUEUES`] queues, queue `n` in ring page `n` (tests run one after
//! the other, so one device at a time uses them). Several chains may be in flight on a queue;
//! each descriptor remembers, in the driver's private `owner` table, the head of the chain it
//! belongs to, so chains can come back in any order and free exactly their own descriptors.
//! The device's copy of the descriptors is never read back.
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
/// Queues a device may have set up at once (one ring page each).
pub const MAX_QUEUES: usize = 4;
/// Bytes of buffer space (offsets in [`Buf`] are into it).
pub const BUF_SPACE: usize = 64 * 1024;
/// `owner` entry of a free descriptor.
const FREE: u16 = u16::MAX;

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const DESC_F_INDIRECT: u16 = 4;

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

const ZERO_RINGS: Rings = Rings {
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
};

/// Ring page `n` holds queue `n`.
static RINGS: [Shared<Rings>; MAX_QUEUES] =
    [const { Shared(UnsafeCell::new(ZERO_RINGS)) }; MAX_QUEUES];

static BUFFERS: Shared<[u8; BUF_SPACE]> = Shared(UnsafeCell::new([0; BUF_SPACE]));

/// `len` bytes at `offset` in the buffer space (or, [`Buf::far`], at a guest-physical
/// address): one descriptor of a chain.
#[derive(Clone, Copy)]
pub struct Buf {
    pub offset: usize,
    pub len: u32,
    /// Device-writable (`VIRTQ_DESC_F_WRITE`): the device fills it. Otherwise it reads it.
    pub writable: bool,
    /// `offset` is a guest-physical address outside the buffer space (its bytes are never
    /// read or written by this program: only the device uses them).
    pub far: bool,
}

impl Buf {
    /// A buffer the device reads (driver to device).
    pub const fn readable(offset: usize, len: u32) -> Buf {
        Buf {
            offset,
            len,
            writable: false,
            far: false,
        }
    }

    /// A buffer the device writes (device to driver).
    pub const fn writable(offset: usize, len: u32) -> Buf {
        Buf {
            offset,
            len,
            writable: true,
            far: false,
        }
    }

    /// `len` bytes of guest RAM at guest-physical `addr`, outside the buffer space, which the
    /// caller leaves to the device (a test's bulk buffer).
    pub const fn far(addr: usize, len: u32, writable: bool) -> Buf {
        Buf {
            offset: addr,
            len,
            writable,
            far: true,
        }
    }

    /// For a descriptor: inside the buffer space, or far.
    fn check(&self) {
        assert!(
            self.far || self.offset.saturating_add(self.len as usize) <= BUF_SPACE,
            "virtio buffer outside the buffer space"
        );
    }

    /// For this program's own accesses: inside the buffer space.
    fn check_local(&self) {
        assert!(!self.far, "a far buffer is the device's alone");
        self.check();
    }
}

/// Sets every byte of `buf` to `value` (before a request, so that unwritten bytes show). Whole
/// aligned words take one 8-byte store: ring-0 code is slow where it is emulated (PVM hosts).
pub fn fill(buf: Buf, value: u8) {
    buf.check_local();
    let base = BUFFERS.0.get() as *mut u8;
    let word = u64::from_ne_bytes([value; 8]);
    let (mut at, end) = (buf.offset, buf.offset + buf.len as usize);
    while at < end {
        if at.is_multiple_of(8) && end - at >= 8 {
            // SAFETY: in bounds (checked) and aligned (the space is page-aligned); the buffer
            // is not part of a request in flight.
            unsafe { write_volatile(base.add(at) as *mut u64, word) };
            at += 8;
        } else {
            // SAFETY: as above.
            unsafe { write_volatile(base.add(at), value) };
            at += 1;
        }
    }
}

/// Stores `value` (little-endian) at `offset`, which must be a multiple of 8.
pub fn write_u64(offset: usize, value: u64) {
    let buf = Buf::readable(offset, 8);
    buf.check();
    assert!(offset.is_multiple_of(8), "unaligned word");
    // SAFETY: in bounds (checked), aligned (the space is page-aligned); the buffer is not part
    // of a request in flight.
    unsafe {
        write_volatile(
            (BUFFERS.0.get() as *mut u8).add(offset) as *mut u64,
            value.to_le(),
        )
    };
}

/// Loads the little-endian word at `offset`, which must be a multiple of 8.
pub fn read_u64(offset: usize) -> u64 {
    let buf = Buf::readable(offset, 8);
    buf.check();
    assert!(offset.is_multiple_of(8), "unaligned word");
    // SAFETY: in bounds (checked), aligned; the request that filled it has completed.
    u64::from_le(unsafe { read_volatile((BUFFERS.0.get() as *const u8).add(offset) as *const u64) })
}

/// Copies `bytes` into `buf` (at most `buf.len`); returns how many.
pub fn write(buf: Buf, bytes: &[u8]) -> usize {
    buf.check_local();
    let base = BUFFERS.0.get() as *mut u8;
    let n = bytes.len().min(buf.len as usize);
    for (i, &byte) in bytes.iter().take(n).enumerate() {
        // SAFETY: in bounds (checked); the buffer is not part of a request in flight.
        unsafe { write_volatile(base.add(buf.offset + i), byte) };
    }
    n
}

/// Copies `buf`'s bytes into `out` (at most `out.len()`); returns how many.
pub fn read(buf: Buf, out: &mut [u8]) -> usize {
    buf.check_local();
    let base = BUFFERS.0.get() as *const u8;
    let n = out.len().min(buf.len as usize);
    for (i, byte) in out.iter_mut().take(n).enumerate() {
        // SAFETY: in bounds (checked); the request that filled it has completed.
        *byte = unsafe { read_volatile(base.add(buf.offset + i)) };
    }
    n
}

/// The driver side of one queue: its size and where it is in the rings.
pub struct Queue {
    /// Which ring page (and queue index).
    index: usize,
    size: u16,
    /// Our copy of `avail.idx` (free-running, wraps at 2^16).
    avail_idx: u16,
    /// Used entries consumed so far (free-running).
    last_used: u16,
    /// Per descriptor: the head of the in-flight chain it belongs to, or `FREE`.
    owner: [u16; MAX_SIZE as usize],
}

impl Queue {
    /// Zeroes ring page `index` and returns a queue of `size` entries there (a power of two, at
    /// most [`MAX_SIZE`]). The caller then gives the device the ring addresses.
    pub fn new(index: usize, size: u16) -> Queue {
        assert!(index < MAX_QUEUES && size.is_power_of_two() && size <= MAX_SIZE);
        let rings = RINGS[index].0.get() as *mut u8;
        for i in 0..core::mem::size_of::<Rings>() {
            // SAFETY: within `RINGS[index]`; the queue is not live (the device was reset), so
            // the device does not access it.
            unsafe { write_volatile(rings.add(i), 0) };
        }
        Queue {
            index,
            size,
            avail_idx: 0,
            last_used: 0,
            owner: [FREE; MAX_SIZE as usize],
        }
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    /// Descriptors not part of a chain in flight.
    pub fn free_descriptors(&self) -> usize {
        self.owner[..self.size as usize]
            .iter()
            .filter(|&&o| o == FREE)
            .count()
    }

    fn rings(&self) -> *mut Rings {
        RINGS[self.index].0.get()
    }

    /// Guest-physical addresses of the descriptor table, available ring and used ring.
    pub fn addresses(&self) -> (u64, u64, u64) {
        let rings = self.rings();
        // SAFETY: only computes field addresses inside the static; nothing is read.
        unsafe {
            (
                addr_of!((*rings).desc) as u64,
                addr_of!((*rings).avail) as u64,
                addr_of!((*rings).used) as u64,
            )
        }
    }

    /// Puts `bufs` as one chain on the available ring, in free descriptors; returns its head
    /// descriptor. The caller notifies the device. Panics if the queue lacks free descriptors
    /// (the tests size their batches to fit).
    pub fn submit(&mut self, bufs: &[Buf]) -> u16 {
        self.submit_with_flags(bufs, 0)
    }

    /// [`submit`](Self::submit), with `extra` flags on every descriptor.
    fn submit_with_flags(&mut self, bufs: &[Buf], extra: u16) -> u16 {
        assert!(
            !bufs.is_empty() && bufs.len() <= self.free_descriptors(),
            "virtqueue full"
        );
        // The lowest free descriptors, in order.
        let mut chain = [0u16; MAX_SIZE as usize];
        let mut n = 0;
        for (index, owner) in self.owner[..self.size as usize].iter().enumerate() {
            if n < bufs.len() && *owner == FREE {
                chain[n] = index as u16;
                n += 1;
            }
        }
        let head = chain[0];
        let rings = self.rings();
        let buffers = BUFFERS.0.get() as u64;
        for (i, buf) in bufs.iter().enumerate() {
            buf.check();
            let last = i + 1 == bufs.len();
            let desc = Desc {
                addr: if buf.far {
                    buf.offset as u64
                } else {
                    buffers + buf.offset as u64
                },
                len: buf.len,
                flags: if buf.writable { DESC_F_WRITE } else { 0 }
                    | if last { 0 } else { DESC_F_NEXT }
                    | extra,
                next: if last { 0 } else { chain[i + 1] },
            };
            self.owner[chain[i] as usize] = head;
            // SAFETY: `chain[i]` < size <= MAX_SIZE; the descriptor was free, so the device
            // does not read it.
            unsafe { write_volatile(addr_of_mut!((*rings).desc[chain[i] as usize]), desc) };
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

    /// Puts `bufs` as one chain on the available ring through an indirect table written into
    /// `table` (in the buffer space, 16 bytes per buffer): the chain takes one descriptor of
    /// the ring, so a queue of size N holds N chains. Needs `VIRTIO_F_RING_INDIRECT_DESC`.
    pub fn submit_indirect(&mut self, table: Buf, bufs: &[Buf]) -> u16 {
        table.check_local();
        assert!(
            !bufs.is_empty() && bufs.len() * 16 <= table.len as usize,
            "indirect table too small"
        );
        assert!(table.offset.is_multiple_of(16), "unaligned indirect table");
        let buffers = BUFFERS.0.get() as u64;
        let base = BUFFERS.0.get() as *mut u8;
        for (i, buf) in bufs.iter().enumerate() {
            buf.check();
            let last = i + 1 == bufs.len();
            let desc = Desc {
                addr: if buf.far {
                    buf.offset as u64
                } else {
                    buffers + buf.offset as u64
                },
                len: buf.len,
                flags: if buf.writable { DESC_F_WRITE } else { 0 }
                    | if last { 0 } else { DESC_F_NEXT },
                next: if last { 0 } else { (i + 1) as u16 },
            };
            // SAFETY: inside the buffer space (checked: `table` holds every entry), 16-byte
            // aligned (the space is page-aligned, the offset checked); not in flight.
            unsafe { write_volatile(base.add(table.offset + 16 * i) as *mut Desc, desc) };
        }
        let entry = Buf::readable(table.offset, (16 * bufs.len()) as u32);
        self.submit_with_flags(&[entry], DESC_F_INDIRECT)
    }

    /// Asks the device not to interrupt for this queue (`VIRTQ_AVAIL_F_NO_INTERRUPT`, for a
    /// driver that polls the used ring), or to interrupt again. Only a hint to the device.
    pub fn set_no_interrupt(&mut self, no_interrupt: bool) {
        let rings = self.rings();
        // SAFETY: a field of the static rings, read by the device.
        unsafe { write_volatile(addr_of_mut!((*rings).avail.flags), u16::from(no_interrupt)) };
    }

    /// The next used element `(id, len)`, if the device has returned one. If `id` is the head
    /// of a chain in flight, that chain's descriptors are free again.
    pub fn pop_used(&mut self) -> Option<(u32, u32)> {
        let rings = self.rings();
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
        if let Ok(head) = u16::try_from(elem.id) {
            if (head as usize) < self.size as usize && self.owner[head as usize] == head {
                for owner in self.owner.iter_mut().filter(|o| **o == head) {
                    *owner = FREE;
                }
            }
        }
        Some((elem.id, elem.len))
    }
}
