//! The device kinds this build knows: svmm's one registry, one line per kind.
//!
//! Everything about a kind is declared in its own folder (`devices/src/<kind>/kind.rs`, the
//! `devices::Kind` trait); the command line, `--help`, device set-up, the worker entry,
//! in-process threads and `--print-sandbox` iterate this list and never match on a kind.
//! Adding a kind = one folder under `devices/src/`, one seccomp profile, one line here, its
//! tests (ARCHITECTURE.md, "How to add a device kind").

use devices::DeviceKind;

/// Every kind, in the order `--help` and errors list them.
pub static KINDS: &[&dyn DeviceKind] = &[
    &devices::rng::RngKind, // virtio-rng
    &devices::blk::BlkKind, // virtio-blk
    &devices::fs::FsKind,   // virtio-fs
    &devices::net::NetKind, // virtio-net
    &devices::wl::WlKind,   // virtio-wl (Wayland)
];

/// The kind called `name` on the command line.
pub fn find(name: &str) -> Option<&'static dyn DeviceKind> {
    KINDS.iter().copied().find(|kind| kind.name() == name)
}

/// `svmm __test-specs DIR` (builds with the `test-faults` feature): how the integration tests
/// reach every kind of the registry.
#[cfg(feature = "test-faults")]
pub const TEST_SPECS_ARG: &str = "__test-specs";

/// Prints, for every kind of the registry in order, one line `NAME SPEC`: a `--device` spec
/// that works on this host (`devices::Kind::test_spec`), its fixtures (an image, a directory)
/// created under `dir`. So the integration tests check every kind — a new one included —
/// without a list of their own. Returns the exit status: 0, or 64 with one line on stderr.
#[cfg(feature = "test-faults")]
pub fn print_test_specs(dir: Option<std::path::PathBuf>) -> u8 {
    let Some(dir) = dir else {
        eprintln!("svmm: usage: svmm {TEST_SPECS_ARG} DIR");
        return 64;
    };
    for kind in KINDS {
        match kind.test_spec(&dir) {
            Ok(spec) => println!("{} {spec}", kind.name()),
            Err(e) => {
                eprintln!(
                    "svmm: {}: cannot make its test fixtures in {}: {e}",
                    kind.name(),
                    dir.display()
                );
                return 64;
            }
        }
    }
    0
}

/// The kinds' names, comma-separated, in registry order (for messages).
pub fn names() -> String {
    let names: Vec<&str> = KINDS.iter().map(|kind| kind.name()).collect();
    names.join(", ")
}

#[cfg(test)]
mod tests;
