//! The operations on nodes and open files: attributes, links, names, data.
//!
//! Each works on fds only: a node's `O_PATH` fd, a parent directory's fd with one validated
//! name (`host::open_beneath`), an open handle, or a node re-opened through `/proc/self/fd/N`.
//! Only regular files are ever opened for data, only directories for listing.

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd};

use fuse_abi::linux as abi;
use rustix::fs::{
    AtFlags, FallocateFlags, FileType, Mode, OFlags, RenameFlags, SeekFrom, Timespec, Timestamps,
    UTIME_NOW, UTIME_OMIT,
};
use vm_memory::{Bytes, GuestMemoryMmap};

use super::host;
use super::inode::Handle;
use super::reply::bytes_of;
use super::request::{Request, SetAttr, Time, Whence};
use super::server::{host_mode, key_of, Server};
use super::Errno;
use crate::chain::Segment;

/// `open(2)` flags the guest may pass on to the host; everything else is dropped (`O_CREAT`,
/// `O_EXCL` and `O_DIRECTORY` have their own requests, `O_DIRECT` would need aligned buffers,
/// `O_NOATIME` and `O_PATH` are not the guest's to ask for).
const PASSED_FLAGS: OFlags = OFlags::ACCMODE
    .union(OFlags::APPEND)
    .union(OFlags::TRUNC)
    .union(OFlags::SYNC)
    .union(OFlags::DSYNC);

/// The open flags the host gets for the guest's `flags`, and whether they allow writing.
fn file_flags(flags: u32) -> (OFlags, bool) {
    let flags = OFlags::from_bits_retain(flags) & PASSED_FLAGS;
    let writable = flags.contains(OFlags::WRONLY) || flags.contains(OFlags::RDWR);
    (flags, writable)
}

impl Server {
    pub(crate) fn getattr(&self, node: u64, fh: Option<u64>) -> Result<Vec<u8>, Errno> {
        let st = match fh {
            Some(fh) => host::stat(self.handles.any(fh)?)?,
            None => host::stat(self.inodes.fd(node)?)?,
        };
        Ok(self.attr_out(&st))
    }

    pub(crate) fn setattr(&mut self, node: u64, sa: &SetAttr) -> Result<Vec<u8>, Errno> {
        let (kind, fd) = {
            let n = self.inodes.get(node)?;
            (n.kind, n.fd.as_fd())
        };
        let st = host::stat(fd)?;
        if let Some(size) = sa.size {
            match kind {
                FileType::RegularFile => {}
                FileType::Directory => return Err(Errno::ISDIR),
                _ => return Err(Errno::INVAL),
            }
            match sa.fh {
                Some(fh) => match self.handles.file(fh)? {
                    (file, true) => rustix::fs::ftruncate(file, size)?,
                    (_, false) => return Err(Errno::BADF),
                },
                None => {
                    let file = self.proc.reopen(fd, OFlags::WRONLY)?;
                    rustix::fs::ftruncate(&file, size)?;
                }
            }
        }
        let mut mode = sa.mode;
        if sa.kill_suidgid && mode.is_none() && st.st_mode & 0o6000 != 0 {
            mode = Some(st.st_mode & 0o1777);
        }
        if let Some(mode) = mode {
            if kind == FileType::Symlink {
                return Err(Errno::OPNOTSUPP);
            }
            self.proc
                .chmod(fd, host_mode(mode, kind == FileType::Directory))?;
        }
        if sa.atime.is_some() || sa.mtime.is_some() {
            let times = Timestamps {
                last_access: timespec(sa.atime),
                last_modification: timespec(sa.mtime),
            };
            if kind == FileType::Symlink {
                rustix::fs::utimensat(
                    fd,
                    c"",
                    &times,
                    AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
                )?;
            } else {
                self.proc.utimes(fd, &times)?;
            }
        }
        if sa.uid.is_some() || sa.gid.is_some() {
            self.chown(key_of(&st), sa.uid, sa.gid)?;
        }
        let st = host::stat(self.inodes.fd(node)?)?;
        Ok(self.attr_out(&st))
    }

    pub(crate) fn readlink(&self, node: u64) -> Result<Vec<u8>, Errno> {
        let n = self.inodes.get(node)?;
        if n.kind != FileType::Symlink {
            return Err(Errno::INVAL);
        }
        let target = rustix::fs::readlinkat(n.fd.as_fd(), c"", Vec::new())?;
        Ok(target.into_bytes())
    }

    pub(crate) fn symlink(
        &mut self,
        req: &Request,
        name: &CStr,
        target: &CStr,
    ) -> Result<Vec<u8>, Errno> {
        let parent = self.dir_fd(req.nodeid)?;
        rustix::fs::symlinkat(target, parent, name)?;
        let fd = host::lookup(parent, name)?;
        Ok(bytes_of(&self.new_entry(req, fd)?))
    }

    pub(crate) fn mkdir(
        &mut self,
        req: &Request,
        name: &CStr,
        mode: u32,
    ) -> Result<Vec<u8>, Errno> {
        let mode = host_mode(mode, true);
        let parent = self.dir_fd(req.nodeid)?;
        rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(mode))?;
        let fd = host::lookup(parent, name)?;
        let mut entry = self.new_entry(req, fd)?;
        if entry.attr.mode & 0o7777 != mode {
            // svmm's umask took bits away (in-process devices; workers run with umask 0).
            self.proc.chmod(self.inodes.fd(entry.nodeid)?, mode)?;
            entry.attr.mode = (entry.attr.mode & !0o7777) | mode;
        }
        Ok(bytes_of(&entry))
    }

    pub(crate) fn unlink(&mut self, node: u64, name: &CStr, dir: bool) -> Result<Vec<u8>, Errno> {
        let flags = if dir {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        rustix::fs::unlinkat(self.dir_fd(node)?, name, flags)?;
        Ok(Vec::new())
    }

    pub(crate) fn rename(
        &mut self,
        node: u64,
        old: &CStr,
        newdir: u64,
        new: &CStr,
        flags: u32,
    ) -> Result<Vec<u8>, Errno> {
        let flags = RenameFlags::from_bits_retain(flags);
        rustix::fs::renameat_with(self.dir_fd(node)?, old, self.dir_fd(newdir)?, new, flags)?;
        Ok(Vec::new())
    }

    pub(crate) fn link(
        &mut self,
        req: &Request,
        target: u64,
        name: &CStr,
    ) -> Result<Vec<u8>, Errno> {
        let n = self.inodes.get(target)?;
        if n.kind == FileType::Directory {
            return Err(Errno::PERM);
        }
        self.proc
            .link(n.fd.as_fd(), self.dir_fd(req.nodeid)?, name)?;
        let fd = host::lookup(self.dir_fd(req.nodeid)?, name)?;
        Ok(bytes_of(&self.add_entry(fd)?))
    }

    pub(crate) fn open(&mut self, node: u64, flags: u32) -> Result<Vec<u8>, Errno> {
        let n = self.inodes.get(node)?;
        match n.kind {
            FileType::RegularFile => {}
            FileType::Directory => return Err(Errno::ISDIR),
            FileType::Symlink => return Err(Errno::LOOP),
            // Fifos, sockets and device nodes the host put in the share are never opened.
            _ => return Err(Errno::ACCESS),
        }
        let (flags, writable) = file_flags(flags);
        let fd = self.proc.reopen(n.fd.as_fd(), flags)?;
        let fh = self.handles.add(Handle::File { fd, writable })?;
        Ok(bytes_of(&abi::fuse_open_out {
            fh,
            open_flags: self.open_flags(false),
            backing_id: 0,
        }))
    }

    /// CREATE: a new regular file, or (without `O_EXCL`) an existing one opened, never
    /// anything else: an existing name is opened only after its node was found to be a
    /// regular file.
    pub(crate) fn create(
        &mut self,
        req: &Request,
        name: &CStr,
        flags: u32,
        mode: u32,
    ) -> Result<Vec<u8>, Errno> {
        let (open_flags, writable) = file_flags(flags);
        let exclusive = OFlags::from_bits_retain(flags).contains(OFlags::EXCL);
        let mode = host_mode(mode, false);
        let created = host::open_beneath(
            self.dir_fd(req.nodeid)?,
            name,
            open_flags | OFlags::CREATE | OFlags::EXCL,
            Mode::from_raw_mode(mode),
        );
        let (fd, entry) = match created {
            Ok(fd) => {
                let st = host::stat(fd.as_fd())?;
                if st.st_mode & 0o7777 != mode {
                    // svmm's umask took bits away (in-process devices).
                    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
                }
                // The node is the file just created, whatever happens to its name meanwhile.
                let path = self.proc.reopen(fd.as_fd(), OFlags::PATH)?;
                let mut entry = self.new_entry(req, path)?;
                entry.attr.mode = (entry.attr.mode & !0o7777) | mode;
                (fd, entry)
            }
            Err(Errno::EXIST) if !exclusive => {
                let path = host::lookup(self.dir_fd(req.nodeid)?, name)?;
                let entry = self.add_entry(path)?;
                let n = self.inodes.get(entry.nodeid)?;
                if n.kind != FileType::RegularFile {
                    self.inodes.forget(entry.nodeid, 1);
                    return Err(Errno::EXIST);
                }
                match self.proc.reopen(n.fd.as_fd(), open_flags) {
                    Ok(fd) => (fd, entry),
                    Err(e) => {
                        self.inodes.forget(entry.nodeid, 1);
                        return Err(e);
                    }
                }
            }
            Err(e) => return Err(e),
        };
        let fh = match self.handles.add(Handle::File { fd, writable }) {
            Ok(fh) => fh,
            Err(e) => {
                self.inodes.forget(entry.nodeid, 1);
                return Err(e);
            }
        };
        let mut out = bytes_of(&entry);
        out.extend_from_slice(&bytes_of(&abi::fuse_open_out {
            fh,
            open_flags: self.open_flags(false),
            backing_id: 0,
        }));
        Ok(out)
    }

    pub(crate) fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let (fd, _) = self.handles.file(fh)?;
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            match rustix::io::pread(fd, &mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(Errno::INTR) => {}
                Err(e) if done == 0 => return Err(e),
                Err(_) => break,
            }
        }
        buf.truncate(done);
        Ok(buf)
    }

    /// WRITE: the payload is copied out of guest memory once, then written.
    pub(crate) fn write(
        &self,
        mem: &GuestMemoryMmap,
        fh: u64,
        offset: u64,
        data: &[Segment],
        size: u32,
    ) -> Result<Vec<u8>, Errno> {
        let (fd, writable) = self.handles.file(fh)?;
        if !writable {
            return Err(Errno::BADF);
        }
        let mut buf = vec![0u8; size as usize];
        let mut at = 0;
        for seg in data {
            let end = at + seg.len as usize;
            let Some(dst) = buf.get_mut(at..end) else {
                return Err(Errno::INVAL);
            };
            mem.read_slice(dst, seg.addr).map_err(|_| Errno::FAULT)?;
            at = end;
        }
        let written = write_all_at(fd, &buf, offset)?;
        Ok(bytes_of(&abi::fuse_write_out {
            size: written,
            padding: 0,
        }))
    }

    pub(crate) fn statfs(&self) -> Result<Vec<u8>, Errno> {
        let v = rustix::fs::fstatvfs(self.inodes.fd(super::inode::ROOT)?)?;
        Ok(bytes_of(&abi::fuse_statfs_out {
            st: abi::fuse_kstatfs {
                blocks: v.f_blocks,
                bfree: v.f_bfree,
                bavail: v.f_bavail,
                files: v.f_files,
                ffree: v.f_ffree,
                bsize: v.f_bsize as u32,
                namelen: v.f_namemax as u32,
                frsize: v.f_frsize as u32,
                padding: 0,
                spare: [0; 6],
            },
        }))
    }

    pub(crate) fn fsync(&self, fh: u64, datasync: bool) -> Result<Vec<u8>, Errno> {
        let fd = self.handles.any(fh)?;
        if datasync {
            rustix::fs::fdatasync(fd)?;
        } else {
            rustix::fs::fsync(fd)?;
        }
        Ok(Vec::new())
    }

    /// ACCESS: `mask` against the mode and the presented owner, as the guest kernel would
    /// check it (the request's uid and gid; supplementary groups are not sent by FUSE).
    pub(crate) fn access(&self, req: &Request, mask: u32) -> Result<Vec<u8>, Errno> {
        const W_OK: u32 = 2;
        let st = host::stat(self.inodes.fd(req.nodeid)?)?;
        if mask == 0 {
            return Ok(Vec::new());
        }
        if mask & W_OK != 0 && self.read_only {
            return Err(Errno::ROFS);
        }
        let mode = st.st_mode;
        let allowed = if req.uid == 0 {
            // root may do anything but execute a file no one may execute.
            let exec = mode & 0o111 != 0 || host::file_type(&st) == FileType::Directory;
            if exec {
                7
            } else {
                6
            }
        } else {
            let (uid, gid) = self.presented(key_of(&st));
            let shift = if req.uid == uid {
                6
            } else if req.gid == gid {
                3
            } else {
                0
            };
            (mode >> shift) & 7
        };
        if mask & !allowed != 0 {
            return Err(Errno::ACCESS);
        }
        Ok(Vec::new())
    }

    pub(crate) fn lseek(&self, fh: u64, offset: i64, whence: Whence) -> Result<Vec<u8>, Errno> {
        let (fd, _) = self.handles.file(fh)?;
        let pos = match whence {
            Whence::Set => SeekFrom::Start(u64::try_from(offset).map_err(|_| Errno::INVAL)?),
            Whence::Cur => SeekFrom::Current(offset),
            Whence::End => SeekFrom::End(offset),
            Whence::Data => SeekFrom::Data(u64::try_from(offset).map_err(|_| Errno::INVAL)?),
            Whence::Hole => SeekFrom::Hole(u64::try_from(offset).map_err(|_| Errno::INVAL)?),
        };
        let offset = rustix::fs::seek(fd, pos)?;
        Ok(bytes_of(&abi::fuse_lseek_out { offset }))
    }

    pub(crate) fn fallocate(
        &self,
        fh: u64,
        offset: u64,
        length: u64,
        mode: u32,
    ) -> Result<Vec<u8>, Errno> {
        let (fd, writable) = self.handles.file(fh)?;
        if !writable {
            return Err(Errno::BADF);
        }
        rustix::fs::fallocate(fd, FallocateFlags::from_bits_retain(mode), offset, length)?;
        Ok(Vec::new())
    }
}

/// `utimensat` time for a SETATTR time.
fn timespec(t: Option<Time>) -> Timespec {
    match t {
        None => Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        Some(Time::Now) => Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_NOW,
        },
        Some(Time::At(sec, nsec)) => Timespec {
            tv_sec: sec,
            tv_nsec: i64::from(nsec),
        },
    }
}

/// `pwrite` until everything is written or an error; the count written (an error only if
/// nothing was).
fn write_all_at(fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> Result<u32, Errno> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::pwrite(fd, &buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(Errno::INTR) => {}
            Err(e) if done == 0 => return Err(e),
            Err(_) => break,
        }
    }
    // `buf` is at most MAX_IO bytes.
    Ok(done as u32)
}
