//! Which VMM runs a test guest: svmm, or QEMU for comparison.

/// Which VMM runs the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// svmm, the binary under test ([`crate::binary::svmm_bin`]).
    Svmm,
    /// `qemu-system-x86_64` with KVM, for comparison. `machine` is the `-M` value, normally
    /// `microvm` (`microvm,acpi=off` makes QEMU list its virtio-mmio devices on the command line).
    Qemu {
        /// The `-M` argument.
        machine: String,
    },
}

impl Backend {
    /// The guest status encoded in the VMM's exit code, if the exit came from the guest's exit port
    /// (or, for svmm, a poweroff, reported as 0).
    ///
    /// svmm passes a status 0..=63 through unchanged (`vmm/src/exit_code.rs`); QEMU's
    /// `isa-debug-exit` exits with `(status << 1) | 1`, so an even code is not a guest exit.
    pub fn guest_status(&self, exit_code: Option<i32>) -> Option<i32> {
        let code = exit_code?;
        match self {
            Backend::Svmm => (0..=63).contains(&code).then_some(code),
            Backend::Qemu { .. } => (code & 1 == 1).then_some(code >> 1),
        }
    }

    /// A short name for reports.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Svmm => "svmm",
            Backend::Qemu { .. } => "qemu",
        }
    }
}
