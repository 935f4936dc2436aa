//! Where virtio-blk's image I/O runs: an [`Engine`] takes [`Op`]s tagged with a token and hands
//! back [`Completion`]s, in whatever order they finish.
//!
//! - `uring`: io_uring, many operations in flight (see the I/O model in the module above).
//! - `sync`: `preadv2`/`pwritev2`/`fdatasync`/`fallocate` on the calling thread, for tests, for
//!   in-process use without a prepared ring, and as the fallback when io_uring is unavailable.
//! - `iovec`: iovecs into guest memory and aligned bounce buffers.
//!
//! **Unsafe fence.** The crate denies `unsafe_code`; these three submodules are the only place
//! that allows it, because handing guest memory to the kernel by pointer (an iovec in a
//! `preadv2` call or an io_uring submission) cannot be expressed safely. Each `unsafe` block
//! says why it holds. Nothing outside this module sees a raw pointer.

use std::fmt;
use std::io;

#[allow(unsafe_code)]
mod iovec;
#[cfg(feature = "test-faults")]
#[allow(unsafe_code)]
mod probe;
#[allow(unsafe_code)]
mod sync;
#[allow(unsafe_code)]
mod uring;

pub(crate) use iovec::IoVecs;
pub(crate) use sync::SyncEngine;
pub(crate) use uring::UringEngine;

/// Most engine operations one request turns into (a discard with [`super::MAX_DISCARD_SEG`]
/// segments); the device pops a new chain only when the engine has room for this many.
pub(crate) const MAX_OPS_PER_REQUEST: usize = super::MAX_DISCARD_SEG as usize;

/// Which engine a device runs on (and, as `engine=`, which one it is to run on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ipc::Encode, ipc::Decode)]
#[bincode(crate = "ipc::codec::bincode")]
pub enum EngineKind {
    /// io_uring: requests overlap.
    IoUring,
    /// Synchronous system calls: one request at a time.
    Sync,
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EngineKind::IoUring => "io_uring",
            EngineKind::Sync => "sync",
        })
    }
}

/// How `fallocate` changes a range of the image (always inside it: the parser checked).
///
/// These two modes are the only ones the `blk` seccomp profile allows, and `fallocate` runs
/// only as a system call under that filter, never through the ring (see `uring`). Neither can
/// take host disk space beyond the image: a hole punched past the end frees nothing of anyone
/// else's, and `ZERO_RANGE` without `KEEP_SIZE` past the end would grow the file, which the
/// worker's `RLIMIT_FSIZE` (= the image size) refuses with `EFBIG`. (`ZERO_RANGE |
/// KEEP_SIZE` past the end would preallocate blocks no limit counts.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fallocate {
    /// `FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`: deallocate; reads back zeroes.
    PunchHole,
    /// `FALLOC_FL_ZERO_RANGE`: zero, keep allocated.
    ZeroRange,
}

impl Fallocate {
    pub(crate) fn flags(self) -> rustix::fs::FallocateFlags {
        use rustix::fs::FallocateFlags as F;
        match self {
            Fallocate::PunchHole => F::PUNCH_HOLE | F::KEEP_SIZE,
            Fallocate::ZeroRange => F::ZERO_RANGE,
        }
    }
}

/// One operation on the image. Byte offsets and lengths were validated against the image size
/// by the request parser.
#[derive(Debug)]
pub(crate) enum Op {
    /// Read into `iov` from `offset`.
    Read {
        /// Byte offset in the image.
        offset: u64,
        /// Destination.
        iov: IoVecs,
    },
    /// Write `iov` at `offset` (durable only once a later [`Op::Sync`] returned).
    Write {
        /// Byte offset in the image.
        offset: u64,
        /// Source.
        iov: IoVecs,
    },
    /// `fdatasync`; on io_uring also waits for everything submitted before it.
    Sync,
    /// `fallocate(mode, offset, len)`, always as a system call (also on io_uring).
    Fallocate {
        /// What to do with the range.
        mode: Fallocate,
        /// Byte offset in the image.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
}

impl Op {
    /// Bytes a successful read or write transfers (0 for the others).
    pub(crate) fn transfer_len(&self) -> usize {
        match self {
            Op::Read { iov, .. } | Op::Write { iov, .. } => iov.len(),
            Op::Sync | Op::Fallocate { .. } => 0,
        }
    }
}

/// A finished operation, handed back with its buffers.
#[derive(Debug)]
pub(crate) struct Completion {
    /// The token it was submitted with.
    pub token: u64,
    /// The operation (its buffers may be read now: the kernel is done with them).
    pub op: Op,
    /// Bytes transferred, or the error.
    pub result: io::Result<usize>,
}

/// Runs operations on one image.
pub(crate) trait Engine: Send {
    /// Which engine this is.
    fn kind(&self) -> EngineKind;
    /// Queues `op`. It runs now (sync) or once the engine next enters the kernel; either way
    /// its completion comes out of [`wait`](Self::wait). On failure the op is handed back.
    fn submit(&mut self, token: u64, op: Op) -> Result<(), (Op, io::Error)>;
    /// Enters the kernel with what is queued, waits until at least one operation finished
    /// (returns at once if none is in flight) and appends every finished one to `out`.
    fn wait(&mut self, out: &mut Vec<Completion>) -> io::Result<()>;
    /// Appends every operation that has finished to `out` without sleeping, and says whether
    /// there was any: what the device's in-flight poll calls until one has (see `io`). An
    /// engine that cannot look without waiting waits ([`wait`](Self::wait)) instead; its
    /// completions are ready when this returns.
    fn reap_ready(&mut self, out: &mut Vec<Completion>) -> io::Result<bool> {
        let before = out.len();
        self.wait(out)?;
        Ok(out.len() > before || self.in_flight() == 0)
    }
    /// Operations submitted and not yet handed back.
    fn in_flight(&self) -> usize;
    /// Most operations that may be in flight at once.
    fn capacity(&self) -> usize;
    /// An fd the engine needs besides the image (the ring's), which the sandbox must keep.
    fn extra_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    /// The hostile worker's disk probe (`probe`), with this engine's ring if it has one.
    #[cfg(feature = "test-faults")]
    fn probe(&mut self, image: &std::fs::File, size: u64) {
        probe::run(None, image, size);
    }
}

/// Waits until nothing is in flight, dropping the completions (used when a device stops).
pub(crate) fn drain(engine: &mut dyn Engine) -> io::Result<()> {
    let mut done = Vec::new();
    while engine.in_flight() > 0 {
        engine.wait(&mut done)?;
        done.clear();
    }
    Ok(())
}
