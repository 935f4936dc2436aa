//! Time-of-check/time-of-use: the copy-in reads each metadata byte once and acts on that read.
//!
//! - A scribbling wrapper around guest memory records every read of the parser and inverts the
//!   bytes right after it: the parser must never read an address twice for one request, and
//!   must return exactly what it returns on untouched memory.
//! - A racing driver: one thread keeps rewriting request headers, arguments, names and
//!   descriptors while the device parses and executes them, with guest memory between
//!   `PROT_NONE` guard pages. No panic, no fault, every chain completed once with a well-formed
//!   reply (or none), and nothing outside the share touched.

use std::cell::RefCell;
use std::sync::atomic::AtomicBool;

use fuse_abi::linux as abi;
use vm_memory::{Bytes, GuestAddress};
use zerocopy::IntoBytes;

use super::*;
use crate::blk::tests::guard::guarded_memory;
use crate::blk::tests::{memory, MEM_SIZE};
use crate::chain::{ChainSource, MetaMemory};
use crate::fs::request::parse;

/// Guest memory that inverts every byte the parser reads, right after the read.
struct Scribbling<'m> {
    mem: &'m GuestMemoryMmap,
    reads: RefCell<Vec<(u64, u64)>>,
}

impl MetaMemory for Scribbling<'_> {
    fn read_meta(&self, addr: GuestAddress, buf: &mut [u8]) -> bool {
        if !self.mem.read_meta(addr, buf) {
            return false;
        }
        self.reads
            .borrow_mut()
            .push((addr.0, addr.0 + buf.len() as u64));
        let flipped: Vec<u8> = buf.iter().map(|b| !b).collect();
        self.mem.write_slice(&flipped, addr).unwrap();
        true
    }

    fn contains(&self, addr: GuestAddress, len: u64) -> bool {
        self.mem.contains(addr, len)
    }
}

fn request(opcode: u32, nodeid: u64, args: &[u8]) -> Vec<u8> {
    let mut r = abi::fuse_in_header {
        len: (40 + args.len()) as u32,
        opcode,
        unique: 9,
        nodeid,
        ..Default::default()
    }
    .as_bytes()
    .to_vec();
    r.extend_from_slice(args);
    r
}

#[test]
fn every_metadata_byte_is_read_once_and_the_first_read_wins() {
    let mem = memory();
    let mut vq = Vq::new(&mem, 0, 64);
    let rename = abi::fuse_rename2_in {
        newdir: 1,
        flags: 1,
        padding: 0,
    };
    let write = abi::fuse_write_in {
        fh: 1,
        offset: 0,
        size: 64,
        ..Default::default()
    };
    let setattr = abi::fuse_setattr_in {
        valid: abi::FATTR_SIZE | abi::FATTR_MTIME,
        size: 5,
        mtime: 7,
        ..Default::default()
    };
    let requests = [
        request(opcode::LOOKUP, 1, b"name\0"),
        request(
            opcode::RENAME2,
            1,
            &[rename.as_bytes(), b"old\0new\0"].concat(),
        ),
        request(opcode::SYMLINK, 1, b"link\0/some/target\0"),
        request(opcode::SETATTR, 2, setattr.as_bytes()),
        request(opcode::WRITE, 2, &[write.as_bytes(), &[0x5a; 64]].concat()),
        request(opcode::INIT, 0, abi::fuse_init_in::default().as_bytes()),
    ];
    let source = ChainSource {
        desc_table: vq.mock.desc_table_addr(),
        queue_size: vq.size,
        indirect: true,
    };
    for (i, req) in requests.iter().enumerate() {
        let at = IN + 0x1000 * i as u64;
        mem.write_slice(req, GuestAddress(at)).unwrap();
        // Header and arguments split 17 + rest, to cross descriptors.
        let head = vq.push(&[
            (at, 17, 0),
            (at + 17, req.len() as u32 - 17, 0),
            (OUT, 256, F_WRITE),
        ]);
        let pristine = parse(&mem, &source, head).unwrap();
        let scribbling = Scribbling {
            mem: &mem,
            reads: RefCell::default(),
        };
        let first = parse(&scribbling, &source, head).unwrap();
        assert_eq!(first, pristine, "request {i}: acted on a second read");
        let mut reads = scribbling.reads.into_inner();
        reads.sort();
        for pair in reads.windows(2) {
            assert!(pair[0].1 <= pair[1].0, "request {i}: {pair:?} read twice");
        }
        // Three descriptors, the header, the arguments (a write's payload is not metadata).
        let payload = if i == 4 { 64 } else { 0 };
        let total: u64 = reads.iter().map(|(s, e)| e - s).sum();
        assert_eq!(total, 3 * 16 + req.len() as u64 - payload, "request {i}");
        assert_ne!(
            parse(&mem, &source, head).ok(),
            Some(pristine),
            "request {i}"
        );
    }
}

/// A tiny deterministic PRNG (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[(self.next() % from.len() as u64) as usize]
    }
}

const SLOTS: u64 = 8;
const ROUNDS: u64 = 400;
/// Reply buffer per slot.
const SLOT_OUT: u32 = 0x2000;

fn slot_in(r: u64) -> u64 {
    IN + 0x2000 * r
}

fn slot_out(r: u64) -> u64 {
    OUT + u64::from(SLOT_OUT) * r
}

/// Keeps rewriting slot `r`'s header fields, argument bytes and readable descriptor (never a
/// `next` field).
fn racer(mem: &GuestMemoryMmap, table: u64, stop: &AtomicBool, seed: u64) {
    let mut rng = Rng(seed);
    let opcodes = [
        opcode::LOOKUP,
        opcode::GETATTR,
        opcode::READ,
        opcode::WRITE,
        opcode::CREATE,
        opcode::MKDIR,
        opcode::UNLINK,
        opcode::RENAME2,
        opcode::SYMLINK,
        opcode::READDIRPLUS,
        opcode::FORGET,
        0xFFFF,
    ];
    while !stop.load(Ordering::Relaxed) {
        let r = rng.next() % SLOTS;
        let at = slot_in(r);
        let desc = table + 16 * (2 * r);
        let _ = match rng.next() % 8 {
            0 => mem.write_obj(rng.pick(&opcodes), GuestAddress(at + 4)),
            1 => {
                let any = rng.next() % 16;
                let n = rng.pick(&[1u64, 2, 3, 0, u64::MAX, any]);
                mem.write_obj(n, GuestAddress(at + 16))
            }
            2 => mem.write_obj(rng.pick(&[40u32, 45, 0, 4096, u32::MAX]), GuestAddress(at)),
            3 => {
                // Scribble names: '/', '.', NUL, or a plain letter somewhere in the arguments.
                let off = 40 + rng.next() % 64;
                mem.write_obj(
                    rng.pick(&[b'/', b'.', 0u8, b'a', 0xff]),
                    GuestAddress(at + off),
                )
            }
            4 => mem.write_obj(
                rng.pick(&[0u32, 8, 40, 41, 100, 4096, u32::MAX]),
                GuestAddress(desc + 8),
            ),
            5 => mem.write_obj(rng.pick(&[1u16, 1 | F_WRITE]), GuestAddress(desc + 12)),
            6 => {
                let any = rng.next();
                mem.write_obj(
                    rng.pick(&[slot_in(r), MEM_SIZE as u64 - 8, u64::MAX - 4, any]),
                    GuestAddress(desc),
                )
            }
            _ => {
                // Offsets and sizes inside the arguments.
                let any = rng.next();
                let v = rng.pick(&[0u64, 4096, i64::MAX as u64, u64::MAX, any]);
                mem.write_obj(v, GuestAddress(at + 40 + 8 * (rng.next() % 4)))
            }
        };
    }
}

/// A valid request for slot `r`, chosen by `rng`.
fn fresh_request(rng: &mut Rng, unique: u64, file_fh: u64) -> Vec<u8> {
    let names = ["a", "b", "c", "new"];
    let name = cstr(rng.pick(&names));
    let (opcode, nodeid, args) = match rng.next() % 9 {
        0 => (opcode::LOOKUP, 1, name),
        1 => (
            opcode::GETATTR,
            rng.pick(&[1, 2, 3]),
            abi::fuse_getattr_in::default().as_bytes().to_vec(),
        ),
        2 => (
            opcode::READ,
            2,
            abi::fuse_read_in {
                fh: file_fh,
                offset: rng.next() % 8192,
                size: 4096,
                ..Default::default()
            }
            .as_bytes()
            .to_vec(),
        ),
        3 => {
            let w = abi::fuse_write_in {
                fh: file_fh,
                offset: rng.next() % 8192,
                size: 32,
                ..Default::default()
            };
            (opcode::WRITE, 2, [w.as_bytes(), &[0x42; 32]].concat())
        }
        4 => {
            let c = abi::fuse_create_in {
                flags: 2,
                mode: 0o100644,
                umask: 0,
                open_flags: 0,
            };
            (opcode::CREATE, 1, [c.as_bytes(), &name].concat())
        }
        5 => (
            opcode::MKDIR,
            1,
            [
                abi::fuse_mkdir_in {
                    mode: 0o755,
                    umask: 0,
                }
                .as_bytes(),
                &name,
            ]
            .concat(),
        ),
        6 => (opcode::UNLINK, 1, name),
        7 => {
            let r = abi::fuse_rename2_in {
                newdir: 1,
                flags: 0,
                padding: 0,
            };
            let to = cstr(rng.pick(&names));
            (opcode::RENAME2, 1, [r.as_bytes(), &name, &to].concat())
        }
        _ => (
            opcode::SYMLINK,
            1,
            [&name[..], b"../outside/canary\0"].concat(),
        ),
    };
    let mut req = abi::fuse_in_header {
        len: (40 + args.len()) as u32,
        opcode,
        unique,
        nodeid,
        ..Default::default()
    }
    .as_bytes()
    .to_vec();
    req.extend_from_slice(&args);
    req
}

#[test]
fn racing_rewrites_never_break_the_device_or_leave_the_share() {
    let mem = guarded_memory(MEM_SIZE);
    let share = Share::new();
    std::fs::write(share.path("a"), vec![1u8; 8192]).unwrap();
    std::fs::write(share.path("b"), b"b").unwrap();
    std::fs::create_dir(share.path("c")).unwrap();
    let outside_before = Share::tree(&share.outside);
    let mut c = Client::ready(&mem, &share, options());
    // Node 2 = "a" (a file), node 3 = "c" (a directory), and an open handle of "a".
    assert_eq!(c.lookup(1, "a").unwrap().nodeid, 2);
    assert_eq!(c.lookup(1, "c").unwrap().nodeid, 3);
    let file_fh = c.open(2, 2).unwrap();

    let table = c.vqs[1].mock.desc_table_addr().0;
    let stop = AtomicBool::new(false);
    let mut rng = Rng(0xfeed_f00d);
    let mut completed = 0u64;
    let (mut succeeded, mut failed) = (0u64, 0u64);
    /// Stops the racer however the scope ends (a failed assertion included).
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    std::thread::scope(|s| {
        let racer = s.spawn(|| racer(&mem, table, &stop, 0xdead_beef));
        let _stop = StopOnDrop(&stop);
        for round in 0..ROUNDS {
            let vq = &mut c.vqs[1];
            vq.rewind();
            let before = vq.used_idx();
            for r in 0..SLOTS {
                let req = fresh_request(&mut rng, round * SLOTS + r, file_fh);
                mem.write_slice(&req, GuestAddress(slot_in(r))).unwrap();
                mem.write_slice(&[0xEE; 16], GuestAddress(slot_out(r)))
                    .unwrap();
                let vq = &mut c.vqs[1];
                vq.push(&[
                    (slot_in(r), req.len() as u32, 0),
                    (slot_out(r), SLOT_OUT, F_WRITE),
                ]);
            }
            c.fs.process_queue(1, &mut NoEvents).unwrap();
            let vq = &c.vqs[1];
            assert_eq!(vq.used_idx(), before.wrapping_add(SLOTS as u16));
            for i in 0..SLOTS as u16 {
                let (id, len) = vq.used(before.wrapping_add(i));
                assert!(id < 2 * SLOTS as u32 && id % 2 == 0, "used id {id}");
                completed += 1;
                if len == 0 {
                    continue;
                }
                let r = u64::from(id / 2);
                let mut out = vec![0u8; len as usize];
                mem.read_slice(&mut out, GuestAddress(slot_out(r))).unwrap();
                let h: abi::fuse_out_header = struct_of(&out);
                assert_eq!(h.len, len, "reply length");
                assert!(h.error <= 0 && h.error > -4096, "errno {}", h.error);
                assert!(len <= SLOT_OUT);
                if h.error == 0 {
                    succeeded += 1;
                } else {
                    failed += 1;
                }
            }
        }
        drop(_stop);
        racer.join().unwrap();
    });
    assert_eq!(completed, ROUNDS * SLOTS);
    // The racer spoils some requests, not all.
    assert!(
        succeeded > 0 && failed > 0,
        "{succeeded} ok, {failed} errors"
    );
    // Nothing outside the share changed or appeared.
    assert_eq!(Share::tree(&share.outside), outside_before);
    let base: Vec<_> = std::fs::read_dir(&share.base)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(base.len(), 2, "{base:?}");
    // The device still works.
    assert_eq!(c.getattr(1).unwrap().mode & 0o170000, 0o040000);
}
