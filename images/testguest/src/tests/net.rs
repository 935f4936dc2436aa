//! The virtio-net tests, against a peer in the network namespace the harness made (or passt).
//! Each runs in ring 3 (`arch::user`) — byte work is slow in emulated ring 0 on PVM hosts —
//! and drives the first virtio-net device (`NAME@N`: the N-th) through `virtio::net` and the
//! stack in `crate::net`. The peer (`svmm-netpeer` in the tests crate) echoes UDP on
//! `testguest.net_port` and serves commands on the next port: `CSUM <nonce>` (it checked the
//! checksum of the frame that carried the command, as captured on the tap with its vnet
//! header) and `GSO <bytes> <seed>` (it injects one TCPv4 GSO frame of that payload).
//!
//! - `net`: link status and MAC from the config space; ARP; 4 pings; UDP echoes of 1, 64, 512,
//!   1400 and 1472 bytes, each reply's checksum verified; the used-buffer interrupt seen.
//! - `net_offload`: a UDP datagram with a partial checksum (`NEEDS_CSUM`), which the peer must
//!   find valid once completed; a 64 KiB TCPv4 GSO frame received across merged buffers
//!   (`num_buffers > 1`); `CTRL_GUEST_OFFLOADS` off, and the same frame then arrives segmented.
//! - `net_mq`: `VQ_PAIRS_SET 2`, UDP echoes sent on both transmit queues, replies counted per
//!   receive queue.
//! - `net_passt`: a DHCP lease from passt, then a UDP echo through it to the peer on the host.

use crate::arch::user;
use crate::cmdline::MmioDevice;
use crate::fig;
use crate::line::Line;
use crate::net::stack::Stack;
use crate::net::{parse, Csum, Packet, ShowIp, ShowMac, PROTO_TCP};
use crate::tests::{Ctx, Outcome};
use crate::virtio::mmio::Mmio;
use crate::virtio::net::*;
use crate::virtio::{self};

/// InterruptStatus bit 0.
const INT_VRING: u32 = 1;
const ECHO_SIZES: [usize; 5] = [1, 64, 512, 1400, 1472];
const GSO_BYTES: usize = 65_000;

pub fn applies(devices: &[MmioDevice]) -> bool {
    virtio::find(devices, ID_NET).is_some()
}

/// By name only (they need the harness's peer).
pub fn by_name(_devices: &[MmioDevice]) -> bool {
    false
}

fn device(ctx: &Ctx) -> Result<Mmio, Line> {
    virtio::find_nth(ctx.devices, ID_NET, ctx.instance).ok_or_else(|| fig!("no_device"))
}

/// Runs `body` in ring 3 and returns its outcome.
fn in_ring3(body: &mut dyn FnMut() -> Outcome) -> Outcome {
    let mut outcome = None;
    let left = user::run(false, &mut || {
        outcome = Some(body());
        0
    });
    left.map_err(|e| fig!("{}", e))?;
    outcome.unwrap_or_else(|| Err(fig!("no_result")))
}

fn init<'t>(ctx: &'t Ctx, accept: u64, pairs: usize) -> Result<NetDev<'t>, Line> {
    let mmio = device(ctx)?;
    NetDev::init(mmio, accept, pairs, Layout::DEFAULT, ctx.timer)
        .map_err(|e| fig!("{} step=init", e))
}

/// A payload of `len` bytes derived from `seed`.
fn pattern(len: usize, seed: u8, out: &mut [u8]) {
    for (i, b) in out[..len].iter_mut().enumerate() {
        *b = seed.wrapping_add((i % 251) as u8);
    }
}

/// Resets the device and reports `figures`.
fn finish(dev: NetDev, figures: Line) -> Outcome {
    dev.reset().map_err(|e| fig!("{} step=reset", e))?;
    Ok(figures)
}

pub fn run(ctx: &Ctx) -> Outcome {
    in_ring3(&mut || {
        let mut dev = init(ctx, F_MAC | F_STATUS | F_MTU | F_MRG_RXBUF, 1)?;
        if dev.status & 1 == 0 {
            return Err(fig!("link_down status={}", dev.status));
        }
        let (mac, mtu) = (dev.mac, dev.mtu);
        let mut stack = Stack::new(&mut dev, ctx.timer, ctx.params.net_ip, ctx.params.net_peer);
        let peer_mac = stack.resolve()?;
        let mut rtt = 0;
        for seq in 0..4 {
            rtt += stack.ping(seq, 56)?;
        }
        let mut payload = [0u8; 1472];
        let mut bytes = 0;
        for (i, &len) in ECHO_SIZES.iter().enumerate() {
            pattern(len, i as u8, &mut payload);
            let want = payload;
            let reply = stack.udp_exchange(
                0,
                (40_000 + i as u16, ctx.params.net_port),
                &payload[..len],
                Csum::Full,
                3,
                |p| p == &want[..len],
            )?;
            if reply.csum_ok != Some(true) {
                return Err(fig!("udp_csum len={} flags={}", len, reply.flags));
            }
            bytes += len;
        }
        let answered = stack.answered;
        let status = dev.interrupt_status();
        if status & INT_VRING == 0 {
            return Err(fig!("no_vring_interrupt status={:#x}", status));
        }
        finish(
            dev,
            fig!(
                "mac={} mtu={} peer_mac={} pings=4 rtt_us={} udp={} bytes={} answered={}",
                ShowMac(mac),
                mtu,
                ShowMac(peer_mac),
                rtt / 4,
                ECHO_SIZES.len(),
                bytes,
                answered
            ),
        )
    })
}

/// Asks the peer to inject a GSO frame of `bytes` payload bytes and receives it: the header,
/// the buffers it took, and how many TCP frames carried the payload.
fn receive_gso(stack: &mut Stack, ctx: &Ctx, seed: u8) -> Result<(Hdr, u16, u32), Line> {
    let mut cmd = [0u8; 32];
    let text = fig!("GSO {} {}", GSO_BYTES, seed);
    let n = text.as_bytes().len();
    cmd[..n].copy_from_slice(text.as_bytes());
    stack.udp_exchange(
        0,
        (41_000 + u16::from(seed), ctx.params.net_port + 1),
        &cmd[..n],
        Csum::Full,
        1,
        |p| p.starts_with(b"GSO-SENT"),
    )?;
    let (peer, ip) = (stack.peer, stack.ip);
    let mut first: Option<(Hdr, u16)> = None;
    let mut got = 0usize;
    let mut frames = 0u32;
    let mut bad = None;
    let deadline = ctx.timer.deadline_ms(10_000);
    while got < GSO_BYTES && !ctx.timer.expired(deadline) {
        let r = stack.wait(500, |rx, frame| match parse(frame) {
            Packet::Ipv4 {
                src,
                dst,
                proto: PROTO_TCP,
                body,
                ..
            } if src == peer && dst == ip && body.len() >= 20 => {
                let off = usize::from(body[12] >> 4) * 4;
                let payload = body.get(off..)?;
                let seq = u32::from_be_bytes([body[4], body[5], body[6], body[7]]) as usize;
                let ok = payload
                    .iter()
                    .enumerate()
                    .all(|(i, &b)| b == seed.wrapping_add(((seq + i) % 251) as u8));
                Some((rx.hdr, payload.len(), ok))
            }
            _ => None,
        })?;
        let Some((hdr, len, ok)) = r else { continue };
        if !ok {
            bad = Some(got);
        }
        first.get_or_insert((hdr, hdr.num_buffers));
        got += len;
        frames += 1;
    }
    if let Some(at) = bad {
        return Err(fig!("gso_payload at={}", at));
    }
    if got != GSO_BYTES {
        return Err(fig!(
            "gso_short got={} want={} frames={}",
            got,
            GSO_BYTES,
            frames
        ));
    }
    let (hdr, buffers) = first.unwrap_or_default();
    Ok((hdr, buffers, frames))
}

pub fn run_offload(ctx: &Ctx) -> Outcome {
    in_ring3(&mut || {
        let accept = F_MAC
            | F_MRG_RXBUF
            | F_CSUM
            | F_GUEST_CSUM
            | F_GUEST_TSO4
            | F_HOST_TSO4
            | F_CTRL_VQ
            | F_CTRL_GUEST_OFFLOADS;
        let mut dev = init(ctx, accept, 1)?;
        let need = F_CSUM | F_GUEST_CSUM | F_GUEST_TSO4 | F_MRG_RXBUF | F_CTRL_GUEST_OFFLOADS;
        if dev.features & need != need {
            return Err(fig!(
                "features={:#x} missing={:#x}",
                dev.features,
                need & !dev.features
            ));
        }
        let mut stack = Stack::new(&mut dev, ctx.timer, ctx.params.net_ip, ctx.params.net_peer);
        stack.resolve()?;
        // A partial checksum: the peer completes it as a NIC would and checks it.
        let cmd = b"CSUM 0x5356-partial";
        let mut verdict = [0u8; 64];
        let mut verdict_len = 0;
        stack.udp_exchange(
            0,
            (41_100, ctx.params.net_port + 1),
            cmd,
            Csum::Partial,
            3,
            |p| {
                verdict_len = p.len().min(verdict.len());
                verdict[..verdict_len].copy_from_slice(&p[..verdict_len]);
                p.starts_with(b"CSUM-")
            },
        )?;
        if !verdict.starts_with(b"CSUM-OK") {
            let mut reason = fig!("peer_csum ");
            reason.push_bytes(&verdict[..verdict_len]);
            return Err(reason);
        }
        let (hdr, buffers, frames) = receive_gso(&mut stack, ctx, 7)?;
        if hdr.gso_type != GSO_TCPV4 || hdr.gso_size == 0 || frames != 1 {
            return Err(fig!(
                "gso_header type={} size={} frames={}",
                hdr.gso_type,
                hdr.gso_size,
                frames
            ));
        }
        if buffers < 2 {
            return Err(fig!("not_merged num_buffers={}", buffers));
        }
        // Offloads off: the host must now segment the same frame before the device.
        let ack = stack
            .dev
            .ctrl(CTRL_GUEST_OFFLOADS, 0, &0u64.to_le_bytes())
            .map_err(|e| fig!("{} step=ctrl", e))?;
        if ack != 0 {
            return Err(fig!("ctrl_ack={}", ack));
        }
        let (plain, _, segments) = receive_gso(&mut stack, ctx, 9)?;
        if plain.gso_type != 0 || segments < 2 {
            return Err(fig!(
                "not_segmented type={} segments={}",
                plain.gso_type,
                segments
            ));
        }
        finish(
            dev,
            fig!(
                "csum=partial_ok gso_bytes={} gso_size={} num_buffers={} offloads_off_segments={}",
                GSO_BYTES,
                hdr.gso_size,
                buffers,
                segments
            ),
        )
    })
}

pub fn run_mq(ctx: &Ctx) -> Outcome {
    in_ring3(&mut || {
        let mut dev = init(ctx, F_MAC | F_MRG_RXBUF | F_CTRL_VQ | F_MQ, 2)?;
        if dev.features & F_MQ == 0 || dev.max_pairs < 2 || dev.pairs != 2 {
            return Err(fig!(
                "no_mq features={:#x} max_pairs={}",
                dev.features,
                dev.max_pairs
            ));
        }
        let ack = dev
            .ctrl(CTRL_MQ, 0, &2u16.to_le_bytes())
            .map_err(|e| fig!("{} step=ctrl", e))?;
        if ack != 0 {
            return Err(fig!("vq_pairs_set ack={}", ack));
        }
        let max_pairs = dev.max_pairs;
        let mut stack = Stack::new(&mut dev, ctx.timer, ctx.params.net_ip, ctx.params.net_peer);
        stack.resolve()?;
        let mut per_queue = [0u32; 2];
        let mut payload = [0u8; 256];
        for pair in 0..2 {
            for k in 0..4u16 {
                pattern(200, (pair as u8) * 16 + k as u8, &mut payload);
                let want = payload;
                let sport = 42_000 + 100 * pair as u16 + k;
                let r = stack.udp_exchange(
                    pair,
                    (sport, ctx.params.net_port),
                    &payload[..200],
                    Csum::Full,
                    3,
                    |p| p == &want[..200],
                )?;
                per_queue[r.queue] += 1;
            }
        }
        if per_queue[1] == 0 {
            return Err(fig!(
                "rx_queue1_unused rx_q0={} rx_q1={}",
                per_queue[0],
                per_queue[1]
            ));
        }
        finish(
            dev,
            fig!(
                "max_pairs={} pairs=2 echoes=8 rx_q0={} rx_q1={}",
                max_pairs,
                per_queue[0],
                per_queue[1]
            ),
        )
    })
}

pub fn run_passt(ctx: &Ctx) -> Outcome {
    in_ring3(&mut || {
        let mut dev = init(ctx, F_MAC | F_MRG_RXBUF | F_STATUS, 1)?;
        let mut stack = Stack::new(&mut dev, ctx.timer, [0; 4], [0; 4]);
        let lease = stack.dhcp()?;
        stack.resolve()?;
        let msg = b"svmm-passt-echo";
        stack.udp_exchange(0, (43_000, ctx.params.net_port), msg, Csum::Full, 3, |p| {
            p == msg
        })?;
        finish(
            dev,
            fig!(
                "lease={} mask={} router={} dns={} seconds={} udp_echo=1",
                ShowIp(lease.ip),
                ShowIp(lease.mask),
                ShowIp(lease.router),
                ShowIp(lease.dns),
                lease.seconds
            ),
        )
    })
}
