//! The hostile worker's tap probe (cargo feature `test-faults` only, svmm's `fault=host`):
//! what a compromised net worker would try against the host's interface with the fds and the
//! system calls it still has, so that a test can check that the user's tap survives it.
//!
//! [`run`] tries, on the first endpoint's fd, printing one line per attempt on stderr:
//!
//! 1. `TUNSETOFFLOAD` with a bit no kernel knows: the filter lets the request through (its
//!    argument is the kernel's to judge) and the kernel refuses it;
//! 2. `TUNSETPERSIST` 0, which would make the user's persistent tap vanish with svmm's last
//!    fd: outside the filter, so the worker dies of `SIGSYS` there.
//!
//! The probe runs once, on the first queue notification after an activation, before the
//! device serves anything.

use std::io::{self, Write};
use std::os::fd::RawFd;

use super::sys;

/// An offload bit above every `TUN_F_*` the kernel defines.
const UNKNOWN_OFFLOAD: u32 = 1 << 31;

/// Runs the attempts on `fd` (an endpoint's, open for the device's lifetime). Returns only if
/// the filter let the last one through.
pub(crate) fn run(fd: RawFd) {
    report(
        "TUNSETOFFLOAD with an unknown offload bit",
        sys::ioctl_int(fd, sys::TUNSETOFFLOAD, UNKNOWN_OFFLOAD.into()),
    );
    report(
        "TUNSETPERSIST 0 (the tap would go with svmm's last fd)",
        sys::ioctl_int(fd, sys::TUNSETPERSIST, 0),
    );
}

fn report(what: &str, result: io::Result<()>) {
    let outcome = match result {
        Ok(()) => "done".to_string(),
        Err(e) => format!("refused: {e}"),
    };
    let _ = writeln!(io::stderr(), "svmm worker: net probe: {what}: {outcome}");
}
