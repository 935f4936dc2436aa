//! A tap queue fd as a packet endpoint: every `read` is one frame and every `write` takes one,
//! each with the 12-byte vnet header in front (svmm attached the fd with `IFF_VNET_HDR` and set
//! the header size to 12 before any worker existed, see `net::open`).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap};

use super::{fatal, send_copied, would_block, Endpoint, Received, Sent};
use crate::chain::Segment;
use crate::net::header::VnetHdr;
use crate::net::{sys, tun_flags, Offloads, HDR_LEN, MAX_FRAME, MIN_FRAME};

/// Largest frame a tap sends from a private copy rather than from guest memory. Below it the
/// copy costs less than the iovec list and the `pwritev2` path: in the two benchmark runs on
/// 11a33f7 (BENCHMARKS.md, 2026-12-03), sending every frame from guest memory held the
/// sandboxed worker to ~1.0 M frames/s for both 64 B and 1514 B frames (1.26 M with the copy
/// in the run before, e044e81), while 64 KiB GSO frames gained ~40 % (137 → 191 Gb/s).
pub const COPY_UP_TO: usize = 4096;

/// How the endpoint switches the tap's offloads: `TUNSETOFFLOAD` on a real tap
/// ([`TunIoctl`]); tests stand a datagram socket in for the tap and record the calls.
pub trait TunControl: Send {
    /// `TUNSETOFFLOAD(flags)` on `fd`.
    fn set_offload(&mut self, fd: BorrowedFd<'_>, flags: u32) -> io::Result<()>;
}

/// The real thing: `ioctl(fd, TUNSETOFFLOAD, flags)`.
#[derive(Debug, Default, Clone, Copy)]
pub struct TunIoctl;

impl TunControl for TunIoctl {
    fn set_offload(&mut self, fd: BorrowedFd<'_>, flags: u32) -> io::Result<()> {
        sys::set_offload(fd, flags)
    }
}

/// One tap queue fd.
pub struct Tap {
    fd: OwnedFd,
    control: Box<dyn TunControl>,
    offloads: Offloads,
}

impl Tap {
    /// The endpoint for `fd` (non-blocking, attached with `IFF_VNET_HDR`, header size 12).
    ///
    /// Probes which offloads the tap takes (`TUNSETOFFLOAD` with and without ECN), then
    /// switches them all off until a driver asks for them. A tap that refuses `TUNSETOFFLOAD`
    /// altogether is refused: `fd` is not a tap with a vnet header.
    pub fn new(fd: OwnedFd) -> io::Result<Tap> {
        Tap::with_control(fd, Box::new(TunIoctl))
    }

    /// [`Tap::new`] with another way of switching offloads (tests).
    pub fn with_control(fd: OwnedFd, mut control: Box<dyn TunControl>) -> io::Result<Tap> {
        use tun_flags::{CSUM, TSO4, TSO6, TSO_ECN};
        let ecn = control
            .set_offload(fd.as_fd(), CSUM | TSO4 | TSO6 | TSO_ECN)
            .is_ok();
        if !ecn {
            control.set_offload(fd.as_fd(), CSUM | TSO4 | TSO6)?;
        }
        control.set_offload(fd.as_fd(), 0)?;
        Ok(Tap {
            fd,
            control,
            offloads: Offloads {
                vnet_hdr: true,
                ecn,
            },
        })
    }
}

impl Endpoint for Tap {
    fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn offloads(&self) -> Offloads {
        self.offloads
    }

    fn send(&mut self, hdr: &VnetHdr, buf: &mut [u8], len: usize) -> io::Result<Sent> {
        buf[..HDR_LEN].copy_from_slice(&hdr.to_bytes());
        sent(rustix::io::write(&self.fd, &buf[..HDR_LEN + len]).map_err(io::Error::from))
    }

    /// A frame of up to [`COPY_UP_TO`] bytes is copied and written with one `write`; a larger
    /// one goes with one `pwritev2` (as `writev`: offset -1) of the private header and the
    /// guest buffers: the kernel copies the frame into its socket buffer, the worker none of it.
    fn send_guest(
        &mut self,
        hdr: &VnetHdr,
        mem: &GuestMemoryMmap,
        frame: &[Segment],
        len: usize,
        scratch: &mut [u8],
    ) -> io::Result<Sent> {
        if len <= COPY_UP_TO {
            return send_copied(self, hdr, mem, frame, len, scratch);
        }
        let header = hdr.to_bytes();
        let mut iov = Vec::with_capacity(frame.len() + 1);
        iov.push(libc::iovec {
            iov_base: header.as_ptr().cast_mut().cast(),
            iov_len: HDR_LEN,
        });
        let mut covered = 0;
        for seg in frame {
            for slice in GuestMemoryBackend::get_slices(mem, seg.addr, seg.len as usize) {
                let Ok(slice) = slice else {
                    return Ok(Sent::Refused(io::Error::from_raw_os_error(libc::EFAULT)));
                };
                iov.push(libc::iovec {
                    iov_base: slice.ptr_guard().as_ptr().cast_mut().cast(),
                    iov_len: slice.len(),
                });
                covered += slice.len();
            }
        }
        if covered != len || iov.len() > sys::IOV_MAX {
            // Not what the walk promised (a bug), or more pieces than one call takes.
            return send_copied(self, hdr, mem, frame, len, scratch);
        }
        // `header` lives until the call returns; the guest buffers lie in `mem`'s mappings,
        // borrowed for the whole call (see `sys::write_frame`).
        sent(sys::write_frame(self.fd.as_fd(), &iov))
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Received> {
        match rustix::io::read(&self.fd, &mut *buf) {
            Ok(n) if !(HDR_LEN + MIN_FRAME..=HDR_LEN + MAX_FRAME).contains(&n) => {
                Ok(Received::Malformed)
            }
            Ok(n) => {
                let mut raw = [0u8; HDR_LEN];
                raw.copy_from_slice(&buf[..HDR_LEN]);
                Ok(Received::Frame {
                    hdr: VnetHdr::from_bytes(&raw),
                    len: n - HDR_LEN,
                })
            }
            Err(e) => {
                let e = io::Error::from(e);
                if would_block(&e) {
                    Ok(Received::Nothing)
                } else if fatal(&e) {
                    Err(e)
                } else {
                    // EFAULT / EINVAL: the kernel dropped a frame it could not hand over.
                    Ok(Received::Malformed)
                }
            }
        }
    }

    fn set_offloads(&mut self, flags: u32) -> io::Result<()> {
        let flags = if self.offloads.ecn {
            flags
        } else {
            flags & !tun_flags::TSO_ECN
        };
        self.control.set_offload(self.fd.as_fd(), flags)
    }
}

/// What a write of one frame to the tap came to: a tap takes a frame whole or not at all.
fn sent(result: io::Result<usize>) -> io::Result<Sent> {
    match result {
        Ok(_) => Ok(Sent::Done),
        Err(e) if would_block(&e) => Ok(Sent::Blocked),
        Err(e) if fatal(&e) => Err(e),
        Err(e) => Ok(Sent::Refused(e)),
    }
}
