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
//! - `wl_pipe`: compositor → guest through a pipe the guest made (`VFD_NEW_PIPE` read end):
//!   weston writes its scene graph into it (`weston_debug_v1.subscribe`, weston runs with
//!   `--debug`), the guest reads to the hang-up; guest → host through a second virtio-wl
//!   device whose socket is the harness's: the guest sends it the read end of a pipe it
//!   writes, the harness reads to EOF and sends the bytes back on the connection.

mod client;
mod dev;
mod wire;

use client::Client;
use dev::{VFD_READ, VFD_WRITE};
use wire::Msg;

use crate::arch::highmem;
use crate::cmdline::MmioDevice;
use crate::fig;
use crate::say;
use crate::serial;
use crate::tests::{Ctx, Outcome};
use crate::virtio::{self, ID_WL};

/// The context's vfd id in every test.
const CTX: u32 = 1;
/// Default window size if the compositor leaves it to the client.
const DEFAULT_SIZE: (u32, u32) = (320, 240);
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
    c.dev.close()?;
    Ok(fig!(
        "globals={} wl_compositor={} wl_shm={} xdg_wm_base={}",
        globals,
        comp,
        shm,
        wm
    ))
}

/// Waits for `xdg_surface.configure`, noting the toplevel's size on the way: `(serial, w, h)`.
fn configure(
    c: &mut Client,
    xdg_surface: u32,
    toplevel: u32,
) -> Result<(u32, u32, u32), crate::line::Line> {
    let (mut w, mut h) = (0, 0);
    loop {
        let event = c.next_event()?;
        match (event.object, event.opcode) {
            (o, 0) if o == toplevel => {
                let mut a = event.args();
                w = a.int().max(0) as u32;
                h = a.int().max(0) as u32;
            }
            (o, 0) if o == xdg_surface => return Ok((event.args().uint(), w, h)),
            // wl_surface.enter/leave, toplevel bounds and the like.
            _ => {}
        }
    }
}

/// Fills `w × h` pixels at `addr` (stride `w * 4`) with [`pattern`], two pixels per store.
fn fill(addr: u64, w: u32, h: u32, seed: u32) {
    let base = addr as *mut u64;
    for y in 0..h {
        for x in (0..w).step_by(2) {
            let lo = u64::from(pattern(x, y, seed));
            let hi = if x + 1 < w {
                u64::from(pattern(x + 1, y, seed))
            } else {
                0
            };
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
    let registry = c.registry()?;
    let compositor = c.bind(registry, "wl_compositor", 4)?;
    let shm = c.bind(registry, "wl_shm", 1)?;
    let wm = c.bind(registry, "xdg_wm_base", 1)?;
    c.wm_base = wm;
    let surface = c.new_id();
    c.send(&mut Msg::new(compositor, 0).uint(surface), &[])?;
    let xdg_surface = c.new_id();
    c.send(&mut Msg::new(wm, 2).uint(xdg_surface).uint(surface), &[])?;
    let toplevel = c.new_id();
    c.send(&mut Msg::new(xdg_surface, 1).uint(toplevel), &[])?;
    c.send(&mut Msg::new(toplevel, 2).string("svmm testguest"), &[])?;
    // Fullscreen: the compositor configures the output's size and shows it at the origin.
    c.send(&mut Msg::new(toplevel, 11).uint(0), &[])?;
    c.send(&mut Msg::new(surface, 6), &[])?;
    let (serial, w, h) = configure(&mut c, xdg_surface, toplevel)?;
    let (w, h) = if w == 0 || h == 0 {
        DEFAULT_SIZE
    } else {
        (w, h)
    };
    if w % 2 != 0 || w > 4096 || h > 4096 {
        return Err(fig!("odd_size width={} height={}", w, h));
    }

    // The buffer: VFD_NEW in the device's region, mapped here, filled.
    let size = w * h * 4;
    const POOL: u32 = 2;
    let new = c
        .dev
        .command_new(&dev::vfd_new(dev::CMD_VFD_NEW, POOL, 0, size), "vfd_new")?;
    let (base, len) = c.dev.shm;
    let offset = new.pfn << 12;
    if offset + u64::from(new.size) > len || new.size < size {
        return Err(fig!(
            "vfd_outside pfn={:#x} size={} region={:#x}",
            new.pfn,
            new.size,
            len
        ));
    }
    let map_start = base & !0x1f_ffff;
    let map_end = (base + len).next_multiple_of(0x20_0000);
    highmem::map(map_start, map_end - map_start).map_err(|e| fig!("map {:?}", e))?;
    fill(base + offset, w, h, SEED);

    let pool = c.new_id();
    c.send(&mut Msg::new(shm, 0).uint(pool).int(size as i32), &[POOL])?;
    let buffer = c.new_id();
    let format_xrgb8888 = 1;
    let mut create = Msg::new(pool, 0)
        .uint(buffer)
        .int(0)
        .int(w as i32)
        .int(h as i32)
        .int(w as i32 * 4)
        .uint(format_xrgb8888);
    c.send(&mut create, &[])?;
    c.send(&mut Msg::new(xdg_surface, 4).uint(serial), &[])?;
    c.send(&mut Msg::new(surface, 1).uint(buffer).int(0).int(0), &[])?;
    c.send(
        &mut Msg::new(surface, 2)
            .int(0)
            .int(0)
            .int(w as i32)
            .int(h as i32),
        &[],
    )?;
    let frame = c.new_id();
    c.send(&mut Msg::new(surface, 3).uint(frame), &[])?;
    let start = ctx.timer.now_us();
    c.send(&mut Msg::new(surface, 6), &[])?;
    loop {
        let event = c.next_event()?;
        if event.object == frame && event.opcode == 0 {
            break;
        }
    }
    let frame_us = ctx.timer.now_us() - start;
    say!("wl_shm ready width={} height={} seed={:#x}", w, h, SEED);
    wait_line(ctx, SCREENSHOT_WAIT_MS)?;
    // Destroy the buffer and the pool, then drop the connection (the compositor cleans up).
    c.send(&mut Msg::new(buffer, 0), &[])?;
    c.send(&mut Msg::new(pool, 1), &[])?;
    c.roundtrip(None)?;
    c.dev.command_ok(&dev::close(POOL), "close_pool")?;
    c.dev.command_ok(&dev::close(CTX), "close_ctx")?;
    c.dev.close()?;
    Ok(fig!(
        "width={} height={} seed={:#x} pfn={:#x} frame_us={}",
        w,
        h,
        SEED,
        new.pfn,
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
    c.dev.close()?;

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
    p.dev.close()?;
    Ok(fig!(
        "from_compositor={} to_host={}",
        from_compositor,
        sent.len()
    ))
}
