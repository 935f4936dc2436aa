//! A connected stream socket as a packet endpoint, in QEMU's `-netdev stream` framing, which
//! passt speaks (`passt --fd`): each frame is a 4-byte big-endian length and the Ethernet
//! frame. There is no vnet header and no offload: transmitted frames arrive here plain (the
//! device offers neither `CSUM` nor TSO on this endpoint), received ones go to the driver with
//! an all-zero header.
//!
//! A stream takes bytes, not frames: a frame the socket accepts only in part is finished from a
//! backlog (at most one frame) before the next is taken, and received bytes are reassembled in
//! a buffer of two frames. A length outside the frame sizes means the peer broke the framing:
//! that is an error (nothing after it can be trusted to be a frame boundary), as is the peer
//! closing its end.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::{fatal, would_block, Endpoint, Received, Sent};
use crate::net::header::{self, VnetHdr};
use crate::net::{Offloads, HDR_LEN, MAX_FRAME, MIN_FRAME};

/// Bytes of the length prefix.
const PREFIX: usize = 4;
/// The receive buffer: a whole frame plus room to read the next one's start.
const IN_CAP: usize = 2 * (PREFIX + MAX_FRAME);
/// Bytes a stream endpoint holds: its receive buffer and one frame being sent.
pub const STREAM_BYTES: usize = IN_CAP + PREFIX + MAX_FRAME;

/// A connected stream socket (non-blocking).
pub struct Stream {
    fd: OwnedFd,
    /// Bytes of a frame the socket took only in part.
    out: Vec<u8>,
    /// How much of `out` was written.
    out_done: usize,
    /// Received bytes `inbuf[in_start..in_end]` not yet returned as frames.
    inbuf: Vec<u8>,
    in_start: usize,
    in_end: usize,
}

impl Stream {
    /// The endpoint for the connected stream socket `fd`.
    pub fn new(fd: OwnedFd) -> Stream {
        Stream {
            fd,
            out: Vec::with_capacity(PREFIX + MAX_FRAME),
            out_done: 0,
            inbuf: vec![0; IN_CAP],
            in_start: 0,
            in_end: 0,
        }
    }

    /// Writes `bytes`; how many went.
    fn write(&self, bytes: &[u8]) -> io::Result<Option<usize>> {
        match rustix::io::write(&self.fd, bytes) {
            Ok(n) => Ok(Some(n)),
            Err(e) => {
                let e = io::Error::from(e);
                if would_block(&e) {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// A complete frame at the front of the receive buffer: its length.
    fn complete_frame(&self) -> io::Result<Option<usize>> {
        let have = self.in_end - self.in_start;
        if have < PREFIX {
            return Ok(None);
        }
        let p = &self.inbuf[self.in_start..self.in_start + PREFIX];
        let len = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
        if !(MIN_FRAME..=MAX_FRAME).contains(&len) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("stream peer sent a frame length of {len} bytes"),
            ));
        }
        Ok((have >= PREFIX + len).then_some(len))
    }
}

impl Endpoint for Stream {
    fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn offloads(&self) -> Offloads {
        Offloads::default()
    }

    fn send(&mut self, hdr: &VnetHdr, buf: &mut [u8], len: usize) -> io::Result<Sent> {
        if !self.flush()? {
            return Ok(Sent::Blocked);
        }
        let frame_end = HDR_LEN + len;
        if hdr.flags & header::F_NEEDS_CSUM != 0 {
            // Not offered here, so not expected; finish it rather than send a bad checksum.
            let csum = header::Csum {
                start: hdr.csum_start,
                offset: hdr.csum_offset,
            };
            if !header::complete_csum(&mut buf[HDR_LEN..frame_end], csum) {
                return Ok(Sent::Refused(io::Error::from_raw_os_error(libc::EINVAL)));
            }
        }
        if hdr.gso_type != header::GSO_NONE {
            return Ok(Sent::Refused(io::Error::from_raw_os_error(libc::EINVAL)));
        }
        // `len <= MAX_FRAME`, which fits in a u32.
        let prefix = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
        let start = HDR_LEN - PREFIX;
        buf[start..HDR_LEN].copy_from_slice(&prefix);
        let bytes = &buf[start..frame_end];
        match self.write(bytes) {
            Ok(Some(n)) if n == bytes.len() => Ok(Sent::Done),
            Ok(Some(n)) => {
                self.out.clear();
                self.out.extend_from_slice(&bytes[n..]);
                self.out_done = 0;
                Ok(Sent::Done)
            }
            Ok(None) => Ok(Sent::Blocked),
            Err(e) if fatal(&e) => Err(e),
            Err(e) => Ok(Sent::Refused(e)),
        }
    }

    fn backlog(&self) -> bool {
        self.out_done < self.out.len()
    }

    fn flush(&mut self) -> io::Result<bool> {
        while self.backlog() {
            match self.write(&self.out[self.out_done..])? {
                Some(n) => self.out_done += n,
                None => return Ok(false),
            }
        }
        self.out.clear();
        self.out_done = 0;
        Ok(true)
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Received> {
        loop {
            if let Some(len) = self.complete_frame()? {
                let from = self.in_start + PREFIX;
                buf[..HDR_LEN].fill(0);
                buf[HDR_LEN..HDR_LEN + len].copy_from_slice(&self.inbuf[from..from + len]);
                self.in_start = from + len;
                if self.in_start == self.in_end {
                    (self.in_start, self.in_end) = (0, 0);
                }
                return Ok(Received::Frame {
                    hdr: VnetHdr::default(),
                    len,
                });
            }
            if self.in_end == IN_CAP {
                // A partial frame at the end: move it to the front (it is at most one frame).
                self.inbuf.copy_within(self.in_start..self.in_end, 0);
                self.in_end -= self.in_start;
                self.in_start = 0;
            }
            match rustix::io::read(&self.fd, &mut self.inbuf[self.in_end..]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "stream peer closed the connection",
                    ))
                }
                Ok(n) => self.in_end += n,
                Err(e) => {
                    let e = io::Error::from(e);
                    return if would_block(&e) {
                        Ok(Received::Nothing)
                    } else {
                        Err(e)
                    };
                }
            }
        }
    }

    fn set_offloads(&mut self, tun_flags: u32) -> io::Result<()> {
        if tun_flags == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
        }
    }
}
