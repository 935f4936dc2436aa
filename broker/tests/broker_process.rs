//! The broker process as svmm sees it: forked with one declared device (the test worker in
//! `hold` mode), it starts and stops that device's worker on request and refuses — answering
//! `Refused` and logging a line on its stderr — every request about anything else.
//!
//! `harness = false`: the broker is forked, which needs a single-threaded process.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use broker::{BrokerSetup, ConfineConfig, Declared, IdChoice, IdRange};
use ipc::{BrokerReply, BrokerRequest, Channel, WorkerStatus};
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

const HELPER: &str = env!("CARGO_BIN_EXE_broker-test-worker");

fn main() {
    print!("test broker_serves_its_declared_device_only ... ");
    let _ = std::io::stdout().flush();
    broker_serves_its_declared_device_only();
    println!("ok");
    println!("broker process tests: 1 passed");
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
    let mut pfd = libc::pollfd {
        fd: channel.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd of an open fd.
    let ready = unsafe { libc::poll(&mut pfd, 1, 5000) };
    assert_eq!(ready, 1, "no reply in 5 s");
    channel.recv::<BrokerReply>().expect("a reply")
}

fn refused(channel: &Channel) -> (u32, String) {
    match reply(channel).0 {
        BrokerReply::Refused { device, reason } => (device, reason),
        other => panic!("want Refused, got {other:?}"),
    }
}

fn broker_serves_its_declared_device_only() {
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let ids = match root {
        true => IdRange::DEFAULT.ids(0).unwrap(),
        false => IdChoice::Unprivileged,
    };
    let cfg = ConfineConfig::new(ids.worker_ids(), 1, Vec::new());
    let mut argv = vec![CString::new("broker-test-worker").unwrap()];
    argv.extend(cfg.to_args());
    argv.push(CString::new("hold").unwrap());
    let exe: OwnedFd = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(HELPER)
        .unwrap()
        .into();
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
        devices: vec![Declared {
            name: "test#0".into(),
            index: 0,
            argv,
            ids,
            guest_fds: 0,
            fresh_eventfd_at: None,
            resources: Vec::new(),
            trailing_fds: 0,
        }],
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
    let mut control = std::fs::File::from(fds.into_iter().next().unwrap());
    // svmm's end comes non-blocking: wait for the worker's word.
    let mut pfd = libc::pollfd {
        fd: control.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd of an open fd.
    let ready = unsafe { libc::poll(&mut pfd, 1, 5000) };
    assert_eq!(ready, 1, "the worker said nothing");
    let mut buf = [0u8; 64];
    let n = control.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"confined"), "{:?}", &buf[..n]);
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
    drop(process.channels);
    let mut status = 0;
    // SAFETY: waits for our own child into a live int.
    let reaped = unsafe { libc::waitpid(process.pid, &mut status, 0) };
    assert_eq!(reaped, process.pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{status:#x}"
    );
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
