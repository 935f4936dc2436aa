//! virtio-rng end to end, in both modes (a sandboxed worker process, and the same code on a
//! thread of svmm): the test guest's own driver reads 2 KiB and fails unless every chain came
//! back with a used-buffer interrupt (so a pass proves the interrupt path too), then resets and
//! re-initialises the device; svmm's statistics line adds up over activations. Both sources:
//! the device's own generator (the default) and `source=urandom`; and the generator's reseed
//! from the kernel under the worker's seccomp filter. The sandbox around the rng worker is
//! checked in tests/tests/sandbox.rs.

use std::time::Duration;

use tests::mode::Mode;
use tests::suite::TrialResult;
use tests::{Suite, TestVm, VmOutput};

const TIMEOUT: Duration = Duration::from_secs(60);
/// The rng test's result line up to its timing fields (32 requests of 64 bytes).
const RNG_OK: &str = "testguest: rng ok bytes=2048 requests=32 ";

fn main() {
    let mut suite = Suite::new("rng").sequential();
    for mode in Mode::BOTH {
        suite = suite
            .test(&mode.trial("rng"), move || rng(mode, ""))
            .test(&mode.trial("rng_reinit"), move || rng_reinit(mode))
            .test(&mode.trial("rng_urandom"), move || {
                rng(mode, ",source=urandom")
            });
    }
    suite
        .test("rng_no_sandbox_switch", rng_no_sandbox_switch)
        .test(
            "rng_generator_reseeds_under_the_filter",
            rng_generator_reseeds_under_the_filter,
        )
        .run()
}

/// The test guest running `tests` with one rng device `spec`.
fn guest(tests: &str, spec: &str) -> TestVm {
    TestVm::testguest(format!("testguest.run={tests}"))
        .timeout(TIMEOUT)
        .device(spec)
}

/// What every good run shows: the device probed in slot 0, one pass, exit 0, no panic.
fn assert_passed(out: &VmOutput) {
    out.assert_line("testguest: virtio-mmio 0 addr=0xd0000000 size=0x1000 irq=5 id=4");
    assert_eq!(out.testguest_summary(), Some((1, 0)), "\n{}", out.report());
    out.assert_no_panic();
    out.assert_status(0);
}

/// How a statistics line of a healthy device in `mode` ends: a sandboxed device counts its
/// worker's restarts (none here).
fn restarts(mode: Mode) -> &'static str {
    match mode {
        Mode::Sandboxed => "; restarts=0",
        Mode::InProcess => "",
    }
}

/// The per-device statistics line svmm prints at VM end.
fn assert_stats(out: &VmOutput, line: &str) {
    assert!(
        out.stderr.lines().any(|l| l == line),
        "missing statistics line {line:?}\n{}",
        out.report()
    );
}

/// The guest's rng test on a device `rng{source}` (the default generator, or
/// `,source=urandom`: one read of the host's /dev/urandom, opened by svmm, per request).
fn rng(mode: Mode, source: &str) -> TrialResult {
    let out = guest("rng", &format!("rng{source}{}", mode.option())).run()?;
    out.log(&format!("svmm testguest rng{source} ({})", mode.name()));
    let rng = out.assert_line(RNG_OK);
    eprintln!("    {rng}");
    // The device is listed on the command line svmm hands the guest.
    let cmdline = out.assert_line("testguest: cmdline: ");
    assert!(
        cmdline.ends_with(" virtio_mmio.device=4K@0xd0000000:5"),
        "{cmdline:?}"
    );
    assert_passed(&out);
    assert_stats(
        &out,
        &format!(
            "svmm: rng#0 ({}): q0 requests=32 bytes=2048 errors=0 drops=0{}",
            mode.name(),
            restarts(mode)
        ),
    );
    // A VM that ends normally says nothing else about its device (no teardown noise).
    let about: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("svmm: rng#0"))
        .collect();
    assert_eq!(about.len(), 1, "\n{}", out.report());
    Ok(())
}

/// Reset and a second initialisation of a live device: both requests served, and the
/// statistics add up over both activations.
fn rng_reinit(mode: Mode) -> TrialResult {
    let out = guest("rng_reinit", &format!("rng{}", mode.option())).run()?;
    out.log(&format!("svmm testguest rng_reinit ({})", mode.name()));
    out.assert_line("testguest: rng_reinit ok bytes=128 requests=2");
    assert_passed(&out);
    assert_stats(
        &out,
        &format!(
            "svmm: rng#0 ({}): q0 requests=2 bytes=128 errors=0 drops=0{}",
            mode.name(),
            restarts(mode)
        ),
    );
    Ok(())
}

/// The default rng (the worker's own ChaCha20 generator) re-keys itself from `getrandom` every
/// 1 MiB of output or before the first request served 1 s after the last key
/// (`devices/src/rng/drbg.rs`). The guest asks for bytes without pause for 1.1 s after a warm-up,
/// all of it later than the first key (taken when the device was built), so the reseed runs
/// inside the worker's seccomp filter however fast the host is (`trap`: a denied call would kill
/// the worker and svmm would name it) and the guest still gets every byte.
fn rng_generator_reseeds_under_the_filter() -> TrialResult {
    let out = guest(
        "bench_rng testguest.irq=poll testguest.bench_ms=1100",
        "rng",
    )
    .arg("--seccomp=trap")
    .run()?;
    out.log("svmm testguest bench_rng (sandboxed, own generator)");
    let line = out.assert_line("testguest: bench_rng ok ");
    let bytes = tests::output::number_field(line, "bytes").unwrap_or(0);
    let us = tests::output::number_field(line, "us").unwrap_or(0);
    if bytes < 1 << 20 && us < 1_000_000 {
        return Err(
            format!("{bytes} bytes in {us} us: crossed no reseed threshold\n{line}").into(),
        );
    }
    assert_eq!(out.testguest_summary(), Some((1, 0)), "\n{}", out.report());
    out.assert_no_panic();
    out.assert_status(0);
    assert!(
        out.stderr
            .lines()
            // The queues, then `; restarts=N`.
            .any(|l| l.starts_with("svmm: rng#0 (sandboxed): q0 ")
                && l.split("; ")
                    .next()
                    .is_some_and(|q| q.ends_with(" errors=0 drops=0"))),
        "no error-free statistics line for the device\n{}",
        out.report()
    );
    Ok(())
}

/// `--no-sandbox` runs every device in-process, as `sandbox=off` does.
fn rng_no_sandbox_switch() -> TrialResult {
    let out = guest("rng", "rng").arg("--no-sandbox").run()?;
    out.log("svmm testguest rng (--no-sandbox)");
    out.assert_line(RNG_OK);
    assert_passed(&out);
    assert_stats(
        &out,
        "svmm: rng#0 (in-process): q0 requests=32 bytes=2048 errors=0 drops=0",
    );
    Ok(())
}
