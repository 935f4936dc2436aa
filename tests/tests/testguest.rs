//! Boots our test guest (`images/out/testguest.elf`) under svmm, and under QEMU microvm for
//! comparison, and checks what it reports: the console both ways (`echo`), its command line and the
//! virtio-mmio devices given there, and its exit status carried through svmm's exit code. Under
//! QEMU it also drives a virtio-rng device with its own virtqueue driver (`rng`), and
//! virtio-blk devices (`blk`, `blk_write`, `blk_ro`), whose image the test then reads back.
//!
//! Each trial is one short boot (a few seconds); the 60 s timeout only guards against hangs.

use std::path::Path;
use std::time::Duration;

use tests::suite::TrialResult;
use tests::{disk, paths, require_kvm, Backend, Suite, TestVm, VmOutput};

const TIMEOUT: Duration = Duration::from_secs(60);
const READY: &str = "testguest: echo ready";

fn main() {
    Suite::new("testguest")
        .test("echo_roundtrip", echo_roundtrip)
        .test("cmdline_and_devices_listed", cmdline_and_devices_listed)
        .test("exit_status_passes_through", exit_status_passes_through)
        .test("echo_timeout_fails_with_status_1", echo_timeout_fails)
        .test("two_vcpus_boot", two_vcpus_boot)
        .test(
            "smp_guest_ends_while_aps_write_memory",
            smp_guest_ends_while_aps_write,
        )
        .test(
            "smp_vcpus_stop_before_guest_ram_is_unmapped",
            smp_vcpus_stop_before_ram_unmapped,
        )
        .test("guest_panic_is_a_failure_status", guest_panic)
        .test("triple_fault_reported_in_one_line", triple_fault)
        .test(
            "running_vm_inspected_then_killed",
            running_vm_inspected_then_killed,
        )
        .test("timeout_kills_vm_and_keeps_output", timeout_kills_vm)
        .test("qemu_microvm_echo", qemu_microvm_echo)
        .test("qemu_microvm_rng", qemu_microvm_rng)
        .test("qemu_microvm_blk", qemu_microvm_blk)
        .test("qemu_microvm_blk_ro", qemu_microvm_blk_ro)
        .run()
}

/// The test guest under svmm with `cmdline`, answering `hello` when the echo test is ready.
fn guest(cmdline: &str) -> TestVm {
    TestVm::testguest(cmdline)
        .stdin_after_line(READY, "hello\n")
        .timeout(TIMEOUT)
}

/// Checks what every successful echo run shows: banner, echo, summary, a clean stderr.
fn assert_echo_passed(out: &VmOutput) {
    out.assert_line("testguest: svmm test guest v1");
    out.assert_line("testguest: echo ok line=hello");
    assert_eq!(out.testguest_summary(), Some((1, 0)), "\n{}", out.report());
    out.assert_no_panic();
}

fn echo_roundtrip() -> TrialResult {
    let out = guest("testguest.run=echo").run()?;
    out.log("svmm testguest echo (1 vCPU)");
    assert_echo_passed(&out);
    out.assert_status(0);
    Ok(())
}

fn cmdline_and_devices_listed() -> TrialResult {
    let cmdline = "testguest.run=echo console=ttyS0 \
                   virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=0x200@0xd0001000:6:3";
    let out = guest(cmdline).run()?;
    out.log("svmm testguest cmdline");
    let echoed = out.assert_line("testguest: cmdline: ");
    // svmm may add words of its own; ours must all arrive, in order.
    assert!(
        echoed.contains(cmdline),
        "command line not passed intact: {echoed:?}\n{}",
        out.report()
    );
    out.assert_line("testguest: virtio-mmio 0 addr=0xd0000000 size=0x1000 irq=5");
    out.assert_line("testguest: virtio-mmio 1 addr=0xd0001000 size=0x200 irq=6");
    out.assert_line("testguest: found 2 virtio-mmio devices");
    assert_echo_passed(&out);
    out.assert_status(0);
    Ok(())
}

fn exit_status_passes_through() -> TrialResult {
    let out = guest("testguest.run=echo testguest.exit=5").run()?;
    out.log("svmm testguest exit=5");
    assert_echo_passed(&out);
    out.assert_status(5);
    Ok(())
}

fn echo_timeout_fails() -> TrialResult {
    require_kvm();
    // No input at all: the guest's echo test must give up after 200 ms and fail.
    let out = TestVm::svmm(paths::artefact("testguest.elf"))
        .cmdline("testguest.run=echo testguest.echo_timeout_ms=200")
        .mem_mib(128)
        .timeout(TIMEOUT)
        .run()?;
    out.log("svmm testguest echo timeout");
    out.assert_line(READY);
    out.assert_line("testguest: echo FAIL timeout");
    assert_eq!(out.testguest_summary(), Some((0, 1)), "\n{}", out.report());
    out.assert_no_panic();
    out.assert_status(1);
    Ok(())
}

fn two_vcpus_boot() -> TrialResult {
    let out = guest("testguest.run=echo").cpus(2).run()?;
    out.log("svmm testguest echo (2 vCPUs)");
    assert_echo_passed(&out);
    out.assert_status(0);
    Ok(())
}

/// A test guest that panics reports it, counts it as a failure and exits with status 3.
/// How often the SMP teardown trial boots: the race it guards against (a vCPU still in
/// `KVM_RUN` while guest RAM is unmapped) depends on timing.
const SMP_RUNS: usize = 20;

/// The guest starts its other vCPUs (from svmm's MP table) and leaves them rewriting memory in
/// a loop while vCPU 0 ends the VM through the exit port. svmm must stop every vCPU before it
/// unmaps guest RAM: every run ends with the guest's status, cleanly, with nothing on stderr
/// but svmm's own lines about the guest's end.
fn smp_guest_ends_while_aps_write() -> TrialResult {
    require_kvm();
    for run in 1..=SMP_RUNS {
        let out = TestVm::svmm(paths::artefact("testguest.elf"))
            .cmdline("testguest.run=smp")
            .cpus(3)
            .mem_mib(SMP_MEM_MIB)
            .timeout(TIMEOUT)
            .run()?;
        if run == 1 {
            out.log("svmm testguest smp (3 vCPUs)");
        }
        let line = out.assert_line("testguest: smp ok aps=2 writes=");
        assert_eq!(
            out.testguest_summary(),
            Some((1, 0)),
            "run {run}\n{}",
            out.report()
        );
        out.assert_status(0);
        out.assert_no_panic();
        assert!(
            out.stderr.trim().is_empty(),
            "run {run}: svmm said something at the end of the VM ({line})\n{}",
            out.report()
        );
    }
    Ok(())
}

/// Guest RAM of the SMP trials, in MiB.
const SMP_MEM_MIB: u64 = 128;

/// The SMP guest of [`smp_guest_ends_while_aps_write`], once, under `strace -f`: every thread
/// that ran `KVM_RUN` has exited before svmm unmaps guest RAM (the one `munmap` of exactly the
/// RAM size). The order is what matters, and only a trace shows it: an unmapped RAM under a
/// running vCPU is silent until the host reuses the addresses.
fn smp_vcpus_stop_before_ram_unmapped() -> TrialResult {
    require_kvm();
    let dir = paths::TempDir::new("smp-strace");
    let trace = dir.path().join("strace.txt");
    let out = TestVm::svmm(paths::artefact("testguest.elf"))
        .wrapper([
            "strace".into(),
            "-f".into(),
            "-q".into(),
            "-e".into(),
            "trace=ioctl,munmap".into(),
            "-o".into(),
            trace.clone().into_os_string(),
        ])
        .cmdline("testguest.run=smp")
        .cpus(3)
        .mem_mib(SMP_MEM_MIB)
        .timeout(TIMEOUT)
        .run()
        .map_err(|e| format!("{e} (is strace installed? images/build.sh all installs it)"))?;
    out.log("svmm testguest smp (3 vCPUs) under strace");
    out.assert_line("testguest: smp ok aps=2 writes=");
    out.assert_status(0);
    let trace = std::fs::read_to_string(&trace).map_err(|e| format!("no strace output: {e}"))?;
    let lines: Vec<&str> = trace.lines().collect();
    let tid = |line: &str| {
        line.split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    let mut vcpus: Vec<String> = lines
        .iter()
        .filter(|l| l.contains("KVM_RUN"))
        .map(|l| tid(l))
        .collect();
    vcpus.sort();
    vcpus.dedup();
    if vcpus.len() != 3 {
        return Err(format!("expected 3 threads in KVM_RUN, found {vcpus:?}").into());
    }
    let ram_bytes = (SMP_MEM_MIB << 20).to_string();
    let unmap = lines
        .iter()
        .position(|l| l.contains("munmap(") && l.contains(&format!(", {ram_bytes}")))
        .ok_or("svmm never unmapped guest RAM (no munmap of its size in the trace)")?;
    for vcpu in &vcpus {
        let exit = lines
            .iter()
            .position(|l| tid(l) == *vcpu && l.contains("+++ exited"))
            .ok_or_else(|| format!("vCPU thread {vcpu} never exited"))?;
        if exit > unmap {
            return Err(format!(
                "vCPU thread {vcpu} was still running when guest RAM was unmapped:\n  {}\n  {}",
                lines[unmap], lines[exit]
            )
            .into());
        }
    }
    Ok(())
}

fn guest_panic() -> TrialResult {
    let out = guest("testguest.run=panic").run()?;
    out.log("svmm testguest panic");
    out.assert_line("testguest: panic: ");
    assert_eq!(out.testguest_summary(), Some((0, 1)), "\n{}", out.report());
    out.assert_no_panic();
    out.assert_status(3);
    Ok(())
}

/// A guest that triple-faults ends svmm with the crash code (68) and one line naming the exit
/// reason and the RIP — not a hang, not a Rust panic.
fn triple_fault() -> TrialResult {
    let out = guest("testguest.run=triplefault").run()?;
    out.log("svmm testguest triplefault");
    out.assert_no_panic();
    out.assert_status(68);
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(
        lines.len() == 1 && lines[0].contains("triple fault") && lines[0].contains("RIP 0x"),
        "expected one stderr line naming the triple fault and RIP\n{}",
        out.report()
    );
    Ok(())
}

/// A guest that idles after its tests, so the VMM can be looked at while it runs.
fn sleeping_guest() -> TestVm {
    require_kvm();
    TestVm::svmm(paths::artefact("testguest.elf"))
        .cmdline("testguest.run=echo testguest.echo_timeout_ms=100 testguest.sleep_ms=60000")
        .mem_mib(128)
        .timeout(TIMEOUT)
}

const SLEEPING: &str = "testguest: sleep ms=60000";

/// `spawn()` gives the live VMM: its pid is in /proc while the guest sleeps, and gone once killed.
fn running_vm_inspected_then_killed() -> TrialResult {
    let mut vm = sleeping_guest().spawn()?;
    vm.wait_for_line(SLEEPING, TIMEOUT)?;
    let proc_dir = format!("/proc/{}", vm.pid());
    let comm = std::fs::read_to_string(format!("{proc_dir}/comm"))?;
    assert_eq!(comm.trim(), "svmm", "the spawned process is not svmm");
    vm.kill();
    assert!(
        !std::path::Path::new(&proc_dir).exists(),
        "svmm still exists after kill()"
    );
    Ok(())
}

/// A run past its timeout is killed and reported as an error that still carries the output.
fn timeout_kills_vm() -> TrialResult {
    let err = match sleeping_guest().timeout(Duration::from_secs(3)).run() {
        Ok(out) => return Err(format!("expected a timeout\n{}", out.report()).into()),
        Err(err) => err,
    };
    let out = err
        .output()
        .ok_or_else(|| format!("expected a timeout, got: {err}"))?;
    out.log("svmm sleeping guest (3 s timeout)");
    assert!(out.timed_out && out.status.is_none(), "\n{}", out.report());
    out.assert_line(SLEEPING);
    Ok(())
}

fn qemu_microvm_echo() -> TrialResult {
    require_kvm();
    let out = TestVm::qemu(paths::artefact("testguest.elf"))
        .cmdline("testguest.run=echo")
        .mem_mib(128)
        .stdin_after_line(READY, "hello\n")
        .timeout(TIMEOUT)
        .run()?;
    out.log("qemu microvm testguest echo");
    out.assert_line("testguest: svmm test guest v1");
    out.assert_line("testguest: echo ok line=hello");
    assert_eq!(out.testguest_summary(), Some((1, 0)), "\n{}", out.report());
    assert_eq!(
        out.guest_status(),
        Some(0),
        "QEMU did not end through the exit port with status 0\n{}",
        out.report()
    );
    Ok(())
}

/// The guest's virtio driver against QEMU's virtio-rng, as a reference for svmm's transport.
///
/// QEMU microvm lists its virtio-mmio transports on the kernel command line only without ACPI
/// (`acpi=off`), and they speak the legacy interface (version 1) unless `force-legacy` is off; the
/// test guest speaks version 2 only.
fn qemu_microvm_rng() -> TrialResult {
    require_kvm();
    let out = TestVm::new(Backend::Qemu {
        machine: "microvm,acpi=off".into(),
    })
    .kernel(paths::artefact("testguest.elf"))
    .cmdline("testguest.run=rng")
    .mem_mib(128)
    .args(["-global", "virtio-mmio.force-legacy=false"])
    .device("virtio-rng-device")
    .timeout(TIMEOUT)
    .run()?;
    out.log("qemu microvm testguest rng");
    out.assert_line("testguest: found 1 virtio-mmio devices");
    let device = out.assert_line("testguest: virtio-mmio 0 ");
    assert!(
        device.ends_with(" id=4"),
        "QEMU's virtio-rng not probed as a version-2 device with ID 4\n{}",
        out.report()
    );
    let rng = out.assert_line("testguest: rng ok bytes=2048 requests=32 ");
    eprintln!("    {rng}");
    assert_eq!(out.testguest_summary(), Some((1, 0)), "\n{}", out.report());
    assert_eq!(
        out.guest_status(),
        Some(0),
        "QEMU did not end through the exit port with status 0\n{}",
        out.report()
    );
    Ok(())
}

/// Compares the image file with `want`, naming the first sector that differs.
fn assert_image(path: &Path, want: &[u8], what: &str) {
    if let Err(e) = disk::compare_image(path, want, what) {
        panic!("{e}");
    }
}

/// The test guest under QEMU microvm with one virtio-blk device on `image` (`drive_opts` added to
/// its `-drive`, `device_opts` to its `-device virtio-blk-device`).
fn qemu_blk_guest(cmdline: &str, image: &Path, drive_opts: &str, device_opts: &str) -> TestVm {
    require_kvm();
    let drive = format!(
        "id=d0,file={},format=raw,if=none{drive_opts}",
        image.display().to_string().replace(',', ",,")
    );
    TestVm::new(Backend::Qemu {
        machine: "microvm,acpi=off".into(),
    })
    .kernel(paths::artefact("testguest.elf"))
    .cmdline(cmdline)
    .mem_mib(128)
    .args([
        "-global",
        "virtio-mmio.force-legacy=false",
        "-drive",
        &drive,
    ])
    .device(format!("virtio-blk-device,drive=d0{device_opts}"))
    .timeout(TIMEOUT)
}

fn assert_qemu_passed(out: &VmOutput, passed: u32) {
    assert_eq!(
        out.testguest_summary(),
        Some((passed, 0)),
        "\n{}",
        out.report()
    );
    assert_eq!(
        out.guest_status(),
        Some(0),
        "QEMU did not end through the exit port with status 0\n{}",
        out.report()
    );
}

/// The guest's blk tests against QEMU's virtio-blk (two queues, discard and write-zeroes on), as
/// a reference for svmm's device; then the host reads the image. A second boot runs `blk_write`,
/// is SIGKILLed once it reported, and the host finds the pattern in the image.
fn qemu_microvm_blk() -> TrialResult {
    const SEED: u32 = 0x5eed_0001;
    const ID: &str = "svmm-blk-test";
    let dir = paths::TempDir::new("blk");
    let image = dir.file("disk.img", &disk::fresh_image());
    let out = qemu_blk_guest(
        &format!("testguest.run=blk testguest.blk_pattern={SEED:#x}"),
        &image,
        ",discard=unmap",
        &format!(",num-queues=2,serial={ID}"),
    )
    .run()?;
    out.log("qemu microvm testguest blk");
    let device = out.assert_line("testguest: virtio-mmio 0 ");
    assert!(
        device.ends_with(" id=2"),
        "QEMU's virtio-blk not probed as a version-2 device with ID 2\n{}",
        out.report()
    );
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
    assert_qemu_passed(&out, 1);
    assert_image(&image, &disk::expected_image(SEED, 4), "after blk");

    // blk_write, then SIGKILL while the guest idles: the image holds the pattern.
    const SEED2: u32 = 0x5eed_0002;
    let image = dir.file("write.img", &disk::fresh_image());
    let mut vm = qemu_blk_guest(
        &format!(
            "testguest.run=blk_write testguest.blk_pattern={SEED2:#x} testguest.sleep_ms=60000"
        ),
        &image,
        "",
        "",
    )
    .spawn()?;
    // The sleep line comes after the whole result line (a line still being written matches).
    vm.wait_for_line("testguest: sleep ms=", TIMEOUT)?;
    vm.kill();
    let stdout = vm.stdout_so_far();
    let line = stdout
        .lines()
        .find(|l| l.starts_with("testguest: blk_write "))
        .unwrap_or("");
    eprintln!("    {line}");
    assert!(
        line.starts_with("testguest: blk_write ok ") && line.contains(" flush=1 "),
        "blk_write did not pass with a flush: {line:?}\n{stdout}"
    );
    assert_image(
        &image,
        &disk::expected_image(SEED2, 0),
        "after blk_write and SIGKILL",
    );
    Ok(())
}

/// `blk_ro` against QEMU's virtio-blk on a read-only drive whose image the host wrote with the
/// pattern: the guest reads and checks it, a write is refused with IOERR, the image is unchanged.
fn qemu_microvm_blk_ro() -> TrialResult {
    const SEED: u32 = 0x5eed_0003;
    const ID: &str = "svmm-blk-ro";
    let dir = paths::TempDir::new("blk-ro");
    let contents = disk::expected_image(SEED, 0);
    let image = dir.file("ro.img", &contents);
    let out = qemu_blk_guest(
        &format!("testguest.run=blk_ro testguest.blk_pattern={SEED:#x}"),
        &image,
        ",readonly=on",
        &format!(",serial={ID}"),
    )
    .run()?;
    out.log("qemu microvm testguest blk_ro");
    let blk = out.assert_line("testguest: blk_ro ok ");
    eprintln!("    {blk}");
    assert!(
        blk.contains(" capacity=8192 ") && blk.ends_with(&format!(" verified=1 id={ID}")),
        "blk_ro did not verify the pattern: {blk:?}\n{}",
        out.report()
    );
    assert_qemu_passed(&out, 1);
    assert_image(&image, &contents, "after blk_ro");
    Ok(())
}
