//! Helper processes a device needs on the host side of one of its sockets (net's `passt`):
//! svmm makes a socketpair, starts the helper with one end at a fixed fd number, gives the
//! other end to the device, and kills and reaps the helper when the device goes
//! ([`HelperProcess`] does both on drop, through a pidfd as svmm's filter demands; the helper
//! also dies with svmm through its parent-death signal).

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::ResourceError;
use crate::worker::Worker;

/// How long dropping a [`HelperProcess`] waits for it to die of `SIGKILL` (as long as svmm's
/// end waits for its workers).
const REAP_WAIT: Duration = Duration::from_secs(3);

/// The socket type of a helper's socketpair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    /// `SOCK_STREAM`.
    Stream,
    /// `SOCK_DGRAM`.
    Datagram,
    /// `SOCK_SEQPACKET`.
    SeqPacket,
}

/// A helper process with one end of a socketpair (the other end is the device's resource).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelperSpec {
    /// The program (an absolute path: svmm does not search `PATH` for it).
    pub program: PathBuf,
    /// Its arguments, after argv[0].
    pub args: Vec<OsString>,
    /// The fd number the helper finds its end of the socketpair at (≥ 3).
    pub fd: RawFd,
    /// The socketpair's type.
    pub socket: SocketKind,
    /// Send the helper's stderr to `/dev/null` rather than svmm's (a helper that is chatty
    /// even when told to be quiet: passt warns on every start when it finds no syslog).
    pub quiet: bool,
}

impl HelperSpec {
    /// `socket to helper process /usr/bin/passt (its fd 3; started, killed and reaped by
    /// svmm)`.
    pub fn describe(&self) -> String {
        format!(
            "socket to helper process {} (its fd {}; started, killed and reaped by svmm)",
            self.program.display(),
            self.fd
        )
    }

    /// Starts the helper: its stdin and stdout are `/dev/null`, stderr is svmm's (or
    /// `/dev/null` if [`HelperSpec::quiet`]), its end of the socketpair is at
    /// [`HelperSpec::fd`], it dies with the thread that started it.
    /// Returns the device's end of the socketpair and the running helper.
    pub fn start(&self) -> Result<(OwnedFd, HelperProcess), ResourceError> {
        self.start_as(None)
    }

    /// [`HelperSpec::start`], the helper running as `user` (uid, gid; no supplementary groups)
    /// when given: the unprivileged user a root svmm becomes, so that svmm can still kill and
    /// reap the helper after its own drop (a helper left as root, or one that changes its own
    /// uid as passt does when started as root, is out of reach of an unprivileged svmm).
    pub fn start_as(
        &self,
        user: Option<(u32, u32)>,
    ) -> Result<(OwnedFd, HelperProcess), ResourceError> {
        let failed = |source| ResourceError::Helper {
            program: self.program.clone(),
            source,
        };
        if self.fd < 3 {
            return Err(failed(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the helper's socket fd must be 3 or above",
            )));
        }
        let (ours, theirs) = socketpair(self.socket).map_err(failed)?;
        let source = theirs.as_raw_fd();
        let target = self.fd;
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if self.quiet {
            command.stderr(Stdio::null());
        }
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe system calls (setgroups with an empty list, setresgid, setresuid,
        // prctl, dup2, fcntl) with plain integers or on fds open in the child.
        unsafe {
            command.pre_exec(move || {
                if let Some((uid, gid)) = user {
                    if libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setresgid(gid, gid, gid) != 0
                        || libc::setresuid(uid, uid, uid) != 0
                    {
                        return Err(io::Error::last_os_error());
                    }
                }
                // After the uid change, which clears the parent-death signal.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if source == target {
                    // dup2 onto itself keeps close-on-exec set: clear it instead.
                    if libc::fcntl(target, libc::F_SETFD, 0) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                } else if libc::dup2(source, target) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().map_err(failed)?;
        drop(theirs);
        let pid = child.id() as i32;
        // Nobody reaps the child before us, so `pid` is still it. From here on only the pidfd
        // signals and reaps it (std's `Child` does neither when dropped).
        let pidfd = match pidfd_open(pid) {
            Ok(fd) => fd,
            Err(e) => {
                let mut child = child;
                let _ = child.kill();
                let _ = child.wait();
                return Err(failed(e));
            }
        };
        Ok((
            ours,
            HelperProcess {
                process: Worker::new(pid, pidfd),
                program: self.program.clone(),
            },
        ))
    }
}

/// A running helper process: killed and reaped through its pidfd when dropped.
pub struct HelperProcess {
    process: Worker,
    program: PathBuf,
}

impl HelperProcess {
    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.process.pid() as u32
    }

    /// Whether it is still running (reaps it if it is not).
    pub fn is_running(&mut self) -> bool {
        matches!(self.process.try_wait(), Ok(None))
    }
}

impl fmt::Debug for HelperProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "HelperProcess({} pid {})",
            self.program.display(),
            self.process.pid()
        )
    }
}

impl Drop for HelperProcess {
    fn drop(&mut self) {
        // Already gone is fine; either way it is reaped, unless it is stuck in uninterruptible
        // I/O past the wait: then it is left to whoever inherits it, as a stuck worker is.
        let _ = self.process.kill();
        if !matches!(
            self.process.wait_until(Instant::now() + REAP_WAIT),
            Ok(Some(_))
        ) {
            eprintln!(
                "svmm: helper {} (pid {}) did not die within {} s of SIGKILL; left behind",
                self.program.display(),
                self.process.pid(),
                REAP_WAIT.as_secs()
            );
            self.process.abandon();
        }
    }
}

/// A pidfd for our own child `pid` (not yet reaped).
fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; it reads no memory.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn socketpair(kind: SocketKind) -> io::Result<(OwnedFd, OwnedFd)> {
    let kind = match kind {
        SocketKind::Stream => libc::SOCK_STREAM,
        SocketKind::Datagram => libc::SOCK_DGRAM,
        SocketKind::SeqPacket => libc::SOCK_SEQPACKET,
    };
    let mut fds = [-1; 2];
    // SAFETY: socketpair writes two fds into a live two-element array.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            kind | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created by socketpair and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_helper_talks_on_its_fd_and_is_reaped_on_drop() {
        // The helper echoes one line back on fd 5.
        let spec = HelperSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "read line <&5; echo \"got $line\" >&5".into()],
            fd: 5,
            socket: SocketKind::Stream,
            quiet: false,
        };
        assert!(spec.describe().contains("/bin/sh (its fd 5;"));
        let (ours, mut helper) = spec.start().unwrap();
        let pid = helper.pid();
        let mut stream = UnixStream::from(ours);
        stream.write_all(b"ping\n").unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        assert_eq!(reply, "got ping\n");
        // It exited by itself: is_running reaps it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while helper.is_running() {
            assert!(
                std::time::Instant::now() < deadline,
                "helper {pid} still runs"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn a_running_helper_is_killed_on_drop() {
        let spec = HelperSpec {
            program: "/bin/sleep".into(),
            args: vec!["600".into()],
            fd: 3,
            socket: SocketKind::SeqPacket,
            quiet: true,
        };
        let (_ours, mut helper) = spec.start().unwrap();
        assert!(helper.is_running());
        let pid = helper.pid();
        drop(helper);
        // Reaped: the pid is gone (no zombie left behind).
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn a_missing_program_is_named() {
        let spec = HelperSpec {
            program: "/nonexistent/passt".into(),
            args: Vec::new(),
            fd: 3,
            socket: SocketKind::Stream,
            quiet: false,
        };
        let err = spec.start().unwrap_err();
        assert!(err.to_string().contains("/nonexistent/passt"), "{err}");
    }
}
