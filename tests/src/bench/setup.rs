//! What a benchmark run needs before it starts, and what each VM run is: the [`Plan`], the
//! prerequisites (fail loudly when KVM, QEMU or the guest is missing), the disk images, the three
//! configurations as [`TestVm`]s (QEMU as DESIGN.md's benchmark section has it: `-M microvm`, `-sandbox on`), and the machine.
//!
//! The same devices everywhere: 2 virtio-rng and 2 virtio-blk, in that order, each blk on its own
//! raw image of [`Plan::image_mib`] MiB (allocated, not sparse) in one scratch directory, opened
//! with `O_DIRECT` by both VMMs (svmm `direct=on`, QEMU `cache=none,aio=native`), so neither
//! goes through the host's page cache.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::host::qemu_bin;
use crate::paths::TempDir;
use crate::vm::{Backend, TestVm};

use super::placement::Placement;
use super::{Config, Mode, RunKind};

/// QEMU's options beyond what [`TestVm`]'s QEMU backend always passes (`-M MACHINE -accel kvm
/// -cpu host,-arch-capabilities -nographic -no-reboot -device isa-debug-exit,...`): seccomp on,
/// modern virtio-mmio, nothing but what is asked for, the console on stdio, and threads named
/// after what they do (the vCPU's is [`super::placement::QEMU_VCPU`]; no effect on the guest).
pub const QEMU_OPTIONS: [&str; 10] = [
    "-sandbox",
    "on",
    "-name",
    "bench,debug-threads=on",
    "-global",
    "virtio-mmio.force-legacy=false",
    "-nodefaults",
    "-no-user-config",
    "-serial",
    "stdio",
];

/// QEMU's machine: microvm without ACPI, so that it lists its virtio-mmio devices on the
/// command line as `virtio_mmio.device=` (the test guest reads nothing else).
pub const QEMU_MACHINE: &str = "microvm,acpi=off";

/// Guest RAM of both VMMs in every run: the same kind of pages for both, so that a disk I/O
/// costs the host the same scatter-gather segments under either (BENCHMARKS.md, sequential
/// read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ram {
    /// A shared memfd in 4 KiB pages: svmm's default memfd, QEMU's `memory-backend-memfd`.
    Shared,
    /// The host's 2 MiB hugetlb pool: `svmm --hugepages`, QEMU's `memory-backend-memfd` with
    /// `hugetlb=on,hugetlbsize=2M`. The pool's `nr_hugepages` before and during the run.
    HugeTlb {
        /// `nr_hugepages` before the run (and after it: the harness puts it back).
        before: u64,
        /// `nr_hugepages` during the run.
        during: u64,
    },
}

impl Ram {
    /// What the report says about guest RAM.
    pub fn describe(self) -> String {
        match self {
            Ram::Shared => "a shared memfd in 4 KiB pages for both VMMs (svmm's default memfd; \
                            QEMU `-object memory-backend-memfd,share=on`)"
                .to_string(),
            Ram::HugeTlb { before, during } => format!(
                "2 MiB pages from the host's hugetlb pool for both VMMs (`svmm --hugepages`; QEMU \
                 `-object memory-backend-memfd,share=on,hugetlb=on,hugetlbsize=2M`); the harness \
                 set `nr_hugepages` from {before} to {during} for the run and back to {before} \
                 after it"
            ),
        }
    }

    /// The short name in table headings.
    pub fn short(self) -> &'static str {
        match self {
            Ram::Shared => "4 KiB shared memfd",
            Ram::HugeTlb { .. } => "2 MiB hugetlb",
        }
    }
}

/// Everything the runs share.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Repetitions of every run per configuration.
    pub reps: usize,
    /// `testguest.bench_ms=`: length of each measured phase.
    pub bench_ms: u64,
    /// Guest RAM, MiB, for both VMMs.
    pub mem_mib: u64,
    /// What guest RAM is made of, for both VMMs.
    pub ram: Ram,
    /// The test guest ELF.
    pub guest: PathBuf,
    /// The tests of the bench runs (`testguest.run=`), normally [`super::figures::BENCH_TESTS`].
    pub tests: Vec<String>,
    /// The blk images, one per blk device.
    pub images: Vec<PathBuf>,
    /// Size of each image, MiB.
    pub image_mib: u64,
    /// `testguest.sleep_ms=` of the interrupt-mode bench run, during which memory is sampled.
    pub idle_ms: u64,
    /// The directory the fs device shares in bench runs with fs tests (holding
    /// [`crate::share::BENCH_FILE_BYTES`] of `bench.bin`), and QEMU's virtio-fs daemon.
    pub fs: Option<FsSetup>,
    /// The compositor of svmm's poll-mode bench runs with wayland tests.
    pub wl: Option<WlSetup>,
    /// The network namespace, tap and peer of bench runs with net tests.
    pub net: Option<NetSetup>,
    /// Where the bench runs' threads run (the boot runs': wherever the host puts them).
    pub placement: Placement,
}

/// The virtio-net side of the bench runs: a network namespace the harness made, with a tap and
/// `svmm-netpeer` on it (`tests::netns`); every bench run with net tests runs inside it, and
/// no frame leaves it.
#[derive(Clone, Debug)]
pub struct NetSetup {
    /// The namespace (`ip netns exec NAME`).
    pub netns: String,
    /// The tap both VMMs attach to (one queue pair; `vnet_hdr`).
    pub tap: String,
    /// QEMU's net device with `vhost=on` (`--qemu-vhost`, needs `/dev/vhost-net`), else
    /// `vhost=off`.
    pub vhost: bool,
}

/// The wayland side of the bench runs: a headless weston (`crate::weston::Weston`, started by
/// the caller and alive for the whole run) whose one output the guest's window fills.
#[derive(Clone, Debug)]
pub struct WlSetup {
    /// Its socket, the wayland device's `SOCKET`.
    pub socket: PathBuf,
    /// Its output, width × height.
    pub output: (u32, u32),
}

/// The output of the bench runs' weston: the guest's full-screen window is this large.
pub const WL_OUTPUT: (u32, u32) = (1280, 720);

/// The virtio-fs side of the bench runs.
#[derive(Clone, Debug)]
pub struct FsSetup {
    /// The shared directory.
    pub share: PathBuf,
    /// QEMU's daemon (`vhost-user-fs-device`).
    pub virtiofsd: Virtiofsd,
    /// Where virtiofsd listens for QEMU.
    pub socket: PathBuf,
}

/// A virtiofsd binary: QEMU 7.2's C one (`/usr/lib/qemu/virtiofsd`, in Debian 12's
/// qemu-system-common) or the Rust one (Debian 13's `virtiofsd` package), whose options differ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Virtiofsd {
    /// The binary.
    pub path: PathBuf,
    /// It takes the Rust daemon's options (`--shared-dir`).
    pub rust: bool,
}

impl Virtiofsd {
    /// The first virtiofsd found (`$VIRTIOFSD`, then the Debian locations).
    pub fn find() -> Option<Virtiofsd> {
        let candidates = std::env::var_os("VIRTIOFSD")
            .map(PathBuf::from)
            .into_iter()
            .chain(["/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"].map(PathBuf::from));
        for path in candidates {
            if !path.is_file() {
                continue;
            }
            let help = Command::new(&path).arg("--help").output().ok()?;
            let text = String::from_utf8_lossy(&help.stdout).to_string()
                + &String::from_utf8_lossy(&help.stderr);
            return Some(Virtiofsd {
                rust: text.contains("--shared-dir"),
                path,
            });
        }
        None
    }

    /// The daemon's command line for `dir` on `socket`, with the fs device's default cache
    /// policy (`cache=auto`).
    pub fn command(&self, socket: &Path, dir: &Path) -> Vec<String> {
        let mut cmd = vec![
            self.path.display().to_string(),
            format!("--socket-path={}", socket.display()),
        ];
        if self.rust {
            cmd.extend([
                format!("--shared-dir={}", dir.display()),
                "--cache=auto".into(),
            ]);
        } else {
            cmd.extend([
                "-o".into(),
                format!("source={}", dir.display()),
                "-o".into(),
                "cache=auto".into(),
            ]);
        }
        cmd
    }
}

/// A shared directory for the fs bench tests under `dir`: `share/bench.bin`, allocated.
pub fn create_share(dir: &Path) -> Result<PathBuf, String> {
    let share = dir.join("share");
    fs::create_dir_all(&share).map_err(|e| format!("cannot create {}: {e}", share.display()))?;
    // Workers run under uids of their own: the share is everyone's.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&share, fs::Permissions::from_mode(0o777))
        .map_err(|e| format!("chmod {}: {e}", share.display()))?;
    let file = share.join("bench.bin");
    let mut f = File::create(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    let block = vec![0x5au8; 1 << 20];
    for _ in 0..crate::share::BENCH_FILE_BYTES >> 20 {
        f.write_all(&block)
            .map_err(|e| format!("{}: {e}", file.display()))?;
    }
    f.sync_all()
        .map_err(|e| format!("{}: {e}", file.display()))?;
    fs::set_permissions(&file, fs::Permissions::from_mode(0o666))
        .map_err(|e| format!("chmod {}: {e}", file.display()))?;
    Ok(share)
}

impl Plan {
    /// The tests a run of `kind` in `config` runs: none in boot runs; in bench runs
    /// [`Plan::tests`], without the wayland ones except in svmm's poll-mode runs.
    pub fn tests_in(&self, config: Config, kind: RunKind) -> Vec<String> {
        match kind {
            RunKind::Boot0 | RunKind::Boot4 => Vec::new(),
            RunKind::Bench(mode) => self
                .tests
                .iter()
                .filter(|t| !super::figures::is_wl_test(t) || wl_runs(config, mode))
                .cloned()
                .collect(),
        }
    }

    /// The guest command line of a run of `kind` in `config` (the VMM appends its
    /// `virtio_mmio.device=`).
    pub fn cmdline(&self, config: Config, kind: RunKind) -> String {
        let tests = self.tests_in(config, kind);
        match kind {
            RunKind::Boot0 | RunKind::Boot4 => "testguest.run=none".to_string(),
            RunKind::Bench(mode) => {
                // A run left with no test (only wayland tests, on QEMU) still idles for the
                // memory sample.
                let run = match tests.is_empty() {
                    true => "none".to_string(),
                    false => tests.join(","),
                };
                let mut c = format!("testguest.run={run}");
                // The bench words only with bench tests: a guest without them (tried with
                // `--tests rng`) would count them as bad parameters.
                if tests.iter().any(|t| t.starts_with("bench_")) {
                    c += &format!(
                        " testguest.irq={} testguest.bench_ms={}",
                        mode.word(),
                        self.bench_ms
                    );
                }
                if mode == Mode::Irq {
                    c += &format!(" testguest.sleep_ms={}", self.idle_ms);
                }
                c
            }
        }
    }

    /// How long a run of `kind` may take before it is killed and counted as failed.
    pub fn timeout(&self, kind: RunKind) -> Duration {
        match kind {
            RunKind::Boot0 | RunKind::Boot4 => Duration::from_secs(30),
            RunKind::Bench(_) => Duration::from_millis(
                30_000 + self.idle_ms + self.tests.len() as u64 * (5 * self.bench_ms + 5_000),
            ),
        }
    }

    /// The VM of one run: `config` running `kind`.
    pub fn vm(&self, config: Config, kind: RunKind) -> TestVm {
        let (vm, wrapper) = match config {
            Config::Sandboxed | Config::InProcess => (self.svmm_vm(config, kind), Vec::new()),
            Config::Qemu => self.qemu_vm(kind),
        };
        // A run with the net device runs inside the bench's network namespace.
        let netns = self
            .net_in(kind)
            .map(|n| vec!["ip".into(), "netns".into(), "exec".into(), n.netns.clone()])
            .unwrap_or_default();
        // A bench run's VMM starts on the placement's CPUs (runner::run_one moves its vCPU).
        let placed = match kind {
            RunKind::Bench(_) => self.placement.wrapper(),
            _ => Vec::new(),
        };
        let wrapper: Vec<String> = netns.into_iter().chain(placed).chain(wrapper).collect();
        let vm = match wrapper.is_empty() {
            true => vm,
            false => vm.wrapper(wrapper),
        };
        vm.timeout(self.timeout(kind))
    }

    fn svmm_vm(&self, config: Config, kind: RunKind) -> TestVm {
        let mut vm = TestVm::svmm(&self.guest)
            .mem_mib(self.mem_mib)
            .cmdline(self.cmdline(config, kind))
            .args(self.svmm_args(kind));
        for spec in self.svmm_devices(config, kind) {
            vm = vm.device(spec);
        }
        vm
    }

    /// The net setup if a run of `kind` has the net device: bench runs with net tests.
    pub fn net_in(&self, kind: RunKind) -> Option<&NetSetup> {
        let net_tests = self.tests.iter().any(|t| super::figures::is_net_test(t));
        match kind {
            RunKind::Bench(_) if net_tests => self.net.as_ref(),
            _ => None,
        }
    }

    /// svmm's options besides kernel, memory, command line and devices.
    pub fn svmm_args(&self, kind: RunKind) -> Vec<&'static str> {
        // QEMU runs without ACPI too; the test guest reads only the command line.
        let mut args = vec!["--acpi=off"];
        if matches!(self.ram, Ram::HugeTlb { .. }) {
            args.push("--hugepages");
        }
        if kind.has_devices() {
            args.push("--report-timings");
        }
        args
    }

    /// The fs setup if a run of `kind` has the fs device: bench runs with fs tests.
    pub fn fs_in(&self, kind: RunKind) -> Option<&FsSetup> {
        let fs_tests = self.tests.iter().any(|t| super::figures::is_fs_test(t));
        match kind {
            RunKind::Bench(_) if fs_tests => self.fs.as_ref(),
            _ => None,
        }
    }

    /// The compositor if a run of `kind` in `config` has the wayland device: svmm's poll-mode
    /// bench runs with wayland tests.
    pub fn wl_in(&self, config: Config, kind: RunKind) -> Option<&WlSetup> {
        let wl_tests = self.tests.iter().any(|t| super::figures::is_wl_test(t));
        match kind {
            RunKind::Bench(mode) if wl_tests && wl_runs(config, mode) => self.wl.as_ref(),
            _ => None,
        }
    }

    /// svmm's names of the devices of a run of `kind` in `config`, in slot order.
    pub fn device_names(&self, config: Config, kind: RunKind) -> Vec<String> {
        match kind.has_devices() {
            true => super::figures::devices(
                self.fs_in(kind).is_some(),
                self.net_in(kind).is_some(),
                self.wl_in(config, kind).is_some(),
            ),
            false => Vec::new(),
        }
    }

    /// svmm's `--device` specs of a run: the same devices, `sandbox=off` for in-process.
    pub fn svmm_devices(&self, config: Config, kind: RunKind) -> Vec<String> {
        if !kind.has_devices() {
            return Vec::new();
        }
        let off = match config {
            Config::InProcess => ",sandbox=off",
            _ => "",
        };
        let mut specs = vec![format!("rng{off}"), format!("rng{off}")];
        for image in &self.images {
            specs.push(format!("blk={},direct=on{off}", image.display()));
        }
        if let Some(fs) = self.fs_in(kind) {
            specs.push(format!("fs={},tag=bench{off}", fs.share.display()));
        }
        if let Some(net) = self.net_in(kind) {
            specs.push(format!("net,tap={}{off}", net.tap));
        }
        if let Some(wl) = self.wl_in(config, kind) {
            specs.push(format!("wayland={}{off}", wl.socket.display()));
        }
        specs
    }

    /// QEMU's VM of a run, and the wrapper it runs under (virtiofsd's start, for the fs
    /// device).
    fn qemu_vm(&self, kind: RunKind) -> (TestVm, Vec<String>) {
        let fs = self.fs_in(kind);
        // Guest RAM in the same kind of pages as svmm's (a memfd, which vhost-user needs too).
        let machine = format!("{QEMU_MACHINE},memory-backend=mem");
        let vm = TestVm::new(Backend::Qemu { machine })
            .kernel(&self.guest)
            .mem_mib(self.mem_mib)
            .cmdline(self.cmdline(Config::Qemu, kind))
            .args(QEMU_OPTIONS)
            .args(["-object".to_string(), self.qemu_memory()])
            .args(self.qemu_devices(kind));
        let mut wrapper = Vec::new();
        if let Some(fs) = fs {
            // virtiofsd starts first (QEMU connects to its socket), and is QEMU's child once
            // the shell execs QEMU; it ends when QEMU disconnects.
            let daemon = fs.virtiofsd.command(&fs.socket, &fs.share).join(" ");
            let socket = fs.socket.display().to_string();
            wrapper = vec![
                "sh".to_string(),
                "-c".to_string(),
                format!(
                    "rm -f {socket}; {daemon} & i=0; while [ ! -S {socket} ] && [ $i -lt 1000 ]; \
                     do sleep 0.01; i=$((i+1)); done; exec \"$@\""
                ),
                "sh".to_string(),
            ];
        }
        (vm, wrapper)
    }

    /// QEMU's guest RAM object (`-object`), named `mem` for `-M ...,memory-backend=mem`.
    pub fn qemu_memory(&self) -> String {
        let huge = match self.ram {
            Ram::Shared => "",
            Ram::HugeTlb { .. } => ",hugetlb=on,hugetlbsize=2M",
        };
        format!(
            "memory-backend-memfd,id=mem,size={}M,share=on{huge}",
            self.mem_mib
        )
    }

    /// QEMU's device options of a run: the same devices as svmm's, in the same order.
    pub fn qemu_devices(&self, kind: RunKind) -> Vec<String> {
        if !kind.has_devices() {
            return Vec::new();
        }
        let mut args: Vec<String> = ["-device", "virtio-rng-device"]
            .repeat(2)
            .iter()
            .map(|a| a.to_string())
            .collect();
        for (n, image) in self.images.iter().enumerate() {
            args.extend([
                "-drive".to_string(),
                format!(
                    "id=d{n},file={},format=raw,if=none,cache=none,aio=native",
                    image.display()
                ),
                "-device".to_string(),
                format!("virtio-blk-device,drive=d{n}"),
            ]);
        }
        if let Some(fs) = self.fs_in(kind) {
            args.extend([
                "-chardev".to_string(),
                format!("socket,id=vfsd,path={}", fs.socket.display()),
                "-device".to_string(),
                "vhost-user-fs-device,chardev=vfsd,tag=bench".to_string(),
            ]);
        }
        if let Some(net) = self.net_in(kind) {
            let vhost = if net.vhost { "on" } else { "off" };
            args.extend([
                "-netdev".to_string(),
                format!(
                    "tap,id=n0,ifname={},script=no,downscript=no,vhost={vhost}",
                    net.tap
                ),
                "-device".to_string(),
                "virtio-net-device,netdev=n0".to_string(),
            ]);
        }
        args
    }
}

/// Whether a bench run in `config` and `mode` runs the wayland tests: svmm's (QEMU has no
/// virtio-wl), polling (the guest measures them in ring 3, polling).
fn wl_runs(config: Config, mode: Mode) -> bool {
    config.is_svmm() && mode == Mode::Poll
}

/// The command line of `cmd` as one would type it (arguments quoted where the shell needs it),
/// with paths inside the repository made relative to its root.
pub fn shell_line(cmd: &Command) -> String {
    let root = format!("{}/", crate::paths::repo_root().display());
    let quote = |s: &str| {
        let plain = !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=,:@+%#".contains(c));
        match plain {
            true => s.to_string(),
            false => format!("'{}'", s.replace('\'', r"'\''")),
        }
    };
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| quote(&a.to_string_lossy().replace(&root, "")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Checks what the benchmark cannot run without; each error is one sentence saying what to do.
pub fn check_prerequisites(guest: &Path) -> Result<PathBuf, String> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| {
            format!("/dev/kvm is not usable ({e}): the benchmark boots real guests and needs KVM")
        })?;
    let qemu = qemu_bin().ok_or(
        "qemu-system-x86_64 not found on PATH (apt-get install qemu-system-x86, or set QEMU_BIN)",
    )?;
    if !qemu.is_file() {
        return Err(format!("QEMU_BIN={} is not a file", qemu.display()));
    }
    if !guest.is_file() {
        return Err(format!(
            "the test guest {} does not exist (images/build.sh testguest, or --guest PATH)",
            guest.display()
        ));
    }
    Ok(qemu)
}

/// The scratch directory for the images under `base`, refused on tmpfs (no `O_DIRECT` on older
/// kernels, and RAM-backed: not a disk benchmark).
pub fn scratch_dir(base: &Path) -> Result<TempDir, String> {
    let fs_type = statfs_type(base)?;
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    if fs_type == TMPFS_MAGIC {
        return Err(format!(
            "{} is on tmpfs: the disk images need a real file system (--scratch DIR)",
            base.display()
        ));
    }
    Ok(TempDir::new_in(base, "bench"))
}

fn statfs_type(path: &Path) -> Result<i64, String> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{} contains a NUL byte", path.display()))?;
    // SAFETY: an all-zero statfs is a valid value of this plain C struct, and statfs only
    // writes into it.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path that outlives the call; `buf` is a valid statfs.
    if unsafe { libc::statfs(c.as_ptr(), &mut buf) } != 0 {
        return Err(format!(
            "cannot statfs {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between libc targets.
    Ok(buf.f_type as i64)
}

/// Creates `count` raw images of `mib` MiB in `dir`, every block written (so that reads hit the
/// disk, not holes) and flushed.
pub fn create_images(dir: &Path, count: usize, mib: u64) -> Result<Vec<PathBuf>, String> {
    let chunk: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    let mut out = Vec::new();
    for n in 0..count {
        let path = dir.join(format!("disk{n}.img"));
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&path)?;
            for _ in 0..mib {
                f.write_all(&chunk)?;
            }
            f.sync_all()
        };
        write().map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        out.push(path);
    }
    Ok(out)
}

/// The machine the run is on, for BENCHMARKS.md.
#[derive(Clone, Debug, Default)]
pub struct Machine {
    /// `model name` from /proc/cpuinfo.
    pub cpu: String,
    /// Online CPUs.
    pub cores: usize,
    /// The host kernel release.
    pub kernel: String,
    /// What KVM is here: PVM or hardware.
    pub kvm: String,
    /// `qemu-system-x86_64 --version`, first line.
    pub qemu: String,
    /// `git describe --always --dirty` of the repository.
    pub revision: String,
    /// UTC date and time of the run.
    pub date: String,
    /// `/proc/loadavg`'s 1-, 5- and 15-minute load averages when the run began (other work on
    /// the machine makes the figures noisier).
    pub load_before: String,
    /// The same when it ended (set by the caller).
    pub load_after: String,
    /// The guest's file and the start of its SHA-256.
    pub guest: String,
}

impl Machine {
    /// Reads what it can; unknown fields say so.
    pub fn probe(qemu: &Path, guest: &Path) -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or("unknown".into(), |(_, v)| v.trim().to_string());
        let kvm = if Path::new("/sys/module/kvm_pvm").exists() {
            "PVM (kvm_pvm: software nested virtualisation, guest ring 0 emulated; see GUEST.md)"
                .to_string()
        } else if crate::host::has_hw_virt() {
            "hardware (vmx/svm)".to_string()
        } else {
            "unknown (no vmx/svm, no kvm_pvm module)".to_string()
        };
        let first_line = |cmd: &mut Command| {
            cmd.output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .next()
                        .map(str::to_string)
                })
                .unwrap_or_else(|| "unknown".into())
        };
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or("unknown".into(), |s| s.trim().to_string()),
            kvm,
            qemu: first_line(Command::new(qemu).arg("--version")),
            revision: first_line(
                Command::new("git")
                    .arg("-C")
                    .arg(crate::paths::repo_root())
                    .args(["describe", "--always", "--dirty"]),
            ),
            date: first_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])),
            load_before: load_average(),
            load_after: String::new(),
            guest: format!(
                "{} (sha256 {})",
                guest.display(),
                first_line(Command::new("sha256sum").arg(guest))
                    .split_whitespace()
                    .next()
                    .map_or("unknown".into(), |h| h.chars().take(16).collect::<String>())
            ),
        }
    }
}

/// The first three fields of `/proc/loadavg`.
pub fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests;
