//! Test builds (`test-faults`): `--test-gate-probe` reports, from the kernel's own view, whether
//! the main thread was confined when the vCPU gate opened and when each vCPU passed it.
//!
//! The order it checks is `vm::run`'s: the main thread installs the `vmm` filter on itself, then
//! opens the gate ([`crate::vcpu::Vcpus::release`]) that holds every vCPU before its first
//! `KVM_RUN`. Each probe is the main thread's `/proc/self/task/PID/status`, opened while the
//! opener may still open files (the main thread, before it confines itself) and left unread: the
//! first `read` makes procfs write the file at that instant, so its `Seccomp:` field is the main
//! thread's mode when the probe is read, not when it was opened. Only `read` and `close` run
//! after the filter, both in the `vmm` profile.
//!
//! - The gate's probe is read by `release` itself, in the thread that opens the gate, before the
//!   gate opens: if the main thread ever opened the gate before confining itself, this reads
//!   `Seccomp: 0` every time — no race decides it.
//! - Each vCPU's probe is read after the thread passed the gate, right before its first
//!   `KVM_RUN` (the guest's first instruction).
//!
//! Each probe prints one line on stderr, `svmm: test-gate-probe: gate opened, main thread
//! Seccomp N` and `svmm: test-gate-probe: vcpuI passed the gate, main thread Seccomp N`;
//! `tests/tests/devices.rs` reads them.

use std::fs::File;
use std::io::{self, Read};

/// The main thread's status file, opened now and not yet read.
pub fn open() -> io::Result<File> {
    // The main thread's tid is the process id.
    File::open(format!("/proc/self/task/{}/status", std::process::id()))
}

/// Reads `probe` (once) and prints its line: `what`, then the main thread's seccomp mode.
pub fn report(mut probe: File, what: &str) {
    let mode = match read_all(&mut probe) {
        Ok(status) => seccomp_field(&String::from_utf8_lossy(&status))
            .unwrap_or("missing")
            .to_string(),
        Err(e) => format!("unreadable ({e})"),
    };
    eprintln!("svmm: test-gate-probe: {what}, main thread Seccomp {mode}");
}

/// The whole file by plain `read`s (`read_to_end` would `statx` it first, which the `vmm`
/// profile does not allow).
fn read_all(file: &mut File) -> io::Result<Vec<u8>> {
    let mut all = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match file.read(&mut chunk)? {
            0 => return Ok(all),
            n => all.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The value of the `Seccomp:` line of a `/proc/PID/status` text.
fn seccomp_field(status: &str) -> Option<&str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_seccomp_line_not_its_neighbours() {
        let status = "Name:\tsvmm\nSeccomp:\t2\nSeccomp_filters:\t1\n";
        assert_eq!(seccomp_field(status), Some("2"));
        assert_eq!(seccomp_field("Name:\tx\n"), None);
    }

    #[test]
    fn an_unfiltered_test_thread_reads_mode_zero() {
        // The unit test's main thread has no filter.
        let status = read_all(&mut open().unwrap()).unwrap();
        assert_eq!(seccomp_field(&String::from_utf8_lossy(&status)), Some("0"));
    }
}
