//! The virtio-wl benchmarks (by name only, poll mode only): their loops run in ring 3 with the
//! device's rings polled directly (`WlDev::set_lean`: no register reads, so the only exits are
//! the queue notifications, and `VIRTQ_AVAIL_F_NO_INTERRUPT` on both queues, so the device
//! injects no interrupt the loop would not take), after set-up in ring 0.
//!
//! - `bench_wl_sync`: `wl_display.sync` round trips — the request out as a `VFD_SEND`, the
//!   `done` (and `delete_id`, after which the callback id is used again) back through the in
//!   queue; latency percentiles per round trip.
//! - `bench_wl_fps`: a fullscreen window whose whole shared-memory buffer the guest rewrites
//!   every frame, then attach, damage, frame callback and commit in one send, and the next
//!   frame once the callback is done: frames per second (paced by the compositor's repaint,
//!   as for any Wayland client) and the time per frame.
//!
//! Every phase: a warm-up of `bench_ms / 10` (10..200 ms), then `testguest.bench_ms`.

use super::client::Client;
use super::window::Window;
use super::wire::Msg;
use super::{CTX, POOL_VFD};
use crate::arch::user;
use crate::fig;
use crate::line::Line;
use crate::tests::bench::samples::Samples;
use crate::tests::{Ctx, Outcome};
use crate::timer::rdtsc;

/// `wl_display`.
const DISPLAY: u32 = 1;
/// Fewer measured iterations than this fail the test.
const MIN_ITERATIONS: u64 = 4;

/// Warm-up and measured phase lengths in TSC cycles.
fn phases(ctx: &Ctx) -> (u64, u64) {
    let khz = ctx.timer.tsc_khz();
    let ms = ctx.params.bench_ms;
    ((ms / 10).clamp(10, 200) * khz, ms * khz)
}

/// Times `step` in ring 3 (interrupts off): a warm-up, then the measured phase, one sample per
/// step; sorts the samples there too. Returns the measured steps and the cycles they took.
fn measure_in_ring3(
    ctx: &Ctx,
    samples: &mut Samples,
    mut step: impl FnMut() -> Result<(), Line>,
) -> Result<(u64, u64), Line> {
    let (warmup, measure) = phases(ctx);
    let mut outcome = None;
    let left = user::run(false, &mut || {
        let start = rdtsc();
        let mut first = None;
        let mut steps = 0u64;
        let result = loop {
            let t0 = rdtsc();
            if let Err(e) = step() {
                break Err(e);
            }
            let t1 = rdtsc();
            if t1 - start < warmup {
                continue;
            }
            let from = *first.get_or_insert(t0);
            samples.push(t1 - t0);
            steps += 1;
            if t1 - from >= measure && steps >= MIN_ITERATIONS {
                break Ok((steps, t1 - from));
            }
        };
        samples.sort();
        let failed = result.is_err();
        outcome = Some(result);
        u64::from(failed)
    });
    left.map_err(|e| fig!("ring3 {}", e))?;
    outcome.unwrap_or_else(|| Err(fig!("no_result")))
}

/// Waits for `callback.done`, then for `delete_id` of it (so its id may be used again).
fn await_callback(c: &mut Client, callback: u32) -> Result<(), Line> {
    let (mut done, mut deleted) = (false, false);
    while !(done && deleted) {
        let event = c.next_event()?;
        done |= event.object == callback && event.opcode == 0;
        deleted |= event.object == DISPLAY && event.opcode == 1 && c.deleted == callback;
    }
    Ok(())
}

fn percentiles(ctx: &Ctx, samples: &mut Samples) -> (u64, u64, u64) {
    let mean = samples.sum / samples.seen().max(1);
    (
        ctx.timer.cycles_to_ns(samples.percentile(50)),
        ctx.timer.cycles_to_ns(samples.percentile(99)),
        ctx.timer.cycles_to_ns(mean),
    )
}

pub fn run_sync(ctx: &Ctx) -> Outcome {
    let mut c = Client::connect(ctx, ctx.instance, CTX)?;
    c.registry()?;
    c.dev.set_lean(true);
    let callback = c.new_id();
    let mut samples = Samples::new();
    let (count, _) = measure_in_ring3(ctx, &mut samples, || {
        c.send(&mut Msg::new(DISPLAY, 0).uint(callback), &[])?;
        await_callback(&mut c, callback)
    })?;
    c.dev.set_lean(false);
    let (p50, p99, mean) = percentiles(ctx, &mut samples);
    c.dev.command_ok(&super::dev::close(CTX), "close_ctx")?;
    c.close()?;
    Ok(fig!(
        "mode=poll requests={} p50_ns={} p99_ns={} mean_ns={}",
        count,
        p50,
        p99,
        mean
    ))
}

/// Rewrites the whole buffer (`words` 8-byte words at `addr`) with a value that changes every
/// frame.
fn rewrite(addr: u64, words: usize, frame: u64) {
    let base = addr as *mut u64;
    // X bytes 0xff (see `super::fill`).
    let value = frame.wrapping_mul(0x0001_0203_0001_0203) | 0xff00_0000_ff00_0000;
    for i in 0..words {
        // SAFETY: inside the window's buffer (width * height * 4 bytes = words * 8), identity
        // mapped by `Window::buffer`; the compositor only reads it after the commit.
        unsafe { core::ptr::write_volatile(base.add(i), value ^ i as u64) };
    }
}

pub fn run_fps(ctx: &Ctx) -> Outcome {
    let mut c = Client::connect(ctx, ctx.instance, CTX)?;
    let win = Window::open(&mut c, "svmm bench_wl_fps")?;
    let buf = win.buffer(&mut c, POOL_VFD)?;
    c.dev.set_lean(true);
    let words = (win.width * win.height / 2) as usize;
    let callback = c.new_id();
    let mut samples = Samples::new();
    let mut frame = 0u64;
    let mut commit = [0u8; 256];
    let (frames, cycles) = measure_in_ring3(ctx, &mut samples, || {
        rewrite(buf.addr, words, frame);
        frame += 1;
        let n = win.present(&mut commit, buf.buffer, callback);
        c.send_raw(CTX, &commit[..n], &[])?;
        await_callback(&mut c, callback)
    })?;
    c.dev.set_lean(false);
    let (p50, p99, mean) = percentiles(ctx, &mut samples);
    buf.destroy(&mut c)?;
    c.dev.command_ok(&super::dev::close(CTX), "close_ctx")?;
    c.close()?;
    let ns = ctx.timer.cycles_to_ns(cycles).max(1);
    Ok(fig!(
        "mode=poll width={} height={} frames={} us={} fps_x100={} p50_ns={} p99_ns={} mean_ns={}",
        win.width,
        win.height,
        frames,
        ns / 1000,
        u128::from(frames) * 100_000_000_000 / u128::from(ns),
        p50,
        p99,
        mean
    ))
}
