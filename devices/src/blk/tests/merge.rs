//! Request merging: a batch served with merging on and off leaves the same image, the same
//! status bytes, used lengths and read data; merged runs really are one host I/O; a merged
//! I/O that fails completes every member with `IOERR`.

use std::io;
use std::sync::Arc;

use super::flush::{Event, Recording};
use super::*;
use crate::blk::engine::{Completion, Engine, EngineKind, Op};
use crate::blk::req_type::{FLUSH, GET_ID, IN, OUT};
use crate::blk::status::{IOERR, OK};

const IMAGE_LEN: u64 = 1 << 20;
const QSIZE: u16 = 128;

/// Fails every operation whose byte range covers `bad` (its completion says `EIO`), passing
/// everything else to the real engine.
struct FailAt {
    inner: Box<dyn Engine>,
    bad: u64,
}

impl Engine for FailAt {
    fn kind(&self) -> EngineKind {
        self.inner.kind()
    }
    fn submit(&mut self, token: u64, op: Op) -> Result<(), (Op, io::Error)> {
        self.inner.submit(token, op)
    }
    fn wait(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        let from = out.len();
        self.inner.wait(out)?;
        for c in &mut out[from..] {
            let range = match &c.op {
                Op::Read { offset, iov } | Op::Write { offset, iov } => {
                    *offset..*offset + iov.len() as u64
                }
                _ => continue,
            };
            if range.contains(&self.bad) {
                c.result = Err(io::Error::from_raw_os_error(libc::EIO));
            }
        }
        Ok(())
    }
    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }
    fn capacity(&self) -> usize {
        self.inner.capacity()
    }
}

/// One request of a batch: kind, sector, data (addr, len) or none.
struct Req {
    kind: u32,
    sector: u64,
    data: Option<(u64, u32)>,
}

fn rw(kind: u32, sector: u64, addr: u64, len: u32) -> Req {
    Req {
        kind,
        sector,
        data: Some((addr, len)),
    }
}

/// A mixed batch: contiguous writes (a run), a write after a gap, a FLUSH between two
/// contiguous writes (which must not merge across it), contiguous reads of untouched sectors
/// (a run), GET_ID (no I/O: it ends no run), reads after a gap (a new run) with an
/// out-of-range read among them (refused at once: it ends no run either). Guest buffers are
/// never contiguous: a run needs contiguous sectors only.
fn batch() -> Vec<Req> {
    let d = |n: u64| DATA + 0x2_0000 * n;
    vec![
        rw(OUT, 0, d(0), 4096),
        rw(OUT, 8, d(1), 8192),
        rw(OUT, 24, d(2), 512),
        rw(OUT, 100, d(3), 4096), // a gap before it
        Req {
            kind: FLUSH,
            sector: 0,
            data: None,
        },
        rw(OUT, 108, d(4), 4096), // continues sector 100's range, but after the FLUSH
        rw(IN, 1000, d(5), 4096),
        rw(IN, 1008, d(6), 16384),
        Req {
            kind: GET_ID,
            sector: 0,
            data: Some((d(7), 20)),
        },
        rw(IN, 1100, d(8), 4096),
        rw(IN, 1108, d(9), 4096),
        rw(IN, 2048, d(10), 512), // past the end
        rw(IN, 1116, d(11), 1024),
    ]
}

/// What a served batch left behind.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    image: Vec<u8>,
    statuses: Vec<u8>,
    used_lens: Vec<Option<u32>>,
    data: Vec<Vec<u8>>,
}

/// Serves `batch()` in one notification on a fresh image and device (io_uring or sync,
/// merging on or off) and returns the outcome and the engine's log.
fn serve(uring: bool, merge: bool, fail_at: Option<u64>) -> (Outcome, Vec<Event>) {
    let mem = memory();
    let image = TempImage::new(IMAGE_LEN, 0x5A);
    let options = BlkOptions {
        merge,
        ..BlkOptions::default()
    };
    let mut blk = Blk::new(image.open(true), options).unwrap();
    if uring {
        blk.prepare_engine().unwrap();
    }
    let real = blk.take_engine_for_test();
    let real: Box<dyn Engine> = match fail_at {
        Some(bad) => Box::new(FailAt { inner: real, bad }),
        None => real,
    };
    let recording = Recording::new(real, IMAGE_LEN);
    let log = Arc::clone(&recording.log);
    blk.set_engine(Box::new(recording));
    // Every write is durable without FLUSH; with it, the FLUSH request is a barrier.
    let (mut blk, mut vqs, _irq) = activate(blk, &mem, DRIVER, 1, QSIZE);
    let vq = &mut vqs[0];

    let reqs = batch();
    let mut heads = Vec::new();
    for (n, r) in reqs.iter().enumerate() {
        let data = match (r.kind, r.data) {
            (OUT, Some((addr, len))) => {
                mem.write_slice(&pattern(n as u8, len as usize), GuestAddress(addr))
                    .unwrap();
                vec![(addr, len, 0)]
            }
            (_, Some((addr, len))) => vec![(addr, len, F_WRITE)],
            (_, None) => vec![],
        };
        heads.push(request(vq, &mem, n as u64, r.kind, r.sector, &data));
    }
    blk.process_queue(0, &mut NoEvents).unwrap();

    assert_eq!(
        vq.used_idx() as usize,
        reqs.len(),
        "every request completed"
    );
    let outcome = Outcome {
        image: image.read(0, IMAGE_LEN as usize),
        statuses: (0..reqs.len() as u64).map(|n| status_of(&mem, n)).collect(),
        used_lens: heads.iter().map(|h| vq.used_len_of(*h)).collect(),
        data: reqs
            .iter()
            .map(|r| match (r.kind, r.data) {
                (IN | GET_ID, Some((addr, len))) => read_mem(&mem, addr, len as usize),
                _ => Vec::new(),
            })
            .collect(),
    };
    let log = log.lock().unwrap().clone();
    (outcome, log)
}

/// Host transfers as (offset, len).
type Transfers = Vec<(u64, usize)>;

/// The reads and writes that reached the engine.
fn transfers(log: &[Event]) -> (Transfers, Transfers) {
    let mut reads = Vec::new();
    let mut writes = Vec::new();
    for e in log {
        match *e {
            Event::Read { offset, len } => reads.push((offset, len)),
            Event::Write { offset, len } => writes.push((offset, len)),
            _ => {}
        }
    }
    (reads, writes)
}

#[test]
fn merged_and_unmerged_runs_leave_identical_images_and_statuses() {
    for uring in [false, true] {
        let (merged, merged_log) = serve(uring, true, None);
        let (unmerged, unmerged_log) = serve(uring, false, None);
        assert_eq!(merged, unmerged, "uring={uring}");

        let s = &merged.statuses;
        assert_eq!(s.iter().filter(|b| **b == OK).count(), s.len() - 1);
        assert_eq!(s[11], IOERR, "the read past the end");
        assert!(
            merged.data[6].iter().all(|b| *b == 0x5A),
            "read untouched sectors"
        );

        // Unmerged: one host I/O per request.
        let (reads, writes) = transfers(&unmerged_log);
        assert_eq!((reads.len(), writes.len()), (5, 5), "uring={uring}");
        // Merged: sectors 0..8, 8..24 and 24..25 are one write, the FLUSH keeps 100..108 and
        // 108..116 apart; the reads are 1000..1040 and 1100..1118.
        let (reads, writes) = transfers(&merged_log);
        assert_eq!(
            writes,
            [(0, 4096 + 8192 + 512), (100 * 512, 4096), (108 * 512, 4096)],
            "uring={uring}"
        );
        assert_eq!(
            reads,
            [(1000 * 512, 4096 + 16384), (1100 * 512, 4096 + 4096 + 1024),],
            "uring={uring}"
        );
    }
}

#[test]
fn a_failing_merged_io_completes_every_member_with_ioerr() {
    // The byte at sector 1008 lies in the second request of the run 1000..1040.
    let bad = 1010 * 512;
    for uring in [false, true] {
        let (merged, log) = serve(uring, true, Some(bad));
        let (unmerged, _) = serve(uring, false, Some(bad));
        // Unmerged: only the request covering the bad byte fails.
        let failed: Vec<usize> = (0..unmerged.statuses.len())
            .filter(|&n| unmerged.statuses[n] != OK)
            .collect();
        assert_eq!(failed, [7, 11], "uring={uring}");
        // Merged: both members of its run fail, with no data; the rest is as before.
        let failed: Vec<usize> = (0..merged.statuses.len())
            .filter(|&n| merged.statuses[n] != OK)
            .collect();
        assert_eq!(failed, [6, 7, 11], "uring={uring}");
        assert!(merged.statuses.iter().all(|b| *b == OK || *b == IOERR));
        assert_eq!(merged.used_lens[6], Some(1), "status byte only");
        assert_eq!(merged.used_lens[7], Some(1), "status byte only");
        assert_eq!(merged.image, unmerged.image);
        assert!(transfers(&log).0.contains(&(1000 * 512, 4096 + 16384)));
    }
}
