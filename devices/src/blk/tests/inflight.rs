//! The in-flight poll: while requests are in flight the device looks for finished operations
//! without sleeping (`Engine::reap_ready`) for up to its in-flight window, and only then sleeps
//! in `Engine::wait`; `poll=0` sleeps at once, as before. On io_uring a finished direct read
//! is found by that poll.
//!
//! No timing is asserted: the polled cases use a window far longer than the operation, and
//! count which way the completion came. So the io_uring case does not tell how soon the poll
//! saw the completion: without the task-run flag check in `UringEngine::reap_ready` the
//! kernel would still post it at the thread's next kernel entry (a timer tick at the latest).

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::blk::engine::{Completion, Engine, EngineKind, Op, SyncEngine, UringEngine};
use crate::blk::req_type::IN;
use crate::blk::status::OK;

/// The window of the polled cases (the in-flight window is a multiple of it).
const LONG_WINDOW: Duration = Duration::from_millis(500);

/// Counts how the device collected completions. With `hold`, a synchronous engine that shows
/// an operation as finished only at the `hold`-th look without waiting (a disk that takes a
/// while); without, the real engine it wraps.
struct Counting {
    inner: Box<dyn Engine>,
    hold: Option<usize>,
    looks: usize,
    waits: Arc<AtomicUsize>,
    polls: Arc<AtomicUsize>,
}

impl Engine for Counting {
    fn kind(&self) -> EngineKind {
        self.inner.kind()
    }

    fn submit(&mut self, token: u64, op: Op) -> Result<(), (Op, io::Error)> {
        self.looks = 0;
        self.inner.submit(token, op)
    }

    fn wait(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        self.waits.fetch_add(1, Ordering::Relaxed);
        self.inner.wait(out)
    }

    fn reap_ready(&mut self, out: &mut Vec<Completion>) -> io::Result<bool> {
        self.polls.fetch_add(1, Ordering::Relaxed);
        self.looks += 1;
        match self.hold {
            Some(hold) if self.looks < hold => Ok(false),
            _ => self.inner.reap_ready(out),
        }
    }

    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }

    fn capacity(&self) -> usize {
        self.inner.capacity()
    }
}

/// Reads the image's first 4 KiB through the device with `engine` wrapped in [`Counting`] and
/// idle window `poll`; returns (waits, polls) after checking the data and the status.
fn read_once(direct: bool, poll: Duration, uring: bool, hold: Option<usize>) -> (usize, usize) {
    let mem = memory();
    let image = TempImage::new(1 << 20, 0x5A);
    let options = BlkOptions {
        direct,
        ..BlkOptions::default()
    };
    let mut blk = Blk::new(image.open(true), options).unwrap();
    let inner: Box<dyn Engine> = if uring {
        let ring = UringEngine::new(blk.image(), 64).expect("io_uring on this host");
        Box::new(ring)
    } else {
        Box::new(SyncEngine::new(blk.image()))
    };
    let (waits, polls) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    blk.set_engine(Box::new(Counting {
        inner,
        hold,
        looks: 0,
        waits: waits.clone(),
        polls: polls.clone(),
    }));
    blk.set_poll(poll);
    let (mut blk, mut vqs, _irq) = activate(blk, &mem, DRIVER, 1, 16);
    request(&mut vqs[0], &mem, 0, IN, 0, &[(DATA, 4096, F_WRITE)]);
    blk.process_queue(0, &mut NoEvents).unwrap();
    assert_eq!(status_of(&mem, 0), OK);
    assert_eq!(vqs[0].used_len_of(0), Some(4097));
    assert_eq!(read_mem(&mem, DATA, 4096), vec![0x5A; 4096]);
    assert_eq!(image.read(0, 16), vec![0x5A; 16]);
    (waits.load(Ordering::Relaxed), polls.load(Ordering::Relaxed))
}

#[test]
fn a_completion_found_while_polling_needs_no_sleep() {
    let (waits, polls) = read_once(false, LONG_WINDOW, false, Some(3));
    assert_eq!(
        waits, 0,
        "the device slept although the poll found the completion"
    );
    assert!(polls >= 3, "{polls} looks: the operation was held for 3");
}

#[test]
fn without_polling_the_device_sleeps_for_completions() {
    let (waits, polls) = read_once(false, Duration::ZERO, false, Some(3));
    assert_eq!(polls, 0, "poll=0 must not poll");
    assert!(waits >= 1);
}

#[test]
fn a_direct_read_on_io_uring_is_found_by_the_poll() {
    let (waits, polls) = read_once(true, LONG_WINDOW, true, None);
    assert_eq!(
        waits, 0,
        "the ring's completion was not seen by the poll ({polls} looks)"
    );
    assert!(polls >= 1);
}
