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

use std::ffi::CString;

use fuse_abi::linux as abi;
use zerocopy::FromBytes;

use super::{Errno, MAX_ARGS, MAX_IO, MAX_QUEUE_SIZE, NAME_MAX, TARGET_MAX};
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

/// FUSE opcodes the server knows (`fuse_opcode` values).
pub mod opcode {
    #![allow(missing_docs)]
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const GETLK: u32 = 31;
    pub const SETLK: u32 = 32;
    pub const SETLKW: u32 = 33;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const INTERRUPT: u32 = 36;
    pub const DESTROY: u32 = 38;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
}

/// A validated name of one directory entry: 1 to [`NAME_MAX`] bytes, no NUL, no `/`, neither
/// `.` nor `..`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name(CString);

impl Name {
    /// Validates `bytes` (without its NUL).
    pub fn new(bytes: &[u8]) -> Result<Name, ParseError> {
        if bytes.is_empty() || bytes.len() > NAME_MAX {
            return Err(ParseError::NameLength(bytes.len()));
        }
        if bytes.contains(&b'/') {
            return Err(ParseError::NameWithSlash);
        }
        if bytes == b"." || bytes == b".." {
            return Err(ParseError::DotName);
        }
        CString::new(bytes)
            .map(Name)
            .map_err(|_| ParseError::Unterminated)
    }

    /// The name as a C string for the `*at` calls.
    pub fn as_c_str(&self) -> &std::ffi::CStr {
        &self.0
    }

    /// The name's bytes, without NUL.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// What a SETATTR asks for, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SetAttr {
    /// New permission bits (`FATTR_MODE`), file type bits removed.
    pub mode: Option<u32>,
    /// New owner as the guest sees it (`FATTR_UID`).
    pub uid: Option<u32>,
    /// New group as the guest sees it (`FATTR_GID`).
    pub gid: Option<u32>,
    /// New size (`FATTR_SIZE`), at most `i64::MAX`.
    pub size: Option<u64>,
    /// New access time (`FATTR_ATIME`, or now with `FATTR_ATIME_NOW`).
    pub atime: Option<Time>,
    /// New modification time.
    pub mtime: Option<Time>,
    /// The handle to act through (`FATTR_FH`).
    pub fh: Option<u64>,
    /// Clear set-user-ID and set-group-ID (`FATTR_KILL_SUIDGID`).
    pub kill_suidgid: bool,
}

/// A timestamp a SETATTR sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Time {
    /// The host's current time.
    Now,
    /// Seconds since the epoch and nanoseconds (below 10^9).
    At(i64, u32),
}

/// `lseek` whence values a request may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whence {
    /// `SEEK_SET`.
    Set,
    /// `SEEK_CUR`.
    Cur,
    /// `SEEK_END`.
    End,
    /// `SEEK_DATA`.
    Data,
    /// `SEEK_HOLE`.
    Hole,
}

/// `fallocate` modes the server passes on (`FALLOC_FL_*` bits).
pub mod falloc {
    /// Keep the file size.
    pub const KEEP_SIZE: u32 = 0x01;
    /// Deallocate (needs `KEEP_SIZE`).
    pub const PUNCH_HOLE: u32 = 0x02;
    /// Zero the range.
    pub const ZERO_RANGE: u32 = 0x10;
}

/// `renameat2` flags the server passes on (`RENAME_WHITEOUT` would create a device node).
pub mod rename_flags {
    /// Fail if the target exists.
    pub const NOREPLACE: u32 = 1;
    /// Swap source and target.
    pub const EXCHANGE: u32 = 2;
}

/// One validated operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `FUSE_INIT`.
    Init {
        /// Protocol major version (7).
        major: u32,
        /// Protocol minor version.
        minor: u32,
        /// The guest's readahead limit.
        max_readahead: u32,
        /// `FUSE_*` capability flags the guest offers.
        flags: u32,
    },
    /// `FUSE_DESTROY`.
    Destroy,
    /// `FUSE_LOOKUP` of `name` in the node.
    Lookup(Name),
    /// `FUSE_FORGET`: drop `nlookup` references (no reply).
    Forget(u64),
    /// `FUSE_BATCH_FORGET`: (node, nlookup) pairs (no reply).
    BatchForget(Vec<(u64, u64)>),
    /// `FUSE_GETATTR`, optionally through a handle.
    GetAttr,
    /// `FUSE_SETATTR`.
    SetAttr(SetAttr),
    /// `FUSE_READLINK`.
    ReadLink,
    /// `FUSE_SYMLINK`: entry `name` pointing to `target` (never followed by the server).
    Symlink {
        /// The new entry.
        name: Name,
        /// The link's contents.
        target: CString,
    },
    /// `FUSE_MKNOD` (refused).
    Mknod(Name),
    /// `FUSE_MKDIR`.
    Mkdir {
        /// The new entry.
        name: Name,
        /// Permission bits, umask already applied by the guest.
        mode: u32,
    },
    /// `FUSE_UNLINK`.
    Unlink(Name),
    /// `FUSE_RMDIR`.
    Rmdir(Name),
    /// `FUSE_RENAME` (flags 0) and `FUSE_RENAME2`.
    Rename {
        /// Old name in the request's node.
        old: Name,
        /// Target directory node.
        newdir: u64,
        /// New name there.
        new: Name,
        /// [`rename_flags`].
        flags: u32,
    },
    /// `FUSE_LINK`: a new entry `name` in the request's node for node `target`.
    Link {
        /// The node linked.
        target: u64,
        /// The new entry.
        name: Name,
    },
    /// `FUSE_OPEN` with `open(2)` flags.
    Open(u32),
    /// `FUSE_READ`.
    Read {
        /// Handle.
        fh: u64,
        /// File offset (`offset + size <= i64::MAX`).
        offset: u64,
        /// Bytes asked for, at most [`MAX_IO`] and what the reply can carry.
        size: u32,
    },
    /// `FUSE_WRITE`; the payload stays in guest memory.
    Write {
        /// Handle.
        fh: u64,
        /// File offset (`offset + size <= i64::MAX`).
        offset: u64,
        /// The payload, `size` bytes in all, at most [`MAX_IO`].
        data: Vec<Segment>,
        /// Its length.
        size: u32,
    },
    /// `FUSE_STATFS`.
    Statfs,
    /// `FUSE_RELEASE` / `FUSE_RELEASEDIR`.
    Release(u64),
    /// `FUSE_FSYNC` / `FUSE_FSYNCDIR`.
    Fsync {
        /// Handle.
        fh: u64,
        /// Data only (`fdatasync`).
        datasync: bool,
    },
    /// `FUSE_FLUSH`.
    Flush(u64),
    /// `FUSE_OPENDIR`.
    OpenDir,
    /// `FUSE_READDIR` / `FUSE_READDIRPLUS`.
    ReadDir {
        /// Handle.
        fh: u64,
        /// The directory position to continue from (0: start).
        offset: u64,
        /// Bytes the reply may carry.
        size: u32,
        /// READDIRPLUS: each entry with its lookup.
        plus: bool,
    },
    /// `FUSE_ACCESS` with `R_OK | W_OK | X_OK` bits.
    Access(u32),
    /// `FUSE_CREATE`.
    Create {
        /// The new entry.
        name: Name,
        /// `open(2)` flags.
        flags: u32,
        /// Permission bits, umask already applied by the guest.
        mode: u32,
    },
    /// `FUSE_LSEEK`.
    Lseek {
        /// Handle.
        fh: u64,
        /// Offset.
        offset: i64,
        /// Whence.
        whence: Whence,
    },
    /// `FUSE_FALLOCATE`.
    Fallocate {
        /// Handle.
        fh: u64,
        /// Start (`offset + length <= i64::MAX`).
        offset: u64,
        /// Length (not 0).
        length: u64,
        /// [`falloc`] bits.
        mode: u32,
    },
    /// `FUSE_INTERRUPT`: nothing to interrupt (every request completes before the next starts);
    /// no reply.
    Interrupt,
    /// An opcode answered with an errno and nothing else: xattrs and locks (`ENOSYS`), and every
    /// opcode the server does not implement.
    Unsupported {
        /// The opcode.
        opcode: u32,
        /// The answer.
        errno: Errno,
    },
}

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

/// The private copy of a request's arguments, consumed front to back.
struct Args {
    opcode: u32,
    bytes: Vec<u8>,
    at: usize,
}

impl Args {
    /// The next fixed-size struct.
    fn take<T: FromBytes>(&mut self) -> Result<T, ParseError> {
        let rest = self.bytes.get(self.at..).unwrap_or_default();
        let (value, _) =
            T::read_from_prefix(rest).map_err(|_| ParseError::ShortArgs(self.opcode))?;
        self.at += size_of::<T>();
        Ok(value)
    }

    /// The next NUL-terminated string, without its NUL.
    fn string(&mut self) -> Result<&[u8], ParseError> {
        let rest = self.bytes.get(self.at..).unwrap_or_default();
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(ParseError::Unterminated)?;
        self.at += end + 1;
        Ok(&rest[..end])
    }

    fn name(&mut self) -> Result<Name, ParseError> {
        Name::new(self.string()?)
    }

    /// Everything consumed: nothing may trail the arguments.
    fn done(&self) -> Result<(), ParseError> {
        if self.at == self.bytes.len() {
            Ok(())
        } else {
            Err(ParseError::TrailingBytes(self.opcode))
        }
    }
}

/// Copies the arguments of `opcode` in (once) and validates them.
fn arguments<M: MetaMemory + ?Sized>(
    fetch: &mut Fetcher<'_, M>,
    opcode: u32,
    stream: &[Segment],
    len: u64,
    reply: &ReplyTo,
) -> Result<(Op, Option<u64>), ParseError> {
    use opcode::*;
    // A WRITE copies only its fixed arguments; its payload stays in guest memory.
    let copy_len = if opcode == WRITE {
        len.min(WRITE_IN_LEN as u64)
    } else {
        len
    };
    if copy_len > MAX_ARGS as u64 {
        return Err(ParseError::ArgsTooLong(copy_len));
    }
    let mut bytes = vec![0u8; copy_len as usize];
    fetch.read_stream(stream, &mut bytes)?;
    let mut a = Args {
        opcode,
        bytes,
        at: 0,
    };
    let fits = |need: usize| check_reply(opcode, reply, need);
    let mut getattr_fh = None;
    let op = match opcode {
        INIT => {
            // Kernels before 7.36 send 16 bytes, later ones 64; only the first 16 matter here.
            let major: u32 = a.take()?;
            let minor: u32 = a.take()?;
            let max_readahead: u32 = a.take()?;
            let flags: u32 = a.take()?;
            a.at = a.bytes.len();
            fits(init_out_len(minor))?;
            Op::Init {
                major,
                minor,
                max_readahead,
                flags,
            }
        }
        DESTROY => Op::Destroy,
        LOOKUP => {
            fits(size_of::<abi::fuse_entry_out>())?;
            Op::Lookup(a.name()?)
        }
        FORGET => Op::Forget(a.take::<abi::fuse_forget_in>()?.nlookup),
        BATCH_FORGET => {
            let head: abi::fuse_batch_forget_in = a.take()?;
            let bytes = a.bytes.len() - a.at;
            if bytes != head.count as usize * FORGET_ONE_LEN {
                return Err(ParseError::BadBatch {
                    count: head.count,
                    bytes,
                });
            }
            let mut forgets = Vec::with_capacity(head.count as usize);
            for _ in 0..head.count {
                let one: abi::fuse_forget_one = a.take()?;
                forgets.push((one.nodeid, one.nlookup));
            }
            Op::BatchForget(forgets)
        }
        GETATTR => {
            let arg: abi::fuse_getattr_in = a.take()?;
            if arg.getattr_flags & abi::FUSE_GETATTR_FH != 0 {
                getattr_fh = Some(arg.fh);
            }
            fits(size_of::<abi::fuse_attr_out>())?;
            Op::GetAttr
        }
        SETATTR => {
            fits(size_of::<abi::fuse_attr_out>())?;
            Op::SetAttr(setattr(a.take()?)?)
        }
        READLINK => {
            fits(0)?;
            Op::ReadLink
        }
        SYMLINK => {
            fits(size_of::<abi::fuse_entry_out>())?;
            let name = a.name()?;
            let target = a.string()?;
            if target.is_empty() || target.len() > TARGET_MAX {
                return Err(ParseError::TargetLength(target.len()));
            }
            let target = CString::new(target).map_err(|_| ParseError::Unterminated)?;
            Op::Symlink { name, target }
        }
        MKNOD => {
            let _: abi::fuse_mknod_in = a.take()?;
            Op::Mknod(a.name()?)
        }
        MKDIR => {
            fits(size_of::<abi::fuse_entry_out>())?;
            let arg: abi::fuse_mkdir_in = a.take()?;
            Op::Mkdir {
                name: a.name()?,
                mode: arg.mode & 0o7777,
            }
        }
        UNLINK => Op::Unlink(a.name()?),
        RMDIR => Op::Rmdir(a.name()?),
        RENAME | RENAME2 => {
            let (newdir, flags) = if opcode == RENAME {
                (a.take::<abi::fuse_rename_in>()?.newdir, 0)
            } else {
                let arg: abi::fuse_rename2_in = a.take()?;
                (arg.newdir, arg.flags)
            };
            let known = rename_flags::NOREPLACE | rename_flags::EXCHANGE;
            if flags & !known != 0 || flags == known {
                return Err(ParseError::BadValue {
                    opcode,
                    value: u64::from(flags),
                });
            }
            Op::Rename {
                old: a.name()?,
                newdir,
                new: a.name()?,
                flags,
            }
        }
        LINK => {
            fits(size_of::<abi::fuse_entry_out>())?;
            let arg: abi::fuse_link_in = a.take()?;
            Op::Link {
                target: arg.oldnodeid,
                name: a.name()?,
            }
        }
        OPEN | OPENDIR => {
            fits(size_of::<abi::fuse_open_out>())?;
            let arg: abi::fuse_open_in = a.take()?;
            if opcode == OPEN {
                Op::Open(arg.flags)
            } else {
                Op::OpenDir
            }
        }
        READ | READDIR | READDIRPLUS => {
            let arg: abi::fuse_read_in = a.take()?;
            if opcode == READ {
                io_range(arg.offset, u64::from(arg.size))?;
            } else if arg.size > MAX_IO {
                // A directory offset is the file system's opaque cookie: only the size counts.
                return Err(ParseError::OutOfRange {
                    offset: arg.offset,
                    size: u64::from(arg.size),
                });
            }
            // The reply carries at most what the writable stream holds.
            let room = reply.capacity.saturating_sub(OUT_HEADER_LEN as u64);
            let size = arg.size.min(u32::try_from(room).unwrap_or(u32::MAX));
            fits(0)?;
            if opcode == READ {
                Op::Read {
                    fh: arg.fh,
                    offset: arg.offset,
                    size,
                }
            } else {
                Op::ReadDir {
                    fh: arg.fh,
                    offset: arg.offset,
                    size,
                    plus: opcode == READDIRPLUS,
                }
            }
        }
        WRITE => {
            let arg: abi::fuse_write_in = a.take()?;
            io_range(arg.offset, u64::from(arg.size))?;
            let payload = len - WRITE_IN_LEN as u64;
            if payload != u64::from(arg.size) {
                return Err(ParseError::PayloadMismatch {
                    size: arg.size,
                    payload,
                });
            }
            let (_, data) = chain::split_at(stream, WRITE_IN_LEN as u64);
            // The payload is read once, later: it must not be metadata read already.
            fetch.reserve(&data)?;
            fits(size_of::<abi::fuse_write_out>())?;
            Op::Write {
                fh: arg.fh,
                offset: arg.offset,
                data,
                size: arg.size,
            }
        }
        STATFS => {
            fits(size_of::<abi::fuse_statfs_out>())?;
            Op::Statfs
        }
        RELEASE | RELEASEDIR => Op::Release(a.take::<abi::fuse_release_in>()?.fh),
        FSYNC | FSYNCDIR => {
            let arg: abi::fuse_fsync_in = a.take()?;
            Op::Fsync {
                fh: arg.fh,
                datasync: arg.fsync_flags & abi::FUSE_FSYNC_FDATASYNC != 0,
            }
        }
        FLUSH => Op::Flush(a.take::<abi::fuse_flush_in>()?.fh),
        ACCESS => {
            let arg: abi::fuse_access_in = a.take()?;
            if arg.mask & !7 != 0 {
                return Err(ParseError::BadValue {
                    opcode,
                    value: u64::from(arg.mask),
                });
            }
            Op::Access(arg.mask)
        }
        CREATE => {
            fits(size_of::<abi::fuse_entry_out>() + size_of::<abi::fuse_open_out>())?;
            let arg: abi::fuse_create_in = a.take()?;
            let kind = arg.mode & S_IFMT;
            if kind != 0 && kind != S_IFREG {
                return Err(ParseError::BadValue {
                    opcode,
                    value: u64::from(arg.mode),
                });
            }
            Op::Create {
                name: a.name()?,
                flags: arg.flags,
                mode: arg.mode & 0o7777,
            }
        }
        LSEEK => {
            fits(size_of::<abi::fuse_lseek_out>())?;
            let arg: abi::fuse_lseek_in = a.take()?;
            let whence = match arg.whence {
                0 => Whence::Set,
                1 => Whence::Cur,
                2 => Whence::End,
                3 => Whence::Data,
                4 => Whence::Hole,
                w => {
                    return Err(ParseError::BadValue {
                        opcode,
                        value: u64::from(w),
                    })
                }
            };
            Op::Lseek {
                fh: arg.fh,
                offset: arg.offset as i64,
                whence,
            }
        }
        FALLOCATE => {
            let arg: abi::fuse_fallocate_in = a.take()?;
            let known = falloc::KEEP_SIZE | falloc::PUNCH_HOLE | falloc::ZERO_RANGE;
            let punch_without_keep =
                arg.mode & falloc::PUNCH_HOLE != 0 && arg.mode & falloc::KEEP_SIZE == 0;
            if arg.mode & !known != 0 || punch_without_keep {
                return Err(ParseError::BadValue {
                    opcode,
                    value: u64::from(arg.mode),
                });
            }
            if arg.length == 0 {
                return Err(ParseError::OutOfRange {
                    offset: arg.offset,
                    size: 0,
                });
            }
            range(arg.offset, arg.length)?;
            Op::Fallocate {
                fh: arg.fh,
                offset: arg.offset,
                length: arg.length,
                mode: arg.mode,
            }
        }
        INTERRUPT => {
            let _: abi::fuse_interrupt_in = a.take()?;
            Op::Interrupt
        }
        SETXATTR | GETXATTR | LISTXATTR | REMOVEXATTR | GETLK | SETLK | SETLKW => {
            a.at = a.bytes.len();
            Op::Unsupported {
                opcode,
                errno: Errno::NOSYS,
            }
        }
        _ => {
            a.at = a.bytes.len();
            Op::Unsupported {
                opcode,
                errno: Errno::NOSYS,
            }
        }
    };
    a.done()?;
    Ok((op, getattr_fh))
}

/// Bytes of the `fuse_init_out` a guest speaking `minor` expects.
pub fn init_out_len(minor: u32) -> usize {
    match minor {
        0..=4 => abi::FUSE_COMPAT_INIT_OUT_SIZE as usize,
        5..=22 => abi::FUSE_COMPAT_22_INIT_OUT_SIZE as usize,
        _ => size_of::<abi::fuse_init_out>(),
    }
}

/// File type mask and the regular-file type (`st_mode`).
const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;

/// Checks that the writable stream holds a reply header and `need` more bytes.
fn check_reply(opcode: u32, reply: &ReplyTo, need: usize) -> Result<(), ParseError> {
    let need = (OUT_HEADER_LEN + need) as u64;
    if reply.capacity < need {
        return Err(ParseError::ReplyTooSmall {
            opcode,
            capacity: reply.capacity,
            need,
        });
    }
    Ok(())
}

/// `offset + size` within `i64::MAX`.
fn range(offset: u64, size: u64) -> Result<(), ParseError> {
    match offset.checked_add(size) {
        Some(end) if end <= i64::MAX as u64 => Ok(()),
        _ => Err(ParseError::OutOfRange { offset, size }),
    }
}

/// [`range`], and `size` at most [`MAX_IO`].
fn io_range(offset: u64, size: u64) -> Result<(), ParseError> {
    if size > MAX_IO as u64 {
        return Err(ParseError::OutOfRange { offset, size });
    }
    range(offset, size)
}

/// Validates a `fuse_setattr_in` into a [`SetAttr`].
fn setattr(arg: abi::fuse_setattr_in) -> Result<SetAttr, ParseError> {
    let valid = arg.valid;
    let known = abi::FATTR_MODE
        | abi::FATTR_UID
        | abi::FATTR_GID
        | abi::FATTR_SIZE
        | abi::FATTR_ATIME
        | abi::FATTR_MTIME
        | abi::FATTR_FH
        | abi::FATTR_ATIME_NOW
        | abi::FATTR_MTIME_NOW
        | abi::FATTR_LOCKOWNER
        | abi::FATTR_CTIME
        | abi::FATTR_KILL_SUIDGID;
    if valid & !known != 0 {
        return Err(ParseError::BadValue {
            opcode: opcode::SETATTR,
            value: u64::from(valid),
        });
    }
    let has = |bit| valid & bit != 0;
    let time = |set, now, secs: u64, nsecs: u32| -> Result<Option<Time>, ParseError> {
        if has(now) {
            return Ok(Some(Time::Now));
        }
        if !has(set) {
            return Ok(None);
        }
        if nsecs >= 1_000_000_000 {
            return Err(ParseError::BadNanoseconds(nsecs));
        }
        Ok(Some(Time::At(secs as i64, nsecs)))
    };
    let size = if has(abi::FATTR_SIZE) {
        range(arg.size, 0)?;
        Some(arg.size)
    } else {
        None
    };
    Ok(SetAttr {
        mode: has(abi::FATTR_MODE).then_some(arg.mode & 0o7777),
        uid: has(abi::FATTR_UID).then_some(arg.uid),
        gid: has(abi::FATTR_GID).then_some(arg.gid),
        size,
        atime: time(
            abi::FATTR_ATIME,
            abi::FATTR_ATIME_NOW,
            arg.atime,
            arg.atimensec,
        )?,
        mtime: time(
            abi::FATTR_MTIME,
            abi::FATTR_MTIME_NOW,
            arg.mtime,
            arg.mtimensec,
        )?,
        fh: has(abi::FATTR_FH).then_some(arg.fh),
        kill_suidgid: has(abi::FATTR_KILL_SUIDGID),
    })
}
