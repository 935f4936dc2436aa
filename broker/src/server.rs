//! The broker process: the one process of svmm that may spawn workers.
//!
//! svmm forks it ([`fork`]) while it is still single-threaded, before any guest code runs,
//! with everything the broker will ever need: svmm's executable (`O_PATH`), and per declared
//! device ([`Declared`]) its fixed worker plan (argv, ids) and its host resources. svmm keeps
//! one [`Channel`] per device; on it the broker accepts only `ipc::BrokerRequest::Start` and
//! `Stop` for that very device ([`serve`]) and refuses — and logs — everything else. It never
//! holds guest RAM except while it passes svmm's fd to a new worker, and it never maps it.
//!
//! In the child, in this order ([`confine_self`]):
//! 1. `PR_SET_PDEATHSIG(SIGKILL)` (it dies with svmm's main thread; its workers die with it),
//!    then a check that svmm is still its parent;
//! 2. its name (`svmm-broker`), stdin and stdout on `/dev/null` (the terminal stays svmm's),
//!    every fd it was not given closed;
//! 3. unprivileged with subordinate ids ([`crate::subid`]): a user namespace of its own, whose
//!    id maps svmm writes with `newuidmap`/`newgidmap` while the broker waits; it is then root
//!    there, and goes on as a root broker does;
//! 4. as root (of the host or of that namespace): its own unprivileged uid and gid, no
//!    supplementary groups, and of all capabilities only `CAP_SETUID` and `CAP_SETGID` (to map
//!    each worker's ids), bounding set included;
//! 5. `PR_SET_NO_NEW_PRIVS` and its seccomp filter (the `broker` profile: what spawning needs,
//!    which includes what a worker does between its exec and its own filter, since a filter is
//!    inherited by every child).
//!
//! Then it serves until svmm hangs up, kills its workers and exits. Each worker is reported to
//! svmm exactly once, with how it ended, once the broker has reaped it.
//!
//! A `Start` is answered as soon as the worker is cloned, has its id maps and its "go" byte
//! (`spawn::start`): the exec itself happens while the broker serves the next request, so the
//! workers of several devices come up in parallel. The broker watches each new worker's status
//! pipe in its poll loop; a worker that fails before its exec is reported as `Failed` (with the
//! stage, logged too), then, like every worker, as `Exited` once reaped.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use ipc::{BrokerReply, BrokerRequest, Channel, ChannelError, WorkerStatus};

use crate::caps::{self, CapSets, CAP_SETGID, CAP_SETUID};
use crate::spawn::{self, Exec, IdChoice, Stderr, WorkerSpec};
use crate::subid::{map_broker, MapError, SubIds};
use crate::worker::{ExitCause, Worker};

/// One device the broker may start a worker for.
#[derive(Debug)]
pub struct Declared {
    /// `rng#0`, for its log lines.
    pub name: String,
    /// Its index in `--device` order: the `device` its requests must name.
    pub index: u32,
    /// The worker's argv (`svmm __worker KIND ...`), fixed at set-up.
    pub argv: Vec<CString>,
    /// The worker's ids.
    pub ids: IdChoice,
    /// How many guest-facing fds a `Start` carries (guest RAM, status page, irqfd, one eventfd
    /// per queue).
    pub guest_fds: usize,
    /// Where among those the broker puts a fresh eventfd of its own for each worker (its stop
    /// eventfd: svmm's threads cannot make one under their filter, and no worker shares it),
    /// if the worker takes one: `Some(3)` puts it after the first three.
    pub fresh_eventfd_at: Option<usize>,
    /// The device's host resources (those with an fd), in declaration order; each worker gets
    /// fresh duplicates.
    pub resources: Vec<OwnedFd>,
    /// How many fds a `Start` carries after the guest-facing ones, for this worker alone; they
    /// go after the host resources (a kind with host services: the device's end of the fresh
    /// service channel svmm made for this worker).
    pub trailing_fds: usize,
}

/// What the broker process is given.
pub struct BrokerSetup {
    /// svmm's own executable, `O_PATH`.
    pub exe: OwnedFd,
    /// The devices, in `--device` order of the sandboxed ones.
    pub devices: Vec<Declared>,
    /// Its seccomp filter (the `broker` profile in svmm's `--seccomp` mode).
    pub seccomp: seccompiler::BpfProgram,
    /// As root (of the host, or of its user namespace with `subids`): the uid and gid it drops
    /// to.
    pub drop_to: Option<(u32, u32)>,
    /// Unprivileged with subordinate ids: the ranges svmm maps into the broker's own user
    /// namespace.
    pub subids: Option<SubIds>,
}

/// svmm's side of a running broker.
#[derive(Debug)]
pub struct BrokerProcess {
    /// Its pid.
    pub pid: i32,
    /// svmm's end of each device's channel, in the order of [`BrokerSetup::devices`].
    pub channels: Vec<Channel>,
}

/// Why the broker could not be started.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// svmm already runs other threads: a fork would copy a process in the middle of them.
    #[error("svmm has {0} threads; the broker must be forked while it has one")]
    Threads(usize),
    /// A channel could not be made.
    #[error("cannot create the broker's channels")]
    Channel(#[source] ChannelError),
    /// `fork` failed.
    #[error("cannot fork the broker")]
    Fork(#[source] io::Error),
    /// The broker's user namespace could not be given the subordinate ids.
    #[error("cannot map subordinate ids into the broker's user namespace: {0}")]
    Subids(#[source] MapError),
}

/// Forks the broker with `setup`. Call it while svmm is single-threaded.
pub fn fork(setup: BrokerSetup) -> Result<BrokerProcess, BrokerError> {
    let threads = std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count());
    if threads != 1 {
        return Err(BrokerError::Threads(threads));
    }
    let mut ours = Vec::with_capacity(setup.devices.len());
    let mut theirs = Vec::with_capacity(setup.devices.len());
    for _ in &setup.devices {
        let (a, b) = Channel::pair().map_err(BrokerError::Channel)?;
        ours.push(a);
        theirs.push(b);
    }
    // With subordinate ids: the broker says when it has its user namespace, svmm when it has
    // mapped the ids.
    let sync = match setup.subids {
        Some(_) => Some(sync_pair().map_err(BrokerError::Fork)?),
        None => None,
    };
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: svmm is single-threaded (checked above), so the child is a complete copy of it:
    // no lock is held by a thread that does not exist in the child, and it may run any code.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(BrokerError::Fork(io::Error::last_os_error())),
        0 => {
            drop(ours);
            let sync = sync.map(|(_, theirs)| theirs);
            let code = match confine_self(&setup, &theirs, sync, parent) {
                Ok(()) => serve(setup, theirs),
                Err(e) => {
                    // svmm already gone (it failed early and said why, e.g. an unreachable
                    // socket): nothing to add on its stderr.
                    // SAFETY: getppid has no preconditions.
                    if unsafe { libc::getppid() } == parent {
                        eprintln!("svmm broker: cannot confine itself: {e}");
                    }
                    1
                }
            };
            std::process::exit(code)
        }
        pid => {
            // Only the broker's end left open there: its death is EOF here.
            let sync = sync.map(|(ours, _theirs)| ours);
            if let (Some(ids), Some(sync)) = (&setup.subids, &sync) {
                if let Err(e) = map_broker(pid, ids, sync) {
                    // SAFETY: pid is our child, not yet reaped: kill and reap it.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                        libc::waitpid(pid, std::ptr::null_mut(), 0);
                    }
                    return Err(BrokerError::Subids(e));
                }
            }
            Ok(BrokerProcess {
                pid,
                channels: ours,
            })
        }
    }
}

/// A close-on-exec stream socket pair (svmm's end, the broker's end).
fn sync_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1; 2];
    // SAFETY: socketpair writes two fds into a live two-element array.
    check(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: both fds were just created by socketpair and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Step 3: unshares a user namespace, tells svmm on `sync` and waits until svmm has mapped its
/// ids (one byte back; EOF if svmm could not).
fn enter_user_namespace(sync: OwnedFd) -> io::Result<()> {
    // SAFETY: unshare with a flag only; the broker is single-threaded, as CLONE_NEWUSER needs.
    check(unsafe { libc::unshare(libc::CLONE_NEWUSER) })?;
    // SAFETY: writes one byte from a live buffer to an fd we own.
    if unsafe { libc::write(sync.as_raw_fd(), b"u".as_ptr().cast(), 1) } != 1 {
        return Err(io::Error::last_os_error());
    }
    let mut byte = [0u8; 1];
    // SAFETY: reads one byte into a live one-byte buffer from an fd we own.
    match unsafe { libc::read(sync.as_raw_fd(), byte.as_mut_ptr().cast(), 1) } {
        1 => Ok(()),
        -1 => Err(io::Error::last_os_error()),
        _ => Err(io::Error::other("svmm did not map its ids")),
    }
}

/// Steps 1–5 of the module docs.
fn confine_self(
    setup: &BrokerSetup,
    channels: &[Channel],
    sync: Option<OwnedFd>,
    parent: i32,
) -> io::Result<()> {
    // 1. Die with svmm.
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) })?;
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } != parent {
        return Err(io::Error::other("svmm is already gone"));
    }
    // 2. Name, stdio, only the fds it was given.
    // SAFETY: prctl with a NUL-terminated literal name.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"svmm-broker".as_ptr(), 0, 0, 0) };
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    for target in [libc::STDIN_FILENO, libc::STDOUT_FILENO] {
        // SAFETY: dup2 between fd numbers; `null` is open.
        check(unsafe { libc::dup2(null.as_raw_fd(), target) })?;
    }
    drop(null);
    let mut keep: Vec<RawFd> = vec![0, 1, 2, setup.exe.as_raw_fd()];
    keep.extend(channels.iter().map(AsRawFd::as_raw_fd));
    keep.extend(sync.iter().map(AsRawFd::as_raw_fd));
    for device in &setup.devices {
        keep.extend(device.resources.iter().map(AsRawFd::as_raw_fd));
    }
    close_all_but(&mut keep)?;
    // 3. With subordinate ids: root of a user namespace of its own.
    if let Some(sync) = sync {
        enter_user_namespace(sync)?;
    }
    // 4. As root: its own ids, and only the capabilities that map a worker's ids.
    if let Some((uid, gid)) = setup.drop_to {
        drop_to(uid, gid)?;
    }
    // 5. The filter.
    seccompiler::apply_filter(&setup.seccomp).map_err(io::Error::other)?;
    Ok(())
}

/// Closes every fd that is not in `keep`.
fn close_all_but(keep: &mut [RawFd]) -> io::Result<()> {
    keep.sort_unstable();
    let mut next: u32 = 0;
    for &fd in keep.iter() {
        let fd = fd as u32;
        if fd > next {
            // SAFETY: close_range on our own fd table; nothing in this process uses fds it
            // was not given (the child of a fork owns copies of all of svmm's).
            check(unsafe { libc::close_range(next, fd - 1, 0) })?;
        }
        next = fd + 1;
    }
    // SAFETY: as above.
    check(unsafe { libc::close_range(next, !0, 0) })?;
    Ok(())
}

/// setgroups([]), gid, uid (keeping `CAP_SETUID` and `CAP_SETGID` across it), then only those
/// two capabilities in every set, bounding set included.
fn drop_to(uid: u32, gid: u32) -> io::Result<()> {
    let errno = io::Error::from_raw_os_error;
    // SAFETY: setgroups with an empty list reads no memory.
    check(unsafe { libc::setgroups(0, std::ptr::null()) })?;
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) })?;
    // SAFETY: setresgid/setresuid take plain integers.
    check(unsafe { libc::setresgid(gid, gid, gid) })?;
    // SAFETY: as above.
    check(unsafe { libc::setresuid(uid, uid, uid) })?;
    let keep = caps::mask(&[CAP_SETUID, CAP_SETGID]);
    // CAP_SETPCAP is still permitted right after setresuid (KEEPCAPS); raise it to drop the
    // bounding set, then keep only the two.
    let sets = caps::get().map_err(errno)?;
    caps::set(CapSets {
        effective: sets.permitted,
        permitted: sets.permitted,
        inheritable: 0,
    })
    .map_err(errno)?;
    for cap in 0..64u32 {
        if keep & (1 << cap) != 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            break; // EINVAL past the last capability the kernel knows.
        }
    }
    caps::set(CapSets {
        effective: keep,
        permitted: keep,
        inheritable: 0,
    })
    .map_err(errno)?;
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) })?;
    // Leaving uid 0 made the process non-dumpable, which makes the /proc files of the workers
    // it forks root's: it could not write their uid_map and gid_map. Nothing else of svmm runs
    // as this uid, and svmm's filter has no ptrace.
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) })?;
    Ok(())
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// One device while the broker serves it.
struct Slot {
    declared: Declared,
    channel: Channel,
    worker: Option<Worker>,
    /// The worker's exec, until it happened or failed.
    exec: Option<Exec>,
}

/// Serves the devices' channels until svmm hangs up; returns the broker's exit status.
pub fn serve(setup: BrokerSetup, channels: Vec<Channel>) -> i32 {
    let exe = Arc::new(setup.exe);
    let mut slots: Vec<Slot> = setup
        .devices
        .into_iter()
        .zip(channels)
        .map(|(declared, channel)| Slot {
            declared,
            channel,
            worker: None,
            exec: None,
        })
        .collect();
    loop {
        let mut pfds: Vec<libc::pollfd> = Vec::with_capacity(3 * slots.len());
        for slot in &slots {
            pfds.push(pollfd(slot.channel.as_raw_fd()));
            let pidfd = slot.worker.as_ref().map_or(-1, |w| w.pidfd().as_raw_fd());
            pfds.push(pollfd(pidfd));
            let status = slot.exec.as_ref().map_or(-1, |e| e.status_fd().as_raw_fd());
            pfds.push(pollfd(status));
        }
        // SAFETY: `pfds` is a live array of pollfds of open fds (or -1, ignored).
        let rc = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, -1) };
        if rc < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            eprintln!("svmm broker: poll failed: {}", io::Error::last_os_error());
            return 1;
        }
        for (i, slot) in slots.iter_mut().enumerate() {
            // The exec's outcome first: a worker that failed before it is reported as such
            // before its end.
            if pfds[3 * i + 2].revents != 0 || pfds[3 * i + 1].revents != 0 {
                exec_done(slot);
            }
            if pfds[3 * i + 1].revents != 0 {
                reap(slot);
            }
            if pfds[3 * i].revents != 0 && !handle(slot, &exe) {
                // svmm hung up: every worker goes with it.
                for slot in &mut slots {
                    if let Some(worker) = slot.worker.as_mut() {
                        let _ = worker.kill();
                    }
                }
                return 0;
            }
        }
    }
}

fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// The device's worker exec'd, or reported the stage it failed at (then it exits): tell svmm
/// of a failure (`Failed`; its `Exited` follows once it is reaped).
fn exec_done(slot: &mut Slot) {
    let Some(exec) = slot.exec.take() else {
        return;
    };
    let pid = exec.pid();
    let Err(e) = exec.wait() else {
        return;
    };
    let mut reason: String = format!("spawn failed: {}", one_line(&e))
        .chars()
        .take(ipc::broker::MAX_REASON)
        .collect();
    reason.retain(|c| !c.is_control());
    eprintln!("svmm broker: {}: {reason}", slot.declared.name);
    let reply = BrokerReply::Failed {
        device: slot.declared.index,
        pid,
        reason,
    };
    let _ = slot.channel.send(&reply, &[]);
}

/// An error and its causes on one line (`a: b: c`).
fn one_line(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

/// The device's worker ended: reap it and tell svmm how.
fn reap(slot: &mut Slot) {
    let Some(mut worker) = slot.worker.take() else {
        return;
    };
    let status = match worker.wait() {
        Ok(ExitCause::Exited(code)) => WorkerStatus::Exited(code),
        Ok(ExitCause::Killed { signal, .. }) => WorkerStatus::Killed(signal),
        Err(e) => {
            eprintln!(
                "svmm broker: {}: cannot reap its worker: {e}",
                slot.declared.name
            );
            WorkerStatus::Killed(0)
        }
    };
    let reply = BrokerReply::Exited {
        device: slot.declared.index,
        pid: worker.pid(),
        status,
    };
    let _ = slot.channel.send(&reply, &[]);
}

/// Handles one request on the device's channel; false when svmm hung up.
fn handle(slot: &mut Slot, exe: &Arc<OwnedFd>) -> bool {
    let index = slot.declared.index;
    let (request, fds) = match slot.channel.recv::<BrokerRequest>() {
        Ok(received) => received,
        Err(ChannelError::PeerGone) => return false,
        Err(ChannelError::WouldBlock) => return true,
        Err(e) => {
            refuse(slot, index, &format!("malformed request ({e})"));
            return true;
        }
    };
    match request {
        BrokerRequest::Start { device } | BrokerRequest::Stop { device } if device != index => {
            refuse(
                slot,
                device,
                &format!("device {device} is not this channel's device"),
            );
        }
        BrokerRequest::Start { .. } if slot.worker.is_some() => {
            refuse(slot, index, "its worker is running (Stop it first)");
        }
        BrokerRequest::Start { .. }
            if fds.len() != slot.declared.guest_fds + slot.declared.trailing_fds =>
        {
            let want = slot.declared.guest_fds + slot.declared.trailing_fds;
            refuse(
                slot,
                index,
                &format!("{} fds with Start, want {want}", fds.len()),
            );
        }
        BrokerRequest::Start { .. } => match start(&slot.declared, exe, fds) {
            Ok((worker, exec, vmm_end, stderr)) => {
                let reply = BrokerReply::Started {
                    device: index,
                    pid: worker.pid(),
                };
                let pidfd = worker.pidfd().try_clone_to_owned();
                slot.worker = Some(worker);
                slot.exec = Some(exec);
                match pidfd {
                    Ok(pidfd) => {
                        let fds = [
                            vmm_end.as_fd(),
                            vmm_end.as_fd(),
                            pidfd.as_fd(),
                            stderr.as_fd(),
                        ];
                        let _ = slot.channel.send(&reply, &fds);
                    }
                    Err(e) => refuse(slot, index, &format!("cannot pass the pidfd: {e}")),
                }
            }
            Err(e) => refuse(slot, index, &format!("spawn failed: {e}")),
        },
        BrokerRequest::Stop { .. } => {
            // Exited follows once the worker is reaped. No worker: it ended meanwhile (its
            // Exited is on its way or read), nothing to do.
            if let Some(worker) = slot.worker.as_ref() {
                if let Err(e) = worker.kill() {
                    refuse(slot, index, &format!("cannot kill its worker: {e}"));
                }
            }
        }
    }
    true
}

/// Logs the refusal on the broker's stderr (svmm's) and answers it.
fn refuse(slot: &Slot, device: u32, reason: &str) {
    let mut reason: String = reason.chars().take(ipc::broker::MAX_REASON).collect();
    reason.retain(|c| !c.is_control());
    eprintln!(
        "svmm broker: refused a request on {}'s channel: {reason}",
        slot.declared.name
    );
    let _ = slot
        .channel
        .send(&BrokerReply::Refused { device, reason }, &[]);
}

/// Spawns `declared`'s worker with svmm's `guest` fds, a fresh control channel, a fresh stop
/// eventfd, fresh duplicates of its host resources, then svmm's trailing fds, and a fresh
/// stderr pipe; returns the worker (released, its exec still to come), svmm's end of the
/// channel and the pipe's read end.
fn start(
    declared: &Declared,
    exe: &Arc<OwnedFd>,
    mut guest: Vec<OwnedFd>,
) -> io::Result<(Worker, Exec, Channel, OwnedFd)> {
    let trailing = guest.split_off(declared.guest_fds);
    let (vmm_end, worker_end) = Channel::pair().map_err(io::Error::other)?;
    // svmm's end is non-blocking from the start (O_NONBLOCK belongs to the socket's open file
    // description, so it travels with the fd): svmm's filter has no call to set it.
    // SAFETY: fcntl on a socket this function owns, with integer arguments.
    check(unsafe { libc::fcntl(vmm_end.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) })?;
    let (read, write) = pipe()?;
    let mut fds: Vec<OwnedFd> = Vec::with_capacity(1 + guest.len() + declared.resources.len());
    fds.push(worker_end.into());
    fds.extend(guest);
    if let Some(at) = declared.fresh_eventfd_at {
        // 1 +: after the control socket.
        fds.insert((1 + at).min(fds.len()), eventfd()?);
    }
    for resource in &declared.resources {
        fds.push(resource.try_clone()?);
    }
    fds.extend(trailing);
    let (worker, exec) = spawn::start(&WorkerSpec {
        exe: exe.clone(),
        args: declared.argv.clone(),
        fds,
        ids: declared.ids,
        namespaces: true,
        stderr: Stderr::Fd(write),
    })
    .map_err(io::Error::other)?;
    Ok((worker, exec, vmm_end, read))
}

/// A fresh non-blocking, close-on-exec eventfd.
fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes plain integers and returns a new fd or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A close-on-exec pipe (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1; 2];
    // SAFETY: pipe2 writes two fds into a live two-element array.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}
