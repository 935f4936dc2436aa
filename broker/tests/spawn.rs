//! Spawn and sandbox tests, without libtest's harness: `spawn` must run from a long-lived
//! thread (the `Spawner`), and parent-death tests need processes whose threads we control.
//!
//! The exec'd worker is `broker-test-worker` (src/bin), which confines itself with
//! `broker::confine` and reports what it sees over fd 3. Each test also inspects the live worker
//! from outside through `/proc/<pid>`, as the VMM's integration tests will.
//!
//! Roles (environment `BROKER_TEST_ROLE`) for re-executions of this binary:
//! - `middle`: spawns a `hold` worker, prints its pid, then sleeps (the top test SIGKILLs it);
//! - `unprivileged`: run as uid 65534, spawns a `report` worker with `IdChoice::Unprivileged`
//!   and prints the worker's report plus its /proc view.

use broker::{
    ConfineConfig, ExitCause, IdChoice, IdRange, SpawnError, Spawner, Stderr, Worker, WorkerSpec,
};
use std::collections::HashMap;
use std::ffi::CString;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const HELPER: &str = env!("CARGO_BIN_EXE_broker-test-worker");
const ROLE: &str = "BROKER_TEST_ROLE";
const NOBODY: u32 = 65534;

/// The test worker's `RLIMIT_AS`: far more than it maps, a bound all the same.
const WORKER_AS: u64 = 1 << 30;

fn main() {
    match std::env::var(ROLE).as_deref() {
        Ok("middle") => return middle(),
        Ok("unprivileged") => return unprivileged_role(),
        _ => {}
    }
    let tests: &[(&str, fn())] = &[
        ("root_worker_is_confined", root_worker_is_confined),
        ("seccomp_violation_is_sigsys", seccomp_violation_is_sigsys),
        ("confine_fails_when_vmm_gone", confine_fails_when_vmm_gone),
        ("exec_failure_is_reported", exec_failure_is_reported),
        (
            "dropping_spawner_kills_workers",
            dropping_spawner_kills_workers,
        ),
        ("worker_dies_with_its_vmm", worker_dies_with_its_vmm),
        (
            "unprivileged_worker_is_confined",
            unprivileged_worker_is_confined,
        ),
        ("without_namespaces_as_root", without_namespaces_as_root),
        ("landlock_beneath_a_directory", landlock_beneath_a_directory),
    ];
    // SAFETY: geteuid cannot fail.
    assert_eq!(unsafe { libc::geteuid() }, 0, "these tests run as root");
    for (name, test) in tests {
        print!("test {name} ... ");
        let _ = std::io::stdout().flush();
        let start = Instant::now();
        test();
        println!("ok ({} ms)", start.elapsed().as_millis());
    }
    println!("spawn tests: {} passed", tests.len());
}

/// O_PATH fd of the helper executable.
fn helper_exe() -> Arc<OwnedFd> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(HELPER)
        .expect("open helper");
    Arc::new(file.into())
}

/// A spec for the helper in `mode`, with a socket at fd 3; returns the test's end too.
fn helper_spec(
    mode: &str,
    ids: IdChoice,
    namespaces: bool,
) -> (WorkerSpec, UnixStream, ConfineConfig) {
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let mut cfg = ConfineConfig::new(ids.worker_ids(), 1, Vec::new());
    cfg.namespaces = namespaces;
    cfg.rlimits.address_space = Some(WORKER_AS);
    let mut args = vec![CString::new("broker-test-worker").unwrap()];
    args.extend(cfg.to_args());
    args.push(CString::new(mode).unwrap());
    let spec = WorkerSpec {
        exe: helper_exe(),
        args,
        fds: vec![theirs.into()],
        ids,
        namespaces,
        stderr: Stderr::Inherit,
    };
    (spec, ours, cfg)
}

/// Reads `key=value` lines up to `end`.
fn read_report(sock: &mut UnixStream) -> HashMap<String, String> {
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut map = HashMap::new();
    for line in BufReader::new(sock.try_clone().unwrap()).lines() {
        let line = line.expect("report line");
        if line == "end" {
            return map;
        }
        let (k, v) = line.split_once('=').expect("key=value");
        map.insert(k.to_string(), v.to_string());
    }
    panic!("report ended early: {map:?}");
}

/// `/proc/<pid>/status` as a map.
fn proc_status(pid: i32) -> HashMap<String, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// What the worker reports about itself, for both id modes.
fn check_inside(r: &HashMap<String, String>, uid: u32, cfg: &ConfineConfig) {
    assert_eq!(r["pid"], "1", "worker is PID 1 of its pid namespace");
    assert_eq!(r["ppid"], "0", "its parent is outside the namespace");
    assert_eq!(r["uid"], format!("{uid},{uid},{uid}"));
    assert_eq!(r["gid"], format!("{uid},{uid},{uid}"));
    assert_eq!(r["capget"], "[0, 0, 0, 0, 0, 0]", "no capabilities");
    assert_eq!(r["bounding"], "0");
    assert_eq!(r["ambient"], "0");
    let locked = libc::SECBIT_NOROOT
        | libc::SECBIT_NOROOT_LOCKED
        | libc::SECBIT_NO_SETUID_FIXUP
        | libc::SECBIT_NO_SETUID_FIXUP_LOCKED
        | libc::SECBIT_KEEP_CAPS_LOCKED
        | libc::SECBIT_NO_CAP_AMBIENT_RAISE
        | libc::SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;
    assert_eq!(r["securebits"], locked.to_string(), "securebits locked");
    assert_eq!(r["nnp"], "1");
    assert_eq!(r["seccomp"], "2", "filter mode");
    assert_eq!(r["pdeathsig"], libc::SIGKILL.to_string());
    assert_eq!(r["nproc"], "0,0");
    assert_eq!(r["core"], "0,0");
    let nofile = cfg.rlimits.nofile;
    assert_eq!(r["nofile"], format!("{nofile},{nofile}"));
    assert_eq!(r["fsize"], "0,0");
    assert_eq!(r["as"], format!("{WORKER_AS},{WORKER_AS}"));
    assert_eq!(r["sigxfsz_ignored"], "1");
    assert_eq!(r["fds"], "0,1,2,3", "only stdio and the listed fd");
    let erofs_or_eacces = [libc::EROFS.to_string(), libc::EACCES.to_string()];
    assert!(erofs_or_eacces.contains(&r["mkdir_errno"]), "{r:?}");
    assert_ne!(r["open_passwd_errno"], "0", "/etc/passwd is unreachable");
    assert_eq!(
        r["open_root_errno"],
        libc::EACCES.to_string(),
        "Landlock: no ReadDir on /"
    );
    assert_eq!(r["fork_errno"], libc::EAGAIN.to_string(), "RLIMIT_NPROC 0");
    assert_eq!(
        r["connect_errno"],
        libc::EACCES.to_string(),
        "Landlock: no TCP connect"
    );
}

/// What the VMM sees of the worker from outside.
fn check_outside(pid: i32, host_uid: u32) {
    let st = proc_status(pid);
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(st[cap], "0000000000000000", "{cap}");
    }
    assert_eq!(st["NoNewPrivs"], "1");
    assert_eq!(st["Seccomp"], "2");
    let ids = format!("{host_uid}\t{host_uid}\t{host_uid}\t{host_uid}");
    assert_eq!(st["Uid"], ids, "host view of the uid");
    assert_eq!(st["Gid"], ids, "host view of the gid");
    assert_eq!(st["NSpid"], format!("{pid}\t1"));
    for ns in ["user", "pid", "mnt", "net", "ipc", "uts", "cgroup", "time"] {
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        assert_ne!(ours, theirs, "{ns} namespace is the worker's own");
    }
    let root: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .expect("worker root")
        .collect();
    assert!(root.is_empty(), "worker root is empty: {root:?}");
    let mut fds: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect();
    fds.sort();
    assert_eq!(fds, [0, 1, 2, 3]);
}

fn root_worker_is_confined() {
    let spawner = Spawner::new().unwrap();
    let ids = IdRange::DEFAULT.ids(7).unwrap();
    let (spec, mut sock, cfg) = helper_spec("report", ids, true);
    let mut worker = spawner.spawn(spec).expect("spawn");
    let report = read_report(&mut sock);
    let uid = 1_500_000_007;
    check_inside(&report, uid, &cfg);
    assert_eq!(report["groups"], "0", "no supplementary groups");
    check_outside(worker.pid(), uid);
    sock.write_all(b"q").unwrap();
    assert_eq!(worker.wait().unwrap(), ExitCause::Exited(0));
}

/// A worker with a Landlock rule beneath a directory (the fs device's share): read-only lets it
/// read and nothing else; read-write also create files, directories and symlinks; neither lets
/// it make a fifo or socket, execute a file there, or open anything outside.
fn landlock_beneath_a_directory() {
    use std::os::unix::fs::PermissionsExt;
    for (n, writable) in [(0u32, false), (1, true)] {
        let base = std::env::temp_dir().join(format!("broker-landlock-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let share = base.join("share");
        std::fs::create_dir_all(&share).unwrap();
        std::fs::write(base.join("outside"), b"outside").unwrap();
        std::fs::write(share.join("existing"), b"x").unwrap();
        std::fs::copy("/bin/true", share.join("prog")).unwrap();
        for (path, mode) in [
            (&base, 0o777),
            (&share, 0o777),
            (&share.join("prog"), 0o755),
            (&share.join("existing"), 0o644),
            (&base.join("outside"), 0o644),
        ] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(&share)
            .unwrap();
        let spawner = Spawner::new().unwrap();
        let ids = IdRange::DEFAULT.ids(20 + n).unwrap();
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut cfg = ConfineConfig::new(ids.worker_ids(), 2, Vec::new());
        cfg.landlock_beneath = vec![broker::LandlockBeneath { fd: 4, writable }];
        let mut args = vec![CString::new("broker-test-worker").unwrap()];
        args.extend(cfg.to_args());
        args.push(CString::new("beneath").unwrap());
        let spec = WorkerSpec {
            exe: helper_exe(),
            args,
            fds: vec![theirs.into(), dir.into()],
            ids,
            namespaces: true,
            stderr: Stderr::Inherit,
        };
        let mut worker = spawner.spawn(spec).expect("spawn");
        let mut sock = ours;
        let report = read_report(&mut sock);
        assert_eq!(worker.wait().unwrap(), ExitCause::Exited(0));
        let eacces = libc::EACCES.to_string();
        let want = |op: &str, allowed: bool| {
            let got = &report[op];
            let ok = if allowed { got == "0" } else { *got != "0" };
            assert!(ok, "{op} (writable={writable}): errno {got}, {report:?}");
        };
        want("read", true);
        for op in ["create", "mkdir", "symlink"] {
            want(op, writable);
        }
        for op in ["mkfifo", "mksock", "exec", "outside"] {
            want(op, false);
            assert_eq!(
                report[op], eacces,
                "{op} (writable={writable}) refused by Landlock"
            );
        }
        let _ = std::fs::remove_dir_all(&base);
    }
}

fn seccomp_violation_is_sigsys() {
    let spawner = Spawner::new().unwrap();
    let (spec, sock, _) = helper_spec("violate", IdRange::DEFAULT.ids(8).unwrap(), true);
    let mut worker = spawner.spawn(spec).unwrap();
    let cause = worker.wait().unwrap();
    assert!(cause.is_seccomp_violation(), "{cause}");
    assert_eq!(cause.to_string(), "killed by SIGSYS (seccomp violation)");
    let mut line = String::new();
    BufReader::new(sock).read_line(&mut line).unwrap();
    assert_eq!(line, "confined\n", "it was confined before the violation");
}

fn confine_fails_when_vmm_gone() {
    let spawner = Spawner::new().unwrap();
    let (mut spec, sock, _) = helper_spec("report", IdRange::DEFAULT.ids(9).unwrap(), true);
    spec.stderr = Stderr::Null; // The refusal message is expected; keep it off the test log.
    drop(sock); // The lifeline (fd 3's peer) is already gone when confine checks it.
    let mut worker = spawner.spawn(spec).unwrap();
    let expected = 100 + broker::Step::DeathSignal as i32;
    assert_eq!(worker.wait().unwrap(), ExitCause::Exited(expected));
}

fn exec_failure_is_reported() {
    let spawner = Spawner::new().unwrap();
    let (mut spec, _sock, _) = helper_spec("report", IdRange::DEFAULT.ids(10).unwrap(), true);
    let path = std::env::temp_dir().join(format!("broker-not-exe-{}", std::process::id()));
    std::fs::write(&path, "not a program\n").unwrap(); // Mode 0644: execveat says EACCES.
    let not_exe = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    spec.exe = Arc::new(not_exe.into());
    match spawner.spawn(spec) {
        Err(SpawnError::Child { stage, source, .. }) => {
            assert_eq!(stage, broker::ChildStage::Exec);
            assert_eq!(source.raw_os_error(), Some(libc::EACCES));
        }
        other => panic!("expected an exec failure, got {other:?}"),
    }
}

fn dropping_spawner_kills_workers() {
    let spawner = Spawner::new().unwrap();
    let (spec, sock, _) = helper_spec("hold", IdRange::DEFAULT.ids(11).unwrap(), true);
    let mut worker = spawner.spawn(spec).unwrap();
    let mut line = String::new();
    BufReader::new(&sock).read_line(&mut line).unwrap();
    assert_eq!(line, "confined\n");
    assert_eq!(
        worker.try_wait().unwrap(),
        None,
        "hold worker keeps running"
    );
    drop(spawner); // The cloning thread exits: PDEATHSIG.
    let cause = worker.wait().unwrap();
    assert_eq!(
        cause,
        ExitCause::Killed {
            signal: libc::SIGKILL,
            core_dumped: false
        }
    );
}

/// Role `middle`: spawn a hold worker, print its pid, wait to be killed.
fn middle() {
    let spawner = Spawner::new().unwrap();
    let (spec, sock, _) = helper_spec("hold", IdRange::DEFAULT.ids(12).unwrap(), true);
    let worker = spawner.spawn(spec).unwrap();
    let mut line = String::new();
    BufReader::new(&sock).read_line(&mut line).unwrap();
    assert_eq!(line, "confined\n");
    println!("{}", worker.pid());
    std::mem::forget(worker); // Never reap: only the VMM's death may end it.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn worker_dies_with_its_vmm() {
    // Orphans get reparented to us, so we can see how the worker ended.
    // SAFETY: prctl with integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(rc, 0);
    let mut vmm = Command::new(std::env::current_exe().unwrap())
        .env(ROLE, "middle")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(vmm.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pid: i32 = line
        .trim()
        .parse()
        .expect("worker pid from the middle process");
    // SAFETY: pidfd_open with integer arguments; the result is a new fd we own.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    assert!(pidfd >= 0, "worker {pid} is alive before the VMM dies");
    // SAFETY: a pidfd just returned to us.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    assert!(!exited_within(&pidfd, Duration::from_millis(200)));
    vmm.kill().unwrap(); // SIGKILL: no cleanup code runs in the "VMM".
    vmm.wait().unwrap();
    assert!(
        exited_within(&pidfd, Duration::from_secs(5)),
        "worker outlived its VMM"
    );
    // SAFETY: siginfo_t is plain data; waitid fills it for our (adopted) child.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: live siginfo_t, our pidfd.
    let rc = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            pidfd.as_raw_fd() as _,
            &mut info,
            libc::WEXITED,
        )
    };
    assert_eq!(
        rc, 0,
        "the orphaned worker was reparented to this subreaper"
    );
    // SAFETY: waitid succeeded, so this is a SIGCHLD siginfo.
    let status = unsafe { info.si_status() };
    assert_eq!((info.si_code, status), (libc::CLD_KILLED, libc::SIGKILL));
}

/// Polls a pidfd for readability (the process exited).
fn exited_within(pidfd: &OwnedFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd.
    unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) == 1 }
}

/// Role `unprivileged` (uid 65534): spawn a report worker in a user namespace and print its
/// report and its /proc view for the top process to check.
fn unprivileged_role() {
    let spawner = Spawner::new().unwrap();
    let (spec, mut sock, cfg) = helper_spec("report", IdChoice::Unprivileged, true);
    let mut worker: Worker = spawner.spawn(spec).expect("unprivileged spawn");
    let report = read_report(&mut sock);
    check_inside(&report, broker::NS_WORKER_ID, &cfg);
    check_outside(worker.pid(), NOBODY);
    sock.write_all(b"q").unwrap();
    assert_eq!(worker.wait().unwrap(), ExitCause::Exited(0));
    println!("unprivileged ok groups={}", report["groups"]);
}

fn unprivileged_worker_is_confined() {
    let out = Command::new(std::env::current_exe().unwrap())
        .env(ROLE, "unprivileged")
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.starts_with("unprivileged ok"),
        "unprivileged role failed: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn without_namespaces_as_root() {
    let spawner = Spawner::new().unwrap();
    let ids = IdRange::DEFAULT.ids(13).unwrap();
    let (spec, mut sock, _) = helper_spec("report", ids, false);
    let mut worker = spawner.spawn(spec).unwrap();
    let r = read_report(&mut sock);
    let uid = 1_500_000_013;
    assert_ne!(r["pid"], "1", "shares our pid namespace");
    assert_eq!(r["uid"], format!("{uid},{uid},{uid}"));
    assert_eq!(r["capget"], "[0, 0, 0, 0, 0, 0]");
    assert_eq!(r["bounding"], "0");
    assert_eq!(r["seccomp"], "2");
    assert_eq!(
        r["pdeathsig"],
        libc::SIGKILL.to_string(),
        "re-armed after setresuid"
    );
    // The host's root is visible, but Landlock denies it.
    assert_eq!(r["open_passwd_errno"], libc::EACCES.to_string());
    let mut rest = Vec::new();
    sock.write_all(b"q").unwrap();
    let _ = sock.read_to_end(&mut rest);
    assert_eq!(worker.wait().unwrap(), ExitCause::Exited(0));
}
