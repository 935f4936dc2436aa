//! Boots the project's Linux (`images/out/vmlinux` through PVH, and `images/out/bzImage`) with the
//! busybox initramfs under svmm, and checks from the kernel log what the kernel made of our
//! machine: the ACPI tables, the CPUs in the MADT, and reaching `/init`.
//!
//! One boot per kernel image, shared by that image's trials (a boot takes minutes on PVM hosts).
//! User space runs only with hardware virtualisation (GUEST.md); elsewhere that trial is ignored
//! with the reason. `SVMM_SKIP_LINUX=1` ignores every trial here, for quick local runs.

use std::sync::OnceLock;
use std::time::Duration;

use tests::host::no_hw_virt_reason;
use tests::suite::TrialResult;
use tests::{paths, require_kvm, Suite, TestVm, VmOutput};

/// The kernel command line for every Linux boot.
///
/// `noxsave clearcpuid=cx16,popcnt,smap` are workarounds for PVM hosts, where KVM emulates guest
/// ring 0 and cannot emulate `xrstor`, `cmpxchg16b`, `popcnt` or `clac` (see GUEST.md, "KVM here is
/// PVM"). They live here, in the harness, and nowhere in svmm; on hardware KVM they only cost a
/// little speed. `panic=1` turns a guest panic into a reboot, which ends svmm (exit code 69).
const LINUX_CMDLINE: &str =
    "console=ttyS0 noxsave clearcpuid=cx16,popcnt,smap panic=1 rdinit=/init";

/// A PVM host needs ~75–110 s to reach `/init` (more for a bzImage); leave ample room.
const BOOT_TIMEOUT: Duration = Duration::from_secs(420);
const CPUS: u32 = 2;
const MEM_MIB: u64 = 512;

/// The kernel images booted here, each a file in `images/out/`, with the `--device` each boot
/// gets: the kernel finds the device through our DSDT (it has no `virtio_mmio.device=` support).
/// One boot serves Linux from a sandboxed worker, the other from the same device in-process.
const KERNELS: [&str; 2] = ["vmlinux", "bzImage"];
const DEVICES: [&str; 2] = ["rng", "rng,sandbox=off"];

fn main() {
    let skip = std::env::var("SVMM_SKIP_LINUX")
        .ok()
        .filter(|v| !v.is_empty() && v != "0")
        .map(|v| format!("SVMM_SKIP_LINUX={v} is set: Linux boots skipped for a quick run"));
    let no_hw = skip.clone().or_else(no_hw_virt_reason);
    let mut suite = Suite::new("linux").sequential();
    for kernel in KERNELS {
        let s = || skip.clone();
        suite = suite
            .test_unless(&format!("{kernel}_acpi_tables_parsed"), s(), move || {
                acpi_tables(kernel)
            })
            .test_unless(&format!("{kernel}_cpus_from_madt"), s(), move || {
                cpus_from_madt(kernel)
            })
            .test_unless(&format!("{kernel}_second_cpu_up"), s(), move || {
                second_cpu_up(kernel)
            })
            .test_unless(&format!("{kernel}_runs_init"), s(), move || {
                runs_init(kernel)
            })
            .test_unless(&format!("{kernel}_rng_served_linux"), s(), move || {
                rng_served(kernel)
            })
            .test_unless(&format!("{kernel}_vm_ends_by_itself"), s(), move || {
                ends(kernel)
            })
            .test_unless(
                &format!("{kernel}_userspace_init_ok"),
                no_hw.clone(),
                move || userspace(kernel),
            );
    }
    suite.run()
}

/// The boot of `kernel`, started by the first trial that asks and shared with the others.
/// A timed-out boot is kept too: its log can still be checked, and `vm_ends_by_itself` fails.
fn boot(kernel: &'static str) -> Result<&'static VmOutput, String> {
    static BOOTS: [OnceLock<Result<VmOutput, String>>; KERNELS.len()] =
        [OnceLock::new(), OnceLock::new()];
    let index = KERNELS
        .iter()
        .position(|k| *k == kernel)
        .expect("known kernel");
    BOOTS[index]
        .get_or_init(|| {
            require_kvm();
            let vm = TestVm::svmm(paths::artefact(kernel))
                .initrd(paths::artefact("initramfs.cpio.gz"))
                .cmdline(LINUX_CMDLINE)
                .cpus(CPUS)
                .mem_mib(MEM_MIB)
                .device(DEVICES[index])
                .timeout(BOOT_TIMEOUT);
            eprintln!(
                "svmm-tests: linux: booting {kernel} (up to {} s) ...",
                BOOT_TIMEOUT.as_secs()
            );
            let out = match vm.run() {
                Ok(out) => out,
                Err(e) => match e.output() {
                    Some(out) => out.clone(),
                    None => return Err(e.to_string()),
                },
            };
            out.log(&format!("linux: {kernel} boot"));
            Ok(out)
        })
        .as_ref()
        .map_err(|e| format!("{kernel} boot failed: {e}"))
}

fn acpi_tables(kernel: &'static str) -> TrialResult {
    let out = boot(kernel)?;
    // The kernel prints one line per table it found; ours are RSDP → XSDT → FACP (FADT), DSDT, APIC
    // (MADT).
    for table in ["RSDP", "XSDT", "FACP", "DSDT", "APIC"] {
        out.assert_contains(&format!("ACPI: {table} "));
    }
    Ok(())
}

fn cpus_from_madt(kernel: &'static str) -> TrialResult {
    let out = boot(kernel)?;
    out.assert_contains("ACPI: Using ACPI (MADT) for SMP configuration information");
    out.assert_contains(&format!("smpboot: Allowing {CPUS} CPUs, 0 hotplug CPUs"));
    Ok(())
}

fn second_cpu_up(kernel: &'static str) -> TrialResult {
    let out = boot(kernel)?;
    out.assert_contains(&format!("smp: Brought up 1 node, {CPUS} CPUs"));
    Ok(())
}

/// Linux's virtio-rng driver probed the device it found in the DSDT and the device served it
/// entropy: svmm's per-device statistics at the end of the VM show bytes moved without errors.
fn rng_served(kernel: &'static str) -> TrialResult {
    let out = boot(kernel)?;
    let stats = out
        .stderr
        .lines()
        .find(|l| l.starts_with("svmm: rng#0 "))
        .ok_or_else(|| format!("no statistics line for rng#0\n{}", out.report()))?;
    let field = |name: &str| -> Option<u64> {
        let rest = stats.split(&format!(" {name}=")).nth(1)?;
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    match (field("requests"), field("bytes"), field("errors")) {
        (Some(r), Some(b), Some(0)) if r > 0 && b > 0 => Ok(()),
        _ => Err(format!(
            "the rng device served Linux nothing: {stats}\n{}",
            out.report()
        )
        .into()),
    }
}

fn runs_init(kernel: &'static str) -> TrialResult {
    let out = boot(kernel)?;
    out.assert_contains("Run /init as init process");
    Ok(())
}

/// The VM must end on its own: by poweroff (0) when user space runs, or through `panic=1`'s
/// reboot (69) where init cannot run (GUEST.md). Never a hang, a crash or an svmm error.
fn ends(kernel: &'static str) -> TrialResult {
    let out = boot(kernel)?;
    if out.timed_out || !matches!(out.status, Some(0 | 69)) || out.stderr.contains("panicked") {
        return Err(format!(
            "expected svmm to end with 0 (poweroff) or 69 (guest reboot after panic=1)\n{}",
            out.report()
        )
        .into());
    }
    Ok(())
}

fn userspace(kernel: &'static str) -> TrialResult {
    let out = boot(kernel)?;
    out.assert_contains("SVMM-INIT-OK");
    // User space reads the device too: init reads 16 bytes from /dev/hwrng (virtio_rng current).
    out.assert_contains("--- hwrng (virtio_rng");
    assert!(
        !out.stdout.contains("(no data)"),
        "/dev/hwrng gave no data\n{}",
        out.report()
    );
    out.assert_status(0);
    Ok(())
}
