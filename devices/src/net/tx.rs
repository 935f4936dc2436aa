//! Copy-in of one transmit chain: the only code that reads what the driver transmits.
//!
//! [`parse_chain`] walks the chain with [`chain::walk`] (every descriptor read once, structure
//! and bounds checked), requires it to be device-readable only and to carry a header and at
//! least an Ethernet header, copies the header into a private array, each byte read exactly
//! once, and claims the frame's buffers as payload ([`Fetcher::reserve`]: no byte of them was
//! read as metadata, none will be, so a frame laid over its own descriptors or header is
//! refused). The header is validated on the private copy ([`TxHeader::validate`]): what reaches
//! the endpoint is the canonical header made from the validated one and the frame's bytes,
//! which the host reads straight from guest memory (a tap, frames above 4 KiB: one `pwritev2`)
//! or from a private copy ([`copy_frame`]). Nothing decided here depends on a payload byte — the header is
//! checked against the frame's length only — so a driver that changes the frame while it is
//! sent changes only what goes on the wire, as on real hardware.
//!
//! [`parse`] is the same walk with the frame copied into a private buffer (the fuzz target
//! checks both agree).

use vm_memory::{Bytes, GuestMemoryMmap};

use super::header::{HeaderError, TxHeader, TxLimits, VnetHdr};
use super::{HDR_LEN, MAX_FRAME, MIN_FRAME};
use crate::chain::{self, ChainError, ChainSource, Fetcher, MetaMemory, Segment, StreamLimits};

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

/// A validated chain whose frame is still in guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxChain {
    /// The validated header.
    pub header: TxHeader,
    /// Frame bytes (the sum of `frame`'s lengths).
    pub len: usize,
    /// The frame's guest buffers, in order, inside guest memory (checked by the walk).
    pub frame: Vec<Segment>,
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

/// Walks the chain at `head`, copies its header once and validates it; the frame stays in
/// guest memory, claimed as payload.
pub fn parse_chain<M: MetaMemory + ?Sized>(
    mem: &M,
    source: &ChainSource,
    head: u16,
    limits: &TxLimits,
) -> Result<TxChain, TxError> {
    let mut fetch = Fetcher::new(mem);
    let (raw, len, frame) = walk_header(&mut fetch, source, head)?;
    fetch.reserve(&frame)?;
    let header = TxHeader::validate(&VnetHdr::from_bytes(&raw), len, limits)?;
    Ok(TxChain { header, len, frame })
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
    let (raw, len, frame_segs) = walk_header(&mut fetch, source, head)?;
    let frame = &mut buf[HDR_LEN..HDR_LEN + len];
    fetch.read_stream(&frame_segs, frame)?;
    let header = TxHeader::validate(&VnetHdr::from_bytes(&raw), len, limits)?;
    Ok(TxFrame { header, len })
}

/// Copies the payload `frame` (`buf.len()` bytes, inside guest memory) into `buf`. `false` if
/// a buffer is not in guest memory (the walk checked it is, so only after a bug).
pub fn copy_frame(mem: &GuestMemoryMmap, frame: &[Segment], buf: &mut [u8]) -> bool {
    let mut at = 0;
    for seg in frame {
        let n = (seg.len as usize).min(buf.len() - at);
        if mem.read_slice(&mut buf[at..at + n], seg.addr).is_err() {
            return false;
        }
        at += n;
    }
    at == buf.len()
}

/// The walk and the header's copy shared by [`parse_chain`] and [`parse`]: the raw header,
/// the frame's length and its buffers.
fn walk_header<M: MetaMemory + ?Sized>(
    fetch: &mut Fetcher<'_, M>,
    source: &ChainSource,
    head: u16,
) -> Result<([u8; HDR_LEN], usize, Vec<Segment>), TxError> {
    let stream_limits = StreamLimits {
        readable: TX_BUF as u64,
        // Counted so that they can be refused by name below.
        writable: u64::MAX,
    };
    let walked = chain::walk(fetch, source, head, stream_limits)?;
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
    Ok((raw, len, frame_segs))
}
