//! What a worker is given, made before it exists: its host resources and its kernel objects.
//!
//! A device kind declares its host resources as a list of [`HostResource`]s; the broker opens
//! them in the VMM's context, before any worker exists and before confinement ([`open`]), and
//! the worker inherits the fds, in the declared order. The kinds of resource:
//!
//! | variant | what svmm makes | fd for the worker |
//! |---|---|---|
//! | [`HostResource::File`] | opens a path with an access mode, `flock`, `O_DIRECT` ([`HostFile`]) | the file |
//! | [`HostResource::Directory`] | opens a directory `O_PATH \| O_DIRECTORY \| O_NOFOLLOW` | the directory (Landlock rules go beneath it) |
//! | [`HostResource::Custom`] | whatever the kind's own opener makes (net: a tap queue via `/dev/net/tun` + `TUNSETIFF`) | the opener's fd |
//! | [`HostResource::Inherited`] | duplicates an fd svmm inherited from its caller (`fd=N`) | the duplicate |
//! | [`HostResource::Helper`] | a socketpair and a helper process on one end (net: `passt`), killed and reaped with the device | svmm's end |
//! | [`HostResource::SocketPath`] | nothing at start: svmm connects to the path later, on the worker's request | none |
//!
//! It also creates the worker's channels ([`DeviceFds`]: the control socketpair, the irqfd,
//! the stop eventfd and one notification eventfd per queue). The VMM binds the eventfds to KVM
//! (irqfd, ioeventfd) and hands the worker its ends; the worker never opens anything.
//!
//! Which resources a device needs is the device kind's declaration; the broker never matches
//! on device types.

mod file;
mod helper;

use std::fmt;
use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;

use ipc::Channel;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use file::{open_directory, open_host_file, Access, FileTypes, HostFile, Lock};
pub use helper::{HelperProcess, HelperSpec, SocketKind};

/// Who named a resource: the user (on the command line: their mistake is bad input, exit 65)
/// or the device kind itself (a host problem).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The user named it (`blk=PATH`, `fs=DIR`, `fd=N`).
    User,
    /// The kind needs it whatever the user says (`/dev/urandom`).
    Kind,
}

/// A kind's own way to make one fd in svmm, before any worker exists (net: a tap queue).
#[derive(Clone)]
pub struct CustomOpener {
    /// What the fd is, for `--print-sandbox` (`tap0, queue pair 0 (/dev/net/tun, ...)`).
    pub what: String,
    /// Makes the fd. Runs in svmm's context, unconfined, before any worker exists.
    pub open: Arc<dyn Fn() -> io::Result<OwnedFd> + Send + Sync>,
}

impl fmt::Debug for CustomOpener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CustomOpener({:?})", self.what)
    }
}

impl PartialEq for CustomOpener {
    fn eq(&self, other: &Self) -> bool {
        self.what == other.what && Arc::ptr_eq(&self.open, &other.open)
    }
}

/// One host resource a device kind declares.
#[derive(Debug, Clone, PartialEq)]
pub enum HostResource {
    /// A file opened as declared.
    File {
        /// The file and how to open it.
        file: HostFile,
        /// Who named it.
        origin: Origin,
    },
    /// A directory, opened `O_PATH | O_DIRECTORY | O_NOFOLLOW` (no rights by itself).
    Directory {
        /// The directory.
        path: PathBuf,
        /// Who named it.
        origin: Origin,
    },
    /// An fd the kind's own opener makes in svmm.
    Custom(CustomOpener),
    /// An fd svmm inherited from its caller, duplicated for the worker (the user named it).
    Inherited {
        /// Its number in svmm.
        fd: RawFd,
    },
    /// One end of a socketpair whose other end goes to a helper process svmm starts, and kills
    /// and reaps with the device.
    Helper(HelperSpec),
    /// A socket svmm connects to later, when the worker asks; no fd at start.
    SocketPath {
        /// The socket.
        path: PathBuf,
    },
}

impl HostResource {
    /// Who named it (a [`HostResource::Custom`] or helper is the kind's).
    pub fn origin(&self) -> Origin {
        match self {
            HostResource::File { origin, .. } | HostResource::Directory { origin, .. } => *origin,
            HostResource::Inherited { .. } | HostResource::SocketPath { .. } => Origin::User,
            HostResource::Custom(_) | HostResource::Helper(_) => Origin::Kind,
        }
    }

    /// Whether the worker inherits an fd for it (all but [`HostResource::SocketPath`]).
    pub fn has_fd(&self) -> bool {
        !matches!(self, HostResource::SocketPath { .. })
    }

    /// What it is and how it is opened, for `--print-sandbox` and errors.
    pub fn describe(&self) -> String {
        match self {
            HostResource::File { file, .. } => file.describe(),
            HostResource::Directory { path, .. } => format!(
                "{} (directory, O_PATH: no access by itself, only what Landlock grants beneath \
                 it)",
                path.display()
            ),
            HostResource::Custom(opener) => opener.what.clone(),
            HostResource::Inherited { fd } => format!("svmm's fd {fd}, inherited from its caller"),
            HostResource::Helper(helper) => helper.describe(),
            HostResource::SocketPath { path } => format!(
                "connections to {}, made by svmm when the worker asks",
                path.display()
            ),
        }
    }

    /// Opens (or makes) the resource in the VMM's context.
    pub fn open(&self) -> Result<OpenedResource, ResourceError> {
        self.open_as(None)
    }

    /// [`HostResource::open`], a helper process started as `helper_user` (uid, gid) when
    /// given (see [`HelperSpec::start_as`]).
    pub fn open_as(
        &self,
        helper_user: Option<(u32, u32)>,
    ) -> Result<OpenedResource, ResourceError> {
        let fd = match self {
            HostResource::File { file, .. } => Some(open_host_file(file)?.into()),
            HostResource::Directory { path, .. } => Some(open_directory(path)?),
            HostResource::Custom(opener) => {
                let fd = (opener.open)().map_err(|source| ResourceError::Custom {
                    what: opener.what.clone(),
                    source,
                })?;
                Some(fd)
            }
            HostResource::Inherited { fd } => Some(duplicate_inherited(*fd)?),
            HostResource::Helper(helper) => {
                let (fd, process) = helper.start_as(helper_user)?;
                return Ok(OpenedResource {
                    fd: Some(fd),
                    helper: Some(process),
                });
            }
            HostResource::SocketPath { .. } => None,
        };
        Ok(OpenedResource { fd, helper: None })
    }
}

/// A resource as [`HostResource::open`] made it.
#[derive(Debug)]
pub struct OpenedResource {
    /// The fd the worker gets (none for a socket path).
    pub fd: Option<OwnedFd>,
    /// The helper process on the other end, killed and reaped when this is dropped.
    pub helper: Option<HelperProcess>,
}

/// Opens every resource of `declared`, in order. On an error the ones opened so far are
/// closed (and their helpers killed).
pub fn open(declared: &[HostResource]) -> Result<Vec<OpenedResource>, ResourceError> {
    declared.iter().map(HostResource::open).collect()
}

/// A close-on-exec duplicate of `fd`, which svmm's caller passed it; refused if it is not open.
fn duplicate_inherited(fd: RawFd) -> Result<OwnedFd, ResourceError> {
    if fd < 0 {
        return Err(ResourceError::NotInherited {
            fd,
            source: io::Error::from_raw_os_error(libc::EBADF),
        });
    }
    // SAFETY: F_DUPFD_CLOEXEC only reads `fd` (any number is safe to ask about) and returns a
    // new fd or -1.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if dup < 0 {
        return Err(ResourceError::NotInherited {
            fd,
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: `dup` was just created by fcntl and is owned by nothing else.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(dup) })
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
    /// The path names a directory where a file is expected.
    #[error("{} is a directory", path.display())]
    Directory {
        /// The file.
        path: PathBuf,
    },
    /// The path names something other than a directory where one is expected.
    #[error("{} is not a directory", path.display())]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// The file is of a type the device does not take (a fifo where an image is expected).
    #[error("{} is not {expected}", path.display())]
    WrongType {
        /// The file.
        path: PathBuf,
        /// What it should be.
        expected: String,
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
    /// The kind's own opener failed.
    #[error("cannot open {what}")]
    Custom {
        /// What it was to open.
        what: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// An fd svmm was told it inherited is not open.
    #[error("fd {fd} is not open in svmm (it must be passed by svmm's caller)")]
    NotInherited {
        /// The fd number.
        fd: RawFd,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A helper process could not be started.
    #[error("cannot start the helper process {}", program.display())]
    Helper {
        /// The program.
        program: PathBuf,
        /// Why.
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

impl ResourceError {
    /// Whether the user's input is at fault when the user named the resource: it is missing,
    /// unreadable, of the wrong type or not open — not a lock someone else holds, nor a host
    /// resource that failed.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            ResourceError::Open { .. }
                | ResourceError::Directory { .. }
                | ResourceError::NotADirectory { .. }
                | ResourceError::WrongType { .. }
                | ResourceError::NotInherited { .. }
        )
    }
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

    #[test]
    fn device_fds_have_one_eventfd_per_queue() {
        let fds = DeviceFds::new(3).unwrap();
        assert_eq!(fds.queue_events.len(), 3);
        fds.irqfd.write(1).unwrap();
        assert_eq!(fds.irqfd.read().unwrap(), 1);
    }

    #[test]
    fn every_variant_opens_or_names_its_problem() {
        let opener = CustomOpener {
            what: "a test pipe".into(),
            open: Arc::new(|| std::fs::File::open("/dev/null").map(OwnedFd::from)),
        };
        let failing = CustomOpener {
            what: "a tap that is not there".into(),
            open: Arc::new(|| Err(io::Error::from_raw_os_error(libc::ENODEV))),
        };
        let stdin_dup = HostResource::Inherited { fd: 0 };
        let socket = HostResource::SocketPath {
            path: "/run/user/0/wayland-0".into(),
        };
        let opened = open(&[HostResource::Custom(opener), stdin_dup, socket.clone()]).unwrap();
        assert!(opened[0].fd.is_some() && opened[1].fd.is_some());
        assert!(opened[2].fd.is_none(), "a socket path has no fd at start");
        assert!(!socket.has_fd());
        assert_eq!(socket.origin(), Origin::User);

        let err = HostResource::Custom(failing).open().unwrap_err();
        assert_eq!(err.to_string(), "cannot open a tap that is not there");
        assert!(!err.is_bad_input());
        let err = HostResource::Inherited { fd: 999 }.open().unwrap_err();
        assert!(err.is_bad_input() && err.to_string().starts_with("fd 999 is not open"));
        let dir = HostResource::Directory {
            path: "/".into(),
            origin: Origin::User,
        };
        assert!(dir.open().unwrap().fd.is_some());
        assert!(dir.describe().starts_with("/ (directory, O_PATH"));
    }

    #[test]
    fn a_lock_is_not_bad_input() {
        let path = PathBuf::from("/x");
        assert!(!ResourceError::Locked { path: path.clone() }.is_bad_input());
        assert!(ResourceError::Directory { path }.is_bad_input());
    }
}
