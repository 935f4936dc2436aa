//! virtio-rng against a mock driver-side queue (virtio-queue's `MockSplitQueue`).

use std::io::{self, Read};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{Rng, MAX_QUEUE_SIZE, MAX_REQUEST_BYTES};
use crate::{
    DeviceError, Interrupt, NoEvents, VirtioBackend, VIRTIO_F_RING_EVENT_IDX,
    VIRTIO_F_RING_INDIRECT_DESC, VIRTIO_F_VERSION_1, VIRTIO_ID_RNG,
};

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;
/// Queue size used by the tests.
const QSIZE: u16 = 16;
/// Guest memory: 256 KiB at 0; the mock queue sits below 0x1000.
const MEM_SIZE: usize = 0x4_0000;
/// Where test buffers start.
const BUF: u64 = 0x1000;
/// The used ring. virtio-queue 0.18's `MockSplitQueue` places its used ring on top of the
/// avail ring's tail (it measures the avail ring in entries, not bytes), so tests use the
/// mock's descriptor table and avail ring but this used ring.
pub(crate) const USED: u64 = 0x800;

/// A deterministic entropy source: 0, 1, 2, ... 255, 0, 1, ...
pub(crate) struct Counter(pub u8);

impl Read for Counter {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        for b in buf.iter_mut() {
            *b = self.0;
            self.0 = self.0.wrapping_add(1);
        }
        Ok(buf.len())
    }
}

/// A source that has `left` bytes (value 0xAA), then fails with `EACCES` or reports EOF.
struct Limited {
    left: usize,
    fail: bool,
}

impl Read for Limited {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return if self.fail {
                Err(io::Error::from_raw_os_error(13))
            } else {
                Ok(0)
            };
        }
        // Short reads on purpose: at most 7 bytes per call.
        let n = buf.len().min(self.left).min(7);
        buf[..n].fill(0xAA);
        self.left -= n;
        Ok(n)
    }
}

/// Counts the interrupts the device raises.
#[derive(Default)]
pub(crate) struct Recorder {
    pub used: AtomicUsize,
    pub config: AtomicUsize,
}

impl Interrupt for Recorder {
    fn signal_used_queue(&self) {
        self.used.fetch_add(1, Ordering::SeqCst);
    }
    fn signal_config_change(&self) {
        self.config.fetch_add(1, Ordering::SeqCst);
    }
}

pub(crate) fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, next))
}

/// Stores `descs` at descriptor indices `first..` and makes `head` available.
fn push_chain(vq: &MockSplitQueue<GuestMemoryMmap>, first: u16, descs: &[RawDescriptor]) {
    for (i, d) in (first..).zip(descs) {
        vq.desc_table().store(i, *d).unwrap();
    }
    make_available(vq, first);
}

fn make_available(vq: &MockSplitQueue<GuestMemoryMmap>, head: u16) {
    let idx = vq.avail().idx().load();
    vq.avail()
        .ring()
        .ref_at(usize::from(idx % QSIZE))
        .unwrap()
        .store(head);
    vq.avail().idx().store(idx.wrapping_add(1));
}

/// A ready queue over the mock's descriptor table and avail ring, with its used ring at
/// [`USED`].
pub(crate) fn queue_of(vq: &MockSplitQueue<GuestMemoryMmap>) -> Queue {
    let mut queue: Queue = vq.create_queue().unwrap();
    queue.set_used_ring_address(Some(USED as u32), Some(0));
    queue
}

/// The used ring's `idx`.
pub(crate) fn used_idx(mem: &GuestMemoryMmap) -> u16 {
    mem.read_obj(GuestAddress(USED + 2)).unwrap()
}

/// The (head, len) of used ring entry `i`.
fn used(mem: &GuestMemoryMmap, i: u16) -> (u32, u32) {
    let at = USED + 4 + 8 * u64::from(i);
    let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
    let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap();
    (id, len)
}

fn read_back(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

fn counting(from: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| from.wrapping_add(i as u8)).collect()
}

/// An activated device with the given driver features and its interrupt recorder.
fn active(
    mem: &GuestMemoryMmap,
    vq: &MockSplitQueue<GuestMemoryMmap>,
    source: impl Read + Send + 'static,
    features: u64,
) -> (Rng, Arc<Recorder>) {
    let mut rng = Rng::with_reader(source);
    let irq = Arc::new(Recorder::default());
    let queue = queue_of(vq);
    rng.activate(features, mem.clone(), vec![queue], irq.clone())
        .unwrap();
    (rng, irq)
}

#[test]
fn describes_itself() {
    let file = std::fs::File::open("/dev/null").unwrap();
    let rng = Rng::new(file);
    assert_eq!(rng.device_type(), VIRTIO_ID_RNG);
    assert_eq!(rng.num_queues(), 1);
    assert_eq!(rng.max_queue_size(), 256);
    assert_eq!(
        rng.features(),
        VIRTIO_F_VERSION_1 | VIRTIO_F_RING_INDIRECT_DESC | VIRTIO_F_RING_EVENT_IDX
    );
    assert!(rng.config().is_empty());
}

#[test]
fn fills_one_descriptor() {
    let mem = memory();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    push_chain(&vq, 0, &[desc(BUF, 100, F_WRITE, 0)]);
    let (mut rng, irq) = active(&mem, &vq, Counter(0), VIRTIO_F_VERSION_1);

    rng.process_queue(0, &mut NoEvents).unwrap();

    assert_eq!(used_idx(&mem), 1);
    assert_eq!(used(&mem, 0), (0, 100));
    assert_eq!(read_back(&mem, BUF, 100), counting(0, 100));
    // Nothing past the buffer was touched.
    assert_eq!(read_back(&mem, BUF + 100, 16), vec![0; 16]);
    assert_eq!(irq.used.load(Ordering::SeqCst), 1);
    assert_eq!(irq.config.load(Ordering::SeqCst), 0);
    let stats = rng.stats();
    assert_eq!(stats.queues.len(), 1);
    assert_eq!(
        (
            stats.queues[0].requests,
            stats.queues[0].bytes,
            stats.queues[0].errors
        ),
        (1, 100, 0)
    );
}

#[test]
fn fills_several_descriptors_in_chain_order() {
    let mem = memory();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    push_chain(
        &vq,
        0,
        &[
            desc(BUF + 0x200, 10, F_WRITE | F_NEXT, 1),
            desc(BUF, 20, F_WRITE | F_NEXT, 2),
            desc(BUF + 0x100, 30, F_WRITE, 0),
        ],
    );
    let (mut rng, _irq) = active(&mem, &vq, Counter(0), VIRTIO_F_VERSION_1);

    rng.process_queue(0, &mut NoEvents).unwrap();

    assert_eq!(used(&mem, 0), (0, 60));
    assert_eq!(read_back(&mem, BUF + 0x200, 10), counting(0, 10));
    assert_eq!(read_back(&mem, BUF, 20), counting(10, 20));
    assert_eq!(read_back(&mem, BUF + 0x100, 30), counting(30, 30));
}

#[test]
fn read_only_descriptor_gets_nothing_and_next_chain_is_served() {
    let mem = memory();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    // Chain 0: writable then read-only. Chain 2: all read-only. Chain 3: fine.
    push_chain(
        &vq,
        0,
        &[desc(BUF, 8, F_WRITE | F_NEXT, 1), desc(BUF + 8, 8, 0, 0)],
    );
    push_chain(&vq, 2, &[desc(BUF + 0x100, 8, 0, 0)]);
    push_chain(&vq, 3, &[desc(BUF + 0x200, 8, F_WRITE, 0)]);
    let (mut rng, irq) = active(&mem, &vq, Counter(1), VIRTIO_F_VERSION_1);

    rng.process_queue(0, &mut NoEvents).unwrap();

    assert_eq!(used_idx(&mem), 3);
    assert_eq!(used(&mem, 0), (0, 0));
    assert_eq!(used(&mem, 1), (2, 0));
    assert_eq!(used(&mem, 2), (3, 8));
    // The faulty chains' buffers were not written, even the writable part of chain 0.
    assert_eq!(read_back(&mem, BUF, 16), vec![0; 16]);
    assert_eq!(read_back(&mem, BUF + 0x200, 8), counting(1, 8));
    // The three chains were served in one batch: one interrupt.
    assert_eq!(irq.used.load(Ordering::SeqCst), 1);
    let q = rng.stats().queues[0];
    assert_eq!((q.requests, q.bytes, q.errors), (3, 8, 2));
}

#[test]
fn buffer_outside_guest_memory_is_a_guest_fault() {
    let mem = memory();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    let end = MEM_SIZE as u64;
    push_chain(&vq, 0, &[desc(end - 4, 8, F_WRITE, 0)]); // straddles the end
    push_chain(&vq, 1, &[desc(0x1_0000_0000, 8, F_WRITE, 0)]); // far outside
    push_chain(&vq, 2, &[desc(u64::MAX - 2, 16, F_WRITE, 0)]); // wraps around
    push_chain(&vq, 3, &[desc(BUF, 4, F_WRITE, 0)]);
    let (mut rng, _irq) = active(&mem, &vq, Counter(0), VIRTIO_F_VERSION_1);

    rng.process_queue(0, &mut NoEvents).unwrap();

    assert_eq!(used_idx(&mem), 4);
    for i in 0..3 {
        assert_eq!(used(&mem, i), (u32::from(i), 0));
    }
    assert_eq!(used(&mem, 3), (3, 4));
    assert_eq!(read_back(&mem, end - 4, 4), vec![0; 4]);
    assert_eq!(rng.stats().queues[0].errors, 3);
}

#[test]
fn chain_longer_than_the_queue_is_refused() {
    let mem = memory();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    // A loop: 0 -> 1 -> 0 -> ...
    push_chain(
        &vq,
        0,
        &[
            desc(BUF, 4, F_WRITE | F_NEXT, 1),
            desc(BUF + 4, 4, F_WRITE | F_NEXT, 0),
        ],
    );
    // An indirect table with QSIZE + 1 entries.
    let table = 0x8000u64;
    for i in 0..=QSIZE {
        let next = if i < QSIZE { F_NEXT } else { 0 };
        mem.write_obj(
            desc(BUF + 0x100 + u64::from(i), 1, F_WRITE | next, i + 1),
            GuestAddress(table + 16 * u64::from(i)),
        )
        .unwrap();
    }
    push_chain(
        &vq,
        2,
        &[desc(table, 16 * (u32::from(QSIZE) + 1), F_INDIRECT, 0)],
    );
    // A "next" pointing outside the table: cut short, also refused.
    push_chain(&vq, 3, &[desc(BUF + 0x200, 4, F_WRITE | F_NEXT, QSIZE)]);
    let (mut rng, _irq) = active(&mem, &vq, Counter(0), VIRTIO_F_VERSION_1);

    rng.process_queue(0, &mut NoEvents).unwrap();

    assert_eq!(used_idx(&mem), 3);
    assert_eq!(used(&mem, 0), (0, 0));
    assert_eq!(used(&mem, 1), (2, 0));
    assert_eq!(used(&mem, 2), (3, 0));
    assert_eq!(read_back(&mem, BUF, 8), vec![0; 8]);
    assert_eq!(read_back(&mem, BUF + 0x100, 17), vec![0; 17]);
    assert_eq!(rng.stats().queues[0].errors, 3);
}

#[test]
fn indirect_table_within_bounds_is_served() {
    let mem = memory();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    let table = 0x8000u64;
    mem.write_obj(desc(BUF, 3, F_WRITE | F_NEXT, 1), GuestAddress(table))
        .unwrap();
    mem.write_obj(desc(BUF + 0x10, 5, F_WRITE, 0), GuestAddress(table + 16))
        .unwrap();
    push_chain(&vq, 0, &[desc(table, 32, F_INDIRECT, 0)]);
    let features = VIRTIO_F_VERSION_1 | VIRTIO_F_RING_INDIRECT_DESC;
    let (mut rng, _irq) = active(&mem, &vq, Counter(0), features);

    rng.process_queue(0, &mut NoEvents).unwrap();

    assert_eq!(used(&mem, 0), (0, 8));
    assert_eq!(read_back(&mem, BUF, 3), counting(0, 3));
    assert_eq!(read_back(&mem, BUF + 0x10, 5), counting(3, 5));
}

#[test]
fn large_chain_is_filled_up_to_the_bound() {
    let mem = memory();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    let big = 2 * MAX_REQUEST_BYTES;
    push_chain(&vq, 0, &[desc(0x1_0000, big, F_WRITE, 0)]);
    let (mut rng, _irq) = active(&mem, &vq, Counter(0), VIRTIO_F_VERSION_1);

    rng.process_queue(0, &mut NoEvents).unwrap();

    assert_eq!(used(&mem, 0), (0, MAX_REQUEST_BYTES));
    let tail = 0x1_0000 + u64::from(MAX_REQUEST_BYTES);
    assert_eq!(read_back(&mem, tail, 16), vec![0; 16]);
}

#[test]
fn head_index_outside_the_queue_breaks_the_device_until_reset() {
    let mem = memory();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    make_available(&vq, QSIZE + 3);
    let (mut rng, irq) = active(&mem, &vq, Counter(0), VIRTIO_F_VERSION_1);

    let err = rng.process_queue(0, &mut NoEvents).unwrap_err();
    assert!(matches!(
        err,
        DeviceError::BadHeadIndex { head: 19, size: 16 }
    ));
    assert_eq!(
        ipc::DeviceErrorKind::from(&err),
        ipc::DeviceErrorKind::GuestFault
    );

    // Broken: later notifications are ignored, even for good chains.
    push_chain(&vq, 0, &[desc(BUF, 4, F_WRITE, 0)]);
    rng.process_queue(0, &mut NoEvents).unwrap();
    assert_eq!(used_idx(&mem), 0);
    assert_eq!(irq.used.load(Ordering::SeqCst), 0);
    assert_eq!(rng.reset().map(|q| q.len()), Some(1));
}

#[test]
fn bad_avail_index_is_a_device_error() {
    let mem = memory();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    // The driver claims more new entries than the queue has.
    vq.avail().idx().store(QSIZE + 1);
    let (mut rng, _irq) = active(&mem, &vq, Counter(0), VIRTIO_F_VERSION_1);
    let err = rng.process_queue(0, &mut NoEvents).unwrap_err();
    assert!(matches!(err, DeviceError::Queue(_)), "{err:?}");
}

#[test]
fn interrupts_only_when_needed() {
    // Without EVENT_IDX: one interrupt per batch of chains served together (not one per
    // chain); none for a spurious notification.
    let mem = memory();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    let (mut rng, irq) = active(&mem, &vq, Counter(0), VIRTIO_F_VERSION_1);
    rng.process_queue(0, &mut NoEvents).unwrap();
    assert_eq!(irq.used.load(Ordering::SeqCst), 0);
    for i in 0..3 {
        push_chain(&vq, i, &[desc(BUF + 0x10 * u64::from(i), 4, F_WRITE, 0)]);
    }
    rng.process_queue(0, &mut NoEvents).unwrap();
    assert_eq!(used_idx(&mem), 3);
    assert_eq!(irq.used.load(Ordering::SeqCst), 1);
    push_chain(&vq, 3, &[desc(BUF + 0x30, 4, F_WRITE, 0)]);
    rng.process_queue(0, &mut NoEvents).unwrap();
    assert_eq!(irq.used.load(Ordering::SeqCst), 2, "the next batch");

    // With EVENT_IDX and used_event = 1: only the completion that moves the used index past 1.
    let mem = memory();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    let features = VIRTIO_F_VERSION_1 | VIRTIO_F_RING_EVENT_IDX;
    let (mut rng, irq) = active(&mem, &vq, Counter(0), features);
    let used_event = vq.avail_addr().0 + 4 + 2 * u64::from(QSIZE);
    mem.write_obj(1u16, GuestAddress(used_event)).unwrap();
    for i in 0..3 {
        push_chain(&vq, i, &[desc(BUF + 0x10 * u64::from(i), 4, F_WRITE, 0)]);
    }
    rng.process_queue(0, &mut NoEvents).unwrap();
    assert_eq!(used_idx(&mem), 3);
    assert_eq!(irq.used.load(Ordering::SeqCst), 1);
}

#[test]
fn no_interrupt_flag_is_honoured_without_event_idx() {
    // VIRTQ_AVAIL_F_NO_INTERRUPT set: chains are served, no interrupt.
    let mem = memory();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    mem.write_obj(1u16, vq.avail_addr()).unwrap();
    let (mut rng, irq) = active(&mem, &vq, Counter(0), VIRTIO_F_VERSION_1);
    for i in 0..3 {
        push_chain(&vq, i, &[desc(BUF + 0x10 * u64::from(i), 4, F_WRITE, 0)]);
    }
    rng.process_queue(0, &mut NoEvents).unwrap();
    assert_eq!(used_idx(&mem), 3);
    assert_eq!(irq.used.load(Ordering::SeqCst), 0);
    // Cleared again: interrupts resume.
    mem.write_obj(0u16, vq.avail_addr()).unwrap();
    push_chain(&vq, 3, &[desc(BUF + 0x40, 4, F_WRITE, 0)]);
    rng.process_queue(0, &mut NoEvents).unwrap();
    assert_eq!(irq.used.load(Ordering::SeqCst), 1);

    // With EVENT_IDX the flag means nothing: used_event decides (0: interrupt at the first).
    let mem = memory();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    mem.write_obj(1u16, vq.avail_addr()).unwrap();
    let features = VIRTIO_F_VERSION_1 | VIRTIO_F_RING_EVENT_IDX;
    let (mut rng, irq) = active(&mem, &vq, Counter(0), features);
    push_chain(&vq, 0, &[desc(BUF, 4, F_WRITE, 0)]);
    rng.process_queue(0, &mut NoEvents).unwrap();
    assert_eq!(irq.used.load(Ordering::SeqCst), 1);
}

#[test]
fn drbg_fills_every_chain_in_full() {
    let mem = memory();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    push_chain(&vq, 0, &[desc(BUF, 256, F_WRITE, 0)]);
    push_chain(&vq, 1, &[desc(BUF + 0x200, 256, F_WRITE, 0)]);
    let mut rng = Rng::with_drbg(crate::rng::Drbg::new().unwrap());
    rng.activate(
        VIRTIO_F_VERSION_1,
        mem.clone(),
        vec![queue_of(&vq)],
        Arc::new(Recorder::default()),
    )
    .unwrap();
    rng.process_queue(0, &mut NoEvents).unwrap();
    assert_eq!((used(&mem, 0), used(&mem, 1)), ((0, 256), (1, 256)));
    let (a, b) = (read_back(&mem, BUF, 256), read_back(&mem, BUF + 0x200, 256));
    assert_ne!(a, b);
    assert_ne!(a, vec![0; 256]);
}

#[test]
fn entropy_source_short_and_failing() {
    // EOF after 10 bytes: the chain gets 10 bytes, the device keeps going.
    let mem = memory();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    push_chain(&vq, 0, &[desc(BUF, 32, F_WRITE, 0)]);
    let source = Limited {
        left: 10,
        fail: false,
    };
    let (mut rng, _irq) = active(&mem, &vq, source, VIRTIO_F_VERSION_1);
    rng.process_queue(0, &mut NoEvents).unwrap();
    assert_eq!(used(&mem, 0), (0, 10));
    assert_eq!(read_back(&mem, BUF, 11), [vec![0xAA; 10], vec![0]].concat());

    // A failing source: the chain is completed with what was read, then the error surfaces.
    let mem = memory();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    push_chain(&vq, 0, &[desc(BUF, 32, F_WRITE, 0)]);
    push_chain(&vq, 1, &[desc(BUF + 0x100, 32, F_WRITE, 0)]);
    let source = Limited {
        left: 10,
        fail: true,
    };
    let (mut rng, irq) = active(&mem, &vq, source, VIRTIO_F_VERSION_1);
    let err = rng.process_queue(0, &mut NoEvents).unwrap_err();
    assert_eq!(
        ipc::DeviceErrorKind::from(&err),
        ipc::DeviceErrorKind::HostIo { errno: 13 }
    );
    assert_eq!(used_idx(&mem), 1);
    assert_eq!(used(&mem, 0), (0, 10));
    assert_eq!(irq.used.load(Ordering::SeqCst), 1);
}

#[test]
fn reset_returns_the_queues() {
    let mem = memory();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    let mut rng = Rng::with_reader(Counter(0));
    assert!(rng.reset().is_none());

    let (mut rng, _irq) = active(&mem, &vq, Counter(0), VIRTIO_F_VERSION_1);
    push_chain(&vq, 0, &[desc(BUF, 4, F_WRITE, 0)]);
    rng.process_queue(0, &mut NoEvents).unwrap();
    let queues = rng.reset().unwrap();
    assert_eq!(queues.len(), 1);
    assert_eq!(queues[0].next_used(), 1);
    assert_eq!(queues[0].desc_table(), vq.desc_table_addr().0);
    assert!(rng.reset().is_none());
    assert!(rng.stats().queues.is_empty());

    // Inactive again: notifications are ignored, and the same queues can be activated again.
    push_chain(&vq, 1, &[desc(BUF, 4, F_WRITE, 0)]);
    rng.process_queue(0, &mut NoEvents).unwrap();
    assert_eq!(used_idx(&mem), 1);
    rng.activate(
        VIRTIO_F_VERSION_1,
        mem.clone(),
        queues,
        Arc::new(Recorder::default()),
    )
    .unwrap();
    rng.process_queue(0, &mut NoEvents).unwrap();
    assert_eq!(used_idx(&mem), 2);
}

#[test]
fn activate_checks_its_arguments() {
    let mem = memory();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    let irq: Arc<dyn Interrupt> = Arc::new(Recorder::default());
    let queue = || queue_of(&vq);
    let mut rng = Rng::with_reader(Counter(0));

    let err = rng
        .activate(VIRTIO_F_VERSION_1, mem.clone(), vec![], irq.clone())
        .unwrap_err();
    assert!(matches!(
        err,
        DeviceError::QueueCount {
            expected: 1,
            got: 0
        }
    ));
    let err = rng
        .activate(
            VIRTIO_F_VERSION_1,
            mem.clone(),
            vec![queue(), queue()],
            irq.clone(),
        )
        .unwrap_err();
    assert!(matches!(err, DeviceError::QueueCount { got: 2, .. }));

    let err = rng
        .activate(1 << 40, mem.clone(), vec![queue()], irq.clone())
        .unwrap_err();
    assert!(matches!(err, DeviceError::UnsupportedFeatures(f) if f == 1 << 40));

    let mut not_ready = queue();
    not_ready.set_ready(false);
    let err = rng
        .activate(
            VIRTIO_F_VERSION_1,
            mem.clone(),
            vec![not_ready],
            irq.clone(),
        )
        .unwrap_err();
    assert!(matches!(err, DeviceError::InvalidQueue { index: 0 }));

    let mut too_big = Queue::new(2 * MAX_QUEUE_SIZE).unwrap();
    too_big.set_size(2 * MAX_QUEUE_SIZE);
    too_big.set_ready(true);
    let err = rng
        .activate(VIRTIO_F_VERSION_1, mem.clone(), vec![too_big], irq.clone())
        .unwrap_err();
    assert!(matches!(err, DeviceError::InvalidQueue { index: 0 }));

    rng.activate(VIRTIO_F_VERSION_1, mem.clone(), vec![queue()], irq.clone())
        .unwrap();
    let err = rng
        .activate(VIRTIO_F_VERSION_1, mem.clone(), vec![queue()], irq)
        .unwrap_err();
    assert!(matches!(err, DeviceError::AlreadyActive));
    assert!(matches!(
        rng.process_queue(1, &mut NoEvents),
        Err(DeviceError::UnknownQueue(1))
    ));
}
