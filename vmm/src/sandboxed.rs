//! Sandboxed device workers, VMM side: turning one device's fds into a confined
//! `svmm __worker KIND` process through the broker.
//!
//! The VM owns one [`Sandbox`], created with its first sandboxed device: a long-lived
//! [`broker::Spawner`] thread (workers' parent-death signal follows the thread that cloned them,
//! so every spawn happens there), an `O_PATH` fd to svmm's own executable, and the id counter.
//! For each device [`Sandbox::spawn`]:
//!
//! 1. chooses the worker's ids: as root, a host uid/gid of its own from `--worker-ids`
//!    (`IdChoice::Root`); unprivileged, svmm's own ids seen as 1000 inside the worker's user
//!    namespace (`IdChoice::Unprivileged`);
//! 2. lists the fds in `worker::fd_numbers` order — control socket, guest RAM, status page,
//!    irqfd, stop eventfd, one ioeventfd per queue — and then the host resources the VMM opened
//!    (`worker::backend::open_host_resources`);
//! 3. writes the worker's argv: `svmm __worker KIND`, the kind's parameters
//!    (`worker::kind_args`), `--seccomp=MODE` and the sandbox — with the kind's resource limits
//!    (`worker::backend::rlimits`) — as `--sandbox-*` arguments
//!    (`broker::ConfineConfig::to_args`);
//! 4. hands the spec to the spawner and returns the [`broker::Worker`] (pidfd, kill, reap).
//!
//! Before the first spawn, [`Sandbox::new`] checks that the kernel enforces Landlock and refuses,
//! in one line, when it does not (unless `--allow-missing-landlock`).
//!
//! Workers write their rare one-line fatal errors to svmm's stderr when it is a pipe, terminal or
//! socket; when it is a regular file they get /dev/null instead (their `RLIMIT_FSIZE` is 0).
//!
//! Dropping the `Sandbox` ends the spawner thread, which kills every worker it started (their
//! parent-death signal); the `Worker` handles still reap them.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use broker::{IdRange, SpawnError, Spawner, WorkerSpec};
use seccomp_profiles::Mode;

use crate::device_spec::DeviceSpec;
use crate::worker::backend::{BackendConfig, HostResources};
use crate::worker::plan;
use crate::worker::WorkerFds;

/// How sandboxed workers are confined (from the command line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SandboxOptions {
    /// `--seccomp`: what the filter does with a forbidden call.
    pub seccomp: Mode,
    /// `--worker-ids`: host ids for workers of a root VMM.
    pub worker_ids: IdRange,
    /// `--allow-missing-landlock`.
    pub allow_missing_landlock: bool,
}

/// Why a worker could not be started. Each variant names one failure.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The kernel cannot enforce the Landlock ABI the sandbox needs.
    #[error(
        "this kernel does not enforce Landlock ABI {required} (it has {have}); svmm refuses to \
         start sandboxed device workers without it (--allow-missing-landlock to go on without \
         that layer, --no-sandbox to run devices in-process)"
    )]
    LandlockMissing {
        /// The kernel's Landlock ABI (0: none).
        have: i32,
        /// The ABI the sandbox requires.
        required: i32,
    },
    /// `/proc/self/exe` could not be opened.
    #[error("cannot open svmm's own executable for its workers")]
    SelfExe(#[source] std::io::Error),
    /// The spawner thread could not be started.
    #[error("cannot start the worker spawner")]
    Spawner(#[source] SpawnError),
    /// More sandboxed workers than `--worker-ids` has ids.
    #[error("--worker-ids has no id left for worker number {0}")]
    IdsExhausted(u32),
    /// The broker failed to start the worker.
    #[error("cannot spawn the worker")]
    Spawn(#[source] SpawnError),
}

/// The VM's means to start sandboxed workers (see the module docs).
pub struct Sandbox {
    spawner: Spawner,
    exe: Arc<OwnedFd>,
    options: SandboxOptions,
    /// Workers started so far (the next root worker's index in `--worker-ids`).
    started: u32,
    /// Workers share svmm's stderr (for their one-line fatal errors); not when it is a regular
    /// file, which their `RLIMIT_FSIZE` of 0 would refuse to grow.
    share_stderr: bool,
}

impl Sandbox {
    /// Checks Landlock, opens svmm's executable and starts the spawner thread.
    pub fn new(options: SandboxOptions) -> Result<Self, SandboxError> {
        let have = broker::landlock_abi_version();
        let required = broker::REQUIRED_LANDLOCK_ABI as i32;
        if have < required && !options.allow_missing_landlock {
            return Err(SandboxError::LandlockMissing { have, required });
        }
        let exe = broker::self_exe().map_err(SandboxError::SelfExe)?;
        let spawner = Spawner::new().map_err(SandboxError::Spawner)?;
        let stderr_is_file = std::io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .and_then(|fd| std::fs::File::from(fd).metadata())
            .map_or(true, |m| m.is_file());
        Ok(Sandbox {
            spawner,
            exe: Arc::new(exe),
            options,
            started: 0,
            share_stderr: !stderr_is_file,
        })
    }

    /// Starts the confined worker of `spec` with `fds` and the device's host `resources`.
    pub fn spawn(
        &mut self,
        spec: &DeviceSpec,
        fds: WorkerFds,
        resources: HostResources,
    ) -> Result<broker::Worker, SandboxError> {
        let ids = plan::worker_ids(self.started, self.options.worker_ids)
            .map_err(|_| SandboxError::IdsExhausted(self.started))?;
        let mut config =
            plan::sandbox_config(&BackendConfig::of(spec), &resources, ids, Vec::new());
        let fds = fd_list(fds, resources);
        debug_assert_eq!(u32::try_from(fds.len()).ok(), Some(config.fds));
        config.allow_missing_landlock = self.options.allow_missing_landlock;
        let worker = self
            .spawner
            .spawn(WorkerSpec {
                exe: self.exe.clone(),
                args: plan::worker_argv(spec, self.options.seccomp, &config),
                fds,
                ids,
                namespaces: true,
                inherit_stderr: self.share_stderr,
            })
            .map_err(SandboxError::Spawn)?;
        self.started += 1;
        Ok(worker)
    }
}

/// The worker's fds in `worker::fd_numbers` order, then its host resources.
fn fd_list(fds: WorkerFds, resources: HostResources) -> Vec<OwnedFd> {
    let WorkerFds {
        control,
        guest_ram,
        irq_status,
        irqfd,
        queue_events,
        stop,
    } = fds;
    let mut list: Vec<OwnedFd> = vec![
        control.into(),
        guest_ram.into(),
        irq_status,
        eventfd(irqfd),
        eventfd(stop),
    ];
    list.extend(queue_events.into_iter().map(eventfd));
    list.extend(resources.files.into_iter().map(OwnedFd::from));
    list
}

/// An `EventFd` as the fd it owns.
fn eventfd(fd: vmm_sys_util::eventfd::EventFd) -> OwnedFd {
    use std::os::fd::{FromRawFd, IntoRawFd};
    // SAFETY: into_raw_fd hands over the EventFd's open fd without closing it, so the new
    // OwnedFd is its only owner.
    unsafe { OwnedFd::from_raw_fd(fd.into_raw_fd()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device_spec;

    #[test]
    fn worker_args_carry_kind_mode_and_sandbox() {
        let spec = device_spec::parse("rng").unwrap();
        let config =
            broker::ConfineConfig::new(broker::IdChoice::Unprivileged.worker_ids(), 7, Vec::new());
        let args: Vec<String> = plan::worker_argv(&spec, Mode::Log, &config)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(args[..4], ["svmm", "__worker", "rng", "--seccomp=log"]);
        assert!(args.contains(&"--sandbox-fds=7".to_string()), "{args:?}");
        let (back, rest) = broker::ConfineConfig::from_args(&args[4..], Vec::new()).unwrap();
        assert_eq!(back, config);
        assert!(rest.is_empty());
    }
}
