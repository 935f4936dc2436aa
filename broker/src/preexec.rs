//! The child's side of `spawn`, between `clone3` and `execveat`.
//!
//! The child is a copy of one thread of a multi-threaded VMM: another thread may have held the
//! allocator lock (or any other lock) at the moment of the clone, and that lock stays held
//! forever in the child. So this code only makes direct system calls (all async-signal-safe),
//! never allocates, never panics (no indexing, no formatting) and never returns: it ends in
//! `execveat` or `_exit`. Everything it needs (argv, envp, fd numbers, scratch space) was
//! prepared by the parent before the clone.
//!
//! Steps, in order (a failure writes `[stage, errno]` to the status pipe and exits with 127):
//! 1. close the child's copy of the "go" pipe's write end, so a dead VMM shows up as EOF;
//! 2. `PR_SET_PDEATHSIG(SIGKILL)` at once — it covers the window until `confine` sets it
//!    again after exec (it survives our exec: no set-uid bit, no file capabilities);
//! 3. wait for the parent's "go" byte (it has written the uid/gid maps), then check that the
//!    parent still holds the pipe: a hang-up means it died after writing but before step 2
//!    took effect, so nobody would ever send the death signal;
//! 4. with namespaces: hand `CAP_SYS_ADMIN`, `CAP_SETPCAP`, `CAP_SETUID`, `CAP_SETGID` over to
//!    the exec'd image as ambient capabilities (the worker's uid inside its namespace is not 0,
//!    so exec would otherwise clear them, and `confine` needs them to pivot_root);
//! 5. place the fds: everything we still need is first moved above the target range, then
//!    stdin/stdout become /dev/null, stderr the given fd (a pipe, /dev/null or ours), the listed fds
//!    3, 4, ...; `close_range(3 + n, ~0, CLOSE_RANGE_CLOEXEC)` marks every other fd
//!    close-on-exec (the exe fd and the status pipe must live until the exec itself);
//! 6. `execveat(exe, "", argv, envp, AT_EMPTY_PATH)`.

use crate::caps;
use std::os::fd::RawFd;

/// Where the pre-exec child failed, as reported on the status pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ChildStage {
    /// `prctl(PR_SET_PDEATHSIG)`.
    DeathSignal = 1,
    /// The VMM went away before the child could exec.
    ParentGone = 2,
    /// Raising the ambient capabilities for `confine`.
    Capabilities = 3,
    /// Moving fds out of the way (`F_DUPFD_CLOEXEC`).
    MoveFds = 4,
    /// Pointing stdin/stdout/stderr at /dev/null.
    Stdio = 5,
    /// `dup2` of a listed fd to its number.
    PlaceFds = 6,
    /// `close_range`.
    CloseRange = 7,
    /// `execveat` itself.
    Exec = 8,
}

impl ChildStage {
    /// Decodes a stage number read from the status pipe.
    pub(crate) fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => ChildStage::DeathSignal,
            2 => ChildStage::ParentGone,
            3 => ChildStage::Capabilities,
            4 => ChildStage::MoveFds,
            5 => ChildStage::Stdio,
            6 => ChildStage::PlaceFds,
            7 => ChildStage::CloseRange,
            8 => ChildStage::Exec,
            _ => return None,
        })
    }
}

/// Everything the child needs, prepared by the parent before `clone3`.
pub(crate) struct ChildPlan<'a> {
    /// O_PATH fd of the executable.
    pub exe: RawFd,
    /// The fds to place at 3, 4, ... in this order.
    pub sources: &'a [RawFd],
    /// Scratch space, as long as `sources`, for the moved copies.
    pub scratch: &'a mut [RawFd],
    /// Read-write fd of /dev/null.
    pub devnull: RawFd,
    /// What becomes fd 2 (`STDERR_FILENO` itself: keep the VMM's stderr).
    pub stderr: RawFd,
    /// Read end of the "go" pipe (parent writes one byte once the id maps are written).
    pub go_read: RawFd,
    /// The parent's write end of the same pipe (the child closes its copy).
    pub go_write: RawFd,
    /// Write end of the status pipe (close-on-exec: EOF in the parent means exec succeeded).
    pub status_write: RawFd,
    /// Raise the capabilities `confine` needs as ambient capabilities (namespaced workers).
    pub handover_caps: bool,
    /// NULL-terminated argv.
    pub argv: *const *const libc::c_char,
    /// NULL-terminated envp.
    pub envp: *const *const libc::c_char,
}

/// Runs the child's steps; never returns.
///
/// # Safety
/// Must be called only in the child of `clone3` (without `CLONE_VM`), right after the syscall
/// returned 0, with a plan whose pointers were valid in the parent at the time of the clone.
pub(crate) unsafe fn run(plan: &mut ChildPlan<'_>) -> ! {
    let mut status = plan.status_write;

    // 1. Only the parent may hold the go pipe's write end.
    // SAFETY: plain close of an fd number; the child owns its copy of the fd table.
    unsafe { libc::close(plan.go_write) };

    // 2. Die with the thread that cloned us.
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } != 0 {
        fail(status, ChildStage::DeathSignal, caps::errno());
    }

    // 3. Wait for the id maps, then make sure the parent is still alive.
    let mut byte = 0u8;
    // SAFETY: reads at most one byte into a live local.
    let n = unsafe { libc::read(plan.go_read, (&mut byte as *mut u8).cast(), 1) };
    if n != 1 {
        fail(status, ChildStage::ParentGone, 0);
    }
    let mut pfd = libc::pollfd {
        fd: plan.go_read,
        events: 0,
        revents: 0,
    };
    // SAFETY: one live pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    if n != 0 {
        // POLLHUP (or an error): the parent's write end is gone, the parent with it.
        fail(status, ChildStage::ParentGone, 0);
    }
    // SAFETY: plain close; the go pipe has served its purpose.
    unsafe { libc::close(plan.go_read) };

    // 4. Keep what confine needs across exec, as ambient capabilities.
    if plan.handover_caps {
        if let Err(e) = handover_capabilities() {
            fail(status, ChildStage::Capabilities, e);
        }
    }

    // 5. Place the fds. First move everything above the target range [3, 3 + n), so that no
    //    dup2 below can overwrite an fd we still need (F_DUPFD picks the lowest free number at
    //    or above `floor`, never an open one).
    let floor = 3 + plan.sources.len() as libc::c_int;
    let status_hi = match dup_above(status, floor) {
        Ok(fd) => fd,
        Err(e) => fail(status, ChildStage::MoveFds, e),
    };
    status = status_hi;
    let exe_hi = match dup_above(plan.exe, floor) {
        Ok(fd) => fd,
        Err(e) => fail(status, ChildStage::MoveFds, e),
    };
    let null_hi = match dup_above(plan.devnull, floor) {
        Ok(fd) => fd,
        Err(e) => fail(status, ChildStage::MoveFds, e),
    };
    let err_hi = match plan.stderr {
        libc::STDERR_FILENO => libc::STDERR_FILENO,
        fd => match dup_above(fd, floor) {
            Ok(fd) => fd,
            Err(e) => fail(status, ChildStage::MoveFds, e),
        },
    };
    for (src, slot) in plan.sources.iter().zip(plan.scratch.iter_mut()) {
        match dup_above(*src, floor) {
            Ok(fd) => *slot = fd,
            Err(e) => fail(status, ChildStage::MoveFds, e),
        }
    }
    for target in 0..2 {
        // SAFETY: dup2 between fd numbers; null_hi is open (moved above).
        if unsafe { libc::dup2(null_hi, target) } < 0 {
            fail(status, ChildStage::Stdio, caps::errno());
        }
    }
    // SAFETY: dup2 between fd numbers; err_hi is open (moved above, or fd 2 itself, which
    // dup2 leaves as it is).
    if unsafe { libc::dup2(err_hi, libc::STDERR_FILENO) } < 0 {
        fail(status, ChildStage::Stdio, caps::errno());
    }
    for (target, moved) in (3..).zip(plan.scratch.iter()) {
        // SAFETY: dup2 between fd numbers; `moved` is an fd we just created. The new fd does
        // not have FD_CLOEXEC, so it survives the exec (moved != target, so dup2 is no no-op).
        if unsafe { libc::dup2(*moved, target) } < 0 {
            fail(status, ChildStage::PlaceFds, caps::errno());
        }
    }
    // Every fd from 3 + n up: close-on-exec (not closed now: exe_hi and status_hi are needed
    // until the exec itself, and the status pipe must still report an exec failure).
    // SAFETY: close_range with constant flags; affects only this child's fd table.
    let rc =
        unsafe { libc::close_range(floor as libc::c_uint, !0, libc::CLOSE_RANGE_CLOEXEC as _) };
    if rc != 0 {
        fail(status, ChildStage::CloseRange, caps::errno());
    }

    // 6. Exec the worker image through its fd (works whatever our mount namespace shows).
    // SAFETY: argv/envp are NULL-terminated arrays of NUL-terminated strings prepared by the
    // parent before the clone; this address space is a copy of it, so they are still valid.
    unsafe {
        libc::execveat(
            exe_hi,
            c"".as_ptr(),
            plan.argv as *const *mut libc::c_char,
            plan.envp as *const *mut libc::c_char,
            libc::AT_EMPTY_PATH,
        )
    };
    fail(status, ChildStage::Exec, caps::errno())
}

/// `fcntl(fd, F_DUPFD_CLOEXEC, floor)`, returning the raw errno on failure.
fn dup_above(fd: RawFd, floor: libc::c_int) -> Result<RawFd, i32> {
    // SAFETY: fcntl on an fd number with an integer argument.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, floor) };
    if new < 0 {
        Err(caps::errno())
    } else {
        Ok(new)
    }
}

/// Puts [`caps::HANDOVER`] into the inheritable and then the ambient set. The child of a
/// `CLONE_NEWUSER` clone holds every capability in the new namespace, so both steps are allowed.
fn handover_capabilities() -> Result<(), i32> {
    let mut sets = caps::get()?;
    sets.inheritable = caps::mask(&caps::HANDOVER);
    caps::set(sets)?;
    for cap in caps::HANDOVER {
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                cap as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        };
        if rc != 0 {
            return Err(caps::errno());
        }
    }
    Ok(())
}

/// Reports the failed stage to the parent and exits without running any atexit handler.
fn fail(status: RawFd, stage: ChildStage, errno: i32) -> ! {
    let s = (stage as u32).to_ne_bytes();
    let e = (errno as u32).to_ne_bytes();
    let msg = [s[0], s[1], s[2], s[3], e[0], e[1], e[2], e[3]];
    // SAFETY: writes 8 bytes from a live local buffer; then _exit, which never returns and
    // runs no user-space cleanup (the VMM's atexit handlers and buffers are not ours).
    unsafe {
        libc::write(status, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}
