//! The only code of the device that names host files.
//!
//! - [`open_beneath`]: `openat2` of one validated name relative to a node's fd, with
//!   `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS` and `O_NOFOLLOW`: the
//!   kernel refuses `..`, absolute paths, every symlink (a final one is opened as itself with
//!   `O_PATH`) and magic links at resolution time.
//! - [`Proc`]: the fd of the host's `/proc` that svmm opened, used only as `self/fd/N` for one
//!   of the device's own fds: to re-open a node's `O_PATH` fd for I/O, and for the calls that
//!   have no fd form (`chmod`, `utimensat`, `linkat` of an `O_PATH` fd).
//!
//! Everything returns `rustix::io::Errno`, which is what the guest gets.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat, Timestamps};
use rustix::io::Errno;

/// How every guest-named component is resolved.
pub(crate) const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_SYMLINKS);

/// `PROC_SUPER_MAGIC`.
const PROC_SUPER_MAGIC: i64 = 0x9fa0;

/// Opens `name` in the directory `dir` (any fd of it, `O_PATH` included) with `flags`, never
/// leaving `dir` and never following a symlink.
pub(crate) fn open_beneath(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: OFlags,
    mode: Mode,
) -> Result<OwnedFd, Errno> {
    rustix::fs::openat2(
        dir,
        name,
        with_defaults(flags) | OFlags::NOFOLLOW,
        mode,
        RESOLVE,
    )
}

/// `flags` with `O_CLOEXEC`, and `O_NOCTTY` unless `O_PATH` (which `openat2` refuses to
/// combine with anything but `O_CLOEXEC`, `O_DIRECTORY` and `O_NOFOLLOW`).
fn with_defaults(flags: OFlags) -> OFlags {
    if flags.contains(OFlags::PATH) {
        flags | OFlags::CLOEXEC
    } else {
        flags | OFlags::CLOEXEC | OFlags::NOCTTY
    }
}

/// An `O_PATH` fd of `name` in `dir` (a symlink is opened as itself).
pub(crate) fn lookup(dir: BorrowedFd<'_>, name: &CStr) -> Result<OwnedFd, Errno> {
    open_beneath(dir, name, OFlags::PATH, Mode::empty())
}

/// `fstat` (works on `O_PATH` fds).
pub(crate) fn stat(fd: BorrowedFd<'_>) -> Result<Stat, Errno> {
    rustix::fs::fstat(fd)
}

/// The type of a node, from its `st_mode`.
pub(crate) fn file_type(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

/// The host's `/proc`, used only as `self/fd/N` for the device's own fds.
#[derive(Debug)]
pub(crate) struct Proc(OwnedFd);

impl Proc {
    /// Wraps `fd` after checking it is a procfs.
    pub(crate) fn new(fd: OwnedFd) -> Result<Proc, std::io::Error> {
        let fs = rustix::fs::fstatfs(&fd)?;
        if fs.f_type as i64 != PROC_SUPER_MAGIC {
            return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
        }
        Ok(Proc(fd))
    }

    /// `self/fd/N` for `fd`.
    fn path(fd: BorrowedFd<'_>) -> String {
        format!("self/fd/{}", fd.as_raw_fd())
    }

    /// A new open file description of the node `fd` refers to, with `flags` (the magic link
    /// is followed: that is its purpose; nothing else is resolved).
    pub(crate) fn reopen(&self, fd: BorrowedFd<'_>, flags: OFlags) -> Result<OwnedFd, Errno> {
        rustix::fs::openat2(
            &self.0,
            Self::path(fd),
            with_defaults(flags),
            Mode::empty(),
            ResolveFlags::empty(),
        )
    }

    /// `chmod` of the node `fd` refers to (not for symlinks).
    pub(crate) fn chmod(&self, fd: BorrowedFd<'_>, mode: u32) -> Result<(), Errno> {
        rustix::fs::chmodat(
            &self.0,
            Self::path(fd),
            Mode::from_raw_mode(mode),
            AtFlags::empty(),
        )
    }

    /// `utimensat` of the node `fd` refers to (not for symlinks).
    pub(crate) fn utimes(&self, fd: BorrowedFd<'_>, times: &Timestamps) -> Result<(), Errno> {
        rustix::fs::utimensat(&self.0, Self::path(fd), times, AtFlags::empty())
    }

    /// A new hard link `name` in `dir` to the node `fd` refers to.
    pub(crate) fn link(
        &self,
        fd: BorrowedFd<'_>,
        dir: BorrowedFd<'_>,
        name: &CStr,
    ) -> Result<(), Errno> {
        rustix::fs::linkat(&self.0, Self::path(fd), dir, name, AtFlags::SYMLINK_FOLLOW)
    }
}
