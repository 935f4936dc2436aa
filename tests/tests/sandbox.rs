//! Sandboxed devices end to end: the test guest drives virtio-rng served by a worker process (and
//! by the same code in-process), and the worker's confinement is read from `/proc` while the
//! guest runs — never taken from what svmm or the worker say about themselves.
//!
//! The misbehaving-worker trials use the hidden `--device rng,fault=MODE` of svmm builds with
//! the `test-faults` feature (tests/run.sh builds svmm so).
//!
//! The unprivileged trial runs svmm as the user `svmm-test` (in the `kvm` group), which
//! `tests/run.sh` creates when it runs as root; run as a normal user, it runs as that user.

use std::collections::BTreeMap;
use std::time::Duration;

use tests::procfs::{self, WORKER_NAMESPACES};
use tests::suite::TrialResult;
use tests::{paths, require_kvm, Suite, TestVm, VmOutput};

const TIMEOUT: Duration = Duration::from_secs(60);
/// What the test guest prints when its tests are done and it idles (`testguest.sleep_ms`).
const SLEEPING: &str = "testguest: sleep ms=";
/// The unprivileged account tests/run.sh creates (member of the `kvm` group).
const TEST_USER: &str = "svmm-test";

fn main() {
    let not_root = (!is_root()).then(|| "not running as root".to_string());
    Suite::new("sandbox")
        .test("rng_sandboxed", || rng_passes(&["--device", "rng"]))
        .test("rng_in_process_by_device_option", || {
            rng_passes(&["--device", "rng,sandbox=off"])
        })
        .test("rng_in_process_by_no_sandbox", || {
            rng_passes(&["--no-sandbox", "--device", "rng"])
        })
        .test("rng_reinit_sandboxed", rng_reinit_sandboxed)
        .test_unless("worker_confined_as_root", not_root, || {
            confinement(Identity::Root)
        })
        .test("worker_confined_unprivileged", || {
            confinement(Identity::Unprivileged)
        })
        .test("worker_sigkill_reported_vm_survives", worker_sigkill)
        .test("svmm_sigkill_leaves_no_worker", svmm_sigkill)
        .test("seccomp_violation_named", seccomp_violation)
        .test("malicious_worker_garbage", || malicious("garbage"))
        .test("malicious_worker_silent", || malicious("silent"))
        .test("malicious_worker_flood", || malicious("flood"))
        .test("worker_exit_stops_vm_when_asked", worker_exit_stops_vm)
        .run()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn guest(cmdline: &str) -> TestVm {
    require_kvm();
    TestVm::svmm(paths::artefact("testguest.elf"))
        .cmdline(cmdline)
        .mem_mib(128)
        .timeout(TIMEOUT)
}

fn rng_passes(args: &[&str]) -> TrialResult {
    let out = guest("testguest.run=rng")
        .args(args.iter().copied())
        .run()?;
    out.log(&format!("svmm testguest rng ({})", args.join(" ")));
    out.assert_line("testguest: rng ok ");
    assert_eq!(out.testguest_summary(), Some((1, 0)), "\n{}", out.report());
    out.assert_no_panic();
    out.assert_status(0);
    Ok(())
}

fn rng_reinit_sandboxed() -> TrialResult {
    let out = guest("testguest.run=rng_reinit")
        .args(["--device", "rng"])
        .run()?;
    out.log("svmm testguest rng_reinit (sandboxed)");
    out.assert_line("testguest: rng_reinit ok ");
    out.assert_status(0);
    Ok(())
}

#[derive(Clone, Copy, PartialEq)]
enum Identity {
    Root,
    Unprivileged,
}

/// Runs svmm with a sandboxed rng device and a guest that idles, and checks the worker from /proc.
fn confinement(identity: Identity) -> TrialResult {
    let mut vm = guest("testguest.run=rng testguest.sleep_ms=20000").args(["--device", "rng"]);
    // Kept until the end: the unprivileged user's copies of svmm and the guest.
    let copies = paths::TempDir::new("unprivileged");
    if identity == Identity::Unprivileged && is_root() {
        vm = unprivileged(vm, &copies)?;
    }
    let running = vm.spawn()?;
    running.wait_for_line(SLEEPING, TIMEOUT)?;
    let svmm = running.pid();
    let workers = procfs::wait_for_children(svmm, 1, Duration::from_secs(5));
    if workers.len() != 1 {
        return Err(
            format!("expected exactly one worker process under svmm, found {workers:?}").into(),
        );
    }
    let worker = workers[0];
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
    problems.extend(unexpected_fds(&fds, &procfs::fds(svmm)?));

    let cmd = procfs::cmdline(worker).unwrap_or_default();
    drop(running);
    if problems.is_empty() {
        eprintln!("    worker {worker} ({cmd}): confined; fds {fds:?}");
        Ok(())
    } else {
        Err(format!(
            "worker {worker} ({cmd}) is not confined as DESIGN.md says:\n  {}\n  fds: {fds:?}",
            problems.join("\n  ")
        )
        .into())
    }
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

/// The fds an rng worker may hold: its control socket, guest RAM and the interrupt status page
/// (memfds), the irqfd, the stop eventfd and one queue ioeventfd (eventfds; `worker::fd_numbers`
/// in vmm), /dev/urandom, and the epoll instance of its own event loop (made once confined; it
/// reaches nothing). Fds 0–2 may only be /dev/null or svmm's own stderr (so the worker can
/// report a fatal error in one line).
fn unexpected_fds(fds: &BTreeMap<u32, String>, svmm_fds: &BTreeMap<u32, String>) -> Vec<String> {
    let mut want: BTreeMap<&str, usize> = [
        ("socket", 1),
        ("memfd", 2),
        ("eventfd", 3),
        ("eventpoll", 1),
        ("/dev/urandom", 1),
    ]
    .into();
    let mut problems = Vec::new();
    for (fd, target) in fds {
        if *fd <= 2 {
            if target != "/dev/null" && Some(target) != svmm_fds.get(&2) {
                problems.push(format!(
                    "fd {fd} -> {target} (want /dev/null or svmm's stderr)"
                ));
            }
            continue;
        }
        let kind = if target.starts_with("socket:") {
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
        match want.get_mut(kind) {
            Some(n) if *n > 0 => *n -= 1,
            _ => problems.push(format!("unexpected fd {fd} -> {target}")),
        }
    }
    for (kind, missing) in want {
        if missing > 0 {
            problems.push(format!("{missing} {kind} fd(s) missing"));
        }
    }
    problems
}

/// Runs `vm` as the test user. The clone may sit where that user cannot read (e.g. under /root),
/// so svmm and the guest run from world-readable copies in `dir`. `setpriv` (util-linux) switches
/// user and the `sh -c` drops the harness's own svmm path and execs the copy: the pid the
/// harness sees is still svmm's own.
fn unprivileged(vm: TestVm, dir: &paths::TempDir) -> Result<TestVm, String> {
    use std::os::unix::fs::PermissionsExt;
    let copy = |from: &std::path::Path, name: &str| -> Result<std::path::PathBuf, String> {
        let to = dir.path().join(name);
        std::fs::copy(from, &to).map_err(|e| format!("copy {}: {e}", from.display()))?;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("chmod {}: {e}", to.display()))?;
        Ok(to)
    };
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod {}: {e}", dir.path().display()))?;
    let svmm = copy(&tests::binary::svmm_bin(), "svmm")?;
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

/// A worker killed from outside is reported in one line (device, pid, cause), the VM keeps
/// running, and the guest then finds the device needing reset instead of hanging.
fn worker_sigkill() -> TrialResult {
    let running = guest("testguest.run=rng,echo,rng_reinit testguest.echo_timeout_ms=30000")
        .args(["--device", "rng"])
        .spawn()?;
    let mut running = running;
    running.wait_for_line("testguest: echo ready", TIMEOUT)?;
    let workers = procfs::children(running.pid());
    let [worker] = workers[..] else {
        return Err(format!("expected one worker, found {workers:?}").into());
    };
    // SAFETY: kill has no memory-safety preconditions; `worker` is our grandchild's pid, alive
    // (listed as svmm's child a moment ago) and not reaped by anyone but svmm.
    unsafe { libc::kill(worker as i32, libc::SIGKILL) };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !running.stderr_so_far().contains(&worker.to_string())
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    running.write_stdin(b"after-kill\n")?;
    let out = running.wait()?;
    out.log("svmm testguest rng + worker killed");
    let report = out
        .stderr
        .lines()
        .find(|l| l.contains(&worker.to_string()))
        .unwrap_or_default()
        .to_string();
    assert!(
        report.contains("rng") && report.contains("SIGKILL"),
        "no one-line report naming the device, pid {worker} and SIGKILL\n{}",
        out.report()
    );
    out.assert_line("testguest: rng ok ");
    out.assert_line("testguest: echo ok line=after-kill");
    let reinit = out.assert_line("testguest: rng_reinit FAIL");
    assert!(
        reinit.contains("needs_reset") || reinit.contains("features_ok_refused"),
        "the guest should see the dead device refuse re-initialisation: {reinit}\n{}",
        out.report()
    );
    out.assert_no_panic();
    // The VM survived: the guest ran to its summary and exited through the exit port.
    assert_eq!(out.testguest_summary(), Some((2, 1)), "\n{}", out.report());
    out.assert_status(1);
    Ok(())
}

/// `kill -9` of svmm leaves no worker behind (PR_SET_PDEATHSIG in every worker).
fn svmm_sigkill() -> TrialResult {
    let mut running = guest("testguest.run=rng testguest.sleep_ms=20000")
        .args(["--device", "rng", "--device", "rng"])
        .spawn()?;
    running.wait_for_line(SLEEPING, TIMEOUT)?;
    let workers = procfs::wait_for_children(running.pid(), 2, Duration::from_secs(5));
    if workers.len() != 2 {
        return Err(format!("expected two workers, found {workers:?}").into());
    }
    running.kill();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while workers.iter().any(|w| procfs::alive(*w)) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let survivors: Vec<u32> = workers.into_iter().filter(|w| procfs::alive(*w)).collect();
    if survivors.is_empty() {
        Ok(())
    } else {
        Err(format!("workers {survivors:?} survived svmm's SIGKILL").into())
    }
}

/// svmm's exit status with `--on-worker-exit=stop` once a worker failed (vmm/src/exit_code.rs).
const EXIT_DEVICE_FAILED: i32 = 71;

/// A fault trial's run could not start because this svmm lacks the test-only faults.
fn check_fault_support(out: &VmOutput) -> TrialResult {
    if out.stderr.contains("unknown option 'fault'") {
        return Err(format!(
            "{} was built without the test-only worker faults: build it with \
             `cargo build --release -p vmm --features test-faults` (tests/run.sh does)",
            tests::binary::svmm_bin().display()
        )
        .into());
    }
    Ok(())
}

/// The one line svmm printed about the death of `device`'s worker (exactly one).
fn death_line(out: &VmOutput, device: &str) -> String {
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with(&format!("svmm: {device} worker (pid ")))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "want exactly one line about the death of {device}'s worker\n{}",
        out.report()
    );
    lines[0].to_string()
}

/// The guest's re-initialisation of a dead device is refused cleanly.
fn assert_reinit_refused(out: &VmOutput, test: &str) {
    let reinit = out.assert_line(&format!("testguest: {test} FAIL"));
    assert!(
        reinit.contains("needs_reset") || reinit.contains("features_ok_refused"),
        "the guest should see the dead device refuse re-initialisation: {reinit}\n{}",
        out.report()
    );
}

/// A worker that makes a forbidden system call dies of SIGSYS; svmm names the call, the VM
/// survives, and the guest finds the device needing reset.
fn seccomp_violation() -> TrialResult {
    let out = guest("testguest.run=rng,rng_reinit")
        .args(["--device", "rng,fault=syscall"])
        .run()?;
    out.log("svmm testguest rng, worker makes a forbidden syscall");
    check_fault_support(&out)?;
    let line = death_line(&out, "rng#0");
    assert!(
        line.contains("killed by SIGSYS") && line.contains("syscall openat"),
        "the report should name SIGSYS and the call: {line}\n{}",
        out.report()
    );
    assert!(line.ends_with("VM keeps running"), "{line}");
    out.assert_line("testguest: rng FAIL");
    assert_reinit_refused(&out, "rng_reinit");
    out.assert_no_panic();
    assert_eq!(out.testguest_summary(), Some((0, 2)), "\n{}", out.report());
    out.assert_status(1);
    Ok(())
}

/// A hostile worker (`fault`: garbage on its socket, silence, a flood of messages) gets its
/// device marked broken and is killed; svmm neither panics nor stops, and the other device
/// keeps serving the guest.
fn malicious(fault: &str) -> TrialResult {
    let out = guest("testguest.run=rng,rng_reinit,rng@1,rng_reinit@1")
        .args(["--device", &format!("rng,fault={fault}"), "--device", "rng"])
        .run()?;
    out.log(&format!(
        "svmm testguest rng, two devices, rng#0 worker: {fault}"
    ));
    check_fault_support(&out)?;
    let line = death_line(&out, "rng#0");
    assert!(
        line.contains("killed by svmm: ") && line.ends_with("VM keeps running"),
        "svmm should report killing the {fault} worker: {line}\n{}",
        out.report()
    );
    out.assert_line("testguest: rng FAIL");
    assert_reinit_refused(&out, "rng_reinit");
    out.assert_line("testguest: rng@1 ok bytes=2048 requests=32 ");
    out.assert_line("testguest: rng_reinit@1 ok ");
    assert!(
        !out.stderr.contains("svmm: rng#1 worker"),
        "the healthy device's worker was harmed\n{}",
        out.report()
    );
    assert!(
        out.stderr
            .lines()
            .any(|l| l.starts_with("svmm: rng#1 (sandboxed): q0 requests=34 ")),
        "the healthy device should have served both of its tests\n{}",
        out.report()
    );
    out.assert_no_panic();
    assert_eq!(out.testguest_summary(), Some((2, 2)), "\n{}", out.report());
    out.assert_status(1);
    Ok(())
}

/// `--on-worker-exit=stop`: a worker that exits on its own ends the VM with svmm's documented
/// status, after the one-line report.
fn worker_exit_stops_vm() -> TrialResult {
    let out = guest("testguest.run=rng,echo testguest.echo_timeout_ms=30000")
        .args(["--device", "rng,fault=exit", "--on-worker-exit=stop"])
        .run()?;
    out.log("svmm testguest rng, worker exits, --on-worker-exit=stop");
    check_fault_support(&out)?;
    let line = death_line(&out, "rng#0");
    assert!(
        line.contains("exited with status 3"),
        "the report should give the worker's exit status: {line}\n{}",
        out.report()
    );
    assert!(
        out.stderr
            .lines()
            .any(|l| l.starts_with("svmm: stopping the VM (--on-worker-exit=stop)")),
        "\n{}",
        out.report()
    );
    assert!(
        out.testguest_summary().is_none(),
        "the VM should have stopped before the guest finished\n{}",
        out.report()
    );
    out.assert_no_panic();
    out.assert_status(EXIT_DEVICE_FAILED);
    Ok(())
}
