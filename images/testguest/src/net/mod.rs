//! A tiny IPv4 stack for the net tests: Ethernet, ARP, IPv4, ICMP echo, UDP (and a DHCP
//! client in `dhcp`). Frames are built into caller buffers and parsed from received bytes;
//! [`stack::Stack`] ties them to a `virtio::net::NetDev`. A test instrument: no options, no
//! fragments, no routing beyond "everything goes to the peer's MAC".

pub mod dhcp;
pub mod stack;

pub const ETH_HLEN: usize = 14;
pub const IP_HLEN: usize = 20;
pub const UDP_HLEN: usize = 8;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const BROADCAST: [u8; 6] = [0xff; 6];

pub type Ip = [u8; 4];
pub type Mac = [u8; 6];

/// The 32-bit running ones' complement sum of `bytes` as big-endian words, added to `acc`.
pub fn sum(bytes: &[u8], mut acc: u32) -> u32 {
    let mut chunks = bytes.chunks_exact(2);
    for w in &mut chunks {
        acc = acc.wrapping_add(u32::from(u16::from_be_bytes([w[0], w[1]])));
        // Fold early so the accumulator never overflows on long inputs.
        if acc > 0xffff_0000 {
            acc = (acc & 0xffff) + (acc >> 16);
        }
    }
    if let [last] = chunks.remainder() {
        acc = acc.wrapping_add(u32::from(*last) << 8);
    }
    acc
}

/// Folds a running sum to 16 bits.
pub fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The pseudo-header sum of a TCP/UDP segment of `len` bytes.
pub fn pseudo(src: Ip, dst: Ip, proto: u8, len: usize) -> u32 {
    let mut acc = sum(&src, 0);
    acc = sum(&dst, acc);
    acc + u32::from(proto) + len as u32
}

/// Writes an Ethernet header at `buf[..14]`.
pub fn eth(buf: &mut [u8], dst: Mac, src: Mac, ethertype: u16) {
    buf[..6].copy_from_slice(&dst);
    buf[6..12].copy_from_slice(&src);
    buf[12..14].copy_from_slice(&ethertype.to_be_bytes());
}

/// Writes an IPv4 header (no options, DF, TTL 64, checksum filled) at `buf[..20]`.
pub fn ipv4(buf: &mut [u8], src: Ip, dst: Ip, proto: u8, payload: usize, id: u16) {
    let total = (IP_HLEN + payload) as u16;
    buf[0] = 0x45;
    buf[1] = 0;
    buf[2..4].copy_from_slice(&total.to_be_bytes());
    buf[4..6].copy_from_slice(&id.to_be_bytes());
    buf[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
    buf[8] = 64;
    buf[9] = proto;
    buf[10..12].copy_from_slice(&[0, 0]);
    buf[12..16].copy_from_slice(&src);
    buf[16..20].copy_from_slice(&dst);
    let c = !fold(sum(&buf[..IP_HLEN], 0));
    buf[10..12].copy_from_slice(&c.to_be_bytes());
}

/// How a UDP checksum is made.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Csum {
    /// Computed here.
    Full,
    /// Left to the device (`NEEDS_CSUM`): the field holds the pseudo-header sum.
    Partial,
}

/// Builds an Ethernet + IPv4 + UDP frame into `buf`; returns its length.
#[allow(clippy::too_many_arguments)]
pub fn udp_frame(
    buf: &mut [u8],
    (src_mac, dst_mac): (Mac, Mac),
    (src, dst): (Ip, Ip),
    (sport, dport): (u16, u16),
    payload: &[u8],
    csum: Csum,
    id: u16,
) -> usize {
    let ulen = UDP_HLEN + payload.len();
    eth(buf, dst_mac, src_mac, ETHERTYPE_IPV4);
    ipv4(&mut buf[ETH_HLEN..], src, dst, PROTO_UDP, ulen, id);
    let u = ETH_HLEN + IP_HLEN;
    buf[u..u + 2].copy_from_slice(&sport.to_be_bytes());
    buf[u + 2..u + 4].copy_from_slice(&dport.to_be_bytes());
    buf[u + 4..u + 6].copy_from_slice(&(ulen as u16).to_be_bytes());
    buf[u + 6..u + 8].copy_from_slice(&[0, 0]);
    buf[u + 8..u + ulen].copy_from_slice(payload);
    let p = pseudo(src, dst, PROTO_UDP, ulen);
    let c = match csum {
        Csum::Full => match !fold(sum(&buf[u..u + ulen], p)) {
            0 => 0xffff,
            c => c,
        },
        Csum::Partial => fold(p),
    };
    buf[u + 6..u + 8].copy_from_slice(&c.to_be_bytes());
    u + ulen
}

/// Builds an ARP packet (`op` 1 request, 2 reply) into `buf`; returns its length (60, padded).
pub fn arp_frame(buf: &mut [u8], op: u16, (sha, spa): (Mac, Ip), (tha, tpa): (Mac, Ip)) -> usize {
    let dst = if op == 1 { BROADCAST } else { tha };
    eth(buf, dst, sha, ETHERTYPE_ARP);
    let a = &mut buf[ETH_HLEN..];
    a[..8].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, op as u8]);
    a[8..14].copy_from_slice(&sha);
    a[14..18].copy_from_slice(&spa);
    a[18..24].copy_from_slice(&tha);
    a[24..28].copy_from_slice(&tpa);
    buf[ETH_HLEN + 28..60].fill(0);
    60
}

/// Builds an ICMP echo request or reply (`kind` 8 or 0) into `buf`; returns its length.
#[allow(clippy::too_many_arguments)]
pub fn icmp_frame(
    buf: &mut [u8],
    (src_mac, dst_mac): (Mac, Mac),
    (src, dst): (Ip, Ip),
    kind: u8,
    ident: u16,
    seq: u16,
    payload: &[u8],
) -> usize {
    let len = 8 + payload.len();
    eth(buf, dst_mac, src_mac, ETHERTYPE_IPV4);
    ipv4(&mut buf[ETH_HLEN..], src, dst, PROTO_ICMP, len, seq);
    let i = ETH_HLEN + IP_HLEN;
    buf[i] = kind;
    buf[i + 1] = 0;
    buf[i + 2..i + 4].copy_from_slice(&[0, 0]);
    buf[i + 4..i + 6].copy_from_slice(&ident.to_be_bytes());
    buf[i + 6..i + 8].copy_from_slice(&seq.to_be_bytes());
    buf[i + 8..i + len].copy_from_slice(payload);
    let c = !fold(sum(&buf[i..i + len], 0));
    buf[i + 2..i + 4].copy_from_slice(&c.to_be_bytes());
    i + len
}

/// What a received frame is.
pub enum Packet<'a> {
    Arp {
        op: u16,
        sha: Mac,
        spa: Ip,
        tpa: Ip,
    },
    Ipv4 {
        src_mac: Mac,
        src: Ip,
        dst: Ip,
        proto: u8,
        /// The IP payload (exactly the header's total length minus the header).
        body: &'a [u8],
    },
    Other,
}

fn ip4(b: &[u8]) -> Ip {
    [b[0], b[1], b[2], b[3]]
}

fn mac(b: &[u8]) -> Mac {
    [b[0], b[1], b[2], b[3], b[4], b[5]]
}

/// Parses an Ethernet frame (IPv4 without options, or ARP for IPv4 over Ethernet).
pub fn parse(frame: &[u8]) -> Packet<'_> {
    if frame.len() < ETH_HLEN {
        return Packet::Other;
    }
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    let p = &frame[ETH_HLEN..];
    match ethertype {
        ETHERTYPE_ARP if p.len() >= 28 && p[..6] == [0, 1, 8, 0, 6, 4] => Packet::Arp {
            op: u16::from_be_bytes([p[6], p[7]]),
            sha: mac(&p[8..]),
            spa: ip4(&p[14..]),
            tpa: ip4(&p[24..]),
        },
        ETHERTYPE_IPV4 if p.len() >= IP_HLEN && p[0] == 0x45 => {
            let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
            if total < IP_HLEN || total > p.len() || fold(sum(&p[..IP_HLEN], 0)) != 0xffff {
                return Packet::Other;
            }
            Packet::Ipv4 {
                src_mac: mac(&frame[6..]),
                src: ip4(&p[12..]),
                dst: ip4(&p[16..]),
                proto: p[9],
                body: &p[IP_HLEN..total],
            }
        }
        _ => Packet::Other,
    }
}

/// A UDP datagram: ports, payload, and whether its checksum verifies (`None`: no checksum).
pub struct Udp<'a> {
    pub sport: u16,
    pub dport: u16,
    pub payload: &'a [u8],
    pub csum_ok: Option<bool>,
}

/// Parses the UDP datagram `body` of an IPv4 packet from `src` to `dst`.
pub fn udp(body: &[u8], src: Ip, dst: Ip) -> Option<Udp<'_>> {
    if body.len() < UDP_HLEN {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([body[4], body[5]]));
    if len < UDP_HLEN || len > body.len() {
        return None;
    }
    let field = u16::from_be_bytes([body[6], body[7]]);
    let csum_ok =
        (field != 0).then(|| fold(sum(&body[..len], pseudo(src, dst, PROTO_UDP, len))) == 0xffff);
    Some(Udp {
        sport: u16::from_be_bytes([body[0], body[1]]),
        dport: u16::from_be_bytes([body[2], body[3]]),
        payload: &body[UDP_HLEN..len],
        csum_ok,
    })
}

/// Parses `a.b.c.d`.
pub fn parse_ip(text: &str) -> Option<Ip> {
    let mut ip = [0u8; 4];
    let mut parts = text.split('.');
    for b in ip.iter_mut() {
        *b = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then_some(ip)
}

/// `a.b.c.d` for result lines.
pub struct ShowIp(pub Ip);

impl core::fmt::Display for ShowIp {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        let [a, b, c, d] = self.0;
        write!(f, "{a}.{b}.{c}.{d}")
    }
}

/// `aa:bb:cc:dd:ee:ff` for result lines.
pub struct ShowMac(pub Mac);

impl core::fmt::Display for ShowMac {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}
