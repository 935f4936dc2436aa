//! The virtio-wl wire format: command and response codes, flag bits, and the encoding of what
//! the device writes into guest buffers.
//!
//! virtio-wl is not in the virtio spec; the format is the one crosvm's device and the ChromeOS
//! `virtio_wl` driver (`include/uapi/linux/virtio_wl.h`) agree on. Every structure starts with
//! an 8-byte header, little-endian:
//!
//! ```text
//!   ctrl_hdr      type: u32, flags: u32 (always 0)
//!   ctrl_vfd      hdr, vfd_id: u32                                        (12 bytes)
//!   ctrl_vfd_new  hdr, vfd_id: u32, flags: u32, pfn: u64, size: u32,
//!                 then 36 bytes (dmabuf description, or name[32] for NEW_CTX_NAMED)
//!   ctrl_vfd_send hdr, vfd_id: u32, vfd_count: u32, vfd_count × u32 ids, data   (SEND, RECV)
//! ```
//!
//! The driver puts each command in a device-readable buffer followed by a device-writable one
//! for the response (8 bytes, or a whole `ctrl_vfd_new` after a `VFD_NEW*`). On the "in" queue
//! it offers page-sized device-writable buffers that the device fills with `VFD_NEW` (a vfd the
//! host created), `VFD_RECV` (data and vfds from the host) and `VFD_HUP`.
//!
//! Parsing is in `command`; this module only knows numbers and how to write bytes.

/// `VIRTIO_WL_CMD_VFD_NEW`: allocate shared memory (guest → device), or announce a vfd the host
/// created (device → guest, on the in queue).
pub const CMD_VFD_NEW: u32 = 0x100;
/// `VIRTIO_WL_CMD_VFD_CLOSE`.
pub const CMD_VFD_CLOSE: u32 = 0x101;
/// `VIRTIO_WL_CMD_VFD_SEND`: bytes and vfds to a context or pipe.
pub const CMD_VFD_SEND: u32 = 0x102;
/// `VIRTIO_WL_CMD_VFD_RECV`: bytes and vfds from the host (in queue only).
pub const CMD_VFD_RECV: u32 = 0x103;
/// `VIRTIO_WL_CMD_VFD_NEW_CTX`: a new connection to the compositor.
pub const CMD_VFD_NEW_CTX: u32 = 0x104;
/// `VIRTIO_WL_CMD_VFD_NEW_PIPE`.
pub const CMD_VFD_NEW_PIPE: u32 = 0x105;
/// `VIRTIO_WL_CMD_VFD_HUP`: the host end of a vfd hung up (in queue only).
pub const CMD_VFD_HUP: u32 = 0x106;
/// `VIRTIO_WL_CMD_VFD_NEW_DMABUF` (not served: no GPU allocator).
pub const CMD_VFD_NEW_DMABUF: u32 = 0x107;
/// `VIRTIO_WL_CMD_VFD_DMABUF_SYNC` (not served).
pub const CMD_VFD_DMABUF_SYNC: u32 = 0x108;
/// `VIRTIO_WL_CMD_VFD_SEND_FOREIGN_ID` (not served: no virtio-gpu to take ids from).
pub const CMD_VFD_SEND_FOREIGN_ID: u32 = 0x109;
/// `VIRTIO_WL_CMD_VFD_NEW_CTX_NAMED`: a new connection to a named compositor socket.
pub const CMD_VFD_NEW_CTX_NAMED: u32 = 0x10a;

/// `VIRTIO_WL_RESP_OK`.
pub const RESP_OK: u32 = 0x1000;
/// `VIRTIO_WL_RESP_VFD_NEW`: a `ctrl_vfd_new` describing the vfd made.
pub const RESP_VFD_NEW: u32 = 0x1001;
/// `VIRTIO_WL_RESP_ERR`: the driver reads "device no longer reliable" (`-ENODEV`).
pub const RESP_ERR: u32 = 0x1100;
/// `VIRTIO_WL_RESP_OUT_OF_MEMORY` (`-ENOMEM`).
pub const RESP_OUT_OF_MEMORY: u32 = 0x1101;
/// `VIRTIO_WL_RESP_INVALID_ID` (`-ENOENT`).
pub const RESP_INVALID_ID: u32 = 0x1102;
/// `VIRTIO_WL_RESP_INVALID_TYPE` (`-EINVAL`).
pub const RESP_INVALID_TYPE: u32 = 0x1103;
/// `VIRTIO_WL_RESP_INVALID_FLAGS` (`-EPERM`).
pub const RESP_INVALID_FLAGS: u32 = 0x1104;
/// `VIRTIO_WL_RESP_INVALID_CMD` (`-ENOTTY`).
pub const RESP_INVALID_CMD: u32 = 0x1105;

/// vfd flag: the guest writes it (pipe), or (old semantics) the mapping is writable.
pub const VFD_WRITE: u32 = 0x1;
/// vfd flag: the guest reads it (pipe). Same bit as [`VFD_MAP`].
pub const VFD_READ: u32 = 0x2;
/// vfd flag (old semantics, without `TRANS_FLAGS`): fixed size, mapped at `pfn`.
pub const VFD_MAP: u32 = 0x2;
/// vfd flag (old semantics): a context; send/recv may carry vfds.
pub const VFD_CONTROL: u32 = 0x4;

/// Feature bit 1, `VIRTIO_WL_F_TRANS_FLAGS`: the READ/WRITE flag semantics.
pub const F_TRANS_FLAGS: u64 = 1 << 1;
/// Feature bit 2, `VIRTIO_WL_F_SEND_FENCES` (not offered: only matters for foreign ids).
pub const F_SEND_FENCES: u64 = 1 << 2;
/// Feature bit 3, `VIRTIO_WL_F_USE_SHMEM`: `pfn` is a page number inside the device's
/// shared-memory region 0 rather than a guest-physical page number.
pub const F_USE_SHMEM: u64 = 1 << 3;

/// Page size of `pfn` values (`VIRTWL_PFN_SHIFT`).
pub const PFN_SHIFT: u32 = 12;
/// Bytes of a page.
pub const PAGE_SIZE: u64 = 1 << PFN_SHIFT;

/// Bytes of `ctrl_hdr`.
pub const HDR_LEN: usize = 8;
/// Bytes of `ctrl_vfd`.
pub const CTRL_VFD_LEN: usize = 12;
/// Bytes of `ctrl_vfd_new` up to and including `size` (what the device reads and writes of it;
/// the driver's struct goes on with a 36-byte union the device ignores, except the name).
pub const CTRL_VFD_NEW_LEN: usize = 28;
/// Offset of `name[32]` in `ctrl_vfd_new` for `NEW_CTX_NAMED`.
pub const CTX_NAME_OFFSET: usize = 28;
/// Bytes of the socket name in `NEW_CTX_NAMED`.
pub const CTX_NAME_LEN: usize = 32;
/// Bytes of `ctrl_vfd_send` / `ctrl_vfd_recv` before the ids.
pub const CTRL_SEND_LEN: usize = 16;

/// Appends a little-endian `u32`.
fn put32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// A response that is just a header: `RESP_OK` or one of the error codes.
pub fn encode_status(code: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(HDR_LEN);
    put32(&mut out, code);
    put32(&mut out, 0);
    out
}

/// A `ctrl_vfd_new` with `kind` [`RESP_VFD_NEW`] (reply to a guest's `VFD_NEW*`) or
/// [`CMD_VFD_NEW`] (a host-made vfd announced on the in queue). Only the fields the driver reads
/// are written (28 bytes, then 4 bytes of padding as crosvm writes them).
pub fn encode_vfd_new(kind: u32, id: u32, flags: u32, pfn: u64, size: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(CTRL_VFD_NEW_LEN + 4);
    put32(&mut out, kind);
    put32(&mut out, 0);
    put32(&mut out, id);
    put32(&mut out, flags);
    out.extend_from_slice(&pfn.to_le_bytes());
    put32(&mut out, size);
    put32(&mut out, 0);
    out
}

/// A `VFD_RECV` for vfd `id`: the ids of the vfds that came along, then the data.
pub fn encode_recv(id: u32, vfds: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(CTRL_SEND_LEN + 4 * vfds.len() + data.len());
    put32(&mut out, CMD_VFD_RECV);
    put32(&mut out, 0);
    put32(&mut out, id);
    // At most MAX_SEND_VFDS ids: the count fits.
    put32(&mut out, u32::try_from(vfds.len()).unwrap_or(u32::MAX));
    for v in vfds {
        put32(&mut out, *v);
    }
    out.extend_from_slice(data);
    out
}

/// A `VFD_HUP` for vfd `id`.
pub fn encode_hup(id: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(CTRL_VFD_LEN);
    put32(&mut out, CMD_VFD_HUP);
    put32(&mut out, 0);
    put32(&mut out, id);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_drivers() {
        // virtio_wl.h: commands count up from 0x100, responses from 0x1000, errors from 0x1100.
        assert_eq!(CMD_VFD_NEW_CTX_NAMED, 0x100 + 10);
        assert_eq!(RESP_INVALID_CMD, 0x1100 + 5);
        assert_eq!(F_USE_SHMEM, 8);
    }

    #[test]
    fn encodings() {
        assert_eq!(encode_status(RESP_OK), [0, 0x10, 0, 0, 0, 0, 0, 0]);
        let new = encode_vfd_new(RESP_VFD_NEW, 7, 1, 0x1234, 4096);
        assert_eq!(new.len(), 32);
        assert_eq!(&new[0..4], &RESP_VFD_NEW.to_le_bytes());
        assert_eq!(&new[8..12], &7u32.to_le_bytes());
        assert_eq!(&new[16..24], &0x1234u64.to_le_bytes());
        assert_eq!(&new[24..28], &4096u32.to_le_bytes());
        let recv = encode_recv(3, &[0x4000_0000], b"hi");
        assert_eq!(recv.len(), 16 + 4 + 2);
        assert_eq!(&recv[12..16], &1u32.to_le_bytes());
        assert_eq!(&recv[20..], b"hi");
        assert_eq!(encode_hup(9)[8..12], 9u32.to_le_bytes());
    }
}
