//! svmm's process exit status: the one place that defines it.
//!
//! | code   | meaning                                                                    |
//! |--------|----------------------------------------------------------------------------|
//! | 0      | the guest powered off (ACPI S5), or the test guest reported status 0        |
//! | 1–63   | status the test guest wrote to the exit port ([`crate::layout::EXIT_PORT`]) |
//! | 64     | bad command line                                                            |
//! | 65     | bad input file: kernel or initrd missing, unreadable or not a kernel; a     |
//! |        | host resource a `--device` names (a disk image) missing, unreadable, of the |
//! |        | wrong type, or refused by its kind (an image size that is not whole sectors)|
//! | 66     | KVM unavailable: `/dev/kvm` missing or not permitted                         |
//! | 67     | the VM could not be set up (KVM, host resource, a disk image another process |
//! |        | holds locked, or a device worker that could not start, e.g. a kernel        |
//! |        | without Landlock)                                                           |
//! | 68     | the guest crashed: triple fault, KVM internal error, unexpected exit         |
//! | 69     | the guest asked for a reboot (i8042 reset); svmm does not reboot, it ends    |
//! | 70     | internal error in svmm                                                       |
//! | 71     | a device worker died or misbehaved, and `--on-worker-exit=stop` was given    |
//!
//! A test-guest status above 63 is reported as 63 so it can never be mistaken for one of svmm's
//! own codes.

/// Exit status values of the `svmm` process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    /// The guest powered off.
    PowerOff = 0,
    /// Bad command line.
    Usage = 64,
    /// Bad kernel, initrd or disk image file.
    BadInput = 65,
    /// `/dev/kvm` missing or not permitted.
    KvmUnavailable = 66,
    /// VM set-up failed.
    SetupFailed = 67,
    /// The guest crashed.
    GuestCrashed = 68,
    /// The guest asked for a reboot.
    GuestReboot = 69,
    /// Internal error.
    Internal = 70,
    /// A device worker failed and `--on-worker-exit=stop` was given.
    DeviceFailed = 71,
}

/// Largest test-guest status passed through unchanged.
pub const MAX_GUEST_STATUS: u32 = 63;

/// Maps a status written by the test guest to svmm's exit code (0..=63).
pub fn guest_status(status: u32) -> u8 {
    // Cannot truncate: the value is at most MAX_GUEST_STATUS (63).
    status.min(MAX_GUEST_STATUS) as u8
}
