//! The `svmm` binary under test.
//!
//! `SVMM_BIN=/path/to/svmm` selects a binary explicitly. Otherwise the first caller in a test
//! process builds it with `$CARGO build -p vmm --features test-faults --bin svmm` (the sandbox
//! suite's misbehaving workers need the feature; adding `--release` when this test binary
//! is itself optimised, so `cargo test --release` tests a release svmm), and everyone uses the path
//! cargo reports for it — which respects `CARGO_TARGET_DIR` and `build.target-dir`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::paths::repo_root;

/// Path of the `svmm` binary to test, building it on first use.
///
/// # Panics
/// When `SVMM_BIN` names no file, or when the build fails (cargo's diagnostics are on stderr).
pub fn svmm_bin() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(locate)
        .clone()
        .unwrap_or_else(|e| panic!("\n\n*** cannot get the svmm binary: {e} ***\n"))
}

/// Whether this test binary was built with optimisations (then svmm is built with `--release`).
pub fn release_build() -> bool {
    !cfg!(debug_assertions)
}

fn locate() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("SVMM_BIN") {
        let bin = PathBuf::from(bin);
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(format!("SVMM_BIN={} is not a file", bin.display()))
        };
    }
    build()
}

/// Runs `cargo build -p vmm --features test-faults --bin svmm` in the workspace root and returns
/// the executable's path.
fn build() -> Result<PathBuf, String> {
    // Cargo sets CARGO for the processes it runs; fall back to the one that built us, then PATH.
    let cargo = std::env::var_os("CARGO")
        .or_else(|| option_env!("CARGO").map(Into::into))
        .unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(repo_root())
        .args([
            "build",
            "-p",
            "vmm",
            "--features",
            "test-faults",
            "--bin",
            "svmm",
        ])
        .arg("--message-format=json-render-diagnostics");
    if release_build() {
        cmd.arg("--release");
    }
    eprintln!("svmm-tests: building svmm: {cmd:?}");
    // Diagnostics and progress go straight to our stderr; the JSON messages come back on stdout.
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", Path::new(&cargo).display()))?;
    if !out.status.success() {
        return Err(format!(
            "`cargo build -p vmm --features test-faults --bin svmm` failed ({}); its errors are above",
            out.status
        ));
    }
    let json = String::from_utf8_lossy(&out.stdout);
    let bin = json
        .lines()
        .filter(|l| l.contains(r#""reason":"compiler-artifact""#) && l.contains(r#""name":"svmm""#))
        .find_map(executable_of)
        .ok_or("cargo built svmm but reported no executable for it")?;
    Ok(bin)
}

/// Extracts the `"executable"` path from one line of cargo's JSON messages.
fn executable_of(line: &str) -> Option<PathBuf> {
    const KEY: &str = r#""executable":""#;
    let rest = &line[line.find(KEY)? + KEY.len()..];
    let mut path = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(PathBuf::from(path)),
            // Paths may contain escaped quotes or backslashes; nothing else needs decoding.
            '\\' => path.push(chars.next()?),
            c => path.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executable_is_parsed_from_cargo_json() {
        let line = r#"{"reason":"compiler-artifact","target":{"name":"svmm"},"executable":"/t/a\"b/svmm","fresh":true}"#;
        assert_eq!(executable_of(line), Some(PathBuf::from("/t/a\"b/svmm")));
        assert_eq!(executable_of(r#"{"executable":null}"#), None);
    }
}
