//! The copy-in parser on its own: layouts the spec allows, and requests it must refuse.

use fuse_abi::linux as abi;
use vm_memory::{Bytes, GuestAddress};
use zerocopy::IntoBytes;

use super::*;
use crate::blk::tests::memory;
use crate::chain::{ChainError, ChainSource};
use crate::fs::request::{parse, Name, Op, ParseError, Rejected};

fn header(len: usize, opcode: u32, nodeid: u64) -> Vec<u8> {
    abi::fuse_in_header {
        len: len as u32,
        opcode,
        unique: 77,
        nodeid,
        uid: 1,
        gid: 2,
        pid: 3,
        total_extlen: 0,
        padding: 0,
    }
    .as_bytes()
    .to_vec()
}

/// A request: header with the right length, then `args`.
fn request(opcode: u32, args: &[u8]) -> Vec<u8> {
    let mut r = header(40 + args.len(), opcode, 1);
    r.extend_from_slice(args);
    r
}

/// Lays `request` out as `pieces` readable descriptors (split evenly) plus one writable of
/// `out` bytes, and parses it.
fn parse_split(
    request: &[u8],
    pieces: usize,
    out: u32,
) -> Result<crate::fs::request::Parsed, Rejected> {
    let mem = memory();
    let mut vq = Vq::new(&mem, 0, 64);
    mem.write_slice(request, GuestAddress(IN)).unwrap();
    let step = request.len().div_ceil(pieces.max(1));
    let mut descs = Vec::new();
    let mut at = 0;
    while at < request.len() {
        let n = step.min(request.len() - at);
        // Each piece 0x1000 apart, copied there.
        let addr = IN + 0x1000 * descs.len() as u64 + 0x10_000;
        mem.write_slice(&request[at..at + n], GuestAddress(addr))
            .unwrap();
        descs.push((addr, n as u32, 0));
        at += n;
    }
    if out > 0 {
        descs.push((OUT, out, F_WRITE));
    }
    let head = vq.push(&descs);
    let source = ChainSource {
        desc_table: vq.mock.desc_table_addr(),
        queue_size: vq.size,
        indirect: true,
    };
    parse(&mem, &source, head)
}

fn error(r: Result<crate::fs::request::Parsed, Rejected>) -> ParseError {
    r.unwrap_err().error
}

#[test]
fn headers_and_arguments_may_be_split_anywhere() {
    let req = request(opcode::LOOKUP, &cstr("name"));
    for pieces in 1..=req.len() {
        let p = parse_split(&req, pieces, 256).unwrap();
        assert_eq!(p.request.op, Op::Lookup(Name::new(b"name").unwrap()));
        assert_eq!((p.request.unique, p.request.uid, p.request.gid), (77, 1, 2));
        assert_eq!(p.reply.capacity, 256);
    }
    // A write's payload stays in guest memory as segments adding up to its size.
    let w = abi::fuse_write_in {
        fh: 3,
        offset: 10,
        size: 100,
        ..Default::default()
    };
    let req = request(opcode::WRITE, &[w.as_bytes(), &[7u8; 100]].concat());
    let p = parse_split(&req, 7, 64).unwrap();
    let Op::Write { data, size, .. } = p.request.op else {
        panic!("not a write")
    };
    assert_eq!(size, 100);
    assert_eq!(data.iter().map(|s| s.len).sum::<u32>(), 100);
}

#[test]
fn names_are_bounded_terminated_single_components() {
    let cases: Vec<(Vec<u8>, ParseError)> = vec![
        (b"".to_vec(), ParseError::Unterminated),
        (b"\0".to_vec(), ParseError::NameLength(0)),
        (b"no-nul".to_vec(), ParseError::Unterminated),
        (b"a/b\0".to_vec(), ParseError::NameWithSlash),
        (b"/\0".to_vec(), ParseError::NameWithSlash),
        (b"..\0".to_vec(), ParseError::DotName),
        (b".\0".to_vec(), ParseError::DotName),
        (
            [&[b'x'; 256][..], b"\0"].concat(),
            ParseError::NameLength(256),
        ),
        (
            b"a\0trailing".to_vec(),
            ParseError::TrailingBytes(opcode::LOOKUP),
        ),
        (b"a\0\0".to_vec(), ParseError::TrailingBytes(opcode::LOOKUP)),
    ];
    for (args, want) in cases {
        assert_eq!(
            error(parse_split(&request(opcode::LOOKUP, &args), 1, 256)),
            want,
            "{args:?}"
        );
    }
    assert!(parse_split(
        &request(opcode::LOOKUP, &[&[b'x'; 255][..], b"\0"].concat()),
        1,
        256
    )
    .is_ok());
    // Symlink targets: 1..=4095 bytes, may contain '/'.
    let target = |t: &[u8]| request(opcode::SYMLINK, &[b"l\0", t, b"\0"].concat());
    assert!(parse_split(&target(b"/etc/passwd"), 2, 256).is_ok());
    assert_eq!(
        error(parse_split(&target(b""), 1, 256)),
        ParseError::TargetLength(0)
    );
    assert_eq!(
        error(parse_split(&target(&[b'p'; 4096]), 1, 256)),
        ParseError::TargetLength(4096)
    );
    // RENAME needs both names valid.
    let r = abi::fuse_rename_in { newdir: 1 };
    let rename =
        |old: &[u8], new: &[u8]| request(opcode::RENAME, &[r.as_bytes(), old, new].concat());
    assert!(parse_split(&rename(b"a\0", b"b\0"), 3, 64).is_ok());
    assert_eq!(
        error(parse_split(&rename(b"a\0", b"../b\0"), 3, 64)),
        ParseError::NameWithSlash
    );
}

#[test]
fn lengths_offsets_and_values_are_checked() {
    // The header's length must be the chain's.
    let mut req = request(opcode::GETATTR, abi::fuse_getattr_in::default().as_bytes());
    req[0] += 1;
    assert!(matches!(
        error(parse_split(&req, 1, 256)),
        ParseError::LengthMismatch { .. }
    ));
    // Too short for a header: not even answerable.
    let r = parse_split(&[0u8; 39], 1, 256).unwrap_err();
    assert_eq!((r.answer, r.error), (None, ParseError::ShortHeader(39)));
    // Header extensions are never negotiated.
    let mut req = request(opcode::STATFS, &[]);
    req[36] = 8;
    assert_eq!(error(parse_split(&req, 1, 256)), ParseError::Extensions(8));
    // Cut-short arguments.
    assert_eq!(
        error(parse_split(&request(opcode::GETATTR, &[0; 8]), 1, 256)),
        ParseError::ShortArgs(opcode::GETATTR)
    );
    // Offsets beyond i64::MAX, sizes beyond MAX_IO.
    let read = |offset, size| {
        let r = abi::fuse_read_in {
            offset,
            size,
            ..Default::default()
        };
        request(opcode::READ, r.as_bytes())
    };
    assert!(parse_split(&read(0, 4096), 1, 4096 + 16).is_ok());
    assert!(matches!(
        error(parse_split(&read(i64::MAX as u64, 1), 1, 64)),
        ParseError::OutOfRange { .. }
    ));
    assert!(matches!(
        error(parse_split(&read(u64::MAX - 1, 10), 1, 64)),
        ParseError::OutOfRange { .. }
    ));
    assert!(matches!(
        error(parse_split(&read(0, crate::fs::MAX_IO + 1), 1, 64)),
        ParseError::OutOfRange { .. }
    ));
    // A READ asks for more than the reply can carry: clamped to the buffer.
    let p = parse_split(&read(0, 4096), 1, 100).unwrap();
    assert!(matches!(p.request.op, Op::Read { size: 84, .. }));
    // A WRITE's payload must be its size.
    let w = abi::fuse_write_in {
        size: 10,
        ..Default::default()
    };
    assert_eq!(
        error(parse_split(
            &request(opcode::WRITE, &[w.as_bytes(), &[0; 9]].concat()),
            1,
            64
        )),
        ParseError::PayloadMismatch {
            size: 10,
            payload: 9
        }
    );
    // Enumerated values: lseek whence, fallocate modes, rename flags, access masks.
    let seek = abi::fuse_lseek_in {
        whence: 5,
        ..Default::default()
    };
    assert!(matches!(
        error(parse_split(&request(opcode::LSEEK, seek.as_bytes()), 1, 64)),
        ParseError::BadValue { value: 5, .. }
    ));
    let falloc = |mode| abi::fuse_fallocate_in {
        length: 1,
        mode,
        ..Default::default()
    };
    for mode in [0x02, 0x04, 0x08, 0x20, 0x40] {
        assert!(parse_split(&request(opcode::FALLOCATE, falloc(mode).as_bytes()), 1, 64).is_err());
    }
    assert!(parse_split(&request(opcode::FALLOCATE, falloc(0x03).as_bytes()), 1, 64).is_ok());
    let r2 = |flags| abi::fuse_rename2_in {
        newdir: 1,
        flags,
        padding: 0,
    };
    for flags in [3, 4, 8] {
        let req = request(opcode::RENAME2, &[r2(flags).as_bytes(), b"a\0b\0"].concat());
        assert!(parse_split(&req, 1, 64).is_err(), "{flags}");
    }
    let access = abi::fuse_access_in {
        mask: 8,
        padding: 0,
    };
    assert!(parse_split(&request(opcode::ACCESS, access.as_bytes()), 1, 64).is_err());
    // A forget batch whose count does not match its entries.
    let batch = abi::fuse_batch_forget_in { count: 3, dummy: 0 };
    let req = request(opcode::BATCH_FORGET, &[batch.as_bytes(), &[0; 32]].concat());
    assert_eq!(
        error(parse_split(&req, 1, 0)),
        ParseError::BadBatch {
            count: 3,
            bytes: 32
        }
    );
    // More argument bytes than any request needs.
    let req = request(opcode::SETXATTR, &[0; crate::fs::MAX_ARGS + 1]);
    assert!(matches!(
        error(parse_split(&req, 4, 64)),
        ParseError::ArgsTooLong(_)
    ));
}

#[test]
fn replies_must_fit_and_unanswerable_requests_say_so() {
    // A LOOKUP whose reply buffer cannot hold an entry: answered with ERANGE.
    let r = parse_split(&request(opcode::LOOKUP, b"a\0"), 1, 64).unwrap_err();
    assert!(matches!(r.error, ParseError::ReplyTooSmall { .. }));
    assert_eq!(r.answer.as_ref().map(|a| a.0), Some(77));
    assert_eq!(r.errno().raw_os_error(), 34);
    // No room even for a reply header: completed without an answer.
    let r = parse_split(&request(opcode::STATFS, &[]), 1, 8).unwrap_err();
    assert_eq!(r.answer, None);
    // FORGET needs no reply buffer at all.
    let p = parse_split(&request(opcode::FORGET, &5u64.to_le_bytes()), 1, 0).unwrap();
    assert_eq!(p.request.op, Op::Forget(5));
}

#[test]
fn broken_chains_are_refused_without_an_answer() {
    let mem = memory();
    let mut vq = Vq::new(&mem, 0, 8);
    let source = ChainSource {
        desc_table: vq.mock.desc_table_addr(),
        queue_size: 8,
        indirect: false,
    };
    // A loop.
    vq.store(0, IN, 40, 1, 1);
    vq.store(1, OUT, 40, 1 | F_WRITE, 0);
    vq.make_available(0);
    let r = parse(&mem, &source, 0).unwrap_err();
    assert_eq!(r.error, ParseError::Chain(ChainError::Loop(0)));
    assert_eq!(r.answer, None);
    // A readable descriptor after a writable one: answerable (the header was readable).
    let req = request(opcode::STATFS, &[]);
    mem.write_slice(&req, GuestAddress(IN)).unwrap();
    vq.rewind();
    let head = vq.push(&[(IN, 40, 0), (OUT, 100, F_WRITE), (IN + 100, 4, 0)]);
    let r = parse(&mem, &source, head).unwrap_err();
    assert_eq!(
        r.error,
        ParseError::Chain(ChainError::ReadableAfterWritable)
    );
    assert!(r.answer.is_some());
    // The header on top of its own descriptor: metadata read twice is refused.
    let table = vq.mock.desc_table_addr().0;
    vq.rewind();
    let head = vq.push(&[(table, 40, 0), (OUT, 100, F_WRITE)]);
    let r = parse(&mem, &source, head).unwrap_err();
    assert!(matches!(
        r.error,
        ParseError::Chain(ChainError::MetadataOverlap(_))
    ));
}
