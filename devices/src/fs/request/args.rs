//! Each opcode's arguments: copied out of the chain's readable stream once, into private
//! memory, and validated there into an [`Op`].

use std::ffi::CString;

use fuse_abi::linux as abi;
use zerocopy::FromBytes;

use super::op::*;
use super::{ParseError, ReplyTo, FORGET_ONE_LEN, OUT_HEADER_LEN, WRITE_IN_LEN};
use crate::chain::{self, Fetcher, MetaMemory, Segment};
use crate::fs::{Errno, MAX_ARGS, MAX_IO, TARGET_MAX};

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
pub(super) fn arguments<M: MetaMemory + ?Sized>(
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
