//! Sandboxed device workers, VMM side: **the one entry point that gets a running worker for
//! device N** ([`Sandbox::start`]), used for the first start at set-up and for every restart.
//!
//! The VM owns one [`Sandbox`], created with its first sandboxed device: a long-lived
//! [`broker::Spawner`] thread (workers' parent-death signal follows the thread that cloned them,
//! so every spawn happens there), an `O_PATH` fd to svmm's own executable, and one
//! [`DeviceStart`] per sandboxed device, added at set-up ([`Sandbox::add`]): the device's
//! [`WorkerPlan`] (`crate::plan`: its ids — as root, a host uid/gid of its own from
//! `--worker-ids`; unprivileged, svmm's own ids seen as 1000 inside the worker's user
//! namespace —, its argv with the sandbox as `--sandbox-*` arguments and the kind's config),
//! the fds every worker of the device gets again — guest RAM, the interrupt status page, the
//! irqfd and the queue ioeventfds, all bound to KVM once and kept — and the device's host
//! resources (held here, with their locks and helper processes, for as long as the VM lives).
//!
//! [`Sandbox::start`] runs entirely on the spawner thread: a fresh control channel (the VMM's
//! end non-blocking) and stop eventfd, duplicates of the device's fds and host resources in
//! `worker::fd_numbers` order, the spawn, and duplicates of the control socket and pidfd for
//! the device's monitor. So the thread that asks — the main thread at set-up, a monitor thread
//! under svmm's seccomp filter when it restarts a worker — makes no system call beyond passing
//! the request and receiving the fds; a broker process (DESIGN.md) answers the same request.
//! Nothing about a start is computed at restart time: the plan is the one made at set-up.
//!
//! Before the first spawn, [`Sandbox::new`] checks that the kernel enforces Landlock and refuses,
//! in one line, when it does not (unless `--allow-missing-landlock`).
//!
//! Workers write their rare one-line fatal errors to svmm's stderr when it is a pipe, terminal or
//! socket; when it is a regular file they get /dev/null instead (their `RLIMIT_FSIZE` is 0).
//!
//! Dropping the `Sandbox` ends the spawner thread, which kills every worker it started (their
//! parent-death signal); the `Worker` handles still reap them.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};

use broker::{SpawnError, Spawner, WorkerSpec};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::config::SandboxOptions;
use crate::host_resources::HostResources;
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
    /// No device N was added (a set-up bug).
    #[error("no sandboxed device {0}")]
    NoDevice(usize),
    /// The worker's control channel could not be made.
    #[error("cannot make the worker's control channel")]
    Channel(#[source] ipc::ChannelError),
    /// The worker's fds could not be made or duplicated.
    #[error("cannot {what} for the worker")]
    Fds {
        /// What failed.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
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

/// Everything starting device N's worker takes besides a fresh control channel and stop
/// eventfd: its plan, and the fds every worker of the device gets again (svmm keeps them).
pub struct DeviceStart {
    /// What the worker is started with.
    pub plan: WorkerPlan,
    /// The sealed guest RAM memfd.
    pub guest_ram: File,
    /// The device's interrupt status page.
    pub irq_status: OwnedFd,
    /// The device's irqfd (bound to its GSI in KVM).
    pub irqfd: EventFd,
    /// Its queue notification eventfds (KVM ioeventfds), in queue order.
    pub queue_events: Vec<EventFd>,
    /// Its host resources, held here; each worker gets duplicates.
    pub resources: HostResources,
}

/// A worker [`Sandbox::start`] started.
pub struct Started {
    /// The process.
    pub worker: broker::Worker,
    /// The VMM's end of its control channel (non-blocking).
    pub control: ipc::Channel,
    /// What the device's monitor thread polls: duplicates of the control socket and pidfd.
    pub watch: Watch,
}

/// The fds a monitor thread polls for one worker.
pub struct Watch {
    /// A duplicate of the VMM's end of the control channel.
    pub socket: OwnedFd,
    /// A duplicate of the worker's pidfd.
    pub pidfd: OwnedFd,
}

/// The VM's means to start sandboxed workers (see the module docs).
pub struct Sandbox {
    spawner: Spawner,
    exe: Arc<OwnedFd>,
    /// Workers share svmm's stderr (for their one-line fatal errors); not when it is a regular
    /// file, which their `RLIMIT_FSIZE` of 0 would refuse to grow.
    share_stderr: bool,
    /// Indexed by device number (`--device` order); `None` for in-process devices.
    devices: Mutex<Vec<Option<Arc<DeviceStart>>>>,
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
            devices: Mutex::new(Vec::new()),
        })
    }

    /// Makes device `index` (its number in `--device` order) startable.
    pub fn add(&self, index: usize, device: DeviceStart) {
        let mut devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        if devices.len() <= index {
            devices.resize_with(index + 1, || None);
        }
        devices[index] = Some(Arc::new(device));
    }

    /// Starts a confined worker for device `index`, as its plan says, with fresh duplicates of
    /// its fds and host resources: the first time, or again after its worker died. Runs on the
    /// spawner thread (see the module docs).
    pub fn start(&self, index: usize) -> Result<Started, SandboxError> {
        let device = self
            .devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(index)
            .cloned()
            .flatten()
            .ok_or(SandboxError::NoDevice(index))?;
        let exe = self.exe.clone();
        let inherit_stderr = self.share_stderr;
        self.spawner
            .run(move || start_on_spawner(&device, exe, inherit_stderr))
            .map_err(SandboxError::Spawn)?
    }
}

/// [`Sandbox::start`]'s work, on the spawner thread.
fn start_on_spawner(
    device: &DeviceStart,
    exe: Arc<OwnedFd>,
    inherit_stderr: bool,
) -> Result<Started, SandboxError> {
    let io = |what| move |source| SandboxError::Fds { what, source };
    let (vmm, ours) = ipc::Channel::pair().map_err(SandboxError::Channel)?;
    vmm.set_nonblocking(true).map_err(SandboxError::Channel)?;
    let dup = io("duplicate the device's fds");
    let fds = WorkerFds {
        control: ours,
        guest_ram: device.guest_ram.try_clone().map_err(dup)?,
        irq_status: device
            .irq_status
            .try_clone()
            .map_err(io("duplicate the device's fds"))?,
        irqfd: device
            .irqfd
            .try_clone()
            .map_err(io("duplicate the device's fds"))?,
        queue_events: device
            .queue_events
            .iter()
            .map(EventFd::try_clone)
            .collect::<std::io::Result<_>>()
            .map_err(io("duplicate the device's fds"))?,
        stop: EventFd::new(EFD_NONBLOCK).map_err(io("create the stop eventfd"))?,
    };
    let resources = device
        .resources
        .worker_fds()
        .map_err(io("duplicate the host resources"))?;
    let fds = worker::spawned::fds_to_pass(fds, resources);
    let plan = &device.plan;
    if u32::try_from(fds.len()).ok() != Some(plan.confine.fds) {
        return Err(SandboxError::FdCount {
            planned: plan.confine.fds,
            given: fds.len(),
        });
    }
    let worker = broker::spawn(&WorkerSpec {
        exe,
        args: plan.argv.clone(),
        fds,
        ids: plan.ids,
        namespaces: true,
        stderr: match inherit_stderr {
            true => broker::Stderr::Inherit,
            false => broker::Stderr::Null,
        },
    })
    .map_err(SandboxError::Spawn)?;
    let watch = Watch {
        socket: vmm
            .as_fd()
            .try_clone_to_owned()
            .map_err(io("duplicate the control socket for the monitor"))?,
        pidfd: worker
            .pidfd()
            .try_clone_to_owned()
            .map_err(io("duplicate the pidfd for the monitor"))?,
    };
    Ok(Started {
        worker,
        control: vmm,
        watch,
    })
}
