//! Whether a device worker is confined as DESIGN.md says, read from `/proc` — never taken from
//! what svmm or the worker say about themselves — for a worker of any kind: filter mode
//! seccomp, no_new_privs, no capabilities, ids that are not root (and not svmm's, as root), its
//! own namespaces, an empty root directory, and exactly the fds its kind inherits. Also how to
//! run svmm as the unprivileged test user.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;

use crate::procfs::{self, WORKER_NAMESPACES};
use crate::{paths, TestVm};

/// The unprivileged account tests/run.sh creates (member of the `kvm` group).
pub const TEST_USER: &str = "svmm-test";

/// Who runs svmm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Identity {
    /// root: each worker gets host ids of its own.
    Root,
    /// An ordinary user: workers keep its ids inside their user namespace.
    Unprivileged,
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The fds a worker holds beyond those of every worker (control socket, guest RAM and status
/// page memfds, irqfd and stop eventfd, its epoll instance): one eventfd per queue, and its
/// kind's own, each by what `/proc/PID/fd` links to (`/dev/urandom`, an image's path,
/// `anon_inode:[io_uring]`) and how many.
#[derive(Clone, Debug)]
pub struct KindFds {
    /// Queue ioeventfds.
    pub queues: usize,
    /// The kind's own: link target and count.
    pub own: Vec<(String, usize)>,
    /// The resource limits the worker must have (soft = hard), as `/proc/PID/limits` shows
    /// them.
    pub limits: Limits,
}

/// A worker's resource limits, by the formulas in ARCHITECTURE.md (never read back from svmm).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// `Max processes` (`RLIMIT_NPROC`).
    pub nproc: u64,
    /// `Max open files`: 3 + the inherited fds + 16.
    pub nofile: u64,
    /// `Max file size` in bytes (0 unless the kind writes an image).
    pub fsize: u64,
    /// `Max address space`: guest RAM + 64 MiB + what the kind may hold.
    pub address_space: u64,
}

impl Limits {
    /// The limits of a worker with `fds` inherited fds (3, 4, ...) in a VM with `guest_ram`
    /// bytes of RAM, of a kind that needs none beyond the default.
    pub fn default_for(fds: u64, guest_ram: u64) -> Limits {
        Limits {
            nproc: 0,
            nofile: 3 + fds + 16,
            fsize: 0,
            address_space: guest_ram + (64 << 20),
        }
    }
}

/// Everything that is wrong with the confinement of `worker` (a child of svmm `svmm`, which
/// runs as `identity`), holding the fds `kind` says; empty when it is confined.
pub fn problems(
    worker: u32,
    svmm: u32,
    identity: Identity,
    kind: &KindFds,
) -> io::Result<Vec<String>> {
    let status = procfs::status(worker)?;
    let svmm_status = procfs::status(svmm)?;
    let field = |k: &str| status.get(k).cloned().unwrap_or_default();
    let mut problems = Vec::new();
    if field("Seccomp") != "2" {
        problems.push(format!(
            "Seccomp: {} (want 2, filter mode)",
            field("Seccomp")
        ));
    }
    // Filter mode alone may be log mode: the filter the worker installed traps.
    let cmdline = procfs::cmdline(worker)?;
    if !cmdline.contains(" --seccomp=trap ") {
        problems.push(format!(
            "the worker's filter is not in trap mode: {cmdline}"
        ));
    }
    problems.extend(limit_problems(worker, &kind.limits)?);
    if field("NoNewPrivs") != "1" {
        problems.push(format!("NoNewPrivs: {}", field("NoNewPrivs")));
    }
    for cap in ["CapEff", "CapPrm", "CapInh", "CapAmb", "CapBnd"] {
        if !field(cap).trim_start_matches('0').is_empty() {
            problems.push(format!("{cap}: {} (want all zero)", field(cap)));
        }
    }
    let uid = procfs::real_id(&status, "Uid");
    let gid = procfs::real_id(&status, "Gid");
    let svmm_uid = procfs::real_id(&svmm_status, "Uid");
    if uid == Some(0) || gid == Some(0) || uid.is_none() {
        problems.push(format!("worker uid/gid {uid:?}/{gid:?} (want not 0)"));
    }
    if identity == Identity::Root && uid == svmm_uid {
        problems.push(format!("worker uid {uid:?} is svmm's"));
    }
    if identity == Identity::Unprivileged {
        match inside_uid(worker, uid) {
            Some(0) | None => problems.push(format!(
                "worker's uid inside its user namespace is {:?} (want a mapped id, not 0)",
                inside_uid(worker, uid)
            )),
            Some(_) => {}
        }
    }
    for ns in WORKER_NAMESPACES {
        let (w, v) = (procfs::namespace(worker, ns)?, procfs::namespace(svmm, ns)?);
        if w == v {
            problems.push(format!("{ns} namespace shared with svmm ({w})"));
        }
    }
    let root = procfs::root_entries(worker)?;
    if !root.is_empty() {
        problems.push(format!("root directory not empty: {root:?}"));
    }
    let fds = procfs::fds(worker)?;
    problems.extend(unexpected_fds(&fds, &procfs::fds(svmm)?, kind));
    Ok(problems)
}

/// Where `/proc/PID/limits` disagrees with `want` (soft and hard limit alike), and a core size
/// that is not 0.
fn limit_problems(pid: u32, want: &Limits) -> io::Result<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let mut problems = Vec::new();
    for (name, value) in [
        ("Max processes", want.nproc),
        ("Max core file size", 0),
        ("Max open files", want.nofile),
        ("Max file size", want.fsize),
        ("Max address space", want.address_space),
    ] {
        let got: Vec<&str> = text
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l[name.len()..].split_whitespace().take(2).collect())
            .unwrap_or_default();
        let value = value.to_string();
        if got != [value.as_str(), value.as_str()] {
            problems.push(format!("{name}: {got:?} (want {value} soft and hard)"));
        }
    }
    Ok(problems)
}

/// The worker's real uid as seen inside its own user namespace, from its `uid_map`.
fn inside_uid(pid: u32, outside: Option<u32>) -> Option<u32> {
    let outside = outside?;
    let map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).ok()?;
    map.lines().find_map(|line| {
        let f: Vec<u32> = line
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        let [inside, start, count] = f[..] else {
            return None;
        };
        (outside >= start && outside - start < count).then(|| inside + (outside - start))
    })
}

/// The fds that should not be there, or are missing: the control socket, guest RAM and the
/// interrupt status page (memfds), the irqfd, the stop eventfd and the queue ioeventfds
/// (eventfds; `worker::fd_numbers`), the epoll instance of the worker's own event loop (made
/// before its filter; it reaches nothing), and the kind's own. Fds 0–2 may only be /dev/null or
/// svmm's own stderr (so the worker can report a fatal error in one line).
fn unexpected_fds(
    fds: &BTreeMap<u32, String>,
    svmm_fds: &BTreeMap<u32, String>,
    kind: &KindFds,
) -> Vec<String> {
    let mut want: BTreeMap<String, usize> = [
        ("socket".to_string(), 1),
        ("memfd".to_string(), 2),
        ("eventfd".to_string(), 2 + kind.queues),
        ("eventpoll".to_string(), 1),
    ]
    .into();
    for (target, count) in &kind.own {
        *want.entry(target.clone()).or_default() += count;
    }
    let mut problems = Vec::new();
    for (fd, target) in fds {
        if *fd <= 1 {
            if target != "/dev/null" {
                problems.push(format!("fd {fd} -> {target} (want /dev/null)"));
            }
            continue;
        }
        if *fd == 2 {
            if Some(target) != svmm_fds.get(&2) && target != "/dev/null" {
                problems.push(format!(
                    "fd 2 -> {target} (want svmm's stderr, {:?})",
                    svmm_fds.get(&2)
                ));
            }
            continue;
        }
        let sort = if target.starts_with("socket:") {
            "socket"
        } else if target.starts_with("/memfd:") {
            "memfd"
        } else if target == "anon_inode:[eventfd]" {
            "eventfd"
        } else if target == "anon_inode:[eventpoll]" {
            "eventpoll"
        } else {
            target.as_str()
        };
        match want.get_mut(sort) {
            Some(n) if *n > 0 => *n -= 1,
            _ => problems.push(format!("unexpected fd {fd} -> {target}")),
        }
    }
    for (sort, missing) in want {
        if missing > 0 {
            problems.push(format!("{missing} {sort} fd(s) missing"));
        }
    }
    problems
}

/// `vm` run as [`TEST_USER`]. The clone may sit where that user cannot read (e.g. under
/// /root), so svmm and the guest run from world-readable copies in `dir`. `setpriv`
/// (util-linux) switches user and the `sh -c` drops the harness's own svmm path and execs the
/// copy: the pid the harness sees is still svmm's own.
pub fn unprivileged(vm: TestVm, dir: &paths::TempDir) -> Result<TestVm, String> {
    use std::os::unix::fs::PermissionsExt;
    let copy = |from: &std::path::Path, name: &str| -> Result<PathBuf, String> {
        let to = dir.path().join(name);
        std::fs::copy(from, &to).map_err(|e| format!("copy {}: {e}", from.display()))?;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("chmod {}: {e}", to.display()))?;
        Ok(to)
    };
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod {}: {e}", dir.path().display()))?;
    let svmm = copy(&crate::binary::svmm_bin(), "svmm")?;
    let kernel = copy(&paths::artefact("testguest.elf"), "testguest.elf")?;
    let mut wrapper = setpriv()?;
    wrapper.extend([
        "sh".to_string(),
        "-c".to_string(),
        format!("shift; exec {} \"$@\"", svmm.display()),
        "sh".to_string(),
    ]);
    Ok(vm.kernel(kernel).wrapper(wrapper))
}

/// `setpriv` arguments that switch to the test user (and its groups, kvm among them).
fn setpriv() -> Result<Vec<String>, String> {
    let id = |flag: &str| -> Result<String, String> {
        let out = std::process::Command::new("id")
            .args([flag, TEST_USER])
            .output()
            .map_err(|e| format!("id: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "user {TEST_USER} does not exist: tests/run.sh creates it (useradd, group kvm)"
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    Ok(vec![
        "setpriv".into(),
        format!("--reuid={}", id("-u")?),
        format!("--regid={}", id("-g")?),
        "--init-groups".into(),
        "--inh-caps=-all".into(),
        "--".into(),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fds_are_counted_by_sort_and_kind() {
        let fds: BTreeMap<u32, String> = [
            (0, "/dev/null"),
            (1, "/dev/null"),
            (2, "/dev/pts/3"),
            (3, "socket:[1]"),
            (4, "/memfd:svmm-guest-ram (deleted)"),
            (5, "/memfd:svmm-irq-status (deleted)"),
            (6, "anon_inode:[eventfd]"),
            (7, "anon_inode:[eventfd]"),
            (8, "anon_inode:[eventfd]"),
            (9, "/dev/urandom"),
            (10, "anon_inode:[eventpoll]"),
        ]
        .into_iter()
        .map(|(n, t)| (n, t.to_string()))
        .collect();
        let svmm: BTreeMap<u32, String> = [(2, "/dev/pts/3".to_string())].into();
        let rng = KindFds {
            queues: 1,
            own: vec![("/dev/urandom".into(), 1)],
            limits: Limits::default_for(7, 128 << 20),
        };
        assert!(unexpected_fds(&fds, &svmm, &rng).is_empty());
        let two_queues = KindFds {
            queues: 2,
            ..rng.clone()
        };
        assert_eq!(
            unexpected_fds(&fds, &svmm, &two_queues),
            ["1 eventfd fd(s) missing"]
        );
        let nothing_own = KindFds {
            queues: 1,
            own: Vec::new(),
            limits: rng.limits,
        };
        assert_eq!(
            unexpected_fds(&fds, &svmm, &nothing_own),
            ["unexpected fd 9 -> /dev/urandom"]
        );
    }
}
