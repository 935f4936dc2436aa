//! The FUSE server: one validated [`Request`] in, one [`Answer`] out.
//!
//! [`Server::handle`] gates every request (INIT first; `ro` refuses every modifying request
//! with `EROFS`), then dispatches it to the operation (`ops` for nodes and files, `dir` for
//! directories). This module also owns what several operations share: turning an `O_PATH` fd
//! into a node and a `fuse_entry_out`, `fuse_attr` with the presented owner, the cache
//! timeouts, and the host mode a guest mode becomes.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use fuse_abi::linux as abi;
use rustix::fs::{FileType, Stat};
use vm_memory::GuestMemoryMmap;

use super::host::{self, Proc};
use super::inode::{Handles, Inodes, Owners};
use super::reply::{bytes_of, Answer};
use super::request::{init_out_len, Op, Request};
use super::{CachePolicy, Errno, FsError, FsOptions, IdMap, MAX_IO};

/// The protocol minor version the server speaks (7.31: the first with virtio-fs).
pub(crate) const MINOR: u32 = 31;
/// The oldest guest minor version accepted (the structs' current sizes date from 7.9).
const OLDEST_MINOR: u32 = 9;
/// `FUSE_*` INIT flags the server accepts when the guest offers them.
const INIT_FLAGS: u32 = abi::FUSE_ASYNC_READ
    | abi::FUSE_ATOMIC_O_TRUNC
    | abi::FUSE_BIG_WRITES
    | abi::FUSE_DO_READDIRPLUS
    | abi::FUSE_READDIRPLUS_AUTO
    | abi::FUSE_PARALLEL_DIROPS
    | abi::FUSE_MAX_PAGES;
/// Set-user-ID and set-group-ID mode bits.
const S_ISUID: u32 = 0o4000;
const S_ISGID: u32 = 0o2000;

/// The server's state: the nodes, the handles, the presented owners.
pub(crate) struct Server {
    pub(crate) inodes: Inodes,
    pub(crate) handles: Handles,
    pub(crate) owners: Owners,
    pub(crate) proc: Proc,
    pub(crate) read_only: bool,
    cache: CachePolicy,
    uid_map: Option<IdMap>,
    /// The negotiated minor version, once INIT succeeded.
    session: Option<u32>,
}

impl Server {
    /// A server for the directory `root` (any fd of it; `O_PATH` is what svmm opens).
    pub(crate) fn new(root: OwnedFd, proc: Proc, options: &FsOptions) -> Result<Server, FsError> {
        let st = host::stat(root.as_fd()).map_err(|e| FsError::Inspect(e.into()))?;
        if host::file_type(&st) != FileType::Directory {
            return Err(FsError::NotADirectory);
        }
        Ok(Server {
            inodes: Inodes::new(root, key_of(&st)),
            handles: Handles::default(),
            owners: Owners::default(),
            proc,
            read_only: options.read_only,
            cache: options.cache,
            uid_map: options.uid_map,
            session: None,
        })
    }

    /// Forgets every node, handle and the session (device reset, DESTROY).
    pub(crate) fn reset(&mut self) {
        self.inodes.clear();
        self.handles.clear();
        self.session = None;
    }

    /// Executes `req`; a WRITE's payload is read from `mem`, once.
    pub(crate) fn handle(&mut self, req: &Request, mem: &GuestMemoryMmap) -> Answer {
        match &req.op {
            Op::Init {
                major,
                minor,
                max_readahead,
                flags,
            } => return self.init(*major, *minor, *max_readahead, *flags),
            Op::Forget(n) => {
                self.inodes.forget(req.nodeid, *n);
                return Answer::None;
            }
            Op::BatchForget(list) => {
                for &(id, n) in list {
                    self.inodes.forget(id, n);
                }
                return Answer::None;
            }
            Op::Interrupt => return Answer::None,
            _ if self.session.is_none() => return Answer::Error(Errno::IO),
            Op::Destroy => {
                self.reset();
                return Answer::Ok(Vec::new());
            }
            op if self.read_only && modifies(op) => return Answer::Error(Errno::ROFS),
            Op::Unsupported { errno, .. } => return Answer::Error(*errno),
            _ => {}
        }
        self.dispatch(req, mem).into()
    }

    fn dispatch(&mut self, req: &Request, mem: &GuestMemoryMmap) -> Result<Vec<u8>, Errno> {
        let node = req.nodeid;
        match &req.op {
            Op::Lookup(name) => {
                let fd = host::lookup(self.dir_fd(node)?, name.as_c_str())?;
                Ok(bytes_of(&self.add_entry(fd)?))
            }
            Op::GetAttr => self.getattr(node, req.getattr_fh),
            Op::SetAttr(sa) => self.setattr(node, sa),
            Op::ReadLink => self.readlink(node),
            Op::Symlink { name, target } => self.symlink(req, name.as_c_str(), target),
            // Device nodes, fifos and sockets are never created in the share.
            Op::Mknod(_) => Err(Errno::PERM),
            Op::Mkdir { name, mode } => self.mkdir(req, name.as_c_str(), *mode),
            Op::Unlink(name) => self.unlink(node, name.as_c_str(), false),
            Op::Rmdir(name) => self.unlink(node, name.as_c_str(), true),
            Op::Rename {
                old,
                newdir,
                new,
                flags,
            } => self.rename(node, old.as_c_str(), *newdir, new.as_c_str(), *flags),
            Op::Link { target, name } => self.link(req, *target, name.as_c_str()),
            Op::Open(flags) => self.open(node, *flags),
            Op::Read { fh, offset, size } => self.read(*fh, *offset, *size),
            Op::Write {
                fh,
                offset,
                data,
                size,
            } => self.write(mem, *fh, *offset, data, *size),
            Op::Statfs => self.statfs(),
            Op::Release(fh) => {
                self.handles.remove(*fh);
                Ok(Vec::new())
            }
            Op::Fsync { fh, datasync } => self.fsync(*fh, *datasync),
            Op::Flush(fh) => self.handles.file(*fh).map(|_| Vec::new()),
            Op::OpenDir => self.opendir(node),
            Op::ReadDir {
                fh,
                offset,
                size,
                plus,
            } => self.readdir(node, *fh, *offset, *size, *plus),
            Op::Access(mask) => self.access(req, *mask),
            Op::Create { name, flags, mode } => self.create(req, name.as_c_str(), *flags, *mode),
            Op::Lseek { fh, offset, whence } => self.lseek(*fh, *offset, *whence),
            Op::Fallocate {
                fh,
                offset,
                length,
                mode,
            } => self.fallocate(*fh, *offset, *length, *mode),
            // Handled in `handle`.
            Op::Init { .. }
            | Op::Destroy
            | Op::Forget(_)
            | Op::BatchForget(_)
            | Op::Interrupt
            | Op::Unsupported { .. } => Err(Errno::IO),
        }
    }

    /// INIT: agree on 7.31 (or the guest's older minor) and the capabilities.
    fn init(&mut self, major: u32, minor: u32, max_readahead: u32, flags: u32) -> Answer {
        if major < 7 || (major == 7 && minor < OLDEST_MINOR) {
            return Answer::Error(Errno::PROTO);
        }
        let mut out = abi::fuse_init_out {
            major: 7,
            minor: MINOR,
            ..Default::default()
        };
        if major > 7 {
            // The guest retries with our major version.
            let mut bytes = bytes_of(&out);
            bytes.truncate(abi::FUSE_COMPAT_INIT_OUT_SIZE as usize);
            return Answer::Ok(bytes);
        }
        if self.session.is_some() {
            return Answer::Error(Errno::IO);
        }
        out.max_readahead = max_readahead;
        out.flags = flags & INIT_FLAGS;
        out.max_background = 64;
        out.congestion_threshold = 48;
        out.max_write = MAX_IO;
        out.time_gran = 1;
        out.max_pages = (MAX_IO / 4096) as u16;
        self.session = Some(minor.min(MINOR));
        let mut bytes = bytes_of(&out);
        bytes.truncate(init_out_len(minor));
        Answer::Ok(bytes)
    }

    /// The fd of node `id`, which must be a directory.
    pub(crate) fn dir_fd(&self, id: u64) -> Result<BorrowedFd<'_>, Errno> {
        let node = self.inodes.get(id)?;
        if node.kind != FileType::Directory {
            return Err(Errno::NOTDIR);
        }
        Ok(node.fd.as_fd())
    }

    /// Counts a lookup of the inode `fd` (an `O_PATH` fd) and describes it.
    pub(crate) fn add_entry(&mut self, fd: OwnedFd) -> Result<abi::fuse_entry_out, Errno> {
        let st = host::stat(fd.as_fd())?;
        let nodeid = self.inodes.add(fd, host::file_type(&st), key_of(&st))?;
        let (entry, attr) = self.timeouts();
        Ok(abi::fuse_entry_out {
            nodeid,
            generation: 0,
            entry_valid: entry,
            attr_valid: attr,
            entry_valid_nsec: 0,
            attr_valid_nsec: 0,
            attr: self.attr(&st),
        })
    }

    /// A node the guest just made on behalf of `req` (`fd` an `O_PATH` fd of it): recorded as
    /// owned by the guest's ids (see "Ownership"), counted, described.
    pub(crate) fn new_entry(
        &mut self,
        req: &Request,
        fd: OwnedFd,
    ) -> Result<abi::fuse_entry_out, Errno> {
        if self.uid_map.is_none() {
            let st = host::stat(fd.as_fd())?;
            self.owners.set(key_of(&st), (req.uid, req.gid));
        }
        self.add_entry(fd)
    }

    /// `(entry_valid, attr_valid)` in seconds.
    pub(crate) fn timeouts(&self) -> (u64, u64) {
        match self.cache {
            CachePolicy::None => (0, 0),
            CachePolicy::Auto => (1, 1),
            CachePolicy::Always => (86_400, 86_400),
        }
    }

    /// `FOPEN_*` flags for a file (`dir` false) or directory handle.
    pub(crate) fn open_flags(&self, dir: bool) -> u32 {
        match (self.cache, dir) {
            (CachePolicy::None, false) => abi::FOPEN_DIRECT_IO,
            (CachePolicy::Always, false) => abi::FOPEN_KEEP_CACHE,
            (CachePolicy::Always, true) => abi::FOPEN_KEEP_CACHE | abi::FOPEN_CACHE_DIR,
            _ => 0,
        }
    }

    /// The owner the guest sees for the inode `key`.
    pub(crate) fn presented(&self, key: (u64, u64)) -> (u32, u32) {
        match self.uid_map {
            Some(map) => (map.uid, map.gid),
            None => self.owners.get(key),
        }
    }

    /// Records a chown the guest asked for; `EPERM` with `uid-map=` to other ids.
    pub(crate) fn chown(
        &mut self,
        key: (u64, u64),
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<(), Errno> {
        if let Some(map) = self.uid_map {
            if uid.is_some_and(|u| u != map.uid) || gid.is_some_and(|g| g != map.gid) {
                return Err(Errno::PERM);
            }
            return Ok(());
        }
        let (u, g) = self.owners.get(key);
        self.owners.set(key, (uid.unwrap_or(u), gid.unwrap_or(g)));
        Ok(())
    }

    /// `fuse_attr` of `st` as the guest sees it.
    pub(crate) fn attr(&self, st: &Stat) -> abi::fuse_attr {
        let (uid, gid) = self.presented(key_of(st));
        abi::fuse_attr {
            ino: st.st_ino,
            size: st.st_size as u64,
            blocks: st.st_blocks as u64,
            atime: st.st_atime as u64,
            mtime: st.st_mtime as u64,
            ctime: st.st_ctime as u64,
            atimensec: st.st_atime_nsec as u32,
            mtimensec: st.st_mtime_nsec as u32,
            ctimensec: st.st_ctime_nsec as u32,
            mode: st.st_mode,
            nlink: u32::try_from(st.st_nlink).unwrap_or(u32::MAX),
            uid,
            gid,
            rdev: st.st_rdev as u32,
            blksize: st.st_blksize as u32,
            flags: 0,
        }
    }

    /// `fuse_attr_out` of `st`.
    pub(crate) fn attr_out(&self, st: &Stat) -> Vec<u8> {
        bytes_of(&abi::fuse_attr_out {
            attr_valid: self.timeouts().1,
            attr_valid_nsec: 0,
            dummy: 0,
            attr: self.attr(st),
        })
    }
}

/// `(st_dev, st_ino)`: one host inode.
pub(crate) fn key_of(st: &Stat) -> (u64, u64) {
    (st.st_dev, st.st_ino)
}

/// The host mode for a guest mode: permission bits only, never set-user-ID, set-group-ID only
/// on directories.
pub(crate) fn host_mode(mode: u32, dir: bool) -> u32 {
    let mode = mode & 0o7777 & !S_ISUID;
    if dir {
        mode
    } else {
        mode & !S_ISGID
    }
}

/// Whether `op` changes the share (refused with `EROFS` under `ro`).
pub(crate) fn modifies(op: &Op) -> bool {
    const WRITE_ACCESS: u32 = rustix::fs::OFlags::WRONLY.bits()
        | rustix::fs::OFlags::RDWR.bits()
        | rustix::fs::OFlags::TRUNC.bits();
    match op {
        Op::SetAttr(_)
        | Op::Symlink { .. }
        | Op::Mknod(_)
        | Op::Mkdir { .. }
        | Op::Unlink(_)
        | Op::Rmdir(_)
        | Op::Rename { .. }
        | Op::Link { .. }
        | Op::Write { .. }
        | Op::Create { .. }
        | Op::Fallocate { .. } => true,
        Op::Open(flags) => flags & WRITE_ACCESS != 0,
        Op::Unsupported { opcode, .. } => matches!(
            *opcode,
            super::request::opcode::SETXATTR | super::request::opcode::REMOVEXATTR
        ),
        _ => false,
    }
}

/// The whole answer for a proc fd that is not a procfs, for callers that report it.
pub(crate) fn check_proc(fd: OwnedFd) -> Result<Proc, FsError> {
    Proc::new(fd).map_err(|e| {
        if e.kind() == std::io::ErrorKind::InvalidInput {
            FsError::NotProc
        } else {
            FsError::Inspect(e)
        }
    })
}
