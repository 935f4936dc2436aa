//! Where a virtio-net device's frames go: an [`Endpoint`] per queue pair.
//!
//! - [`Tap`]: one queue fd of a tap (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, header size 12), a
//!   datagram per frame with the kernel's `virtio_net_hdr` in front; offloads switched with
//!   `TUNSETOFFLOAD`.
//! - [`Stream`]: a connected stream socket in QEMU's `-netdev stream` framing, which passt
//!   speaks: a 4-byte big-endian length, then the Ethernet frame; no header, no offloads.
//!
//! Both are non-blocking and never own more than one frame's worth of the device's data: a
//! frame the endpoint cannot take now is refused ([`Sent::Blocked`]) and the device keeps it.
//! Buffers: the device hands frames in with [`HDR_LEN`] bytes of headroom in front, which an
//! endpoint may overwrite (with the vnet header, or the stream's length prefix), so a frame
//! reaches the kernel with one `write` and no extra copy; received frames come back the same
//! way, frame bytes at `buf[HDR_LEN..]`.

mod stream;
mod tap;

use std::io;
use std::os::fd::RawFd;

use vm_memory::GuestMemoryMmap;

pub use stream::{Stream, STREAM_BYTES};
pub use tap::{Tap, TunControl, TunIoctl, COPY_UP_TO};

use super::header::VnetHdr;
use super::{tx, Offloads, HDR_LEN};
use crate::chain::Segment;

/// What became of a frame handed to [`Endpoint::send`].
#[derive(Debug)]
pub enum Sent {
    /// The endpoint took it.
    Done,
    /// The endpoint cannot take it now (its socket buffer is full); the caller keeps the frame
    /// and tries again when the fd is writable.
    Blocked,
    /// The host refused this one frame (tap down, header refused by the kernel); the device
    /// drops it and goes on.
    Refused(io::Error),
}

/// What [`Endpoint::recv`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// Nothing to read now.
    Nothing,
    /// A frame of `len` bytes at `buf[HDR_LEN..]`, with the host's header.
    Frame {
        /// The host's header (all zero for endpoints without one).
        hdr: VnetHdr,
        /// Frame bytes.
        len: usize,
    },
    /// The host delivered something that is not a frame (too short, too long); dropped.
    Malformed,
}

/// One packet endpoint of a queue pair. Errors returned are fatal for the device (the fd is
/// unusable or the peer is gone); per-frame trouble is reported in [`Sent`] and [`Received`].
pub trait Endpoint: Send {
    /// The fd to watch: readable means [`recv`](Self::recv) may find a frame, writable that
    /// [`send`](Self::send) or [`flush`](Self::flush) may get on.
    fn fd(&self) -> RawFd;
    /// What the endpoint can do with offloaded frames.
    fn offloads(&self) -> Offloads;
    /// Sends the frame `buf[HDR_LEN..HDR_LEN + len]` with header `hdr` (already validated
    /// against what the endpoint offered). `buf[..HDR_LEN]` is the endpoint's to overwrite.
    fn send(&mut self, hdr: &VnetHdr, buf: &mut [u8], len: usize) -> io::Result<Sent>;
    /// Sends the frame of `len` bytes in the guest buffers `frame` (claimed as payload by
    /// [`tx::parse_chain`], inside `mem`) with header `hdr`. `scratch` (at least
    /// [`tx::TX_BUF`] bytes) is private memory the endpoint may copy the frame into: the
    /// default copies it there and calls [`send`](Self::send); a tap hands the guest buffers
    /// to the kernel instead (no copy in the worker).
    fn send_guest(
        &mut self,
        hdr: &VnetHdr,
        mem: &GuestMemoryMmap,
        frame: &[Segment],
        len: usize,
        scratch: &mut [u8],
    ) -> io::Result<Sent> {
        send_copied(self, hdr, mem, frame, len, scratch)
    }
    /// Bytes the endpoint accepted but could not pass on yet (a stream's partial write).
    fn backlog(&self) -> bool {
        false
    }
    /// Tries to pass the backlog on; `true` once there is none.
    fn flush(&mut self) -> io::Result<bool> {
        Ok(true)
    }
    /// Reads at most one frame into `buf`, which holds a header and the largest frame.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Received>;
    /// Which offloaded frames (`tun_flags`) the host may hand the device from now on.
    fn set_offloads(&mut self, tun_flags: u32) -> io::Result<()>;
}

/// Copies the frame of `len` bytes in the guest buffers `frame` into `scratch` after the
/// header's room and sends it with [`Endpoint::send`]; a buffer outside `mem` refuses it.
fn send_copied<E: Endpoint + ?Sized>(
    ep: &mut E,
    hdr: &VnetHdr,
    mem: &GuestMemoryMmap,
    frame: &[Segment],
    len: usize,
    scratch: &mut [u8],
) -> io::Result<Sent> {
    if !tx::copy_frame(mem, frame, &mut scratch[HDR_LEN..HDR_LEN + len]) {
        return Ok(Sent::Refused(io::Error::from_raw_os_error(libc::EFAULT)));
    }
    ep.send(hdr, scratch, len)
}

/// Whether a write or read error means "try again later".
fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// Whether an I/O error means the fd or its peer is gone for good.
fn fatal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADF | libc::EBADFD | libc::EPIPE | libc::ECONNRESET | libc::ENOTCONN)
    )
}
