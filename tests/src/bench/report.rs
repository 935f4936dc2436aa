//! The results for people: the table printed on stdout and BENCHMARKS.md (machine, command,
//! date, the exact VMM commands, method, targets, tables, failures, the guest's raw lines).

use std::fmt::Write as _;
use std::time::Duration;

use super::figures::{Figure, Section};
use super::findings;
use super::runner::{run_kinds, runs_per_rep, Results, BOOTS_PER_REP};
use super::setup::{Machine, Plan};
use super::stats::{self, fmt3, Check, Samples, Verdict};
use super::{Config, Mode, RunKind};

/// Everything the report shows.
pub struct Report<'a> {
    /// The plan the runs followed.
    pub plan: &'a Plan,
    /// The figures, in report order.
    pub figures: &'a [Figure],
    /// What the runs produced.
    pub results: &'a Results,
    /// The target checks.
    pub checks: &'a [Check],
    /// The machine.
    pub machine: &'a Machine,
    /// How the harness was started.
    pub invocation: &'a str,
    /// The exact command lines of bench runs, each with what it is (configuration, run kind).
    pub commands: &'a [(String, String)],
    /// Wall time of the whole comparison.
    pub total: Duration,
    /// The chart's file name, next to BENCHMARKS.md.
    pub chart: &'a str,
}

/// Whether the 1-minute load average before the run exceeded half the cores: other work
/// then competes with the VMM threads and workers.
fn busy(m: &Machine) -> bool {
    let load = m
        .load_before
        .split_whitespace()
        .next()
        .and_then(|l| l.parse::<f64>().ok());
    load.is_some_and(|l| m.cores > 0 && l > m.cores as f64 / 2.0)
}

/// The sections in report order, each with its figures.
fn sections(figures: &[Figure]) -> Vec<(Section, Vec<&Figure>)> {
    let mut out: Vec<(Section, Vec<&Figure>)> = Vec::new();
    for f in figures {
        match out.iter_mut().find(|(s, _)| *s == f.section) {
            Some((_, list)) => list.push(f),
            None => out.push((f.section, vec![f])),
        }
    }
    out
}

/// One cell: `median [min–max]`, `n/a`, or `FAILED` (the configuration should have it).
fn cell(samples: &Samples, f: &Figure, config: Config) -> String {
    if !f.applies(config) {
        return "n/a".into();
    }
    match stats::summary_of(samples, &f.key, config) {
        Some(s) if s.n == 1 => fmt3(s.median),
        Some(s) => format!("{} [{}–{}]", fmt3(s.median), fmt3(s.min), fmt3(s.max)),
        None => "FAILED".into(),
    }
}

fn ratio_cell(samples: &Samples, f: &Figure, b: Config) -> String {
    if !f.applies(b) {
        return "-".into();
    }
    stats::ratio(samples, &f.key, Config::Sandboxed, b).map_or("-".into(), |r| format!("{r:.3}"))
}

const HEADER: [&str; 7] = [
    "figure",
    "unit",
    "sandboxed",
    "in-process",
    "qemu",
    "sb/ip",
    "sb/qemu",
];

/// The rows of one section's table.
fn rows(samples: &Samples, figures: &[&Figure]) -> Vec<[String; 7]> {
    figures
        .iter()
        .map(|f| {
            [
                f.label.clone(),
                f.unit.to_string(),
                cell(samples, f, Config::Sandboxed),
                cell(samples, f, Config::InProcess),
                cell(samples, f, Config::Qemu),
                ratio_cell(samples, f, Config::InProcess),
                ratio_cell(samples, f, Config::Qemu),
            ]
        })
        .collect()
}

/// Left-aligned text columns, two spaces apart.
fn text_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let cols = header.len();
    let width = |i: usize| {
        rows.iter()
            .map(|r| r[i].chars().count())
            .chain([header[i].chars().count()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..cols).map(width).collect();
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = widths[i] - c.chars().count();
            s += c;
            if i + 1 < cols {
                s += &" ".repeat(pad + 2);
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    out += &line(
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
    );
    for r in rows {
        out += &line(r.iter().map(String::as_str).collect());
    }
    out
}

/// A Markdown table.
fn md_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!("| {} |\n", header.join(" | "));
    out += &format!("|{}\n", "---|".repeat(header.len()));
    for r in rows {
        out += &format!("| {} |\n", r.join(" | ").replace('\n', " "));
    }
    out
}

/// The overall target lines: `target: VERDICT`.
fn target_rows(checks: &[Check]) -> Vec<Vec<String>> {
    stats::TARGETS
        .iter()
        .map(|t| vec![t.to_string(), stats::overall(checks, t).word().to_string()])
        .collect()
}

fn check_rows(checks: &[Check]) -> Vec<Vec<String>> {
    checks
        .iter()
        .map(|c| {
            vec![
                c.target.to_string(),
                c.figure.clone(),
                c.value.clone(),
                c.verdict.word().to_string(),
            ]
        })
        .collect()
}

/// The largest gap between sandboxed and in-process, in one sentence.
fn gap_sentence(figures: &[Figure], samples: &Samples) -> String {
    match stats::largest_gap(figures, samples) {
        Some((f, worse)) => {
            let how = if worse >= 2.0 {
                format!("{worse:.1} times worse")
            } else if worse >= 1.0 {
                format!("{:.1} % worse", (worse - 1.0) * 100.0)
            } else {
                format!("{:.1} % better (no gap anywhere)", (1.0 - worse) * 100.0)
            };
            format!(
                "Largest gap sandboxed vs in-process: {}: {} ({}), sandboxed {how} (medians).",
                stats::short_section(f.section),
                f.label,
                f.unit,
            )
        }
        None => "Largest gap sandboxed vs in-process: no data.".into(),
    }
}

/// Whether interrupts reached the guest in ring 3 (the `ring3` test of every bench run).
fn ring3_sentence(r: &Report) -> Option<String> {
    if !r.plan.tests.iter().any(|t| t == "ring3") {
        return None;
    }
    let failed = r
        .results
        .failures
        .iter()
        .filter(|f| f.message.starts_with("ring3"))
        .count();
    Some(match failed {
        0 => {
            "Ring-3 check (`ring3`: ud2 returns, a page fault and timer interrupts taken while the \
              guest runs in ring 3): passed in every bench run."
                .to_string()
        }
        n => format!("Ring-3 check (`ring3`): FAILED in {n} bench run(s), see the failures."),
    })
}

/// The table for stdout: every section, the targets, the failures, the total time.
pub fn stdout_text(r: &Report) -> String {
    let samples = &r.results.samples;
    let mut out = String::new();
    for (section, figs) in sections(r.figures) {
        let rows: Vec<Vec<String>> = rows(samples, &figs).into_iter().map(Vec::from).collect();
        let _ = write!(
            out,
            "\n== {}\n{}",
            section.title(),
            text_table(&HEADER, &rows)
        );
    }
    let _ = write!(
        out,
        "\n== Targets\n{}",
        text_table(&["target", "verdict"], &target_rows(r.checks))
    );
    let misses: Vec<Vec<String>> = check_rows(r.checks)
        .into_iter()
        .filter(|c| c[3] != Verdict::Met.word())
        .collect();
    if !misses.is_empty() {
        let _ = write!(
            out,
            "\nnot met:\n{}",
            text_table(&["target", "figure", "value", "verdict"], &misses)
        );
    }
    let _ = writeln!(out, "\n{}", gap_sentence(r.figures, samples));
    if let Some(s) = ring3_sentence(r) {
        let _ = writeln!(out, "{s}");
    }
    if !r.results.failures.is_empty() {
        let _ = writeln!(out, "\n== FAILURES ({})", r.results.failures.len());
        for f in &r.results.failures {
            let _ = writeln!(out, "[{} | {}] {}\n", f.config.name(), f.run, f.message);
        }
    }
    let _ = writeln!(
        out,
        "total time {:.0} s ({} VM runs)",
        r.total.as_secs_f64(),
        r.results.runs
    );
    out
}

/// BENCHMARKS.md.
pub fn markdown(r: &Report) -> String {
    let samples = &r.results.samples;
    let m = r.machine;
    let p = r.plan;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Benchmarks: svmm sandboxed vs svmm in-process vs QEMU\n"
    );
    let _ = writeln!(
        out,
        "Generated by `{}` on {} (svmm `{}`), in {:.0} s ({} VM runs). Do not edit by hand: \
         re-run the command.\n",
        r.invocation,
        m.date,
        m.revision,
        r.total.as_secs_f64(),
        r.results.runs
    );
    if !r.results.failures.is_empty() {
        let _ = writeln!(
            out,
            "**{} run(s) FAILED** — see [Failures](#failures); their figures show `FAILED`.\n",
            r.results.failures.len()
        );
    }
    let _ = writeln!(out, "## Machine\n");
    let _ = writeln!(out, "- CPU: {} ({} cores online)", m.cpu, m.cores);
    let _ = writeln!(out, "- host kernel: {}", m.kernel);
    let _ = writeln!(out, "- KVM: {}", m.kvm);
    let _ = writeln!(out, "- QEMU: {}", m.qemu);
    let _ = writeln!(out, "- test guest: {}", m.guest);
    let _ = writeln!(out, "- guest RAM: {}", p.ram.describe());
    let _ = writeln!(out, "- threads: {}", p.placement.describe());
    let _ = writeln!(
        out,
        "- load average (1, 5, 15 min) before the run: {}; after: {} (other work on the machine \
         adds noise to every configuration alike, the alternation spreads it)\n",
        m.load_before, m.load_after
    );
    if m.kvm.starts_with("PVM") {
        let _ = writeln!(
            out,
            "KVM here is PVM, a software nested-virtualisation backend (`shared/GUEST.md`): guest \
             ring 0 is emulated (~500 ns per instruction), ring 3 runs natively, and every exit \
             to the VMM costs tens of µs (`bench_cpu`'s MMIO read). **Absolute numbers mean little here; the ratios between \
             configurations measured in the same run are what count.**\n"
        );
    }
    if busy(m) {
        let _ = writeln!(
            out,
            "**The machine was busy during this run** (load average {} on {} cores before it): \
             other processes competed with the VMMs for the CPUs, so spreads are wide and single \
             ratios can swing either way. Re-run on a quiet machine before quoting a figure.\n",
            m.load_before, m.cores
        );
    }
    let _ = writeln!(out, "## Summary\n");
    let _ = writeln!(
        out,
        "{}",
        md_table(&["target", "verdict"], &target_rows(r.checks))
    );
    let _ = writeln!(out, "{}\n", gap_sentence(r.figures, samples));
    if let Some(s) = ring3_sentence(r) {
        let _ = writeln!(out, "{s}\n");
    }
    let _ = writeln!(
        out,
        "![sandboxed, in-process and QEMU relative to in-process]({})\n",
        r.chart
    );
    let _ = writeln!(
        out,
        "The chart shows every boot and device figure relative to svmm in-process (= 1, higher is \
         better: for times and latencies the inverse ratio), medians with min–max bars.\n"
    );
    let _ = writeln!(
        out,
        "{}",
        findings::render(findings::TEMPLATE, r.figures, samples)
    );
    let _ = writeln!(out, "## Results\n");
    let _ = writeln!(
        out,
        "Medians over {} repetitions ({} boots per configuration for the boot figures, see \
         Method), `[min–max]` after them. `sb/ip` = sandboxed / in-process, \
         `sb/qemu` = sandboxed / QEMU, ratios of the medians in the figure's own unit (for \
         times, below 1 means sandboxed is faster). `n/a`: the configuration has no such thing; \
         `FAILED`: its runs failed.\n",
        p.reps,
        p.reps * BOOTS_PER_REP
    );
    for (section, figs) in sections(r.figures) {
        let rows: Vec<Vec<String>> = rows(samples, &figs).into_iter().map(Vec::from).collect();
        let _ = writeln!(
            out,
            "### {} — guest RAM: {}, both VMMs\n\n{}",
            section.title(),
            p.ram.short(),
            md_table(&HEADER, &rows)
        );
    }
    let _ = writeln!(out, "### Every target check\n");
    let _ = writeln!(
        out,
        "{}",
        md_table(
            &["target", "figure", "value", "verdict"],
            &check_rows(r.checks)
        )
    );
    method(&mut out, r);
    let _ = writeln!(out, "## Failures\n");
    if r.results.failures.is_empty() {
        let _ = writeln!(out, "None: every run passed.\n");
    }
    for f in &r.results.failures {
        let _ = writeln!(
            out,
            "- {} ({}):\n\n```text\n{}\n```\n",
            f.config.name(),
            f.run,
            f.message
        );
    }
    let _ = writeln!(
        out,
        "## The guest's result lines (first good run of each)\n"
    );
    for ((config, mode), lines) in &r.results.raw_lines {
        let _ = writeln!(
            out,
            "{}, {} mode:\n\n```text\n{}\n```\n",
            config.name(),
            mode.word(),
            lines.join("\n")
        );
    }
    out
}

/// How many svmm runs with devices a configuration makes: each gives one spawn sample per
/// device.
fn spawn_runs(p: &Plan) -> usize {
    run_kinds(p)
        .into_iter()
        .filter(|k| k.has_devices())
        .map(|k| p.reps * runs_per_rep(k))
        .sum()
}

fn method(out: &mut String, r: &Report) {
    let p = r.plan;
    let _ = writeln!(out, "## Method\n");
    let _ = writeln!(out, "Command: `{}`\n", r.invocation);
    let _ = writeln!(
        out,
        "Three configurations boot the same test guest (`{}`) with {} MiB of RAM and one vCPU: \
         svmm with every device in a sandboxed worker process, svmm with the same devices \
         in-process (`sandbox=off`), and QEMU microvm. Each of {} repetitions boots {} VMs of \
         each boot run and makes each bench run once per configuration, the three \
         configurations back to back in an order that rotates with every round; one boot per \
         configuration before them warms the page cache and is not counted. So each boot figure \
         is the median of {} boots per configuration, each bench and memory figure of {} runs, \
         and each worker's spawn figure of one sample per svmm run with devices ({} per \
         configuration).\n",
        p.guest.display(),
        p.mem_mib,
        p.reps,
        BOOTS_PER_REP,
        p.reps * BOOTS_PER_REP,
        p.reps,
        spawn_runs(p)
    );
    let _ = writeln!(
        out,
        "| run | guest command line | devices | measures |\n|---|---|---|---|"
    );
    let bench_devices = |mode| {
        let kind = RunKind::Bench(mode);
        let mut d = String::from("2 rng, 2 blk");
        if p.fs_in(kind).is_some() {
            d += ", 1 fs";
        }
        if p.net_in(kind).is_some() {
            d += ", 1 net";
        }
        if p.wl_in(Config::Sandboxed, kind).is_some() {
            d += ", 1 wayland (svmm)";
        }
        d
    };
    for (kind, devices, measures) in [
        (
            RunKind::Boot0,
            "none".to_string(),
            "start → first serial line, start → exit",
        ),
        (
            RunKind::Boot4,
            "2 rng, 2 blk".to_string(),
            "the same; worker spawn per device",
        ),
        (
            RunKind::Bench(Mode::Poll),
            bench_devices(Mode::Poll),
            "bench tests, polling; spawn",
        ),
        (
            RunKind::Bench(Mode::Irq),
            bench_devices(Mode::Irq),
            "bench tests, interrupts; spawn; memory while idle",
        ),
    ] {
        let _ = writeln!(
            out,
            "| {} | `{}` | {devices} | {measures} |",
            kind.name(),
            p.cmdline(Config::Sandboxed, kind)
        );
    }
    if p.wl_in(Config::Sandboxed, RunKind::Bench(Mode::Poll))
        .is_some()
    {
        let _ = writeln!(
            out,
            "\nQEMU (no virtio-wl) and the interrupt-mode runs leave the `bench_wl_*` tests out \
             (`{}` there).",
            p.cmdline(Config::Qemu, RunKind::Bench(Mode::Poll))
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "The exact commands of the bench runs (a poll-mode run not listed has \
         `testguest.irq=poll` and no `testguest.sleep_ms`, the memory sample's idle):\n"
    );
    for (what, command) in r.commands {
        let _ = writeln!(out, "{what}:\n\n```sh\n{command}\n```\n");
    }
    let _ = writeln!(
        out,
        "- **Disks**: each blk device has its own raw image of {} MiB, every block written \
         beforehand (no holes), in one scratch directory; svmm opens it with `direct=on` \
         (`O_DIRECT`) and QEMU with `cache=none,aio=native`, so neither VMM goes through the \
         host's page cache. `bench_seqwrite` overwrites the first image in every configuration.",
        p.image_mib
    );
    if let Some(fs) = &p.fs {
        let _ = writeln!(
            out,
            "- **Shared directory** (bench runs with the `bench_fs_*` tests): one directory \
             holding `bench.bin` ({} MiB, every block written), shared by svmm's fs device with \
             its default `cache=auto`, and by QEMU's `vhost-user-fs-device` through `{}` \
             (`cache=auto`; vhost-user needs QEMU's guest RAM shared, which it is in every run: \
             see guest RAM under Machine). The fs requests go through the host's page cache in every \
             configuration; `bench_fs_seqwrite` overwrites `bench.bin`. QEMU's memory total \
             includes virtiofsd's.",
            crate::share::BENCH_FILE_BYTES >> 20,
            fs.virtiofsd.path.display()
        );
    }
    if let Some(net) = &p.net {
        let _ = writeln!(
            out,
            "- **Network** (bench runs with the `bench_net_*` tests): every VM of those runs \
             runs inside a network namespace the harness made (`ip netns exec {}`), with one \
             tap (`{}`, `vnet_hdr`, 10.77.0.1/24) and `svmm-netpeer` on it; no frame leaves \
             the namespace. svmm's net device attaches to the tap (`net,tap=`), QEMU's through \
             `-netdev tap,...,vhost={}`{}. Transmitted frames go to a MAC nobody has, so the \
             host's stack drops them on arrival; received ones are injected by the peer \
             (`AF_PACKET`, `sendmmsg` batches of 32, with a GSO vnet header for the 64 KiB \
             frames) for as long as the guest measures; round trips are UDP echoes by the \
             peer. The peer shares the host's CPUs with the VMM under test.",
            net.netns,
            net.tap,
            if net.vhost { "on" } else { "off" },
            if net.vhost {
                ""
            } else if std::path::Path::new("/dev/vhost-net").exists() {
                " (`--qemu-vhost on` measures vhost-net instead)"
            } else {
                " (QEMU with vhost=on is not measured: this host has no /dev/vhost-net)"
            }
        );
    }
    if let Some(wl) = &p.wl {
        let _ = writeln!(
            out,
            "- **Wayland** (svmm's poll-mode bench runs with the `bench_wl_*` tests): one \
             headless weston (`--backend=headless-backend.so --use-pixman`, one {}×{} output, \
             its own `XDG_RUNTIME_DIR`) for the whole run, the wayland device's socket. \
             `bench_wl_sync` times `wl_display.sync` round trips (request out, `done` and \
             `delete_id` back); `bench_wl_fps` rewrites its full-screen shared-memory buffer \
             every frame, then attaches, damages, asks for a frame callback and commits, and \
             starts the next frame when the callback is done: frames per second paced by \
             weston's repaint, as for any client. Both run in guest ring 3 with the rings \
             polled. QEMU has no virtio-wl.",
            wl.output.0, wl.output.1
        );
    }
    let _ = writeln!(
        out,
        "- **Boot**: `testguest.run=none` (the guest probes its devices, calibrates its timer \
         and exits). The harness takes the start just before it spawns the VMM, the first line \
         when its console reader sees `testguest: svmm test guest v1`, and the exit when the \
         VMM's pidfd becomes readable (monotonic clock). svmm's exit includes killing and \
         reaping its workers."
    );
    let _ = writeln!(
        out,
        "- **Worker spawn**: svmm `--report-timings` prints `svmm: timing device=NAME \
         spawn_us=N` per device: from the start of spawning its worker (svmm's request to the \
         broker, sent for every worker at once right after the broker's fork, while svmm goes on \
         building the VM) or of building the in-process device, to the device's Ready message, \
         svmm's monotonic clock. svmm looks for Ready messages between its own set-up steps, so \
         one that comes during a step counts from that step's end (the longest, giving the VM \
         its RAM, takes ~4 ms on this host). Every svmm run with devices contributes one sample \
         per device. QEMU has no workers."
    );
    let _ = writeln!(
        out,
        "- **Devices**: the guest's tests ({}; `ring3` first checks that ud2, page faults and \
         timer interrupts work while the guest runs in ring 3) with `testguest.bench_ms={}`, once with \
         `testguest.irq=poll` (the driver suppresses interrupts and spins on the used ring in \
         ring 3: the headline on this machine, where interrupt delivery goes through the \
         emulated ring 0) and once with `testguest.irq=irq` (completion interrupts via \
         IOAPIC and local APIC). The request loops run in guest ring 3, so the guest is not the \
         bottleneck; `bench_cpu` reports the guest's own cost (a pure loop in ring 0 and ring \
         3, the driver's cost per request with the device simulated in the guest, the cost per \
         interrupt) next to the device figures. Each run is one sample; latency percentiles \
         are the guest's own, per run.",
        p.tests.join(", "),
        p.bench_ms
    );
    let _ = writeln!(
        out,
        "- **Memory**: in the interrupt-mode bench run the guest then idles \
         (`testguest.sleep_ms={}`); {} ms into that the harness reads `/proc/PID/smaps` of the \
         VMM and of each worker (the VMM's child processes) and sums `Pss:` over every mapping \
         except guest RAM. PSS charges a page shared by N processes 1/N to each (svmm's binary \
         is mapped by the VMM and every worker). Guest RAM is recognised as the mapping of \
         svmm's memfd `svmm-guest-ram` (`/memfd:svmm-guest-ram (deleted)`, mapped by the VMM and \
         every worker) and, in QEMU, as its `memory-backend-memfd` (`/memfd:memory-backend-memfd \
         (deleted)`); a \
         process without such a mapping fails the run instead of being miscounted. In-process \
         devices' memory is part of the VMM's.",
        p.idle_ms, 300
    );
    let _ = writeln!(
        out,
        "- **Statistics**: median and min–max over the repetitions per figure and \
         configuration. Targets (`tests/src/bench/stats.rs`): sandboxed/in-process ≥ 0.95 on every throughput \
         figure and ≤ 1.05 on every latency figure, in both modes; svmm sandboxed faster than \
         QEMU on every boot figure and on blk IOPS; every worker's spawn median < 5 ms; every \
         worker's PSS median < 2 MiB. A target is MET when every figure it covers is.\n"
    );
}

#[cfg(test)]
mod tests {
    use super::super::figures::catalogue;
    use super::*;

    #[test]
    fn tables_line_up() {
        let t = text_table(
            &["a", "bb"],
            &[
                vec!["xyz".into(), "1".into()],
                vec!["µ".into(), "22".into()],
            ],
        );
        assert_eq!(t, "a    bb\n---  --\nxyz  1\nµ    22\n");
        let m = md_table(&["a", "b"], &[vec!["1".into(), "2".into()]]);
        assert_eq!(m, "| a | b |\n|---|---|\n| 1 | 2 |\n");
    }

    #[test]
    fn cells_say_na_failed_or_median_and_spread() {
        let figures = catalogue(&["bench_rng".into()]);
        let spawn = figures.iter().find(|f| f.key == "spawn.rng#0").unwrap();
        let mut samples = Samples::new();
        samples
            .entry(spawn.key.clone())
            .or_default()
            .insert(Config::Sandboxed, vec![4.0, 3.0, 5.5]);
        assert_eq!(cell(&samples, spawn, Config::Sandboxed), "4.00 [3.00–5.50]");
        assert_eq!(cell(&samples, spawn, Config::InProcess), "FAILED");
        assert_eq!(cell(&samples, spawn, Config::Qemu), "n/a");
        assert_eq!(ratio_cell(&samples, spawn, Config::Qemu), "-");
        samples
            .get_mut(&spawn.key)
            .unwrap()
            .insert(Config::InProcess, vec![2.0]);
        assert_eq!(ratio_cell(&samples, spawn, Config::InProcess), "2.000");
    }

    #[test]
    fn a_busy_machine_is_said_so() {
        let m = |load: &str| Machine {
            cores: 2,
            load_before: load.into(),
            ..Machine::default()
        };
        assert!(busy(&m("3.11 2.86 2.00")));
        assert!(!busy(&m("0.40 0.2 0.1")));
        assert!(!busy(&m("unknown")));
    }

    #[test]
    fn sections_keep_catalogue_order() {
        let figures = catalogue(&["bench_cpu".into(), "bench_rng".into()]);
        let s: Vec<Section> = sections(&figures).into_iter().map(|(s, _)| s).collect();
        assert_eq!(
            s,
            [
                Section::Boot,
                Section::Spawn,
                Section::Device(Mode::Poll),
                Section::Guest(Mode::Poll),
                Section::Device(Mode::Irq),
                Section::Guest(Mode::Irq),
                Section::Memory
            ]
        );
    }
}
