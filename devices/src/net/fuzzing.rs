//! What the `net_tx` fuzz target runs, shared with the corpus replay test
//! (`devices/tests/fuzz_corpus.rs`), plus the seed inputs.
//!
//! An input is a queue state, the negotiated transmit offloads and a guest memory image:
//!
//! ```text
//!   0..2   queue size (u16 LE; any value, the parser must refuse what it cannot take)
//!   2..4   head index (u16 LE)
//!   4      bit 0 indirect, 1 CSUM, 2 HOST_TSO4, 3 HOST_TSO6, 4 HOST_ECN, 5 MTU 1500 negotiated
//!   5..13  descriptor table address (u64 LE)
//!   13..   guest memory from address 0 ([`MEM_SIZE`] bytes, the rest zero)
//! ```
//!
//! [`parse_any`] parses the chain through a memory wrapper that records every read and panics
//! (what the fuzzer looks for) if a property breaks: a byte read twice, a read outside memory,
//! a different answer the second time on the same bytes, or an accepted frame that breaks the
//! limits — its length, a checksum position outside it, a GSO request that was not negotiated
//! or does not fit, a plain frame above the MTU, a header that does not re-validate to itself.
//! [`parse_chain`] (what the device runs: header copied, frame left in guest memory) must give
//! the same verdict and header as [`parse`], read no byte twice, and name buffers inside memory
//! whose bytes are the frame [`parse`] copied.
//!
//! Not used by the VMM or workers.

use std::cell::RefCell;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::header::{GsoKind, TxHeader, TxLimits};
use super::tx::{copy_frame, parse, parse_chain, TX_BUF};
use super::{HDR_LEN, MAX_FRAME, MIN_FRAME};
use crate::chain::{ChainSource, MetaMemory};

/// Guest memory size of a fuzz input: room for the largest frame and its descriptors.
pub const MEM_SIZE: usize = 0x2_0000;
/// Bytes before the memory image.
pub const PREFIX: usize = 13;
/// Flag bits of byte 4.
const INDIRECT: u8 = 1;
const CSUM: u8 = 2;
const TSO4: u8 = 4;
const TSO6: u8 = 8;
const ECN: u8 = 16;
const MTU: u8 = 32;

thread_local! {
    static MEMORY: GuestMemoryMmap =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("128 KiB of memory");
    static BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; TX_BUF]);
}

/// Records every read and checks it is new and inside memory.
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
                "bytes at {start:#x}..{end:#x} read twice"
            );
            reads.push((start, end));
        }
        ok
    }

    fn contains(&self, addr: GuestAddress, len: u64) -> bool {
        self.mem.contains(addr, len)
    }
}

/// Parses the transmit chain `data` describes and checks the properties in the module docs.
pub fn parse_any(data: &[u8]) {
    if data.len() < PREFIX {
        return;
    }
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]);
    let mut addr = [0u8; 8];
    addr.copy_from_slice(&data[5..13]);
    let flags = data[4];
    let source = ChainSource {
        desc_table: GuestAddress(u64::from_le_bytes(addr)),
        queue_size: u16_at(0),
        indirect: flags & INDIRECT != 0,
    };
    let limits = TxLimits {
        csum: flags & CSUM != 0,
        tso4: flags & TSO4 != 0,
        tso6: flags & TSO6 != 0,
        ecn: flags & ECN != 0,
        max_plain: if flags & MTU != 0 { 1518 } else { MAX_FRAME },
    };
    let head = u16_at(2);
    MEMORY.with(|mem| {
        BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            let image = &data[PREFIX..data.len().min(PREFIX + MEM_SIZE)];
            let mut bytes = vec![0u8; MEM_SIZE];
            bytes[..image.len()].copy_from_slice(image);
            mem.write_slice(&bytes, GuestAddress(0))
                .expect("memory image fits");
            let checked = Checked {
                mem,
                reads: RefCell::default(),
            };
            let first = parse(&checked, &source, head, &limits, &mut buf);
            let frame_first = first.map(|f| buf[HDR_LEN..HDR_LEN + f.len].to_vec());
            let again = parse(mem, &source, head, &limits, &mut buf);
            assert_eq!(first, again, "same bytes, different answer");
            let checked = Checked {
                mem,
                reads: RefCell::default(),
            };
            let chain = parse_chain(&checked, &source, head, &limits);
            assert_eq!(
                chain.as_ref().map(|c| (c.header, c.len)).map_err(|e| *e),
                first.map(|f| (f.header, f.len)),
                "parse_chain and parse disagree"
            );
            if let (Ok(chain), Some(bytes)) = (&chain, frame_first.as_ref().ok()) {
                let mut copied = vec![0u8; chain.len];
                assert!(
                    copy_frame(mem, &chain.frame, &mut copied),
                    "frame outside memory"
                );
                assert_eq!(&copied, bytes, "parse_chain names other bytes");
            }
            if let Ok(frame) = first {
                assert_eq!(
                    frame_first.ok(),
                    Some(buf[HDR_LEN..HDR_LEN + frame.len].to_vec()),
                    "same bytes, different frame"
                );
                check_frame(&frame.header, frame.len, &limits);
            }
        })
    });
}

fn check_frame(header: &TxHeader, len: usize, limits: &TxLimits) {
    assert!((MIN_FRAME..=MAX_FRAME).contains(&len), "frame length {len}");
    if let Some(c) = header.csum {
        assert!(limits.csum, "partial checksum without CSUM");
        assert!(
            usize::from(c.start) + usize::from(c.offset) + 2 <= len,
            "checksum outside the frame"
        );
    }
    match header.gso {
        Some(g) => {
            assert!(header.csum.is_some(), "GSO without a checksum");
            assert!(g.size > 0 && usize::from(g.size) <= len, "GSO size");
            assert!(usize::from(g.hdr_len) <= len, "GSO header length");
            let allowed = match g.kind {
                GsoKind::Tcp4 => limits.tso4,
                GsoKind::Tcp6 => limits.tso6,
            };
            assert!(allowed && (!g.ecn || limits.ecn), "GSO not negotiated");
        }
        None => assert!(len <= limits.max_plain, "plain frame above the MTU"),
    }
    assert_eq!(
        TxHeader::validate(&header.to_vnet(), len, limits),
        Ok(*header),
        "the canonical header does not re-validate to itself"
    );
}

/// Builds an input: queue state, then `writes` (address, bytes) into the memory image.
fn input(queue_size: u16, head: u16, flags: u8, writes: &[(usize, Vec<u8>)]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&queue_size.to_le_bytes());
    v.extend_from_slice(&head.to_le_bytes());
    v.push(flags);
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

/// A header: flags, gso type, hdr_len, gso_size, csum_start, csum_offset.
fn hdr(flags: u8, gso: u8, hdr_len: u16, gso_size: u16, start: u16, offset: u16) -> Vec<u8> {
    let mut h = vec![flags, gso];
    for v in [hdr_len, gso_size, start, offset, 0] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    h
}

/// The seed corpus: named inputs, valid frames first.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    const NEXT: u16 = 1;
    const WRITE: u16 = 2;
    const INDIRECT_DESC: u16 = 4;
    const ALL: u8 = INDIRECT | CSUM | TSO4 | TSO6 | ECN | MTU;
    let (h, data) = (0x1000usize, 0x2000u64);
    let frame = |len: usize| -> Vec<u8> { (0..len).map(|i| (i % 251) as u8).collect() };
    // Header descriptor, then one data descriptor of `len` bytes.
    let two = |header: Vec<u8>, len: u32| {
        vec![
            (
                0,
                [desc(h as u64, 12, NEXT, 1), desc(data, len, 0, 0)].concat(),
            ),
            (h, header),
            (data as usize, frame(len as usize)),
        ]
    };
    let plain = hdr(0, 0, 0, 0, 0, 0);
    let csum = hdr(1, 0, 0, 0, 34, 16);
    let tso4 = hdr(1, 1, 54, 1448, 34, 16);
    let tso6_ecn = hdr(1, 4 | 0x80, 74, 1428, 54, 16);
    let seeds = vec![
        ("valid-plain", input(16, 0, ALL, &two(plain.clone(), 1514))),
        ("valid-csum", input(16, 0, ALL, &two(csum.clone(), 300))),
        (
            "valid-tso4-64k",
            input(16, 0, ALL, &two(tso4.clone(), 65_000)),
        ),
        (
            "valid-tso6-ecn",
            input(16, 0, ALL, &two(tso6_ecn.clone(), 20_000)),
        ),
        (
            "valid-one-descriptor",
            input(
                16,
                0,
                ALL,
                &[
                    (0, desc(h as u64, 12 + 60, 0, 0)),
                    (h, [plain.clone(), frame(60)].concat()),
                ],
            ),
        ),
        (
            "valid-indirect",
            input(
                16,
                0,
                ALL,
                &[
                    (0, desc(0x800, 32, INDIRECT_DESC, 0)),
                    (
                        0x800,
                        [desc(h as u64, 12, NEXT, 1), desc(data, 100, 0, 0)].concat(),
                    ),
                    (h, plain.clone()),
                    (data as usize, frame(100)),
                ],
            ),
        ),
        (
            "found-csum-not-negotiated",
            input(16, 0, INDIRECT | MTU, &two(csum, 300)),
        ),
        (
            "found-above-mtu",
            input(16, 0, ALL, &two(plain.clone(), 1519)),
        ),
        (
            "found-csum-outside",
            input(16, 0, ALL, &two(hdr(1, 0, 0, 0, 290, 9), 300)),
        ),
        (
            "found-gso-without-csum",
            input(16, 0, ALL, &two(hdr(0, 1, 54, 1448, 0, 0), 3000)),
        ),
        (
            "found-ufo",
            input(16, 0, ALL, &two(hdr(1, 3, 42, 1400, 34, 6), 3000)),
        ),
        (
            "found-writable",
            input(
                16,
                0,
                ALL,
                &[
                    (
                        0,
                        [desc(h as u64, 12, NEXT, 1), desc(data, 100, WRITE, 0)].concat(),
                    ),
                    (h, plain.clone()),
                ],
            ),
        ),
        (
            "found-loop",
            input(
                16,
                0,
                ALL,
                &[
                    (
                        0,
                        [desc(h as u64, 12, NEXT, 1), desc(data, 100, NEXT, 0)].concat(),
                    ),
                    (h, plain.clone()),
                ],
            ),
        ),
        (
            "found-header-on-descriptor",
            input(
                16,
                0,
                ALL,
                &[(0, [desc(0, 12, NEXT, 1), desc(data, 100, 0, 0)].concat())],
            ),
        ),
        (
            "found-too-short",
            input(16, 0, ALL, &two(plain.clone(), 13)),
        ),
        (
            "found-too-long",
            input(16, 0, ALL & !MTU, &two(plain, 65_551)),
        ),
    ];
    seeds
        .into_iter()
        .map(|(name, bytes)| (name.to_string(), bytes))
        .collect()
}
