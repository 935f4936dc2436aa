//! Durability, proven with a recording engine: a FLUSH is completed only after `fdatasync`
//! returned; without a negotiated FLUSH, writes and discards are followed by `fdatasync`
//! before they complete; host I/O errors complete requests with `IOERR`.

use std::io;
use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::blk::engine::{Completion, Engine, EngineKind, Op, SyncEngine, UringEngine};
use crate::blk::req_type::{DISCARD, FLUSH, IN, OUT};
use crate::blk::status::{IOERR, OK};

/// What the recording engine saw, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    Read {
        offset: u64,
        len: usize,
    },
    Write {
        offset: u64,
        len: usize,
    },
    Fallocate {
        offset: u64,
        len: u64,
    },
    /// A `Sync` reached the real engine; `watched_used`: the watched chain was in the used
    /// ring at that moment.
    SyncStarted {
        watched_used: bool,
    },
    /// The real `fdatasync` returned.
    SyncReturned {
        watched_used: bool,
    },
    /// The device entered `wait`.
    Wait {
        watched_used: bool,
    },
}

/// Wraps a real engine; records every operation, holds each `Sync` back for `hold` waits,
/// optionally fails reads, and checks that no operation leaves the image.
pub(crate) struct Recording {
    inner: Box<dyn Engine>,
    pub log: Arc<Mutex<Vec<Event>>>,
    hold: usize,
    held: Vec<(u64, usize)>,
    /// Whether the chain being watched is in the used ring.
    watched: Box<dyn Fn() -> bool + Send>,
    /// Reads fail with this errno.
    fail_reads: Option<i32>,
    /// Image size: an operation past it is recorded as a violation.
    image_len: u64,
    pub violations: Arc<Mutex<Vec<String>>>,
}

impl Recording {
    pub(crate) fn new(inner: Box<dyn Engine>, image_len: u64) -> Self {
        Recording {
            inner,
            log: Arc::default(),
            hold: 0,
            held: Vec::new(),
            watched: Box::new(|| false),
            fail_reads: None,
            image_len,
            violations: Arc::default(),
        }
    }

    fn record(&self, e: Event) {
        self.log.lock().unwrap().push(e);
    }

    fn check(&self, what: &str, offset: u64, len: u64) {
        if offset
            .checked_add(len)
            .is_none_or(|end| end > self.image_len)
        {
            self.violations
                .lock()
                .unwrap()
                .push(format!("{what} at {offset}+{len}"));
        }
    }

    fn run_sync(&mut self, token: u64) {
        self.record(Event::SyncStarted {
            watched_used: (self.watched)(),
        });
        // The sync engine runs fdatasync inside `submit`; io_uring by the next `wait`.
        let _ = self.inner.submit(token, Op::Sync);
        if self.inner.kind() == EngineKind::Sync {
            self.record(Event::SyncReturned {
                watched_used: (self.watched)(),
            });
        }
    }
}

impl Engine for Recording {
    fn kind(&self) -> EngineKind {
        self.inner.kind()
    }

    fn submit(&mut self, token: u64, op: Op) -> Result<(), (Op, io::Error)> {
        match &op {
            Op::Read { offset, iov } => {
                self.check("read", *offset, iov.len() as u64);
                self.record(Event::Read {
                    offset: *offset,
                    len: iov.len(),
                });
                if let Some(errno) = self.fail_reads {
                    return Err((op, io::Error::from_raw_os_error(errno)));
                }
            }
            Op::Write { offset, iov } => {
                self.check("write", *offset, iov.len() as u64);
                self.record(Event::Write {
                    offset: *offset,
                    len: iov.len(),
                });
            }
            Op::Fallocate { offset, len, .. } => {
                self.check("fallocate", *offset, *len);
                self.record(Event::Fallocate {
                    offset: *offset,
                    len: *len,
                });
            }
            Op::Sync if self.hold > 0 => {
                self.held.push((token, self.hold));
                return Ok(());
            }
            Op::Sync => {
                self.run_sync(token);
                return Ok(());
            }
        }
        self.inner.submit(token, op)
    }

    fn wait(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        self.record(Event::Wait {
            watched_used: (self.watched)(),
        });
        let mut due = Vec::new();
        self.held.retain_mut(|(token, left)| {
            *left -= 1;
            if *left == 0 {
                due.push(*token);
            }
            *left > 0
        });
        for token in due {
            self.run_sync(token);
        }
        let before = out.len();
        self.inner.wait(out)?;
        if self.inner.kind() == EngineKind::IoUring
            && out[before..].iter().any(|c| matches!(c.op, Op::Sync))
        {
            self.record(Event::SyncReturned {
                watched_used: (self.watched)(),
            });
        }
        Ok(())
    }

    fn in_flight(&self) -> usize {
        self.inner.in_flight() + self.held.len()
    }

    fn capacity(&self) -> usize {
        64
    }
}

/// Whether chain `head` is in the used ring at `used` (queue size `size`).
fn watch(mem: &GuestMemoryMmap, used: u64, size: u16, head: u16) -> Box<dyn Fn() -> bool + Send> {
    let mem = mem.clone();
    Box::new(move || {
        let n: u16 = mem.read_obj(GuestAddress(used + 2)).unwrap();
        (0..n).any(|i| {
            let at = used + 4 + 8 * u64::from(i % size);
            mem.read_obj::<u32>(GuestAddress(at)).unwrap() == u32::from(head)
        })
    })
}

fn flush_waits_for_fdatasync(uring: bool) {
    let mem = memory();
    let image = TempImage::new(1 << 20, 0);
    let mut blk = Blk::new(image.open(true), BlkOptions::default()).unwrap();
    let inner: Box<dyn Engine> = if uring {
        Box::new(UringEngine::new(blk.image(), 64).unwrap())
    } else {
        Box::new(SyncEngine::new(blk.image()))
    };
    let mut rec = Recording::new(inner, image.len());
    rec.hold = 3;
    let log = rec.log.clone();
    // Lay out the chains first, so the flush's head index is known to the probe.
    let mut vq = Vq::new(&mem, 0, 32);
    for i in 0..2u64 {
        mem.write_slice(&pattern(i as u8, 512), GuestAddress(DATA + 0x1000 * i))
            .unwrap();
        request(&mut vq, &mem, i, OUT, i, &[(DATA + 0x1000 * i, 512, 0)]);
    }
    let flush = request(&mut vq, &mem, 2, FLUSH, 0, &[]);
    for i in 0..4u64 {
        request(
            &mut vq,
            &mem,
            3 + i,
            IN,
            i,
            &[(DATA + 0x10_0000 + 0x1000 * i, 512, F_WRITE)],
        );
    }
    rec.watched = watch(&mem, vq.used_addr(), vq.size, flush);
    blk.set_engine(Box::new(rec));
    let irq = Arc::new(Recorder::default());
    blk.activate(DRIVER, mem.clone(), vec![vq.queue()], irq)
        .unwrap();

    blk.process_queue(0, &mut NoEvents).unwrap();

    assert_eq!(vq.used_idx(), 7);
    assert_eq!((status_of(&mem, 2), vq.used_len_of(flush)), (OK, Some(1)));
    let log = log.lock().unwrap().clone();
    let returned = log
        .iter()
        .position(|e| matches!(e, Event::SyncReturned { .. }))
        .expect("fdatasync ran");
    for e in &log[..=returned] {
        let used = match e {
            Event::SyncStarted { watched_used }
            | Event::SyncReturned { watched_used }
            | Event::Wait { watched_used } => *watched_used,
            _ => false,
        };
        assert!(!used, "flush completed before fdatasync returned: {log:?}");
    }
    // The writes before the flush were submitted before the fdatasync started.
    let started = log
        .iter()
        .position(|e| matches!(e, Event::SyncStarted { .. }))
        .unwrap();
    // (Both writes, merged into one: they are adjacent.)
    let writes: Vec<usize> = (0..log.len())
        .filter(|&i| matches!(log[i], Event::Write { .. }))
        .collect();
    let written: usize = writes
        .iter()
        .map(|&i| match log[i] {
            Event::Write { len, .. } => len,
            _ => 0,
        })
        .sum();
    assert_eq!(written, 1024);
    assert!(writes.iter().all(|&i| i < started));
    // While the flush was held the reads behind it finished, but chains go back in the order
    // they were taken (blk::order): the two writes, the flush, then the reads.
    assert_eq!(vq.used(2).0, u32::from(flush));
    for i in 0..4u64 {
        assert_eq!(status_of(&mem, 3 + i), OK);
    }
    assert_eq!(image.read(0, 512), pattern(0, 512));
}

#[test]
fn flush_completes_only_after_fdatasync_returned_sync() {
    flush_waits_for_fdatasync(false);
}

#[test]
fn flush_completes_only_after_fdatasync_returned_io_uring() {
    flush_waits_for_fdatasync(true);
}

/// Runs one write and one discard with `features`; returns the engine's log.
fn durability_log(features: u64) -> Vec<Event> {
    let mem = memory();
    let image = TempImage::new(1 << 20, 0x77);
    let mut blk = Blk::new(image.open(true), BlkOptions::default()).unwrap();
    let rec = Recording::new(Box::new(SyncEngine::new(blk.image())), image.len());
    let log = rec.log.clone();
    blk.set_engine(Box::new(rec));
    let (mut blk, mut vqs, _irq) = activate(blk, &mem, features, 1, 16);
    let vq = &mut vqs[0];
    mem.write_slice(&[1; 512], GuestAddress(DATA)).unwrap();
    request(vq, &mem, 0, OUT, 5, &[(DATA, 512, 0)]);
    let mut seg = [0u8; 16];
    seg[..8].copy_from_slice(&9u64.to_le_bytes());
    seg[8..12].copy_from_slice(&2u32.to_le_bytes());
    mem.write_slice(&seg, GuestAddress(DATA + 0x1000)).unwrap();
    request(vq, &mem, 1, DISCARD, 0, &[(DATA + 0x1000, 16, 0)]);
    blk.process_queue(0, &mut NoEvents).unwrap();
    assert_eq!((status_of(&mem, 0), status_of(&mem, 1)), (OK, OK));
    assert_eq!(image.read(5 * 512, 512), vec![1; 512]);
    let log = log.lock().unwrap().clone();
    log.into_iter()
        .filter(|e| !matches!(e, Event::Wait { .. }))
        .collect()
}

#[test]
fn without_flush_writes_are_durable_before_completion() {
    let with = durability_log(DRIVER);
    assert_eq!(
        with,
        [
            Event::Write {
                offset: 5 * 512,
                len: 512,
            },
            Event::Fallocate {
                offset: 9 * 512,
                len: 1024
            },
        ]
    );
    let without = durability_log(DRIVER & !VIRTIO_BLK_F_FLUSH);
    assert_eq!(
        without,
        [
            Event::Write {
                offset: 5 * 512,
                len: 512,
            },
            Event::Fallocate {
                offset: 9 * 512,
                len: 1024
            },
            // The write's fdatasync, then the discard's; each returned before its request was
            // used (`watched_used`).
            Event::SyncStarted {
                watched_used: false
            },
            Event::SyncReturned {
                watched_used: false
            },
            Event::SyncStarted {
                watched_used: false
            },
            Event::SyncReturned {
                watched_used: false
            },
        ]
    );
}

#[test]
fn host_io_errors_complete_with_ioerr_and_the_device_goes_on() {
    let mem = memory();
    let image = TempImage::new(1 << 20, 0x77);
    let mut blk = Blk::new(image.open(true), BlkOptions::default()).unwrap();
    let mut rec = Recording::new(Box::new(SyncEngine::new(blk.image())), image.len());
    rec.fail_reads = Some(libc::EIO);
    blk.set_engine(Box::new(rec));
    let (mut blk, mut vqs, _irq) = activate(blk, &mem, DRIVER, 1, 16);
    let vq = &mut vqs[0];
    mem.write_slice(&[0xCC; 512], GuestAddress(DATA)).unwrap();
    request(vq, &mem, 0, IN, 0, &[(DATA, 512, F_WRITE)]);
    request(vq, &mem, 1, OUT, 0, &[(DATA + 0x1000, 512, 0)]);
    blk.process_queue(0, &mut NoEvents).unwrap();
    assert_eq!((status_of(&mem, 0), status_of(&mem, 1)), (IOERR, OK));
    assert_eq!(vq.used(0).1, 1, "a failed read reports no data");
    assert_eq!(read_mem(&mem, DATA, 512), vec![0xCC; 512]);
    assert_eq!(blk.stats().queues[0].errors, 1);
}
