//! virtio-blk end to end: the test guest's own driver against svmm's blk device, sandboxed and
//! in-process, and the host reading the image file afterwards — never trusting what the guest
//! or svmm say about the disk.
//!
//! - `blk`, `blk_ro` and `blk_write` (images/testguest/README.md, "blk tests") on a 4 MiB image
//!   the host filled with a background byte; then the host compares the whole image with what
//!   the guest must have written, zeroed and left alone. `blk_write` runs until the guest idles
//!   after its FLUSH, svmm is killed with SIGKILL, and the image must hold the pattern.
//! - The image's lock: a second svmm on an image in use fails with one line naming it (exit
//!   67); read-only devices share an image.
//! - Bad images (missing, a directory, 1000 bytes): one line naming the image, exit 65.
//! - `direct=on`: the worker's image fd is `O_DIRECT` (`/proc/PID/fdinfo`), and the host
//!   compares the whole image on any host (the guest's regions follow its block size).
//! - Data across a VM restart: `blk_write` in one boot, `blk_ro` reads it back in the next.
//! - `engine=sync`, sandboxed: the full `blk` test and `blk_write` through `preadv2`/`pwritev2`
//!   under the worker's filter; the worker holds no io_uring instance and is confined as
//!   planned.
//! - The blk worker seen from `/proc`: the image and the io_uring instance in its fd table,
//!   the very command line (config included) `--print-sandbox` shows, confined exactly as
//!   planned (`tests::confinement`); `--print-sandbox` shows the same powers.

use std::path::Path;
use std::time::Duration;

use tests::confinement::{self, is_root, Identity, Planned};
use tests::disk::{self, compare_image, expected_image, expected_image_blocks};
use tests::mode::Mode;
use tests::output::{number_field, queue_counters, stats_line};
use tests::procfs;
use tests::sandbox_report::{allowed_syscalls, argument, command_line, section};
use tests::suite::TrialResult;
use tests::{paths, Backend, RunningVm, Suite, TestVm, VmOutput};

const TIMEOUT: Duration = Duration::from_secs(60);
/// What the test guest prints when its tests are done and it idles (`testguest.sleep_ms`).
const SLEEPING: &str = "testguest: sleep ms=";
/// svmm's exit status for a bad input file (`vmm/src/exit_code.rs`).
const BAD_INPUT: i32 = 65;
/// svmm's exit status for a VM that could not be set up (an image in use included).
const SETUP_FAILED: i32 = 67;

fn main() {
    let mut suite = Suite::new("blk").sequential();
    for mode in Mode::BOTH {
        suite = suite
            .test(&mode.trial("guest_blk"), move || guest_blk(mode))
            .test(&mode.trial("write_flush_sigkill"), move || {
                write_flush_sigkill(mode)
            })
            .test(&mode.trial("read_only"), move || read_only(mode))
            .test(&mode.trial("bad_images"), move || bad_images(mode));
    }
    suite
        .test("direct_io_sandboxed", direct_io)
        .test("sync_engine_sandboxed", sync_engine_sandboxed)
        .test("data_across_vm_restart", data_across_vm_restart)
        .test("worker_holds_image_and_ring", worker_holds_image_and_ring)
        .test("second_svmm_gets_lock_error", second_svmm_gets_lock_error)
        .test(
            "hostile_worker_keeps_to_the_image",
            hostile_worker_keeps_to_the_image,
        )
        .test(
            "worst_case_bounce_stays_bounded",
            worst_case_bounce_stays_bounded,
        )
        .test_unless("stuck_worker_does_not_hold_svmm", not_root(), stuck_worker)
        .test("print_sandbox_blk", print_sandbox_blk)
        .run()
}

/// The test guest with `cmdline` and one blk device `spec`.
fn guest(cmdline: &str, spec: String) -> TestVm {
    TestVm::testguest(cmdline).device(spec).timeout(TIMEOUT)
}

fn blk_spec(image: &Path, options: &str) -> String {
    format!("blk={}{options}", image.display())
}

/// Whether this kernel lets processes use io_uring (so the device must not fall back).
fn io_uring_allowed() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").map_or(true, |v| v.trim() == "0")
}

/// The device ran on io_uring: svmm printed no fallback warning.
fn assert_no_fallback(out: &VmOutput) {
    if io_uring_allowed() {
        assert!(
            !out.stderr.contains("io_uring is not available"),
            "the blk device fell back to the synchronous engine\n{}",
            out.report()
        );
    }
}

/// The full `blk` test on two queues with an id: the guest's checks pass, and the host finds
/// exactly the pattern, the zeroed regions and the untouched background in the image.
fn guest_blk(mode: Mode) -> TrialResult {
    guest_blk_with(mode, "")
}

/// [`guest_blk`] with `options` added to the device.
fn guest_blk_with(mode: Mode, options: &str) -> TrialResult {
    const SEED: u32 = 0x5eed_0011;
    const ID: &str = "svmm-blk-test";
    let dir = paths::TempDir::new("blk");
    let image = dir.file("disk.img", &disk::fresh_image());
    let spec = blk_spec(
        &image,
        &format!(",id={ID},queues=2{options}{}", mode.option()),
    );
    let out = guest(
        &format!("testguest.run=blk testguest.blk_pattern={SEED:#x}"),
        spec,
    )
    .run()?;
    out.log(&format!("svmm testguest blk ({}{options})", mode.name()));
    out.assert_line("testguest: virtio-mmio 0 addr=0xd0000000 size=0x1000 irq=5 id=2");
    let blk = out.assert_line("testguest: blk ok ");
    eprintln!("    {blk}");
    for want in [
        " capacity=8192 blk_size=512 queues=2 depth=4 flush=1 discard=1 write_zeroes=1 ",
        &format!(" seed={SEED:#x} id={ID}"),
    ] {
        assert!(
            blk.contains(want),
            "expected {want:?} in {blk:?}\n{}",
            out.report()
        );
    }
    assert_eq!(out.testguest_summary(), Some((1, 0)), "\n{}", out.report());
    out.assert_no_panic();
    assert_no_fallback(&out);
    out.assert_status(0);
    // Both queues served; the three requests past the end (two reads, a write) are the only
    // errors, all on queue 0, where the guest sends its single requests.
    let stats = stats_line(&out.stderr, "blk#0").unwrap_or_default();
    let queues = queue_counters(stats).unwrap_or_default();
    let errors: Vec<u64> = queues.iter().map(|q| q.errors).collect();
    assert!(
        queues.len() == 2 && queues.iter().all(|q| q.requests > 0) && errors == [3, 0],
        "want both queues served, errors [3, 0]: {stats:?}\n{}",
        out.report()
    );
    compare_image(&image, &expected_image(SEED, 4), "after blk")?;
    Ok(())
}

/// `engine=sync`, sandboxed: every read and write is a `preadv2`/`pwritev2` system call of the
/// worker under its seccomp filter (flags 0 only: durability is an `fdatasync`). The full `blk`
/// test passes and the host finds exactly what the guest wrote; then, while a guest idles after
/// `blk_write` and its FLUSH, the worker holds no io_uring instance and is confined exactly as
/// its plan says (no io-wq threads: `RLIMIT_NPROC` 0, nothing set up before the filter), and
/// the image holds the pattern.
fn sync_engine_sandboxed() -> TrialResult {
    const SEED: u32 = 0x5eed_0014;
    guest_blk_with(Mode::Sandboxed, ",engine=sync")?;
    let dir = paths::TempDir::new("blk-sync");
    let image = dir.file("sync.img", &disk::fresh_image());
    let spec = blk_spec(&image, ",engine=sync");
    let (mut vm, worker) = idle_worker(&format!("testguest.blk_pattern={SEED:#x}"), &spec)?;
    let fds = procfs::fds(worker)?;
    let mut problems = Vec::new();
    let rings = fds.values().filter(|t| t.contains("io_uring")).count();
    if rings != 0 {
        problems.push(format!("{rings} io_uring instances, want none"));
    }
    let planned = Planned::parse(&planned_section(&spec)?)?;
    if planned.rlimits.get("NPROC") != Some(&Some(0)) {
        problems.push(format!(
            "planned NPROC {:?}, want 0",
            planned.rlimits.get("NPROC")
        ));
    }
    problems.extend(confinement::problems(
        worker,
        vm.pid(),
        identity(),
        &planned,
    )?);
    vm.kill();
    let stdout = vm.stdout_so_far();
    if !stdout
        .lines()
        .any(|l| l.starts_with("testguest: blk_write ok ") && l.contains(" flush=1 "))
    {
        problems.push("blk_write did not pass with a flush".into());
    }
    if !problems.is_empty() {
        return Err(format!(
            "blk worker (engine=sync): {}\nfds: {fds:?}\n--- stdout:\n{stdout}\n--- stderr:\n{}",
            problems.join("; "),
            vm.stderr_so_far()
        )
        .into());
    }
    compare_image(
        &image,
        &expected_image(SEED, 0),
        "after blk_write on engine=sync",
    )?;
    Ok(())
}

/// `blk_write` (pattern, then FLUSH), SIGKILL of svmm while the guest idles, then the host
/// reads the image: exactly the pattern over the written regions, the background elsewhere.
fn write_flush_sigkill(mode: Mode) -> TrialResult {
    const SEED: u32 = 0x5eed_0012;
    let dir = paths::TempDir::new("blk-write");
    let image = dir.file("write.img", &disk::fresh_image());
    let mut vm = guest(
        &format!(
            "testguest.run=blk_write testguest.blk_pattern={SEED:#x} testguest.sleep_ms=60000"
        ),
        blk_spec(&image, mode.option()),
    )
    .spawn()?;
    vm.wait_for_line(SLEEPING, TIMEOUT)?;
    vm.kill();
    let stdout = vm.stdout_so_far();
    let line = stdout
        .lines()
        .find(|l| l.starts_with("testguest: blk_write "))
        .unwrap_or("");
    eprintln!("    {line}");
    if !(line.starts_with("testguest: blk_write ok ") && line.contains(" flush=1 ")) {
        return Err(format!(
            "blk_write did not pass with a flush: {line:?}\n{stdout}\n{}",
            vm.stderr_so_far()
        )
        .into());
    }
    compare_image(
        &image,
        &expected_image(SEED, 0),
        "after blk_write and SIGKILL",
    )?;
    Ok(())
}

/// A `ro` device on an image holding the pattern: the guest reads and checks it, its write gets
/// IOERR (the `blk_ro` test), and the image is unchanged.
fn read_only(mode: Mode) -> TrialResult {
    const SEED: u32 = 0x5eed_0013;
    let dir = paths::TempDir::new("blk-ro");
    let contents = expected_image(SEED, 0);
    let image = dir.file("ro.img", &contents);
    let out = guest(
        &format!("testguest.run=blk_ro testguest.blk_pattern={SEED:#x}"),
        blk_spec(&image, &format!(",ro{}", mode.option())),
    )
    .run()?;
    out.log(&format!("svmm testguest blk_ro ({})", mode.name()));
    let blk = out.assert_line("testguest: blk_ro ok ");
    eprintln!("    {blk}");
    // The default id is the image's file name.
    assert!(
        blk.contains(" capacity=8192 ") && blk.ends_with(" verified=1 id=ro.img"),
        "blk_ro did not verify the pattern: {blk:?}\n{}",
        out.report()
    );
    assert_eq!(out.testguest_summary(), Some((1, 0)), "\n{}", out.report());
    out.assert_no_panic();
    out.assert_status(0);
    compare_image(&image, &contents, "after blk_ro")?;
    Ok(())
}

/// Missing, a directory, 1000 bytes: exit 65, one line on stderr naming the image and the
/// problem, no guest output.
fn bad_images(mode: Mode) -> TrialResult {
    let dir = paths::TempDir::new("blk-bad");
    let sub = dir.path().join("a-directory");
    std::fs::create_dir(&sub)?;
    let cases = [
        (dir.path().join("missing.img"), "No such file or directory"),
        (sub, "is a directory"),
        (
            dir.file("small.img", &[0u8; 1000]),
            "image size 1000 bytes is not a multiple of 512",
        ),
    ];
    for (path, why) in cases {
        let out = guest("testguest.run=blk", blk_spec(&path, mode.option())).run()?;
        let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.is_empty()).collect();
        let ok = out.status == Some(BAD_INPUT)
            && lines.len() == 1
            && lines[0].starts_with("svmm: error: blk#0: ")
            && lines[0].contains(&path.display().to_string())
            && lines[0].contains(why)
            && !out.stdout.contains("testguest: blk");
        if !ok {
            return Err(format!(
                "expected exit {BAD_INPUT} and one line naming {} ({why})\n{}",
                path.display(),
                out.report()
            )
            .into());
        }
        eprintln!("    {}", lines[0]);
    }
    Ok(())
}

/// `direct=on`: the worker holds the image open `O_DIRECT` (its flags in
/// `/proc/PID/fdinfo`), the guest's `blk` test passes with the host's direct-I/O alignment as
/// its block size, and the host finds exactly what the guest wrote — on any host: the expected
/// image follows the block size the guest was given.
fn direct_io() -> TrialResult {
    const SEED: u32 = 0x5eed_0014;
    let dir = paths::TempDir::new("blk-direct");
    let image = dir.file("direct.img", &disk::fresh_image());
    let mut vm = guest(
        &format!("testguest.run=blk testguest.blk_pattern={SEED:#x} testguest.sleep_ms=30000"),
        blk_spec(&image, ",direct=on,queues=2"),
    )
    .spawn()?;
    vm.wait_for_line(SLEEPING, TIMEOUT)?;
    let workers = procfs::wait_for_workers(vm.pid(), 1, Duration::from_secs(5));
    let [worker] = workers[..] else {
        return Err(format!("expected one worker under svmm, found {workers:?}").into());
    };
    let direct = image_flags(worker, &image)?.map(|flags| flags & libc::O_DIRECT as u32 != 0);
    vm.kill();
    let stdout = vm.stdout_so_far();
    let blk = stdout
        .lines()
        .find(|l| l.starts_with("testguest: blk ok "))
        .ok_or_else(|| format!("blk did not pass with direct=on\n{stdout}"))?
        .to_string();
    eprintln!("    {blk}");
    if direct != Some(true) {
        return Err(format!(
            "the worker's image fd is not O_DIRECT (flags {:?})",
            image_flags(worker, &image)
        )
        .into());
    }
    let blk_size: usize = number_field(&blk, "blk_size")
        .and_then(|n| usize::try_from(n).ok())
        .filter(|n| n.is_power_of_two() && (512..=4096).contains(n))
        .ok_or_else(|| format!("no blk_size in {blk:?}"))?;
    let want = expected_image_blocks(SEED, 4, blk_size / 512);
    compare_image(
        &image,
        &want,
        &format!("after blk with direct=on, blk_size={blk_size}"),
    )?;
    Ok(())
}

/// The open flags (`/proc/PID/fdinfo/N`, octal) of `pid`'s fd on `image`, if it has one.
fn image_flags(pid: u32, image: &Path) -> Result<Option<u32>, String> {
    let fds = procfs::fds(pid).map_err(|e| e.to_string())?;
    let want = image.display().to_string();
    let Some((fd, _)) = fds.iter().find(|(_, target)| **target == want) else {
        return Ok(None);
    };
    let info =
        std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).map_err(|e| e.to_string())?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok()))
}

/// Data written in one boot is read back in the next: the guest's `blk_write` (the pattern,
/// then FLUSH) in a VM that ends normally, the host checks the image, then a second VM with
/// the image `ro` runs `blk_ro`, which reads the regions back and checks the pattern.
fn data_across_vm_restart() -> TrialResult {
    const SEED: u32 = 0x5eed_0015;
    let dir = paths::TempDir::new("blk-two-boots");
    let image = dir.file("persist.img", &disk::fresh_image());
    let first = guest(
        &format!("testguest.run=blk_write testguest.blk_pattern={SEED:#x}"),
        blk_spec(&image, ""),
    )
    .run()?;
    first.log("svmm testguest blk_write, first boot");
    first.assert_line("testguest: blk_write ok ");
    first.assert_status(0);
    compare_image(&image, &expected_image(SEED, 0), "after the first boot")?;
    disk::wait_unlocked(&image, Duration::from_secs(10))?;
    let second = guest(
        &format!("testguest.run=blk_ro testguest.blk_pattern={SEED:#x}"),
        blk_spec(&image, ",ro"),
    )
    .run()?;
    second.log("svmm testguest blk_ro, second boot");
    let line = second.assert_line("testguest: blk_ro ok ");
    eprintln!("    {line}");
    if !line.contains(" verified=1 ") {
        return Err(format!("the second boot did not check the pattern: {line}").into());
    }
    second.assert_status(0);
    compare_image(&image, &expected_image(SEED, 0), "after the second boot")?;
    Ok(())
}

/// The hex of `text`, as it appears inside a worker's `--config=` (strings travel as bytes).
fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

/// A test guest that ran `blk_write` (with `options` on its command line) on the blk device
/// `spec` and now idles, and the pid of that device's worker.
fn idle_worker(options: &str, spec: &str) -> Result<(RunningVm, u32), String> {
    let vm = guest(
        &format!("testguest.run=blk_write {options} testguest.sleep_ms=30000"),
        spec.to_string(),
    )
    .spawn()
    .map_err(|e| e.to_string())?;
    vm.wait_for_line(SLEEPING, TIMEOUT)
        .map_err(|e| e.to_string())?;
    let workers = procfs::wait_for_workers(vm.pid(), 1, Duration::from_secs(5));
    match workers[..] {
        [worker] => Ok((vm, worker)),
        _ => Err(format!("expected one worker under svmm, found {workers:?}")),
    }
}

/// Who runs these trials, for `confinement::problems`.
fn identity() -> Identity {
    if is_root() {
        Identity::Root
    } else {
        Identity::Unprivileged
    }
}

/// The device's section of `svmm --print-sandbox` for `spec` (the only device).
fn planned_section(spec: &str) -> Result<String, String> {
    let out = TestVm::new(Backend::Svmm)
        .arg("--print-sandbox")
        .mem_mib(128)
        .device(spec)
        .timeout(Duration::from_secs(30))
        .run()
        .map_err(|e| e.to_string())?;
    let section = section(&out.stdout, "== blk#0: ");
    if section.is_empty() {
        return Err(out.report());
    }
    Ok(section.to_string())
}

/// The `--config=...` argument of the worker command line in `svmm --print-sandbox` for `spec`.
fn planned_config(spec: &str) -> Result<String, String> {
    let section = planned_section(spec)?;
    let line = command_line(&section).ok_or_else(|| section.clone())?;
    argument(line, "--config=")
        .map(str::to_string)
        .ok_or_else(|| format!("no --config= in {line:?}"))
}

/// The sandboxed blk worker from `/proc` while the guest idles: its command line is the one
/// `--print-sandbox` plans (its config carries the id), it holds the image (after its two queue
/// eventfds) and an io_uring instance, and it is confined like every worker
/// (`tests::confinement`).
fn worker_holds_image_and_ring() -> TrialResult {
    let dir = paths::TempDir::new("blk-worker");
    let image = dir.file("disk.img", &disk::fresh_image());
    let spec = blk_spec(&image, ",queues=2,id=worker-test");
    let (mut vm, worker) = idle_worker("", &spec)?;
    let cmdline = procfs::cmdline(worker)?;
    let fds = procfs::fds(worker)?;
    let mut problems = Vec::new();
    // The report plans without opening the image, so it works while the VM holds it.
    let config = planned_config(&spec)?;
    for part in ["__worker blk --seccomp=trap --sandbox-", config.as_str()] {
        if !cmdline.contains(part) {
            problems.push(format!("command line {cmdline:?} lacks {part:?}"));
        }
    }
    if !config.contains(&hex("worker-test")) {
        problems.push(format!("{config} does not carry the id"));
    }
    // 3 control, 4 RAM, 5 status page, 6 irqfd, 7 stop, 8-9 queues, 10 the image.
    let want = image.display().to_string();
    if fds.get(&10) != Some(&want) {
        problems.push(format!("fd 10 is {:?}, not the image {want}", fds.get(&10)));
    }
    let rings = fds.values().filter(|t| t.contains("io_uring")).count();
    if io_uring_allowed() && rings != 1 {
        problems.push(format!("{rings} io_uring instances, want 1"));
    }
    // Confined like every worker, holding exactly what svmm planned: its two queues, the image
    // and its ring.
    let planned = Planned::parse(&planned_section(&spec)?)?;
    // The plan itself, by the formulas in ARCHITECTURE.md (not read back from svmm): NPROC 9
    // (io-wq), NOFILE 3 + 8 inherited + 16, FSIZE the image, AS guest RAM + 64 MiB + room for
    // the bounce buffers (in whole MiB, as the plan shows it).
    let formulas = [
        ("NPROC", 9),
        ("CORE", 0),
        ("NOFILE", 3 + 8 + 16),
        ("FSIZE", disk::IMAGE_BYTES as u64),
        (
            "AS",
            ((128 << 20) + (64 << 20) + 4 * 126 * 64 * 1024) >> 20 << 20,
        ),
    ];
    for (name, want) in formulas {
        if planned.rlimits.get(name) != Some(&Some(want)) {
            problems.push(format!(
                "planned {name} {:?}, want {want}",
                planned.rlimits.get(name)
            ));
        }
    }
    problems.extend(confinement::problems(
        worker,
        vm.pid(),
        identity(),
        &planned,
    )?);
    vm.kill();
    if !problems.is_empty() {
        return Err(format!(
            "blk worker: {}\nfds: {fds:?}\n--- stderr:\n{}",
            problems.join("; "),
            vm.stderr_so_far()
        )
        .into());
    }
    Ok(())
}

/// While one svmm writes an image, a second (in-process or sandboxed, writable or `ro`) fails
/// with the lock error naming the image (exit 67). Afterwards two `ro` devices share the image
/// while a writer is still refused.
/// A compromised blk worker (`fault=host`: the device's own disk probe, run at its first
/// queue notification) tries to grow the image and to allocate host disk space through its
/// io_uring ring (`FALLOCATE` with `ZERO_RANGE | KEEP_SIZE` or `INSERT_RANGE`, a write with
/// `RWF_APPEND` or past the end) and then through its system calls (`fallocate` past the end,
/// with and without `KEEP_SIZE`). The last one is outside its seccomp filter: it dies of
/// `SIGSYS`, named by svmm. Afterwards the image has the same size, the same bytes and no more
/// allocated blocks than before — every byte the worker can reach on the host disk belongs to
/// that one file.
fn hostile_worker_keeps_to_the_image() -> TrialResult {
    use std::os::unix::fs::MetadataExt;
    let dir = paths::TempDir::new("blk-disk-probe");
    let before = disk::fresh_image();
    let image = dir.file("disk.img", &before);
    let blocks = std::fs::metadata(&image)?.blocks();
    let out = guest("testguest.run=blk", blk_spec(&image, ",fault=host")).run()?;
    out.log("svmm testguest blk, the worker probes the host disk");
    for line in out.stderr.lines().filter(|l| l.contains("blk probe: ")) {
        eprintln!("    {line}");
    }
    let death = out
        .worker_deaths("blk#0")
        .first()
        .copied()
        .unwrap_or_default();
    assert!(
        death.contains("killed by SIGSYS: seccomp violation, syscall fallocate"),
        "the worker's last fallocate must be refused by its filter\n{}",
        out.report()
    );
    disk::wait_unlocked(&image, Duration::from_secs(5))?;
    let meta = std::fs::metadata(&image)?;
    assert_eq!(
        meta.len(),
        before.len() as u64,
        "the image changed size\n{}",
        out.report()
    );
    assert!(
        meta.blocks() <= blocks,
        "the image holds {} blocks of 512 bytes, {} before\n{}",
        meta.blocks(),
        blocks,
        out.report()
    );
    compare_image(&image, &before, "after the disk probe")?;
    Ok(())
}

/// The worst case for a blk worker's memory (`blk_bounce`: a queue full of the largest
/// requests, every buffer misaligned, so each must go through a bounce buffer on a
/// `direct=on` image — 16 of them would hold 126 MiB at once) gets all its I/O done, and the
/// worker's address space is bounded as documented: `/proc/PID/limits` shows `RLIMIT_AS` =
/// Why a trial that mounts file systems cannot run here.
fn not_root() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    (unsafe { libc::geteuid() } != 0)
        .then(|| "needs root (mounts and freezes a file system)".into())
}

/// A file system mounted from a loop device for one trial; thawed and unmounted on drop.
struct FrozenFs {
    mnt: std::path::PathBuf,
}

/// Runs `cmd args`; its stderr is the error.
fn run_tool(cmd: &str, args: &[&std::ffi::OsStr]) -> Result<(), String> {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    match out.status.success() {
        true => Ok(()),
        false => Err(format!("{cmd}: {}", String::from_utf8_lossy(&out.stderr))),
    }
}

impl FrozenFs {
    /// A fresh 64 MiB ext4 file system mounted at `dir/mnt`.
    fn mount(dir: &paths::TempDir) -> Result<FrozenFs, String> {
        let image = dir.path().join("fs.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(64 << 20))
            .map_err(|e| format!("{}: {e}", image.display()))?;
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).map_err(|e| format!("{}: {e}", mnt.display()))?;
        run_tool(
            "mkfs.ext4",
            &["-q".as_ref(), "-F".as_ref(), image.as_os_str()],
        )?;
        run_tool(
            "mount",
            &[
                "-o".as_ref(),
                "loop".as_ref(),
                image.as_os_str(),
                mnt.as_os_str(),
            ],
        )?;
        Ok(FrozenFs { mnt })
    }

    /// Freezes (`fsfreeze -f`) or thaws (`-u`) it.
    fn freeze(&self, freeze: bool) -> Result<(), String> {
        let flag = if freeze { "-f" } else { "-u" };
        run_tool("fsfreeze", &[flag.as_ref(), self.mnt.as_os_str()])
    }
}

impl Drop for FrozenFs {
    fn drop(&mut self) {
        let _ = self.freeze(false);
        for _ in 0..50 {
            if run_tool("umount", &[self.mnt.as_os_str()]).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// svmm ends even when a worker cannot die: the blk image sits on a file system that the
/// trial freezes (`fsfreeze`) before the guest writes, so the worker's write waits in
/// uninterruptible sleep and `SIGKILL` takes effect only once the file system thaws. The guest
/// gives up on its write after its own timeout and powers off; svmm kills the worker, reports
/// in one line that it did not die within 3 s, and exits anyway — long before the trial thaws
/// the file system. Then the worker dies.
fn stuck_worker() -> TrialResult {
    let dir = paths::TempDir::new("blk-frozen");
    let fs = FrozenFs::mount(&dir)?;
    let image = fs.mnt.join("disk.img");
    std::fs::write(&image, disk::fresh_image())?;
    let mut running = guest(
        "testguest.run=echo,blk_write testguest.echo_timeout_ms=30000",
        blk_spec(&image, ""),
    )
    .timeout(Duration::from_secs(40))
    .spawn()?;
    running.wait_for_line("testguest: echo ready", TIMEOUT)?;
    let workers = procfs::workers(running.pid());
    fs.freeze(true)?;
    running.write_stdin(b"go\n")?;
    let out = running.wait()?;
    let stuck: Vec<u32> = workers
        .iter()
        .copied()
        .filter(|w| procfs::alive(*w))
        .collect();
    fs.freeze(false)?;
    out.log("svmm testguest blk_write on a frozen file system");
    assert!(
        !out.timed_out,
        "svmm did not end while its worker was stuck\n{}",
        out.report()
    );
    assert!(
        out.worker_deaths("blk#0")
            .iter()
            .any(|l| l.contains("has not died 3 s after SIGKILL")),
        "no line about the stuck worker\n{}",
        out.report()
    );
    assert!(!stuck.is_empty(), "the worker was not stuck: {workers:?}");
    out.assert_line("testguest: blk_write FAIL");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stuck.iter().any(|w| procfs::alive(*w)) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left: Vec<u32> = stuck.into_iter().filter(|w| procfs::alive(*w)).collect();
    if !left.is_empty() {
        return Err(format!("workers {left:?} still run after the thaw").into());
    }
    Ok(())
}

/// guest RAM + 64 MiB + blk's 4 × 126 × 64 KiB of bounce buffers, and `VmPeak` stays under it.
fn worst_case_bounce_stays_bounded() -> TrialResult {
    const MIB: u64 = 1 << 20;
    const GUEST_RAM: u64 = 128 * MIB;
    const BOUND: u64 = GUEST_RAM + 64 * MIB + 4 * 126 * 64 * 1024;
    let dir = paths::TempDir::new("blk-bounce");
    let image = dir.file("disk.img", &vec![0u8; 16 << 20]);
    let running = guest(
        "testguest.run=blk_bounce testguest.sleep_ms=3000",
        blk_spec(&image, ",direct=on"),
    )
    .spawn()?;
    running.wait_for_line(SLEEPING, TIMEOUT)?;
    let workers = procfs::workers(running.pid());
    let [worker] = workers[..] else {
        let out = running.wait()?;
        return Err(format!(
            "the blk worker is gone (workers {workers:?})\n{}",
            out.report()
        )
        .into());
    };
    let limits = std::fs::read_to_string(format!("/proc/{worker}/limits"))?;
    let address_space = limits
        .lines()
        .find(|l| l.starts_with("Max address space"))
        .ok_or("no address-space line in /proc/PID/limits")?
        .split_whitespace()
        .filter_map(|w| w.parse::<u64>().ok())
        .collect::<Vec<_>>();
    let peak_kib: u64 = procfs::status(worker)?
        .get("VmPeak")
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or("no VmPeak")?;
    let out = running.wait()?;
    out.log("svmm testguest blk_bounce (direct=on)");
    let line = out.assert_line("testguest: blk_bounce ok ");
    eprintln!("    {line}; worker VmPeak {} MiB", peak_kib >> 10);
    assert!(
        line.contains("requests_in_flight=16 "),
        "the guest should fill its queue: {line}"
    );
    assert_eq!(
        address_space,
        [BOUND, BOUND],
        "RLIMIT_AS of the worker (soft, hard)"
    );
    assert!(
        peak_kib << 10 <= BOUND,
        "VmPeak {peak_kib} KiB over the bound"
    );
    assert!(
        !out.stderr.contains("svmm: blk#0 worker"),
        "the worker died\n{}",
        out.report()
    );
    out.assert_no_panic();
    out.assert_status(0);
    Ok(())
}

fn second_svmm_gets_lock_error() -> TrialResult {
    let dir = paths::TempDir::new("blk-lock");
    let image = dir.file("shared.img", &disk::fresh_image());
    let idle = |test: &str| format!("testguest.run={test} testguest.sleep_ms=30000");
    let first = guest(&idle("blk_write"), blk_spec(&image, "")).spawn()?;
    first.wait_for_line(SLEEPING, TIMEOUT)?;
    for options in ["", ",sandbox=off", ",ro"] {
        expect_locked(&image, options)?;
    }
    drop(first);
    disk::wait_unlocked(&image, Duration::from_secs(10))?;

    let reader = guest(&idle("blk_ro"), blk_spec(&image, ",ro")).spawn()?;
    reader.wait_for_line(SLEEPING, TIMEOUT)?;
    let out = guest("testguest.run=blk_ro", blk_spec(&image, ",ro")).run()?;
    if out.status != Some(0) || out.testguest_summary() != Some((1, 0)) {
        return Err(format!(
            "a second ro device could not share the image\n{}",
            out.report()
        )
        .into());
    }
    expect_locked(&image, "")?;
    Ok(())
}

/// svmm with a blk device `options` on `image` fails with the lock error, in one line.
fn expect_locked(image: &Path, options: &str) -> TrialResult {
    let out = guest("testguest.run=blk", blk_spec(image, options)).run()?;
    let want = format!(
        "svmm: error: blk#0: {} is in use by another process (it holds a lock on it)",
        image.display()
    );
    let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.is_empty()).collect();
    if out.status != Some(SETUP_FAILED) || lines != [want.as_str()] {
        return Err(format!(
            "blk{options}: expected exit {SETUP_FAILED} and {want:?}\n{}",
            out.report()
        )
        .into());
    }
    Ok(())
}

/// `svmm --print-sandbox --device blk=...`: the blk worker's exact powers.
fn print_sandbox_blk() -> TrialResult {
    let dir = paths::TempDir::new("blk-print");
    let image = dir.file("disk.img", &disk::fresh_image());
    let path = image.display().to_string();
    let report = |options: &str| -> Result<String, String> {
        let out = TestVm::new(Backend::Svmm)
            .arg("--print-sandbox")
            .device(blk_spec(&image, options))
            .timeout(Duration::from_secs(30))
            .run()
            .map_err(|e| e.to_string())?;
        if out.status != Some(0) || !out.stderr.is_empty() {
            return Err(out.report());
        }
        Ok(out.stdout)
    };
    let rw = report(",queues=2")?;
    let ro = report(",ro,id=root")?;
    let needles = [
        (&rw, "== blk#0: sandboxed worker process".to_string()),
        (&rw, "command line: svmm __worker blk --seccomp=trap --sandbox-".to_string()),
        (&rw, " --config=".to_string()),
        (&rw, hex("disk.img")),
        (&rw, format!("rlimits: NPROC 9, CORE 0, NOFILE 27, FSIZE {}", disk::IMAGE_BYTES)),
        (&rw, "    9  queue 1 notify eventfd".to_string()),
        (&rw, format!("   10  host resource of blk: {path} (read-write, flock LOCK_EX: no other svmm may open it)")),
        (&rw, "  created by the worker itself: an io_uring instance".to_string()),
        (&rw, "seccomp: profile \"blk\" in mode trap".to_string()),
        (&ro, "command line: svmm __worker blk --seccomp=trap --sandbox-".to_string()),
        (&ro, hex("root")),
        (&ro, "rlimits: NPROC 9, CORE 0, NOFILE 26, FSIZE 0".to_string()),
        (&ro, format!("    9  host resource of blk: {path} (read-only, flock LOCK_SH: other readers may share it, no writer)")),
    ];
    for (text, needle) in needles {
        if !text.contains(&needle) {
            return Err(format!("report lacks {needle:?}\n{text}").into());
        }
    }
    // The worker's filter: what it needs for the ring, never what sets one up or opens files.
    let allowed = allowed_syscalls(section(&rw, "== blk#0"));
    if !allowed.contains(&"io_uring_enter") {
        return Err(format!("io_uring_enter not allowed: {allowed:?}").into());
    }
    for call in [
        "openat",
        "open",
        "io_uring_setup",
        "io_uring_register",
        "execve",
        "socket",
        "clone",
    ] {
        if allowed.contains(&call) {
            return Err(format!("the blk worker may call {call}: {allowed:?}").into());
        }
    }
    Ok(())
}
