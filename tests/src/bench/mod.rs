//! The benchmark harness behind `svmm-bench` (`tests/bench.sh`): svmm with sandboxed device
//! workers, svmm with the same devices in-process, and QEMU microvm, booting the same test guest
//! with the same devices, alternating, several repetitions each, in one run.
//!
//! | module       | owns                                                                        |
//! |--------------|-----------------------------------------------------------------------------|
//! | [`figures`]  | what is measured: the figure catalogue and the guest's result lines         |
//! | [`findings`] | "Where the gaps come from": the analysis, its figures filled in from the run |
//! | [`interrupt`] | SIGINT/SIGTERM/SIGHUP: stop after the running VM and put the host back      |
//! | [`setup`]    | the three configurations as [`crate::TestVm`]s (the QEMU command), disk images, prerequisites, the machine |
//! | [`runner`]   | one VM run (boot times, spawn lines, memory, guest figures) and the round robin |
//! | [`placement`] | where the bench runs' threads run: the vCPU on one CPU, the rest of the VMM on the others |
//! | [`memory`]   | `/proc/<pid>/smaps`: PSS without the guest-RAM mapping                      |
//! | [`stats`]    | medians, spreads, ratios and the project's targets (`T_*`, `check_targets`)   |
//! | [`report`]   | the stdout table and BENCHMARKS.md                                          |
//! | [`chart`]    | the SVG chart next to BENCHMARKS.md                                         |
//!
//! ```text
//!   setup::Plan ──► runner::run_all ──► Results (samples per figure × config, failures)
//!                     │  per repetition, per run kind, the three configs in rotating order
//!                     └► runner::run_one: spawn → banner → [smaps] → exit (pidfd) → parse
//!   Results ──► stats::summarise ──► report (stdout, BENCHMARKS.md) + chart (SVG)
//! ```

pub mod chart;
pub mod figures;
pub mod findings;
pub mod interrupt;
pub mod memory;
pub mod placement;
pub mod report;
pub mod runner;
pub mod setup;
pub mod stats;

/// One of the three VMM configurations compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Config {
    /// svmm, every device in its own confined worker process (`--device KIND`).
    Sandboxed,
    /// svmm, the same devices on threads of svmm (`--device KIND,sandbox=off`).
    InProcess,
    /// QEMU `-M microvm,acpi=off` with the same devices.
    Qemu,
}

impl Config {
    /// Every configuration, in report order.
    pub const ALL: [Config; 3] = [Config::Sandboxed, Config::InProcess, Config::Qemu];

    /// Short name for tables and messages.
    pub fn name(self) -> &'static str {
        match self {
            Config::Sandboxed => "sandboxed",
            Config::InProcess => "in-process",
            Config::Qemu => "qemu",
        }
    }

    /// Whether svmm runs this configuration.
    pub fn is_svmm(self) -> bool {
        self != Config::Qemu
    }
}

/// How the guest's bench tests wait for completions (`testguest.irq=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    /// Interrupts suppressed, ring 3 spins on the used ring (the headline on PVM hosts).
    Poll,
    /// Completion interrupts through the IOAPIC to the local APIC.
    Irq,
}

impl Mode {
    /// Both modes, in report order.
    pub const ALL: [Mode; 2] = [Mode::Poll, Mode::Irq];

    /// The value of `testguest.irq=` and of the result lines' `mode=`.
    pub fn word(self) -> &'static str {
        match self {
            Mode::Poll => "poll",
            Mode::Irq => "irq",
        }
    }
}

/// What one VM run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RunKind {
    /// `testguest.run=none`, no devices: boot figures.
    Boot0,
    /// `testguest.run=none`, the four devices: boot figures and spawn times.
    Boot4,
    /// The bench tests in one completion mode, with the four devices (and spawn times; the
    /// interrupt-mode run also idles for the memory sample).
    Bench(Mode),
}

impl RunKind {
    /// Every kind, in the order a repetition runs them.
    pub const ALL: [RunKind; 4] = [
        RunKind::Boot0,
        RunKind::Boot4,
        RunKind::Bench(Mode::Poll),
        RunKind::Bench(Mode::Irq),
    ];

    /// Short name for progress lines and failures.
    pub fn name(self) -> &'static str {
        match self {
            RunKind::Boot0 => "boot, 0 devices",
            RunKind::Boot4 => "boot, 4 devices",
            RunKind::Bench(Mode::Poll) => "bench, poll",
            RunKind::Bench(Mode::Irq) => "bench, irq",
        }
    }

    /// Whether the run has the four devices.
    pub fn has_devices(self) -> bool {
        self != RunKind::Boot0
    }
}
