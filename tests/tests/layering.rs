//! No import cycles between the modules of any crate (ARCHITECTURE.md, "Layering"): one trial
//! per crate root of the workspace (each library, binary and `src/bin` program), each failing
//! with the cycle and the line behind every step. See `tests::layering` for how the graph is
//! read.

use std::path::{Path, PathBuf};

use tests::layering::read_crate;
use tests::suite::TrialResult;
use tests::{paths, Suite};

/// The workspace members, from the root `Cargo.toml`.
fn members(root: &Path) -> Vec<PathBuf> {
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("root Cargo.toml");
    let start = manifest.find("members").expect("a members list");
    let list = &manifest[start..];
    let list = &list[list.find('[').expect("[")..=list.find(']').expect("]")];
    list.split('"')
        .skip(1)
        .step_by(2)
        .map(|member| root.join(member))
        .collect()
}

/// Every crate root of `member`: `src/lib.rs`, `src/main.rs`, `src/bin/*.rs`.
fn crate_roots(member: &Path) -> Vec<PathBuf> {
    let src = member.join("src");
    let mut roots: Vec<PathBuf> = ["lib.rs", "main.rs"]
        .iter()
        .map(|f| src.join(f))
        .filter(|f| f.exists())
        .collect();
    if let Ok(bins) = std::fs::read_dir(src.join("bin")) {
        let mut bins: Vec<PathBuf> = bins
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "rs"))
            .collect();
        bins.sort();
        roots.extend(bins);
    }
    roots
}

fn no_cycle(root: PathBuf) -> TrialResult {
    let graph = read_crate(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    let cycles = graph.cycles();
    if cycles.is_empty() {
        return Ok(());
    }
    let report: Vec<String> = cycles.iter().map(ToString::to_string).collect();
    Err(format!(
        "{} ({} modules): {} cycle(s)\n{}",
        root.display(),
        graph.modules.len(),
        cycles.len(),
        report.join("")
    )
    .into())
}

fn main() {
    let repo = paths::repo_root();
    let mut suite = Suite::new("layering");
    let mut count = 0;
    for member in members(&repo) {
        for root in crate_roots(&member) {
            let name = root
                .strip_prefix(&repo)
                .unwrap_or(&root)
                .display()
                .to_string()
                .replace(['/', '.', '-'], "_");
            suite = suite.test(&format!("no_import_cycle_in_{name}"), move || {
                no_cycle(root)
            });
            count += 1;
        }
    }
    assert!(
        count >= 6,
        "found only {count} crate roots under {}",
        repo.display()
    );
    suite.run()
}
