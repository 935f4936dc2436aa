//! Creating the VM's virtio devices, in three passes so that the workers start in parallel,
//! and while the guest boots:
//!
//! ```text
//!   1. [prepare] for each --device, in order (deterministic slots, GSIs, worker ids):
//!        slot i (addr, 4 KiB, GSI) ─ host resources opened and checked (crate::host_resources)
//!        ─ its plan (crate::plan: fds, ids, sandbox, argv) ─ IrqStatus page ─ irqfd → KVM
//!        GSI, one ioeventfd per queue ← KVM (QueueNotify, datamatch = queue)
//!      then, svmm still single-threaded, the broker process is forked with every sandboxed
//!      device's plan and host resources (crate::sandboxed), and sent every such device's
//!      Start at once (finish::request_starts; not a device whose start takes a service
//!      channel: its svc- thread makes that in pass 2), so the workers exec and confine
//!      themselves while svmm gives the VM its RAM and loads the kernel; between those steps
//!      svmm notes the answers and Readys that came (VirtioDevices::note_ready), for the timing
//!   2. [VirtioDevices::start] before the vCPUs: every thread a device needs — its host
//!      services, sandbox=off: the kind's backend on a thread of svmm, its monitor (waiting
//!      for its device) — and its window on the MMIO bus at addr: a gate (gate.rs) a vCPU
//!      waits at until the device's worker is Ready
//!   -- the vCPUs start, the main thread confines itself, the guest runs --
//!   3. [VirtioDevices::finish] sandboxed → the Starts pass 1 did not send, at once, then the
//!      broker's answers (Sandbox::request + Sandbox::answer = Sandbox::start, the one entry
//!      point that starts, and restarts, device N's worker; the broker answers once it has
//!      spawned `svmm __worker KIND` from the plan, before the worker's exec); then
//!      every Ready together, each under its own deadline (5 s from its start); then, in
//!      order: WorkerProxy (terminate hook = have the broker kill the worker), MmioTransport,
//!      which opens the gate and goes to the monitor (crate::supervisor: socket readable →
//!      proxy.service(); stderr → cleaned lines; the broker's report of the worker's end →
//!      one line, and restart it through Sandbox::start(N) with the device's state, or
//!      DEVICE_NEEDS_RESET, as --on-worker-exit says)
//! ```
//!
//! Between passes 1 and 2, as root, svmm drops to its own unprivileged uid (`crate::vm`):
//! pass 1 needs its privileges, passes 2 and 3 do not; pass 3 runs under the main thread's
//! seccomp filter. So a VM with N sandboxed devices waits for about one worker start, not N
//! one after another, that start runs beside svmm's own set-up rather than beside the booting
//! guest (on a host with few cores the workers' exec and set-up took the vCPU's CPU), and the
//! guest waits only if it touches a device before its worker is Ready. A device whose worker does not come up ends the VM with the error it always had
//! (the gates of the devices not started by then close). The VM owns one [`Sandbox`] (the broker
//! and, per sandboxed device, the fds KVM knows and a lease on it), so that device N can be
//! started again. Each device's host resources live as long as the VM (the broker holds a
//! sandboxed device's fds, svmm its helper processes); its workers work on duplicates. When
//! the devices are dropped (VM end, or a set-up failure) the broker is asked to kill every
//! worker, and svmm hanging up makes it kill any left and exit; a `kill -9` of svmm kills the
//! broker and the workers through their parent-death signals.
//!
//! The devices must exist before the ACPI tables and the command line are written: both
//! describe them ([`VirtioDevices::acpi`], [`VirtioDevices::cmdline`]).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use devices::irq_status::IrqStatus;
use devices::kind::{InputError, ShmWindow};
use kvm_ioctls::{IoEventAddress, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::acpi::VirtioMmioDevice;
use crate::config::VmConfig;
use crate::device_spec::DeviceSpec;
use crate::host_resources::{HostResourceError, HostResources};
use crate::layout::{virtio_mmio_cmdline_entry, virtio_mmio_slot};
use crate::mmio_bus::MmioBus;
use crate::plan;
use crate::sandboxed::{DeviceStart, Sandbox, Watch};
use crate::self_confine::{self, ThreadRole};
use crate::services::{self, DeviceServices, ServiceLink};
use crate::supervisor::{spawn_monitor, MonitorHandoff, Supervised};
use crate::virtio::mmio::{MmioTransport, QUEUE_NOTIFY_OFFSET};
use crate::virtio::worker_proxy::WorkerProxy;
use crate::virtio::Transport;
use crate::vm_events::VmEvents;
use worker::guest_ram::GuestRam;
use worker::report::{line as say, one_line};
use worker::{in_process, WorkerFds};

mod error;
mod finish;
mod gate;
pub use error::DeviceSetupError;

/// A running device worker, wherever it runs.
enum Worker {
    /// On a thread of svmm (`sandbox=off`).
    InProcess {
        /// Kept for the thread's lifetime; the device ends it through its control channel.
        _thread: JoinHandle<()>,
    },
    /// A confined `svmm __worker` process, shared with the monitor and the terminate hook.
    Sandboxed(Arc<Supervised>),
}

/// One device as the VM keeps it.
struct Device {
    name: String,
    transport: Transport,
    worker: Worker,
    /// An in-process device's host resources, held as long as the device exists (locks,
    /// helper processes); a sandboxed device's are held by the [`Sandbox`].
    _resources: Option<HostResources>,
    /// Its host-services thread, if any: it ends when the VM's [`ServiceLink`] to it goes.
    _services: Option<JoinHandle<()>>,
}

/// How long an in-process device's start waits for its service channel (made before its
/// `svc-` thread runs: never long).
const SERVICE_CHANNEL_WAIT: Duration = Duration::from_secs(5);

/// How long the end of the VM waits for its killed workers to die before it gives up on them.
const END_TIMEOUT: Duration = Duration::from_secs(3);

/// The VM's virtio devices.
#[derive(Default)]
pub struct VirtioDevices {
    /// The devices' windows and GSIs, for the DSDT.
    pub acpi: Vec<VirtioMmioDevice>,
    /// `virtio_mmio.device=` words for the kernel command line, space-separated.
    pub cmdline: String,
    devices: Vec<Device>,
    /// The devices between [`prepare`] and [`VirtioDevices::start`].
    pending: Vec<Pending>,
    /// The broker and what svmm keeps of the sandboxed devices, once a device is sandboxed.
    /// Dropped after `devices` (their workers are killed first; svmm hanging up makes the
    /// broker kill any left and exit); monitors hold it weakly, so no worker is restarted once
    /// the VM ends.
    sandbox: Option<Arc<Sandbox>>,
}

impl Drop for VirtioDevices {
    /// Every worker process is gone when the devices are: killed and reaped, quietly (its
    /// death is expected, so not reported). An in-process device's thread ends with svmm.
    fn drop(&mut self) {
        // Every worker is killed first, then all are reaped under one deadline, so a worker
        // stuck in uninterruptible I/O delays svmm's end by END_TIMEOUT at most, whatever the
        // number of devices.
        for device in &self.devices {
            if let Worker::Sandboxed(worker) = &device.worker {
                worker.begin_end();
            }
        }
        let deadline = Instant::now() + END_TIMEOUT;
        for device in &self.devices {
            if let Worker::Sandboxed(worker) = &device.worker {
                worker.finish_end(&device.name, deadline, END_TIMEOUT);
            }
        }
    }
}

impl VirtioDevices {
    /// Prints each device's statistics on stderr (at VM end). Skips a device whose transport
    /// stays busy (a vCPU waiting for its worker) for more than two reply deadlines.
    pub fn report_stats(&self) {
        // A worker svmm killed just before the VM ended: its death line comes first.
        for device in &self.devices {
            if let Worker::Sandboxed(worker) = &device.worker {
                worker.wait_reported(Duration::from_secs(1));
            }
        }
        for device in &self.devices {
            let Some(mut transport) = lock_within(&device.transport, Duration::from_secs(2)) else {
                continue;
            };
            let mode = match device.worker {
                Worker::InProcess { .. } => "in-process",
                Worker::Sandboxed(_) => "sandboxed",
            };
            match transport.proxy_mut().stats() {
                Ok(stats) => {
                    let queues: Vec<String> = (0..)
                        .zip(&stats.queues)
                        .map(|(i, q): (u16, _)| {
                            format!(
                                "q{i} requests={} bytes={} errors={} drops={}",
                                q.requests, q.bytes, q.errors, q.drops
                            )
                        })
                        .collect();
                    let queues = match queues.is_empty() {
                        true => "no requests".to_string(),
                        false => queues.join(", "),
                    };
                    // What the driver negotiated, while it still is (a reset clears it).
                    let features = match transport.driver_features() {
                        0 => String::new(),
                        f => format!("; driver features {f:#x}"),
                    };
                    // A restarted worker counts its own requests; the restarts are the VMM's.
                    let restarts = match device.worker {
                        Worker::Sandboxed(_) => {
                            format!("; restarts={}", transport.proxy().restarts())
                        }
                        Worker::InProcess { .. } => String::new(),
                    };
                    say(&format!(
                        "svmm: {} ({mode}): {queues}{features}{restarts}",
                        device.name
                    ));
                }
                Err(e) => say(&format!(
                    "svmm: {} ({mode}): no statistics: {}",
                    device.name,
                    one_line(&e)
                )),
            }
        }
    }
}

/// One device between its set-up and its transport.
struct Pending {
    name: String,
    /// Its number in `--device` order.
    index: usize,
    spec: DeviceSpec,
    /// Window address, size and GSI.
    slot: (u64, u64, u32),
    /// How it is started: by the sandbox, or on a thread.
    how: How,
    status: IrqStatus,
    /// The VMM's end of the control channel, once there is one.
    vmm_end: Option<ipc::Channel>,
    irqfd: EventFd,
    queue_events: Vec<EventFd>,
    /// Its host services (a socket to connect, a shared-memory region), if its kind declares
    /// any: svmm's side until its thread starts in pass 2.
    services: Option<DeviceServices>,
    /// An in-process device's link its service channel comes through (a sandboxed device's
    /// goes to the [`Sandbox`] with its start).
    link: Option<ServiceLink>,
    /// Its shared-memory window, if it has one.
    window: Option<ShmWindow>,
    services_thread: Option<JoinHandle<()>>,
    worker: Option<Worker>,
    /// A sandboxed worker's socket and stderr pipe for the monitor.
    watch: Option<Watch>,
    /// An in-process device's second fd of its control socket, for the monitor.
    monitor_socket: Option<OwnedFd>,
    /// When its start began (its `Ready` deadline and `--report-timings` count from here).
    started: Instant,
    /// A sandboxed device: whether its `Start` went to the broker (in pass 1, or pass 3).
    requested: bool,
    /// When set-up saw its worker's `Ready` come, if it did before pass 3
    /// ([`VirtioDevices::note_ready`]).
    ready_at: Option<Instant>,
}

/// The devices between [`VirtioDevices::start`] (before the vCPUs run) and
/// [`VirtioDevices::finish`] (once they do).
pub struct Starting {
    devices: Vec<Starting1>,
}

/// One of them: the device, what opens its window, its waiting monitor.
struct Starting1 {
    device: Pending,
    opener: gate::Opener<MmioTransport<WorkerProxy>>,
    monitor: MonitorHandoff,
}

/// How a device is started.
enum How {
    /// Its start, until it is handed to the sandbox.
    Sandboxed(Option<Box<DeviceStart>>),
    /// On a thread of svmm: its host resources and the worker's fds until it starts.
    InProcess {
        resources: HostResources,
        worker_fds: Option<WorkerFds>,
    },
}

/// Pass 1 for every device of `config`, in order: slots, host resources, plans, eventfds
/// bound to KVM; then, while svmm is still single-threaded, the broker process for the
/// sandboxed ones (svmm closes its own copies of their host resources' fds). The devices'
/// windows and command-line entries are known from here on; [`VirtioDevices::start`] starts
/// them.
pub fn prepare(
    vm: &Arc<VmFd>,
    ram: &GuestRam,
    config: &VmConfig,
) -> Result<VirtioDevices, DeviceSetupError> {
    let mut devices = VirtioDevices::default();
    let mut workers = 0u32;
    let windows = services::windows(&config.devices, config.mem_bytes);
    let vm_services = services::VmServices::new(vm);
    for ((index, spec), window) in (0u32..).zip(&config.devices).zip(windows) {
        let mut device = set_up(vm, ram, config, spec, index, workers, window)?;
        let services = vm_services
            .of(&device.name, spec, window)
            .map_err(|source| DeviceSetupError::Host {
                name: device.name.clone(),
                what: "create its service channel",
                source,
            })?;
        if let Some((services, link)) = services {
            device.services = Some(services);
            match &mut device.how {
                How::Sandboxed(Some(start)) => start.services = Some(link),
                _ => device.link = Some(link),
            }
        }
        workers += u32::from(spec.sandbox);
        let (addr, size, irq) = device.slot;
        devices.acpi.push(VirtioMmioDevice { addr, size, irq });
        if !devices.cmdline.is_empty() {
            devices.cmdline.push(' ');
        }
        devices
            .cmdline
            .push_str(&virtio_mmio_cmdline_entry(addr, size, irq));
        devices.pending.push(device);
    }
    let declared: Vec<DeviceStart> = devices
        .pending
        .iter_mut()
        .filter_map(|d| match &mut d.how {
            How::Sandboxed(start) => start.take().map(|start| *start),
            How::InProcess { .. } => None,
        })
        .collect();
    if !declared.is_empty() {
        let sandbox =
            Sandbox::fork(&config.sandbox, declared).map_err(DeviceSetupError::Sandbox)?;
        // The workers start now, beside the rest of svmm's set-up.
        finish::request_starts(&mut devices.pending, &sandbox)?;
        devices.sandbox = Some(Arc::new(sandbox));
    }
    Ok(devices)
}

impl VirtioDevices {
    /// After svmm, as root, became the unprivileged `uid` (`crate::vm`) and before any device
    /// starts: every socket a device's host services connect to on the device's request takes
    /// a connection from that uid (`services::check_reachable`), so that a compositor socket
    /// only root may use is one line at start-up (exit 65), not a guest whose every context
    /// is refused.
    pub fn check_services_reachable(&self, uid: u32) -> Result<(), DeviceSetupError> {
        for device in &self.pending {
            let Some(path) = device.services.as_ref().and_then(|s| s.socket.as_ref()) else {
                continue;
            };
            if let Err(why) = services::check_reachable(path, uid) {
                return Err(DeviceSetupError::HostResources {
                    name: device.name.clone(),
                    source: HostResourceError::Input(InputError {
                        what: path.display().to_string(),
                        source: why.into(),
                    }),
                });
            }
        }
        Ok(())
    }

    /// Pass 2, before the vCPUs run: per device, in order, its host-services thread and (for
    /// an in-process device) its device thread, its window on `bus` — a [`Gate`] a vCPU waits
    /// at until the device's worker is `Ready` — and its monitor thread, which waits for its
    /// device too. Everything that starts a thread is here: svmm's filter has no call for it.
    /// The sandboxed workers start in [`VirtioDevices::finish`], once the vCPUs run.
    pub fn start(
        &mut self,
        config: &VmConfig,
        bus: &mut MmioBus,
        control: &VmEvents,
    ) -> Result<Starting, DeviceSetupError> {
        let pending = std::mem::take(&mut self.pending);
        let mut devices = Vec::with_capacity(pending.len());
        for mut device in pending {
            start_threads(&mut device)?;
            let (gate, opener) = gate::gate();
            let (addr, size, _) = device.slot;
            bus.insert(addr, size, Arc::new(Mutex::new(gate)))
                .map_err(|source| DeviceSetupError::Bus {
                    name: device.name.clone(),
                    source,
                })?;
            let monitor =
                spawn_monitor(&device.name, config.on_worker_exit, control).map_err(|e| {
                    DeviceSetupError::Host {
                        name: device.name.clone(),
                        what: e.what,
                        source: e.source,
                    }
                })?;
            devices.push(Starting1 {
                device,
                opener,
                monitor,
            });
        }
        Ok(Starting { devices })
    }
}

/// Pass 1 for device `index` (the `worker`-th sandboxed one if sandboxed): its slot, its host
/// resources (the user's files first: a missing, locked or unusable image is the likeliest
/// failure), its plan, and its eventfds registered with KVM.
fn set_up(
    vm: &VmFd,
    ram: &GuestRam,
    config: &VmConfig,
    spec: &DeviceSpec,
    index: u32,
    worker: u32,
    window: Option<ShmWindow>,
) -> Result<Pending, DeviceSetupError> {
    let name = format!("{}#{index}", spec.kind());
    let host = |what| {
        let name = name.clone();
        move |source| DeviceSetupError::Host { name, what, source }
    };
    let kvm = |what| {
        let name = name.clone();
        move |source| DeviceSetupError::Kvm { name, what, source }
    };
    let (addr, size, irq) = usize::try_from(index)
        .ok()
        .and_then(virtio_mmio_slot)
        .ok_or_else(|| DeviceSetupError::NoSlot(name.clone()))?;
    let resources = HostResources::open(&spec.config, plan::svmm_ids(config.sandbox.worker_ids))
        .map_err(|source| DeviceSetupError::HostResources {
            name: name.clone(),
            source,
        })?;
    let plan = match spec.sandbox {
        true => Some(
            plan::plan(
                index,
                worker,
                spec,
                &config.sandbox,
                &|i| resources.size(i),
                window,
            )
            .map_err(|source| DeviceSetupError::Plan {
                name: name.clone(),
                source,
            })?,
        ),
        false => None,
    };
    let status = IrqStatus::create().map_err(host("create its interrupt status page"))?;
    // The broker makes the channel and eventfds; svmm binds the eventfds to KVM and keeps its
    // ends. (A sandboxed device's workers each get a channel and stop eventfd of their own from
    // `Sandbox::start`: these two are for an in-process device.)
    let broker::DeviceFds {
        vmm: vmm_end,
        worker: worker_end,
        irqfd,
        stop,
        queue_events,
    } = broker::DeviceFds::new(spec.config.queues()).map_err(|source| {
        DeviceSetupError::Resources {
            name: name.clone(),
            source,
        }
    })?;
    vm.register_irqfd(&irqfd, irq).map_err(kvm("irqfd"))?;
    for (queue, fd) in (0u32..).zip(&queue_events) {
        let notify = IoEventAddress::Mmio(addr + QUEUE_NOTIFY_OFFSET);
        vm.register_ioevent(fd, &notify, queue)
            .map_err(kvm("queue notification ioeventfd"))?;
    }
    let dup = || host("duplicate an fd for its worker");
    let guest_ram = ram.memfd.try_clone().map_err(dup())?;
    let irq_status: OwnedFd = status.fd().try_clone_to_owned().map_err(dup())?;
    let worker_irqfd = irqfd.try_clone().map_err(dup())?;
    let worker_queue_events = queue_events
        .iter()
        .map(EventFd::try_clone)
        .collect::<io::Result<Vec<_>>>()
        .map_err(dup())?;
    let mut monitor_socket = None;
    let (how, vmm_end) = match plan {
        Some(plan) => {
            let start = DeviceStart {
                index: index as usize,
                plan,
                guest_ram,
                irq_status,
                irqfd: worker_irqfd,
                queue_events: worker_queue_events,
                resources,
                services: None,
            };
            (How::Sandboxed(Some(Box::new(start))), None)
        }
        None => {
            // The monitor's own fd of the socket, made now: the main thread that hands it
            // over is confined by then, and its filter cannot duplicate an fd.
            monitor_socket = Some(vmm_end.as_fd().try_clone_to_owned().map_err(dup())?);
            // Non-blocking like a sandboxed worker's (the broker makes that one so), for the
            // same reason.
            vmm_end
                .set_nonblocking(true)
                .map_err(|e| host("make its control channel non-blocking")(io::Error::other(e)))?;
            let worker_fds = WorkerFds {
                control: worker_end,
                guest_ram,
                irq_status,
                irqfd: worker_irqfd,
                queue_events: worker_queue_events,
                stop,
            };
            let how = How::InProcess {
                resources,
                worker_fds: Some(worker_fds),
            };
            (how, Some(vmm_end))
        }
    };
    Ok(Pending {
        name,
        index: index as usize,
        spec: spec.clone(),
        slot: (addr, size, irq),
        how,
        status,
        vmm_end,
        irqfd,
        queue_events,
        services: None,
        link: None,
        window,
        services_thread: None,
        worker: None,
        watch: None,
        monitor_socket,
        started: Instant::now(),
        requested: false,
        ready_at: None,
    })
}

/// Pass 2 for one device: its host-services thread, and an in-process device's thread — the
/// kind builds the backend from duplicates of its host resources and a thread of svmm serves
/// it with the same code as a worker. (A sandboxed device's worker starts in pass 3.)
fn start_threads(device: &mut Pending) -> Result<(), DeviceSetupError> {
    let name = device.name.clone();
    // A sandboxed device's start began with its request to the broker.
    if !matches!(device.how, How::Sandboxed(_)) {
        device.started = Instant::now();
    }
    // Its host services answer before the device can ask.
    if let Some(services) = device.services.take() {
        let thread = services.spawn().map_err(|source| DeviceSetupError::Host {
            name: name.clone(),
            what: "start its host-services thread",
            source,
        })?;
        device.services_thread = Some(thread);
    }
    let (resources, fds) = match &mut device.how {
        How::Sandboxed(_) => return Ok(()),
        How::InProcess {
            resources,
            worker_fds,
        } => (resources, worker_fds.take().expect("started once")),
    };
    let resources = resources
        .worker_fds()
        .map_err(|source| DeviceSetupError::Host {
            name: name.clone(),
            what: "duplicate its host resources",
            source,
        })?;
    let service_end = device
        .link
        .take()
        .map(|link| link.take(SERVICE_CHANNEL_WAIT))
        .transpose()
        .map_err(|source| DeviceSetupError::Host {
            name: name.clone(),
            what: "take its service channel",
            source,
        })?;
    let config = &device.spec.config;
    let mut resource_fds = devices::kind::ResourceFds::new(resources);
    if let Some(end) = service_end {
        resource_fds = resource_fds.with_services(end, device.window);
    }
    let backend = config
        .build(resource_fds)
        .map_err(|source| DeviceSetupError::Build {
            name: name.clone(),
            kind: config.kind(),
            source,
        })?;
    let label = name.clone();
    let warn_label = name.clone();
    let warn = move |warning: &str| eprintln!("svmm: {warn_label}: {warning}");
    let on_exit = move |result: &Result<_, _>| {
        if let Err(e) = result {
            eprintln!("svmm: {label}: in-process device stopped: {}", one_line(e));
        }
    };
    let profile = config.seccomp_profile();
    let confine = move || self_confine::enter(ThreadRole::Device(profile));
    let handle = in_process::spawn(format!("dev-{name}"), backend, fds, warn, confine, on_exit)
        .map_err(|source| DeviceSetupError::Host {
            name,
            what: "start its device thread",
            source,
        })?;
    device.worker = Some(Worker::InProcess { _thread: handle });
    Ok(())
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
