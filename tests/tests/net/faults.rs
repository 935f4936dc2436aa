//! The net worker attacked and misbehaving: killed from outside, and every mode of svmm's
//! hidden `fault=` (builds with `test-faults`, which tests/run.sh makes), as the sandbox suite
//! runs them for rng: one line from svmm, the VM and an rng device beside it keep running. Its
//! own `fault=host` probe tries to make the user's tap non-persistent through its filter. A
//! worker killed from outside is restarted on the same tap (the default) or left dead.

use std::time::Duration;

use tests::procfs;
use tests::suite::TrialResult;
use tests::VmOutput;

use super::{guest, tap_ns, TIMEOUT};

/// svmm's status when a worker died and `--on-worker-exit=stop` was given.
const DEVICE_FAILED: i32 = 71;

/// The net worker killed from outside between two of the guest's `net` tests: one line, the
/// VM keeps running and the rng device serves. By default (`--on-worker-exit=restart`) svmm
/// starts a new worker on the same tap fds (the driver had reset the device: nothing to
/// resume), and the guest's next `net` test, which initialises the device again, is served by
/// it; with
/// `--on-worker-exit=keep` the dead device never serves again.
pub fn worker_sigkill(restart: bool) -> TrialResult {
    let (ns, _peer) = tap_ns("kill", &[])?;
    let policy = if restart { "restart" } else { "keep" };
    let mut running = guest(
        &ns,
        "testguest.run=net,echo,rng,net testguest.echo_timeout_ms=60000",
        &["net,tap=tap0".to_string(), "rng".to_string()],
    )
    .args([format!("--on-worker-exit={policy}")])
    .spawn()?;
    running.wait_for_line("testguest: echo ready", TIMEOUT)?;
    let worker = procfs::workers(running.pid())
        .into_iter()
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("__worker\0net"))
        })
        .ok_or("no net worker among svmm's children")?;
    // SAFETY: kill has no memory-safety preconditions; `worker` is svmm's child, alive a moment
    // ago and reaped by nobody but svmm.
    unsafe { libc::kill(worker as i32, libc::SIGKILL) };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !running.stderr_so_far().contains(&worker.to_string())
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    running.write_stdin(b"after-kill\n")?;
    let out = running.wait()?;
    out.log(&format!(
        "svmm testguest net + rng, net worker killed, --on-worker-exit={policy}"
    ));
    let line = out.assert_one_worker_death("net#0");
    out.assert_worker_report(worker, "net#0", "killed by SIGKILL");
    out.assert_line("testguest: net ok");
    out.assert_line("testguest: echo ok line=after-kill");
    out.assert_line("testguest: rng ok ");
    let second = out
        .lines()
        .filter(|l| l.starts_with("testguest: net "))
        .nth(1)
        .unwrap_or_default()
        .to_string();
    out.assert_no_panic();
    if restart {
        // Killed between two tests, while the driver had reset the device: nothing to resume.
        assert!(
            line.contains("; restart 1 (pid ") && line.contains("nothing to resume"),
            "svmm should restart the worker: {line}\n{}",
            out.report()
        );
        assert!(
            second.starts_with("testguest: net ok"),
            "the new worker should serve the re-initialised device: {second}\n{}",
            out.report()
        );
        assert_eq!(out.testguest_summary(), Some((4, 0)), "\n{}", out.report());
        out.assert_status(0);
    } else {
        assert!(
            second.starts_with("testguest: net FAIL"),
            "the dead device must not serve again: {second}\n{}",
            out.report()
        );
        assert_eq!(out.testguest_summary(), Some((3, 1)), "\n{}", out.report());
    }
    Ok(())
}

/// The net worker under `fault` (on a tap, in a VM with an rng device too) and its guest's
/// `net` and `rng` tests, with `extra` svmm arguments; `--on-worker-exit=keep` unless they say
/// otherwise (these trials judge how svmm meets the fault, not the restart after it).
fn faulty(fault: &str, extra: &[&str]) -> Result<VmOutput, Box<dyn std::error::Error>> {
    let (ns, _peer) = tap_ns(fault, &[])?;
    let mut args = extra.to_vec();
    if !extra.iter().any(|a| a.starts_with("--on-worker-exit=")) {
        args.push("--on-worker-exit=keep");
    }
    let out = guest(
        &ns,
        "testguest.run=net,rng",
        &[format!("net,tap=tap0,fault={fault}"), "rng".to_string()],
    )
    .args(args)
    .run()?;
    out.log(&format!("svmm testguest net (fault={fault}) + rng"));
    if out.stderr.contains("unknown option 'fault'") {
        return Err(
            "svmm was built without the test-faults feature (tests/run.sh builds it)".into(),
        );
    }
    // The tap is the user's: whatever the worker did, it is still there afterwards.
    ns.counter("tap0", "rx_packets")
        .map_err(|e| format!("tap0 is gone after the fault={fault} worker: {e}"))?;
    Ok(out)
}

/// The guest saw the net device fail and the rng device serve.
fn others_unharmed(out: &VmOutput) {
    out.assert_line("testguest: net FAIL");
    out.assert_line("testguest: rng ok ");
    assert!(
        !out.stderr
            .lines()
            .any(|l| l.starts_with("svmm: rng#") && l.contains(" worker (pid ")),
        "the rng worker was harmed\n{}",
        out.report()
    );
    out.assert_no_panic();
    assert_eq!(out.testguest_summary(), Some((1, 1)), "\n{}", out.report());
    out.assert_status(1);
}

/// A hostile worker (`fault`: garbage on its socket, silence, a flood of messages, fds
/// attached to a message) gets its device marked broken and is killed by svmm.
pub fn malicious(fault: &str) -> TrialResult {
    let out = faulty(fault, &[])?;
    let line = out.assert_one_worker_death("net#0");
    assert!(
        line.contains("killed by svmm: ") && line.ends_with("VM keeps running"),
        "svmm should report killing the {fault} worker: {line}\n{}",
        out.report()
    );
    others_unharmed(&out);
    Ok(())
}

/// A forbidden system call (`openat`): the worker dies of SIGSYS, named by svmm.
pub fn seccomp_violation() -> TrialResult {
    let out = faulty("syscall", &[])?;
    let line = out.assert_one_worker_death("net#0");
    assert!(
        line.contains("killed by SIGSYS") && line.contains("syscall openat"),
        "the report should name SIGSYS and the call: {line}\n{}",
        out.report()
    );
    others_unharmed(&out);
    Ok(())
}

/// The net worker's own probe (`fault=host`, devices/src/net/probe.rs): `TUNSETOFFLOAD` with
/// an unknown bit passes the filter and the kernel refuses it; `TUNSETPERSIST` 0, which would
/// take the user's tap away with svmm's last fd, is outside the filter: SIGSYS, named
/// `ioctl`. The tap is still there after svmm ended ([`faulty`] checks).
pub fn host_probe() -> TrialResult {
    let out = faulty("host", &[])?;
    assert!(
        out.stderr.lines().any(|l| l.starts_with(
            "svmm: net#0 worker: net probe: TUNSETOFFLOAD with an unknown offload bit: refused: "
        )),
        "the probe's allowed request should reach the kernel and be refused\n{}",
        out.report()
    );
    assert!(
        !out.stderr
            .contains("svmm: net#0 worker: net probe: TUNSETPERSIST"),
        "TUNSETPERSIST must not return to the worker\n{}",
        out.report()
    );
    let line = out.assert_one_worker_death("net#0");
    assert!(
        line.contains("killed by SIGSYS") && line.contains("syscall ioctl"),
        "the filter should stop TUNSETPERSIST: {line}\n{}",
        out.report()
    );
    others_unharmed(&out);
    Ok(())
}

/// `fault=escape` under `--seccomp=log`: the file system is out of the net worker's reach
/// (no Landlock rule at all, an empty read-only root), and it then serves the guest.
pub fn escape() -> TrialResult {
    let out = faulty("escape", &["--seccomp=log"])?;
    let errno = |what: &str| -> Option<i32> {
        let prefix = format!("svmm: net#0 worker: escape: {what}: errno ");
        out.stderr
            .lines()
            .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
    };
    let found = [
        errno("open / (read-dir)"),
        errno("mkdir /x"),
        errno("open /etc/passwd"),
    ];
    assert_eq!(
        found[0],
        Some(libc::EACCES),
        "Landlock should refuse reading the root\n{}",
        out.report()
    );
    assert_eq!(
        found[1],
        Some(libc::EROFS),
        "the root should be read-only\n{}",
        out.report()
    );
    assert!(
        matches!(found[2], Some(libc::ENOENT | libc::EACCES)),
        "/etc/passwd should be out of reach\n{}",
        out.report()
    );
    out.assert_line("testguest: net ok");
    out.assert_line("testguest: rng ok ");
    out.assert_status(0);
    Ok(())
}

/// `--on-worker-exit=stop`: a net worker that exits on its own ends the VM with status 71.
pub fn exit_stops_vm() -> TrialResult {
    let out = faulty("exit", &["--on-worker-exit=stop"])?;
    let line = out.assert_one_worker_death("net#0");
    assert!(
        line.contains("exited with status 3"),
        "the report should give the worker's exit status: {line}\n{}",
        out.report()
    );
    out.assert_no_panic();
    out.assert_status(DEVICE_FAILED);
    Ok(())
}
