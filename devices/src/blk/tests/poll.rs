//! Polling on both sides. The device's idle poll: a chain the driver makes available while
//! the device polls is served in the same `process_queue` call, with notifications still
//! suppressed (the driver would not have notified); `poll=0` and the end of a window leave
//! notifications enabled, as before. The driver's: a driver that polls the used ring
//! (`VIRTQ_AVAIL_F_NO_INTERRUPT`) gets no interrupts, and one that takes them gets one per batch.
//!
//! No timing is asserted: the polled case uses a window far longer than any scheduling delay of
//! the driver thread, and checks what the driver saw, not how long anything took.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::blk::req_type::GET_ID;
use crate::blk::status::OK;
use crate::blk::{BlkError, MAX_POLL_US};
use crate::VIRTIO_F_RING_EVENT_IDX;

/// `VIRTQ_USED_F_NO_NOTIFY`.
const NO_NOTIFY: u16 = 1;
const QUEUE_SIZE: u16 = 16;
/// The window of the polled case: a driver thread delayed this long is a broken machine.
const LONG_WINDOW: Duration = Duration::from_millis(500);

fn opts(poll_us: u32) -> BlkOptions {
    BlkOptions {
        id: "polled".into(),
        poll_us,
        ..BlkOptions::default()
    }
}

/// Lays out a `GET_ID` request in slot 1 (descriptors 3..=5) and puts its head in avail ring
/// entry 1, without publishing it (`avail.idx` stays 1). Request 0 must use descriptors 0..=2.
fn stage_second_request(vq: &Vq<'_>, mem: &GuestMemoryMmap) -> u16 {
    let (hdr, status) = slot(1);
    header(mem, hdr, GET_ID, 0);
    mem.write_obj(0xFFu8, GuestAddress(status)).unwrap();
    vq.store(3, hdr, 16, F_NEXT, 4);
    vq.store(4, DATA + 0x100, 20, F_WRITE | F_NEXT, 5);
    vq.store(5, status, 1, F_WRITE, 0);
    vq.mock.avail().ring().ref_at(1).unwrap().store(3);
    3
}

/// Whether a driver that just moved `avail.idx` from 1 to 2 must notify, by the device's
/// published wish: `used.flags` without `EVENT_IDX`, `avail_event` with it (the spec's
/// `vring_need_event`).
/// `used` is the used ring's address, `size` the queue size.
fn driver_must_notify(mem: &GuestMemoryMmap, used: u64, size: u16, event_idx: bool) -> bool {
    if event_idx {
        let at = used + 4 + 8 * u64::from(size);
        let event: u16 = mem.load(GuestAddress(at), Ordering::Acquire).unwrap();
        let (new, old) = (2u16, 1u16);
        new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
    } else {
        let flags: u16 = mem.load(GuestAddress(used), Ordering::Acquire).unwrap();
        flags & NO_NOTIFY == 0
    }
}

fn used_flags(mem: &GuestMemoryMmap, vq: &Vq<'_>) -> u16 {
    mem.read_obj(GuestAddress(vq.used_addr())).unwrap()
}

#[test]
fn a_request_made_available_while_polling_needs_no_notification() {
    for event_idx in [false, true] {
        let features = DRIVER
            | if event_idx {
                VIRTIO_F_RING_EVENT_IDX
            } else {
                0
            };
        let mem = memory();
        let image = TempImage::new(1 << 20, 0);
        let mut blk = Blk::new(image.open(true), opts(0)).unwrap();
        blk.set_poll(LONG_WINDOW);
        let (mut blk, mut vqs, _irq) = activate(blk, &mem, features, 1, QUEUE_SIZE);
        let vq = &mut vqs[0];
        let first = request(vq, &mem, 0, GET_ID, 0, &[(DATA, 20, F_WRITE)]);
        let second = stage_second_request(vq, &mem);
        let avail_idx = GuestAddress(vq.mock.avail_addr().0 + 2);

        let (used, size) = (vq.used_addr(), vq.size);
        let (vq, mem) = (&*vq, &mem);
        let must_notify = std::thread::scope(|s| {
            // The driver side, on its own thread (the mock queue is not `Sync`: plain addresses).
            let driver = s.spawn(move || {
                // The device is polling once it completed the first request.
                let deadline = Instant::now() + Duration::from_secs(10);
                let used_idx = GuestAddress(used + 2);
                while mem.load::<u16>(used_idx, Ordering::Acquire).unwrap() != 1 {
                    assert!(
                        Instant::now() < deadline,
                        "the first request was never used"
                    );
                    std::thread::yield_now();
                }
                mem.store(2u16, avail_idx, Ordering::Release).unwrap();
                // As a driver does: publish, full fence, then read whether to notify.
                std::sync::atomic::fence(Ordering::SeqCst);
                driver_must_notify(mem, used, size, event_idx)
            });
            blk.process_queue(0, &mut NoEvents).unwrap();
            driver.join().unwrap()
        });

        assert!(
            !must_notify,
            "event_idx={event_idx}: notifications were not suppressed while polling"
        );
        // Served by the same call that served the first request: no notification needed.
        assert_eq!(vq.used_idx(), 2, "event_idx={event_idx}");
        assert_eq!(vq.used_len_of(first), Some(21));
        assert_eq!(vq.used_len_of(second), Some(21));
        assert_eq!((status_of(mem, 0), status_of(mem, 1)), (OK, OK));
        assert_eq!(&read_mem(mem, DATA + 0x100, 6), b"polled");
        // The window ended with notifications enabled again: nothing can be lost.
        if !event_idx {
            assert_eq!(used_flags(mem, vq), 0);
        }
    }
}

/// With `poll=0` (and after a window ran out) the device returns with notifications enabled:
/// a request published afterwards waits for the driver's notification, as before polling.
#[test]
fn without_new_work_the_device_returns_with_notifications_enabled() {
    for poll_us in [0, 20] {
        let mem = memory();
        let image = TempImage::new(1 << 20, 0);
        let (mut blk, mut vqs, _irq) = activated(&mem, &image, opts(poll_us), DRIVER, QUEUE_SIZE);
        let vq = &mut vqs[0];
        request(vq, &mem, 0, GET_ID, 0, &[(DATA, 20, F_WRITE)]);
        blk.process_queue(0, &mut NoEvents).unwrap();
        assert_eq!(vq.used_idx(), 1, "poll={poll_us}");
        assert_eq!(
            used_flags(&mem, vq),
            0,
            "poll={poll_us}: notifications stay disabled"
        );

        // Published after the call returned: the driver sees it must notify.
        let second = stage_second_request(vq, &mem);
        vq.mock.avail().idx().store(2);
        assert!(driver_must_notify(&mem, vq.used_addr(), vq.size, false));
        assert_eq!(vq.used_idx(), 1);
        blk.process_queue(0, &mut NoEvents).unwrap(); // the notification
        assert_eq!(vq.used_len_of(second), Some(21), "poll={poll_us}");
        assert_eq!(status_of(&mem, 1), OK);
    }
}

#[test]
fn the_window_is_bounded() {
    let image = TempImage::new(1 << 20, 0);
    assert!(Blk::new(image.open(true), opts(MAX_POLL_US)).is_ok());
    assert!(matches!(
        Blk::new(image.open(true), opts(MAX_POLL_US + 1)),
        Err(BlkError::PollWindow(1001))
    ));
}

/// `VIRTQ_AVAIL_F_NO_INTERRUPT` is honoured without `EVENT_IDX` and ignored with it.
#[test]
fn a_driver_that_polls_the_used_ring_gets_no_interrupts() {
    for (event_idx, no_interrupt, interrupts) in
        [(false, true, 0), (false, false, 1), (true, true, 1)]
    {
        let features = DRIVER
            | if event_idx {
                VIRTIO_F_RING_EVENT_IDX
            } else {
                0
            };
        let mem = memory();
        let image = TempImage::new(1 << 20, 0);
        let (mut blk, mut vqs, irq) = activated(&mem, &image, opts(0), features, QUEUE_SIZE);
        let vq = &mut vqs[0];
        // avail.flags, the ring's first field.
        mem.write_obj(u16::from(no_interrupt), vq.mock.avail_addr())
            .unwrap();
        let head = request(vq, &mem, 0, GET_ID, 0, &[(DATA, 20, F_WRITE)]);
        blk.process_queue(0, &mut NoEvents).unwrap();
        assert_eq!(vq.used_len_of(head), Some(21));
        assert_eq!(
            irq.used.load(Ordering::SeqCst),
            interrupts,
            "event_idx={event_idx} no_interrupt={no_interrupt}"
        );
    }
}

/// The requests of one batch are used together and cost the driver one interrupt: GET_IDs
/// (completed while popping) and adjacent reads (merged into one host read, completed together),
/// each batch served in one `process_queue` call. Before, each used chain was its own interrupt.
#[test]
fn a_batch_costs_the_driver_one_interrupt() {
    use crate::blk::req_type::IN;
    let mem = memory();
    let image = TempImage::new(1 << 20, 0x33);
    let options = BlkOptions {
        merge: true,
        ..opts(0)
    };
    // io_uring: the synchronous engine serves one request per batch.
    let mut blk = Blk::new(image.open(true), options).unwrap();
    blk.prepare_engine().unwrap();
    let (mut blk, mut vqs, irq) = activate(blk, &mem, DRIVER, 1, QUEUE_SIZE);
    let vq = &mut vqs[0];
    for n in 0..5 {
        request(vq, &mem, n, GET_ID, 0, &[(DATA + 0x1000 * n, 20, F_WRITE)]);
    }
    blk.process_queue(0, &mut NoEvents).unwrap();
    assert_eq!(vq.used_idx(), 5);
    assert_eq!(irq.used.load(Ordering::SeqCst), 1, "five GET_IDs");

    for n in 0..5 {
        request(vq, &mem, n, IN, n, &[(DATA + 0x1000 * n, 512, F_WRITE)]);
    }
    blk.process_queue(0, &mut NoEvents).unwrap();
    assert_eq!(vq.used_idx(), 10);
    assert!((0..5).all(|n| status_of(&mem, n) == OK));
    assert_eq!(
        read_mem(&mem, DATA + 0x4000, 512),
        image.read(4 * 512, 512),
        "the last read's data"
    );
    assert_eq!(irq.used.load(Ordering::SeqCst), 2, "five merged reads");
}
