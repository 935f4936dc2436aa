//! Host files and directories a device declares, opened in the VMM's context: a file with its
//! access mode, `flock` and `O_DIRECT` ([`HostFile`], [`open_host_file`]), a directory as an
//! `O_PATH` fd ([`open_directory`]).
//!
//! A path is looked at before it is opened: a directory where a file is expected is named as
//! one, and a file of a type the device does not take (a fifo, a socket) is refused without
//! opening it — opening a fifo read-only would block until a writer appears.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::ResourceError;

/// How a worker may use a host file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Opened `O_RDONLY`.
    ReadOnly,
    /// Opened `O_RDWR`.
    ReadWrite,
}

/// The advisory lock held on a host file for as long as any process keeps it open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// No lock (e.g. `/dev/urandom`).
    None,
    /// `flock(LOCK_SH)`: readers may share (a read-only disk image).
    Shared,
    /// `flock(LOCK_EX)`: one writer only (a writable disk image).
    Exclusive,
}

/// Which types of file a device takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileTypes {
    /// Regular files.
    pub regular: bool,
    /// Block devices.
    pub block_device: bool,
    /// Character devices (`/dev/urandom`).
    pub char_device: bool,
}

impl FileTypes {
    /// A disk image: a regular file or a block device.
    pub const IMAGE: FileTypes = FileTypes {
        regular: true,
        block_device: true,
        char_device: false,
    };
    /// A character device only.
    pub const CHAR_DEVICE: FileTypes = FileTypes {
        regular: false,
        block_device: false,
        char_device: true,
    };

    fn accepts(self, kind: std::fs::FileType) -> bool {
        (self.regular && kind.is_file())
            || (self.block_device && kind.is_block_device())
            || (self.char_device && kind.is_char_device())
    }

    /// `a regular file or a block device`: what the types are, for an error message.
    pub fn expected(self) -> String {
        let names: Vec<&str> = [
            (self.regular, "a regular file"),
            (self.block_device, "a block device"),
            (self.char_device, "a character device"),
        ]
        .into_iter()
        .filter_map(|(yes, name)| yes.then_some(name))
        .collect();
        match names.as_slice() {
            [] => "nothing".to_string(),
            [one] => one.to_string(),
            [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
        }
    }
}

/// One host file a device declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFile {
    /// Where it is.
    pub path: PathBuf,
    /// How it is opened.
    pub access: Access,
    /// The lock taken, without waiting.
    pub lock: Lock,
    /// Opened with `O_DIRECT`.
    pub direct: bool,
    /// The types of file the device takes.
    pub types: FileTypes,
}

impl HostFile {
    /// `/images/disk.img (read-write, O_DIRECT, flock LOCK_EX: no other svmm may open it)`:
    /// the file and how it is opened, as declared.
    pub fn describe(&self) -> String {
        let mut how = vec![match self.access {
            Access::ReadOnly => "read-only",
            Access::ReadWrite => "read-write",
        }];
        if self.direct {
            how.push("O_DIRECT");
        }
        match self.lock {
            Lock::None => {}
            Lock::Shared => how.push("flock LOCK_SH: other readers may share it, no writer"),
            Lock::Exclusive => how.push("flock LOCK_EX: no other svmm may open it"),
        }
        format!("{} ({})", self.path.display(), how.join(", "))
    }
}

/// Refuses, by path, a directory and any file of a type `types` does not include, before it is
/// opened. A path that cannot be looked at is left to the open, which names the error.
fn check_type(path: &Path, types: FileTypes) -> Result<(), ResourceError> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    let kind = meta.file_type();
    if kind.is_dir() {
        return Err(ResourceError::Directory {
            path: path.to_path_buf(),
        });
    }
    if !types.accepts(kind) {
        return Err(ResourceError::WrongType {
            path: path.to_path_buf(),
            expected: types.expected(),
        });
    }
    Ok(())
}

/// Opens `file` as declared: close-on-exec, no controlling terminal, the lock taken at once
/// (a conflicting lock is an error naming the file, never a wait).
pub fn open_host_file(file: &HostFile) -> Result<File, ResourceError> {
    let path = &file.path;
    check_type(path, file.types)?;
    let mut flags = libc::O_CLOEXEC | libc::O_NOCTTY;
    if file.direct {
        flags |= libc::O_DIRECT;
    }
    let opened = OpenOptions::new()
        .read(true)
        .write(file.access == Access::ReadWrite)
        .custom_flags(flags)
        .open(path);
    let opened = match opened {
        Ok(f) => f,
        // A directory opened read-write fails with EISDIR; read-only it opens, caught below.
        Err(e) if e.raw_os_error() == Some(libc::EISDIR) => {
            return Err(ResourceError::Directory { path: path.clone() })
        }
        Err(source) => {
            return Err(ResourceError::Open {
                path: path.clone(),
                source,
            })
        }
    };
    // The path may have changed between the look and the open: check what was opened.
    let kind = opened.metadata().map(|m| m.file_type()).ok();
    if kind.is_some_and(|k| k.is_dir()) {
        return Err(ResourceError::Directory { path: path.clone() });
    }
    if kind.is_some_and(|k| !file.types.accepts(k)) {
        return Err(ResourceError::WrongType {
            path: path.clone(),
            expected: file.types.expected(),
        });
    }
    let operation = match file.lock {
        Lock::None => return Ok(opened),
        Lock::Shared => libc::LOCK_SH,
        Lock::Exclusive => libc::LOCK_EX,
    };
    // SAFETY: flock only reads its two integer arguments; the fd is open and owned by `opened`.
    let rc = unsafe { libc::flock(opened.as_raw_fd(), operation | libc::LOCK_NB) };
    if rc != 0 {
        let source = io::Error::last_os_error();
        return Err(if source.raw_os_error() == Some(libc::EWOULDBLOCK) {
            ResourceError::Locked { path: path.clone() }
        } else {
            ResourceError::Lock {
                path: path.clone(),
                source,
            }
        });
    }
    Ok(opened)
}

/// Opens the directory `path` as `O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC`: an fd that
/// grants nothing by itself, for a worker to act beneath (with Landlock rules on it).
pub fn open_directory(path: &Path) -> Result<OwnedFd, ResourceError> {
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path);
    match opened {
        Ok(dir) => Ok(dir.into()),
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Err(ResourceError::NotADirectory {
            path: path.to_path_buf(),
        }),
        Err(source) => Err(ResourceError::Open {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("broker-res-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn file(path: PathBuf, access: Access, lock: Lock) -> HostFile {
        HostFile {
            path,
            access,
            lock,
            direct: false,
            types: FileTypes::IMAGE,
        }
    }

    #[test]
    fn exclusive_lock_keeps_a_second_opener_out() {
        let dir = temp("excl");
        let img = dir.join("disk.img");
        std::fs::write(&img, [0u8; 512]).unwrap();
        let first = open_host_file(&file(img.clone(), Access::ReadWrite, Lock::Exclusive)).unwrap();
        let err =
            open_host_file(&file(img.clone(), Access::ReadWrite, Lock::Exclusive)).unwrap_err();
        assert!(matches!(err, ResourceError::Locked { .. }), "{err:?}");
        assert!(err.to_string().contains("disk.img"), "{err}");
        let err = open_host_file(&file(img.clone(), Access::ReadOnly, Lock::Shared)).unwrap_err();
        assert!(matches!(err, ResourceError::Locked { .. }), "{err:?}");
        drop(first);
        let a = open_host_file(&file(img.clone(), Access::ReadOnly, Lock::Shared)).unwrap();
        let _b = open_host_file(&file(img.clone(), Access::ReadOnly, Lock::Shared)).unwrap();
        let err = open_host_file(&file(img, Access::ReadWrite, Lock::Exclusive)).unwrap_err();
        assert!(matches!(err, ResourceError::Locked { .. }), "{err:?}");
        drop(a);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn missing_files_directories_and_wrong_types_are_named() {
        let dir = temp("bad");
        let missing = dir.join("nope.img");
        let err = open_host_file(&file(missing, Access::ReadOnly, Lock::None)).unwrap_err();
        assert!(matches!(err, ResourceError::Open { .. }) && err.to_string().contains("nope.img"));
        for access in [Access::ReadOnly, Access::ReadWrite] {
            let err = open_host_file(&file(dir.clone(), access, Lock::None)).unwrap_err();
            assert!(matches!(err, ResourceError::Directory { .. }), "{err:?}");
        }
        // A fifo is refused by its type, never opened (a read-only open would block).
        let fifo = dir.join("fifo");
        let c_fifo = std::ffi::CString::new(fifo.display().to_string()).unwrap();
        // SAFETY: mkfifo reads the NUL-terminated path, which `c_fifo` keeps alive.
        assert_eq!(unsafe { libc::mkfifo(c_fifo.as_ptr(), 0o600) }, 0);
        let err = open_host_file(&file(fifo, Access::ReadOnly, Lock::None)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}/fifo is not a regular file or a block device",
                dir.display()
            )
        );
        // /dev/null is a character device: not an image.
        let err =
            open_host_file(&file("/dev/null".into(), Access::ReadOnly, Lock::None)).unwrap_err();
        assert!(matches!(err, ResourceError::WrongType { .. }), "{err:?}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn read_only_files_cannot_be_written() {
        use std::io::Write;
        let mut null = HostFile {
            types: FileTypes::CHAR_DEVICE,
            ..file("/dev/null".into(), Access::ReadOnly, Lock::None)
        };
        let mut f = open_host_file(&null).unwrap();
        assert!(f.write_all(b"x").is_err());
        null.access = Access::ReadWrite;
        assert!(open_host_file(&null).unwrap().write_all(b"x").is_ok());
    }

    #[test]
    fn descriptions_say_how_a_file_is_opened() {
        let mut f = file("/i/disk.img".into(), Access::ReadWrite, Lock::Exclusive);
        f.direct = true;
        assert_eq!(
            f.describe(),
            "/i/disk.img (read-write, O_DIRECT, flock LOCK_EX: no other svmm may open it)"
        );
        let f = file("/dev/urandom".into(), Access::ReadOnly, Lock::None);
        assert_eq!(f.describe(), "/dev/urandom (read-only)");
        assert_eq!(FileTypes::CHAR_DEVICE.expected(), "a character device");
    }

    #[test]
    fn directories_open_as_path_fds() {
        let dir = temp("dir");
        let fd = open_directory(&dir).unwrap();
        // SAFETY: F_GETFL on an fd we own.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
        assert_ne!(flags & libc::O_PATH, 0);
        let plain = dir.join("plain");
        std::fs::write(&plain, b"x").unwrap();
        assert!(matches!(
            open_directory(&plain),
            Err(ResourceError::NotADirectory { .. })
        ));
        // A symlink to a directory is refused (O_NOFOLLOW): the user names the directory.
        let link = dir.join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(open_directory(&link).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
