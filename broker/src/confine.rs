//! The worker's half of the sandbox: what the exec'd worker does to itself, first thing, before
//! it reads one byte of guest-controlled data.
//!
//! [`confine`] is one straight sequence, in DESIGN.md's order; each step has its own
//! [`ConfineError`] variant and its own [`Step`] number:
//!
//! | # | step | what |
//! |---|------|------|
//! | 1 | root | `/` private, a tmpfs on `/tmp`, `pivot_root(".", ".")`, old root detached, new root read-only |
//! | 2 | ids | `setgroups(0)` (when allowed), `setresgid`, `setresuid` |
//! | 3 | capabilities | securebits locked, ambient cleared, bounding set dropped, all sets empty |
//! | 4 | no_new_privs | `PR_SET_NO_NEW_PRIVS` |
//! | 5 | death signal | `PR_SET_PDEATHSIG(SIGKILL)`, then the lifeline check |
//! | 6 | rlimits | `NPROC`, `CORE` 0, small `NOFILE`, `FSIZE`, `AS`; `SIGXFSZ` ignored, so a write past `FSIZE` fails with `EFBIG` instead of killing the worker |
//! | 7 | fds | `close_range(3 + n, ~0)`, then every fd below is checked to be open |
//! | 8 | Landlock | no filesystem rights (except the configured directories), no TCP, scoped |
//! | 9 | seccomp | the caller's last set-up ([`confine_with`]), then the device kind's filter |
//!
//! [`confine_with`] runs a hook right before the filter, with every other layer in place: what
//! the worker must still do that its filter forbids — install its SIGSYS reporter
//! (`sigaltstack`, `rt_sigaction`), map its memory (`fstat`, `fcntl(F_DUPFD)`). Fds the hook
//! opens survive: step 7 is behind it.
//!
//! Precondition: the process is single-threaded (Landlock and seccomp apply per thread); it is
//! checked first, while `/proc` is still visible.
//!
//! **Has the VMM already died?** In its own pid namespace the worker's `getppid()` is 0 from
//! the start, so it cannot tell a reparenting. Instead: the pre-exec child armed the death
//! signal and then checked that the VMM still held the "go" socket (see `preexec`); the death
//! signal survives our exec (no set-uid, no file capabilities) and is re-armed in step 5 (a
//! credential change in step 2 or 3 may clear it). Step 5 then polls the lifeline fd — the
//! control socket, whose peer only the VMM holds: a hang-up means the VMM died before the
//! signal was re-armed, and confine fails instead of leaving an orphan.

use crate::caps::{self, CapSets};
use crate::config::ConfineConfig;
use landlock::{
    Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, PathBeneath, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};
use std::ffi::CStr;
use std::fmt::Write as _;
use std::io;
use std::io::Write as _;
use std::os::fd::BorrowedFd;

/// The Landlock ABI whose rights are required: filesystem (incl. truncate and device ioctls),
/// TCP bind/connect, and the abstract-socket and signal scopes (Linux 6.12).
pub const REQUIRED_LANDLOCK_ABI: ABI = ABI::V6;
/// The newest ABI the landlock crate knows; its extra rights are handled where the kernel has
/// them.
const NEWEST_LANDLOCK_ABI: ABI = ABI::V10;

/// The steps of [`confine`], numbered in execution order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Step {
    /// The process must be single-threaded before anything starts.
    Precondition = 0,
    /// Empty read-only root.
    Root = 1,
    /// Unprivileged ids, no supplementary groups.
    Ids = 2,
    /// No capabilities.
    Capabilities = 3,
    /// `PR_SET_NO_NEW_PRIVS`.
    NoNewPrivs = 4,
    /// `PR_SET_PDEATHSIG(SIGKILL)` and the VMM-alive check.
    DeathSignal = 5,
    /// Resource limits.
    Rlimits = 6,
    /// Only the listed fds.
    Fds = 7,
    /// Landlock.
    Landlock = 8,
    /// Seccomp.
    Seccomp = 9,
}

/// Which step of [`confine`] failed, and why. One variant per step.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// The process had more than one thread.
    #[error("precondition: {threads} threads, confine needs a single-threaded process")]
    NotSingleThreaded {
        /// Threads found in /proc/self/task (0 if it could not be read).
        threads: usize,
    },
    /// Step 1.
    #[error("step 1 (empty root): {what}")]
    Root {
        /// The operation that failed.
        what: &'static str,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// Step 2.
    #[error("step 2 (ids): {what}")]
    Ids {
        /// The operation that failed.
        what: &'static str,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// Step 3.
    #[error("step 3 (capabilities): {what}")]
    Capabilities {
        /// The operation that failed.
        what: &'static str,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// Step 4.
    #[error("step 4 (no_new_privs)")]
    NoNewPrivs(#[source] io::Error),
    /// Step 5.
    #[error("step 5 (death signal): {what}")]
    DeathSignal {
        /// The operation that failed.
        what: &'static str,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// Step 6.
    #[error("step 6 (rlimits): {what}")]
    Rlimits {
        /// The limit that could not be set.
        what: &'static str,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// Step 7.
    #[error("step 7 (fds): {what}")]
    Fds {
        /// The operation that failed.
        what: &'static str,
        /// The kernel's answer or the offending fd.
        #[source]
        source: io::Error,
    },
    /// Step 8. Without `allow_missing_landlock` a kernel lacking Landlock ABI 6 ends here.
    #[error("step 8 (Landlock): {what}")]
    Landlock {
        /// The operation that failed.
        what: &'static str,
        /// The landlock crate's answer.
        #[source]
        source: landlock::RulesetError,
    },
    /// Step 9, the caller's hook before the filter ([`confine_with`]).
    #[error("step 9 (seccomp): set-up before the filter")]
    BeforeSeccomp(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Step 9.
    #[error("step 9 (seccomp)")]
    Seccomp(#[source] seccompiler::Error),
}

impl ConfineError {
    /// The step that failed (e.g. for a worker's exit status).
    pub fn step(&self) -> Step {
        match self {
            ConfineError::NotSingleThreaded { .. } => Step::Precondition,
            ConfineError::Root { .. } => Step::Root,
            ConfineError::Ids { .. } => Step::Ids,
            ConfineError::Capabilities { .. } => Step::Capabilities,
            ConfineError::NoNewPrivs(_) => Step::NoNewPrivs,
            ConfineError::DeathSignal { .. } => Step::DeathSignal,
            ConfineError::Rlimits { .. } => Step::Rlimits,
            ConfineError::Fds { .. } => Step::Fds,
            ConfineError::Landlock { .. } => Step::Landlock,
            ConfineError::BeforeSeccomp(_) | ConfineError::Seccomp(_) => Step::Seccomp,
        }
    }
}

/// Confines the calling (exec'd worker) process, in DESIGN.md's order. On success the process
/// has an empty read-only root, its own ids, no capabilities, no_new_privs, a death signal,
/// tight rlimits, only the listed fds, Landlock and its seccomp filter.
pub fn confine(cfg: &ConfineConfig) -> Result<(), ConfineError> {
    confine_with(cfg, || Ok(()))
}

/// [`confine`], with `before_seccomp` run right before the seccomp filter is installed (after
/// Landlock): the worker's last set-up that its filter would forbid. Its error ends confinement
/// as [`ConfineError::BeforeSeccomp`].
pub fn confine_with<F>(cfg: &ConfineConfig, before_seccomp: F) -> Result<(), ConfineError>
where
    F: FnOnce() -> Result<(), Box<dyn std::error::Error + Send + Sync>>,
{
    // 0. Landlock and seccomp bind the calling thread only: there must be no other.
    single_threaded()?;
    // 1. Empty, read-only root (only in our own mount namespace).
    if cfg.namespaces {
        empty_root()?;
    }
    // 2. The worker's ids; no supplementary groups where the namespace allows dropping them.
    set_ids(cfg)?;
    // 3. No capabilities, in any set, and no way back.
    drop_capabilities()?;
    // 4. No privilege gain through exec (seccomp and Landlock also require it).
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(ConfineError::NoNewPrivs(io::Error::last_os_error()));
    }
    // 5. Die with the VMM — and fail if it is already gone.
    death_signal(cfg)?;
    // 6. No processes or threads, no core dumps, a small fd table, no file growth.
    set_rlimits(cfg)?;
    // 7. Only stdio and the listed fds.
    only_listed_fds(cfg)?;
    // 8. No filesystem (beyond the configured directories), no TCP, no signals outside.
    landlock(cfg)?;
    // 9. The caller's last set-up, then the device's syscall filter, last: it may forbid
    //    everything above.
    before_seccomp().map_err(ConfineError::BeforeSeccomp)?;
    seccompiler::apply_filter(&cfg.seccomp).map_err(ConfineError::Seccomp)
}

/// Precondition: exactly one entry in /proc/self/task.
fn single_threaded() -> Result<(), ConfineError> {
    let threads = std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count());
    if threads != 1 {
        return Err(ConfineError::NotSingleThreaded { threads });
    }
    Ok(())
}

/// `Err(last_os_error)` when a libc call returned -1.
fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `mount(2)` with optional source/fstype/data.
fn mount(
    src: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> io::Result<()> {
    let ptr = |s: Option<&CStr>| s.map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is either null or a NUL-terminated string that outlives the call.
    check(unsafe {
        libc::mount(
            ptr(src),
            target.as_ptr(),
            ptr(fstype),
            flags,
            ptr(data).cast(),
        )
    })
}

/// Step 1: an empty read-only tmpfs becomes `/`; the host's tree is detached.
fn empty_root() -> Result<(), ConfineError> {
    let err = |what| move |source| ConfineError::Root { what, source };
    // Nothing we do below may propagate back to the VMM's mount namespace.
    mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE, None)
        .map_err(err("make / recursively private"))?;
    // A tiny tmpfs (/tmp exists everywhere; in this private namespace covering it is harmless).
    let hardening = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount(
        Some(c"svmm-worker"),
        c"/tmp",
        Some(c"tmpfs"),
        hardening,
        Some(c"size=4k,nr_inodes=2,mode=0555"),
    )
    .map_err(err("mount a tmpfs on /tmp"))?;
    // SAFETY: chdir to a NUL-terminated path.
    check(unsafe { libc::chdir(c"/tmp".as_ptr()) }).map_err(err("chdir /tmp"))?;
    // pivot_root(".", "."): the old root ends up stacked on top of the new one, with no
    // directory needed for it (pivot_root(2), NOTES); it is then detached below.
    // SAFETY: pivot_root with two NUL-terminated paths.
    let rc = unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) };
    check(rc as libc::c_int).map_err(err("pivot_root"))?;
    // SAFETY: umount2 of a NUL-terminated path.
    check(unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) })
        .map_err(err("detach the old root"))?;
    // SAFETY: chdir to a NUL-terminated path.
    check(unsafe { libc::chdir(c"/".as_ptr()) }).map_err(err("chdir /"))?;
    mount(
        None,
        c"/",
        None,
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | hardening,
        None,
    )
    .map_err(err("remount / read-only"))?;
    let entries = std::fs::read_dir("/")
        .map_err(err("list the new root"))?
        .count();
    if entries != 0 {
        let source = io::Error::other(format!("{entries} entries"));
        return Err(ConfineError::Root {
            what: "new root is not empty",
            source,
        });
    }
    Ok(())
}

/// Step 2: groups, gid, uid — in this order (after setresuid we could not change the others).
fn set_ids(cfg: &ConfineConfig) -> Result<(), ConfineError> {
    let err = |what| move |source| ConfineError::Ids { what, source };
    let ids = cfg.ids;
    if ids.drop_groups {
        // SAFETY: setgroups with an empty list reads no memory.
        check(unsafe { libc::setgroups(0, std::ptr::null()) }).map_err(err("setgroups(0)"))?;
    }
    // Changing uid away from 0 (a root VMM without namespaces) would clear the permitted set,
    // which step 3 still needs to empty the bounding set; step 3 clears KEEPCAPS again.
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) })
        .map_err(err("PR_SET_KEEPCAPS"))?;
    // SAFETY: setresgid/setresuid take plain integers.
    check(unsafe { libc::setresgid(ids.gid, ids.gid, ids.gid) }).map_err(err("setresgid"))?;
    // SAFETY: as above.
    check(unsafe { libc::setresuid(ids.uid, ids.uid, ids.uid) }).map_err(err("setresuid"))?;
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: getresuid writes three live locals.
    check(unsafe { libc::getresuid(&mut r, &mut e, &mut s) }).map_err(err("getresuid"))?;
    let (mut gr, mut ge, mut gs) = (0, 0, 0);
    // SAFETY: getresgid writes three live locals.
    check(unsafe { libc::getresgid(&mut gr, &mut ge, &mut gs) }).map_err(err("getresgid"))?;
    if [r, e, s] != [ids.uid; 3] || [gr, ge, gs] != [ids.gid; 3] {
        let source = io::Error::other(format!("uids {r}/{e}/{s}, gids {gr}/{ge}/{gs}"));
        return Err(ConfineError::Ids {
            what: "ids did not change",
            source,
        });
    }
    Ok(())
}

/// Securebits that keep a capability-less process capability-less, locked.
const SECUREBITS: libc::c_int = libc::SECBIT_NOROOT
    | libc::SECBIT_NOROOT_LOCKED
    | libc::SECBIT_NO_SETUID_FIXUP
    | libc::SECBIT_NO_SETUID_FIXUP_LOCKED
    | libc::SECBIT_KEEP_CAPS_LOCKED
    | libc::SECBIT_NO_CAP_AMBIENT_RAISE
    | libc::SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;

/// Step 3: lock the securebits, clear ambient, drop the bounding set, empty every set; verify.
fn drop_capabilities() -> Result<(), ConfineError> {
    let err = |what| move |source| ConfineError::Capabilities { what, source };
    let errno = |e| io::Error::from_raw_os_error(e);
    // Make CAP_SETPCAP (needed for the bounding set and securebits) effective if still permitted.
    let sets = caps::get().map_err(errno).map_err(err("capget"))?;
    caps::set(CapSets {
        effective: sets.permitted,
        permitted: sets.permitted,
        inheritable: 0,
    })
    .map_err(errno)
    .map_err(err("capset (raise permitted)"))?;
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_SECUREBITS, SECUREBITS, 0, 0, 0) })
        .map_err(err("lock securebits"))?;
    // SAFETY: prctl with integer arguments only.
    check(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    })
    .map_err(err("clear the ambient set"))?;
    // Drop every capability the kernel knows; EINVAL marks the first number past the last one.
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINVAL) && cap > 0 {
                break;
            }
            return Err(ConfineError::Capabilities {
                what: "drop the bounding set",
                source: e,
            });
        }
    }
    caps::set(CapSets::default())
        .map_err(errno)
        .map_err(err("capset (empty)"))?;
    // Verify: nothing in any set.
    let sets = caps::get().map_err(errno).map_err(err("capget"))?;
    // SAFETY: prctl with integer arguments only.
    let bset_sys_admin =
        unsafe { libc::prctl(libc::PR_CAPBSET_READ, caps::CAP_SYS_ADMIN, 0, 0, 0) };
    if sets != CapSets::default() || bset_sys_admin != 0 {
        let source = io::Error::other(format!("{sets:?}, CAP_SYS_ADMIN bound {bset_sys_admin}"));
        return Err(ConfineError::Capabilities {
            what: "capabilities remain",
            source,
        });
    }
    Ok(())
}

/// Step 5: re-arm the death signal, then make sure the VMM is still there.
fn death_signal(cfg: &ConfineConfig) -> Result<(), ConfineError> {
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) }).map_err(
        |source| ConfineError::DeathSignal {
            what: "PR_SET_PDEATHSIG",
            source,
        },
    )?;
    let Some(fd) = cfg.lifeline else {
        return Ok(());
    };
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: poll on one live pollfd with a zero timeout.
    check(unsafe { libc::poll(&mut pfd, 1, 0) }).map_err(|source| ConfineError::DeathSignal {
        what: "poll the lifeline",
        source,
    })?;
    let gone = libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR | libc::POLLNVAL;
    if pfd.revents & gone != 0 {
        return Err(ConfineError::DeathSignal {
            what: "the VMM is already gone (lifeline hung up)",
            source: io::Error::from(io::ErrorKind::BrokenPipe),
        });
    }
    Ok(())
}

/// Step 6: soft = hard for each limit.
fn set_rlimits(cfg: &ConfineConfig) -> Result<(), ConfineError> {
    let limits = &cfg.rlimits;
    let first_free = 3 + u64::from(cfg.fds);
    if limits.nofile < first_free {
        let source = io::Error::other(format!("{} < {first_free}", limits.nofile));
        return Err(ConfineError::Rlimits {
            what: "RLIMIT_NOFILE below the inherited fds",
            source,
        });
    }
    let mut list = vec![
        (libc::RLIMIT_NPROC, limits.nproc, "RLIMIT_NPROC"),
        (libc::RLIMIT_CORE, 0, "RLIMIT_CORE"),
        (libc::RLIMIT_NOFILE, limits.nofile, "RLIMIT_NOFILE"),
    ];
    if let Some(fsize) = limits.fsize {
        list.push((libc::RLIMIT_FSIZE, fsize, "RLIMIT_FSIZE"));
    }
    if let Some(bytes) = limits.address_space {
        list.push((libc::RLIMIT_AS, bytes, "RLIMIT_AS"));
    }
    for (resource, value, what) in list {
        let lim = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // SAFETY: setrlimit reads one live rlimit struct.
        check(unsafe { libc::setrlimit(resource, &lim) })
            .map_err(|source| ConfineError::Rlimits { what, source })?;
    }
    // A write past RLIMIT_FSIZE (a hostile blk worker's RWF_APPEND through its ring) then fails
    // with EFBIG instead of ending the worker with a signal nobody reports as a cause.
    // SAFETY: signal() with SIG_IGN installs no handler code.
    if unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) } == libc::SIG_ERR {
        return Err(ConfineError::Rlimits {
            what: "ignore SIGXFSZ",
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Step 7: close everything from 3 + n up (belt and braces: spawn already did), then check that
/// stdio and every listed fd is open. After `close_range` nothing above can be open, so this is
/// exactly "only the listed fds".
fn only_listed_fds(cfg: &ConfineConfig) -> Result<(), ConfineError> {
    let first_free = 3 + cfg.fds;
    // SAFETY: close_range on our own fd table; nothing in this process owns fds above the
    // inherited range (std opens none at startup, and confine runs first thing).
    check(unsafe { libc::close_range(first_free, !0, 0) }).map_err(|source| ConfineError::Fds {
        what: "close_range",
        source,
    })?;
    for fd in 0..first_free as libc::c_int {
        // SAFETY: F_GETFD on an fd number only queries the fd table.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            let source = io::Error::other(format!("fd {fd}: {}", io::Error::last_os_error()));
            return Err(ConfineError::Fds {
                what: "a listed fd is not open",
                source,
            });
        }
    }
    Ok(())
}

/// Step 8: handle every access right (required: ABI 6's, hard unless the user allowed going
/// without; newer ones best effort), grant only the configured directories.
fn landlock(cfg: &ConfineConfig) -> Result<(), ConfineError> {
    let err = |what| move |source| ConfineError::Landlock { what, source };
    let required = if cfg.allow_missing_landlock {
        CompatLevel::BestEffort
    } else {
        CompatLevel::HardRequirement
    };
    let missing = "this kernel lacks Landlock ABI 6 (set allow_missing_landlock to go without)";
    let ruleset = Ruleset::default()
        .set_compatibility(required)
        .handle_access(AccessFs::from_all(REQUIRED_LANDLOCK_ABI))
        .and_then(|r| r.handle_access(AccessNet::from_all(REQUIRED_LANDLOCK_ABI)))
        .and_then(|r| r.scope(Scope::from_all(REQUIRED_LANDLOCK_ABI)))
        .map_err(err(missing))?
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(NEWEST_LANDLOCK_ABI))
        .and_then(|r| r.handle_access(AccessNet::from_all(NEWEST_LANDLOCK_ABI)))
        .and_then(|r| r.scope(Scope::from_all(NEWEST_LANDLOCK_ABI)))
        .map_err(err("handle newer access rights"))?;
    let mut created = ruleset.create().map_err(err("create the ruleset"))?;
    for rule in &cfg.landlock_beneath {
        let access = beneath_rights(rule.writable);
        // SAFETY: the fd is an inherited one that step 7 checked to be open; it stays open
        // until after restrict_self (nothing closes fds in between).
        let dir = unsafe { BorrowedFd::borrow_raw(rule.fd) };
        created = created
            .add_rule(PathBeneath::new(dir, access))
            .map_err(err("add a directory rule"))?;
    }
    let status = created.restrict_self().map_err(err("restrict_self"))?;
    if status.ruleset == RulesetStatus::NotEnforced {
        // Only reachable with allow_missing_landlock (HardRequirement failed above otherwise).
        // Not eprintln: stderr may be unwritable (e.g. a file, with RLIMIT_FSIZE 0).
        let _ = writeln!(
            io::stderr(),
            "svmm worker: Landlock is not available; going on without it (allowed)"
        );
    }
    Ok(())
}

/// What a worker may do beneath a directory it was given: read files and list directories;
/// if writable also write, truncate, create regular files, directories and symlinks, remove
/// and rename (`Refer`). Never execute, never make device nodes, fifos or sockets, never
/// device ioctls — whatever the directory holds.
fn beneath_rights(writable: bool) -> BitFlags<AccessFs> {
    let read = AccessFs::ReadFile | AccessFs::ReadDir;
    if !writable {
        return read;
    }
    read | AccessFs::WriteFile
        | AccessFs::Truncate
        | AccessFs::MakeReg
        | AccessFs::MakeDir
        | AccessFs::MakeSym
        | AccessFs::RemoveFile
        | AccessFs::RemoveDir
        | AccessFs::Refer
}

/// What a worker confined with `cfg` can still do, one line per layer (for
/// `svmm --print-sandbox`; the seccomp rules themselves are described by seccomp-profiles).
pub fn describe(cfg: &ConfineConfig) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        let _ = writeln!(out, "{s}");
    };
    let ids = cfg.ids;
    if cfg.namespaces {
        line("namespaces: own user, pid (worker is PID 1), mount, net (loopback only, down), ipc, uts, cgroup, time".into());
        line("root: empty read-only tmpfs (pivot_root); no /proc, /dev or /sys".into());
    } else {
        line(
            "namespaces: none (allowed by the user): the host's pid, mount and network namespaces"
                .into(),
        );
        line("root: the host's (only Landlock restricts the filesystem)".into());
    }
    line(format!(
        "ids: uid {}, gid {} inside the worker's user namespace",
        ids.uid, ids.gid
    ));
    line(if ids.drop_groups {
        "supplementary groups: none".into()
    } else {
        "supplementary groups: the VMM's, unmapped (setgroups is denied to unprivileged user namespaces)".into()
    });
    line("capabilities: none (effective, permitted, inheritable, ambient, bounding); securebits noroot, no-setuid-fixup, no-ambient-raise, locked".into());
    line("no_new_privs: set".into());
    line(match cfg.lifeline {
        Some(fd) => {
            format!("parent death: SIGKILL; fails to start if the VMM is gone (lifeline fd {fd})")
        }
        None => "parent death: SIGKILL".into(),
    });
    let r = &cfg.rlimits;
    let nproc = if r.nproc == 0 {
        "0 (no processes, no threads)".to_string()
    } else {
        r.nproc.to_string()
    };
    let fsize = r.fsize.map_or("unchanged".to_string(), |v| v.to_string());
    let address_space = r
        .address_space
        .map_or("unchanged".to_string(), |v| format!("{} MiB", v >> 20));
    line(format!(
        "rlimits: NPROC {nproc}, CORE 0, NOFILE {}, FSIZE {fsize} (SIGXFSZ ignored: EFBIG), AS {address_space}",
        r.nofile
    ));
    let last = 2 + cfg.fds;
    line(match cfg.fds {
        0 => "fds: 0-2 (stdio: /dev/null, stderr possibly the VMM's)".into(),
        _ => format!("fds: 0-2 (stdio: /dev/null, stderr possibly the VMM's), 3-{last} (inherited, listed by the device)"),
    });
    let mut rules = String::new();
    for rule in &cfg.landlock_beneath {
        let kind = if rule.writable {
            "read, write, create and remove files, directories and symlinks (no execute, device nodes, fifos or sockets)"
        } else {
            "read files and list directories (no execute)"
        };
        let _ = write!(rules, "; {kind} beneath fd {}", rule.fd);
    }
    if rules.is_empty() {
        rules.push_str("; no filesystem access at all");
    }
    let missing = if cfg.allow_missing_landlock {
        " (may be missing: allowed by the user)"
    } else {
        ""
    };
    line(format!(
        "landlock: every filesystem right handled, TCP bind/connect denied, abstract sockets and signals scoped{rules}{missing}"
    ));
    line(format!(
        "seccomp: the device's filter ({} BPF instructions)",
        cfg.seccomp.len()
    ));
    out
}

/// The running kernel's Landlock ABI version (0 if Landlock is missing or disabled), so the VMM
/// can say in one line, before spawning anything, that a layer is missing.
pub fn landlock_abi_version() -> i32 {
    // SAFETY: landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION) reads no memory
    // and returns the ABI version (or -1).
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32, // LANDLOCK_CREATE_RULESET_VERSION
        )
    };
    v.max(0) as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spawn::IdChoice;

    #[test]
    fn describe_names_every_layer() {
        let cfg = ConfineConfig::new(IdChoice::Unprivileged.worker_ids(), 2, Vec::new());
        let text = describe(&cfg);
        for needle in [
            "PID 1",
            "empty read-only",
            "uid 1000",
            "capabilities: none",
            "no_new_privs",
            "SIGKILL",
            "NPROC 0",
            "NOFILE 21",
            "3-4",
            "no filesystem access",
            "seccomp",
        ] {
            assert!(text.contains(needle), "{needle:?} missing in:\n{text}");
        }
    }

    #[test]
    fn errors_know_their_step() {
        let e = ConfineError::NoNewPrivs(io::Error::from_raw_os_error(libc::EPERM));
        assert_eq!(e.step(), Step::NoNewPrivs);
        assert_eq!(e.step() as u8, 4);
        assert!(e.to_string().starts_with("step 4"));
        let hook = ConfineError::BeforeSeccomp("mapping failed".into());
        assert_eq!(hook.step(), Step::Seccomp);
        assert!(hook.to_string().starts_with("step 9"));
    }

    /// The version agrees with what the kernel says elsewhere: a kernel whose active LSMs
    /// (`/sys/kernel/security/lsm`, or the boot command line's `lsm=`) include Landlock has ABI
    /// 1 or later, one without it 0; and a ruleset of the reported ABI's rights can be made.
    #[test]
    fn this_kernel_reports_its_landlock_abi() {
        let version = landlock_abi_version();
        let lsms = std::fs::read_to_string("/sys/kernel/security/lsm").ok();
        match lsms {
            Some(list) if list.split(',').any(|l| l.trim() == "landlock") => {
                assert!(
                    version >= 1,
                    "Landlock is active ({list}) but ABI {version}"
                )
            }
            Some(list) => assert_eq!(version, 0, "Landlock is not in {list}"),
            None => {}
        }
        if version >= REQUIRED_LANDLOCK_ABI as i32 {
            let created = Ruleset::default()
                .set_compatibility(CompatLevel::HardRequirement)
                .handle_access(AccessFs::from_all(REQUIRED_LANDLOCK_ABI))
                .and_then(|r| r.create());
            assert!(created.is_ok(), "ABI {version} reported, ruleset refused");
        }
    }
}
