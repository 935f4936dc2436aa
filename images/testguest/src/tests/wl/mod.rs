//! The virtio-wl tests (device ID 63), each a real Wayland client of the host's compositor
//! through the device:
//!
//! - `wl`: a context, `wl_display.get_registry` and a round trip; prints every global as
//!   `testguest: wl global NAME INTERFACE VERSION` (the harness compares them with
//!   `wayland-info` against the same compositor) and requires `wl_compositor`, `wl_shm` and
//!   `xdg_wm_base`.
//! - `wl_shm`: a fullscreen `xdg_toplevel` showing a shared-memory buffer the guest allocated with
//!   `VFD_NEW` (in the device's shared-memory region, mapped here) and filled with
//!   [`pattern`]; attach, damage, frame callback, commit, and once the frame is done prints
//!   `testguest: wl_shm ready width=W height=H seed=S` and waits for a console line (the
//!   harness takes a screenshot meanwhile) before it tears down.
//! - `wl_flood` (by name): contexts until refused, then shared-memory vfds (64 KiB) until
//!   refused, then as many again, all refused; prints `testguest: wl_flood begin` first and
//!   `testguest: wl_flood full ...` when done, and waits for a console line at each (the harness
//!   measures svmm's memory), then closes everything.
//! - `wl_pipe`: compositor → guest through a pipe the guest made (`VFD_NEW_PIPE` read end):
//!   weston writes its scene graph into it (`weston_debug_v1.subscribe`, weston runs with
//!   `--debug`), the guest reads to the hang-up; guest → host through a second virtio-wl
//!   device whose socket is the harness's: the guest sends it the read end of a pipe it
//!   writes, the harness reads to EOF and sends the bytes back on the connection.

mod bench;
mod client;
mod dev;
mod window;
mod wire;

pub use bench::{run_fps as run_bench_fps, run_sync as run_bench_sync};
use client::Client;
use dev::{VFD_READ, VFD_WRITE};
use window::Window;
use wire::Msg;

use crate::cmdline::MmioDevice;
use crate::fig;
use crate::say;
use crate::serial;
use crate::tests::{Ctx, Outcome};
use crate::virtio::{self, ID_WL};

/// The context's vfd id in every test.
const CTX: u32 = 1;
/// The vfd id of the window's buffer memory.
const POOL_VFD: u32 = 2;
/// Seed of the `wl_shm` pattern.
const SEED: u32 = 0x00a5_3c96;
/// How long `wl_shm` waits for the harness's line.
const SCREENSHOT_WAIT_MS: u64 = 120_000;

pub fn applies(devices: &[MmioDevice]) -> bool {
    virtio::find(devices, ID_WL).is_some()
}

/// Never by default: `wl_pipe` needs a second device on the harness's socket, `wl_shm` the
/// harness's go-ahead line.
pub fn by_name_only(_devices: &[MmioDevice]) -> bool {
    false
}

/// The `wl_shm` test's pixel at `(x, y)` as XRGB8888 (`0x00RRGGBB`). The harness computes
/// the same and compares every pixel of its screenshot.
pub fn pattern(x: u32, y: u32, seed: u32) -> u32 {
    let r = (x.wrapping_mul(3).wrapping_add(seed)) & 0xff;
    let g = (y.wrapping_mul(5).wrapping_add(seed >> 8)) & 0xff;
    let b = ((x ^ y).wrapping_add(seed >> 16)) & 0xff;
    (r << 16) | (g << 8) | b
}

pub fn run(ctx: &Ctx) -> Outcome {
    let mut c = Client::connect(ctx, ctx.instance, CTX)?;
    c.registry()?;
    for g in &c.globals[..c.nglobals] {
        say!("wl global {} {} {}", g.name, g.interface(), g.version);
    }
    let version = |name| c.global(name).map(|g| g.version);
    let (Some(comp), Some(shm), Some(wm)) = (
        version("wl_compositor"),
        version("wl_shm"),
        version("xdg_wm_base"),
    ) else {
        return Err(fig!("missing_globals count={}", c.nglobals));
    };
    let globals = c.nglobals;
    c.dev.command_ok(&dev::close(CTX), "close_ctx")?;
    c.close()?;
    Ok(fig!(
        "globals={} wl_compositor={} wl_shm={} xdg_wm_base={}",
        globals,
        comp,
        shm,
        wm
    ))
}

/// Fills `w × h` pixels at `addr` (stride `w * 4`) with [`pattern`], two pixels per store.
/// The X byte is 0xff: weston (10, pixman) shows an XRGB8888 pixel whose X byte is 0 as
/// black, so clients set it.
fn fill(addr: u64, w: u32, h: u32, seed: u32) {
    let base = addr as *mut u64;
    let pixel = |x, y| u64::from(0xff00_0000 | pattern(x, y, seed));
    for y in 0..h {
        for x in (0..w).step_by(2) {
            let lo = pixel(x, y);
            let hi = if x + 1 < w { pixel(x + 1, y) } else { 0 };
            let at = (y * w + x) as usize / 2;
            // SAFETY: inside the buffer the device mapped at `addr` (w * h * 4 bytes, w even,
            // so `at` < w * h / 2), identity mapped by `highmem::map`; only this program and
            // the compositor (which reads after the commit) touch it.
            unsafe { core::ptr::write_volatile(base.add(at), lo | (hi << 32)) };
        }
    }
}

/// Reads one console line (the harness's go-ahead), up to `timeout_ms`.
fn wait_line(ctx: &Ctx, timeout_ms: u64) -> Result<(), crate::line::Line> {
    let deadline = ctx.timer.deadline_ms(timeout_ms);
    loop {
        match serial::try_read() {
            Some(b'\r' | b'\n') => return Ok(()),
            Some(_) => {}
            None if ctx.timer.expired(deadline) => return Err(fig!("no_go_ahead")),
            None => {}
        }
    }
}

pub fn run_shm(ctx: &Ctx) -> Outcome {
    let mut c = Client::connect(ctx, ctx.instance, CTX)?;
    let win = Window::open(&mut c, "svmm testguest")?;
    let buf = win.buffer(&mut c, POOL_VFD)?;
    fill(buf.addr, win.width, win.height, SEED);
    let frame = c.new_id();
    let start = ctx.timer.now_us();
    let mut commit = [0u8; 256];
    let n = win.present(&mut commit, buf.buffer, frame);
    c.send_raw(CTX, &commit[..n], &[])?;
    loop {
        let event = c.next_event()?;
        if event.object == frame && event.opcode == 0 {
            break;
        }
    }
    let frame_us = ctx.timer.now_us() - start;
    say!(
        "wl_shm ready width={} height={} seed={:#x}",
        win.width,
        win.height,
        SEED
    );
    wait_line(ctx, SCREENSHOT_WAIT_MS)?;
    // Destroy the buffer and the pool, then drop the connection (the compositor cleans up).
    let pfn = buf.pfn;
    buf.destroy(&mut c)?;
    c.dev.command_ok(&dev::close(CTX), "close_ctx")?;
    c.close()?;
    Ok(fig!(
        "width={} height={} seed={:#x} pfn={:#x} frame_us={}",
        win.width,
        win.height,
        SEED,
        pfn,
        frame_us
    ))
}

pub fn run_pipe(ctx: &Ctx) -> Outcome {
    // Compositor → guest: weston writes its scene graph into the guest's pipe.
    let mut c = Client::connect(ctx, 0, CTX)?;
    let registry = c.registry()?;
    let debug = c.bind(registry, "weston_debug_v1", 1)?;
    const READ_PIPE: u32 = 2;
    c.dev.command_new(
        &dev::vfd_new(dev::CMD_VFD_NEW_PIPE, READ_PIPE, VFD_READ, 0),
        "new_pipe_read",
    )?;
    c.side.id = READ_PIPE;
    let stream = c.new_id();
    let mut subscribe = Msg::new(debug, 1).string("scene-graph").uint(stream);
    c.send(&mut subscribe, &[READ_PIPE])?;
    while !c.side.hup {
        c.pump()?;
    }
    let text = &c.side.data[..c.side.len];
    let found = text.windows(20).any(|w| w == b"Output 0 (headless):");
    if !found {
        let mut reason = fig!("scene_graph_without_output len={} text=", c.side.len);
        reason.push_bytes(&text[..text.len().min(60)]);
        return Err(reason);
    }
    let from_compositor = c.side.len;
    c.dev
        .command_ok(&dev::close(READ_PIPE), "close_pipe_read")?;
    c.dev.command_ok(&dev::close(CTX), "close_ctx")?;
    c.close()?;

    // Guest → host: the harness's peer gets the read end of a pipe the guest writes.
    let mut p = Client::connect(ctx, 1, CTX)?;
    const WRITE_PIPE: u32 = 3;
    p.dev.command_new(
        &dev::vfd_new(dev::CMD_VFD_NEW_PIPE, WRITE_PIPE, VFD_WRITE, 0),
        "new_pipe_write",
    )?;
    p.send_raw(CTX, b"pipe", &[WRITE_PIPE])?;
    let mut sent = [0u8; 3000];
    for (i, b) in sent.iter_mut().enumerate() {
        *b = b'a' + (i % 26) as u8;
    }
    for chunk in sent.chunks(1000) {
        p.send_raw(WRITE_PIPE, chunk, &[])?;
    }
    p.dev
        .command_ok(&dev::close(WRITE_PIPE), "close_pipe_write")?;
    // The peer echoes what it read back on the connection: file the context's bytes as side
    // data (no Wayland on this connection).
    p.side.id = CTX;
    p.ctx = 0;
    while p.side.len < sent.len() && !p.side.hup {
        p.pump()?;
    }
    if p.side.data[..p.side.len.min(sent.len())] != sent[..] || p.side.len != sent.len() {
        return Err(fig!("echo_mismatch len={}", p.side.len));
    }
    p.dev.command_ok(&dev::close(CTX), "close_ctx")?;
    p.close()?;
    Ok(fig!(
        "from_compositor={} to_host={}",
        from_compositor,
        sent.len()
    ))
}

/// Contexts and vfds `wl_flood` asks for at most before it calls a missing limit a failure.
const FLOOD_MAX: u32 = 4096;

pub fn run_flood(ctx: &Ctx) -> Outcome {
    let mut dev = dev::WlDev::open(ctx, ctx.instance)?;
    say!("wl_flood begin");
    wait_line(ctx, SCREENSHOT_WAIT_MS)?;
    let mut flood = |kind: u32, first: u32, size: u32| -> Result<(u32, u32), crate::line::Line> {
        for n in 0..FLOOD_MAX {
            let resp = dev.command(&dev::vfd_new(kind, first + n, 0, size))?;
            if resp.code != dev::RESP_VFD_NEW {
                return Ok((n, resp.code));
            }
        }
        Err(fig!("no_limit kind={:#x} after={}", kind, FLOOD_MAX))
    };
    let (contexts, ctx_refused) = flood(dev::CMD_VFD_NEW_CTX, 1, 0)?;
    let (vfds, refused) = flood(dev::CMD_VFD_NEW, 10_000, 64 << 10)?;
    // Asking on does not get more.
    for n in 0..vfds {
        let resp = dev.command(&dev::vfd_new(dev::CMD_VFD_NEW, 20_000 + n, 0, 64 << 10))?;
        if resp.code == dev::RESP_VFD_NEW {
            return Err(fig!("granted_after_limit n={}", n));
        }
    }
    say!("wl_flood full contexts={} vfds={}", contexts, vfds);
    wait_line(ctx, SCREENSHOT_WAIT_MS)?;
    dev.close()?;
    Ok(fig!(
        "contexts={} ctx_refused={:#x} vfds={} refused={:#x}",
        contexts,
        ctx_refused,
        vfds,
        refused
    ))
}
