//! Copy-in and validation of one virtio-blk request: the only code that reads guest metadata.
//!
//! [`parse`] walks a descriptor chain (following one indirect table, `crate::chain::walk`) and
//! reads every descriptor, the request header and the discard/write-zeroes segments **exactly once** into
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

use vm_memory::GuestAddress;

use crate::chain::{self, split_at, ChainError, Fetcher, StreamLimits};
pub use crate::chain::{ChainSource, MetaMemory, Segment};

use super::{
    req_type, status, MAX_DATA_BYTES, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, MAX_QUEUE_SIZE,
    MAX_WRITE_ZEROES_SECTORS, MAX_WRITE_ZEROES_SEG, SECTOR_SIZE,
};

pub use crate::chain::{VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
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
    let mut fetch = Fetcher::new(mem);
    let chain = walk(&mut fetch, source, head)?;
    let status = chain.status;
    let request = typed(&mut fetch, chain, disk).map_err(|error| Rejected {
        status: Some(status),
        error,
    })?;
    Ok(Validated { request, status })
}

/// The chain as two byte streams, the status byte taken off the writable one.
struct Chain {
    readable: Vec<Segment>,
    readable_len: u64,
    /// Device-writable buffers without the status byte.
    writable: Vec<Segment>,
    writable_len: u64,
    status: GuestAddress,
}

/// Walks the chain (`chain::walk`) and takes the status byte off its end.
///
/// A broken chain structure (loop, bad index, unreadable descriptor, bad indirect table) ends
/// the walk with no status byte. A bad buffer (outside memory, wrong direction order, too much
/// data) does not: the request can still be answered `IOERR` through its status byte.
fn walk<M: MetaMemory + ?Sized>(
    fetch: &mut Fetcher<'_, M>,
    source: &ChainSource,
    head: u16,
) -> Result<Chain, Rejected> {
    let no_status = |error| Rejected {
        status: None,
        error,
    };
    if source.queue_size > MAX_QUEUE_SIZE {
        return Err(no_status(RequestError::QueueSize(source.queue_size)));
    }
    let limits = StreamLimits {
        readable: MAX_READABLE,
        writable: MAX_WRITABLE,
    };
    let walked = chain::walk(fetch, source, head, limits).map_err(|e| no_status(e.into()))?;
    let mut chain = walked.chain;
    // The status byte: the last byte of the last descriptor, which must be device-writable.
    // Its buffer must have passed the checks (inside memory, counted in `writable_len`).
    let status = match chain.last {
        (d, true) if d.has(VIRTQ_DESC_F_WRITE) && d.len > 0 => {
            // `contains` checked that `addr + len` does not overflow.
            let status = GuestAddress(d.addr.saturating_add(u64::from(d.len) - 1));
            chain.writable_len -= 1;
            if let Some(seg) = chain.writable.last_mut() {
                seg.len -= 1;
                if seg.len == 0 {
                    chain.writable.pop();
                }
            }
            status
        }
        _ => return Err(no_status(RequestError::NoStatus)),
    };
    if let Some(error) = walked.deferred {
        return Err(Rejected {
            status: Some(status),
            error: error.into(),
        });
    }
    Ok(Chain {
        readable: chain.readable,
        readable_len: chain.readable_len,
        writable: chain.writable,
        writable_len: chain.writable_len,
        status,
    })
}

impl From<ChainError> for RequestError {
    fn from(e: ChainError) -> Self {
        match e {
            ChainError::QueueSize(n) => RequestError::QueueSize(n),
            ChainError::IndexOutOfRange { index, len } => {
                RequestError::IndexOutOfRange { index, len }
            }
            ChainError::Loop(i) => RequestError::Loop(i),
            ChainError::TooLong(n) => RequestError::TooLong(n),
            ChainError::MetadataOutside(a) => RequestError::MetadataOutside(a),
            ChainError::MetadataOverlap(a) => RequestError::MetadataOverlap(a),
            ChainError::IndirectNotNegotiated => RequestError::IndirectNotNegotiated,
            ChainError::BadIndirect => RequestError::BadIndirect,
            ChainError::BadIndirectTable(n) => RequestError::BadIndirectTable(n),
            ChainError::BufferOutside { addr, len } => RequestError::BufferOutside { addr, len },
            ChainError::ReadableAfterWritable => RequestError::ReadableAfterWritable,
            ChainError::TooMuchData => RequestError::TooMuchData,
        }
    }
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
