//! What a virtio-net device is configured with (MAC, MTU, queue pairs, rate limits), its
//! validation, and the config space the driver reads.

use std::fmt;
use std::str::FromStr;

use super::{features, DEFAULT_MTU, MAX_PAIRS, MTU_RANGE, VIRTIO_NET_S_LINK_UP};

/// A token bucket: `rate` tokens (bytes or packets) per second, at most `burst` saved up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ipc::Encode, ipc::Decode)]
#[bincode(crate = "ipc::codec::bincode")]
pub struct RateSpec {
    /// Tokens per second, at least 1.
    pub rate: u64,
    /// Bucket size, at least 1.
    pub burst: u64,
}

impl RateSpec {
    /// The default bucket: a tenth of a second's worth (at least one token).
    pub fn with_default_burst(rate: u64) -> Self {
        RateSpec {
            rate,
            burst: (rate / 10).max(1),
        }
    }
}

/// `RATE[:BURST]`, each a decimal number with an optional `K`, `M` or `G` (10^3, 10^6, 10^9).
impl FromStr for RateSpec {
    type Err = NetConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || NetConfigError::Rate(s.to_owned());
        let (rate, burst) = match s.split_once(':') {
            Some((r, b)) => (r, Some(b)),
            None => (s, None),
        };
        let rate = scaled(rate).filter(|&r| r > 0).ok_or_else(bad)?;
        match burst {
            None => Ok(RateSpec::with_default_burst(rate)),
            Some(b) => {
                let burst = scaled(b).filter(|&b| b > 0).ok_or_else(bad)?;
                Ok(RateSpec { rate, burst })
            }
        }
    }
}

impl fmt::Display for RateSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.rate, self.burst)
    }
}

/// The largest rate or burst (2^53: exact in the bucket's arithmetic, far beyond any link).
pub const MAX_RATE: u64 = 1 << 53;

/// A decimal number with an optional `K`/`M`/`G` suffix; `None` if malformed or above
/// [`MAX_RATE`].
fn scaled(s: &str) -> Option<u64> {
    let (digits, mult) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 1_000),
        b'M' | b'm' => (&s[..s.len() - 1], 1_000_000),
        b'G' | b'g' => (&s[..s.len() - 1], 1_000_000_000),
        _ => (s, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits
        .parse::<u64>()
        .ok()?
        .checked_mul(mult)
        .filter(|&v| v <= MAX_RATE)
}

/// The limits of one direction: bytes per second and packets per second, each optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ipc::Encode, ipc::Decode)]
#[bincode(crate = "ipc::codec::bincode")]
pub struct DirectionLimits {
    /// Bytes per second (frame bytes, without the vnet header).
    pub bytes: Option<RateSpec>,
    /// Frames per second.
    pub packets: Option<RateSpec>,
}

impl DirectionLimits {
    /// Whether anything is limited.
    pub fn any(&self) -> bool {
        self.bytes.is_some() || self.packets.is_some()
    }
}

/// A virtio-net device's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ipc::Encode, ipc::Decode)]
#[bincode(crate = "ipc::codec::bincode")]
pub struct NetConfig {
    /// The MAC address the driver reads (`MAC`).
    pub mac: [u8; 6],
    /// The MTU the driver reads (`MTU`).
    pub mtu: u16,
    /// Queue pairs, `1..=`[`MAX_PAIRS`]; more than one offers `MQ`.
    pub pairs: u16,
    /// Guest to host.
    pub tx: DirectionLimits,
    /// Host to guest.
    pub rx: DirectionLimits,
}

impl NetConfig {
    /// One queue pair, MTU 1500, no rate limits, MAC `mac`.
    pub fn new(mac: [u8; 6]) -> Self {
        NetConfig {
            mac,
            mtu: DEFAULT_MTU,
            pairs: 1,
            tx: DirectionLimits::default(),
            rx: DirectionLimits::default(),
        }
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), NetConfigError> {
        check_mac(&self.mac)?;
        if !(MTU_RANGE.0..=MTU_RANGE.1).contains(&self.mtu) {
            return Err(NetConfigError::Mtu(self.mtu));
        }
        if self.pairs == 0 || self.pairs > MAX_PAIRS {
            return Err(NetConfigError::Pairs(self.pairs));
        }
        for limits in [&self.rx, &self.tx] {
            for spec in [limits.bytes, limits.packets].into_iter().flatten() {
                if spec.rate == 0
                    || spec.burst == 0
                    || spec.rate > MAX_RATE
                    || spec.burst > MAX_RATE
                {
                    return Err(NetConfigError::Rate(spec.to_string()));
                }
            }
        }
        Ok(())
    }

    /// The config space: `mac`, `status`, `max_virtqueue_pairs`, `mtu` (12 bytes).
    pub fn config_space(&self) -> Vec<u8> {
        let mut c = Vec::with_capacity(12);
        c.extend_from_slice(&self.mac);
        c.extend_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        c.extend_from_slice(&self.pairs.to_le_bytes());
        c.extend_from_slice(&self.mtu.to_le_bytes());
        c
    }

    /// The features every endpoint allows; `MQ` with more than one pair. The control queue
    /// is always there (even where it can only refuse commands), so the queue count is known
    /// before the endpoint is: `2 * pairs + 1`.
    pub fn base_features(&self) -> u64 {
        let mut f = features::MAC
            | features::MTU
            | features::STATUS
            | features::MRG_RXBUF
            | features::CTRL_VQ;
        if self.pairs > 1 {
            f |= features::MQ;
        }
        f
    }
}

/// A MAC address that is unicast and not all zeroes.
fn check_mac(mac: &[u8; 6]) -> Result<(), NetConfigError> {
    if mac[0] & 1 != 0 || mac.iter().all(|&b| b == 0) {
        return Err(NetConfigError::Mac(format_mac(mac)));
    }
    Ok(())
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    let parts: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff` (hex, `:` or `-` separated) into a unicast, non-zero address.
pub fn parse_mac(s: &str) -> Result<[u8; 6], NetConfigError> {
    let bad = || NetConfigError::Mac(s.to_owned());
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(parts) {
        if part.len() != 2 {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    check_mac(&mac).map_err(|_| bad())?;
    Ok(mac)
}

/// The default MAC of the `n`-th net device: `52:54:00:12:34:56` + n (QEMU's default prefix).
pub fn default_mac(n: u8) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x12, 0x34, 0x56u8.wrapping_add(n)]
}

/// A configuration value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetConfigError {
    /// Not a unicast MAC address.
    #[error(
        "bad MAC address '{0}' (want six hex bytes like 52:54:00:12:34:56, unicast, not all zero)"
    )]
    Mac(String),
    /// MTU out of range.
    #[error("MTU {0} is outside {lo}..={hi}", lo = MTU_RANGE.0, hi = MTU_RANGE.1)]
    Mtu(u16),
    /// Queue pairs out of range.
    #[error("queues={0} is outside 1..={MAX_PAIRS}")]
    Pairs(u16),
    /// A malformed rate.
    #[error("bad rate '{0}' (want RATE[:BURST], numbers with an optional K, M or G)")]
    Rate(String),
}
