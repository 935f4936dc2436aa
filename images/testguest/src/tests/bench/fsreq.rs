//! FUSE requests for the virtio-fs benchmarks, on the benchmark queue (`FastRing`, queue 0 of
//! the device: the hiprio queue, which svmm's device and virtiofsd serve like any other), all
//! from ring 3.
//!
//! Slot `s` owns descriptors `3 s .. 3 s + 2`, its request header and arguments at
//! `128 s` in the bench buffer space, its data buffer, and one page after the data buffer for
//! the reply header and a fixed-size reply:
//!
//! - READ: header + `fuse_read_in` (device-readable), reply header, data (device-writable);
//! - WRITE: header + `fuse_write_in`, data (device-readable), reply header + `fuse_write_out`;
//! - META: LOOKUP of [`FILE`] in the root, or GETATTR of its node, alternately: header +
//!   arguments, then the reply header + `fuse_entry_out` / `fuse_attr_out`.
//!
//! [`setup`] opens the session first (INIT, LOOKUP of [`FILE`], OPEN read-write) with
//! requests on slot 0, one at a time.

use super::engine::{buffers, Failure, Plan, DATA, PAGE};
use crate::timer::rdtsc;
use crate::virtio::fastq::{FastRing, DESC_F_NEXT, DESC_F_WRITE};
use core::hint::spin_loop;
use core::ptr::{read_volatile, write_volatile};

/// The file the benchmarks use, in the share's root (the harness makes it, 64 MiB).
pub const FILE: &[u8] = b"bench.bin\0";

const INIT: u32 = 26;
const LOOKUP: u32 = 1;
const GETATTR: u32 = 3;
const OPEN: u32 = 14;
const READ: u32 = 15;
const WRITE: u32 = 16;
const ROOT: u64 = 1;
const O_RDWR: u32 = 2;
/// `fuse_entry_out` and `fuse_attr_out`.
const ENTRY_LEN: u32 = 128;
const ATTR_OUT_LEN: u32 = 104;
/// Bytes of a slot's header area.
const HEADER_STRIDE: usize = 128;

/// What a benchmark request does.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum FsOp {
    Read,
    Write,
    /// LOOKUP and GETATTR, alternately.
    Meta,
}

/// The session [`setup`] opened: the file's node, its open handle, its size.
#[derive(Clone, Copy, Default)]
pub struct Target {
    pub nodeid: u64,
    pub fh: u64,
    pub size: u64,
}

/// A slot's header area and reply page.
fn areas(plan: &Plan, slot: usize) -> (usize, usize, usize) {
    let buf = buffers();
    let data = buf + DATA + slot * plan.stride();
    (
        buf + HEADER_STRIDE * slot,
        data,
        data + plan.req_bytes as usize,
    )
}

/// Writes a `fuse_in_header` at `at` (`len` bytes in all).
///
/// # Safety
/// `at .. at + 40` must be a slot's header area, not in flight.
unsafe fn in_header(at: usize, len: u32, opcode: u32, unique: u64, nodeid: u64) {
    // SAFETY: as the caller promises.
    unsafe {
        write_volatile(at as *mut u32, len);
        write_volatile((at + 4) as *mut u32, opcode);
        write_volatile((at + 8) as *mut u64, unique);
        write_volatile((at + 16) as *mut u64, nodeid);
        write_volatile((at + 24) as *mut u64, 0); // uid, gid
        write_volatile((at + 32) as *mut u64, 1); // pid 1, no extensions
    }
}

/// Writes the 40-byte `fuse_read_in` / `fuse_write_in` at `at`.
///
/// # Safety
/// As [`in_header`], for `at .. at + 40`.
unsafe fn io_args(at: usize, fh: u64, offset: u64, size: u32) {
    // SAFETY: as the caller promises.
    unsafe {
        write_volatile(at as *mut u64, fh);
        write_volatile((at + 8) as *mut u64, offset);
        write_volatile((at + 16) as *mut u32, size);
        write_volatile((at + 20) as *mut u32, 0);
        write_volatile((at + 24) as *mut u64, 0);
        write_volatile((at + 32) as *mut u64, 0);
    }
}

/// Writes slot `slot`'s request (`n`: its sequence number; `offset`: file offset for I/O) and
/// returns its head descriptor.
#[inline]
pub fn prepare(
    plan: &Plan,
    op: FsOp,
    target: &Target,
    ring: &mut FastRing,
    slot: usize,
    n: u64,
    offset: u64,
) -> u16 {
    let (hdr, data, reply) = areas(plan, slot);
    let head = (3 * slot) as u16;
    let unique = n + 1;
    // Poison the reply header, so a request the device never answered shows.
    // SAFETY: the slot's reply page inside the bench buffer space; not in flight.
    unsafe { write_volatile(reply as *mut u32, 0) };
    match op {
        FsOp::Read | FsOp::Write => {
            let opcode = if op == FsOp::Read { READ } else { WRITE };
            let len = 80 + if op == FsOp::Write { plan.req_bytes } else { 0 };
            // SAFETY: the slot's header area holds 128 bytes; not in flight.
            unsafe {
                in_header(hdr, len, opcode, unique, target.nodeid);
                io_args(hdr + 40, target.fh, offset, plan.req_bytes);
            }
            ring.set_desc(head, hdr as u64, 80, DESC_F_NEXT, head + 1);
            if op == FsOp::Read {
                ring.set_desc(
                    head + 1,
                    reply as u64,
                    16,
                    DESC_F_WRITE | DESC_F_NEXT,
                    head + 2,
                );
                ring.set_desc(head + 2, data as u64, plan.req_bytes, DESC_F_WRITE, 0);
            } else {
                ring.set_desc(head + 1, data as u64, plan.req_bytes, DESC_F_NEXT, head + 2);
                ring.set_desc(head + 2, reply as u64, 24, DESC_F_WRITE, 0);
            }
        }
        FsOp::Meta => {
            let (len, reply_len) = if n.is_multiple_of(2) {
                // SAFETY: as above; the name fits the header area (40 + 10 bytes).
                unsafe {
                    in_header(hdr, 40 + FILE.len() as u32, LOOKUP, unique, ROOT);
                    for (i, &b) in FILE.iter().enumerate() {
                        write_volatile((hdr + 40 + i) as *mut u8, b);
                    }
                }
                (40 + FILE.len() as u32, 16 + ENTRY_LEN)
            } else {
                // SAFETY: as above (40 + 16 bytes).
                unsafe {
                    in_header(hdr, 56, GETATTR, unique, target.nodeid);
                    write_volatile((hdr + 40) as *mut u64, 0);
                    write_volatile((hdr + 48) as *mut u64, 0);
                }
                (56, 16 + ATTR_OUT_LEN)
            };
            ring.set_desc(head, hdr as u64, len, DESC_F_NEXT, head + 1);
            ring.set_desc(head + 1, reply as u64, reply_len, DESC_F_WRITE, 0);
        }
    }
    head
}

/// Checks slot `slot`'s reply: a header of the used length, no error, a READ in full.
#[inline]
pub fn check(plan: &Plan, op: FsOp, slot: usize, used: u32) -> Result<(), Failure> {
    let (_, _, reply) = areas(plan, slot);
    // SAFETY: the slot's reply page; the device returned the request.
    let (len, error) = unsafe {
        (
            read_volatile(reply as *const u32),
            read_volatile((reply + 4) as *const i32),
        )
    };
    if error != 0 {
        return Err(Failure::Errno {
            errno: -error,
            slot,
        });
    }
    let want = match op {
        FsOp::Read => 16 + plan.req_bytes,
        FsOp::Write => 24,
        FsOp::Meta => len,
    };
    if len != used || used != want {
        return Err(Failure::Len { got: used, want });
    }
    Ok(())
}

/// One request on slot 0, waited for by polling (setup only).
fn call(
    plan: &Plan,
    ring: &mut FastRing,
    stall: u64,
    fill: impl FnOnce(usize, usize) -> (u32, u32),
) -> Result<usize, Failure> {
    let (hdr, _, reply) = areas(plan, 0);
    // SAFETY: slot 0's reply page; nothing is in flight during setup.
    unsafe { write_volatile(reply as *mut u64, 0) };
    let (len, reply_len) = fill(hdr, reply);
    ring.set_desc(0, hdr as u64, len, DESC_F_NEXT, 1);
    ring.set_desc(1, reply as u64, reply_len, DESC_F_WRITE, 0);
    ring.publish(0);
    ring.kick();
    let deadline = rdtsc() + stall;
    loop {
        if let Some((id, used)) = ring.pop_used() {
            if id != 0 {
                return Err(Failure::UsedId { id });
            }
            // SAFETY: slot 0's reply page, written by the device.
            let error = unsafe { read_volatile((reply + 4) as *const i32) };
            if error != 0 || used < 16 {
                return Err(Failure::Errno {
                    errno: -error,
                    slot: 0,
                });
            }
            return Ok(reply + 16);
        }
        if rdtsc() > deadline {
            return Err(Failure::Stall { inflight: 1 });
        }
        spin_loop();
    }
}

/// INIT, LOOKUP of [`FILE`], OPEN read-write: the session the benchmark then uses.
pub fn setup(plan: &Plan, ring: &mut FastRing) -> Result<Target, Failure> {
    let stall = plan.stall;
    call(plan, ring, stall, |hdr, _| {
        // SAFETY: slot 0's header area (104 of its 128 bytes); nothing is in flight.
        unsafe {
            in_header(hdr, 104, INIT, 1, 0);
            write_volatile((hdr + 40) as *mut u32, 7);
            write_volatile((hdr + 44) as *mut u32, 31);
            write_volatile((hdr + 48) as *mut u32, 128 * 1024);
            // BIG_WRITES | MAX_PAGES.
            write_volatile((hdr + 52) as *mut u32, (1 << 5) | (1 << 22));
            for i in 0..12 {
                write_volatile((hdr + 56 + 4 * i) as *mut u32, 0);
            }
        }
        (104, 16 + 64)
    })?;
    let entry = call(plan, ring, stall, |hdr, _| {
        // SAFETY: slot 0's header area (50 bytes); nothing is in flight.
        unsafe {
            in_header(hdr, 40 + FILE.len() as u32, LOOKUP, 2, ROOT);
            for (i, &b) in FILE.iter().enumerate() {
                write_volatile((hdr + 40 + i) as *mut u8, b);
            }
        }
        (40 + FILE.len() as u32, 16 + ENTRY_LEN)
    })?;
    // SAFETY: the reply's fuse_entry_out: nodeid at 0, attr.size at 48.
    let (nodeid, size) = unsafe {
        (
            read_volatile(entry as *const u64),
            read_volatile((entry + 48) as *const u64),
        )
    };
    let open = call(plan, ring, stall, |hdr, _| {
        // SAFETY: slot 0's header area (48 bytes); nothing is in flight.
        unsafe {
            in_header(hdr, 48, OPEN, 3, nodeid);
            write_volatile((hdr + 40) as *mut u32, O_RDWR);
            write_volatile((hdr + 44) as *mut u32, 0);
        }
        (48, 16 + 16)
    })?;
    // SAFETY: the reply's fuse_open_out: fh at 0.
    let fh = unsafe { read_volatile(open as *const u64) };
    Ok(Target { nodeid, fh, size })
}

/// A slot's data buffer holds `req_bytes`; the reply page follows it.
pub fn stride(req_bytes: u32) -> usize {
    (req_bytes as usize).div_ceil(PAGE) * PAGE + PAGE
}
