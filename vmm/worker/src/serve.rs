//! [`map_memory`], then [`serve`]: `Ready`, then the loop that serves queue notifications and
//! control messages (see the crate docs for the conversation).

use std::sync::Arc;

use devices::irq_status::IrqStatus;
use devices::runner::{QueueRunner, RunnerError, Wake};
use devices::{Interrupt, VirtioBackend};
use ipc::{
    Channel, ChannelError, DeviceErrorKind, DeviceLayout, DeviceStats, QueueStats, VmmToWorker,
    WorkerToVmm,
};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::Epoll;
use vmm_sys_util::eventfd::EventFd;

use super::interrupt::IrqfdInterrupt;
use super::{queues, WorkerError, WorkerExit, WorkerFds};
use crate::guest_ram::map_guest_ram;

/// Runner token of the control socket.
const CONTROL: u32 = 0;

/// A worker's fds turned into what [`serve`] works with: guest RAM and the interrupt status
/// page mapped, the interrupt handle built, the event loop's epoll instance made. Reads nothing
/// from the VMM or the guest.
pub struct Mapped {
    control: Channel,
    epoll: Epoll,
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn Interrupt>,
    queue_events: Vec<EventFd>,
    stop: EventFd,
}

/// Maps guest RAM and the interrupt status page of `fds` for `backend` and makes the event
/// loop's epoll instance. A spawned worker calls this before it confines itself, so its seccomp
/// filter need not allow what that takes (`statx`, `fstat`, `fcntl(F_DUPFD_CLOEXEC)`,
/// `epoll_create1`). Failures are reported as
/// `DeviceError { Internal }` (best effort) before the error is returned.
pub fn map_memory(backend: &dyn VirtioBackend, fds: WorkerFds) -> Result<Mapped, WorkerError> {
    let WorkerFds {
        control,
        guest_ram,
        irq_status,
        irqfd,
        queue_events,
        stop,
    } = fds;
    let setup = || -> Result<_, WorkerError> {
        let size = guest_ram
            .metadata()
            .map_err(WorkerError::GuestRamSize)?
            .len();
        let mem = map_guest_ram(guest_ram, size).map_err(WorkerError::GuestRam)?;
        let status = IrqStatus::from_fd(irq_status).map_err(WorkerError::IrqStatus)?;
        if queue_events.len() != usize::from(backend.num_queues()) {
            return Err(WorkerError::QueueEvents {
                expected: backend.num_queues(),
                got: queue_events.len(),
            });
        }
        let interrupt: Arc<dyn Interrupt> = Arc::new(IrqfdInterrupt::new(status, irqfd));
        let epoll = Epoll::new().map_err(|e| WorkerError::Runner(RunnerError::Setup(e)))?;
        Ok((mem, interrupt, epoll))
    };
    match setup() {
        Ok((mem, interrupt, epoll)) => Ok(Mapped {
            control,
            epoll,
            mem,
            interrupt,
            queue_events,
            stop,
        }),
        Err(e) => {
            report(&control, DeviceErrorKind::Internal);
            Err(e)
        }
    }
}

/// Serves `backend` with what [`map_memory`] set up until the VMM shuts the device down,
/// closes the channel, or the stop eventfd fires: sends `Ready` first, so the VMM can send
/// nothing the device would act on before it knows it, builds the event loop, calls `confine`
/// — where an in-process device thread installs its seccomp filter; a spawned worker is
/// confined already and passes a no-op — and only then reads the first control message or
/// queue notification. If `confine` fails the device does not serve.
pub fn serve(
    mut backend: Box<dyn VirtioBackend>,
    mapped: Mapped,
    confine: impl FnOnce() -> Result<(), WorkerError>,
) -> Result<WorkerExit, WorkerError> {
    let Mapped {
        control,
        epoll,
        mem,
        interrupt,
        queue_events,
        stop,
    } = mapped;
    // Cannot truncate: the runner takes queue indices as u16, and there are num_queues of them.
    let queue_events: Vec<(u16, _)> = (0u16..).zip(queue_events).collect();

    let config = backend.config();
    let layout = DeviceLayout {
        device_features: backend.features(),
        num_queues: backend.num_queues(),
        max_queue_size: backend.max_queue_size(),
        config_len: config.len(),
    };
    let ready = WorkerToVmm::Ready {
        device_type: backend.device_type(),
        device_features: layout.device_features,
        num_queues: layout.num_queues,
        max_queue_size: layout.max_queue_size,
        config: config.clone(),
    };
    let mut worker = Worker {
        layout,
        control: &control,
        queue_events: &queue_events,
        mem,
        interrupt,
        config,
        earlier: DeviceStats::default(),
    };
    if let Some(exit) = worker.send(&ready)? {
        return Ok(exit);
    }

    let mut runner =
        QueueRunner::with_epoll(epoll, &queue_events, &stop).map_err(WorkerError::Runner)?;
    runner
        .watch(&control, CONTROL)
        .map_err(WorkerError::Runner)?;
    if let Err(e) = confine() {
        report(&control, DeviceErrorKind::Internal);
        return Err(e);
    }
    loop {
        match runner.run(&mut *backend) {
            Ok(Wake::Stop) => return Ok(WorkerExit::Stopped),
            Ok(Wake::Fd(_)) => {
                if let Some(exit) = worker.serve_one(&mut *backend, &mut runner)? {
                    return Ok(exit);
                }
            }
            // The backend stopped serving its queues (it ignores notifications until a reset):
            // tell the VMM, which shows DEVICE_NEEDS_RESET, and keep serving control messages.
            Err(RunnerError::Device(e)) => {
                if let Some(exit) = worker.send(&WorkerToVmm::DeviceError {
                    reason: (&e).into(),
                })? {
                    return Ok(exit);
                }
            }
            Err(e) => {
                report(&control, DeviceErrorKind::Internal);
                return Err(WorkerError::Runner(e));
            }
        }
    }
}

/// Best-effort error report on a path that ends the worker anyway.
fn report(control: &Channel, reason: DeviceErrorKind) {
    let _ = control.send(&WorkerToVmm::DeviceError { reason }, &[]);
}

/// Per-queue sums of `a` and `b`, as long as the longer of the two (at most `num_queues`).
fn add_stats(a: &DeviceStats, b: &DeviceStats) -> DeviceStats {
    let len = a.queues.len().max(b.queues.len());
    let at = |s: &DeviceStats, i: usize| s.queues.get(i).copied().unwrap_or_default();
    let queues = (0..len)
        .map(|i| {
            let (x, y) = (at(a, i), at(b, i));
            QueueStats {
                requests: x.requests.wrapping_add(y.requests),
                bytes: x.bytes.wrapping_add(y.bytes),
                errors: x.errors.wrapping_add(y.errors),
                drops: x.drops.wrapping_add(y.drops),
            }
        })
        .collect();
    DeviceStats { queues }
}

/// What the loop keeps between messages.
struct Worker<'a> {
    control: &'a Channel,
    /// The queue notification eventfds (queue index, eventfd).
    queue_events: &'a [(u16, EventFd)],
    layout: DeviceLayout,
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn Interrupt>,
    /// The config space as last published to the VMM.
    config: Vec<u8>,
    /// Counters of earlier activations (the backend's restart at each activation).
    earlier: DeviceStats,
}

impl Worker<'_> {
    /// Sends `msg`; `Some(PeerGone)` when the VMM is gone.
    fn send(&self, msg: &WorkerToVmm) -> Result<Option<WorkerExit>, WorkerError> {
        match self.control.send(msg, &[]) {
            Ok(()) => Ok(None),
            Err(ChannelError::PeerGone) => Ok(Some(WorkerExit::PeerGone)),
            Err(e) => Err(WorkerError::Control(e)),
        }
    }

    /// Receives and handles one control message; `Some(exit)` ends the worker.
    fn serve_one(
        &mut self,
        backend: &mut dyn VirtioBackend,
        runner: &mut QueueRunner<'_>,
    ) -> Result<Option<WorkerExit>, WorkerError> {
        let msg = match self.control.recv::<VmmToWorker>() {
            Ok((msg, fds)) if fds.is_empty() => msg,
            Ok((_, fds)) => {
                report(self.control, DeviceErrorKind::Internal);
                return Err(WorkerError::UnexpectedFds(fds.len()));
            }
            Err(ChannelError::PeerGone) => return Ok(Some(WorkerExit::PeerGone)),
            // Readiness without a packet (cannot happen on a blocking SEQPACKET socket).
            Err(ChannelError::WouldBlock) => return Ok(None),
            Err(e) => {
                report(self.control, DeviceErrorKind::Internal);
                return Err(WorkerError::Control(e));
            }
        };
        let valid = msg.validate(&self.layout).is_ok();
        let reply = match msg {
            VmmToWorker::Activate { .. } | VmmToWorker::Resume { .. } if !valid => {
                Some(WorkerToVmm::DeviceError {
                    reason: DeviceErrorKind::BadActivation,
                })
            }
            VmmToWorker::Activate {
                driver_features,
                queues,
            } => Some(self.activate(backend, runner, driver_features, &queues)),
            VmmToWorker::Resume {
                driver_features,
                queues,
            } => Some(self.resume(backend, runner, driver_features, &queues)),
            // The transport only forwards writes inside the config space; anything else is
            // ignored, as the backend would.
            VmmToWorker::WriteConfig { .. } if !valid => None,
            VmmToWorker::WriteConfig { offset, data } => {
                backend.write_config(offset, &data);
                let config = backend.config();
                (config != self.config).then(|| {
                    self.config.clone_from(&config);
                    WorkerToVmm::ConfigChanged { config }
                })
            }
            VmmToWorker::Reset => {
                self.earlier = add_stats(&self.earlier, &backend.stats());
                // The backend's own fds leave the loop first, then the queues come back and are
                // dropped: the next activation builds new ones.
                runner.reset_events();
                let _ = backend.reset();
                Some(WorkerToVmm::ResetDone)
            }
            VmmToWorker::GetStats => Some(WorkerToVmm::Stats(add_stats(
                &self.earlier,
                &backend.stats(),
            ))),
            VmmToWorker::Shutdown => return Ok(Some(WorkerExit::Shutdown)),
        };
        match reply {
            Some(reply) => self.send(&reply),
            None => Ok(None),
        }
    }

    /// Builds the queues, starts the backend and lets it add its own fds to the loop; the reply
    /// to send. A backend that cannot register its fds is reset again.
    fn activate(
        &self,
        backend: &mut dyn VirtioBackend,
        runner: &mut QueueRunner<'_>,
        driver_features: u64,
        configs: &[ipc::QueueConfig],
    ) -> WorkerToVmm {
        let queues = match queues::build(
            self.layout.num_queues,
            self.layout.max_queue_size,
            configs,
            &self.mem,
        ) {
            Ok(queues) => queues,
            Err(e) => return WorkerToVmm::DeviceError { reason: e.kind() },
        };
        self.start(backend, runner, driver_features, queues)
            .unwrap_or(WorkerToVmm::Activated)
    }

    /// [`activate`](Self::activate) for a worker started after its predecessor died: every
    /// queue resumes at its used index (`queues::resume`), and then, because the dead worker
    /// may have swallowed notifications (or left them suppressed) and published completions
    /// it never signalled, every ready queue is kicked through its own eventfd — the loop
    /// serves it next — and one used-buffer interrupt raised.
    fn resume(
        &self,
        backend: &mut dyn VirtioBackend,
        runner: &mut QueueRunner<'_>,
        driver_features: u64,
        configs: &[ipc::QueueConfig],
    ) -> WorkerToVmm {
        let (queues, pending) = match queues::resume(
            self.layout.num_queues,
            self.layout.max_queue_size,
            configs,
            &self.mem,
        ) {
            Ok(resumed) => resumed,
            Err(e) => return WorkerToVmm::DeviceError { reason: e.kind() },
        };
        if let Some(refused) = self.start(backend, runner, driver_features, queues) {
            return refused;
        }
        for (index, fd) in self.queue_events {
            if configs.iter().any(|c| c.index == *index) {
                // Only fails with the counter near overflow: a kick is pending then anyway.
                let _ = fd.write(1);
            }
        }
        self.interrupt.signal_used_queue();
        WorkerToVmm::Resumed { pending }
    }

    /// Starts the backend on `queues` and lets it add its own fds to the loop; `Some(error
    /// reply)` if that fails (a backend that cannot register its fds is reset again).
    fn start(
        &self,
        backend: &mut dyn VirtioBackend,
        runner: &mut QueueRunner<'_>,
        driver_features: u64,
        queues: Vec<devices::Queue>,
    ) -> Option<WorkerToVmm> {
        match backend.activate(
            driver_features,
            self.mem.clone(),
            queues,
            self.interrupt.clone(),
        ) {
            Ok(()) => {}
            Err(e) => {
                return Some(WorkerToVmm::DeviceError {
                    reason: (&e).into(),
                })
            }
        }
        match runner.activated(backend) {
            Ok(()) => None,
            Err(e) => {
                let _ = backend.reset();
                Some(WorkerToVmm::DeviceError {
                    reason: (&e).into(),
                })
            }
        }
    }
}
