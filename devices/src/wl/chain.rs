//! Copy-in of virtio-wl's descriptor chains, on the crate's shared chain walk
//! (`crate::chain::walk`: every descriptor read once, structure and bounds checked).
//!
//! An out-queue chain is a command (device-readable bytes) followed by room for the response
//! (device-writable bytes). [`copy_out_chain`] walks it and copies the readable stream **once**
//! into a private buffer of at most [`super::MAX_COMMAND_BYTES`]; the command is parsed from
//! that copy only. An in-queue chain is device-writable buffers only ([`writable_segments`]).
//! Any structural or buffer error makes the chain unusable: the device completes it with 0
//! bytes and counts an error.
//!
//! Payload written back goes through [`write_segments`] with volatile copies; no reference into
//! guest memory is ever made.

use vm_memory::{Bytes, GuestMemoryMmap};

use crate::chain::{walk, Fetcher, StreamLimits};
pub use crate::chain::{ChainError, ChainSource, Segment};

/// Largest response (a `ctrl_vfd_new` is 64 bytes; anything beyond is never written).
const MAX_RESPONSE: u64 = 4096;
/// Largest in-queue buffer the device writes into (the driver gives pages).
const MAX_IN_BUFFER: u64 = 64 * 1024;

/// An out-queue chain after copy-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutChain {
    /// The command bytes, the device's private copy.
    pub command: Vec<u8>,
    /// Where the response goes, in chain order.
    pub response: Vec<Segment>,
}

/// Copies the out-queue chain at `head` in: its readable stream (at most `max_command` bytes)
/// into a private buffer, its writable buffers as segments.
pub fn copy_out_chain(
    mem: &GuestMemoryMmap,
    source: &ChainSource,
    head: u16,
    max_command: usize,
) -> Result<OutChain, ChainError> {
    let mut fetch = Fetcher::new(mem);
    let limits = StreamLimits {
        readable: max_command as u64,
        writable: MAX_RESPONSE,
    };
    let walked = walk(&mut fetch, source, head, limits)?;
    if let Some(error) = walked.deferred {
        return Err(error);
    }
    let chain = walked.chain;
    // readable_len <= max_command, a usize.
    let mut command = vec![0; chain.readable_len as usize];
    fetch.read_stream(&chain.readable, &mut command)?;
    Ok(OutChain {
        command,
        response: chain.writable,
    })
}

/// The writable buffers of the in-queue chain at `head` (a readable one is an error).
pub fn writable_segments(
    mem: &GuestMemoryMmap,
    source: &ChainSource,
    head: u16,
) -> Result<Vec<Segment>, ChainError> {
    let mut fetch = Fetcher::new(mem);
    let limits = StreamLimits {
        readable: 0,
        writable: MAX_IN_BUFFER,
    };
    let walked = walk(&mut fetch, source, head, limits)?;
    match walked.deferred {
        Some(error) => Err(error),
        None => Ok(walked.chain.writable),
    }
}

/// Total bytes of `segments`.
pub fn capacity(segments: &[Segment]) -> usize {
    segments.iter().map(|s| s.len as usize).sum()
}

/// Writes `bytes` into `segments` in order, as far as they reach. Returns the bytes written.
pub fn write_segments(mem: &GuestMemoryMmap, segments: &[Segment], bytes: &[u8]) -> usize {
    let mut written = 0;
    for seg in segments {
        if written == bytes.len() {
            break;
        }
        let n = (seg.len as usize).min(bytes.len() - written);
        // The walk checked the segment lies in this fixed-layout memory; a failure would be a
        // bug, and stopping with an honest count is the safe answer.
        if mem
            .write_slice(&bytes[written..written + n], seg.addr)
            .is_err()
        {
            break;
        }
        written += n;
    }
    written
}
