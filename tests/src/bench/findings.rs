//! "Where the gaps come from" in BENCHMARKS.md: the analysis in `findings.md`, with the figures
//! it quotes taken from the run that writes the file.
//!
//! The text explains; it never carries a figure of this run by hand. Where it names this run's
//! numbers it writes a placeholder the report fills in from the run's medians:
//!
//! | placeholder           | becomes                                                     |
//! |-----------------------|-------------------------------------------------------------|
//! | `{sb/qemu KEY}`       | sandboxed / QEMU, ratio of the medians of figure `KEY`      |
//! | `{sb/ip KEY}`         | sandboxed / in-process                                      |
//! | `{sb KEY}`, `{ip KEY}`, `{qemu KEY}` | that configuration's median, with the unit   |
//!
//! `KEY` is a figure key of the catalogue (`figures`), e.g. `poll.bench_seqread.kib_s`. A
//! figure the run did not produce reads `n/a`. Measurements made outside the benchmark (a
//! named experiment, a trace) stay in the text as such, with their date and how they were
//! made.

use super::figures::Figure;
use super::stats::{self, fmt3, Samples};
use super::Config;

/// The analysis, with placeholders.
pub const TEMPLATE: &str = include_str!("findings.md");

/// What a placeholder asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wanted {
    Ratio(Config, Config),
    Median(Config),
}

/// `"sb/qemu"` etc.
fn wanted(word: &str) -> Option<Wanted> {
    let config = |w: &str| match w {
        "sb" => Some(Config::Sandboxed),
        "ip" => Some(Config::InProcess),
        "qemu" => Some(Config::Qemu),
        _ => None,
    };
    match word.split_once('/') {
        Some((a, b)) => Some(Wanted::Ratio(config(a)?, config(b)?)),
        None => Some(Wanted::Median(config(word)?)),
    }
}

/// Every `{WORD KEY}` placeholder in `text`, as (byte range, wanted, key). Braces that do not
/// hold a placeholder are left alone.
fn placeholders(text: &str) -> Vec<(std::ops::Range<usize>, Wanted, &str)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(open) = text[from..].find('{').map(|i| from + i) {
        let Some(close) = text[open..].find('}').map(|i| open + i) else {
            break;
        };
        let inner = &text[open + 1..close];
        if let Some((word, key)) = inner.split_once(' ') {
            if let Some(w) = wanted(word) {
                if !key.is_empty() && !key.contains(char::is_whitespace) {
                    out.push((open..close + 1, w, key));
                }
            }
        }
        from = open + 1;
    }
    out
}

/// The keys `template` quotes that are not in `figures` (a typo would print `n/a` forever).
pub fn unknown_keys<'t>(template: &'t str, figures: &[Figure]) -> Vec<&'t str> {
    placeholders(template)
        .into_iter()
        .map(|(_, _, key)| key)
        .filter(|key| !figures.iter().any(|f| f.key == *key))
        .collect()
}

/// `template` with every placeholder replaced by this run's figure.
pub fn render(template: &str, figures: &[Figure], samples: &Samples) -> String {
    let mut out = String::with_capacity(template.len());
    let mut at = 0;
    for (range, w, key) in placeholders(template) {
        out.push_str(&template[at..range.start]);
        let value = match w {
            Wanted::Ratio(a, b) => stats::ratio(samples, key, a, b).map(|r| format!("{r:.2}")),
            Wanted::Median(c) => stats::summary_of(samples, key, c).map(|s| {
                let unit = figures.iter().find(|f| f.key == key).map_or("", |f| f.unit);
                format!("{} {unit}", fmt3(s.median)).trim_end().to_string()
            }),
        };
        out.push_str(value.as_deref().unwrap_or("n/a"));
        at = range.end;
    }
    out.push_str(&template[at..]);
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::bench::figures;

    fn samples() -> Samples {
        let mut s: Samples = BTreeMap::new();
        let per = |sb: f64, ip: f64, q: f64| {
            BTreeMap::from([
                (Config::Sandboxed, vec![sb]),
                (Config::InProcess, vec![ip]),
                (Config::Qemu, vec![q]),
            ])
        };
        s.insert("poll.bench_rng.kib_s".into(), per(1200.0, 1000.0, 600.0));
        s
    }

    #[test]
    fn placeholders_become_the_runs_figures() {
        let figs = figures::catalogue(&figures::default_tests());
        let text = "rng {sb/qemu poll.bench_rng.kib_s}x QEMU, {sb/ip poll.bench_rng.kib_s} of \
                    in-process ({sb poll.bench_rng.kib_s} vs {qemu poll.bench_rng.kib_s}); \
                    {sb/qemu poll.bench_seqread.kib_s}; {not a placeholder} {x}";
        let out = render(text, &figs, &samples());
        let unit = figs
            .iter()
            .find(|f| f.key == "poll.bench_rng.kib_s")
            .unwrap()
            .unit;
        assert_eq!(
            out,
            format!(
                "rng 2.00x QEMU, 1.20 of in-process ({} {unit} vs {} {unit}); n/a; \
                 {{not a placeholder}} {{x}}",
                fmt3(1200.0),
                fmt3(600.0)
            )
        );
    }

    #[test]
    fn the_analysis_quotes_only_figures_of_the_catalogue() {
        let figs = figures::catalogue(&figures::default_tests());
        assert!(
            !placeholders(TEMPLATE).is_empty(),
            "findings.md quotes the run"
        );
        assert_eq!(unknown_keys(TEMPLATE, &figs), Vec::<&str>::new());
        // Issue 13's figures are discussed with this run's values.
        let quoted: Vec<&str> = placeholders(TEMPLATE).into_iter().map(|p| p.2).collect();
        for key in [
            "poll.bench_wl_sync.p50_ns",
            "poll.bench_wl_sync.p99_ns",
            "poll.bench_wl_fps.fps_x100",
        ] {
            assert!(quoted.contains(&key), "findings.md does not quote {key}");
        }
        // A placeholder broken across lines is not one: it would be printed as it stands.
        for (at, _) in TEMPLATE.match_indices('{') {
            let inner = TEMPLATE[at + 1..].split('}').next().unwrap_or("");
            let word = inner.split(char::is_whitespace).next().unwrap_or("");
            assert!(
                wanted(word).is_none() || !inner.contains('\n'),
                "placeholder broken across lines at byte {at} of findings.md: {{{inner}}}"
            );
        }
    }
}
