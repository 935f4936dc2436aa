//! The `svmm` command line: parsing and validation of everything the user types.
//!
//! Parsing is clap's; this module adds the checks clap cannot express (memory against the host,
//! device kinds) so that the rest of the VMM only ever sees a validated [`VmConfig`].

use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};

use crate::config::{OnWorkerExit, SandboxOptions, SeccompMode, VmConfig};
use crate::device_spec::{self, DeviceSpec, DeviceSpecError};
use crate::layout::VIRTIO_MMIO_SLOTS;
use worker::guest_ram::Backing;

/// Smallest guest RAM we accept: the boot structures, the kernel at 1 MiB and a little room.
pub const MIN_MEM_MIB: u64 = 16;
/// Largest vCPU count: APIC IDs 0..=254 (0xff is the broadcast ID, and the IOAPIC takes one).
pub const MAX_CPUS: u8 = 254;

/// svmm: a KVM virtual machine monitor that runs every virtio device in its own sandboxed worker
/// process.
///
/// The guest's first serial port (COM1) is connected to svmm's standard output and input. When
/// standard input is a terminal it is put into raw mode: press Ctrl-A then x to end svmm.
/// Exit status: 0 when the guest powers off, 1-63 the status a test guest wrote to port 0xf4,
/// 64 and above svmm's own failures (64 bad command line, 65 bad kernel, initrd or disk image,
/// 66 KVM unavailable, 67 VM set-up failed (a disk image in use by another svmm included), 68
/// guest crashed, 69 guest reboot, 70 internal error, 71 a
/// device worker failed with --on-worker-exit=stop).
#[derive(Debug, Parser)]
#[command(name = "svmm", version, about, long_about, max_term_width = 100)]
pub struct Args {
    /// Guest kernel: an ELF `vmlinux` (booted through its PVH entry when it has one, else its
    /// 64-bit entry), a `bzImage`, or any x86_64 ELF with a PVH note (such as the test guest).
    /// Required unless `--print-sandbox` is given.
    #[arg(long, value_name = "PATH", required_unless_present = "print_sandbox")]
    pub kernel: Option<PathBuf>,

    /// Initial ramdisk (initramfs) loaded into guest memory and handed to the kernel.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,

    /// Kernel command line.
    #[arg(long, value_name = "STR", default_value = "console=ttyS0")]
    pub cmdline: String,

    /// Guest RAM in MiB (at least 16, at most the host's memory).
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    pub mem: u64,

    /// Back guest RAM with 2 MiB pages from the host's reserved huge page pool (hugetlbfs), shared
    /// with the device workers like the default memfd. Fewer scatter-gather segments per disk
    /// I/O and fewer TLB misses; the pool must hold `--mem` / 2 free pages (as root: `echo N >
    /// /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages`), all of which svmm takes at start.
    /// `--mem` must then be even.
    #[arg(long)]
    pub hugepages: bool,

    /// Number of vCPUs, each run by its own thread (1 to 254).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub cpus: u16,

    /// Add a virtio device, given as KIND[=VALUE][,OPTION[=VALUE]...] (the kinds and their
    /// options: `--help`, written from the registry at run time by `command`).
    #[arg(long = "device", value_name = "SPEC")]
    pub devices: Vec<String>,

    /// Run every device on a thread of svmm instead of a sandboxed worker process (as if each
    /// `--device` had `sandbox=off`). For debugging and comparison only.
    #[arg(long)]
    pub no_sandbox: bool,

    /// ACPI tables for the guest. `on`: svmm writes ACPI tables (CPUs, interrupt controllers,
    /// power-off) and describes each virtio-mmio device in the DSDT (`LNRO0005`), which is how
    /// stock distribution kernels find them. `off`: no ACPI tables at all. Either way each device
    /// is also appended to the kernel command line as `virtio_mmio.device=4K@ADDR:IRQ`, for
    /// kernels built with CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES and the test guest; a kernel that
    /// reads both registers each device twice, so use `off` for kernels that rely on the command
    /// line alone.
    #[arg(long, value_name = "on|off", default_value = "on")]
    pub acpi: OnOff,

    /// What svmm does when a device worker dies or misbehaves (killed, crashed, killed by its
    /// seccomp filter, or killed by svmm for garbage, floods or silence): `restart` starts a new
    /// worker for the device, in the same sandbox, and hands it the device's state (features,
    /// queues, config writes) — where the device's kind can resume, the queues resume where the
    /// guest sees them and the requests in flight are done again, so the guest sees only a
    /// delay; where it cannot (state that died with the worker, such as a file system
    /// session), the new worker starts fresh and the device needs a reset. Past
    /// `--max-restarts` in a minute the device is left needing a reset. `keep` the VM running
    /// with that device marked as needing a reset (the guest sees DEVICE_NEEDS_RESET), or
    /// `stop` the VM with exit status 71. Every worker death is one line on stderr.
    #[arg(long, value_name = "restart|keep|stop", default_value = "restart")]
    pub on_worker_exit: OnWorkerExit,

    /// With `--on-worker-exit=restart`: the most restarts of one device's worker within any
    /// minute; the next death leaves the device needing a reset (DEVICE_NEEDS_RESET).
    #[arg(long, value_name = "N", default_value_t = crate::config::DEFAULT_MAX_RESTARTS,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_restarts: u32,

    /// What a seccomp filter does with a system call its profile does not allow, for the device
    /// workers and for svmm's own threads alike: `trap` denies it (a worker dies and svmm names
    /// the call; in svmm itself the VM ends with status 70), `log` lets it through and logs it to
    /// the kernel audit log (for finding what a profile misses).
    #[arg(long, value_name = "trap|log", default_value = "trap")]
    pub seccomp: SeccompMode,

    /// Print what each `--device`'s worker will be able to do (the command line it is started
    /// with, namespaces, ids, rlimits, inherited fds, Landlock rules, the allowed system calls
    /// with their argument filters) and the seccomp profile of svmm's own threads, then exit
    /// without starting a VM. `--kernel` is not needed.
    #[arg(long)]
    pub print_sandbox: bool,

    /// When svmm runs as root: the host uids and gids of sandboxed workers, as FIRST:COUNT.
    /// Worker i of this VM runs as uid and gid FIRST + i; the broker process runs as the
    /// range's second-to-last id and svmm itself, once it has opened KVM and the host
    /// resources, as its last (so COUNT is at least 3). Give VMs that run at the same time
    /// disjoint ranges. (Unprivileged: `--subids`.)
    #[arg(long, value_name = "FIRST:COUNT", default_value = "1500000000:65536",
          value_parser = parse_id_range)]
    pub worker_ids: broker::IdRange,

    /// Unprivileged: `on` gives each sandboxed worker a host uid and gid of its own from svmm's
    /// user's subordinate ids (`/etc/subuid` and `/etc/subgid`, mapped with `newuidmap` and
    /// `newgidmap` from Debian's uidmap) when the user has a range in both files and the helpers
    /// are installed, and otherwise does as `off`: workers share svmm's host uid (mapped to 1000
    /// inside their user namespace) and keep its supplementary groups. `--print-sandbox` says
    /// which applies. Ignored as root (`--worker-ids`).
    #[arg(long, value_name = "on|off", default_value = "on")]
    pub subids: OnOff,

    /// Start sandboxed workers even if this kernel cannot enforce Landlock (ABI 6, Linux 6.12),
    /// without that layer. By default svmm refuses to start them.
    #[arg(long)]
    pub allow_missing_landlock: bool,

    /// Print on stderr, for each `--device`, one line `svmm: timing device=NAME spawn_us=N`: the
    /// microseconds (monotonic clock) from the start of spawning its worker process (or of
    /// building the in-process device) to the device being ready (its Ready message). For
    /// benchmarks (`tests/bench.sh`).
    #[arg(long)]
    pub report_timings: bool,

    /// Test builds only: print on stderr the main thread's seccomp mode as `/proc` shows it when
    /// the vCPU gate opens and when each vCPU passes it (`gate_probe.rs`).
    #[cfg(feature = "test-faults")]
    #[arg(long, hide = true)]
    pub test_gate_probe: bool,
}

/// svmm's command line, its `--device` help written from the registry of device kinds.
pub fn command() -> clap::Command {
    let kinds: Vec<String> = crate::kinds::KINDS
        .iter()
        .map(|kind| kind.usage())
        .collect();
    let short = format!(
        "Add a virtio device, given as KIND[=VALUE][,OPTION[=VALUE]...]; may be repeated. \
         Kinds: {}; every kind takes sandbox=on|off",
        kinds.join("; ")
    );
    let long = crate::device_spec::help();
    Args::command().mut_arg("devices", |arg| arg.help(short).long_help(long))
}

/// Parses svmm's own command line ([`command`]).
pub fn parse() -> Result<Args, clap::Error> {
    let mut matches = command().try_get_matches()?;
    Args::from_arg_matches_mut(&mut matches)
}

/// Parses `FIRST:COUNT` for `--worker-ids`.
fn parse_id_range(text: &str) -> Result<broker::IdRange, String> {
    let bad = || {
        format!("'{text}' is not FIRST:COUNT with FIRST > 0, COUNT >= 3 (svmm and its broker take the last two), below 2^32 - 1")
    };
    let (first, count) = text.split_once(':').ok_or_else(bad)?;
    let (first, count) = (
        first.parse().map_err(|_| bad())?,
        count.parse().map_err(|_| bad())?,
    );
    broker::IdRange::new(first, count)
        .filter(|r| r.svmm().is_some())
        .ok_or_else(bad)
}

/// A switch given as `on` or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// A problem with the command line, found after clap accepted its syntax.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// `--mem` below the minimum.
    #[error("--mem {0} MiB is too small: the guest needs at least {MIN_MEM_MIB} MiB")]
    MemTooSmall(u64),
    /// `--mem` not a whole number of 2 MiB pages with `--hugepages`.
    #[error("--mem {0} MiB with --hugepages: guest RAM must be a whole number of 2 MiB pages")]
    MemNotHuge(u64),
    /// `--mem` above what the host has.
    #[error("--mem {requested} MiB is more than this host's {host} MiB of memory")]
    MemTooLarge {
        /// Requested MiB.
        requested: u64,
        /// Host memory in MiB.
        host: u64,
    },
    /// No `--kernel` for a run that boots a VM.
    #[error("--kernel is required to run a VM")]
    NoKernel,
    /// `--cpus` outside 1..=MAX_CPUS.
    #[error("--cpus {0} is out of range: use 1 to {MAX_CPUS}")]
    Cpus(u16),
    /// A `--device` value that cannot be used.
    #[error(transparent)]
    Device(#[from] DeviceSpecError),
    /// More devices than there are virtio-mmio slots.
    #[error("{count} devices given, svmm has {max} virtio-mmio slots")]
    TooManyDevices {
        /// Devices given.
        count: usize,
        /// Slots available.
        max: usize,
    },
}

impl Args {
    /// Checks what clap cannot and produces the configuration.
    pub fn validate(self, host_mem_mib: u64) -> Result<VmConfig, CliError> {
        if self.mem < MIN_MEM_MIB {
            return Err(CliError::MemTooSmall(self.mem));
        }
        if self.mem > host_mem_mib {
            return Err(CliError::MemTooLarge {
                requested: self.mem,
                host: host_mem_mib,
            });
        }
        if self.hugepages && self.mem % 2 != 0 {
            return Err(CliError::MemNotHuge(self.mem));
        }
        let cpus = u8::try_from(self.cpus)
            .ok()
            .filter(|n| (1..=MAX_CPUS).contains(n))
            .ok_or(CliError::Cpus(self.cpus))?;
        let devices = self.device_specs()?;
        let host_ids = crate::config::HostIds::detect(self.subids == OnOff::On, devices.len());
        Ok(VmConfig {
            // clap requires --kernel unless --print-sandbox, which never gets here.
            kernel: self.kernel.ok_or(CliError::NoKernel)?,
            initrd: self.initrd,
            cmdline: self.cmdline,
            mem_bytes: self.mem << 20,
            ram_backing: match self.hugepages {
                true => Backing::HugeTlb,
                false => Backing::Shmem,
            },
            cpus,
            devices,
            acpi: self.acpi == OnOff::On,
            on_worker_exit: self.on_worker_exit,
            max_restarts: self.max_restarts,
            seccomp: self.seccomp,
            sandbox: SandboxOptions {
                seccomp: self.seccomp.into(),
                worker_ids: self.worker_ids,
                allow_missing_landlock: self.allow_missing_landlock,
                host_ids,
                guest_ram: self.mem << 20,
            },
            report_timings: self.report_timings,
            #[cfg(feature = "test-faults")]
            gate_probe: self.test_gate_probe,
        })
    }

    /// The `--device` specs, validated, in slot order, with `--no-sandbox` folded in.
    pub fn device_specs(&self) -> Result<Vec<DeviceSpec>, CliError> {
        let mut devices = Vec::with_capacity(self.devices.len());
        for spec in &self.devices {
            devices.push(device_spec::parse_with_switch(spec, self.no_sandbox)?);
        }
        if devices.len() > VIRTIO_MMIO_SLOTS {
            return Err(CliError::TooManyDevices {
                count: devices.len(),
                max: VIRTIO_MMIO_SLOTS,
            });
        }
        Ok(devices)
    }
}

/// Total host memory in MiB, from `/proc/meminfo`; `u64::MAX` when it cannot be read, so that
/// the check never refuses a sane size because of an unusual host.
pub fn host_mem_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(u64::MAX, |kib| kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut v = vec!["svmm", "--kernel", "k"];
        v.extend_from_slice(extra);
        Args::try_parse_from(v).expect("syntax")
    }

    #[test]
    fn defaults_validate() {
        let c = args(&[]).validate(1024).unwrap();
        assert_eq!(c.mem_bytes, 256 << 20);
        assert_eq!(c.cpus, 1);
        assert_eq!(c.cmdline, "console=ttyS0");
    }

    #[test]
    fn memory_bounds() {
        assert!(matches!(
            args(&["--mem", "0"]).validate(1024),
            Err(CliError::MemTooSmall(0))
        ));
        assert!(matches!(
            args(&["--mem", "4096"]).validate(1024),
            Err(CliError::MemTooLarge {
                requested: 4096,
                host: 1024
            })
        ));
        assert!(args(&["--mem", "1024"]).validate(1024).is_ok());
    }

    #[test]
    fn hugepages_need_whole_pages() {
        let c = args(&["--mem", "128", "--hugepages"])
            .validate(1024)
            .unwrap();
        assert_eq!(c.ram_backing, Backing::HugeTlb);
        assert_eq!(
            args(&[]).validate(1024).unwrap().ram_backing,
            Backing::Shmem
        );
        let err = args(&["--mem", "129", "--hugepages"])
            .validate(1024)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "--mem 129 MiB with --hugepages: guest RAM must be a whole number of 2 MiB pages"
        );
    }

    #[test]
    fn cpu_bounds() {
        assert!(matches!(
            args(&["--cpus", "0"]).validate(1024),
            Err(CliError::Cpus(0))
        ));
        assert!(matches!(
            args(&["--cpus", "255"]).validate(1024),
            Err(CliError::Cpus(255))
        ));
        assert_eq!(args(&["--cpus", "254"]).validate(1024).unwrap().cpus, 254);
    }

    #[test]
    fn devices_are_checked() {
        use devices::kind::SpecError;
        assert!(matches!(
            args(&["--device", "bogus"]).validate(1024),
            Err(CliError::Device(DeviceSpecError::Spec(
                SpecError::UnknownKind { .. }
            )))
        ));
        assert!(matches!(
            args(&["--device", ",x=1"]).validate(1024),
            Err(CliError::Device(DeviceSpecError::Spec(SpecError::Syntax(
                _
            ))))
        ));
        let many: Vec<&str> = ["--device", "rng"].repeat(VIRTIO_MMIO_SLOTS + 1);
        assert!(matches!(
            args(&many).validate(1024),
            Err(CliError::TooManyDevices { count: 17, max: 16 })
        ));
    }

    #[test]
    fn device_options_and_switches() {
        let c = args(&["--device", "rng", "--device", "rng,sandbox=off"])
            .validate(1024)
            .unwrap();
        let sandboxed: Vec<bool> = c.devices.iter().map(|d| d.sandbox).collect();
        assert_eq!(sandboxed, [true, false]);
        assert!(c.devices.iter().all(|d| d.kind() == "rng"));
        assert!(c.acpi);
        assert_eq!(c.on_worker_exit, OnWorkerExit::Restart);
        assert_eq!(c.max_restarts, crate::config::DEFAULT_MAX_RESTARTS);
        assert!(!c.report_timings);
        assert!(
            args(&["--report-timings"])
                .validate(1024)
                .unwrap()
                .report_timings
        );

        let c = args(&[
            "--device",
            "rng",
            "--no-sandbox",
            "--acpi=off",
            "--on-worker-exit",
            "stop",
        ])
        .validate(1024)
        .unwrap();
        assert!(!c.devices[0].sandbox);
        assert!(!c.acpi);
        assert_eq!(c.on_worker_exit, OnWorkerExit::Stop);
        let c = args(&["--on-worker-exit=keep", "--max-restarts=2"])
            .validate(1024)
            .unwrap();
        assert_eq!((c.on_worker_exit, c.max_restarts), (OnWorkerExit::Keep, 2));
        for bad in ["--max-restarts=0", "--on-worker-exit=retry"] {
            assert!(
                Args::try_parse_from(["svmm", "--kernel", "k", bad]).is_err(),
                "{bad}"
            );
        }

        let v = ["svmm", "--kernel", "k", "--acpi", "maybe"];
        assert!(Args::try_parse_from(v).is_err());
    }

    #[test]
    fn print_sandbox_needs_no_kernel_but_a_run_does() {
        let a = Args::try_parse_from(["svmm", "--print-sandbox", "--device", "rng"]).unwrap();
        assert!(a.print_sandbox);
        assert_eq!(a.seccomp, SeccompMode::Trap);
        assert_eq!(a.device_specs().unwrap().len(), 1);
        let e = Args::try_parse_from(["svmm", "--device", "rng"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert!(e.to_string().contains("--kernel"), "{e}");
    }

    #[test]
    fn seccomp_mode_reaches_the_config() {
        assert_eq!(args(&[]).validate(1024).unwrap().seccomp, SeccompMode::Trap);
        let c = args(&["--seccomp", "log"]).validate(1024).unwrap();
        assert_eq!(c.seccomp, SeccompMode::Log);
        assert_eq!(
            seccomp_profiles::Mode::from(c.seccomp),
            seccomp_profiles::Mode::Log
        );
        assert!(Args::try_parse_from(["svmm", "--kernel", "k", "--seccomp", "kill"]).is_err());
    }

    #[test]
    fn sandbox_switches() {
        let c = args(&[]).validate(1024).unwrap();
        assert_eq!(c.sandbox.seccomp, seccomp_profiles::Mode::Trap);
        assert_eq!(c.sandbox.worker_ids, broker::IdRange::DEFAULT);
        assert!(!c.sandbox.allow_missing_landlock);
        let c = args(&[
            "--seccomp=log",
            "--worker-ids",
            "70000:8",
            "--allow-missing-landlock",
        ])
        .validate(1024)
        .unwrap();
        assert_eq!(c.sandbox.seccomp, seccomp_profiles::Mode::Log);
        assert_eq!(
            c.sandbox.worker_ids,
            broker::IdRange::new(70000, 8).unwrap()
        );
        assert!(c.sandbox.allow_missing_landlock);
        for bad in ["0:5", "5:0", "5", "x:1", "4294967295:1", "5:2"] {
            let v = ["svmm", "--kernel", "k", "--worker-ids", bad];
            assert!(Args::try_parse_from(v).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_memory_is_read() {
        assert!(host_mem_mib() > 0);
    }
}
