//! virtio-blk end to end against the mock driver: data, flush, id, errors, discard, queues.

use std::sync::atomic::Ordering;

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::blk::config::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_SIZE_MAX,
};
use crate::blk::req_type::{DISCARD, FLUSH, GET_ID, IN, OUT, WRITE_ZEROES};
use crate::blk::status::{IOERR, OK, UNSUPP};
use crate::blk::{BlkError, EngineKind};
use crate::{DeviceError, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_RING_INDIRECT_DESC, VIRTIO_ID_BLOCK};

/// 1 MiB image: 2048 sectors.
const IMAGE_LEN: u64 = 1 << 20;
const SECTORS: u64 = IMAGE_LEN / 512;

fn opts() -> BlkOptions {
    BlkOptions {
        id: "svmm-disk-0".into(),
        ..BlkOptions::default()
    }
}

#[test]
fn describes_itself() {
    let image = TempImage::new(IMAGE_LEN, 0);
    let file = image.open(true);
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    let blk = Blk::new(file, opts()).unwrap();
    assert_eq!(blk.device_type(), VIRTIO_ID_BLOCK);
    assert_eq!((blk.num_queues(), blk.max_queue_size()), (1, 256));
    let f = blk.features();
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_F_RING_INDIRECT_DESC,
        VIRTIO_F_RING_EVENT_IDX,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_SIZE_MAX,
        VIRTIO_BLK_F_MQ,
        VIRTIO_BLK_F_DISCARD,
        VIRTIO_BLK_F_WRITE_ZEROES,
    ] {
        assert_ne!(f & bit, 0, "{bit:#x}");
    }
    assert_eq!(f & VIRTIO_BLK_F_RO, 0);
    let c = blk.config();
    assert_eq!(c.len(), 60);
    let u32_at = |o: usize| u32::from_le_bytes(c[o..o + 4].try_into().unwrap());
    assert_eq!(u64::from_le_bytes(c[..8].try_into().unwrap()), SECTORS);
    assert_eq!((u32_at(8), u32_at(12), u32_at(20)), (65536, 126, 512));
    assert_eq!(u16::from_le_bytes([c[34], c[35]]), 1);
    assert_eq!((u32_at(36), u32_at(40), u32_at(44)), (1 << 22, 16, 1));
    assert_eq!((u32_at(48), u32_at(52), c[56]), (1 << 22, 16, 1));
    assert_eq!(blk.held_fds(), vec![fd]);
    assert_eq!(blk.engine_kind(), EngineKind::Sync);
    // engine=sync: preparing makes no ring.
    let mut sync = Blk::new(
        image.open(true),
        BlkOptions {
            engine: EngineKind::Sync,
            ..opts()
        },
    )
    .unwrap();
    assert_eq!(sync.prepare_engine().unwrap(), EngineKind::Sync);
    assert_eq!(
        (sync.engine_kind(), sync.held_fds().len()),
        (EngineKind::Sync, 1)
    );

    let ro = Blk::new(
        image.open(false),
        BlkOptions {
            read_only: true,
            queues: 4,
            ..opts()
        },
    )
    .unwrap();
    assert_ne!(ro.features() & VIRTIO_BLK_F_RO, 0);
    assert_eq!(
        ro.features() & (VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES),
        0
    );
    assert_eq!(ro.num_queues(), 4);
    assert_eq!(u16::from_le_bytes([ro.config()[34], ro.config()[35]]), 4);
}

#[test]
fn bad_images_and_options_are_typed_errors() {
    let odd = TempImage::new(1000, 0);
    assert!(matches!(
        Blk::new(odd.open(true), opts()),
        Err(BlkError::SizeNotSectorMultiple(1000))
    ));
    let dir = std::fs::File::open(std::env::temp_dir()).unwrap();
    assert!(matches!(Blk::new(dir, opts()), Err(BlkError::NotAnImage)));
    let image = TempImage::new(IMAGE_LEN, 0);
    assert!(matches!(
        Blk::new(image.open(false), opts()),
        Err(BlkError::OpenedReadOnly)
    ));
    let long = BlkOptions {
        id: "x".repeat(21),
        ..opts()
    };
    assert!(matches!(
        Blk::new(image.open(true), long),
        Err(BlkError::IdTooLong(_))
    ));
    for queues in [0, 17] {
        let o = BlkOptions { queues, ..opts() };
        assert!(matches!(
            Blk::new(image.open(true), o),
            Err(BlkError::QueueCount(q)) if q == queues
        ));
    }
    // An empty image is a valid (zero-sector) disk.
    let empty = TempImage::new(0, 0);
    assert_eq!(Blk::new(empty.open(true), opts()).unwrap().capacity(), 0);
}

/// Writes a pattern over three regions (one with a split data buffer), reads it back into
/// other buffers, and checks guest memory and the image file.
fn write_and_read_back(prepare_ring: bool) {
    let mem = memory();
    let image = TempImage::new(IMAGE_LEN, 0x5A);
    let mut blk = Blk::new(image.open(true), opts()).unwrap();
    if prepare_ring {
        assert_eq!(blk.prepare_engine().unwrap(), EngineKind::IoUring);
        assert_eq!(blk.held_fds().len(), 2, "image and ring");
    }
    let (mut blk, mut vqs, irq) = activate(blk, &mem, DRIVER, 1, 64);
    let vq = &mut vqs[0];
    let regions: [(u64, usize); 3] = [(0, 4096), (777, 512), (SECTORS - 16, 8192)];
    for (i, &(sector, len)) in regions.iter().enumerate() {
        let src = DATA + 0x10000 * i as u64;
        mem.write_slice(&pattern(i as u8 + 1, len), GuestAddress(src))
            .unwrap();
        let data: Vec<(u64, u32, u16)> = if len > 4096 {
            // Two descriptors, out of address order.
            let half = len as u64 / 2;
            mem.write_slice(
                &pattern(i as u8 + 1, len)[..half as usize],
                GuestAddress(src + 0x8000),
            )
            .unwrap();
            vec![(src + 0x8000, half as u32, 0), (src + half, half as u32, 0)]
        } else {
            vec![(src, len as u32, 0)]
        };
        request(vq, &mem, i as u64, OUT, sector, &data);
    }
    blk.process_queue(0, &mut NoEvents).unwrap();
    assert_eq!(vq.used_idx(), 3);
    for i in 0..3 {
        assert_eq!(status_of(&mem, i), OK);
        assert_eq!(
            vq.used(i as u16).1,
            1,
            "a write's used length is the status byte"
        );
    }
    for (i, &(sector, len)) in regions.iter().enumerate() {
        assert_eq!(
            image.read(sector * 512, len),
            pattern(i as u8 + 1, len),
            "{i}"
        );
    }
    // Untouched sectors keep their bytes.
    assert_eq!(image.read(8 * 512, 512), vec![0x5A; 512]);

    for (i, &(sector, len)) in regions.iter().enumerate() {
        let dst = DATA + 0x20_0000 + 0x10000 * i as u64;
        request(
            vq,
            &mem,
            10 + i as u64,
            IN,
            sector,
            &[(dst, len as u32, F_WRITE)],
        );
    }
    blk.process_queue(0, &mut NoEvents).unwrap();
    assert_eq!(vq.used_idx(), 6);
    for (i, &(_, len)) in regions.iter().enumerate() {
        assert_eq!(status_of(&mem, 10 + i as u64), OK);
        let dst = DATA + 0x20_0000 + 0x10000 * i as u64;
        assert_eq!(read_mem(&mem, dst, len), pattern(i as u8 + 1, len), "{i}");
        assert_eq!(vq.used(3 + i as u16).1, len as u32 + 1);
    }
    assert!(irq.used.load(Ordering::SeqCst) >= 2);
    let stats = blk.stats().queues[0];
    assert_eq!((stats.requests, stats.errors), (6, 0));
    assert_eq!(stats.bytes, 2 * (4096 + 512 + 8192));
}

#[test]
fn write_and_read_back_sync() {
    write_and_read_back(false);
}

#[test]
fn write_and_read_back_io_uring() {
    write_and_read_back(true);
}

#[test]
fn io_uring_keeps_many_requests_in_flight() {
    let mem = memory();
    let image = TempImage::new(IMAGE_LEN, 0);
    let mut blk = Blk::new(image.open(true), opts()).unwrap();
    blk.prepare_engine().unwrap();
    let (mut blk, mut vqs, _irq) = activate(blk, &mem, DRIVER, 1, 128);
    let vq = &mut vqs[0];
    // 40 writes of 4 KiB, then a flush, then 40 reads of the same sectors.
    for i in 0..40u64 {
        let src = DATA + 0x1000 * i;
        mem.write_slice(&pattern(i as u8, 4096), GuestAddress(src))
            .unwrap();
        request(vq, &mem, i, OUT, i * 8, &[(src, 4096, 0)]);
    }
    request(vq, &mem, 40, FLUSH, 0, &[]);
    blk.process_queue(0, &mut NoEvents).unwrap();
    for i in 0..40u64 {
        let dst = DATA + 0x10_0000 + 0x1000 * i;
        request(vq, &mem, 41 + i, IN, i * 8, &[(dst, 4096, F_WRITE)]);
    }
    blk.process_queue(0, &mut NoEvents).unwrap();
    assert_eq!(vq.used_idx(), 81);
    for i in 0..40u64 {
        assert_eq!(status_of(&mem, 41 + i), OK);
        let dst = DATA + 0x10_0000 + 0x1000 * i;
        assert_eq!(read_mem(&mem, dst, 4096), pattern(i as u8, 4096), "{i}");
    }
    assert_eq!(status_of(&mem, 40), OK);
}

#[test]
fn flush_get_id_and_unsupported() {
    let mem = memory();
    let image = TempImage::new(IMAGE_LEN, 0);
    let (mut blk, mut vqs, _irq) = activated(&mem, &image, opts(), DRIVER, 16);
    let vq = &mut vqs[0];
    let flush = request(vq, &mem, 0, FLUSH, 0, &[]);
    let id20 = request(vq, &mem, 1, GET_ID, 0, &[(DATA, 20, F_WRITE)]);
    mem.write_slice(&[0xEE; 16], GuestAddress(DATA + 0x100))
        .unwrap();
    let id8 = request(vq, &mem, 2, GET_ID, 0, &[(DATA + 0x100, 8, F_WRITE)]);
    let lifetime = request(vq, &mem, 3, 10, 0, &[(DATA + 0x200, 16, F_WRITE)]);
    blk.process_queue(0, &mut NoEvents).unwrap();

    assert_eq!((status_of(&mem, 0), vq.used_len_of(flush)), (OK, Some(1)));
    assert_eq!((status_of(&mem, 1), vq.used_len_of(id20)), (OK, Some(21)));
    let mut want = [0u8; 20];
    want[..11].copy_from_slice(b"svmm-disk-0");
    assert_eq!(read_mem(&mem, DATA, 20), want);
    assert_eq!((status_of(&mem, 2), vq.used_len_of(id8)), (OK, Some(9)));
    assert_eq!(read_mem(&mem, DATA + 0x100, 9), b"svmm-dis\xEE");
    assert_eq!(
        (status_of(&mem, 3), vq.used_len_of(lifetime)),
        (UNSUPP, Some(1))
    );
}

#[test]
fn requests_outside_the_disk_get_ioerr() {
    let mem = memory();
    let image = TempImage::new(IMAGE_LEN, 0x11);
    let (mut blk, mut vqs, _irq) = activated(&mem, &image, opts(), DRIVER, 16);
    let vq = &mut vqs[0];
    mem.write_slice(&[0xCC; 1024], GuestAddress(DATA)).unwrap();
    request(vq, &mem, 0, IN, SECTORS, &[(DATA, 512, F_WRITE)]); // just past the end
    request(vq, &mem, 1, OUT, SECTORS - 1, &[(DATA, 1024, 0)]); // straddles the end
    request(vq, &mem, 2, IN, u64::MAX, &[(DATA, 512, F_WRITE)]); // overflows
    request(vq, &mem, 3, IN, 0, &[(DATA, 100, F_WRITE)]); // not whole sectors
    request(
        vq,
        &mem,
        4,
        IN,
        SECTORS - 1,
        &[(DATA + 0x1000, 512, F_WRITE)],
    ); // last sector: fine
    blk.process_queue(0, &mut NoEvents).unwrap();
    assert_eq!(vq.used_idx(), 5);
    for n in 0..4 {
        assert_eq!(status_of(&mem, n), IOERR, "{n}");
        assert_eq!(vq.used(n as u16).1, 1);
    }
    assert_eq!(status_of(&mem, 4), OK);
    assert_eq!(read_mem(&mem, DATA + 0x1000, 512), vec![0x11; 512]);
    assert_eq!(
        read_mem(&mem, DATA, 512),
        vec![0xCC; 512],
        "failed read wrote nothing"
    );
    assert_eq!(image.read(IMAGE_LEN - 512, 512), vec![0x11; 512]);
    assert_eq!(image.len(), IMAGE_LEN);
    assert_eq!(blk.stats().queues[0].errors, 4);
}

#[test]
fn writes_on_a_read_only_device_get_ioerr() {
    let mem = memory();
    let image = TempImage::new(IMAGE_LEN, 0x22);
    let o = BlkOptions {
        read_only: true,
        ..opts()
    };
    let (mut blk, mut vqs, _irq) =
        activated(&mem, &image, o, VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_RO, 16);
    let vq = &mut vqs[0];
    mem.write_slice(&[0xCC; 512], GuestAddress(DATA)).unwrap();
    request(vq, &mem, 0, OUT, 0, &[(DATA, 512, 0)]);
    request(vq, &mem, 1, IN, 0, &[(DATA + 0x1000, 512, F_WRITE)]);
    // Discard was not offered on a read-only device: UNSUPP.
    mem.write_slice(&[0; 16], GuestAddress(DATA + 0x2000))
        .unwrap();
    request(vq, &mem, 2, DISCARD, 0, &[(DATA + 0x2000, 16, 0)]);
    blk.process_queue(0, &mut NoEvents).unwrap();
    assert_eq!(
        (status_of(&mem, 0), status_of(&mem, 1), status_of(&mem, 2)),
        (IOERR, OK, UNSUPP)
    );
    assert_eq!(image.read(0, 512), vec![0x22; 512]);
    assert_eq!(read_mem(&mem, DATA + 0x1000, 512), vec![0x22; 512]);
}

/// Discard and write-zeroes segments as the driver lays them out.
fn segments(mem: &GuestMemoryMmap, at: u64, segs: &[(u64, u32, u32)]) -> u32 {
    for (i, &(sector, sectors, flags)) in segs.iter().enumerate() {
        let mut rec = [0u8; 16];
        rec[..8].copy_from_slice(&sector.to_le_bytes());
        rec[8..12].copy_from_slice(&sectors.to_le_bytes());
        rec[12..].copy_from_slice(&flags.to_le_bytes());
        mem.write_slice(&rec, GuestAddress(at + 16 * i as u64))
            .unwrap();
    }
    16 * segs.len() as u32
}

fn discard_and_write_zeroes(prepare_ring: bool, features: u64) {
    let mem = memory();
    let image = TempImage::new(IMAGE_LEN, 0xAB);
    let mut blk = Blk::new(image.open(true), opts()).unwrap();
    if prepare_ring {
        blk.prepare_engine().unwrap();
    }
    let (mut blk, mut vqs, _irq) = activate(blk, &mem, features, 1, 32);
    let vq = &mut vqs[0];
    let len = segments(&mem, DATA, &[(8, 8, 0), (100, 1, 0)]);
    request(vq, &mem, 0, DISCARD, 0, &[(DATA, len, 0)]);
    let len = segments(&mem, DATA + 0x100, &[(200, 16, 0)]);
    request(vq, &mem, 1, WRITE_ZEROES, 0, &[(DATA + 0x100, len, 0)]);
    let len = segments(&mem, DATA + 0x200, &[(300, 24, 1), (400, 8, 1)]);
    request(vq, &mem, 2, WRITE_ZEROES, 0, &[(DATA + 0x200, len, 0)]);
    // Bad ones: unmap on discard, reserved flags, past the end, too long, no segments.
    let len = segments(&mem, DATA + 0x300, &[(0, 8, 1)]);
    request(vq, &mem, 3, DISCARD, 0, &[(DATA + 0x300, len, 0)]);
    let len = segments(&mem, DATA + 0x400, &[(0, 8, 2)]);
    request(vq, &mem, 4, WRITE_ZEROES, 0, &[(DATA + 0x400, len, 0)]);
    let len = segments(&mem, DATA + 0x500, &[(SECTORS - 4, 8, 0)]);
    request(vq, &mem, 5, WRITE_ZEROES, 0, &[(DATA + 0x500, len, 0)]);
    let len = segments(&mem, DATA + 0x600, &[(0, (1 << 22) + 1, 0)]);
    request(vq, &mem, 6, DISCARD, 0, &[(DATA + 0x600, len, 0)]);
    request(vq, &mem, 7, DISCARD, 0, &[]);
    blk.process_queue(0, &mut NoEvents).unwrap();
    assert_eq!(vq.used_idx(), 8);
    let got: Vec<u8> = (0..8).map(|n| status_of(&mem, n)).collect();
    eprintln!(
        "ring={prepare_ring} features={features:#x} used={:?}",
        (0..8).map(|i| vq.used(i)).collect::<Vec<_>>()
    );
    assert_eq!(got, [OK, OK, OK, UNSUPP, UNSUPP, IOERR, IOERR, IOERR]);
    for (sector, sectors) in [(8u64, 8usize), (100, 1), (200, 16), (300, 24), (400, 8)] {
        let bytes = image.read(sector * 512, sectors * 512);
        assert!(bytes.iter().all(|&b| b == 0), "sector {sector}");
    }
    // Neighbours untouched, size unchanged.
    for sector in [7u64, 16, 99, 101, 199, 216, 299, 324, 399, 408] {
        assert_eq!(
            image.read(sector * 512, 512),
            vec![0xAB; 512],
            "sector {sector}"
        );
    }
    assert_eq!(image.len(), IMAGE_LEN);
}

#[test]
fn discard_and_write_zeroes_read_back_zeroes() {
    discard_and_write_zeroes(false, DRIVER);
    discard_and_write_zeroes(true, DRIVER);
    // Without FLUSH each is followed by fdatasync; same results.
    discard_and_write_zeroes(true, DRIVER & !VIRTIO_BLK_F_FLUSH);
}

#[test]
fn several_queues_are_served_independently() {
    let mem = memory();
    let image = TempImage::new(IMAGE_LEN, 0);
    let o = BlkOptions {
        queues: 4,
        ..opts()
    };
    let mut blk = Blk::new(image.open(true), o).unwrap();
    blk.prepare_engine().unwrap();
    let (mut blk, mut vqs, irq) = activate(blk, &mem, DRIVER | VIRTIO_BLK_F_MQ, 4, 16);
    for (q, vq) in vqs.iter_mut().enumerate() {
        let q = q as u64;
        let src = DATA + 0x1_0000 * q;
        mem.write_slice(&pattern(q as u8 + 7, 2048), GuestAddress(src))
            .unwrap();
        request(vq, &mem, 10 * q, OUT, 64 * q, &[(src, 2048, 0)]);
    }
    for q in [2, 0, 3, 1] {
        blk.process_queue(q, &mut NoEvents).unwrap();
    }
    // Reads only after the writes completed: requests in flight together may finish in any
    // order (a read racing a write of the same sectors is the driver's business).
    for (q, vq) in vqs.iter_mut().enumerate() {
        let q = q as u64;
        let dst = DATA + 0x1_0000 * q + 0x8000;
        request(vq, &mem, 10 * q + 1, IN, 64 * q, &[(dst, 2048, F_WRITE)]);
    }
    for q in [1, 3, 0, 2] {
        blk.process_queue(q, &mut NoEvents).unwrap();
    }
    for (q, vq) in vqs.iter().enumerate() {
        let q = q as u64;
        assert_eq!(vq.used_idx(), 2, "queue {q}");
        assert_eq!(
            (status_of(&mem, 10 * q), status_of(&mem, 10 * q + 1)),
            (OK, OK)
        );
        let src = DATA + 0x1_0000 * q;
        assert_eq!(
            read_mem(&mem, src + 0x8000, 2048),
            pattern(q as u8 + 7, 2048)
        );
        assert_eq!(image.read(64 * q * 512, 2048), pattern(q as u8 + 7, 2048));
    }
    assert_eq!(irq.used.load(Ordering::SeqCst), 8);
    assert_eq!(blk.stats().queues.len(), 4);
    assert!(matches!(
        blk.process_queue(4, &mut NoEvents),
        Err(DeviceError::UnknownQueue(4))
    ));
}

#[test]
fn queues_the_driver_left_unset_are_ignored() {
    let mem = memory();
    let image = TempImage::new(IMAGE_LEN, 0);
    let o = BlkOptions {
        queues: 2,
        ..opts()
    };
    let blk = Blk::new(image.open(true), o).unwrap();
    let mut blk = blk;
    let vq = Vq::new(&mem, 0, 16);
    let irq = Arc::new(Recorder::default());
    let unset = Queue::new(256).unwrap();
    blk.activate(DRIVER, mem.clone(), vec![vq.queue(), unset], irq)
        .unwrap();
    blk.process_queue(1, &mut NoEvents).unwrap();
    assert_eq!(blk.reset().map(|q| q.len()), Some(2));
}

#[test]
fn malformed_chains_are_answered_and_the_device_keeps_serving() {
    let mem = memory();
    let image = TempImage::new(IMAGE_LEN, 0x33);
    let (mut blk, mut vqs, _irq) = activated(&mem, &image, opts(), DRIVER, 32);
    let vq = &mut vqs[0];
    let (hdr, st) = slot(0);
    header(&mem, hdr, IN, 0);
    // No status: the last descriptor is device-readable -> used length 0.
    let a = vq.push(&[(hdr, 16, 0), (DATA, 512, 0)]);
    // Header too short -> IOERR through the status byte.
    mem.write_obj(0xFFu8, GuestAddress(st)).unwrap();
    let b = vq.push(&[(hdr, 8, 0), (st, 1, F_WRITE)]);
    // A read whose data buffer leaves guest memory -> IOERR, nothing written.
    let (_, st2) = slot(2);
    let c = vq.push(&[
        (hdr, 16, 0),
        (MEM_SIZE as u64 - 256, 512, F_WRITE),
        (st2, 1, F_WRITE),
    ]);
    // Readable descriptor after a writable one.
    let (_, st3) = slot(3);
    let d = vq.push(&[
        (hdr, 16, 0),
        (DATA, 512, F_WRITE),
        (DATA + 512, 16, 0),
        (st3, 1, F_WRITE),
    ]);
    // Indirect descriptor without the feature: no status can be trusted -> used length 0.
    let e = vq.push(&[(0x8000, 48, F_INDIRECT)]);
    // And a good read at the end.
    let good = request(vq, &mem, 5, IN, 1, &[(DATA + 0x1000, 512, F_WRITE)]);
    blk.process_queue(0, &mut NoEvents).unwrap();
    assert_eq!(vq.used_len_of(a), Some(0));
    assert_eq!((vq.used_len_of(b), status_of(&mem, 0)), (Some(1), IOERR));
    assert_eq!((vq.used_len_of(c), status_of(&mem, 2)), (Some(1), IOERR));
    assert_eq!((vq.used_len_of(d), status_of(&mem, 3)), (Some(1), IOERR));
    assert_eq!(vq.used_len_of(e), Some(0));
    assert_eq!((vq.used_len_of(good), status_of(&mem, 5)), (Some(513), OK));
    assert_eq!(read_mem(&mem, DATA + 0x1000, 512), vec![0x33; 512]);
    assert_eq!(blk.stats().queues[0].errors, 5);
}

#[test]
fn indirect_chains_are_served() {
    let mem = memory();
    let image = TempImage::new(IMAGE_LEN, 0x44);
    let features = DRIVER | VIRTIO_F_RING_INDIRECT_DESC;
    let (mut blk, mut vqs, _irq) = activated(&mem, &image, opts(), features, 16);
    let vq = &mut vqs[0];
    let (hdr, st) = slot(0);
    header(&mem, hdr, IN, 3);
    let table = 0x8_0000u64;
    let entries = [
        (hdr, 16, F_NEXT),
        (DATA, 1024, F_WRITE | F_NEXT),
        (st, 1, F_WRITE),
    ];
    for (i, &(addr, len, flags)) in entries.iter().enumerate() {
        let d = virtio_queue::desc::RawDescriptor::from(
            virtio_queue::desc::split::Descriptor::new(addr, len, flags, i as u16 + 1),
        );
        mem.write_obj(d, GuestAddress(table + 16 * i as u64))
            .unwrap();
    }
    let head = vq.push(&[(table, 48, F_INDIRECT)]);
    blk.process_queue(0, &mut NoEvents).unwrap();
    assert_eq!((vq.used_len_of(head), status_of(&mem, 0)), (Some(1025), OK));
    assert_eq!(read_mem(&mem, DATA, 1024), vec![0x44; 1024]);
}

#[test]
fn direct_io_bounces_misaligned_buffers() {
    let mem = memory();
    let image = TempImage::new(IMAGE_LEN, 0);
    let o = BlkOptions {
        direct: true,
        ..opts()
    };
    let mut blk = Blk::new(image.open(true), o).unwrap();
    let bs = u64::from(blk.blk_size());
    assert!(bs >= 512 && bs.is_power_of_two());
    blk.prepare_engine().unwrap();
    let (mut blk, mut vqs, _irq) = activate(blk, &mem, DRIVER, 1, 16);
    let vq = &mut vqs[0];
    let len = 2 * bs as usize;
    // Aligned buffer, and one 3 bytes off any alignment, split in two descriptors.
    mem.write_slice(&pattern(1, len), GuestAddress(DATA))
        .unwrap();
    let odd = DATA + 0x10_0003;
    mem.write_slice(&pattern(2, len), GuestAddress(odd))
        .unwrap();
    let half = (len / 2) as u32;
    request(vq, &mem, 0, OUT, 0, &[(DATA, len as u32, 0)]);
    request(
        vq,
        &mem,
        1,
        OUT,
        2 * bs / 512,
        &[(odd, half, 0), (odd + u64::from(half), half, 0)],
    );
    // Requests in flight together are unordered (as in virtio): the writes complete before the
    // reads of the same blocks are made available.
    blk.process_queue(0, &mut NoEvents).unwrap();
    request(
        vq,
        &mem,
        2,
        IN,
        0,
        &[(DATA + 0x20_0001, len as u32, F_WRITE)],
    );
    request(
        vq,
        &mem,
        3,
        IN,
        2 * bs / 512,
        &[(DATA + 0x28_0000, len as u32, F_WRITE)],
    );
    blk.process_queue(0, &mut NoEvents).unwrap();
    let got: Vec<u8> = (0..4).map(|n| status_of(&mem, n)).collect();
    assert_eq!(got, [OK; 4]);
    assert_eq!(image.read(0, len), pattern(1, len));
    assert_eq!(image.read(2 * bs, len), pattern(2, len));
    assert_eq!(read_mem(&mem, DATA + 0x20_0001, len), pattern(1, len));
    assert_eq!(read_mem(&mem, DATA + 0x28_0000, len), pattern(2, len));
    if bs > 512 {
        // A request that is not whole direct-I/O blocks cannot be done.
        request(vq, &mem, 4, IN, 1, &[(DATA, 512, F_WRITE)]);
        blk.process_queue(0, &mut NoEvents).unwrap();
        assert_eq!(status_of(&mem, 4), IOERR);
    }
}

#[test]
fn head_index_outside_the_queue_breaks_the_device_until_reset() {
    let mem = memory();
    let image = TempImage::new(IMAGE_LEN, 0);
    let (mut blk, vqs, irq) = activated(&mem, &image, opts(), DRIVER, 16);
    vqs[0].make_available(16 + 3);
    let err = blk.process_queue(0, &mut NoEvents).unwrap_err();
    assert!(matches!(
        err,
        DeviceError::BadHeadIndex { head: 19, size: 16 }
    ));
    blk.process_queue(0, &mut NoEvents).unwrap(); // broken: ignored
    assert_eq!(irq.used.load(Ordering::SeqCst), 0);
    assert_eq!(blk.reset().map(|q| q.len()), Some(1));
    assert!(blk.reset().is_none());
}

#[test]
fn activation_is_checked() {
    let mem = memory();
    let image = TempImage::new(IMAGE_LEN, 0);
    let mut blk = Blk::new(image.open(true), opts()).unwrap();
    let irq = Arc::new(Recorder::default());
    let vq = Vq::new(&mem, 0, 16);
    let err = blk
        .activate(1 << 40, mem.clone(), vec![vq.queue()], irq.clone())
        .unwrap_err();
    assert!(matches!(err, DeviceError::UnsupportedFeatures(_)));
    let err = blk
        .activate(
            DRIVER,
            mem.clone(),
            vec![vq.queue(), vq.queue()],
            irq.clone(),
        )
        .unwrap_err();
    assert!(matches!(
        err,
        DeviceError::QueueCount {
            expected: 1,
            got: 2
        }
    ));
    let not_ready = Queue::new(256).unwrap();
    let err = blk
        .activate(DRIVER, mem.clone(), vec![not_ready], irq.clone())
        .unwrap_err();
    assert!(matches!(err, DeviceError::InvalidQueue { index: 0 }));
    blk.activate(DRIVER, mem.clone(), vec![vq.queue()], irq.clone())
        .unwrap();
    assert!(matches!(
        blk.activate(DRIVER, mem.clone(), vec![vq.queue()], irq),
        Err(DeviceError::AlreadyActive)
    ));
    assert!(blk.prepare_engine().is_err(), "no engine swap while active");
}
