//! `svmm-bench`: svmm sandboxed vs svmm in-process vs QEMU, in one run. Prints a table
//! on stdout, writes BENCHMARKS.md and benchmarks.svg, exits non-zero when anything failed.
//! `tests/bench.sh` builds everything and runs it; the harness itself is `tests::bench`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tests::bench::figures;
use tests::bench::placement::Placement;
use tests::bench::runner::{self, Progress};
use tests::bench::setup::{self, Machine, Plan};
use tests::bench::{chart, interrupt, report, stats, Config, Mode, RunKind};
use tests::{binary, paths};

const USAGE: &str = "\
usage: svmm-bench [OPTIONS]

Runs the test guest under svmm (sandboxed devices), svmm (the same devices in-process) and QEMU
microvm, alternating, and reports boot, worker spawn, device and memory figures with their
medians, spreads, ratios and the project's targets.

options:
  --reps N          repetitions per configuration (default 5)
  --bench-ms N      testguest.bench_ms: each measured phase of a bench test (default 1000)
  --mem MIB         guest RAM for both VMMs (default 128)
  --guest PATH      the test guest ELF (default: $SVMM_BENCH_GUEST, else images/out/testguest.elf)
  --tests LIST      the tests of the bench runs, comma-separated (default: ring3 and every
                    bench test of images/testguest/README.md; the bench_wl_* ones run in
                    svmm's poll-mode runs only, against a headless weston svmm-bench starts);
                    none: no bench runs, the boot and spawn figures only
  --image-mib N     size of each blk image (default 256)
  --idle-ms N       how long the guest idles for the memory sample (default 1500)
  --scratch DIR     where the disk images go (default: the system temporary directory; not tmpfs)
  --hugepages auto|on|off  guest RAM of both VMMs in 2 MiB pages from the host's hugetlb pool
                    (svmm --hugepages, QEMU memory-backend-memfd hugetlb=on) or in 4 KiB pages
                    of a shared memfd (both). auto (the default): huge pages when svmm-bench
                    runs as root and the pool can be grown by what the run needs; the harness
                    grows nr_hugepages for the run only and puts it back at its end, also
                    when Ctrl-C, SIGTERM or SIGHUP stops it. The report names the backing.
  --placement auto|free|split|split:CPU  where the bench runs' threads run, the same for all
                    three VMMs. split: each VMM under `taskset -c` on every allowed CPU but one,
                    its vCPU thread moved to that one (the lowest, or CPU) once it exists;
                    free: wherever the host puts them. auto (the default): split with two or
                    more CPUs. Boot runs are never placed.
  --qemu-vhost on|off  QEMU's net device with vhost=on (needs /dev/vhost-net) or vhost=off
                    (default off; the report names which)
  --out DIR         where BENCHMARKS.md and benchmarks.svg go (default: the repository root)

Ctrl-C (SIGINT), SIGTERM or SIGHUP: stops after the VM that is running, writes no report and
puts the host back (pool, namespace, scratch files), exit 128+signal; a second one exits at once.

environment: SVMM_BIN (the svmm binary; default: cargo builds it), QEMU_BIN (default:
qemu-system-x86_64 on PATH), SVMM_BENCH_INVOCATION (the command to print as the one that ran).
";

/// Output file names in `--out`.
const MARKDOWN: &str = "BENCHMARKS.md";
const CHART: &str = "benchmarks.svg";

struct Options {
    reps: usize,
    bench_ms: u64,
    mem_mib: u64,
    guest: PathBuf,
    tests: Vec<String>,
    image_mib: u64,
    idle_ms: u64,
    scratch: PathBuf,
    out: PathBuf,
    qemu_vhost: bool,
    hugepages: Choice,
    placement: String,
}

/// `--hugepages`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Choice {
    Auto,
    On,
    Off,
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        reps: 5,
        bench_ms: 1000,
        mem_mib: 128,
        guest: std::env::var_os("SVMM_BENCH_GUEST")
            .map(PathBuf::from)
            .unwrap_or_else(|| paths::images_out().join("testguest.elf")),
        tests: figures::default_tests(),
        image_mib: 256,
        idle_ms: 1500,
        scratch: std::env::temp_dir(),
        out: paths::repo_root(),
        qemu_vhost: false,
        hugepages: Choice::Auto,
        placement: "auto".to_string(),
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |min: u64| -> Result<u64, String> {
            value
                .parse::<u64>()
                .ok()
                .filter(|n| *n >= min)
                .ok_or_else(|| format!("{flag} {value}: expected an integer ≥ {min}"))
        };
        match flag.as_str() {
            "--reps" => o.reps = number(1)? as usize,
            "--bench-ms" => o.bench_ms = number(10)?,
            "--mem" => o.mem_mib = number(16)?,
            "--guest" => o.guest = PathBuf::from(value),
            "--tests" if value == "none" => o.tests = Vec::new(),
            "--tests" => {
                o.tests = value
                    .split(',')
                    .filter(|t| !t.is_empty())
                    .map(str::to_string)
                    .collect();
                if o.tests.is_empty() {
                    return Err("--tests names no test (none: the boot figures only)".into());
                }
            }
            "--image-mib" => o.image_mib = number(64)?,
            "--idle-ms" => o.idle_ms = number(500)?,
            "--scratch" => o.scratch = PathBuf::from(value),
            "--out" => o.out = PathBuf::from(value),
            "--hugepages" => {
                o.hugepages = match value.as_str() {
                    "auto" => Choice::Auto,
                    "on" => Choice::On,
                    "off" => Choice::Off,
                    _ => return Err(format!("{flag} {value}: expected auto, on or off")),
                }
            }
            "--placement" => o.placement = value.clone(),
            "--qemu-vhost" => {
                o.qemu_vhost = match value.as_str() {
                    "on" => true,
                    "off" => false,
                    _ => return Err(format!("{flag} {value}: expected on or off")),
                }
            }
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(o)
}

fn main() -> ExitCode {
    // First: a signal from here on stops the run in order (see tests::bench::interrupt).
    if let Err(e) = interrupt::install() {
        eprintln!("svmm-bench: error: {e}");
        return ExitCode::from(2);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match parse_args(&args) {
        Ok(o) => o,
        Err(e) if e.is_empty() => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("svmm-bench: {e}\n\n{USAGE}");
            return ExitCode::from(64);
        }
    };
    match run(options, &args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("svmm-bench: error: {e}");
            match interrupt::requested() {
                // The shell's convention for a command a signal ended.
                Some(signal) => ExitCode::from(128 + signal as u8),
                None => ExitCode::from(2),
            }
        }
    }
}

/// Guest RAM for both VMMs under `choice`, and the pool reservation that must outlive the runs.
/// Twice one VM's pages: a VM's processes may still be freeing theirs when the next starts.
fn guest_ram(
    choice: Choice,
    mem_mib: u64,
) -> Result<(setup::Ram, Option<tests::hugepages::Reserved>), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let why_not = match choice {
        Choice::Off => return Ok((setup::Ram::Shared, None)),
        _ if mem_mib % 2 != 0 => format!("--mem {mem_mib} is not a whole number of 2 MiB pages"),
        _ if !root => "growing the huge page pool needs root".to_string(),
        _ => match tests::hugepages::Reserved::pages(mem_mib) {
            Ok(pool) => {
                let (before, during) = pool.pool();
                return Ok((setup::Ram::HugeTlb { before, during }, Some(pool)));
            }
            Err(e) => e,
        },
    };
    match choice {
        Choice::On => Err(format!("--hugepages on: {why_not}")),
        _ => {
            eprintln!("svmm-bench: guest RAM in 4 KiB pages for both VMMs: {why_not}");
            Ok((setup::Ram::Shared, None))
        }
    }
}

/// The whole benchmark; `Ok(false)` when some run failed (the report says which).
fn run(o: Options, args: &[String]) -> Result<bool, String> {
    let qemu = setup::check_prerequisites(&o.guest)?;
    let svmm = binary::svmm_bin();
    eprintln!("svmm-bench: svmm {}", svmm.display());
    eprintln!("svmm-bench: qemu {}", qemu.display());
    eprintln!("svmm-bench: guest {}", o.guest.display());
    let mut machine = Machine::probe(&qemu, &o.guest);
    std::fs::create_dir_all(&o.out)
        .map_err(|e| format!("cannot create {}: {e}", o.out.display()))?;

    let started = Instant::now();
    let scratch = setup::scratch_dir(&o.scratch)?;
    let images = setup::create_images(scratch.path(), 2, o.image_mib)?;
    eprintln!(
        "svmm-bench: 2 images of {} MiB in {} ({:.1} s)",
        o.image_mib,
        scratch.path().display(),
        started.elapsed().as_secs_f64()
    );
    let fs = if o.tests.iter().any(|t| figures::is_fs_test(t)) {
        let virtiofsd = setup::Virtiofsd::find().ok_or(
            "no virtiofsd for QEMU's fs device (/usr/lib/qemu/virtiofsd from qemu-system-common, \
             /usr/libexec/virtiofsd from the virtiofsd package, or VIRTIOFSD=PATH); leave the \
             bench_fs_* tests out with --tests to run without it",
        )?;
        eprintln!("svmm-bench: virtiofsd {}", virtiofsd.path.display());
        let share = setup::create_share(scratch.path())?;
        Some(setup::FsSetup {
            socket: scratch.path().join("virtiofsd.sock"),
            share,
            virtiofsd,
        })
    } else {
        None
    };
    // The net device's world: a namespace with a tap and the peer, for the whole run.
    let net = if o.tests.iter().any(|t| figures::is_net_test(t)) {
        if let Some(why) = tests::netns::missing_reason() {
            return Err(format!(
                "the bench_net_* tests need a network namespace with a tap: {why}; leave them \
                 out with --tests to run without them"
            ));
        }
        if o.qemu_vhost && !std::path::Path::new("/dev/vhost-net").exists() {
            return Err("--qemu-vhost on needs /dev/vhost-net (modprobe vhost_net)".into());
        }
        let ns = tests::netns::NetNs::new("bench").map_err(|e| e.to_string())?;
        ns.tap("tap0", "10.77.0.1/24", false)
            .map_err(|e| e.to_string())?;
        let peer_bin = std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("svmm-netpeer");
        let peer = ns
            .peer(
                &peer_bin.to_string_lossy(),
                &[
                    "--tap",
                    "tap0",
                    "--port",
                    "7777",
                    "--no-capture",
                    "--limit",
                    "86400",
                ],
            )
            .map_err(|e| e.to_string())?;
        eprintln!(
            "svmm-bench: network namespace {} with tap0 (10.77.0.1/24) and svmm-netpeer",
            ns.name()
        );
        Some((ns, peer))
    } else {
        None
    };
    // Alive until the report is written: every svmm poll-mode bench run connects to it.
    let weston = if o.tests.iter().any(|t| figures::is_wl_test(t)) {
        if let Some(missing) = tests::weston::missing_programs() {
            return Err(format!(
                "{missing}; leave the bench_wl_* tests out with --tests to run without them"
            ));
        }
        let (width, height) = setup::WL_OUTPUT;
        let weston = tests::weston::Weston::start(width, height)
            .map_err(|e| format!("cannot start weston for the bench_wl_* tests: {e}"))?;
        eprintln!(
            "svmm-bench: weston (headless, {width}x{height}) on {}",
            weston.socket().display()
        );
        Some(weston)
    } else {
        None
    };
    let wl = weston.as_ref().map(|w| setup::WlSetup {
        socket: w.socket(),
        output: w.size(),
    });
    // Held until the report is written: the pool goes back to its size when it drops.
    let placement = Placement::parse(&o.placement, &Placement::allowed_cpus()?)?;
    eprintln!("svmm-bench: threads: {}", placement.describe());
    let (ram, _pool) = guest_ram(o.hugepages, o.mem_mib)?;
    eprintln!("svmm-bench: guest RAM: {}", ram.describe());
    let plan = Plan {
        reps: o.reps,
        bench_ms: o.bench_ms,
        mem_mib: o.mem_mib,
        ram,
        guest: o.guest.clone(),
        tests: o.tests.clone(),
        images,
        image_mib: o.image_mib,
        idle_ms: o.idle_ms,
        fs,
        wl,
        net: net.as_ref().map(|(ns, _)| setup::NetSetup {
            netns: ns.name().to_string(),
            tap: "tap0".to_string(),
            vhost: o.qemu_vhost,
        }),
        placement,
    };
    let total_runs = runner::schedule(&plan).len();
    let mut done = 0;
    let results = runner::run_all(&plan, |p: &Progress| {
        done += 1;
        let outcome = match p.failure {
            None => "ok".to_string(),
            Some(first) => format!("FAILED: {first}"),
        };
        eprintln!(
            "[{done:>3}/{total_runs}] {:<9} {:<16} {:<10} {:>6.1} s  {outcome}",
            p.label,
            p.kind.name(),
            p.config.name(),
            p.took.as_secs_f64()
        );
    });
    if let Some(signal) = interrupt::requested() {
        // Returning drops the pool reservation, the namespace, weston and the scratch directory.
        return Err(format!(
            "{} after {done} of {total_runs} runs: nothing written to {}; the host is put back",
            interrupt::name(signal),
            o.out.display()
        ));
    }
    let total = started.elapsed();
    machine.load_after = setup::load_average();

    let figures = figures::catalogue(&plan.tests);
    let checks = stats::check_targets(&figures, &results.samples);
    let invocation = std::env::var("SVMM_BENCH_INVOCATION").unwrap_or_else(|_| {
        std::iter::once("svmm-bench".to_string())
            .chain(args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ")
    });
    // Every configuration's interrupt-mode bench run (a boot-only run's: its four-device
    // boot); and svmm's poll-mode ones when they differ by more than `testguest.irq`, i.e. when
    // they have the wayland device.
    let shown = match plan.tests.is_empty() {
        true => RunKind::Boot4,
        false => RunKind::Bench(Mode::Irq),
    };
    let mut commands: Vec<(String, String)> = Config::ALL
        .iter()
        .map(|c| {
            (
                format!("{}, {}", c.name(), shown.name()),
                setup::shell_line(&plan.vm(*c, shown).command()),
            )
        })
        .collect();
    for c in Config::ALL {
        let kind = RunKind::Bench(Mode::Poll);
        if plan.wl_in(c, kind).is_some() {
            commands.push((
                format!("{}, {} (with the wayland device)", c.name(), kind.name()),
                setup::shell_line(&plan.vm(c, kind).command()),
            ));
        }
    }
    let r = report::Report {
        plan: &plan,
        figures: &figures,
        results: &results,
        checks: &checks,
        machine: &machine,
        invocation: &invocation,
        commands: &commands,
        total,
        chart: CHART,
    };
    print!("{}", report::stdout_text(&r));
    let md_path = o.out.join(MARKDOWN);
    std::fs::write(&md_path, report::markdown(&r))
        .map_err(|e| format!("cannot write {}: {e}", md_path.display()))?;
    let chart_path = o.out.join(CHART);
    chart::write_svg(&chart_path, &figures, &results.samples)?;
    eprintln!(
        "svmm-bench: wrote {} and {}",
        md_path.display(),
        chart_path.display()
    );
    if total > Duration::from_secs(600) {
        eprintln!(
            "svmm-bench: warning: the comparison took {:.0} s, over the 10-minute budget \
             (fewer --reps or a shorter --bench-ms)",
            total.as_secs_f64()
        );
    }
    if !results.failures.is_empty() {
        eprintln!(
            "svmm-bench: {} run(s) FAILED (listed above and in {MARKDOWN})",
            results.failures.len()
        );
    }
    Ok(results.failures.is_empty())
}
