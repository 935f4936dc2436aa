//! The stack on a device: ARP resolution of the peer, answers to ARP requests and pings
//! for the guest's address while waiting, pings, UDP exchanges.

use super::{
    arp_frame, icmp_frame, parse, udp, udp_frame, Csum, Ip, Mac, Packet, ETH_HLEN, IP_HLEN,
    PROTO_ICMP, PROTO_UDP,
};
use crate::arch::Page;
use crate::fig;
use crate::line::Line;
use crate::timer::Timer;
use crate::virtio::net::{Hdr, NetDev, Rx, HDR_F_NEEDS_CSUM};
use core::cell::UnsafeCell;

/// How long one ARP, ping or UDP attempt waits for its answer. Generous: on a loaded host the
/// VMM's or the peer's threads may not run for a while, and a test must not fail for that.
pub const REPLY_MS: u64 = 3000;
/// Attempts of an idempotent exchange (ARP, ping, UDP echo) before it fails.
const TRIES: u32 = 3;

#[link_section = ".noinit.net"]
static SCRATCH: Page<[u8; 70_000]> = Page(UnsafeCell::new([0; 70_000]));

/// A frame to send, built in the scratch buffer.
fn scratch() -> &'static mut [u8; 70_000] {
    // SAFETY: one `Stack` at a time uses it (the tests run one after the other), and a frame
    // is built and sent before the next is built.
    unsafe { &mut *SCRATCH.0.get() }
}

/// What a UDP reply looked like.
pub struct Reply {
    /// The receive queue it arrived on.
    pub queue: usize,
    /// The header's flags (DATA_VALID, NEEDS_CSUM).
    pub flags: u8,
    /// The checksum verified (`None`: the datagram had none, or the device vouched for it).
    pub csum_ok: Option<bool>,
}

pub struct Stack<'d, 't> {
    pub dev: &'d mut NetDev<'t>,
    pub timer: &'t Timer,
    pub ip: Ip,
    pub peer: Ip,
    pub peer_mac: Mac,
    id: u16,
    /// ARP requests and pings answered while waiting.
    pub answered: u32,
}

impl<'d, 't> Stack<'d, 't> {
    pub fn new(dev: &'d mut NetDev<'t>, timer: &'t Timer, ip: Ip, peer: Ip) -> Self {
        Stack {
            dev,
            timer,
            ip,
            peer,
            peer_mac: [0; 6],
            id: 1,
            answered: 0,
        }
    }

    fn mac(&self) -> Mac {
        self.dev.mac
    }

    fn next_id(&mut self) -> u16 {
        self.id = self.id.wrapping_add(1);
        self.id
    }

    /// Sends `len` bytes of the scratch buffer on pair `pair`.
    fn send(&mut self, pair: usize, hdr: Hdr, len: usize) -> Result<(), Line> {
        self.dev
            .send(pair, hdr, &scratch()[..len])
            .map_err(|e| fig!("{} step=send", e))
    }

    /// Receives frames for up to `ms`, answering ARP requests and pings for our address,
    /// until `want` accepts one (its answer is returned) or time is up (`None`).
    pub fn wait<T>(
        &mut self,
        ms: u64,
        mut want: impl FnMut(&Rx, &[u8]) -> Option<T>,
    ) -> Result<Option<T>, Line> {
        let deadline = self.timer.deadline_ms(ms);
        loop {
            let got = self.dev.recv(1).map_err(|e| fig!("{} step=recv", e))?;
            let Some(rx) = got else {
                if self.timer.expired(deadline) {
                    return Ok(None);
                }
                continue;
            };
            let frame = self.dev.frame(&rx);
            if let Some(found) = want(&rx, frame) {
                return Ok(Some(found));
            }
            self.answer(&rx)?;
            if self.timer.expired(deadline) {
                return Ok(None);
            }
        }
    }

    /// Answers an ARP request or an echo request for our address in the last frame.
    fn answer(&mut self, rx: &Rx) -> Result<(), Line> {
        let (mac, ip) = (self.mac(), self.ip);
        let buf = scratch();
        let len = match parse(self.dev.frame(rx)) {
            Packet::Arp {
                op: 1,
                sha,
                spa,
                tpa,
            } if tpa == ip => arp_frame(buf, 2, (mac, ip), (sha, spa)),
            Packet::Ipv4 {
                src_mac,
                src,
                dst,
                proto: PROTO_ICMP,
                body,
                ..
            } if dst == ip && body.len() >= 8 && body[0] == 8 && body.len() <= 1480 => {
                let mut payload = [0u8; 1480];
                let n = body.len() - 8;
                payload[..n].copy_from_slice(&body[8..]);
                let ident = u16::from_be_bytes([body[4], body[5]]);
                let seq = u16::from_be_bytes([body[6], body[7]]);
                icmp_frame(buf, (mac, src_mac), (ip, src), 0, ident, seq, &payload[..n])
            }
            _ => return Ok(()),
        };
        self.answered += 1;
        self.send(rx.queue, Hdr::default(), len)
    }

    /// Resolves the peer's MAC address with ARP.
    pub fn resolve(&mut self) -> Result<Mac, Line> {
        let (mac, ip, peer) = (self.mac(), self.ip, self.peer);
        for _ in 0..TRIES {
            let len = arp_frame(scratch(), 1, (mac, ip), ([0; 6], peer));
            self.send(0, Hdr::default(), len)?;
            let found = self.wait(REPLY_MS, |_, frame| match parse(frame) {
                Packet::Arp {
                    op: 2, sha, spa, ..
                } if spa == peer => Some(sha),
                _ => None,
            })?;
            if let Some(m) = found {
                self.peer_mac = m;
                return Ok(m);
            }
        }
        Err(fig!("arp_timeout peer={}", super::ShowIp(peer)))
    }

    /// One ping of `len` payload bytes; the round trip in µs.
    pub fn ping(&mut self, seq: u16, len: usize) -> Result<u64, Line> {
        let (mac, ip, peer, peer_mac) = (self.mac(), self.ip, self.peer, self.peer_mac);
        let mut payload = [0u8; 1400];
        let len = len.min(payload.len());
        for (i, b) in payload[..len].iter_mut().enumerate() {
            *b = (i as u8) ^ (seq as u8);
        }
        let ident = 0x5356;
        for _ in 0..TRIES {
            let n = icmp_frame(
                scratch(),
                (mac, peer_mac),
                (ip, peer),
                8,
                ident,
                seq,
                &payload[..len],
            );
            let start = self.timer.now_us();
            self.send(0, Hdr::default(), n)?;
            let got = self.wait(REPLY_MS, |_, frame| match parse(frame) {
                Packet::Ipv4 {
                    src,
                    proto: PROTO_ICMP,
                    body,
                    ..
                } if src == peer
                    && body.len() == 8 + len
                    && body[0] == 0
                    && body[4..8] == [0x53, 0x56, (seq >> 8) as u8, seq as u8] =>
                {
                    Some(body[8..] == payload[..len])
                }
                _ => None,
            })?;
            match got {
                Some(true) => return Ok(self.timer.now_us() - start),
                Some(false) => return Err(fig!("ping_payload seq={}", seq)),
                None => {}
            }
        }
        Err(fig!("ping_timeout seq={}", seq))
    }

    /// Sends `payload` in a UDP datagram from port `sport` to the peer's `dport` on pair
    /// `pair`, and waits for a datagram back from `dport` to `sport` whose payload `check`
    /// accepts. `tries` sends in all (a command with side effects is sent once, with a longer
    /// wait).
    #[allow(clippy::too_many_arguments)]
    pub fn udp_exchange(
        &mut self,
        pair: usize,
        (sport, dport): (u16, u16),
        payload: &[u8],
        csum: Csum,
        tries: u32,
        mut check: impl FnMut(&[u8]) -> bool,
    ) -> Result<Reply, Line> {
        let (mac, ip, peer, peer_mac) = (self.mac(), self.ip, self.peer, self.peer_mac);
        let hdr = match csum {
            Csum::Full => Hdr::default(),
            Csum::Partial => Hdr {
                flags: HDR_F_NEEDS_CSUM,
                csum_start: (ETH_HLEN + IP_HLEN) as u16,
                csum_offset: 6,
                ..Hdr::default()
            },
        };
        let wait_ms = if tries > 1 { REPLY_MS } else { 3 * REPLY_MS };
        let mut got = None;
        for _ in 0..tries.max(1) {
            let id = self.next_id();
            let n = udp_frame(
                scratch(),
                (mac, peer_mac),
                (ip, peer),
                (sport, dport),
                payload,
                csum,
                id,
            );
            self.send(pair, hdr, n)?;
            got = self.wait(wait_ms, |rx, frame| match parse(frame) {
                Packet::Ipv4 {
                    src,
                    dst,
                    proto: PROTO_UDP,
                    body,
                    ..
                } if src == peer && dst == ip => {
                    let u = udp(body, src, dst)?;
                    (u.sport == dport && u.dport == sport && check(u.payload)).then_some(Reply {
                        queue: rx.queue,
                        flags: rx.hdr.flags,
                        // A partial checksum is for the driver to trust, not to verify.
                        csum_ok: u.csum_ok.filter(|_| rx.hdr.flags & HDR_F_NEEDS_CSUM == 0),
                    })
                }
                _ => None,
            })?;
            if got.is_some() {
                break;
            }
        }
        got.ok_or_else(|| {
            let rx = self.dev.rx_ring(0).state();
            let tx = self.dev.tx_ring(pair).state();
            fig!(
                "udp_timeout sport={} dport={} len={} rx={:?} tx={:?}",
                sport,
                dport,
                payload.len(),
                rx,
                tx
            )
        })
    }
}
