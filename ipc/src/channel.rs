//! The control socket: one `SOCK_SEQPACKET` AF_UNIX socket per worker, one message per packet,
//! up to [`MAX_FDS`] file descriptors alongside via `SCM_RIGHTS`.
//!
//! SEQPACKET keeps message boundaries (no framing, no partial reads) and reports a closed peer
//! as a zero-length read. A received packet is trusted for nothing: it must fit the receive
//! buffer ([`MAX_MESSAGE_SIZE`]), carry at most [`MAX_FDS`] fds, and decode as exactly one
//! message. Every fd that arrives is owned (`OwnedFd`, close-on-exec) from the moment `recvmsg`
//! returns, so any error path closes it: a hostile peer cannot make the receiver leak fds.
//!
//! All the syscalls go through rustix's safe wrappers; this module has no `unsafe`.

use crate::codec::{self, CodecError, MAX_MESSAGE_SIZE};
use bincode::{Decode, Encode};
use rustix::io::{Errno, IoSlice, IoSliceMut};
use rustix::net::{
    recvmsg, sendmsg, socketpair, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage,
    RecvFlags, ReturnFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags,
    SocketType,
};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

/// Most file descriptors one message may carry: a broker `Start` carries a device's
/// guest-facing fds (guest RAM, status page, irqfd, stop eventfd and up to 16 queue eventfds).
/// Worker control messages carry none.
pub const MAX_FDS: usize = 32;

/// Bytes of `recvmsg`/`sendmsg` control buffer for [`MAX_FDS`] descriptors.
const CMSG_SPACE: usize = rustix::cmsg_space!(ScmRights(MAX_FDS));

/// Why a message could not be sent or received.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The other end closed its socket (zero-length read, `EPIPE` or `ECONNRESET`).
    #[error("peer closed the channel")]
    PeerGone,
    /// The socket is non-blocking and no packet is waiting (or the send buffer is full).
    #[error("operation would block")]
    WouldBlock,
    /// A message with more than [`MAX_FDS`] descriptors, refused before sending or on receipt.
    #[error("{count} fds in one message, at most {MAX_FDS} allowed")]
    TooManyFds {
        /// Descriptors in the message.
        count: usize,
    },
    /// The peer attached more descriptors than fit the receive buffer (`MSG_CTRUNC`).
    #[error("control data truncated: peer sent more than {MAX_FDS} fds")]
    ControlTruncated,
    /// The packet was longer than [`MAX_MESSAGE_SIZE`] (`MSG_TRUNC`).
    #[error("packet of {len} bytes exceeds the {MAX_MESSAGE_SIZE}-byte limit")]
    Oversized {
        /// Length of the packet as sent.
        len: usize,
    },
    /// The peer attached fds to a message received with [`Channel::recv_without_fds`]: there
    /// was no room for them, so the kernel discarded them (`MSG_CTRUNC`) instead of installing
    /// them in this process.
    #[error("the peer attached fds to a message that takes none (discarded unopened)")]
    FdsDiscarded,
    /// Ancillary data other than `SCM_RIGHTS` arrived.
    #[error("unexpected ancillary message")]
    UnexpectedControlMessage,
    /// The message carried a different number of descriptors than the caller requires.
    #[error("expected {expected} fds, received {received}")]
    WrongFdCount {
        /// What the caller requires.
        expected: usize,
        /// What arrived (now closed).
        received: usize,
    },
    /// `sendmsg` accepted only part of the packet.
    #[error("sent {sent} of {len} bytes")]
    ShortSend {
        /// Bytes accepted.
        sent: usize,
        /// Packet length.
        len: usize,
    },
    /// The fd handed to [`Channel::try_from_fd`] is not a `SOCK_SEQPACKET` socket.
    #[error("not a SOCK_SEQPACKET socket")]
    NotSeqpacket,
    /// The message could not be encoded, or the packet is not a valid message.
    #[error("bad message")]
    Codec(#[from] CodecError),
    /// A socket syscall failed.
    #[error("{op} failed")]
    Io {
        /// The syscall.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl ChannelError {
    fn io(op: &'static str, errno: Errno) -> Self {
        match errno {
            Errno::AGAIN => ChannelError::WouldBlock,
            Errno::PIPE | Errno::CONNRESET => ChannelError::PeerGone,
            errno => ChannelError::Io {
                op,
                source: errno.into(),
            },
        }
    }
}

/// One end of a control channel.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

impl Channel {
    /// A connected pair of close-on-exec SEQPACKET sockets: one for the VMM, one for the worker.
    pub fn pair() -> Result<(Channel, Channel), ChannelError> {
        let (a, b) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| ChannelError::io("socketpair", e))?;
        Ok((Channel { fd: a }, Channel { fd: b }))
    }

    /// Wraps an inherited fd (the worker's end, passed by the broker) after checking that it
    /// is a SEQPACKET socket, so message boundaries hold.
    pub fn try_from_fd(fd: OwnedFd) -> Result<Channel, ChannelError> {
        let kind = rustix::net::sockopt::socket_type(&fd)
            .map_err(|e| ChannelError::io("getsockopt", e))?;
        if kind != SocketType::SEQPACKET {
            return Err(ChannelError::NotSeqpacket);
        }
        Ok(Channel { fd })
    }

    /// Wraps svmm's end of a worker's control channel as its broker passed it: the broker made
    /// the pair (`SOCK_SEQPACKET`) and set this end non-blocking, so nothing is checked with a
    /// system call here — a restart takes it on a monitor thread whose filter has no
    /// `getsockopt`.
    pub fn from_broker(fd: OwnedFd) -> Channel {
        Channel { fd }
    }

    /// Switches `O_NONBLOCK`: when set, [`send`](Self::send) and [`recv`](Self::recv) return
    /// [`ChannelError::WouldBlock`] instead of waiting (for use in an event loop).
    pub fn set_nonblocking(&self, nonblocking: bool) -> Result<(), ChannelError> {
        rustix::io::ioctl_fionbio(&self.fd, nonblocking)
            .map_err(|e| ChannelError::io("ioctl(FIONBIO)", e))
    }

    /// Sends `msg` as one packet with `fds` attached (the caller keeps its copies).
    ///
    /// Fails before sending anything if `fds` has more than [`MAX_FDS`] entries or the message
    /// does not encode within [`MAX_MESSAGE_SIZE`]. Never raises `SIGPIPE`.
    pub fn send<T: Encode>(&self, msg: &T, fds: &[BorrowedFd<'_>]) -> Result<(), ChannelError> {
        if fds.len() > MAX_FDS {
            return Err(ChannelError::TooManyFds { count: fds.len() });
        }
        let bytes = codec::encode(msg)?;
        let mut space = [MaybeUninit::uninit(); CMSG_SPACE];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            // Cannot happen: the buffer is sized for MAX_FDS.
            return Err(ChannelError::TooManyFds { count: fds.len() });
        }
        let iov = [IoSlice::new(&bytes)];
        let sent = loop {
            match sendmsg(&self.fd, &iov, &mut control, SendFlags::NOSIGNAL) {
                Err(Errno::INTR) => continue,
                result => break result.map_err(|e| ChannelError::io("sendmsg", e))?,
            }
        };
        if sent != bytes.len() {
            return Err(ChannelError::ShortSend {
                sent,
                len: bytes.len(),
            });
        }
        Ok(())
    }

    /// Receives one message and the descriptors that came with it (close-on-exec).
    ///
    /// Errors: [`ChannelError::PeerGone`] on a zero-length read, [`ChannelError::Oversized`],
    /// [`ChannelError::ControlTruncated`] / [`ChannelError::TooManyFds`] for too many fds,
    /// [`ChannelError::Codec`] for bytes that are not exactly one `T`, and
    /// [`ChannelError::WouldBlock`] on an empty non-blocking socket. On every error, fds that
    /// arrived are closed.
    pub fn recv<T: Decode<()>>(&self) -> Result<(T, Vec<OwnedFd>), ChannelError> {
        let mut buf = [0u8; MAX_MESSAGE_SIZE];
        let (len, fds) = self.recv_packet(&mut buf)?;
        let msg = codec::decode(&buf[..len])?;
        Ok((msg, fds))
    }

    /// Receives one message that must come without descriptors, offering the kernel no room
    /// for any: fds the peer attaches are discarded by the kernel (`MSG_CTRUNC`) and never
    /// installed in this process, not even for a moment, and the message is refused with
    /// [`ChannelError::FdsDiscarded`]. For a side that never expects fds from its peer (the
    /// VMM, from its workers). Other errors as [`recv`](Self::recv).
    pub fn recv_without_fds<T: Decode<()>>(&self) -> Result<T, ChannelError> {
        let mut buf = [0u8; MAX_MESSAGE_SIZE];
        let (len, fds) = self.recv_packet_into(&mut buf, &mut [])?;
        // No control buffer: nothing can have been installed.
        debug_assert!(fds.is_empty());
        Ok(codec::decode(&buf[..len])?)
    }

    /// [`recv`](Self::recv), then insists on exactly `expected` descriptors
    /// ([`ChannelError::WrongFdCount`] otherwise, with the received ones closed).
    pub fn recv_with_fd_count<T: Decode<()>>(
        &self,
        expected: usize,
    ) -> Result<(T, Vec<OwnedFd>), ChannelError> {
        let (msg, fds) = self.recv()?;
        if fds.len() != expected {
            return Err(ChannelError::WrongFdCount {
                expected,
                received: fds.len(),
            });
        }
        Ok((msg, fds))
    }

    /// Reads one packet into `buf`; returns its length and the fds it carried.
    fn recv_packet(&self, buf: &mut [u8]) -> Result<(usize, Vec<OwnedFd>), ChannelError> {
        let mut space = [MaybeUninit::uninit(); CMSG_SPACE];
        self.recv_packet_into(buf, &mut space)
    }

    /// [`recv_packet`](Self::recv_packet) with `space` as the control buffer (empty: no fd
    /// can arrive, a truncated control part is [`ChannelError::FdsDiscarded`]).
    fn recv_packet_into(
        &self,
        buf: &mut [u8],
        space: &mut [MaybeUninit<u8>],
    ) -> Result<(usize, Vec<OwnedFd>), ChannelError> {
        let no_room = space.is_empty();
        let mut control = RecvAncillaryBuffer::new(space);
        // TRUNC makes `bytes` the packet's real length; CMSG_CLOEXEC marks new fds
        // close-on-exec atomically, so they cannot slip into a child spawned meanwhile.
        let flags = RecvFlags::CMSG_CLOEXEC | RecvFlags::TRUNC;
        let received = loop {
            match recvmsg(&self.fd, &mut [IoSliceMut::new(buf)], &mut control, flags) {
                Err(Errno::INTR) => continue,
                result => break result.map_err(|e| ChannelError::io("recvmsg", e))?,
            }
        };
        // Own every fd that arrived before checking anything else: rustix closes only the
        // fds we drain, so an early return here would leak the rest.
        let mut fds = Vec::new();
        let mut unexpected = false;
        for message in control.drain() {
            match message {
                RecvAncillaryMessage::ScmRights(arrived) => fds.extend(arrived),
                _ => unexpected = true,
            }
        }
        if received.bytes == 0 {
            return Err(ChannelError::PeerGone);
        }
        if received.flags.contains(ReturnFlags::TRUNC) {
            return Err(ChannelError::Oversized {
                len: received.bytes,
            });
        }
        if received.flags.contains(ReturnFlags::CTRUNC) {
            return Err(match no_room {
                true => ChannelError::FdsDiscarded,
                false => ChannelError::ControlTruncated,
            });
        }
        if fds.len() > MAX_FDS {
            // The control buffer has alignment slack, so a few extra fds fit without CTRUNC.
            return Err(ChannelError::TooManyFds { count: fds.len() });
        }
        if unexpected {
            return Err(ChannelError::UnexpectedControlMessage);
        }
        Ok((received.bytes, fds))
    }
}

impl From<OwnedFd> for Channel {
    /// Wraps `fd` unchecked; it must be a SEQPACKET socket (see [`Channel::try_from_fd`]).
    fn from(fd: OwnedFd) -> Self {
        Channel { fd }
    }
}

impl From<Channel> for OwnedFd {
    fn from(channel: Channel) -> Self {
        channel.fd
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Channel {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests;
