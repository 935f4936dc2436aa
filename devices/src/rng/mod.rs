//! virtio-rng: an entropy device (virtio spec 1.2, section 5.4).
//!
//! One queue of device-writable buffers; the device fills each with bytes from a host entropy
//! source and returns it. The source is an already-open file (the broker opens `/dev/urandom`
//! before the worker is confined) or, in tests, any reader. The device has no config space.
//!
//! - `device`: the [`Rng`] backend and its queue loop.
//! - `request`: copy-in and validation of one chain into a typed request.
//!
//! Sandbox needs: seccomp profile [`SECCOMP_PROFILE`], the entropy fd, no paths.

mod device;
mod request;
#[cfg(test)]
pub(crate) mod tests;

pub use device::Rng;

/// Number of queues (`requestq` only).
pub const NUM_QUEUES: u16 = 1;
/// Largest queue size the device accepts.
pub const MAX_QUEUE_SIZE: u16 = 256;
/// Most bytes the device writes into one chain; larger chains are filled up to this bound.
pub const MAX_REQUEST_BYTES: u32 = 64 * 1024;
/// Name of the device's seccomp profile in the `seccomp-profiles` crate.
pub const SECCOMP_PROFILE: &str = "rng";
