//! Monitor threads against a fake worker on a channel, and the wording of death reports.

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::*;
use devices::irq_status::IrqStatus;
use ipc::{Channel, DeviceErrorKind, WorkerToVmm};

use crate::mmio_bus::MmioDevice;
use crate::virtio::mmio::MmioTransport;
use crate::virtio::status::DEVICE_NEEDS_RESET;
use crate::virtio::worker_proxy::{Deadlines, WorkerProxy};
use crate::virtio::{lock, Transport};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// A transport whose proxy talks to a fake worker; returns the fake's end and a second fd of
/// the proxy's socket, for the monitor.
fn transport() -> (Transport, Channel, OwnedFd) {
    let (vmm, worker) = Channel::pair().unwrap();
    vmm.set_nonblocking(true).unwrap();
    let watched = vmm.as_fd().try_clone_to_owned().unwrap();
    let ready = WorkerToVmm::Ready {
        device_type: 4,
        device_features: 1 << 32,
        num_queues: 1,
        max_queue_size: 16,
        config: vec![],
    };
    worker.send(&ready, &[]).unwrap();
    let proxy = WorkerProxy::connect(
        "rng#0",
        vmm,
        IrqStatus::create().unwrap(),
        EventFd::new(EFD_NONBLOCK).unwrap(),
        vec![EventFd::new(EFD_NONBLOCK).unwrap()],
        Deadlines::default(),
        &devices::kind::Shape {
            kind: "rng",
            device_type: 4,
            queues: 1,
            max_queue_size: 16,
            features: 1 << 32,
        },
    )
    .unwrap();
    (
        Arc::new(Mutex::new(MmioTransport::new("rng#0", proxy))),
        worker,
        watched,
    )
}

fn status(transport: &Transport) -> u32 {
    let mut data = [0u8; 4];
    lock(transport).read(0x70, &mut data);
    u32::from_le_bytes(data)
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_dead_worker_stops_the_vm_when_asked() {
    let (transport, worker, watched) = transport();
    // The driver acknowledged the device, so DEVICE_NEEDS_RESET can show.
    lock(&transport).write(0x70, &1u32.to_le_bytes());
    let (control, events) = VmEvents::new();
    spawn_monitor("rng#0", OnWorkerExit::Stop, &control)
        .unwrap()
        .hand(&transport, None, None, watched, None, OnWorkerExit::Stop);
    drop(worker);
    let event = events.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(
        matches!(&event, VmEvent::DeviceFailed(reason) if reason.starts_with("rng#0: ")),
        "{event:?}"
    );
    assert_ne!(status(&transport) & DEVICE_NEEDS_RESET, 0);
}

#[test]
fn a_device_error_shows_needs_reset_and_the_vm_keeps_running() {
    let (transport, worker, watched) = transport();
    lock(&transport).write(0x70, &1u32.to_le_bytes());
    let (control, events) = VmEvents::new();
    spawn_monitor("rng#0", OnWorkerExit::Keep, &control)
        .unwrap()
        .hand(&transport, None, None, watched, None, OnWorkerExit::Keep);
    let error = WorkerToVmm::DeviceError {
        reason: DeviceErrorKind::GuestFault,
    };
    worker.send(&error, &[]).unwrap();
    wait_for("DEVICE_NEEDS_RESET", || {
        status(&transport) & DEVICE_NEEDS_RESET != 0
    });
    // Keep: the worker's death is reported, not turned into a VM event.
    drop(worker);
    wait_for("the device to break", || {
        lock(&transport).proxy().broken_reason().is_some()
    });
    assert!(events.recv_timeout(Duration::from_millis(100)).is_err());
}

#[test]
fn deaths_are_described_with_their_cause() {
    let sigsys = || {
        Ok(ExitCause::Killed {
            signal: libc::SIGSYS,
            core_dumped: false,
        })
    };
    assert_eq!(
        describe_death(sigsys(), Some(257), None),
        "killed by SIGSYS: seccomp violation, syscall openat"
    );
    assert_eq!(
        describe_death(sigsys(), None, None),
        "killed by SIGSYS (seccomp)"
    );
    assert_eq!(
        describe_death(sigsys(), Some(100_000), None),
        "killed by SIGSYS: seccomp violation, syscall number 100000"
    );
    let sigkill = Ok(ExitCause::Killed {
        signal: libc::SIGKILL,
        core_dumped: false,
    });
    assert_eq!(describe_death(sigkill, None, None), "killed by SIGKILL");
    let sigkill = Ok(ExitCause::Killed {
        signal: libc::SIGKILL,
        core_dumped: false,
    });
    assert_eq!(
        describe_death(sigkill, None, Some("floods the control channel")),
        "killed by svmm: floods the control channel"
    );
    assert_eq!(
        describe_death(Ok(ExitCause::Exited(3)), None, None),
        "exited with status 3"
    );
    // svmm's kill came too late: the worker's own end is what counts.
    assert_eq!(
        describe_death(Ok(ExitCause::Exited(3)), None, Some("peer closed")),
        "exited with status 3"
    );
    // It saw svmm shut its socket down and left cleanly before the kill: svmm ended it.
    assert_eq!(
        describe_death(Ok(ExitCause::Exited(0)), None, Some("sent garbage")),
        "killed by svmm: sent garbage"
    );
}

/// A worker that ended before svmm looked at it (it saw its socket shut down and left cleanly)
/// is still reported as svmm's doing; a SIGKILL that svmm never sent is not.
#[test]
fn the_reason_explains_only_what_svmm_did() {
    let sigkill = ExitCause::Killed {
        signal: libc::SIGKILL,
        core_dumped: false,
    };
    let sent = KilledFor {
        reason: "sent garbage".into(),
        stop_sent: true,
    };
    let gone_first = KilledFor {
        stop_sent: false,
        ..sent.clone()
    };
    assert_eq!(sent.explains(&sigkill), Some("sent garbage"));
    assert_eq!(gone_first.explains(&sigkill), None);
    assert_eq!(
        gone_first.explains(&ExitCause::Exited(0)),
        Some("sent garbage")
    );
    let exit0 = ExitCause::Exited(0);
    assert_eq!(
        describe_death(Ok(exit0), None, gone_first.explains(&exit0)),
        "killed by svmm: sent garbage"
    );
    let exit3 = ExitCause::Exited(3);
    assert_eq!(
        describe_death(Ok(exit3), None, gone_first.explains(&exit3)),
        "exited with status 3"
    );
}
