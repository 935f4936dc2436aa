//! The benchmark request loop, run in ring 3: keeps `depth` requests in flight on a
//! [`FastRing`], each in its own slot (descriptors, header, status byte, data buffer), for a
//! warm-up and then a measured phase, and drains what is in flight at the end.
//!
//! Per completion it checks the element (id a slot head, status OK for blk, used length for
//! rng), records the latency from its submission to the moment the loop saw it complete,
//! and puts the slot's next request on the ring (descriptors rewritten, header, status byte
//! reset); all completions seen at once are followed by one notify (unless the device asked
//! for none). Waiting: `poll` spins on `used.idx`; `irq` spins on the device interrupt
//! counter the ring-0 handler bumps (ring 3 cannot `hlt`), and only then looks at the ring.

use super::fsreq::{self, FsOp};
use super::samples::{Samples, XorShift};
use crate::arch::{apic, Page};
use crate::cmdline::Completion;
use crate::timer::rdtsc;
use crate::virtio::fastq::{FastRing, DESC_F_NEXT, DESC_F_WRITE};
use core::cell::UnsafeCell;
use core::fmt;
use core::hint::spin_loop;
use core::ptr::{read_volatile, write_volatile};

/// Most requests in flight.
pub const MAX_DEPTH: usize = 32;
/// Bench buffer space: headers, status bytes, then one data buffer per slot (4 KiB aligned).
pub const BUF_BYTES: usize = 2 << 20;
const HEADERS: usize = 0;
pub const STATUS: usize = 1024;
pub const DATA: usize = 4096;
pub const PAGE: usize = 4096;

// blk request types.
pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_GET_ID: u32 = 8;
const NO_STATUS: u8 = 0xff;
pub const SECTOR: u64 = 512;

#[link_section = ".noinit.bench"]
static BUF: Page<[u8; BUF_BYTES]> = Page(UnsafeCell::new([0; BUF_BYTES]));

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// virtio-rng: one device-writable buffer.
    Rng,
    /// virtio-blk IN, OUT or GET_ID: header, data, status.
    Blk(u32),
    /// virtio-fs READ, WRITE or LOOKUP/GETATTR (`fsreq`).
    Fs(FsOp),
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Offsets {
    /// Request after request from sector 0, wrapping at `Plan::sectors`.
    Sequential,
    /// 4 KiB-aligned, uniform over `Plan::sectors` (xorshift, fixed seed).
    Random,
}

#[derive(Clone, Copy)]
pub struct Plan {
    pub kind: Kind,
    pub offsets: Offsets,
    pub depth: usize,
    /// Data bytes per request.
    pub req_bytes: u32,
    /// Sectors of the disk the requests fall in (blk IN/OUT); for fs, of the file (set by
    /// `fsreq::setup`).
    pub sectors: u64,
    pub mode: Completion,
    /// Phase lengths, and how long nothing may complete, in TSC cycles.
    pub warmup: u64,
    pub measure: u64,
    pub stall: u64,
    /// The measured phase goes on until at least this many requests completed.
    pub min_requests: u64,
    /// The fs benchmarks' session (set by `fsreq::setup` when the loop starts).
    pub fs: fsreq::Target,
}

/// What the measured phase did.
#[derive(Default)]
pub struct Figures {
    pub requests: u64,
    pub bytes: u64,
    pub cycles: u64,
    /// QueueNotify writes over the whole run.
    pub notifies: u64,
}

/// Why the loop stopped early.
#[derive(Clone, Copy)]
pub enum Failure {
    /// Nothing completed for `Plan::stall` cycles.
    Stall {
        inflight: usize,
    },
    UsedId {
        id: u32,
    },
    Status {
        got: u8,
        slot: usize,
    },
    Len {
        got: u32,
        want: u32,
    },
    /// A FUSE reply with an error.
    Errno {
        errno: i32,
        slot: usize,
    },
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match *self {
            Failure::Stall { inflight } => write!(f, "timeout inflight={inflight}"),
            Failure::UsedId { id } => write!(f, "used_id got={id}"),
            Failure::Status { got, slot } => write!(f, "status={got} slot={slot}"),
            Failure::Len { got, want } => write!(f, "short len={got} want={want}"),
            Failure::Errno { errno, slot } => write!(f, "errno={errno} slot={slot}"),
        }
    }
}

impl Plan {
    fn descs(&self) -> usize {
        match self.kind {
            Kind::Rng => 1,
            Kind::Blk(_) | Kind::Fs(_) => 3,
        }
    }

    /// Bytes of buffer space per slot.
    pub fn stride(&self) -> usize {
        match self.kind {
            Kind::Fs(_) => fsreq::stride(self.req_bytes),
            _ => (self.req_bytes as usize).div_ceil(PAGE) * PAGE,
        }
    }

    /// Whether `depth` slots fit the ring, the slot tables and the buffer space.
    pub fn fits(&self, ring_size: u16) -> bool {
        self.depth >= 1
            && self.depth <= MAX_DEPTH
            && self.depth * self.descs() <= usize::from(ring_size)
            && DATA + self.depth * self.stride() <= BUF_BYTES
    }
}

/// Base address of the bench buffer space.
pub fn buffers() -> usize {
    BUF.0.get() as usize
}

/// Writes slot `slot`'s request for `sector` and returns its head descriptor.
#[inline]
pub fn prepare(plan: &Plan, ring: &mut FastRing, slot: usize, sector: u64) -> u16 {
    let buf = buffers();
    let data = (buf + DATA + slot * plan.stride()) as u64;
    match plan.kind {
        // `sector` counts requests for META, is the file offset / 512 for I/O.
        Kind::Fs(op) => fsreq::prepare(plan, op, &plan.fs, ring, slot, sector, sector * SECTOR),
        Kind::Rng => {
            let head = slot as u16;
            ring.set_desc(head, data, plan.req_bytes, DESC_F_WRITE, 0);
            head
        }
        Kind::Blk(kind) => {
            let header = buf + HEADERS + 16 * slot;
            let status = buf + STATUS + slot;
            // SAFETY: slot < MAX_DEPTH, so the header and status byte lie in their tables
            // inside BUF; the slot is not in flight.
            unsafe {
                write_volatile(header as *mut u32, kind);
                write_volatile((header + 4) as *mut u32, 0);
                write_volatile((header + 8) as *mut u64, sector);
                write_volatile(status as *mut u8, NO_STATUS);
            }
            let head = (3 * slot) as u16;
            let data_flags = if kind == T_OUT { 0 } else { DESC_F_WRITE };
            ring.set_desc(head, header as u64, 16, DESC_F_NEXT, head + 1);
            ring.set_desc(
                head + 1,
                data,
                plan.req_bytes,
                data_flags | DESC_F_NEXT,
                head + 2,
            );
            ring.set_desc(head + 2, status as u64, 1, DESC_F_WRITE, 0);
            head
        }
    }
}

/// Checks a returned request of slot `slot` with used length `len`.
#[inline]
fn check(plan: &Plan, slot: usize, len: u32) -> Result<(), Failure> {
    match plan.kind {
        Kind::Rng if len != plan.req_bytes => Err(Failure::Len {
            got: len,
            want: plan.req_bytes,
        }),
        Kind::Rng => Ok(()),
        Kind::Fs(op) => fsreq::check(plan, op, slot, len),
        Kind::Blk(_) => {
            // SAFETY: the slot's status byte inside BUF; the device has returned the request.
            let got = unsafe { read_volatile((buffers() + STATUS + slot) as *const u8) };
            if got == 0 {
                Ok(())
            } else {
                Err(Failure::Status { got, slot })
            }
        }
    }
}

/// Waits until the device has returned something, or `deadline` passes.
#[inline]
fn wait(ring: &FastRing, mode: Completion, deadline: u64) -> Result<(), Failure> {
    loop {
        let irqs = apic::device_count();
        if ring.has_used() {
            return Ok(());
        }
        match mode {
            Completion::Poll => {
                while !ring.has_used() {
                    if rdtsc() > deadline {
                        return Err(Failure::Stall { inflight: 0 });
                    }
                    spin_loop();
                }
                return Ok(());
            }
            Completion::Irq => {
                while apic::device_count() == irqs {
                    if rdtsc() > deadline {
                        return Err(Failure::Stall { inflight: 0 });
                    }
                    spin_loop();
                }
            }
        }
    }
}

/// The loop (ring 3). Latencies of the measured phase go to `samples`. An fs benchmark opens
/// its session first (`fsreq::setup`).
pub fn run(plan: &Plan, ring: &mut FastRing, samples: &mut Samples) -> Result<Figures, Failure> {
    let mut plan = *plan;
    let plan = &mut plan;
    if let Kind::Fs(_) = plan.kind {
        plan.fs = fsreq::setup(plan, ring)?;
        plan.sectors = plan.fs.size / SECTOR;
    }
    let plan = &*plan;
    let mut submitted = [0u64; MAX_DEPTH];
    let mut random = XorShift::new(XorShift::SEED);
    let req_sectors = u64::from(plan.req_bytes) / SECTOR;
    let blocks = plan.sectors / 8;
    let mut next_sector = 0;
    let mut sector = || match plan.offsets {
        Offsets::Sequential => {
            if next_sector + req_sectors > plan.sectors {
                next_sector = 0;
            }
            next_sector += req_sectors;
            next_sector - req_sectors
        }
        Offsets::Random => random.next() % blocks.max(1) * 8,
    };

    ring.set_no_interrupt(plan.mode == Completion::Poll);
    for (slot, at) in submitted.iter_mut().enumerate().take(plan.depth) {
        let head = prepare(plan, ring, slot, sector());
        *at = rdtsc();
        ring.publish(head);
    }
    ring.kick();
    let mut inflight = plan.depth;
    let mut figures = Figures::default();
    let (mut measuring, mut stopping) = (false, false);
    let mut start = rdtsc();
    let mut phase_end = start + plan.warmup;
    loop {
        let deadline = rdtsc() + plan.stall;
        wait(ring, plan.mode, deadline).map_err(|_| Failure::Stall { inflight })?;
        let now = rdtsc();
        let mut resubmitted = false;
        while let Some((id, len)) = ring.pop_used() {
            let slot = id as usize / plan.descs();
            if slot >= plan.depth || !(id as usize).is_multiple_of(plan.descs()) {
                return Err(Failure::UsedId { id });
            }
            check(plan, slot, len)?;
            inflight -= 1;
            if measuring && !stopping {
                figures.requests += 1;
                figures.bytes += u64::from(plan.req_bytes);
                samples.push(now - submitted[slot]);
            }
            if !stopping {
                let head = prepare(plan, ring, slot, sector());
                submitted[slot] = rdtsc();
                ring.publish(head);
                inflight += 1;
                resubmitted = true;
            }
        }
        if resubmitted {
            ring.kick();
        }
        if !measuring && now >= phase_end {
            measuring = true;
            start = now;
            phase_end = now + plan.measure;
        } else if measuring
            && !stopping
            && now >= phase_end
            && figures.requests >= plan.min_requests
        {
            stopping = true;
            figures.cycles = now - start;
        }
        if stopping && inflight == 0 {
            break;
        }
    }
    figures.notifies = ring.notifies;
    Ok(figures)
}
