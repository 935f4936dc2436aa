//! Copy-in and validation of one FUSE request: the only code that reads guest metadata.
//!
//! [`parse`] walks the descriptor chain (`crate::chain::walk`: every descriptor read once), then
//! copies the request's header (`fuse_in_header`) and its arguments out of the chain's readable
//! stream **exactly once** into private memory, and turns those bytes into a typed [`Request`]:
//!
//! - the header: `len` equal to the readable stream's length, no extensions (`total_extlen`);
//! - arguments: each opcode's fixed struct complete, nothing trailing, at most [`MAX_ARGS`]
//!   bytes in all (a WRITE's payload is not copied: it stays in guest memory, its segments
//!   checked to add up to the write's size and not to overlap anything already read);
//! - names: NUL-terminated, 1 to [`NAME_MAX`] bytes, no `/`, neither `.` nor `..`;
//!   symlink targets 1 to [`TARGET_MAX`] bytes;
//! - offsets and sizes: at most `i64::MAX` and their sums too, I/O sizes at most [`MAX_IO`],
//!   forget batches counted and bounded, enumerated values (whence, fallocate and rename
//!   flags) known.
//!
//! The reply goes to the chain's writable stream; [`Parsed::reply`] carries it with its
//! capacity, which every opcode's fixed reply must fit. What fails validation is a [`Rejected`]
//! request: answered with an errno through the writable stream when the header could be read
//! and the stream holds a reply header, else completed with used length 0. Nothing here panics
//! on guest input; nothing is written to guest memory.
//!
//! - `op`: the typed requests ([`Op`] and the values it carries: names, attributes, flags);
//! - `args`: each opcode's arguments, copied in once and validated into an [`Op`].

use fuse_abi::linux as abi;
use zerocopy::FromBytes;

mod args;
mod op;

use args::arguments;
pub use args::init_out_len;
pub use op::*;

use super::{Errno, MAX_IO, MAX_QUEUE_SIZE, NAME_MAX, TARGET_MAX};
use crate::chain::{self, ChainError, ChainSource, Fetcher, MetaMemory, Segment, StreamLimits};

/// Bytes of `fuse_in_header`.
pub const IN_HEADER_LEN: usize = size_of::<abi::fuse_in_header>();
/// Bytes of `fuse_out_header`.
pub const OUT_HEADER_LEN: usize = size_of::<abi::fuse_out_header>();
/// Bytes of `fuse_write_in`.
const WRITE_IN_LEN: usize = size_of::<abi::fuse_write_in>();
/// Most device-readable bytes of a chain: a header, a write's arguments and its payload.
const MAX_READABLE: u64 = (IN_HEADER_LEN + WRITE_IN_LEN) as u64 + MAX_IO as u64;
/// Most device-writable bytes of a chain: a reply header and the largest read.
const MAX_WRITABLE: u64 = OUT_HEADER_LEN as u64 + MAX_IO as u64;
/// Bytes of one `fuse_forget_one`.
const FORGET_ONE_LEN: usize = size_of::<abi::fuse_forget_one>();

/// A validated request: who asked, for which node, what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The guest's request id, echoed in the reply.
    pub unique: u64,
    /// The node the request is about (0 for INIT and the like).
    pub nodeid: u64,
    /// The guest process's uid, gid and pid.
    pub uid: u32,
    /// See `uid`.
    pub gid: u32,
    /// See `uid`.
    pub pid: u32,
    /// A handle named by GETATTR (`FUSE_GETATTR_FH`).
    pub getattr_fh: Option<u64>,
    /// What to do.
    pub op: Op,
}

/// Where a reply goes: the chain's writable stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyTo {
    /// The writable buffers in chain order.
    pub segments: Vec<Segment>,
    /// Their total length.
    pub capacity: u64,
}

/// A request that passed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// What to do.
    pub request: Request,
    /// Where the reply goes.
    pub reply: ReplyTo,
}

/// A request that failed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The request id and where to send the error, if the header was read and the writable
    /// stream holds a reply header; else the chain is completed with used length 0.
    pub answer: Option<(u64, ReplyTo)>,
    /// What was wrong.
    pub error: ParseError,
}

impl Rejected {
    /// The errno the guest gets.
    pub fn errno(&self) -> Errno {
        self.error.errno()
    }
}

/// What is wrong with a chain or request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The chain itself (loop, bad index, metadata outside memory, ...).
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// Fewer readable bytes than a `fuse_in_header`.
    #[error("{0} readable bytes, less than a request header")]
    ShortHeader(u64),
    /// The header's `len` is not the readable stream's length.
    #[error("header says {header} bytes, the chain has {chain}")]
    LengthMismatch {
        /// `fuse_in_header.len`.
        header: u32,
        /// Readable bytes in the chain.
        chain: u64,
    },
    /// Header extensions, which the server never negotiates.
    #[error("request carries {0} bytes of header extensions")]
    Extensions(u16),
    /// More argument bytes than [`MAX_ARGS`].
    #[error("{0} argument bytes, more than any request needs")]
    ArgsTooLong(u64),
    /// The arguments are shorter than the opcode's fixed part.
    #[error("opcode {0}: arguments are cut short")]
    ShortArgs(u32),
    /// Bytes after the opcode's arguments.
    #[error("opcode {0}: bytes after the arguments")]
    TrailingBytes(u32),
    /// A name or target without its NUL.
    #[error("a name is not NUL-terminated")]
    Unterminated,
    /// A name of 0 or more than [`NAME_MAX`] bytes.
    #[error("a name of {0} bytes")]
    NameLength(usize),
    /// A name with `/` in it.
    #[error("a name contains '/'")]
    NameWithSlash,
    /// `.` or `..` as a name.
    #[error("'.' or '..' as a name")]
    DotName,
    /// A symlink target of 0 or more than [`TARGET_MAX`] bytes.
    #[error("a symlink target of {0} bytes")]
    TargetLength(usize),
    /// An offset, size or their sum beyond `i64::MAX`, or an I/O size beyond [`MAX_IO`].
    #[error("offset {offset} + size {size} is out of range")]
    OutOfRange {
        /// The offset.
        offset: u64,
        /// The size.
        size: u64,
    },
    /// A WRITE whose payload is not `size` bytes.
    #[error("write of {size} bytes carries {payload}")]
    PayloadMismatch {
        /// `fuse_write_in.size`.
        size: u32,
        /// Payload bytes in the chain.
        payload: u64,
    },
    /// A flag or enumerated value the server does not know.
    #[error("opcode {opcode}: unsupported value {value:#x}")]
    BadValue {
        /// The opcode.
        opcode: u32,
        /// The value.
        value: u64,
    },
    /// A timestamp's nanoseconds at or above 10^9.
    #[error("nanoseconds {0} out of range")]
    BadNanoseconds(u32),
    /// A forget batch whose count does not match its entries.
    #[error("forget batch of {count} entries in {bytes} bytes")]
    BadBatch {
        /// `fuse_batch_forget_in.count`.
        count: u32,
        /// Bytes of entries.
        bytes: usize,
    },
    /// The writable stream cannot hold the opcode's reply.
    #[error("opcode {opcode}: {capacity} writable bytes, the reply needs {need}")]
    ReplyTooSmall {
        /// The opcode.
        opcode: u32,
        /// Writable bytes.
        capacity: u64,
        /// Bytes the reply needs.
        need: u64,
    },
}

impl ParseError {
    /// The errno the guest gets for it.
    pub fn errno(&self) -> Errno {
        match self {
            ParseError::NameLength(n) if *n > NAME_MAX => Errno::NAMETOOLONG,
            ParseError::TargetLength(n) if *n > TARGET_MAX => Errno::NAMETOOLONG,
            ParseError::ArgsTooLong(_) => Errno::NAMETOOLONG,
            ParseError::ReplyTooSmall { .. } => Errno::RANGE,
            ParseError::OutOfRange { .. } => Errno::FBIG,
            _ => Errno::INVAL,
        }
    }
}

/// Copies the chain at `head` in, validates it, and returns the typed request.
///
/// Every metadata byte is read through `mem` exactly once; nothing is written.
pub fn parse<M: MetaMemory + ?Sized>(
    mem: &M,
    source: &ChainSource,
    head: u16,
) -> Result<Parsed, Rejected> {
    let unanswered = |error| Rejected {
        answer: None,
        error,
    };
    if source.queue_size > MAX_QUEUE_SIZE {
        return Err(unanswered(ChainError::QueueSize(source.queue_size).into()));
    }
    let mut fetch = Fetcher::new(mem);
    let limits = StreamLimits {
        readable: MAX_READABLE,
        writable: MAX_WRITABLE,
    };
    let walked = chain::walk(&mut fetch, source, head, limits).map_err(|e| unanswered(e.into()))?;
    let chain = walked.chain;
    let reply = ReplyTo {
        segments: chain.writable,
        capacity: chain.writable_len,
    };
    if chain.readable_len < IN_HEADER_LEN as u64 {
        return Err(unanswered(ParseError::ShortHeader(chain.readable_len)));
    }
    let mut raw = [0u8; IN_HEADER_LEN];
    fetch
        .read_stream(&chain.readable, &mut raw)
        .map_err(|e| unanswered(e.into()))?;
    let Ok((header, _)) = abi::fuse_in_header::read_from_prefix(&raw) else {
        return Err(unanswered(ParseError::ShortHeader(chain.readable_len)));
    };
    // From here on the request can be answered, if the writable stream holds a reply header.
    let answerable = reply.capacity >= OUT_HEADER_LEN as u64;
    let reject = |error| Rejected {
        answer: answerable.then(|| (header.unique, reply.clone())),
        error,
    };
    if let Some(error) = walked.deferred {
        return Err(reject(error.into()));
    }
    if u64::from(header.len) != chain.readable_len {
        return Err(reject(ParseError::LengthMismatch {
            header: header.len,
            chain: chain.readable_len,
        }));
    }
    if header.total_extlen != 0 {
        return Err(reject(ParseError::Extensions(header.total_extlen)));
    }
    let (_, rest) = chain::split_at(&chain.readable, IN_HEADER_LEN as u64);
    let args_len = chain.readable_len - IN_HEADER_LEN as u64;
    let (op, getattr_fh) =
        arguments(&mut fetch, header.opcode, &rest, args_len, &reply).map_err(reject)?;
    if !matches!(op, Op::Forget(_) | Op::BatchForget(_) | Op::Interrupt) && !answerable {
        return Err(Rejected {
            answer: None,
            error: ParseError::ReplyTooSmall {
                opcode: header.opcode,
                capacity: reply.capacity,
                need: OUT_HEADER_LEN as u64,
            },
        });
    }
    Ok(Parsed {
        request: Request {
            unique: header.unique,
            nodeid: header.nodeid,
            uid: header.uid,
            gid: header.gid,
            pid: header.pid,
            getattr_fh,
            op,
        },
        reply,
    })
}
