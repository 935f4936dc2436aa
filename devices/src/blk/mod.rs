//! virtio-blk: a block device backed by a raw image file (virtio spec 1.2, section 5.2).
//!
//! The broker opens the image (read-only for `ro`, `O_DIRECT` for `direct=on`) and locks it
//! before the worker exists; [`Blk::new`] takes that open [`File`](std::fs::File) and checks it.
//!
//! - `config`: feature bits and the config space the device publishes.
//! - `request`: **the one copy-in function**: every descriptor, the request header and the
//!   discard/write-zeroes segments are read from guest memory exactly once into private values,
//!   validated there and turned into a typed [`Request`].
//! - `io`: the queue loop: pop, parse, turn a request into engine operations (`io::submit`),
//!   complete requests in the order the engine finishes them.
//! - `merge`: request merging, adjacent reads or writes of one batch as one host I/O.
//! - `order`: each queue's chains go back to the driver in the order they were taken, so a
//!   restarted worker can resume at the used index.
//! - `poll`: the idle-poll window of a queue and how it adapts.
//! - `engine`: where operations run: io_uring, or synchronous `preadv2`/`pwritev2`. The only
//!   module of this crate with `unsafe` code (building iovecs into guest memory and handing them
//!   to the kernel).
//! - `device`: the [`Blk`] backend.
//! - `kind`: [`BlkKind`], what svmm knows about the kind: `--device blk=PATH[,...]` (its option
//!   declarations, whose ranges [`BlkOptions::check`] uses too), the image as its one host
//!   resource, how svmm checks it, its sandbox needs, and the ring made before the filter.
//!
//! # I/O model
//!
//! A confined worker cannot create threads (`RLIMIT_NPROC`, and `clone` is not in its seccomp
//! profile), so queue depth does not come from threads: it comes from **io_uring**. The ring is
//! created, given the image as its only (fixed) file, limited to `READV`/`WRITEV`/`FSYNC` by
//! io_uring restrictions and enabled in [`Blk::prepare_engine`], which the worker calls
//! *before* it confines itself; afterwards the worker only needs `io_uring_enter`.
//! Within one `process_queue` call the device keeps popping chains while fewer than
//! [`MAX_IN_FLIGHT`] requests are in flight, waits for completions, and completes requests
//! (status byte, statistics) in the order the kernel finishes them, picking up new chains
//! between waits; it returns once the queue is idle and nothing is in flight. The used ring
//! (and the interrupt) gets each queue's chains in the order they were taken (`order`): a
//! request that finishes early waits for the earlier ones, so that a worker started after its
//! predecessor died resumes every queue at its used index with nothing lost or returned twice.
//!
//! io_uring runs blocking operations (`fdatasync`, most buffered writes) on kernel
//! io-wq threads, which count against `RLIMIT_NPROC`: a sandbox that allows no process at all
//! makes the kernel cancel them (`ECANCELED`); the engine then redoes that operation
//! synchronously, so the device stays correct, only shallower. [`SANDBOX_NPROC`] is the
//! `RLIMIT_NPROC` that gives full depth.
//!
//! Without io_uring (no [`Blk::prepare_engine`], a kernel that refuses the ring, or
//! `engine=sync`, which makes none) the device uses a synchronous engine
//! (`preadv2`/`pwritev2`/`fdatasync`/`fallocate`): same semantics, depth 1.
//!
//! # What a compromised worker can do to the host disk
//!
//! Its one file is the image (opened by svmm, locked, `RLIMIT_FSIZE` = its size). Through the
//! ring: read and write inside the image and `fdatasync` it; a write with `RWF_APPEND` or past
//! the end fails with `EFBIG` (the limit; the worker ignores `SIGXFSZ`). The ring cannot
//! `fallocate` at all: io_uring's restrictions pin opcodes but not their arguments, so discard
//! and write-zeroes run as `fallocate` system calls, which the seccomp filter allows only as
//! `PUNCH_HOLE | KEEP_SIZE` (frees the image's own blocks) and `ZERO_RANGE` without `KEEP_SIZE`
//! (past the end it would grow the file: `EFBIG`). So the image never grows and never holds
//! blocks past its end (`ZERO_RANGE | KEEP_SIZE`, `INSERT_RANGE`, plain preallocation are all
//! out of reach); inside its size the guest may of course fill it. With the `test-faults`
//! feature, `Blk::arm_disk_probe` makes the device try each of these (svmm's `fault=host`).
//!
//! # Request merging
//!
//! With [`BlkOptions::merge`] (the default), plain reads and writes popped in one batch whose
//! sectors continue each other go to the engine as one vectored operation (QEMU's
//! `request-merging`): one host request, and for durable writes one cache flush, per run instead
//! of per request. Nothing is reordered; a run ends at a gap, a change of direction, a request
//! that is not a plain read or write (a `FLUSH` still starts after every earlier write), a
//! bounce-buffered request, 2 MiB or 1024 iovecs. All members of a run complete together; if
//! the host I/O fails, every member completes with `IOERR`. See `merge`.
//!
//! # Interrupts
//!
//! The driver is interrupted once per batch of used chains (the requests completed together
//! after one wait for the engine, or at once while popping), if it wants interrupts at all,
//! before the loop blocks or polls again: a merged run of eight reads costs one KVM injection,
//! not eight. See `io`.
//!
//! # Idle polling
//!
//! A queue that runs dry is not given up at once: for up to [`BlkOptions::poll_us`] µs (default
//! [`DEFAULT_POLL_US`], at most [`MAX_POLL_US`], 0 turns it off) the device keeps reading the
//! ring's avail index with notifications still suppressed (`VIRTQ_USED_F_NO_NOTIFY`, or a stale
//! `avail_event` with `EVENT_IDX`), spinning on the CPU (`std::hint::spin_loop`, the clock read
//! through the vDSO every few checks; the base seccomp profile allows `clock_gettime` should
//! the vDSO fall back to the syscall). A chain published within the window is served without a
//! notification: no QueueNotify exit in the guest, no eventfd, no wake-up of a sleeping worker
//! (or thread) on another CPU. When the window ends, notifications are re-enabled and the ring
//! re-checked exactly as without polling, so nothing published meanwhile is missed.
//!
//! The cost is up to `poll_us` of one host CPU after every burst of requests, and on a host
//! with no spare CPU the spinning device delays the very vCPU that would submit the next
//! request. So the window adapts per queue (`poll`): back to the maximum when it found work,
//! halved when it ran out, down to a floor of an eighth of the maximum. A steady depth-1 guest
//! keeps the full window; an idle guest or a starved host soon costs only the floor per
//! request.
//!
//! Why 32 µs by default (QEMU's `poll-max-ns` default is 32 µs too): a depth-1 guest submits
//! its next request a few µs after seeing the previous completion, so any window of a few µs
//! catches a steady stream; the window must also outlast the guest's occasional longer gaps
//! (timer interrupts, its own bookkeeping), and on the PVM host where this was measured a
//! notification costs ~25 µs of exit plus a cross-CPU wake-up, so polling up to about that long
//! never costs more than the notification it avoids. Longer windows removed hardly any more
//! notifications there and only burn more CPU when the guest has really gone quiet.
//!
//! # In-flight polling
//!
//! With the same switch (`poll=N`, 0 turns it off), a device whose requests are in flight looks
//! for finished operations without sleeping (`io::IN_FLIGHT_POLL_FACTOR` × the idle window,
//! 128 µs by default) before it sleeps in `io_uring_enter`; it also takes a chain the driver
//! publishes meanwhile. The ring is set up with `COOP_TASKRUN | TASKRUN_FLAG`, so a finished
//! read is flagged in the ring instead of interrupting the polling thread, which then enters
//! the kernel once to collect it. Why: a sleeping thread is woken by the host disk's
//! completion interrupt, and when that interrupt arrives on another CPU than the thread's
//! (the vCPU's, say), the wake-up is a cross-CPU wake-up of an idle CPU — on the virtualised
//! development host ~33 µs, half a 4 KiB read. Which CPU the thread had landed on decided it
//! run by run, sandboxed or in-process alike (measured in `tests/src/bench/findings.md`).
//! The window adapts like the idle one, and grows back to its maximum whenever the completion
//! the thread then slept for came within it (`poll::PollWindow::slept`): a 1 MiB read or a
//! durable write that takes longer soon costs only the floor.
//!
//! The other direction: a driver that polls the used ring and says so with
//! `VIRTQ_AVAIL_F_NO_INTERRUPT` (without `EVENT_IDX`) gets no interrupts, as the spec asks; the
//! device would otherwise spend an eventfd write into KVM on every completion.
//!
//! # Durability
//!
//! `FLUSH` completes only after `fdatasync` of the image returned (io_uring: an `FSYNC` with
//! `IOSQE_IO_DRAIN`, so it also waits for every write submitted before it). Without a
//! negotiated `FLUSH`, every write is durable before it completes: it is followed by
//! `fdatasync` (one per merged run), as discard and write-zeroes are. Not `RWF_DSYNC`: an
//! `O_DIRECT` write with it finishes in the file system's direct-I/O completion work, which
//! runs on a kernel worker bound to the CPU the host disk interrupted; with a guest vCPU
//! spinning on that CPU the worker waited for the next scheduler tick (4 ms at HZ=250) in
//! some runs, one durable write per tick (~260 MB/s instead of ~2.5 GB/s; traced in
//! `tests/src/bench/findings.md`). The write without it completes from the interrupt, and the
//! `fdatasync` runs on the ring's own io-wq thread, which any CPU may take.
//!
//! # Direct I/O
//!
//! With `direct=on` the image is `O_DIRECT`; `blk_size` advertises the host's direct-I/O offset
//! alignment (`statx` `STATX_DIOALIGN`, 512 where the kernel does not report it). Guest buffers
//! that do not meet the memory alignment go through an aligned bounce buffer (at most
//! [`MAX_BOUNCE_BYTES`] of them in flight); a request whose
//! offset or length is not a multiple of `blk_size` (which Linux never sends once it read
//! `blk_size`) fails with `IOERR`.
//!
//! Sandbox needs (declared in `kind`): seccomp profile [`SECCOMP_PROFILE`], the image as its
//! one host resource, `RLIMIT_NPROC` [`SANDBOX_NPROC`] for full depth, `RLIMIT_FSIZE` the
//! image's size when writable (0 when `ro`), no filesystem access. The worker calls
//! [`Blk::new`] before it confines itself and [`Blk::prepare_engine`] in the last step before
//! its seccomp filter, after the confinement closed every fd it did not inherit, so the ring's
//! fd survives.

mod config;
mod device;
mod engine;
pub mod fuzzing;
mod io;
mod kind;
mod merge;
mod order;
mod poll;
pub mod request;
#[cfg(test)]
pub(crate) mod tests;

use std::io as stdio;

pub use device::{Blk, BlkOptions};
pub use engine::EngineKind;
pub use kind::{default_id, BlkConfig, BlkKind};
pub use request::{MetaMemory, Request};

/// Largest queue size the device accepts.
pub const MAX_QUEUE_SIZE: u16 = 256;
/// Most queues (`num_queues` with `MQ`).
pub const MAX_QUEUES: u16 = 16;
/// Bytes per sector: the unit of `capacity` and of request sectors, whatever `blk_size` says.
pub const SECTOR_SIZE: u64 = 512;
/// Most data segments per request (`seg_max`): the queue size minus header and status.
pub const SEG_MAX: u32 = 126;
/// Largest single data segment (`size_max`).
pub const SIZE_MAX: u32 = 64 * 1024;
/// Most data bytes one read or write request may carry: `seg_max * size_max`, so every request
/// Linux builds from the published limits fits.
pub const MAX_DATA_BYTES: u32 = SEG_MAX * SIZE_MAX;
/// Most sectors one discard segment may cover (`max_discard_sectors`), 2 GiB.
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;
/// Most segments in one discard request (`max_discard_seg`).
pub const MAX_DISCARD_SEG: u32 = 16;
/// Most sectors one write-zeroes segment may cover (`max_write_zeroes_sectors`).
pub const MAX_WRITE_ZEROES_SECTORS: u32 = 1 << 22;
/// Most segments in one write-zeroes request (`max_write_zeroes_seg`).
pub const MAX_WRITE_ZEROES_SEG: u32 = 16;
/// Length of the device id string (`VIRTIO_BLK_ID_BYTES`).
pub const ID_BYTES: usize = 20;
/// Most requests in flight per queue.
pub const MAX_IN_FLIGHT: usize = MAX_QUEUE_SIZE as usize;
/// Most bytes of direct-I/O bounce buffers in flight at once, over all queues. A guest whose
/// buffers miss the memory alignment makes every request bounce; without a cap 240 requests
/// of [`MAX_DATA_BYTES`] each would hold ~1.9 GiB of worker memory whatever the guest's RAM.
/// With it the device starts no new request while a maximal one might overflow the cap, so
/// at most 4 maximal bounced requests overlap (the queue waits meanwhile). The sandbox's
/// `RLIMIT_AS` counts this amount on top of guest RAM ([`crate::kind::SandboxNeeds::memory`]).
pub const MAX_BOUNCE_BYTES: usize = 4 * MAX_DATA_BYTES as usize;
/// Kernel io-wq threads the ring may use for blocking operations, per kind (bound/unbound).
pub const IO_WORKERS: u32 = 4;
/// The `RLIMIT_NPROC` that gives the ring its [`IO_WORKERS`] (the worker itself, plus bound and
/// unbound io-wq threads). The worker still cannot create any: `clone`, `clone3`, `fork` and
/// `vfork` are not in its seccomp profile.
pub const SANDBOX_NPROC: u64 = 1 + 2 * IO_WORKERS as u64;
/// Longest idle-poll window ([`BlkOptions::poll_us`]), in µs.
pub const MAX_POLL_US: u32 = 1000;
/// Idle-poll window a device gets unless told otherwise, in µs (see "Idle polling" above).
pub const DEFAULT_POLL_US: u32 = 32;
/// Name of the device's seccomp profile in the `seccomp-profiles` crate.
pub const SECCOMP_PROFILE: &str = "blk";

/// Request types (`virtio_blk_outhdr.type`).
pub mod req_type {
    /// Read sectors.
    pub const IN: u32 = 0;
    /// Write sectors.
    pub const OUT: u32 = 1;
    /// Make completed writes durable.
    pub const FLUSH: u32 = 4;
    /// Read the device id string.
    pub const GET_ID: u32 = 8;
    /// Deallocate ranges.
    pub const DISCARD: u32 = 11;
    /// Zero ranges.
    pub const WRITE_ZEROES: u32 = 13;
}

/// Status byte values.
pub mod status {
    /// Success.
    pub const OK: u8 = 0;
    /// The request failed (invalid, out of range, read-only, or a host I/O error).
    pub const IOERR: u8 = 1;
    /// The request type (or a flag of it) is not supported.
    pub const UNSUPP: u8 = 2;
}

/// Why an image cannot back a virtio-blk device.
#[derive(Debug, thiserror::Error)]
pub enum BlkError {
    /// fstat/lseek/statx/fcntl on the image failed.
    #[error("cannot inspect the image")]
    Inspect(#[source] stdio::Error),
    /// A directory, socket, fifo, ... instead of a regular file or block device.
    #[error("the image is neither a regular file nor a block device")]
    NotAnImage,
    /// Raw images are whole sectors.
    #[error("image size {0} bytes is not a multiple of 512")]
    SizeNotSectorMultiple(u64),
    /// A writable device on an fd opened read-only.
    #[error("the image was opened read-only but the device is writable (add `ro`)")]
    OpenedReadOnly,
    /// `id=` longer than [`ID_BYTES`].
    #[error("id={0:?} needs {expected}", expected = kind::ID.expected())]
    IdTooLong(String),
    /// `queues=` outside `1..=MAX_QUEUES`.
    #[error("queues={0} needs {expected}", expected = kind::QUEUES.expected())]
    QueueCount(u16),
    /// `poll_us` above [`MAX_POLL_US`].
    #[error("poll={0} needs {expected}", expected = kind::POLL.expected())]
    PollWindow(u32),
    /// Setting `O_DIRECT` on an fd opened without it failed.
    #[error("cannot switch the image to O_DIRECT")]
    Direct(#[source] stdio::Error),
}
