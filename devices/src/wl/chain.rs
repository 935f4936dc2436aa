//! Copy-in of descriptor chains: the only code of virtio-wl that reads guest memory.
//!
//! An out-queue chain is a command (device-readable bytes) followed by room for the response
//! (device-writable bytes). [`copy_out_chain`] walks the descriptors (virtio-queue's chain
//! iterator copies each descriptor once, follows one indirect table and stops after `queue
//! size` entries), checks that readable ones come first and every buffer lies inside guest
//! memory, and copies the readable bytes **once** into a private buffer of at most
//! [`super::MAX_COMMAND_BYTES`]. The command is parsed from that copy only.
//!
//! An in-queue chain is device-writable buffers only ([`writable_segments`]).
//!
//! Payload written back goes through [`write_segments`] with volatile copies; no reference
//! into guest memory is ever made.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// A guest buffer, checked to lie inside guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical start.
    pub addr: GuestAddress,
    /// Length (never 0).
    pub len: u32,
}

/// What is wrong with a chain; the device completes it with 0 bytes and counts an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A device-readable descriptor after a device-writable one.
    #[error("readable descriptor after a writable one")]
    ReadableAfterWritable,
    /// A readable descriptor in a chain that must be all writable (in queue).
    #[error("readable descriptor in an in-queue chain")]
    ReadableInQueue,
    /// More command bytes than the device accepts.
    #[error("command longer than {max} bytes")]
    TooLong {
        /// The limit.
        max: usize,
    },
    /// A buffer is not entirely inside guest memory.
    #[error("buffer at {addr:#x} ({len} bytes) outside guest memory")]
    OutsideMemory {
        /// Its start.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// Copying from guest memory failed (memory changed under the device: impossible with a
    /// fixed layout, refused all the same).
    #[error("reading guest memory failed")]
    ReadFailed,
}

/// An out-queue chain after copy-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutChain {
    /// The command bytes, the device's private copy.
    pub command: Vec<u8>,
    /// Where the response goes, in chain order.
    pub response: Vec<Segment>,
}

/// Whether `[addr, addr + len)` lies in `mem`.
fn inside(mem: &GuestMemoryMmap, addr: GuestAddress, len: u32) -> bool {
    addr.0.checked_add(u64::from(len)).is_some()
        && GuestMemoryBackend::check_range(mem, addr, len as usize)
}

/// Copies an out-queue chain in: readable bytes (at most `max_command`) into a private buffer,
/// writable buffers as segments. Zero-length descriptors are skipped.
pub fn copy_out_chain(
    mem: &GuestMemoryMmap,
    chain: impl Iterator<Item = Descriptor>,
    max_command: usize,
) -> Result<OutChain, ChainError> {
    let mut command = Vec::new();
    let mut response = Vec::new();
    for desc in chain {
        let (addr, len) = (desc.addr(), desc.len());
        if len == 0 {
            continue;
        }
        if !inside(mem, addr, len) {
            return Err(ChainError::OutsideMemory { addr: addr.0, len });
        }
        if desc.is_write_only() {
            response.push(Segment { addr, len });
            continue;
        }
        if !response.is_empty() {
            return Err(ChainError::ReadableAfterWritable);
        }
        let start = command.len();
        let end = start
            .checked_add(len as usize)
            .filter(|&end| end <= max_command)
            .ok_or(ChainError::TooLong { max: max_command })?;
        command.resize(end, 0);
        mem.read_slice(&mut command[start..end], addr)
            .map_err(|_| ChainError::ReadFailed)?;
    }
    Ok(OutChain { command, response })
}

/// The writable buffers of an in-queue chain.
pub fn writable_segments(
    mem: &GuestMemoryMmap,
    chain: impl Iterator<Item = Descriptor>,
) -> Result<Vec<Segment>, ChainError> {
    let mut segments = Vec::new();
    for desc in chain {
        let (addr, len) = (desc.addr(), desc.len());
        if len == 0 {
            continue;
        }
        if !desc.is_write_only() {
            return Err(ChainError::ReadableInQueue);
        }
        if !inside(mem, addr, len) {
            return Err(ChainError::OutsideMemory { addr: addr.0, len });
        }
        segments.push(Segment { addr, len });
    }
    Ok(segments)
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
        // The segment was checked to lie in this fixed-layout memory; a failure would be a bug,
        // and stopping with an honest count is the safe answer.
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
