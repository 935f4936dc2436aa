//! What a device's worker is started with, computed in one place: the fds it inherits (number
//! and meaning), its ids, its sandbox ([`broker::ConfineConfig`]) and its command line.
//!
//! The spawner and `svmm --print-sandbox` both build a worker from these functions, so the
//! report shows what is spawned rather than a description that can drift from it:
//!
//! ```text
//!   DeviceSpec ─ backend::open_host_resources ─▶ HostResources ─ inherited_fds ─▶ [InheritedFd]
//!     │  └ BackendConfig::of ─┐                      ├ backend::build ─▶ sandbox_needs()
//!     │                       └─ sandbox_config ◀────┘ (fd count, rlimits)  │
//!     └ worker_ids(index, range) ─▶ IdChoice ─┘    └ confine_config(.., needs, mode) ─▶ ConfineConfig
//!                                                                                 └ worker_argv
//! ```

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;

use broker::{ConfineConfig, IdChoice, IdRange};
use devices::SandboxNeeds;
use seccomp_profiles::Mode;

use super::backend::{self, BackendConfig, BackendError, HostResources};
use super::fd_numbers::{CONTROL, FIRST_QUEUE, GUEST_RAM, IRQFD, IRQ_STATUS, STOP};
use super::kind_args;
use super::spawned::{fds_passed, SECCOMP_ARG, WORKER_ARG};
use crate::device_spec::{DeviceKind, DeviceSpec};

/// Whether a spawned worker keeps svmm's stderr as its fd 2 (for its one-line error reports);
/// otherwise it is `/dev/null` like fds 0 and 1.
pub const INHERIT_STDERR: bool = true;

/// One fd a worker holds from its start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InheritedFd {
    /// Its number in the worker.
    pub number: RawFd,
    /// What it is, for people.
    pub what: String,
}

/// Everything about one device's worker, as `--print-sandbox` shows it.
#[derive(Debug)]
pub struct WorkerPlan {
    /// `rng#0`.
    pub name: String,
    /// Sandboxed worker process (true) or a thread of svmm (`sandbox=off`).
    pub sandboxed: bool,
    /// The device's own declaration (seccomp profile, Landlock paths).
    pub needs: SandboxNeeds,
    /// The fds of the worker, 0 upwards.
    pub fds: Vec<InheritedFd>,
    /// The ids the worker gets.
    pub ids: IdChoice,
    /// The sandbox `broker::confine` applies.
    pub confine: ConfineConfig,
    /// The worker's command line (argv[0] first).
    pub argv: Vec<String>,
    /// What the device creates for itself before confinement (`backend::created_before_confinement`).
    pub created: &'static [&'static str],
}

/// Why a worker cannot be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The device's host resources could not be opened, or its backend built.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The device names a seccomp profile this build has not compiled (a bug).
    #[error("the {kind} device asks for seccomp profile {profile:?}, which this build lacks")]
    UnknownProfile {
        /// The device kind.
        kind: DeviceKind,
        /// The missing profile.
        profile: &'static str,
    },
    /// The device asks for Landlock paths; no device kind passes them yet.
    #[error(
        "the {kind} device asks for Landlock paths {paths:?}, which the broker cannot grant yet"
    )]
    LandlockPaths {
        /// The device kind.
        kind: DeviceKind,
        /// The paths.
        paths: Vec<PathBuf>,
    },
    /// Root runs out of worker ids.
    #[error("no worker id left for device {index} in the worker id range")]
    NoIds {
        /// The device's index.
        index: u32,
    },
}

/// Plans the worker of device number `index` (in `--device` order): opens its host resources
/// exactly as the spawner does, builds the backend to read its [`SandboxNeeds`], and derives
/// the rest. Nothing is spawned.
pub fn plan(
    index: u32,
    spec: &DeviceSpec,
    mode: Mode,
    range: IdRange,
) -> Result<WorkerPlan, PlanError> {
    let kind = spec.kind();
    let config = BackendConfig::of(spec);
    let resources = backend::open_host_resources(spec)?;
    let fds = inherited_fds(spec, &resources);
    let ids = worker_ids(index, range)?;
    let sandbox = sandbox_config(&config, &resources, ids, Vec::new());
    let needs = backend::build(&config, resources)?.sandbox_needs();
    let confine = confine_config(kind, sandbox, &needs, mode)?;
    let argv = worker_argv(spec, mode, &confine)
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    Ok(WorkerPlan {
        name: format!("{kind}#{index}"),
        sandboxed: spec.sandbox,
        needs,
        fds,
        ids,
        confine,
        argv,
        created: backend::created_before_confinement(&config),
    })
}

/// The ids of worker `index`: as root, host ids from `range` (`--worker-ids`); otherwise the
/// VMM's own ids, seen as [`broker::NS_WORKER_ID`] inside the worker's user namespace.
pub fn worker_ids(index: u32, range: IdRange) -> Result<IdChoice, PlanError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        range.ids(index).ok_or(PlanError::NoIds { index })
    } else {
        Ok(IdChoice::Unprivileged)
    }
}

/// The fds the worker of `spec` holds, 0 upwards: stdio, the fixed numbers of
/// [`super::fd_numbers`], one eventfd per queue, then `resources` in order, each with the mode
/// it was opened in and the lock the broker took as declared (`backend::host_files`).
pub fn inherited_fds(spec: &DeviceSpec, resources: &HostResources) -> Vec<InheritedFd> {
    let kind = spec.kind();
    let fd = |number: RawFd, what: &str| InheritedFd {
        number,
        what: what.to_string(),
    };
    let stderr = match INHERIT_STDERR {
        true => "stderr: svmm's stderr (the worker's one-line error reports)",
        false => "stderr: /dev/null",
    };
    let mut fds = vec![
        fd(0, "stdin: /dev/null"),
        fd(1, "stdout: /dev/null"),
        fd(2, stderr),
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
            "stop eventfd (readable = stop serving; svmm never writes it to a spawned worker)",
        ),
    ];
    let queues = BackendConfig::of(spec).num_queues();
    for queue in 0..queues {
        fds.push(fd(
            FIRST_QUEUE + i32::from(queue),
            &format!(
                "queue {queue} notify eventfd (KVM ioeventfd on QueueNotify, datamatch {queue})"
            ),
        ));
    }
    let first_resource = FIRST_QUEUE + i32::from(queues);
    let declared = backend::host_files(&spec.params);
    for ((number, file), declared) in (first_resource..).zip(&resources.files).zip(&declared) {
        fds.push(fd(
            number,
            &format!("host resource of {kind}: {}", describe_file(file, declared)),
        ));
    }
    fds
}

/// The worker's sandbox without its seccomp program (`seccomp`): the broker's usual one
/// ([`ConfineConfig::new`]) for the fds above stderr, with the resource limits of the kind
/// (`backend::rlimits`). The spawner (with an empty program: the worker compiles its own) and
/// [`plan`] both start from this.
pub fn sandbox_config(
    config: &BackendConfig,
    resources: &HostResources,
    ids: IdChoice,
    seccomp: seccompiler::BpfProgram,
) -> ConfineConfig {
    let mut sandbox = ConfineConfig::new(ids.worker_ids(), fds_passed(config), seccomp);
    sandbox.rlimits = backend::rlimits(config, resources, sandbox.rlimits);
    sandbox
}

/// `sandbox` (from [`sandbox_config`]) with the device's seccomp profile compiled for `mode`.
pub fn confine_config(
    kind: DeviceKind,
    mut sandbox: ConfineConfig,
    needs: &SandboxNeeds,
    mode: Mode,
) -> Result<ConfineConfig, PlanError> {
    if !needs.landlock_paths.is_empty() {
        return Err(PlanError::LandlockPaths {
            kind,
            paths: needs.landlock_paths.clone(),
        });
    }
    let profile = needs.seccomp_profile;
    sandbox.seccomp = seccomp_profiles::program(profile, mode)
        .ok_or(PlanError::UnknownProfile { kind, profile })?;
    Ok(sandbox)
}

/// The worker's argv, `svmm __worker KIND [--KIND-*...] --seccomp=MODE --sandbox-...
/// [--fault=MODE]`: the kind's parameters (`kind_args`), then the `--sandbox-*` arguments that
/// carry `confine` (the seccomp program does not travel: the worker compiles its profile from
/// the same binary, in `mode`).
pub fn worker_argv(spec: &DeviceSpec, mode: Mode, confine: &ConfineConfig) -> Vec<CString> {
    let mode = match mode {
        Mode::Trap => "trap",
        Mode::Log => "log",
    };
    let words = [
        "svmm".to_string(),
        WORKER_ARG.to_string(),
        spec.kind().name().to_string(),
    ]
    .into_iter()
    .chain(kind_args::to_args(&BackendConfig::of(spec)))
    .chain([format!("{SECCOMP_ARG}{mode}")]);
    // A NUL cannot come from a command line (the id of a blk device is its only free text);
    // should one appear, the worker gets an empty argument and refuses to start.
    let mut argv: Vec<CString> = words.map(|a| CString::new(a).unwrap_or_default()).collect();
    argv.extend(confine.to_args());
    #[cfg(feature = "test-faults")]
    if let Some(fault) = spec.fault {
        let arg = format!("{}{}", super::fault::ARG_PREFIX, fault.name());
        argv.push(CString::new(arg).expect("no NUL in fault names"));
    }
    argv
}

/// `/dev/urandom (read-only)`, `/images/disk.img (read-write, O_DIRECT, flock LOCK_EX)`: where
/// an open file points and how it was opened (mode from the fd itself, lock as declared).
fn describe_file(file: &File, declared: &broker::HostFile) -> String {
    let fd = file.as_raw_fd();
    let path = std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map_or_else(|_| format!("fd {fd}"), |p| p.display().to_string());
    // SAFETY: F_GETFL only reads the status flags of `fd`, which `file` keeps open.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    let mut how = vec![match flags & libc::O_ACCMODE {
        _ if flags < 0 => "mode unknown",
        libc::O_RDONLY => "read-only",
        libc::O_WRONLY => "write-only",
        _ => "read-write",
    }];
    if flags >= 0 && flags & libc::O_DIRECT != 0 {
        how.push("O_DIRECT");
    }
    match declared.lock {
        broker::Lock::None => {}
        broker::Lock::Shared => how.push("flock LOCK_SH: other readers may share it, no writer"),
        broker::Lock::Exclusive => how.push("flock LOCK_EX: no other svmm may open it"),
    }
    format!("{path} ({})", how.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng() -> DeviceSpec {
        DeviceSpec::new(crate::device_spec::DeviceParams::Rng)
    }

    #[test]
    fn rng_worker_fds_follow_the_fixed_numbers() {
        let plan = plan(0, &rng(), Mode::Trap, IdRange::DEFAULT).unwrap();
        let numbers: Vec<RawFd> = plan.fds.iter().map(|f| f.number).collect();
        assert_eq!(numbers, (0..=9).collect::<Vec<_>>());
        assert!(plan.fds[3].what.starts_with("control socket"));
        assert!(plan.fds[4].what.contains("sealed"));
        assert!(plan.fds[8].what.starts_with("queue 0 notify eventfd"));
        assert_eq!(
            plan.fds[9].what,
            "host resource of rng: /dev/urandom (read-only)"
        );
        // The sandbox covers exactly the fds above stderr.
        assert_eq!(plan.confine.fds, 7);
        assert_eq!(plan.confine.lifeline, Some(CONTROL));
        assert_eq!(plan.needs.seccomp_profile, "rng");
        assert_eq!(
            plan.confine.seccomp,
            seccomp_profiles::program("rng", Mode::Trap).unwrap()
        );
    }

    #[test]
    fn argv_round_trips_through_the_worker_parser() {
        let plan = plan(3, &rng(), Mode::Log, IdRange::DEFAULT).unwrap();
        assert_eq!(&plan.argv[..3], ["svmm", WORKER_ARG, "rng"]);
        let (back, rest) = ConfineConfig::from_args(
            &plan.argv,
            seccomp_profiles::program("rng", Mode::Log).unwrap(),
        )
        .unwrap();
        assert_eq!(back, plan.confine);
        assert_eq!(rest, ["svmm", WORKER_ARG, "rng", "--seccomp=log"]);
    }

    #[test]
    fn blk_worker_fds_limits_and_argv() {
        let dir = std::env::temp_dir().join(format!("svmm-plan-blk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let image = dir.join("disk.img");
        std::fs::write(&image, vec![0u8; 1 << 16]).unwrap();
        let spec = crate::device_spec::parse(&format!("blk={},queues=2", image.display())).unwrap();
        let config = BackendConfig::of(&spec);
        let resources = backend::open_host_resources(&spec).unwrap();
        let fds = inherited_fds(&spec, &resources);
        let numbers: Vec<RawFd> = fds.iter().map(|f| f.number).collect();
        assert_eq!(numbers, (0..=10).collect::<Vec<_>>());
        assert!(fds[9].what.starts_with("queue 1 notify eventfd"));
        assert_eq!(
            fds[10].what,
            format!(
                "host resource of blk: {} (read-write, flock LOCK_EX: no other svmm may open it)",
                image.display()
            )
        );
        let sandbox = sandbox_config(&config, &resources, IdChoice::Unprivileged, Vec::new());
        assert_eq!(sandbox.fds, 8);
        assert_eq!(sandbox.rlimits.nproc, devices::blk::SANDBOX_NPROC);
        assert_eq!(sandbox.rlimits.fsize, Some(1 << 16));
        let argv: Vec<String> = worker_argv(&spec, Mode::Trap, &sandbox)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            argv[..9],
            [
                "svmm",
                WORKER_ARG,
                "blk",
                "--blk-ro=0",
                "--blk-id=disk.img",
                "--blk-queues=2",
                "--blk-direct=0",
                format!("--blk-poll-us={}", devices::blk::DEFAULT_POLL_US).as_str(),
                "--seccomp=trap"
            ]
        );
        // The worker gets back exactly the sandbox and the device.
        let (back, rest) = ConfineConfig::from_args(&argv[3..], Vec::new()).unwrap();
        assert_eq!(back, sandbox);
        let (device, rest) = kind_args::parse(DeviceKind::Blk, &rest).unwrap();
        assert_eq!(device, config);
        assert_eq!(rest, ["--seccomp=trap"]);
        // The whole plan, as --print-sandbox shows it (the image is free again).
        drop(resources);
        let plan = plan(0, &spec, Mode::Trap, IdRange::DEFAULT).unwrap();
        assert_eq!(plan.needs.seccomp_profile, "blk");
        assert_eq!(
            plan.confine.seccomp,
            seccomp_profiles::program("blk", Mode::Trap).unwrap()
        );
        assert_eq!(plan.confine.rlimits, sandbox.rlimits);
        assert_eq!(plan.argv[..9], argv[..9]);
        assert!(plan.created[0].starts_with("an io_uring instance"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn ids_depend_on_who_runs_svmm() {
        let ids = worker_ids(2, IdRange::DEFAULT).unwrap();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            assert_eq!(ids, IdRange::DEFAULT.ids(2).unwrap());
            assert_ne!(
                worker_ids(3, IdRange::DEFAULT).unwrap(),
                ids,
                "each worker has its own ids"
            );
        } else {
            assert_eq!(ids, IdChoice::Unprivileged);
        }
    }
}
