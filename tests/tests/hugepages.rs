//! `--hugepages`: guest RAM from the host's reserved 2 MiB pool (hugetlbfs), shared with the
//! device workers like the default memfd.
//!
//! - The test guest's blk test with `direct=on` (the worker's `O_DIRECT` reads and writes land
//!   straight in huge-page guest RAM), sandboxed and in-process; the host compares the image
//!   afterwards (two queues, as the blk suite's direct-I/O trial), and `/proc/PID/smaps` of svmm and of the worker shows the guest RAM memfd mapped
//!   in 2 MiB pages in each. The trial reserves the pages it needs for its own run and puts
//!   `nr_hugepages` back afterwards (needs root; ignored with the reason otherwise).
//! - Too few free pages: one line saying how many are needed, how many there are, and the
//!   command that reserves them; exit 67. Nothing is reserved for it.
//! - `svmm-bench` stopped by Ctrl-C (SIGINT) while it runs with a pool it grew: it finishes the
//!   VM in progress, writes no report, exits 130, and leaves `nr_hugepages` and its scratch
//!   directory as they were before it started.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tests::disk::{self, compare_image, expected_image_blocks};
use tests::hugepages::{available, Reserved, POOL};
use tests::mode::Mode;
use tests::output::number_field;
use tests::procfs;
use tests::suite::TrialResult;
use tests::{paths, require_kvm, Suite, TestVm};

const TIMEOUT: Duration = Duration::from_secs(60);
/// What the test guest prints when its tests are done and it idles (`testguest.sleep_ms`).
const SLEEPING: &str = "testguest: sleep ms=";
/// svmm's exit status for a VM that could not be set up.
const SETUP_FAILED: i32 = 67;
/// Guest RAM of the trials, in MiB (64 huge pages).
const MEM_MIB: u64 = 128;

fn main() {
    let mut suite = Suite::new("hugepages").sequential();
    for mode in Mode::BOTH {
        suite = suite.test_unless(
            &mode.trial("guest_blk_in_huge_pages"),
            not_root(),
            move || guest_blk_in_huge_pages(mode),
        );
    }
    suite
        .test("short_pool_is_one_line", short_pool_is_one_line)
        .test_unless(
            "bench_interrupted_puts_the_pool_back",
            not_root(),
            bench_interrupted_puts_the_pool_back,
        )
        .run()
}

fn not_root() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    (unsafe { libc::geteuid() } != 0)
        .then(|| "needs root (reserves huge pages in /sys/kernel/mm/hugepages)".into())
}

/// The page size the guest RAM memfd is mapped with in process `pid`, from its smaps.
fn guest_ram_page_kib(pid: u32) -> Result<u64, String> {
    let smaps = fs::read_to_string(format!("/proc/{pid}/smaps"))
        .map_err(|e| format!("read /proc/{pid}/smaps: {e}"))?;
    let mut in_ram = false;
    for line in smaps.lines() {
        // A mapping's header is "start-end perms offset dev inode [name]"; its fields "Key: value".
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            in_ram = line.ends_with("/memfd:svmm-guest-ram (deleted)");
        } else if let Some(kib) = line.strip_prefix("KernelPageSize:").filter(|_| in_ram) {
            return kib
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .map_err(|_| format!("bad KernelPageSize line {line:?}"));
        }
    }
    Err(format!("no guest RAM memfd mapping in /proc/{pid}/smaps"))
}

/// The blk test with `direct=on` in huge-page guest RAM.
fn guest_blk_in_huge_pages(mode: Mode) -> TrialResult {
    require_kvm();
    const SEED: u32 = 0x5eed_0020;
    let _pages = Reserved::pages(MEM_MIB / 2)?;
    let dir = paths::TempDir::new("hugepages");
    let image = dir.file("huge.img", &disk::fresh_image());
    let mut vm = TestVm::svmm(paths::artefact("testguest.elf"))
        .cmdline(format!(
            "testguest.run=blk testguest.blk_pattern={SEED:#x} testguest.sleep_ms=30000"
        ))
        .mem_mib(MEM_MIB)
        .arg("--hugepages")
        .device(format!(
            "blk={},direct=on,queues=2{}",
            image.display(),
            mode.option()
        ))
        .timeout(TIMEOUT)
        .spawn()?;
    vm.wait_for_line(SLEEPING, TIMEOUT)?;
    let mut pids = vec![("svmm", vm.pid())];
    if mode == Mode::Sandboxed {
        let workers = procfs::wait_for_workers(vm.pid(), 1, Duration::from_secs(5));
        let [worker] = workers[..] else {
            return Err(format!("expected one worker under svmm, found {workers:?}").into());
        };
        pids.push(("blk worker", worker));
    }
    let pages: Vec<_> = pids
        .iter()
        .map(|&(who, pid)| (who, guest_ram_page_kib(pid)))
        .collect();
    vm.kill();
    let stdout = vm.stdout_so_far();
    let blk = stdout
        .lines()
        .find(|l| l.starts_with("testguest: blk ok "))
        .ok_or_else(|| format!("blk did not pass in huge-page RAM\n{stdout}"))?
        .to_string();
    eprintln!("    {blk}");
    for (who, kib) in pages {
        let kib = kib?;
        eprintln!("    {who}: guest RAM in {kib} KiB pages");
        if kib != 2048 {
            return Err(format!("{who} maps guest RAM in {kib} KiB pages, not 2048").into());
        }
    }
    let blk_size: usize = number_field(&blk, "blk_size")
        .and_then(|n| usize::try_from(n).ok())
        .filter(|n| n.is_power_of_two() && (512..=4096).contains(n))
        .ok_or_else(|| format!("no blk_size in {blk:?}"))?;
    let want = expected_image_blocks(SEED, 4, blk_size / 512);
    compare_image(&image, &want, "after blk in huge-page guest RAM")?;
    Ok(())
}

/// More guest RAM than the pool has free pages: one line, exit 67, no VM.
fn short_pool_is_one_line() -> TrialResult {
    require_kvm();
    if !Path::new(POOL).exists() {
        return Err(
            format!("{POOL} is missing: this host's kernel has no 2 MiB hugetlb pool").into(),
        );
    }
    let free = available()?;
    let mem_mib = ((free + 1) * 2).max(16);
    let needed = mem_mib / 2;
    let out = TestVm::svmm(paths::artefact("testguest.elf"))
        .mem_mib(mem_mib)
        .arg("--hugepages")
        .timeout(TIMEOUT)
        .run()?;
    out.log("svmm --hugepages with a short pool");
    out.assert_status(SETUP_FAILED);
    let lines: Vec<&str> = out.stderr.lines().collect();
    let want = format!(
        "svmm: error: --hugepages: guest RAM needs {needed} free 2 MiB huge pages, this host has "
    );
    match lines[..] {
        [line] if line.starts_with(&want) && line.contains(&format!("> {POOL}/nr_hugepages`")) => {
            Ok(())
        }
        _ => Err(format!("expected one line starting {want:?}\n{}", out.report()).into()),
    }
}

fn bench_interrupted_puts_the_pool_back() -> TrialResult {
    require_kvm();
    let before = tests::hugepages::counter("nr_hugepages")?;
    // Enough pages that the bench must grow the pool: more than are free now.
    let mem_mib = ((available()? + 1) * 2).max(64);
    let scratch = paths::TempDir::new("bench-sigint");
    let out = scratch.path().join("out");
    let mut bench = Command::new(env!("CARGO_BIN_EXE_svmm-bench"))
        .args([
            "--tests",
            "bench_cpu",
            "--reps",
            "2",
            "--bench-ms",
            "50",
            "--hugepages",
            "on",
        ])
        .args(["--mem", &mem_mib.to_string(), "--image-mib", "64"])
        .arg("--guest")
        .arg(paths::artefact("testguest.elf"))
        .arg("--scratch")
        .arg(scratch.path())
        .arg("--out")
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("start svmm-bench: {e}"))?;
    let mut stderr = BufReader::new(bench.stderr.take().expect("piped stderr"));
    let mut seen = String::new();
    // The first finished VM run (each has its own timeout in svmm-bench), then Ctrl-C's
    // signal to svmm-bench alone.
    let grown_to = loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            let _ = bench.wait();
            return Err(format!("svmm-bench ended before its first run:\n{seen}").into());
        }
        seen.push_str(&line);
        if line.starts_with("[  1/") {
            let grown_to = tests::hugepages::counter("nr_hugepages")?;
            // SAFETY: kill with the pid of our own child that has not been reaped yet.
            if unsafe { libc::kill(bench.id() as i32, libc::SIGINT) } != 0 {
                return Err(format!("kill: {}", std::io::Error::last_os_error()).into());
            }
            break grown_to;
        }
    };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).map_err(|e| e.to_string())?;
    seen.push_str(&rest);
    let status = bench.wait().map_err(|e| e.to_string())?;
    let after = tests::hugepages::counter("nr_hugepages")?;
    let leftovers: Vec<String> = fs::read_dir(scratch.path())
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name != "out")
        .collect();
    let problems: Vec<String> = [
        (status.code() != Some(130)).then(|| format!("exit {status}, expected 130")),
        (grown_to <= before).then(|| format!("the pool was not grown ({before} -> {grown_to})")),
        (after != before).then(|| format!("nr_hugepages {after} after the run, {before} before")),
        out.join("BENCHMARKS.md")
            .exists()
            .then(|| "BENCHMARKS.md was written".to_string()),
        (!leftovers.is_empty()).then(|| format!("left in the scratch directory: {leftovers:?}")),
        (!seen.contains("svmm-bench: error: SIGINT after "))
            .then(|| "no line saying it stopped for SIGINT".to_string()),
    ]
    .into_iter()
    .flatten()
    .collect();
    match problems.is_empty() {
        true => Ok(()),
        false => Err(format!("{}\nsvmm-bench's stderr:\n{seen}", problems.join("; ")).into()),
    }
}
