//! The control queue: copy-in of one command (`class`, `command`, data; then the driver's
//! one-byte `ack`) into a typed [`Command`].
//!
//! Supported: `VIRTIO_NET_CTRL_MQ` / `VQ_PAIRS_SET` (with `MQ`) and
//! `VIRTIO_NET_CTRL_GUEST_OFFLOADS` / `SET` (with `CTRL_GUEST_OFFLOADS`). Anything else is
//! answered `VIRTIO_NET_ERR`. The chain is walked like every other ([`chain::walk`]); the
//! header and data are read once, the ack byte is the last byte of the device-writable part.

use vm_memory::GuestAddress;

use super::features;
use crate::chain::{self, ChainError, ChainSource, Fetcher, MetaMemory, StreamLimits};

/// `class`: multiqueue.
pub const CLASS_MQ: u8 = 4;
/// `class`: guest offloads.
pub const CLASS_GUEST_OFFLOADS: u8 = 5;
/// `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET`.
pub const MQ_VQ_PAIRS_SET: u8 = 0;
/// `VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET`.
pub const GUEST_OFFLOADS_SET: u8 = 0;
/// `ack`: done.
pub const OK: u8 = 0;
/// `ack`: refused.
pub const ERR: u8 = 1;
/// Most device-readable bytes in a control chain (class, command and the largest data this
/// device reads, with room for commands it refuses).
const MAX_COMMAND: u64 = 4096;

/// Most device-writable bytes in a control chain (the ack is the last one).
const MAX_ACK_AREA: u64 = 64;

/// A validated command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Use queue pairs `0..n` (checked against the device's pairs by the caller).
    SetPairs(u16),
    /// Switch the guest offloads to `offloads` (feature bits, a subset of
    /// [`features::GUEST_OFFLOADS`]).
    SetOffloads(u64),
}

/// A parsed control chain: the command (or why there is none) and where the ack goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    /// The command, or why it is refused.
    pub command: Result<Command, CtrlError>,
    /// The ack byte.
    pub ack: GuestAddress,
}

/// Why a command is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CtrlError {
    /// The chain is broken, or has no ack byte.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// No device-writable ack byte at the end.
    #[error("control chain without an ack byte")]
    NoAck,
    /// A class or command this device does not implement or did not offer.
    #[error("control command {class}/{command} is not supported")]
    Unsupported {
        /// `class`.
        class: u8,
        /// `command`.
        command: u8,
    },
    /// The data is not the command's size, or its value is out of range.
    #[error("control command {class}/{command} carries bad data")]
    BadData {
        /// `class`.
        class: u8,
        /// `command`.
        command: u8,
    },
}

/// Copies the control chain at `head` in. `negotiated`: the driver's features (a command of a
/// feature it did not negotiate is refused). `Err` when there is no ack byte to answer through
/// (the chain is then returned with used length 0).
pub fn parse<M: MetaMemory + ?Sized>(
    mem: &M,
    source: &ChainSource,
    head: u16,
    negotiated: u64,
) -> Result<Parsed, CtrlError> {
    let mut fetch = Fetcher::new(mem);
    let limits = StreamLimits {
        readable: MAX_COMMAND,
        writable: MAX_ACK_AREA,
    };
    let walked = chain::walk(&mut fetch, source, head, limits)?;
    let chain = walked.chain;
    let (last, accepted) = chain.last;
    if !last.has(chain::VIRTQ_DESC_F_WRITE) || !accepted || last.len == 0 {
        return Err(CtrlError::NoAck);
    }
    // `accepted`: the buffer lies inside memory, so `addr + len` does not overflow.
    let ack = GuestAddress(last.addr + u64::from(last.len) - 1);
    if let Some(e) = walked.deferred {
        return Ok(Parsed {
            command: Err(e.into()),
            ack,
        });
    }
    let command = command(&mut fetch, &chain.readable, chain.readable_len, negotiated);
    Ok(Parsed { command, ack })
}

fn command<M: MetaMemory + ?Sized>(
    fetch: &mut Fetcher<'_, M>,
    readable: &[chain::Segment],
    len: u64,
    negotiated: u64,
) -> Result<Command, CtrlError> {
    if len < 2 {
        return Err(CtrlError::Unsupported {
            class: 0xff,
            command: 0xff,
        });
    }
    let (head, data) = chain::split_at(readable, 2);
    let mut hc = [0u8; 2];
    fetch.read_stream(&head, &mut hc)?;
    let [class, command] = hc;
    let data_len = len - 2;
    let bad = CtrlError::BadData { class, command };
    match (class, command) {
        (CLASS_MQ, MQ_VQ_PAIRS_SET) if negotiated & features::MQ != 0 => {
            if data_len != 2 {
                return Err(bad);
            }
            let mut v = [0u8; 2];
            fetch.read_stream(&data, &mut v)?;
            Ok(Command::SetPairs(u16::from_le_bytes(v)))
        }
        (CLASS_GUEST_OFFLOADS, GUEST_OFFLOADS_SET)
            if negotiated & features::CTRL_GUEST_OFFLOADS != 0 =>
        {
            if data_len != 8 {
                return Err(bad);
            }
            let mut v = [0u8; 8];
            fetch.read_stream(&data, &mut v)?;
            let offloads = u64::from_le_bytes(v);
            // Only offloads the driver negotiated may be switched (on or off).
            if offloads & !(negotiated & features::GUEST_OFFLOADS) != 0 {
                return Err(bad);
            }
            Ok(Command::SetOffloads(offloads))
        }
        _ => Err(CtrlError::Unsupported { class, command }),
    }
}
