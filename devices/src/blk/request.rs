//! Copy-in and validation of one virtio-blk request: the only code that reads guest metadata.
//!
//! [`parse`] walks a descriptor chain (following one indirect table) and reads every
//! descriptor, the request header and the discard/write-zeroes segments **exactly once** into
//! private values, through [`MetaMemory::read_meta`]. Every check runs on those copies:
//!
//! - chain: at most `queue size` descriptors, no index visited twice, `next` inside its table,
//!   indirect only when negotiated, never nested, never with `NEXT`, its table inside memory
//!   and at most `queue size` entries;
//! - directions: device-readable descriptors first (header, then data for writes and
//!   discard/write-zeroes), device-writable after (data for reads and `GET_ID`), the last
//!   descriptor writable with its last byte the status;
//! - bounds: every buffer inside guest memory, data at most [`MAX_DATA_BYTES`], sector ranges
//!   inside the disk with checked arithmetic, discard/write-zeroes segments counted and bounded;
//! - no byte of guest memory is read twice while parsing one request, even as two different
//!   things (a header placed on top of a descriptor is refused): what the device acts on is
//!   what it read, once.
//!
//! The layout is the spec's: the driver may split the header, the data and the status across
//! descriptors any way it likes (`VIRTIO_F_ANY_LAYOUT` is implied by `VERSION_1`); the chain is
//! treated as a readable byte stream followed by a writable one.
//!
//! The result is a [`Validated`] request plus its status address, or a [`Rejected`] one that the
//! device completes with `IOERR`/`UNSUPP` (if it found a status byte) and keeps serving.
//! Payload is never read here: data buffers are only checked to lie inside guest memory.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::{
    req_type, status, MAX_DATA_BYTES, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, MAX_QUEUE_SIZE,
    MAX_WRITE_ZEROES_SECTORS, MAX_WRITE_ZEROES_SEG, SECTOR_SIZE,
};

/// Descriptor flag: the chain continues at `next`.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: device-writable buffer.
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer is a table of descriptors.
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// Bytes of a descriptor.
const DESC_LEN: u64 = 16;
/// Bytes of `virtio_blk_outhdr`.
pub const HEADER_LEN: u64 = 16;
/// Bytes of one `virtio_blk_discard_write_zeroes` segment.
pub const SEGMENT_LEN: u64 = 16;
/// The `unmap` flag of a write-zeroes segment.
const FLAG_UNMAP: u32 = 1;
/// Most device-readable bytes: header plus the largest write.
const MAX_READABLE: u64 = HEADER_LEN + MAX_DATA_BYTES as u64;
/// Most device-writable bytes: the largest read plus the status byte.
const MAX_WRITABLE: u64 = MAX_DATA_BYTES as u64 + 1;

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

/// What requests are checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskLimits {
    /// Size in 512-byte sectors.
    pub capacity: u64,
    /// Writes, discard and write-zeroes are refused.
    pub read_only: bool,
    /// `VIRTIO_BLK_F_DISCARD` was negotiated.
    pub discard: bool,
    /// `VIRTIO_BLK_F_WRITE_ZEROES` was negotiated.
    pub write_zeroes: bool,
}

/// A guest buffer, checked to lie inside guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical start.
    pub addr: GuestAddress,
    /// Length in bytes (never 0).
    pub len: u32,
}

/// A sector range, checked to lie inside the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// First sector.
    pub sector: u64,
    /// Number of sectors (never 0).
    pub sectors: u32,
}

/// A validated request. Nothing in it refers back to guest metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Read `bufs` (device-writable, total a multiple of 512) from `sector` on.
    Read {
        /// First sector.
        sector: u64,
        /// Destination buffers in chain order.
        bufs: Vec<Segment>,
    },
    /// Write `bufs` (device-readable, total a multiple of 512) from `sector` on.
    Write {
        /// First sector.
        sector: u64,
        /// Source buffers in chain order.
        bufs: Vec<Segment>,
    },
    /// Make every completed write durable.
    Flush,
    /// Write the id string into `bufs` (at most [`super::ID_BYTES`] in total).
    GetId {
        /// Destination buffers in chain order.
        bufs: Vec<Segment>,
    },
    /// Deallocate `ranges` (they read back as zeroes).
    Discard {
        /// The ranges, in request order.
        ranges: Vec<Range>,
    },
    /// Zero `ranges`; `unmap` lets the device deallocate them.
    WriteZeroes {
        /// The ranges, in request order.
        ranges: Vec<Range>,
        /// All segments carried the unmap flag.
        unmap: bool,
    },
    /// A request type the device does not implement: completed with `UNSUPP`.
    Unsupported {
        /// The header's `type`.
        kind: u32,
    },
}

/// A request that passed validation, and where its status byte goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validated {
    /// What to do.
    pub request: Request,
    /// The status byte: the last byte of the last (device-writable) descriptor.
    pub status: GuestAddress,
}

/// A request that failed validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    /// The status byte, if the chain got far enough to have one; without it the chain is
    /// completed with used length 0.
    pub status: Option<GuestAddress>,
    /// What was wrong.
    pub error: RequestError,
}

impl Rejected {
    /// The status byte value to complete with: `UNSUPP` for commands or flags the device does
    /// not support, `IOERR` otherwise.
    pub fn status_byte(&self) -> u8 {
        match self.error {
            RequestError::NotNegotiated { .. }
            | RequestError::UnknownFlags { .. }
            | RequestError::DiscardWithUnmap => status::UNSUPP,
            _ => status::IOERR,
        }
    }
}

/// What is wrong with a chain or request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The queue is larger than the device ever accepts (a caller bug).
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
    /// More data than any request may carry.
    #[error("the chain carries more than the largest request")]
    TooMuchData,
    /// The last descriptor is not a device-writable buffer of at least one byte.
    #[error("the chain does not end in a writable status byte")]
    NoStatus,
    /// Fewer than 16 device-readable bytes.
    #[error("request header is {0} bytes, not 16")]
    ShortHeader(u64),
    /// Data in the direction the request type does not use.
    #[error("request type {0} carries data in the wrong direction")]
    UnexpectedData(u32),
    /// A read or write length that is not whole sectors.
    #[error("data length {0} is not a multiple of 512")]
    NotSectorMultiple(u64),
    /// A sector range that leaves the disk (or overflows).
    #[error("sectors {sector}+{sectors} are outside the disk")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Number of sectors.
        sectors: u64,
    },
    /// A write, discard or write-zeroes on a read-only device.
    #[error("write to a read-only device")]
    ReadOnly,
    /// `GET_ID` without a writable buffer for the id.
    #[error("GET_ID without an id buffer")]
    NoIdBuffer,
    /// Discard/write-zeroes data that is not 1..=max whole segments.
    #[error("{0} bytes of discard/write-zeroes segments")]
    BadSegments(u64),
    /// A discard/write-zeroes segment larger than the published maximum.
    #[error("segment of {0} sectors exceeds the maximum")]
    SegmentTooLarge(u32),
    /// Discard or write-zeroes without the feature.
    #[error("request type {kind} was not negotiated")]
    NotNegotiated {
        /// The header's type.
        kind: u32,
    },
    /// Reserved flag bits set in a segment.
    #[error("segment flags {flags:#x} has reserved bits")]
    UnknownFlags {
        /// The flags.
        flags: u32,
    },
    /// A discard segment with the unmap flag (the spec says `UNSUPP`).
    #[error("discard segment with the unmap flag")]
    DiscardWithUnmap,
}

/// Copies the chain at `head` in, validates it, and returns the typed request.
///
/// Every metadata byte is read through `mem` exactly once; nothing is written.
pub fn parse<M: MetaMemory + ?Sized>(
    mem: &M,
    source: &ChainSource,
    head: u16,
    disk: &DiskLimits,
) -> Result<Validated, Rejected> {
    let mut fetch = Fetcher {
        mem,
        done: Vec::with_capacity(4),
    };
    let chain = walk(&mut fetch, source, head)?;
    let status = chain.status;
    let request = typed(&mut fetch, chain, disk).map_err(|error| Rejected {
        status: Some(status),
        error,
    })?;
    Ok(Validated { request, status })
}

/// Reads metadata once each, refusing any byte already read for this request.
struct Fetcher<'m, M: ?Sized> {
    mem: &'m M,
    /// `[start, end)` of every read so far.
    done: Vec<(u64, u64)>,
}

impl<M: MetaMemory + ?Sized> Fetcher<'_, M> {
    fn read(&mut self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), RequestError> {
        let start = addr.0;
        let end = start
            .checked_add(buf.len() as u64)
            .ok_or(RequestError::MetadataOutside(start))?;
        if self.done.iter().any(|&(s, e)| start < e && s < end) {
            return Err(RequestError::MetadataOverlap(start));
        }
        if !self.mem.read_meta(addr, buf) {
            return Err(RequestError::MetadataOutside(start));
        }
        self.done.push((start, end));
        Ok(())
    }

    /// Reads `buf.len()` bytes from the front of the byte stream `segs`.
    fn read_stream(&mut self, segs: &[Segment], buf: &mut [u8]) -> Result<(), RequestError> {
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
#[derive(Debug, Clone, Copy)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
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

    fn has(&self, flag: u16) -> bool {
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

/// The chain as two byte streams.
struct Chain {
    readable: Vec<Segment>,
    readable_len: u64,
    /// Device-writable buffers without the status byte.
    writable: Vec<Segment>,
    writable_len: u64,
    /// A device-writable descriptor (even an empty one) was seen.
    saw_writable: bool,
    status: GuestAddress,
}

/// Walks the chain, reading each descriptor once, and splits it into byte streams.
///
/// A broken chain structure (loop, bad index, unreadable descriptor, bad indirect table) ends
/// the walk with no status byte. A bad buffer (outside memory, wrong direction order, too much
/// data) does not: the walk goes on to the end, so the request can still be answered `IOERR`
/// through its status byte.
fn walk<M: MetaMemory + ?Sized>(
    fetch: &mut Fetcher<'_, M>,
    source: &ChainSource,
    head: u16,
) -> Result<Chain, Rejected> {
    let no_status = |error| Rejected {
        status: None,
        error,
    };
    let mut deferred = None;
    let chain = walk_chain(fetch, source, head, &mut deferred).map_err(no_status)?;
    match deferred {
        Some(error) => Err(Rejected {
            status: Some(chain.status),
            error,
        }),
        None => Ok(chain),
    }
}

/// [`walk`]'s loop: structural errors return, buffer errors go to `deferred` (the first one).
fn walk_chain<M: MetaMemory + ?Sized>(
    fetch: &mut Fetcher<'_, M>,
    source: &ChainSource,
    head: u16,
    deferred: &mut Option<RequestError>,
) -> Result<Chain, RequestError> {
    let max = source.queue_size;
    if max == 0 || max > MAX_QUEUE_SIZE {
        return Err(RequestError::QueueSize(max));
    }
    let mut chain = Chain {
        readable: Vec::new(),
        readable_len: 0,
        writable: Vec::new(),
        writable_len: 0,
        saw_writable: false,
        status: GuestAddress(0),
    };
    let mut table = source.desc_table;
    let mut table_len = max;
    let mut in_indirect = false;
    let mut visited = Visited::default();
    let mut count: u16 = 0;
    let mut index = head;
    let last = loop {
        if index >= table_len {
            return Err(RequestError::IndexOutOfRange {
                index,
                len: table_len,
            });
        }
        if !visited.insert(index) {
            return Err(RequestError::Loop(index));
        }
        if count == max {
            return Err(RequestError::TooLong(max));
        }
        count += 1;
        let at = table
            .0
            .checked_add(DESC_LEN * u64::from(index))
            .ok_or(RequestError::MetadataOutside(table.0))?;
        let mut raw = [0u8; 16];
        fetch.read(GuestAddress(at), &mut raw)?;
        let desc = Desc::from_le(raw);

        if desc.has(VIRTQ_DESC_F_INDIRECT) {
            if !source.indirect {
                return Err(RequestError::IndirectNotNegotiated);
            }
            if in_indirect || desc.has(VIRTQ_DESC_F_NEXT) {
                return Err(RequestError::BadIndirect);
            }
            let entries = u64::from(desc.len) / DESC_LEN;
            if desc.len == 0
                || u64::from(desc.len) % DESC_LEN != 0
                || entries > u64::from(max)
                || !fetch
                    .mem
                    .contains(GuestAddress(desc.addr), u64::from(desc.len))
            {
                return Err(RequestError::BadIndirectTable(desc.len));
            }
            table = GuestAddress(desc.addr);
            // `entries <= max <= 256`.
            table_len = u16::try_from(entries).unwrap_or(0);
            in_indirect = true;
            visited = Visited::default();
            index = 0;
            continue;
        }

        let added = add_buffer(&mut chain, &desc, fetch.mem);
        let accepted = added.is_ok();
        if let Err(e) = added {
            deferred.get_or_insert(e);
        }
        if !desc.has(VIRTQ_DESC_F_NEXT) {
            break (desc, accepted);
        }
        index = desc.next;
    };

    // The status byte: the last byte of the last descriptor, which must be device-writable.
    // Its buffer must have passed the checks (inside memory, counted in `writable_len`).
    match last {
        (d, true) if d.has(VIRTQ_DESC_F_WRITE) && d.len > 0 => {
            // `contains` checked that `addr + len` does not overflow.
            chain.status = GuestAddress(d.addr.saturating_add(u64::from(d.len) - 1));
            chain.writable_len -= 1;
            if let Some(seg) = chain.writable.last_mut() {
                seg.len -= 1;
                if seg.len == 0 {
                    chain.writable.pop();
                }
            }
            Ok(chain)
        }
        _ => Err(RequestError::NoStatus),
    }
}

/// Adds one (non-indirect) descriptor's buffer to its stream, after the checks.
fn add_buffer<M: MetaMemory + ?Sized>(
    chain: &mut Chain,
    desc: &Desc,
    mem: &M,
) -> Result<(), RequestError> {
    let writable = desc.has(VIRTQ_DESC_F_WRITE);
    if !writable && chain.saw_writable {
        return Err(RequestError::ReadableAfterWritable);
    }
    chain.saw_writable |= writable;
    if desc.len == 0 {
        return Ok(());
    }
    if !mem.contains(GuestAddress(desc.addr), u64::from(desc.len)) {
        return Err(RequestError::BufferOutside {
            addr: desc.addr,
            len: desc.len,
        });
    }
    let seg = Segment {
        addr: GuestAddress(desc.addr),
        len: desc.len,
    };
    let (segs, total, bound) = if writable {
        (&mut chain.writable, &mut chain.writable_len, MAX_WRITABLE)
    } else {
        (&mut chain.readable, &mut chain.readable_len, MAX_READABLE)
    };
    *total += u64::from(desc.len);
    if *total > bound {
        return Err(RequestError::TooMuchData);
    }
    segs.push(seg);
    Ok(())
}

/// Splits the byte stream `segs` after `n` bytes (`n` must not exceed its length).
fn split_at(segs: &[Segment], n: u64) -> (Vec<Segment>, Vec<Segment>) {
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

/// Reads the header and turns the chain into a typed request.
fn typed<M: MetaMemory + ?Sized>(
    fetch: &mut Fetcher<'_, M>,
    chain: Chain,
    disk: &DiskLimits,
) -> Result<Request, RequestError> {
    if chain.readable_len < HEADER_LEN {
        return Err(RequestError::ShortHeader(chain.readable_len));
    }
    let (header_segs, out_data) = split_at(&chain.readable, HEADER_LEN);
    let out_len = chain.readable_len - HEADER_LEN;
    let mut header = [0u8; HEADER_LEN as usize];
    fetch.read_stream(&header_segs, &mut header)?;
    let [t0, t1, t2, t3, _, _, _, _, s0, s1, s2, s3, s4, s5, s6, s7] = header;
    let kind = u32::from_le_bytes([t0, t1, t2, t3]);
    let sector = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);
    let in_len = chain.writable_len;

    match kind {
        req_type::IN => {
            if out_len != 0 {
                return Err(RequestError::UnexpectedData(kind));
            }
            check_range(sector, in_len, disk)?;
            Ok(Request::Read {
                sector,
                bufs: chain.writable,
            })
        }
        req_type::OUT => {
            if in_len != 0 {
                return Err(RequestError::UnexpectedData(kind));
            }
            if disk.read_only {
                return Err(RequestError::ReadOnly);
            }
            check_range(sector, out_len, disk)?;
            Ok(Request::Write {
                sector,
                bufs: out_data,
            })
        }
        // The sector field and any data are ignored, as the spec allows.
        req_type::FLUSH => Ok(Request::Flush),
        req_type::GET_ID => {
            if in_len == 0 {
                return Err(RequestError::NoIdBuffer);
            }
            let (bufs, _) = split_at(&chain.writable, in_len.min(super::ID_BYTES as u64));
            Ok(Request::GetId { bufs })
        }
        req_type::DISCARD | req_type::WRITE_ZEROES => {
            let discard = kind == req_type::DISCARD;
            let negotiated = if discard {
                disk.discard
            } else {
                disk.write_zeroes
            };
            if !negotiated {
                return Err(RequestError::NotNegotiated { kind });
            }
            if in_len != 0 {
                return Err(RequestError::UnexpectedData(kind));
            }
            if disk.read_only {
                return Err(RequestError::ReadOnly);
            }
            segments(fetch, &out_data, out_len, discard, disk)
        }
        _ => Ok(Request::Unsupported { kind }),
    }
}

/// Checks a read/write of `len` bytes at `sector`: whole sectors, bounded, inside the disk.
fn check_range(sector: u64, len: u64, disk: &DiskLimits) -> Result<(), RequestError> {
    if len % SECTOR_SIZE != 0 {
        return Err(RequestError::NotSectorMultiple(len));
    }
    if len > u64::from(MAX_DATA_BYTES) {
        return Err(RequestError::TooMuchData);
    }
    let sectors = len / SECTOR_SIZE;
    match sector.checked_add(sectors) {
        Some(end) if end <= disk.capacity => Ok(()),
        _ => Err(RequestError::OutOfRange { sector, sectors }),
    }
}

/// Copies the discard/write-zeroes segments in (once) and validates them.
fn segments<M: MetaMemory + ?Sized>(
    fetch: &mut Fetcher<'_, M>,
    data: &[Segment],
    len: u64,
    discard: bool,
    disk: &DiskLimits,
) -> Result<Request, RequestError> {
    let (max_seg, max_sectors) = if discard {
        (MAX_DISCARD_SEG, MAX_DISCARD_SECTORS)
    } else {
        (MAX_WRITE_ZEROES_SEG, MAX_WRITE_ZEROES_SECTORS)
    };
    let count = len / SEGMENT_LEN;
    if len == 0 || len % SEGMENT_LEN != 0 || count > u64::from(max_seg) {
        return Err(RequestError::BadSegments(len));
    }
    // `len <= 16 * max_seg`, a few hundred bytes: one private copy of all of them.
    let mut raw = vec![0u8; usize::try_from(len).map_err(|_| RequestError::BadSegments(len))?];
    fetch.read_stream(data, &mut raw)?;

    let mut ranges = Vec::new();
    let mut unmap_all = true;
    for rec in raw.chunks_exact(SEGMENT_LEN as usize) {
        let field = |at: usize, n: usize| {
            let mut v = [0u8; 8];
            v[..n].copy_from_slice(&rec[at..at + n]);
            u64::from_le_bytes(v)
        };
        let sector = field(0, 8);
        // Both read as 4 bytes, so they fit in u32.
        let sectors = u32::try_from(field(8, 4)).unwrap_or(u32::MAX);
        let flags = u32::try_from(field(12, 4)).unwrap_or(u32::MAX);
        if flags & !FLAG_UNMAP != 0 {
            return Err(RequestError::UnknownFlags { flags });
        }
        if discard && flags & FLAG_UNMAP != 0 {
            return Err(RequestError::DiscardWithUnmap);
        }
        unmap_all &= flags & FLAG_UNMAP != 0;
        if sectors > max_sectors {
            return Err(RequestError::SegmentTooLarge(sectors));
        }
        match sector.checked_add(u64::from(sectors)) {
            Some(end) if end <= disk.capacity => {}
            _ => {
                return Err(RequestError::OutOfRange {
                    sector,
                    sectors: u64::from(sectors),
                })
            }
        }
        if sectors > 0 {
            ranges.push(Range { sector, sectors });
        }
    }
    Ok(if discard {
        Request::Discard { ranges }
    } else {
        Request::WriteZeroes {
            ranges,
            unmap: unmap_all,
        }
    })
}
