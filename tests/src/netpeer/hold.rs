//! `--hold-queue TAP`: the peer attaches one queue of the tap *without* a vnet header and holds
//! it, as another program using the tap would: a single-queue tap is then busy for svmm, and a
//! multi-queue tap keeps the flags of its first user, so svmm's queues come without a vnet
//! header (svmm must refuse both, in one line).

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_MULTI_QUEUE: i16 = 0x0100;

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: i16,
    _pad: [u8; 22],
}

/// Attaches to `tap` (multi-queue if the tap is) without `IFF_VNET_HDR`; the fd holds it.
pub fn hold_queue(tap: &str) -> io::Result<OwnedFd> {
    let flags = std::fs::read_to_string(format!("/sys/class/net/{tap}/tun_flags"))?;
    let flags = u16::from_str_radix(flags.trim().trim_start_matches("0x"), 16)
        .map_err(io::Error::other)? as i16;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut req = IfReq {
        name: [0; 16],
        flags: IFF_TAP | IFF_NO_PI | (flags & IFF_MULTI_QUEUE),
        _pad: [0; 22],
    };
    let bytes = tap.as_bytes();
    if bytes.len() >= 16 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    req.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: `req` is a live `struct ifreq` of the kernel's size; TUNSETIFF reads it and writes
    // the name back into it.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(OwnedFd::from(file))
}
