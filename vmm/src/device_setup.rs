//! Creating the VM's virtio devices: for each `--device`, in order, a virtio-mmio slot, its
//! interrupt and queue-notification eventfds registered with KVM, the device's worker, the
//! [`WorkerProxy`] that talks to it, the [`MmioTransport`] on the MMIO bus, and a monitor thread.
//!
//! ```text
//!   slot i (addr, 4 KiB, GSI) ─ IrqStatus page ─ irqfd → KVM GSI ─ ioeventfd per queue ← KVM
//!        │                                                              (QueueNotify, datamatch = i)
//!        ├─ open_host_resources(spec)          (in the VMM, before any worker exists: the image
//!        │                                     opened, locked and checked)
//!        ├─ start_worker(...)                  sandbox=on: broker spawns `svmm __worker KIND`
//!        │                                     (crate::sandboxed); off: a thread of svmm
//!        ├─ WorkerProxy::connect (waits for Ready, 5 s); terminate hook = kill the worker
//!        ├─ MmioTransport on the MMIO bus at addr
//!        └─ monitor thread (crate::supervisor): socket readable → proxy.service(); pidfd
//!           readable → reap, one line, DEVICE_NEEDS_RESET, --on-worker-exit
//! ```
//!
//! The VM owns one [`Sandbox`] (the broker's spawner thread), made with the first sandboxed
//! device. When the devices are dropped (VM end, or a set-up failure) every worker process is
//! killed and reaped; a `kill -9` of svmm kills them through their parent-death signal.
//!
//! The devices must exist before the ACPI tables and the command line are written: both
//! describe them ([`VirtioDevices::acpi`], [`VirtioDevices::cmdline`]).

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use devices::irq_status::IrqStatus;
use kvm_ioctls::{IoEventAddress, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::acpi::VirtioMmioDevice;
use crate::cli::VmConfig;
use crate::control::VmControl;
use crate::device_spec::DeviceSpec;
use crate::error::one_line;
use crate::layout::{virtio_mmio_cmdline_entry, virtio_mmio_slot};
use crate::memory::GuestRam;
use crate::mmio_bus::{MmioBus, MmioBusError};
use crate::sandboxed::{Sandbox, SandboxError};
use crate::supervisor::{spawn_monitor, Supervised};
use crate::virtio::mmio::{MmioTransport, QUEUE_NOTIFY_OFFSET};
use crate::virtio::worker_proxy::{Deadlines, WorkerProxy};
use crate::virtio::ProxyError;
use crate::worker::backend::{self, BackendConfig, BackendError, HostResources};
use crate::worker::{in_process, WorkerFds};

/// The transport of one device, shared by the MMIO bus, its monitor and the VM's owner.
pub type Transport = Arc<Mutex<MmioTransport<WorkerProxy>>>;

/// Setting up a device failed. Every variant names the device (`rng#0`).
#[derive(Debug, thiserror::Error)]
pub enum DeviceSetupError {
    /// More devices than slots (the command line is checked first, so this is a bug).
    #[error("{0}: no free virtio-mmio slot")]
    NoSlot(String),
    /// A host resource (eventfd, memfd, socket, thread) could not be created.
    #[error("{name}: cannot {what}")]
    Host {
        /// The device.
        name: String,
        /// What failed.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Registering an eventfd with KVM failed.
    #[error("{name}: cannot register its {what} with KVM")]
    Kvm {
        /// The device.
        name: String,
        /// Which eventfd.
        what: &'static str,
        /// The KVM error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Opening the device's host resources failed, or the backend could not be built.
    #[error("{name}")]
    Backend {
        /// The device.
        name: String,
        /// Why.
        #[source]
        source: BackendError,
    },
    /// The broker could not create the device's control channel or eventfds.
    #[error("{name}")]
    Resources {
        /// The device.
        name: String,
        /// What failed.
        #[source]
        source: broker::ResourceError,
    },
    /// The sandbox cannot be set up (before the first sandboxed worker).
    #[error(transparent)]
    Sandbox(SandboxError),
    /// The broker could not start the device's worker.
    #[error("{name}: sandboxed worker")]
    Spawn {
        /// The device.
        name: String,
        /// Why.
        #[source]
        source: SandboxError,
    },
    /// The worker did not come up.
    #[error("{name}: device worker did not start")]
    Start {
        /// The device.
        name: String,
        /// Why.
        #[source]
        source: ProxyError,
    },
    /// The MMIO window is taken.
    #[error("{name}: cannot place its registers")]
    Bus {
        /// The device.
        name: String,
        /// The bus error.
        #[source]
        source: MmioBusError,
    },
}

/// A running device worker, wherever it runs.
enum Worker {
    /// On a thread of svmm (`sandbox=off`).
    InProcess(#[allow(dead_code)] JoinHandle<()>),
    /// A confined `svmm __worker` process, shared with the monitor and the terminate hook.
    Sandboxed(Arc<Supervised>),
}

/// One device as the VM keeps it.
struct Device {
    name: String,
    transport: Transport,
    worker: Worker,
}

/// The VM's virtio devices.
#[derive(Default)]
pub struct VirtioDevices {
    /// The devices' windows and GSIs, for the DSDT.
    pub acpi: Vec<VirtioMmioDevice>,
    /// `virtio_mmio.device=` words for the kernel command line, space-separated.
    pub cmdline: String,
    devices: Vec<Device>,
    /// The broker's spawner, once a device is sandboxed. Dropped after `devices` (their workers
    /// are killed and reaped first).
    sandbox: Option<Sandbox>,
}

impl Drop for VirtioDevices {
    /// Every worker process is gone when the devices are: killed and reaped, quietly.
    fn drop(&mut self) {
        for device in &self.devices {
            if let Worker::Sandboxed(worker) = &device.worker {
                worker.end();
            }
        }
    }
}

impl VirtioDevices {
    /// Prints each device's statistics on stderr (at VM end). Skips a device whose transport
    /// stays busy (a vCPU waiting for its worker) for more than two reply deadlines.
    pub fn report_stats(&self) {
        for device in &self.devices {
            let Some(mut transport) = lock_within(&device.transport, Duration::from_secs(2)) else {
                continue;
            };
            let mode = match device.worker {
                Worker::InProcess(_) => "in-process",
                Worker::Sandboxed(_) => "sandboxed",
            };
            match transport.proxy_mut().stats() {
                Ok(stats) => {
                    let queues: Vec<String> = (0..)
                        .zip(&stats.queues)
                        .map(|(i, q): (u16, _)| {
                            format!(
                                "q{i} requests={} bytes={} errors={}",
                                q.requests, q.bytes, q.errors
                            )
                        })
                        .collect();
                    let queues = match queues.is_empty() {
                        true => "no requests".to_string(),
                        false => queues.join(", "),
                    };
                    eprintln!("svmm: {} ({mode}): {queues}", device.name);
                }
                Err(e) => eprintln!(
                    "svmm: {} ({mode}): no statistics: {}",
                    device.name,
                    one_line(&e)
                ),
            }
        }
    }
}

/// Creates every device of `config`, in order, and puts its transport on `bus`.
pub fn create(
    vm: &VmFd,
    ram: &GuestRam,
    config: &VmConfig,
    bus: &mut MmioBus,
    control: &VmControl,
) -> Result<VirtioDevices, DeviceSetupError> {
    let mut devices = VirtioDevices::default();
    for (index, spec) in config.devices.iter().enumerate() {
        let name = format!("{}#{index}", spec.kind());
        let (addr, size, irq) =
            virtio_mmio_slot(index).ok_or_else(|| DeviceSetupError::NoSlot(name.clone()))?;
        let sandbox = match (spec.sandbox, &mut devices.sandbox) {
            (false, _) => None,
            (true, Some(sandbox)) => Some(sandbox),
            (true, none) => {
                Some(none.insert(Sandbox::new(config.sandbox).map_err(DeviceSetupError::Sandbox)?))
            }
        };
        let (transport, worker, spawn_time) =
            create_one(vm, ram, spec, &name, (addr, irq), sandbox)?;
        if config.report_timings {
            eprintln!(
                "svmm: timing device={name} spawn_us={}",
                spawn_time.as_micros()
            );
        }
        bus.insert(addr, size, transport.clone())
            .map_err(|source| DeviceSetupError::Bus {
                name: name.clone(),
                source,
            })?;
        let supervised = match &worker {
            Worker::Sandboxed(supervised) => Some(supervised.clone()),
            Worker::InProcess(_) => None,
        };
        spawn_monitor(
            &name,
            &transport,
            supervised,
            config.on_worker_exit,
            control,
        )?;
        devices.acpi.push(VirtioMmioDevice { addr, size, irq });
        if !devices.cmdline.is_empty() {
            devices.cmdline.push(' ');
        }
        devices
            .cmdline
            .push_str(&virtio_mmio_cmdline_entry(addr, size, irq));
        devices.devices.push(Device {
            name,
            transport,
            worker,
        });
    }
    Ok(devices)
}

/// The eventfds, the worker and the transport of one device at `addr` with GSI `irq`, and the
/// time from the start of spawning its worker (or building its in-process backend) to its Ready
/// message (`--report-timings`).
fn create_one(
    vm: &VmFd,
    ram: &GuestRam,
    spec: &DeviceSpec,
    name: &str,
    (addr, irq): (u64, u32),
    sandbox: Option<&mut Sandbox>,
) -> Result<(Transport, Worker, Duration), DeviceSetupError> {
    let host = |what| {
        let name = name.to_string();
        move |source| DeviceSetupError::Host { name, what, source }
    };
    let kvm = |what| {
        let name = name.to_string();
        move |source| DeviceSetupError::Kvm { name, what, source }
    };
    let backend_error = |source| DeviceSetupError::Backend {
        name: name.to_string(),
        source,
    };
    // The user's files first: a missing, locked or unusable image is the likeliest failure.
    let resources = backend::open_host_resources(spec).map_err(backend_error)?;
    let status = IrqStatus::create().map_err(host("create its interrupt status page"))?;
    // The broker makes the channel and eventfds and opens the host files; svmm binds the
    // eventfds to KVM and keeps its ends.
    let broker::DeviceFds {
        vmm: vmm_end,
        worker: worker_end,
        irqfd,
        stop,
        queue_events,
    } = broker::DeviceFds::new(BackendConfig::of(spec).num_queues()).map_err(|source| {
        DeviceSetupError::Resources {
            name: name.to_string(),
            source,
        }
    })?;
    vm.register_irqfd(&irqfd, irq).map_err(kvm("irqfd"))?;
    for (queue, fd) in (0u32..).zip(&queue_events) {
        let notify = IoEventAddress::Mmio(addr + QUEUE_NOTIFY_OFFSET);
        vm.register_ioevent(fd, &notify, queue)
            .map_err(kvm("queue notification ioeventfd"))?;
    }

    let dup = host("duplicate an fd for its worker");
    let fds = WorkerFds {
        control: worker_end,
        guest_ram: ram.memfd.try_clone().map_err(dup)?,
        irq_status: status
            .fd()
            .try_clone_to_owned()
            .map_err(host("duplicate an fd"))?,
        irqfd: irqfd.try_clone().map_err(host("duplicate an fd"))?,
        queue_events: queue_events
            .iter()
            .map(EventFd::try_clone)
            .collect::<io::Result<_>>()
            .map_err(host("duplicate an fd"))?,
        stop,
    };
    let spawn_start = Instant::now();
    let worker = start_worker(spec, name, resources, fds, sandbox)?;

    let mut proxy = WorkerProxy::connect(
        name,
        vmm_end,
        status,
        irqfd,
        queue_events,
        Deadlines::default(),
    )
    .map_err(|source| DeviceSetupError::Start {
        name: name.to_string(),
        source,
    })?;
    let spawn_time = spawn_start.elapsed();
    if let Worker::Sandboxed(supervised) = &worker {
        let supervised = supervised.clone();
        proxy.set_terminate(move |reason, grace| supervised.kill_for(reason, grace));
    }
    let transport = Arc::new(Mutex::new(MmioTransport::new(name, proxy)));
    Ok((transport, worker, spawn_time))
}

/// Starts the worker that serves the device: **the one place the broker plugs in**.
///
/// `resources` are the device's host files (opened by `backend::open_host_resources` in the
/// VMM, before any worker exists) and `fds` everything the worker needs from the VMM, already
/// registered with KVM. Sandboxed, `sandbox` spawns `svmm __worker KIND` with them at
/// `worker::fd_numbers` (see `crate::sandboxed`); the worker confines itself, builds the
/// backend with `backend::build` and calls `worker::run_device_confined`. In-process, a thread builds
/// the same backend and runs the same `run_device_confined`.
fn start_worker(
    spec: &DeviceSpec,
    name: &str,
    resources: HostResources,
    fds: WorkerFds,
    sandbox: Option<&mut Sandbox>,
) -> Result<Worker, DeviceSetupError> {
    if let Some(sandbox) = sandbox {
        let worker =
            sandbox
                .spawn(spec, fds, resources)
                .map_err(|source| DeviceSetupError::Spawn {
                    name: name.to_string(),
                    source,
                })?;
        return Ok(Worker::Sandboxed(Supervised::new(worker)));
    }
    let backend = backend::build(&BackendConfig::of(spec), resources).map_err(|source| {
        DeviceSetupError::Backend {
            name: name.to_string(),
            source,
        }
    })?;
    let label = name.to_string();
    let warn_label = label.clone();
    let warn = move |warning: &str| eprintln!("svmm: {warn_label}: {warning}");
    let handle = in_process::spawn(format!("dev-{name}"), backend, fds, warn, move |result| {
        if let Err(e) = result {
            eprintln!("svmm: {label}: in-process device stopped: {}", one_line(e));
        }
    })
    .map_err(|source| DeviceSetupError::Host {
        name: name.to_string(),
        what: "start its device thread",
        source,
    })?;
    Ok(Worker::InProcess(handle))
}

/// Locks a transport; a poisoned lock (a panic elsewhere) still holds a usable register state.
pub fn lock(transport: &Transport) -> MutexGuard<'_, MmioTransport<WorkerProxy>> {
    transport.lock().unwrap_or_else(|e| e.into_inner())
}

/// Tries to lock `transport` for up to `wait`.
fn lock_within(
    transport: &Transport,
    wait: Duration,
) -> Option<MutexGuard<'_, MmioTransport<WorkerProxy>>> {
    let deadline = Instant::now() + wait;
    loop {
        match transport.try_lock() {
            Ok(guard) => return Some(guard),
            Err(std::sync::TryLockError::Poisoned(e)) => return Some(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(5));
            }
            Err(std::sync::TryLockError::WouldBlock) => return None,
        }
    }
}
