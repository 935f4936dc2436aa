//! What svmm does with devices whatever their kind, seen through the test guest's own
//! virtio-mmio driver (with virtio-rng as the device): slots and interrupts of several devices,
//! `--report-timings`, an unknown kind, and `svmm __worker` started by hand, as the broker
//! would, to check its protocol. Each kind has its own suite (rng.rs, blk.rs, ...); the sandbox
//! has sandbox.rs.
//!
//! svmm confines its own threads too: while the guest runs, `/proc` shows every one of its
//! threads under the filter its `--print-sandbox` table of threads says.
//!
//! The main thread confines itself before any vCPU runs the guest: the hidden test option
//! `--test-gate-probe` reads the main thread's `Seccomp:` from `/proc` where the vCPU gate opens
//! and where each vCPU passes it.
//!
//! `--report-timings` prints one spawn-time line per device, sandboxed and in-process alike.
//!
//! The broker is asked for every sandboxed worker as soon as it is forked, before svmm gives
//! the VM its RAM: the workers come up while svmm builds the VM, not while the guest boots.
//!
//! Each trial is one short boot; they run one at a time (this host has few cores).

use std::collections::BTreeMap;
use std::time::Duration;

use tests::suite::TrialResult;
use tests::{paths, Suite, TestVm, VmOutput};

const TIMEOUT: Duration = Duration::from_secs(60);
/// The rng test's result line up to its timing fields (32 requests of 64 bytes).
const RNG_OK: &str = "testguest: rng ok bytes=2048 requests=32 ";

fn main() {
    Suite::new("devices")
        .sequential()
        .test("two_rng_devices_without_acpi", two_rng_devices_without_acpi)
        .test("report_timings_per_device", report_timings_per_device)
        .test("unknown_kind_lists_supported_kinds", unknown_kind)
        .test("spawned_worker_mode", spawned_worker_mode)
        .test(
            "vmm_threads_run_under_seccomp",
            vmm_threads_run_under_seccomp,
        )
        .test(
            "main_thread_confined_before_first_vcpu_run",
            main_thread_confined_before_first_vcpu_run,
        )
        .test(
            "sandboxed_workers_start_while_the_vm_is_built",
            sandboxed_workers_start_while_the_vm_is_built,
        )
        .run()
}

/// The test guest running `tests` with `devices` (svmm `--device` specs).
fn guest(tests: &str, devices: &[&str]) -> TestVm {
    let mut vm = TestVm::testguest(format!("testguest.run={tests}")).timeout(TIMEOUT);
    for spec in devices {
        vm = vm.device(*spec);
    }
    vm
}

/// What every good run shows: the device probed in slot 0, one pass, exit 0, no panic.
fn assert_passed(out: &VmOutput) {
    out.assert_line("testguest: virtio-mmio 0 addr=0xd0000000 size=0x1000 irq=5 id=4");
    assert_eq!(out.testguest_summary(), Some((1, 0)), "\n{}", out.report());
    out.assert_no_panic();
    out.assert_status(0);
}

/// The per-device statistics line svmm prints at VM end.
fn assert_stats(out: &VmOutput, line: &str) {
    assert!(
        out.stderr.lines().any(|l| l == line),
        "missing statistics line {line:?}\n{}",
        out.report()
    );
}

/// Two devices take slots 0 and 1 (IRQs 5 and 6); without ACPI the command line alone lists them.
fn two_rng_devices_without_acpi() -> TrialResult {
    let out = guest("rng", &["rng,sandbox=off", "rng,sandbox=off"])
        .arg("--acpi=off")
        .run()?;
    out.log("svmm testguest rng, two devices, --acpi=off");
    out.assert_line("testguest: virtio-mmio 1 addr=0xd0001000 size=0x1000 irq=6 id=4");
    out.assert_line("testguest: found 2 virtio-mmio devices");
    out.assert_line(RNG_OK);
    assert_passed(&out);
    assert_stats(&out, "svmm: rng#1 (in-process): no requests");
    Ok(())
}

/// `--report-timings`: one `svmm: timing device=NAME spawn_us=N` line per device, in slot order,
/// for sandboxed workers and in-process devices of both kinds, each with a plausible time: more
/// than nothing, less than the 5 s svmm waits for a worker's Ready message.
fn report_timings_per_device() -> TrialResult {
    let dir = paths::TempDir::new("timings");
    let image = dir.file("disk.img", &vec![0u8; 1 << 20]);
    let image = image.to_str().expect("temporary paths are UTF-8");
    let blk = format!("blk={image},ro");
    let blk_in_process = format!("blk={image},ro,sandbox=off");
    let out = guest("rng", &["rng", "rng,sandbox=off", &blk, &blk_in_process])
        .arg("--report-timings")
        .run()?;
    out.log("svmm testguest rng, --report-timings, 4 devices");
    out.assert_line(RNG_OK);
    out.assert_status(0);
    let timings: Vec<(&str, u64)> = out
        .stderr
        .lines()
        .filter_map(|l| l.strip_prefix("svmm: timing device="))
        .filter_map(|rest| {
            let (name, us) = rest.split_once(" spawn_us=")?;
            Some((name, us.parse().ok()?))
        })
        .collect();
    let names: Vec<&str> = timings.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        names,
        ["rng#0", "rng#1", "blk#2", "blk#3"],
        "one timing line per device, in slot order\n{}",
        out.report()
    );
    for (name, us) in timings {
        assert!(
            (1..5_000_000).contains(&us),
            "{name}: spawn_us={us} is not a plausible spawn time\n{}",
            out.report()
        );
    }
    // Without the option, no timing lines.
    let quiet = guest("rng", &["rng,sandbox=off"]).run()?;
    assert!(
        !quiet.stderr.contains("svmm: timing"),
        "timing lines without --report-timings\n{}",
        quiet.report()
    );
    Ok(())
}

/// A kind no build has: one line listing the kinds this build has (rng first).
fn unknown_kind() -> TrialResult {
    let out = guest("rng", &["bogus=/nonexistent"]).run()?;
    out.assert_status(64);
    let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.is_empty()).collect();
    let want = "svmm: error: --device 'bogus=/nonexistent': unknown device kind 'bogus' \
                (supported: rng, ";
    assert!(
        lines.len() == 1 && lines[0].starts_with(want) && lines[0].ends_with(')'),
        "\n{}",
        out.report()
    );
    Ok(())
}

/// `PF_USER_WORKER` (include/linux/sched.h): a thread the kernel made in a process for its
/// own work (KVM's `kvm-nx-lpage-recovery`, vhost's workers), which never runs the process's
/// code, so no filter of the process's applies to it.
const PF_USER_WORKER: u64 = 0x4000;

/// Whether thread `tid` of `pid` is a kernel worker ([`PF_USER_WORKER`] in its `stat` flags).
fn kernel_worker(pid: u32, tid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap_or_default();
    // After the name in parentheses: state, ppid, pgrp, session, tty_nr, tpgid, flags.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(6)?.parse::<u64>().ok())
        .is_some_and(|flags| flags & PF_USER_WORKER != 0)
}

/// The threads of `pid`: (tid, name, `/proc/<pid>/task/<tid>/status` fields).
fn threads(pid: u32) -> Vec<(u32, String, BTreeMap<String, String>)> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let Ok(tid) = task.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let fields = status
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        out.push((tid, comm.trim().to_string(), fields));
    }
    out
}

/// While the guest sleeps after its rng test, **every** thread of svmm — main, vCPUs, console
/// input, each device's monitor (a sandboxed and an in-process device)
/// and the in-process device's thread — runs under the filter svmm's own `--print-sandbox`
/// table of its threads says: no filter where it says "none", one filter in filter mode
/// (`Seccomp: 2`, `Seccomp_filters: 1`, `NoNewPrivs: 1`) otherwise; a thread the table does not
/// list fails, unless the kernel made it for its own work (`PF_USER_WORKER`: KVM's
/// `kvm-nx-lpage-recovery`), which runs none of svmm's code. The guest's rng test passed through the confined device thread, and svmm still
/// ends with the guest's status 0 and no seccomp report.
fn vmm_threads_run_under_seccomp() -> TrialResult {
    const SLEEPING: &str = "testguest: sleep ms=3000";
    let devices = ["rng", "rng,sandbox=off"];
    let report = TestVm::new(tests::Backend::Svmm)
        .arg("--print-sandbox")
        .device(devices[0])
        .device(devices[1])
        .timeout(TIMEOUT)
        .run()?;
    let table = thread_table(&report.stdout)?;
    let vm = guest("rng@1", &devices)
        .cmdline("testguest.run=rng@1 testguest.sleep_ms=3000")
        .cpus(2)
        .spawn()?;
    vm.wait_for_line(SLEEPING, TIMEOUT)?;
    let pid = vm.pid();
    let threads = threads(pid);
    let names = ["rng#0", "rng#1"];
    let mut seen = Vec::new();
    let mut problems = Vec::new();
    for (tid, comm, fields) in &threads {
        let role = table
            .iter()
            .find(|(role, _)| thread_matches(role, *tid == pid, comm, &names));
        let Some((role, filter)) = role else {
            if kernel_worker(pid, *tid) {
                eprintln!("    thread {tid} ({comm}): the kernel's own worker, runs no svmm code");
                continue;
            }
            problems.push(format!(
                "thread {tid} ({comm}) is not in svmm's table of threads"
            ));
            continue;
        };
        let want = if filter == "none" {
            (Some("0"), None)
        } else {
            (Some("2"), Some("1"))
        };
        let got = (
            fields.get("Seccomp").map(String::as_str),
            fields.get("Seccomp_filters").map(String::as_str),
        );
        let got = (got.0, got.1.filter(|_| want.1.is_some()));
        let nnp = fields.get("NoNewPrivs").map(String::as_str);
        if got != want || (filter != "none" && nnp != Some("1")) {
            problems.push(format!(
                "thread {tid} ({comm}, {role}: {filter}): Seccomp {:?}, Seccomp_filters {:?}, \
                 NoNewPrivs {nnp:?}",
                fields.get("Seccomp"),
                fields.get("Seccomp_filters")
            ));
        }
        seen.push(if *tid == pid {
            "main".to_string()
        } else {
            comm.clone()
        });
    }
    seen.sort_unstable();
    for want in [
        "main",
        "vcpu0",
        "vcpu1",
        "console-in",
        "mon-rng#0",
        "mon-rng#1",
        "dev-rng#1",
    ] {
        if !seen.iter().any(|s| s == want) {
            problems.push(format!("no thread {want} among {seen:?}"));
        }
    }
    if !problems.is_empty() {
        return Err(format!(
            "svmm's threads against its table:\n  {}",
            problems.join("\n  ")
        )
        .into());
    }
    eprintln!("    threads: {seen:?}");
    let out = vm.wait()?;
    out.log("svmm testguest rng, sleeping, threads inspected");
    out.assert_line("testguest: rng@1 ok bytes=2048 requests=32 ");
    assert!(!out.stderr.contains("seccomp"), "\n{}", out.report());
    assert_eq!(out.testguest_summary(), Some((1, 0)), "\n{}", out.report());
    out.assert_no_panic();
    out.assert_status(0);
    Ok(())
}

/// The table of svmm's own threads in a `--print-sandbox` report: (thread, filter), e.g.
/// `("vcpuN", "the vmm profile")`, `("main", "none while it builds the VM, then the vmm
/// profile")`.
fn thread_table(report: &str) -> Result<Vec<(String, String)>, String> {
    let section = tests::sandbox_report::section(report, "== svmm itself");
    let rows: Vec<(String, String)> = section
        .lines()
        .take_while(|l| !l.starts_with("seccomp: "))
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| {
            let row = l.trim();
            // The thread, then two or more spaces, then its filter.
            let at = row.find("  ")?;
            Some((row[..at].to_string(), row[at..].trim().to_string()))
        })
        .collect();
    if rows.len() < 5 {
        return Err(format!("no table of threads in the report:\n{section}"));
    }
    Ok(rows)
}

/// Whether a thread (`main`: the process's first thread; `comm` its name) is the table's
/// `role`: `main`, `vcpuN`, `console-in`, `mon-DEVICE`,
/// `dev-DEVICE (sandbox=off)`, with DEVICE one of `devices`.
fn thread_matches(role: &str, main: bool, comm: &str, devices: &[&str]) -> bool {
    let role = role.trim_end_matches(" (sandbox=off)");
    match role {
        "main" => main,
        _ if main => false,
        _ if role.ends_with('N') => comm
            .strip_prefix(&role[..role.len() - 1])
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
        _ if role.ends_with("DEVICE") => {
            let prefix = &role[..role.len() - "DEVICE".len()];
            devices.iter().any(|d| comm == format!("{prefix}{d}"))
        }
        _ => comm == role,
    }
}

/// `svmm __worker rng` started the way the broker starts it — fds at the fixed numbers of
/// `vmm/src/worker/mod.rs` (`fd_numbers`), its sandbox as `--sandbox-*` arguments, its config
/// as `--config=` (`vmm/src/worker/args.rs`) — confines
/// itself (here without namespaces: this harness is no broker) and speaks the control protocol:
/// `Ready` first, then `Activate`, `GetStats`, and exits 0 on `Shutdown`. Without the sandbox
/// arguments it refuses to run at all.
fn spawned_worker_mode() -> TrialResult {
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;

    use sys::{check, eventfd, memfd, owned};

    use ipc::{Channel, QueueConfig, VmmToWorker, WorkerToVmm};

    let (vmm, worker) = Channel::pair()?;
    let queue = eventfd()?;
    // In fd_numbers order: control, guest RAM, status page, irqfd, stop, queue 0, /dev/urandom.
    let passed: Vec<OwnedFd> = vec![
        worker.into(),
        memfd(1 << 20)?,
        memfd(4096)?,
        eventfd()?,
        eventfd()?,
        queue.try_clone()?,
        std::fs::File::open("/dev/urandom")?.into(),
    ];
    // Out of the way of 3..10 first, so that no dup2 below overwrites a source.
    let high: Vec<OwnedFd> = passed
        .iter()
        .map(|fd| {
            // SAFETY: F_DUPFD_CLOEXEC duplicates an open fd we own; the result is checked.
            let dup = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 100) };
            check(dup, "F_DUPFD_CLOEXEC").map(owned)
        })
        .collect::<std::io::Result<_>>()?;
    let count = passed.len();
    drop(passed);
    let raw: Vec<libc::c_int> = high.iter().map(AsRawFd::as_raw_fd).collect();
    let unconfined = std::process::Command::new(tests::binary::svmm_bin())
        .args(["__worker", "rng", "--seccomp=trap"])
        .output()?;
    let refusal = String::from_utf8_lossy(&unconfined.stderr);
    assert!(
        !unconfined.status.success() && refusal.contains("only runs confined"),
        "an unconfined worker must refuse to start: {:?} {refusal}",
        unconfined.status
    );
    let mut cmd = std::process::Command::new(tests::binary::svmm_bin());
    cmd.args(["__worker", "rng", "--seccomp=trap"]);
    cmd.args(sandbox_args(count));
    // RngConfig { source: Urandom } (the /dev/urandom fd above): variant 1, a 4-byte integer.
    cmd.arg("--config=01000000");
    // SAFETY: the closure runs in the forked child before exec and only calls dup2, which is
    // async-signal-safe, on fds that are open in the child (inherited `high`).
    unsafe {
        cmd.pre_exec(move || {
            for (target, fd) in (3..).zip(&raw) {
                if libc::dup2(*fd, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    drop(high);

    vmm.set_nonblocking(true)?;
    let recv = || -> Result<WorkerToVmm, String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match vmm.recv::<WorkerToVmm>() {
                Ok((msg, _)) => return Ok(msg),
                Err(ipc::ChannelError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(format!("worker: {e}")),
            }
        }
    };
    let ready = recv()?;
    assert!(
        matches!(
            ready,
            WorkerToVmm::Ready {
                device_type: 4,
                num_queues: 1,
                ..
            }
        ),
        "{ready:?}"
    );
    let activate = VmmToWorker::Activate {
        driver_features: 1 << 32,
        queues: vec![QueueConfig {
            index: 0,
            size: 16,
            desc_table: 0x1000,
            avail_ring: 0x2000,
            used_ring: 0x3000,
        }],
    };
    vmm.send(&activate, &[])?;
    assert_eq!(recv()?, WorkerToVmm::Activated);
    // A notification with nothing available: served, nothing used.
    sys::notify(&queue)?;
    vmm.send(&VmmToWorker::GetStats, &[])?;
    match recv()? {
        WorkerToVmm::Stats(stats) => assert_eq!(stats.queues[0].requests, 0),
        other => panic!("expected Stats, got {other:?}"),
    }
    vmm.send(&VmmToWorker::Shutdown, &[])?;
    let status = child.wait()?;
    assert_eq!(status.code(), Some(0), "worker exit: {status}");
    Ok(())
}

/// The `--sandbox-*` arguments of a worker with `fds` inherited fds, confined without
/// namespaces (the broker would clone it into new ones): as root, an otherwise unused uid/gid;
/// unprivileged, our own.
fn sandbox_args(fds: usize) -> Vec<String> {
    // SAFETY: geteuid/getegid have no preconditions and cannot fail.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let ids = match euid {
        0 => broker::WorkerIds {
            uid: 1_499_999_000,
            gid: 1_499_999_000,
            drop_groups: true,
        },
        _ => broker::WorkerIds {
            uid: euid,
            gid: egid,
            drop_groups: false,
        },
    };
    let fds = u32::try_from(fds).expect("a handful of fds");
    let mut config = broker::ConfineConfig::new(ids, fds, Vec::new());
    config.namespaces = false;
    config
        .to_args()
        .into_iter()
        .map(|a| a.into_string().expect("ASCII arguments"))
        .collect()
}

/// The few raw syscalls the spawned-worker trial needs to stand in for the broker.
mod sys {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    /// `ret`, or the OS error named after `what`.
    pub fn check(ret: libc::c_int, what: &str) -> io::Result<libc::c_int> {
        if ret < 0 {
            let err = io::Error::last_os_error();
            return Err(io::Error::new(err.kind(), format!("{what}: {err}")));
        }
        Ok(ret)
    }

    /// Owns an fd a syscall just created.
    pub fn owned(fd: libc::c_int) -> OwnedFd {
        // SAFETY: `fd` was just returned (and checked) by the syscall that created it; nothing
        // else owns it.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    /// A close-on-exec memfd of `size` bytes.
    pub fn memfd(size: i64) -> io::Result<OwnedFd> {
        // SAFETY: a NUL-terminated literal name and valid flags; the result is checked.
        let fd = unsafe { libc::memfd_create(c"test-memfd".as_ptr(), libc::MFD_CLOEXEC) };
        let fd = owned(check(fd, "memfd_create")?);
        // SAFETY: ftruncate on the memfd just created, which `fd` owns.
        let ret = unsafe { libc::ftruncate(fd.as_raw_fd(), size) };
        check(ret, "ftruncate")?;
        Ok(fd)
    }

    /// A close-on-exec, non-blocking eventfd.
    pub fn eventfd() -> io::Result<OwnedFd> {
        // SAFETY: eventfd2 with valid flags; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        Ok(owned(check(fd, "eventfd")?))
    }

    /// Adds 1 to an eventfd's counter.
    pub fn notify(fd: &OwnedFd) -> io::Result<()> {
        let one = 1u64;
        // SAFETY: writes the 8 bytes of a live u64 to an eventfd we own.
        let n = unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if n != 8 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The main thread installs its filter before any vCPU runs the guest. `--test-gate-probe`
/// (`vmm/src/gate_probe.rs`) reads the main thread's `Seccomp:` field from `/proc` in
/// `Vcpus::release` before the gate opens, and in each vCPU thread after it passed the gate and
/// before its first `KVM_RUN`. Both must say 2 (filter). The gate's probe decides without
/// timing luck: were the gate opened before the main thread confines itself (the two lines of
/// `vm::run` swapped), it reads 0 every time, since the main thread itself opens the gate. The
/// vCPUs' lines show that each one ran the guest only after the gate opened (they come after
/// the gate's line) with the main thread confined. The guest's rng test still passes.
fn main_thread_confined_before_first_vcpu_run() -> TrialResult {
    const PROBE: &str = "svmm: test-gate-probe: ";
    let out = guest("rng", &["rng"])
        .cpus(2)
        .arg("--test-gate-probe")
        .run()?;
    out.log("svmm testguest rng, 2 vCPUs, --test-gate-probe");
    assert_passed(&out);
    let probes: Vec<&str> = out
        .stderr
        .lines()
        .filter_map(|l| l.strip_prefix(PROBE))
        .collect();
    assert_eq!(
        probes.first().copied(),
        Some("gate opened, main thread Seccomp 2"),
        "the gate's probe comes first and sees the main thread filtered\n{}",
        out.report()
    );
    let mut vcpus: Vec<&str> = probes[1..].to_vec();
    vcpus.sort_unstable();
    assert_eq!(
        vcpus,
        [
            "vcpu0 passed the gate, main thread Seccomp 2",
            "vcpu1 passed the gate, main thread Seccomp 2"
        ],
        "each vCPU passes the gate once, after it opened, with the main thread filtered\n{}",
        out.report()
    );
    Ok(())
}

/// svmm asks the broker for every sandboxed worker right after forking it, all at once, and
/// only then gives the VM its guest RAM (`KVM_SET_USER_MEMORY_REGION`, milliseconds on some
/// hosts) and builds the rest, so the workers exec and confine themselves beside svmm's own
/// set-up instead of beside the booting guest (`vmm/src/vm.rs`). Seen from outside with
/// `strace` on svmm's main thread alone (no `-f`): its first `sendmsg`s are the four `Start`s,
/// one per device, back to back without waiting for an answer, and all before guest RAM's
/// memory slot. (Before, the main thread sent each `Start` and waited for its answer once the
/// vCPUs ran.) The guest's rng tests still pass on all four.
fn sandboxed_workers_start_while_the_vm_is_built() -> TrialResult {
    let dir = paths::TempDir::new("early-start-strace");
    let trace = dir.path().join("strace.txt");
    let out = guest("rng,rng@1,rng@2,rng@3", &["rng", "rng", "rng", "rng"])
        .wrapper([
            "strace".into(),
            "-q".into(),
            "-e".into(),
            "trace=sendmsg,recvmsg,ioctl".into(),
            "-o".into(),
            trace.clone().into_os_string(),
        ])
        .run()
        .map_err(|e| format!("{e} (is strace installed? images/build.sh all installs it)"))?;
    out.log("svmm testguest rng x4, 4 sandboxed rng, main thread under strace");
    assert_eq!(out.testguest_summary(), Some((4, 0)), "\n{}", out.report());
    out.assert_status(0);
    let trace = std::fs::read_to_string(&trace).map_err(|e| format!("no strace output: {e}"))?;
    // The main thread's calls up to guest RAM's memory slot.
    let before: Vec<&str> = trace
        .lines()
        .take_while(|l| !l.contains("KVM_SET_USER_MEMORY_REGION"))
        .filter(|l| l.starts_with("sendmsg(") || l.starts_with("recvmsg("))
        .collect();
    if trace
        .lines()
        .all(|l| !l.contains("KVM_SET_USER_MEMORY_REGION"))
    {
        return Err(format!("strace saw no KVM_SET_USER_MEMORY_REGION:\n{trace}").into());
    }
    let starts = before.iter().filter(|l| l.starts_with("sendmsg(")).count();
    if starts != 4 || before.iter().any(|l| l.starts_with("recvmsg(")) {
        return Err(format!(
            "before guest RAM's memory slot the main thread should send the 4 Starts and \
             receive nothing; it made: {before:#?}"
        )
        .into());
    }
    Ok(())
}
