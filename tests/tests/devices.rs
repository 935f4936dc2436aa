//! svmm's virtio devices driven by the test guest's own virtio-mmio driver: virtio-rng served
//! by the worker loop, here in-process (`sandbox=off`, `--no-sandbox`). The guest's `rng` test
//! fails unless every returned chain also came with a used-buffer interrupt (InterruptStatus
//! bit 0 set in the status word the worker shares with svmm), so a pass proves the interrupt
//! path too. Sandboxed trials join these once the broker spawns workers.
//!
//! Each trial is one short boot; they run one at a time (this host has few cores).

use std::time::Duration;

use tests::suite::TrialResult;
use tests::{paths, require_kvm, Suite, TestVm, VmOutput};

const TIMEOUT: Duration = Duration::from_secs(60);
/// The rng test's result line up to its timing fields (32 requests of 64 bytes).
const RNG_OK: &str = "testguest: rng ok bytes=2048 requests=32 ";

fn main() {
    Suite::new("devices")
        .sequential()
        .test("rng_in_process", rng_in_process)
        .test("rng_no_sandbox_switch", rng_no_sandbox_switch)
        .test("rng_reinit_in_process", rng_reinit_in_process)
        .test("two_rng_devices_without_acpi", two_rng_devices_without_acpi)
        .test("unknown_kind_lists_supported_kinds", unknown_kind)
        .run()
}

/// The test guest running `tests` with `devices` (svmm `--device` specs).
fn guest(tests: &str, devices: &[&str]) -> TestVm {
    require_kvm();
    let mut vm = TestVm::svmm(paths::artefact("testguest.elf"))
        .cmdline(format!("testguest.run={tests}"))
        .mem_mib(128)
        .timeout(TIMEOUT);
    for spec in devices {
        vm = vm.device(*spec);
    }
    vm
}

/// What every good run shows: the device probed in slot 0, one pass, exit 0, no panic.
fn assert_passed(out: &VmOutput) {
    out.assert_line("testguest: virtio-mmio 0 addr=0xd0000000 size=0x1000 irq=5 id=4");
    assert_eq!(out.testguest_summary(), Some((1, 0)), "\n{}", out.report());
    assert!(
        !out.stderr.contains("panicked"),
        "svmm panicked\n{}",
        out.report()
    );
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

fn rng_in_process() -> TrialResult {
    let out = guest("rng", &["rng,sandbox=off"]).run()?;
    out.log("svmm testguest rng (in-process)");
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
        "svmm: rng#0 (in-process): q0 requests=32 bytes=2048 errors=0",
    );
    Ok(())
}

fn rng_no_sandbox_switch() -> TrialResult {
    let out = guest("rng", &["rng"]).arg("--no-sandbox").run()?;
    out.log("svmm testguest rng (--no-sandbox)");
    out.assert_line(RNG_OK);
    assert_passed(&out);
    Ok(())
}

/// Reset and a second initialisation of a live device: both requests served.
fn rng_reinit_in_process() -> TrialResult {
    let out = guest("rng_reinit", &["rng,sandbox=off"]).run()?;
    out.log("svmm testguest rng_reinit (in-process)");
    out.assert_line("testguest: rng_reinit ok bytes=128 requests=2");
    assert_passed(&out);
    // Statistics add up over both activations.
    assert_stats(
        &out,
        "svmm: rng#0 (in-process): q0 requests=2 bytes=128 errors=0",
    );
    Ok(())
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

fn unknown_kind() -> TrialResult {
    let out = guest("rng", &["blk=/nonexistent"]).run()?;
    out.assert_status(64);
    let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(
        lines,
        ["svmm: error: --device 'blk=/nonexistent': unknown device kind 'blk' (supported: rng)"],
        "\n{}",
        out.report()
    );
    Ok(())
}
