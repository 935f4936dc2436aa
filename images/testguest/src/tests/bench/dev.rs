//! The device benchmarks. Each initialises its device with queue 0 only (up to 256 entries,
//! `virtio::fastq`), runs `engine::run` in ring 3 (interrupts enabled there in `irq` mode,
//! with the device's pin routed to the local APIC), then resets the device and reports:
//!
//! - `bench_rng`: 4 KiB requests, depth 8, on the first (or `@N`-th) virtio-rng device;
//! - `bench_seqread` / `bench_seqwrite`: 128 KiB requests, depth 8, from sector 0 on, wrapping
//!   at the end of the disk (`bench_seqwrite` overwrites the image);
//! - `bench_rand1` / `bench_rand16`: 4 KiB reads at random 4 KiB-aligned offsets (xorshift,
//!   fixed seed), depth 1 / 16, with completion latency percentiles;
//! - `bench_getid`: GET_ID (20 bytes) at depth 1, the null request;
//! - `bench_fs_meta`: LOOKUP of `bench.bin` in the share's root and GETATTR of it,
//!   alternately, depth 1, with latencies;
//! - `bench_fs_rand4k`: 4 KiB READs of `bench.bin` at random 4 KiB-aligned offsets, depth 16;
//! - `bench_fs_seqread` / `bench_fs_seqwrite`: 128 KiB READs / WRITEs of `bench.bin`, depth 8,
//!   from offset 0, wrapping at its end (`bench_fs_seqwrite` overwrites it).
//!
//! Every phase: a warm-up of `bench_ms / 10` (10..200 ms), then `testguest.bench_ms` (and at
//! least `MIN_REQUESTS` requests), then what is in flight drains uncounted.

use super::engine::{self, Figures, Kind, Offsets, Plan, SECTOR, T_GET_ID, T_IN, T_OUT};
use super::fsreq::FsOp;
use super::samples::Samples;
use crate::arch::{apic, user};
use crate::cmdline::{Completion, MmioDevice};
use crate::fig;
use crate::line::Line;
use crate::tests::{Ctx, Outcome};
use crate::virtio::fastq::MAX_SIZE;
use crate::virtio::mmio::Mmio;
use crate::virtio::{self, Device, Probe, ID_BLOCK, ID_RNG};

/// virtio device ID of a file system device.
const ID_FS: u32 = 26;
const FS_RAND_DEPTH: usize = 16;

const MIN_REQUESTS: u64 = 16;
/// Nothing completing for this long fails the test.
const STALL_MS: u64 = 10_000;
/// The blk benchmarks need a disk of at least 64 MiB.
const MIN_SECTORS: u64 = (64 << 20) / SECTOR;
const F_RO: u64 = 1 << 5;
/// InterruptStatus bit 0: used buffer.
const INT_VRING: u64 = 1;
const RNG_BYTES: u32 = 4096;
const RNG_DEPTH: usize = 8;
const SEQ_KIB: u32 = 128;
const SEQ_DEPTH: usize = 8;
const RAND_BYTES: u32 = 4096;
const ID_BYTES: u32 = 20;

/// The `ctx.instance`-th device with ID `id`, with its command-line entry (for the pin).
fn find(ctx: &Ctx, id: u32) -> Result<(MmioDevice, Mmio), Line> {
    ctx.devices
        .iter()
        .filter_map(|dev| match virtio::probe(dev) {
            Probe::Device { mmio, id: found } if found == id => Some((*dev, mmio)),
            _ => None,
        })
        .nth(ctx.instance)
        .ok_or_else(|| fig!("no_device"))
}

fn plan(ctx: &Ctx, kind: Kind, offsets: Offsets, depth: usize, req_bytes: u32) -> Plan {
    let khz = ctx.timer.tsc_khz();
    let ms = ctx.params.bench_ms;
    Plan {
        kind,
        offsets,
        depth,
        req_bytes,
        sectors: 0,
        mode: ctx.params.irq,
        warmup: (ms / 10).clamp(10, 200) * khz,
        measure: ms * khz,
        stall: STALL_MS * khz,
        min_requests: MIN_REQUESTS,
        fs: Default::default(),
    }
}

/// What one benchmark measured.
struct Run {
    figures: Figures,
    samples: Samples,
    irqs: u64,
}

/// Queue 0 set up, the loop run in ring 3, the device reset.
fn measure(ctx: &Ctx, dev: &MmioDevice, mmio: Mmio, plan: &Plan) -> Result<Run, Line> {
    let neg = Device::negotiate(mmio, 0, ctx.timer).map_err(|e| fig!("{} step=init", e))?;
    let (mmio, mut ring) = neg
        .start_fast(MAX_SIZE)
        .map_err(|e| fig!("{} step=init", e))?;
    if !plan.fits(ring.size()) {
        let _ = virtio::reset(mmio, ctx.timer);
        return Err(fig!("queue_size={} depth={}", ring.size(), plan.depth));
    }
    let irq = plan.mode == Completion::Irq;
    if irq {
        if let Err(e) = apic::route_device(dev.irq, mmio.addr(0)) {
            let _ = virtio::reset(mmio, ctx.timer);
            return Err(fig!("{} step=irq", e));
        }
    }
    let mut samples = Samples::new();
    let mut outcome = None;
    let left = user::run(irq, &mut || {
        let result = engine::run(plan, &mut ring, &mut samples);
        samples.sort();
        let failed = result.is_err();
        outcome = Some(result);
        u64::from(failed)
    });
    if irq {
        apic::mask_device(dev.irq);
    }
    let irqs = apic::device_count();
    let status = apic::device_status();
    virtio::reset(mmio, ctx.timer).map_err(|e| fig!("{} step=reset", e))?;
    left.map_err(|e| fig!("{}", e))?;
    // Woken by interrupts whose InterruptStatus never had the used-buffer bit: the
    // transport is wrong (the ring was read anyway, so the loop itself could not tell).
    if irq && status & INT_VRING == 0 {
        return Err(fig!(
            "no_vring_interrupt irqs={} status={:#x}",
            irqs,
            status
        ));
    }
    match outcome {
        Some(Ok(figures)) => Ok(Run {
            figures,
            samples,
            irqs: if irq { irqs } else { 0 },
        }),
        Some(Err(e)) => Err(fig!("{}", e)),
        None => Err(fig!("no_result")),
    }
}

/// Bytes per second in KiB/s, operations per second, from a count and TSC cycles.
fn per_second(ctx: &Ctx, count: u64, cycles: u64) -> u64 {
    let ns = ctx.timer.cycles_to_ns(cycles).max(1);
    (u128::from(count) * 1_000_000_000 / u128::from(ns)) as u64
}

pub fn run_rng(ctx: &Ctx) -> Outcome {
    let (dev, mmio) = find(ctx, ID_RNG)?;
    let plan = plan(ctx, Kind::Rng, Offsets::Sequential, RNG_DEPTH, RNG_BYTES);
    let run = measure(ctx, &dev, mmio, &plan)?;
    let f = &run.figures;
    Ok(fig!(
        "mode={} req_bytes={} depth={} requests={} bytes={} us={} kib_s={} notifies={} irqs={}",
        plan.mode.name(),
        plan.req_bytes,
        plan.depth,
        f.requests,
        f.bytes,
        ctx.timer.cycles_to_us(f.cycles),
        per_second(ctx, f.bytes, f.cycles) / 1024,
        f.notifies,
        run.irqs
    ))
}

/// A blk benchmark's device and the sectors its requests may use (the whole disk, at least
/// 64 MiB).
fn blk(ctx: &Ctx, write: bool) -> Result<(MmioDevice, Mmio, u64), Line> {
    let (dev, mmio) = find(ctx, ID_BLOCK)?;
    if write && virtio::device_features(mmio) & F_RO != 0 {
        return Err(fig!("read_only"));
    }
    // Readable before FEATURES_OK too, but read after a reset like the blk tests do.
    virtio::reset(mmio, ctx.timer).map_err(|e| fig!("{} step=reset", e))?;
    let capacity = mmio.config64(0).map_err(|e| fig!("{} step=config", e))?;
    if capacity < MIN_SECTORS {
        return Err(fig!("capacity={} below={}", capacity, MIN_SECTORS));
    }
    Ok((dev, mmio, capacity))
}

fn run_seq(ctx: &Ctx, write: bool) -> Outcome {
    let (dev, mmio, capacity) = blk(ctx, write)?;
    let kind = Kind::Blk(if write { T_OUT } else { T_IN });
    let mut plan = plan(ctx, kind, Offsets::Sequential, SEQ_DEPTH, SEQ_KIB * 1024);
    plan.sectors = capacity;
    let run = measure(ctx, &dev, mmio, &plan)?;
    let f = &run.figures;
    Ok(fig!(
        "mode={} req_kib={} depth={} requests={} bytes={} us={} kib_s={} iops={} notifies={} irqs={}",
        plan.mode.name(),
        SEQ_KIB,
        plan.depth,
        f.requests,
        f.bytes,
        ctx.timer.cycles_to_us(f.cycles),
        per_second(ctx, f.bytes, f.cycles) / 1024,
        per_second(ctx, f.requests, f.cycles),
        f.notifies,
        run.irqs
    ))
}

pub fn run_seqread(ctx: &Ctx) -> Outcome {
    run_seq(ctx, false)
}

pub fn run_seqwrite(ctx: &Ctx) -> Outcome {
    run_seq(ctx, true)
}

/// p50, p99 and mean latency in ns.
fn latencies(ctx: &Ctx, samples: &mut Samples) -> (u64, u64, u64) {
    let ns = |cycles| ctx.timer.cycles_to_ns(cycles);
    let mean = samples.sum / samples.seen().max(1);
    (
        ns(samples.percentile(50)),
        ns(samples.percentile(99)),
        ns(mean),
    )
}

fn run_rand(ctx: &Ctx, depth: usize) -> Outcome {
    let (dev, mmio, capacity) = blk(ctx, false)?;
    let mut plan = plan(ctx, Kind::Blk(T_IN), Offsets::Random, depth, RAND_BYTES);
    plan.sectors = capacity;
    let mut run = measure(ctx, &dev, mmio, &plan)?;
    let (p50, p99, mean) = latencies(ctx, &mut run.samples);
    let f = &run.figures;
    Ok(fig!(
        "mode={} depth={} requests={} us={} iops={} p50_ns={} p99_ns={} mean_ns={} kib_s={} notifies={} irqs={}",
        plan.mode.name(),
        depth,
        f.requests,
        ctx.timer.cycles_to_us(f.cycles),
        per_second(ctx, f.requests, f.cycles),
        p50,
        p99,
        mean,
        per_second(ctx, f.bytes, f.cycles) / 1024,
        f.notifies,
        run.irqs
    ))
}

pub fn run_rand1(ctx: &Ctx) -> Outcome {
    run_rand(ctx, 1)
}

pub fn run_rand16(ctx: &Ctx) -> Outcome {
    run_rand(ctx, 16)
}

pub fn run_getid(ctx: &Ctx) -> Outcome {
    let (dev, mmio) = find(ctx, ID_BLOCK)?;
    let plan = plan(ctx, Kind::Blk(T_GET_ID), Offsets::Sequential, 1, ID_BYTES);
    let mut run = measure(ctx, &dev, mmio, &plan)?;
    let (p50, p99, mean) = latencies(ctx, &mut run.samples);
    let f = &run.figures;
    Ok(fig!(
        "mode={} requests={} p50_ns={} p99_ns={} mean_ns={} us={} iops={} notifies={} irqs={}",
        plan.mode.name(),
        f.requests,
        p50,
        p99,
        mean,
        ctx.timer.cycles_to_us(f.cycles),
        per_second(ctx, f.requests, f.cycles),
        f.notifies,
        run.irqs
    ))
}

pub fn run_fs_meta(ctx: &Ctx) -> Outcome {
    let (dev, mmio) = find(ctx, ID_FS)?;
    // 512 "bytes" per request: the loop's counter of requests (LOOKUP on even, GETATTR on odd).
    let plan = plan(ctx, Kind::Fs(FsOp::Meta), Offsets::Sequential, 1, 512);
    let mut run = measure(ctx, &dev, mmio, &plan)?;
    let (p50, p99, mean) = latencies(ctx, &mut run.samples);
    let f = &run.figures;
    Ok(fig!(
        "mode={} depth=1 requests={} us={} ops_s={} p50_ns={} p99_ns={} mean_ns={} notifies={} irqs={}",
        plan.mode.name(),
        f.requests,
        ctx.timer.cycles_to_us(f.cycles),
        per_second(ctx, f.requests, f.cycles),
        p50,
        p99,
        mean,
        f.notifies,
        run.irqs
    ))
}

pub fn run_fs_rand4k(ctx: &Ctx) -> Outcome {
    let (dev, mmio) = find(ctx, ID_FS)?;
    let plan = plan(
        ctx,
        Kind::Fs(FsOp::Read),
        Offsets::Random,
        FS_RAND_DEPTH,
        RAND_BYTES,
    );
    let mut run = measure(ctx, &dev, mmio, &plan)?;
    let (p50, p99, mean) = latencies(ctx, &mut run.samples);
    let f = &run.figures;
    Ok(fig!(
        "mode={} depth={} requests={} us={} iops={} p50_ns={} p99_ns={} mean_ns={} kib_s={} notifies={} irqs={}",
        plan.mode.name(),
        FS_RAND_DEPTH,
        f.requests,
        ctx.timer.cycles_to_us(f.cycles),
        per_second(ctx, f.requests, f.cycles),
        p50,
        p99,
        mean,
        per_second(ctx, f.bytes, f.cycles) / 1024,
        f.notifies,
        run.irqs
    ))
}

fn run_fs_seq(ctx: &Ctx, write: bool) -> Outcome {
    let (dev, mmio) = find(ctx, ID_FS)?;
    let op = if write { FsOp::Write } else { FsOp::Read };
    let plan = plan(
        ctx,
        Kind::Fs(op),
        Offsets::Sequential,
        SEQ_DEPTH,
        SEQ_KIB * 1024,
    );
    let run = measure(ctx, &dev, mmio, &plan)?;
    let f = &run.figures;
    Ok(fig!(
        "mode={} req_kib={} depth={} requests={} bytes={} us={} kib_s={} iops={} notifies={} irqs={}",
        plan.mode.name(),
        SEQ_KIB,
        plan.depth,
        f.requests,
        f.bytes,
        ctx.timer.cycles_to_us(f.cycles),
        per_second(ctx, f.bytes, f.cycles) / 1024,
        per_second(ctx, f.requests, f.cycles),
        f.notifies,
        run.irqs
    ))
}

pub fn run_fs_seqread(ctx: &Ctx) -> Outcome {
    run_fs_seq(ctx, false)
}

pub fn run_fs_seqwrite(ctx: &Ctx) -> Outcome {
    run_fs_seq(ctx, true)
}
