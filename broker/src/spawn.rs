//! Starting a worker: `clone3` into fresh namespaces, id maps, then exec of the svmm binary.
//!
//! The parent's side of DESIGN.md's worker life cycle, step 2:
//! 1. prepare everything the child needs (argv, envp, /dev/null, the "go" socket pair and the
//!    status pipe, scratch space) — the child may not allocate;
//! 2. `clone3` with `CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC |
//!    CLONE_NEWUTS | CLONE_NEWCGROUP | CLONE_NEWTIME | CLONE_PIDFD`: the worker is PID 1 of its
//!    own pid namespace and we get a pidfd (the [`Worker`] owns it from here on, so every error
//!    path below kills and reaps the child);
//! 3. write the child's `uid_map`/`gid_map` (and `setgroups` = deny when unprivileged);
//! 4. send the "go" byte; the child runs [`crate::preexec`] and execs;
//! 5. read the status pipe: EOF means the exec happened, 8 bytes name the failed child stage.
//!
//! [`spawn`] does all five; [`start`] stops after step 4 and hands step 5 over as an [`Exec`],
//! for the broker process, which watches it in its poll loop instead of waiting.
//!
//! The exec'd worker then runs [`crate::confine`] before anything else.
//!
//! `PR_SET_PDEATHSIG` follows the *thread* that cloned: when it exits, its workers get SIGKILL.
//! So spawning must happen on a thread that lives as long as the workers: [`Spawner`] owns one.

use crate::preexec::{self, ChildPlan, ChildStage};
use crate::worker::Worker;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

/// Most fds a worker may inherit at 3, 4, ... (control socket, memfds, eventfds, resources).
pub const MAX_WORKER_FDS: usize = 64;

/// The uid and gid an unprivileged VMM's workers have inside their user namespace (mapped to
/// the VMM's own ids outside). Not 0, so the worker is no namespace root either.
pub const NS_WORKER_ID: u32 = 1000;

/// Which ids the worker runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdChoice {
    /// The VMM runs as root: the worker gets this host uid/gid (unique per worker, taken from
    /// an [`IdRange`]); its user namespace maps the same numbers, so they read alike inside and
    /// out.
    Root {
        /// Host uid (never 0).
        uid: u32,
        /// Host gid (never 0).
        gid: u32,
    },
    /// The VMM runs unprivileged: the worker keeps the VMM's host ids, seen inside its user
    /// namespace as [`NS_WORKER_ID`].
    Unprivileged,
    /// The VMM runs unprivileged with subordinate ids ([`crate::subid`]): the broker is root of
    /// a user namespace that maps them, and maps the worker's `uid`/`gid` (never 0) to `ns_uid`/
    /// `ns_gid` of that namespace, which the host sees as `host_uid`/`host_gid`; spawned as
    /// [`IdChoice::Root`] is, one level down.
    Subordinate {
        /// uid inside the worker's user namespace.
        uid: u32,
        /// gid inside the worker's user namespace.
        gid: u32,
        /// What `uid` maps to in the broker's user namespace (0 there is svmm's own uid).
        ns_uid: u32,
        /// What `gid` maps to in the broker's user namespace.
        ns_gid: u32,
        /// The host's view of `uid` (a subordinate uid of svmm's user, or svmm's own).
        host_uid: u32,
        /// The host's view of `gid`.
        host_gid: u32,
    },
}

/// The ids `confine` switches to, inside the worker's user namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerIds {
    /// uid inside the worker's user namespace.
    pub uid: u32,
    /// gid inside the worker's user namespace.
    pub gid: u32,
    /// Whether `setgroups(0)` can and must succeed. False for unprivileged VMMs: the kernel only
    /// lets them write a gid map after denying `setgroups` in the namespace, so the worker keeps
    /// the VMM's supplementary groups (unmapped, shown as 65534; the empty root and Landlock
    /// leave them nothing to grant).
    pub drop_groups: bool,
}

impl IdChoice {
    /// The ids inside the namespace that belong with this choice, for `ConfineConfig`.
    pub fn worker_ids(&self) -> WorkerIds {
        match *self {
            IdChoice::Root { uid, gid } | IdChoice::Subordinate { uid, gid, .. } => WorkerIds {
                uid,
                gid,
                drop_groups: true,
            },
            IdChoice::Unprivileged => WorkerIds {
                uid: NS_WORKER_ID,
                gid: NS_WORKER_ID,
                drop_groups: false,
            },
        }
    }
}

/// A configurable range of host ids for a root-run svmm: worker `i` gets `first + i` as both
/// uid and gid; the last two ids are svmm's own, once it drops root, and the broker's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    first: u32,
    count: u32,
}

impl IdRange {
    /// Default: 65536 ids from 1,500,000,000, far above login users and typical subuid ranges.
    pub const DEFAULT: IdRange = IdRange {
        first: 1_500_000_000,
        count: 65536,
    };

    /// A range of `count` ids from `first`; `None` if it is empty, contains 0 or overflows
    /// (u32::MAX is `(uid_t)-1`, "no change", and excluded too).
    pub fn new(first: u32, count: u32) -> Option<Self> {
        let last = first.checked_add(count.checked_sub(1)?)?;
        (first > 0 && last < u32::MAX).then_some(IdRange { first, count })
    }

    /// The ids of worker number `index`, or `None` past the end of the workers' part of the
    /// range (all but its last two ids).
    pub fn ids(&self, index: u32) -> Option<IdChoice> {
        (index < self.count.saturating_sub(2)).then(|| IdChoice::Root {
            uid: self.first + index,
            gid: self.first + index,
        })
    }

    /// The uid (= gid) svmm drops to once it has opened KVM and the host resources: the
    /// range's last id. `None` for a range too small to hold it, the broker's and a worker's.
    pub fn svmm(&self) -> Option<u32> {
        (self.count >= 3).then(|| self.first + self.count - 1)
    }

    /// The uid (= gid) of the broker process: the range's second-to-last id.
    pub fn broker(&self) -> Option<u32> {
        (self.count >= 3).then(|| self.first + self.count - 2)
    }
}

/// What to start.
#[derive(Debug)]
pub struct WorkerSpec {
    /// The executable, opened `O_PATH` (see [`self_exe`]); shared by all spawns.
    pub exe: Arc<OwnedFd>,
    /// argv, including argv[0] (e.g. `svmm __worker rng --sandbox-...`). The environment is
    /// always empty.
    pub args: Vec<CString>,
    /// The fds the worker gets as 3, 4, 5, ... in this order. Everything else is closed.
    pub fds: Vec<OwnedFd>,
    /// The worker's ids.
    pub ids: IdChoice,
    /// Clone into fresh namespaces (all of them). `false` only where the user allowed going
    /// without (a kernel without user namespaces); then the VMM must be root.
    pub namespaces: bool,
    /// The worker's fd 2.
    pub stderr: Stderr,
}

/// What a worker gets as its stderr (fd 2).
#[derive(Debug)]
pub enum Stderr {
    /// `/dev/null`.
    Null,
    /// The spawning process's own stderr.
    Inherit,
    /// This fd (the write end of a pipe svmm reads, prefixes and sanitises).
    Fd(OwnedFd),
}

/// Why a worker could not be started. Each parent-side step has its own variant.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// `args` was empty (argv[0] is required).
    #[error("worker argv is empty")]
    NoArgs,
    /// More than [`MAX_WORKER_FDS`] fds.
    #[error("{0} fds for one worker, at most {MAX_WORKER_FDS}")]
    TooManyFds(usize),
    /// `IdChoice::Unprivileged` from a root VMM would leave the worker host uid 0.
    #[error("unprivileged id choice while running as root: use IdChoice::Root with a range")]
    UnprivilegedAsRoot,
    /// `IdChoice::Root` from a VMM that is not root.
    #[error("host ids {uid}:{gid} need a root VMM")]
    RootIdsNeedRoot {
        /// Requested uid.
        uid: u32,
        /// Requested gid.
        gid: u32,
    },
    /// `IdChoice::Root` with uid or gid 0.
    #[error("worker ids must not be 0")]
    IdIsRoot,
    /// Without namespaces only a root VMM can give the worker its own ids.
    #[error("a worker without namespaces needs a root VMM")]
    NoNamespacesNeedsRoot,
    /// Opening /dev/null for the worker's stdio failed.
    #[error("cannot open /dev/null")]
    DevNull(#[source] io::Error),
    /// Creating the go socket pair or the status pipe failed.
    #[error("cannot create the spawn synchronisation fds")]
    SyncFds(#[source] io::Error),
    /// `clone3` failed.
    #[error("clone3 failed")]
    Clone(#[source] io::Error),
    /// Writing `/proc/<pid>/setgroups`.
    #[error("cannot write setgroups of worker {pid}")]
    Setgroups {
        /// Host pid.
        pid: i32,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Writing `/proc/<pid>/gid_map`.
    #[error("cannot write gid_map of worker {pid}")]
    GidMap {
        /// Host pid.
        pid: i32,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Writing `/proc/<pid>/uid_map`.
    #[error("cannot write uid_map of worker {pid}")]
    UidMap {
        /// Host pid.
        pid: i32,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Sending the go byte failed (the child died early).
    #[error("cannot release worker {pid}")]
    Release {
        /// Host pid.
        pid: i32,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Reading the status pipe failed, or it carried a malformed report.
    #[error("cannot read the exec status of worker {pid}")]
    Status {
        /// Host pid.
        pid: i32,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The child reported a failure before exec.
    #[error("worker {pid} failed before exec at {stage:?}")]
    Child {
        /// Host pid.
        pid: i32,
        /// The failed step.
        stage: ChildStage,
        /// Its errno (0 for `ParentGone`).
        #[source]
        source: io::Error,
    },
    /// The spawner thread could not be started.
    #[error("cannot start the spawner thread")]
    SpawnerThread(#[source] io::Error),
    /// The spawner thread is gone (it panicked).
    #[error("the spawner thread is gone")]
    SpawnerGone,
}

/// Opens the running executable (`/proc/self/exe`) with `O_PATH | O_CLOEXEC`. Do it once at
/// startup: the fd keeps working after the file was replaced on disk, and `execveat` through it
/// needs no path in the child's mount namespace.
pub fn self_exe() -> io::Result<OwnedFd> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open("/proc/self/exe")?;
    Ok(file.into())
}

/// `struct clone_args` (size version 2, 88 bytes); libc does not define it.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Every namespace DESIGN.md asks for.
const NAMESPACE_FLAGS: libc::c_int = libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWTIME;

/// Starts a worker: clone3 + id maps + exec. Call it from a thread that outlives the worker
/// (see [`Spawner`]): the worker's parent-death signal fires when the calling thread exits.
pub fn spawn(spec: &WorkerSpec) -> Result<Worker, SpawnError> {
    let (worker, exec) = start(spec)?;
    exec.wait()?;
    Ok(worker)
}

/// A released child on its way to its exec: step 5 of the module docs, still to come. The
/// broker process polls [`Exec::status_fd`] among its other fds and then calls
/// [`Exec::wait`], so that it answers a start without waiting for the exec itself.
#[derive(Debug)]
pub struct Exec {
    pid: i32,
    /// The status pipe's read end.
    status: OwnedFd,
    /// The go socket's parent end: held until the exec, so the child can tell we are alive.
    _go: OwnedFd,
}

impl Exec {
    /// The child's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Readable once the child exec'd (EOF) or reported a failed stage (and exited).
    pub fn status_fd(&self) -> BorrowedFd<'_> {
        self.status.as_fd()
    }

    /// Waits for the exec: `Ok` once it happened, else the stage that failed.
    pub fn wait(self) -> Result<(), SpawnError> {
        let pid = self.pid;
        let report =
            read_status(self.status).map_err(|source| SpawnError::Status { pid, source })?;
        match report {
            None => Ok(()),
            Some((stage, errno)) => Err(SpawnError::Child {
                pid,
                stage,
                source: io::Error::from_raw_os_error(errno),
            }),
        }
    }
}

/// Steps 1–4 of the module docs: the worker runs and has its "go" byte; whether its exec
/// succeeds is for [`Exec::wait`] to learn. The spec's fds may be closed once this returns.
pub fn start(spec: &WorkerSpec) -> Result<(Worker, Exec), SpawnError> {
    check(spec)?;

    // 1. Everything the child needs, prepared before the clone.
    let mut argv: Vec<*const libc::c_char> = spec.args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    let devnull: OwnedFd = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(SpawnError::DevNull)?
        .into();
    let (go_parent, go_child) = go_pair().map_err(SpawnError::SyncFds)?;
    let (status_read, status_write) = cloexec_pipe().map_err(SpawnError::SyncFds)?;
    let sources: Vec<RawFd> = spec.fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let stderr = match &spec.stderr {
        Stderr::Null => devnull.as_raw_fd(),
        Stderr::Inherit => libc::STDERR_FILENO,
        Stderr::Fd(fd) => fd.as_raw_fd(),
    };
    let mut scratch: Vec<RawFd> = vec![-1; sources.len()];
    let mut plan = ChildPlan {
        exe: spec.exe.as_raw_fd(),
        sources: &sources,
        scratch: &mut scratch,
        devnull: devnull.as_raw_fd(),
        stderr,
        go_read: go_child.as_raw_fd(),
        go_write: go_parent.as_raw_fd(),
        status_write: status_write.as_raw_fd(),
        handover_caps: spec.namespaces,
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
    };

    // 2. clone3.
    let namespaces = if spec.namespaces { NAMESPACE_FLAGS } else { 0 };
    let mut pidfd: libc::c_int = -1;
    let args = CloneArgs {
        flags: (namespaces | libc::CLONE_PIDFD) as u64,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM duplicates the address space, like fork; `args` is a
    // live clone_args of the size we pass and `pidfd` a live int the kernel writes to. In the
    // child (return value 0) we go straight into preexec::run, which never returns and keeps to
    // async-signal-safe system calls: the child is single-threaded, and the locks other VMM
    // threads held at the clone are never touched.
    let pid = unsafe {
        let ret = libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        );
        if ret == 0 {
            preexec::run(&mut plan);
        }
        ret
    };
    if pid < 0 {
        return Err(SpawnError::Clone(io::Error::last_os_error()));
    }
    let pid = pid as i32;
    // SAFETY: clone3 succeeded with CLONE_PIDFD, so the kernel stored a new pidfd (O_CLOEXEC)
    // that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    // From here on, dropping `worker` (any error below) kills and reaps the child.
    let worker = Worker::new(pid, pidfd);
    drop(go_child);
    drop(status_write);

    // 3. The id maps.
    if spec.namespaces {
        write_id_maps(pid, &spec.ids)?;
    }

    // 4. Release the child. MSG_NOSIGNAL: a child that died early must not SIGPIPE the VMM.
    // sendmsg rather than send (sendto): the broker's filter has no sendto.
    let byte = [1u8];
    let mut iov = libc::iovec {
        iov_base: byte.as_ptr().cast_mut().cast(),
        iov_len: 1,
    };
    // SAFETY: `msghdr` is plain data; all-zero means no address and no control data.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    // SAFETY: sends one byte from a live buffer, described by `header`, on a socket we own.
    let sent = unsafe { libc::sendmsg(go_parent.as_raw_fd(), &header, libc::MSG_NOSIGNAL) };
    if sent != 1 {
        let source = io::Error::last_os_error();
        return Err(SpawnError::Release { pid, source });
    }

    // 5. is the caller's (`Exec::wait`): EOF means the child exec'd (the status pipe is
    //    close-on-exec), 8 bytes that it failed. The go socket stays open until then, so the
    //    child can tell whether we are still alive.
    let exec = Exec {
        pid,
        status: status_read,
        _go: go_parent,
    };
    Ok((worker, exec))
}

/// Refuses specs that cannot give the worker the ids it must have.
fn check(spec: &WorkerSpec) -> Result<(), SpawnError> {
    if spec.args.is_empty() {
        return Err(SpawnError::NoArgs);
    }
    if spec.fds.len() > MAX_WORKER_FDS {
        return Err(SpawnError::TooManyFds(spec.fds.len()));
    }
    let root = may_map_other_ids();
    match spec.ids {
        IdChoice::Unprivileged if root => Err(SpawnError::UnprivilegedAsRoot),
        IdChoice::Unprivileged if !spec.namespaces => Err(SpawnError::NoNamespacesNeedsRoot),
        IdChoice::Root { uid, gid } if uid == 0 || gid == 0 => Err(SpawnError::IdIsRoot),
        IdChoice::Root { uid, gid } if !root => Err(SpawnError::RootIdsNeedRoot { uid, gid }),
        IdChoice::Subordinate { uid, gid, .. } if uid == 0 || gid == 0 => Err(SpawnError::IdIsRoot),
        IdChoice::Subordinate { uid, gid, .. } if !root => {
            Err(SpawnError::RootIdsNeedRoot { uid, gid })
        }
        _ => Ok(()),
    }
}

/// Whether this process may give a worker ids other than its own: it holds `CAP_SETUID` and
/// `CAP_SETGID` in its user namespace (root; or a broker that dropped to an unprivileged uid
/// and kept just these two).
pub fn may_map_other_ids() -> bool {
    let need = crate::caps::mask(&[crate::caps::CAP_SETUID, crate::caps::CAP_SETGID]);
    crate::caps::get().is_ok_and(|sets| sets.effective & need == need)
}

/// Writes the child's `setgroups`, `gid_map` and `uid_map`.
///
/// Root maps the worker's host ids onto the same numbers and leaves `setgroups` allowed, so the
/// worker can drop its supplementary groups. An unprivileged VMM may only map its own euid/egid,
/// and only after denying `setgroups`; it maps them to [`NS_WORKER_ID`].
fn write_id_maps(pid: i32, ids: &IdChoice) -> Result<(), SpawnError> {
    let proc = format!("/proc/{pid}");
    let (uid_map, gid_map) = match *ids {
        IdChoice::Root { uid, gid } => (format!("{uid} {uid} 1\n"), format!("{gid} {gid} 1\n")),
        IdChoice::Subordinate {
            uid,
            gid,
            ns_uid,
            ns_gid,
            ..
        } => (format!("{uid} {ns_uid} 1\n"), format!("{gid} {ns_gid} 1\n")),
        IdChoice::Unprivileged => {
            std::fs::write(format!("{proc}/setgroups"), "deny")
                .map_err(|source| SpawnError::Setgroups { pid, source })?;
            // SAFETY: geteuid/getegid have no preconditions and cannot fail.
            let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
            (
                format!("{NS_WORKER_ID} {euid} 1\n"),
                format!("{NS_WORKER_ID} {egid} 1\n"),
            )
        }
    };
    std::fs::write(format!("{proc}/gid_map"), gid_map)
        .map_err(|source| SpawnError::GidMap { pid, source })?;
    std::fs::write(format!("{proc}/uid_map"), uid_map)
        .map_err(|source| SpawnError::UidMap { pid, source })?;
    Ok(())
}

/// The "go" channel: a close-on-exec socket pair (parent end, child end). A socket rather than
/// a pipe so the parent can send with `MSG_NOSIGNAL`; the child sees `POLLHUP` once the parent
/// end is closed.
fn go_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1; 2];
    // SAFETY: socketpair writes two fds into a live two-element array.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
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

/// A close-on-exec pipe (read end, write end).
fn cloexec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1; 2];
    // SAFETY: pipe2 writes two fds into a live two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created by pipe2 and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Reads the status pipe to EOF: `None` if empty (exec happened), else the child's report.
fn read_status(fd: OwnedFd) -> io::Result<Option<(ChildStage, i32)>> {
    let mut buf = Vec::with_capacity(8);
    File::from(fd).take(64).read_to_end(&mut buf)?;
    if buf.is_empty() {
        return Ok(None);
    }
    let malformed = || io::Error::new(io::ErrorKind::InvalidData, "malformed child report");
    let raw: [u8; 8] = buf.as_slice().try_into().map_err(|_| malformed())?;
    let [s0, s1, s2, s3, e0, e1, e2, e3] = raw;
    let stage = ChildStage::from_u32(u32::from_ne_bytes([s0, s1, s2, s3])).ok_or_else(malformed)?;
    Ok(Some((stage, i32::from_ne_bytes([e0, e1, e2, e3]))))
}

/// One spawn request for the spawner thread.
/// A job for the spawner thread (it sends its own reply).
type Job = Box<dyn FnOnce() + Send>;

/// A long-lived thread that performs every spawn.
///
/// Why a thread of its own: `PR_SET_PDEATHSIG` fires when the *thread* that cloned the worker
/// exits, not the process. Spawning from a short-lived thread would kill its workers with it;
/// spawning from this thread ties every worker to the VMM's lifetime — and to the `Spawner`'s:
/// dropping the `Spawner` ends the thread and so kills every worker it started (the VMM
/// still reaps them through their [`Worker`] handles).
#[derive(Debug)]
pub struct Spawner {
    requests: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Spawner {
    /// Starts the spawner thread (`svmm-spawner`).
    pub fn new() -> Result<Self, SpawnError> {
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("svmm-spawner".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .map_err(SpawnError::SpawnerThread)?;
        Ok(Spawner {
            requests: Some(tx),
            thread: Some(thread),
        })
    }

    /// Spawns a worker on the spawner thread and waits for the result. The spec's fds are
    /// closed in the VMM once the worker has its copies.
    pub fn spawn(&self, spec: WorkerSpec) -> Result<Worker, SpawnError> {
        self.run(move || spawn(&spec))?
    }

    /// Runs `job` on the spawner thread and waits for its result: for a start that also makes
    /// the worker's fds (a control channel, eventfds, duplicates) there, so that the thread
    /// asking for it — a monitor thread under svmm's own seccomp filter, restarting a worker —
    /// needs none of those system calls. The job's workers get their parent-death signal from
    /// this thread like any other.
    pub fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, SpawnError> {
        let (reply, answer) = mpsc::sync_channel(1);
        let requests = self.requests.as_ref().ok_or(SpawnError::SpawnerGone)?;
        requests
            .send(Box::new(move || {
                // The requester may have given up; then the result (a worker: reaped) is dropped.
                let _ = reply.send(job());
            }))
            .map_err(|_| SpawnError::SpawnerGone)?;
        answer.recv().map_err(|_| SpawnError::SpawnerGone)
    }
}

impl Drop for Spawner {
    /// Ends the thread (its workers then receive their parent-death signal).
    fn drop(&mut self) {
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_range_bounds() {
        assert!(IdRange::new(0, 10).is_none());
        assert!(IdRange::new(10, 0).is_none());
        assert!(IdRange::new(u32::MAX - 1, 2).is_none());
        let r = IdRange::new(5000, 4).unwrap();
        assert_eq!(
            r.ids(1),
            Some(IdChoice::Root {
                uid: 5001,
                gid: 5001
            })
        );
        // The last two ids are svmm's and the broker's.
        assert_eq!(r.ids(2), None);
        assert_eq!((r.svmm(), r.broker()), (Some(5003), Some(5002)));
        assert!(IdRange::DEFAULT.ids(65533).is_some());
        assert!(IdRange::DEFAULT.ids(65534).is_none());
        let small = IdRange::new(5000, 2).unwrap();
        assert_eq!((small.ids(0), small.svmm()), (None, None));
    }

    #[test]
    fn unprivileged_ids_are_not_root_inside() {
        let ids = IdChoice::Unprivileged.worker_ids();
        assert_ne!(ids.uid, 0);
        assert!(!ids.drop_groups);
        let ids = IdChoice::Root { uid: 7, gid: 8 }.worker_ids();
        assert_eq!((ids.uid, ids.gid, ids.drop_groups), (7, 8, true));
    }

    #[test]
    fn self_exe_is_a_path_fd() {
        let fd = self_exe().unwrap();
        // SAFETY: F_GETFL on an fd we own.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
        assert_ne!(flags & libc::O_PATH, 0);
        // SAFETY: F_GETFD on an fd we own.
        let fd_flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
        assert_ne!(fd_flags & libc::FD_CLOEXEC, 0);
    }
}
