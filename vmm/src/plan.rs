//! What a device's worker is started with, computed once per device at set-up: the fds it
//! inherits (number and meaning), its ids, its sandbox ([`broker::ConfineConfig`]) and its
//! command line — everything needed to start (or start again) device N.
//!
//! Device set-up spawns from a [`WorkerPlan`], and `svmm --print-sandbox` prints one, so the
//! report shows what is spawned rather than a description that can drift from it:
//!
//! ```text
//!   DeviceSpec ─ config.resources() ─▶ [HostResource] ─ inherited_fds ─▶ [InheritedFd]
//!     │  └ config.sandbox() ─▶ SandboxNeeds ─┐             (numbers: worker::fd_numbers)
//!     │                 sizes of resources ──┴─ sandbox_config ─▶ ConfineConfig ─┐
//!     └ worker number ─ worker_ids ─▶ IdChoice ─┘                                └ worker_argv
//! ```
//!
//! Nothing here opens a resource for the device: the sizes a sandbox depends on (a writable
//! disk image's, for `RLIMIT_FSIZE`) come from the caller, measured on the opened resources at
//! set-up and by path for `--print-sandbox`.

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;

use broker::{ConfineConfig, HostResource, IdChoice, IdRange, LandlockBeneath, SubIds};
use devices::kind::{SandboxNeeds, ShmWindow};
use seccomp_profiles::Mode;

use crate::config::SandboxOptions;
use crate::device_spec::DeviceSpec;
use crate::host_resources::file_size_limit;
use worker::args::{self, WORKER_ARG};
use worker::fd_numbers::{CONTROL, FIRST_QUEUE, GUEST_RAM, IRQFD, IRQ_STATUS, STOP};

/// Address space a worker may map besides guest RAM (which it maps whole) and what its kind
/// declares (`SandboxNeeds::memory`): its code and libraries, stack, heap, the interrupt status
/// page, its control messages and rings. A release worker of the smallest kinds maps about 5 MiB besides
/// guest RAM (`VmSize` in `/proc`); 64 MiB leaves room for debug builds and allocator slack,
/// and it is still a bound: a worker that tries to hold more fails its allocation (and dies of
/// it) instead of taking host memory.
pub const WORKER_AS_MARGIN: u64 = 64 << 20;

/// One fd a worker holds from its start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InheritedFd {
    /// Its number in the worker.
    pub number: RawFd,
    /// What it is, for people.
    pub what: String,
}

/// Everything about one device's worker.
#[derive(Debug)]
pub struct WorkerPlan {
    /// `rng#0`.
    pub name: String,
    /// Sandboxed worker process (true) or a thread of svmm (`sandbox=off`).
    pub sandboxed: bool,
    /// The device's seccomp profile.
    pub seccomp_profile: &'static str,
    /// The fds of the worker, 0 upwards.
    pub fds: Vec<InheritedFd>,
    /// Resources without an fd, which svmm makes on the worker's request.
    pub on_request: Vec<String>,
    /// The ids the worker gets.
    pub ids: IdChoice,
    /// The sandbox `broker::confine` applies, without its seccomp program: the worker compiles
    /// its own profile from the same binary.
    pub confine: ConfineConfig,
    /// The worker's command line (argv[0] first).
    pub argv: Vec<CString>,
    /// What the device sets up itself in the last step before its filter.
    pub before_filter: &'static [&'static str],
}

/// Why a worker cannot be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The device names a seccomp profile this build has not compiled (a bug in its kind).
    #[error("the {kind} device asks for seccomp profile {profile:?}, which this build lacks")]
    UnknownProfile {
        /// The device kind.
        kind: &'static str,
        /// The missing profile.
        profile: &'static str,
    },
    /// The device asks for Landlock rights beneath a resource that is not a directory.
    #[error("the {kind} device asks for Landlock rights beneath its resource {resource}, which is not a directory")]
    LandlockResource {
        /// The device kind.
        kind: &'static str,
        /// The resource's index.
        resource: usize,
    },
    /// A resource the sandbox's limits depend on cannot be measured.
    #[error("cannot measure {what}")]
    Size {
        /// The resource.
        what: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The device's configuration does not fit on a worker's command line.
    #[error("the {kind} device's configuration cannot be passed to its worker")]
    Config {
        /// The device kind.
        kind: &'static str,
        /// Why.
        #[source]
        source: ipc::CodecError,
    },
    /// Root runs out of worker ids.
    #[error("no worker id left for worker {index} in the worker id range")]
    NoIds {
        /// The worker's number.
        index: u32,
    },
}

/// Plans the worker of device `index` (in `--device` order), the `worker`-th sandboxed one,
/// confined as `options` say: its fds, ids, sandbox and argv. `size_of(i)` measures resource
/// `i` where the sandbox's limits depend on it; `window` is where the device's shared-memory
/// region lies, if it has one (`crate::services::windows`). Nothing is opened or spawned.
pub fn plan(
    index: u32,
    worker: u32,
    spec: &DeviceSpec,
    options: &SandboxOptions,
    size_of: &dyn Fn(usize) -> io::Result<u64>,
    window: Option<ShmWindow>,
) -> Result<WorkerPlan, PlanError> {
    let mode = options.seccomp;
    let kind = spec.kind();
    let config = &spec.config;
    let profile = config.seccomp_profile();
    if seccomp_profiles::program(profile, mode).is_none() {
        return Err(PlanError::UnknownProfile { kind, profile });
    }
    let resources = config.resources();
    let needs = config.sandbox();
    let ids = worker_ids(
        worker,
        options.worker_ids,
        options.host_ids.subids(),
        needs.user_files,
    )?;
    let services = config
        .has_services()
        .then(|| services_fd_text(&format!("{kind}#{index}"), &resources, window));
    let fds = inherited_fds(kind, config.queues(), &resources, services.as_deref());
    let mut confine = sandbox_config(spec, &resources, &needs, ids, size_of)?;
    confine.rlimits.address_space = Some(address_space(options.guest_ram, &needs));
    confine.allow_missing_landlock = options.allow_missing_landlock;
    let argv = worker_argv(spec, mode, &confine, window)?;
    let on_request = resources
        .iter()
        .filter(|r| !r.has_fd())
        .map(HostResource::describe)
        .collect();
    Ok(WorkerPlan {
        name: format!("{kind}#{index}"),
        sandboxed: spec.sandbox,
        seccomp_profile: profile,
        fds,
        on_request,
        ids,
        confine,
        argv,
        before_filter: needs.before_filter,
    })
}

/// The ids of sandboxed worker number `worker`: as root, host ids from `range`
/// (`--worker-ids`); unprivileged with `subids`, ids of the broker's user namespace that the
/// host sees as the worker's own subordinate ids (svmm's own ids for a kind with
/// `user_files`); otherwise the VMM's own ids, seen as [`broker::NS_WORKER_ID`] inside the
/// worker's user namespace.
pub fn worker_ids(
    worker: u32,
    range: IdRange,
    subids: Option<SubIds>,
    user_files: bool,
) -> Result<IdChoice, PlanError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if uid == 0 {
        range.ids(worker).ok_or(PlanError::NoIds { index: worker })
    } else if let Some(subids) = subids {
        if user_files {
            return Ok(subids.as_user(uid, gid));
        }
        subids
            .worker(worker)
            .ok_or(PlanError::NoIds { index: worker })
    } else {
        Ok(IdChoice::Unprivileged)
    }
}

/// What a device's service channel is for, for its line in the fd table.
fn services_fd_text(name: &str, resources: &[HostResource], window: Option<ShmWindow>) -> String {
    let mut grants: Vec<String> = resources
        .iter()
        .filter_map(|r| match r {
            HostResource::SocketPath { path } => Some(format!(
                "new connections to {} (at most {} open in the VM)",
                path.display(),
                crate::services::MAX_CONNECTIONS_PER_VM
            )),
            _ => None,
        })
        .collect();
    if let Some(w) = window {
        grants.push(format!(
            "sealed memfds mapped into its shared-memory region {:#x}..{:#x} (at most {} \
             mappings)",
            w.base,
            w.base + w.len,
            crate::services::shm::MAX_MAPPINGS
        ));
    }
    format!(
        "service channel (SOCK_SEQPACKET, the worker's end; svmm's svc-{name} thread answers, \
         checking every request): {}",
        grants.join("; ")
    )
}

/// The uid and gid the broker process drops to: as root `IdRange::broker`; unprivileged with
/// `subids`, its id inside its own user namespace (`SubIds::broker`); otherwise `None`.
pub fn broker_ids(range: IdRange, subids: Option<SubIds>) -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        range.broker().map(|id| (id, id))
    } else {
        subids.and_then(|s| s.broker()).map(|(ns, _)| ns)
    }
}

/// As root: the uid and gid svmm drops to once KVM and the host resources are open
/// (`IdRange::svmm`); `None` unprivileged.
pub fn svmm_ids(range: IdRange) -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    root.then(|| range.svmm()).flatten().map(|id| (id, id))
}

/// The fds a worker of `kind` with `queues` queues and `resources` holds, 0 upwards: stdio,
/// the fixed numbers of `worker::fd_numbers`, one eventfd per queue, each resource with an
/// fd, in order, as declared, then the service channel, if the device has one (`services`:
/// what it is for).
pub fn inherited_fds(
    kind: &str,
    queues: u16,
    resources: &[HostResource],
    services: Option<&str>,
) -> Vec<InheritedFd> {
    let fd = |number: RawFd, what: &str| InheritedFd {
        number,
        what: what.to_string(),
    };
    let mut fds = vec![
        fd(0, "stdin: /dev/null"),
        fd(1, "stdout: /dev/null"),
        fd(
            2,
            "stderr: a pipe of its own (svmm reads the other end and shows each line cleaned of \
             control characters, prefixed with the device and rate-limited)",
        ),
        fd(
            CONTROL,
            "control socket (SOCK_SEQPACKET, the worker's end; svmm holds the other)",
        ),
        fd(
            GUEST_RAM,
            "guest RAM memfd (sealed: F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)",
        ),
        fd(
            IRQ_STATUS,
            "interrupt status page (memfd, one page shared with svmm: InterruptStatus bits)",
        ),
        fd(
            IRQFD,
            "irqfd (eventfd bound by KVM to the device's GSI: writing it interrupts the guest)",
        ),
        fd(
            STOP,
            "stop eventfd (readable = stop serving; the broker makes one per worker, nobody \
             writes it to a spawned worker)",
        ),
    ];
    for queue in 0..queues {
        fds.push(fd(
            FIRST_QUEUE + i32::from(queue),
            &format!(
                "queue {queue} notify eventfd (KVM ioeventfd on QueueNotify, datamatch {queue})"
            ),
        ));
    }
    let first = worker::fd_numbers::first_resource(queues);
    let with_fds = resources.iter().filter(|r| r.has_fd());
    for (number, resource) in (first..).zip(with_fds) {
        fds.push(fd(
            number,
            &format!("host resource of {kind}: {}", resource.describe()),
        ));
    }
    if let Some(services) = services {
        let number = fds.last().map_or(first, |f| (f.number + 1).max(first));
        fds.push(fd(number, services));
    }
    fds
}

/// `RLIMIT_AS` of a worker in a VM with `guest_ram` bytes of RAM: guest RAM, the margin, and
/// what the kind declares it may hold.
pub fn address_space(guest_ram: u64, needs: &SandboxNeeds) -> u64 {
    guest_ram
        .saturating_add(WORKER_AS_MARGIN)
        .saturating_add(needs.memory)
}

/// The worker's sandbox without its seccomp program: the broker's usual one
/// ([`ConfineConfig::new`]) for the fds above stderr, with the kind's `needs`.
pub fn sandbox_config(
    spec: &DeviceSpec,
    resources: &[HostResource],
    needs: &SandboxNeeds,
    ids: IdChoice,
    size_of: &dyn Fn(usize) -> io::Result<u64>,
) -> Result<ConfineConfig, PlanError> {
    let kind = spec.kind();
    let queues = spec.config.queues();
    let resource_fds =
        resources.iter().filter(|r| r.has_fd()).count() + usize::from(spec.config.has_services());
    let fds = worker::fd_numbers::passed(queues, resource_fds);
    let mut sandbox = ConfineConfig::new(ids.worker_ids(), fds, Vec::new());
    sandbox.rlimits.nproc = needs.nproc;
    sandbox.rlimits.nofile = 3 + u64::from(fds) + needs.extra_fds;
    let fsize = file_size_limit(needs.file_size, size_of).map_err(|source| {
        let what = match needs.file_size {
            devices::kind::FileSize::SizeOf(i) => resources
                .get(i)
                .map_or(format!("resource {i}"), HostResource::describe),
            devices::kind::FileSize::Nothing
            | devices::kind::FileSize::Unlimited
            | devices::kind::FileSize::Bytes(_) => "nothing".into(),
        };
        PlanError::Size { what, source }
    })?;
    sandbox.rlimits.fsize = fsize;
    for rule in &needs.landlock {
        let not_a_directory = PlanError::LandlockResource {
            kind,
            resource: rule.resource,
        };
        if !matches!(
            resources.get(rule.resource),
            Some(HostResource::Directory { .. })
        ) {
            return Err(not_a_directory);
        }
        // The directory's fd number: after the queues, among the resources with fds.
        let position = resources[..rule.resource]
            .iter()
            .filter(|r| r.has_fd())
            .count();
        let first = worker::fd_numbers::first_resource(queues);
        sandbox.landlock_beneath.push(LandlockBeneath {
            fd: first + position as RawFd,
            writable: rule.writable,
        });
    }
    Ok(sandbox)
}

/// The worker's argv, `svmm __worker KIND --seccomp=MODE --sandbox-... --config=HEX
/// [--shm-window=BASE:LEN] [--fault=MODE [--fault-after=N]]`: the sandbox's `--sandbox-*`
/// arguments, the kind's config in its one encoding and where its shared-memory region lies
/// (`worker::args`; the seccomp program does not travel: the worker compiles its profile from
/// the same binary, in `mode`).
pub fn worker_argv(
    spec: &DeviceSpec,
    mode: Mode,
    confine: &ConfineConfig,
    window: Option<ShmWindow>,
) -> Result<Vec<CString>, PlanError> {
    let kind = spec.kind();
    let config = spec
        .config
        .encode()
        .map_err(|source| PlanError::Config { kind, source })?;
    let text = |s: String| CString::new(s).expect("no NUL in names, numbers and hex");
    let mut argv = vec![
        text("svmm".into()),
        text(WORKER_ARG.into()),
        text(kind.into()),
        text(args::seccomp_arg(mode)),
    ];
    argv.extend(confine.to_args());
    argv.push(text(args::config_arg(&config)));
    if let Some(window) = window {
        argv.push(text(args::shm_window_arg(window)));
    }
    #[cfg(feature = "test-faults")]
    if let Some(fault) = spec.fault {
        argv.push(text(format!(
            "{}{}",
            worker::fault::ARG_PREFIX,
            fault.name()
        )));
        if let Some(after) = spec.fault_after {
            argv.push(text(format!("{}{after}", worker::fault::AFTER_ARG_PREFIX)));
        }
    }
    Ok(argv)
}

#[cfg(test)]
mod tests;
