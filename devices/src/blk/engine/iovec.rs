//! iovecs that point into guest memory or into an aligned private bounce buffer.
//!
//! Payload moves between guest memory and the image by the kernel reading or writing the
//! memory an iovec names; this module builds those iovecs from vm-memory's
//! [`VolatileSlice`](vm_memory::VolatileSlice)s (`ptr_guard`/`ptr_guard_mut`), so no Rust
//! reference to guest memory is ever made. The guest may change the bytes while the kernel
//! copies them: that is fine for payload, which is never interpreted.
//!
//! **Why the pointers stay valid:** an [`IoVecs`] over guest memory holds an
//! `Arc<GuestMemoryMmap>`; guest memory regions are unmapped only when the last clone of their
//! `Arc` is dropped, so every pointer in `iov` names mapped memory for as long as the `IoVecs`
//! exists. A bounce buffer is owned by the `IoVecs` itself. Engines keep an `IoVecs` until the
//! kernel reported the operation finished.

use std::fmt;
use std::sync::Arc;

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap};

use crate::blk::request::Segment;

/// Why guest buffers cannot be turned into iovecs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum IoVecError {
    /// A segment is not inside guest memory (it was validated, so this is a bug).
    #[error("guest buffer at {0:#x} is not mapped")]
    NotMapped(u64),
}

/// An aligned region inside an over-allocated private buffer.
struct Bounce {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

/// A list of iovecs plus what keeps their memory alive.
pub(crate) struct IoVecs {
    iov: Vec<libc::iovec>,
    len: usize,
    bounce: Option<Bounce>,
    /// Keeps the guest memory mapped while the kernel may use `iov` (see the module docs).
    _mem: Option<Arc<GuestMemoryMmap>>,
}

// SAFETY: `IoVecs` is not `Send` only because `libc::iovec` holds a raw pointer. The pointers
// name either guest memory kept mapped by the `Arc` held in the same value, or the heap buffer
// of `bounce`, owned by the same value; neither depends on the thread that uses them, and
// nothing here dereferences them (only the kernel does, on behalf of whichever thread submits).
unsafe impl Send for IoVecs {}

impl fmt::Debug for IoVecs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoVecs")
            .field("segments", &self.iov.len())
            .field("len", &self.len)
            .field("bounce", &self.bounce.is_some())
            .finish()
    }
}

impl IoVecs {
    /// iovecs over the guest buffers `segs`, or `None` if a piece does not start at an
    /// `align`-aligned host address or is not a multiple of `align` long (direct I/O needs
    /// both; pass 1 for buffered I/O). `device_writes`: the kernel will write into them (a
    /// read from the image).
    pub(crate) fn guest(
        mem: &Arc<GuestMemoryMmap>,
        segs: &[Segment],
        align: usize,
        device_writes: bool,
    ) -> Result<Option<IoVecs>, IoVecError> {
        let align = align.max(1);
        let mut iov = Vec::with_capacity(segs.len());
        let mut len = 0usize;
        for seg in segs {
            let mut covered = 0usize;
            for slice in GuestMemoryBackend::get_slices(&**mem, seg.addr, seg.len as usize) {
                let slice = slice.map_err(|_| IoVecError::NotMapped(seg.addr.0))?;
                let base = if device_writes {
                    slice.ptr_guard_mut().as_ptr()
                } else {
                    slice.ptr_guard().as_ptr().cast_mut()
                };
                if (base as usize) % align != 0 || slice.len() % align != 0 {
                    return Ok(None);
                }
                iov.push(libc::iovec {
                    iov_base: base.cast(),
                    iov_len: slice.len(),
                });
                covered += slice.len();
            }
            if covered != seg.len as usize {
                return Err(IoVecError::NotMapped(seg.addr.0));
            }
            len += covered;
        }
        Ok(Some(IoVecs {
            iov,
            len,
            bounce: None,
            _mem: Some(Arc::clone(mem)),
        }))
    }

    /// One iovec over a zeroed private buffer of `len` bytes starting at an `align`-aligned
    /// address (`align` a power of two).
    pub(crate) fn bounce(len: usize, align: usize) -> IoVecs {
        let align = align.max(1).next_power_of_two();
        let mut buf = vec![0u8; len + align];
        let start = buf.as_ptr().align_offset(align).min(align);
        let base = buf[start..].as_mut_ptr();
        IoVecs {
            iov: vec![libc::iovec {
                iov_base: base.cast(),
                iov_len: len,
            }],
            len,
            bounce: Some(Bounce { buf, start, len }),
            _mem: None,
        }
    }

    /// One list made of `parts` in order (request merging). Bounce buffers cannot be joined
    /// (their bytes are copied by request); `None` if a part is one, if the parts name
    /// different guest memories, or if `parts` is empty.
    pub(crate) fn join(parts: Vec<IoVecs>) -> Option<IoVecs> {
        let mut parts = parts.into_iter();
        let mut joined = parts.next()?;
        if joined.bounce.is_some() {
            return None;
        }
        for part in parts {
            let same_memory = match (&joined._mem, &part._mem) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            };
            if part.bounce.is_some() || !same_memory {
                return None;
            }
            // Every part's pointers name the one guest memory `joined` keeps mapped, so they
            // stay valid in `joined`.
            joined.iov.extend_from_slice(&part.iov);
            joined.len += part.len;
        }
        Some(joined)
    }

    /// Total bytes the iovecs cover.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The bounce buffer's bytes, if this is one.
    pub(crate) fn bounce_bytes(&self) -> Option<&[u8]> {
        self.bounce
            .as_ref()
            .map(|b| &b.buf[b.start..b.start + b.len])
    }

    /// The bounce buffer's bytes, to fill before a write.
    pub(crate) fn bounce_bytes_mut(&mut self) -> Option<&mut [u8]> {
        self.bounce
            .as_mut()
            .map(|b| &mut b.buf[b.start..b.start + b.len])
    }

    /// The iovec array, for the kernel.
    pub(super) fn as_ptr(&self) -> *const libc::iovec {
        self.iov.as_ptr()
    }

    /// Number of iovecs (at most a few per descriptor, and chains are at most 256 long; a
    /// merged run at most `merge::MAX_MERGE_IOVECS`).
    pub(crate) fn count(&self) -> u32 {
        u32::try_from(self.iov.len()).unwrap_or(u32::MAX)
    }

    /// A copy of the iovec array (to advance after a short transfer).
    pub(super) fn to_vec(&self) -> Vec<libc::iovec> {
        self.iov.clone()
    }
}
