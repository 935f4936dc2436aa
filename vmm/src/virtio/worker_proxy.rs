//! [`WorkerProxy`]: the [`DeviceProxy`] of a device served by `worker::run_device_confined` on the other
//! end of a control channel — in a sandboxed worker process or on a thread of svmm alike.
//!
//! The worker is untrusted (DESIGN.md: hostile once compromised), and the proxy is called from
//! vCPU threads, so:
//!
//! - **Deadlines.** Set-up waits at most [`Deadlines::ready`] for `Ready`; a request that needs a
//!   reply (`Activate`, `Reset`, `GetStats`) waits at most [`Deadlines::reply`], polling the
//!   socket. The VMM's end is non-blocking, so a send into a full socket fails instead of
//!   blocking. A silent worker makes the device broken; no vCPU ever waits longer.
//! - **Validation.** Every message is decoded with the `ipc` size limits and checked with
//!   `WorkerToVmm::validate` against the layout the worker declared in `Ready` (config no longer
//!   than declared, statistics for no more queues). Undecodable, invalid or out-of-order
//!   messages (a second `Ready`, an `Activated` nobody asked for, ...) break the device.
//! - **Rate cap.** More than [`MAX_UNSOLICITED_PER_SEC`] unsolicited messages in a second, or
//!   more than [`MAX_MESSAGES_PER_REPLY`] before a reply, is flooding: the device breaks.
//!
//! Breaking is final: the proxy shuts its socket down (a live worker then sees its peer gone and
//! exits; the monitor watching the socket wakes up), runs the terminate hook (for a sandboxed
//! worker: kill the process, see `crate::supervisor`) and reports [`DeviceProxy::is_broken`]
//! from then on, so the transport shows `DEVICE_NEEDS_RESET` and refuses re-initialisation.
//! Without a terminate hook (an in-process device) the proxy prints one line with the reason;
//! with one, the supervisor prints it when the worker's death confirms the kill, so every dead
//! worker makes exactly one line.
//!
//! A `SeccompViolation` report (the worker's SIGSYS handler, just before it dies) breaks the
//! device too: the proxy names the call ([`seccomp_profiles::syscall_name`]) and records it
//! ([`WorkerProxy::seccomp_violation`]) for the supervisor's line, and gives the worker a short
//! grace period ([`EXIT_GRACE`]) to die of its SIGSYS before the terminate hook kills it; so
//! does a worker that closed its socket (it is exiting).
//!
//! A `DeviceError` the worker sends while active (a guest fault in a queue) is not final: the
//! device shows `DEVICE_NEEDS_RESET` until the driver resets it, then works again.
//!
//! **Restarts** (`--on-worker-exit=restart`, see `crate::supervisor`). A proxy made
//! [restartable](WorkerProxy::set_restartable) keeps a broken device from showing
//! `DEVICE_NEEDS_RESET` while its supervisor starts a new worker: the device then only waits.
//! [`WorkerProxy::replace_worker`] takes the new worker's channel, checks that its `Ready`
//! declares the same device, and sends it the guest's config writes since the last reset (the
//! VMM keeps them; the dead worker is never asked for anything), and
//! [`WorkerProxy::resume`] restarts a running device's queues with the features and queues the
//! transport holds. If the supervisor gives up ([`WorkerProxy::worker_died`]) the device is
//! broken for good as above.
//!
//! Unsolicited messages (`ConfigChanged`, `DeviceError`, `SeccompViolation`) are handled by
//! [`WorkerProxy::service`], which the device's owner calls when the socket is readable (see
//! `device_setup`), and before every request.

use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use devices::irq_status::IrqStatus;
use devices::kind::Shape;
use ipc::{
    Channel, ChannelError, DeviceErrorKind, DeviceStats, Limits, QueueConfig, VmmToWorker,
    WorkerToVmm,
};

/// Most config writes kept for a new worker (one per offset and width is all a config space
/// of [`Limits::VIRTIO_MMIO`] can take; a driver writing more keeps only its latest).
const MAX_CONFIG_WRITES: usize = 4 * Limits::VIRTIO_MMIO.max_config_len;
use vmm_sys_util::eventfd::EventFd;

use super::{DeviceInfo, DeviceProxy, ProxyError, INT_CONFIG};
use crate::fd_wait::wait_readable;

#[cfg(test)]
mod tests;

/// Most unsolicited messages a worker may send in one second.
pub const MAX_UNSOLICITED_PER_SEC: u32 = 64;
/// Most messages read while waiting for one reply.
pub const MAX_MESSAGES_PER_REPLY: u32 = 16;
/// How long a worker that is ending by itself — it reported a seccomp violation, or closed its
/// control socket — may take to die before it is killed (so the report names the real cause).
pub const EXIT_GRACE: Duration = Duration::from_millis(200);

/// The terminate hook: called once, when the device breaks, with the reason and how long the
/// worker may take to end by itself before it must be killed (zero: kill now).
pub type Terminate = Box<dyn FnOnce(&str, Duration) + Send>;

/// How long the VMM waits for a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadlines {
    /// For `Ready` after the worker was started.
    pub ready: Duration,
    /// For the reply to one request.
    pub reply: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            ready: Duration::from_secs(5),
            reply: Duration::from_secs(1),
        }
    }
}

/// The VMM's end of one device worker.
pub struct WorkerProxy {
    /// Names the device in reports (`rng#0`).
    name: String,
    channel: Channel,
    info: DeviceInfo,
    /// Bounds for the worker's messages, from its `Ready`.
    limits: Limits,
    status: IrqStatus,
    irqfd: EventFd,
    /// The VMM's copies of the queue notification eventfds, indexed by queue.
    queue_events: Vec<EventFd>,
    deadlines: Deadlines,
    /// Activated and not reset since.
    active: bool,
    /// The device reported an error while active; cleared by a reset.
    failed: Option<DeviceErrorKind>,
    /// Why the device broke for good.
    broken: Option<String>,
    /// The owner must call the transport's `mark_needs_reset` (see [`Self::take_needs_reset`]).
    needs_reset: bool,
    /// Start of the current rate-cap window and the unsolicited messages in it.
    window: (Instant, u32),
    /// Run once when the device breaks (kills the worker process).
    terminate: Option<Terminate>,
    /// A terminate hook was set: its owner reports breakage, the proxy stays quiet.
    supervised: bool,
    /// The syscall number of the worker's `SeccompViolation` report, if it sent one.
    violation: Option<i64>,
    /// The supervisor restarts dead workers: a broken device only waits for the next one.
    restartable: bool,
    /// The guest's config writes since the last reset, for a new worker: (offset, bytes), the
    /// latest per offset and width, in the order written.
    config_writes: Vec<(u32, Vec<u8>)>,
    /// Workers that replaced a dead one.
    restarts: u32,
}

/// The requests that wait for a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Request {
    Activate,
    Resume,
    Reset,
    Stats,
}

impl Request {
    /// The name in error messages.
    fn name(self) -> &'static str {
        match self {
            Request::Activate => "activate",
            Request::Resume => "resume",
            Request::Reset => "reset",
            Request::Stats => "statistics",
        }
    }

    /// Whether `msg` answers this request.
    fn is_reply(self, msg: &WorkerToVmm) -> bool {
        matches!(
            (self, msg),
            (
                Request::Activate,
                WorkerToVmm::Activated | WorkerToVmm::DeviceError { .. }
            ) | (
                Request::Resume,
                WorkerToVmm::Resumed { .. } | WorkerToVmm::DeviceError { .. }
            ) | (Request::Reset, WorkerToVmm::ResetDone)
                | (Request::Stats, WorkerToVmm::Stats(_))
        )
    }
}

/// What a message turned out to be, for the request waiting on it.
enum Received {
    /// The reply the request waits for.
    Reply(WorkerToVmm),
    /// Something else, handled.
    Other,
}

impl WorkerProxy {
    /// Waits for the worker's `Ready` on `channel` and builds the proxy from it.
    ///
    /// `queue_events` are the VMM's copies of the device's queue eventfds; the worker must
    /// declare exactly that many queues. `status` and `irqfd` are the device's interrupt status
    /// page and irqfd (the VMM keeps them, so it can still signal a config change after the
    /// worker died). The `Ready` must describe a device of `shape` (from the kind's declaration
    /// and the config, never from the worker): its device type, queue count and maximum queue
    /// size, and no feature outside the kind's set. `channel` must be non-blocking already (the
    /// broker makes svmm's end of a worker's channel so, set-up an in-process device's): the
    /// main thread connects once it is confined, and its filter has no call to make it so.
    pub fn connect(
        name: impl Into<String>,
        channel: Channel,
        status: IrqStatus,
        irqfd: EventFd,
        queue_events: Vec<EventFd>,
        deadlines: Deadlines,
        shape: &Shape,
    ) -> Result<WorkerProxy, ProxyError> {
        let info = await_ready(&channel, deadlines.ready)?;
        if usize::from(info.num_queues) != queue_events.len() {
            return Err(ProxyError::BadReply { request: "start" });
        }
        check_shape(
            shape,
            info.device_type,
            info.num_queues,
            info.max_queue_size,
            info.device_features,
        )
        .map_err(ProxyError::WrongDevice)?;
        Ok(WorkerProxy {
            name: name.into(),
            channel,
            limits: Limits {
                max_config_len: info.config.len(),
                max_queues: info.num_queues,
            },
            info,
            status,
            irqfd,
            queue_events,
            deadlines,
            active: false,
            failed: None,
            broken: None,
            needs_reset: false,
            window: (Instant::now(), 0),
            terminate: None,
            supervised: false,
            violation: None,
            restartable: false,
            config_writes: Vec::new(),
            restarts: 0,
        })
    }

    /// Whether a dead worker is replaced (see the module docs): while it is, a broken device
    /// does not show `DEVICE_NEEDS_RESET`.
    pub fn set_restartable(&mut self, restartable: bool) {
        self.restartable = restartable;
    }

    /// How many workers replaced a dead one.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// A new worker replaces the dead one: waits (at most the `Ready` deadline) for its
    /// `Ready`, which must declare the same device (type, features, queues, config length),
    /// takes its channel, and sends it the guest's config writes since the last reset. The
    /// device is then live but not active (see [`Self::resume`]); its config is the new
    /// worker's (a changed one raises a configuration-change interrupt). On an error the
    /// device stays broken and the new worker is the caller's to end.
    pub fn replace_worker(&mut self, channel: Channel) -> Result<(), ProxyError> {
        let info = await_ready(&channel, self.deadlines.ready)?;
        let old = &self.info;
        // The layout the first worker declared (a dead worker may have sent shorter configs).
        let same = (
            info.device_type,
            info.device_features,
            info.num_queues,
            info.max_queue_size,
            info.config.len(),
        ) == (
            old.device_type,
            old.device_features,
            old.num_queues,
            old.max_queue_size,
            self.limits.max_config_len,
        );
        if !same {
            return Err(ProxyError::BadReply { request: "start" });
        }
        self.channel = channel;
        self.broken = None;
        self.failed = None;
        self.needs_reset = false;
        self.active = false;
        self.violation = None;
        self.window = (Instant::now(), 0);
        self.restarts = self.restarts.saturating_add(1);
        let changed = info.config != self.info.config;
        self.info.config = info.config;
        for (offset, data) in self.config_writes.clone() {
            self.send(&VmmToWorker::WriteConfig { offset, data })?;
        }
        if changed {
            self.info.config_generation = self.info.config_generation.wrapping_add(1);
            self.signal_config_change();
        }
        Ok(())
    }

    /// Starts a replaced worker's queues where the guest sees them (`VmmToWorker::Resume`)
    /// with the features and queues the transport holds: the chains the guest had made
    /// available and not got back (the new worker takes them again).
    pub fn resume(
        &mut self,
        driver_features: u64,
        queues: &[QueueConfig],
    ) -> Result<u32, ProxyError> {
        let msg = VmmToWorker::Resume {
            driver_features,
            queues: queues.to_vec(),
        };
        match self.request(&msg, Request::Resume)? {
            WorkerToVmm::Resumed { pending } => {
                self.active = true;
                Ok(pending)
            }
            WorkerToVmm::DeviceError { reason } => Err(ProxyError::Device(reason)),
            _ => Err(self.break_with(ProxyError::BadReply { request: "resume" })),
        }
    }

    /// Runs `terminate` once if the device breaks (the supervisor's kill of the worker
    /// process). From then on the proxy no longer prints why the device broke: the owner of
    /// the hook reports it (see the module docs).
    pub fn set_terminate(&mut self, terminate: impl FnOnce(&str, Duration) + Send + 'static) {
        self.terminate = Some(Box::new(terminate));
        self.supervised = true;
    }

    /// The system call number the worker reported in a `SeccompViolation`, if it did.
    pub fn seccomp_violation(&self) -> Option<i64> {
        self.violation
    }

    /// The worker process ended (seen by its supervisor) and is not replaced: the device is
    /// broken for good.
    pub fn worker_died(&mut self, reason: &str) {
        self.restartable = false;
        if self.broken.is_some() {
            // Broken while restartable: the reset it needs was held back until now.
            self.needs_reset = true;
        }
        self.break_device(reason, Duration::ZERO);
    }

    /// Why the device broke for good, if it did.
    pub fn broken_reason(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// Whether the transport's `mark_needs_reset` must be called (once: the flag is cleared).
    pub fn take_needs_reset(&mut self) -> bool {
        std::mem::take(&mut self.needs_reset)
    }

    /// Handles every message the worker sent on its own, without waiting. The owner calls this
    /// when the socket is readable, then [`Self::take_needs_reset`].
    pub fn service(&mut self) {
        for _ in 0..=MAX_UNSOLICITED_PER_SEC {
            if self.broken.is_some() {
                return;
            }
            match self.receive(None) {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return,
            }
        }
    }

    /// Asks the worker for its statistics.
    pub fn stats(&mut self) -> Result<DeviceStats, ProxyError> {
        match self.request(&VmmToWorker::GetStats, Request::Stats)? {
            WorkerToVmm::Stats(stats) => Ok(stats),
            _ => Err(self.break_with(ProxyError::BadReply {
                request: "statistics",
            })),
        }
    }

    /// Marks the device broken for good with `reason`; the worker gets `grace` to end by itself
    /// before the terminate hook kills it.
    fn break_device(&mut self, reason: &str, grace: Duration) {
        if self.broken.is_some() {
            return;
        }
        if !self.supervised {
            eprintln!(
                "svmm: {}: device worker {reason}; device marked as needing reset",
                self.name
            );
        }
        self.broken = Some(reason.to_string());
        // A restartable device waits for its next worker instead.
        self.needs_reset = !self.restartable;
        self.active = false;
        // SAFETY: shutdown(2) on the proxy's own open socket changes no memory; it makes the
        // worker's reads return end-of-file and wakes anyone polling the socket.
        unsafe { libc::shutdown(self.channel.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(terminate) = self.terminate.take() {
            terminate(reason, grace);
        }
    }

    /// Breaks the device because of `err`, returning `err` for the caller.
    fn break_with(&mut self, err: ProxyError) -> ProxyError {
        let reason = worker::report::one_line(&err);
        let grace = match err {
            ProxyError::Channel(ChannelError::PeerGone) => EXIT_GRACE,
            _ => Duration::ZERO,
        };
        self.break_device(&reason, grace);
        err
    }

    /// Sends `msg` and waits for its reply, handling unsolicited messages meanwhile.
    fn request(&mut self, msg: &VmmToWorker, kind: Request) -> Result<WorkerToVmm, ProxyError> {
        let request = kind.name();
        self.service();
        if self.broken.is_some() {
            return Err(ProxyError::Broken);
        }
        self.send(msg)?;
        let deadline = Instant::now() + self.deadlines.reply;
        for _ in 0..MAX_MESSAGES_PER_REPLY {
            let left = deadline.saturating_duration_since(Instant::now());
            if !wait_readable(self.channel.as_fd(), left).map_err(io_error)? {
                let timeout = self.deadlines.reply;
                return Err(self.break_with(ProxyError::Timeout { request, timeout }));
            }
            if let Some(Received::Reply(reply)) = self.receive(Some(kind))? {
                return Ok(reply);
            }
        }
        Err(self.break_with(ProxyError::BadReply { request }))
    }

    /// Sends without waiting; a full socket (a worker that does not read) breaks the device.
    fn send(&mut self, msg: &VmmToWorker) -> Result<(), ProxyError> {
        if self.broken.is_some() {
            return Err(ProxyError::Broken);
        }
        self.channel
            .send(msg, &[])
            .map_err(|e| self.break_with(ProxyError::Channel(e)))
    }

    /// Receives one message if one is waiting (`Ok(None)` if not), validates and handles it.
    /// While `waiting` for the reply to a request, the reply is returned instead.
    fn receive(&mut self, waiting: Option<Request>) -> Result<Option<Received>, ProxyError> {
        // No control buffer: an fd a worker attaches is discarded by the kernel, never
        // installed in svmm.
        let msg = match self.channel.recv_without_fds::<WorkerToVmm>() {
            Ok(msg) => msg,
            Err(ChannelError::FdsDiscarded) => {
                return Err(self.break_with(ProxyError::FdsAttached));
            }
            Err(ChannelError::WouldBlock) => return Ok(None),
            Err(e) => return Err(self.break_with(ProxyError::Channel(e))),
        };
        if msg.validate(&self.limits).is_err() {
            let request = waiting.map_or("nothing", Request::name);
            return Err(self.break_with(ProxyError::BadReply { request }));
        }
        if waiting.is_some_and(|request| request.is_reply(&msg)) {
            return Ok(Some(Received::Reply(msg)));
        }
        self.unsolicited(msg)?;
        Ok(Some(Received::Other))
    }

    /// Handles a message nobody asked for.
    fn unsolicited(&mut self, msg: WorkerToVmm) -> Result<(), ProxyError> {
        let now = Instant::now();
        if now.duration_since(self.window.0) >= Duration::from_secs(1) {
            self.window = (now, 0);
        }
        self.window.1 += 1;
        if self.window.1 > MAX_UNSOLICITED_PER_SEC {
            self.break_device("floods the control channel", Duration::ZERO);
            return Err(ProxyError::Broken);
        }
        match msg {
            WorkerToVmm::ConfigChanged { config } => {
                self.info.config = config;
                self.info.config_generation = self.info.config_generation.wrapping_add(1);
                self.signal_config_change();
            }
            WorkerToVmm::DeviceError { reason } => {
                eprintln!(
                    "svmm: {}: device stopped ({reason:?}); it needs a reset",
                    self.name
                );
                self.failed = Some(reason);
                self.needs_reset = true;
            }
            WorkerToVmm::SeccompViolation { syscall, arch } => {
                self.violation = Some(syscall);
                self.break_device(
                    &format!(
                        "reported a seccomp violation, syscall {}",
                        syscall_label(syscall, arch)
                    ),
                    EXIT_GRACE,
                );
                return Err(ProxyError::Broken);
            }
            WorkerToVmm::Ready { .. }
            | WorkerToVmm::Activated
            | WorkerToVmm::Resumed { .. }
            | WorkerToVmm::ResetDone
            | WorkerToVmm::Stats(_) => {
                self.break_device("sent an out-of-order message", Duration::ZERO);
                return Err(ProxyError::Broken);
            }
        }
        Ok(())
    }
}

/// Waits up to `deadline` for a new worker's `Ready` on `channel` (non-blocking) and returns the
/// device it declares.
fn await_ready(channel: &Channel, deadline: Duration) -> Result<DeviceInfo, ProxyError> {
    let bad = || ProxyError::BadReply { request: "start" };
    if !wait_readable(channel.as_fd(), deadline).map_err(io_error)? {
        return Err(ProxyError::Timeout {
            request: "start",
            timeout: deadline,
        });
    }
    let msg = match channel.recv_without_fds::<WorkerToVmm>() {
        Err(ChannelError::FdsDiscarded) => return Err(ProxyError::FdsAttached),
        other => other?,
    };
    msg.validate(&Limits::VIRTIO_MMIO).map_err(|_| bad())?;
    match msg {
        WorkerToVmm::Ready {
            device_type,
            device_features,
            num_queues,
            max_queue_size,
            config,
        } => Ok(DeviceInfo {
            device_type,
            device_features,
            num_queues,
            max_queue_size,
            config,
            config_generation: 0,
        }),
        WorkerToVmm::DeviceError { reason } => Err(ProxyError::Device(reason)),
        // Its filter forbids something set-up needs: name it (a profile to fix).
        WorkerToVmm::SeccompViolation { syscall, arch } => {
            Err(ProxyError::SeccompViolation(syscall_label(syscall, arch)))
        }
        _ => Err(bad()),
    }
}

/// A trapped system call as a worker reported it: its name, or its number and architecture.
fn syscall_label(syscall: i64, arch: u32) -> String {
    match seccomp_profiles::syscall_name(syscall) {
        Some(name) if arch == seccomp_profiles::sigsys::AUDIT_ARCH_X86_64 => name.to_string(),
        _ => format!("{syscall} (arch {arch:#x})"),
    }
}

/// A failed poll(2) on the socket, as a channel error.
fn io_error(source: std::io::Error) -> ProxyError {
    ProxyError::Channel(ChannelError::Io { op: "poll", source })
}

impl DeviceProxy for WorkerProxy {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn activate(&mut self, driver_features: u64, queues: &[QueueConfig]) -> Result<(), ProxyError> {
        let msg = VmmToWorker::Activate {
            driver_features,
            queues: queues.to_vec(),
        };
        match self.request(&msg, Request::Activate)? {
            WorkerToVmm::Activated => {
                self.active = true;
                Ok(())
            }
            WorkerToVmm::DeviceError { reason } => Err(ProxyError::Device(reason)),
            _ => Err(self.break_with(ProxyError::BadReply {
                request: "activate",
            })),
        }
    }

    fn write_config(&mut self, offset: u32, data: &[u8]) -> Result<(), ProxyError> {
        self.config_writes
            .retain(|(o, d)| (*o, d.len()) != (offset, data.len()));
        if self.config_writes.len() >= MAX_CONFIG_WRITES {
            self.config_writes.remove(0);
        }
        self.config_writes.push((offset, data.to_vec()));
        self.send(&VmmToWorker::WriteConfig {
            offset,
            data: data.to_vec(),
        })
    }

    fn reset(&mut self) -> Result<(), ProxyError> {
        if self.active {
            match self.request(&VmmToWorker::Reset, Request::Reset)? {
                WorkerToVmm::ResetDone => self.active = false,
                _ => return Err(self.break_with(ProxyError::BadReply { request: "reset" })),
            }
        }
        self.failed = None;
        self.config_writes.clear();
        self.status.clear();
        Ok(())
    }

    fn interrupt_status(&self) -> u32 {
        self.status.pending()
    }

    fn interrupt_ack(&mut self, bits: u32) {
        self.status.ack(bits);
    }

    fn is_broken(&self) -> bool {
        (self.broken.is_some() && !self.restartable) || self.failed.is_some()
    }

    fn notify(&mut self, queue: u16) -> Result<(), ProxyError> {
        if let Some(fd) = self.queue_events.get(usize::from(queue)) {
            fd.write(1).map_err(|source| {
                ProxyError::Channel(ChannelError::Io {
                    op: "write",
                    source,
                })
            })?;
        }
        Ok(())
    }

    fn signal_config_change(&mut self) {
        self.status.raise(INT_CONFIG);
        // Only fails with the counter near overflow, when an interrupt is pending anyway.
        let _ = self.irqfd.write(1);
    }
}

/// Whether a `Ready`'s device matches `shape`; what differs, in words, if not.
fn check_shape(
    shape: &Shape,
    device_type: u32,
    queues: u16,
    max_queue_size: u16,
    features: u64,
) -> Result<(), String> {
    let kind = shape.kind;
    if device_type != shape.device_type {
        return Err(format!(
            "device type {device_type}, a {kind} is {}",
            shape.device_type
        ));
    }
    if queues != shape.queues {
        return Err(format!("{queues} queues, this {kind} has {}", shape.queues));
    }
    if max_queue_size != shape.max_queue_size {
        return Err(format!(
            "queues of up to {max_queue_size} entries, a {kind} takes {}",
            shape.max_queue_size
        ));
    }
    let extra = features & !shape.features;
    if extra != 0 {
        return Err(format!("features {extra:#x}, which a {kind} never offers"));
    }
    Ok(())
}
