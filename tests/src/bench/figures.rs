//! What the benchmark measures: the catalogue of figures (name, unit, which direction is better,
//! which configurations have it) and the parsing of what each run prints — the test guest's
//! `testguest: <test> ok key=value ...` lines (images/testguest/README.md and the guest ↔ harness
//! contract) and svmm's `svmm: timing device=NAME spawn_us=N` lines (`--report-timings`).

use std::collections::BTreeMap;

use super::{Config, Mode};

/// The bench tests of images/testguest/README.md ("Benchmarks"), the virtio-fs ones last, in
/// the order the guest runs them.
pub const BENCH_TESTS: [&str; 11] = [
    "bench_cpu",
    "bench_rng",
    "bench_seqread",
    "bench_seqwrite",
    "bench_rand1",
    "bench_rand16",
    "bench_getid",
    "bench_fs_meta",
    "bench_fs_rand4k",
    "bench_fs_seqread",
    "bench_fs_seqwrite",
];

/// The virtio-wl bench tests: svmm only (QEMU has no virtio-wl), polling only (the guest
/// measures them in ring 3 with the rings polled), against a headless weston the harness starts.
pub const WL_BENCH_TESTS: [&str; 2] = ["bench_wl_sync", "bench_wl_fps"];

/// The bench tests that need the virtio-fs device (and, on QEMU, virtiofsd).
pub fn is_fs_test(test: &str) -> bool {
    test.starts_with("bench_fs_")
}

/// The bench tests that need the wayland device (and a compositor).
pub fn is_wl_test(test: &str) -> bool {
    test.starts_with("bench_wl_")
}

/// The virtio-net bench tests: transmit and receive throughput with 64-byte, 1514-byte and
/// 64 KiB GSO frames, and UDP round trips, against the peer on a tap in the bench's network
/// namespace.
pub const NET_TESTS: [&str; 7] = [
    "bench_net_tx64",
    "bench_net_tx1500",
    "bench_net_txgso",
    "bench_net_rx64",
    "bench_net_rx1500",
    "bench_net_rxgso",
    "bench_net_rr",
];

/// The bench tests that need the virtio-net device (a tap and the peer in a network namespace).
pub fn is_net_test(test: &str) -> bool {
    test.starts_with("bench_net_")
}

/// What the bench runs run by default: the `ring3` check (interrupts reach a guest running in
/// ring 3, ud2 returns, page faults are taken), then every bench test, the net ones, the
/// wayland ones last.
pub fn default_tests() -> Vec<String> {
    std::iter::once("ring3")
        .chain(BENCH_TESTS)
        .chain(NET_TESTS)
        .chain(WL_BENCH_TESTS)
        .map(String::from)
        .collect()
}

/// The `ring3` result keys that must each be `1`.
pub const RING3_CHECKS: [&str; 3] = ["ud2_return", "page_fault", "irq_in_ring3"];

/// The devices of the four-device runs, by svmm's names, in slot order: 2 rng, 2 blk.
pub const DEVICES: [&str; 4] = ["rng#0", "rng#1", "blk#2", "blk#3"];

/// The virtio-fs device the bench runs add after [`DEVICES`] when they run fs tests.
pub const FS_DEVICE: &str = "fs#4";

/// The devices of a run, by svmm's names, in slot order: [`DEVICES`], then [`FS_DEVICE`] if it
/// has the fs device, then the net device, then the wayland device, each in the next slot.
pub fn devices(fs: bool, net: bool, wl: bool) -> Vec<String> {
    let mut all: Vec<String> = DEVICES.iter().map(|d| d.to_string()).collect();
    if fs {
        all.push(FS_DEVICE.to_string());
    }
    if net {
        all.push(format!("net#{}", all.len()));
    }
    if wl {
        all.push(format!("wayland#{}", all.len()));
    }
    all
}

/// Where a figure is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Section {
    /// Process start → guest banner / → exit.
    Boot,
    /// Worker spawn per device (`--report-timings`).
    Spawn,
    /// Device figures from the guest's bench tests, in one completion mode.
    Device(Mode),
    /// The guest's own costs (`bench_cpu`), in the same run as `Device(mode)`.
    Guest(Mode),
    /// Resident memory without guest RAM.
    Memory,
}

impl Section {
    /// The heading of the section in tables.
    pub fn title(self) -> String {
        match self {
            Section::Boot => "Boot (testguest.run=none)".into(),
            Section::Spawn => "Worker spawn, per device (svmm --report-timings)".into(),
            Section::Device(m) => format!("Devices, {} mode", m.word()),
            Section::Guest(m) => format!("Guest's own costs (bench_cpu), {} run", m.word()),
            Section::Memory => "Memory: PSS without guest RAM, guest idle".into(),
        }
    }
}

/// Which direction of a figure is an improvement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    /// Throughput, IOPS.
    Higher,
    /// Times, latencies, memory.
    Lower,
}

/// Which configurations a figure exists for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// All three.
    All,
    /// svmm only (spawn times: QEMU has no workers).
    Svmm,
    /// Sandboxed svmm only (a worker's memory).
    Sandboxed,
}

/// One figure of the report.
#[derive(Clone, Debug, PartialEq)]
pub struct Figure {
    /// Unique key, e.g. `boot4.exit`, `poll.bench_rand1.iops`, `spawn.blk#2`.
    pub key: String,
    /// Where it is shown.
    pub section: Section,
    /// What it is, for people.
    pub label: String,
    /// Its unit as shown.
    pub unit: &'static str,
    /// Which direction is better.
    pub better: Better,
    /// Which configurations have it.
    pub scope: Scope,
}

impl Figure {
    /// Whether `config` has this figure (else the table shows `n/a`).
    pub fn applies(&self, config: Config) -> bool {
        match self.scope {
            Scope::All => true,
            Scope::Svmm => config.is_svmm(),
            Scope::Sandboxed => config == Config::Sandboxed,
        }
    }
}

/// A figure the guest prints: `key=` of `test`'s result line, scaled into `unit`.
#[derive(Clone, Copy, Debug)]
pub struct GuestFigure {
    /// The test (`testguest.run=` name and result-line name).
    pub test: &'static str,
    /// The key in the result line.
    pub key: &'static str,
    /// What it is.
    pub label: &'static str,
    /// The unit after scaling.
    pub unit: &'static str,
    /// Multiplier from the printed integer to `unit`.
    pub scale: f64,
    /// Which direction is better.
    pub better: Better,
    /// The guest's own cost (`bench_cpu`), not a device figure.
    pub guest_cost: bool,
    /// Whether images/testguest/README.md requires the key (a missing optional key is no
    /// failure).
    pub required: bool,
    /// Which configurations have it.
    pub scope: Scope,
    /// Measured in polling mode only.
    pub poll_only: bool,
}

const KIB_S_TO_MB_S: f64 = 1024.0 / 1e6;

const fn device(
    test: &'static str,
    key: &'static str,
    label: &'static str,
    unit: &'static str,
    scale: f64,
    better: Better,
) -> GuestFigure {
    GuestFigure {
        test,
        key,
        label,
        unit,
        scale,
        better,
        guest_cost: false,
        required: true,
        scope: Scope::All,
        poll_only: false,
    }
}

/// A virtio-wl figure: svmm's, polling only ([`WL_BENCH_TESTS`]).
const fn wayland(
    test: &'static str,
    key: &'static str,
    label: &'static str,
    unit: &'static str,
    scale: f64,
    better: Better,
) -> GuestFigure {
    GuestFigure {
        scope: Scope::Svmm,
        poll_only: true,
        ..device(test, key, label, unit, scale, better)
    }
}

const fn guest_cost(
    key: &'static str,
    label: &'static str,
    scale: f64,
    required: bool,
) -> GuestFigure {
    GuestFigure {
        test: "bench_cpu",
        key,
        label,
        unit: "ns",
        scale,
        better: Better::Lower,
        guest_cost: true,
        required,
        scope: Scope::All,
        poll_only: false,
    }
}

/// Every figure the guest can print, in report order. `rng` (the functional test, 32 requests of
/// 64 bytes) is there so that the harness can be tried on a guest without the bench tests
/// (`--tests rng`); it is not part of the default set.
pub const GUEST_FIGURES: &[GuestFigure] = &[
    device(
        "bench_rng",
        "kib_s",
        "rng throughput",
        "MB/s",
        KIB_S_TO_MB_S,
        Better::Higher,
    ),
    device(
        "bench_seqread",
        "kib_s",
        "blk sequential read, qd 8",
        "MB/s",
        KIB_S_TO_MB_S,
        Better::Higher,
    ),
    device(
        "bench_seqwrite",
        "kib_s",
        "blk sequential write, qd 8",
        "MB/s",
        KIB_S_TO_MB_S,
        Better::Higher,
    ),
    device(
        "bench_rand1",
        "iops",
        "blk 4 KiB random read, qd 1",
        "IOPS",
        1.0,
        Better::Higher,
    ),
    device(
        "bench_rand16",
        "iops",
        "blk 4 KiB random read, qd 16",
        "IOPS",
        1.0,
        Better::Higher,
    ),
    device(
        "bench_rand1",
        "p50_ns",
        "blk 4 KiB read latency p50, qd 1",
        "µs",
        1e-3,
        Better::Lower,
    ),
    device(
        "bench_rand1",
        "p99_ns",
        "blk 4 KiB read latency p99, qd 1",
        "µs",
        1e-3,
        Better::Lower,
    ),
    device(
        "bench_getid",
        "p50_ns",
        "null request (blk GET_ID) p50",
        "µs",
        1e-3,
        Better::Lower,
    ),
    device(
        "bench_getid",
        "p99_ns",
        "null request (blk GET_ID) p99",
        "µs",
        1e-3,
        Better::Lower,
    ),
    device(
        "bench_getid",
        "mean_ns",
        "null request (blk GET_ID) mean",
        "µs",
        1e-3,
        Better::Lower,
    ),
    device(
        "bench_fs_meta",
        "ops_s",
        "fs metadata (LOOKUP + GETATTR), qd 1",
        "ops/s",
        1.0,
        Better::Higher,
    ),
    device(
        "bench_fs_meta",
        "p50_ns",
        "fs metadata op latency p50, qd 1",
        "µs",
        1e-3,
        Better::Lower,
    ),
    device(
        "bench_fs_rand4k",
        "iops",
        "fs 4 KiB random read, qd 16",
        "IOPS",
        1.0,
        Better::Higher,
    ),
    device(
        "bench_fs_seqread",
        "kib_s",
        "fs sequential read (128 KiB), qd 8",
        "MB/s",
        KIB_S_TO_MB_S,
        Better::Higher,
    ),
    device(
        "bench_fs_seqwrite",
        "kib_s",
        "fs sequential write (128 KiB), qd 8",
        "MB/s",
        KIB_S_TO_MB_S,
        Better::Higher,
    ),
    wayland(
        "bench_wl_sync",
        "p50_ns",
        "wl_display.sync round trip p50",
        "µs",
        1e-3,
        Better::Lower,
    ),
    wayland(
        "bench_wl_sync",
        "p99_ns",
        "wl_display.sync round trip p99",
        "µs",
        1e-3,
        Better::Lower,
    ),
    wayland(
        "bench_wl_fps",
        "fps_x100",
        "wl full-screen shm commit loop",
        "fps",
        0.01,
        Better::Higher,
    ),
    wayland(
        "bench_wl_fps",
        "p50_ns",
        "wl full-screen frame (write, commit, frame done) p50",
        "ms",
        1e-6,
        Better::Lower,
    ),
    device(
        "bench_net_tx64",
        "fps",
        "net TX, 64 B frames",
        "kframes/s",
        1e-3,
        Better::Higher,
    ),
    device(
        "bench_net_tx64",
        "mbps",
        "net TX, 64 B frames",
        "Mb/s",
        1.0,
        Better::Higher,
    ),
    device(
        "bench_net_tx1500",
        "fps",
        "net TX, 1514 B frames",
        "kframes/s",
        1e-3,
        Better::Higher,
    ),
    device(
        "bench_net_tx1500",
        "mbps",
        "net TX, 1514 B frames",
        "Mb/s",
        1.0,
        Better::Higher,
    ),
    device(
        "bench_net_txgso",
        "fps",
        "net TX, 64 KiB TCPv4 GSO frames",
        "kframes/s",
        1e-3,
        Better::Higher,
    ),
    device(
        "bench_net_txgso",
        "mbps",
        "net TX, 64 KiB TCPv4 GSO frames",
        "Mb/s",
        1.0,
        Better::Higher,
    ),
    device(
        "bench_net_rx64",
        "fps",
        "net RX, 64 B frames",
        "kframes/s",
        1e-3,
        Better::Higher,
    ),
    device(
        "bench_net_rx64",
        "mbps",
        "net RX, 64 B frames",
        "Mb/s",
        1.0,
        Better::Higher,
    ),
    device(
        "bench_net_rx1500",
        "fps",
        "net RX, 1514 B frames",
        "kframes/s",
        1e-3,
        Better::Higher,
    ),
    device(
        "bench_net_rx1500",
        "mbps",
        "net RX, 1514 B frames",
        "Mb/s",
        1.0,
        Better::Higher,
    ),
    device(
        "bench_net_rxgso",
        "fps",
        "net RX, 64 KiB TCPv4 GSO frames",
        "kframes/s",
        1e-3,
        Better::Higher,
    ),
    device(
        "bench_net_rxgso",
        "mbps",
        "net RX, 64 KiB TCPv4 GSO frames",
        "Mb/s",
        1.0,
        Better::Higher,
    ),
    device(
        "bench_net_rr",
        "p50_ns",
        "net UDP round trip p50 (64 B frames, to the peer and back)",
        "µs",
        1e-3,
        Better::Lower,
    ),
    device(
        "bench_net_rr",
        "p99_ns",
        "net UDP round trip p99",
        "µs",
        1e-3,
        Better::Lower,
    ),
    device(
        "rng",
        "kib_s",
        "rng functional test (32 × 64 B)",
        "MB/s",
        KIB_S_TO_MB_S,
        Better::Higher,
    ),
    guest_cost("loop_ring0_ps", "pure loop iteration, ring 0", 1e-3, true),
    guest_cost("loop_ring3_ps", "pure loop iteration, ring 3", 1e-3, true),
    guest_cost(
        "driver_ring3_ns",
        "driver cost per request, ring 3 (no exits)",
        1.0,
        true,
    ),
    guest_cost("irq_ns", "cost per interrupt taken in ring 3", 1.0, true),
    guest_cost(
        "mmio_read_ns",
        "one MMIO read from ring 3 (an exit)",
        1.0,
        false,
    ),
];

/// The keys images/testguest/README.md ("Benchmarks") requires of `test`'s result line, beyond
/// its figures (`*` in its table); the harness checks them so that a guest that drifts from it
/// fails loudly instead of being misread.
pub fn required_keys(test: &str) -> &'static [&'static str] {
    match test {
        "bench_rng" => &["mode", "req_bytes", "depth", "requests", "bytes", "us"],
        "bench_seqread" | "bench_seqwrite" => {
            &["mode", "req_kib", "depth", "requests", "bytes", "us"]
        }
        "bench_rand1" | "bench_rand16" => &["mode", "depth", "requests", "us"],
        "bench_getid" => &["mode", "requests"],
        "bench_fs_meta" => &["mode", "depth", "requests", "us"],
        "bench_fs_rand4k" => &["mode", "depth", "requests", "us"],
        "bench_fs_seqread" | "bench_fs_seqwrite" => {
            &["mode", "req_kib", "depth", "requests", "bytes", "us"]
        }
        "bench_wl_sync" => &["mode", "requests"],
        "bench_wl_fps" => &["mode", "width", "height", "frames", "us"],
        "bench_net_rr" => &["mode", "requests", "us"],
        t if is_net_test(t) => &["mode", "frame_bytes", "frames", "bytes", "us"],
        "ring3" => &RING3_CHECKS,
        _ => &[],
    }
}

/// The key of the figure `g` in completion mode `mode`.
pub fn guest_key(mode: Mode, g: &GuestFigure) -> String {
    format!("{}.{}.{}", mode.word(), g.test, g.key)
}

/// Every figure of a run of `tests`, in report order.
pub fn catalogue(tests: &[String]) -> Vec<Figure> {
    let mut out = Vec::new();
    for (devices, what) in [("boot0", "0 devices"), ("boot4", "4 devices")] {
        for (end, label) in [("first_line", "first serial line"), ("exit", "exit")] {
            out.push(Figure {
                key: format!("{devices}.{end}"),
                section: Section::Boot,
                label: format!("{what}: start → {label}"),
                unit: "ms",
                better: Better::Lower,
                scope: Scope::All,
            });
        }
    }
    let fs = tests.iter().any(|t| is_fs_test(t));
    let net = tests.iter().any(|t| is_net_test(t));
    let wl = tests.iter().any(|t| is_wl_test(t));
    // Spawn times come from every run with devices, the wayland device's from the poll runs.
    for name in devices(fs, net, wl) {
        out.push(Figure {
            key: format!("spawn.{name}"),
            section: Section::Spawn,
            label: format!("{name}: spawn → ready"),
            unit: "ms",
            better: Better::Lower,
            scope: Scope::Svmm,
        });
    }
    for mode in Mode::ALL {
        for guest_costs in [false, true] {
            for g in GUEST_FIGURES.iter().filter(|g| g.guest_cost == guest_costs) {
                if !tests.iter().any(|t| t == g.test) || (g.poll_only && mode != Mode::Poll) {
                    continue;
                }
                out.push(Figure {
                    key: guest_key(mode, g),
                    section: match guest_costs {
                        false => Section::Device(mode),
                        true => Section::Guest(mode),
                    },
                    label: g.label.to_string(),
                    unit: g.unit,
                    better: g.better,
                    scope: g.scope,
                });
            }
        }
    }
    // Memory is sampled in the interrupt-mode bench run, which has no wayland device (and which
    // a boot-only run, without tests, does not make).
    if tests.is_empty() {
        return out;
    }
    out.push(memory_figure("mem.vmm", "VMM process", Scope::All));
    for name in devices(fs, net, false) {
        out.push(memory_figure(
            &format!("mem.worker.{name}"),
            &format!("worker {name}"),
            Scope::Sandboxed,
        ));
    }
    out.push(memory_figure(
        "mem.total",
        "VMM + workers (QEMU: + virtiofsd)",
        Scope::All,
    ));
    out
}

fn memory_figure(key: &str, label: &str, scope: Scope) -> Figure {
    Figure {
        key: key.to_string(),
        section: Section::Memory,
        label: label.to_string(),
        unit: "MiB",
        better: Better::Lower,
        scope,
    }
}

/// A test's result as the guest printed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TestLine {
    /// `testguest: <test> ok k=v ...`: the fields and the whole line.
    Ok(BTreeMap<String, String>, String),
    /// `testguest: <test> FAIL <reason>`: the reason.
    Fail(String),
}

/// The result line of `test` among the guest's console `lines`, if it printed one.
pub fn find_result<'a>(lines: impl IntoIterator<Item = &'a str>, test: &str) -> Option<TestLine> {
    let ok = format!("testguest: {test} ok");
    let fail = format!("testguest: {test} FAIL");
    for line in lines {
        if let Some(rest) = line.strip_prefix(&ok) {
            if rest.is_empty() || rest.starts_with(' ') {
                return Some(TestLine::Ok(fields(rest), line.to_string()));
            }
        }
        if let Some(rest) = line.strip_prefix(&fail) {
            return Some(TestLine::Fail(rest.trim().to_string()));
        }
    }
    None
}

/// The `key=value` words of a result line (other words are ignored).
pub fn fields(text: &str) -> BTreeMap<String, String> {
    text.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The samples (figure key, value in the figure's unit) in `test`'s result `fields` from a run
/// in `mode`; an error names what breaks images/testguest/README.md's format (a required key missing or not an integer,
/// `mode=` not the one asked for).
pub fn guest_samples(
    test: &str,
    fields: &BTreeMap<String, String>,
    mode: Mode,
) -> Result<Vec<(String, f64)>, String> {
    let mut problems = Vec::new();
    for key in required_keys(test) {
        if !fields.contains_key(*key) {
            problems.push(format!("no {key}="));
        }
    }
    if test == "ring3" {
        for key in RING3_CHECKS {
            match fields.get(key).map(String::as_str) {
                Some("1") | None => {}
                Some(v) => problems.push(format!("{key}={v}, must be 1")),
            }
        }
    }
    if let Some(got) = fields.get("mode") {
        if got != mode.word() {
            problems.push(format!("mode={got}, asked for {}", mode.word()));
        }
    }
    let mut samples = Vec::new();
    for g in GUEST_FIGURES.iter().filter(|g| g.test == test) {
        match fields.get(g.key).map(|v| v.parse::<u64>()) {
            Some(Ok(v)) => samples.push((guest_key(mode, g), v as f64 * g.scale)),
            Some(Err(_)) => problems.push(format!("{}={} is not an integer", g.key, fields[g.key])),
            None if g.required => problems.push(format!("no {}=", g.key)),
            None => {}
        }
    }
    match problems.is_empty() {
        true => Ok(samples),
        false => Err(problems.join(", ")),
    }
}

/// svmm's `svmm: timing device=NAME spawn_us=N` lines in `stderr`: (NAME, N).
pub fn spawn_lines(stderr: &str) -> Vec<(String, u64)> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("svmm: timing device="))
        .filter_map(|rest| {
            let (name, us) = rest.split_once(" spawn_us=")?;
            Some((name.to_string(), us.trim().parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests;
