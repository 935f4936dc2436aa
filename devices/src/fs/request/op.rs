//! The typed requests: [`Op`] and the validated values it carries.

use std::ffi::CString;

use super::ParseError;
use crate::chain::Segment;
use crate::fs::{Errno, NAME_MAX};

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
