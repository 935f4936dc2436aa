//! The virtio-net benchmarks (by name only), against the harness's peer (`svmm-netpeer`) in
//! the test's network namespace. Everything from device set-up on runs in ring 3; in `irq`
//! mode the device's pin is routed to the local APIC and ring 3 runs with interrupts on.
//!
//! - `bench_net_tx64`, `bench_net_tx1500`, `bench_net_txgso`: transmit throughput. Every slot
//!   of the transmit ring holds the same prebuilt frame (64 or 1514 bytes of UDP, or a 64 KiB
//!   TCPv4 GSO frame with a partial checksum); the loop keeps them all in flight, re-offering
//!   each slot as the device returns it, so the guest's cost per frame is a descriptor and an
//!   index, never a copy. The frames go to a MAC nobody has ([`SINK_MAC`]), so the host's stack
//!   drops them on arrival (the harness counts them on the tap).
//! - `bench_net_rx64`, `bench_net_rx1500`, `bench_net_rxgso`: receive throughput. The guest asks
//!   the peer (`BLAST <frame bytes> <gso> <ms> <mac>`) to inject frames into the tap as fast as
//!   it can for the run's length; the loop counts frames (the first buffer's `num_buffers`)
//!   and bytes and re-offers every buffer at once.
//! - `bench_net_rr`: UDP round trips of one 64-byte frame to the peer's echo port, depth 1,
//!   with latency percentiles.
//!
//! Phases as the other benchmarks: a warm-up of `bench_ms / 10` (10..200 ms), then
//! `testguest.bench_ms` (and at least `MIN_FRAMES`), then what is in flight drains uncounted.

use super::samples::Samples;
use crate::arch::{apic, user};
use crate::cmdline::{Completion, MmioDevice};
use crate::fig;
use crate::line::Line;
use crate::net::stack::Stack;
use crate::net::{
    eth, fold, ipv4, pseudo, Csum, ETH_HLEN, IP_HLEN, PROTO_TCP, PROTO_UDP, UDP_HLEN,
};
use crate::tests::{Ctx, Outcome};
use crate::timer::rdtsc;
use crate::virtio::net::*;
use crate::virtio::netq::{self, NetRing};
use crate::virtio::{self, Probe};
use core::hint::spin_loop;
use core::ptr::read_volatile;

/// Where transmitted benchmark frames go: a locally administered MAC nobody has.
pub const SINK_MAC: [u8; 6] = [0x02, 0x53, 0x56, 0x4d, 0x4d, 0x00];
const MIN_FRAMES: u64 = 16;
const STALL_MS: u64 = 10_000;
/// Payload of the 64 KiB GSO frames.
const GSO_PAYLOAD: usize = 65_000;
const GSO_MSS: u16 = 1448;
const SINK_PORT: u16 = 9;
const TX_PORT: u16 = 50_000;
/// Transmit slots big enough for a GSO frame, and how many fit the ring's area.
const GSO_STRIDE: usize = 67_584;
const GSO_SLOTS: u16 = 4;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tx { frame: usize, gso: bool },
    Rx { frame: usize, gso: bool },
    Rr,
}

/// What a run measured.
#[derive(Default)]
struct Figures {
    frames: u64,
    bytes: u64,
    cycles: u64,
    buffers: u64,
    notifies: u64,
}

fn find(ctx: &Ctx) -> Result<(MmioDevice, crate::virtio::mmio::Mmio), Line> {
    ctx.devices
        .iter()
        .filter_map(|dev| match virtio::probe(dev) {
            Probe::Device { mmio, id } if id == ID_NET => Some((*dev, mmio)),
            _ => None,
        })
        .nth(ctx.instance)
        .ok_or_else(|| fig!("no_device"))
}

/// Phase boundaries in TSC cycles: (warm-up, measured, stall).
fn phases(ctx: &Ctx) -> (u64, u64, u64) {
    let khz = ctx.timer.tsc_khz();
    let ms = ctx.params.bench_ms;
    ((ms / 10).clamp(10, 200) * khz, ms * khz, STALL_MS * khz)
}

/// Waits until `ready` holds: spinning (poll) or for the device interrupt counter to move.
#[inline]
fn wait(mode: Completion, deadline: u64, mut ready: impl FnMut() -> bool) -> Result<(), Line> {
    loop {
        let irqs = apic::device_count();
        if ready() {
            return Ok(());
        }
        if rdtsc() > deadline {
            return Err(fig!("timeout"));
        }
        if mode == Completion::Irq {
            while apic::device_count() == irqs && !ready() {
                if rdtsc() > deadline {
                    return Err(fig!("timeout"));
                }
                spin_loop();
            }
        } else {
            spin_loop();
        }
    }
}

/// Writes the benchmark frame for `kind` into `slot` (header first); returns its bytes
/// (header included).
fn build_tx(
    ring: &NetRing,
    slot: u16,
    kind: Kind,
    mac: [u8; 6],
    ip: [u8; 4],
    peer: [u8; 4],
) -> usize {
    let Kind::Tx { frame, gso } = kind else {
        return 0;
    };
    let at = ring.slot(slot);
    let mut head = [0u8; HDR_LEN + ETH_HLEN + IP_HLEN + 20];
    let (proto, l4) = if gso {
        (PROTO_TCP, 20)
    } else {
        (PROTO_UDP, UDP_HLEN)
    };
    let payload = if gso {
        GSO_PAYLOAD
    } else {
        frame - ETH_HLEN - IP_HLEN - l4
    };
    let seg = l4 + payload;
    let hdr = if gso {
        Hdr {
            flags: HDR_F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: (ETH_HLEN + IP_HLEN + l4) as u16,
            gso_size: GSO_MSS,
            csum_start: (ETH_HLEN + IP_HLEN) as u16,
            csum_offset: 16,
            num_buffers: 0,
        }
    } else {
        Hdr::default()
    };
    head[..HDR_LEN].copy_from_slice(&hdr_bytes(hdr));
    let f = &mut head[HDR_LEN..];
    eth(f, SINK_MAC, mac, crate::net::ETHERTYPE_IPV4);
    ipv4(&mut f[ETH_HLEN..], ip, peer, proto, seg, slot);
    let t = ETH_HLEN + IP_HLEN;
    f[t..t + 2].copy_from_slice(&TX_PORT.to_be_bytes());
    f[t + 2..t + 4].copy_from_slice(&SINK_PORT.to_be_bytes());
    if gso {
        f[t + 12] = 5 << 4;
        f[t + 13] = 0x18;
        f[t + 14..t + 16].copy_from_slice(&0xffffu16.to_be_bytes());
        f[t + 16..t + 18].copy_from_slice(&fold(pseudo(ip, peer, PROTO_TCP, seg)).to_be_bytes());
    } else {
        f[t + 4..t + 6].copy_from_slice(&(seg as u16).to_be_bytes());
        // No checksum (0 is allowed for UDP over IPv4): the payload is zeroes.
    }
    let head_len = HDR_LEN + ETH_HLEN + IP_HLEN + l4;
    netq::copy(head.as_ptr() as usize, at, head_len);
    let zero = [0u8; 256];
    let mut done = 0;
    while done < payload {
        let n = (payload - done).min(zero.len());
        netq::copy(zero.as_ptr() as usize, at + head_len + done, n);
        done += n;
    }
    head_len + payload
}

fn hdr_bytes(h: Hdr) -> [u8; HDR_LEN] {
    let mut b = [0u8; HDR_LEN];
    b[0] = h.flags;
    b[1] = h.gso_type;
    for (i, v) in [
        h.hdr_len,
        h.gso_size,
        h.csum_start,
        h.csum_offset,
        h.num_buffers,
    ]
    .iter()
    .enumerate()
    {
        b[2 + 2 * i..4 + 2 * i].copy_from_slice(&v.to_le_bytes());
    }
    b
}

/// Transmit: every slot in flight, re-offered as it comes back.
fn tx_loop(
    ctx: &Ctx,
    dev: &mut NetDev,
    kind: Kind,
    ip: [u8; 4],
    peer: [u8; 4],
) -> Result<Figures, Line> {
    let (warm, measure, stall) = phases(ctx);
    let mode = ctx.params.irq;
    let mac = dev.mac;
    let ring = dev.tx_ring(0);
    ring.set_no_interrupt(mode == Completion::Poll);
    let slots = ring.size();
    let mut len = 0;
    for slot in 0..slots {
        len = build_tx(ring, slot, kind, mac, ip, peer);
        ring.post(slot, len as u32, false);
    }
    ring.kick();
    let frame_bytes = (len - HDR_LEN) as u64;
    let mut f = Figures::default();
    let (mut measuring, mut stopping, mut inflight) = (false, false, u64::from(slots));
    let mut start = rdtsc();
    let mut end = start + warm;
    loop {
        wait(mode, rdtsc() + stall, || ring.has_used())
            .map_err(|_| fig!("timeout inflight={}", inflight))?;
        let now = rdtsc();
        let mut again = false;
        while let Some((id, _)) = ring.pop_used() {
            let slot = id as u16;
            if slot >= slots {
                return Err(fig!("used_id got={}", id));
            }
            inflight -= 1;
            if measuring && !stopping {
                f.frames += 1;
                f.bytes += frame_bytes;
            }
            if !stopping {
                ring.post(slot, len as u32, false);
                inflight += 1;
                again = true;
            }
        }
        if again {
            ring.kick();
        }
        if !measuring && now >= end {
            (measuring, start, end) = (true, now, now + measure);
        } else if measuring && !stopping && now >= end && f.frames >= MIN_FRAMES {
            stopping = true;
            f.cycles = now - start;
        }
        if stopping && inflight == 0 {
            break;
        }
    }
    f.notifies = ring.notifies;
    Ok(f)
}

/// Receive: counts frames and bytes while the peer blasts, re-offering every buffer at once.
fn rx_loop(ctx: &Ctx, dev: &mut NetDev, stack_ms: u64) -> Result<Figures, Line> {
    let (warm, measure, stall) = phases(ctx);
    let mode = ctx.params.irq;
    let ring = dev.rx_ring(0);
    ring.set_no_interrupt(mode == Completion::Poll);
    let stride = ring.stride() as u32;
    let size = ring.size();
    let mut f = Figures::default();
    let mut measuring = false;
    let mut start = rdtsc();
    let mut end = start + warm;
    // Buffers of the frame being counted that are still to come.
    let mut rest: u16 = 0;
    let hard_end = start + (stack_ms * ctx.timer.tsc_khz());
    loop {
        wait(mode, rdtsc() + stall, || ring.has_used())?;
        let now = rdtsc();
        let mut got = false;
        while let Some((id, len)) = ring.pop_used() {
            let slot = id as u16;
            if slot >= size {
                return Err(fig!("used_id got={}", id));
            }
            let mut bytes = u64::from(len);
            if rest == 0 {
                // SAFETY: num_buffers of the header at the start of this returned buffer.
                let n = unsafe { read_volatile((ring.slot(slot) + 10) as *const u16) };
                rest = n.max(1) - 1;
                bytes = bytes.saturating_sub(HDR_LEN as u64);
                if measuring {
                    f.frames += 1;
                }
            } else {
                rest -= 1;
            }
            if measuring {
                f.bytes += bytes;
                f.buffers += 1;
            }
            ring.post(slot, stride, true);
            got = true;
        }
        if got {
            ring.kick();
        }
        if !measuring && now >= end {
            (measuring, start, end) = (true, now, now + measure);
        } else if measuring && now >= end && f.frames >= MIN_FRAMES {
            f.cycles = now - start;
            break;
        }
        if now > hard_end {
            return Err(fig!("blast_over frames={}", f.frames));
        }
    }
    Ok(f)
}

/// Round trips of one 64-byte UDP frame to the echo port.
fn rr_loop(ctx: &Ctx, stack: &mut Stack, samples: &mut Samples) -> Result<Figures, Line> {
    let (warm, measure, stall) = phases(ctx);
    let mode = ctx.params.irq;
    let (mac, ip, peer, peer_mac) = (stack.dev.mac, stack.ip, stack.peer, stack.peer_mac);
    let port = ctx.params.net_port;
    let mut frame = [0u8; 64];
    let payload = [0u8; 64 - ETH_HLEN - IP_HLEN - UDP_HLEN];
    let n = crate::net::udp_frame(
        &mut frame,
        (mac, peer_mac),
        (ip, peer),
        (TX_PORT + 1, port),
        &payload,
        Csum::Full,
        1,
    );
    let dev = &mut *stack.dev;
    dev.rx_ring(0).set_no_interrupt(mode == Completion::Poll);
    dev.tx_ring(0).set_no_interrupt(true);
    let mut f = Figures::default();
    let mut measuring = false;
    let mut start = rdtsc();
    let mut end = start + warm;
    loop {
        let sent = rdtsc();
        dev.send(0, Hdr::default(), &frame[..n])
            .map_err(|e| fig!("{} step=send", e))?;
        let ring = dev.rx_ring(0);
        wait(mode, sent + stall, || ring.has_used())?;
        let now = rdtsc();
        let (id, _) = ring.pop_used().unwrap_or((0, 0));
        let slot = id as u16;
        if slot >= ring.size() {
            return Err(fig!("used_id got={}", id));
        }
        // The reply: UDP from the echo port (anything else, e.g. an ARP request, is re-sent).
        // SAFETY: the returned buffer's UDP source port, inside the slot.
        let sport = unsafe {
            read_volatile((ring.slot(slot) + HDR_LEN + ETH_HLEN + IP_HLEN) as *const [u8; 2])
        };
        let stride = ring.stride() as u32;
        ring.post(slot, stride, true);
        ring.kick();
        if u16::from_be_bytes(sport) != port {
            continue;
        }
        if measuring {
            f.frames += 1;
            samples.push(now - sent);
        }
        if !measuring && now >= end {
            (measuring, start, end) = (true, now, now + measure);
        } else if measuring && now >= end && f.frames >= MIN_FRAMES {
            f.cycles = now - start;
            break;
        }
    }
    Ok(f)
}

fn per_second(ctx: &Ctx, count: u64, cycles: u64) -> u64 {
    let ns = ctx.timer.cycles_to_ns(cycles).max(1);
    (u128::from(count) * 1_000_000_000 / u128::from(ns)) as u64
}

fn run(ctx: &Ctx, kind: Kind) -> Outcome {
    let (pin, mmio) = find(ctx)?;
    let irq = ctx.params.irq == Completion::Irq;
    if irq {
        apic::route_device(pin.irq, mmio.addr(0)).map_err(|e| fig!("{} step=irq", e))?;
    }
    let mut samples = Samples::new();
    let mut outcome: Option<Result<Figures, Line>> = None;
    let left = user::run(irq, &mut || {
        outcome = Some(body(ctx, kind, mmio, &mut samples));
        samples.sort();
        0
    });
    if irq {
        apic::mask_device(pin.irq);
    }
    let irqs = if irq { apic::device_count() } else { 0 };
    let _ = virtio::reset(mmio, ctx.timer);
    left.map_err(|e| fig!("{}", e))?;
    let f = outcome.unwrap_or_else(|| Err(fig!("no_result")))?;
    let mode = ctx.params.irq.name();
    let us = ctx.timer.cycles_to_us(f.cycles);
    let fps = per_second(ctx, f.frames, f.cycles);
    let mbps = per_second(ctx, f.bytes * 8, f.cycles) / 1_000_000;
    Ok(match kind {
        Kind::Tx { frame, gso } | Kind::Rx { frame, gso } => fig!(
            "mode={} frame_bytes={} gso={} frames={} bytes={} us={} fps={} mbps={} buffers={} notifies={} irqs={}",
            mode,
            if gso { 14 + 20 + 20 + GSO_PAYLOAD } else { frame },
            u8::from(gso),
            f.frames,
            f.bytes,
            us,
            fps,
            mbps,
            f.buffers,
            f.notifies,
            irqs
        ),
        Kind::Rr => {
            let ns = |c| ctx.timer.cycles_to_ns(c);
            let mean = samples.sum / samples.seen().max(1);
            fig!(
                "mode={} frame_bytes=64 requests={} p50_ns={} p99_ns={} mean_ns={} us={} irqs={}",
                mode,
                f.frames,
                ns(samples.percentile(50)),
                ns(samples.percentile(99)),
                ns(mean),
                us,
                irqs
            )
        }
    })
}

/// Device set-up, peer address, the loop (ring 3).
fn body(
    ctx: &Ctx,
    kind: Kind,
    mmio: crate::virtio::mmio::Mmio,
    samples: &mut Samples,
) -> Result<Figures, Line> {
    let base = F_MAC | F_MRG_RXBUF;
    let (accept, layout) = match kind {
        Kind::Tx { gso: true, .. } => (
            base | F_CSUM | F_HOST_TSO4,
            Layout {
                tx_size: GSO_SLOTS,
                tx_stride: GSO_STRIDE,
                ..Layout::DEFAULT
            },
        ),
        Kind::Tx { .. } => (
            base,
            Layout {
                tx_size: 256,
                ..Layout::DEFAULT
            },
        ),
        Kind::Rx { gso: true, .. } => (
            base | F_GUEST_CSUM | F_GUEST_TSO4,
            Layout {
                rx_size: 128,
                rx_stride: 4096,
                ..Layout::DEFAULT
            },
        ),
        Kind::Rx { .. } => (
            base,
            Layout {
                rx_size: 256,
                ..Layout::DEFAULT
            },
        ),
        Kind::Rr => (base, Layout::DEFAULT),
    };
    let mut dev =
        NetDev::init(mmio, accept, 1, layout, ctx.timer).map_err(|e| fig!("{} step=init", e))?;
    if let Kind::Tx { gso: true, .. } = kind {
        if dev.features & (F_CSUM | F_HOST_TSO4) != F_CSUM | F_HOST_TSO4 {
            return Err(fig!("no_host_tso features={:#x}", dev.features));
        }
    }
    let mut stack = Stack::new(&mut dev, ctx.timer, ctx.params.net_ip, ctx.params.net_peer);
    stack.resolve()?;
    let (ip, peer) = (stack.ip, stack.peer);
    // The loops own the rings: nothing of the set-up may still be in flight.
    stack.dev.flush(0).map_err(|e| fig!("{} step=flush", e))?;
    match kind {
        Kind::Tx { .. } => tx_loop(ctx, stack.dev, kind, ip, peer),
        Kind::Rx { frame, gso } => {
            let ms = 2 * ctx.params.bench_ms + 2000;
            let m = stack.dev.mac;
            let cmd = fig!(
                "BLAST {} {} {} {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                frame,
                u8::from(gso),
                ms,
                m[0],
                m[1],
                m[2],
                m[3],
                m[4],
                m[5]
            );
            let port = ctx.params.net_port + 1;
            stack.udp_exchange(0, (TX_PORT + 2, port), cmd.as_bytes(), Csum::Full, 1, |p| {
                p.starts_with(b"BLAST-OK")
            })?;
            let result = rx_loop(ctx, stack.dev, ms);
            // Stop the blast (twice: the answer is not awaited, the ring may still be busy).
            let (mac, peer_mac) = (stack.dev.mac, stack.peer_mac);
            let mut stop = [0u8; 64];
            let n = crate::net::udp_frame(
                &mut stop,
                (mac, peer_mac),
                (ip, peer),
                (TX_PORT + 3, port),
                b"STOP",
                Csum::Full,
                2,
            );
            for _ in 0..2 {
                let _ = stack.dev.send(0, Hdr::default(), &stop[..n]);
            }
            result
        }
        Kind::Rr => rr_loop(ctx, &mut stack, samples),
    }
}

pub fn run_tx64(ctx: &Ctx) -> Outcome {
    run(
        ctx,
        Kind::Tx {
            frame: 64,
            gso: false,
        },
    )
}

pub fn run_tx1500(ctx: &Ctx) -> Outcome {
    run(
        ctx,
        Kind::Tx {
            frame: 1514,
            gso: false,
        },
    )
}

pub fn run_txgso(ctx: &Ctx) -> Outcome {
    run(
        ctx,
        Kind::Tx {
            frame: 0,
            gso: true,
        },
    )
}

pub fn run_rx64(ctx: &Ctx) -> Outcome {
    run(
        ctx,
        Kind::Rx {
            frame: 64,
            gso: false,
        },
    )
}

pub fn run_rx1500(ctx: &Ctx) -> Outcome {
    run(
        ctx,
        Kind::Rx {
            frame: 1514,
            gso: false,
        },
    )
}

pub fn run_rxgso(ctx: &Ctx) -> Outcome {
    run(
        ctx,
        Kind::Rx {
            frame: 0,
            gso: true,
        },
    )
}

pub fn run_rr(ctx: &Ctx) -> Outcome {
    run(ctx, Kind::Rr)
}
