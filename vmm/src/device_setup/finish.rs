//! Pass 3 of the device set-up, on the main thread once it is confined and the vCPUs run:
//! the sandboxed workers' starts, every `Ready`, then per device its proxy and transport,
//! which open its [`Gate`](super::gate::Gate) and go to its waiting monitor.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::VmConfig;
use crate::fd_wait::{wait_all_readable, wait_readable};
use crate::sandboxed::{Sandbox, SandboxError, Watch};
use crate::supervisor::{Restarter, Supervised};
use crate::virtio::mmio::MmioTransport;
use crate::virtio::worker_proxy::{Deadlines, WorkerProxy};
use crate::virtio::ProxyError;

use super::{Device, DeviceSetupError, How, Pending, Starting, Starting1, VirtioDevices, Worker};

/// How long a set-up whose worker hung up before `Ready` waits for the broker's report of a
/// failed exec (it comes right after the worker's end).
const EXEC_REPORT_WAIT: Duration = Duration::from_secs(1);

impl VirtioDevices {
    /// Pass 3, once the vCPUs run (they wait only at a device the guest touches before its
    /// worker is `Ready`): starts every sandboxed device's worker through the broker — the
    /// broker answers each `Start` before the worker's exec, so they come up in parallel —,
    /// waits for every `Ready` together (each under its own deadline), then, in order, builds
    /// each device's proxy and transport, opens its window and hands it to its monitor. A
    /// device that fails ends the set-up with its error; the windows of the devices not
    /// started by then close (the VM is ending).
    pub fn finish(
        &mut self,
        starting: Starting,
        config: &VmConfig,
    ) -> Result<(), DeviceSetupError> {
        let mut devices = starting.devices;
        let sandbox = self.sandbox.as_deref();
        // The Starts pass 1 could not send (a device whose start takes its service channel),
        // all at once; then every answer.
        for starting in &mut devices {
            let device = &mut starting.device;
            if matches!(device.how, How::Sandboxed(_)) && !device.requested {
                request(device, sandbox)?;
            }
        }
        for starting in &mut devices {
            start_sandboxed(&mut starting.device, sandbox)?;
        }
        let deadlines = Deadlines::default();
        let waits: Vec<_> = devices
            .iter()
            .filter_map(|s| {
                let d = &s.device;
                Some((d.vmm_end.as_ref()?.as_fd(), d.started + deadlines.ready))
            })
            .collect();
        let ready_at = wait_all_readable(&waits).map_err(|source| DeviceSetupError::Host {
            name: devices
                .first()
                .map_or_else(String::new, |s| s.device.name.clone()),
            what: "wait for its worker",
            source,
        })?;
        drop(waits);
        for (starting, polled) in devices.into_iter().zip(ready_at) {
            // A Ready set-up saw come earlier counts from then.
            let ready_at = starting.device.ready_at.or(polled);
            let device = self.finish_one(starting, ready_at, config, deadlines)?;
            self.devices.push(device);
        }
        Ok(())
    }

    /// Pass 3 for one device whose worker answered (at `ready_at`) or not: proxy, transport,
    /// its window opened, its monitor handed the device.
    fn finish_one(
        &self,
        starting: Starting1,
        ready_at: Option<Instant>,
        config: &VmConfig,
        deadlines: Deadlines,
    ) -> Result<Device, DeviceSetupError> {
        let Starting1 {
            device,
            opener,
            monitor,
        } = starting;
        let Pending {
            name,
            index,
            spec,
            how,
            status,
            vmm_end,
            irqfd,
            queue_events,
            worker,
            watch,
            monitor_socket,
            started,
            window,
            services_thread,
            ..
        } = device;
        let worker = worker.expect("started in pass 2 or 3");
        let vmm_end = vmm_end.expect("started in pass 2 or 3");
        let resources = match how {
            How::InProcess { resources, .. } => Some(resources),
            How::Sandboxed(_) => None,
        };
        let Some(ready_at) = ready_at else {
            return Err(DeviceSetupError::Start {
                name,
                source: ProxyError::Timeout {
                    request: "start",
                    timeout: deadlines.ready,
                },
            });
        };
        // The worker's Ready must describe a device of the kind svmm started.
        let shape = spec.config.shape();
        let connected = WorkerProxy::connect(
            &name,
            vmm_end,
            status,
            irqfd,
            queue_events,
            deadlines,
            &shape,
        );
        let mut proxy = match connected {
            Ok(proxy) => proxy,
            Err(source) => {
                // The broker answered before the worker's exec: one that failed there is
                // named by its report.
                let gone = matches!(source, ProxyError::Channel(ipc::ChannelError::PeerGone));
                let lease = self.sandbox.as_ref().and_then(|s| s.lease(index));
                let lease = lease.filter(|_| gone);
                let failed = lease.and_then(|lease| lease.start_failure(EXEC_REPORT_WAIT));
                return Err(match failed {
                    Some(reason) => DeviceSetupError::Spawn {
                        name,
                        source: SandboxError::Failed(reason),
                    },
                    None => DeviceSetupError::Start { name, source },
                });
            }
        };
        if config.report_timings {
            let spawn_us = ready_at.saturating_duration_since(started).as_micros();
            eprintln!("svmm: timing device={name} spawn_us={spawn_us}");
        }
        if let Worker::Sandboxed(supervised) = &worker {
            let supervised = supervised.clone();
            proxy.set_terminate(move |reason, grace| supervised.kill_for(reason, grace));
        }
        let regions = window.map(|w| vec![(w.base, w.len)]).unwrap_or_default();
        let transport = Arc::new(Mutex::new(
            MmioTransport::new(&name, proxy).with_shm_regions(regions),
        ));
        let supervised = match &worker {
            Worker::Sandboxed(supervised) => Some(supervised.clone()),
            Worker::InProcess { .. } => None,
        };
        let restarter = self
            .sandbox
            .as_ref()
            .filter(|_| spec.sandbox)
            .map(|sandbox| {
                Restarter::new(
                    Arc::downgrade(sandbox),
                    index,
                    spec.config.restart(),
                    config.max_restarts,
                )
            });
        // A sandboxed worker's start brought the monitor's fds; an in-process device's socket
        // was duplicated in pass 1 (svmm's filter has no call for it).
        let (socket, stderr) = match (watch, monitor_socket) {
            (Some(Watch { socket, stderr }), _) => (socket, Some(stderr)),
            (None, Some(socket)) => (socket, None),
            (None, None) => unreachable!("every device has its monitor's socket"),
        };
        monitor.hand(
            &transport,
            supervised,
            restarter,
            socket,
            stderr,
            config.on_worker_exit,
        );
        opener.open(&transport);
        Ok(Device {
            name,
            transport,
            worker,
            _resources: resources,
            _services: services_thread,
        })
    }
}

impl VirtioDevices {
    /// Between svmm's own set-up steps, after pass 1 and before pass 2 (before the main thread
    /// confines itself): takes the broker's answers that came for the `Start`s of pass 1 and
    /// notes when each worker's `Ready` came, so that a worker's start counts to its `Ready`
    /// (`--report-timings`), not to when pass 3 first looks. Never waits.
    pub fn note_ready(&mut self) -> Result<(), DeviceSetupError> {
        note_ready(self.pending.iter_mut(), self.sandbox.as_deref())
    }
}

impl Starting {
    /// [`VirtioDevices::note_ready`] between pass 2 and the main thread's confinement.
    pub fn note_ready(&mut self, devices: &VirtioDevices) -> Result<(), DeviceSetupError> {
        let pending = self.devices.iter_mut().map(|s| &mut s.device);
        note_ready(pending, devices.sandbox.as_deref())
    }
}

fn note_ready<'a>(
    devices: impl Iterator<Item = &'a mut Pending>,
    sandbox: Option<&Sandbox>,
) -> Result<(), DeviceSetupError> {
    let now = |fd: BorrowedFd<'_>| wait_readable(fd, Duration::ZERO).unwrap_or(false);
    for device in devices {
        let answered = match (&device.how, sandbox) {
            (How::Sandboxed(_), Some(sandbox)) if device.requested && device.worker.is_none() => {
                sandbox
                    .lease(device.index)
                    .is_some_and(|l| now(l.channel()))
            }
            _ => false,
        };
        if answered {
            start_sandboxed(device, sandbox)?;
        }
        let ready =
            device.ready_at.is_none() && device.vmm_end.as_ref().is_some_and(|c| now(c.as_fd()));
        if ready {
            device.ready_at = Some(Instant::now());
        }
    }
    Ok(())
}

/// Pass 1, right after the broker's fork: sends the `Start` of every sandboxed device whose
/// start needs nothing made later (a service channel comes from its `svc-` thread, pass 2), so
/// that the broker spawns those workers, and they exec and confine themselves, while svmm goes
/// on building the VM; pass 3 takes the answers. (The main thread is not yet confined here, but
/// nothing of a worker depends on that: the guest runs only once it is.)
pub(super) fn request_starts(
    devices: &mut [Pending],
    sandbox: &Sandbox,
) -> Result<(), DeviceSetupError> {
    for device in devices {
        if matches!(device.how, How::Sandboxed(_)) && !sandbox.needs_service_channel(device.index) {
            request(device, Some(sandbox))?;
        }
    }
    Ok(())
}

/// Sends a sandboxed device's `Start` to the broker; its start (the `Ready` deadline, the
/// spawn time) counts from here.
fn request(device: &mut Pending, sandbox: Option<&Sandbox>) -> Result<(), DeviceSetupError> {
    let failed = |source| DeviceSetupError::Spawn {
        name: device.name.clone(),
        source,
    };
    // `prepare` declares every sandboxed device to the VM's broker.
    let sandbox = sandbox.ok_or_else(|| failed(SandboxError::NoDevice(device.index)))?;
    let started = Instant::now();
    sandbox.request(device.index).map_err(failed)?;
    device.started = started;
    device.requested = true;
    Ok(())
}

/// Pass 3 for a sandboxed device: its worker's start — **the one place the broker plugs in**.
///
/// The device's start went to `sandbox` ([`request`]), and the broker spawns `svmm __worker
/// KIND` from its plan with fresh fds and duplicates of its host resources ([`Sandbox::start`]
/// restarts it later the same way; see `crate::sandboxed`); the worker confines itself, builds
/// the backend and serves. Here: the broker's answer, under svmm's filter. (An in-process
/// device started in pass 2.)
fn start_sandboxed(
    device: &mut Pending,
    sandbox: Option<&Sandbox>,
) -> Result<(), DeviceSetupError> {
    // Not sandboxed, or its answer came while svmm built the VM.
    if !matches!(device.how, How::Sandboxed(_)) || device.worker.is_some() {
        return Ok(());
    }
    let failed = |source| DeviceSetupError::Spawn {
        name: device.name.clone(),
        source,
    };
    let sandbox = sandbox.ok_or_else(|| failed(SandboxError::NoDevice(device.index)))?;
    let lease = sandbox
        .lease(device.index)
        .ok_or_else(|| failed(SandboxError::NoDevice(device.index)))?;
    let started = sandbox.answer(device.index).map_err(failed)?;
    device.vmm_end = Some(started.control);
    device.watch = Some(started.watch);
    device.worker = Some(Worker::Sandboxed(Supervised::new(lease, started.worker)));
    Ok(())
}
