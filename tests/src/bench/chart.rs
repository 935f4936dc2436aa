//! The chart next to BENCHMARKS.md (SVG, plotters): every boot and device figure of the three
//! configurations relative to svmm in-process, so that figures of different units share one
//! axis. Higher is better throughout: for times and latencies the inverse ratio is drawn. Bars
//! are medians, whiskers min–max; a panel per group (boot, polling, interrupts).

use std::path::Path;

use plotters::prelude::*;

use super::figures::{Better, Figure, Section};
use super::stats::{self, Samples};
use super::{Config, Mode};

/// Pixels.
const SIZE: (u32, u32) = (1280, 1080);
/// The highest value the y axis shows; taller bars are cut there and labelled.
const Y_CAP: f64 = 3.0;

fn colour(config: Config) -> RGBColor {
    match config {
        Config::Sandboxed => RGBColor(31, 119, 180),
        Config::InProcess => RGBColor(160, 160, 160),
        Config::Qemu => RGBColor(255, 127, 14),
    }
}

fn series_name(config: Config) -> &'static str {
    match config {
        Config::Sandboxed => "svmm sandboxed",
        Config::InProcess => "svmm in-process",
        Config::Qemu => "QEMU",
    }
}

/// A short name of a figure for the x axis.
pub fn short_label(f: &Figure) -> String {
    let key = f.key.as_str();
    let tail = key.split_once('.').map_or(key, |(_, t)| t);
    let name = match tail {
        "first_line" => "first line",
        "exit" => "exit",
        "bench_rng.kib_s" => "rng",
        "rng.kib_s" => "rng test",
        "bench_seqread.kib_s" => "seq read",
        "bench_seqwrite.kib_s" => "seq write",
        "bench_rand1.iops" => "IOPS qd1",
        "bench_rand16.iops" => "IOPS qd16",
        "bench_rand1.p50_ns" => "qd1 p50",
        "bench_rand1.p99_ns" => "qd1 p99",
        "bench_getid.p50_ns" => "null p50",
        "bench_getid.p99_ns" => "null p99",
        "bench_getid.mean_ns" => "null mean",
        "bench_wl_sync.p50_ns" => "wl sync p50",
        "bench_wl_sync.p99_ns" => "wl sync p99",
        "bench_wl_fps.fps_x100" => "wl fps",
        "bench_wl_fps.p50_ns" => "wl frame p50",
        other => other,
    };
    match key.split_once('.') {
        Some(("boot0", _)) => format!("0 dev: {name}"),
        Some(("boot4", _)) => format!("4 dev: {name}"),
        _ => name.to_string(),
    }
}

/// A bar: median and whisker ends, relative to in-process, higher is better.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bar {
    /// The median.
    pub mid: f64,
    /// Whisker bottom.
    pub lo: f64,
    /// Whisker top.
    pub hi: f64,
}

/// The bar of `f` in `config`, or `None` without data (for it or for in-process).
pub fn bar(f: &Figure, samples: &Samples, config: Config) -> Option<Bar> {
    let base = stats::summary_of(samples, &f.key, Config::InProcess)?.median;
    let s = stats::summary_of(samples, &f.key, config)?;
    if base <= 0.0 || s.min <= 0.0 {
        return None;
    }
    Some(match f.better {
        Better::Higher => Bar {
            mid: s.median / base,
            lo: s.min / base,
            hi: s.max / base,
        },
        Better::Lower => Bar {
            mid: base / s.median,
            lo: base / s.max,
            hi: base / s.min,
        },
    })
}

/// Writes the chart to `path`.
pub fn write_svg(path: &Path, figures: &[Figure], samples: &Samples) -> Result<(), String> {
    draw(path, figures, samples).map_err(|e| format!("cannot draw {}: {e}", path.display()))
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn draw(path: &Path, figures: &[Figure], samples: &Samples) -> DrawResult {
    let panels: Vec<(String, Vec<&Figure>)> = [
        ("Boot: in-process time / time".to_string(), Section::Boot),
        (
            "Devices, polling (throughput ratio; latency: inverse ratio)".to_string(),
            Section::Device(Mode::Poll),
        ),
        (
            "Devices, interrupts (throughput ratio; latency: inverse ratio)".to_string(),
            Section::Device(Mode::Irq),
        ),
    ]
    .into_iter()
    .map(|(title, section)| {
        let figs = figures.iter().filter(|f| f.section == section).collect();
        (title, figs)
    })
    .collect();
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, rest) = root.split_vertically(40);
    top.draw(&Text::new(
        "Relative to svmm in-process (higher is better)",
        (20, 12),
        ("sans-serif", 20).into_font(),
    ))?;
    // The legend, once for all panels, in the title strip.
    for (i, config) in Config::ALL.iter().enumerate() {
        let x = SIZE.0 as i32 - 560 + 180 * i as i32;
        top.draw(&Rectangle::new(
            [(x, 14), (x + 14, 28)],
            colour(*config).filled(),
        ))?;
        top.draw(&Text::new(
            series_name(*config),
            (x + 20, 14),
            ("sans-serif", 16).into_font(),
        ))?;
    }
    for (area, (title, figs)) in rest.split_evenly((panels.len(), 1)).iter().zip(&panels) {
        panel(area, title, figs, samples)?;
    }
    root.present()?;
    Ok(())
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    figs: &[&Figure],
    samples: &Samples,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let n = figs.len().max(1);
    let bars: Vec<Vec<(Config, Bar)>> = figs
        .iter()
        .map(|f| {
            Config::ALL
                .iter()
                .filter_map(|c| bar(f, samples, *c).map(|b| (*c, b)))
                .collect()
        })
        .collect();
    let top = bars
        .iter()
        .flatten()
        .map(|(_, b)| b.hi)
        .fold(1.2_f64, f64::max)
        .min(Y_CAP)
        * 1.08;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(48)
        .build_cartesian_2d(-0.5f64..n as f64 - 0.5, 0f64..top)?;
    let labels: Vec<String> = figs.iter().map(|f| short_label(f)).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n + 1)
        .x_label_formatter(&|v: &f64| {
            let i = v.round();
            match (i - v).abs() < 1e-6 && i >= 0.0 {
                true => labels.get(i as usize).cloned().unwrap_or_default(),
                false => String::new(),
            }
        })
        .y_desc("relative to in-process")
        .y_label_formatter(&|v: &f64| format!("{v:.1}"))
        .draw()?;
    // The reference: in-process = 1.
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(-0.5, 1.0), (n as f64 - 0.5, 1.0)],
        BLACK.stroke_width(1),
    )))?;
    let width = 0.26;
    for (slot, config) in Config::ALL.iter().enumerate() {
        let offset = (slot as f64 - 1.0) * width;
        let mine: Vec<(usize, Bar)> = bars
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.iter().find(|(c, _)| c == config).map(|(_, b)| (i, *b)))
            .collect();
        let style = colour(*config).filled();
        chart.draw_series(mine.iter().map(|(i, b)| {
            let x = *i as f64 + offset;
            Rectangle::new(
                [
                    (x - width / 2.0 + 0.01, 0.0),
                    (x + width / 2.0 - 0.01, b.mid.min(top)),
                ],
                style,
            )
        }))?;
        chart.draw_series(mine.iter().map(|(i, b)| {
            let x = *i as f64 + offset;
            PathElement::new(
                vec![(x, b.lo.min(top)), (x, b.hi.min(top))],
                BLACK.stroke_width(1),
            )
        }))?;
        // Values the axis cuts off are written on the bar.
        chart.draw_series(mine.iter().filter(|(_, b)| b.mid > top).map(|(i, b)| {
            Text::new(
                format!("{:.1}", b.mid),
                (*i as f64 + offset - width / 2.0, top * 0.97),
                ("sans-serif", 11).into_font(),
            )
        }))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::figures::catalogue;
    use super::*;
    use crate::paths::TempDir;

    fn samples() -> Samples {
        let mut s = Samples::new();
        let mut put = |k: &str, c: Config, v: &[f64]| {
            s.entry(k.to_string()).or_default().insert(c, v.to_vec());
        };
        put("boot0.exit", Config::Sandboxed, &[100.0, 110.0]);
        put("boot0.exit", Config::InProcess, &[100.0]);
        put("boot0.exit", Config::Qemu, &[400.0]);
        put("poll.bench_rng.kib_s", Config::Sandboxed, &[90.0, 100.0]);
        put("poll.bench_rng.kib_s", Config::InProcess, &[100.0]);
        put("poll.bench_rng.kib_s", Config::Qemu, &[500.0]);
        s
    }

    #[test]
    fn bars_are_relative_and_higher_is_better() {
        let figures = catalogue(&["bench_rng".into()]);
        let get = |k: &str| figures.iter().find(|f| f.key == k).unwrap();
        let s = samples();
        let b = bar(get("boot0.exit"), &s, Config::Qemu).unwrap();
        assert_eq!(
            b,
            Bar {
                mid: 0.25,
                lo: 0.25,
                hi: 0.25
            }
        );
        let b = bar(get("boot0.exit"), &s, Config::Sandboxed).unwrap();
        assert!((b.lo - 100.0 / 110.0).abs() < 1e-9 && b.hi == 1.0);
        let b = bar(get("poll.bench_rng.kib_s"), &s, Config::Sandboxed).unwrap();
        assert_eq!((b.lo, b.hi), (0.9, 1.0));
        assert_eq!(bar(get("boot4.exit"), &s, Config::Qemu), None);
        assert_eq!(short_label(get("boot0.first_line")), "0 dev: first line");
        assert_eq!(short_label(get("irq.bench_rng.kib_s")), "rng");
        let wl = catalogue(&["bench_wl_sync".into(), "bench_wl_fps".into()]);
        let label = |k: &str| short_label(wl.iter().find(|f| f.key == k).unwrap());
        assert_eq!(label("poll.bench_wl_sync.p99_ns"), "wl sync p99");
        assert_eq!(label("poll.bench_wl_fps.fps_x100"), "wl fps");
    }

    #[test]
    fn an_svg_is_written() {
        let dir = TempDir::new("bench-chart");
        let path = dir.path().join("chart.svg");
        let figures = catalogue(&["bench_rng".into(), "bench_rand1".into()]);
        write_svg(&path, &figures, &samples()).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
        for text in ["svmm sandboxed", "QEMU", "0 dev: exit", "5.0"] {
            assert!(svg.contains(text), "{text} missing");
        }
    }

    #[test]
    fn wayland_figures_get_svmm_bars_and_labels() {
        let dir = TempDir::new("bench-chart-wl");
        let path = dir.path().join("chart.svg");
        let figures = catalogue(&["bench_rng".into(), "bench_wl_sync".into()]);
        let mut s = samples();
        for (config, v) in [(Config::Sandboxed, 50.0), (Config::InProcess, 40.0)] {
            s.entry("poll.bench_wl_sync.p50_ns".into())
                .or_default()
                .insert(config, vec![v]);
        }
        let f = figures
            .iter()
            .find(|f| f.key == "poll.bench_wl_sync.p50_ns")
            .unwrap();
        assert_eq!(bar(f, &s, Config::Sandboxed).unwrap().mid, 0.8);
        assert_eq!(bar(f, &s, Config::Qemu), None, "QEMU has no virtio-wl");
        write_svg(&path, &figures, &s).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains("wl sync p50"), "no wl label");
    }
}
