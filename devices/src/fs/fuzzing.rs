//! What the `fs_request` fuzz target runs, shared with the corpus replay test
//! (`devices/tests/fuzz_corpus.rs`), plus the seed inputs.
//!
//! An input is a queue state and a guest memory image:
//!
//! ```text
//!   0..2   queue size (u16 LE; any value, the parser must refuse what it cannot take)
//!   2..4   head index (u16 LE)
//!   4      bit 0: indirect descriptors negotiated
//!   5..13  descriptor table address (u64 LE)
//!   13..   guest memory from address 0 ([`MEM_SIZE`] bytes, the rest zero)
//! ```
//!
//! [`parse_any`] parses the chain through a memory wrapper that records every metadata read and
//! panics (what the fuzzer looks for) if a property breaks: a byte read twice, a read outside
//! memory, a different answer the second time on the same bytes, or a validated request that
//! breaks a published bound (names with `/`, `.`, `..`, empty or too long; I/O sizes and
//! offsets out of range; a WRITE payload that is not its size or lies outside memory; a reply
//! that does not fit its buffer).
//!
//! Not used by the VMM or workers.

use std::cell::RefCell;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::request::{opcode, parse, Name, Op, OUT_HEADER_LEN};
use super::{MAX_IO, NAME_MAX, TARGET_MAX};
use crate::chain::{ChainSource, MetaMemory};

/// Guest memory size of a fuzz input.
pub const MEM_SIZE: usize = 0x4000;
/// Bytes before the memory image.
pub const PREFIX: usize = 13;

thread_local! {
    static MEMORY: GuestMemoryMmap =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("16 KiB of memory");
}

/// Records every metadata read and checks it is new and inside memory.
struct Checked<'m> {
    mem: &'m GuestMemoryMmap,
    reads: RefCell<Vec<(u64, u64)>>,
}

impl MetaMemory for Checked<'_> {
    fn read_meta(&self, addr: GuestAddress, buf: &mut [u8]) -> bool {
        let ok = self.mem.read_meta(addr, buf);
        if ok {
            let (start, end) = (addr.0, addr.0 + buf.len() as u64);
            assert!(end <= MEM_SIZE as u64, "read outside memory succeeded");
            let mut reads = self.reads.borrow_mut();
            assert!(
                reads.iter().all(|&(s, e)| end <= s || e <= start),
                "metadata at {start:#x}..{end:#x} read twice"
            );
            reads.push((start, end));
        }
        ok
    }

    fn contains(&self, addr: GuestAddress, len: u64) -> bool {
        self.mem.contains(addr, len)
    }
}

/// Parses the chain `data` describes and checks the properties in the module docs.
pub fn parse_any(data: &[u8]) {
    if data.len() < PREFIX {
        return;
    }
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]);
    let mut table = [0u8; 8];
    table.copy_from_slice(&data[5..13]);
    let source = ChainSource {
        desc_table: GuestAddress(u64::from_le_bytes(table)),
        queue_size: u16_at(0),
        indirect: data[4] & 1 != 0,
    };
    let head = u16_at(2);
    MEMORY.with(|mem| {
        let image = &data[PREFIX..data.len().min(PREFIX + MEM_SIZE)];
        let mut bytes = vec![0u8; MEM_SIZE];
        bytes[..image.len()].copy_from_slice(image);
        mem.write_slice(&bytes, GuestAddress(0))
            .expect("memory image fits");

        let checked = Checked {
            mem,
            reads: RefCell::default(),
        };
        let first = parse(&checked, &source, head);
        let again = parse(mem, &source, head);
        assert_eq!(first, again, "same bytes, different answer");
        match first {
            Ok(parsed) => {
                let capacity = parsed.reply.capacity;
                for s in &parsed.reply.segments {
                    assert!(
                        mem.contains(s.addr, u64::from(s.len)),
                        "reply outside memory"
                    );
                }
                let no_reply = matches!(
                    parsed.request.op,
                    Op::Forget(_) | Op::BatchForget(_) | Op::Interrupt
                );
                assert!(
                    no_reply || capacity >= OUT_HEADER_LEN as u64,
                    "no room to reply"
                );
                check_op(mem, &parsed.request.op, capacity);
            }
            Err(rejected) => {
                if let Some((_, to)) = rejected.answer {
                    assert!(to.capacity >= OUT_HEADER_LEN as u64, "answer without room");
                }
            }
        }
    });
}

fn check_name(name: &Name) {
    let b = name.as_bytes();
    assert!(!b.is_empty() && b.len() <= NAME_MAX, "name length");
    assert!(!b.contains(&b'/') && !b.contains(&0), "name bytes");
    assert!(b != b"." && b != b"..", "dot name");
}

fn check_op(mem: &GuestMemoryMmap, op: &Op, capacity: u64) {
    let in_range = |offset: u64, size: u64| {
        offset
            .checked_add(size)
            .is_some_and(|end| end <= i64::MAX as u64)
    };
    match op {
        Op::Lookup(n) | Op::Mknod(n) | Op::Unlink(n) | Op::Rmdir(n) => check_name(n),
        Op::Mkdir { name, mode } => {
            check_name(name);
            assert!(*mode <= 0o7777, "mode bits");
        }
        Op::Create { name, mode, .. } => {
            check_name(name);
            assert!(*mode <= 0o7777, "mode bits");
        }
        Op::Link { name, .. } => check_name(name),
        Op::Symlink { name, target } => {
            check_name(name);
            let t = target.as_bytes();
            assert!(!t.is_empty() && t.len() <= TARGET_MAX, "target length");
        }
        Op::Rename {
            old, new, flags, ..
        } => {
            check_name(old);
            check_name(new);
            assert!(*flags <= 2, "rename flags");
        }
        Op::Read { offset, size, .. } => {
            assert!(*size <= MAX_IO, "read size");
            assert!(
                u64::from(*size) + OUT_HEADER_LEN as u64 <= capacity,
                "read reply"
            );
            assert!(in_range(*offset, u64::from(*size)), "read range");
        }
        Op::ReadDir { size, .. } => {
            assert!(*size <= MAX_IO, "readdir size");
            assert!(
                u64::from(*size) + OUT_HEADER_LEN as u64 <= capacity,
                "readdir reply"
            );
        }
        Op::Write {
            offset, data, size, ..
        } => {
            assert!(*size <= MAX_IO, "write size");
            assert!(in_range(*offset, u64::from(*size)), "write range");
            let total: u64 = data.iter().map(|s| u64::from(s.len)).sum();
            assert_eq!(total, u64::from(*size), "payload length");
            for s in data {
                assert!(
                    s.len > 0 && mem.contains(s.addr, u64::from(s.len)),
                    "payload"
                );
            }
        }
        Op::Fallocate { offset, length, .. } => {
            assert!(*length > 0 && in_range(*offset, *length), "fallocate range");
        }
        Op::SetAttr(sa) => {
            if let Some(size) = sa.size {
                assert!(size <= i64::MAX as u64, "truncate size");
            }
        }
        Op::Access(mask) => assert!(*mask <= 7, "access mask"),
        _ => {}
    }
}

/// Builds an input: queue state, then `writes` (address, bytes) into the memory image.
fn input(queue_size: u16, head: u16, indirect: bool, writes: &[(usize, Vec<u8>)]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&queue_size.to_le_bytes());
    v.extend_from_slice(&head.to_le_bytes());
    v.push(u8::from(indirect));
    v.extend_from_slice(&0u64.to_le_bytes());
    let end = writes.iter().map(|(a, b)| a + b.len()).max().unwrap_or(0);
    let mut mem = vec![0u8; end];
    for (at, bytes) in writes {
        mem[*at..at + bytes.len()].copy_from_slice(bytes);
    }
    v.extend_from_slice(&mem);
    v
}

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> Vec<u8> {
    let mut d = addr.to_le_bytes().to_vec();
    d.extend_from_slice(&len.to_le_bytes());
    d.extend_from_slice(&flags.to_le_bytes());
    d.extend_from_slice(&next.to_le_bytes());
    d
}

/// A request: `fuse_in_header` (with its length) and `args`.
fn request(op: u32, nodeid: u64, args: &[u8]) -> Vec<u8> {
    let mut r = ((40 + args.len()) as u32).to_le_bytes().to_vec();
    r.extend_from_slice(&op.to_le_bytes());
    r.extend_from_slice(&1u64.to_le_bytes()); // unique
    r.extend_from_slice(&nodeid.to_le_bytes());
    r.extend_from_slice(&[0; 16]); // uid, gid, pid, total_extlen, padding
    r.extend_from_slice(args);
    r
}

/// The seed corpus: named inputs, valid requests first.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    const NEXT: u16 = 1;
    const WRITE: u16 = 2;
    const INDIRECT: u16 = 4;
    let (req_at, out_at) = (0x1000usize, 0x2000u64);
    let chain = |req: Vec<u8>, out: u32| {
        let len = req.len() as u32;
        let table = if out > 0 {
            [
                desc(req_at as u64, len, NEXT, 1),
                desc(out_at, out, WRITE, 0),
            ]
            .concat()
        } else {
            desc(req_at as u64, len, 0, 0)
        };
        input(16, 0, true, &[(0, table), (req_at, req)])
    };
    let u32s = |v: &[u32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let u64s = |v: &[u64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let read_in = |fh: u64, offset: u64, size: u32| {
        [
            u64s(&[fh, offset]),
            u32s(&[size, 0]),
            u64s(&[0]),
            u32s(&[0, 0]),
        ]
        .concat()
    };
    let mut seeds = vec![
        (
            "valid-init",
            chain(request(opcode::INIT, 0, &u32s(&[7, 38, 65536, 0])), 80),
        ),
        (
            "valid-lookup",
            chain(request(opcode::LOOKUP, 1, b"file\0"), 144),
        ),
        (
            "valid-read",
            chain(request(opcode::READ, 2, &read_in(1, 4096, 512)), 528),
        ),
        (
            "valid-readdirplus",
            chain(request(opcode::READDIRPLUS, 1, &read_in(1, 0, 1024)), 1040),
        ),
        (
            "valid-write",
            chain(
                request(
                    opcode::WRITE,
                    2,
                    &[read_in(1, 0, 32), vec![0x5a; 32]].concat(),
                ),
                24,
            ),
        ),
        (
            "valid-create",
            chain(
                request(
                    opcode::CREATE,
                    1,
                    &[u32s(&[2, 0o100644, 0o22, 0]), b"new\0".to_vec()].concat(),
                ),
                160,
            ),
        ),
        (
            "valid-rename2",
            chain(
                request(
                    opcode::RENAME2,
                    1,
                    &[u64s(&[1]), u32s(&[1, 0]), b"a\0b\0".to_vec()].concat(),
                ),
                16,
            ),
        ),
        (
            "valid-symlink",
            chain(request(opcode::SYMLINK, 1, b"l\0/etc/passwd\0"), 144),
        ),
        (
            "valid-forget",
            chain(request(opcode::FORGET, 2, &u64s(&[1])), 0),
        ),
        (
            "valid-batch-forget",
            chain(
                request(
                    opcode::BATCH_FORGET,
                    0,
                    &[u32s(&[2, 0]), u64s(&[2, 1, 3, 1])].concat(),
                ),
                0,
            ),
        ),
        (
            "found-dotdot",
            chain(request(opcode::LOOKUP, 1, b"..\0"), 144),
        ),
        (
            "found-slash",
            chain(request(opcode::LOOKUP, 1, b"../outside\0"), 144),
        ),
        (
            "found-unterminated",
            chain(
                request(
                    opcode::MKDIR,
                    1,
                    &[u32s(&[0o755, 0]), b"dir".to_vec()].concat(),
                ),
                144,
            ),
        ),
        (
            "found-offset-overflow",
            chain(
                request(opcode::READ, 2, &read_in(1, u64::MAX - 8, 512)),
                528,
            ),
        ),
        (
            "found-length-mismatch",
            chain(
                {
                    let mut r = request(opcode::GETATTR, 1, &[0; 16]);
                    r[0] = 99;
                    r
                },
                120,
            ),
        ),
    ];
    // A request through an indirect table, header split across two entries.
    let req = request(opcode::LOOKUP, 1, b"indirect\0");
    let table = [
        desc(req_at as u64, 20, NEXT, 1),
        desc(req_at as u64 + 20, req.len() as u32 - 20, NEXT, 2),
        desc(out_at, 144, WRITE, 0),
    ]
    .concat();
    seeds.push((
        "valid-indirect-lookup",
        input(
            16,
            0,
            true,
            &[
                (0, desc(0x800, 48, INDIRECT, 0)),
                (0x800, table),
                (req_at, req),
            ],
        ),
    ));
    seeds
        .into_iter()
        .map(|(name, bytes)| (name.to_string(), bytes))
        .collect()
}
