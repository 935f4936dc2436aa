//! svmm's command line and input checking: every bad invocation ends with the exit code from
//! `vmm/src/exit_code.rs`, one `svmm: ...` line on stderr that names the problem, and no panic.
//! Also `--help`, `--print-sandbox` (no kernel needed, a real report on stdout), and a host
//! without `/dev/kvm` (simulated for real in a private mount namespace).

use std::process::Command;
use std::time::Duration;

use tests::paths::{self, TempDir};
use tests::sandbox_report::{allowed_syscalls, section};
use tests::suite::{Failed, TrialResult};
use tests::{Backend, Suite, TestVm, VmOutput};

/// Bad command line.
const USAGE: i32 = 64;
/// Bad kernel or initrd file.
const BAD_INPUT: i32 = 65;
/// `/dev/kvm` missing or not permitted.
const KVM_UNAVAILABLE: i32 = 66;
/// VM set-up failed (accepted where a limit may only show when KVM or mmap refuses).
const SETUP_FAILED: i32 = 67;

/// Phrases that say a file does not exist.
const NOT_FOUND: &[&str] = &["no such file", "not found", "does not exist", "missing"];
/// Phrases that say a file is no kernel.
const NOT_KERNEL: &[&str] = &["kernel", "elf", "bzimage"];

fn main() {
    Suite::new("cli")
        .test("no_kernel_option", || {
            expect_error(TestVm::new(Backend::Svmm), &[USAGE], &[], &["--kernel"])
        })
        .test("kernel_file_missing", || {
            let path = "/nonexistent/svmm-test/vmlinux";
            expect_error(TestVm::svmm(path), &[BAD_INPUT], &[path], NOT_FOUND)
        })
        .test("kernel_is_a_directory", || {
            let dir = TempDir::new("cli-dir");
            let path = dir.path().to_str().unwrap();
            let phrases = &["directory", "not a regular file", "not a file"];
            expect_error(TestVm::svmm(path), &[BAD_INPUT], &[path], phrases)
        })
        .test("kernel_is_random_bytes", || {
            not_a_kernel("random", &pseudo_random(64 * 1024))
        })
        .test("kernel_is_empty", || not_a_kernel("empty", b""))
        .test("kernel_is_text", || {
            not_a_kernel("text", &b"#!/bin/sh\necho hi\n".repeat(100))
        })
        .test("initrd_file_missing", || {
            let path = "/nonexistent/svmm-test/initrd.gz";
            expect_error(good_kernel().initrd(path), &[BAD_INPUT], &[path], NOT_FOUND)
        })
        .test("mem_zero", || {
            bad_number(good_kernel().mem_mib(0), &[USAGE], "mem")
        })
        .test("mem_absurd", || {
            // 100 TB: beyond any host; the check may come from the CLI or from the mapping.
            let vm = good_kernel().mem_mib(100_000_000);
            bad_number(vm, &[USAGE, SETUP_FAILED], "mem")
        })
        .test("cpus_zero", || {
            bad_number(good_kernel().cpus(0), &[USAGE], "cpu")
        })
        .test("cpus_1000", || {
            bad_number(good_kernel().cpus(1000), &[USAGE, SETUP_FAILED], "cpu")
        })
        .test("unknown_device_kind", || {
            expect_error(good_kernel().device("bogus"), &[USAGE], &["bogus"], &[])
        })
        .test("help_lists_every_option", help_lists_every_option)
        .test("print_sandbox_rng", print_sandbox_rng)
        .test("print_sandbox_bad_device", || {
            let vm = TestVm::new(Backend::Svmm)
                .arg("--print-sandbox")
                .device("bogus");
            expect_error(vm, &[USAGE], &["bogus"], &["unknown device kind"])
        })
        .test_unless("kvm_unavailable", no_namespace_reason(), kvm_unavailable)
        .run()
}

/// A valid kernel (the test guest), so that the option under test is the only thing wrong.
fn good_kernel() -> TestVm {
    TestVm::svmm(paths::artefact("testguest.elf"))
}

/// Runs `vm` and checks the error contract: exit code in `codes`, stderr exactly one line starting
/// with `svmm: `, containing every `all_of` and at least one `any_of` phrase (case-insensitive).
fn expect_error(vm: TestVm, codes: &[i32], all_of: &[&str], any_of: &[&str]) -> TrialResult {
    // Errors are found before any guest runs; a VM still running after 30 s was accepted wrongly.
    let out = vm.timeout(Duration::from_secs(30)).run()?;
    out.log("svmm");
    check_no_panic(&out)?;
    if !out.status.is_some_and(|c| codes.contains(&c)) {
        return Err(format!("expected exit code {codes:?}\n{}", out.report()).into());
    }
    let stderr = out.stderr.trim();
    let lines: Vec<&str> = stderr.lines().collect();
    if lines.len() != 1 || !stderr.starts_with("svmm: ") {
        return Err(format!(
            "expected exactly one stderr line starting with `svmm: `, got {}\n{}",
            lines.len(),
            out.report()
        )
        .into());
    }
    let lower = stderr.to_lowercase();
    let missing: Vec<&&str> = all_of
        .iter()
        .filter(|p| !lower.contains(&p.to_lowercase()))
        .collect();
    if !missing.is_empty() {
        return Err(format!("stderr does not mention {missing:?}\n{}", out.report()).into());
    }
    if !any_of.is_empty() && !any_of.iter().any(|p| lower.contains(&p.to_lowercase())) {
        return Err(format!("stderr mentions none of {any_of:?}\n{}", out.report()).into());
    }
    Ok(())
}

/// A numeric option out of range: the message must name the option (or what it sets).
fn bad_number(vm: TestVm, codes: &[i32], what: &str) -> TrialResult {
    expect_error(vm, codes, &[], &[&format!("--{what}"), what])
}

/// A kernel file with `contents` that is no kernel at all.
fn not_a_kernel(label: &str, contents: &[u8]) -> TrialResult {
    let dir = TempDir::new("cli-kernel");
    let path = dir.file(&format!("{label}.bin"), contents);
    let path = path.to_str().unwrap();
    expect_error(TestVm::svmm(path), &[BAD_INPUT], &[path], NOT_KERNEL)
}

fn check_no_panic(out: &VmOutput) -> TrialResult {
    if out.status == Some(101) || out.stderr.contains("panicked") {
        return Err(format!("svmm panicked\n{}", out.report()).into());
    }
    Ok(())
}

/// Deterministic bytes without structure (xorshift64).
fn pseudo_random(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

fn help_lists_every_option() -> TrialResult {
    let out = TestVm::new(Backend::Svmm)
        .arg("--help")
        .timeout(Duration::from_secs(30))
        .run()?;
    check_no_panic(&out)?;
    out.assert_status(0);
    let text = format!("{}{}", out.stdout, out.stderr);
    let options = [
        "--kernel",
        "--initrd",
        "--cmdline",
        "--mem",
        "--cpus",
        "--device",
        "--no-sandbox",
        "--acpi",
        "--on-worker-exit",
        "--max-restarts",
        "--seccomp",
        "--print-sandbox",
        "--report-timings",
    ];
    let missing: Vec<&str> = options.into_iter().filter(|o| !text.contains(o)).collect();
    if !missing.is_empty() {
        return Err(Failed::from(format!(
            "--help does not mention {missing:?}:\n{text}"
        )));
    }
    Ok(())
}

/// `svmm --print-sandbox --device rng,source=urandom`: no kernel, exit 0, nothing on stderr,
/// and a report with the worker's command line, fds (the opened /dev/urandom among them),
/// sandbox layers and seccomp rules, and svmm's own profile.
fn print_sandbox_rng() -> TrialResult {
    let out = TestVm::new(Backend::Svmm)
        .arg("--print-sandbox")
        .device("rng,source=urandom")
        .timeout(Duration::from_secs(30))
        .run()?;
    check_no_panic(&out)?;
    out.assert_status(0);
    assert_eq!(out.stderr, "", "\n{}", out.report());
    let text = &out.stdout;
    for needle in [
        "== rng#0: sandboxed worker process",
        "command line: svmm __worker rng --seccomp=trap --sandbox-namespaces=1 ",
        "namespaces: own user, pid (worker is PID 1), mount, net",
        "root: empty read-only tmpfs (pivot_root)",
        "capabilities: none",
        "no_new_privs: set",
        "rlimits: NPROC 0",
        "inherited fds (every other fd is closed before exec):",
        "    3  control socket",
        "    4  guest RAM memfd (sealed",
        "    5  interrupt status page",
        "    6  irqfd",
        "    7  stop eventfd",
        "    8  queue 0 notify eventfd",
        "    9  host resource of rng: /dev/urandom (read-only)",
        "landlock: ",
        "seccomp: profile \"rng\" in mode trap",
        "only if arg2 (32 bits) & 0x4 == 0x0 [prot without PROT_EXEC",
        "== the broker process (svmm-broker) ==",
        "  rng#0: host resource of rng: /dev/urandom (read-only)",
        "seccomp: profile \"broker\" in mode trap",
        "== svmm itself: its threads ==",
        "seccomp: profile \"vmm\" in mode trap",
        "[KVM_RUN (0xae80)]",
    ] {
        if !text.contains(needle) {
            return Err(format!("report lacks {needle:?}\n{text}").into());
        }
    }
    let worker = allowed_syscalls(section(text, "== rng#0: sandboxed worker process"));
    let vmm = allowed_syscalls(section(text, "== svmm itself"));
    for (who, calls) in [("rng worker", &worker), ("svmm", &vmm)] {
        for call in ["read", "write", "recvmsg", "futex", "exit_group"] {
            if !calls.contains(&call) {
                return Err(format!("{who}: {call} not allowed: {calls:?}\n{text}").into());
            }
        }
    }
    for call in [
        "openat", "open", "execve", "socket", "clone", "fork", "ioctl",
    ] {
        if worker.contains(&call) {
            return Err(format!("rng worker: {call} allowed\n{text}").into());
        }
    }
    // Not even in a comment of the worker's or svmm's sections (the broker's has it: ld.so
    // opens libraries in a new worker before the worker's own filter).
    let broker = section(text, "== the broker process");
    if text.replace(broker, "").contains("openat") {
        return Err(format!("openat appears in the report outside the broker's\n{text}").into());
    }
    Ok(())
}

/// Mounts an empty tmpfs over `/dev` in a private mount namespace, then execs svmm there.
const HIDE_DEV: &str = r#"mount -t tmpfs none /dev && exec "$0" "$@""#;

/// Why the `/dev/kvm`-less namespace cannot be made here, if it cannot.
fn no_namespace_reason() -> Option<String> {
    let probe = Command::new("unshare")
        .args(["-m", "sh", "-c", "mount -t tmpfs none /dev"])
        .output();
    match probe {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "cannot hide /dev/kvm: `unshare -m` + tmpfs mount failed here (needs root): {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!(
            "cannot hide /dev/kvm: unshare(1) not runnable: {e}"
        )),
    }
}

fn kvm_unavailable() -> TrialResult {
    let vm = good_kernel().wrapper(["unshare", "-m", "sh", "-c", HIDE_DEV]);
    let fixes = &["kvm group", "modprobe", "kvm_intel", "kvm_amd"];
    expect_error(vm, &[KVM_UNAVAILABLE], &["/dev/kvm"], fixes)
}
