//! `svmm __worker KIND`: the hidden mode in which a spawned worker process runs one device.
//!
//! The broker starts it with the fds at the fixed numbers of [`super::fd_numbers`], then the
//! kind's host resources. The worker adopts them (checking each is open), confines itself —
//! **the place `broker::child::confine` plugs in**, before any byte from the VMM or the guest
//! is read — builds the backend and runs the same [`run_device`] as an in-process device.
//! It exits 0 when the VMM shuts it down or goes away, 1 on any error (one line on stderr).

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use vmm_sys_util::eventfd::EventFd;

use super::backend::{self, HostResources};
use super::fd_numbers::{CONTROL, FIRST_QUEUE, GUEST_RAM, IRQFD, IRQ_STATUS, STOP};
use super::{run_device, WorkerFds};
use crate::device_spec::{DeviceKind, SUPPORTED_KINDS};
use crate::error::one_line;

/// The first argument that selects worker mode.
pub const WORKER_ARG: &str = "__worker";

/// Runs worker mode with `args` (after `__worker`); returns the process exit status.
pub fn main(args: &[String]) -> u8 {
    match run(args) {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("svmm worker: {message}");
            1
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let [kind] = args else {
        return Err(format!("usage: svmm {WORKER_ARG} KIND"));
    };
    let kind = DeviceKind::from_name(kind).ok_or_else(|| {
        format!(
            "unknown device kind {kind:?} (supported: {})",
            SUPPORTED_KINDS.join(", ")
        )
    })?;
    let (fds, resources) = adopt_fds(kind)?;

    // BROKER: `broker::child::confine(&config)` goes here, with the config the broker passes
    // (seccomp program, uid/gid, rlimits, Landlock). Nothing above reads VMM or guest data.

    let backend = backend::build(kind, resources).map_err(|e| one_line(&e))?;
    run_device(backend, fds)
        .map(|_| ())
        .map_err(|e| one_line(&e))
}

/// Takes ownership of the inherited fds of a `kind` worker.
fn adopt_fds(kind: DeviceKind) -> Result<(WorkerFds, HostResources), String> {
    let queues = i32::from(backend::num_queues(kind));
    let resources = i32::try_from(backend::host_resource_count(kind)).unwrap_or(i32::MAX);
    let last = FIRST_QUEUE.saturating_add(queues).saturating_add(resources);
    // Check every number first, so that nothing is adopted unless all are there.
    for fd in CONTROL..last {
        if !is_open(fd) {
            return Err(format!("fd {fd} was not passed (see worker::fd_numbers)"));
        }
    }
    let control = ipc::Channel::try_from_fd(adopt(CONTROL))
        .map_err(|e| format!("fd {CONTROL}: {}", one_line(&e)))?;
    let fds = WorkerFds {
        control,
        guest_ram: File::from(adopt(GUEST_RAM)),
        irq_status: adopt(IRQ_STATUS),
        irqfd: adopt_eventfd(IRQFD),
        stop: adopt_eventfd(STOP),
        queue_events: (FIRST_QUEUE..FIRST_QUEUE + queues)
            .map(adopt_eventfd)
            .collect(),
    };
    let files = (FIRST_QUEUE + queues..last)
        .map(|fd| File::from(adopt(fd)))
        .collect();
    Ok((fds, HostResources { files }))
}

fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the descriptor flags of `fd`; any number is safe to ask about.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

fn adopt(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` is open (checked by `adopt_fds`) and, by the broker's contract, passed for
    // this purpose only: nothing else in this fresh process owns it, and each fixed number is
    // adopted exactly once.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn adopt_eventfd(fd: RawFd) -> EventFd {
    // SAFETY: as in `adopt`: an open fd owned by nothing else, adopted once. If it is not an
    // eventfd, reads and writes fail with an error; nothing is unsound.
    unsafe { EventFd::from_raw_fd(fd) }
}
