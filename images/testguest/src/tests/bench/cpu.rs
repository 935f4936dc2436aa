//! `bench_cpu`: what the guest itself costs, so that the device figures can be judged.
//!
//! - `loop_ring0_ps`, `loop_ring3_ps`: one iteration of the same two-instruction loop
//!   (`dec; jnz`), timed in ring 0 and in ring 3 (iterations doubled until a run takes at
//!   least `LOOP_MS`). On PVM hosts ring 0 is emulated, so the two differ by ~1000×.
//! - `driver_ring3_ns`: one blk-shaped request through the benchmark driver in ring 3 —
//!   build the three-descriptor chain, publish it, kick (fence and `used.flags` check, no
//!   MMIO: there is no device), a device simulated in the guest returns it, consume the used
//!   element — averaged over `DRIVER_REQUESTS`. No VM exits: pure guest cost per request.
//! - `irq_ns`: guest cost of one interrupt taken in ring 3 (delivery, handler, EOI, return):
//!   ring 3 reads the TSC in a tight loop while the local APIC timer fires every
//!   `IRQ_PERIOD_US`; the gap in the TSC around each interrupt is its cost; the median over
//!   up to `IRQ_SAMPLES` interrupts (at most `IRQ_MS` of running). `irqs=` says how many.
//! - `mmio_read_ns`: one `InterruptStatus` read from ring 3 (a VM exit to the VMM) of the first
//!   virtio-mmio device, averaged over `MMIO_READS` (omitted without a device).

use super::engine::{self, Kind, Offsets, Plan, T_IN};
use super::samples::Samples;
use crate::arch::{apic, user};
use crate::cmdline::Completion;
use crate::fig;
use crate::tests::{Ctx, Outcome};
use crate::timer::rdtsc;
use crate::virtio::fastq::{FastRing, DESC_F_WRITE, MAX_SIZE, SET_SIMULATED};
use crate::virtio::{self, mmio, Probe};
use core::arch::asm;
use core::ptr::{read_volatile, write_volatile};

const LOOP_MS: u64 = 5;
const DRIVER_REQUESTS: u64 = 200_000;
const IRQ_PERIOD_US: u64 = 500;
const IRQ_SAMPLES: usize = 1000;
const IRQ_MS: u64 = 500;
const MMIO_READS: u64 = 1000;

/// `n` iterations of `dec; jnz`.
#[inline(never)]
fn pure_loop(n: u64) {
    // SAFETY: register arithmetic and a branch only.
    unsafe { asm!("2:", "dec {0}", "jnz 2b", inout(reg) n => _, options(nomem, nostack)) };
}

/// Picoseconds per iteration of `pure_loop`, run through `call` (ring 0 or ring 3), doubling
/// the count until one run takes `LOOP_MS`.
fn loop_ps(
    ctx: &Ctx,
    mut call: impl FnMut(u64) -> Result<u64, user::Error>,
) -> Result<u64, user::Error> {
    let min = LOOP_MS * ctx.timer.tsc_khz();
    let mut n = 256u64;
    loop {
        let cycles = call(n)?;
        if cycles >= min || n >= 1 << 40 {
            return Ok(ctx.timer.cycles_to_ns(cycles * 1000) / n);
        }
        n *= 2;
    }
}

fn timed(n: u64) -> u64 {
    let t0 = rdtsc();
    pure_loop(n);
    rdtsc() - t0
}

/// Average cycles of one request through the driver and the simulated device (ring 3).
fn driver_cycles() -> u64 {
    let mut ring = FastRing::new(SET_SIMULATED, MAX_SIZE, 0);
    let plan = Plan {
        kind: Kind::Blk(T_IN),
        offsets: Offsets::Sequential,
        depth: 1,
        req_bytes: 4096,
        sectors: 1 << 20,
        mode: Completion::Poll,
        warmup: 0,
        measure: 0,
        stall: 0,
        fs: Default::default(),
        min_requests: 0,
    };
    let mut next_avail = 0u16;
    let status = engine::buffers() + engine::STATUS;
    let t0 = rdtsc();
    for n in 0..DRIVER_REQUESTS {
        let head = engine::prepare(&plan, &mut ring, 0, n * 8);
        ring.publish(head);
        ring.kick();
        ring.simulate_device(&mut next_avail, |addr, len, flags| {
            if flags & DESC_F_WRITE != 0 && len == 1 {
                // SAFETY: the status descriptor points at the slot's status byte in BUF.
                unsafe { write_volatile(addr as *mut u8, 0) };
            }
            len
        });
        match ring.pop_used() {
            // SAFETY: slot 0's status byte in BUF.
            Some((0, _)) if unsafe { read_volatile(status as *const u8) } == 0 => {}
            _ => return 0,
        }
    }
    (rdtsc() - t0) / DRIVER_REQUESTS
}

/// Median TSC gap around a timer interrupt in ring 3 (call in ring 3 with interrupts on),
/// and how many gaps were kept.
fn irq_gaps(samples: &mut Samples, until: u64) -> u64 {
    let mut count = apic::timer_count();
    let mut previous = rdtsc();
    let mut pending: Option<u64> = None;
    while samples.seen() < IRQ_SAMPLES as u64 {
        let now = rdtsc();
        let seen = apic::timer_count();
        let gap = now - previous;
        if let Some(earlier) = pending.take() {
            // The interrupt fell either before this iteration's TSC read or after it.
            samples.push(earlier.max(gap));
        }
        if seen == count + 1 {
            pending = Some(gap);
        }
        count = seen;
        previous = now;
        if now > until {
            break;
        }
    }
    samples.sort();
    samples.percentile(50)
}

pub fn run(ctx: &Ctx) -> Outcome {
    let timer = ctx.timer;
    let ring0 = loop_ps(ctx, |n| Ok(timed(n))).map_err(|e| fig!("{}", e))?;
    let ring3 = loop_ps(ctx, |n| user::run(false, &mut || timed(n)))
        .map_err(|e| fig!("{} step=loop", e))?;
    let driver = user::run(false, &mut driver_cycles).map_err(|e| fig!("{} step=driver", e))?;
    if driver == 0 {
        return Err(fig!("driver_simulation"));
    }

    apic::init().map_err(|e| fig!("{} step=apic", e))?;
    let per_ms = apic::timer_per_ms(timer);
    let mut samples = Samples::new();
    let until = timer.deadline_ms(IRQ_MS);
    apic::timer_start((per_ms * IRQ_PERIOD_US / 1000).max(1) as u32, true);
    let gap = user::run(true, &mut || irq_gaps(&mut samples, until));
    apic::timer_stop();
    let gap = gap.map_err(|e| fig!("{} step=irq", e))?;
    if samples.seen() == 0 {
        return Err(fig!("no_timer_irq_in_ring3"));
    }

    let mut line = fig!(
        "loop_ring0_ps={} loop_ring3_ps={} driver_ring3_ns={} irq_ns={} irqs={}",
        ring0,
        ring3,
        timer.cycles_to_ns(driver),
        timer.cycles_to_ns(gap),
        samples.seen()
    );
    let first = ctx.devices.iter().find_map(|dev| match virtio::probe(dev) {
        Probe::Device { mmio, .. } => Some(mmio),
        _ => None,
    });
    if let Some(mmio) = first {
        let reg = mmio.addr(mmio::INTERRUPT_STATUS);
        let cycles = user::run(false, &mut || {
            let t0 = rdtsc();
            for _ in 0..MMIO_READS {
                // SAFETY: the device's InterruptStatus register (MMIO, mapped, no side effect
                // on a read).
                unsafe { read_volatile(reg as *const u32) };
            }
            rdtsc() - t0
        })
        .map_err(|e| fig!("{} step=mmio", e))?;
        let _ = core::fmt::Write::write_fmt(
            &mut line,
            format_args!(" mmio_read_ns={}", timer.cycles_to_ns(cycles) / MMIO_READS),
        );
    }
    Ok(line)
}
