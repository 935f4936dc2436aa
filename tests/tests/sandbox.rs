//! The sandbox end to end: every kind's worker confinement read from `/proc` while the guest
//! runs (`tests::confinement`, as root and as an unprivileged user, every kind of svmm's
//! registry held to svmm's own plan for it); then, with virtio-rng as the device,
//! workers killed from outside, svmm killed, and deliberately misbehaving workers, with
//! `--on-worker-exit=keep` (a dead worker's device stays broken; the default, `restart`, is
//! tests/tests/restart.rs). (rng itself, in both modes, is tests/tests/rng.rs.)
//!
//! The misbehaving-worker trials use the hidden `--device rng,fault=MODE` of svmm builds with
//! the `test-faults` feature (tests/run.sh builds svmm so).
//!
//! The unprivileged trial runs svmm as the user `svmm-test` (in the `kvm` group), which
//! `tests/run.sh` creates when it runs as root; run as a normal user, it runs as that user.
//! As root, the trial makes sure `svmm-test` has a subordinate id range
//! (`tests::confinement::ensure_subordinate_range`), so its workers get subordinate ids (fs
//! svmm's own); tests/tests/subids.rs checks the ids themselves.

use std::time::Duration;

use tests::confinement::{self, is_root, Identity, Planned};
use tests::procfs;
use tests::sandbox_report;
use tests::suite::TrialResult;
use tests::{paths, require_kvm, Backend, Suite, TestVm, VmOutput};

const TIMEOUT: Duration = Duration::from_secs(60);
/// What the test guest prints when its tests are done and it idles (`testguest.sleep_ms`).
const SLEEPING: &str = "testguest: sleep ms=";

fn main() {
    let not_root = (!is_root()).then(|| "not running as root".to_string());
    Suite::new("sandbox")
        .test(
            "svmm_threads_filtered_under_trap",
            svmm_threads_filtered_under_trap,
        )
        .test_unless(
            "svmm_and_broker_drop_root",
            not_root.clone(),
            svmm_and_broker_drop_root,
        )
        .test_unless("every_kind_confined_as_root", not_root, || {
            every_kind_confined(Identity::Root)
        })
        .test("every_kind_confined_unprivileged", || {
            every_kind_confined(Identity::Unprivileged)
        })
        .test("worker_sigkill_reported_vm_survives", worker_sigkill)
        .test("svmm_sigkill_leaves_no_worker", svmm_sigkill)
        .test("seccomp_violation_named", seccomp_violation)
        .test("malicious_worker_garbage", || malicious("garbage"))
        .test("malicious_worker_silent", || malicious("silent"))
        .test("malicious_worker_flood", || malicious("flood"))
        .test("worker_fds_never_reach_svmm", worker_fds_never_reach_svmm)
        .test(
            "landlock_and_root_refuse_from_inside",
            landlock_and_root_from_inside,
        )
        .test("ready_must_match_the_kind", ready_must_match_the_kind)
        .test(
            "unready_worker_fails_the_boot",
            unready_worker_fails_the_boot,
        )
        .test("worker_stderr_is_defused", worker_stderr_is_defused)
        .test("worker_exit_stops_vm_when_asked", worker_exit_stops_vm)
        .run()
}

fn guest(cmdline: &str) -> TestVm {
    TestVm::testguest(cmdline).timeout(TIMEOUT)
}

/// Every thread of svmm runs under its seccomp filter in trap mode through a whole VM life: an
/// SMP guest boots, sandboxed rng and blk workers and an in-process rng device serve it, the
/// console-input thread forwards a line, a worker is killed from outside (the broker reaps it
/// and reports it; the device's monitor says so and has it restarted through the broker, so
/// the restart path runs under the filter too), and the VM ends with the APs still running (the main thread kicks and joins the
/// vCPUs). A rule missing from `vmm.json` (or from a device profile) ends svmm with one
/// "seccomp denied system call" line and status 70, which fails the trial. While the guest
/// runs, every thread's `Seccomp:` field is read from `/proc`, the broker process's too: none
/// may be unfiltered.
fn svmm_threads_filtered_under_trap() -> TrialResult {
    let dir = paths::TempDir::new("trap-all-threads");
    let image = dir.path().join("disk.img");
    std::fs::write(&image, tests::disk::fresh_image())?;
    let mut running = guest("testguest.run=rng,blk,rng@1,echo,smp testguest.echo_timeout_ms=30000")
        .cpus(2)
        .args([
            "--seccomp=trap".to_string(),
            "--device".into(),
            "rng".into(),
            "--device".into(),
            format!("blk={},queues=2", image.display()),
            "--device".into(),
            "rng,sandbox=off".into(),
        ])
        .spawn()?;
    running.wait_for_line("testguest: echo ready", TIMEOUT)?;
    let svmm = running.pid();
    let threads = procfs::thread_seccomp(svmm)?;
    let unfiltered: Vec<_> = threads.iter().filter(|t| t.seccomp != "2").collect();
    let broker = procfs::broker(svmm).ok_or("svmm has no broker process")?;
    let broker_threads = procfs::thread_seccomp(broker)?;
    if broker_threads.len() != 1 || broker_threads[0].seccomp != "2" {
        return Err(format!("the broker is not one filtered thread: {broker_threads:?}").into());
    }
    let names: Vec<&str> = threads.iter().map(|t| t.name.as_str()).collect();
    for want in [
        "vcpu0",
        "vcpu1",
        "console-in",
        "mon-rng#0",
        "mon-blk#1",
        "dev-rng#2",
    ] {
        if !names.contains(&want) {
            return Err(format!("no thread {want} in svmm: {threads:?}").into());
        }
    }
    if !unfiltered.is_empty() {
        return Err(format!("svmm threads without a seccomp filter: {unfiltered:?}").into());
    }
    let workers = procfs::workers(svmm);
    let rng_worker = workers
        .iter()
        .copied()
        .find(|w| procfs::cmdline(*w).is_ok_and(|c| c.contains("__worker rng")))
        .ok_or_else(|| format!("no rng worker among {workers:?}"))?;
    // SAFETY: kill has no memory-safety preconditions; the pid is the broker's live child.
    unsafe { libc::kill(rng_worker as i32, libc::SIGKILL) };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !running.stderr_so_far().contains("svmm: rng#0 worker (pid")
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    running.write_stdin(b"under-trap\n")?;
    let out = running.wait()?;
    out.log("svmm, every thread under --seccomp=trap: SMP, rng, blk, in-process rng, kill");
    assert!(
        !out.stderr.contains("seccomp denied"),
        "a thread of svmm hit its filter\n{}",
        out.report()
    );
    let death = out.assert_one_worker_death("rng#0");
    let restarted =
        format!("svmm: rng#0 worker (pid {rng_worker}) killed by SIGKILL; restart 1 (pid");
    assert!(death.starts_with(&restarted), "{death}\n{}", out.report());
    out.assert_line("testguest: echo ok line=under-trap");
    out.assert_line("testguest: smp ok aps=1 ");
    out.assert_no_panic();
    assert_eq!(out.testguest_summary(), Some((5, 0)), "\n{}", out.report());
    out.assert_status(0);
    Ok(())
}

/// As root, svmm runs the guest as its own unprivileged user and the broker as another: read
/// from `/proc` while the guest runs, svmm's real, effective, saved and file-system uid and gid
/// are the last id of `--worker-ids`, with no supplementary groups and no capability in any set;
/// the broker's are the second-to-last, with only `CAP_SETUID` and `CAP_SETGID` (to map its
/// workers' ids), bounding set included, and `no_new_privs`. The worker still starts (its id
/// maps written by the unprivileged broker) and serves.
fn svmm_and_broker_drop_root() -> TrialResult {
    let (first, count) = (70_000u32, 16u32);
    let running = guest("testguest.run=rng testguest.sleep_ms=5000")
        .args([
            "--device".to_string(),
            "rng".into(),
            format!("--worker-ids={first}:{count}"),
        ])
        .spawn()?;
    running.wait_for_line(SLEEPING, TIMEOUT)?;
    let svmm = running.pid();
    let broker = procfs::broker(svmm).ok_or("svmm has no broker process")?;
    let ids = |id: u32| format!("{id}\t{id}\t{id}\t{id}");
    const NO_CAPS: &str = "0000000000000000";
    // CAP_SETGID (6) and CAP_SETUID (7).
    const SET_IDS: &str = "00000000000000c0";
    /// A process, how to name it, and the `/proc/PID/status` fields it must have.
    type Want<'a> = (u32, &'a str, [(&'a str, String); 8]);
    let want: [Want<'_>; 2] = [
        (
            svmm,
            "svmm",
            [
                ("Uid", ids(first + count - 1)),
                ("Gid", ids(first + count - 1)),
                ("Groups", String::new()),
                ("CapInh", NO_CAPS.into()),
                ("CapPrm", NO_CAPS.into()),
                ("CapEff", NO_CAPS.into()),
                ("CapAmb", NO_CAPS.into()),
                ("Seccomp", "2".into()),
            ],
        ),
        (
            broker,
            "the broker",
            [
                ("Uid", ids(first + count - 2)),
                ("Gid", ids(first + count - 2)),
                ("Groups", String::new()),
                ("CapPrm", SET_IDS.into()),
                ("CapEff", SET_IDS.into()),
                ("CapBnd", SET_IDS.into()),
                ("NoNewPrivs", "1".into()),
                ("Seccomp", "2".into()),
            ],
        ),
    ];
    let mut wrong = Vec::new();
    for (pid, who, fields) in want {
        let status = procfs::status(pid)?;
        for (field, value) in fields {
            let got = status.get(field).map(String::as_str).unwrap_or("(none)");
            if got != value {
                wrong.push(format!("{who} {field}: {got:?}, want {value:?}"));
            }
        }
    }
    let workers = procfs::workers(svmm);
    let out = running.wait()?;
    out.log("svmm as root, --worker-ids=70000:16: svmm's and the broker's ids from /proc");
    if !wrong.is_empty() {
        return Err(format!("{}\n{}", wrong.join("\n"), out.report()).into());
    }
    if workers.len() != 1 {
        return Err(format!("want one worker, found {workers:?}\n{}", out.report()).into());
    }
    out.assert_line("testguest: rng ok ");
    out.assert_status(0);
    Ok(())
}

/// Every kind of svmm's registry (`svmm __test-specs DIR`: each kind's own spec for this host),
/// each in its own VM with a guest that idles without touching it: the worker's confinement
/// from `/proc` (`tests::confinement`) against svmm's plan for it (`--print-sandbox` of the same
/// spec, run the same way), svmm running as `identity`.
fn every_kind_confined(identity: Identity) -> TrialResult {
    let fixtures = paths::TempDir::new("every-kind");
    let (specs, _listeners) = test_specs(&fixtures)?;
    // Kept until the end: the unprivileged user's copies of svmm and the guest.
    let copies = paths::TempDir::new("unprivileged");
    let as_identity = |vm: TestVm| -> Result<TestVm, String> {
        match identity {
            Identity::Unprivileged if is_root() => confinement::unprivileged(vm, &copies),
            _ => Ok(vm),
        }
    };
    let mut failures = Vec::new();
    for (kind, spec) in &specs {
        let report = as_identity(
            TestVm::new(Backend::Svmm)
                .args(["--print-sandbox", "--seccomp=trap"])
                .mem_mib(128)
                .device(spec),
        )?
        .timeout(TIMEOUT)
        .run()?;
        let section = sandbox_report::section(&report.stdout, &format!("== {kind}#0: "));
        let planned = Planned::parse(section)
            .map_err(|e| format!("{kind}: --print-sandbox: {e}\n{}", report.report()))?;
        if kind == "rng" {
            // rng's plan by the formulas in ARCHITECTURE.md (not read back from svmm): no
            // processes, NOFILE 3 + 6 inherited (the default rng keys its own generator and
            // holds no host file) + 16, nothing written, AS guest RAM + 64 MiB.
            for (name, want) in [
                ("NPROC", 0),
                ("CORE", 0),
                ("NOFILE", 3 + 6 + 16),
                ("FSIZE", 0),
                ("AS", (128 + 64) << 20),
            ] {
                if planned.rlimits.get(name) != Some(&Some(want)) {
                    failures.push(format!(
                        "rng: planned {name} {:?}, want {want}",
                        planned.rlimits.get(name)
                    ));
                }
            }
        }
        let vm = guest("testguest.run=none testguest.sleep_ms=20000")
            .arg("--seccomp=trap")
            .device(spec);
        let vm = as_identity(vm)?;
        let running = vm.spawn()?;
        running.wait_for_line(SLEEPING, TIMEOUT)?;
        let svmm = running.pid();
        let workers = procfs::wait_for_workers(svmm, 1, Duration::from_secs(5));
        let [worker] = workers[..] else {
            return Err(
                format!("{kind}: expected one worker under svmm, found {workers:?}").into(),
            );
        };
        let problems = confinement::problems(worker, svmm, identity, &planned)?;
        let fds = procfs::fds(worker)?;
        drop(running);
        if problems.is_empty() {
            eprintln!("    {kind} worker {worker}: confined as planned; fds {fds:?}");
        } else {
            failures.push(format!(
                "{kind} worker {worker} ({spec}):\n  {}\n  fds: {fds:?}",
                problems.join("\n  ")
            ));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("not confined as DESIGN.md says:\n{}", failures.join("\n")).into())
    }
}

/// A kind's name and its `--device` spec.
type KindSpec = (String, String);

/// Each kind of the registry and its test spec, the fixtures in `dir` — open to everyone, for
/// an unprivileged svmm. A socket among the fixtures (a kind that connects to one, e.g.
/// wayland's compositor) gets a listener here, held as long as the specs are used.
fn test_specs(
    dir: &paths::TempDir,
) -> Result<(Vec<KindSpec>, Vec<std::os::unix::net::UnixListener>), String> {
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::fs::PermissionsExt;
    let out = std::process::Command::new(tests::binary::svmm_bin())
        .arg("__test-specs")
        .arg(dir.path())
        .output()
        .map_err(|e| format!("svmm __test-specs: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "svmm __test-specs failed ({}; an svmm without the test-faults feature?): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let specs: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, s)| (k.to_string(), s.to_string()))
        .collect();
    if specs.len() < 3 {
        return Err(format!(
            "svmm __test-specs listed {specs:?}: fewer kinds than rng, blk, fs"
        ));
    }
    let mut listeners = Vec::new();
    let mut stack = vec![dir.path().to_path_buf()];
    while let Some(path) = stack.pop() {
        let is_socket = std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_socket());
        if is_socket {
            // svmm made it and exited: nobody listens on it any more.
            std::fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let listener = std::os::unix::net::UnixListener::bind(&path)
                .map_err(|e| format!("listen on {}: {e}", path.display()))?;
            listeners.push(listener);
        }
        let mode = if path.is_dir() { 0o777 } else { 0o666 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("chmod {}: {e}", path.display()))?;
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).map_err(|e| e.to_string())? {
                stack.push(entry.map_err(|e| e.to_string())?.path());
            }
        }
    }
    Ok((specs, listeners))
}

/// With `--on-worker-exit=keep`, a worker killed from outside is reported in one line
/// (device, pid, cause), the VM keeps running, and the guest then finds the device needing
/// reset instead of hanging.
fn worker_sigkill() -> TrialResult {
    let running = guest("testguest.run=rng,echo,rng_reinit testguest.echo_timeout_ms=30000")
        .args(["--device", "rng", "--on-worker-exit=keep"])
        .spawn()?;
    let mut running = running;
    running.wait_for_line("testguest: echo ready", TIMEOUT)?;
    let workers = procfs::workers(running.pid());
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
    out.assert_worker_report(worker, "rng#0", "SIGKILL");
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
    let mut workers = procfs::wait_for_workers(running.pid(), 2, Duration::from_secs(5));
    if workers.len() != 2 {
        return Err(format!("expected two workers, found {workers:?}").into());
    }
    // The broker goes with svmm too.
    workers.extend(procfs::broker(running.pid()));
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
/// survives, and (`--on-worker-exit=keep`) the guest finds the device needing reset.
fn seccomp_violation() -> TrialResult {
    let out = guest("testguest.run=rng,rng_reinit")
        .args(["--device", "rng,fault=syscall", "--on-worker-exit=keep"])
        .run()?;
    out.log("svmm testguest rng, worker makes a forbidden syscall");
    check_fault_support(&out)?;
    let line = out.assert_one_worker_death("rng#0");
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
/// device marked broken (`--on-worker-exit=keep`) and is killed; svmm neither panics nor
/// stops, and the other device keeps serving the guest.
fn malicious(fault: &str) -> TrialResult {
    let out = guest("testguest.run=rng,rng_reinit,rng@1,rng_reinit@1")
        .args([
            "--device",
            &format!("rng,fault={fault}"),
            "--device",
            "rng",
            "--on-worker-exit=keep",
        ])
        .run()?;
    out.log(&format!(
        "svmm testguest rng, two devices, rng#0 worker: {fault}"
    ));
    check_fault_support(&out)?;
    let line = out.assert_one_worker_death("rng#0");
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

/// A worker that attaches fds to a message (`fault=fds`: a valid `ConfigChanged` carrying its
/// control socket and its stop eventfd) is killed as misbehaving, and svmm never holds those
/// fds: it receives worker messages without a control buffer, so the kernel discards them.
/// Seen from outside with `strace -f -e trace=recvmsg`: the only `recvmsg`s that return
/// `SCM_RIGHTS` are the broker's (a worker's start), and svmm's thread sees `MSG_CTRUNC`.
fn worker_fds_never_reach_svmm() -> TrialResult {
    require_kvm();
    let dir = paths::TempDir::new("fds-strace");
    let trace = dir.path().join("strace.txt");
    let out = guest("testguest.run=rng,rng@1")
        .wrapper([
            "strace".into(),
            "-f".into(),
            "-q".into(),
            "-e".into(),
            "trace=recvmsg".into(),
            "-o".into(),
            trace.clone().into_os_string(),
        ])
        .args([
            "--device",
            "rng,fault=fds",
            "--device",
            "rng",
            "--on-worker-exit=keep",
        ])
        .run()
        .map_err(|e| format!("{e} (is strace installed? images/build.sh all installs it)"))?;
    out.log("svmm testguest rng under strace, rng#0 worker attaches fds");
    check_fault_support(&out)?;
    let line = out.assert_one_worker_death("rng#0");
    assert!(
        line.contains("killed by svmm: ") && line.contains("attached fds"),
        "svmm should kill the worker for attaching fds: {line}\n{}",
        out.report()
    );
    out.assert_line("testguest: rng@1 ok ");
    let trace = std::fs::read_to_string(&trace).map_err(|e| format!("no strace output: {e}"))?;
    // The only fds that travel are the broker's: each Start brings the broker a worker's 4
    // guest-facing fds (guest RAM, status page, irqfd, one queue), each Started brings svmm 4
    // (the control end twice, pidfd, stderr pipe) — two of each for the two devices. The
    // worker's 2 fds must arrive nowhere.
    let counts: Vec<usize> = trace
        .lines()
        .filter(|l| l.contains("SCM_RIGHTS"))
        .filter_map(|l| {
            let data = l.split("cmsg_data=[").nth(1)?.split(']').next()?;
            Some(data.split(',').count())
        })
        .collect();
    if counts != [4, 4, 4, 4] {
        return Err(format!(
            "fds received in messages of {counts:?} fds, want two broker Starts and two \
             Starteds of 4 each"
        )
        .into());
    }
    if !trace.lines().any(|l| l.contains("MSG_CTRUNC")) {
        return Err("no recvmsg saw the worker's fds discarded (MSG_CTRUNC)".into());
    }
    Ok(())
}

/// Landlock and the empty read-only root, proven from inside a worker rather than from svmm's
/// report: with `--seccomp=log` (so the calls get past the filter, which would otherwise trap
/// them first) `fault=escape` opens `/` for reading — the empty tmpfs root allows that by its
/// mode, only Landlock refuses it (`EACCES`) —, makes `/x` — the read-only root refuses it
/// (`EROFS`) — and opens `/etc/passwd` — not there after `pivot_root` (`ENOENT`) or refused.
/// The worker then serves the guest as usual.
fn landlock_and_root_from_inside() -> TrialResult {
    let out = guest("testguest.run=rng")
        .args(["--seccomp=log", "--device", "rng,fault=escape"])
        .run()?;
    out.log("svmm testguest rng, --seccomp=log, the worker tries the file system");
    check_fault_support(&out)?;
    let errno = |what: &str| -> Option<i32> {
        let prefix = format!("svmm: rng#0 worker: escape: {what}: errno ");
        out.stderr
            .lines()
            .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
    };
    let found = [
        errno("open / (read-dir)"),
        errno("mkdir /x"),
        errno("open /etc/passwd"),
    ];
    let [Some(open_root), Some(mkdir), Some(passwd)] = found else {
        return Err(format!("the worker did not report its attempts\n{}", out.report()).into());
    };
    assert_eq!(
        open_root,
        libc::EACCES,
        "Landlock should refuse reading the root\n{}",
        out.report()
    );
    assert_eq!(
        mkdir,
        libc::EROFS,
        "the root should be read-only\n{}",
        out.report()
    );
    assert!(
        [libc::ENOENT, libc::EACCES].contains(&passwd),
        "/etc/passwd should be out of reach (errno {passwd})\n{}",
        out.report()
    );
    out.assert_line("testguest: rng ok ");
    out.assert_status(0);
    Ok(())
}

/// svmm checks a worker's `Ready` against the kind it started, from the kind's declaration:
/// an rng worker that announces a block device with a feature no kind offers
/// (`fault=impostor`) does not become the guest's device; svmm refuses to start in one line
/// (exit 67).
fn ready_must_match_the_kind() -> TrialResult {
    let out = guest("testguest.run=rng")
        .args(["--device", "rng,fault=impostor"])
        .run()?;
    out.log("svmm testguest rng, the worker announces a block device");
    check_fault_support(&out)?;
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with("svmm: error: rng#0: device worker did not start"))
        .unwrap_or_default();
    assert!(
        line.contains("announced a device this kind is not: device type 2, a rng is 4"),
        "{line}\n{}",
        out.report()
    );
    out.assert_status(67);
    Ok(())
}

/// The vCPUs run while the workers come up, but a worker that never sends its `Ready`
/// (`fault=unready`, beside a healthy one) still fails the VM at its deadline, in one line
/// (exit 67); the guest, which probes the devices, waits at the device meanwhile.
fn unready_worker_fails_the_boot() -> TrialResult {
    let out = guest("testguest.run=rng")
        .args(["--device", "rng", "--device", "rng,fault=unready"])
        .run()?;
    out.log("svmm testguest rng, the second worker never says Ready");
    check_fault_support(&out)?;
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with("svmm: error: rng#1: device worker did not start"))
        .unwrap_or_default();
    assert!(
        line.contains("did not answer start within 5s"),
        "{line}\n{}",
        out.report()
    );
    out.assert_status(67);
    Ok(())
}

/// What a worker writes on its stderr reaches svmm's stderr only prefixed, cleaned and
/// rate-limited (`fault=stderr`: terminal escape sequences, a BEL, a forged `svmm: error:`
/// line, a bidirectional override, a carriage return, then 200 lines): no escape byte, BEL,
/// carriage return or override arrives, no line but svmm's own starts with `svmm: error`, and
/// the flood is cut after a burst, with a line that says how much was dropped.
fn worker_stderr_is_defused() -> TrialResult {
    let out = guest("testguest.run=rng")
        .args(["--device", "rng,fault=stderr"])
        .run()?;
    out.log("svmm testguest rng, the worker writes escapes, a forged line and a flood");
    check_fault_support(&out)?;
    for bad in ['\x1b', '\x07', '\r', '\u{202e}'] {
        assert!(
            !out.stderr.contains(bad),
            "{bad:?} reached svmm's stderr\n{}",
            out.report()
        );
    }
    assert!(
        !out.stderr.lines().any(|l| l.starts_with("svmm: error")),
        "a forged svmm line got through\n{}",
        out.report()
    );
    assert!(
        out.stderr
            .lines()
            .any(|l| l == "svmm: rng#0 worker: ?[2J?]0;owned?svmm: error: forged by the worker"),
        "the worker's line should be shown, defused\n{}",
        out.report()
    );
    let flood = out
        .stderr
        .lines()
        .filter(|l| l.contains("flood line"))
        .count();
    assert!(flood <= 25, "{flood} flood lines passed\n{}", out.report());
    assert!(
        out.stderr.contains("svmm: rng#0 worker: (") && out.stderr.contains("more lines dropped"),
        "the dropped lines should be counted\n{}",
        out.report()
    );
    out.assert_line("testguest: rng ok ");
    out.assert_status(0);
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
    let line = out.assert_one_worker_death("rng#0");
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
