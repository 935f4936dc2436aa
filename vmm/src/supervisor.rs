//! Worker supervision: one monitor thread per device notices at once when its worker sends
//! something on its own, misbehaves or dies, and acts on it.
//!
//! ```text
//!   monitor thread (mon-rng#0) ── poll ──┬─ control socket readable → proxy.service()
//!                                         │    config change, device error: DEVICE_NEEDS_RESET
//!                                         │    garbage, flood, seccomp report: proxy breaks the
//!                                         │    device → terminate hook → Supervised::kill_for
//!                                         ├─ stderr pipe readable (sandboxed) → one cleaned,
//!                                         │    prefixed, rate-limited line per line
//!                                         │    (crate::worker_stderr)
//!                                         └─ broker report (sandboxed: the worker ended and
//!                                              the broker reaped it, with its status)
//!                                              read its last messages (SeccompViolation),
//!                                              ONE line: device, pid, cause, and then
//!                                              restart: a new worker with the device's state
//!                                                (restart.rs), or past --max-restarts:
//!                                              keep: device broken → DEVICE_NEEDS_RESET +
//!                                                config interrupt, VM runs on
//!                                              stop: the same, and the VM ends
//! ```
//!
//! The lines, for example:
//! `svmm: KIND#2 worker (pid 1234) killed by SIGKILL; restart 1 (pid 1240; 1 of at most 5 in
//! a minute): queues resumed, 3 pending requests taken again; serving again after 21.4 ms` and
//! `svmm: KIND#0 worker (pid 1234) killed by SIGSYS: seccomp violation, syscall openat; device
//! needs reset, VM keeps running` (`KIND#N`: the device's name, e.g. the kind's name and its
//! `--device` index). A worker svmm killed itself (it sent garbage, flooded, or
//! missed a deadline) is reported as `killed by svmm: <why>`.
//!
//! An in-process device has no process to watch: its monitor watches the socket only and the
//! proxy prints why the device broke.
//!
//! Lock order: a transport, then its [`Supervised`] worker — the terminate hook runs with the
//! transport locked.

mod restart;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use broker::ExitCause;
use ipc::{BrokerReply, ChannelError, WorkerStatus};

use crate::config::OnWorkerExit;
use crate::sandboxed::{Lease, WorkerProcess};
use crate::virtio::{lock, Transport};
use crate::vm_events::{VmEvent, VmEvents};
use crate::worker_stderr::StderrRelay;
use restart::NotRestarted;
pub use restart::Restarter;
use worker::report::line as say;

/// A device's sandboxed worker process — the current one: a restart replaces it —, shared by
/// its device, the proxy's terminate hook and the monitor. The broker is its parent: svmm
/// stops it through the device's [`Lease`] and learns how it ended from the broker's `Exited`
/// report, which the monitor reads.
pub struct Supervised {
    lease: Arc<Lease>,
    worker: Mutex<WorkerProcess>,
    pid: AtomicI32,
    /// Why svmm broke the device and ended the worker, if it did (see [`KilledFor`]).
    killed_for: Mutex<Option<KilledFor>>,
    /// The VM is ending: the worker's death is expected and not reported.
    ending: AtomicBool,
    /// The monitor has printed the worker's death (or will never have to).
    reported: (Mutex<bool>, Condvar),
}

impl Supervised {
    /// Takes charge of `worker`, started through `lease`.
    pub fn new(lease: Arc<Lease>, worker: WorkerProcess) -> Arc<Self> {
        Arc::new(Supervised {
            lease,
            pid: AtomicI32::new(worker.pid()),
            worker: Mutex::new(worker),
            killed_for: Mutex::new(None),
            ending: AtomicBool::new(false),
            reported: (Mutex::new(false), Condvar::new()),
        })
    }

    /// Marks the worker's death as reported (by the monitor, once its line is out).
    fn set_reported(&self) {
        let (done, changed) = &self.reported;
        *done.lock().unwrap_or_else(|e| e.into_inner()) = true;
        changed.notify_all();
    }

    /// At VM end, before the statistics: if svmm killed the worker and its monitor has not yet
    /// printed the death, waits up to `timeout` for that line, so a VM that ends right after a
    /// worker was killed still says why (a loaded host may run the monitor late).
    pub fn wait_reported(&self, timeout: Duration) {
        let killed = self
            .killed_for
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        if !killed {
            return;
        }
        let (done, changed) = &self.reported;
        let guard = done.lock().unwrap_or_else(|e| e.into_inner());
        let _ = changed.wait_timeout_while(guard, timeout, |reported| !*reported);
    }

    /// The worker's pid (in svmm's pid namespace).
    pub fn pid(&self) -> i32 {
        self.pid.load(Ordering::SeqCst)
    }

    /// A new worker takes the reaped one's place. False (and the broker is asked to kill
    /// `new`) when the VM is ending.
    pub fn replace(&self, new: WorkerProcess) -> bool {
        let mut worker = self.worker();
        if self.ending.load(Ordering::SeqCst) {
            drop(worker);
            let _ = self.lease.stop();
            return false;
        }
        self.pid.store(new.pid(), Ordering::SeqCst);
        *worker = new;
        *self.killed_for.lock().unwrap_or_else(|e| e.into_inner()) = None;
        *self.reported.0.lock().unwrap_or_else(|e| e.into_inner()) = false;
        true
    }

    fn worker(&self) -> MutexGuard<'_, WorkerProcess> {
        self.worker.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The terminate hook: has the worker killed for `reason`, unless it ends by itself
    /// within `grace` (a worker that reported its seccomp violation is about to die of
    /// SIGSYS). Runs on the thread that found the device broken — possibly the monitor itself
    /// — so it watches the worker's pidfd, not the broker's report.
    pub fn kill_for(&self, reason: &str, grace: Duration) {
        let worker = self.worker();
        // Already ended: nothing to kill. Within a grace the worker was expected to end by
        // itself, and its own status tells. With none, the proxy has just shut the worker's
        // socket down and a worker answers that end-of-file with a clean exit, possibly before
        // this look at its pidfd: that end is still svmm's doing, so the reason is kept (else
        // the report says "exited with status 0" for a worker svmm ended).
        let ended = crate::fd_wait::wait_readable(worker.pidfd(), grace).unwrap_or(false);
        if ended && !grace.is_zero() {
            return;
        }
        *self.killed_for.lock().unwrap_or_else(|e| e.into_inner()) = Some(KilledFor {
            reason: reason.to_string(),
            stop_sent: !ended,
        });
        if ended {
            return;
        }
        if let Err(e) = self.lease.stop() {
            eprintln!(
                "svmm: cannot ask the broker to kill {}'s worker (pid {}): {}",
                self.lease.name(),
                worker.pid(),
                worker::report::one_line(&e)
            );
        }
    }

    /// At VM end, first step: the worker's death is expected (not reported); have it killed.
    pub fn begin_end(&self) {
        self.ending.store(true, Ordering::SeqCst);
        let _ = self.lease.stop();
    }

    /// At VM end, second step: waits until `deadline` at most for the killed worker to be
    /// gone. A worker that has not died by then (stuck in uninterruptible I/O: `SIGKILL` takes
    /// effect only when the I/O ends) is reported in one line, and svmm ends without it.
    pub fn finish_end(&self, name: &str, deadline: Instant, waited: Duration) {
        let worker = self.worker();
        let left = deadline.saturating_duration_since(Instant::now());
        if !crate::fd_wait::wait_readable(worker.pidfd(), left).unwrap_or(false) {
            eprintln!(
                "svmm: {name} worker (pid {}) has not died {} s after SIGKILL (stuck in \
                 uninterruptible I/O?); svmm ends without it, the process is left to init",
                worker.pid(),
                waited.as_secs()
            );
        }
    }

    /// What ended the worker (`status`, from the broker), for the report line.
    fn cause(&self, status: WorkerStatus, syscall: Option<i64>) -> String {
        let killed_for = self
            .killed_for
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let exit = match status {
            WorkerStatus::Exited(code) => ExitCause::Exited(code),
            WorkerStatus::Killed(signal) => ExitCause::Killed {
                signal,
                core_dumped: false,
            },
        };
        let reason = killed_for.as_ref().and_then(|k| k.explains(&exit));
        describe_death(Ok(exit), syscall, reason)
    }
}

/// Why svmm ended a worker: the device broke for `reason` (the proxy shut the worker's socket
/// down), and svmm asked the broker to kill the worker if `stop_sent`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KilledFor {
    reason: String,
    stop_sent: bool,
}

impl KilledFor {
    /// The reason, if it explains `exit`: a SIGKILL only when svmm sent one (a worker that had
    /// died before svmm looked was killed by somebody else); any other end always, and
    /// [`describe_death`] decides what the status says.
    fn explains(&self, exit: &ExitCause) -> Option<&str> {
        let sigkill = matches!(exit, ExitCause::Killed { signal, .. } if *signal == libc::SIGKILL);
        (self.stop_sent || !sigkill).then_some(self.reason.as_str())
    }
}

/// The cause part of the line: a seccomp kill names the reported call; a SIGKILL that svmm sent
/// says why; anything else is the bare exit status or signal.
fn describe_death(
    exit: Result<ExitCause, broker::WorkerError>,
    syscall: Option<i64>,
    killed_for: Option<&str>,
) -> String {
    match (exit, killed_for) {
        (Ok(cause), _) if cause.is_seccomp_violation() => match syscall {
            Some(nr) => {
                let name = seccomp_profiles::syscall_name(nr)
                    .map_or_else(|| format!("number {nr}"), str::to_string);
                format!("killed by SIGSYS: seccomp violation, syscall {name}")
            }
            None => "killed by SIGSYS (seccomp)".to_string(),
        },
        (Ok(ExitCause::Killed { signal, .. }), Some(reason)) if signal == libc::SIGKILL => {
            format!("killed by svmm: {reason}")
        }
        // svmm shut the worker's socket down and killed it; it saw its peer go first and
        // exited cleanly (status 0 is a worker's answer to a VMM that went away): ended by svmm.
        (Ok(ExitCause::Exited(0)), Some(reason)) => format!("killed by svmm: {reason}"),
        (Ok(cause), _) => cause.to_string(),
        (Err(e), _) => format!("ended, cause unknown ({})", worker::report::one_line(&e)),
    }
}

/// The monitor thread of a device could not be started.
#[derive(Debug, thiserror::Error)]
#[error("cannot {what}")]
pub struct MonitorError {
    /// What failed.
    pub what: &'static str,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

/// What a device's monitor thread is handed once the device's worker is `Ready`
/// ([`MonitorHandoff::hand`]).
struct Handoff {
    transport: Transport,
    supervised: Option<Arc<Supervised>>,
    restarter: Option<Restarter>,
    /// Its own fd of the worker's control socket, only for polling (the proxy keeps, and may
    /// shut down, its own).
    socket: OwnedFd,
    /// A sandboxed worker's stderr pipe.
    stderr: Option<OwnedFd>,
}

/// svmm's side of a device's monitor thread that waits for its device
/// ([`spawn_monitor`]); dropping it without [`MonitorHandoff::hand`] ends the thread.
pub struct MonitorHandoff {
    handoff: mpsc::SyncSender<Handoff>,
}

impl MonitorHandoff {
    /// Hands the monitor its device: `transport`, its worker process `supervised`
    /// (sandboxed) or none (in-process), watched through `socket` (a second fd of the control
    /// socket) and `stderr` (a sandboxed worker's pipe) and its lease's broker reports; with
    /// `restarter`, a dead worker is replaced (`--on-worker-exit=restart`). Returns at once.
    pub fn hand(
        self,
        transport: &Transport,
        supervised: Option<Arc<Supervised>>,
        restarter: Option<Restarter>,
        socket: OwnedFd,
        stderr: Option<OwnedFd>,
        policy: OnWorkerExit,
    ) {
        let restarter =
            restarter.filter(|_| policy == OnWorkerExit::Restart && supervised.is_some());
        if restarter.is_some() {
            lock(transport).proxy_mut().set_restartable(true);
        }
        // The thread is gone only if it could not confine itself: it said so, and marks no
        // device (it never had one); the VM's end still stops the worker.
        let _ = self.handoff.send(Handoff {
            transport: transport.clone(),
            supervised,
            restarter,
            socket,
            stderr,
        });
    }
}

/// Starts the monitor thread of device `name` (`mon-NAME`), before the vCPUs run (svmm's
/// filter has no call that starts a thread): it confines itself, then waits for its device
/// ([`MonitorHandoff::hand`]), and watches it from then on. It ends once the device is broken
/// for good and, for a process, the broker has reported it dead.
pub fn spawn_monitor(
    name: &str,
    policy: OnWorkerExit,
    control: &VmEvents,
) -> Result<MonitorHandoff, MonitorError> {
    let (handoff, device) = mpsc::sync_channel::<Handoff>(1);
    let name = name.to_string();
    let control = control.clone();
    thread::Builder::new()
        .name(format!("mon-{name}"))
        .spawn(move || {
            // Like every runtime thread of svmm: the `vmm` profile before it reads a
            // worker's byte.
            let confined = crate::self_confine::enter(crate::self_confine::ThreadRole::Monitor);
            let Ok(handoff) = device.recv() else {
                return; // The device never started: the VM is ending.
            };
            let mut monitor = Monitor {
                name,
                transport: handoff.transport,
                supervised: handoff.supervised,
                policy,
                restarter: handoff.restarter,
                control,
            };
            if let Err(e) = confined {
                eprintln!("svmm: {}: {e}; the device is stopped", monitor.name);
                lock(&monitor.transport).mark_needs_reset();
                return;
            }
            monitor.run(handoff.socket, handoff.stderr)
        })
        .map_err(|e| MonitorError {
            what: "start its monitor thread",
            source: e,
        })?;
    Ok(MonitorHandoff { handoff })
}

/// What a monitor thread holds.
struct Monitor {
    name: String,
    transport: Transport,
    supervised: Option<Arc<Supervised>>,
    policy: OnWorkerExit,
    /// With `--on-worker-exit=restart`, for a sandboxed device.
    restarter: Option<Restarter>,
    control: VmEvents,
}

/// A worker's stderr pipe and what turns it into svmm's lines.
struct Stderr {
    fd: OwnedFd,
    relay: StderrRelay,
}

impl Stderr {
    fn new(fd: OwnedFd, name: &str) -> Self {
        Stderr {
            fd,
            relay: StderrRelay::new(name),
        }
    }

    /// Reads what is there (one read); false at the end of the pipe.
    fn pump(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        // SAFETY: reads into a live buffer of the length passed, from the pipe this owns.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        match usize::try_from(n) {
            Ok(0) => {
                self.relay.finish(&mut std::io::stderr());
                false
            }
            Ok(n) => {
                self.relay.feed(&buf[..n], &mut std::io::stderr());
                true
            }
            Err(_) => std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted,
        }
    }

    /// Passes on everything left in the pipe of a worker that has ended.
    fn drain(&mut self) {
        while crate::fd_wait::wait_readable(self.fd.as_fd(), Duration::ZERO).unwrap_or(false) {
            if !self.pump() {
                return;
            }
        }
        self.relay.finish(&mut std::io::stderr());
    }
}

impl Monitor {
    fn run(&mut self, mut socket: OwnedFd, stderr: Option<OwnedFd>) {
        let mut stderr = stderr.map(|fd| Stderr::new(fd, &self.name));
        let lease = self.supervised.as_ref().map(|s| s.lease.clone());
        let mut watch_socket = true;
        loop {
            let socket_fd = watch_socket.then(|| socket.as_fd());
            let ready = match poll_three([
                socket_fd,
                lease.as_ref().map(|l| l.channel()),
                stderr.as_ref().map(|s| s.fd.as_fd()),
            ]) {
                Ok(ready) => ready,
                Err(e) => {
                    eprintln!("svmm: {}: cannot watch the device worker: {e}", self.name);
                    return;
                }
            };
            if ready[2] && stderr.as_mut().is_some_and(|s| !s.pump()) {
                stderr = None;
            }
            if ready[1] {
                if let Some(status) = self.broker_report(lease.as_deref()) {
                    if let Some(s) = stderr.as_mut() {
                        s.drain();
                    }
                    match self.worker_ended(status) {
                        Some(restarted) => {
                            // The new worker: its socket and stderr from now on.
                            socket = restarted.watch.socket;
                            stderr = Some(Stderr::new(restarted.watch.stderr, &self.name));
                            watch_socket = true;
                            continue;
                        }
                        None => return,
                    }
                }
            }
            if ready[0] && self.service() {
                // Broken for good. A process was killed by the terminate hook: wait for the
                // broker's report of its death (the socket, shut down, would only wake us
                // again). A thread: done.
                if self.supervised.is_none() {
                    return;
                }
                watch_socket = false;
            }
        }
    }

    /// Reads the broker's report; how the worker ended, once it has. A broker that is gone
    /// (it died, so its workers died with it) counts as the worker killed.
    fn broker_report(&self, lease: Option<&Lease>) -> Option<WorkerStatus> {
        let supervised = self.supervised.as_ref()?;
        match lease?.next_report() {
            Ok(BrokerReply::Exited { pid, status, .. }) if pid == supervised.pid() => Some(status),
            Ok(BrokerReply::Refused { reason, .. }) => {
                eprintln!("svmm: {}: the broker refused: {reason}", self.name);
                None
            }
            // Its Exited follows.
            Ok(BrokerReply::Failed { reason, .. }) => {
                eprintln!("svmm: {}: its worker did not start: {reason}", self.name);
                None
            }
            Ok(other) => {
                eprintln!("svmm: {}: unexpected broker report {other:?}", self.name);
                None
            }
            Err(ChannelError::WouldBlock) => None,
            Err(e) => {
                // At VM end svmm hangs up on the broker, which kills what is left and exits
                // without waiting to report deaths it caused (a worker with much memory to
                // free, such as huge-page guest RAM, can still be dying then): expected.
                if !supervised.ending.load(Ordering::SeqCst) {
                    eprintln!(
                        "svmm: {}: the broker is gone ({})",
                        self.name,
                        worker::report::one_line(&e)
                    );
                }
                Some(WorkerStatus::Killed(libc::SIGKILL))
            }
        }
    }

    /// Handles the worker's messages; true when the device is broken for good.
    fn service(&self) -> bool {
        let mut transport = lock(&self.transport);
        transport.proxy_mut().service();
        if transport.proxy_mut().take_needs_reset() {
            transport.mark_needs_reset();
        }
        let Some(reason) = transport.proxy().broken_reason().map(str::to_string) else {
            return false;
        };
        drop(transport);
        if self.supervised.is_none() && self.policy == OnWorkerExit::Stop {
            let event = VmEvent::DeviceFailed(format!("{}: {reason}", self.name));
            self.control.request(event);
        }
        true
    }

    /// The worker process ended (`status`, from the broker): report, and restart it or break
    /// the device, as the policy says. Returns what to watch when a new worker took its place.
    fn worker_ended(&mut self, status: WorkerStatus) -> Option<restart::Restarted> {
        let supervised = self.supervised.clone()?;
        let noticed = Instant::now();
        let mut transport = lock(&self.transport);
        // What it sent just before it died: its SIGSYS handler's SeccompViolation report.
        transport.proxy_mut().service();
        let syscall = transport.proxy().seccomp_violation();
        if supervised.ending.load(Ordering::SeqCst) {
            supervised.set_reported();
            return None;
        }
        let cause = supervised.cause(status, syscall);
        let pid = supervised.pid();
        let what = format!("{} worker (pid {pid}) {cause}", self.name);
        let gave_up = match self.restarter.as_mut() {
            Some(restarter) => match restarter.restart(&mut transport, &supervised, noticed) {
                Ok(restarted) => {
                    drop(transport);
                    say(&format!("svmm: {what}; {}", restarted.line));
                    supervised.set_reported();
                    return Some(restarted);
                }
                // The VM began to end while the new worker was being started (and was
                // killed with it): not a failure of the device.
                Err(NotRestarted::GaveUp(_)) if supervised.ending.load(Ordering::SeqCst) => {
                    drop(transport);
                    say(&format!("svmm: {what}; not restarted: the VM is ending"));
                    supervised.set_reported();
                    return None;
                }
                Err(NotRestarted::Ending) => {
                    drop(transport);
                    say(&format!("svmm: {what}; not restarted: the VM is ending"));
                    supervised.set_reported();
                    return None;
                }
                Err(NotRestarted::GaveUp(why)) => Some(why),
            },
            None => None,
        };
        transport.proxy_mut().worker_died(&cause);
        if transport.proxy_mut().take_needs_reset() {
            transport.mark_needs_reset();
        }
        drop(transport);
        let why = gave_up.map_or_else(String::new, |why| format!("; {why}"));
        match self.policy {
            OnWorkerExit::Restart | OnWorkerExit::Keep => {
                say(&format!(
                    "svmm: {what}{why}; device needs reset, VM keeps running"
                ));
            }
            OnWorkerExit::Stop => {
                say(&format!("svmm: {what}; device needs reset"));
                self.control.request(VmEvent::DeviceFailed(what));
            }
        }
        supervised.set_reported();
        None
    }
}

/// Waits (without a deadline: this is a monitor thread, not a vCPU) until one of `fds` is
/// readable (or hung up); absent ones are skipped. Returns which are.
fn poll_three(fds: [Option<BorrowedFd<'_>>; 3]) -> std::io::Result<[bool; 3]> {
    let entry = |fd: &Option<BorrowedFd<'_>>| libc::pollfd {
        // A negative fd is ignored by poll(2).
        fd: fd.as_ref().map_or(-1, |fd| fd.as_raw_fd()),
        events: libc::POLLIN,
        revents: 0,
    };
    let mut pfds = [entry(&fds[0]), entry(&fds[1]), entry(&fds[2])];
    loop {
        // SAFETY: `pfds` is a live array of three pollfds whose fds are open (borrowed for
        // this call) or -1; poll only writes their `revents`.
        let rc = unsafe { libc::poll(pfds.as_mut_ptr(), 3, -1) };
        if rc >= 0 {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    Ok(pfds.map(|p| p.fd >= 0 && p.revents != 0))
}

#[cfg(test)]
mod tests;
