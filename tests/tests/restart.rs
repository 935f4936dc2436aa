//! Workers that come back (`--on-worker-exit=restart`, svmm's default): the test guest drives a
//! device without pause — `blk_loop` (batches of writes on every queue, FLUSH, reads checked)
//! or `rng_loop` (requests checked) — while its worker dies again and again: SIGKILLed by the
//! harness at moments the harness does not choose to be quiet, or committing a test fault in
//! the middle of its work (`fault=syscall|garbage|exit` with `fault-after=N`: at the worker's
//! N-th used-buffer interrupt, with other requests in flight). Each time svmm must print one
//! line (device, pid, cause, restart count) and hand a new worker the device, and the guest
//! must see no error at all: every request completes, every read-back checks, and the host
//! finds exactly the last round's pattern in the image. Past `--max-restarts` the device must
//! go to DEVICE_NEEDS_RESET, which the guest sees.
//!
//! Each trial prints what it measured: the time from the kill to svmm's restart line as the
//! harness saw it, svmm's own "serving again after" figure, and the requests taken again.

use std::path::Path;
use std::time::{Duration, Instant};

use tests::disk::{self, compare_image, put_pattern, SECTOR};
use tests::output::number_field;
use tests::procfs;
use tests::suite::TrialResult;
use tests::{paths, require_kvm, RunningVm, Suite, TestVm, VmOutput};

const TIMEOUT: Duration = Duration::from_secs(90);
/// How long the guest's loop runs: long enough for three kills on a loaded host.
const LOOP_MS: u32 = 5000;
/// SIGKILLs per trial.
const KILLS: u32 = 3;
/// What svmm's restart line says after the cause.
const RESTART: &str = "; restart ";

fn main() {
    let mut suite = Suite::new("restart")
        .test("blk_sigkill_mid_run", || sigkill_mid_run(Device::Blk))
        .test("rng_sigkill_mid_run", || sigkill_mid_run(Device::Rng));
    for fault in ["syscall", "garbage", "exit"] {
        suite = suite
            .test(&format!("blk_fault_{fault}_mid_run"), move || {
                fault_mid_run(Device::Blk, fault)
            })
            .test(&format!("rng_fault_{fault}_mid_run"), move || {
                fault_mid_run(Device::Rng, fault)
            });
    }
    suite
        .test("past_the_limit_needs_reset", past_the_limit)
        .run()
}

/// The device a trial drives, with the guest loop that drives it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Device {
    Blk,
    Rng,
}

impl Device {
    fn name(self) -> &'static str {
        match self {
            Device::Blk => "blk#0",
            Device::Rng => "rng#0",
        }
    }

    fn test(self) -> &'static str {
        match self {
            Device::Blk => "blk_loop",
            Device::Rng => "rng_loop",
        }
    }

    /// Used-buffer interrupts into the loop at which a `fault-after` fault comes. A device
    /// raises one per batch of chains it completes, so a busy host, with bigger batches, sees
    /// fewer: blk_loop's second or third round (each round's writes, FLUSH and reads on two
    /// queues raise at least three; a loop of 5 s on a loaded host ran 7 rounds and fewer than
    /// 40), some hundred rng requests (of thousands).
    fn fault_after(self) -> u32 {
        match self {
            Device::Blk => 6,
            Device::Rng => 100,
        }
    }
}

/// Seeds the blk trials use; the loop's round r writes with seed + r.
const SEED: u32 = 0x5eed_0014;

/// A VM running `device`'s loop with `options` after its spec (`image` for blk) and `args`.
fn guest(device: Device, image: Option<&Path>, options: &str, args: &[&str]) -> TestVm {
    require_kvm();
    let spec = match (device, image) {
        (Device::Blk, Some(image)) => format!("blk={},queues=2{options}", image.display()),
        _ => format!("rng{options}"),
    };
    TestVm::svmm(paths::artefact("testguest.elf"))
        .cmdline(format!(
            "testguest.run={} testguest.loop_ms={LOOP_MS} testguest.blk_pattern={SEED:#x}",
            device.test()
        ))
        .mem_mib(128)
        .device(spec)
        .args(args.iter().copied())
        .timeout(TIMEOUT)
}

/// svmm's restart lines for `device`, in order.
fn restart_lines<'a>(out: &'a VmOutput, device: &str) -> Vec<&'a str> {
    out.worker_deaths(device)
        .into_iter()
        .filter(|l| l.contains(RESTART))
        .collect()
}

/// The number before `unit` in `line`: `taken_from(".. 3 pending requests ..", " pending")`.
fn number_before(line: &str, unit: &str) -> Option<f64> {
    let before = line.split(unit).next()?;
    before.rsplit(' ').next()?.parse().ok()
}

/// Kills the only worker of the VM's one device and waits for svmm's restart line about it.
/// Returns the line and how long after the kill the harness saw it.
fn kill_and_await_restart(vm: &RunningVm, device: &str) -> Result<(String, Duration), String> {
    let workers = procfs::wait_for_workers(vm.pid(), 1, Duration::from_secs(5));
    let [worker] = workers[..] else {
        return Err(format!("expected one worker under svmm, found {workers:?}"));
    };
    let killed = Instant::now();
    // SAFETY: kill has no memory-safety preconditions; `worker` is the broker's child, alive a
    // moment ago and reaped by no one but the broker.
    unsafe { libc::kill(worker as i32, libc::SIGKILL) };
    let want = format!("svmm: {device} worker (pid {worker}) killed by SIGKILL{RESTART}");
    let deadline = killed + Duration::from_secs(10);
    loop {
        let stderr = vm.stderr_so_far();
        if let Some(line) = stderr.lines().find(|l| l.starts_with(&want)) {
            return Ok((line.to_string(), killed.elapsed()));
        }
        if Instant::now() >= deadline {
            return Err(format!("no restart line for worker {worker}\n{stderr}"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The guest's loop passed, with no error, and the VM ended well.
fn assert_loop_passed(out: &VmOutput, device: Device) -> Result<String, String> {
    let ok = format!("testguest: {} ok ", device.test());
    let line = out
        .lines()
        .find(|l| l.starts_with(&ok))
        .ok_or_else(|| format!("{} did not pass\n{}", device.test(), out.report()))?
        .to_string();
    if out.testguest_summary() != Some((1, 0)) || out.status != Some(0) {
        return Err(format!("the guest saw an error\n{}", out.report()));
    }
    out.assert_no_panic();
    Ok(line)
}

/// The image after `blk_loop`: the fresh background, and over the loop's region the last
/// round's pattern (the guest reports rounds, first sector and sectors).
fn check_loop_image(image: &Path, line: &str) -> Result<(), String> {
    let field = |name| number_field(line, name).ok_or_else(|| format!("no {name}= in {line:?}"));
    let (rounds, first, sectors) = (field("rounds")?, field("first")?, field("sectors")?);
    let mut want = disk::fresh_image();
    let last = SEED.wrapping_add(u32::try_from(rounds - 1).map_err(|e| e.to_string())?);
    put_pattern(&mut want, last, first as usize, sectors as usize);
    compare_image(image, &want, "after blk_loop")?;
    if sectors as usize * SECTOR == 0 {
        return Err("the loop wrote nothing".into());
    }
    Ok(())
}

/// The statistics line counts the restarts.
fn assert_restarts_counted(out: &VmOutput, device: Device, restarts: usize) -> TrialResult {
    let prefix = format!("svmm: {} (sandboxed): ", device.name());
    let stats = out
        .stderr
        .lines()
        .find(|l| l.starts_with(&prefix))
        .ok_or_else(|| format!("no statistics line\n{}", out.report()))?;
    let want = format!("; restarts={restarts}");
    if !stats.ends_with(&want) {
        return Err(format!("the statistics should end with {want:?}: {stats}").into());
    }
    Ok(())
}

/// The loop runs while the harness SIGKILLs the worker three times, each time once svmm said
/// the previous restart was done and a little later each time: one restart line per kill, the
/// loop passes, the image holds its last round.
fn sigkill_mid_run(device: Device) -> TrialResult {
    let dir = paths::TempDir::new("restart-kill");
    let image = dir.file("loop.img", &disk::fresh_image());
    let image = (device == Device::Blk).then_some(image.as_path());
    let vm = guest(device, image, "", &[]).spawn()?;
    vm.wait_for_line(&format!("testguest: running {}", device.test()), TIMEOUT)?;
    let mut seen = Vec::new();
    for k in 0..KILLS {
        std::thread::sleep(Duration::from_millis(250 + 150 * u64::from(k)));
        let (line, after) = kill_and_await_restart(&vm, device.name())?;
        seen.push((line, after));
    }
    let out = vm.wait()?;
    out.log(&format!("{} with {KILLS} SIGKILLs", device.test()));
    let passed = assert_loop_passed(&out, device)?;
    eprintln!("    {passed}");
    for (line, after) in &seen {
        let svmm_ms = line
            .split("serving again after ")
            .nth(1)
            .and_then(|rest| number_before(rest, " ms"))
            .unwrap_or(f64::NAN);
        let pending = number_before(line, " pending request").unwrap_or(f64::NAN);
        eprintln!(
            "    kill → restart line {:.1} ms (svmm: serving again after {svmm_ms:.1} ms), \
             {pending} requests taken again",
            after.as_secs_f64() * 1000.0
        );
        if !line.contains(": queues resumed, ") {
            return Err(format!("the device's queues were not resumed: {line}").into());
        }
    }
    let lines = restart_lines(&out, device.name());
    if lines.len() != KILLS as usize {
        return Err(format!("want {KILLS} restart lines, one per kill\n{}", out.report()).into());
    }
    for (k, line) in lines.iter().enumerate() {
        if !line.contains(&format!("{RESTART}{} (pid ", k + 1)) {
            return Err(format!("restart line {k} does not count {}: {line}", k + 1).into());
        }
    }
    assert_restarts_counted(&out, device, KILLS as usize)?;
    if let Some(image) = image {
        check_loop_image(image, &passed)?;
    }
    Ok(())
}

/// The worker commits `fault` at its N-th used-buffer interrupt, requests in flight: one line
/// naming the cause and the restart, a new worker that does not fault, a loop without error.
fn fault_mid_run(device: Device, fault: &str) -> TrialResult {
    let dir = paths::TempDir::new("restart-fault");
    let image = dir.file("loop.img", &disk::fresh_image());
    let image = (device == Device::Blk).then_some(image.as_path());
    let options = format!(",fault={fault},fault-after={}", device.fault_after());
    let out = guest(device, image, &options, &[]).run()?;
    out.log(&format!("{} with fault={fault} mid-run", device.test()));
    if out.stderr.contains("unknown option 'fault") {
        return Err(
            "svmm was built without the test-only faults (tests/run.sh builds them)".into(),
        );
    }
    let passed = assert_loop_passed(&out, device)?;
    let lines = restart_lines(&out, device.name());
    let [line] = lines[..] else {
        return Err(format!("want one restart line\n{}", out.report()).into());
    };
    eprintln!("    {line}");
    let cause = match fault {
        "syscall" => "killed by SIGSYS: seccomp violation, syscall openat",
        "garbage" => "killed by svmm: ",
        _ => "exited with status 3",
    };
    if !line.contains(cause) || !line.contains(": queues resumed, ") {
        return Err(format!("want {cause:?} and resumed queues: {line}").into());
    }
    assert_restarts_counted(&out, device, 1)?;
    if let Some(image) = image {
        check_loop_image(image, &passed)?;
    }
    Ok(())
}

/// Every worker exits at its first request (`fault=exit`, no `fault-after`), with
/// `--max-restarts=2`: two restarts, then the third death leaves the device needing a reset,
/// and the guest's request ends as `needs_reset`.
fn past_the_limit() -> TrialResult {
    let dir = paths::TempDir::new("restart-limit");
    let image = dir.file("loop.img", &disk::fresh_image());
    let out = guest(
        Device::Blk,
        Some(&image),
        ",fault=exit",
        &["--max-restarts=2"],
    )
    .run()?;
    out.log("blk_loop, every worker exits, --max-restarts=2");
    let deaths = out.worker_deaths("blk#0");
    let [first, second, third] = deaths[..] else {
        return Err(format!("want three deaths\n{}", out.report()).into());
    };
    let restarted = |line: &str, k| line.contains(&format!("{RESTART}{k} (pid "));
    if !(restarted(first, 1) && restarted(second, 2)) {
        return Err(format!("the first two deaths should be restarts\n{}", out.report()).into());
    }
    if !third.contains("restart limit reached (2 in the last minute, --max-restarts=2)")
        || !third.ends_with("device needs reset, VM keeps running")
    {
        return Err(format!("the third death should leave the device broken: {third}").into());
    }
    let failed = out.assert_line("testguest: blk_loop FAIL");
    if !failed.contains("needs_reset") {
        return Err(format!("the guest should see DEVICE_NEEDS_RESET: {failed}").into());
    }
    out.assert_no_panic();
    out.assert_status(1);
    Ok(())
}
