//! The test guest's ring-3 machinery and its benchmark tests, checked for function (never for
//! speed: figures belong to the bench harness and BENCHMARKS.md).
//!
//! - `ring3` on svmm and on QEMU microvm: a user-mode closure returns through `ud2`, a page
//!   fault from ring 3 reaches the ring-0 handler, and local APIC timer interrupts arrive while
//!   ring 3 runs (the benchmark's interrupt mode depends on it; GUEST.md's PVM runs ring 3
//!   natively and emulates ring 0).
//! - Every benchmark test of images/testguest/README.md in both completion modes, against
//!   svmm's sandboxed and in-process devices, with a short measured phase: each must report
//!   `ok` with its figures, and interrupt mode must have taken interrupts.

use std::time::Duration;

use tests::bench::figures::BENCH_TESTS;
use tests::output::number_field;
use tests::suite::TrialResult;
use tests::{paths, require_kvm, Suite, TestVm, VmOutput};

const TIMEOUT: Duration = Duration::from_secs(60);
/// The blk benchmarks need at least 64 MiB of disk.
const BENCH_IMAGE_BYTES: usize = 64 << 20;

fn main() {
    let mut suite = Suite::new("ring3")
        .sequential()
        .test("ring3_svmm", || ring3(svmm_guest()))
        .test("ring3_qemu_microvm", || {
            require_kvm();
            ring3(TestVm::qemu(paths::artefact("testguest.elf")))
        });
    for sandbox in [true, false] {
        for mode in ["poll", "irq"] {
            let name = format!(
                "bench_tests_{}_{mode}",
                if sandbox { "sandboxed" } else { "in_process" }
            );
            suite = suite.test(&name, move || bench_tests(sandbox, mode));
        }
    }
    suite.run()
}

fn svmm_guest() -> TestVm {
    require_kvm();
    TestVm::svmm(paths::artefact("testguest.elf"))
}

/// The `ring3` test passes with each of its checks.
fn ring3(vm: TestVm) -> TrialResult {
    let out = vm
        .cmdline("testguest.run=ring3")
        .mem_mib(128)
        .timeout(TIMEOUT)
        .run()?;
    out.log("testguest ring3");
    let line = out.assert_line("testguest: ring3 ok ");
    eprintln!("    {line}");
    for want in [" ud2_return=1 ", " page_fault=1 ", " irq_in_ring3=1 "] {
        assert!(
            line.contains(want),
            "expected {want:?} in {line:?}\n{}",
            out.report()
        );
    }
    assert_passed(&out, 1);
    Ok(())
}

/// All benchmark tests against one rng, one blk and one fs device (sandboxed or in-process),
/// 50 ms each.
fn bench_tests(sandbox: bool, mode: &str) -> TrialResult {
    let dir = paths::TempDir::new("ring3-bench");
    // Filled, not sparse: reads of holes would not touch the disk.
    let image = dir.file("bench.img", &vec![0x5a; BENCH_IMAGE_BYTES]);
    // The fs benchmarks' file, in a share a worker with a uid of its own may write.
    let share = tests::share::Share::empty("ring3-bench-fs");
    share.write("bench.bin", &vec![0x5a; 1 << 20]);
    let option = if sandbox { "" } else { ",sandbox=off" };
    let out = svmm_guest()
        .cmdline(format!(
            "testguest.run={} testguest.irq={mode} testguest.bench_ms=50",
            BENCH_TESTS.join(",")
        ))
        .mem_mib(128)
        .device(format!("rng{option}"))
        .device(format!("blk={},direct=on{option}", image.display()))
        .device(share.spec("bench", option))
        .timeout(TIMEOUT)
        .run()?;
    out.log(&format!(
        "testguest bench tests ({mode}, sandbox={sandbox})"
    ));
    for test in BENCH_TESTS {
        let line = out.assert_line(&format!("testguest: {test} ok "));
        eprintln!("    {line}");
        if test == "bench_cpu" {
            continue;
        }
        assert!(
            line.contains(&format!(" mode={mode} ")),
            "{test} ran in the wrong mode: {line}"
        );
        let irqs = number_field(line, "irqs").ok_or_else(|| format!("no irqs= in {line}"))?;
        let requests = number_field(line, "requests").unwrap_or(0);
        assert!(requests > 0, "{test} completed no request: {line}");
        match mode {
            "poll" => assert_eq!(irqs, 0, "{test} took interrupts in poll mode: {line}"),
            _ => assert!(irqs > 0, "{test} took no interrupt in irq mode: {line}"),
        }
    }
    assert_passed(&out, BENCH_TESTS.len() as u32);
    Ok(())
}

fn assert_passed(out: &VmOutput, passed: u32) {
    assert_eq!(
        out.testguest_summary(),
        Some((passed, 0)),
        "\n{}",
        out.report()
    );
    assert_eq!(out.guest_status(), Some(0), "\n{}", out.report());
    out.assert_no_panic();
}
