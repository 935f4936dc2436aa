//! The VM description: what the command line asks for, as plain, validated data. The command
//! line (`cli`) produces it; everything that builds and runs the VM reads it and never looks
//! at the command line itself.

use std::path::PathBuf;

use broker::IdRange;
use clap::ValueEnum;
use seccomp_profiles::Mode;

use crate::device_spec::DeviceSpec;

/// The validated configuration the VMM runs with.
#[derive(Debug)]
pub struct VmConfig {
    /// Kernel image path.
    pub kernel: PathBuf,
    /// Optional initrd path.
    pub initrd: Option<PathBuf>,
    /// Command line as given.
    pub cmdline: String,
    /// Guest RAM in bytes.
    pub mem_bytes: u64,
    /// What guest RAM's memfd is made of (`--hugepages`).
    pub ram_backing: worker::guest_ram::Backing,
    /// vCPU count.
    pub cpus: u8,
    /// The virtio devices, in slot order; `sandbox` already folds in `--no-sandbox`.
    pub devices: Vec<DeviceSpec>,
    /// Whether to write ACPI tables (`--acpi`).
    pub acpi: bool,
    /// What a dead or misbehaving worker does to the VM.
    pub on_worker_exit: OnWorkerExit,
    /// `--max-restarts`: most restarts of one device's worker within a minute.
    pub max_restarts: u32,
    /// What seccomp filters do with a system call their profile does not allow.
    pub seccomp: SeccompMode,
    /// How sandboxed workers are confined.
    pub sandbox: SandboxOptions,
    /// `--report-timings`: print each device's spawn time on stderr.
    pub report_timings: bool,
    /// Test builds, `--test-gate-probe`: report the main thread's seccomp mode at the vCPU gate
    /// (`crate::gate_probe`).
    #[cfg(feature = "test-faults")]
    pub gate_probe: bool,
}

/// How sandboxed workers are confined (from the command line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SandboxOptions {
    /// `--seccomp`: what the filter does with a forbidden call.
    pub seccomp: Mode,
    /// `--worker-ids`: host ids for workers of a root VMM.
    pub worker_ids: IdRange,
    /// `--allow-missing-landlock`.
    pub allow_missing_landlock: bool,
    /// Unprivileged: whether workers get subordinate host ids (`--subids`).
    pub host_ids: HostIds,
    /// Guest RAM in bytes (`--mem`): every worker maps it whole, and its `RLIMIT_AS` is this
    /// plus a margin (`plan::WORKER_AS_MARGIN`) plus what its kind may hold.
    pub guest_ram: u64,
}

/// `--seccomp`: what a filter does with a system call its profile does not allow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum SeccompMode {
    /// Deny it with SIGSYS.
    #[default]
    Trap,
    /// Allow it and log it to the kernel audit log.
    Log,
}

impl From<SeccompMode> for seccomp_profiles::Mode {
    fn from(mode: SeccompMode) -> Self {
        match mode {
            SeccompMode::Trap => seccomp_profiles::Mode::Trap,
            SeccompMode::Log => seccomp_profiles::Mode::Log,
        }
    }
}

/// `--on-worker-exit`: what a dead or misbehaving device worker does to the VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnWorkerExit {
    /// Start a new worker for the device with its state (`crate::supervisor`); past the
    /// restart limit, or for a kind whose requests cannot be taken again, as `keep`/the kind
    /// says.
    Restart,
    /// Keep the VM running; the device shows DEVICE_NEEDS_RESET.
    Keep,
    /// End the VM with an error.
    Stop,
}

/// `--max-restarts`'s default: restarts of one device's worker within a minute.
pub const DEFAULT_MAX_RESTARTS: u32 = 5;

/// Where the host ids of sandboxed workers come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostIds {
    /// svmm runs as root: from `--worker-ids`.
    Root,
    /// Unprivileged, from svmm's user's subordinate ranges (`--subids=on` and the user has
    /// them): one host uid and gid per worker.
    Subordinate(broker::SubIds),
    /// Unprivileged without subordinate ids: workers share svmm's host ids; why.
    Shared(&'static str),
}

impl HostIds {
    /// The subordinate ranges, if used.
    pub fn subids(self) -> Option<broker::SubIds> {
        match self {
            HostIds::Subordinate(ids) => Some(ids),
            HostIds::Root | HostIds::Shared(_) => None,
        }
    }

    /// As the command line and the host say: `use_subids` is `--subids=on`; `devices` how
    /// many workers the range must hold.
    pub fn detect(use_subids: bool, devices: usize) -> HostIds {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let uid = unsafe { libc::geteuid() };
        if uid == 0 {
            return HostIds::Root;
        }
        if !use_subids {
            return HostIds::Shared("--subids=off");
        }
        // The workers' ids, the broker's and the namespace's unused last id.
        let need = u32::try_from(devices)
            .unwrap_or(u32::MAX)
            .saturating_add(2)
            .max(3);
        match broker::subid::detect(uid, need) {
            Ok(ids) => HostIds::Subordinate(ids),
            Err(why) => HostIds::Shared(why),
        }
    }
}
