//! virtio-rng: an entropy device (virtio spec 1.2, section 5.4).
//!
//! One queue of device-writable buffers; the device fills each with random bytes and returns
//! it. The device has no config space. Where the bytes come from:
//!
//! - its own generator ([`Drbg`], [`Rng::with_drbg`]): ChaCha20 keyed from the kernel's
//!   `getrandom` before confinement, key erased after every request, re-keyed from the kernel
//!   every [`drbg::RESEED_BYTES`] or [`drbg::RESEED_INTERVAL`]; no system call per request.
//!   `drbg` says why this is as strong as reading `/dev/urandom` for every request;
//! - an already-open file ([`Rng::new`], `source=urandom`: the broker opens `/dev/urandom`
//!   before the worker is confined; one `read` per request);
//! - in tests, any reader.
//!
//! - `kind`: [`RngKind`], what svmm knows about the kind: `--device rng[,source=drbg|urandom]`,
//!   its host resource with `source=urandom` ([`ENTROPY_SOURCE`], read-only; none with its own
//!   generator), its seccomp profile [`SECCOMP_PROFILE`], nothing else beyond the default
//!   sandbox; and that a worker restarted after its predecessor died resumes the queue
//!   (`Kind::restart`): any bytes do, so a request in flight is simply filled again. The queue
//!   loop is sequential, so chains go back in the order they were taken.
//! - `device`: the [`Rng`] backend and its queue loop.
//! - `drbg`: the generator.
//! - `request`: copy-in and validation of one chain into a typed request.

mod device;
pub mod drbg;
mod kind;
mod request;
#[cfg(test)]
pub(crate) mod tests;

pub use device::Rng;
pub use drbg::Drbg;
pub use kind::{RngConfig, RngKind};

/// Where `source=urandom` reads: svmm opens it read-only before any worker exists.
pub const ENTROPY_SOURCE: &str = "/dev/urandom";

/// Number of queues (`requestq` only).
pub const NUM_QUEUES: u16 = 1;
/// Largest queue size the device accepts.
pub const MAX_QUEUE_SIZE: u16 = 256;
/// Most bytes the device writes into one chain; larger chains are filled up to this bound.
pub const MAX_REQUEST_BYTES: u32 = 64 * 1024;
/// Name of the device's seccomp profile in the `seccomp-profiles` crate.
pub const SECCOMP_PROFILE: &str = "rng";
