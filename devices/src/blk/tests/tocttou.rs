//! Time-of-check/time-of-use: the copy-in reads each metadata byte once and acts on that read.
//!
//! - A scribbling wrapper around guest memory records every metadata read of the parser and
//!   inverts the bytes right after it: the parser must never read an address twice for one
//!   request, and must return exactly what it returns on untouched memory.
//! - A racing driver: one thread keeps rewriting headers, descriptors and discard segments while
//!   requests are parsed and executed, with guest memory between `PROT_NONE` guard pages. No
//!   panic, no fault, no I/O outside the image, and every chain completes with a valid status.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::flush::Recording;
use super::guard::guarded_memory;
use super::*;
use crate::blk::engine::{Engine, SyncEngine, UringEngine};
use crate::blk::req_type::{DISCARD, FLUSH, GET_ID, IN, OUT, WRITE_ZEROES};
use crate::blk::request::{parse, ChainSource, DiskLimits, MetaMemory};
use crate::blk::status;
use crate::VIRTIO_F_RING_INDIRECT_DESC;

/// Guest memory that inverts every byte the parser reads, right after the read.
struct Scribbling<'m> {
    mem: &'m GuestMemoryMmap,
    reads: RefCell<Vec<(u64, u64)>>,
}

impl MetaMemory for Scribbling<'_> {
    fn read_meta(&self, addr: GuestAddress, buf: &mut [u8]) -> bool {
        if !self.mem.read_meta(addr, buf) {
            return false;
        }
        self.reads
            .borrow_mut()
            .push((addr.0, addr.0 + buf.len() as u64));
        let flipped: Vec<u8> = buf.iter().map(|b| !b).collect();
        self.mem.write_slice(&flipped, addr).unwrap();
        true
    }

    fn contains(&self, addr: GuestAddress, len: u64) -> bool {
        self.mem.contains(addr, len)
    }
}

/// Discard/write-zeroes records.
fn records(segs: &[(u64, u32, u32)]) -> Vec<u8> {
    segs.iter()
        .flat_map(|&(s, n, f)| {
            let mut r = s.to_le_bytes().to_vec();
            r.extend_from_slice(&n.to_le_bytes());
            r.extend_from_slice(&f.to_le_bytes());
            r
        })
        .collect()
}

#[test]
fn every_metadata_byte_is_read_once_and_the_first_read_wins() {
    let mem = memory();
    let mut vq = Vq::new(&mem, 0, 64);
    let table = 0x8_0000u64;
    let mut heads = Vec::new();
    // Read over three buffers.
    header(&mem, HDR, IN, 4);
    heads.push((
        vq.push(&[
            (HDR, 16, 0),
            (DATA, 512, F_WRITE),
            (DATA + 0x1000, 1024, F_WRITE),
            (DATA + 0x2000, 512, F_WRITE),
            (STATUS, 1, F_WRITE),
        ]),
        5 * 16 + 16,
    ));
    // Write with the header split over two descriptors.
    header(&mem, HDR + 32, OUT, 8);
    heads.push((
        vq.push(&[
            (HDR + 32, 7, 0),
            (HDR + 39, 9, 0),
            (DATA, 1024, 0),
            (STATUS + 1, 1, F_WRITE),
        ]),
        4 * 16 + 16,
    ));
    // Flush, GET_ID.
    header(&mem, HDR + 64, FLUSH, 0);
    heads.push((
        vq.push(&[(HDR + 64, 16, 0), (STATUS + 2, 1, F_WRITE)]),
        2 * 16 + 16,
    ));
    header(&mem, HDR + 96, GET_ID, 0);
    heads.push((
        vq.push(&[
            (HDR + 96, 16, 0),
            (DATA, 20, F_WRITE),
            (STATUS + 3, 1, F_WRITE),
        ]),
        3 * 16 + 16,
    ));
    // Discard with three segments split across descriptors, write-zeroes with unmap.
    header(&mem, HDR + 128, DISCARD, 0);
    mem.write_slice(
        &records(&[(0, 8, 0), (64, 8, 0), (128, 1, 0)]),
        GuestAddress(DATA + 0x3000),
    )
    .unwrap();
    heads.push((
        vq.push(&[
            (HDR + 128, 16, 0),
            (DATA + 0x3000, 24, 0),
            (DATA + 0x3018, 24, 0),
            (STATUS + 4, 1, F_WRITE),
        ]),
        4 * 16 + 16 + 48,
    ));
    header(&mem, HDR + 160, WRITE_ZEROES, 0);
    mem.write_slice(&records(&[(16, 16, 1)]), GuestAddress(DATA + 0x4000))
        .unwrap();
    heads.push((
        vq.push(&[
            (HDR + 160, 16, 0),
            (DATA + 0x4000, 16, 0),
            (STATUS + 5, 1, F_WRITE),
        ]),
        3 * 16 + 16 + 16,
    ));
    // A read through an indirect table.
    header(&mem, HDR + 192, IN, 0);
    for (i, &(addr, len, flags)) in [
        (HDR + 192, 16u32, F_NEXT),
        (DATA + 0x5000, 4096, F_WRITE | F_NEXT),
        (STATUS + 6, 1, F_WRITE),
    ]
    .iter()
    .enumerate()
    {
        let d = virtio_queue::desc::RawDescriptor::from(
            virtio_queue::desc::split::Descriptor::new(addr, len, flags, i as u16 + 1),
        );
        mem.write_obj(d, GuestAddress(table + 16 * i as u64))
            .unwrap();
    }
    heads.push((vq.push(&[(table, 48, F_INDIRECT)]), 16 + 3 * 16 + 16));

    let source = ChainSource {
        desc_table: vq.mock.desc_table_addr(),
        queue_size: vq.size,
        indirect: true,
    };
    let disk = DiskLimits {
        capacity: 2048,
        read_only: false,
        discard: true,
        write_zeroes: true,
    };
    for (head, metadata_bytes) in heads {
        let pristine = parse(&mem, &source, head, &disk).unwrap();
        let scribbling = Scribbling {
            mem: &mem,
            reads: RefCell::default(),
        };
        let first = parse(&scribbling, &source, head, &disk).unwrap();
        assert_eq!(first, pristine, "chain {head}: acted on a second read");
        let mut reads = scribbling.reads.into_inner();
        reads.sort();
        for pair in reads.windows(2) {
            assert!(pair[0].1 <= pair[1].0, "chain {head}: {pair:?} read twice");
        }
        let total: u64 = reads.iter().map(|(s, e)| e - s).sum();
        assert_eq!(total, metadata_bytes, "chain {head}: {reads:x?}");
        // Everything was scribbled over: parsing again now sees different metadata.
        assert_ne!(
            parse(&mem, &source, head, &disk),
            Ok(pristine),
            "chain {head}"
        );
    }
}

/// A tiny deterministic PRNG (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[(self.next() % from.len() as u64) as usize]
    }
}

const RACE_REQUESTS: u64 = 8;
const RACE_SECTORS: u64 = 2048;
/// Rounds of `RACE_REQUESTS` requests each.
const ROUNDS: u64 = 1000;

fn data_of(r: u64) -> u64 {
    DATA + 0x2_0000 * r
}

/// Keeps rewriting request `r`'s header, its header and data descriptors (never the status
/// descriptor's, nor any `next`), and the segment records in its data buffer.
fn racer(mem: &GuestMemoryMmap, vq_table: u64, stop: &AtomicBool, seed: u64) {
    let mut rng = Rng(seed);
    let types = [
        IN,
        OUT,
        FLUSH,
        GET_ID,
        DISCARD,
        WRITE_ZEROES,
        10,
        0xFFFF_FFFF,
    ];
    while !stop.load(Ordering::Relaxed) {
        let r = rng.next() % RACE_REQUESTS;
        let (hdr, _) = slot(r);
        let hdr_desc = vq_table + 16 * (3 * r);
        let data_desc = hdr_desc + 16;
        let _ = match rng.next() % 8 {
            0 => mem.write_obj(rng.pick(&types), GuestAddress(hdr)),
            1 => {
                let any = rng.next();
                let s = rng.pick(&[0, RACE_SECTORS - 1, RACE_SECTORS, u64::MAX, any]);
                mem.write_obj(s, GuestAddress(hdr + 8))
            }
            2 => {
                let any = rng.next() as u32;
                let l = rng.pick(&[0u32, 1, 512, 4096, 1000, u32::MAX, any]);
                mem.write_obj(l, GuestAddress(data_desc + 8))
            }
            3 => {
                let any = rng.next();
                let a = rng.pick(&[data_of(r), MEM_SIZE as u64 - 100, u64::MAX - 10, hdr, any]);
                mem.write_obj(a, GuestAddress(data_desc))
            }
            4 => mem.write_obj(
                F_NEXT | rng.pick(&[0, F_WRITE]),
                GuestAddress(data_desc + 12),
            ),
            5 => mem.write_obj(rng.pick(&[16u32, 8, 0, 32]), GuestAddress(hdr_desc + 8)),
            6 => mem.write_obj(
                F_NEXT | rng.pick(&[0, F_WRITE]),
                GuestAddress(hdr_desc + 12),
            ),
            _ => {
                let sector = rng.next() % (2 * RACE_SECTORS);
                let sectors = rng.next() as u32 % 64;
                let flags = rng.pick(&[0, 1, 2]);
                let rec = records(&[(sector, sectors, flags)]);
                mem.write_slice(&rec, GuestAddress(data_of(r)))
            }
        };
    }
}

fn race(uring: bool) {
    let mem = guarded_memory(MEM_SIZE);
    let image = TempImage::new(RACE_SECTORS * 512, 0x5A);
    let mut blk = Blk::new(image.open(true), BlkOptions::default()).unwrap();
    let inner: Box<dyn Engine> = if uring {
        Box::new(UringEngine::new(blk.image(), 64).unwrap())
    } else {
        Box::new(SyncEngine::new(blk.image()))
    };
    let rec = Recording::new(inner, image.len());
    let violations = rec.violations.clone();
    blk.set_engine(Box::new(rec));
    let features = DRIVER | VIRTIO_F_RING_INDIRECT_DESC;
    let (mut blk, mut vqs, _irq) = activate(blk, &mem, features, 1, 32);
    let vq = &mut vqs[0];
    let table = vq.mock.desc_table_addr().0;
    let stop = AtomicBool::new(false);
    let mut rng = Rng(0x1234_5678);
    let mut completed = 0u64;
    let mut by_status = [0u64; 3];
    /// Stops the racer however the scope ends (a failed assertion included).
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    std::thread::scope(|s| {
        let racer = s.spawn(|| racer(&mem, table, &stop, 0xDEAD_BEEF));
        let _stop = StopOnDrop(&stop);
        for _round in 0..ROUNDS {
            // Request r always sits at descriptors 3r..3r+2, where the racer expects it.
            vq.rewind();
            let before = vq.used_idx();
            let mut heads = Vec::new();
            for r in 0..RACE_REQUESTS {
                let kind = rng.pick(&[IN, OUT, FLUSH, GET_ID, DISCARD, WRITE_ZEROES]);
                let sector = rng.next() % RACE_SECTORS;
                let (hdr, st) = slot(r);
                header(&mem, hdr, kind, sector);
                mem.write_obj(0xFFu8, GuestAddress(st)).unwrap();
                let (len, flags) = match kind {
                    IN | GET_ID => (4096, F_WRITE),
                    DISCARD | WRITE_ZEROES => (16, 0),
                    _ => (4096, 0),
                };
                let head = vq.push(&[(hdr, 16, 0), (data_of(r), len, flags), (st, 1, F_WRITE)]);
                heads.push((head, r));
            }
            blk.process_queue(0, &mut NoEvents).unwrap();
            assert_eq!(vq.used_idx(), before.wrapping_add(RACE_REQUESTS as u16));
            for i in 0..RACE_REQUESTS as u16 {
                let (id, len) = vq.used(before.wrapping_add(i));
                let r = heads.iter().find(|(h, _)| u32::from(*h) == id).unwrap().1;
                let st = status_of(&mem, r);
                assert!(len >= 1, "request {r} completed without a status");
                assert!(st <= status::UNSUPP, "request {r}: status byte {st:#x}");
                if len > 1 {
                    assert_eq!(st, status::OK, "data reported with an error status");
                }
                by_status[usize::from(st)] += 1;
                completed += 1;
            }
        }
        drop(_stop);
        racer.join().unwrap();
    });
    assert_eq!(completed, ROUNDS * RACE_REQUESTS);
    assert!(by_status[0] > 0 && by_status[1] > 0, "{by_status:?}");
    assert_eq!(*violations.lock().unwrap(), Vec::<String>::new());
    assert_eq!(image.len(), RACE_SECTORS * 512);
}

#[test]
fn racing_rewrites_never_break_the_device_sync() {
    race(false);
}

#[test]
fn racing_rewrites_never_break_the_device_io_uring() {
    race(true);
}
