//! The copy-in parser on its own: layouts the spec allows, and chains it must refuse.

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::blk::req_type::{DISCARD, FLUSH, IN, OUT, WRITE_ZEROES};
use crate::blk::request::{
    parse, ChainSource, DiskLimits, Range, Rejected, Request, RequestError, Segment, Validated,
};
use crate::blk::status::{IOERR, UNSUPP};

const DISK: DiskLimits = DiskLimits {
    capacity: 2048,
    read_only: false,
    discard: true,
    write_zeroes: true,
};

fn source(vq: &Vq<'_>, indirect: bool) -> ChainSource {
    ChainSource {
        desc_table: vq.mock.desc_table_addr(),
        queue_size: vq.size,
        indirect,
    }
}

fn seg(addr: u64, len: u32) -> Segment {
    Segment {
        addr: GuestAddress(addr),
        len,
    }
}

fn parse_head(vq: &Vq<'_>, mem: &GuestMemoryMmap, head: u16) -> Result<Validated, Rejected> {
    parse(mem, &source(vq, true), head, &DISK)
}

#[test]
fn header_data_and_status_may_share_and_split_descriptors() {
    let mem = memory();
    let mut vq = Vq::new(&mem, 0, 16);
    // Header split 10 + 6, the second piece followed by 512 bytes of write data in the same
    // descriptor; status in the same descriptor as the tail of a read's data.
    let hdr = HDR;
    header(&mem, hdr, OUT, 7);
    mem.write_slice(&read_mem(&mem, hdr + 10, 6), GuestAddress(DATA))
        .unwrap();
    let head = vq.push(&[(hdr, 10, 0), (DATA, 6 + 512, 0), (STATUS, 1, F_WRITE)]);
    let v = parse_head(&vq, &mem, head).unwrap();
    assert_eq!(
        v.request,
        Request::Write {
            sector: 7,
            bufs: vec![seg(DATA + 6, 512)]
        }
    );
    assert_eq!(v.status, GuestAddress(STATUS));

    header(&mem, hdr + 64, IN, 9);
    let head = vq.push(&[(hdr + 64, 16, 0), (DATA + 0x1000, 1024 + 1, F_WRITE)]);
    let v = parse_head(&vq, &mem, head).unwrap();
    assert_eq!(
        v.request,
        Request::Read {
            sector: 9,
            bufs: vec![seg(DATA + 0x1000, 1024)]
        }
    );
    assert_eq!(v.status, GuestAddress(DATA + 0x1000 + 1024));
}

#[test]
fn discard_segments_are_copied_and_checked() {
    let mem = memory();
    let mut vq = Vq::new(&mem, 0, 16);
    header(&mem, HDR, DISCARD, 0);
    let mut recs = Vec::new();
    for (sector, n, flags) in [(0u64, 8u32, 0u32), (100, 0, 0), (2040, 8, 0)] {
        recs.extend_from_slice(&sector.to_le_bytes());
        recs.extend_from_slice(&n.to_le_bytes());
        recs.extend_from_slice(&flags.to_le_bytes());
    }
    mem.write_slice(&recs, GuestAddress(DATA)).unwrap();
    // Segments split across two descriptors mid-record.
    let head = vq.push(&[
        (HDR, 16, 0),
        (DATA, 20, 0),
        (DATA + 20, 28, 0),
        (STATUS, 1, F_WRITE),
    ]);
    let v = parse_head(&vq, &mem, head).unwrap();
    let r = |sector, sectors| Range { sector, sectors };
    assert_eq!(
        v.request,
        Request::Discard {
            ranges: vec![r(0, 8), r(2040, 8)]
        }
    );
    // Write zeroes with the unmap flag on only some segments: no unmap.
    header(&mem, HDR + 32, WRITE_ZEROES, 0);
    let mut recs = Vec::new();
    for flags in [1u32, 0] {
        recs.extend_from_slice(&5u64.to_le_bytes());
        recs.extend_from_slice(&1u32.to_le_bytes());
        recs.extend_from_slice(&flags.to_le_bytes());
    }
    mem.write_slice(&recs, GuestAddress(DATA + 0x100)).unwrap();
    let head = vq.push(&[
        (HDR + 32, 16, 0),
        (DATA + 0x100, 32, 0),
        (STATUS + 1, 1, F_WRITE),
    ]);
    let v = parse_head(&vq, &mem, head).unwrap();
    assert!(matches!(
        v.request,
        Request::WriteZeroes { unmap: false, .. }
    ));
    // 17 segments: too many.
    header(&mem, HDR + 64, DISCARD, 0);
    let head = vq.push(&[
        (HDR + 64, 16, 0),
        (DATA + 0x1000, 17 * 16, 0),
        (STATUS + 2, 1, F_WRITE),
    ]);
    let e = parse_head(&vq, &mem, head).unwrap_err();
    assert_eq!(e.error, RequestError::BadSegments(272));
    assert_eq!(e.status_byte(), IOERR);
}

/// A descriptor as stored: (index, addr, len, flags, next).
type StoredDesc = (u16, u64, u32, u16, u16);

/// Builds chains the parser must refuse, with the error and whether a status was found.
#[test]
fn refused_chains() {
    let mem = memory();
    header(&mem, HDR, IN, 0);
    header(&mem, HDR + 32, FLUSH, 0);
    let cases: Vec<(&str, Vec<StoredDesc>, RequestError, bool)> = vec![
        (
            "loop",
            vec![(0, HDR, 16, F_NEXT, 1), (1, DATA, 512, F_WRITE | F_NEXT, 0)],
            RequestError::Loop(0),
            false,
        ),
        (
            "next out of range",
            vec![(0, HDR, 16, F_NEXT, 99)],
            RequestError::IndexOutOfRange { index: 99, len: 16 },
            false,
        ),
        (
            "header inside the descriptor table",
            vec![(0, 0, 16, F_NEXT, 1), (1, STATUS, 1, F_WRITE, 0)],
            RequestError::MetadataOverlap(0),
            true,
        ),
        (
            "status not writable",
            vec![(0, HDR, 16, F_NEXT, 1), (1, STATUS, 1, 0, 0)],
            RequestError::NoStatus,
            false,
        ),
        (
            "empty status",
            vec![(0, HDR, 16, F_NEXT, 1), (1, STATUS, 0, F_WRITE, 0)],
            RequestError::NoStatus,
            false,
        ),
        (
            "status outside memory",
            vec![(0, HDR, 16, F_NEXT, 1), (1, MEM_SIZE as u64, 1, F_WRITE, 0)],
            RequestError::NoStatus,
            false,
        ),
        (
            "wrapping buffer",
            vec![
                (0, HDR, 16, F_NEXT, 1),
                (1, u64::MAX - 4, 512, F_WRITE | F_NEXT, 2),
                (2, STATUS, 1, F_WRITE, 0),
            ],
            RequestError::BufferOutside {
                addr: u64::MAX - 4,
                len: 512,
            },
            true,
        ),
        (
            "buffer past the end of memory",
            vec![
                (0, HDR, 16, F_NEXT, 1),
                (1, DATA, 0x80_0000, F_WRITE | F_NEXT, 2),
                (2, STATUS, 1, F_WRITE, 0),
            ],
            RequestError::BufferOutside {
                addr: DATA,
                len: 0x80_0000,
            },
            true,
        ),
        (
            "more data than any request (one buffer named three times)",
            vec![
                (0, HDR, 16, F_NEXT, 1),
                (1, DATA, 0x30_0000, F_NEXT, 2),
                (2, DATA, 0x30_0000, F_NEXT, 3),
                (3, DATA, 0x30_0000, F_NEXT, 4),
                (4, STATUS, 1, F_WRITE, 0),
            ],
            RequestError::TooMuchData,
            true,
        ),
        (
            "nested indirect",
            vec![(0, 0x9000, 16, F_INDIRECT, 0)],
            RequestError::BadIndirect,
            false,
        ),
        (
            "indirect with next",
            vec![(0, 0x8000, 16, F_INDIRECT | F_NEXT, 1)],
            RequestError::BadIndirect,
            false,
        ),
        (
            "ragged indirect table",
            vec![(0, 0x8000, 24, F_INDIRECT, 0)],
            RequestError::BadIndirectTable(24),
            false,
        ),
        (
            "indirect table longer than the queue",
            vec![(0, 0x8000, 17 * 16, F_INDIRECT, 0)],
            RequestError::BadIndirectTable(272),
            false,
        ),
        (
            "read with out data",
            vec![
                (0, HDR, 16, F_NEXT, 1),
                (1, DATA, 512, F_NEXT, 2),
                (2, STATUS, 1, F_WRITE, 0),
            ],
            RequestError::UnexpectedData(IN),
            true,
        ),
    ];
    for (name, descs, want, has_status) in cases {
        let vq = Vq::new(&mem, 0, 16);
        for &(i, addr, len, flags, next) in &descs {
            vq.store(i, addr, len, flags, next);
        }
        // The nested-indirect case: an indirect table whose entry is indirect again.
        let d = virtio_queue::desc::RawDescriptor::from(
            virtio_queue::desc::split::Descriptor::new(0x8000, 16, F_INDIRECT, 0),
        );
        mem.write_obj(d, GuestAddress(0x9000)).unwrap();
        let got = parse_head(&vq, &mem, 0).unwrap_err();
        assert_eq!(got.error, want, "{name}");
        assert_eq!(got.status.is_some(), has_status, "{name}");
    }
}

#[test]
fn unsupp_for_commands_not_negotiated_and_unknown_types() {
    let mem = memory();
    let mut vq = Vq::new(&mem, 0, 16);
    header(&mem, HDR, DISCARD, 0);
    mem.write_slice(&[0u8; 16], GuestAddress(DATA)).unwrap();
    let head = vq.push(&[(HDR, 16, 0), (DATA, 16, 0), (STATUS, 1, F_WRITE)]);
    let no_discard = DiskLimits {
        discard: false,
        ..DISK
    };
    let e = parse(&mem, &source(&vq, false), head, &no_discard).unwrap_err();
    assert_eq!(e.error, RequestError::NotNegotiated { kind: DISCARD });
    assert_eq!(e.status_byte(), UNSUPP);
    header(&mem, HDR + 32, 0xDEAD, 0);
    let head = vq.push(&[(HDR + 32, 16, 0), (STATUS + 1, 1, F_WRITE)]);
    let v = parse_head(&vq, &mem, head).unwrap();
    assert_eq!(v.request, Request::Unsupported { kind: 0xDEAD });
    // Indirect without the feature.
    let head = vq.push(&[(0x8000, 16, F_INDIRECT)]);
    let e = parse(&mem, &source(&vq, false), head, &DISK).unwrap_err();
    assert_eq!(e.error, RequestError::IndirectNotNegotiated);
}

#[test]
fn chain_length_is_bounded_by_the_queue_size() {
    let mem = memory();
    let vq = Vq::new(&mem, 0, 8);
    header(&mem, HDR, IN, 0);
    vq.store(0, HDR, 16, F_NEXT, 1);
    for i in 1..8 {
        vq.store(i, DATA + 512 * u64::from(i), 512, F_WRITE | F_NEXT, i + 1);
    }
    // Index 8 is outside an 8-entry table; an indirect table may hold up to 8 entries, and
    // the indirect descriptor itself counts: 1 + 8 > 8.
    let e = parse_head(&vq, &mem, 0).unwrap_err();
    assert_eq!(e.error, RequestError::IndexOutOfRange { index: 8, len: 8 });
    let table = 0x8000u64;
    for i in 0..8u16 {
        let flags = if i < 7 { F_WRITE | F_NEXT } else { F_WRITE };
        let d =
            virtio_queue::desc::RawDescriptor::from(virtio_queue::desc::split::Descriptor::new(
                DATA + 512 * u64::from(i),
                512,
                flags,
                i + 1,
            ));
        mem.write_obj(d, GuestAddress(table + 16 * u64::from(i)))
            .unwrap();
    }
    vq.store(0, table, 8 * 16, F_INDIRECT, 0);
    let e = parse_head(&vq, &mem, 0).unwrap_err();
    assert_eq!(e.error, RequestError::TooLong(8));
}
