//! The worker loop on a thread, driven from the VMM's end of a channel pair, with real guest
//! RAM (a sealed memfd), a real status page and real eventfds — as in-process mode runs it.

use std::io::{self, Read};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use devices::irq_status::IrqStatus;
use devices::rng::Rng;
use devices::{DeviceError, Interrupt, Queue, VirtioBackend, INT_VRING, VIRTIO_F_VERSION_1};
use ipc::{Channel, DeviceErrorKind, QueueConfig, VmmToWorker, WorkerToVmm};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::guest_ram::{create_guest_ram, GuestRam};
use crate::{map_memory, serve, WorkerError, WorkerExit, WorkerFds};

/// Whether `fd` becomes readable (or hung up) within `timeout`.
fn wait_readable(fd: std::os::fd::BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(&fd),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd for a call with count 1; `fd` is borrowed, so it stays open.
    match unsafe { libc::poll(&mut pfd, 1, ms) } {
        n if n < 0 => Err(io::Error::last_os_error()),
        n => Ok(n > 0),
    }
}

/// Maps and serves `backend`, as a spawned worker does after confinement.
fn run(backend: Box<dyn VirtioBackend>, fds: WorkerFds) -> Result<WorkerExit, WorkerError> {
    let mapped = map_memory(&*backend, fds)?;
    serve(backend, mapped, || Ok(()))
}

const QSIZE: u16 = 16;
const DESC: u64 = 0x1_0000;
const AVAIL: u64 = 0x1_1000;
const USED: u64 = 0x1_2000;
const BUF: u64 = 0x2_0000;

/// 0x5a forever.
struct Fives;

impl Read for Fives {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        buf.fill(0x5a);
        Ok(buf.len())
    }
}

/// A device with two queues and a 4-byte config space that doubles what is written to it.
struct Doubler {
    config: [u8; 4],
}

impl VirtioBackend for Doubler {
    fn device_type(&self) -> u32 {
        42
    }
    fn num_queues(&self) -> u16 {
        2
    }
    fn max_queue_size(&self) -> u16 {
        QSIZE
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }
    fn config(&self) -> Vec<u8> {
        self.config.to_vec()
    }
    fn write_config(&mut self, offset: u32, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            if let Some(slot) = self.config.get_mut(offset as usize + i) {
                *slot = b.wrapping_mul(2);
            }
        }
    }
    fn activate(
        &mut self,
        _driver_features: u64,
        _mem: GuestMemoryMmap,
        _queues: Vec<Queue>,
        _interrupt: Arc<dyn Interrupt>,
    ) -> Result<(), DeviceError> {
        Ok(())
    }
    fn process_queue(
        &mut self,
        _index: u16,
        _events: &mut dyn devices::EventRegistry,
    ) -> Result<(), DeviceError> {
        Ok(())
    }
    fn reset(&mut self) -> Option<Vec<Queue>> {
        None
    }
}

/// The VMM's side of a running worker.
struct Harness {
    vmm: Channel,
    ram: GuestRam,
    status: IrqStatus,
    irqfd: EventFd,
    queues: Vec<EventFd>,
    stop: EventFd,
    worker: JoinHandle<Result<WorkerExit, WorkerError>>,
}

fn eventfd() -> EventFd {
    EventFd::new(EFD_NONBLOCK).unwrap()
}

/// Starts `backend` with `queue_fds` queue eventfds on a thread.
fn start(backend: Box<dyn VirtioBackend>, queue_fds: usize) -> Harness {
    let ram = create_guest_ram(1 << 20, crate::guest_ram::Backing::Shmem).unwrap();
    let status = IrqStatus::create().unwrap();
    let (vmm, theirs) = Channel::pair().unwrap();
    let irqfd = eventfd();
    let queues: Vec<EventFd> = (0..queue_fds).map(|_| eventfd()).collect();
    let stop = eventfd();
    let fds = WorkerFds {
        control: theirs,
        guest_ram: ram.memfd.try_clone().unwrap(),
        irq_status: status.fd().try_clone_to_owned().unwrap(),
        irqfd: irqfd.try_clone().unwrap(),
        queue_events: queues.iter().map(|q| q.try_clone().unwrap()).collect(),
        stop: stop.try_clone().unwrap(),
    };
    let worker = std::thread::spawn(move || run(backend, fds));
    Harness {
        vmm,
        ram,
        status,
        irqfd,
        queues,
        stop,
        worker,
    }
}

impl Harness {
    fn recv(&self) -> WorkerToVmm {
        assert!(
            wait_readable(self.vmm.as_fd(), Duration::from_secs(10)).unwrap(),
            "worker silent"
        );
        let (msg, fds) = self.vmm.recv::<WorkerToVmm>().unwrap();
        assert!(fds.is_empty());
        msg
    }

    fn send(&self, msg: &VmmToWorker) {
        self.vmm.send(msg, &[]).unwrap();
    }

    fn request(&self, msg: &VmmToWorker) -> WorkerToVmm {
        self.send(msg);
        self.recv()
    }

    fn join(self) -> Result<WorkerExit, WorkerError> {
        self.worker.join().unwrap()
    }
}

fn rng() -> Box<dyn VirtioBackend> {
    Box::new(Rng::with_reader(Fives))
}

fn rng_queue() -> QueueConfig {
    QueueConfig {
        index: 0,
        size: QSIZE,
        desc_table: DESC,
        avail_ring: AVAIL,
        used_ring: USED,
    }
}

fn activate(queues: Vec<QueueConfig>) -> VmmToWorker {
    VmmToWorker::Activate {
        driver_features: VIRTIO_F_VERSION_1,
        queues,
    }
}

#[test]
fn ready_comes_first_even_if_the_vmm_talks_first() {
    let h = start(rng(), 1);
    // Sent before the worker could have said anything: still, Ready is the first message.
    h.send(&activate(vec![rng_queue()]));
    match h.recv() {
        WorkerToVmm::Ready {
            device_type,
            device_features,
            num_queues,
            max_queue_size,
            config,
        } => {
            assert_eq!(device_type, devices::VIRTIO_ID_RNG);
            assert_ne!(device_features & VIRTIO_F_VERSION_1, 0);
            assert_eq!(
                (num_queues, max_queue_size),
                (1, devices::rng::MAX_QUEUE_SIZE)
            );
            assert!(config.is_empty());
        }
        other => panic!("expected Ready, got {other:?}"),
    }
    assert_eq!(h.recv(), WorkerToVmm::Activated);
    h.send(&VmmToWorker::Shutdown);
    assert_eq!(h.join().unwrap(), WorkerExit::Shutdown);
}

/// Puts one device-writable buffer of `len` bytes at BUF in descriptor 0 and makes it available
/// as the `n`-th chain (avail idx n + 1).
fn offer_buffer(mem: &GuestMemoryMmap, n: u16, len: u32) {
    mem.write_obj(BUF, GuestAddress(DESC)).unwrap();
    mem.write_obj(len, GuestAddress(DESC + 8)).unwrap();
    mem.write_obj(2u16, GuestAddress(DESC + 12)).unwrap(); // VIRTQ_DESC_F_WRITE
    mem.write_obj(0u16, GuestAddress(DESC + 14)).unwrap();
    let ring_slot = GuestAddress(AVAIL + 4 + 2 * u64::from(n % QSIZE));
    mem.write_obj(0u16, ring_slot).unwrap();
    mem.write_obj(n + 1, GuestAddress(AVAIL + 2)).unwrap();
}

fn used_idx(mem: &GuestMemoryMmap) -> u16 {
    mem.read_obj(GuestAddress(USED + 2)).unwrap()
}

#[test]
fn activated_rng_fills_buffers_and_raises_vring_interrupts() {
    let h = start(rng(), 1);
    assert!(matches!(h.recv(), WorkerToVmm::Ready { .. }));
    let mem = &h.ram.memory;
    assert_eq!(
        h.request(&activate(vec![rng_queue()])),
        WorkerToVmm::Activated
    );

    for n in 0..3u16 {
        offer_buffer(mem, n, 32);
        h.queues[0].write(1).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while used_idx(mem) != n + 1 {
            assert!(std::time::Instant::now() < deadline, "chain {n} not used");
            std::thread::sleep(Duration::from_millis(1));
        }
        // The bit is set before the irqfd is written, so once the irqfd fired it is visible.
        assert!(wait_readable_eventfd(&h.irqfd));
        assert_eq!(h.status.pending() & INT_VRING, INT_VRING);
        h.status.ack(INT_VRING);
        h.irqfd.read().unwrap();
    }
    let mut bytes = [0u8; 32];
    mem.read_slice(&mut bytes, GuestAddress(BUF)).unwrap();
    assert_eq!(bytes, [0x5a; 32]);
    let used_len: u32 = mem.read_obj(GuestAddress(USED + 4 + 4)).unwrap();
    assert_eq!(used_len, 32);

    match h.request(&VmmToWorker::GetStats) {
        WorkerToVmm::Stats(stats) => {
            assert_eq!((stats.queues[0].requests, stats.queues[0].bytes), (3, 96));
        }
        other => panic!("expected Stats, got {other:?}"),
    }
    assert_eq!(h.request(&VmmToWorker::Reset), WorkerToVmm::ResetDone);
    // After a reset the device can be activated again.
    assert_eq!(
        h.request(&activate(vec![rng_queue()])),
        WorkerToVmm::Activated
    );
    drop(h.vmm);
    assert_eq!(h.worker.join().unwrap().unwrap(), WorkerExit::PeerGone);
}

/// Polls the irqfd (a non-blocking eventfd) for up to 10 s.
fn wait_readable_eventfd(fd: &EventFd) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        // Reading the counter would consume it, so peek with poll instead.
        let mut pfd = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(fd),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for a call with count 1; the eventfd outlives the call.
        if unsafe { libc::poll(&mut pfd, 1, 10) } > 0 {
            return true;
        }
    }
    false
}

#[test]
fn invalid_activations_are_refused_and_the_worker_keeps_serving() {
    let h = start(rng(), 1);
    assert!(matches!(h.recv(), WorkerToVmm::Ready { .. }));
    let bad_activation = WorkerToVmm::DeviceError {
        reason: DeviceErrorKind::BadActivation,
    };
    // Queue index the device lacks; unoffered feature; misaligned ring (message validation).
    let mut wrong_index = rng_queue();
    wrong_index.index = 1;
    assert_eq!(h.request(&activate(vec![wrong_index])), bad_activation);
    let unoffered = VmmToWorker::Activate {
        driver_features: VIRTIO_F_VERSION_1 | 1 << 60,
        queues: vec![rng_queue()],
    };
    assert_eq!(h.request(&unoffered), bad_activation);
    let mut misaligned = rng_queue();
    misaligned.used_ring += 2;
    assert_eq!(h.request(&activate(vec![misaligned])), bad_activation);
    // A ring past the end of guest RAM (1 MiB): only guest memory can tell.
    let mut outside = rng_queue();
    outside.desc_table = 2 << 20;
    assert_eq!(
        h.request(&activate(vec![outside])),
        WorkerToVmm::DeviceError {
            reason: DeviceErrorKind::GuestMemory
        }
    );
    // No queue at all: the backend refuses (its queue is not ready).
    assert_eq!(h.request(&activate(vec![])), bad_activation);
    // Still alive and inactive: a good activation works, a second one is refused.
    assert_eq!(
        h.request(&activate(vec![rng_queue()])),
        WorkerToVmm::Activated
    );
    assert_eq!(h.request(&activate(vec![rng_queue()])), bad_activation);
    h.send(&VmmToWorker::Shutdown);
    assert_eq!(h.join().unwrap(), WorkerExit::Shutdown);
}

#[test]
fn garbage_from_the_vmm_gets_an_error_reply_and_ends_the_worker() {
    let h = start(rng(), 1);
    assert!(matches!(h.recv(), WorkerToVmm::Ready { .. }));
    // A u32 tag no VmmToWorker variant has.
    h.vmm.send(&0xffff_ffffu32, &[]).unwrap();
    assert_eq!(
        h.recv(),
        WorkerToVmm::DeviceError {
            reason: DeviceErrorKind::Internal
        }
    );
    assert!(matches!(h.join(), Err(WorkerError::Control(_))));
}

#[test]
fn fds_with_a_message_end_the_worker() {
    let h = start(rng(), 1);
    assert!(matches!(h.recv(), WorkerToVmm::Ready { .. }));
    h.vmm
        .send(&VmmToWorker::GetStats, &[h.ram.memfd.as_fd()])
        .unwrap();
    assert!(matches!(h.recv(), WorkerToVmm::DeviceError { .. }));
    assert!(matches!(h.join(), Err(WorkerError::UnexpectedFds(1))));
}

#[test]
fn config_writes_inside_the_space_publish_the_new_config() {
    let h = start(
        Box::new(Doubler {
            config: [1, 2, 3, 4],
        }),
        2,
    );
    match h.recv() {
        WorkerToVmm::Ready {
            device_type,
            num_queues,
            config,
            ..
        } => assert_eq!((device_type, num_queues, config), (42, 2, vec![1, 2, 3, 4])),
        other => panic!("expected Ready, got {other:?}"),
    }
    // Outside the 4-byte space: ignored, no reply.
    h.send(&VmmToWorker::WriteConfig {
        offset: 3,
        data: vec![9, 9],
    });
    h.send(&VmmToWorker::WriteConfig {
        offset: 1,
        data: vec![5],
    });
    assert_eq!(
        h.recv(),
        WorkerToVmm::ConfigChanged {
            config: vec![1, 10, 3, 4]
        }
    );
    // The same write again changes nothing, so nothing is published; the next reply is Stats.
    h.send(&VmmToWorker::WriteConfig {
        offset: 1,
        data: vec![5],
    });
    assert!(matches!(
        h.request(&VmmToWorker::GetStats),
        WorkerToVmm::Stats(_)
    ));
    h.stop.write(1).unwrap();
    assert_eq!(h.join().unwrap(), WorkerExit::Stopped);
}

#[test]
fn a_queue_eventfd_count_mismatch_is_reported_before_ready() {
    let h = start(rng(), 2);
    assert_eq!(
        h.recv(),
        WorkerToVmm::DeviceError {
            reason: DeviceErrorKind::Internal
        }
    );
    assert!(matches!(
        h.join(),
        Err(WorkerError::QueueEvents {
            expected: 1,
            got: 2
        })
    ));
}

/// A device with an eventfd of its own (`own`): on activation it adds it to the loop (or fails
/// to, with `refuse`); each time it is readable the device drains it and raises a
/// configuration-change interrupt.
struct Pinger {
    own: EventFd,
    interrupt: Option<Arc<dyn Interrupt>>,
    refuse: bool,
}

impl VirtioBackend for Pinger {
    fn device_type(&self) -> u32 {
        43
    }
    fn num_queues(&self) -> u16 {
        1
    }
    fn max_queue_size(&self) -> u16 {
        QSIZE
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }
    fn config(&self) -> Vec<u8> {
        Vec::new()
    }
    fn write_config(&mut self, _offset: u32, _data: &[u8]) {}
    fn activate(
        &mut self,
        _driver_features: u64,
        _mem: GuestMemoryMmap,
        _queues: Vec<Queue>,
        interrupt: Arc<dyn Interrupt>,
    ) -> Result<(), DeviceError> {
        if self.interrupt.is_some() {
            return Err(DeviceError::AlreadyActive);
        }
        self.interrupt = Some(interrupt);
        Ok(())
    }
    fn register_events(
        &mut self,
        events: &mut dyn devices::EventRegistry,
    ) -> Result<(), DeviceError> {
        if self.refuse {
            self.refuse = false;
            return Err(DeviceError::Events(io::Error::other("refused")));
        }
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.own);
        events
            .add(fd, 5, devices::EventSet::IN)
            .map_err(DeviceError::Events)
    }
    fn process_queue(
        &mut self,
        _index: u16,
        _events: &mut dyn devices::EventRegistry,
    ) -> Result<(), DeviceError> {
        Ok(())
    }
    fn process_event(
        &mut self,
        token: u32,
        _ready: devices::EventSet,
        _events: &mut dyn devices::EventRegistry,
    ) -> Result<(), DeviceError> {
        assert_eq!(token, 5);
        let _ = self.own.read();
        if let Some(interrupt) = &self.interrupt {
            interrupt.signal_config_change();
        }
        Ok(())
    }
    fn reset(&mut self) -> Option<Vec<Queue>> {
        self.interrupt = None;
        None
    }
}

#[test]
fn a_backends_own_fds_are_served_while_it_is_active() {
    let own = eventfd();
    let h = start(
        Box::new(Pinger {
            own: own.try_clone().unwrap(),
            interrupt: None,
            refuse: true,
        }),
        1,
    );
    assert!(matches!(h.recv(), WorkerToVmm::Ready { .. }));
    // The first activation fails in register_events: an error, and the device is inactive.
    assert_eq!(
        h.request(&activate(vec![rng_queue()])),
        WorkerToVmm::DeviceError {
            reason: DeviceErrorKind::Internal
        }
    );
    assert_eq!(
        h.request(&activate(vec![rng_queue()])),
        WorkerToVmm::Activated
    );
    own.write(1).unwrap();
    assert!(
        wait_readable_eventfd(&h.irqfd),
        "no interrupt from the device's own fd"
    );
    assert_eq!(h.status.pending(), devices::INT_CONFIG);
    h.irqfd.read().unwrap();
    h.status.ack(devices::INT_CONFIG);

    // After a reset the loop no longer watches the fd: a write wakes nobody.
    assert_eq!(h.request(&VmmToWorker::Reset), WorkerToVmm::ResetDone);
    own.write(1).unwrap();
    assert!(matches!(
        h.request(&VmmToWorker::GetStats),
        WorkerToVmm::Stats(_)
    ));
    assert_eq!(
        h.irqfd.read().unwrap_err().kind(),
        io::ErrorKind::WouldBlock
    );
    assert_eq!(own.read().unwrap(), 1, "the fd was left unread");
    h.send(&VmmToWorker::Shutdown);
    assert_eq!(h.join().unwrap(), WorkerExit::Shutdown);
}

#[test]
fn fds_are_passed_in_fd_numbers_order() {
    use std::os::fd::AsRawFd;
    let ram = create_guest_ram(1 << 20, crate::guest_ram::Backing::Shmem).unwrap();
    let status = IrqStatus::create().unwrap();
    let (_vmm, theirs) = Channel::pair().unwrap();
    let fds = WorkerFds {
        control: theirs,
        guest_ram: ram.memfd.try_clone().unwrap(),
        irq_status: status.fd().try_clone_to_owned().unwrap(),
        irqfd: eventfd(),
        queue_events: vec![eventfd(), eventfd()],
        stop: eventfd(),
    };
    let image = std::fs::File::open("/dev/null").unwrap();
    let mut want = vec![
        fds.control.as_raw_fd(),
        fds.guest_ram.as_raw_fd(),
        fds.irq_status.as_raw_fd(),
        fds.irqfd.as_raw_fd(),
        fds.stop.as_raw_fd(),
    ];
    want.extend(fds.queue_events.iter().map(|q| q.as_raw_fd()));
    want.push(image.as_raw_fd());
    // A resource without an fd (a socket path) takes no number.
    let passed = crate::spawned::fds_to_pass(fds, vec![None, Some(image.into())]);
    let got: Vec<i32> = passed.iter().map(|fd| fd.as_raw_fd()).collect();
    assert_eq!(got, want);
    assert_eq!(
        u32::try_from(got.len()).unwrap(),
        crate::fd_numbers::passed(2, 1)
    );
    assert_eq!(crate::fd_numbers::first_resource(2), 10);
}

/// A worker told to `Resume` (as a restarted one is) takes every chain after the used index —
/// the ones a dead worker had taken but not completed, and the ones it never saw — without a
/// notification (the dead one may have swallowed it, or left notifications suppressed), says
/// how many were pending, and raises an interrupt.
#[test]
fn a_resumed_worker_takes_the_pending_chains_again() {
    let h = start(rng(), 1);
    assert!(matches!(h.recv(), WorkerToVmm::Ready { .. }));
    let mem = &h.ram.memory;
    assert_eq!(
        h.request(&activate(vec![rng_queue()])),
        WorkerToVmm::Activated
    );
    offer_buffer(mem, 0, 16);
    h.queues[0].write(1).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while used_idx(mem) != 1 {
        assert!(std::time::Instant::now() < deadline, "chain 0 not used");
        std::thread::sleep(Duration::from_millis(1));
    }
    // The device stops (as a dead worker does): two more chains wait, no notification comes,
    // and the used ring still says "do not notify".
    assert_eq!(h.request(&VmmToWorker::Reset), WorkerToVmm::ResetDone);
    offer_buffer(mem, 1, 16);
    offer_buffer(mem, 2, 16);
    mem.write_obj(1u16, GuestAddress(USED)).unwrap(); // VIRTQ_USED_F_NO_NOTIFY
    h.status.ack(INT_VRING);
    while h.irqfd.read().is_ok() {}

    let resume = VmmToWorker::Resume {
        driver_features: VIRTIO_F_VERSION_1,
        queues: vec![rng_queue()],
    };
    assert_eq!(h.request(&resume), WorkerToVmm::Resumed { pending: 2 });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while used_idx(mem) != 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "pending chains not used"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(wait_readable_eventfd(&h.irqfd));
    assert_eq!(h.status.pending() & INT_VRING, INT_VRING);
    // Each chain went into the used ring once, in order: entries 1 and 2, nothing after.
    let entry = |i: u64| -> (u32, u32) {
        let at = USED + 4 + 8 * i;
        (
            mem.read_obj(GuestAddress(at)).unwrap(),
            mem.read_obj(GuestAddress(at + 4)).unwrap(),
        )
    };
    assert_eq!((entry(1), entry(2)), ((0, 16), (0, 16)));
    h.send(&VmmToWorker::Shutdown);
    assert_eq!(h.join().unwrap(), WorkerExit::Shutdown);
}

/// A ring whose available index runs more than the queue's size ahead of its used index was
/// not made by a driver: the resume is refused as a guest fault, and the worker serves on.
#[test]
fn a_resume_past_the_queue_size_is_a_guest_fault() {
    let h = start(rng(), 1);
    assert!(matches!(h.recv(), WorkerToVmm::Ready { .. }));
    let mem = &h.ram.memory;
    mem.write_obj(QSIZE + 1, GuestAddress(AVAIL + 2)).unwrap();
    let resume = VmmToWorker::Resume {
        driver_features: VIRTIO_F_VERSION_1,
        queues: vec![rng_queue()],
    };
    assert_eq!(
        h.request(&resume),
        WorkerToVmm::DeviceError {
            reason: DeviceErrorKind::GuestFault
        }
    );
    mem.write_obj(0u16, GuestAddress(AVAIL + 2)).unwrap();
    assert_eq!(h.request(&resume), WorkerToVmm::Resumed { pending: 0 });
    h.send(&VmmToWorker::Shutdown);
    assert_eq!(h.join().unwrap(), WorkerExit::Shutdown);
}
