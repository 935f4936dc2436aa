//! The tap ioctls (linux/if_tun.h) and the tap's gathered write, the only `unsafe` of
//! virtio-net: `TUNSETOFFLOAD` (the worker, on its tap queue fds) and `TUNSETIFF`, `TUNGETIFF`,
//! `TUNSETVNETHDRSZ` (svmm, while it attaches to a tap before any worker exists), each one
//! `ioctl` with either a plain integer argument or a pointer to a local value of the kernel's
//! layout; and [`write_frame`], one `pwritev2` of iovecs the caller keeps valid. Test builds add
//! `TUNSETPERSIST`, which the hostile worker's probe (`net::probe`) tries against its filter.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `_IOW('T', 208, unsigned int)`: the one request the net seccomp profile allows.
pub const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// `_IOR('T', 210, unsigned int)`.
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
/// `_IOW('T', 216, int)`.
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
/// `_IOW('T', 203, int)`: outside the net profile (the hostile worker's probe tries it).
#[cfg(feature = "test-faults")]
pub const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;

/// `ifr_flags`: a tap (Ethernet frames), not a tun (IP packets).
pub const IFF_TAP: i16 = 0x0002;
/// `ifr_flags`: no packet-information prefix.
pub const IFF_NO_PI: i16 = 0x1000;
/// `ifr_flags`: one fd per queue.
pub const IFF_MULTI_QUEUE: i16 = 0x0100;
/// `ifr_flags`: every frame carries a `virtio_net_hdr`.
pub const IFF_VNET_HDR: i16 = 0x4000;
/// Bytes of an interface name, with its terminating NUL.
pub const IFNAMSIZ: usize = 16;

/// `struct ifreq` as the tun ioctls use it: the name, then `ifr_flags` in the union.
#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: i16,
    /// The rest of the union (`struct ifreq` is 40 bytes on 64-bit Linux).
    _pad: [u8; 22],
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `TUNSETOFFLOAD`: which offloaded frames (`tun_flags`) the tap may hand the device.
pub fn set_offload(fd: BorrowedFd<'_>, flags: u32) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned long); the kernel reads no
    // memory of ours. `fd` is borrowed, so it stays open for the call.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD, libc::c_ulong::from(flags)) })
}

/// `TUNSETIFF`: attaches the `/dev/net/tun` fd to the interface `name` with `flags`.
pub fn set_iff(fd: BorrowedFd<'_>, name: &str, flags: i16) -> io::Result<()> {
    let mut req = IfReq {
        name: [0; IFNAMSIZ],
        flags,
        _pad: [0; 22],
    };
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    req.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: `req` is a live, initialised `struct ifreq` of the kernel's size; TUNSETIFF reads
    // it and writes the (NUL-terminated) name back into it, nothing beyond it.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) })
}

/// `TUNGETIFF`: the flags the fd's interface was attached with.
pub fn get_iff_flags(fd: BorrowedFd<'_>) -> io::Result<i16> {
    let mut req = IfReq {
        name: [0; IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    // SAFETY: `req` is a live `struct ifreq`; TUNGETIFF writes the name and flags into it.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), TUNGETIFF, &mut req as *mut IfReq) })?;
    Ok(req.flags)
}

/// `TUNSETVNETHDRSZ`: the size of the vnet header on every frame of this fd.
pub fn set_vnet_hdr_size(fd: BorrowedFd<'_>, size: i32) -> io::Result<()> {
    // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which points at a live local.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETVNETHDRSZ, &size as *const i32) })
}

/// An ioctl on `fd` with an integer argument (test builds: the hostile worker's probe, which
/// tries requests outside the filter's rules by their number).
#[cfg(feature = "test-faults")]
pub fn ioctl_int(
    fd: std::os::fd::RawFd,
    request: libc::c_ulong,
    arg: libc::c_ulong,
) -> io::Result<()> {
    // SAFETY: the probe's requests (TUNSETOFFLOAD, TUNSETPERSIST) take their argument by value:
    // the kernel reads no memory of ours. On an fd that is not open the kernel answers EBADF.
    check(unsafe { libc::ioctl(fd, request, arg) })
}

/// Most iovecs one `pwritev2` takes (`UIO_MAXIOV`).
pub const IOV_MAX: usize = 1024;

/// Writes the iovecs `iov` to `fd` as one `writev` (`pwritev2` at offset -1, flags 0: the one
/// form net's seccomp profile allows). Every iovec must name memory that stays mapped and
/// readable for the call: the caller's own buffers, or guest memory whose mapping it borrows.
pub fn write_frame(fd: BorrowedFd<'_>, iov: &[libc::iovec]) -> io::Result<usize> {
    let count = libc::c_int::try_from(iov.len().min(IOV_MAX)).unwrap_or(0);
    // SAFETY: `iov` is a live slice of `count` (at most its length) iovecs; each names memory
    // the caller keeps mapped for this call (its own stack or heap, or guest memory it borrows
    // the `GuestMemoryMmap` of, whose regions stay mapped while borrowed). The kernel only
    // reads that memory, and no Rust reference to guest memory is made: a guest changing the
    // bytes meanwhile changes only what the tap sends.
    let n = unsafe { libc::pwritev2(fd.as_raw_fd(), iov.as_ptr(), count, -1, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // `n >= 0` here.
    Ok(n as usize)
}
