//! The service channel: requests a device makes to the VMM for host services its kind
//! declared, and the VMM's replies.
//!
//! A second `SOCK_SEQPACKET` channel next to the control channel, only for devices whose kind
//! declares a service. The device asks, the VMM answers, one reply per request, in order:
//!
//! ```text
//!   device (worker or in-process)                      VMM
//!    │ ─ Connect ──────────────────────────────────────▶  connects to the one socket path the
//!    │ ◀──────────────────────── Connected (+ 1 fd) ────   kind declared; per-VM context limit
//!    │ ─ MapShm { offset, len, writable } (+ 1 fd) ────▶  checks the fd (a memfd sealed against
//!    │ ◀───────────────────────────────────── Mapped ───   shrinking, big and open enough),
//!    │                                                     maps it into the device's shared-memory
//!    │                                                     region (a KVM memory slot)
//!    │ ─ UnmapShm { offset } ─────────────────────────▶
//!    │ ◀─────────────────────────────────── Unmapped ───
//!    │ ─ Disconnected ────────────────────────────────▶  the device closed a connection: the
//!    │ ◀─────────────────────────────────── Released ───   VM's count of open ones goes down
//!    │ ◀─────────────────────────── Refused(reason) ────   instead of any of the above
//! ```
//!
//! Separate from the control channel because the initiative is the other way round: there the
//! VMM asks and the device answers, here the device asks (from its queue loop) and waits.
//! Every request is untrusted input to the VMM: [`ServiceRequest::validate`] checks it against
//! the region before the VMM acts, and the VMM checks the fd itself.

use bincode::{Decode, Encode};

/// Granularity of shared-memory offsets and lengths: a page.
pub const SHM_PAGE: u64 = 4096;

/// A device's request for a host service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum ServiceRequest {
    /// A new connection to the socket the device's kind declared. Reply: `Connected`, with the
    /// connected socket as the one fd.
    Connect,
    /// Map the fd sent with this message (its first `len` bytes) at `offset` in the device's
    /// shared-memory region. Reply: `Mapped`.
    MapShm {
        /// Offset in the region, page-aligned.
        offset: u64,
        /// Bytes, page-aligned, not 0.
        len: u64,
        /// The guest may write the mapping (else it is read-only to the guest).
        writable: bool,
    },
    /// Remove the mapping that starts at `offset`. Reply: `Unmapped`.
    UnmapShm {
        /// Where the mapping starts.
        offset: u64,
    },
    /// The device closed one of the connections it got. Reply: `Released`. (Unverifiable; a
    /// worker that never says so only reaches the limit sooner, one that says so falsely still
    /// holds no more connections than its `RLIMIT_NOFILE` allows.)
    Disconnected,
}

/// The VMM's reply to one [`ServiceRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum ServiceReply {
    /// A new connection; the socket is the message's one fd.
    Connected,
    /// The mapping is in place.
    Mapped,
    /// The mapping is gone.
    Unmapped,
    /// The connection no longer counts against the VM's limit.
    Released,
    /// The request was refused; nothing changed.
    Refused(ServiceRefusal),
}

/// Why the VMM refused a service request. A closed set: the device maps it to its own guest
/// answer, and nobody parses text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode, thiserror::Error)]
pub enum ServiceRefusal {
    /// The device's kind did not declare this service.
    #[error("service not declared for this device")]
    NotDeclared,
    /// The VM's limit on open connections or on mappings is reached.
    #[error("limit reached")]
    LimitReached,
    /// Connecting to the declared socket failed (`errno`).
    #[error("connecting to the declared socket failed (errno {errno})")]
    ConnectFailed {
        /// `errno` of `connect`.
        errno: i32,
    },
    /// Offset or length not page-aligned, zero, or outside the region.
    #[error("range outside the shared-memory region or not page-aligned")]
    BadRange,
    /// The range overlaps an existing mapping.
    #[error("range overlaps an existing mapping")]
    Overlap,
    /// The fd is missing, not a memfd sealed against shrinking, shorter than `len`, or not
    /// open for writing when `writable` was asked.
    #[error("fd is not a sealed memfd covering the range")]
    BadFd,
    /// No mapping starts at that offset.
    #[error("no mapping at that offset")]
    NotMapped,
    /// The host failed to map (`errno` of `mmap` or of the KVM memory-slot ioctl).
    #[error("mapping failed (errno {errno})")]
    MapFailed {
        /// The OS error.
        errno: i32,
    },
}

impl ServiceRequest {
    /// Checks offsets and lengths against a region of `region_len` bytes (0: the device has
    /// no region). The VMM runs this on every request before acting on it.
    pub fn validate(&self, region_len: u64) -> Result<(), ServiceRefusal> {
        match *self {
            ServiceRequest::Connect | ServiceRequest::Disconnected => Ok(()),
            ServiceRequest::MapShm { offset, len, .. } => {
                let aligned = offset % SHM_PAGE == 0 && len % SHM_PAGE == 0 && len != 0;
                let inside = offset.checked_add(len).is_some_and(|end| end <= region_len);
                if aligned && inside {
                    Ok(())
                } else {
                    Err(ServiceRefusal::BadRange)
                }
            }
            ServiceRequest::UnmapShm { offset } => {
                if offset % SHM_PAGE == 0 && offset < region_len {
                    Ok(())
                } else {
                    Err(ServiceRefusal::BadRange)
                }
            }
        }
    }

    /// How many fds travel with this request.
    pub fn fd_count(&self) -> usize {
        match self {
            ServiceRequest::MapShm { .. } => 1,
            ServiceRequest::Connect
            | ServiceRequest::UnmapShm { .. }
            | ServiceRequest::Disconnected => 0,
        }
    }
}

impl ServiceReply {
    /// How many fds travel with this reply.
    pub fn fd_count(&self) -> usize {
        match self {
            ServiceReply::Connected => 1,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode};

    #[test]
    fn ranges_are_checked_against_the_region() {
        let region = 16 * SHM_PAGE;
        let map = |offset, len| ServiceRequest::MapShm {
            offset,
            len,
            writable: true,
        };
        assert_eq!(map(0, region).validate(region), Ok(()));
        assert_eq!(map(SHM_PAGE, SHM_PAGE).validate(region), Ok(()));
        for bad in [
            map(0, 0),
            map(1, SHM_PAGE),
            map(0, SHM_PAGE + 1),
            map(region, SHM_PAGE),
            map(SHM_PAGE, region),
            map(u64::MAX - SHM_PAGE + 1, SHM_PAGE),
        ] {
            assert_eq!(
                bad.validate(region),
                Err(ServiceRefusal::BadRange),
                "{bad:?}"
            );
        }
        assert_eq!(map(0, SHM_PAGE).validate(0), Err(ServiceRefusal::BadRange));
        let unmap = |offset| ServiceRequest::UnmapShm { offset };
        assert_eq!(unmap(0).validate(region), Ok(()));
        assert!(unmap(region).validate(region).is_err());
        assert!(unmap(7).validate(region).is_err());
        assert_eq!(ServiceRequest::Connect.validate(0), Ok(()));
    }

    #[test]
    fn messages_round_trip() {
        let requests = [
            ServiceRequest::Connect,
            ServiceRequest::MapShm {
                offset: SHM_PAGE,
                len: 2 * SHM_PAGE,
                writable: false,
            },
            ServiceRequest::UnmapShm { offset: 0 },
            ServiceRequest::Disconnected,
        ];
        for r in requests {
            assert_eq!(decode::<ServiceRequest>(&encode(&r).unwrap()).unwrap(), r);
        }
        let replies = [
            ServiceReply::Connected,
            ServiceReply::Mapped,
            ServiceReply::Unmapped,
            ServiceReply::Released,
            ServiceReply::Refused(ServiceRefusal::ConnectFailed { errno: 111 }),
            ServiceReply::Refused(ServiceRefusal::MapFailed { errno: 12 }),
        ];
        for r in replies {
            assert_eq!(decode::<ServiceReply>(&encode(&r).unwrap()).unwrap(), r);
        }
        assert_eq!(ServiceReply::Connected.fd_count(), 1);
        assert_eq!(ServiceRequest::Connect.fd_count(), 0);
    }
}
