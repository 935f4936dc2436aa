//! Worker supervision: one monitor thread per device notices at once when its worker sends
//! something on its own, misbehaves or dies, and acts on it.
//!
//! ```text
//!   monitor thread (mon-rng#0) ── poll ──┬─ control socket readable → proxy.service()
//!                                         │    config change, device error: DEVICE_NEEDS_RESET
//!                                         │    garbage, flood, seccomp report: proxy breaks the
//!                                         │    device → terminate hook → Supervised::kill_for
//!                                         └─ pidfd readable (sandboxed: the worker ended)
//!                                              read its last messages (SeccompViolation), reap it,
//!                                              ONE line: device, pid, cause, and then
//!                                              restart: a new worker with the device's state
//!                                                (restart.rs), or past --max-restarts:
//!                                              keep: device broken → DEVICE_NEEDS_RESET +
//!                                                config interrupt, VM runs on
//!                                              stop: the same, and the VM ends
//! ```
//!
//! The lines, for example:
//! `svmm: blk#0 worker (pid 1234) killed by SIGKILL; restart 1 (pid 1240; 1 of at most 5 in a
//! minute): queues resumed, 3 pending requests taken again; serving again after 21.4 ms` and
//! `svmm: rng#0 worker (pid 1234) killed by SIGSYS: seccomp violation, syscall openat; device
//! needs reset, VM keeps running`. A worker svmm killed itself (it sent garbage, flooded, or
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
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use broker::ExitCause;

use crate::config::OnWorkerExit;
use crate::sandboxed::Watch;
use crate::virtio::{lock, Transport};
use crate::vm_events::{VmEvent, VmEvents};
use restart::NotRestarted;
pub use restart::Restarter;
use worker::report::line as say;

/// A device's sandboxed worker process — the current one: a restart replaces it —, shared by
/// its device, the proxy's terminate hook and the monitor.
pub struct Supervised {
    worker: Mutex<broker::Worker>,
    pid: AtomicI32,
    /// Why svmm killed the worker, if it did while the worker still ran.
    killed_for: Mutex<Option<String>>,
    /// The VM is ending: the worker's death is expected and not reported.
    ending: AtomicBool,
    /// The monitor has printed the worker's death (or will never have to).
    reported: (Mutex<bool>, Condvar),
}

impl Supervised {
    /// Takes charge of `worker`.
    pub fn new(worker: broker::Worker) -> Arc<Self> {
        Arc::new(Supervised {
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

    /// A new worker takes the reaped one's place. False (and `new` is killed and reaped) when
    /// the VM is ending.
    pub fn replace(&self, new: broker::Worker) -> bool {
        let mut worker = self.worker();
        if self.ending.load(Ordering::SeqCst) {
            drop(worker);
            drop(new); // Killed and reaped.
            return false;
        }
        self.pid.store(new.pid(), Ordering::SeqCst);
        *worker = new;
        *self.killed_for.lock().unwrap_or_else(|e| e.into_inner()) = None;
        *self.reported.0.lock().unwrap_or_else(|e| e.into_inner()) = false;
        true
    }

    fn worker(&self) -> MutexGuard<'_, broker::Worker> {
        self.worker.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The terminate hook: kills the worker for `reason`, unless it ends by itself within
    /// `grace` (a worker that reported its seccomp violation is about to die of SIGSYS).
    pub fn kill_for(&self, reason: &str, grace: Duration) {
        let mut worker = self.worker();
        if !grace.is_zero() {
            // A timeout or a poll failure both fall through to the kill below.
            let _ = crate::fd_wait::wait_readable(worker.pidfd(), grace);
        }
        if !matches!(worker.try_wait(), Ok(None)) {
            return; // Already ended (or cannot be waited for): nothing to kill.
        }
        *self.killed_for.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.to_string());
        if let Err(e) = worker.kill() {
            eprintln!(
                "svmm: cannot kill worker (pid {}): {}",
                worker.pid(),
                worker::report::one_line(&e)
            );
        }
    }

    /// At VM end, first step: the worker's death is expected (not reported); kill it.
    pub fn begin_end(&self) {
        self.ending.store(true, Ordering::SeqCst);
        let _ = self.worker().kill();
    }

    /// At VM end, second step: reaps the killed worker, waiting until `deadline` at most. A
    /// worker that has not died by then (stuck in uninterruptible I/O: `SIGKILL` takes effect
    /// only when the I/O ends) is reported in one line and abandoned, so svmm still ends.
    pub fn finish_end(&self, name: &str, deadline: Instant, waited: Duration) {
        let mut worker = self.worker();
        match worker.wait_until(deadline) {
            Ok(Some(_)) => {}
            Ok(None) => {
                eprintln!(
                    "svmm: {name} worker (pid {}) has not died {} s after SIGKILL (stuck in \
                     uninterruptible I/O?); svmm ends without it, the process is left to \
                     init",
                    worker.pid(),
                    waited.as_secs()
                );
                worker.abandon();
            }
            Err(e) => eprintln!(
                "svmm: {name} worker (pid {}): {}",
                worker.pid(),
                worker::report::one_line(&e)
            ),
        }
    }

    /// Reaps the ended worker: how it ended.
    fn reap(&self) -> Result<ExitCause, broker::WorkerError> {
        self.worker().wait()
    }

    /// What ended the worker, for the report line.
    fn cause(&self, exit: Result<ExitCause, broker::WorkerError>, syscall: Option<i64>) -> String {
        let killed_for = self
            .killed_for
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        describe_death(exit, syscall, killed_for.as_deref())
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

/// Starts the monitor thread of device `name`: its worker process is `supervised` (sandboxed)
/// or none (in-process), watched through `watch` (its start's duplicates of the control
/// socket and pidfd; without it, duplicates are made here); with `restarter`, a dead worker is
/// replaced (`--on-worker-exit=restart`). It ends once the device is broken for good and, for a
/// process, the process is reaped.
pub fn spawn_monitor(
    name: &str,
    transport: &Transport,
    supervised: Option<Arc<Supervised>>,
    policy: OnWorkerExit,
    restarter: Option<Restarter>,
    watch: Option<Watch>,
    control: &VmEvents,
) -> Result<(), MonitorError> {
    let host = |what, source| MonitorError { what, source };
    // Its own copies of the socket (only for polling: the proxy keeps, and may shut down, its
    // own) and of the pidfd: for a sandboxed worker from its start (`Sandbox::start`).
    let (socket, pidfd): (OwnedFd, Option<OwnedFd>) = match watch {
        Some(Watch { socket, pidfd }) => (socket, Some(pidfd)),
        None => {
            let socket = lock(transport)
                .proxy()
                .socket()
                .try_clone_to_owned()
                .map_err(|e| host("duplicate its control socket", e))?;
            let pidfd = match &supervised {
                Some(s) => Some(
                    s.worker()
                        .pidfd()
                        .try_clone_to_owned()
                        .map_err(|e| host("duplicate its worker's pidfd", e))?,
                ),
                None => None,
            };
            (socket, pidfd)
        }
    };
    let restarter = restarter.filter(|_| policy == OnWorkerExit::Restart && supervised.is_some());
    if restarter.is_some() {
        lock(transport).proxy_mut().set_restartable(true);
    }
    let mut monitor = Monitor {
        name: name.to_string(),
        transport: transport.clone(),
        supervised,
        policy,
        restarter,
        control: control.clone(),
    };
    thread::Builder::new()
        .name(format!("mon-{name}"))
        .spawn(move || monitor.run(socket, pidfd))
        .map_err(|e| host("start its monitor thread", e))?;
    Ok(())
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

impl Monitor {
    fn run(&mut self, mut socket: OwnedFd, mut pidfd: Option<OwnedFd>) {
        // Like every runtime thread of svmm: the `vmm` profile before it reads a worker's byte.
        if let Err(e) = crate::self_confine::enter(crate::self_confine::ThreadRole::Monitor) {
            eprintln!("svmm: {}: {e}; the device is stopped", self.name);
            self.transport
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .mark_needs_reset();
            return;
        }
        let mut watch_socket = true;
        loop {
            let socket_fd = watch_socket.then(|| socket.as_fd());
            let (socket_ready, ended) = match poll_two(socket_fd, pidfd.as_ref().map(AsFd::as_fd)) {
                Ok(ready) => ready,
                Err(e) => {
                    eprintln!("svmm: {}: cannot watch the device worker: {e}", self.name);
                    return;
                }
            };
            if ended {
                match self.worker_ended() {
                    Some(restarted) => {
                        // The new worker: its socket and pidfd from now on.
                        socket = restarted.watch.socket;
                        pidfd = Some(restarted.watch.pidfd);
                        watch_socket = true;
                        continue;
                    }
                    None => return,
                }
            }
            if socket_ready && self.service() {
                // Broken for good. A process was killed by the terminate hook: wait for its
                // death (the socket, shut down, would only wake us again). A thread: done.
                if self.supervised.is_none() {
                    return;
                }
                watch_socket = false;
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

    /// The worker process ended: reap, report, and restart it or break the device, as the
    /// policy says. Returns what to watch when a new worker took its place.
    fn worker_ended(&mut self) -> Option<restart::Restarted> {
        let supervised = self.supervised.clone()?;
        let noticed = Instant::now();
        let mut transport = lock(&self.transport);
        // What it sent just before it died: its SIGSYS handler's SeccompViolation report.
        transport.proxy_mut().service();
        let syscall = transport.proxy().seccomp_violation();
        let exit = supervised.reap();
        if supervised.ending.load(Ordering::SeqCst) {
            supervised.set_reported();
            return None;
        }
        let cause = supervised.cause(exit, syscall);
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

/// Waits (without a deadline: this is a monitor thread, not a vCPU) until `socket` is readable
/// or `pidfd` says the process ended; either may be absent. Returns (socket readable, ended).
fn poll_two(
    socket: Option<BorrowedFd<'_>>,
    pidfd: Option<BorrowedFd<'_>>,
) -> std::io::Result<(bool, bool)> {
    let entry = |fd: Option<BorrowedFd<'_>>| libc::pollfd {
        // A negative fd is ignored by poll(2).
        fd: fd.map_or(-1, |fd| fd.as_raw_fd()),
        events: libc::POLLIN,
        revents: 0,
    };
    let mut fds = [entry(socket), entry(pidfd)];
    loop {
        // SAFETY: `fds` is a live array of two pollfds whose fds are open (borrowed for this
        // call) or -1; poll only writes their `revents`.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc >= 0 {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    let ready = |p: &libc::pollfd| p.fd >= 0 && p.revents != 0;
    Ok((ready(&fds[0]), ready(&fds[1])))
}

#[cfg(test)]
mod tests;
