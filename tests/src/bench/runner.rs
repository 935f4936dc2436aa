//! Running the comparison: one VM run ([`run_one`]: start → guest banner → optional memory
//! sample while the guest idles → exit, then its output parsed into samples) and the round robin
//! over repetitions ([`run_all`]): every repetition runs each [`RunKind`] once per configuration,
//! the three configurations back to back in an order that rotates with the repetition, so slow
//! drifts of the host (other load, thermal, page cache) fall on all three alike.
//!
//! Times are taken by the harness with a monotonic clock: the start just before the VMM process
//! is spawned; the first serial line when the console reader sees the guest's banner; the exit
//! when the process's pidfd becomes readable (exact, not polled).

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::output::VmOutput;
use crate::{disk, procfs};

use super::figures::{self, TestLine};
use super::memory::{self, RamRule, Usage};
use super::placement::{QEMU_VCPU, SVMM_VCPU};
use super::setup::Plan;
use super::stats::Samples;
use super::{Config, Mode, RunKind};

/// The test guest's first line (images/testguest/README.md, "Output").
pub const BANNER: &str = "testguest: svmm test guest v1";
/// The line the guest prints before it idles (`testguest.sleep_ms=`).
const SLEEP_LINE: &str = "testguest: sleep ms=";
/// How long the guest has idled before memory is read.
const SETTLE: Duration = Duration::from_millis(300);
/// Console lines quoted with a failure.
const TAIL: usize = 12;

/// A run that did not produce its figures: reported, never dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The configuration.
    pub config: Config,
    /// Which run (`rep 2/5, bench, poll`).
    pub run: String,
    /// What went wrong, with the evidence.
    pub message: String,
}

/// Everything the runs produced.
#[derive(Debug, Default)]
pub struct Results {
    /// Samples per figure and configuration.
    pub samples: Samples,
    /// Every failure, in order.
    pub failures: Vec<Failure>,
    /// The guest's result lines of the first good bench run per configuration and mode.
    pub raw_lines: BTreeMap<(Config, Mode), Vec<String>>,
    /// The command of the first run of each configuration and kind.
    pub commands: BTreeMap<(Config, RunKind), String>,
    /// VM runs done, the warm-up included.
    pub runs: usize,
}

impl Results {
    fn add(&mut self, key: &str, config: Config, value: f64) {
        self.samples
            .entry(key.to_string())
            .or_default()
            .entry(config)
            .or_default()
            .push(value);
    }

    fn fail(&mut self, config: Config, run: &str, message: String) {
        self.failures.push(Failure {
            config,
            run: run.to_string(),
            message,
        });
    }
}

/// Memory of one VM while its guest idles, without guest RAM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemorySample {
    /// The VMM process.
    pub vmm: Usage,
    /// Each worker, by device name.
    pub workers: Vec<(String, Usage)>,
}

/// What one run measured, before it is judged.
pub struct RunData {
    /// Start → guest banner.
    pub first_line: Duration,
    /// Start → process exit.
    pub exit: Duration,
    /// The memory sample, for runs that take one.
    pub memory: Option<MemorySample>,
    /// Everything the VM printed.
    pub out: VmOutput,
}

/// A pidfd: readable once the process has exited.
struct PidFd(OwnedFd);

impl PidFd {
    fn open(pid: u32) -> Result<PidFd, String> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; nothing else.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(format!(
                "pidfd_open({pid}): {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: the fd was just returned by pidfd_open and nothing else owns it.
        Ok(PidFd(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }

    /// Waits up to `timeout` for the exit; whether it came.
    fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd {
                fd: self.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd, which outlives the call.
            match unsafe { libc::poll(&mut pfd, 1, ms) } {
                1 => return true,
                0 => return false,
                _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
                _ => return false,
            }
        }
    }
}

/// How long a bench run's VMM may take to make its vCPU thread (it takes milliseconds).
const PLACE_WITHIN: Duration = Duration::from_secs(10);

/// Runs `config` once for `kind` and returns what it measured, or why it could not.
pub fn run_one(plan: &Plan, config: Config, kind: RunKind) -> Result<RunData, String> {
    let vm = plan.vm(config, kind);
    let start = Instant::now();
    let mut running = vm.spawn().map_err(|e| e.to_string())?;
    let pidfd = PidFd::open(running.pid())?;
    if let RunKind::Bench(_) = kind {
        let vcpu = match config {
            Config::Qemu => QEMU_VCPU,
            Config::Sandboxed | Config::InProcess => SVMM_VCPU,
        };
        let look = running.remaining().min(PLACE_WITHIN);
        let placed = plan
            .placement
            .place_vcpu(running.pid(), vcpu, look, || pidfd.wait(Duration::ZERO));
        if let Err(e) = placed {
            // Most likely the VMM failed before it made its vCPU: say what it printed.
            running.kill();
            let out = running.wait().map_err(|e| e.to_string())?;
            return Err(format!("{e}\n{}", brief(&out)));
        }
    }
    running
        .wait_for_line(BANNER, running.remaining())
        .map_err(|e| format!("no guest banner: {e}"))?;
    let first_line = start.elapsed();
    let memory = match kind {
        RunKind::Bench(Mode::Irq) => {
            running
                .wait_for_line(SLEEP_LINE, running.remaining())
                .map_err(|e| format!("the guest did not reach its idle phase: {e}"))?;
            std::thread::sleep(SETTLE);
            Some(sample_memory(plan, config, running.pid())?)
        }
        _ => None,
    };
    let exited = pidfd.wait(running.remaining());
    let exit = start.elapsed();
    let out = running.wait().map_err(|e| e.to_string())?;
    if !exited {
        return Err(format!("the VMM did not exit\n{}", brief(&out)));
    }
    Ok(RunData {
        first_line,
        exit,
        memory,
        out,
    })
}

/// Reads the memory of the VMM `pid` and of its workers (QEMU's: virtiofsd, for its fs device).
fn sample_memory(plan: &Plan, config: Config, pid: u32) -> Result<MemorySample, String> {
    let fs = plan.fs_in(RunKind::Bench(Mode::Irq)).is_some();
    let rule = match config {
        Config::Qemu => RamRule::Memfd(memory::QEMU_SHARED_RAM_MEMFD),
        _ => RamRule::Memfd(memory::SVMM_RAM_MEMFD),
    };
    let vmm = memory::process_usage(pid, rule).map_err(|e| format!("VMM memory: {e}"))?;
    // svmm's workers are the broker's children; QEMU's virtiofsd is QEMU's own.
    let children = match config {
        Config::Qemu => procfs::children(pid),
        _ => procfs::workers(pid),
    };
    let devices = plan.device_names(config, RunKind::Bench(Mode::Irq));
    let want = match config {
        Config::Sandboxed => devices.len(),
        Config::Qemu if fs => 1,
        _ => 0,
    };
    if children.len() != want {
        return Err(format!(
            "the VMM has {} worker processes ({children:?}), expected {want}",
            children.len()
        ));
    }
    if config == Config::Qemu {
        // virtiofsd, counted with QEMU's total as the fs device's worker.
        let workers = children
            .iter()
            .map(|&pid| {
                memory::tree_usage(pid, rule)
                    .map(|u| (figures::FS_DEVICE.to_string(), u))
                    .map_err(|e| format!("virtiofsd (pid {pid}): {e}"))
            })
            .collect::<Result<_, _>>()?;
        return Ok(MemorySample { vmm, workers });
    }
    // Workers of one kind are spawned in slot order; pids grow with it.
    let mut by_kind: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for child in children {
        let cmdline = procfs::cmdline(child).map_err(|e| format!("worker {child}: {e}"))?;
        let kind = cmdline.split_whitespace().nth(2).unwrap_or("?").to_string();
        by_kind.entry(kind).or_default().push(child);
    }
    let mut workers = Vec::new();
    for name in devices.iter().take(want) {
        let kind = name.split('#').next().unwrap_or(name);
        let listed = format!("{by_kind:?}");
        let pid = by_kind
            .get_mut(kind)
            .filter(|p| !p.is_empty())
            .map(|p| p.remove(0))
            .ok_or_else(|| {
                format!("no worker process of kind {kind} for {name} (children by kind: {listed})")
            })?;
        let usage = memory::process_usage(pid, RamRule::Memfd(memory::SVMM_RAM_MEMFD))
            .map_err(|e| format!("worker {name} (pid {pid}): {e}"))?;
        workers.push((name.to_string(), usage));
    }
    Ok(MemorySample { vmm, workers })
}

/// The outcome, the VMM's stderr and the console tail of `out`, for failure messages.
fn brief(out: &VmOutput) -> String {
    let stderr: Vec<&str> = out.stderr.lines().collect();
    let stderr = stderr[stderr.len().saturating_sub(TAIL)..].join("\n");
    format!(
        "--- {}\n--- command: {}\n--- stderr (last {TAIL} lines):\n{}\n--- console (last {TAIL} lines):\n{}",
        out.outcome(),
        out.command,
        stderr.trim_end(),
        out.tail(TAIL)
    )
}

/// Turns a run's data into samples and failures.
pub fn record(
    results: &mut Results,
    plan: &Plan,
    config: Config,
    kind: RunKind,
    label: &str,
    data: &RunData,
) {
    let out = &data.out;
    let failures_before = results.failures.len();
    let fail = |r: &mut Results, msg: String| r.fail(config, label, msg);
    if out.stderr.contains("panicked") {
        fail(results, format!("the VMM panicked\n{}", brief(out)));
    }
    if let RunKind::Bench(mode) = kind {
        let mut lines = Vec::new();
        let tests = plan.tests_in(config, kind);
        for test in &tests {
            match figures::find_result(out.lines(), test) {
                Some(TestLine::Ok(fields, line)) => {
                    match figures::guest_samples(test, &fields, mode) {
                        Ok(samples) => {
                            for (key, value) in samples {
                                results.add(&key, config, value);
                            }
                        }
                        Err(problem) => fail(
                            results,
                            format!("{test}: the result line breaks images/testguest/README.md's format: {problem}\n    {line}"),
                        ),
                    }
                    lines.push(line);
                }
                Some(TestLine::Fail(reason)) => {
                    fail(results, format!("{test} FAIL {reason}\n{}", brief(out)));
                }
                None => fail(results, format!("{test}: no result line\n{}", brief(out))),
            }
        }
        if lines.len() == tests.len() {
            results.raw_lines.entry((config, mode)).or_insert(lines);
        }
    }
    if out.guest_status() != Some(0) || out.testguest_summary().is_none_or(|(_, f)| f != 0) {
        if results.failures.len() == failures_before {
            fail(
                results,
                format!(
                    "the guest did not pass (status {:?})\n{}",
                    out.guest_status(),
                    brief(out)
                ),
            );
        }
        return;
    }
    match kind {
        RunKind::Boot0 | RunKind::Boot4 => {
            let prefix = if kind == RunKind::Boot0 {
                "boot0"
            } else {
                "boot4"
            };
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            results.add(&format!("{prefix}.first_line"), config, ms(data.first_line));
            results.add(&format!("{prefix}.exit"), config, ms(data.exit));
        }
        RunKind::Bench(_) => {}
    }
    if config.is_svmm() && kind.has_devices() {
        let spawns = figures::spawn_lines(&out.stderr);
        for name in plan.device_names(config, kind) {
            match spawns.iter().find(|(n, _)| *n == name) {
                Some((_, us)) => results.add(&format!("spawn.{name}"), config, *us as f64 / 1e3),
                None => fail(
                    results,
                    format!(
                        "no `svmm: timing device={name}` line on stderr\n{}",
                        brief(out)
                    ),
                ),
            }
        }
    }
    if let Some(mem) = &data.memory {
        let mib = |kib: u64| kib as f64 / 1024.0;
        results.add("mem.vmm", config, mib(mem.vmm.pss_kib));
        let mut total = mem.vmm.pss_kib;
        for (name, usage) in &mem.workers {
            results.add(&format!("mem.worker.{name}"), config, mib(usage.pss_kib));
            total += usage.pss_kib;
        }
        results.add("mem.total", config, mib(total));
    }
}

/// One line of progress per run, for the caller to print.
pub struct Progress<'a> {
    /// Which run, e.g. `rep 2/5`.
    pub label: &'a str,
    /// The configuration.
    pub config: Config,
    /// The run kind.
    pub kind: RunKind,
    /// How long the run took.
    pub took: Duration,
    /// The first line of its failure, if it failed.
    pub failure: Option<&'a str>,
}

/// How many VMs of each boot run ([`RunKind::Boot0`], [`RunKind::Boot4`]) every repetition
/// boots per configuration: a boot takes a fraction of a second, and one boot per repetition
/// left the boot medians as noisy as the effects they were to show (the 0-device boot, where
/// sandboxed and in-process run the same command line, read 1.08 over 5 boots).
pub const BOOTS_PER_REP: usize = 4;

/// The run kinds of `plan`: the boot runs, then the bench runs unless it has no tests
/// (`svmm-bench --tests none`: the boot figures only).
pub fn run_kinds(plan: &Plan) -> Vec<RunKind> {
    RunKind::ALL
        .into_iter()
        .filter(|k| !matches!(k, RunKind::Bench(_)) || !plan.tests.is_empty())
        .collect()
}

/// How many VMs of `kind` a repetition runs per configuration.
pub fn runs_per_rep(kind: RunKind) -> usize {
    match kind {
        RunKind::Boot0 | RunKind::Boot4 => BOOTS_PER_REP,
        RunKind::Bench(_) => 1,
    }
}

/// Every run [`run_all`] makes: a warm-up boot per configuration (not counted: it loads
/// binaries into the page cache), then `plan.reps` repetitions of every run kind in every
/// configuration ([`runs_per_rep`] times each, the configurations' order rotating every time).
/// (label, configuration, kind, counted).
pub fn schedule(plan: &Plan) -> Vec<(String, Config, RunKind, bool)> {
    let mut schedule: Vec<(String, Config, RunKind, bool)> = Config::ALL
        .iter()
        .map(|c| ("warm-up".to_string(), *c, RunKind::Boot0, false))
        .collect();
    for rep in 0..plan.reps {
        for kind in run_kinds(plan) {
            for round in 0..runs_per_rep(kind) {
                for i in 0..Config::ALL.len() {
                    let config = Config::ALL[(rep + round + i) % Config::ALL.len()];
                    schedule.push((format!("rep {}/{}", rep + 1, plan.reps), config, kind, true));
                }
            }
        }
    }
    schedule
}

/// Runs everything [`schedule`] lists. Stops early, after the run in progress, once a signal
/// asked for it ([`super::interrupt`]).
pub fn run_all(plan: &Plan, mut progress: impl FnMut(&Progress)) -> Results {
    let mut results = Results::default();
    let schedule = schedule(plan);
    for (label, config, kind, counted) in schedule {
        if super::interrupt::requested().is_some() {
            break;
        }
        let run_label = format!("{label}, {}", kind.name());
        let begun = Instant::now();
        let failures_before = results.failures.len();
        if let Err(e) = wait_images_unlocked(plan) {
            results.fail(config, &run_label, e);
        } else {
            match run_one(plan, config, kind) {
                Ok(data) => {
                    results
                        .commands
                        .entry((config, kind))
                        .or_insert_with(|| data.out.command.clone());
                    if counted {
                        record(&mut results, plan, config, kind, &run_label, &data);
                    } else {
                        let mut scratch = Results::default();
                        record(&mut scratch, plan, config, kind, &run_label, &data);
                        results.failures.extend(scratch.failures);
                    }
                }
                Err(e) => results.fail(config, &run_label, e),
            }
        }
        results.runs += 1;
        let failure = results.failures[failures_before..]
            .first()
            .map(|f| f.message.lines().next().unwrap_or(""));
        progress(&Progress {
            label: &label,
            config,
            kind,
            took: begun.elapsed(),
            failure,
        });
    }
    results
}

/// Waits until no earlier svmm's worker still holds an image (io_uring teardown outlives it).
fn wait_images_unlocked(plan: &Plan) -> Result<(), String> {
    for image in &plan.images {
        disk::wait_unlocked(image, Duration::from_secs(10))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::Backend;

    fn plan() -> Plan {
        Plan {
            reps: 1,
            bench_ms: 100,
            mem_mib: 128,
            guest: "/g".into(),
            tests: vec!["bench_getid".into(), "bench_rand1".into()],
            images: Vec::new(),
            image_mib: 1,
            idle_ms: 1000,
            ram: crate::bench::setup::Ram::Shared,
            fs: None,
            wl: None,
            net: None,
            placement: crate::bench::placement::Placement::Free,
        }
    }

    fn data(stdout: &str, stderr: &str, status: i32) -> RunData {
        RunData {
            first_line: Duration::from_millis(40),
            exit: Duration::from_millis(90),
            memory: None,
            out: VmOutput {
                backend: Backend::Svmm,
                command: "svmm ...".into(),
                status: Some(status),
                signal: None,
                stdout: stdout.into(),
                stderr: stderr.into(),
                elapsed: Duration::from_millis(90),
                timed_out: false,
            },
        }
    }

    const SPAWNS: &str = "svmm: timing device=rng#0 spawn_us=4000\nsvmm: timing device=rng#1 spawn_us=3000\n\
                          svmm: timing device=blk#2 spawn_us=2500\nsvmm: timing device=blk#3 spawn_us=2600\n";

    #[test]
    fn each_repetition_boots_several_vms_per_configuration_in_rotating_order() {
        let mut p = plan();
        p.reps = 2;
        let all = schedule(&p);
        let counted: Vec<_> = all.iter().filter(|s| s.3).collect();
        // Per rep: 4 boots of each boot run and one of each bench run, per configuration.
        assert_eq!(counted.len(), 2 * 3 * (2 * BOOTS_PER_REP + 2));
        for kind in [RunKind::Boot0, RunKind::Boot4] {
            for config in Config::ALL {
                let n = counted
                    .iter()
                    .filter(|s| s.2 == kind && s.1 == config)
                    .count();
                assert_eq!(n, 2 * BOOTS_PER_REP, "{kind:?} {config:?}");
            }
        }
        // Within a repetition, the first configuration of each round of boots rotates.
        let firsts: Vec<Config> = counted
            .iter()
            .filter(|s| s.2 == RunKind::Boot4)
            .step_by(3)
            .map(|s| s.1)
            .take(3)
            .collect();
        assert_eq!(firsts, Config::ALL);
        // Without tests (`--tests none`) only the boot runs.
        p.tests.clear();
        assert!(schedule(&p)
            .iter()
            .all(|s| matches!(s.2, RunKind::Boot0 | RunKind::Boot4)));
        assert_eq!(
            schedule(&p).len(),
            3 + 2 * 3 * 2 * BOOTS_PER_REP,
            "the warm-up boots, then the boots"
        );
        assert!(!figures::catalogue(&p.tests)
            .iter()
            .any(|f| f.key.starts_with("mem.")));
    }

    #[test]
    fn a_good_bench_run_gives_samples_and_spawns() {
        let mut r = Results::default();
        let stdout = "testguest: svmm test guest v1\n\
            testguest: bench_getid ok mode=poll requests=10 p50_ns=20000 p99_ns=30000 mean_ns=21000\n\
            testguest: bench_rand1 ok mode=poll depth=1 requests=9 us=100 iops=9000 p50_ns=100000 p99_ns=200000\n\
            testguest: done pass=2 fail=0\n";
        let d = data(stdout, SPAWNS, 0);
        record(
            &mut r,
            &plan(),
            Config::Sandboxed,
            RunKind::Bench(Mode::Poll),
            "x",
            &d,
        );
        assert!(r.failures.is_empty(), "{:?}", r.failures);
        assert_eq!(
            r.samples["poll.bench_getid.p50_ns"][&Config::Sandboxed],
            [20.0]
        );
        assert_eq!(r.samples["spawn.blk#2"][&Config::Sandboxed], [2.5]);
        assert!(!r.samples.contains_key("boot0.exit"));
        assert_eq!(r.raw_lines[&(Config::Sandboxed, Mode::Poll)].len(), 2);
    }

    #[test]
    fn a_failing_test_is_reported_and_the_rest_kept() {
        let mut r = Results::default();
        let stdout = "testguest: svmm test guest v1\n\
            testguest: bench_getid FAIL timeout interrupt=0\n\
            testguest: bench_rand1 ok mode=poll depth=1 requests=9 us=100 iops=9000 p50_ns=100000 p99_ns=200000\n\
            testguest: done pass=1 fail=1\n";
        let d = data(stdout, SPAWNS, 1);
        record(
            &mut r,
            &plan(),
            Config::InProcess,
            RunKind::Bench(Mode::Poll),
            "rep 1/1",
            &d,
        );
        assert_eq!(r.failures.len(), 1, "{:?}", r.failures);
        assert!(r.failures[0]
            .message
            .starts_with("bench_getid FAIL timeout interrupt=0"));
        assert_eq!(r.failures[0].run, "rep 1/1");
        assert_eq!(
            r.samples["poll.bench_rand1.iops"][&Config::InProcess],
            [9000.0]
        );
        // A failed run gives no spawn figures.
        assert!(!r.samples.contains_key("spawn.rng#0"));
    }

    #[test]
    fn boot_runs_give_times_and_missing_spawn_lines_fail() {
        let mut r = Results::default();
        let stdout = "testguest: svmm test guest v1\ntestguest: done pass=0 fail=0\n";
        let d = data(stdout, "svmm: timing device=rng#0 spawn_us=4000\n", 0);
        record(&mut r, &plan(), Config::Sandboxed, RunKind::Boot4, "x", &d);
        assert_eq!(r.samples["boot4.first_line"][&Config::Sandboxed], [40.0]);
        assert_eq!(r.samples["boot4.exit"][&Config::Sandboxed], [90.0]);
        assert_eq!(r.failures.len(), 3, "{:?}", r.failures);
        // QEMU has no spawn lines, and none are expected.
        let mut q = Results::default();
        let mut d = data(stdout, "", 1);
        d.out.backend = Backend::Qemu {
            machine: "microvm".into(),
        };
        record(&mut q, &plan(), Config::Qemu, RunKind::Boot4, "x", &d);
        assert!(q.failures.is_empty(), "{:?}", q.failures);
        assert_eq!(q.samples["boot4.exit"][&Config::Qemu], [90.0]);
    }

    #[test]
    fn a_bad_exit_without_test_lines_is_one_failure() {
        let mut r = Results::default();
        let d = data("testguest: svmm test guest v1\n", "svmm: error: x\n", 67);
        record(&mut r, &plan(), Config::Sandboxed, RunKind::Boot0, "x", &d);
        assert_eq!(r.failures.len(), 1);
        assert!(r.failures[0].message.contains("svmm: error: x"));
        assert!(r.samples.is_empty());
    }

    #[test]
    fn pidfd_sees_an_exit() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let fd = PidFd::open(child.id()).unwrap();
        assert!(fd.wait(Duration::from_secs(10)));
        child.wait().unwrap();
        let mut sleeper = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let fd = PidFd::open(sleeper.id()).unwrap();
        assert!(!fd.wait(Duration::from_millis(20)));
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
    }
}
