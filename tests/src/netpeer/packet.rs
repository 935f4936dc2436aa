//! Frames as the peer sees them: checksums, parsing a captured frame, building the TCPv4 GSO
//! frame it injects.

/// Bytes of the vnet header on an `AF_PACKET` socket with `PACKET_VNET_HDR`
/// (`struct virtio_net_hdr`, without `num_buffers`).
pub const VNET_HDR: usize = 10;
pub const NEEDS_CSUM: u8 = 1;
pub const GSO_TCPV4: u8 = 1;
const ETH: usize = 14;
const IP: usize = 20;
const TCP: usize = 20;
/// Segment size of the injected GSO frame (an Ethernet MTU's TCP payload).
pub const GSO_SIZE: u16 = 1448;

/// The running ones' complement sum of big-endian words.
pub fn sum(bytes: &[u8], mut acc: u64) -> u64 {
    let mut words = bytes.chunks_exact(2);
    for w in &mut words {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Folds a running sum to 16 bits.
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The pseudo-header sum of a segment of `len` bytes.
pub fn pseudo(src: [u8; 4], dst: [u8; 4], proto: u8, len: usize) -> u64 {
    sum(&src, sum(&dst, 0)) + u64::from(proto) + len as u64
}

/// The vnet header fields the peer looks at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    pub fn parse(b: &[u8]) -> Option<VnetHdr> {
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        (b.len() >= VNET_HDR).then(|| VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    pub fn bytes(&self) -> [u8; VNET_HDR] {
        let mut b = [0u8; VNET_HDR];
        b[0] = self.flags;
        b[1] = self.gso_type;
        for (i, v) in [
            self.hdr_len,
            self.gso_size,
            self.csum_start,
            self.csum_offset,
        ]
        .iter()
        .enumerate()
        {
            b[2 + 2 * i..4 + 2 * i].copy_from_slice(&v.to_le_bytes());
        }
        b
    }
}

/// An IPv4/UDP frame's parts.
pub struct UdpFrame<'a> {
    pub src_mac: [u8; 6],
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub dport: u16,
    /// Offset of the UDP header in the frame.
    pub udp_at: usize,
    pub udp_len: usize,
    pub payload: &'a [u8],
}

/// Parses an Ethernet/IPv4 (no options)/UDP frame.
pub fn parse_udp(frame: &[u8]) -> Option<UdpFrame<'_>> {
    if frame.len() < ETH + IP + 8 || frame[12..14] != [8, 0] || frame[ETH] != 0x45 {
        return None;
    }
    let ip = &frame[ETH..];
    if ip[9] != 17 {
        return None;
    }
    let udp_at = ETH + IP;
    let udp_len = usize::from(u16::from_be_bytes([frame[udp_at + 4], frame[udp_at + 5]]));
    if udp_len < 8 || udp_at + udp_len > frame.len() {
        return None;
    }
    let four = |b: &[u8]| [b[0], b[1], b[2], b[3]];
    Some(UdpFrame {
        src_mac: frame[6..12].try_into().ok()?,
        src: four(&ip[12..]),
        dst: four(&ip[16..]),
        dport: u16::from_be_bytes([frame[udp_at + 2], frame[udp_at + 3]]),
        udp_at,
        udp_len,
        payload: &frame[udp_at + 8..udp_at + udp_len],
    })
}

/// What the peer found in a captured UDP frame's checksum: `Ok("partial")` if the vnet header
/// asked for a partial checksum and completing it as a NIC would gives a valid UDP checksum,
/// `Ok("full")` if the frame carried a valid one already, or why not.
pub fn check_udp_csum(hdr: &VnetHdr, frame: &[u8]) -> Result<&'static str, String> {
    let mut frame = frame.to_vec();
    let udp = parse_udp(&frame).ok_or("not an IPv4/UDP frame")?;
    let (src, dst, at, len) = (udp.src, udp.dst, udp.udp_at, udp.udp_len);
    let how = if hdr.flags & NEEDS_CSUM != 0 {
        let start = usize::from(hdr.csum_start);
        let field = start + usize::from(hdr.csum_offset);
        if start != at || field != at + 6 || field + 2 > frame.len() {
            return Err(format!(
                "partial checksum at {}+{}, UDP header at {at}",
                hdr.csum_start, hdr.csum_offset
            ));
        }
        let c = !fold(sum(&frame[start..at + len], 0));
        frame[field..field + 2].copy_from_slice(&c.to_be_bytes());
        "partial"
    } else {
        "full"
    };
    let total = fold(sum(&frame[at..at + len], pseudo(src, dst, 17, len)));
    if total == 0xffff {
        Ok(how)
    } else {
        Err(format!("{how} checksum does not verify (sum {total:#06x})"))
    }
}

/// A TCPv4 frame of `payload` bytes (pattern `seed + (i mod 251)`, sequence number 0) from
/// `(src_mac, src, sport)` to `(dst_mac, dst, dport)`, with the vnet header of a GSO request
/// (partial checksum, `GSO_TCPV4`, segments of [`GSO_SIZE`]). The TCP checksum field holds
/// the pseudo-header sum, as the kernel expects of a partial checksum.
pub fn tcp_gso_frame(
    (src_mac, src, sport): ([u8; 6], [u8; 4], u16),
    (dst_mac, dst, dport): ([u8; 6], [u8; 4], u16),
    payload: usize,
    seed: u8,
) -> Vec<u8> {
    let seg = TCP + payload;
    let mut f = Vec::with_capacity(VNET_HDR + ETH + IP + seg);
    f.extend_from_slice(
        &VnetHdr {
            flags: NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: (ETH + IP + TCP) as u16,
            gso_size: GSO_SIZE,
            csum_start: (ETH + IP) as u16,
            csum_offset: 16,
        }
        .bytes(),
    );
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[8, 0]);
    let mut ip = [0u8; IP];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((IP + seg) as u16).to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let c = !fold(sum(&ip, 0));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut tcp = [0u8; TCP];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x18; // PSH | ACK
    tcp[14..16].copy_from_slice(&0xffffu16.to_be_bytes());
    tcp[16..18].copy_from_slice(&fold(pseudo(src, dst, 6, seg)).to_be_bytes());
    f.extend_from_slice(&tcp);
    f.extend((0..payload).map(|i| seed.wrapping_add((i % 251) as u8)));
    f
}

/// A UDP frame of `bytes` bytes in all (zero payload, no UDP checksum) from `src` to `dst`,
/// behind an all-zero vnet header.
pub fn udp_frame_with_vnet(
    (src_mac, src, sport): ([u8; 6], [u8; 4], u16),
    (dst_mac, dst, dport): ([u8; 6], [u8; 4], u16),
    bytes: usize,
) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR + bytes];
    let e = &mut f[VNET_HDR..];
    e[..6].copy_from_slice(&dst_mac);
    e[6..12].copy_from_slice(&src_mac);
    e[12..14].copy_from_slice(&[8, 0]);
    let ulen = bytes - ETH - IP;
    let ip = &mut e[ETH..ETH + IP];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((IP + ulen) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let c = !fold(sum(ip, 0));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let u = &mut e[ETH + IP..];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&(ulen as u16).to_be_bytes());
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A UDP frame with a full or partial checksum, built by hand.
    fn udp_frame(partial: bool) -> (VnetHdr, Vec<u8>) {
        let (src, dst) = ([10, 0, 0, 2], [10, 0, 0, 1]);
        let payload = b"hello, peer";
        let len = 8 + payload.len();
        let mut f = vec![0u8; ETH];
        f[12..14].copy_from_slice(&[8, 0]);
        let mut ip = vec![0x45, 0, 0, (IP + len) as u8, 0, 0, 0, 0, 64, 17, 0, 0];
        ip.extend_from_slice(&src);
        ip.extend_from_slice(&dst);
        f.extend_from_slice(&ip);
        f.extend_from_slice(&[0x9c, 0x40, 0x1e, 0x61, 0, len as u8, 0, 0]);
        f.extend_from_slice(payload);
        let p = pseudo(src, dst, 17, len);
        let c = if partial {
            fold(p)
        } else {
            !fold(sum(&f[ETH + IP..], p))
        };
        f[ETH + IP + 6..ETH + IP + 8].copy_from_slice(&c.to_be_bytes());
        let hdr = VnetHdr {
            flags: if partial { NEEDS_CSUM } else { 0 },
            csum_start: 34,
            csum_offset: 6,
            ..VnetHdr::default()
        };
        (hdr, f)
    }

    #[test]
    fn partial_and_full_checksums_verify_and_a_broken_one_does_not() {
        let (hdr, f) = udp_frame(true);
        assert_eq!(check_udp_csum(&hdr, &f), Ok("partial"));
        let (hdr, f) = udp_frame(false);
        assert_eq!(check_udp_csum(&hdr, &f), Ok("full"));
        let (hdr, mut f) = udp_frame(false);
        f[50] ^= 1;
        assert!(check_udp_csum(&hdr, &f).is_err());
        // A partial checksum whose field is wrong does not verify either.
        let (hdr, mut f) = udp_frame(true);
        f[ETH + IP + 6] ^= 0x10;
        assert!(check_udp_csum(&hdr, &f).is_err());
    }

    #[test]
    fn the_gso_frame_is_consistent() {
        let f = tcp_gso_frame(
            ([2; 6], [10, 0, 0, 1], 80),
            ([4; 6], [10, 0, 0, 2], 9),
            65_000,
            7,
        );
        let hdr = VnetHdr::parse(&f).unwrap();
        assert_eq!(
            (hdr.gso_type, hdr.gso_size, hdr.hdr_len),
            (GSO_TCPV4, 1448, 54)
        );
        let frame = &f[VNET_HDR..];
        assert_eq!(frame.len(), 14 + 20 + 20 + 65_000);
        assert_eq!(fold(sum(&frame[14..34], 0)), 0xffff, "IP header checksum");
        assert_eq!(frame[54], 7);
        assert_eq!(frame[54 + 251], 7);
    }
}
