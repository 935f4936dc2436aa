//! A DHCP client (RFC 2131) just good enough to get a lease: DISCOVER, OFFER, REQUEST, ACK,
//! broadcast both ways, from 0.0.0.0 with the client's MAC.

use super::stack::{Stack, REPLY_MS};
use super::{parse, udp, udp_frame, Csum, Ip, Packet, BROADCAST, PROTO_UDP};
use crate::fig;
use crate::line::Line;
use crate::virtio::net::Hdr;

const CLIENT: u16 = 68;
const SERVER: u16 = 67;
const COOKIE: [u8; 4] = [99, 130, 83, 99];
const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const ACK: u8 = 5;
const NAK: u8 = 6;
/// BOOTP header up to the magic cookie.
const BOOTP: usize = 236;

/// What the server granted.
#[derive(Clone, Copy, Default)]
pub struct Lease {
    pub ip: Ip,
    pub mask: Ip,
    pub router: Ip,
    pub dns: Ip,
    pub server: Ip,
    pub seconds: u32,
}

/// A BOOTP request of `kind` with `xid` from `mac`; `extra` options before the end.
fn message(buf: &mut [u8], mac: [u8; 6], xid: u32, kind: u8, extra: &[u8]) -> usize {
    buf[..BOOTP].fill(0);
    buf[0] = 1; // BOOTREQUEST
    buf[1] = 1; // Ethernet
    buf[2] = 6;
    buf[4..8].copy_from_slice(&xid.to_be_bytes());
    buf[10] = 0x80; // broadcast replies: we have no address yet
    buf[28..34].copy_from_slice(&mac);
    let mut n = BOOTP;
    for part in [
        &COOKIE[..],
        &[53, 1, kind],
        &[55, 4, 1, 3, 6, 51],
        extra,
        &[255],
    ] {
        buf[n..n + part.len()].copy_from_slice(part);
        n += part.len();
    }
    n
}

/// The options of a reply as a lease, with its message type.
fn read_reply(payload: &[u8], xid: u32) -> Option<(u8, Lease)> {
    if payload.len() < BOOTP + 4 || payload[0] != 2 || payload[4..8] != xid.to_be_bytes() {
        return None;
    }
    if payload[BOOTP..BOOTP + 4] != COOKIE {
        return None;
    }
    let mut lease = Lease {
        ip: [payload[16], payload[17], payload[18], payload[19]],
        ..Lease::default()
    };
    let mut kind = 0;
    let mut at = BOOTP + 4;
    let ip_at = |o: &[u8]| [o[0], o[1], o[2], o[3]];
    while at < payload.len() {
        let code = payload[at];
        if code == 255 {
            break;
        }
        if code == 0 {
            at += 1;
            continue;
        }
        let len = usize::from(*payload.get(at + 1)?);
        let v = payload.get(at + 2..at + 2 + len)?;
        match (code, len) {
            (53, 1) => kind = v[0],
            (1, 4) => lease.mask = ip_at(v),
            (3, l) if l >= 4 => lease.router = ip_at(v),
            (6, l) if l >= 4 => lease.dns = ip_at(v),
            (54, 4) => lease.server = ip_at(v),
            (51, 4) => lease.seconds = u32::from_be_bytes([v[0], v[1], v[2], v[3]]),
            _ => {}
        }
        at += 2 + len;
    }
    Some((kind, lease))
}

impl Stack<'_, '_> {
    /// Broadcasts a DHCP message and waits for the reply of `want` kind to it.
    fn dhcp_round(&mut self, xid: u32, kind: u8, extra: &[u8], want: u8) -> Result<Lease, Line> {
        let mac = self.dev.mac;
        let mut msg = [0u8; 320];
        let n = message(&mut msg, mac, xid, kind, extra);
        for _ in 0..3 {
            let mut frame = [0u8; 400];
            let len = udp_frame(
                &mut frame,
                (mac, BROADCAST),
                ([0; 4], [255; 4]),
                (CLIENT, SERVER),
                &msg[..n],
                Csum::Full,
                xid as u16,
            );
            self.dev
                .send(0, Hdr::default(), &frame[..len])
                .map_err(|e| fig!("{} step=dhcp_send", e))?;
            let got = self.wait(REPLY_MS * 2, |_, frame| match parse(frame) {
                Packet::Ipv4 {
                    src,
                    dst,
                    proto: PROTO_UDP,
                    body,
                    ..
                } => {
                    let u = udp(body, src, dst)?;
                    if u.dport != CLIENT || u.sport != SERVER {
                        return None;
                    }
                    read_reply(u.payload, xid)
                }
                _ => None,
            })?;
            match got {
                Some((k, lease)) if k == want => return Ok(lease),
                Some((NAK, _)) => return Err(fig!("dhcp_nak step={}", kind)),
                _ => {}
            }
        }
        Err(fig!("dhcp_timeout step={}", kind))
    }

    /// Gets a lease (DISCOVER → OFFER → REQUEST → ACK) and takes its address and router as
    /// the stack's own address and peer.
    pub fn dhcp(&mut self) -> Result<Lease, Line> {
        let m = self.dev.mac;
        let xid = u32::from_be_bytes([m[2], m[3], m[4], m[5]]) ^ 0x5356_4d4d;
        let offer = self.dhcp_round(xid, DISCOVER, &[], OFFER)?;
        let [a, b, c, d] = offer.ip;
        let [s0, s1, s2, s3] = offer.server;
        let extra = [50, 4, a, b, c, d, 54, 4, s0, s1, s2, s3];
        let ack = self.dhcp_round(xid, REQUEST, &extra, ACK)?;
        if ack.ip != offer.ip {
            return Err(fig!("dhcp_ack_differs"));
        }
        self.ip = ack.ip;
        self.peer = ack.router;
        Ok(ack)
    }
}
