//! The host side of a net device, run in svmm before any worker exists (the worker never opens
//! anything): attaching to a tap, starting passt on one end of a socketpair, checking an fd
//! handed in by the caller. Each failure is one line that names what is wrong and how to fix
//! it.
//!
//! - **tap** (`tap=NAME`): the interface must exist and be a tap (`/sys/class/net/NAME/tun_flags`
//!   says so; svmm never creates one: `ip tuntap add dev NAME mode tap vnet_hdr [multi_queue]
//!   [user U]` is the user's job). Per queue pair one `/dev/net/tun` fd, non-blocking, attached
//!   with `TUNSETIFF(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR [| IFF_MULTI_QUEUE])`, checked with
//!   `TUNGETIFF` (another process may have attached the queues before us without a vnet
//!   header), and given a 12-byte header (`TUNSETVNETHDRSZ`).
//! - **passt** (`passt`): found on `PATH` here ([`find_passt`]); the broker makes a stream
//!   socketpair and runs `passt --foreground --quiet --fd N --mtu MTU` as svmm's child with
//!   the other end as fd N (`broker::HelperSpec`), kills and reaps it with the device; the
//!   device speaks the stream framing on its end.
//! - **fd=N**: an inherited fd, either a connected stream socket (the same framing) or a tap
//!   queue fd attached with `IFF_VNET_HDR`; made non-blocking, a tap's header size set to 12.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{fcntl_getfl, fcntl_setfl, fstat, FileType, OFlags};

use super::sys::{self, IFF_MULTI_QUEUE, IFF_NO_PI, IFF_TAP, IFF_VNET_HDR, IFNAMSIZ};
use super::HDR_LEN;

/// The tun/tap clone device.
const TUN_DEVICE: &str = "/dev/net/tun";

/// What an fd handed in with `fd=N` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdKind {
    /// A tap queue fd with a vnet header.
    Tap,
    /// A connected stream socket.
    Stream,
}

/// Why the host side of a net device could not be set up. `Display` is the one line svmm
/// prints (after the device's name).
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// `tap=` names nothing.
    #[error("there is no network interface '{0}' (create the tap first: ip tuntap add dev {0} mode tap vnet_hdr)")]
    NoSuchTap(String),
    /// The interface is not a tap (a tun, or not tun/tap at all).
    #[error("network interface '{0}' is not a tap (tun/tap flags {1})")]
    NotATap(String, String),
    /// `queues=N > 1` on a tap without `multi_queue`, or 1 on one with it.
    #[error("tap '{name}' was created without multi_queue, but queues={queues} needs it (ip tuntap add ... multi_queue)")]
    MultiQueue {
        /// The tap.
        name: String,
        /// Queue pairs asked for.
        queues: u16,
    },
    /// `TUNSETIFF` refused the flags: a tun, or a multi-queue setting that does not fit.
    #[error("'{name}' refused to attach as a tap with a vnet header{}: is it a tap (not a tun), created with multi_queue if queues>1?", if *.queues > 1 { format!(" and {queues} queues") } else { String::new() })]
    Mismatch {
        /// The tap.
        name: String,
        /// Queue pairs asked for.
        queues: u16,
    },
    /// Not allowed to attach (owner/group, no `CAP_NET_ADMIN`) or to open `/dev/net/tun`.
    #[error("no permission to attach to tap '{0}' (it must belong to svmm's user or group: ip tuntap add ... user USER, or run as root)")]
    Permission(String),
    /// Another process holds the (single-queue) tap, or all its queues.
    #[error("tap '{0}' is busy: another process is attached to it")]
    Busy(String),
    /// The attached tap has no vnet header (its queues were attached without one).
    #[error("tap '{0}' has no vnet header (recreate it with vnet_hdr, and detach the other processes using it)")]
    NoVnetHdr(String),
    /// A name that cannot be an interface name.
    #[error("'{0}' is not an interface name (1 to {max} bytes, no '/', no NUL)", max = IFNAMSIZ - 1)]
    BadName(String),
    /// Another tap ioctl or `/dev/net/tun` failed.
    #[error("tap '{name}': {what} failed")]
    Tap {
        /// The tap.
        name: String,
        /// What was attempted.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// No `passt` on `PATH`.
    #[error("passt is not installed (not found on PATH): install it, e.g. apt-get install passt, or use tap= or fd=")]
    NoPasst,
    /// `fd=N` is not open.
    #[error("fd {0} is not open")]
    FdNotOpen(i32),
    /// `fd=N` is neither a tap with a vnet header nor a stream socket.
    #[error("fd {0} is neither a connected stream socket nor a tap queue fd with a vnet header")]
    FdKind(i32),
    /// Setting up `fd=N` failed.
    #[error("fd {fd}: {what} failed")]
    Fd {
        /// The fd.
        fd: i32,
        /// What was attempted.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Checks an interface name the way the kernel will.
pub fn check_name(name: &str) -> Result<(), OpenError> {
    let ok = !name.is_empty()
        && name.len() < IFNAMSIZ
        && !name.contains(['/', '\0'])
        && !name.chars().any(char::is_whitespace)
        && name != "."
        && name != "..";
    if ok {
        Ok(())
    } else {
        Err(OpenError::BadName(name.to_owned()))
    }
}

/// The index of interface `name` in svmm's network namespace (`SIOCGIFINDEX` on a socket,
/// which always asks the caller's namespace).
fn ifindex(name: &str) -> Result<u32, OpenError> {
    use rustix::net::{netdevice, socket, AddressFamily, SocketType};
    let sock =
        socket(AddressFamily::INET, SocketType::DGRAM, None).map_err(|e| OpenError::Tap {
            name: name.to_owned(),
            what: "socket for SIOCGIFINDEX",
            source: e.into(),
        })?;
    netdevice::name_to_index(&sock, name).map_err(|_| OpenError::NoSuchTap(name.to_owned()))
}

/// The interface's tun/tap flags from sysfs, when the sysfs at `/sys` is this network
/// namespace's (its `ifindex` for `name` is ours): `Ok(None)` if that cannot be told (sysfs
/// mounted for another namespace), `Err` if the interface is no tun/tap device at all.
fn sysfs_tun_flags(name: &str, index: u32) -> Result<Option<i16>, OpenError> {
    let net = Path::new("/sys/class/net").join(name);
    let same = std::fs::read_to_string(net.join("ifindex"))
        .is_ok_and(|t| t.trim().parse::<u32>() == Ok(index));
    if !same {
        return Ok(None);
    }
    let text = std::fs::read_to_string(net.join("tun_flags"))
        .map_err(|_| OpenError::NotATap(name.to_owned(), "none: not a tun/tap device".into()))?;
    let hex = text.trim().trim_start_matches("0x");
    u16::from_str_radix(hex, 16)
        .map(|v| Some(v as i16))
        .map_err(|_| OpenError::NotATap(name.to_owned(), text.trim().to_owned()))
}

/// Attaches one queue fd to the tap `name`, for a device of `pairs` queue pairs (see the module
/// docs): call it once per pair.
pub fn open_tap_queue(name: &str, pairs: u16) -> Result<OwnedFd, OpenError> {
    check_name(name)?;
    let index = ifindex(name)?;
    // Without a sysfs for this namespace, a tun (or a multi-queue mismatch) shows up as
    // TUNSETIFF's EINVAL below instead.
    let flags = sysfs_tun_flags(name, index)?.unwrap_or(IFF_TAP | IFF_MULTI_QUEUE);
    if flags & IFF_TAP == 0 {
        return Err(OpenError::NotATap(name.to_owned(), format!("{flags:#x}")));
    }
    let multi = flags & IFF_MULTI_QUEUE != 0;
    if !multi && pairs > 1 {
        return Err(OpenError::MultiQueue {
            name: name.to_owned(),
            queues: pairs,
        });
    }
    let mut attach = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    if multi {
        attach |= IFF_MULTI_QUEUE;
    }
    let tap_err = |what, source| OpenError::Tap {
        name: name.to_owned(),
        what,
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(TUN_DEVICE)
        .map_err(|e| match e.kind() {
            io::ErrorKind::PermissionDenied => OpenError::Permission(name.to_owned()),
            _ => tap_err("opening /dev/net/tun", e),
        })?;
    let fd = OwnedFd::from(file);
    sys::set_iff(fd.as_fd(), name, attach).map_err(|e| match e.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => OpenError::Permission(name.to_owned()),
        Some(libc::EBUSY) => OpenError::Busy(name.to_owned()),
        Some(libc::EINVAL) => OpenError::Mismatch {
            name: name.to_owned(),
            queues: pairs,
        },
        _ => tap_err("TUNSETIFF", e),
    })?;
    check_vnet_tap(fd.as_fd()).map_err(|e| match e {
        Some(e) => tap_err("TUNGETIFF", e),
        None => OpenError::NoVnetHdr(name.to_owned()),
    })?;
    sys::set_vnet_hdr_size(fd.as_fd(), HDR_LEN as i32)
        .map_err(|e| tap_err("TUNSETVNETHDRSZ", e))?;
    Ok(fd)
}

/// `Ok` if the attached fd is a tap with a vnet header; `Err(None)` if it lacks either.
fn check_vnet_tap(fd: BorrowedFd<'_>) -> Result<(), Option<io::Error>> {
    let flags = sys::get_iff_flags(fd).map_err(Some)?;
    if flags & IFF_TAP != 0 && flags & IFF_VNET_HDR != 0 {
        Ok(())
    } else {
        Err(None)
    }
}

/// `passt` on `PATH`.
pub fn find_passt() -> Result<PathBuf, OpenError> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join("passt"))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or(OpenError::NoPasst)
}

/// Checks and prepares an fd handed in with `fd=N` (svmm owns it from here on).
pub fn adopt_fd(fd: OwnedFd) -> Result<(OwnedFd, FdKind), OpenError> {
    let n = fd.as_raw_fd();
    let stat = fstat(&fd).map_err(|_| OpenError::FdNotOpen(n))?;
    let kind = match FileType::from_raw_mode(stat.st_mode) {
        FileType::Socket => {
            let ty = rustix::net::sockopt::socket_type(&fd).map_err(|e| OpenError::Fd {
                fd: n,
                what: "getsockopt(SO_TYPE)",
                source: e.into(),
            })?;
            if ty != rustix::net::SocketType::STREAM {
                return Err(OpenError::FdKind(n));
            }
            FdKind::Stream
        }
        FileType::CharacterDevice => {
            check_vnet_tap(fd.as_fd()).map_err(|_| OpenError::FdKind(n))?;
            sys::set_vnet_hdr_size(fd.as_fd(), HDR_LEN as i32).map_err(|e| OpenError::Fd {
                fd: n,
                what: "TUNSETVNETHDRSZ",
                source: e,
            })?;
            FdKind::Tap
        }
        _ => return Err(OpenError::FdKind(n)),
    };
    let flags = fcntl_getfl(&fd).map_err(|e| OpenError::Fd {
        fd: n,
        what: "fcntl(F_GETFL)",
        source: e.into(),
    })?;
    fcntl_setfl(&fd, flags | OFlags::NONBLOCK).map_err(|e| OpenError::Fd {
        fd: n,
        what: "fcntl(F_SETFL, O_NONBLOCK)",
        source: e.into(),
    })?;
    Ok((fd, kind))
}
