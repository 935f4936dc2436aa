//! A started VM: its pid, its output as it arrives, its console input, and its end.
//!
//! stdout and stderr are drained by one reader thread each into shared buffers, so the VMM never
//! blocks on a full pipe and callers can wait for a line while it runs. The VMM is killed and
//! reaped at the deadline and whenever a [`RunningVm`] is dropped: no test leaves a VMM behind.
//! Set `SVMM_TEST_VERBOSE=1` to mirror the VMM's output on stderr as it arrives.

use std::io::{self, Read, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crate::backend::Backend;
use crate::output::{VmError, VmOutput};

/// How often a waiting caller checks whether the VMM has exited.
const POLL: Duration = Duration::from_millis(5);
/// How long to wait for the pipes to reach end-of-file after the VMM exited (a leaked
/// grandchild could keep them open; we then report what we have).
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Bytes read so far from one of the VMM's output pipes.
#[derive(Default)]
struct Stream {
    bytes: Vec<u8>,
    eof: bool,
}

/// A [`Stream`] shared between its reader thread and waiting callers.
#[derive(Default)]
struct Capture {
    stream: Mutex<Stream>,
    changed: Condvar,
}

impl Capture {
    fn lock(&self) -> MutexGuard<'_, Stream> {
        // A reader thread cannot panic while holding the lock; recover the data if one did.
        self.stream.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.lock().bytes).into_owned()
    }

    /// Starts a thread copying `pipe` into a new capture until end-of-file.
    fn start(mut pipe: impl Read + Send + 'static, label: &'static str) -> Arc<Capture> {
        let capture = Arc::new(Capture::default());
        let shared = Arc::clone(&capture);
        let verbose = std::env::var_os("SVMM_TEST_VERBOSE").is_some_and(|v| v != "0");
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Mirrored output is printed a whole line at a time (serial consoles write byte-wise).
            let mut mirror = Vec::new();
            loop {
                let n = match pipe.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if verbose {
                    mirror.extend_from_slice(&buf[..n]);
                    while let Some(end) = mirror.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = mirror.drain(..=end).collect();
                        eprint!("[{label}] {}", String::from_utf8_lossy(&line));
                    }
                }
                shared.lock().bytes.extend_from_slice(&buf[..n]);
                shared.changed.notify_all();
            }
            if !mirror.is_empty() {
                eprintln!("[{label}] {}", String::from_utf8_lossy(&mirror));
            }
            shared.lock().eof = true;
            shared.changed.notify_all();
        });
        capture
    }

    /// Waits until end-of-file or `deadline`, whichever comes first.
    fn wait_eof(&self, deadline: Instant) {
        let mut s = self.lock();
        while !s.eof {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return;
            };
            s = self
                .changed
                .wait_timeout(s, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// A VM that has been started and not yet waited for.
pub struct RunningVm {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Arc<Capture>,
    stderr: Arc<Capture>,
    backend: Backend,
    command: String,
    started: Instant,
    deadline: Instant,
    finished: bool,
}

impl RunningVm {
    /// Spawns `cmd` (a test VM's command line for `backend`) with all three standard streams
    /// piped; it is killed once `timeout` has passed.
    pub(crate) fn start(
        mut cmd: std::process::Command,
        backend: Backend,
        timeout: Duration,
    ) -> Result<RunningVm, VmError> {
        let command = format!("{cmd:?}");
        let started = Instant::now();
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| VmError::Spawn {
                command: command.clone(),
                source,
            })?;
        let stdout = Capture::start(child.stdout.take().expect("stdout is piped"), "out");
        let stderr = Capture::start(child.stderr.take().expect("stderr is piped"), "err");
        Ok(RunningVm {
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
            backend,
            command,
            started,
            deadline: started + timeout,
            finished: false,
        })
    }

    /// The VMM's process id (e.g. to inspect `/proc/<pid>` or its workers while the guest runs).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Time left before the VM is killed for running too long.
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// The guest console output so far.
    pub fn stdout_so_far(&self) -> String {
        self.stdout.text()
    }

    /// The VMM's stderr so far.
    pub fn stderr_so_far(&self) -> String {
        self.stderr.text()
    }

    /// Waits up to `timeout` for a console line starting with `prefix` (a line still being written
    /// counts once the prefix is complete) and returns the whole line as seen then.
    ///
    /// Fails with [`VmError::LineNotSeen`] at the timeout or when the output ends without it.
    pub fn wait_for_line(&self, prefix: &str, timeout: Duration) -> Result<String, VmError> {
        self.wait_for(prefix, timeout, |line, _| line.starts_with(prefix))
    }

    /// Like [`wait_for_line`](Self::wait_for_line), for a whole line (its newline written) that
    /// contains `needle` anywhere (a kernel log line after its timestamp).
    pub fn wait_for_text(&self, needle: &str, timeout: Duration) -> Result<String, VmError> {
        self.wait_for(needle, timeout, |line, complete| {
            complete && line.contains(needle)
        })
    }

    /// Waits up to `timeout` for a console line that `wanted(line, complete)` accepts
    /// (`complete`: its newline was written); `what` names it in the error.
    fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        wanted: impl Fn(&str, bool) -> bool,
    ) -> Result<String, VmError> {
        let deadline = Instant::now() + timeout;
        let mut s = self.stdout.lock();
        loop {
            let text = String::from_utf8_lossy(&s.bytes);
            let found = text.split_inclusive('\n').find_map(|l| {
                let complete = l.ends_with('\n');
                let line = l.trim_end_matches('\n').trim_end_matches('\r');
                wanted(line, complete).then_some(line)
            });
            if let Some(line) = found {
                return Ok(line.to_string());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if s.eof || left.is_zero() {
                let (eof, seen) = (s.eof, text.into_owned());
                drop(s);
                return Err(VmError::LineNotSeen {
                    prefix: what.to_string(),
                    waited: timeout,
                    ended: eof,
                    stdout: seen,
                    stderr: self.stderr.text(),
                });
            }
            s = self
                .stdout
                .changed
                .wait_timeout(s, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Writes `bytes` to the guest console (the VMM's stdin).
    pub fn write_stdin(&mut self, bytes: &[u8]) -> io::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "stdin already closed"))?;
        stdin.write_all(bytes)?;
        stdin.flush()
    }

    /// Closes the VMM's stdin (the guest console sees end-of-input, if the VMM passes that on).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Kills the VMM (SIGKILL) and reaps it; the output so far stays readable.
    pub fn kill(&mut self) {
        if !self.finished {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.finished = true;
        }
    }

    /// Waits for the VMM to exit. At the deadline it is killed and [`VmError::Timeout`] returned
    /// with everything it printed; otherwise the output, whatever the exit status.
    pub fn wait(mut self) -> Result<VmOutput, VmError> {
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() >= self.deadline => break None,
                Ok(None) => thread::sleep(POLL),
                Err(e) => panic!("waiting for {} failed: {e}", self.command),
            }
        };
        let elapsed = self.started.elapsed();
        let timed_out = status.is_none();
        self.kill();
        self.stdin = None;
        let grace = Instant::now() + DRAIN_GRACE;
        self.stdout.wait_eof(grace);
        self.stderr.wait_eof(grace);
        let output = VmOutput::new(
            self.backend.clone(),
            self.command.clone(),
            status,
            self.stdout.text(),
            self.stderr.text(),
            elapsed,
            timed_out,
        );
        if timed_out {
            Err(VmError::Timeout(Box::new(output)))
        } else {
            Ok(output)
        }
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        self.kill();
    }
}
