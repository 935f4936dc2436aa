//! Boots the project's Linux (`images/out/vmlinux` through PVH, and `images/out/bzImage`) with the
//! busybox initramfs under svmm, and checks from the kernel log what the kernel made of our
//! machine: the ACPI tables, the CPUs in the MADT, and reaching `/init`. Two more boots have no
//! initramfs: `vmlinux` mounts its root file system from a read-only virtio-blk device
//! (`images/out/rootfs.ext4`), beside a writable one (`vdb`, a scratch image); once with the root
//! disk in a sandboxed worker and the scratch disk in-process, once the other way round. In the
//! first, the harness SIGKILLs the root disk's worker once the kernel has found both disks (the
//! root disk's driver running, its root not yet mounted): svmm restarts the worker
//! (`--on-worker-exit=restart`, the default) with the queues resumed, and the kernel must still
//! mount its root and read it without an I/O error.
//!
//! One more boots `vmlinux` with its root file system on virtio-fs (`rootfstype=virtiofs
//! root=rootfs`): a sandboxed fs worker shares a copy of `images/out/rootfs.tree/`, and the kernel
//! mounts it and executes `/init` from it.
//!
//! One more boots `vmlinux` with `acpi=off`: the kernel must then find both CPUs in svmm's MP
//! table (that boot ends once the second CPU is up).
//!
//! One boot per configuration, shared by its trials (a boot takes minutes on PVM hosts).
//! User space runs only with hardware virtualisation (GUEST.md); elsewhere that trial is ignored
//! with the reason. `SVMM_SKIP_LINUX=1` ignores every trial here, for quick local runs.

use std::sync::OnceLock;
use std::time::Duration;

use tests::output::{queue_counters, VmError};

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

/// The blk boot's command line: the root file system from the first virtio-blk disk, mounted
/// read-only, no initramfs; with user space, init writes [`BLK_MARKER`] to `/dev/vdb`.
const BLK_CMDLINE: &str =
    "console=ttyS0 noxsave clearcpuid=cx16,popcnt,smap panic=1 root=/dev/vda ro";
/// What init writes at the start of `/dev/vdb` (`svmm.blk_write=`, see images/rootfs/init).
const BLK_MARKER: &str = "svmm-linux-blk-dd";
/// The scratch disk `vdb`: 1 MiB.
const SCRATCH_BYTES: usize = 1 << 20;

/// One blk boot's placement of its two disks: the root disk (`vda`, read-only) and the scratch
/// disk (`vdb`, writable), each sandboxed or in-process, so that Linux mounts its root from both.
struct BlkLayout {
    /// Trial-name part: `vmlinux_blk_<name>_...`.
    name: &'static str,
    /// Extra `--device blk=` options of the root disk, after `,ro`.
    root_options: &'static str,
    /// Extra `--device blk=` options of the scratch disk.
    scratch_options: &'static str,
    /// How svmm's statistics lines name the two devices' modes, root first.
    modes: [&'static str; 2],
    /// SIGKILL the root disk's worker once the kernel found the disk (a sandboxed root only).
    kill_root_worker: bool,
}

const BLK_LAYOUTS: [BlkLayout; 2] = [
    BlkLayout {
        name: "sandboxed_root",
        root_options: "",
        scratch_options: ",sandbox=off",
        modes: ["sandboxed", "in-process"],
        kill_root_worker: true,
    },
    BlkLayout {
        name: "inprocess_root",
        root_options: ",sandbox=off",
        scratch_options: "",
        modes: ["in-process", "sandboxed"],
        kill_root_worker: false,
    },
];

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
    suite = suite
        .test_unless(
            "vmlinux_acpi_off_mptable_found",
            skip.clone(),
            mptable_found,
        )
        .test_unless(
            "vmlinux_acpi_off_second_cpu_up",
            skip.clone(),
            mptable_second_cpu_up,
        );
    for (layout, BlkLayout { name, .. }) in BLK_LAYOUTS.iter().enumerate() {
        let s = || skip.clone();
        if BLK_LAYOUTS[layout].kill_root_worker {
            suite = suite.test_unless(
                &format!("vmlinux_blk_{name}_root_worker_restarted"),
                s(),
                move || blk_root_worker_restarted(layout),
            );
        }
        suite = suite
            .test_unless(&format!("vmlinux_blk_{name}_disks_sized"), s(), move || {
                blk_disks_sized(layout)
            })
            .test_unless(
                &format!("vmlinux_blk_{name}_mounted_readonly"),
                s(),
                move || blk_root_mounted(layout),
            )
            .test_unless(
                &format!("vmlinux_blk_{name}_served_linux"),
                s(),
                move || blk_served(layout),
            )
            .test_unless(
                &format!("vmlinux_blk_{name}_no_io_errors"),
                s(),
                move || blk_no_io_errors(layout),
            )
            .test_unless(
                &format!("vmlinux_blk_{name}_vm_ends_by_itself"),
                s(),
                move || blk_ends(layout),
            )
            .test_unless(
                &format!("vmlinux_blk_{name}_userspace_dd"),
                no_hw.clone(),
                move || blk_userspace_dd(layout),
            );
    }
    let s = || skip.clone();
    suite = suite
        .test_unless("vmlinux_fs_root_mounted", s(), fs_root_mounted)
        .test_unless("vmlinux_fs_runs_init", s(), fs_runs_init)
        .test_unless("vmlinux_fs_served_linux", s(), fs_served)
        .test_unless("vmlinux_fs_vm_ends_by_itself", s(), fs_ends)
        .test_unless(
            "vmlinux_fs_userspace_write",
            no_hw.clone(),
            fs_userspace_write,
        );
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
    served(boot(kernel)?, "svmm: rng#0 (", false)?;
    Ok(())
}

/// The statistics line of the device whose line starts with `prefix` (`svmm: blk#0
/// (sandboxed): `): every queue readable, requests and bytes over all of them, and no queue with
/// an error unless `errors_are_answers` (virtio-fs: a FUSE error reply such as `ENOENT` for a
/// name the kernel looks for is an answer, counted as an error).
fn served<'a>(
    out: &'a VmOutput,
    prefix: &str,
    errors_are_answers: bool,
) -> Result<&'a str, String> {
    let stats = out
        .stderr
        .lines()
        .find(|l| l.starts_with(prefix))
        .ok_or_else(|| format!("no statistics line {prefix:?}\n{}", out.report()))?;
    let queues = queue_counters(stats)
        .ok_or_else(|| format!("unreadable statistics line {stats:?}\n{}", out.report()))?;
    let requests: u64 = queues.iter().map(|q| q.requests).sum();
    let bytes: u64 = queues.iter().map(|q| q.bytes).sum();
    let errors = queues.iter().any(|q| q.errors != 0) && !errors_are_answers;
    if errors || requests == 0 || bytes == 0 {
        return Err(format!(
            "the device did not serve Linux without errors: {stats}\n{}",
            out.report()
        ));
    }
    Ok(stats)
}

fn runs_init(kernel: &'static str) -> TrialResult {
    let out = boot(kernel)?;
    out.assert_contains("Run /init as init process");
    Ok(())
}

/// The VM must end on its own: by poweroff (0) when user space runs, or through `panic=1`'s
/// reboot (69) where init cannot run (GUEST.md). Never a hang, a crash or an svmm error.
fn ends(kernel: &'static str) -> TrialResult {
    ended_by_itself(boot(kernel)?)
}

/// What [`ends`] checks, for any Linux boot's output.
fn ended_by_itself(out: &VmOutput) -> TrialResult {
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

/// The `acpi=off` boot: `vmlinux` with the initramfs and two vCPUs, ended (killed) as soon as
/// the kernel reports its CPUs up, or at the timeout. Shared by the MP-table trials.
fn mptable_boot() -> Result<&'static VmOutput, String> {
    static BOOT: OnceLock<Result<VmOutput, String>> = OnceLock::new();
    BOOT.get_or_init(|| {
        require_kvm();
        let vm = TestVm::svmm(paths::artefact("vmlinux"))
            .initrd(paths::artefact("initramfs.cpio.gz"))
            .cmdline(format!("{LINUX_CMDLINE} acpi=off"))
            .cpus(CPUS)
            .mem_mib(MEM_MIB)
            .timeout(BOOT_TIMEOUT);
        eprintln!(
            "svmm-tests: linux: booting vmlinux with acpi=off until its CPUs are up (up to {} s) ...",
            BOOT_TIMEOUT.as_secs()
        );
        let mut running = vm.spawn().map_err(|e| e.to_string())?;
        // Whether or not the line comes, the log so far is what the trials check.
        let _ = running.wait_for_text("smp: Brought up", BOOT_TIMEOUT);
        running.kill();
        let out = match running.wait() {
            Ok(out) => out,
            Err(e) => e.output().cloned().ok_or(e.to_string())?,
        };
        out.log("linux: vmlinux acpi=off boot");
        Ok(out)
    })
    .as_ref()
    .map_err(|e| format!("vmlinux acpi=off boot failed: {e}"))
}

/// Without ACPI the kernel found svmm's MP table where it looks first (the EBDA) and read it.
fn mptable_found() -> TrialResult {
    let out = mptable_boot()?;
    let found = out.assert_contains("found SMP MP-table at [mem 0x0009fc00-0x0009fc0f]");
    out.assert_contains("Intel MultiProcessor Specification v1.4");
    assert!(
        !out.stdout.contains("MADT or MP tables are not detected"),
        "the kernel found no MP table\n{}",
        out.report()
    );
    eprintln!("    {found}");
    Ok(())
}

/// ... and brought up the second CPU it lists.
fn mptable_second_cpu_up() -> TrialResult {
    let out = mptable_boot()?;
    let line = out.assert_contains(&format!("smp: Brought up 1 node, {CPUS} CPUs"));
    eprintln!("    {line}");
    Ok(())
}

/// What the blk boot left: its output, and the first block of the scratch disk afterwards.
struct BlkBoot {
    out: VmOutput,
    scratch_head: Vec<u8>,
    root_sectors: u64,
    /// The pid of the root disk's worker the harness killed, if it did.
    killed: Option<u32>,
}

/// `vmlinux` without initramfs: `vda` the root file system image, `ro`; `vdb` a zeroed 1 MiB
/// scratch image, writable; each sandboxed or in-process as `BLK_LAYOUTS[layout]` says.
/// Started by the first trial of the layout that asks, shared with the others.
fn blk_boot(layout: usize) -> Result<&'static BlkBoot, String> {
    static BOOTS: [OnceLock<Result<BlkBoot, String>>; BLK_LAYOUTS.len()] =
        [OnceLock::new(), OnceLock::new()];
    let BlkLayout {
        name,
        root_options,
        scratch_options,
        kill_root_worker,
        ..
    } = &BLK_LAYOUTS[layout];
    BOOTS[layout].get_or_init(|| {
        require_kvm();
        let root = paths::artefact("rootfs.ext4");
        let root_sectors = std::fs::metadata(&root).map_err(|e| e.to_string())?.len() / 512;
        let dir = paths::TempDir::new("linux-blk");
        let scratch = dir.file("scratch.img", &vec![0u8; SCRATCH_BYTES]);
        let vm = TestVm::svmm(paths::artefact("vmlinux"))
            .cmdline(format!("{BLK_CMDLINE} svmm.blk_write={BLK_MARKER}"))
            .cpus(CPUS)
            .mem_mib(MEM_MIB)
            .device(format!("blk={},ro{root_options}", root.display()))
            .device(format!("blk={}{scratch_options}", scratch.display()))
            .timeout(BOOT_TIMEOUT);
        eprintln!(
            "svmm-tests: linux: booting vmlinux from a virtio-blk root disk, {name} (up to {} s) ...",
            BOOT_TIMEOUT.as_secs()
        );
        let running = vm.spawn().map_err(|e| e.to_string())?;
        let mut killed = None;
        if *kill_root_worker {
            // The kernel has found both disks: the root disk's driver is running (it sets
            // DRIVER_OK right after printing its own size line), and its root is yet to be
            // mounted.
            running
                .wait_for_text("virtio_blk virtio1: [vdb]", BOOT_TIMEOUT)
                .map_err(|e| e.to_string())?;
            let workers = tests::procfs::workers(running.pid());
            let [worker] = workers[..] else {
                return Err(format!("expected the root disk's worker alone, found {workers:?}"));
            };
            // SAFETY: kill has no memory-safety preconditions; `worker` is the broker's child,
            // alive a moment ago and reaped by no one but the broker.
            unsafe { libc::kill(worker as i32, libc::SIGKILL) };
            killed = Some(worker);
        }
        let out = match running.wait() {
            Ok(out) => out,
            Err(e @ VmError::Timeout(_)) => e.output().cloned().ok_or(e.to_string())?,
            Err(e) => return Err(e.to_string()),
        };
        out.log(&format!("linux: vmlinux blk boot, {name}"));
        let mut scratch_head = std::fs::read(&scratch).map_err(|e| e.to_string())?;
        scratch_head.truncate(512);
        Ok(BlkBoot {
            out,
            scratch_head,
            root_sectors,
            killed,
        })
    })
    .as_ref()
    .map_err(|e| format!("vmlinux blk boot ({name}) failed: {e}"))
}

/// The kernel's virtio-blk driver sized both disks from the devices' config space.
fn blk_disks_sized(layout: usize) -> TrialResult {
    let boot = blk_boot(layout)?;
    let out = &boot.out;
    let vda = out.assert_contains(&format!(
        "[vda] {} 512-byte logical blocks",
        boot.root_sectors
    ));
    let vdb = out.assert_contains(&format!(
        "[vdb] {} 512-byte logical blocks",
        SCRATCH_BYTES / 512
    ));
    eprintln!("    {vda}\n    {vdb}");
    Ok(())
}

/// The root disk's worker, SIGKILLed once the kernel had found both disks, was restarted with
/// the device's queues resumed (one line from svmm), and the kernel went on to mount its root
/// from it (the mount line comes after the line the kill waited for).
fn blk_root_worker_restarted(layout: usize) -> TrialResult {
    let boot = blk_boot(layout)?;
    let out = &boot.out;
    let worker = boot.killed.ok_or("the harness killed no worker")?;
    let want = format!("svmm: blk#0 worker (pid {worker}) killed by SIGKILL; restart 1 (pid ");
    let [line] = out.worker_deaths("blk#0")[..] else {
        return Err(format!(
            "want one line about the root disk's worker\n{}",
            out.report()
        )
        .into());
    };
    if !line.starts_with(&want) || !line.contains(": queues resumed, ") {
        return Err(format!("the root disk's queues were not resumed: {line}").into());
    }
    let found = out.assert_contains("virtio_blk virtio1: [vdb]");
    let mounted = out.assert_contains("VFS: Mounted root (ext4 filesystem) readonly");
    let position = |needle: &str| out.stdout.find(needle);
    if position("VFS: Mounted root") < position("virtio_blk virtio1: [vdb]") {
        return Err("the root was mounted before the worker was killed".into());
    }
    eprintln!("    {found}\n    {line}\n    {mounted}");
    Ok(())
}

/// The kernel logged no I/O error on either disk and no ext4 error: a restarted worker's
/// device looks to Linux like one that was only slow.
fn blk_no_io_errors(layout: usize) -> TrialResult {
    let out = &blk_boot(layout)?.out;
    let errors: Vec<&str> = out
        .lines()
        .filter(|l| {
            l.contains("I/O error")
                || l.contains("EXT4-fs error")
                || l.contains("blk_update_request")
        })
        .collect();
    if !errors.is_empty() {
        return Err(format!("the kernel saw I/O errors: {errors:?}\n{}", out.report()).into());
    }
    Ok(())
}

/// The kernel mounted its root file system, ext4, read-only, from the `ro` device.
fn blk_root_mounted(layout: usize) -> TrialResult {
    let boot = blk_boot(layout)?;
    let line = boot
        .out
        .assert_contains("VFS: Mounted root (ext4 filesystem) readonly");
    eprintln!("    {line}");
    Ok(())
}

/// Both devices served the kernel without errors on any queue (svmm's per-device statistics
/// at VM end): blk#0 the root file system, blk#1 the partition scan of vdb, each in the
/// layout's mode.
fn blk_served(layout: usize) -> TrialResult {
    let out = &blk_boot(layout)?.out;
    let [root_mode, scratch_mode] = BLK_LAYOUTS[layout].modes;
    for (device, mode) in [("blk#0", root_mode), ("blk#1", scratch_mode)] {
        served(out, &format!("svmm: {device} ({mode}): "), false)?;
    }
    Ok(())
}

/// Like [`ends`]: poweroff (0) with user space, `panic=1`'s reboot (69) without.
fn blk_ends(layout: usize) -> TrialResult {
    ended_by_itself(&blk_boot(layout)?.out)
}

/// With user space: init wrote the marker to `/dev/vdb` with dd, synced and powered off; the
/// host finds it at the start of the scratch image, padded with zeroes.
fn blk_userspace_dd(layout: usize) -> TrialResult {
    let boot = blk_boot(layout)?;
    let out = &boot.out;
    out.assert_contains("SVMM-INIT-OK");
    out.assert_contains(&format!("svmm-init: wrote {BLK_MARKER} to /dev/vdb"));
    out.assert_status(0);
    let mut want = format!("{BLK_MARKER}\n").into_bytes();
    want.resize(512, 0);
    if boot.scratch_head != want {
        return Err(format!(
            "the scratch image does not start with the marker: {:02x?}",
            &boot.scratch_head[..32.min(boot.scratch_head.len())]
        )
        .into());
    }
    Ok(())
}

/// The virtio-fs boot's command line: the root file system is the shared directory tagged
/// [`FS_TAG`]; init is `/init` on it. With user space, init writes [`FS_MARKER`] to
/// `/svmm-fs-write` on the share.
const FS_CMDLINE: &str = "console=ttyS0 noxsave clearcpuid=cx16,popcnt,smap panic=1 \
                          rootfstype=virtiofs root=rootfs init=/init";
const FS_TAG: &str = "rootfs";
const FS_MARKER: &str = "svmm-linux-fs-write";

/// The virtio-fs boot: its output and the copy of the root tree it ran on.
struct FsBoot {
    out: VmOutput,
    marker: Option<Vec<u8>>,
}

/// `vmlinux` without initramfs, its root file system a copy of `images/out/rootfs.tree/` shared
/// read-write by a sandboxed fs worker. Started by the first trial that asks, shared.
fn fs_boot() -> Result<&'static FsBoot, String> {
    static BOOT: OnceLock<Result<FsBoot, String>> = OnceLock::new();
    BOOT.get_or_init(|| {
        require_kvm();
        let tree = paths::images_out().join("rootfs.tree");
        if !tree.join("init").is_file() {
            return Err(format!(
                "{} is missing: build it with images/build.sh rootfs",
                tree.display()
            ));
        }
        let dir = paths::TempDir::new("linux-fs");
        let root = dir.path().join("root");
        let status = std::process::Command::new("cp")
            .args(["-a"])
            .arg(&tree)
            .arg(&root)
            .status()
            .map_err(|e| format!("cp: {e}"))?;
        if !status.success() {
            return Err(format!("cp -a {} failed", tree.display()));
        }
        // The sandboxed worker has a uid of its own: let it write the root directory.
        std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .map_err(|e| e.to_string())?;
        let vm = TestVm::svmm(paths::artefact("vmlinux"))
            .cmdline(format!("{FS_CMDLINE} svmm.fs_write={FS_MARKER}"))
            .cpus(CPUS)
            .mem_mib(MEM_MIB)
            .device(format!("fs={},tag={FS_TAG}", root.display()))
            .timeout(BOOT_TIMEOUT);
        eprintln!(
            "svmm-tests: linux: booting vmlinux from a virtio-fs root, sandboxed (up to {} s) ...",
            BOOT_TIMEOUT.as_secs()
        );
        let out = match vm.run() {
            Ok(out) => out,
            Err(e @ VmError::Timeout(_)) => e.output().cloned().ok_or(e.to_string())?,
            Err(e) => return Err(e.to_string()),
        };
        out.log("linux: vmlinux virtio-fs root boot");
        let marker = std::fs::read(root.join("svmm-fs-write")).ok();
        Ok(FsBoot { out, marker })
    })
    .as_ref()
    .map_err(|e| format!("vmlinux virtio-fs boot failed: {e}"))
}

/// The kernel mounted its root file system from the fs device.
fn fs_root_mounted() -> TrialResult {
    let line = fs_boot()?
        .out
        .assert_contains("VFS: Mounted root (virtiofs filesystem)");
    eprintln!("    {line}");
    Ok(())
}

/// The kernel read and executed `/init` from the share.
fn fs_runs_init() -> TrialResult {
    let line = fs_boot()?.out.assert_contains("Run /init as init process");
    eprintln!("    {line}");
    Ok(())
}

/// The fs worker served the kernel (svmm's statistics at VM end): every queue readable,
/// requests and bytes (its error replies are answers: the kernel looks up names that are not
/// there, e.g. the init programs it tries in turn).
fn fs_served() -> TrialResult {
    let stats = served(&fs_boot()?.out, "svmm: fs#0 (sandboxed): ", true)?;
    eprintln!("    {stats}");
    Ok(())
}

/// Like [`ends`].
fn fs_ends() -> TrialResult {
    ended_by_itself(&fs_boot()?.out)
}

/// With user space: init wrote the marker to `/svmm-fs-write`, which the host finds in its
/// copy of the tree.
fn fs_userspace_write() -> TrialResult {
    let boot = fs_boot()?;
    boot.out.assert_contains("SVMM-INIT-OK");
    boot.out
        .assert_contains(&format!("svmm-init: wrote {FS_MARKER} to /svmm-fs-write"));
    let want = format!("{FS_MARKER}\n").into_bytes();
    if boot.marker.as_deref() != Some(&want[..]) {
        return Err(format!("the host found {:?} in /svmm-fs-write", boot.marker).into());
    }
    Ok(())
}
