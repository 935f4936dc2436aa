//! `svmm __worker KIND [--KIND-*...] --seccomp=MODE --sandbox-...`: the hidden mode in which a
//! spawned worker process runs one device.
//!
//! The broker starts it with the fds at the fixed numbers of [`super::fd_numbers`], then the
//! kind's host resources, the kind's parameters as `--KIND-*` arguments ([`super::kind_args`],
//! parsed strictly) and its sandbox as `--sandbox-*` arguments
//! (`broker::ConfineConfig::to_args`). In this order, before any byte from the VMM or the guest
//! is read:
//!
//! 1. adopt the fds (checking each is open) and build the backend from the host resources
//!    (which stores and checks them: a disk image's type and size);
//! 2. take the device's seccomp program (`backend.sandbox_needs().seccomp_profile`, in the
//!    `--seccomp` mode) and rebuild the sandbox config from the arguments;
//! 3. `broker::confine_with`: empty root, ids, no capabilities, no_new_privs, death signal,
//!    rlimits, only the listed fds, Landlock, then
//! 4. right before the seccomp filter, what the filter forbids: the SIGSYS reporter on the
//!    control socket (`seccomp_profiles::sigsys`: `sigaltstack`, `rt_sigaction`), the kind's
//!    own set-up (`backend::Built::prepare`: virtio-blk's io_uring ring, `io_uring_setup` and
//!    `io_uring_register`; here, after step 7, so that its fd survives; if the kernel refuses
//!    io_uring the worker says so in one line and uses the synchronous engine) and the
//!    mappings of guest RAM and the interrupt status page ([`prepare`]: `statx`, `fstat`,
//!    `fcntl(F_DUPFD_CLOEXEC)`, `mmap`) — none of which reads a byte — and the filter last;
//!
//! then it [`serve`]s the device exactly as an in-process device's `run_device_confined` does. It exits 0 when the VMM shuts
//! it down or goes away, 1 on any error (one line on stderr). A worker never runs unconfined:
//! without its `--sandbox-*` arguments it refuses to start.
//!
//! With the `test-faults` feature, `--fault=MODE` wraps the backend in
//! [`super::fault::Faulty`].

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use vmm_sys_util::eventfd::EventFd;

use broker::ConfineConfig;
use seccomp_profiles::Mode;

use super::backend::{self, BackendConfig, HostResources};
use super::fd_numbers::{CONTROL, FIRST_QUEUE, GUEST_RAM, IRQFD, IRQ_STATUS, STOP};
use super::{kind_args, prepare, serve, WorkerFds};
use crate::device_spec::{DeviceKind, SUPPORTED_KINDS};
use crate::error::one_line;

/// The first argument that selects worker mode.
pub const WORKER_ARG: &str = "__worker";
/// The worker argument that selects the seccomp filter's mode: `--seccomp=trap|log`.
pub const SECCOMP_ARG: &str = "--seccomp=";

/// Runs worker mode with `args` (after `__worker`); returns the process exit status.
pub fn main(args: &[String]) -> u8 {
    match run(args) {
        Ok(()) => 0,
        Err(message) => {
            say(&message);
            1
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let Some((kind, options)) = args.split_first() else {
        return Err(format!(
            "usage: svmm {WORKER_ARG} KIND {SECCOMP_ARG}trap|log --sandbox-..."
        ));
    };
    let kind = DeviceKind::from_name(kind).ok_or_else(|| {
        format!(
            "unknown device kind {kind:?} (supported: {})",
            SUPPORTED_KINDS.join(", ")
        )
    })?;
    let (mut config, rest) = ConfineConfig::from_args(options, Vec::new())
        .map_err(|e| format!("{} (a worker only runs confined)", one_line(&e)))?;
    let (device, rest) = kind_args::parse(kind, &rest).map_err(|e| one_line(&e))?;
    let options = WorkerOptions::parse(&rest)?;

    // 1. The fds and the backend (which stores and checks its host files).
    let (fds, resources) = adopt_fds(&device)?;
    let expected = fds_passed(&device);
    if config.fds != expected {
        return Err(format!(
            "--sandbox-fds={} but a {kind} worker inherits {expected} fds",
            config.fds
        ));
    }
    let mut built = backend::build(&device, resources).map_err(|e| one_line(&e))?;

    // 2. The device's own filter.
    let profile = built.sandbox_needs().seccomp_profile;
    config.seccomp = seccomp_profiles::program(profile, options.seccomp)
        .ok_or_else(|| format!("no seccomp profile {profile:?} in this build"))?;

    // 3 + 4. Every sandbox layer; right before the filter, what it forbids: the SIGSYS
    // reporter, the device's own set-up and the mappings. Nothing here reads VMM or guest
    // data.
    let mut prepared = None;
    broker::confine_with(&config, || {
        seccomp_profiles::sigsys::install_reporter(CONTROL)?;
        if let Some(warning) = built.prepare() {
            say(&format!("{kind}: {warning}"));
        }
        prepared = Some(prepare(built.backend(), fds)?);
        Ok(())
    })
    .map_err(|e| format!("sandbox {}", one_line(&e)))?;
    let prepared = prepared.ok_or("sandbox set-up did not run")?;
    let backend = built.into_backend();

    #[cfg(feature = "test-faults")]
    let backend: Box<dyn devices::VirtioBackend> = match options.fault {
        Some(fault) => Box::new(super::fault::Faulty::new(backend, fault, CONTROL)),
        None => backend,
    };
    serve(backend, prepared)
        .map(|_| ())
        .map_err(|e| one_line(&e))
}

/// Prints `svmm worker: MESSAGE` on stderr if it can. Never panics: the worker's stderr may be
/// /dev/null, gone, or a file its `RLIMIT_FSIZE` of 0 refuses to grow.
pub fn say(message: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "svmm worker: {message}");
}

/// The worker arguments besides the sandbox's.
struct WorkerOptions {
    /// `--seccomp=trap|log` (required).
    seccomp: Mode,
    /// `--fault=MODE` (test builds only).
    #[cfg(feature = "test-faults")]
    fault: Option<super::fault::Fault>,
}

impl WorkerOptions {
    fn parse(args: &[std::ffi::OsString]) -> Result<Self, String> {
        let mut seccomp = None;
        #[cfg(feature = "test-faults")]
        let mut fault = None;
        for arg in args {
            let text = arg.to_str().unwrap_or_default();
            if let Some(mode) = text.strip_prefix(SECCOMP_ARG) {
                seccomp = Some(match mode {
                    "trap" => Mode::Trap,
                    "log" => Mode::Log,
                    _ => return Err(format!("invalid worker argument {arg:?}")),
                });
                continue;
            }
            #[cfg(feature = "test-faults")]
            if let Some(name) = text.strip_prefix(super::fault::ARG_PREFIX) {
                fault = Some(
                    super::fault::Fault::from_name(name)
                        .ok_or_else(|| format!("invalid worker argument {arg:?}"))?,
                );
                continue;
            }
            return Err(format!("unknown worker argument {arg:?}"));
        }
        Ok(WorkerOptions {
            seccomp: seccomp.ok_or_else(|| format!("missing worker argument {SECCOMP_ARG}"))?,
            #[cfg(feature = "test-faults")]
            fault,
        })
    }
}

/// How many fds the worker of a `device` inherits at 3, 4, ...: the fixed ones, one per queue,
/// and the host resources.
pub fn fds_passed(device: &BackendConfig) -> u32 {
    let fixed = (FIRST_QUEUE - CONTROL) as u32;
    let resources = u32::try_from(device.host_resource_count()).unwrap_or(u32::MAX);
    fixed
        .saturating_add(u32::from(device.num_queues()))
        .saturating_add(resources)
}

/// Takes ownership of the inherited fds of the worker of a `device`.
fn adopt_fds(device: &BackendConfig) -> Result<(WorkerFds, HostResources), String> {
    let queues = i32::from(device.num_queues());
    let resources = i32::try_from(device.host_resource_count()).unwrap_or(i32::MAX);
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
