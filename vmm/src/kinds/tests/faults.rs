//! The test-only fault modes, for every kind: `fault=MODE` reaches the worker's command line
//! and is read back there, and the one wrapper (`worker::fault::Faulty`) around each kind's
//! own backend misbehaves once the device is used. The modes that end a process (`syscall`,
//! `exit`, `silent` until killed) run end to end in the sandbox suite (tests/tests/sandbox.rs);
//! here, on a thread, the ones a test process survives: `garbage` and `flood`.

use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use devices::irq_status::IrqStatus;
use ipc::{Channel, ChannelError, QueueConfig, VmmToWorker, WorkerToVmm};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::fd_wait::wait_readable;
use crate::host_resources::HostResources;
use worker::fault::{Fault, Faulty};
use worker::{map_memory, serve, WorkerFds};

#[test]
fn every_mode_reaches_the_worker_of_every_kind() {
    for (kind, spec, _scratch) in every_kind() {
        for name in Fault::NAMES {
            let fault = Fault::from_name(name);
            let spec = DeviceSpec {
                fault,
                ..spec.clone()
            };
            let argv: Vec<String> = plan_of(&spec)
                .argv
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            let (_, rest) = broker::ConfineConfig::from_args(&argv[3..], Vec::new()).unwrap();
            let args = WorkerArgs::parse(&rest).unwrap();
            assert_eq!(args.fault, fault, "{} {name}", kind.name());
            let text = format!("{},fault={name}", kind.test_spec(&_scratch.0).unwrap());
            assert_eq!(device_spec::parse(&text).unwrap().fault, fault, "{text}");
        }
    }
}

fn eventfd() -> EventFd {
    EventFd::new(EFD_NONBLOCK).unwrap()
}

/// Serves `spec`'s own backend, built from duplicates of `resources`, wrapped in `fault` on a
/// thread, activates it with queue 0 and notifies that queue: returns the VMM's end of the
/// channel, after the notification.
fn misbehaving(
    spec: &DeviceSpec,
    resources: &HostResources,
    fault: Fault,
) -> (Channel, std::thread::JoinHandle<()>) {
    // A kind with host services gets a service channel nobody answers (the faults come before
    // any request).
    let (fds, services_end) = resource_fds(spec, resources);
    let mut built = spec.config.build(fds).unwrap();
    let _ = built.prepare();
    let ram =
        worker::guest_ram::create_guest_ram(1 << 20, worker::guest_ram::Backing::Shmem).unwrap();
    let status = IrqStatus::create().unwrap();
    let (vmm, theirs) = Channel::pair().unwrap();
    let queues: Vec<EventFd> = (0..spec.config.queues()).map(|_| eventfd()).collect();
    let backend = Box::new(Faulty::new(built.into_backend(), fault, theirs.as_raw_fd()));
    let fds = WorkerFds {
        control: theirs,
        guest_ram: ram.memfd.try_clone().unwrap(),
        irq_status: status.fd().try_clone_to_owned().unwrap(),
        irqfd: eventfd(),
        queue_events: queues.iter().map(|q| q.try_clone().unwrap()).collect(),
        stop: eventfd(),
    };
    let worker = std::thread::spawn(move || {
        let _ram = ram;
        let _services = services_end;
        if let Ok(mapped) = map_memory(&*backend, fds) {
            let _ = serve(backend, mapped, || Ok(()));
        }
    });
    let recv = |vmm: &Channel| {
        assert!(wait_readable(vmm.as_fd(), Duration::from_secs(10)).unwrap());
        vmm.recv::<WorkerToVmm>().map(|(msg, _)| msg)
    };
    let size = match recv(&vmm).unwrap() {
        WorkerToVmm::Ready { max_queue_size, .. } => max_queue_size.min(16),
        other => panic!("{}: expected Ready, got {other:?}", spec.kind()),
    };
    let activate = VmmToWorker::Activate {
        driver_features: devices::VIRTIO_F_VERSION_1,
        // Every queue (virtio-wl needs both of its own), each in its own pages.
        queues: (0..spec.config.queues())
            .map(|index| {
                let at = 0x1_0000 + 0x3000 * u64::from(index);
                QueueConfig {
                    index,
                    size,
                    desc_table: at,
                    avail_ring: at + 0x1000,
                    used_ring: at + 0x2000,
                }
            })
            .collect(),
    };
    vmm.send(&activate, &[]).unwrap();
    assert_eq!(
        recv(&vmm).unwrap(),
        WorkerToVmm::Activated,
        "{}",
        spec.kind()
    );
    queues[0].write(1).unwrap();
    (vmm, worker)
}

#[test]
fn garbage_and_floods_come_from_every_kind() {
    for (kind, spec, _scratch) in every_kind() {
        // Opened once: a device's resources outlive its workers (an image's lock stays while
        // the kernel tears down a ring that used it).
        let resources = HostResources::open(&spec.config, None).unwrap();
        let (vmm, worker) = misbehaving(&spec, &resources, Fault::Garbage);
        assert!(wait_readable(vmm.as_fd(), Duration::from_secs(10)).unwrap());
        let garbage = vmm.recv::<WorkerToVmm>();
        assert!(
            matches!(garbage, Err(ChannelError::Codec(_))),
            "{}: {garbage:?}",
            kind.name()
        );
        drop(vmm);
        worker.join().unwrap();

        let (vmm, worker) = misbehaving(&spec, &resources, Fault::Flood);
        for _ in 0..20 {
            assert!(wait_readable(vmm.as_fd(), Duration::from_secs(10)).unwrap());
            let (msg, _) = vmm.recv::<WorkerToVmm>().unwrap();
            assert_eq!(msg, WorkerToVmm::ConfigChanged { config: Vec::new() });
        }
        drop(vmm);
        worker.join().unwrap();
    }
}
