//! Copy-in and validation of one virtio-rng request.
//!
//! A virtio-rng request is a descriptor chain of device-writable buffers; the device fills them
//! with random bytes. [`parse`] reads every descriptor of the chain exactly once (virtio-queue's
//! chain iterator copies each 16-byte descriptor out of guest memory), validates the private
//! copy, and returns an [`EntropyRequest`] that the device can execute without looking at guest
//! metadata again. Everything the guest could get wrong is a [`RequestError`], which the device
//! answers by completing the chain with 0 bytes.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{GuestAddress, GuestMemory, Permissions};

use super::MAX_REQUEST_BYTES;

/// One guest buffer to fill, validated to lie inside guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Segment {
    /// Guest-physical start.
    pub addr: GuestAddress,
    /// Bytes to write there (never 0).
    pub len: u32,
}

/// A validated request: the buffers to fill, in chain order, at most [`MAX_REQUEST_BYTES`] in
/// total. Buffers beyond that bound are left untouched (the device may write fewer bytes than
/// offered; the used length says how many it wrote).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EntropyRequest {
    /// Buffers in chain order, clamped so their lengths sum to [`Self::len`].
    pub segments: Vec<Segment>,
    /// Total bytes to write, `<= MAX_REQUEST_BYTES`.
    pub len: u32,
}

/// What is wrong with a chain the guest made available.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RequestError {
    /// The head descriptor could not be read, or pointed to an invalid indirect table.
    #[error("chain has no usable descriptor")]
    NoDescriptors,
    /// virtio-rng only writes; a device-readable descriptor is a driver bug.
    #[error("descriptor {position} of the chain is device-readable")]
    ReadOnlyDescriptor {
        /// 0-based position in the chain.
        position: u16,
    },
    /// The chain has more descriptors than the queue has entries (or loops).
    #[error("chain is longer than the queue size {max}")]
    TooLong {
        /// The queue size.
        max: u16,
    },
    /// A descriptor says "next" but its successor is out of range, unreadable, or would push
    /// the chain past 4 GiB.
    #[error("chain is cut short after descriptor {position}")]
    Truncated {
        /// 0-based position of the last descriptor read.
        position: u16,
    },
    /// A buffer is not entirely inside guest memory.
    #[error("buffer at {addr:#x} ({len} bytes) is outside guest memory")]
    OutsideMemory {
        /// Guest-physical start of the buffer.
        addr: u64,
        /// Its length.
        len: u32,
    },
}

/// Copies a chain in and validates it: every descriptor must be device-writable and inside
/// `mem`, and the chain must have at most `max_descriptors` (the queue size) entries and end
/// properly.
///
/// `chain` is a `virtio_queue::DescriptorChain` (or any iterator of descriptors): it follows
/// indirect tables itself, and their entries count towards the bound here.
pub(crate) fn parse<G>(
    mem: &G,
    chain: impl Iterator<Item = Descriptor>,
    max_descriptors: u16,
) -> Result<EntropyRequest, RequestError>
where
    G: GuestMemory + ?Sized,
{
    let mut segments = Vec::new();
    let mut len: u32 = 0;
    let mut count: u16 = 0;
    let mut last_has_next = false;

    // Descriptors are consumed by value: each one is the private copy the iterator read.
    for desc in chain {
        if count == max_descriptors {
            return Err(RequestError::TooLong {
                max: max_descriptors,
            });
        }
        let position = count;
        count += 1;
        last_has_next = desc.has_next();

        if !desc.is_write_only() {
            return Err(RequestError::ReadOnlyDescriptor { position });
        }
        if desc.len() == 0 {
            continue;
        }
        if !mem.check_range(desc.addr(), desc.len() as usize, Permissions::Write) {
            return Err(RequestError::OutsideMemory {
                addr: desc.addr().0,
                len: desc.len(),
            });
        }
        let room = MAX_REQUEST_BYTES - len;
        let take = desc.len().min(room);
        if take > 0 {
            segments.push(Segment {
                addr: desc.addr(),
                len: take,
            });
            len += take;
        }
    }

    if count == 0 {
        return Err(RequestError::NoDescriptors);
    }
    // The iterator stops silently when a chain loops (after `queue size` descriptors), when a
    // `next` index is out of range, or when a descriptor cannot be read. The last descriptor
    // still saying "next" is how those show.
    if last_has_next {
        return Err(if count >= max_descriptors {
            RequestError::TooLong {
                max: max_descriptors,
            }
        } else {
            RequestError::Truncated {
                position: count - 1,
            }
        });
    }
    Ok(EntropyRequest { segments, len })
}
