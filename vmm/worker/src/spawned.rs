//! `svmm __worker KIND --seccomp=MODE --sandbox-... --config=HEX`: the hidden mode in which a
//! spawned worker process runs one device.
//!
//! The broker starts it with the fds at the fixed numbers of [`crate::fd_numbers`], then the
//! kind's host resources that have an fd, and the arguments of [`crate::args`]: the sandbox as
//! `--sandbox-*` (`broker::ConfineConfig::to_args`) and the kind's config in its one encoding.
//! The kind comes from the registry the caller passes. In this order, before any byte from
//! the VMM or the guest is read:
//!
//! 1. decode and validate the kind's config; adopt the fds (checking each is open) and build
//!    the backend from its host resources (the kind's `build`: a disk image's type and size
//!    are checked there);
//! 2. take the kind's seccomp program (in the `--seccomp` mode) and rebuild the sandbox config
//!    from the arguments;
//! 3. `broker::confine_with`: empty root, ids, no capabilities, no_new_privs, death signal,
//!    rlimits, only the listed fds, Landlock, then
//! 4. right before the seccomp filter, what the filter forbids: the SIGSYS reporter on the
//!    control socket (`seccomp_profiles::sigsys`: `sigaltstack`, `rt_sigaction`), the kind's
//!    own last set-up (`Kind::prepare`, e.g. an io_uring ring made with `io_uring_setup` and
//!    `io_uring_register`; here, after the fd step, so that its fd survives; a kind that must
//!    make do with less says so in one line) and the mappings of guest RAM and the interrupt
//!    status page and the event loop's epoll instance ([`map_memory`]: `statx`, `fstat`,
//!    `fcntl(F_DUPFD_CLOEXEC)`, `mmap`, `epoll_create1`) — none of which reads a byte — and the
//!    filter last;
//!
//! then it [`serve`]s the device exactly as an in-process device's thread does. It exits 0
//! when the VMM shuts it down or goes away, 1 on any error (one line on stderr). A worker never
//! runs unconfined: without its `--sandbox-*` arguments it refuses to start.
//!
//! With the `test-faults` feature, `--fault=MODE` wraps the backend in
//! `fault::Faulty`.

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use vmm_sys_util::eventfd::EventFd;

use broker::ConfineConfig;
use devices::kind::ResourceFds;
use devices::{DeviceConfig, DeviceKind};

use crate::args::{WorkerArgs, SECCOMP_ARG, WORKER_ARG};
use crate::fd_numbers::{self, CONTROL, FIRST_QUEUE, GUEST_RAM, IRQFD, IRQ_STATUS, STOP};
use crate::report::{one_line, say};
use crate::{map_memory, serve, WorkerFds};

/// Runs worker mode with `args` (after `__worker`), for a kind of `kinds`; returns the process
/// exit status.
pub fn main(args: &[String], kinds: &[&dyn DeviceKind]) -> u8 {
    match run(args, kinds) {
        Ok(()) => 0,
        Err(message) => {
            say(&message);
            1
        }
    }
}

fn run(args: &[String], kinds: &[&dyn DeviceKind]) -> Result<(), String> {
    let Some((name, options)) = args.split_first() else {
        return Err(format!(
            "usage: svmm {WORKER_ARG} KIND {SECCOMP_ARG}trap|log --sandbox-... --config=HEX"
        ));
    };
    let kind = kinds.iter().find(|k| k.name() == name).ok_or_else(|| {
        let names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
        format!(
            "unknown device kind {name:?} (supported: {})",
            names.join(", ")
        )
    })?;
    let (mut sandbox, rest) = ConfineConfig::from_args(options, Vec::new())
        .map_err(|e| format!("{} (a worker only runs confined)", one_line(&e)))?;
    let options = WorkerArgs::parse(&rest)?;
    let config = kind
        .decode(&options.config)
        .map_err(|e| format!("{name}: {}", one_line(&e)))?;

    // 1. The fds and the backend (which checks its host resources).
    let window = options.shm_window;
    if config.shm_region() != window.map(|w| w.len) {
        return Err(format!(
            "{name}: --shm-window does not match the device's shared-memory region"
        ));
    }
    let (fds, mut resources) = adopt_fds(&config)?;
    if config.has_services() {
        let first = fd_numbers::first_resource(config.queues());
        let channel = first + resource_fd_count(&config) as RawFd;
        resources = resources.with_services(adopt(channel), window);
    }
    let expected = expected_fds(&config);
    if sandbox.fds != expected {
        return Err(format!(
            "--sandbox-fds={} but a {name} worker inherits {expected} fds",
            sandbox.fds
        ));
    }
    let mut built = config
        .build(resources)
        .map_err(|e| format!("the {name} device: {}", one_line(&e)))?;
    #[cfg(feature = "test-faults")]
    if options.fault == Some(super::fault::Fault::Host) && !built.arm_host_probe() {
        return Err(format!("fault=host: the {name} kind has no host probe"));
    }

    // 2. The device's own filter.
    let profile = config.seccomp_profile();
    sandbox.seccomp = seccomp_profiles::program(profile, options.seccomp)
        .ok_or_else(|| format!("no seccomp profile {profile:?} in this build"))?;

    // 3 + 4. Every sandbox layer; right before the filter, what it forbids: the SIGSYS
    // reporter, the device's own set-up and the mappings. Nothing here reads VMM or guest
    // data.
    let mut mapped = None;
    broker::confine_with(&sandbox, || {
        seccomp_profiles::sigsys::install_reporter(CONTROL)?;
        if let Some(warning) = built.prepare() {
            say(&format!("{name}: {warning}"));
        }
        mapped = Some(map_memory(built.backend(), fds)?);
        Ok(())
    })
    .map_err(|e| format!("sandbox {}", one_line(&e)))?;
    let mapped = mapped.ok_or("sandbox set-up did not run")?;
    let backend = built.into_backend();

    // Confined, and silent for good: no Ready (a futex wait the filter allows).
    #[cfg(feature = "test-faults")]
    if options.fault == Some(crate::fault::Fault::Unready) {
        loop {
            std::thread::park();
        }
    }
    #[cfg(feature = "test-faults")]
    let backend: Box<dyn devices::VirtioBackend> = match options.fault {
        // The device probes by itself (armed above).
        None | Some(crate::fault::Fault::Host) => backend,
        Some(fault) => {
            Box::new(crate::fault::Faulty::new(backend, fault, CONTROL).after(options.fault_after))
        }
    };
    // Confined already: nothing to do before the first message.
    serve(backend, mapped, || Ok(()))
        .map(|_| ())
        .map_err(|e| one_line(&e))
}

/// How many host resources of `config` come with an fd.
fn resource_fd_count(config: &DeviceConfig) -> usize {
    config.resources().iter().filter(|r| r.has_fd()).count()
}

/// How many fds a worker of `config` inherits at 3, 4, ...: the fixed ones, the queues', the
/// resources' and the service channel, if the device has one.
fn expected_fds(config: &DeviceConfig) -> u32 {
    let passed = resource_fd_count(config) + usize::from(config.has_services());
    fd_numbers::passed(config.queues(), passed)
}

/// What the broker passes a worker, in the order that puts each at its number of
/// [`fd_numbers`] (3, 4, ...): the fixed fds, one eventfd per queue, then the fd of every host
/// resource that has one (for a device with host services, its service channel is the last
/// slot) — the other side of [`adopt_fds`].
pub fn fds_to_pass(fds: WorkerFds, resources: Vec<Option<OwnedFd>>) -> Vec<OwnedFd> {
    let WorkerFds {
        control,
        guest_ram,
        irq_status,
        irqfd,
        queue_events,
        stop,
    } = fds;
    // In fd_numbers order: CONTROL, GUEST_RAM, IRQ_STATUS, IRQFD, STOP, FIRST_QUEUE...
    let mut list: Vec<OwnedFd> = vec![
        control.into(),
        guest_ram.into(),
        irq_status,
        eventfd_owned(irqfd),
        eventfd_owned(stop),
    ];
    list.extend(queue_events.into_iter().map(eventfd_owned));
    list.extend(resources.into_iter().flatten());
    list
}

/// An `EventFd` as the fd it owns.
fn eventfd_owned(fd: EventFd) -> OwnedFd {
    use std::os::fd::IntoRawFd;
    // SAFETY: into_raw_fd hands over the EventFd's open fd without closing it, so the new
    // OwnedFd is its only owner.
    unsafe { OwnedFd::from_raw_fd(fd.into_raw_fd()) }
}

/// Takes ownership of the inherited fds of a worker of `config`: the fixed ones, the queues',
/// then one per declared resource that has an fd (the others get an empty slot).
fn adopt_fds(config: &DeviceConfig) -> Result<(WorkerFds, ResourceFds), String> {
    let queues = config.queues();
    let last = CONTROL + i32::try_from(expected_fds(config)).unwrap_or(i32::MAX);
    // Check every number first, so that nothing is adopted unless all are there.
    for fd in CONTROL..last {
        if !is_open(fd) {
            return Err(format!("fd {fd} was not passed (see worker::fd_numbers)"));
        }
    }
    let control = ipc::Channel::try_from_fd(adopt(CONTROL))
        .map_err(|e| format!("fd {CONTROL}: {}", one_line(&e)))?;
    let first = fd_numbers::first_resource(queues);
    let fds = WorkerFds {
        control,
        guest_ram: File::from(adopt(GUEST_RAM)),
        irq_status: adopt(IRQ_STATUS),
        irqfd: adopt_eventfd(IRQFD),
        stop: adopt_eventfd(STOP),
        queue_events: (FIRST_QUEUE..first).map(adopt_eventfd).collect(),
    };
    let mut next = first;
    let resources = config
        .resources()
        .iter()
        .map(|resource| {
            resource.has_fd().then(|| {
                next += 1;
                adopt(next - 1)
            })
        })
        .collect();
    Ok((fds, ResourceFds::new(resources)))
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
