//! virtio-fs end to end: the test guest's own FUSE client against svmm's fs device, sandboxed
//! and in-process (and as the unprivileged `svmm-test` user), and the host looking at the
//! shared directory afterwards — never trusting what the guest or svmm say about it.
//!
//! - `fs`, `fs_write`, `fs_ro`, `fs_escape` (images/testguest/src/tests/fs/mod.rs) on a share the
//!   host prepared (`tests::share`); then the host compares the tree with what the guest must
//!   have made, changed or left alone, and an inotify watch on the canary beside the share
//!   (and on that directory) proves nothing there was opened, read or changed.
//! - A SIGKILLed fs worker: one line, a new worker, and the guest's next initialisation of the
//!   device is served; a worker misbehaving (`fault=`) while the device runs: one line, a new
//!   worker, and the device needs a reset (fs requests cannot be taken again), which the guest
//!   finds.
//! - Bad input (a missing directory, a file, a tag longer than 36 bytes, unknown options, a bad
//!   `uid-map=`): one line each, never a panic.
//! - The fs worker seen from `/proc` and `--print-sandbox`: the share and `/proc` as its only
//!   host fds, Landlock beneath the share, the `fs` / `fs_ro` seccomp profile.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use tests::output::{queue_counters, stats_line};
use tests::procfs;
use tests::share::{self, tree, Share, Watch};
use tests::suite::TrialResult;
use tests::{paths, Backend, Suite, TestVm, VmOutput};

const TIMEOUT: Duration = Duration::from_secs(60);
const SLEEPING: &str = "testguest: sleep ms=";
/// svmm's exit status for bad input (`vmm/src/exit_code.rs`).
const BAD_INPUT: i32 = 65;
/// svmm's exit status for a bad command line.
const BAD_USAGE: i32 = 64;

#[derive(Clone, Copy, Debug)]
enum Mode {
    Sandboxed,
    InProcess,
    /// Sandboxed, svmm run as the unprivileged test user.
    Unprivileged,
}

impl Mode {
    fn option(self) -> &'static str {
        match self {
            Mode::InProcess => ",sandbox=off",
            Mode::Sandboxed | Mode::Unprivileged => "",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Sandboxed => "sandboxed",
            Mode::InProcess => "in_process",
            Mode::Unprivileged => "unprivileged",
        }
    }
}

fn main() {
    let not_root = (!is_root()).then(|| "not running as root".to_string());
    let mut suite = Suite::new("fs").sequential();
    for mode in [Mode::Sandboxed, Mode::InProcess, Mode::Unprivileged] {
        let skip = matches!(mode, Mode::Unprivileged)
            .then(|| not_root.clone())
            .flatten();
        let name = |test: &str| format!("{test}_{}", mode.name());
        suite = suite
            .test_unless(&name("guest_fs"), skip.clone(), move || guest_fs(mode))
            .test_unless(&name("guest_fs_write"), skip.clone(), move || {
                guest_fs_write(mode)
            })
            .test_unless(&name("guest_fs_escape"), skip.clone(), move || {
                guest_fs_escape(mode)
            });
        if !matches!(mode, Mode::Unprivileged) {
            suite = suite.test(&name("guest_fs_ro"), move || guest_fs_ro(mode));
        }
    }
    suite
        .test("worker_sigkill_vm_survives", worker_sigkill)
        .test("malicious_worker_garbage", || malicious("garbage"))
        .test("malicious_worker_syscall", || malicious("syscall"))
        .test("bad_input_one_line", bad_input)
        .test("worker_holds_share_and_proc", worker_fds)
        .test("print_sandbox_fs", print_sandbox_fs)
        .run()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The test guest with `cmdline` and one fs device `spec`, run as `mode` says.
fn guest(cmdline: &str, spec: String, mode: Mode, dir: &paths::TempDir) -> Result<TestVm, String> {
    let vm = TestVm::testguest(cmdline).device(spec).timeout(TIMEOUT);
    match mode {
        Mode::Unprivileged => unprivileged(vm, dir),
        _ => Ok(vm),
    }
}

/// Runs `test` on `share` in `mode`; returns the guest's result line after checking the run
/// passed and the canary (and everything beside the share) was not touched.
fn run_guest(
    share: &Share,
    test: &str,
    options: &str,
    mode: Mode,
) -> Result<(VmOutput, String), String> {
    let spec = share.spec("share", &format!("{options}{}", mode.option()));
    let vm = guest(&format!("testguest.run={test}"), spec, mode, &share.dir)?;
    let outside_before = tree(&share.outside);
    let canary = Watch::new(&share.canary()).map_err(|e| e.to_string())?;
    let outside = Watch::new(&share.outside).map_err(|e| e.to_string())?;
    let out = vm.run().map_err(|e| e.to_string())?;
    out.log(&format!("svmm testguest {test} ({})", mode.name()));
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with(&format!("testguest: {test} ")))
        .unwrap_or_default()
        .to_string();
    eprintln!("    {line}");
    if !line.starts_with(&format!("testguest: {test} ok ")) || out.status != Some(0) {
        return Err(format!("{test} did not pass\n{}", out.report()));
    }
    out.assert_no_panic();
    for (what, watch) in [
        ("the canary", &canary),
        ("the directory beside the share", &outside),
    ] {
        let events = watch.events();
        if !events.is_empty() {
            return Err(format!(
                "{what} was touched: inotify masks {events:x?}\n{}",
                out.report()
            ));
        }
    }
    if tree(&share.outside) != outside_before {
        return Err("the directory beside the share changed".into());
    }
    Ok((out, line))
}

/// `fs`: every file read byte-exact, the share listed; nothing changes.
fn guest_fs(mode: Mode) -> TrialResult {
    let share = Share::with_files("fs");
    let before = tree(&share.share);
    let (out, line) = run_guest(&share, "fs", "", mode)?;
    if !line.contains(" tag=share files=4 entries=6") {
        return Err(format!("unexpected figures: {line}\n{}", out.report()).into());
    }
    // The hiprio queue and the request queue; the one error reply is the guest's lookup of a
    // missing name (ENOENT), on the request queue.
    let stats = stats_line(&out.stderr, "fs#0").unwrap_or_default();
    let queues = queue_counters(stats).unwrap_or_default();
    let errors: Vec<u64> = queues.iter().map(|q| q.errors).collect();
    if queues.len() != 2 || queues[1].requests == 0 || errors != [0, 1] {
        return Err(format!(
            "want both queues, requests on q1, errors [0, 1]: {stats:?}\n{}",
            out.report()
        )
        .into());
    }
    if tree(&share.share) != before {
        return Err("`fs` changed the share".into());
    }
    Ok(())
}

/// `fs_write`: the host then finds exactly what the guest made.
fn guest_fs_write(mode: Mode) -> TrialResult {
    let share = Share::with_files("fs-write");
    let mut want = tree(&share.share);
    run_guest(&share, "fs_write", "", mode)?;
    want.extend([
        ("link".to_string(), Some(b"-> written.bin".to_vec())),
        ("newdir".to_string(), None),
        (
            "newdir/renamed.txt".to_string(),
            Some(b"temporary\n".to_vec()),
        ),
        (
            "written.bin".to_string(),
            Some(share::pattern(share::DATA_LEN)),
        ),
    ]);
    want.sort();
    let got = tree(&share.share);
    if got != want {
        let names =
            |t: &[(String, Option<Vec<u8>>)]| t.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        return Err(format!(
            "the share is not what fs_write made: got {:?}, want {:?}",
            names(&got),
            names(&want)
        )
        .into());
    }
    // Files the guest made belong to whoever serves the device on the host.
    let meta = std::fs::metadata(share.share.join("written.bin"))?;
    if meta.permissions().mode() & 0o7777 != 0o644 {
        return Err(format!("written.bin has mode {:o}", meta.permissions().mode()).into());
    }
    Ok(())
}

/// `fs_ro` on a `ro` share: every modifying request refused, the share unchanged.
fn guest_fs_ro(mode: Mode) -> TrialResult {
    let share = Share::with_files("fs-ro");
    let before = tree(&share.share);
    let (_, line) = run_guest(&share, "fs_ro", ",ro", mode)?;
    if !line.contains(" refused=12") {
        return Err(format!("unexpected figures: {line}").into());
    }
    if tree(&share.share) != before {
        return Err("a read-only share changed".into());
    }
    Ok(())
}

/// `fs_escape`: nothing outside the share is reached (checked by `run_guest`'s watches).
fn guest_fs_escape(mode: Mode) -> TrialResult {
    let share = Share::with_escapes("fs-escape");
    let before = tree(&share.share);
    let (_, line) = run_guest(&share, "fs_escape", "", mode)?;
    if !line.contains(" refused=") {
        return Err(format!("unexpected figures: {line}").into());
    }
    if tree(&share.share) != before {
        return Err("fs_escape changed the share".into());
    }
    Ok(())
}

/// A SIGKILLed fs worker while the driver has reset the device (between two tests): one line
/// naming it and its restart (`--on-worker-exit=restart`, the default), and the guest's next
/// fs test initialises the device again and is served by the new worker.
fn worker_sigkill() -> TrialResult {
    let share = Share::with_files("fs-kill");
    let mut running = guest(
        "testguest.run=fs,echo,fs_write testguest.echo_timeout_ms=30000",
        share.spec("share", ""),
        Mode::Sandboxed,
        &share.dir,
    )?
    .spawn()?;
    running.wait_for_line("testguest: echo ready", TIMEOUT)?;
    let workers = procfs::workers(running.pid());
    let [worker] = workers[..] else {
        return Err(format!("expected one worker, found {workers:?}").into());
    };
    // SAFETY: kill has no memory-safety preconditions; `worker` is svmm's child, alive a moment
    // ago and reaped by no one but svmm.
    unsafe { libc::kill(worker as i32, libc::SIGKILL) };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !running.stderr_so_far().contains(&worker.to_string())
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    running.write_stdin(b"after-kill\n")?;
    let out = running.wait()?;
    out.log("svmm testguest fs + worker killed");
    let report = out.worker_deaths("fs#0");
    if report.len() != 1
        || !report[0].contains("killed by SIGKILL; restart 1 (pid ")
        || !report[0].contains("nothing to resume")
    {
        return Err(format!("want one line about the restarted worker\n{}", out.report()).into());
    }
    out.assert_line("testguest: fs ok ");
    out.assert_line("testguest: echo ok line=after-kill");
    out.assert_line("testguest: fs_write ok ");
    out.assert_no_panic();
    out.assert_status(0);
    Ok(())
}

/// A misbehaving fs worker (`fault=MODE`) while the guest uses the device: svmm reports it in
/// one line, restarts it, and — an fs device's requests cannot be taken again — leaves the
/// device needing a reset, which the guest finds; the VM keeps running.
fn malicious(fault: &str) -> TrialResult {
    let share = Share::with_files("fs-fault");
    let out = guest(
        "testguest.run=fs",
        share.spec("share", &format!(",fault={fault}")),
        Mode::Sandboxed,
        &share.dir,
    )?
    .run()?;
    out.log(&format!("svmm testguest fs, worker fault {fault}"));
    if out.stderr.contains("unknown option 'fault'") {
        return Err(
            "svmm was built without the test-only faults (tests/run.sh builds them)".into(),
        );
    }
    let lines = out.worker_deaths("fs#0");
    let needs_reset = "device needs reset: its requests cannot be taken again (its FUSE session";
    if lines.len() != 1
        || !lines[0].contains("; restart 1 (pid ")
        || !lines[0].contains(needs_reset)
    {
        return Err(format!("want one line about the {fault} worker\n{}", out.report()).into());
    }
    if fault == "syscall" && !lines[0].contains("killed by SIGSYS") {
        return Err(format!("the report should name SIGSYS: {}", lines[0]).into());
    }
    let failed = out.assert_line("testguest: fs FAIL");
    if !failed.contains("needs_reset") {
        return Err(format!("the guest should find the device needing reset: {failed}").into());
    }
    out.assert_no_panic();
    out.assert_status(1);
    Ok(())
}

/// Bad input: one line each, the right exit status, no guest output, no panic.
fn bad_input() -> TrialResult {
    let share = Share::with_files("fs-bad");
    let file = share.share.join("hello.txt");
    let missing = share.dir.path().join("missing");
    let cases: Vec<(String, i32, &str)> = vec![
        (
            format!("fs={},tag=t", missing.display()),
            BAD_INPUT,
            "No such file or directory",
        ),
        (
            format!("fs={},tag=t", file.display()),
            BAD_INPUT,
            "is not a directory",
        ),
        (share.spec(&"t".repeat(37), ""), BAD_USAGE, "tag"),
        (format!("fs={}", share.share.display()), BAD_USAGE, "tag"),
        (share.spec("t", ",colour=blue"), BAD_USAGE, "colour"),
        (share.spec("t", ",uid-map=x"), BAD_USAGE, "uid-map"),
        (share.spec("t", ",cache=sometimes"), BAD_USAGE, "cache"),
        (share.spec("t", ",queues=0"), BAD_USAGE, "queues"),
    ];
    for (spec, status, why) in cases {
        let out = TestVm::svmm(paths::artefact("testguest.elf"))
            .cmdline("testguest.run=fs")
            .device(spec.clone())
            .timeout(TIMEOUT)
            .run()?;
        let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.is_empty()).collect();
        let ok = out.status == Some(status)
            && lines.len() == 1
            && lines[0].starts_with("svmm: ")
            && lines[0].contains(why)
            && !out.stdout.contains("testguest: fs")
            && !out.stderr.contains("panicked");
        if !ok {
            return Err(format!(
                "{spec}: expected exit {status} and one line about {why}\n{}",
                out.report()
            )
            .into());
        }
        eprintln!("    {}", lines[0]);
    }
    Ok(())
}

/// The sandboxed fs worker from `/proc`: the share and `/proc` are its only host fds, and it
/// runs under seccomp.
fn worker_fds() -> TrialResult {
    let share = Share::with_files("fs-worker");
    let mut vm = guest(
        "testguest.run=fs testguest.sleep_ms=30000",
        share.spec("share", ""),
        Mode::Sandboxed,
        &share.dir,
    )?
    .spawn()?;
    vm.wait_for_line(SLEEPING, TIMEOUT)?;
    let workers = procfs::wait_for_workers(vm.pid(), 1, Duration::from_secs(5));
    let [worker] = workers[..] else {
        return Err(format!("expected one worker, found {workers:?}").into());
    };
    let fds = procfs::fds(worker)?;
    let status = procfs::status(worker)?;
    vm.kill();
    let share_path = share.share.display().to_string();
    let mut problems = Vec::new();
    if !fds.values().any(|t| *t == share_path) {
        problems.push(format!("no fd of the share {share_path}"));
    }
    if !fds.values().any(|t| t == "/proc") {
        problems.push("no fd of /proc".to_string());
    }
    // Everything else is the worker's own (sockets, eventfds, memfds, anonymous inodes) or a
    // node of the share the guest looked up.
    for (fd, target) in &fds {
        let own = target.starts_with("socket:")
            || target.starts_with("anon_inode:")
            || target.starts_with("/memfd:")
            || target.starts_with("/dev/null")
            || target.starts_with("pipe:")
            || target.starts_with(&share_path)
            || target == "/proc";
        if !own {
            problems.push(format!("fd {fd} is {target}"));
        }
    }
    if status.get("Seccomp").map(String::as_str) != Some("2") {
        problems.push(format!("Seccomp: {:?}", status.get("Seccomp")));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("fs worker: {}\nfds: {fds:?}", problems.join("; ")).into())
    }
}

/// `svmm --print-sandbox --device fs=...`: the share and `/proc` as host resources, Landlock
/// beneath the share (read-only with `ro`), the fs profile with `openat2` but no `openat`.
fn print_sandbox_fs() -> TrialResult {
    let share = Share::with_files("fs-print");
    let report = |options: &str| -> Result<String, String> {
        let out = TestVm::new(Backend::Svmm)
            .arg("--print-sandbox")
            .device(share.spec("share", options))
            .timeout(Duration::from_secs(30))
            .run()
            .map_err(|e| e.to_string())?;
        if out.status != Some(0) || !out.stderr.is_empty() {
            return Err(out.report());
        }
        Ok(out.stdout)
    };
    let rw = report("")?;
    let ro = report(",ro")?;
    let path = share.share.display().to_string();
    for (text, needle) in [
        (&rw, "== fs#0: sandboxed worker process".to_string()),
        (&rw, format!("host resource of fs: {path} (directory")),
        (&rw, "host resource of fs: /proc (directory".to_string()),
        (&rw, "read, write, create and remove files, directories and symlinks (no execute, device nodes, fifos or sockets)".to_string()),
        (&rw, "seccomp: profile \"fs\" in mode trap".to_string()),
        (&ro, "read files and list directories (no execute)".to_string()),
        (&ro, "seccomp: profile \"fs_ro\" in mode trap".to_string()),
    ] {
        if !text.contains(&needle) {
            return Err(format!("report lacks {needle:?}\n{text}").into());
        }
    }
    for (text, must, must_not) in [(&rw, "openat2", "openat"), (&ro, "openat2", "pwrite64")] {
        let section = &text
            [text.find("== fs#0").unwrap_or(0)..text.find("== svmm itself").unwrap_or(text.len())];
        let allowed: Vec<&str> = section
            .lines()
            .skip_while(|l| !l.starts_with("seccomp: "))
            .skip(2)
            .take_while(|l| l.starts_with("    "))
            .filter(|l| !l.starts_with("     "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        if !allowed.contains(&must) || allowed.contains(&must_not) || allowed.contains(&"open") {
            return Err(format!("fs filter allows {allowed:?}").into());
        }
    }
    Ok(())
}

/// Runs `vm` as the test user from world-readable copies of svmm and the guest in `dir` (see
/// `sandbox.rs`); the share is given to that user.
fn unprivileged(vm: TestVm, dir: &paths::TempDir) -> Result<TestVm, String> {
    let copy = |from: &Path, name: &str| -> Result<std::path::PathBuf, String> {
        let to = dir.path().join(name);
        std::fs::copy(from, &to).map_err(|e| format!("copy {}: {e}", from.display()))?;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("chmod {}: {e}", to.display()))?;
        Ok(to)
    };
    let uid = tests::confinement::id_of("-u")?;
    let gid = tests::confinement::id_of("-g")?;
    // The share belongs to the user svmm runs as: its worker has svmm's ids.
    chown_tree(&dir.path().join("share"), &uid, &gid)?;
    let svmm = copy(&tests::binary::svmm_bin(), "svmm")?;
    let kernel = copy(&paths::artefact("testguest.elf"), "testguest.elf")?;
    let wrapper = vec![
        "setpriv".to_string(),
        format!("--reuid={uid}"),
        format!("--regid={gid}"),
        "--init-groups".into(),
        "--inh-caps=-all".into(),
        "--".into(),
        "sh".into(),
        "-c".into(),
        format!("shift; exec {} \"$@\"", svmm.display()),
        "sh".into(),
    ];
    Ok(vm.kernel(kernel).wrapper(wrapper))
}

fn chown_tree(path: &Path, uid: &str, gid: &str) -> Result<(), String> {
    let status = std::process::Command::new("chown")
        .args(["-R", "-h", &format!("{uid}:{gid}")])
        .arg(path)
        .status()
        .map_err(|e| format!("chown: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("chown -R {} failed", path.display()))
    }
}
