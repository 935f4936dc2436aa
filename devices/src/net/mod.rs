//! virtio-net (virtio spec 1.2, section 5.1): a network card whose frames go to a host packet
//! endpoint — a tap queue fd (with the kernel's vnet header) or a stream socket in QEMU's
//! `-netdev stream` / passt framing (4-byte big-endian length, then the Ethernet frame).
//!
//! Queues: `receiveq1, transmitq1, ..., receiveqN, transmitqN` (N queue pairs, one endpoint each)
//! and, when offered, the control queue after them. Every frame carries the 12-byte
//! `virtio_net_hdr_v1` in front (`VERSION_1` makes `num_buffers` part of it on both sides).
//!
//! - `header`: the header's fields, its validation for TX and its preparation for RX.
//! - `tx`: copy-in of one transmit chain into a private buffer and a validated [`tx::TxFrame`];
//!   nothing of guest memory is read twice, and the endpoint only ever sees the private copy.
//! - `rx`: one received frame into one chain, or across several with `MRG_RXBUF`.
//! - `ctrl`: the control queue (`CTRL_MQ` `VQ_PAIRS_SET`, `CTRL_GUEST_OFFLOADS` `SET`).
//! - `rate`: token buckets (bytes/s and packets/s per direction); a throttled direction is
//!   resumed by a timerfd, never by polling.
//! - `endpoint`: the [`endpoint::Endpoint`] trait, the tap and stream endpoints.
//! - `open`: the host side, run in svmm before any worker exists: attaching to a tap
//!   (`/dev/net/tun`, `TUNSETIFF`, `TUNSETVNETHDRSZ`), starting `passt --fd`, checking a
//!   handed-in fd.
//! - `device`, `io`: the [`Net`] backend and its queue loops.
//! - `fuzzing`: what the `net_tx` fuzz target runs.
//!
//! Sandbox needs: seccomp profile [`SECCOMP_PROFILE`] — the worker base plus `ioctl`
//! (`TUNSETOFFLOAD` only) and `timerfd_settime`; the endpoint fds and, with a rate limit, the
//! timerfds; no paths.

mod config;
pub mod ctrl;
mod device;
pub mod endpoint;
pub mod fuzzing;
pub mod header;
mod io;
pub mod kind;
pub mod open;
#[cfg(feature = "test-faults")]
mod probe;
pub mod rate;
pub mod rx;
mod sys;
#[cfg(test)]
mod tests;
pub mod tx;

pub use config::{
    default_mac, format_mac, parse_mac, DirectionLimits, NetConfig, NetConfigError, RateSpec,
};
pub use device::Net;
pub use kind::{EndpointSpec, NetKind, NetKindConfig};

/// Why a net device could not be built.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A configuration value is out of range.
    #[error(transparent)]
    Config(#[from] NetConfigError),
    /// Not one endpoint per queue pair.
    #[error("{pairs} queue pairs need {pairs} endpoints, got {got}")]
    Endpoints {
        /// Queue pairs configured.
        pairs: u16,
        /// Endpoints given.
        got: usize,
    },
}

/// Name of the device's seccomp profile in the `seccomp-profiles` crate.
pub const SECCOMP_PROFILE: &str = "net";
/// Largest queue size the device accepts.
pub const MAX_QUEUE_SIZE: u16 = 256;
/// Most queue pairs (`queues=N`); each is one tap queue fd.
pub const MAX_PAIRS: u16 = 8;
/// Bytes of `virtio_net_hdr_v1` (with `num_buffers`), on every frame in both directions.
pub const HDR_LEN: usize = 12;
/// Largest Ethernet frame (without the header): 64 KiB of GSO payload plus headers, as the
/// spec's largest `gso_size`-segmentable packet; QEMU and Linux's tap use the same bound.
pub const MAX_FRAME: usize = 65_550;
/// Smallest frame: an Ethernet header.
pub const MIN_FRAME: usize = 14;
/// Default MTU (the config space's `mtu`; `mtu=N` changes it).
pub const DEFAULT_MTU: u16 = 1500;
/// Smallest and largest `mtu=N` (the spec's 68 for IPv4; 65535 minus the Ethernet header).
pub const MTU_RANGE: (u16, u16) = (68, 65_521);

/// Feature bits (virtio 1.2 §5.1.3), as masks.
pub mod features {
    /// Device handles packets with partial checksum (host checksum offload).
    pub const CSUM: u64 = 1 << 0;
    /// Driver handles packets with partial checksum.
    pub const GUEST_CSUM: u64 = 1 << 1;
    /// Control channel offloads reconfiguration.
    pub const CTRL_GUEST_OFFLOADS: u64 = 1 << 2;
    /// Device maximum MTU reporting.
    pub const MTU: u64 = 1 << 3;
    /// Device has a given MAC address.
    pub const MAC: u64 = 1 << 5;
    /// Driver can receive TSOv4.
    pub const GUEST_TSO4: u64 = 1 << 7;
    /// Driver can receive TSOv6.
    pub const GUEST_TSO6: u64 = 1 << 8;
    /// Driver can receive TSO with ECN.
    pub const GUEST_ECN: u64 = 1 << 9;
    /// Device can receive TSOv4.
    pub const HOST_TSO4: u64 = 1 << 11;
    /// Device can receive TSOv6.
    pub const HOST_TSO6: u64 = 1 << 12;
    /// Device can receive TSO with ECN.
    pub const HOST_ECN: u64 = 1 << 13;
    /// Driver can merge receive buffers.
    pub const MRG_RXBUF: u64 = 1 << 15;
    /// Configuration status field is available.
    pub const STATUS: u64 = 1 << 16;
    /// Control channel is available.
    pub const CTRL_VQ: u64 = 1 << 17;
    /// Device supports multiqueue with automatic receive steering.
    pub const MQ: u64 = 1 << 22;
    /// The guest offloads `CTRL_GUEST_OFFLOADS` may switch on and off.
    pub const GUEST_OFFLOADS: u64 = GUEST_CSUM | GUEST_TSO4 | GUEST_TSO6 | GUEST_ECN;
    /// Every bit a net device may offer, whatever its configuration and endpoint (with the
    /// transport's `VERSION_1`, `RING_EVENT_IDX`, `RING_INDIRECT_DESC`).
    pub const ALL: u64 = crate::VIRTIO_F_VERSION_1
        | crate::VIRTIO_F_RING_EVENT_IDX
        | crate::VIRTIO_F_RING_INDIRECT_DESC
        | CSUM
        | GUEST_CSUM
        | CTRL_GUEST_OFFLOADS
        | MTU
        | MAC
        | GUEST_TSO4
        | GUEST_TSO6
        | GUEST_ECN
        | HOST_TSO4
        | HOST_TSO6
        | HOST_ECN
        | MRG_RXBUF
        | STATUS
        | CTRL_VQ
        | MQ;
}

/// `status` bit: link up.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// What an endpoint can do with the vnet header: the offloads the device may offer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offloads {
    /// Frames carry a vnet header both ways: partial checksums and GSO frames can be passed
    /// to the host (`CSUM`, `HOST_TSO4/6`) and received from it once switched on.
    pub vnet_hdr: bool,
    /// The host accepts `TUN_F_TSO_ECN` (`GUEST_ECN`, `HOST_ECN`).
    pub ecn: bool,
}

/// `TUNSETOFFLOAD` flags (linux/if_tun.h).
pub mod tun_flags {
    /// The tap may hand us frames with a partial checksum.
    pub const CSUM: u32 = 0x01;
    /// ... TSOv4 frames.
    pub const TSO4: u32 = 0x02;
    /// ... TSOv6 frames.
    pub const TSO6: u32 = 0x04;
    /// ... TSO frames with ECN.
    pub const TSO_ECN: u32 = 0x08;

    /// The `TUNSETOFFLOAD` argument for the guest offload features `guest` (feature bits).
    /// TSO without a partial checksum is meaningless to the tap, so it needs `GUEST_CSUM`.
    pub fn for_guest(guest: u64) -> u32 {
        use super::features as f;
        if guest & f::GUEST_CSUM == 0 {
            return 0;
        }
        let mut flags = CSUM;
        if guest & f::GUEST_TSO4 != 0 {
            flags |= TSO4;
        }
        if guest & f::GUEST_TSO6 != 0 {
            flags |= TSO6;
        }
        if guest & f::GUEST_ECN != 0 && flags & (TSO4 | TSO6) != 0 {
            flags |= TSO_ECN;
        }
        flags
    }
}
