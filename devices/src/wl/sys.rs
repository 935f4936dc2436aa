//! The host calls of virtio-wl, in one place (each one is a line of the `wl` seccomp profile):
//! sealed memfds, pipes, non-blocking mode, classifying an fd the compositor sent, and moving
//! bytes with `SCM_RIGHTS` over a context connection.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{FileType, MemfdFlags, OFlags, SealFlags};
use rustix::io::{Errno, IoSlice, IoSliceMut};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use rustix::pipe::PipeFlags;

use super::MAX_SEND_VFDS;

/// Bytes of `SCM_RIGHTS` control buffer for [`MAX_SEND_VFDS`] descriptors.
const CMSG_SPACE: usize = rustix::cmsg_space!(ScmRights(MAX_SEND_VFDS));

/// Seals of every memfd the device makes: no shrinking (which would make the compositor and
/// KVM fault on the mapping), no growing, no further seals.
const SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

/// A new memfd of `size` bytes, sealed against shrinking and growing.
pub fn sealed_memfd(size: u64) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create("svmm-wl", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    rustix::fs::ftruncate(&fd, size)?;
    rustix::fs::fcntl_add_seals(&fd, SEALS)?;
    Ok(fd)
}

/// A pipe: `(local, remote)`. If `guest_reads`, the device keeps the read end and the remote
/// end is the write end (for the compositor); otherwise the other way round. The local end is
/// non-blocking; the remote end's mode is left to whoever gets it.
pub fn pipe(guest_reads: bool) -> io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
    let (local, remote) = if guest_reads {
        (read, write)
    } else {
        (write, read)
    };
    set_nonblocking(&local)?;
    Ok((local, remote))
}

/// Sets `O_NONBLOCK` on `fd`'s open file description.
pub fn set_nonblocking(fd: impl AsFd) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(&fd)?;
    rustix::fs::fcntl_setfl(&fd, flags | OFlags::NONBLOCK)?;
    Ok(())
}

/// What an fd from the compositor is.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// A memfd, sealed against shrinking (the seal is added if it was missing), `size` bytes.
    Shm {
        /// Its size (`st_size`).
        size: u64,
        /// Open for writing and not write-sealed: the guest may write the mapping.
        writable: bool,
    },
    /// A pipe end, now non-blocking. `guest_reads`: it is a read end.
    Pipe {
        /// The guest reads from it (a read end); otherwise it writes to it.
        guest_reads: bool,
    },
}

/// Why an fd from the compositor is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not a memfd or a pipe (a socket, a directory, a device, a plain file).
    #[error("fd of an unsupported type")]
    Type,
    /// A memfd that cannot be sealed against shrinking (`F_SEAL_SEAL` set without it).
    #[error("memfd cannot be sealed against shrinking")]
    Unsealable,
    /// A pipe end open for both reading and writing (only possible by reopening it).
    #[error("pipe open read-write")]
    PipeMode,
    /// `fstat` or `fcntl` failed.
    #[error("cannot inspect fd: {0}")]
    Inspect(Errno),
}

/// Finds out what `fd` is and prepares it for use as a vfd (seal, non-blocking).
pub fn classify(fd: BorrowedFd<'_>) -> Result<Received, Refused> {
    let stat = rustix::fs::fstat(fd).map_err(Refused::Inspect)?;
    let access = rustix::fs::fcntl_getfl(fd).map_err(Refused::Inspect)? & OFlags::RWMODE;
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => {
            // Only shmem files have seals; other files fail here and are refused.
            let mut seals = rustix::fs::fcntl_get_seals(fd).map_err(|_| Refused::Type)?;
            if !seals.contains(SealFlags::SHRINK) {
                if seals.contains(SealFlags::SEAL) {
                    return Err(Refused::Unsealable);
                }
                rustix::fs::fcntl_add_seals(fd, SealFlags::SHRINK)
                    .map_err(|_| Refused::Unsealable)?;
                seals |= SealFlags::SHRINK;
            }
            let write_sealed = seals.intersects(SealFlags::WRITE | SealFlags::FUTURE_WRITE);
            Ok(Received::Shm {
                size: u64::try_from(stat.st_size).unwrap_or(0),
                writable: access == OFlags::RDWR && !write_sealed,
            })
        }
        FileType::Fifo => {
            let guest_reads = if access == OFlags::RDONLY {
                true
            } else if access == OFlags::WRONLY {
                false
            } else {
                return Err(Refused::PipeMode);
            };
            set_nonblocking(fd)
                .map_err(|e| Refused::Inspect(Errno::from_io_error(&e).unwrap_or(Errno::INVAL)))?;
            Ok(Received::Pipe { guest_reads })
        }
        _ => Err(Refused::Type),
    }
}

/// Sends `data` with `fds` on a (non-blocking) stream socket. Returns the bytes sent (the fds
/// went with the first byte); `WouldBlock` if nothing was sent.
pub fn send_with_fds(
    socket: BorrowedFd<'_>,
    data: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    let mut space = [MaybeUninit::uninit(); CMSG_SPACE];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::from_raw_os_error(
            Errno::TOOMANYREFS.raw_os_error(),
        ));
    }
    let iov = [IoSlice::new(data)];
    loop {
        match rustix::net::sendmsg(socket, &iov, &mut control, SendFlags::NOSIGNAL) {
            Err(Errno::INTR) => continue,
            result => return result.map_err(io::Error::from),
        }
    }
}

/// What one receive from a context brought.
#[derive(Debug)]
pub struct Arrived {
    /// Bytes received into the buffer (0 with no fds: the peer closed).
    pub len: usize,
    /// The fds that came along (close-on-exec).
    pub fds: Vec<OwnedFd>,
    /// The peer sent more fds than fit: the kernel closed the rest.
    pub fds_lost: bool,
}

/// Receives into `buf` from a (non-blocking) stream socket, with up to [`MAX_SEND_VFDS`] fds.
pub fn recv_with_fds(socket: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Arrived> {
    let mut space = [MaybeUninit::uninit(); CMSG_SPACE];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = loop {
        match rustix::net::recvmsg(
            socket,
            &mut [IoSliceMut::new(buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Err(Errno::INTR) => continue,
            result => break result?,
        }
    };
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(arrived) = message {
            fds.extend(arrived);
        }
    }
    Ok(Arrived {
        len: received.bytes,
        fds,
        fds_lost: received.flags.contains(ReturnFlags::CTRUNC),
    })
}

/// Reads from a non-blocking fd (a pipe end).
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match rustix::io::read(fd, &mut *buf) {
            Err(Errno::INTR) => continue,
            result => return result.map_err(io::Error::from),
        }
    }
}

/// Writes to a non-blocking fd (a pipe end).
pub fn write(fd: BorrowedFd<'_>, data: &[u8]) -> io::Result<usize> {
    loop {
        match rustix::io::write(fd, data) {
            Err(Errno::INTR) => continue,
            result => return result.map_err(io::Error::from),
        }
    }
}
