//! virtio-blk tests: a driver simulator over virtio-queue's `MockSplitQueue`, temp-file images,
//! and the test-only pieces (recording engines, guard-page memory, a scribbling memory wrapper).
//!
//! - `bounce`: direct-I/O bounce buffers in flight stay under the cap.
//! - `device`: requests end to end on the sync and io_uring engines.
//! - `parse`: the copy-in parser on malformed chains.
//! - `flush`: durability, with a recording engine.
//! - `tocttou`: every metadata byte read once; racing rewrites under guard pages.
//! - `poll`: the idle-poll window (requests served without a notification; none lost).
//! - `inflight`: the in-flight poll (completions taken without sleeping).

mod bounce;
mod device;
mod flush;
pub(crate) mod guard;
mod inflight;
mod merge;
mod parse;
mod poll;
mod tocttou;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::config::{VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_WRITE_ZEROES};
use super::{Blk, BlkOptions};
use crate::rng::tests::Recorder;
use crate::{NoEvents, VirtioBackend, VIRTIO_F_VERSION_1};

pub(crate) const F_NEXT: u16 = 1;
pub(crate) const F_WRITE: u16 = 2;
pub(crate) const F_INDIRECT: u16 = 4;

/// Guest memory size used by the tests.
pub(crate) const MEM_SIZE: usize = 0x40_0000;
/// Queue `q`'s rings live at `q * QUEUE_STRIDE`.
const QUEUE_STRIDE: u64 = 0x4000;
/// Used rings sit this far into a queue's area (the mock's own used ring overlaps its avail
/// ring's tail in virtio-queue 0.18, see `rng::tests::USED`).
const USED_OFFSET: u64 = 0x2000;
/// Request headers: 32 bytes apart from here.
pub(crate) const HDR: u64 = 0x4_0000;
/// Status bytes: 16 bytes apart from here.
pub(crate) const STATUS: u64 = 0x6_0000;
/// Data buffers from here on.
pub(crate) const DATA: u64 = 0x10_0000;

/// The features a Linux driver would take from a writable device.
pub(crate) const DRIVER: u64 =
    VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES;

pub(crate) fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

/// A temp-file image, removed on drop.
pub(crate) struct TempImage {
    pub path: PathBuf,
}

impl TempImage {
    /// A new image of `len` bytes, every byte `fill`.
    pub(crate) fn new(len: u64, fill: u8) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let path =
            std::env::temp_dir().join(format!("svmm-blk-test-{}-{n}.img", std::process::id()));
        let file = File::create(&path).unwrap();
        file.write_all_at(&vec![fill; len as usize], 0).unwrap();
        TempImage { path }
    }

    pub(crate) fn open(&self, writable: bool) -> File {
        OpenOptions::new()
            .read(true)
            .write(writable)
            .open(&self.path)
            .unwrap()
    }

    /// The image's bytes at `offset`, read from the host side.
    pub(crate) fn read(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        self.open(false).read_exact_at(&mut buf, offset).unwrap();
        buf
    }

    pub(crate) fn len(&self) -> u64 {
        std::fs::metadata(&self.path).unwrap().len()
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A driver-side virtqueue: `MockSplitQueue`'s descriptor table and avail ring, our used ring.
pub(crate) struct Vq<'m> {
    pub mock: MockSplitQueue<'m, GuestMemoryMmap>,
    mem: &'m GuestMemoryMmap,
    pub size: u16,
    used: u64,
    /// Next free descriptor index (the tests never have more than `size` in flight).
    next: u16,
}

impl<'m> Vq<'m> {
    /// Queue `index` of `size` entries.
    pub(crate) fn new(mem: &'m GuestMemoryMmap, index: u16, size: u16) -> Self {
        let base = QUEUE_STRIDE * u64::from(index);
        Vq {
            mock: MockSplitQueue::create(mem, GuestAddress(base), size),
            mem,
            size,
            used: base + USED_OFFSET,
            next: 0,
        }
    }

    /// A ready queue for activation.
    pub(crate) fn queue(&self) -> Queue {
        let mut q: Queue = self.mock.create_queue().unwrap();
        q.set_used_ring_address(Some(self.used as u32), Some(0));
        q
    }

    /// Stores `descs` as one chain (NEXT added to all but the last) and makes it available.
    /// Returns the head index.
    pub(crate) fn push(&mut self, descs: &[(u64, u32, u16)]) -> u16 {
        let head = self.next;
        let n = descs.len() as u16;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let idx = (head + i as u16) % self.size;
            let last = i + 1 == descs.len();
            let flags = if last { flags } else { flags | F_NEXT };
            let next = (idx + 1) % self.size;
            self.store(idx, addr, len, flags, next);
        }
        self.next = (head + n) % self.size;
        self.make_available(head);
        head
    }

    pub(crate) fn store(&self, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = RawDescriptor::from(Descriptor::new(addr, len, flags, next));
        self.mock.desc_table().store(idx, d).unwrap();
    }

    /// Lays the next chain out from descriptor 0 again (all earlier chains were used).
    pub(crate) fn rewind(&mut self) {
        self.next = 0;
    }

    pub(crate) fn make_available(&self, head: u16) {
        let idx = self.mock.avail().idx().load();
        self.mock
            .avail()
            .ring()
            .ref_at(usize::from(idx % self.size))
            .unwrap()
            .store(head);
        self.mock.avail().idx().store(idx.wrapping_add(1));
    }

    pub(crate) fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    /// `(head, len)` of used entry `i`.
    pub(crate) fn used(&self, i: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(i % self.size);
        let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
        (id, len)
    }

    /// Used length of the chain with head `head`, if it was used.
    pub(crate) fn used_len_of(&self, head: u16) -> Option<u32> {
        let n = self.used_idx();
        (0..n)
            .map(|i| self.used(i))
            .find(|(id, _)| *id == u32::from(head))
            .map(|(_, len)| len)
    }

    /// Guest address of the used ring.
    pub(crate) fn used_addr(&self) -> u64 {
        self.used
    }
}

/// Writes a request header at `at`.
pub(crate) fn header(mem: &GuestMemoryMmap, at: u64, kind: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(at)).unwrap();
}

/// Header and status addresses of request slot `n`.
pub(crate) fn slot(n: u64) -> (u64, u64) {
    (HDR + 32 * n, STATUS + 16 * n)
}

/// Pushes a request: header (slot `n`), `data` descriptors, status byte (preset to 0xFF).
pub(crate) fn request(
    vq: &mut Vq<'_>,
    mem: &GuestMemoryMmap,
    n: u64,
    kind: u32,
    sector: u64,
    data: &[(u64, u32, u16)],
) -> u16 {
    let (hdr, status) = slot(n);
    header(mem, hdr, kind, sector);
    mem.write_obj(0xFFu8, GuestAddress(status)).unwrap();
    let mut descs = vec![(hdr, 16, 0)];
    descs.extend_from_slice(data);
    descs.push((status, 1, F_WRITE));
    vq.push(&descs)
}

/// The status byte of request slot `n`.
pub(crate) fn status_of(mem: &GuestMemoryMmap, n: u64) -> u8 {
    mem.read_obj(GuestAddress(slot(n).1)).unwrap()
}

/// `len` bytes of a pattern that depends on `seed` and the position.
pub(crate) fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_mul(31).wrapping_add((i % 251) as u8))
        .collect()
}

pub(crate) fn read_mem(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

/// A device on `image` with `options`, activated with `features` on `queues` queues of size
/// `size`. Returns the device, its queues and the interrupt recorder.
pub(crate) fn activated<'m>(
    mem: &'m GuestMemoryMmap,
    image: &TempImage,
    options: BlkOptions,
    features: u64,
    size: u16,
) -> (Blk, Vec<Vq<'m>>, Arc<Recorder>) {
    let n = options.queues;
    let writable = !options.read_only;
    let blk = Blk::new(image.open(writable), options).unwrap();
    activate(blk, mem, features, n, size)
}

pub(crate) fn activate(
    mut blk: Blk,
    mem: &GuestMemoryMmap,
    features: u64,
    queues: u16,
    size: u16,
) -> (Blk, Vec<Vq<'_>>, Arc<Recorder>) {
    let vqs: Vec<Vq<'_>> = (0..queues).map(|q| Vq::new(mem, q, size)).collect();
    let irq = Arc::new(Recorder::default());
    blk.activate(
        features,
        mem.clone(),
        vqs.iter().map(Vq::queue).collect(),
        irq.clone(),
    )
    .unwrap();
    (blk, vqs, irq)
}
