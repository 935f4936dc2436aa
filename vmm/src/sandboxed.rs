//! Sandboxed device workers, VMM side: the broker process and **the one entry point that gets
//! a running worker for device N** ([`Sandbox::start`]), used for the first start at set-up
//! and for every restart.
//!
//! svmm never spawns a worker itself. Once the devices are planned and their host resources
//! opened, and while svmm is still single-threaded, [`Sandbox::fork`] forks the broker
//! (`broker::server`) with, per sandboxed device ([`DeviceStart`]), its fixed plan (argv, ids)
//! and its host resources' fds — svmm then closes its own copies of those, keeping only what
//! else a resource holds (helper processes) — and its own seccomp filter (the `broker`
//! profile). svmm keeps, per device, the fds every worker of the device gets again (guest RAM,
//! the interrupt status page, the irqfd and the queue ioeventfds, all bound to KVM once) and a
//! [`Lease`]: a channel on which it can ask for exactly two things about that device, `Start`
//! (with those fds) and `Stop`, and on which the broker reports how
//! each worker ended (`ipc::broker`). For a kind with host services svmm also keeps the
//! device's [`ServiceLink`]: each `Start` carries, after those fds, the device's end of a fresh
//! service channel that the device's `svc-` thread made and parked there (`crate::services`),
//! which the broker passes on as the worker's last fd.
//!
//! ```text
//!   svmm ─ Lease(rng#0) ═══ Start / Stop ═══▶ broker ── clone3 + id maps + execveat ──▶ worker
//!        ◀═══ Started (control end, pidfd, stderr) / Failed (before exec) / Exited (status)
//!             / Refused ═══
//! ```
//!
//! [`Sandbox::start`] is one request and its answer ([`Sandbox::request`], [`Sandbox::answer`]:
//! set-up sends every device's request at once, right after the fork, and takes the answers
//! later): the thread that asks — the main thread at set-up, a monitor thread under svmm's
//! seccomp filter when it restarts a worker — makes no
//! system call beyond a `sendmsg`, a `poll` and a `recvmsg` (and, for a device with host
//! services, a `poll` and a `recvmsg` to take the parked service channel). Nothing about a
//! start is computed at restart time: the plan is the one the broker was given at set-up.
//!
//! Before the fork, [`Sandbox::fork`] checks that the kernel enforces Landlock and refuses, in
//! one line, when it does not (unless `--allow-missing-landlock`). Each worker's stderr is a
//! pipe of its own whose other end svmm's monitor reads (`crate::worker_stderr`).
//!
//! The broker dies with svmm (its parent-death signal) and its workers with it (theirs);
//! svmm hanging up its channels makes it kill its workers and exit.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use broker::{BrokerError, BrokerSetup, Declared};
use ipc::{BrokerReply, BrokerRequest, Channel, ChannelError};
use vmm_sys_util::eventfd::EventFd;

use crate::config::SandboxOptions;
use crate::fd_wait::wait_readable;
use crate::host_resources::HostResources;
use crate::plan::WorkerPlan;
use crate::services::ServiceLink;

/// How long svmm waits for the broker to answer a `Start` (the spawn itself, not the worker's
/// `Ready`).
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The profile of the broker process.
pub const BROKER_PROFILE: &str = "broker";

/// Why the broker or a worker could not be started. Each variant names one failure.
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
    SelfExe(#[source] io::Error),
    /// The binary lacks the broker's profile (a build bug).
    #[error("no seccomp profile {BROKER_PROFILE:?} in this build")]
    NoProfile,
    /// The broker process could not be started.
    #[error("cannot start the broker")]
    Broker(#[source] BrokerError),
    /// No device N was declared to the broker (a set-up bug).
    #[error("no sandboxed device {0}")]
    NoDevice(usize),
    /// Talking to the broker failed.
    #[error("the broker channel failed")]
    Channel(#[source] ChannelError),
    /// The broker did not answer in time.
    #[error("the broker did not answer within {0:?}")]
    Timeout(Duration),
    /// The broker refused to start the worker.
    #[error("the broker refused to start it: {0}")]
    Refused(String),
    /// The broker started the worker, which then failed before its exec.
    #[error("the broker could not start it: {0}")]
    Failed(String),
    /// The broker answered something else.
    #[error("the broker answered {0}")]
    Unexpected(String),
    /// The device's `svc-` thread had no service channel ready for the worker.
    #[error("no service channel for the worker")]
    Services(#[source] io::Error),
}

/// Everything about sandboxed device N that is fixed at set-up: what the broker is given (its
/// plan, its host resources) and the fds every worker of the device gets again (svmm keeps
/// them).
pub struct DeviceStart {
    /// Its number in `--device` order.
    pub index: usize,
    /// What the worker is started with (the broker keeps it).
    pub plan: WorkerPlan,
    /// The sealed guest RAM memfd.
    pub guest_ram: File,
    /// The device's interrupt status page.
    pub irq_status: OwnedFd,
    /// The device's irqfd (bound to its GSI in KVM).
    pub irqfd: EventFd,
    /// Its queue notification eventfds (KVM ioeventfds), in queue order.
    pub queue_events: Vec<EventFd>,
    /// Its host resources: their fds go to the broker, the rest (helper processes) stays here.
    pub resources: HostResources,
    /// For a kind with host services: where each worker's fresh service channel comes from
    /// (`crate::services`); the channel is the worker's last fd.
    pub services: Option<ServiceLink>,
}

/// What svmm keeps of sandboxed device N once the broker runs.
struct Kept {
    lease: Arc<Lease>,
    guest_ram: File,
    irq_status: OwnedFd,
    irqfd: EventFd,
    queue_events: Vec<EventFd>,
    /// Helper processes and the like, held as long as the VM (the fds are the broker's).
    _resources: HostResources,
    /// Where each worker's service channel comes from, for a kind with host services.
    services: Option<ServiceLink>,
}

/// A worker the broker started: its pid and a pidfd svmm may only poll (the worker is the
/// broker's child, under another uid: svmm can neither signal nor reap it).
#[derive(Debug)]
pub struct WorkerProcess {
    pid: i32,
    pidfd: OwnedFd,
}

impl WorkerProcess {
    /// Its pid (in svmm's pid namespace).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Readable once it has ended.
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }
}

/// A worker [`Sandbox::start`] started.
pub struct Started {
    /// The process.
    pub worker: WorkerProcess,
    /// The VMM's end of its control channel (non-blocking: the broker made it so).
    pub control: Channel,
    /// What the device's monitor thread polls for it.
    pub watch: Watch,
}

/// The fds a monitor thread polls for one worker, besides the device's [`Lease`] (where the
/// broker reports the worker's end).
pub struct Watch {
    /// A duplicate of the VMM's end of the control channel.
    pub socket: OwnedFd,
    /// The read end of the worker's stderr pipe.
    pub stderr: OwnedFd,
}

/// The VM's broker and what svmm keeps per sandboxed device (see the module docs).
pub struct Sandbox {
    /// Indexed by device number (`--device` order); `None` for in-process devices.
    devices: Vec<Option<Kept>>,
}

impl Sandbox {
    /// Checks Landlock, opens svmm's executable and forks the broker for `devices`. Call it
    /// while svmm is single-threaded.
    pub fn fork(options: &SandboxOptions, devices: Vec<DeviceStart>) -> Result<Self, SandboxError> {
        let have = broker::landlock_abi_version();
        let required = broker::REQUIRED_LANDLOCK_ABI as i32;
        if have < required && !options.allow_missing_landlock {
            return Err(SandboxError::LandlockMissing { have, required });
        }
        let exe = broker::self_exe().map_err(SandboxError::SelfExe)?;
        let seccomp = seccomp_profiles::program(BROKER_PROFILE, options.seccomp)
            .ok_or(SandboxError::NoProfile)?;
        let mut declared = Vec::with_capacity(devices.len());
        let mut kept = Vec::with_capacity(devices.len());
        for mut device in devices {
            // Guest RAM, status page, irqfd, one per queue; the broker adds a fresh stop
            // eventfd after the first three (`worker::fd_numbers` order).
            let guest_fds = 3 + device.queue_events.len();
            declared.push(Declared {
                name: device.plan.name.clone(),
                index: device.index as u32,
                argv: device.plan.argv.clone(),
                ids: device.plan.ids,
                guest_fds,
                fresh_eventfd_at: Some(3),
                resources: device.resources.take_fds().into_iter().flatten().collect(),
                trailing_fds: usize::from(device.services.is_some()),
            });
            kept.push(device);
        }
        let process = broker::server::fork(BrokerSetup {
            exe,
            devices: declared,
            seccomp,
            drop_to: crate::plan::broker_ids(options.worker_ids, options.host_ids.subids()),
            subids: options.host_ids.subids(),
        })
        .map_err(SandboxError::Broker)?;
        let mut sandbox = Sandbox {
            devices: Vec::new(),
        };
        for (device, channel) in kept.into_iter().zip(process.channels) {
            let index = device.index;
            if sandbox.devices.len() <= index {
                sandbox.devices.resize_with(index + 1, || None);
            }
            sandbox.devices[index] = Some(Kept {
                lease: Arc::new(Lease {
                    name: device.plan.name,
                    index: index as u32,
                    channel,
                }),
                guest_ram: device.guest_ram,
                irq_status: device.irq_status,
                irqfd: device.irqfd,
                queue_events: device.queue_events,
                _resources: device.resources,
                services: device.services,
            });
        }
        Ok(sandbox)
    }

    /// The lease on device `index`, if it is sandboxed.
    pub fn lease(&self, index: usize) -> Option<Arc<Lease>> {
        let kept = self.devices.get(index)?.as_ref()?;
        Some(kept.lease.clone())
    }

    /// Has the broker start a confined worker for device `index`, as its plan says, with the
    /// device's fds and (made by the broker) a fresh control channel, stop eventfd, stderr pipe
    /// and duplicates of its host resources: the first time, or again after its worker died.
    /// [`Sandbox::request`] and [`Sandbox::answer`] in one.
    pub fn start(&self, index: usize) -> Result<Started, SandboxError> {
        self.request(index)?;
        self.answer(index)
    }

    /// The first half of [`Sandbox::start`]: sends device `index`'s `Start` and returns without
    /// waiting, so that set-up can ask for every worker at once and go on with its own work
    /// while the broker starts them; [`Sandbox::answer`] takes the broker's answer.
    pub fn request(&self, index: usize) -> Result<(), SandboxError> {
        let kept = self.kept(index)?;
        // The service channel goes after the guest's fds (the broker puts it after the host
        // resources); svmm keeps no copy of it once the broker has it.
        let service = match &kept.services {
            Some(link) => Some(link.take(START_TIMEOUT).map_err(SandboxError::Services)?),
            None => None,
        };
        let mut guest = vec![
            kept.guest_ram.as_fd(),
            kept.irq_status.as_fd(),
            borrow(&kept.irqfd),
        ];
        guest.extend(kept.queue_events.iter().map(borrow));
        guest.extend(service.as_ref().map(AsFd::as_fd));
        kept.lease.request(&guest)
    }

    /// The second half of [`Sandbox::start`]: waits for the broker's answer to device
    /// `index`'s `Start`.
    pub fn answer(&self, index: usize) -> Result<Started, SandboxError> {
        let started = self.kept(index)?.lease.answer()?;
        Ok(Started {
            worker: WorkerProcess {
                pid: started.pid,
                pidfd: started.pidfd,
            },
            control: started.control,
            watch: Watch {
                socket: started.watched,
                stderr: started.stderr,
            },
        })
    }

    /// Whether device `index`'s start takes a service channel, which its `svc-` thread makes
    /// once it runs (so its `Start` cannot be sent before set-up's pass 2).
    pub fn needs_service_channel(&self, index: usize) -> bool {
        self.kept(index).is_ok_and(|kept| kept.services.is_some())
    }

    fn kept(&self, index: usize) -> Result<&Kept, SandboxError> {
        self.devices
            .get(index)
            .and_then(Option::as_ref)
            .ok_or(SandboxError::NoDevice(index))
    }
}

/// The fd an `EventFd` owns, borrowed for as long as the `EventFd` is.
fn borrow(fd: &EventFd) -> BorrowedFd<'_> {
    use std::os::fd::AsRawFd;
    // SAFETY: the EventFd owns its fd and keeps it open until it is dropped, which the borrow's
    // lifetime (tied to `fd`) rules out.
    unsafe { BorrowedFd::borrow_raw(fd.as_raw_fd()) }
}

/// svmm's channel to the broker about one device.
#[derive(Debug)]
pub struct Lease {
    name: String,
    index: u32,
    channel: Channel,
}

/// What the broker's `Started` brought.
struct Answer {
    pid: i32,
    control: Channel,
    /// A second fd of `control`'s socket, for the monitor.
    watched: OwnedFd,
    pidfd: OwnedFd,
    stderr: OwnedFd,
}

impl Lease {
    /// The device's name (`rng#0`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Asks the broker to start the device's worker with `guest` (guest RAM, status page,
    /// irqfd, queue eventfds: svmm keeps its own copies); [`Lease::answer`] waits for the
    /// answer.
    fn request(&self, guest: &[BorrowedFd<'_>]) -> Result<(), SandboxError> {
        let request = BrokerRequest::Start { device: self.index };
        self.channel
            .send(&request, guest)
            .map_err(SandboxError::Channel)
    }

    /// The broker's answer to the last [`Lease::request`].
    fn answer(&self) -> Result<Answer, SandboxError> {
        if !wait_readable(self.channel.as_fd(), START_TIMEOUT).unwrap_or(false) {
            return Err(SandboxError::Timeout(START_TIMEOUT));
        }
        let (reply, fds) = self
            .channel
            .recv::<BrokerReply>()
            .map_err(SandboxError::Channel)?;
        match reply {
            BrokerReply::Started { device, pid } if device == self.index => {
                let Ok([control, watched, pidfd, stderr]) =
                    <[OwnedFd; ipc::broker::STARTED_FDS]>::try_from(fds)
                else {
                    return Err(SandboxError::Unexpected("Started without its fds".into()));
                };
                let control = Channel::from_broker(control);
                Ok(Answer {
                    pid,
                    control,
                    watched,
                    pidfd,
                    stderr,
                })
            }
            BrokerReply::Refused { reason, .. } => Err(SandboxError::Refused(reason)),
            other => Err(SandboxError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Asks the broker to kill the device's worker (an `Exited` report follows).
    pub fn stop(&self) -> Result<(), ChannelError> {
        self.channel
            .send(&BrokerRequest::Stop { device: self.index }, &[])
    }

    /// The channel, to poll for the broker's reports.
    pub fn channel(&self) -> BorrowedFd<'_> {
        self.channel.as_fd()
    }

    /// Why the worker it last started did not run, if the broker says so within `wait`: its
    /// `Failed` report (the broker answers a `Start` before the worker's exec). `None` once
    /// the broker reported the worker's end without one, or said nothing. For set-up, before
    /// any monitor reads the channel: it consumes the reports.
    pub fn start_failure(&self, wait: Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if !wait_readable(self.channel.as_fd(), left).unwrap_or(false) {
                return None;
            }
            match self.next_report() {
                Ok(BrokerReply::Failed { reason, .. }) => return Some(reason),
                Ok(BrokerReply::Exited { .. }) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// The broker's next report (`Exited`, `Failed`, or a `Refused` for a `Stop`). Received
    /// without a control buffer: the broker never sends fds with a report.
    pub fn next_report(&self) -> Result<BrokerReply, ChannelError> {
        self.channel.recv_without_fds::<BrokerReply>()
    }
}
