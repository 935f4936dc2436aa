//! Sandboxed device workers, VMM side: turning one device's fds into a confined
//! `svmm __worker KIND` process through the broker.
//!
//! The VM owns one [`Sandbox`], created with its first sandboxed device: a long-lived
//! [`broker::Spawner`] thread (workers' parent-death signal follows the thread that cloned them,
//! so every spawn happens there), an `O_PATH` fd to svmm's own executable, and the id counter.
//! For each device [`Sandbox::spawn`] takes the device's [`WorkerPlan`] (`crate::plan`: its
//! ids — as root, a host uid/gid of its own from `--worker-ids`; unprivileged, svmm's own ids
//! seen as 1000 inside the worker's user namespace —, its argv with the sandbox as
//! `--sandbox-*` arguments and the kind's config), lists the fds in `worker::fd_numbers` order
//! — control socket, guest RAM, status page, irqfd, stop eventfd, one ioeventfd per queue — and
//! then the duplicates of its host resources, hands it all to the spawner and returns the
//! [`broker::Worker`] (pidfd, kill, reap).
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

use broker::{SpawnError, Spawner, WorkerSpec};

use crate::config::SandboxOptions;
use crate::plan::WorkerPlan;
use worker::WorkerFds;

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
    /// The fds do not match the plan (a set-up bug).
    #[error("the worker was planned with {planned} fds but is given {given}")]
    FdCount {
        /// `--sandbox-fds` of the plan.
        planned: u32,
        /// Fds passed.
        given: usize,
    },
    /// The broker failed to start the worker.
    #[error("cannot spawn the worker")]
    Spawn(#[source] SpawnError),
}

/// The VM's means to start sandboxed workers (see the module docs).
pub struct Sandbox {
    spawner: Spawner,
    exe: Arc<OwnedFd>,
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
            share_stderr: !stderr_is_file,
        })
    }

    /// Starts the confined worker `plan` describes with `fds` and `resources` (one slot per
    /// declared host resource: the fd the worker gets, if the resource has one).
    pub fn spawn(
        &self,
        plan: &WorkerPlan,
        fds: WorkerFds,
        resources: Vec<Option<OwnedFd>>,
    ) -> Result<broker::Worker, SandboxError> {
        let fds = worker::spawned::fds_to_pass(fds, resources);
        if u32::try_from(fds.len()).ok() != Some(plan.confine.fds) {
            return Err(SandboxError::FdCount {
                planned: plan.confine.fds,
                given: fds.len(),
            });
        }
        self.spawner
            .spawn(WorkerSpec {
                exe: self.exe.clone(),
                args: plan.argv.clone(),
                fds,
                ids: plan.ids,
                namespaces: true,
                inherit_stderr: self.share_stderr,
            })
            .map_err(SandboxError::Spawn)
    }
}
