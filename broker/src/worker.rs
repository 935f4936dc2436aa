//! A spawned worker as the VMM sees it: its host pid, a pidfd to supervise it through, and how
//! it ended.
//!
//! Everything goes through the pidfd (`pidfd_send_signal`, `waitid(P_PIDFD)`), so a recycled
//! pid can never make us signal or reap the wrong process. A [`Worker`] is always reaped: its
//! `Drop` kills the process (if it still runs) and waits for it.
//!
//! Reaping works from any thread of the VMM (the kernel lets every thread of a thread group wait
//! for the children of any of them), but it needs the default `SIGCHLD` disposition: a VMM that
//! sets `SIGCHLD` to `SIG_IGN` makes the kernel reap workers itself and `wait` then fails.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// Why a worker could not be signalled or waited for.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// `pidfd_send_signal` failed.
    #[error("cannot signal worker {pid}")]
    Signal {
        /// Host pid of the worker.
        pid: i32,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// `waitid(P_PIDFD)` failed.
    #[error("cannot wait for worker {pid}")]
    Wait {
        /// Host pid of the worker.
        pid: i32,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// `waitid` reported a state change that is not an exit (should not happen with `WEXITED`).
    #[error("worker {pid}: unexpected wait status code {code}")]
    UnexpectedStatus {
        /// Host pid of the worker.
        pid: i32,
        /// `si_code` as returned.
        code: i32,
    },
}

/// How a worker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCause {
    /// It called `exit` with this status.
    Exited(i32),
    /// It was killed by this signal. `SIGSYS` means its seccomp filter killed it.
    Killed {
        /// The signal number.
        signal: i32,
        /// The kernel reported a core dump (never expected: workers have `RLIMIT_CORE` 0).
        core_dumped: bool,
    },
}

impl ExitCause {
    /// True when the worker died of `SIGSYS`, i.e. a seccomp violation (kill-process action, or
    /// the trap handler re-raising the signal).
    pub fn is_seccomp_violation(&self) -> bool {
        matches!(self, ExitCause::Killed { signal, .. } if *signal == libc::SIGSYS)
    }
}

impl fmt::Display for ExitCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitCause::Exited(code) => write!(f, "exited with status {code}"),
            ExitCause::Killed { signal, .. } => {
                write!(f, "killed by {}", signal_name(signal))?;
                if signal == libc::SIGSYS {
                    write!(f, " (seccomp violation)")?;
                }
                Ok(())
            }
        }
    }
}

/// The usual name of a signal, or `signal N`.
fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return format!("signal {signal}"),
    };
    name.to_string()
}

/// A live (or exited, not yet dropped) worker process, child of the VMM.
#[derive(Debug)]
pub struct Worker {
    pid: i32,
    pidfd: OwnedFd,
    exit: Option<ExitCause>,
    /// [`Worker::abandon`]ed: not killed or waited for on drop.
    abandoned: bool,
}

impl Worker {
    /// Takes ownership of a freshly cloned child: a worker from `spawn`, or a device's helper
    /// process (`resources::helper`), which is supervised the same way.
    pub(crate) fn new(pid: i32, pidfd: OwnedFd) -> Self {
        Worker {
            pid,
            pidfd,
            exit: None,
            abandoned: false,
        }
    }

    /// The worker's pid in the VMM's pid namespace (inside its own namespace it is 1).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The pidfd: becomes readable when the worker exits (register it in the event loop).
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// How the worker ended, if it was already reaped.
    pub fn exit_cause(&self) -> Option<ExitCause> {
        self.exit
    }

    /// Sends `SIGKILL`. Killing a worker that already exited is not an error.
    pub fn kill(&self) -> Result<(), WorkerError> {
        if self.exit.is_some() {
            return Ok(());
        }
        // SAFETY: pidfd_send_signal takes an fd we own, a signal number, a null siginfo (the
        // kernel then fills in a SI_USER one) and no flags; it reads no memory of ours.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        // ESRCH: it has already exited (a zombie waiting for us): nothing to kill.
        if err.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        Err(WorkerError::Signal {
            pid: self.pid,
            source: err,
        })
    }

    /// Reaps the worker if it has exited; `None` while it still runs.
    pub fn try_wait(&mut self) -> Result<Option<ExitCause>, WorkerError> {
        self.wait_with(libc::WNOHANG)
    }

    /// Waits until `deadline` for the worker to exit and reaps it; `None` if it still runs
    /// then (a process stuck in uninterruptible I/O does not die of `SIGKILL` until the I/O
    /// ends).
    pub fn wait_until(
        &mut self,
        deadline: std::time::Instant,
    ) -> Result<Option<ExitCause>, WorkerError> {
        loop {
            if let Some(cause) = self.try_wait()? {
                return Ok(Some(cause));
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
            let mut pfd = libc::pollfd {
                fd: self.pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one live pollfd over our own pidfd; poll only writes `revents`.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                return Err(WorkerError::Wait {
                    pid: self.pid,
                    source: io::Error::last_os_error(),
                });
            }
        }
    }

    /// Gives up on reaping the worker (it would not die in time): dropping the handle then
    /// neither kills nor waits for it. Its pidfd is closed; the process is left to whoever
    /// inherits it when this process ends.
    pub fn abandon(&mut self) {
        self.abandoned = true;
    }

    /// Blocks until the worker exits, then reaps it.
    pub fn wait(&mut self) -> Result<ExitCause, WorkerError> {
        loop {
            if let Some(cause) = self.wait_with(0)? {
                return Ok(cause);
            }
        }
    }

    /// One `waitid(P_PIDFD, WEXITED | extra)`, retried on `EINTR`.
    fn wait_with(&mut self, extra: libc::c_int) -> Result<Option<ExitCause>, WorkerError> {
        if let Some(cause) = self.exit {
            return Ok(Some(cause));
        }
        // SAFETY: siginfo_t is a plain C struct for which all-zero bytes are a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        loop {
            // SAFETY: `info` is a live, writable siginfo_t; the pidfd is ours and open.
            let rc = unsafe {
                libc::waitid(
                    libc::P_PIDFD,
                    self.pidfd.as_raw_fd() as libc::id_t,
                    &mut info,
                    libc::WEXITED | extra,
                )
            };
            if rc == 0 {
                break;
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(WorkerError::Wait {
                    pid: self.pid,
                    source: err,
                });
            }
        }
        // SAFETY: waitid succeeded, so the kernel filled `info` as a SIGCHLD siginfo (or left
        // it zeroed under WNOHANG), which is the layout si_pid/si_status read.
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if pid == 0 {
            return Ok(None); // WNOHANG and still running.
        }
        let cause = match info.si_code {
            libc::CLD_EXITED => ExitCause::Exited(status),
            libc::CLD_KILLED => ExitCause::Killed {
                signal: status,
                core_dumped: false,
            },
            libc::CLD_DUMPED => ExitCause::Killed {
                signal: status,
                core_dumped: true,
            },
            code => {
                return Err(WorkerError::UnexpectedStatus {
                    pid: self.pid,
                    code,
                })
            }
        };
        self.exit = Some(cause);
        Ok(Some(cause))
    }
}

impl Drop for Worker {
    /// Children are always reaped: kill the worker if it still runs, then wait for it.
    fn drop(&mut self) {
        if self.exit.is_none() && !self.abandoned {
            let _ = self.kill();
            let _ = self.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seccomp_kill_is_named() {
        let cause = ExitCause::Killed {
            signal: libc::SIGSYS,
            core_dumped: false,
        };
        assert!(cause.is_seccomp_violation());
        assert_eq!(cause.to_string(), "killed by SIGSYS (seccomp violation)");
        assert_eq!(ExitCause::Exited(3).to_string(), "exited with status 3");
        assert!(!ExitCause::Exited(libc::SIGSYS).is_seccomp_violation());
        let odd = ExitCause::Killed {
            signal: 40,
            core_dumped: false,
        };
        assert_eq!(odd.to_string(), "killed by signal 40");
    }
}
