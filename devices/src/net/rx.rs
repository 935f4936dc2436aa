//! Delivery of one received frame into the driver's receive buffers.
//!
//! A receive chain must be device-writable only, inside guest memory (walked with
//! [`chain::walk`], descriptors read once), and its first chain must hold the whole 12-byte
//! header. Without `MRG_RXBUF` the header and frame must fit one chain; with it they are
//! spread over as many chains as needed, and `num_buffers` in the header says how many. The
//! chains are only taken from the ring when the frame fits: if the ring runs dry first, the
//! avail position is put back and the caller keeps the frame until the driver adds buffers.
//!
//! A malformed chain is returned at once with used length 0 (Linux's driver counts such a
//! buffer as a too-short packet and recycles it) and counted; if it turns up in the middle of a
//! frame, the chains taken for that frame are returned the same way and the frame is dropped,
//! so the ring position never has to move back over a chain already used.

use ipc::QueueStats;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};

use super::header::VnetHdr;
use super::HDR_LEN;
use crate::chain::{self, ChainSource, Fetcher, Segment, StreamLimits};
use crate::DeviceError;

/// What became of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Written into `buffers` chains (all returned to the driver).
    Delivered {
        /// Chains used (`num_buffers`).
        buffers: u16,
    },
    /// Not enough buffers now; nothing was taken from the ring.
    NoBuffers,
    /// Without `MRG_RXBUF`, the next chain cannot hold the frame: the frame is dropped, the
    /// chain stays for a smaller one.
    TooLarge,
    /// A malformed chain turned up while collecting buffers: the frame is dropped.
    Dropped,
}

/// One receive queue as the delivery sees it.
pub struct RxQueue<'a> {
    /// Guest memory.
    pub mem: &'a GuestMemoryMmap,
    /// The queue.
    pub queue: &'a mut Queue,
    /// Where its chains live.
    pub source: ChainSource,
    /// `MRG_RXBUF` was negotiated.
    pub mergeable: bool,
    /// Its counters.
    pub stats: &'a mut QueueStats,
}

/// Pops the next available head, if any; a head outside the queue breaks the device.
pub(crate) fn pop_head(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
) -> Result<Option<u16>, DeviceError> {
    let chain = match queue.iter(mem) {
        Ok(mut avail) => avail.next(),
        Err(e) => return Err(DeviceError::Queue(e)),
    };
    let Some(chain) = chain else {
        return Ok(None);
    };
    let (head, size) = (chain.head_index(), queue.size());
    if head >= size {
        return Err(DeviceError::BadHeadIndex { head, size });
    }
    Ok(Some(head))
}

/// A walked receive chain: its writable buffers and their total, or `None` if malformed.
fn walk_rx(mem: &GuestMemoryMmap, source: &ChainSource, head: u16) -> Option<(Vec<Segment>, u64)> {
    let mut fetch = Fetcher::new(mem);
    let limits = StreamLimits {
        readable: u64::MAX,
        writable: u64::MAX,
    };
    let walked = chain::walk(&mut fetch, source, head, limits).ok()?;
    if walked.deferred.is_some() || walked.chain.readable_len > 0 {
        return None;
    }
    Some((walked.chain.writable, walked.chain.writable_len))
}

impl RxQueue<'_> {
    fn complete(&mut self, head: u16, len: u32) -> Result<(), DeviceError> {
        self.queue
            .add_used(self.mem, head, len)
            .map_err(DeviceError::Queue)
    }

    /// Delivers the frame `buf[HDR_LEN..HDR_LEN + len]` with header `hdr` (`num_buffers` is
    /// filled in here). The caller signals the driver if [`Queue::needs_notification`] says so.
    pub fn deliver(
        &mut self,
        hdr: VnetHdr,
        buf: &mut [u8],
        len: usize,
    ) -> Result<Delivery, DeviceError> {
        let need = (HDR_LEN + len) as u64;
        let mut start = self.queue.next_avail();
        let mut taken: Vec<(u16, Vec<Segment>, u64)> = Vec::new();
        let mut have = 0u64;
        while have < need {
            let Some(head) = pop_head(self.queue, self.mem)? else {
                self.queue.set_next_avail(start);
                return Ok(Delivery::NoBuffers);
            };
            let walked = walk_rx(self.mem, &self.source, head)
                .filter(|(_, wlen)| !taken.is_empty() || *wlen >= HDR_LEN as u64);
            let Some((segs, wlen)) = walked else {
                self.stats.errors += 1;
                self.complete(head, 0)?;
                if taken.is_empty() {
                    // Nothing of this frame was taken yet: go on after the bad chain.
                    start = self.queue.next_avail();
                    continue;
                }
                for (h, _, _) in std::mem::take(&mut taken) {
                    self.complete(h, 0)?;
                }
                return Ok(Delivery::Dropped);
            };
            if !self.mergeable && wlen < need {
                self.queue.set_next_avail(start);
                return Ok(Delivery::TooLarge);
            }
            have += wlen;
            taken.push((head, segs, wlen));
        }
        // `taken.len() <= queue size <= 256`.
        let buffers = u16::try_from(taken.len()).unwrap_or(u16::MAX);
        let hdr = VnetHdr {
            num_buffers: buffers,
            ..hdr
        };
        buf[..HDR_LEN].copy_from_slice(&hdr.to_bytes());
        let mut bytes = &buf[..HDR_LEN + len];
        for (head, segs, _) in &taken {
            let mut used = 0usize;
            for seg in segs {
                if bytes.is_empty() {
                    break;
                }
                let n = bytes.len().min(seg.len as usize);
                // The segment was checked to lie inside this (fixed-layout) memory; a failure
                // would be a bug, and stopping with an honest used length is the safe answer.
                if self.mem.write_slice(&bytes[..n], seg.addr).is_err() {
                    bytes = &[];
                    break;
                }
                bytes = &bytes[n..];
                used += n;
            }
            // `used <= wlen`, which a chain's u32 lengths bound... per descriptor; cap anyway.
            self.complete(*head, u32::try_from(used).unwrap_or(u32::MAX))?;
        }
        self.stats.requests += 1;
        self.stats.bytes += len as u64;
        Ok(Delivery::Delivered { buffers })
    }
}
