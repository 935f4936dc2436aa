//! Copy-in of one transmit chain: the only code that reads what the driver transmits.
//!
//! [`parse`] walks the chain with [`chain::walk`] (every descriptor read once, structure and
//! bounds checked), requires it to be device-readable only and to carry a header and at least
//! an Ethernet header, then copies the header into a private array and the frame into the
//! caller's private buffer, each byte read exactly once (the [`Fetcher`] refuses a byte read
//! before, so a frame laid over its own descriptors is refused too). The header is validated
//! on the private copy ([`TxHeader::validate`]): what reaches the endpoint is the private frame
//! and the canonical header made from the validated one, never guest memory.

use super::header::{HeaderError, TxHeader, TxLimits, VnetHdr};
use super::{HDR_LEN, MAX_FRAME, MIN_FRAME};
use crate::chain::{self, ChainError, ChainSource, Fetcher, MetaMemory, StreamLimits};

/// Bytes of a transmit buffer: the header's headroom and the largest frame.
pub const TX_BUF: usize = HDR_LEN + MAX_FRAME;

/// A validated frame; its bytes are `buf[HDR_LEN..HDR_LEN + len]` of the buffer given to
/// [`parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxFrame {
    /// The validated header.
    pub header: TxHeader,
    /// Frame bytes.
    pub len: usize,
}

/// Why a transmit chain was refused (the chain is still returned to the driver, the frame is
/// dropped and counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    /// The chain's structure or buffers are broken.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// A device-writable buffer in a transmit chain.
    #[error("transmit chain has a device-writable buffer")]
    Writable,
    /// Less than a header and an Ethernet header, or more than the largest frame.
    #[error("transmit chain carries {0} bytes")]
    Length(u64),
    /// The header does not fit the frame or was not negotiated.
    #[error(transparent)]
    Header(#[from] HeaderError),
}

/// Copies the chain at `head` into `buf` (at least [`TX_BUF`] bytes) and validates it.
pub fn parse<M: MetaMemory + ?Sized>(
    mem: &M,
    source: &ChainSource,
    head: u16,
    limits: &TxLimits,
    buf: &mut [u8],
) -> Result<TxFrame, TxError> {
    let mut fetch = Fetcher::new(mem);
    let stream_limits = StreamLimits {
        readable: TX_BUF as u64,
        // Counted so that they can be refused by name below.
        writable: u64::MAX,
    };
    let walked = chain::walk(&mut fetch, source, head, stream_limits)?;
    let chain = walked.chain;
    if chain.last.0.has(chain::VIRTQ_DESC_F_WRITE) || chain.writable_len > 0 {
        return Err(TxError::Writable);
    }
    if let Some(e) = walked.deferred {
        return Err(match e {
            ChainError::TooMuchData => TxError::Length(chain.readable_len),
            ChainError::ReadableAfterWritable => TxError::Writable,
            e => TxError::Chain(e),
        });
    }
    let total = chain.readable_len;
    if total < (HDR_LEN + MIN_FRAME) as u64 || total > TX_BUF as u64 {
        return Err(TxError::Length(total));
    }
    // `total <= TX_BUF`, so it fits in usize.
    let len = total as usize - HDR_LEN;
    let (hdr_segs, frame_segs) = chain::split_at(&chain.readable, HDR_LEN as u64);
    let mut raw = [0u8; HDR_LEN];
    fetch.read_stream(&hdr_segs, &mut raw)?;
    let frame = &mut buf[HDR_LEN..HDR_LEN + len];
    fetch.read_stream(&frame_segs, frame)?;
    let header = TxHeader::validate(&VnetHdr::from_bytes(&raw), len, limits)?;
    Ok(TxFrame { header, len })
}
