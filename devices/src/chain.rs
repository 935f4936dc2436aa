//! Copy-in of one descriptor chain: the walk every request parser starts with.
//!
//! [`walk`] follows a split-virtqueue chain (and one indirect table) and reads every descriptor
//! **exactly once** into private values through a [`Fetcher`], which refuses to read any byte
//! of guest memory twice for one request (so a header placed on top of a descriptor is refused,
//! and what a device acts on is what it read, once). Every check runs on the private copies:
//!
//! - structure: at most `queue size` descriptors, no index visited twice, `next` inside its
//!   table, indirect only when negotiated, never nested, never with `NEXT`, its table inside
//!   memory and at most `queue size` entries;
//! - directions: device-readable descriptors first, device-writable after;
//! - bounds: every buffer inside guest memory, each stream at most the device's limit.
//!
//! The result is the chain as two byte streams (readable, then writable), each a list of
//! [`Segment`]s; the device's own parser reads its headers from the readable stream through the
//! same [`Fetcher`]. A broken structure ends the walk; a bad buffer does not (the walk goes on so
//! the device can still answer through the chain), it is reported as the walk's `deferred`
//! error. Payload is never read here: buffers are only checked to lie inside guest memory.
//!
//! Used by virtio-blk and virtio-fs.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Descriptor flag: the chain continues at `next`.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: device-writable buffer.
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer is a table of descriptors.
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// Bytes of a descriptor.
const DESC_LEN: u64 = 16;
/// Largest queue size any device of this crate accepts (the visited-set capacity).
const MAX_TABLE: u16 = 256;

/// Guest memory as the copy-in path sees it: one way to copy metadata out, one way to check
/// that a payload buffer lies inside memory without touching it.
///
/// Implemented for [`GuestMemoryMmap`]; tests wrap it to record (and then scribble over) every
/// metadata read.
pub trait MetaMemory {
    /// Copies `buf.len()` bytes at `addr` into `buf` with volatile reads. `false` if any byte
    /// is outside guest memory.
    fn read_meta(&self, addr: GuestAddress, buf: &mut [u8]) -> bool;
    /// Whether `[addr, addr + len)` lies entirely inside guest memory. Reads nothing.
    fn contains(&self, addr: GuestAddress, len: u64) -> bool;
}

impl MetaMemory for GuestMemoryMmap {
    fn read_meta(&self, addr: GuestAddress, buf: &mut [u8]) -> bool {
        self.read_slice(buf, addr).is_ok()
    }

    fn contains(&self, addr: GuestAddress, len: u64) -> bool {
        let Ok(count) = usize::try_from(len) else {
            return false;
        };
        addr.0.checked_add(len).is_some()
            && (len == 0 || GuestMemoryBackend::check_range(self, addr, count))
    }
}

/// Where a queue's chains live, as activated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainSource {
    /// Guest address of the descriptor table.
    pub desc_table: GuestAddress,
    /// Queue size: the bound on chain length and descriptor indices.
    pub queue_size: u16,
    /// `VIRTIO_F_RING_INDIRECT_DESC` was negotiated.
    pub indirect: bool,
}

/// The most bytes each stream of one chain may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Device-readable bytes.
    pub readable: u64,
    /// Device-writable bytes.
    pub writable: u64,
}

/// A guest buffer, checked to lie inside guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical start.
    pub addr: GuestAddress,
    /// Length in bytes (never 0).
    pub len: u32,
}

/// What is wrong with a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The queue is larger than any device accepts (a caller bug).
    #[error("queue size {0} is not in 1..=256")]
    QueueSize(u16),
    /// A descriptor index is outside its table.
    #[error("descriptor index {index} is outside a table of {len}")]
    IndexOutOfRange {
        /// The index.
        index: u16,
        /// The table's number of entries.
        len: u16,
    },
    /// The chain visits a descriptor twice (a loop).
    #[error("the chain visits descriptor {0} twice")]
    Loop(u16),
    /// More descriptors than the queue has entries.
    #[error("the chain is longer than the queue size {0}")]
    TooLong(u16),
    /// A descriptor (or other metadata) is outside guest memory.
    #[error("metadata at {0:#x} is outside guest memory")]
    MetadataOutside(u64),
    /// Metadata overlaps metadata already read for this request.
    #[error("metadata at {0:#x} overlaps metadata already read")]
    MetadataOverlap(u64),
    /// An indirect descriptor without `VIRTIO_F_RING_INDIRECT_DESC`.
    #[error("indirect descriptor, but indirect descriptors were not negotiated")]
    IndirectNotNegotiated,
    /// An indirect descriptor inside an indirect table, or with `NEXT` set.
    #[error("indirect descriptor inside an indirect table or with NEXT")]
    BadIndirect,
    /// An indirect table that is empty, not whole descriptors, too long or outside memory.
    #[error("indirect table of {0} bytes is empty, ragged, too long or outside memory")]
    BadIndirectTable(u32),
    /// A data buffer outside guest memory.
    #[error("buffer at {addr:#x} ({len} bytes) is outside guest memory")]
    BufferOutside {
        /// Guest-physical start.
        addr: u64,
        /// Length.
        len: u32,
    },
    /// A device-readable descriptor after a device-writable one.
    #[error("device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    /// More bytes in a stream than the device's limit.
    #[error("the chain carries more than the largest request")]
    TooMuchData,
}

/// Reads metadata once each, refusing any byte already read for this request.
pub struct Fetcher<'m, M: ?Sized> {
    /// The memory read from.
    pub mem: &'m M,
    /// `[start, end)` of every read so far.
    done: Vec<(u64, u64)>,
}

impl<'m, M: MetaMemory + ?Sized> Fetcher<'m, M> {
    /// A fetcher that has read nothing yet.
    pub fn new(mem: &'m M) -> Self {
        Fetcher {
            mem,
            done: Vec::with_capacity(8),
        }
    }

    /// Copies `buf.len()` bytes at `addr` into `buf`, unless any of them was read before or
    /// lies outside memory.
    pub fn read(&mut self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), ChainError> {
        let start = addr.0;
        let end = start
            .checked_add(buf.len() as u64)
            .ok_or(ChainError::MetadataOutside(start))?;
        if self.done.iter().any(|&(s, e)| start < e && s < end) {
            return Err(ChainError::MetadataOverlap(start));
        }
        if !self.mem.read_meta(addr, buf) {
            return Err(ChainError::MetadataOutside(start));
        }
        self.done.push((start, end));
        Ok(())
    }

    /// Claims `segs` for one later read (a payload the device copies when it executes the
    /// request): refused if any byte of them was read already, and no metadata may be read
    /// from them afterwards.
    pub fn reserve(&mut self, segs: &[Segment]) -> Result<(), ChainError> {
        for seg in segs {
            let (start, end) = (seg.addr.0, seg.addr.0.saturating_add(u64::from(seg.len)));
            if self.done.iter().any(|&(s, e)| start < e && s < end) {
                return Err(ChainError::MetadataOverlap(start));
            }
        }
        for seg in segs {
            self.done
                .push((seg.addr.0, seg.addr.0.saturating_add(u64::from(seg.len))));
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes from the front of the byte stream `segs` (fewer if the stream
    /// is shorter: the rest of `buf` is left as it was).
    pub fn read_stream(&mut self, segs: &[Segment], buf: &mut [u8]) -> Result<(), ChainError> {
        let mut at = 0;
        for seg in segs {
            if at == buf.len() {
                break;
            }
            let n = (seg.len as usize).min(buf.len() - at);
            self.read(seg.addr, &mut buf[at..at + n])?;
            at += n;
        }
        Ok(())
    }
}

/// One descriptor, copied out of guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    /// Buffer address.
    pub addr: u64,
    /// Buffer length.
    pub len: u32,
    /// `VIRTQ_DESC_F_*`.
    pub flags: u16,
    /// Next index (with `NEXT`).
    pub next: u16,
}

impl Desc {
    fn from_le(b: [u8; 16]) -> Self {
        let [a0, a1, a2, a3, a4, a5, a6, a7, l0, l1, l2, l3, f0, f1, n0, n1] = b;
        Desc {
            addr: u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
            len: u32::from_le_bytes([l0, l1, l2, l3]),
            flags: u16::from_le_bytes([f0, f1]),
            next: u16::from_le_bytes([n0, n1]),
        }
    }

    /// Whether `flag` is set.
    pub fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }
}

/// Which descriptor indices of one table were visited (tables have at most 256 entries).
#[derive(Default)]
struct Visited([u64; 4]);

impl Visited {
    /// Marks `index`; `false` if it was marked already.
    fn insert(&mut self, index: u16) -> bool {
        let (word, bit) = (usize::from(index / 64), index % 64);
        let Some(w) = self.0.get_mut(word) else {
            return false;
        };
        let fresh = *w & (1 << bit) == 0;
        *w |= 1 << bit;
        fresh
    }
}

/// A chain as two byte streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Device-readable buffers in chain order.
    pub readable: Vec<Segment>,
    /// Their total length.
    pub readable_len: u64,
    /// Device-writable buffers in chain order.
    pub writable: Vec<Segment>,
    /// Their total length.
    pub writable_len: u64,
    /// The last descriptor, and whether its buffer passed the checks (and so is the last
    /// segment of its stream, if not empty).
    pub last: (Desc, bool),
}

/// A walked chain and the first buffer error found on the way (the chain itself is whole).
#[derive(Debug)]
pub struct Walked {
    /// The streams.
    pub chain: Chain,
    /// A buffer outside memory, a readable buffer after a writable one, or too much data.
    pub deferred: Option<ChainError>,
}

/// Walks the chain at `head`, reading each descriptor once through `fetch`, and splits it into
/// byte streams bounded by `limits`.
///
/// A broken structure (loop, bad index, unreadable descriptor, bad indirect table) is an error;
/// a bad buffer is left out of its stream and reported in [`Walked::deferred`].
pub fn walk<M: MetaMemory + ?Sized>(
    fetch: &mut Fetcher<'_, M>,
    source: &ChainSource,
    head: u16,
    limits: StreamLimits,
) -> Result<Walked, ChainError> {
    let max = source.queue_size;
    if max == 0 || max > MAX_TABLE {
        return Err(ChainError::QueueSize(max));
    }
    let mut chain = Chain {
        readable: Vec::new(),
        readable_len: 0,
        writable: Vec::new(),
        writable_len: 0,
        last: (
            Desc {
                addr: 0,
                len: 0,
                flags: 0,
                next: 0,
            },
            false,
        ),
    };
    let mut deferred = None;
    let mut saw_writable = false;
    let mut table = source.desc_table;
    let mut table_len = max;
    let mut in_indirect = false;
    let mut visited = Visited::default();
    let mut count: u16 = 0;
    let mut index = head;
    loop {
        if index >= table_len {
            return Err(ChainError::IndexOutOfRange {
                index,
                len: table_len,
            });
        }
        if !visited.insert(index) {
            return Err(ChainError::Loop(index));
        }
        if count == max {
            return Err(ChainError::TooLong(max));
        }
        count += 1;
        let at = table
            .0
            .checked_add(DESC_LEN * u64::from(index))
            .ok_or(ChainError::MetadataOutside(table.0))?;
        let mut raw = [0u8; 16];
        fetch.read(GuestAddress(at), &mut raw)?;
        let desc = Desc::from_le(raw);

        if desc.has(VIRTQ_DESC_F_INDIRECT) {
            if !source.indirect {
                return Err(ChainError::IndirectNotNegotiated);
            }
            if in_indirect || desc.has(VIRTQ_DESC_F_NEXT) {
                return Err(ChainError::BadIndirect);
            }
            let entries = u64::from(desc.len) / DESC_LEN;
            if desc.len == 0
                || u64::from(desc.len) % DESC_LEN != 0
                || entries > u64::from(max)
                || !fetch
                    .mem
                    .contains(GuestAddress(desc.addr), u64::from(desc.len))
            {
                return Err(ChainError::BadIndirectTable(desc.len));
            }
            table = GuestAddress(desc.addr);
            // `entries <= max <= 256`.
            table_len = u16::try_from(entries).unwrap_or(0);
            in_indirect = true;
            visited = Visited::default();
            index = 0;
            continue;
        }

        let added = add_buffer(&mut chain, &mut saw_writable, &desc, fetch.mem, limits);
        let accepted = added.is_ok();
        if let Err(e) = added {
            deferred.get_or_insert(e);
        }
        if !desc.has(VIRTQ_DESC_F_NEXT) {
            chain.last = (desc, accepted);
            return Ok(Walked { chain, deferred });
        }
        index = desc.next;
    }
}

/// Adds one (non-indirect) descriptor's buffer to its stream, after the checks.
fn add_buffer<M: MetaMemory + ?Sized>(
    chain: &mut Chain,
    saw_writable: &mut bool,
    desc: &Desc,
    mem: &M,
    limits: StreamLimits,
) -> Result<(), ChainError> {
    let writable = desc.has(VIRTQ_DESC_F_WRITE);
    if !writable && *saw_writable {
        return Err(ChainError::ReadableAfterWritable);
    }
    *saw_writable |= writable;
    if desc.len == 0 {
        return Ok(());
    }
    if !mem.contains(GuestAddress(desc.addr), u64::from(desc.len)) {
        return Err(ChainError::BufferOutside {
            addr: desc.addr,
            len: desc.len,
        });
    }
    let seg = Segment {
        addr: GuestAddress(desc.addr),
        len: desc.len,
    };
    let (segs, total, bound) = if writable {
        (
            &mut chain.writable,
            &mut chain.writable_len,
            limits.writable,
        )
    } else {
        (
            &mut chain.readable,
            &mut chain.readable_len,
            limits.readable,
        )
    };
    if *total + u64::from(desc.len) > bound {
        return Err(ChainError::TooMuchData);
    }
    *total += u64::from(desc.len);
    segs.push(seg);
    Ok(())
}

/// Splits the byte stream `segs` after `n` bytes (`n` must not exceed its length).
pub fn split_at(segs: &[Segment], n: u64) -> (Vec<Segment>, Vec<Segment>) {
    let (mut front, mut back) = (Vec::new(), Vec::new());
    let mut left = n;
    for seg in segs {
        let len = u64::from(seg.len);
        if left >= len {
            front.push(*seg);
            left -= len;
        } else if left > 0 {
            // `left < seg.len`, so both halves fit in u32 and are non-empty.
            let cut = u32::try_from(left).unwrap_or(0);
            front.push(Segment {
                addr: seg.addr,
                len: cut,
            });
            back.push(Segment {
                addr: GuestAddress(seg.addr.0 + left),
                len: seg.len - cut,
            });
            left = 0;
        } else {
            back.push(*seg);
        }
    }
    (front, back)
}
