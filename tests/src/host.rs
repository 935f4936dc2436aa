//! What this host offers the tests: `/dev/kvm`, hardware virtualisation, QEMU.
//!
//! A missing `/dev/kvm` is a failure, never a skip: tests that boot guests must not pass on a host
//! where nothing was booted. Hardware virtualisation decides only whether Linux user space can run
//! (GUEST.md: under PVM it cannot), and trials that need it are reported as ignored with the reason.

use std::fs::OpenOptions;
use std::path::PathBuf;

/// Whether the CPU advertises hardware virtualisation (`vmx` or `svm` in `/proc/cpuinfo`).
///
/// False under PVM (software nested virtualisation), where `/dev/kvm` works but guest ring 0 is
/// emulated and an unmodified Linux cannot run user space.
pub fn has_hw_virt() -> bool {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .flat_map(|l| l.split_whitespace())
        .any(|flag| flag == "vmx" || flag == "svm")
}

/// The reason trials needing hardware virtualisation are ignored here, or `None` if they can run.
pub fn no_hw_virt_reason() -> Option<String> {
    (!has_hw_virt()).then(|| {
        "no vmx/svm in /proc/cpuinfo: KVM here is software (PVM) and an unmodified Linux cannot \
         run user space (GUEST.md); needs a host with hardware virtualisation"
            .to_string()
    })
}

/// Checks that `/dev/kvm` exists and can be opened read-write.
///
/// # Panics
/// Always, loudly, when it cannot: every guest-booting test calls this first so that a host
/// without KVM fails the suite instead of silently passing it.
pub fn require_kvm() {
    if let Err(e) = OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        panic!(
            "\n\n*** /dev/kvm is not usable: {e} ***\n\
             These tests boot real guests and need KVM. Load the kvm module (kvm_intel/kvm_amd),\n\
             and run as a user in the `kvm` group (or root). Tests never pass without KVM.\n"
        );
    }
}

/// `qemu-system-x86_64` from `QEMU_BIN` or `PATH`, if installed.
pub fn qemu_bin() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("QEMU_BIN") {
        return Some(PathBuf::from(bin));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("qemu-system-x86_64"))
        .find(|p| p.is_file())
}
