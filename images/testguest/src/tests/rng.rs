//! `rng` and `rng_reinit`: entropy from a virtio-rng device (device ID 4) through the guest's
//! own virtqueue driver (`crate::virtio`).
//!
//! `rng` makes `REQUESTS` requests of `REQUEST_BYTES` bytes each, one of them as a chain of
//! two descriptors, and checks each: the used length is the size asked for, the bytes are not
//! all equal (so not all zero), and they differ from the previous request's. It reports
//! `bytes=N requests=M us=T kib_s=R` (time from the first submit to the last completion).
//!
//! Both drive the first virtio-rng device, or the N-th (from 0) when run as `rng@N`.
//!
//! `rng_loop` (by name only): the `rng` requests and checks, over and over for
//! `testguest.loop_ms=` ms (after a `running rng_loop` line), for a harness that kills the
//! device's worker meanwhile: every request must come back, checked, within the driver's
//! timeouts. It reports `requests=N bytes=B`.
//!
//! `rng_reinit` (by name only): one request, a reset (status 0), a second full initialisation
//! and one more request. Where the device's back end has died the second initialisation must
//! be refused cleanly (`needs_reset` or `features_ok_refused`), within the driver's timeouts.

use crate::cmdline::MmioDevice;
use crate::fig;
use crate::line::Line;
use crate::tests::{Ctx, Outcome};
use crate::virtio::mmio::Mmio;
use crate::virtio::queue::{self, Buf};
use crate::virtio::{self, Device, ID_RNG};

const REQUESTS: u32 = 32;
const REQUEST_BYTES: usize = 64;
/// Which request uses the two-descriptor chain.
const CHAIN_REQUEST: u32 = 5;

const SINGLE: [Buf; 1] = [Buf::writable(0, REQUEST_BYTES as u32)];
/// 40 + 24 bytes, in different places of the buffer space.
const CHAIN: [Buf; 2] = [
    Buf::writable(0, 40),
    Buf::writable(2048, (REQUEST_BYTES - 40) as u32),
];

pub fn applies(devices: &[MmioDevice]) -> bool {
    virtio::find(devices, ID_RNG).is_some()
}

/// Never in the default set: it is for the harness's dead-worker checks.
pub fn applies_reinit(_devices: &[MmioDevice]) -> bool {
    false
}

/// The virtio-rng device the test drives: the first, or the one `rng@N` names.
fn device(ctx: &Ctx) -> Result<Mmio, Line> {
    virtio::find_nth(ctx.devices, ID_RNG, ctx.instance).ok_or_else(|| fig!("no_device"))
}

fn init<'t>(mmio: Mmio, ctx: &'t Ctx, step: &str) -> Result<Device<'t>, Line> {
    Device::init(mmio, 0, ctx.timer).map_err(|e| fig!("{} step={}", e, step))
}

/// One request of `REQUEST_BYTES` over `bufs`, checked against the previous request's bytes
/// (`previous`, updated). `n` numbers the request in failure reasons.
fn request(
    dev: &mut Device,
    bufs: &[Buf],
    previous: &mut [u8; REQUEST_BYTES],
    n: u32,
) -> Result<(), Line> {
    for &buf in bufs {
        queue::fill(buf, 0);
    }
    let len = dev.request(bufs).map_err(|e| fig!("{} request={}", e, n))?;
    if len as usize != REQUEST_BYTES {
        return Err(fig!(
            "short len={} want={} request={}",
            len,
            REQUEST_BYTES,
            n
        ));
    }
    let mut bytes = [0u8; REQUEST_BYTES];
    let mut at = 0;
    for &buf in bufs {
        at += queue::read(buf, &mut bytes[at..]);
    }
    if bytes.iter().all(|&b| b == bytes[0]) {
        return Err(fig!("all_equal byte={:#x} request={}", bytes[0], n));
    }
    if bytes == *previous {
        return Err(fig!("repeated request={}", n));
    }
    *previous = bytes;
    Ok(())
}

pub fn run(ctx: &Ctx) -> Outcome {
    let mmio = device(ctx)?;
    let mut dev = init(mmio, ctx, "init")?;
    let mut previous = [0u8; REQUEST_BYTES];
    let start = ctx.timer.now_us();
    for n in 0..REQUESTS {
        let bufs: &[Buf] = if n == CHAIN_REQUEST { &CHAIN } else { &SINGLE };
        request(&mut dev, bufs, &mut previous, n)?;
    }
    let us = ctx.timer.now_us() - start;
    dev.reset().map_err(|e| fig!("{} step=reset", e))?;
    let bytes = u64::from(REQUESTS) * REQUEST_BYTES as u64;
    let kib_s = bytes * 1_000_000 / 1024 / us.max(1);
    Ok(fig!(
        "bytes={} requests={} us={} kib_s={}",
        bytes,
        REQUESTS,
        us,
        kib_s
    ))
}

pub fn run_loop(ctx: &Ctx) -> Outcome {
    let mmio = device(ctx)?;
    let mut dev = init(mmio, ctx, "init")?;
    let mut previous = [0u8; REQUEST_BYTES];
    crate::say!("running rng_loop ms={}", ctx.params.loop_ms);
    let deadline = ctx.timer.deadline_ms(ctx.params.loop_ms);
    let mut n = 0u32;
    while n == 0 || !ctx.timer.expired(deadline) {
        let bufs: &[Buf] = if n % 8 == CHAIN_REQUEST { &CHAIN } else { &SINGLE };
        request(&mut dev, bufs, &mut previous, n)?;
        n += 1;
    }
    dev.reset().map_err(|e| fig!("{} step=reset", e))?;
    Ok(fig!(
        "requests={} bytes={}",
        n,
        u64::from(n) * REQUEST_BYTES as u64
    ))
}

pub fn run_reinit(ctx: &Ctx) -> Outcome {
    let mmio = device(ctx)?;
    let mut previous = [0u8; REQUEST_BYTES];
    let mut dev = init(mmio, ctx, "init")?;
    request(&mut dev, &SINGLE, &mut previous, 0)?;
    dev.reset().map_err(|e| fig!("{} step=reset", e))?;
    let mut dev = init(mmio, ctx, "reinit")?;
    request(&mut dev, &SINGLE, &mut previous, 1)?;
    dev.reset().map_err(|e| fig!("{} step=reset", e))?;
    Ok(fig!("bytes={} requests=2", 2 * REQUEST_BYTES))
}
