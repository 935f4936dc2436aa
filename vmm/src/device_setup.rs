//! Creating the VM's virtio devices: for each `--device`, in order, a virtio-mmio slot, its
//! interrupt and queue-notification eventfds registered with KVM, the device's worker, the
//! [`WorkerProxy`] that talks to it, the [`MmioTransport`] on the MMIO bus, and a monitor thread.
//!
//! ```text
//!   slot i (addr, 4 KiB, GSI) ─ IrqStatus page ─ irqfd → KVM GSI ─ ioeventfd per queue ← KVM
//!        │                                                              (QueueNotify, datamatch = i)
//!        ├─ open_host_resources(kind)          (broker: before confinement)
//!        ├─ start_worker(...)                  ◀── THE place the broker plugs in
//!        ├─ WorkerProxy::connect (waits for Ready, 5 s)
//!        ├─ MmioTransport on the MMIO bus at addr
//!        └─ monitor thread: socket readable → proxy.service(), DEVICE_NEEDS_RESET, policy
//! ```
//!
//! The devices must exist before the ACPI tables and the command line are written: both
//! describe them ([`VirtioDevices::acpi`], [`VirtioDevices::cmdline`]).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use devices::irq_status::IrqStatus;
use kvm_ioctls::{IoEventAddress, VmFd};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::acpi::VirtioMmioDevice;
use crate::cli::{OnWorkerExit, VmConfig};
use crate::control::{VmControl, VmEvent};
use crate::device_spec::DeviceSpec;
use crate::error::one_line;
use crate::fd_wait::wait_readable;
use crate::layout::{virtio_mmio_cmdline_entry, virtio_mmio_slot};
use crate::memory::GuestRam;
use crate::mmio_bus::{MmioBus, MmioBusError};
use crate::virtio::mmio::{MmioTransport, QUEUE_NOTIFY_OFFSET};
use crate::virtio::worker_proxy::{Deadlines, WorkerProxy};
use crate::virtio::ProxyError;
use crate::worker::backend::{self, BackendError, HostResources};
use crate::worker::{in_process, WorkerFds};

/// The transport of one device, shared by the MMIO bus, its monitor and the VM's owner.
type Transport = Arc<Mutex<MmioTransport<WorkerProxy>>>;

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
    #[error("{0}")]
    Backend(#[from] BackendError),
    /// The control channel could not be created.
    #[error("{name}: cannot create its control channel")]
    Channel {
        /// The device.
        name: String,
        /// The channel error.
        #[source]
        source: ipc::ChannelError,
    },
    /// `sandbox=on` asked for a worker process, which this build cannot spawn yet.
    #[error(
        "{0}: sandboxed device workers are not available in this build yet; \
         use --device KIND,sandbox=off or --no-sandbox"
    )]
    SandboxUnavailable(String),
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
    // Sandboxed(broker::WorkerHandle) — added with the broker; its Drop kills and reaps.
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
        let name = format!("{}#{index}", spec.kind);
        let (addr, size, irq) =
            virtio_mmio_slot(index).ok_or_else(|| DeviceSetupError::NoSlot(name.clone()))?;
        let (transport, worker) = create_one(vm, ram, spec, &name, (addr, irq))?;
        bus.insert(addr, size, transport.clone())
            .map_err(|source| DeviceSetupError::Bus {
                name: name.clone(),
                source,
            })?;
        spawn_monitor(&name, &transport, config.on_worker_exit, control)?;
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

/// The eventfds, the worker and the transport of one device at `addr` with GSI `irq`.
fn create_one(
    vm: &VmFd,
    ram: &GuestRam,
    spec: &DeviceSpec,
    name: &str,
    (addr, irq): (u64, u32),
) -> Result<(Transport, Worker), DeviceSetupError> {
    let host = |what| {
        let name = name.to_string();
        move |source| DeviceSetupError::Host { name, what, source }
    };
    let kvm = |what| {
        let name = name.to_string();
        move |source| DeviceSetupError::Kvm { name, what, source }
    };
    let status = IrqStatus::create().map_err(host("create its interrupt status page"))?;
    let irqfd = EventFd::new(EFD_NONBLOCK).map_err(host("create its irqfd"))?;
    vm.register_irqfd(&irqfd, irq).map_err(kvm("irqfd"))?;
    let mut queue_events = Vec::new();
    for queue in 0..backend::num_queues(spec.kind) {
        let fd = EventFd::new(EFD_NONBLOCK).map_err(host("create a queue eventfd"))?;
        let notify = IoEventAddress::Mmio(addr + QUEUE_NOTIFY_OFFSET);
        vm.register_ioevent(&fd, &notify, u32::from(queue))
            .map_err(kvm("queue notification ioeventfd"))?;
        queue_events.push(fd);
    }
    let resources = backend::open_host_resources(spec.kind)?;

    let (vmm_end, worker_end) =
        ipc::Channel::pair().map_err(|source| DeviceSetupError::Channel {
            name: name.to_string(),
            source,
        })?;
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
        stop: EventFd::new(EFD_NONBLOCK).map_err(host("create its stop eventfd"))?,
    };
    let worker = start_worker(spec, name, resources, fds)?;

    let proxy = WorkerProxy::connect(
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
    let transport = Arc::new(Mutex::new(MmioTransport::new(name, proxy)));
    Ok((transport, worker))
}

/// Starts the worker that serves the device: **the one place the broker plugs in**.
///
/// `resources` are the device's host files (opened by `backend::open_host_resources`, later by
/// the broker before confinement) and `fds` everything the worker needs from the VMM, already
/// registered with KVM. In-process, the thread builds the backend and runs
/// `worker::run_device`. Sandboxed, the broker will pass `fds` at `worker::fd_numbers` and the
/// resources after them to `svmm __worker KIND` (`worker::spawned`, already built and tested),
/// which confines itself, builds the backend with `backend::build` and calls the same
/// `run_device`; the `Worker` it returns holds the broker's handle (kill + reap on drop).
fn start_worker(
    spec: &DeviceSpec,
    name: &str,
    resources: HostResources,
    fds: WorkerFds,
) -> Result<Worker, DeviceSetupError> {
    if spec.sandbox {
        return Err(DeviceSetupError::SandboxUnavailable(name.to_string()));
    }
    let backend = backend::build(spec.kind, resources)?;
    let label = name.to_string();
    let handle = in_process::spawn(format!("dev-{name}"), backend, fds, move |result| {
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

/// Starts the thread that serves the worker's unsolicited messages: config changes, device
/// errors, and the worker's death (the socket hangs up). It latches DEVICE_NEEDS_RESET when the
/// proxy asks, applies `--on-worker-exit` once the device is broken for good, and ends then.
fn spawn_monitor(
    name: &str,
    transport: &Transport,
    policy: OnWorkerExit,
    control: &VmControl,
) -> Result<(), DeviceSetupError> {
    let host = |what, source| DeviceSetupError::Host {
        name: name.to_string(),
        what,
        source,
    };
    // Its own copy of the socket, only for polling: the proxy keeps (and may shut down) its own.
    let socket: OwnedFd = lock(transport)
        .proxy()
        .socket()
        .try_clone_to_owned()
        .map_err(|e| host("duplicate its control socket", e))?;
    let transport = transport.clone();
    let control = control.clone();
    let label = name.to_string();
    thread::Builder::new()
        .name(format!("mon-{name}"))
        .spawn(move || monitor(&label, &transport, &socket, policy, &control))
        .map_err(|e| host("start its monitor thread", e))?;
    Ok(())
}

fn monitor(
    name: &str,
    transport: &Transport,
    socket: &OwnedFd,
    policy: OnWorkerExit,
    control: &VmControl,
) {
    loop {
        match wait_readable(socket.as_fd(), Duration::from_secs(3600)) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                eprintln!("svmm: {name}: cannot watch the device worker: {e}");
                return;
            }
        }
        let mut transport = lock(transport);
        transport.proxy_mut().service();
        if transport.proxy_mut().take_needs_reset() {
            transport.mark_needs_reset();
        }
        if let Some(reason) = transport.proxy().broken_reason() {
            if policy == OnWorkerExit::Stop {
                control.request(VmEvent::DeviceFailed(format!("{name}: {reason}")));
            }
            return;
        }
    }
}

/// Locks a transport; a poisoned lock (a panic elsewhere) still holds a usable register state.
fn lock(transport: &Transport) -> MutexGuard<'_, MmioTransport<WorkerProxy>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use devices::irq_status::IrqStatus;
    use ipc::{Channel, DeviceErrorKind, WorkerToVmm};

    use crate::mmio_bus::MmioDevice;
    use crate::virtio::status::DEVICE_NEEDS_RESET;

    /// A transport whose proxy talks to a fake worker; returns the fake's end.
    fn transport() -> (Transport, Channel) {
        let (vmm, worker) = Channel::pair().unwrap();
        let ready = WorkerToVmm::Ready {
            device_type: 4,
            device_features: 1 << 32,
            num_queues: 1,
            max_queue_size: 16,
            config: vec![],
        };
        worker.send(&ready, &[]).unwrap();
        let proxy = WorkerProxy::connect(
            "rng#0",
            vmm,
            IrqStatus::create().unwrap(),
            EventFd::new(EFD_NONBLOCK).unwrap(),
            vec![EventFd::new(EFD_NONBLOCK).unwrap()],
            Deadlines::default(),
        )
        .unwrap();
        (
            Arc::new(Mutex::new(MmioTransport::new("rng#0", proxy))),
            worker,
        )
    }

    fn status(transport: &Transport) -> u32 {
        let mut data = [0u8; 4];
        lock(transport).read(0x70, &mut data);
        u32::from_le_bytes(data)
    }

    fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn a_dead_worker_stops_the_vm_when_asked() {
        let (transport, worker) = transport();
        // The driver acknowledged the device, so DEVICE_NEEDS_RESET can show.
        lock(&transport).write(0x70, &1u32.to_le_bytes());
        let (control, events) = VmControl::new();
        spawn_monitor("rng#0", &transport, OnWorkerExit::Stop, &control).unwrap();
        drop(worker);
        let event = events.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(
            matches!(&event, VmEvent::DeviceFailed(reason) if reason.starts_with("rng#0: ")),
            "{event:?}"
        );
        assert_ne!(status(&transport) & DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn a_device_error_shows_needs_reset_and_the_vm_keeps_running() {
        let (transport, worker) = transport();
        lock(&transport).write(0x70, &1u32.to_le_bytes());
        let (control, events) = VmControl::new();
        spawn_monitor("rng#0", &transport, OnWorkerExit::Keep, &control).unwrap();
        let error = WorkerToVmm::DeviceError {
            reason: DeviceErrorKind::GuestFault,
        };
        worker.send(&error, &[]).unwrap();
        wait_for("DEVICE_NEEDS_RESET", || {
            status(&transport) & DEVICE_NEEDS_RESET != 0
        });
        // Keep: the worker's death is reported, not turned into a VM event.
        drop(worker);
        wait_for("the device to break", || {
            lock(&transport).proxy().broken_reason().is_some()
        });
        assert!(events.recv_timeout(Duration::from_millis(100)).is_err());
    }
}
