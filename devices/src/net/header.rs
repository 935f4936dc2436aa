//! `virtio_net_hdr_v1` (12 bytes, little-endian): its raw fields, the validation of a
//! transmitted header into a typed [`TxHeader`], and the header of a received frame.
//!
//! A transmitted header is untrusted guest data: [`TxHeader::validate`] accepts only flags and
//! GSO types the driver negotiated, a checksum position inside the frame, and a GSO request
//! with a segment size and a header length that fit the frame. Fields that mean nothing for
//! the request (a GSO size without GSO, checksum fields without `NEEDS_CSUM`, `num_buffers`,
//! which Linux's driver leaves uninitialised on transmit without `MRG_RXBUF`) are ignored, and
//! the host only ever sees [`TxHeader::to_vnet`]'s canonical re-encoding of what was accepted.

use super::{HDR_LEN, MAX_FRAME, MIN_FRAME};

/// `flags`: the checksum from `csum_start` on must be completed.
pub const F_NEEDS_CSUM: u8 = 1;
/// `flags` (receive only): the checksum was validated.
pub const F_DATA_VALID: u8 = 2;
/// `gso_type`: not a GSO frame.
pub const GSO_NONE: u8 = 0;
/// `gso_type`: TCP over IPv4.
pub const GSO_TCPV4: u8 = 1;
/// `gso_type`: UDP fragmentation (UFO; never offered).
pub const GSO_UDP: u8 = 3;
/// `gso_type`: TCP over IPv6.
pub const GSO_TCPV6: u8 = 4;
/// `gso_type` bit: the TCP frame has CWR set (ECN).
pub const GSO_ECN: u8 = 0x80;

/// The raw header fields, in the layout of the spec.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// `VIRTIO_NET_HDR_F_*`.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`, with [`GSO_ECN`].
    pub gso_type: u8,
    /// Length of the headers to copy into every segment.
    pub hdr_len: u16,
    /// Bytes of payload per segment.
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Where, from `csum_start`, the checksum goes.
    pub csum_offset: u16,
    /// Receive buffers this frame occupies (receive side only).
    pub num_buffers: u16,
}

impl VnetHdr {
    /// Decodes the 12 bytes of a header.
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Self {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
            num_buffers: u16_at(10),
        }
    }

    /// Encodes the header.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        b
    }
}

/// The transmit offloads the driver negotiated (`CSUM`, `HOST_TSO4/6`, `HOST_ECN`) and the
/// largest plain frame it may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxLimits {
    /// `CSUM`: partial checksums allowed.
    pub csum: bool,
    /// `HOST_TSO4`.
    pub tso4: bool,
    /// `HOST_TSO6`.
    pub tso6: bool,
    /// `HOST_ECN`.
    pub ecn: bool,
    /// Largest frame without GSO: the MTU plus an Ethernet header and a VLAN tag when `MTU`
    /// was negotiated, else [`MAX_FRAME`].
    pub max_plain: usize,
}

/// A checksum the host must complete: the 16-bit ones' complement sum of the frame from
/// `start` on, stored at `start + offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Csum {
    /// First byte summed.
    pub start: u16,
    /// Where the result goes, from `start`.
    pub offset: u16,
}

/// The segmentation a GSO frame asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GsoKind {
    /// TCP over IPv4.
    Tcp4,
    /// TCP over IPv6.
    Tcp6,
}

/// A GSO request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gso {
    /// What to segment.
    pub kind: GsoKind,
    /// The frame has ECN's CWR set.
    pub ecn: bool,
    /// Payload bytes per segment, `1..` the frame's length.
    pub size: u16,
    /// The header length the driver gave (at most the frame's length).
    pub hdr_len: u16,
}

/// A validated transmit header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxHeader {
    /// A partial checksum to complete.
    pub csum: Option<Csum>,
    /// A segmentation request (always with `csum`).
    pub gso: Option<Gso>,
}

/// Why a transmitted header or frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Fewer bytes than an Ethernet header, or more than the largest frame.
    #[error("frame of {0} bytes is outside {MIN_FRAME}..={MAX_FRAME}")]
    FrameLength(usize),
    /// A plain frame larger than the negotiated MTU allows.
    #[error("frame of {len} bytes exceeds the MTU's {max}")]
    AboveMtu {
        /// The frame's length.
        len: usize,
        /// The largest plain frame.
        max: usize,
    },
    /// Flag bits other than `NEEDS_CSUM`.
    #[error("header flags {0:#x} are not allowed on transmit")]
    Flags(u8),
    /// `NEEDS_CSUM` without `CSUM`.
    #[error("partial checksum, but CSUM was not negotiated")]
    CsumNotNegotiated,
    /// `csum_start + csum_offset + 2` beyond the frame.
    #[error("checksum at {start}+{offset} is outside a frame of {len} bytes")]
    CsumOutside {
        /// `csum_start`.
        start: u16,
        /// `csum_offset`.
        offset: u16,
        /// The frame's length.
        len: usize,
    },
    /// A GSO type that is unknown or was not negotiated.
    #[error("GSO type {0:#x} is unknown or was not negotiated")]
    GsoType(u8),
    /// GSO without `NEEDS_CSUM`, a zero segment size, or a header length beyond the frame.
    #[error("GSO request (size {size}, hdr_len {hdr_len}) does not fit a frame of {len} bytes or lacks a checksum")]
    GsoInconsistent {
        /// `gso_size`.
        size: u16,
        /// `hdr_len`.
        hdr_len: u16,
        /// The frame's length.
        len: usize,
    },
}

impl TxHeader {
    /// Validates the header `raw` of a frame of `len` bytes against `limits`.
    pub fn validate(raw: &VnetHdr, len: usize, limits: &TxLimits) -> Result<TxHeader, HeaderError> {
        if !(MIN_FRAME..=MAX_FRAME).contains(&len) {
            return Err(HeaderError::FrameLength(len));
        }
        if raw.flags & !F_NEEDS_CSUM != 0 {
            return Err(HeaderError::Flags(raw.flags));
        }
        let csum = if raw.flags & F_NEEDS_CSUM != 0 {
            if !limits.csum {
                return Err(HeaderError::CsumNotNegotiated);
            }
            let end = usize::from(raw.csum_start) + usize::from(raw.csum_offset) + 2;
            if end > len {
                return Err(HeaderError::CsumOutside {
                    start: raw.csum_start,
                    offset: raw.csum_offset,
                    len,
                });
            }
            Some(Csum {
                start: raw.csum_start,
                offset: raw.csum_offset,
            })
        } else {
            None
        };
        let ecn = raw.gso_type & GSO_ECN != 0;
        let kind = match raw.gso_type & !GSO_ECN {
            GSO_NONE if !ecn => None,
            GSO_TCPV4 if limits.tso4 && (!ecn || limits.ecn) => Some(GsoKind::Tcp4),
            GSO_TCPV6 if limits.tso6 && (!ecn || limits.ecn) => Some(GsoKind::Tcp6),
            _ => return Err(HeaderError::GsoType(raw.gso_type)),
        };
        let gso = match kind {
            None => {
                if len > limits.max_plain {
                    return Err(HeaderError::AboveMtu {
                        len,
                        max: limits.max_plain,
                    });
                }
                None
            }
            Some(kind) => {
                let fits = raw.gso_size > 0
                    && usize::from(raw.gso_size) <= len
                    && usize::from(raw.hdr_len) <= len;
                if csum.is_none() || !fits {
                    return Err(HeaderError::GsoInconsistent {
                        size: raw.gso_size,
                        hdr_len: raw.hdr_len,
                        len,
                    });
                }
                Some(Gso {
                    kind,
                    ecn,
                    size: raw.gso_size,
                    hdr_len: raw.hdr_len,
                })
            }
        };
        Ok(TxHeader { csum, gso })
    }

    /// The canonical header for the host: exactly what was validated, everything else zero.
    pub fn to_vnet(&self) -> VnetHdr {
        let mut hdr = VnetHdr::default();
        if let Some(c) = self.csum {
            hdr.flags = F_NEEDS_CSUM;
            hdr.csum_start = c.start;
            hdr.csum_offset = c.offset;
        }
        if let Some(g) = self.gso {
            hdr.gso_type = match g.kind {
                GsoKind::Tcp4 => GSO_TCPV4,
                GsoKind::Tcp6 => GSO_TCPV6,
            } | if g.ecn { GSO_ECN } else { 0 };
            hdr.gso_size = g.size;
            hdr.hdr_len = g.hdr_len;
        }
        hdr
    }
}

/// What the driver accepts on receive right now (negotiated, then changed by
/// `CTRL_GUEST_OFFLOADS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RxAccept {
    /// `GUEST_CSUM`: partial checksums and `DATA_VALID` may be passed on.
    pub csum: bool,
    /// `GUEST_TSO4`.
    pub tso4: bool,
    /// `GUEST_TSO6`.
    pub tso6: bool,
    /// `GUEST_ECN`.
    pub ecn: bool,
}

/// What to do with a frame the host delivered, given its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxVerdict {
    /// Pass it on with this header (`num_buffers` still to be filled in).
    Deliver(VnetHdr),
    /// Complete the partial checksum in software first, then pass it on with a plain header.
    CompleteCsum(Csum),
    /// The driver cannot take it (a GSO frame it did not ask for, a malformed header).
    Drop,
}

/// Decides how a received frame of `len` bytes with the host's header `host` reaches a
/// driver that accepts `accept`. The host (the kernel's tap) is trusted to be sane, but its
/// header is still checked before the device acts on it.
pub fn rx_verdict(host: &VnetHdr, len: usize, accept: &RxAccept) -> RxVerdict {
    if !(MIN_FRAME..=MAX_FRAME).contains(&len) {
        return RxVerdict::Drop;
    }
    let ecn = host.gso_type & GSO_ECN != 0;
    let gso_ok = match host.gso_type & !GSO_ECN {
        GSO_NONE => !ecn,
        GSO_TCPV4 => accept.tso4 && (!ecn || accept.ecn),
        GSO_TCPV6 => accept.tso6 && (!ecn || accept.ecn),
        _ => false,
    };
    let gso = host.gso_type != GSO_NONE;
    let gso_whole = host.gso_size > 0 && host.flags & F_NEEDS_CSUM != 0 && accept.csum;
    if !gso_ok || (gso && !gso_whole) {
        return RxVerdict::Drop;
    }
    let mut hdr = VnetHdr {
        gso_type: host.gso_type,
        hdr_len: if gso { host.hdr_len } else { 0 },
        gso_size: if gso { host.gso_size } else { 0 },
        ..VnetHdr::default()
    };
    if host.flags & F_NEEDS_CSUM != 0 {
        let end = usize::from(host.csum_start) + usize::from(host.csum_offset) + 2;
        if end > len {
            return RxVerdict::Drop;
        }
        let csum = Csum {
            start: host.csum_start,
            offset: host.csum_offset,
        };
        if !accept.csum {
            // Only a plain frame can be completed here (GSO implies GUEST_CSUM).
            return RxVerdict::CompleteCsum(csum);
        }
        hdr.flags = F_NEEDS_CSUM;
        hdr.csum_start = csum.start;
        hdr.csum_offset = csum.offset;
    } else if host.flags & F_DATA_VALID != 0 && accept.csum {
        hdr.flags = F_DATA_VALID;
    }
    RxVerdict::Deliver(hdr)
}

/// Completes a partial checksum in `frame` as a NIC would: the ones' complement of the
/// 16-bit ones' complement sum of `frame[start..]` (which holds the pseudo-header sum at the
/// checksum's place) is stored at `start + offset`. `false` (nothing written) if it does not
/// fit the frame.
pub fn complete_csum(frame: &mut [u8], csum: Csum) -> bool {
    let start = usize::from(csum.start);
    let at = start + usize::from(csum.offset);
    if at + 2 > frame.len() {
        return false;
    }
    let sum = !fold(ones_sum(&frame[start..], 0));
    frame[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    true
}

/// The 32-bit running ones' complement sum of `bytes` as big-endian 16-bit words (an odd last
/// byte is padded with zero), added to `acc`.
pub fn ones_sum(bytes: &[u8], mut acc: u64) -> u64 {
    let mut words = bytes.chunks_exact(2);
    for w in &mut words {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        acc += u64::from(u16::from_be_bytes([*last, 0]));
    }
    acc
}

/// Folds a running sum into 16 bits.
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}
