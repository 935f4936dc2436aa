//! Parsing one out-queue command: private bytes in, a typed, validated [`Command`] out.
//!
//! [`parse`] only ever sees the device's private copy of the command (`chain::copy_in` made it,
//! once), so nothing here can change under its feet. It checks everything that does not need
//! the vfd table:
//!
//! - the length for the command's type (a short command is refused, never read past);
//! - vfd ids: the ones a guest creates must lie in the guest range (`1..=0x3fff_ffff`, what the
//!   driver allocates from); ids that name an existing vfd must lie in the guest or the host
//!   range (`0x4000_0000..=0x7fff_ffff`, what the device hands out), so 0 and ids with the sign
//!   bit are refused before any lookup;
//! - `vfd_count` of a SEND against [`MAX_SEND_VFDS`] and against the bytes present;
//! - flags: `NEW_PIPE` exactly one of READ or WRITE; `VFD_NEW` none (with `TRANS_FLAGS`) or
//!   only WRITE|MAP (without);
//! - sizes: a `VFD_NEW` of 1 byte to [`super::MAX_ALLOC_BYTES`];
//! - the socket name of `NEW_CTX_NAMED`: NUL-terminated (or all 32 bytes), UTF-8.
//!
//! What fails is a [`Refusal`]: the response code the device answers with. Commands the device
//! knows but does not serve (dmabuf, foreign ids) are [`Command::Unsupported`], answered with
//! `INVALID_CMD` like an unknown type.

use super::protocol::{
    CMD_VFD_CLOSE, CMD_VFD_DMABUF_SYNC, CMD_VFD_NEW, CMD_VFD_NEW_CTX, CMD_VFD_NEW_CTX_NAMED,
    CMD_VFD_NEW_DMABUF, CMD_VFD_NEW_PIPE, CMD_VFD_SEND, CMD_VFD_SEND_FOREIGN_ID, CTRL_SEND_LEN,
    CTRL_VFD_LEN, CTRL_VFD_NEW_LEN, CTX_NAME_LEN, CTX_NAME_OFFSET, HDR_LEN, RESP_ERR,
    RESP_INVALID_CMD, RESP_INVALID_FLAGS, RESP_INVALID_ID, RESP_OUT_OF_MEMORY, VFD_MAP, VFD_READ,
    VFD_WRITE,
};
use super::{MAX_ALLOC_BYTES, MAX_SEND_VFDS};

/// Lowest id a guest may give a vfd it creates.
pub const GUEST_ID_MIN: u32 = 1;
/// Highest id a guest may give a vfd it creates.
pub const GUEST_ID_MAX: u32 = 0x3fff_ffff;
/// Lowest id the device gives a vfd the host created (`VFD_HOST_VFD_ID_BIT`).
pub const HOST_ID_MIN: u32 = 0x4000_0000;
/// Highest id the device gives a vfd the host created (the sign bit stays clear).
pub const HOST_ID_MAX: u32 = 0x7fff_ffff;

/// Whether `id` is one a guest may create.
pub fn is_guest_id(id: u32) -> bool {
    (GUEST_ID_MIN..=GUEST_ID_MAX).contains(&id)
}

/// Whether `id` can name a vfd at all (guest or host range).
pub fn is_vfd_id(id: u32) -> bool {
    (GUEST_ID_MIN..=HOST_ID_MAX).contains(&id)
}

/// A validated out-queue command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `VFD_NEW`: shared memory of `size` bytes (rounded up to pages by the device).
    New {
        /// The guest's id for it.
        id: u32,
        /// Flags as sent (validated); echoed in the response.
        flags: u32,
        /// Requested size, `1..=MAX_ALLOC_BYTES`.
        size: u32,
    },
    /// `VFD_CLOSE`.
    Close {
        /// A guest or host id.
        id: u32,
    },
    /// `VFD_SEND`: `data` and the vfds `vfds` to vfd `id`.
    Send {
        /// The target: a context or a pipe the guest writes.
        id: u32,
        /// The vfds to pass along, at most [`MAX_SEND_VFDS`], each a guest or host id.
        vfds: Vec<u32>,
        /// The bytes, possibly empty.
        data: Vec<u8>,
    },
    /// `VFD_NEW_CTX` (no name) or `VFD_NEW_CTX_NAMED`.
    NewCtx {
        /// The guest's id for the connection.
        id: u32,
        /// The socket name; empty for the default socket.
        name: String,
    },
    /// `VFD_NEW_PIPE`.
    NewPipe {
        /// The guest's id for the pipe.
        id: u32,
        /// `VFD_READ` (the guest reads, the host end writes) or `VFD_WRITE`.
        flags: u32,
    },
    /// A command the device knows but does not serve (dmabuf, foreign ids): `INVALID_CMD`.
    Unsupported {
        /// Its type.
        kind: u32,
    },
}

/// Why a command is refused: the response code, and what was wrong (for tests and counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Shorter than its type needs (or not even a header).
    #[error("command of type {kind:#x} is {len} bytes, needs {need}")]
    Truncated {
        /// The type, 0 if the header itself is short.
        kind: u32,
        /// Bytes present.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// Unknown command type.
    #[error("unknown command type {0:#x}")]
    UnknownType(u32),
    /// An id outside its range.
    #[error("vfd id {0:#x} outside its range")]
    BadId(u32),
    /// Flags the command does not allow.
    #[error("flags {0:#x} not allowed")]
    BadFlags(u32),
    /// `VFD_NEW` of 0 bytes.
    #[error("allocation of 0 bytes")]
    EmptyAlloc,
    /// `VFD_NEW` larger than the device allows.
    #[error("allocation of {0} bytes is too large")]
    AllocTooLarge(u32),
    /// A SEND with more vfds than allowed.
    #[error("send with {0} vfds")]
    TooManyVfds(u32),
    /// The socket name is not UTF-8.
    #[error("socket name is not UTF-8")]
    BadName,
}

impl Refusal {
    /// The response code the device answers with.
    pub fn code(&self) -> u32 {
        match self {
            Refusal::Truncated { .. } | Refusal::EmptyAlloc | Refusal::BadName => RESP_ERR,
            Refusal::UnknownType(_) => RESP_INVALID_CMD,
            Refusal::BadId(_) | Refusal::TooManyVfds(_) => RESP_INVALID_ID,
            Refusal::BadFlags(_) => RESP_INVALID_FLAGS,
            Refusal::AllocTooLarge(_) => RESP_OUT_OF_MEMORY,
        }
    }
}

/// Reads the little-endian `u32` at `at`; the caller checked the length.
fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

/// Refuses `bytes` if shorter than `need`.
fn need(bytes: &[u8], kind: u32, need: usize) -> Result<(), Refusal> {
    if bytes.len() < need {
        return Err(Refusal::Truncated {
            kind,
            len: bytes.len(),
            need,
        });
    }
    Ok(())
}

/// An id the guest creates.
fn guest_id(id: u32) -> Result<u32, Refusal> {
    if is_guest_id(id) {
        Ok(id)
    } else {
        Err(Refusal::BadId(id))
    }
}

/// An id that names a vfd.
fn vfd_id(id: u32) -> Result<u32, Refusal> {
    if is_vfd_id(id) {
        Ok(id)
    } else {
        Err(Refusal::BadId(id))
    }
}

/// Parses one command. `trans_flags`: the driver acknowledged `VIRTIO_WL_F_TRANS_FLAGS`.
pub fn parse(bytes: &[u8], trans_flags: bool) -> Result<Command, Refusal> {
    need(bytes, 0, HDR_LEN)?;
    let kind = u32_at(bytes, 0);
    match kind {
        CMD_VFD_NEW => {
            need(bytes, kind, CTRL_VFD_NEW_LEN)?;
            let id = guest_id(u32_at(bytes, 8))?;
            let flags = u32_at(bytes, 12);
            let allowed = if trans_flags { 0 } else { VFD_WRITE | VFD_MAP };
            if flags & !allowed != 0 {
                return Err(Refusal::BadFlags(flags));
            }
            let size = u32_at(bytes, 24);
            if size == 0 {
                return Err(Refusal::EmptyAlloc);
            }
            if size > MAX_ALLOC_BYTES {
                return Err(Refusal::AllocTooLarge(size));
            }
            Ok(Command::New { id, flags, size })
        }
        CMD_VFD_CLOSE => {
            need(bytes, kind, CTRL_VFD_LEN)?;
            Ok(Command::Close {
                id: vfd_id(u32_at(bytes, 8))?,
            })
        }
        CMD_VFD_SEND => {
            need(bytes, kind, CTRL_SEND_LEN)?;
            let id = vfd_id(u32_at(bytes, 8))?;
            let count = u32_at(bytes, 12);
            if count as usize > MAX_SEND_VFDS {
                return Err(Refusal::TooManyVfds(count));
            }
            // count <= MAX_SEND_VFDS: no overflow.
            let ids_end = CTRL_SEND_LEN + 4 * count as usize;
            need(bytes, kind, ids_end)?;
            let vfds = (0..count as usize)
                .map(|i| vfd_id(u32_at(bytes, CTRL_SEND_LEN + 4 * i)))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Command::Send {
                id,
                vfds,
                data: bytes[ids_end..].to_vec(),
            })
        }
        CMD_VFD_NEW_CTX => {
            need(bytes, kind, CTRL_VFD_LEN)?;
            Ok(Command::NewCtx {
                id: guest_id(u32_at(bytes, 8))?,
                name: String::new(),
            })
        }
        CMD_VFD_NEW_CTX_NAMED => {
            need(bytes, kind, CTX_NAME_OFFSET + CTX_NAME_LEN)?;
            let id = guest_id(u32_at(bytes, 8))?;
            let raw = &bytes[CTX_NAME_OFFSET..CTX_NAME_OFFSET + CTX_NAME_LEN];
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            let name = std::str::from_utf8(&raw[..end]).map_err(|_| Refusal::BadName)?;
            Ok(Command::NewCtx {
                id,
                name: name.to_owned(),
            })
        }
        CMD_VFD_NEW_PIPE => {
            need(bytes, kind, CTRL_VFD_NEW_LEN)?;
            let id = guest_id(u32_at(bytes, 8))?;
            let flags = u32_at(bytes, 12);
            if flags != VFD_READ && flags != VFD_WRITE {
                return Err(Refusal::BadFlags(flags));
            }
            Ok(Command::NewPipe { id, flags })
        }
        CMD_VFD_NEW_DMABUF | CMD_VFD_DMABUF_SYNC | CMD_VFD_SEND_FOREIGN_ID => {
            Ok(Command::Unsupported { kind })
        }
        other => Err(Refusal::UnknownType(other)),
    }
}
