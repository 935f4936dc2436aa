//! Statistics over the repetitions: the median and spread (min–max) of every figure per
//! configuration, the headline ratios (sandboxed / in-process, sandboxed / QEMU), and the
//! issue's targets, each MET or MISSED (or NO DATA when a run that should have produced the
//! figure failed).

use std::collections::BTreeMap;

use super::figures::{Better, Figure, Section};
use super::Config;

/// Samples per figure key and configuration, as collected by the runner.
pub type Samples = BTreeMap<String, BTreeMap<Config, Vec<f64>>>;

/// Median and spread of one figure in one configuration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    /// How many samples.
    pub n: usize,
    /// The median (mean of the middle two for an even count).
    pub median: f64,
    /// The smallest sample.
    pub min: f64,
    /// The largest sample.
    pub max: f64,
}

/// The summary of `samples`, `None` when there are none.
pub fn summarise(samples: &[f64]) -> Option<Summary> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let median = match n % 2 {
        1 => s[n / 2],
        _ => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    };
    Some(Summary {
        n,
        median,
        min: s[0],
        max: s[n - 1],
    })
}

/// The summary of figure `key` in `config`.
pub fn summary_of(samples: &Samples, key: &str, config: Config) -> Option<Summary> {
    summarise(samples.get(key)?.get(&config)?)
}

/// The ratio of the medians of `key`, `a / b`.
pub fn ratio(samples: &Samples, key: &str, a: Config, b: Config) -> Option<f64> {
    let (a, b) = (summary_of(samples, key, a)?, summary_of(samples, key, b)?);
    (b.median != 0.0).then(|| a.median / b.median)
}

/// The outcome of one target check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The figure meets the target.
    Met,
    /// It does not: a finding to explain.
    Missed,
    /// The runs that should have measured it failed.
    NoData,
}

impl Verdict {
    /// As printed.
    pub fn word(self) -> &'static str {
        match self {
            Verdict::Met => "MET",
            Verdict::Missed => "MISSED",
            Verdict::NoData => "NO DATA",
        }
    }

    fn of(value: Option<f64>, ok: impl Fn(f64) -> bool) -> Verdict {
        match value {
            None => Verdict::NoData,
            Some(v) if ok(v) => Verdict::Met,
            Some(_) => Verdict::Missed,
        }
    }
}

/// One checked target on one figure.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    /// Which of the project's targets.
    pub target: &'static str,
    /// The figure, for people (section and label).
    pub figure: String,
    /// What was measured, e.g. `ratio 0.97` or `4.21 ms`.
    pub value: String,
    /// The outcome.
    pub verdict: Verdict,
}

/// sandboxed / in-process ≥ 0.95 on throughput.
pub const T_THROUGHPUT: &str = "sandboxed/in-process ≥ 0.95 (throughput)";
/// sandboxed / in-process ≤ 1.05 on latency.
pub const T_LATENCY: &str = "sandboxed/in-process ≤ 1.05 (latency)";
/// svmm sandboxed faster than QEMU on boot.
pub const T_BOOT: &str = "svmm sandboxed faster than QEMU (boot)";
/// svmm sandboxed faster than QEMU on blk IOPS.
pub const T_IOPS: &str = "svmm sandboxed faster than QEMU (blk IOPS)";
/// svmm sandboxed at or above QEMU without vhost on net throughput (issue 11).
pub const T_NET: &str = "svmm sandboxed ≥ QEMU (net throughput, QEMU without vhost)";
/// Worker spawn below 5 ms.
pub const T_SPAWN: &str = "worker spawn < 5 ms";
/// A worker's own memory below 2 MiB.
pub const T_WORKER_MEM: &str = "worker PSS < 2 MiB";

/// Every target, in report order.
pub const TARGETS: [&str; 7] = [
    T_THROUGHPUT,
    T_LATENCY,
    T_BOOT,
    T_IOPS,
    T_NET,
    T_SPAWN,
    T_WORKER_MEM,
];

/// Checks the project's targets on every figure they concern, once per target and figure name:
/// a measurement shown in two units (net's kframes/s and Mb/s of the same frames, same label)
/// has one ratio and is checked once, on its first unit.
pub fn check_targets(figures: &[Figure], samples: &Samples) -> Vec<Check> {
    let mut out: Vec<Check> = Vec::new();
    let name = |f: &Figure| format!("{}: {}", short_section(f.section), f.label);
    for f in figures {
        if out.iter().any(|c| c.figure == name(f)) {
            continue;
        }
        let median = |c| summary_of(samples, &f.key, c).map(|s| s.median);
        match f.section {
            Section::Device(_) => {
                let r = ratio(samples, &f.key, Config::Sandboxed, Config::InProcess);
                let (target, ok): (_, fn(f64) -> bool) = match f.better {
                    Better::Higher => (T_THROUGHPUT, |r| r >= 0.95),
                    Better::Lower => (T_LATENCY, |r| r <= 1.05),
                };
                out.push(Check {
                    target,
                    figure: name(f),
                    value: r.map_or("-".into(), |r| format!("ratio {r:.3}")),
                    verdict: Verdict::of(r, ok),
                });
                if f.key.contains(".bench_net_") && f.better == Better::Higher {
                    let r = ratio(samples, &f.key, Config::Sandboxed, Config::Qemu);
                    out.push(Check {
                        target: T_NET,
                        figure: name(f),
                        value: r.map_or("-".into(), |r| format!("svmm/QEMU {r:.3}")),
                        verdict: Verdict::of(r, |r| r >= 1.0),
                    });
                }
                if f.unit == "IOPS" {
                    let r = ratio(samples, &f.key, Config::Sandboxed, Config::Qemu);
                    out.push(Check {
                        target: T_IOPS,
                        figure: name(f),
                        value: r.map_or("-".into(), |r| format!("svmm/QEMU {r:.3}")),
                        verdict: Verdict::of(r, |r| r > 1.0),
                    });
                }
            }
            Section::Boot => {
                let r = ratio(samples, &f.key, Config::Sandboxed, Config::Qemu);
                out.push(Check {
                    target: T_BOOT,
                    figure: name(f),
                    value: r.map_or("-".into(), |r| format!("svmm/QEMU time {r:.3}")),
                    verdict: Verdict::of(r, |r| r < 1.0),
                });
            }
            Section::Spawn => {
                let m = median(Config::Sandboxed);
                let max = summary_of(samples, &f.key, Config::Sandboxed).map(|s| s.max);
                out.push(Check {
                    target: T_SPAWN,
                    figure: name(f),
                    value: match (m, max) {
                        (Some(m), Some(x)) => format!("median {m:.2} ms, max {x:.2} ms"),
                        _ => "-".into(),
                    },
                    verdict: Verdict::of(m, |m| m < 5.0),
                });
            }
            Section::Memory if f.key.starts_with("mem.worker.") => {
                let m = median(Config::Sandboxed);
                out.push(Check {
                    target: T_WORKER_MEM,
                    figure: name(f),
                    value: m.map_or("-".into(), |m| format!("{m:.2} MiB")),
                    verdict: Verdict::of(m, |m| m < 2.0),
                });
            }
            _ => {}
        }
    }
    out
}

/// The overall verdict of `target` over its checks: MET only if every check is.
pub fn overall(checks: &[Check], target: &str) -> Verdict {
    let mine: Vec<&Check> = checks.iter().filter(|c| c.target == target).collect();
    if mine.is_empty() || mine.iter().any(|c| c.verdict == Verdict::NoData) {
        Verdict::NoData
    } else if mine.iter().all(|c| c.verdict == Verdict::Met) {
        Verdict::Met
    } else {
        Verdict::Missed
    }
}

/// The figure where sandboxed is furthest behind in-process (the "largest gap"), as (figure,
/// how many times worse), over device and boot figures.
pub fn largest_gap<'a>(figures: &'a [Figure], samples: &Samples) -> Option<(&'a Figure, f64)> {
    figures
        .iter()
        .filter(|f| matches!(f.section, Section::Device(_) | Section::Boot))
        .filter_map(|f| {
            let r = ratio(samples, &f.key, Config::Sandboxed, Config::InProcess)?;
            let worse = match f.better {
                Better::Higher => 1.0 / r,
                Better::Lower => r,
            };
            Some((f, worse))
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
}

/// A short name of a section for target lines.
pub fn short_section(s: Section) -> String {
    match s {
        Section::Boot => "boot".into(),
        Section::Spawn => "spawn".into(),
        Section::Device(m) => m.word().into(),
        Section::Guest(m) => format!("guest ({})", m.word()),
        Section::Memory => "memory".into(),
    }
}

/// `v` with three significant digits (no exponent): 1234 → "1234", 12.345 → "12.3",
/// 0.01234 → "0.0123".
pub fn fmt3(v: f64) -> String {
    let a = v.abs();
    let decimals = if a == 0.0 || a >= 100.0 {
        0
    } else {
        (2 - a.log10().floor() as i32).clamp(0, 6) as usize
    };
    format!("{v:.decimals$}")
}

#[cfg(test)]
mod tests {
    use super::super::figures::catalogue;
    use super::*;

    #[test]
    fn medians_and_spread() {
        assert_eq!(summarise(&[]), None);
        let s = summarise(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.n, s.median, s.min, s.max), (3, 2.0, 1.0, 3.0));
        assert_eq!(summarise(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
    }

    #[test]
    fn three_significant_digits() {
        assert_eq!(fmt3(1234.4), "1234");
        assert_eq!(fmt3(123.4), "123");
        assert_eq!(fmt3(12.345), "12.3");
        assert_eq!(fmt3(1.2345), "1.23");
        assert_eq!(fmt3(0.012345), "0.0123");
        assert_eq!(fmt3(0.0), "0");
    }

    fn samples(entries: &[(&str, Config, &[f64])]) -> Samples {
        let mut s = Samples::new();
        for (key, config, values) in entries {
            s.entry(key.to_string())
                .or_default()
                .insert(*config, values.to_vec());
        }
        s
    }

    #[test]
    fn targets_are_judged_per_figure() {
        let figures = catalogue(&["bench_rand1".into()]);
        let s = samples(&[
            ("poll.bench_rand1.iops", Config::Sandboxed, &[96.0, 97.0]),
            ("poll.bench_rand1.iops", Config::InProcess, &[100.0]),
            ("poll.bench_rand1.iops", Config::Qemu, &[90.0]),
            ("poll.bench_rand1.p50_ns", Config::Sandboxed, &[10.6]),
            ("poll.bench_rand1.p50_ns", Config::InProcess, &[10.0]),
            ("boot0.exit", Config::Sandboxed, &[100.0]),
            ("boot0.exit", Config::Qemu, &[200.0]),
            ("spawn.rng#0", Config::Sandboxed, &[4.0, 6.0, 4.5]),
            ("mem.worker.blk#2", Config::Sandboxed, &[2.5]),
        ]);
        let checks = check_targets(&figures, &s);
        let find = |target: &str, figure: &str| {
            checks
                .iter()
                .find(|c| c.target == target && c.figure.contains(figure))
                .unwrap_or_else(|| panic!("{target} {figure}: {checks:#?}"))
                .verdict
        };
        assert_eq!(find(T_THROUGHPUT, "random read, qd 1"), Verdict::Met);
        assert_eq!(find(T_LATENCY, "p50"), Verdict::Missed);
        assert_eq!(find(T_LATENCY, "p99"), Verdict::NoData);
        assert_eq!(find(T_IOPS, "qd 1"), Verdict::Met);
        assert_eq!(find(T_BOOT, "0 devices: start → exit"), Verdict::Met);
        assert_eq!(find(T_SPAWN, "rng#0"), Verdict::Met);
        assert_eq!(find(T_WORKER_MEM, "blk#2"), Verdict::Missed);
        assert_eq!(overall(&checks, T_THROUGHPUT), Verdict::NoData);
        assert_eq!(overall(&checks, T_IOPS), Verdict::NoData);
        let (gap, worse) = largest_gap(&figures, &s).unwrap();
        assert_eq!(gap.key, "poll.bench_rand1.p50_ns");
        assert!((worse - 1.06).abs() < 1e-9);
    }

    #[test]
    fn a_figure_in_two_units_is_checked_once() {
        let figures = catalogue(&["bench_net_tx64".into()]);
        let units: Vec<&str> = figures
            .iter()
            .filter(|f| f.key.starts_with("poll.bench_net_tx64."))
            .map(|f| f.unit)
            .collect();
        assert_eq!(
            units.len(),
            2,
            "the test needs a figure in two units: {units:?}"
        );
        let mut entries = Vec::new();
        for f in figures.iter().filter(|f| f.key.contains("bench_net_tx64")) {
            entries.push((f.key.as_str(), Config::Sandboxed, &[80.0][..]));
            entries.push((f.key.as_str(), Config::InProcess, &[100.0][..]));
            entries.push((f.key.as_str(), Config::Qemu, &[100.0][..]));
        }
        let checks = check_targets(&figures, &samples(&entries));
        for target in [T_THROUGHPUT, T_NET] {
            let rows: Vec<&Check> = checks
                .iter()
                .filter(|c| c.target == target && c.figure == "poll: net TX, 64 B frames")
                .collect();
            assert_eq!(rows.len(), 1, "{target}: {checks:#?}");
            assert_eq!(rows[0].verdict, Verdict::Missed);
        }
    }

    #[test]
    fn overall_needs_every_check() {
        let c = |verdict| Check {
            target: T_SPAWN,
            figure: String::new(),
            value: String::new(),
            verdict,
        };
        assert_eq!(
            overall(&[c(Verdict::Met), c(Verdict::Met)], T_SPAWN),
            Verdict::Met
        );
        assert_eq!(
            overall(&[c(Verdict::Met), c(Verdict::Missed)], T_SPAWN),
            Verdict::Missed
        );
        assert_eq!(overall(&[], T_SPAWN), Verdict::NoData);
    }
}
