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
];

/// The kind called `name` on the command line.
pub fn find(name: &str) -> Option<&'static dyn DeviceKind> {
    KINDS.iter().copied().find(|kind| kind.name() == name)
}

/// The kinds' names, comma-separated, in registry order (for messages).
pub fn names() -> String {
    let names: Vec<&str> = KINDS.iter().map(|kind| kind.name()).collect();
    names.join(", ")
}

#[cfg(test)]
mod tests;
