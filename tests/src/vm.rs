//! The [`TestVm`] builder: one description of a guest run, started under svmm or QEMU.
//!
//! ```text
//! TestVm::svmm(kernel) / TestVm::qemu(kernel)
//!     .cmdline(..) .mem_mib(..) .cpus(..) .device(..) .arg(..) .stdin_after_line(..) .timeout(..)
//!     ├── .spawn() → RunningVm   (pid, output as it comes, stdin, kill, wait)
//!     └── .run()   → VmOutput    (spawn + scripted stdin + wait; killed at the timeout)
//! ```

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

pub use crate::backend::Backend;
use crate::binary::svmm_bin;
use crate::host::qemu_bin;
use crate::output::{VmError, VmOutput};
use crate::running::RunningVm;

/// Default time a VM may run before it is killed and the run reported as timed out.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The test guest's exit device under QEMU, at the port svmm uses (`layout::EXIT_PORT`).
pub const QEMU_EXIT_DEVICE: &str = "isa-debug-exit,iobase=0xf4,iosize=0x04";

/// One step of scripted input to the guest's serial console.
#[derive(Clone, Debug)]
pub(crate) enum StdinStep {
    /// Write these bytes as soon as the VM has started.
    Now(Vec<u8>),
    /// Wait for an output line starting with the prefix, then write the bytes.
    AfterLine(String, Vec<u8>),
}

/// A guest run to be started: kernel, command line, resources, devices, scripted input, timeout.
#[derive(Clone, Debug)]
pub struct TestVm {
    pub(crate) backend: Backend,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    cmdline: Option<String>,
    mem_mib: Option<u64>,
    cpus: Option<u32>,
    devices: Vec<String>,
    args: Vec<OsString>,
    wrapper: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    pub(crate) stdin: Vec<StdinStep>,
    pub(crate) timeout: Duration,
}

impl TestVm {
    /// A run of `backend` with nothing set: no kernel, the VMM's defaults, a 60 s timeout.
    pub fn new(backend: Backend) -> TestVm {
        TestVm {
            backend,
            kernel: None,
            initrd: None,
            cmdline: None,
            mem_mib: None,
            cpus: None,
            devices: Vec::new(),
            args: Vec::new(),
            wrapper: Vec::new(),
            env: Vec::new(),
            stdin: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// `kernel` booted by svmm.
    pub fn svmm(kernel: impl Into<PathBuf>) -> TestVm {
        TestVm::new(Backend::Svmm).kernel(kernel)
    }

    /// The test guest (`images/out/testguest.elf`) under svmm with `cmdline` and 128 MiB of
    /// RAM, the suites' usual VM. Checks KVM first ([`crate::require_kvm`]): it panics loudly
    /// without it.
    pub fn testguest(cmdline: impl Into<String>) -> TestVm {
        crate::require_kvm();
        TestVm::svmm(crate::paths::artefact("testguest.elf"))
            .cmdline(cmdline)
            .mem_mib(128)
    }

    /// `kernel` booted by QEMU `-M microvm` with KVM and the exit device.
    pub fn qemu(kernel: impl Into<PathBuf>) -> TestVm {
        TestVm::new(Backend::Qemu {
            machine: "microvm".into(),
        })
        .kernel(kernel)
    }

    /// The kernel image (`--kernel` / `-kernel`).
    pub fn kernel(mut self, path: impl Into<PathBuf>) -> TestVm {
        self.kernel = Some(path.into());
        self
    }

    /// The initial ramdisk (`--initrd` / `-initrd`).
    pub fn initrd(mut self, path: impl Into<PathBuf>) -> TestVm {
        self.initrd = Some(path.into());
        self
    }

    /// The kernel command line (`--cmdline` / `-append`).
    pub fn cmdline(mut self, cmdline: impl Into<String>) -> TestVm {
        self.cmdline = Some(cmdline.into());
        self
    }

    /// Guest memory in MiB (`--mem` / `-m`).
    pub fn mem_mib(mut self, mib: u64) -> TestVm {
        self.mem_mib = Some(mib);
        self
    }

    /// Number of vCPUs (`--cpus` / `-smp`).
    pub fn cpus(mut self, cpus: u32) -> TestVm {
        self.cpus = Some(cpus);
        self
    }

    /// A device, in the backend's own syntax: `--device SPEC` for svmm, `-device SPEC` for QEMU.
    pub fn device(mut self, spec: impl Into<String>) -> TestVm {
        self.devices.push(spec.into());
        self
    }

    /// A raw argument appended after everything else.
    pub fn arg(mut self, arg: impl Into<OsString>) -> TestVm {
        self.args.push(arg.into());
        self
    }

    /// Raw arguments appended after everything else.
    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> TestVm {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Runs the VMM through a wrapper command: `wrapper[0] wrapper[1..] VMM ARGS..`
    /// (e.g. `unshare -m sh -c '...; exec "$0" "$@"'`).
    pub fn wrapper<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, cmd: I) -> TestVm {
        self.wrapper = cmd.into_iter().map(Into::into).collect();
        self
    }

    /// Sets an environment variable for the VMM process.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> TestVm {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Writes `bytes` to the guest console (the VMM's stdin) as soon as the VM has started.
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> TestVm {
        self.stdin.push(StdinStep::Now(bytes.into()));
        self
    }

    /// Writes `bytes` to the guest console once an output line starting with `prefix` appeared.
    /// Steps run in the order given; if the line never comes, the rest are skipped.
    pub fn stdin_after_line(
        mut self,
        prefix: impl Into<String>,
        bytes: impl Into<Vec<u8>>,
    ) -> TestVm {
        self.stdin
            .push(StdinStep::AfterLine(prefix.into(), bytes.into()));
        self
    }

    /// How long the VM may run before it is killed (default [`DEFAULT_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> TestVm {
        self.timeout = timeout;
        self
    }

    /// The backend this run uses.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The full command line this run executes (builds svmm if needed).
    ///
    /// # Panics
    /// For the QEMU backend when QEMU is not installed.
    pub fn command(&self) -> Command {
        let (program, args) = match &self.backend {
            Backend::Svmm => (svmm_bin().into_os_string(), self.svmm_args()),
            Backend::Qemu { machine } => {
                let qemu = qemu_bin().expect("qemu-system-x86_64 not found (set QEMU_BIN)");
                (qemu.into_os_string(), self.qemu_args(machine))
            }
        };
        let mut cmd = match self.wrapper.split_first() {
            Some((first, rest)) => {
                let mut cmd = Command::new(first);
                cmd.args(rest).arg(program);
                cmd
            }
            None => Command::new(program),
        };
        cmd.args(args).args(&self.args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    fn svmm_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        if let Some(k) = &self.kernel {
            a.extend(["--kernel".into(), k.into()]);
        }
        if let Some(i) = &self.initrd {
            a.extend(["--initrd".into(), i.into()]);
        }
        if let Some(c) = &self.cmdline {
            a.extend(["--cmdline".into(), c.into()]);
        }
        if let Some(m) = self.mem_mib {
            a.extend(["--mem".into(), m.to_string().into()]);
        }
        if let Some(n) = self.cpus {
            a.extend(["--cpus".into(), n.to_string().into()]);
        }
        for d in &self.devices {
            a.extend(["--device".into(), d.into()]);
        }
        a
    }

    fn qemu_args(&self, machine: &str) -> Vec<OsString> {
        let mut a: Vec<OsString> = ["-M", machine, "-accel", "kvm"]
            .into_iter()
            // Plain `-cpu host` aborts on MSR 0x10a on PVM hosts (GUEST.md); harmless elsewhere.
            .chain([
                "-cpu",
                "host,-arch-capabilities",
                "-nographic",
                "-no-reboot",
            ])
            .chain(["-device", QEMU_EXIT_DEVICE])
            .map(Into::into)
            .collect();
        if let Some(k) = &self.kernel {
            a.extend(["-kernel".into(), k.into()]);
        }
        if let Some(i) = &self.initrd {
            a.extend(["-initrd".into(), i.into()]);
        }
        if let Some(c) = &self.cmdline {
            a.extend(["-append".into(), c.into()]);
        }
        if let Some(m) = self.mem_mib {
            a.extend(["-m".into(), m.to_string().into()]);
        }
        if let Some(n) = self.cpus {
            a.extend(["-smp".into(), n.to_string().into()]);
        }
        for d in &self.devices {
            a.extend(["-device".into(), d.into()]);
        }
        a
    }

    /// Starts the VM with its stdin, stdout and stderr piped (no scripted input is written).
    pub fn spawn(&self) -> Result<RunningVm, VmError> {
        RunningVm::start(self.command(), self.backend.clone(), self.timeout)
    }

    /// Starts the VM, feeds the scripted input, and waits for it to end or time out.
    ///
    /// A timeout is an error ([`VmError::Timeout`]) carrying the output so far; any exit of the VMM
    /// itself, successful or not, is an `Ok` to be judged by the caller.
    pub fn run(&self) -> Result<VmOutput, VmError> {
        let mut vm = self.spawn()?;
        for step in &self.stdin {
            let bytes = match step {
                StdinStep::Now(bytes) => bytes,
                StdinStep::AfterLine(prefix, bytes) => {
                    if vm.wait_for_line(prefix, vm.remaining()).is_err() {
                        break;
                    }
                    bytes
                }
            };
            // The VMM may already be gone; what it printed tells why, so the error adds nothing.
            let _ = vm.write_stdin(bytes);
        }
        vm.wait()
    }
}
