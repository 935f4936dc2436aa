//! What a finished VM left behind ([`VmOutput`]), assertions on it, and the harness's errors
//! ([`VmError`]). Every failure message carries the command, the exit status, the VMM's stderr
//! and the last [`TAIL_LINES`] console lines, so a red test explains itself.

use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use crate::backend::Backend;

/// Console lines quoted in failure messages.
pub const TAIL_LINES: usize = 40;

/// The result of one VM run.
#[derive(Clone, Debug)]
pub struct VmOutput {
    /// Which VMM ran the guest.
    pub backend: Backend,
    /// The command that was run, for messages.
    pub command: String,
    /// The VMM's exit code, if it exited normally.
    pub status: Option<i32>,
    /// The signal that ended the VMM, if one did (SIGKILL after a timeout).
    pub signal: Option<i32>,
    /// The guest's console output (the VMM's stdout), lossily decoded.
    pub stdout: String,
    /// The VMM's own messages (its stderr).
    pub stderr: String,
    /// Time from spawn to exit (or to the kill).
    pub elapsed: Duration,
    /// Whether the run was killed at its timeout.
    pub timed_out: bool,
}

impl VmOutput {
    pub(crate) fn new(
        backend: Backend,
        command: String,
        status: Option<ExitStatus>,
        stdout: String,
        stderr: String,
        elapsed: Duration,
        timed_out: bool,
    ) -> VmOutput {
        VmOutput {
            backend,
            command,
            status: status.and_then(|s| s.code()),
            signal: status.and_then(|s| s.signal()),
            stdout,
            stderr,
            elapsed,
            timed_out,
        }
    }

    /// The guest status decoded from the exit code ([`Backend::guest_status`]).
    pub fn guest_status(&self) -> Option<i32> {
        self.backend.guest_status(self.status)
    }

    /// Console lines, without trailing `\r`.
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.stdout.lines().map(|l| l.trim_end_matches('\r'))
    }

    /// Console lines starting with `prefix`.
    pub fn lines_with(&self, prefix: &str) -> Vec<&str> {
        self.lines().filter(|l| l.starts_with(prefix)).collect()
    }

    /// Console lines containing `needle` anywhere (kernel log lines start with a timestamp).
    pub fn lines_containing(&self, needle: &str) -> Vec<&str> {
        self.lines().filter(|l| l.contains(needle)).collect()
    }

    /// The first console line starting with `prefix`.
    ///
    /// # Panics
    /// If there is none, with [`Self::report`].
    pub fn assert_line(&self, prefix: &str) -> &str {
        self.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no console line starts with {prefix:?}\n{}", self.report()))
    }

    /// The first console line containing `needle`.
    ///
    /// # Panics
    /// If there is none, with [`Self::report`].
    pub fn assert_contains(&self, needle: &str) -> &str {
        self.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no console line contains {needle:?}\n{}", self.report()))
    }

    /// svmm's one stderr line about its worker `pid` that ended: it names `device` and `cause`
    /// (e.g. `SIGKILL`).
    ///
    /// # Panics
    /// If no stderr line names the pid, or that line lacks either, with [`Self::report`].
    pub fn assert_worker_report(&self, pid: u32, device: &str, cause: &str) -> &str {
        let pid = pid.to_string();
        let line = self.stderr.lines().find(|l| l.contains(&pid));
        match line {
            Some(line) if line.contains(device) && line.contains(cause) => line,
            _ => panic!(
                "no one-line report naming {device}, pid {pid} and {cause}\n{}",
                self.report()
            ),
        }
    }

    /// svmm's stderr lines about the end of `device`'s worker (`svmm: DEVICE worker (pid
    /// ...`), in order: one per worker that died.
    pub fn worker_deaths(&self, device: &str) -> Vec<&str> {
        let prefix = format!("svmm: {device} worker (pid ");
        self.stderr
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .collect()
    }

    /// svmm's one stderr line about the end of `device`'s worker.
    ///
    /// # Panics
    /// Unless there is exactly one, with [`Self::report`].
    pub fn assert_one_worker_death(&self, device: &str) -> &str {
        match self.worker_deaths(device)[..] {
            [line] => line,
            _ => panic!(
                "want exactly one line about the death of {device}'s worker\n{}",
                self.report()
            ),
        }
    }

    /// Asserts that the VMM exited (not killed, not timed out) with exit code `code`.
    pub fn assert_status(&self, code: i32) {
        assert_eq!(
            self.status,
            Some(code),
            "unexpected exit status\n{}",
            self.report()
        );
    }

    /// Asserts that the VMM did not panic (no Rust panic message on its stderr).
    pub fn assert_no_panic(&self) {
        assert!(
            !self.stderr.contains("panicked"),
            "the VMM panicked\n{}",
            self.report()
        );
    }

    /// `(pass, fail)` from the test guest's last `testguest: done pass=N fail=M` line.
    pub fn testguest_summary(&self) -> Option<(u32, u32)> {
        let line = self.lines_with("testguest: done ").pop()?;
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|v| v.parse().ok())
        };
        Some((field("pass=")?, field("fail=")?))
    }

    /// The last `n` console lines.
    pub fn tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// A multi-line account of the run for failure messages: command, outcome, stderr, console tail.
    pub fn report(&self) -> String {
        format!(
            "--- command: {}\n--- outcome: {}\n--- stderr:\n{}\n--- last {TAIL_LINES} console lines:\n{}\n---",
            self.command,
            self.outcome(),
            self.stderr.trim_end(),
            self.tail(TAIL_LINES)
        )
    }

    /// One line: how the VMM ended and after how long.
    pub fn outcome(&self) -> String {
        let how = match (self.timed_out, self.status, self.signal) {
            (true, ..) => "killed at the timeout".to_string(),
            (false, Some(c), _) => format!("exit code {c}"),
            (false, None, Some(s)) => format!("killed by signal {s}"),
            (false, None, None) => "unknown end".to_string(),
        };
        format!(
            "{} {how} after {:.2} s",
            self.backend.name(),
            self.elapsed.as_secs_f64()
        )
    }

    /// Prints `label: outcome` to stderr (per-trial timings in the test log).
    pub fn log(&self, label: &str) {
        eprintln!("    {label}: {}", self.outcome());
    }
}

/// Why a VM run could not produce a judgeable result.
#[derive(Debug)]
pub enum VmError {
    /// The VMM could not be started at all.
    Spawn {
        /// The command.
        command: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The VM ran past its timeout and was killed; the output so far is attached.
    Timeout(Box<VmOutput>),
    /// [`crate::RunningVm::wait_for_line`] did not see the line.
    LineNotSeen {
        /// The prefix waited for.
        prefix: String,
        /// How long it waited.
        waited: Duration,
        /// Whether the output had ended (the VMM closed stdout) before the timeout.
        ended: bool,
        /// Console output so far.
        stdout: String,
        /// VMM stderr so far.
        stderr: String,
    },
}

impl VmError {
    /// The output of a timed-out run.
    pub fn output(&self) -> Option<&VmOutput> {
        match self {
            VmError::Timeout(out) => Some(out),
            _ => None,
        }
    }
}

impl fmt::Display for VmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmError::Spawn { command, source } => write!(f, "cannot start {command}: {source}"),
            VmError::Timeout(out) => write!(f, "VM timed out\n{}", out.report()),
            VmError::LineNotSeen {
                prefix,
                waited,
                ended,
                stdout,
                stderr,
            } => {
                let why = if *ended { "output ended" } else { "timed out" };
                let lines: Vec<&str> = stdout.lines().collect();
                let tail = lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n");
                write!(
                    f,
                    "no line starting with {prefix:?} ({why}, waited up to {:.1} s)\n\
                     --- stderr:\n{}\n--- last {TAIL_LINES} console lines:\n{tail}\n---",
                    waited.as_secs_f64(),
                    stderr.trim_end()
                )
            }
        }
    }
}

impl std::error::Error for VmError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            VmError::Spawn { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The number after ` NAME=` in `line` (a guest result or an svmm statistics line), its
/// leading digits only: `number_field("q0 requests=12, q1 ...", "requests") == Some(12)`.
pub fn number_field(line: &str, name: &str) -> Option<u64> {
    let rest = line.split(&format!(" {name}=")).nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// One queue's counters on an svmm statistics line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueCounters {
    /// Chains completed.
    pub requests: u64,
    /// Payload bytes moved.
    pub bytes: u64,
    /// Requests the driver got wrong (malformed chain or request).
    pub errors: u64,
    /// Well-formed requests the device let go (net: frames lost without the driver's fault).
    pub drops: u64,
}

/// The statistics line svmm printed on `stderr` for `device` (`blk#0`) at VM end.
pub fn stats_line<'a>(stderr: &'a str, device: &str) -> Option<&'a str> {
    let prefix = format!("svmm: {device} (");
    stderr.lines().find(|l| l.starts_with(&prefix))
}

/// Every queue of an svmm statistics line, in queue order: `svmm: blk#0 (sandboxed): q0
/// requests=12 bytes=4096 errors=0 drops=0, q1 requests=3 bytes=1024 errors=0 drops=0;
/// restarts=0`. `None` unless each queue, numbered 0, 1, ... in order, has all four counters — so a check over the
/// result cannot miss a queue the way [`number_field`] (the first match only) would.
pub fn queue_counters(line: &str) -> Option<Vec<QueueCounters>> {
    let (_, queues) = line.split_once("): ")?;
    let queues = queues.split("; ").next()?;
    let mut out = Vec::new();
    for (index, part) in queues.split(", ").enumerate() {
        let rest = part.strip_prefix(&format!("q{index} "))?;
        let field = |name: &str| number_field(&format!(" {rest}"), name);
        out.push(QueueCounters {
            requests: field("requests")?,
            bytes: field("bytes")?,
            errors: field("errors")?,
            drops: field("drops")?,
        });
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_queue_of_a_statistics_line_is_read() {
        let line = "svmm: blk#0 (sandboxed): q0 requests=12 bytes=4096 errors=0 drops=0, q1 \
                    requests=3 bytes=1024 errors=2 drops=5; restarts=1";
        let queues = queue_counters(line).unwrap();
        assert_eq!(queues.len(), 2);
        assert_eq!(
            queues[1],
            QueueCounters {
                requests: 3,
                bytes: 1024,
                errors: 2,
                drops: 5
            }
        );
        // An error on the second queue is seen; number_field sees the first queue only.
        assert_eq!(number_field(line, "errors"), Some(0));
        assert!(queues.iter().any(|q| q.errors > 0));
        assert_eq!(
            queue_counters("svmm: rng#0 (in-process): no requests"),
            None
        );
        assert_eq!(
            queue_counters(
                "svmm: x#0 (sandboxed): q0 requests=1 bytes=1 drops=0, q1 requests=1 bytes=1 \
                 errors=0 drops=0"
            ),
            None,
            "a queue without its errors field"
        );
        assert_eq!(
            queue_counters("svmm: x#0 (sandboxed): q0 requests=1 bytes=1 errors=0"),
            None,
            "a queue without its drops field"
        );
        assert_eq!(
            queue_counters("svmm: x#0 (sandboxed): q1 requests=1 bytes=1 errors=0 drops=0"),
            None,
            "queues out of order"
        );
        let stderr = "svmm: rng#0 worker (pid 1) killed by SIGKILL\nsvmm: rng#0 (sandboxed): q0 \
                      requests=1 bytes=64 errors=0 drops=0; restarts=1\n";
        assert!(stats_line(stderr, "rng#0").unwrap().ends_with("restarts=1"));
        assert_eq!(stats_line(stderr, "rng#1"), None);
    }

    #[test]
    fn number_field_takes_the_leading_digits_after_the_key() {
        let line = "svmm: blk#0 (sandboxed): q0 requests=12, q1 requests=3 errors=0";
        assert_eq!(number_field(line, "requests"), Some(12));
        assert_eq!(number_field(line, "errors"), Some(0));
        assert_eq!(number_field(line, "bytes"), None);
        assert_eq!(number_field("testguest: x ok irqs=", "irqs"), None);
    }

    fn output(stdout: &str, backend: Backend, status: i32) -> VmOutput {
        VmOutput {
            backend,
            command: "x".into(),
            status: Some(status),
            signal: None,
            stdout: stdout.into(),
            stderr: String::new(),
            elapsed: Duration::ZERO,
            timed_out: false,
        }
    }

    #[test]
    fn summary_and_lines() {
        let o = output(
            "testguest: a ok\r\ntestguest: done pass=2 fail=1\r\n",
            Backend::Svmm,
            1,
        );
        assert_eq!(o.testguest_summary(), Some((2, 1)));
        assert_eq!(o.lines_with("testguest: a"), vec!["testguest: a ok"]);
        assert_eq!(o.guest_status(), Some(1));
        assert_eq!(o.tail(1), "testguest: done pass=2 fail=1");
    }

    #[test]
    fn worker_death_lines() {
        let mut o = output("", Backend::Svmm, 0);
        o.stderr = "svmm: rng#0 worker: relayed\n\
                    svmm: rng#0 worker (pid 41) killed by SIGKILL; restart 1 (pid 42)\n\
                    svmm: rng#1 worker (pid 43) exited with status 0\n"
            .into();
        assert_eq!(
            o.assert_one_worker_death("rng#0"),
            "svmm: rng#0 worker (pid 41) killed by SIGKILL; restart 1 (pid 42)"
        );
        assert_eq!(o.worker_deaths("rng#1").len(), 1);
        assert!(o.worker_deaths("rng#2").is_empty());
        assert!(o
            .assert_worker_report(41, "rng#0", "SIGKILL")
            .ends_with("(pid 42)"));
        o.stderr += "svmm: rng#0 worker (pid 42) killed by SIGKILL\n";
        let twice = std::panic::catch_unwind(|| o.assert_one_worker_death("rng#0").len());
        assert!(twice.is_err(), "two deaths are not one");
    }

    #[test]
    fn qemu_exit_codes_decode() {
        let qemu = Backend::Qemu {
            machine: "microvm".into(),
        };
        assert_eq!(output("", qemu.clone(), 1).guest_status(), Some(0));
        assert_eq!(output("", qemu.clone(), 11).guest_status(), Some(5));
        assert_eq!(output("", qemu, 0).guest_status(), None);
        assert_eq!(output("", Backend::Svmm, 64).guest_status(), None);
    }
}
