//! Host services a backend may ask the VMM for, when its kind declared them.
//!
//! A confined worker cannot open sockets or touch KVM. A device that needs a connection to a
//! host socket (virtio-wl's compositor) or guest-visible shared memory (virtio-wl's buffers in
//! its virtio-mmio shared-memory region) asks through [`HostServices`]; the VMM validates each
//! request against what the kind declared and answers. The backend gets the handle when it is
//! built, like its other host resources, and never knows whether it runs in a worker or a
//! thread: both talk to the VMM over the same service channel (`ipc::service`).

use std::os::fd::{BorrowedFd, OwnedFd};

pub use ipc::ServiceRefusal;

/// Why a service request failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The VMM refused it (a limit, a bad range, a failed connect).
    #[error("refused: {0}")]
    Refused(#[from] ServiceRefusal),
    /// The service channel broke (the VMM is gone or answered nonsense); no later request
    /// will succeed.
    #[error("service channel failed: {0}")]
    Channel(String),
}

/// The services of the device's kind, as the device sees them.
pub trait HostServices: Send {
    /// A new connection to the socket the kind declared (non-blocking, close-on-exec).
    fn connect(&mut self) -> Result<OwnedFd, ServiceError>;
    /// Maps the first `len` bytes of `fd` (a memfd sealed against shrinking) at `offset` in
    /// the device's shared-memory region; the guest may write it if `writable`.
    fn map_shm(
        &mut self,
        fd: BorrowedFd<'_>,
        offset: u64,
        len: u64,
        writable: bool,
    ) -> Result<(), ServiceError>;
    /// Removes the mapping that starts at `offset`.
    fn unmap_shm(&mut self, offset: u64) -> Result<(), ServiceError>;
}

/// A device without host services: every request is refused with
/// [`ServiceRefusal::NotDeclared`].
#[derive(Debug, Default, Clone, Copy)]
pub struct NoServices;

impl HostServices for NoServices {
    fn connect(&mut self) -> Result<OwnedFd, ServiceError> {
        Err(ServiceRefusal::NotDeclared.into())
    }

    fn map_shm(
        &mut self,
        _fd: BorrowedFd<'_>,
        _offset: u64,
        _len: u64,
        _writable: bool,
    ) -> Result<(), ServiceError> {
        Err(ServiceRefusal::NotDeclared.into())
    }

    fn unmap_shm(&mut self, _offset: u64) -> Result<(), ServiceError> {
        Err(ServiceRefusal::NotDeclared.into())
    }
}
