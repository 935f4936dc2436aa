//! What the `blk_request` fuzz target runs, shared with the corpus replay test
//! (`devices/tests/fuzz_corpus.rs`), plus the seed inputs.
//!
//! An input is a queue state and a guest memory image:
//!
//! ```text
//!   0..2   queue size (u16 LE; any value, the parser must refuse what it cannot take)
//!   2..4   head index (u16 LE)
//!   4      bit 0 indirect negotiated, bit 1 read-only, bit 2 discard, bit 3 write-zeroes
//!   5..13  capacity in sectors (u64 LE)
//!   13..21 descriptor table address (u64 LE)
//!   21..   guest memory from address 0 ([`MEM_SIZE`] bytes, the rest zero)
//! ```
//!
//! [`parse_any`] parses the chain through a memory wrapper that records every metadata read and
//! panics (what the fuzzer looks for) if a property breaks: a byte read twice, a read outside
//! memory, a validated request whose buffers, sectors or sizes break the published limits, a
//! status byte outside memory, or a different answer the second time on the same bytes.
//!
//! Not used by the VMM or workers.

use std::cell::RefCell;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::request::{parse, ChainSource, DiskLimits, MetaMemory, Request, Segment};
use super::{
    ID_BYTES, MAX_DATA_BYTES, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, MAX_WRITE_ZEROES_SECTORS,
    MAX_WRITE_ZEROES_SEG, SECTOR_SIZE,
};

/// Guest memory size of a fuzz input.
pub const MEM_SIZE: usize = 0x4000;
/// Bytes before the memory image.
pub const PREFIX: usize = 21;

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
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&data[o..o + 8]);
        u64::from_le_bytes(b)
    };
    let flags = data[4];
    let source = ChainSource {
        desc_table: GuestAddress(u64_at(13)),
        queue_size: u16_at(0),
        indirect: flags & 1 != 0,
    };
    let disk = DiskLimits {
        capacity: u64_at(5),
        read_only: flags & 2 != 0,
        discard: flags & 4 != 0,
        write_zeroes: flags & 8 != 0,
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
        let first = parse(&checked, &source, head, &disk);
        let again = parse(mem, &source, head, &disk);
        assert_eq!(first, again, "same bytes, different answer");
        match first {
            Ok(valid) => {
                assert!(mem.contains(valid.status, 1), "status outside memory");
                check_request(mem, &valid.request, &disk);
            }
            Err(rejected) => {
                if let Some(status) = rejected.status {
                    assert!(mem.contains(status, 1), "status outside memory");
                }
            }
        }
    });
}

fn check_segments(mem: &GuestMemoryMmap, bufs: &[Segment]) -> u64 {
    for b in bufs {
        assert!(b.len > 0, "empty segment");
        assert!(
            mem.contains(b.addr, u64::from(b.len)),
            "segment outside memory"
        );
    }
    let total: u64 = bufs.iter().map(|b| u64::from(b.len)).sum();
    assert!(total <= u64::from(MAX_DATA_BYTES), "more data than allowed");
    total
}

fn check_request(mem: &GuestMemoryMmap, request: &Request, disk: &DiskLimits) {
    match request {
        Request::Read { sector, bufs } | Request::Write { sector, bufs } => {
            if matches!(request, Request::Write { .. }) {
                assert!(!disk.read_only, "write on a read-only disk");
            }
            let total = check_segments(mem, bufs);
            assert_eq!(total % SECTOR_SIZE, 0, "partial sector");
            let end = sector
                .checked_add(total / SECTOR_SIZE)
                .expect("no overflow");
            assert!(end <= disk.capacity, "past the end of the disk");
        }
        Request::GetId { bufs } => {
            assert!(check_segments(mem, bufs) <= ID_BYTES as u64, "id too long");
        }
        Request::Discard { ranges } | Request::WriteZeroes { ranges, .. } => {
            assert!(!disk.read_only, "discard/write-zeroes on a read-only disk");
            let discard = matches!(request, Request::Discard { .. });
            let (max_seg, max_sectors) = if discard {
                assert!(disk.discard);
                (MAX_DISCARD_SEG, MAX_DISCARD_SECTORS)
            } else {
                assert!(disk.write_zeroes);
                (MAX_WRITE_ZEROES_SEG, MAX_WRITE_ZEROES_SECTORS)
            };
            assert!(ranges.len() <= max_seg as usize, "too many segments");
            for r in ranges {
                assert!(r.sectors > 0 && r.sectors <= max_sectors, "segment size");
                let end = r
                    .sector
                    .checked_add(u64::from(r.sectors))
                    .expect("no overflow");
                assert!(end <= disk.capacity, "segment past the end");
            }
        }
        Request::Flush | Request::Unsupported { .. } => {}
    }
}

/// Builds an input: queue state, then `writes` (address, bytes) into the memory image.
fn input(
    queue_size: u16,
    head: u16,
    flags: u8,
    capacity: u64,
    desc_table: u64,
    writes: &[(usize, Vec<u8>)],
) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&queue_size.to_le_bytes());
    v.extend_from_slice(&head.to_le_bytes());
    v.push(flags);
    v.extend_from_slice(&capacity.to_le_bytes());
    v.extend_from_slice(&desc_table.to_le_bytes());
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

fn header(kind: u32, sector: u64) -> Vec<u8> {
    let mut h = kind.to_le_bytes().to_vec();
    h.extend_from_slice(&[0; 4]);
    h.extend_from_slice(&sector.to_le_bytes());
    h
}

/// The seed corpus: named inputs, valid requests of every type first.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    const NEXT: u16 = 1;
    const WRITE: u16 = 2;
    const INDIRECT: u16 = 4;
    const ALL: u8 = 1 | 4 | 8;
    let (hdr, data, status) = (0x1000usize, 0x2000u64, 0x3000u64);
    let chain = |kind: u32, sector: u64, data_desc: Vec<u8>, extra: Vec<(usize, Vec<u8>)>| {
        let mut table = desc(hdr as u64, 16, NEXT, 1);
        table.extend(data_desc);
        table.extend(desc(status, 1, WRITE, 0));
        let mut w = vec![(0, table), (hdr, header(kind, sector))];
        w.extend(extra);
        w
    };
    let seg = |sector: u64, n: u32, flags: u32| {
        let mut r = sector.to_le_bytes().to_vec();
        r.extend_from_slice(&n.to_le_bytes());
        r.extend_from_slice(&flags.to_le_bytes());
        r
    };
    let mut seeds = vec![
        (
            "valid-read",
            input(
                16,
                0,
                ALL,
                64,
                0,
                &chain(0, 3, desc(data, 1024, WRITE | NEXT, 2), vec![]),
            ),
        ),
        (
            "valid-write",
            input(
                16,
                0,
                ALL,
                64,
                0,
                &chain(1, 8, desc(data, 512, NEXT, 2), vec![]),
            ),
        ),
        (
            "valid-get-id",
            input(
                16,
                0,
                ALL,
                64,
                0,
                &chain(8, 0, desc(data, 20, WRITE | NEXT, 2), vec![]),
            ),
        ),
        (
            "valid-discard",
            input(
                16,
                0,
                ALL,
                64,
                0,
                &chain(
                    11,
                    0,
                    desc(data, 32, NEXT, 2),
                    vec![(data as usize, [seg(0, 8, 0), seg(16, 4, 0)].concat())],
                ),
            ),
        ),
        (
            "valid-write-zeroes",
            input(
                16,
                0,
                ALL,
                64,
                0,
                &chain(
                    13,
                    0,
                    desc(data, 16, NEXT, 2),
                    vec![(data as usize, seg(32, 8, 1))],
                ),
            ),
        ),
        (
            "valid-flush",
            input(
                16,
                0,
                ALL,
                64,
                0,
                &[
                    (
                        0,
                        [desc(hdr as u64, 16, NEXT, 1), desc(status, 1, WRITE, 0)].concat(),
                    ),
                    (hdr, header(4, 0)),
                ],
            ),
        ),
    ];
    let indirect_table = [
        desc(hdr as u64, 16, NEXT, 1),
        desc(data, 512, WRITE | NEXT, 2),
        desc(status, 1, WRITE, 0),
    ]
    .concat();
    seeds.push((
        "valid-indirect-read",
        input(
            16,
            0,
            ALL,
            64,
            0,
            &[
                (0, desc(0x800, 48, INDIRECT, 0)),
                (0x800, indirect_table),
                (hdr, header(0, 1)),
            ],
        ),
    ));
    seeds.push((
        "found-loop",
        input(
            16,
            0,
            ALL,
            64,
            0,
            &[
                (
                    0,
                    [
                        desc(hdr as u64, 16, NEXT, 1),
                        desc(data, 512, WRITE | NEXT, 0),
                    ]
                    .concat(),
                ),
                (hdr, header(0, 0)),
            ],
        ),
    ));
    seeds.push((
        "found-past-the-end",
        input(
            16,
            0,
            ALL,
            64,
            0,
            &chain(0, 63, desc(data, 1024, WRITE | NEXT, 2), vec![]),
        ),
    ));
    seeds.push((
        "found-header-on-descriptor",
        input(
            16,
            0,
            ALL,
            64,
            0,
            &[(
                0,
                [desc(0, 16, NEXT, 1), desc(status, 1, WRITE, 0)].concat(),
            )],
        ),
    ));
    seeds
        .into_iter()
        .map(|(name, bytes)| (name.to_string(), bytes))
        .collect()
}
