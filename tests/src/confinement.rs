//! Whether a device worker is confined as DESIGN.md says, read from `/proc` — never taken from
//! what svmm or the worker say about themselves — for a worker of any kind: two seccomp filters
//! (the broker's, inherited, and its own) in filter mode and trap mode on its command line
//! (filter mode alone is also log mode),
//! no_new_privs, no capabilities, every id (real, effective, saved, file system) the
//! same and not root (and not svmm's, as root), no supplementary groups (as root; an
//! unprivileged user namespace cannot drop them), its own namespaces, an empty root directory,
//! its rlimits (`/proc/PID/limits`, soft and hard) and exactly its fds (0 and 1 `/dev/null`, 2
//! a pipe whose other end svmm holds — never svmm's own stderr, which may be a terminal).
//!
//! What a worker of a given spec should hold and be limited to is svmm's plan for it, read from
//! `svmm --print-sandbox` ([`Planned`]); the checks here hold the running worker to it and to
//! bounds of their own (no core dumps, a small fd table, few processes, a finite address
//! space), so a plan that drifts from the process, or a plan that grants too much, fails; the
//! suites also hold rng's and blk's plans to ARCHITECTURE.md's formulas. Also how to run svmm as the
//! unprivileged test user.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;

use crate::procfs::{self, WORKER_NAMESPACES};
use crate::{paths, TestVm};

/// The unprivileged account tests/run.sh creates (member of the `kvm` group).
pub const TEST_USER: &str = "svmm-test";

/// The most processes any worker may start (blk's io-wq threads: 1 + 2 × 4).
const MAX_NPROC: u64 = 16;
/// The fds every worker may open beyond those it inherits (ARCHITECTURE.md: NOFILE = 3 +
/// inherited + 16 + what the kind declares).
const NOFILE_MARGIN: u64 = 16;

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

/// svmm's plan for one device's worker, from its `--print-sandbox` section.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Planned {
    /// The ids inside the worker's user namespace (`ids: uid U, gid G ...`).
    pub ids: (u32, u32),
    /// Whether it drops its supplementary groups (`supplementary groups: none`).
    pub no_groups: bool,
    /// Unprivileged with subordinate ids: the host uid and gid svmm plans for the worker
    /// (`host view: uid U, gid G (...subordinate...)`).
    pub host: Option<(u32, u32)>,
    /// The inherited fds: number → what svmm says it is.
    pub fds: BTreeMap<u32, String>,
    /// What the worker creates itself before its filter (one fd each, or none where the kernel
    /// refuses it), as described.
    pub created: Vec<String>,
    /// `rlimits:` NAME → limit (`None`: unchanged from svmm's).
    pub rlimits: BTreeMap<String, Option<u64>>,
}

impl Planned {
    /// Reads a device's section of `svmm --print-sandbox` (see `crate::sandbox_report`).
    pub fn parse(section: &str) -> Result<Planned, String> {
        let mut planned = Planned::default();
        let mut in_fds = false;
        for line in section.lines() {
            if let Some(rest) = line.strip_prefix("ids: uid ") {
                let mut words = rest
                    .split(|c: char| !c.is_ascii_digit())
                    .filter(|w| !w.is_empty());
                let uid = words.next().and_then(|w| w.parse().ok());
                let gid = words.next().and_then(|w| w.parse().ok());
                planned.ids = uid
                    .zip(gid)
                    .ok_or_else(|| format!("bad ids line {line:?}"))?;
            } else if let Some(rest) = line
                .trim_start()
                .strip_prefix("host view: uid ")
                .filter(|_| line.contains("subordinate id"))
            {
                let mut words = rest
                    .split(|c: char| !c.is_ascii_digit())
                    .filter(|w| !w.is_empty());
                let uid = words.next().and_then(|w| w.parse().ok());
                let gid = words.next().and_then(|w| w.parse().ok());
                planned.host = Some(
                    uid.zip(gid)
                        .ok_or_else(|| format!("bad host view line {line:?}"))?,
                );
            } else if let Some(rest) = line.strip_prefix("supplementary groups: ") {
                planned.no_groups = rest == "none";
            } else if let Some(rest) = line.strip_prefix("rlimits: ") {
                planned.rlimits = parse_rlimits(rest).ok_or_else(|| format!("bad {line:?}"))?;
            } else if line.starts_with("inherited fds") {
                in_fds = true;
            } else if let Some(what) = line
                .trim_start()
                .strip_prefix("created by the worker itself: ")
            {
                planned.created.push(what.to_string());
            } else if in_fds {
                let trimmed = line.trim_start();
                let number = trimmed
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse().ok());
                match number {
                    Some(n) if line.starts_with("  ") => {
                        let what = trimmed.split_once(char::is_whitespace).map_or("", |x| x.1);
                        planned.fds.insert(n, what.trim().to_string());
                    }
                    _ => in_fds = false,
                }
            }
        }
        if planned.fds.is_empty() || planned.rlimits.is_empty() {
            return Err(format!("no fds or rlimits in the plan:\n{section}"));
        }
        Ok(planned)
    }
}

/// The limits of a plan's `rlimits:` line (`NPROC 0 (no processes, no threads), CORE 0, NOFILE
/// 26, FSIZE 0 (SIGXFSZ ignored: EFBIG), AS 192 MiB`): each of [`RLIMITS`] → its value in bytes
/// or items, `None` for `unchanged`. `None` when one is missing or unreadable.
fn parse_rlimits(line: &str) -> Option<BTreeMap<String, Option<u64>>> {
    let words: Vec<&str> = line
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| !w.is_empty())
        .collect();
    let mut out = BTreeMap::new();
    for name in RLIMITS {
        let at = words.iter().position(|w| *w == name)?;
        let value = match *words.get(at + 1)? {
            "unchanged" => None,
            number => {
                let unit = match words.get(at + 2) {
                    Some(&"MiB") => 1 << 20,
                    _ => 1,
                };
                Some(number.parse::<u64>().ok()? * unit)
            }
        };
        out.insert(name.to_string(), value);
    }
    Some(out)
}

/// The rlimits a plan states, by their names in it.
pub const RLIMITS: [&str; 5] = ["NPROC", "CORE", "NOFILE", "FSIZE", "AS"];

/// Everything that is wrong with the confinement of `worker` (a child of svmm `svmm`, which
/// runs as `identity`), against `planned`; empty when it is confined.
pub fn problems(
    worker: u32,
    svmm: u32,
    identity: Identity,
    planned: &Planned,
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
    // The broker's filter, inherited across the worker's clone and exec, and the device's own
    // on top of it: nothing else.
    if field("Seccomp_filters") != "2" {
        problems.push(format!(
            "Seccomp_filters: {} (want 2: the broker's, inherited, and the device's own)",
            field("Seccomp_filters")
        ));
    }
    // Filter mode alone may be log mode: the filter the worker installed traps.
    let cmdline = procfs::cmdline(worker)?;
    if !cmdline.contains(" --seccomp=trap ") {
        problems.push(format!(
            "the worker's filter is not in trap mode: {cmdline}"
        ));
    }
    if field("NoNewPrivs") != "1" {
        problems.push(format!("NoNewPrivs: {}", field("NoNewPrivs")));
    }
    for cap in ["CapEff", "CapPrm", "CapInh", "CapAmb", "CapBnd"] {
        if !field(cap).trim_start_matches('0').is_empty() {
            problems.push(format!("{cap}: {} (want all zero)", field(cap)));
        }
    }
    problems.extend(id_problems(
        worker,
        &status,
        &svmm_status,
        identity,
        planned,
    ));
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
    problems.extend(limit_problems(worker, svmm, planned)?);
    let fds = procfs::fds(worker)?;
    problems.extend(fd_problems(&fds, &procfs::fds(svmm)?, planned));
    Ok(problems)
}

/// The four ids of a `Uid:` or `Gid:` line: real, effective, saved, file system.
pub fn four_ids(status: &BTreeMap<String, String>, key: &str) -> Vec<u32> {
    status
        .get(key)
        .map(|v| {
            v.split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Every uid and gid (real, effective, saved, fs) one and the same, not root, as planned (as
/// root: exactly the planned host ids, not svmm's; unprivileged: svmm's own outside, the
/// planned ones inside); the supplementary groups dropped where the plan says so, else svmm's.
fn id_problems(
    worker: u32,
    status: &BTreeMap<String, String>,
    svmm: &BTreeMap<String, String>,
    identity: Identity,
    planned: &Planned,
) -> Vec<String> {
    let mut problems = Vec::new();
    let (uids, gids) = (four_ids(status, "Uid"), four_ids(status, "Gid"));
    for (name, ids, want_inside, map) in [
        ("uid", &uids, planned.ids.0, "uid_map"),
        ("gid", &gids, planned.ids.1, "gid_map"),
    ] {
        let [id, ..] = ids[..] else {
            problems.push(format!("no {name}s in /proc/{worker}/status"));
            continue;
        };
        if ids.len() != 4 || ids.iter().any(|&x| x != id) {
            problems.push(format!(
                "{name}s real/effective/saved/fs {ids:?} (want all the same)"
            ));
        }
        if id == 0 {
            problems.push(format!("worker {name} 0"));
        }
        let svmm_id = four_ids(svmm, if name == "uid" { "Uid" } else { "Gid" })
            .first()
            .copied();
        match identity {
            Identity::Root => {
                if Some(id) == svmm_id {
                    problems.push(format!("worker {name} {id} is svmm's"));
                }
                if id != want_inside {
                    problems.push(format!("worker {name} {id} (planned {want_inside})"));
                }
            }
            Identity::Unprivileged if planned.host.is_some() => {
                // Subordinate ids: exactly the planned host id (svmm's own only where the plan
                // says the kind reaches the user's files), the planned one inside.
                let want = planned.host.map(|(u, g)| if name == "uid" { u } else { g });
                if Some(id) != want {
                    problems.push(format!("worker {name} {id} (planned host {want:?})"));
                }
                let inside = inside_id(worker, map, id);
                if inside != Some(want_inside) {
                    problems.push(format!(
                        "worker {name} inside its user namespace {inside:?} (planned {want_inside})"
                    ));
                }
            }
            Identity::Unprivileged => {
                if Some(id) != svmm_id {
                    problems.push(format!("worker {name} {id} is not svmm's {svmm_id:?}"));
                }
                let inside = inside_id(worker, map, id);
                if inside != Some(want_inside) {
                    problems.push(format!(
                        "worker {name} inside its user namespace {inside:?} (planned {want_inside})"
                    ));
                }
            }
        }
    }
    let groups = status.get("Groups").map(String::as_str).unwrap_or("");
    let want = if planned.no_groups {
        ""
    } else {
        svmm.get("Groups").map(String::as_str).unwrap_or("")
    };
    if groups != want {
        problems.push(format!("Groups: {groups:?} (want {want:?})"));
    }
    problems
}

/// The id a process's `map` (`uid_map`/`gid_map`) maps `outside` to inside its namespace.
fn inside_id(pid: u32, map: &str, outside: u32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{map}")).ok()?;
    text.lines().find_map(|line| {
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

/// A soft and a hard limit, `None` for unlimited.
type Limit = (Option<u64>, Option<u64>);

/// `/proc/PID/limits` as NAME → its limit.
fn limits(pid: u32) -> io::Result<BTreeMap<String, Limit>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let value = |w: &str| w.parse::<u64>().ok();
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|line| {
            // "Max open files            26                   26                   files"
            let name = line.get(..26)?.trim().to_string();
            let mut rest = line.get(26..)?.split_whitespace();
            Some((
                name,
                (rest.next().and_then(value), rest.next().and_then(value)),
            ))
        })
        .collect())
}

/// The worker's rlimits, soft and hard, are the planned ones (an unchanged one is svmm's; the
/// address space in the plan's whole MiB), and within bounds of their own, whatever the plan
/// says: no core dumps, no more than [`MAX_NPROC`] processes, room for the inherited fds and
/// [`NOFILE_MARGIN`] more but a small table, a finite address space.
fn limit_problems(worker: u32, svmm: u32, planned: &Planned) -> io::Result<Vec<String>> {
    let (got, svmm) = (limits(worker)?, limits(svmm)?);
    let mut problems = Vec::new();
    for (planned_name, proc_name) in [
        ("NPROC", "Max processes"),
        ("CORE", "Max core file size"),
        ("NOFILE", "Max open files"),
        ("FSIZE", "Max file size"),
        ("AS", "Max address space"),
    ] {
        let Some(plan) = planned.rlimits.get(planned_name) else {
            problems.push(format!("the plan has no {planned_name} limit"));
            continue;
        };
        let mib = |v: Option<u64>| v.map(|v| v >> 20);
        let mut want = match plan {
            Some(n) => (Some(*n), Some(*n)),
            None => svmm.get(proc_name).copied().unwrap_or_default(),
        };
        let mut have = got.get(proc_name).copied().unwrap_or_default();
        if planned_name == "AS" {
            (want, have) = ((mib(want.0), mib(want.1)), (mib(have.0), mib(have.1)));
        }
        if have != want {
            problems.push(format!("{proc_name}: {have:?} (planned {want:?})"));
        }
    }
    let within = |name: &str, min: u64, max: u64| {
        got.get(name).is_some_and(|(soft, hard)| {
            [soft, hard]
                .iter()
                .all(|v| v.is_some_and(|v| (min..=max).contains(&v)))
        })
    };
    let inherited = planned.fds.len() as u64;
    for (name, min, max) in [
        ("Max core file size", 0, 0),
        ("Max processes", 0, MAX_NPROC),
        // The fs device keeps one fd per node the guest looked up: its table is the largest.
        ("Max open files", inherited + NOFILE_MARGIN, 16 * 1024),
        ("Max address space", 64 << 20, u64::MAX - 1),
    ] {
        if !within(name, min, max) {
            problems.push(format!("{name}: {:?} (want {min} to {max})", got.get(name)));
        }
    }
    Ok(problems)
}

/// What `/proc/PID/fd/N` links to for an inherited fd svmm describes as `what`; `None` where
/// the description names nothing the link can be checked against.
fn expected_target(what: &str) -> Option<String> {
    let sort = if what.starts_with("control socket") || what.starts_with("service channel") {
        "socket:"
    } else if what.starts_with("guest RAM memfd") || what.starts_with("interrupt status page") {
        "/memfd:"
    } else if what.contains("eventfd") {
        "anon_inode:[eventfd]"
    } else if let Some(rest) = what.split_once(": ").map(|x| x.1) {
        // "host resource of blk: /path/disk.img (read-write, ...)": the path.
        return rest
            .split_whitespace()
            .next()
            .filter(|p| p.starts_with('/'))
            .map(str::to_string);
    } else {
        return None;
    };
    Some(sort.to_string())
}

/// The fds that should not be there, are missing, or are not what svmm planned: every
/// inherited fd at its planned number (fds 0 and 1 /dev/null, fd 2 a pipe svmm reads), then the
/// worker's own: its event loop's epoll instance and one fd per thing it creates itself before
/// its filter (an io_uring instance: none where the kernel refuses io_uring), nothing else.
fn fd_problems(
    fds: &BTreeMap<u32, String>,
    svmm_fds: &BTreeMap<u32, String>,
    planned: &Planned,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (fd, what) in &planned.fds {
        let Some(target) = fds.get(fd) else {
            problems.push(format!("fd {fd} ({what}) missing"));
            continue;
        };
        if *fd <= 1 {
            if target != "/dev/null" {
                problems.push(format!("fd {fd} -> {target} (want /dev/null)"));
            }
            continue;
        }
        if *fd == 2 {
            // A pipe's two ends link to the same `pipe:[inode]`.
            let svmm_reads = svmm_fds.values().any(|t| t == target);
            if !target.starts_with("pipe:[") || !svmm_reads {
                problems.push(format!(
                    "fd 2 -> {target} (want a pipe svmm holds the other end of)"
                ));
            }
            continue;
        }
        match expected_target(what) {
            Some(want) if want.starts_with('/') && !want.starts_with("/memfd:") => {
                let canonical = std::fs::canonicalize(&want)
                    .map_or(want.clone(), |p| p.to_string_lossy().into_owned());
                if target != &want && target != &canonical {
                    problems.push(format!("fd {fd} -> {target} (planned {what})"));
                }
            }
            Some(want) if !target.starts_with(&want) => {
                problems.push(format!("fd {fd} -> {target} (planned {what})"));
            }
            _ => {}
        }
    }
    let io_uring_refused = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .is_ok_and(|v| v.trim() != "0");
    let mut own: Vec<&String> = fds
        .iter()
        .filter(|(fd, _)| !planned.fds.contains_key(fd))
        .map(|(_, target)| target)
        .collect();
    let mut take = |wanted: &dyn Fn(&str) -> bool, what: &str, optional: bool| match own
        .iter()
        .position(|t| wanted(t))
    {
        Some(i) => {
            own.remove(i);
        }
        None if optional => {}
        None => problems.push(format!("no fd of the worker's own {what}")),
    };
    take(
        &|t| t == "anon_inode:[eventpoll]",
        "event loop (epoll)",
        false,
    );
    for created in &planned.created {
        if created.contains("io_uring") {
            take(
                &|t| t == "anon_inode:[io_uring]",
                "io_uring instance",
                io_uring_refused,
            );
        } else {
            take(&|_| true, created, false);
        }
    }
    for target in own {
        problems.push(format!("unplanned fd -> {target}"));
    }
    problems
}

/// The first ids of the subordinate uid and gid ranges (65536 ids each) of [`TEST_USER`], made
/// if it has none: a line `svmm-test:FIRST:65536` appended to `/etc/subuid` and `/etc/subgid`
/// (as root; idempotent: an existing range of that size in each file is used as it is), FIRST
/// the first multiple of 65536 from 1,400,000,000 that overlaps no range of either file nor
/// svmm's default `--worker-ids` (1,500,000,000 and up). With it an unprivileged svmm gives each
/// worker a host uid and gid of its own (`--subids`); the range stays for later runs.
pub fn ensure_subordinate_range() -> Result<(u32, u32), String> {
    const COUNT: u64 = 65536;
    let uid: u32 = id_of("-u")?
        .parse()
        .map_err(|e| format!("id -u {TEST_USER}: {e}"))?;
    let files = ["/etc/subuid", "/etc/subgid"];
    let texts: Vec<String> = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap_or_default())
        .collect();
    // (owner, first, count) of every line that parses.
    let lines = |text: &str| -> Vec<(String, u64, u64)> {
        text.lines()
            .filter_map(|l| {
                let mut f = l.trim().split(':');
                let owner = f.next()?.to_string();
                let first = f.next()?.parse().ok()?;
                let count = f.next()?.parse().ok()?;
                Some((owner, first, count))
            })
            .collect()
    };
    let mine = |owner: &str| owner == TEST_USER || owner == uid.to_string();
    let existing: Vec<Option<u64>> = texts
        .iter()
        .map(|t| {
            lines(t)
                .into_iter()
                .find(|(o, _, c)| mine(o) && *c >= COUNT)
                .map(|(_, first, _)| first)
        })
        .collect();
    let to_u32 = |x: u64| u32::try_from(x).map_err(|e| e.to_string());
    if let [Some(u), Some(g)] = existing[..] {
        return Ok((to_u32(u)?, to_u32(g)?));
    }
    if !is_root() {
        return Err(format!(
            "{TEST_USER} has no subordinate id range and only root can add one"
        ));
    }
    let taken: Vec<(u64, u64)> = texts
        .iter()
        .flat_map(|t| lines(t))
        .map(|(_, first, count)| (first, count))
        .chain([(1_500_000_000, 1 << 32)])
        .collect();
    let mut first: u64 = 1_400_000_000;
    while taken
        .iter()
        .any(|&(f, c)| first < f + c && f < first + COUNT)
    {
        first += COUNT;
        if first + COUNT > 1_500_000_000 {
            return Err("no free subordinate id range below 1,500,000,000".into());
        }
    }
    for (file, have) in files.iter().zip(&existing) {
        use std::io::Write;
        if have.is_some() {
            continue;
        }
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(file)
            .map_err(|e| format!("open {file}: {e}"))?;
        writeln!(f, "{TEST_USER}:{first}:{COUNT}").map_err(|e| format!("write {file}: {e}"))?;
    }
    eprintln!(
        "    added {TEST_USER}:{first}:{COUNT} where it had no range (/etc/subuid, /etc/subgid)"
    );
    let first = to_u32(first)?;
    Ok((
        existing[0].map_or(Ok(first), to_u32)?,
        existing[1].map_or(Ok(first), to_u32)?,
    ))
}

/// `id FLAG` of [`TEST_USER`].
pub fn id_of(flag: &str) -> Result<String, String> {
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
}

/// `vm` run as [`TEST_USER`], which has a subordinate id range ([`ensure_subordinate_range`]),
/// so its workers get subordinate ids unless `vm` says `--subids=off`. The clone may sit where
/// that user cannot read (e.g. under /root), so svmm and the guest run from world-readable
/// copies in `dir` (made by the first call for that `dir`). `setpriv`
/// (util-linux) switches user and the `sh -c` drops the harness's own svmm path and execs the
/// copy: the pid the harness sees is still svmm's own.
pub fn unprivileged(vm: TestVm, dir: &paths::TempDir) -> Result<TestVm, String> {
    use std::os::unix::fs::PermissionsExt;
    ensure_subordinate_range()?;
    // Copied once per `dir`: a caller that runs several VMs with one `dir` must not rewrite the
    // binary while the previous VM's processes may still execute it (ETXTBSY: a worker or the
    // broker being killed at that VM's end runs the same file).
    let copy = |from: &std::path::Path, name: &str| -> Result<PathBuf, String> {
        let to = dir.path().join(name);
        if to.exists() {
            return Ok(to);
        }
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
    let id = id_of;
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

    const SECTION: &str = "\
command line: svmm __worker blk --seccomp=trap --config=00
ids: uid 1500000001, gid 1500000002 inside the worker's user namespace
supplementary groups: none
rlimits: NPROC 9, CORE 0, NOFILE 26, FSIZE unchanged (SIGXFSZ ignored: EFBIG), AS 194 MiB
inherited fds (every other fd is closed before exec):
    0  stdin: /dev/null
    1  stdout: /dev/null
    2  stderr: a pipe of its own (svmm reads the other end and shows each line cleaned of control characters, prefixed with the device and rate-limited)
    3  control socket (SOCK_SEQPACKET, the worker's end; svmm holds the other)
    4  guest RAM memfd (sealed: F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)
    5  interrupt status page (memfd, one page shared with svmm: InterruptStatus bits)
    6  irqfd (eventfd bound by KVM to the device's GSI: writing it interrupts the guest)
    7  stop eventfd (readable = stop serving; svmm never writes it to a spawned worker)
    8  queue 0 notify eventfd (KVM ioeventfd on QueueNotify, datamatch 0)
    9  host resource of blk: /tmp/disk.img (read-write, flock LOCK_EX: no other svmm may open it)
  created by the worker itself: an io_uring instance (set up in the last step)
seccomp: profile \"blk\" in mode trap: ...
";

    #[test]
    fn the_plan_is_read_from_the_report() {
        let planned = Planned::parse(SECTION).unwrap();
        assert_eq!(planned.ids, (1_500_000_001, 1_500_000_002));
        assert!(planned.no_groups);
        assert_eq!(planned.fds.len(), 10);
        assert!(planned.fds[&9].starts_with("host resource of blk: /tmp/disk.img"));
        assert_eq!(planned.created.len(), 1);
        assert_eq!(planned.rlimits["NPROC"], Some(9));
        assert_eq!(planned.rlimits["FSIZE"], None);
        assert_eq!(planned.rlimits["AS"], Some(194 << 20));
        let rng = parse_rlimits(
            "NPROC 0 (no processes, no threads), CORE 0, NOFILE 26, FSIZE 0 (SIGXFSZ ignored: \
             EFBIG), AS 192 MiB",
        )
        .unwrap();
        assert_eq!(rng["NPROC"], Some(0));
        assert_eq!(rng["NOFILE"], Some(26));
        assert_eq!(
            parse_rlimits("NPROC 0, CORE 0, NOFILE 26, FSIZE 0"),
            None,
            "no AS"
        );
        assert!(Planned::parse("nothing here").is_err());
    }

    #[test]
    fn fds_are_held_to_the_plan() {
        let planned = Planned::parse(SECTION).unwrap();
        let mut fds: BTreeMap<u32, String> = [
            (0, "/dev/null"),
            (1, "/dev/null"),
            (2, "pipe:[77]"),
            (3, "socket:[1]"),
            (4, "/memfd:svmm-guest-ram (deleted)"),
            (5, "/memfd:svmm-irq-status (deleted)"),
            (6, "anon_inode:[eventfd]"),
            (7, "anon_inode:[eventfd]"),
            (8, "anon_inode:[eventfd]"),
            (9, "/tmp/disk.img"),
            (10, "anon_inode:[eventpoll]"),
            (11, "anon_inode:[io_uring]"),
        ]
        .into_iter()
        .map(|(n, t)| (n, t.to_string()))
        .collect();
        let svmm: BTreeMap<u32, String> =
            [(2, "/dev/pts/3".to_string()), (21, "pipe:[77]".to_string())].into();
        assert_eq!(fd_problems(&fds, &svmm, &planned), Vec::<String>::new());
        // svmm's own stderr, a terminal, is refused; so is a pipe svmm does not read.
        for fd2 in ["/dev/pts/3", "pipe:[78]"] {
            let mut other = fds.clone();
            other.insert(2, fd2.into());
            assert_eq!(
                fd_problems(&other, &svmm, &planned),
                [format!(
                    "fd 2 -> {fd2} (want a pipe svmm holds the other end of)"
                )]
            );
        }
        fds.insert(12, "/etc/passwd".into());
        fds.insert(9, "/tmp/other.img".into());
        fds.remove(&8);
        let problems = fd_problems(&fds, &svmm, &planned);
        assert!(
            problems.iter().any(|p| p.starts_with("fd 8 ")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("fd 9 -> /tmp/other.img")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("/etc/passwd")),
            "{problems:?}"
        );
    }
}
