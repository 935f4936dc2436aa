//! The proxy against fake workers on the other end of a channel pair (silent, garbage,
//! oversized, out-of-order, flooding) and against the real worker loop on a thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use devices::irq_status::IrqStatus;
use devices::kind::Shape;
use ipc::{Channel, ChannelError, DeviceErrorKind, QueueConfig, VmmToWorker, WorkerToVmm};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{Deadlines, WorkerProxy, MAX_UNSOLICITED_PER_SEC};
use crate::virtio::{DeviceProxy, ProxyError, INT_CONFIG};

const SHORT: Deadlines = Deadlines {
    ready: Duration::from_millis(200),
    reply: Duration::from_millis(200),
};

/// What [`ready`] announces, as a kind would declare it.
const SHAPE: Shape = Shape {
    kind: "test",
    device_type: 4,
    queues: 1,
    max_queue_size: 256,
    features: 1 << 32 | 1 << 28,
};

fn eventfd() -> EventFd {
    EventFd::new(EFD_NONBLOCK).unwrap()
}

fn ready(config: Vec<u8>) -> WorkerToVmm {
    WorkerToVmm::Ready {
        device_type: 4,
        device_features: 1 << 32,
        num_queues: 1,
        max_queue_size: 256,
        config,
    }
}

/// A proxy connected to a fake worker that already said `first`; returns the fake's end too.
fn connect(first: &WorkerToVmm) -> (Result<WorkerProxy, ProxyError>, Channel) {
    let (vmm, worker) = Channel::pair().unwrap();
    vmm.set_nonblocking(true).unwrap();
    worker.send(first, &[]).unwrap();
    let proxy = WorkerProxy::connect(
        "test#0",
        vmm,
        IrqStatus::create().unwrap(),
        eventfd(),
        vec![eventfd()],
        SHORT,
        &SHAPE,
    );
    (proxy, worker)
}

fn queue() -> QueueConfig {
    QueueConfig {
        index: 0,
        size: 16,
        desc_table: 0x1000,
        avail_ring: 0x2000,
        used_ring: 0x3000,
    }
}

/// The fake worker's view after the proxy broke: the socket is shut down.
fn assert_worker_sees_peer_gone(worker: &Channel) {
    // Skip what the proxy sent before it broke.
    loop {
        match worker.recv::<VmmToWorker>() {
            Ok(_) => continue,
            Err(ChannelError::PeerGone) => return,
            Err(e) => panic!("expected PeerGone, got {e}"),
        }
    }
}

#[test]
fn a_silent_worker_fails_set_up_after_the_deadline() {
    let (vmm, _worker) = Channel::pair().unwrap();
    vmm.set_nonblocking(true).unwrap();
    let start = Instant::now();
    let err = WorkerProxy::connect(
        "test#0",
        vmm,
        IrqStatus::create().unwrap(),
        eventfd(),
        vec![eventfd()],
        SHORT,
        &SHAPE,
    )
    .err()
    .unwrap();
    assert!(matches!(
        err,
        ProxyError::Timeout {
            request: "start",
            ..
        }
    ));
    let waited = start.elapsed();
    assert!(
        waited >= SHORT.ready && waited < Duration::from_secs(3),
        "{waited:?}"
    );
}

/// A `Ready` for anything but the kind that was started is refused, whatever differs.
#[test]
fn a_ready_for_another_device_is_refused() {
    let lie = |device_type, num_queues, max_queue_size, device_features| {
        let (proxy, _worker) = connect(&WorkerToVmm::Ready {
            device_type,
            device_features,
            num_queues,
            max_queue_size,
            config: vec![],
        });
        match proxy {
            Err(ProxyError::WrongDevice(what)) => what,
            other => panic!("want WrongDevice, got {:?}", other.map(|_| ())),
        }
    };
    assert_eq!(lie(2, 1, 256, 1 << 32), "device type 2, a test is 4");
    assert!(matches!(
        connect(&WorkerToVmm::Ready {
            device_type: 4,
            device_features: 1 << 32,
            num_queues: 2,
            max_queue_size: 256,
            config: vec![],
        })
        .0,
        // Two queues against one queue eventfd: refused before the shape is looked at.
        Err(ProxyError::BadReply { .. })
    ));
    assert_eq!(
        lie(4, 1, 1024, 1 << 32),
        "queues of up to 1024 entries, a test takes 256"
    );
    assert_eq!(
        lie(4, 1, 256, 1 << 32 | 1 << 50),
        "features 0x4000000000000, which a test never offers"
    );
    // A subset of the kind's features is fine (a configuration may offer fewer).
    assert!(connect(&ready(vec![])).0.is_ok());
}

#[test]
fn a_worker_that_never_answers_is_broken_after_the_deadline() {
    let (proxy, worker) = connect(&ready(vec![]));
    let mut proxy = proxy.unwrap();
    let killed = Arc::new(AtomicBool::new(false));
    let flag = killed.clone();
    proxy.set_terminate(move |_, _| flag.store(true, Ordering::SeqCst));

    let start = Instant::now();
    let err = proxy.activate(1 << 32, &[queue()]).unwrap_err();
    assert!(matches!(
        err,
        ProxyError::Timeout {
            request: "activate",
            ..
        }
    ));
    assert!(start.elapsed() < Duration::from_secs(3));
    assert!(proxy.is_broken());
    assert!(killed.load(Ordering::SeqCst), "terminate hook not run");
    assert!(proxy.take_needs_reset());
    assert!(!proxy.take_needs_reset());
    // From now on nothing waits: every request fails at once.
    let start = Instant::now();
    assert!(matches!(proxy.reset(), Ok(())));
    assert!(matches!(
        proxy.activate(1 << 32, &[queue()]),
        Err(ProxyError::Broken)
    ));
    assert!(matches!(
        proxy.write_config(0, &[1]),
        Err(ProxyError::Broken)
    ));
    assert!(start.elapsed() < Duration::from_millis(100));
    assert_worker_sees_peer_gone(&worker);
}

#[test]
fn garbage_breaks_the_device() {
    let (proxy, worker) = connect(&ready(vec![]));
    let mut proxy = proxy.unwrap();
    // A u32 tag that is no WorkerToVmm variant.
    worker.send(&0xdead_beefu32, &[]).unwrap();
    proxy.service();
    assert!(proxy.is_broken());
    assert!(proxy.broken_reason().unwrap().contains("control channel"));
    assert_worker_sees_peer_gone(&worker);

    // Garbage instead of Ready: set-up fails.
    let (vmm, worker) = Channel::pair().unwrap();
    vmm.set_nonblocking(true).unwrap();
    worker.send(&[0xffu8; 64], &[]).unwrap();
    let result = WorkerProxy::connect(
        "test#1",
        vmm,
        IrqStatus::create().unwrap(),
        eventfd(),
        vec![eventfd()],
        SHORT,
        &SHAPE,
    );
    assert!(matches!(result, Err(ProxyError::Channel(_))));
}

#[test]
fn an_oversized_config_is_refused() {
    // In Ready: more than virtio-mmio's 256 bytes of config space.
    let (proxy, _worker) = connect(&ready(vec![0; 257]));
    assert!(matches!(
        proxy,
        Err(ProxyError::BadReply { request: "start" })
    ));

    // In ConfigChanged: more than the worker declared in Ready.
    let (proxy, worker) = connect(&ready(vec![1, 2, 3, 4]));
    let mut proxy = proxy.unwrap();
    worker
        .send(&WorkerToVmm::ConfigChanged { config: vec![0; 5] }, &[])
        .unwrap();
    proxy.service();
    assert!(proxy.is_broken());
    assert_eq!(proxy.info().config, [1, 2, 3, 4]);
}

#[test]
fn a_wrong_queue_count_or_a_first_message_other_than_ready_is_refused() {
    let mut two_queues = ready(vec![]);
    if let WorkerToVmm::Ready { num_queues, .. } = &mut two_queues {
        *num_queues = 2;
    }
    assert!(matches!(
        connect(&two_queues).0,
        Err(ProxyError::BadReply { .. })
    ));
    assert!(matches!(
        connect(&WorkerToVmm::Activated).0,
        Err(ProxyError::BadReply { .. })
    ));
    assert!(matches!(
        connect(&WorkerToVmm::DeviceError {
            reason: DeviceErrorKind::Internal
        })
        .0,
        Err(ProxyError::Device(DeviceErrorKind::Internal))
    ));
    let trapped = WorkerToVmm::SeccompViolation {
        syscall: 332,
        arch: seccomp_profiles::sigsys::AUDIT_ARCH_X86_64,
    };
    match connect(&trapped).0 {
        Err(ProxyError::SeccompViolation(call)) => assert_eq!(call, "statx"),
        other => panic!("{:?}", other.err()),
    }
}

#[test]
fn out_of_order_messages_break_the_device() {
    for msg in [
        ready(vec![]),
        WorkerToVmm::Activated,
        WorkerToVmm::ResetDone,
        WorkerToVmm::Stats(Default::default()),
    ] {
        let (proxy, worker) = connect(&ready(vec![]));
        let mut proxy = proxy.unwrap();
        worker.send(&msg, &[]).unwrap();
        proxy.service();
        assert!(proxy.is_broken(), "{msg:?} accepted out of order");
    }
}

#[test]
fn a_flooding_worker_is_cut_off() {
    let (proxy, worker) = connect(&ready(vec![7]));
    let mut proxy = proxy.unwrap();
    let mut sent = 0;
    // Until the proxy shuts the socket down or the socket buffer is full.
    while sent < 10 * MAX_UNSOLICITED_PER_SEC {
        if worker
            .send(&WorkerToVmm::ConfigChanged { config: vec![7] }, &[])
            .is_err()
        {
            break;
        }
        sent += 1;
        if sent % 8 == 0 {
            proxy.service();
        }
    }
    proxy.service();
    assert!(proxy.is_broken());
    assert!(proxy.broken_reason().unwrap().contains("floods"));
}

#[test]
fn config_changes_update_the_cache_and_interrupt() {
    let (proxy, worker) = connect(&ready(vec![1, 2]));
    let mut proxy = proxy.unwrap();
    worker
        .send(&WorkerToVmm::ConfigChanged { config: vec![3, 4] }, &[])
        .unwrap();
    proxy.service();
    assert!(!proxy.is_broken());
    assert_eq!(proxy.info().config, [3, 4]);
    assert_eq!(proxy.info().config_generation, 1);
    assert_eq!(proxy.interrupt_status(), INT_CONFIG);
    proxy.interrupt_ack(INT_CONFIG);
    assert_eq!(proxy.interrupt_status(), 0);
}

#[test]
fn a_device_error_needs_a_reset_but_is_not_final() {
    let (proxy, worker) = connect(&ready(vec![]));
    let mut proxy = proxy.unwrap();
    // Activation, answered by the fake worker from a thread.
    let fake = std::thread::spawn(move || {
        let (msg, _) = worker.recv::<VmmToWorker>().unwrap();
        assert!(matches!(msg, VmmToWorker::Activate { .. }));
        worker.send(&WorkerToVmm::Activated, &[]).unwrap();
        worker
            .send(
                &WorkerToVmm::DeviceError {
                    reason: DeviceErrorKind::GuestFault,
                },
                &[],
            )
            .unwrap();
        let (msg, _) = worker.recv::<VmmToWorker>().unwrap();
        assert_eq!(msg, VmmToWorker::Reset);
        worker.send(&WorkerToVmm::ResetDone, &[]).unwrap();
        worker
    });
    proxy.activate(1 << 32, &[queue()]).unwrap();
    // The error arrives after the reply; the owner's monitor would call service.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !proxy.is_broken() && Instant::now() < deadline {
        proxy.service();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(proxy.is_broken());
    assert!(proxy.take_needs_reset());
    assert!(proxy.broken_reason().is_none());
    proxy.reset().unwrap();
    assert!(!proxy.is_broken());
    let _worker = fake.join().unwrap();
}

#[test]
fn the_real_worker_loop_on_a_thread() {
    use crate::host_resources::HostResources;
    use worker::{in_process, WorkerExit, WorkerFds};
    let ram =
        worker::guest_ram::create_guest_ram(1 << 20, worker::guest_ram::Backing::Shmem).unwrap();
    let status = IrqStatus::create().unwrap();
    let (vmm, theirs) = Channel::pair().unwrap();
    vmm.set_nonblocking(true).unwrap();
    let irqfd = eventfd();
    let queue_event = eventfd();
    let fds = WorkerFds {
        control: theirs,
        guest_ram: ram.memfd.try_clone().unwrap(),
        irq_status: status.fd().try_clone_to_owned().unwrap(),
        irqfd: irqfd.try_clone().unwrap(),
        queue_events: vec![queue_event.try_clone().unwrap()],
        stop: eventfd(),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    // The kind's own backend, built from its resources as an in-process device's is.
    let config = crate::device_spec::parse("rng").unwrap().config;
    let resources = HostResources::open(&config, None)
        .unwrap()
        .worker_fds()
        .unwrap();
    let backend = config
        .build(devices::kind::ResourceFds::new(resources))
        .unwrap();
    let warn = |warning: &str| panic!("rng has no set-up to warn about: {warning}");
    let on_exit = move |result: &Result<_, _>| tx.send(result.as_ref().ok().copied()).unwrap();
    // The thread stays unfiltered here (the test process must).
    let confine = || Ok::<(), std::io::Error>(());
    let thread =
        in_process::spawn("rng-test".into(), backend, fds, warn, confine, on_exit).unwrap();
    let mut proxy = WorkerProxy::connect(
        "rng#0",
        vmm,
        status,
        irqfd,
        vec![queue_event],
        Deadlines::default(),
        &config.shape(),
    )
    .unwrap();
    assert_eq!(proxy.info().device_type, devices::VIRTIO_ID_RNG);
    proxy.activate(1 << 32, &[queue()]).unwrap();
    proxy.notify(0).unwrap();
    assert_eq!(proxy.stats().unwrap().queues.len(), 1);
    proxy.reset().unwrap();
    proxy.activate(1 << 32, &[queue()]).unwrap();
    assert!(!proxy.is_broken());
    // The VMM's end goes: the device's thread ends.
    drop(proxy);
    thread.join().unwrap();
    assert_eq!(rx.recv().unwrap(), Some(WorkerExit::PeerGone));
}

/// A restartable proxy whose worker sends garbage: the device breaks (the worker is to be
/// killed) but does not show DEVICE_NEEDS_RESET while a new worker is awaited; a new worker
/// that declares the same device takes over, gets the guest's config writes again and resumes
/// the queues; one that declares another device is refused. Given up, the device needs reset.
#[test]
fn a_restartable_device_waits_for_its_new_worker() {
    let (proxy, worker) = connect(&ready(vec![0; 8]));
    let mut proxy = proxy.unwrap();
    proxy.set_restartable(true);
    proxy.write_config(2, &[7, 7]).unwrap();
    proxy.write_config(4, &[1]).unwrap();
    proxy.write_config(2, &[9, 9]).unwrap(); // replaces the first write
    worker.send(&0xdead_beefu32, &[]).unwrap();
    proxy.service();
    assert!(proxy.broken_reason().is_some());
    assert!(!proxy.is_broken(), "a restartable device only waits");
    assert!(!proxy.take_needs_reset());

    // A new worker of another device is refused.
    let (vmm, other) = Channel::pair().unwrap();
    vmm.set_nonblocking(true).unwrap();
    let mut wrong = ready(vec![0; 8]);
    if let WorkerToVmm::Ready { device_type, .. } = &mut wrong {
        *device_type = 2;
    }
    other.send(&wrong, &[]).unwrap();
    assert!(matches!(
        proxy.replace_worker(vmm),
        Err(ProxyError::BadReply { request: "start" })
    ));

    // The same device takes over.
    let (vmm, new) = Channel::pair().unwrap();
    vmm.set_nonblocking(true).unwrap();
    new.send(&ready(vec![0; 8]), &[]).unwrap();
    proxy.replace_worker(vmm).unwrap();
    assert_eq!(proxy.restarts(), 1);
    assert!(proxy.broken_reason().is_none());
    let writes: Vec<VmmToWorker> = (0..2).map(|_| new.recv().unwrap().0).collect();
    assert_eq!(
        writes,
        [
            VmmToWorker::WriteConfig {
                offset: 4,
                data: vec![1]
            },
            VmmToWorker::WriteConfig {
                offset: 2,
                data: vec![9, 9]
            },
        ]
    );
    let resume = std::thread::spawn(move || {
        let (msg, _) = new.recv::<VmmToWorker>().unwrap();
        assert_eq!(
            msg,
            VmmToWorker::Resume {
                driver_features: 1 << 32,
                queues: vec![queue()]
            }
        );
        new.send(&WorkerToVmm::Resumed { pending: 3 }, &[]).unwrap();
        new
    });
    assert_eq!(proxy.resume(1 << 32, &[queue()]).unwrap(), 3);
    let new = resume.join().unwrap();

    // Given up on (the supervisor's restart limit): broken for good, needing reset.
    drop(new);
    proxy.service();
    assert!(proxy.broken_reason().is_some());
    proxy.worker_died("exited with status 3");
    assert!(proxy.is_broken());
    assert!(proxy.take_needs_reset());
}
