//! The broker process as svmm sees it: forked with one declared device (the test worker in
//! `hold` mode), it starts and stops that device's worker on request and refuses — answering
//! `Refused` and logging a line on its stderr — every request about anything else. It answers
//! a `Start` before the worker's exec: two devices' starts are in flight at once, and an exec
//! that fails is reported (`Failed`, then `Exited`) after the `Started`.
//!
//! `harness = false`: the broker is forked, which needs a single-threaded process.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use broker::{BrokerProcess, BrokerSetup, ConfineConfig, Declared, IdChoice, IdRange};
use ipc::{BrokerReply, BrokerRequest, Channel, WorkerStatus};
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

const HELPER: &str = env!("CARGO_BIN_EXE_broker-test-worker");

fn main() {
    let tests: [(&str, fn()); 3] = [
        (
            "broker_serves_its_declared_device_only",
            broker_serves_its_declared_device_only,
        ),
        ("two_starts_in_flight", two_starts_in_flight),
        (
            "failed_exec_is_reported_after_started",
            failed_exec_is_reported_after_started,
        ),
    ];
    for (name, test) in tests {
        print!("test {name} ... ");
        let _ = std::io::stdout().flush();
        test();
        println!("ok");
    }
    println!("broker process tests: {} passed", tests.len());
}

/// The test worker's ids and argv (`hold` mode: says "confined", then waits).
fn hold_worker(index: u32) -> (IdChoice, Vec<CString>) {
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let ids = match root {
        true => IdRange::DEFAULT.ids(index).unwrap(),
        false => IdChoice::Unprivileged,
    };
    let cfg = ConfineConfig::new(ids.worker_ids(), 1, Vec::new());
    let mut argv = vec![CString::new("broker-test-worker").unwrap()];
    argv.extend(cfg.to_args());
    argv.push(CString::new("hold").unwrap());
    (ids, argv)
}

fn declared(index: u32) -> Declared {
    let (ids, argv) = hold_worker(index);
    Declared {
        name: format!("test#{index}"),
        index,
        argv,
        ids,
        guest_fds: 0,
        fresh_eventfd_at: None,
        resources: Vec::new(),
        trailing_fds: 0,
    }
}

fn path_fd(path: &str) -> OwnedFd {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path)
        .unwrap()
        .into()
}

/// Forks a broker for `devices` that execs `exe` (its log lines on the test's stderr).
fn quiet_broker(exe: OwnedFd, devices: Vec<Declared>) -> BrokerProcess {
    broker::server::fork(BrokerSetup {
        exe,
        devices,
        seccomp: allow_all(),
        drop_to: None,
        subids: None,
    })
    .expect("fork the broker")
}

/// svmm hangs up: the broker ends with status 0.
fn hang_up(process: BrokerProcess) {
    drop(process.channels);
    let mut status = 0;
    // SAFETY: waits for our own child into a live int.
    let reaped = unsafe { libc::waitpid(process.pid, &mut status, 0) };
    assert_eq!(reaped, process.pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{status:#x}"
    );
}

/// Waits up to 5 s for `fd` to become readable; panics with `silence` if it does not.
fn wait_readable(fd: &impl AsRawFd, silence: &str) {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd of an open fd.
    let ready = unsafe { libc::poll(&mut pfd, 1, 5000) };
    assert_eq!(ready, 1, "{silence}");
}

/// The worker's first word on its control channel (5 s at most); the channel stays open.
fn first_word(control: &OwnedFd) -> Vec<u8> {
    wait_readable(control, "the worker said nothing");
    let mut control = std::fs::File::from(control.try_clone().expect("dup the control channel"));
    let mut buf = [0u8; 64];
    let n = control.read(&mut buf).unwrap();
    buf[..n].to_vec()
}

/// Both devices' `Start`s are sent before either answer is read: both are answered, and
/// both workers run.
fn two_starts_in_flight() {
    let process = quiet_broker(path_fd(HELPER), vec![declared(0), declared(1)]);
    for (index, channel) in (0..).zip(&process.channels) {
        channel
            .send(&BrokerRequest::Start { device: index }, &[])
            .unwrap();
    }
    let mut pids = Vec::new();
    for (index, channel) in (0..).zip(&process.channels) {
        let (started, fds) = reply(channel);
        let BrokerReply::Started { device, pid } = started else {
            panic!("want Started, got {started:?}");
        };
        assert_eq!(device, index);
        let control = fds.into_iter().next().expect("the control channel");
        assert!(first_word(&control).starts_with(b"confined"));
        pids.push(pid);
    }
    assert_ne!(pids[0], pids[1]);
    hang_up(process);
}

/// A worker whose exec fails (its executable is no program): the broker has answered
/// `Started` already; then it reports `Failed` with the stage, then `Exited` (status 127).
fn failed_exec_is_reported_after_started() {
    let path = std::env::temp_dir().join(format!("broker-not-exe-{}", std::process::id()));
    std::fs::write(&path, "not a program\n").unwrap(); // Mode 0644: execveat says EACCES.
    let not_exe = path_fd(path.to_str().unwrap());
    std::fs::remove_file(&path).unwrap();
    let process = quiet_broker(not_exe, vec![declared(0)]);
    let channel = &process.channels[0];
    channel
        .send(&BrokerRequest::Start { device: 0 }, &[])
        .unwrap();
    let (started, _fds) = reply(channel);
    let BrokerReply::Started { device: 0, pid } = started else {
        panic!("want Started, got {started:?}");
    };
    match reply(channel).0 {
        BrokerReply::Failed {
            device: 0,
            pid: failed,
            reason,
        } => {
            assert_eq!(failed, pid);
            assert!(
                reason.contains("failed before exec at Exec") && reason.contains("os error 13"),
                "{reason}"
            );
        }
        other => panic!("want Failed, got {other:?}"),
    }
    match reply(channel).0 {
        BrokerReply::Exited {
            device: 0,
            pid: reaped,
            status: WorkerStatus::Exited(127),
        } => assert_eq!(reaped, pid),
        other => panic!("want Exited(127), got {other:?}"),
    }
    hang_up(process);
}

/// A filter that allows everything but `acct` (the real profile is svmm's, tested with it).
fn allow_all() -> BpfProgram {
    let filter = SeccompFilter::new(
        [(libc::SYS_acct, vec![])].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Trap,
        TargetArch::x86_64,
    )
    .unwrap();
    filter.try_into().unwrap()
}

/// The broker's next reply on `channel` (5 s at most) and the fds that came with it.
fn reply(channel: &Channel) -> (BrokerReply, Vec<OwnedFd>) {
    wait_readable(channel, "no reply in 5 s");
    channel.recv::<BrokerReply>().expect("a reply")
}

fn refused(channel: &Channel) -> (u32, String) {
    match reply(channel).0 {
        BrokerReply::Refused { device, reason } => (device, reason),
        other => panic!("want Refused, got {other:?}"),
    }
}

fn broker_serves_its_declared_device_only() {
    let exe = path_fd(HELPER);
    // The broker's log lines go to its stderr: capture them through a pipe at fd 2.
    let mut log_pipe = [-1; 2];
    // SAFETY: pipe2 writes two fds into a live array.
    let rc = unsafe { libc::pipe2(log_pipe.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0);
    let seccomp = allow_all();
    // SAFETY: dup/dup2 between fd numbers this test owns; fd 2 is restored after the fork.
    let saved = unsafe { libc::dup(2) };
    // SAFETY: as above.
    unsafe { libc::dup2(log_pipe[1], 2) };
    let process = broker::server::fork(BrokerSetup {
        exe,
        devices: vec![declared(0)],
        seccomp,
        drop_to: None,
        subids: None,
    });
    // SAFETY: restores the test's stderr; closes the copies this process no longer needs.
    unsafe {
        libc::dup2(saved, 2);
        libc::close(saved);
        libc::close(log_pipe[1]);
    }
    let process = process.expect("fork the broker");
    // SAFETY: the read end is ours alone.
    let mut log = unsafe { std::fs::File::from_raw_fd(log_pipe[0]) };
    let channel = &process.channels[0];

    // A device that was never declared: refused, naming it.
    channel
        .send(&BrokerRequest::Start { device: 99 }, &[])
        .unwrap();
    let (device, reason) = refused(channel);
    assert_eq!(device, 99);
    assert!(
        reason.contains("device 99 is not this channel's device"),
        "{reason}"
    );
    channel
        .send(&BrokerRequest::Stop { device: 7 }, &[])
        .unwrap();
    assert_eq!(refused(channel).0, 7);
    // Bytes that are no request at all.
    // SAFETY: writes 5 bytes from a live buffer to the channel's socket.
    unsafe {
        libc::write(
            channel.as_raw_fd(),
            b"\xff\xff\xff\xff\xff".as_ptr().cast(),
            5,
        )
    };
    assert!(refused(channel).1.starts_with("malformed request"));
    // The declared device, with fds it does not take.
    let (x, y) = Channel::pair().unwrap();
    channel
        .send(&BrokerRequest::Start { device: 0 }, &[x.as_fd(), y.as_fd()])
        .unwrap();
    assert!(refused(channel).1.contains("2 fds with Start, want 0"));

    // The declared device, as declared: a confined worker runs.
    channel
        .send(&BrokerRequest::Start { device: 0 }, &[])
        .unwrap();
    let (started, fds) = reply(channel);
    let BrokerReply::Started { device: 0, pid } = started else {
        panic!("want Started, got {started:?}");
    };
    assert_eq!(fds.len(), ipc::broker::STARTED_FDS);
    // svmm's end comes non-blocking: wait for the worker's word (the worker runs on while
    // `control` is open).
    let control = fds.into_iter().next().unwrap();
    let word = first_word(&control);
    assert!(word.starts_with(b"confined"), "{word:?}");
    // Twice: refused while it runs.
    channel
        .send(&BrokerRequest::Start { device: 0 }, &[])
        .unwrap();
    assert!(refused(channel).1.contains("its worker is running"));
    // Stop: it is killed and reported.
    channel
        .send(&BrokerRequest::Stop { device: 0 }, &[])
        .unwrap();
    match reply(channel).0 {
        BrokerReply::Exited {
            device: 0,
            pid: reaped,
            status: WorkerStatus::Killed(libc::SIGKILL),
        } => assert_eq!(reaped, pid),
        other => panic!("want Exited by SIGKILL, got {other:?}"),
    }
    // svmm hangs up: the broker ends.
    hang_up(process);
    let mut text = String::new();
    log.read_to_string(&mut text).unwrap();
    for want in [
        "svmm broker: refused a request on test#0's channel: device 99 is not this channel's device",
        "svmm broker: refused a request on test#0's channel: device 7 is not this channel's device",
        "svmm broker: refused a request on test#0's channel: malformed request",
    ] {
        assert!(text.contains(want), "{want:?} not logged in:\n{text}");
    }
}
