//! What a worker is given, made before it exists: its host files and its kernel objects.
//!
//! The broker opens every host resource a device declares ([`HostFile`]: a path, read-only or
//! read-write, and the `flock` that keeps two VMs off one image) in the VMM's context, before
//! confinement, and creates the worker's channels ([`DeviceFds`]: the control socketpair, the
//! irqfd, the stop eventfd and one notification eventfd per queue). The VMM binds the eventfds
//! to KVM (irqfd, ioeventfd) and hands the worker its ends; the worker never opens anything.
//!
//! Which files a device needs is the device kind's declaration; the broker never matches on
//! device types.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use ipc::Channel;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

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
}

/// Why a host resource or a worker fd could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    /// open(2) failed.
    #[error("cannot open {}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The path names a directory.
    #[error("{} is a directory", path.display())]
    Directory {
        /// The file.
        path: PathBuf,
    },
    /// Another process holds a conflicting lock.
    #[error("{} is in use by another process (it holds a lock on it)", path.display())]
    Locked {
        /// The file.
        path: PathBuf,
    },
    /// flock(2) failed for another reason.
    #[error("cannot lock {}", path.display())]
    Lock {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// An eventfd could not be created.
    #[error("cannot create an eventfd")]
    EventFd(#[source] io::Error),
    /// The control socketpair could not be created.
    #[error("cannot create the control channel")]
    Channel(#[source] ipc::ChannelError),
}

/// Opens `file` as declared: close-on-exec, no controlling terminal, the lock taken at once
/// (a conflicting lock is an error naming the file, never a wait).
pub fn open_host_file(file: &HostFile) -> Result<File, ResourceError> {
    let path = &file.path;
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
    let is_dir = opened.metadata().map(|m| m.is_dir()).unwrap_or(false);
    if is_dir {
        return Err(ResourceError::Directory { path: path.clone() });
    }
    let operation = match file.lock {
        Lock::None => return Ok(opened),
        Lock::Shared => libc::LOCK_SH,
        Lock::Exclusive => libc::LOCK_EX,
    };
    use std::os::fd::AsRawFd;
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

/// The kernel objects between a VMM and one device worker. The VMM keeps `vmm` and registers
/// `irqfd` and `queue_events` with KVM; the worker gets `worker` and duplicates of the rest.
pub struct DeviceFds {
    /// The VMM's end of the control channel.
    pub vmm: Channel,
    /// The worker's end of the control channel.
    pub worker: Channel,
    /// Written by the worker to interrupt the guest (KVM irqfd).
    pub irqfd: EventFd,
    /// Readable = the worker stops serving (used for in-process devices).
    pub stop: EventFd,
    /// One per queue, in queue order: signalled by KVM when the guest notifies (ioeventfd).
    pub queue_events: Vec<EventFd>,
}

impl DeviceFds {
    /// Creates the channel and eventfds (all non-blocking, close-on-exec) of a device with
    /// `num_queues` queues.
    pub fn new(num_queues: u16) -> Result<DeviceFds, ResourceError> {
        let eventfd = || EventFd::new(EFD_NONBLOCK).map_err(ResourceError::EventFd);
        let (vmm, worker) = Channel::pair().map_err(ResourceError::Channel)?;
        Ok(DeviceFds {
            vmm,
            worker,
            irqfd: eventfd()?,
            stop: eventfd()?,
            queue_events: (0..num_queues)
                .map(|_| eventfd())
                .collect::<Result<_, _>>()?,
        })
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
    fn missing_files_and_directories_are_named() {
        let dir = temp("bad");
        let missing = dir.join("nope.img");
        let err = open_host_file(&file(missing, Access::ReadOnly, Lock::None)).unwrap_err();
        assert!(matches!(err, ResourceError::Open { .. }) && err.to_string().contains("nope.img"));
        for access in [Access::ReadOnly, Access::ReadWrite] {
            let err = open_host_file(&file(dir.clone(), access, Lock::None)).unwrap_err();
            assert!(matches!(err, ResourceError::Directory { .. }), "{err:?}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn read_only_files_cannot_be_written() {
        use std::io::Write;
        let mut f =
            open_host_file(&file("/dev/null".into(), Access::ReadOnly, Lock::None)).unwrap();
        assert!(f.write_all(b"x").is_err());
    }

    #[test]
    fn device_fds_have_one_eventfd_per_queue() {
        let fds = DeviceFds::new(3).unwrap();
        assert_eq!(fds.queue_events.len(), 3);
        fds.irqfd.write(1).unwrap();
        assert_eq!(fds.irqfd.read().unwrap(), 1);
    }
}
