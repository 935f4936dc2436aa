use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{run_queues, QueueRunner, RunnerError, Wake};
use crate::events::{EventRegistry, EventSet, NoEvents};
use crate::rng::tests::{memory, queue_of, used_idx, Counter, Recorder};
use crate::rng::Rng;
use crate::{DeviceError, Interrupt, VirtioBackend, VIRTIO_F_VERSION_1};

/// Records which queues it was asked to process; fails for `fail_on`.
struct Fake {
    calls: Arc<Mutex<Vec<u16>>>,
    fail_on: Option<u16>,
}

impl VirtioBackend for Fake {
    fn device_type(&self) -> u32 {
        0
    }
    fn num_queues(&self) -> u16 {
        3
    }
    fn max_queue_size(&self) -> u16 {
        8
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
        _interrupt: Arc<dyn Interrupt>,
    ) -> Result<(), DeviceError> {
        Ok(())
    }
    fn process_queue(
        &mut self,
        index: u16,
        _events: &mut dyn EventRegistry,
    ) -> Result<(), DeviceError> {
        self.calls.lock().unwrap().push(index);
        if self.fail_on == Some(index) {
            return Err(DeviceError::UnknownQueue(index));
        }
        Ok(())
    }
    fn reset(&mut self) -> Option<Vec<Queue>> {
        None
    }
}

fn fake(fail_on: Option<u16>) -> (Fake, Arc<Mutex<Vec<u16>>>) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let backend = Fake {
        calls: calls.clone(),
        fail_on,
    };
    (backend, calls)
}

fn eventfd() -> EventFd {
    EventFd::new(EFD_NONBLOCK).unwrap()
}

#[test]
fn stop_ends_the_loop_and_stays_set() {
    let (mut backend, calls) = fake(None);
    let events = vec![(0, eventfd())];
    let stop = eventfd();
    stop.write(1).unwrap();
    run_queues(&mut backend, &events, &stop).unwrap();
    // The stop fd is left for its owner: a second runner sharing it stops too.
    run_queues(&mut backend, &events, &stop).unwrap();
    assert_eq!(stop.read().unwrap(), 1);
    assert!(calls.lock().unwrap().is_empty());
}

#[test]
fn notifications_reach_their_queue_and_caller_fds_wake_the_caller() {
    let (mut backend, calls) = fake(None);
    let events = vec![(0, eventfd()), (2, eventfd())];
    let stop = eventfd();
    let control = eventfd();
    let mut runner = QueueRunner::new(&events, &stop).unwrap();
    runner.watch(&control, 7).unwrap();

    events[1].1.write(1).unwrap();
    events[1].1.write(1).unwrap(); // two notifications coalesce into one call
    control.write(1).unwrap();
    assert_eq!(runner.run(&mut backend).unwrap(), Wake::Fd(7));
    assert_eq!(*calls.lock().unwrap(), vec![2]);
    // The runner drained the queue eventfd but left the caller's fd alone.
    assert!(events[1].1.read().is_err());
    assert_eq!(control.read().unwrap(), 1);

    events[0].1.write(1).unwrap();
    stop.write(1).unwrap();
    assert_eq!(runner.run(&mut backend).unwrap(), Wake::Stop);
    assert_eq!(*calls.lock().unwrap(), vec![2, 0]);
}

#[test]
fn a_failing_queue_ends_the_run_with_its_error() {
    let (mut backend, calls) = fake(Some(0));
    let events = vec![(0, eventfd())];
    let stop = eventfd();
    events[0].1.write(1).unwrap();
    let err = run_queues(&mut backend, &events, &stop).unwrap_err();
    assert!(matches!(
        err,
        RunnerError::Device(DeviceError::UnknownQueue(0))
    ));
    assert_eq!(
        ipc::DeviceErrorKind::from(&err),
        ipc::DeviceErrorKind::Internal
    );
    assert_eq!(*calls.lock().unwrap(), vec![0]);
}

/// Waits until the used ring index reaches `want`, for at most 10 s.
fn wait_used(mem: &GuestMemoryMmap, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while used_idx(mem) != want {
        assert!(Instant::now() < deadline, "used index stuck below {want}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn rng_served_from_a_runner_thread() {
    let mem = memory();
    let vq = MockSplitQueue::new(&mem, 16);
    let irq = Arc::new(Recorder::default());
    let mut rng = Rng::with_reader(Counter(0));
    assert!(rng.register_events(&mut NoEvents).is_ok());
    rng.activate(
        VIRTIO_F_VERSION_1,
        mem.clone(),
        vec![queue_of(&vq)],
        irq.clone(),
    )
    .unwrap();
    let events = vec![(0, eventfd())];
    let stop = eventfd();

    std::thread::scope(|s| {
        let worker = s.spawn(|| run_queues(&mut rng, &events, &stop));
        for i in 0..2u16 {
            let d = Descriptor::new(0x1000 + 0x100 * u64::from(i), 64, 2, 0);
            vq.desc_table().store(i, RawDescriptor::from(d)).unwrap();
            vq.avail().ring().ref_at(usize::from(i)).unwrap().store(i);
            vq.avail().idx().store(i + 1);
            events[0].1.write(1).unwrap();
            wait_used(&mem, i + 1);
        }
        stop.write(1).unwrap();
        worker.join().unwrap().unwrap();
    });

    assert_eq!(irq.used.load(Ordering::SeqCst), 2);
    let stats = rng.stats().queues[0];
    assert_eq!((stats.requests, stats.bytes), (2, 128));
}

/// A device with fds of its own: `fds[i]` is added with token `10 + i` on activation. What it
/// was told is recorded in `seen`; `on_event` runs in `process_event`.
struct Watcher {
    fds: Vec<RawFd>,
    seen: Vec<(u32, EventSet)>,
    on_event: fn(&mut Watcher, u32, &mut dyn EventRegistry) -> Result<(), DeviceError>,
}

impl Watcher {
    fn new(fds: &[&dyn AsRawFd]) -> Self {
        Watcher {
            fds: fds.iter().map(|fd| fd.as_raw_fd()).collect(),
            seen: Vec::new(),
            on_event: |_, _, _| Ok(()),
        }
    }
}

impl VirtioBackend for Watcher {
    fn device_type(&self) -> u32 {
        0
    }
    fn num_queues(&self) -> u16 {
        1
    }
    fn max_queue_size(&self) -> u16 {
        8
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
        _interrupt: Arc<dyn Interrupt>,
    ) -> Result<(), DeviceError> {
        Ok(())
    }
    fn register_events(&mut self, events: &mut dyn EventRegistry) -> Result<(), DeviceError> {
        for (token, fd) in (10u32..).zip(&self.fds) {
            events
                .add(*fd, token, EventSet::IN)
                .map_err(DeviceError::Events)?;
        }
        Ok(())
    }
    fn process_queue(
        &mut self,
        _index: u16,
        events: &mut dyn EventRegistry,
    ) -> Result<(), DeviceError> {
        // A queue notification makes the device wait for its first fd to be writable.
        events
            .modify(self.fds[0], 20, EventSet::OUT)
            .map_err(DeviceError::Events)
    }
    fn process_event(
        &mut self,
        token: u32,
        ready: EventSet,
        events: &mut dyn EventRegistry,
    ) -> Result<(), DeviceError> {
        self.seen.push((token, ready));
        (self.on_event)(self, token, events)
    }
    fn reset(&mut self) -> Option<Vec<Queue>> {
        None
    }
}

/// Runs `runner` until it returns for the caller's fd `control` (written here first).
fn run_once(runner: &mut QueueRunner<'_>, backend: &mut Watcher, control: &EventFd) {
    control.write(1).unwrap();
    assert_eq!(runner.run(backend).unwrap(), Wake::Fd(1));
    control.read().unwrap();
}

#[test]
fn backend_fds_reach_process_event_with_their_token() {
    let own = [eventfd(), eventfd()];
    let mut backend = Watcher::new(&[&own[0], &own[1]]);
    let queues = vec![(0, eventfd())];
    let (stop, control) = (eventfd(), eventfd());
    let mut runner = QueueRunner::new(&queues, &stop).unwrap();
    runner.watch(&control, 1).unwrap();
    runner.activated(&mut backend).unwrap();
    assert_eq!(runner.backend_fd_count(), 2);

    own[1].write(1).unwrap();
    run_once(&mut runner, &mut backend, &control);
    assert_eq!(backend.seen, [(11, EventSet::IN)]);
    // Level-triggered: still readable, so reported again; the loop never reads it.
    run_once(&mut runner, &mut backend, &control);
    assert_eq!(backend.seen.len(), 2);
    own[1].read().unwrap();

    // process_queue changes what own[0] is watched for, and its token: an eventfd is always
    // writable, so the next wait reports it.
    queues[0].1.write(1).unwrap();
    run_once(&mut runner, &mut backend, &control);
    run_once(&mut runner, &mut backend, &control);
    assert_eq!(backend.seen[2..], [(20, EventSet::OUT)]);
}

#[test]
fn reset_and_reactivation_drop_the_backend_fds() {
    let own = eventfd();
    let mut backend = Watcher::new(&[&own]);
    let queues = vec![(0, eventfd())];
    let (stop, control) = (eventfd(), eventfd());
    let mut runner = QueueRunner::new(&queues, &stop).unwrap();
    runner.watch(&control, 1).unwrap();
    runner.activated(&mut backend).unwrap();
    // A second activation replaces the registrations: no duplicate, no error.
    runner.activated(&mut backend).unwrap();
    assert_eq!(runner.backend_fd_count(), 1);
    runner.reset_events();
    assert_eq!(runner.backend_fd_count(), 0);
    own.write(1).unwrap();
    run_once(&mut runner, &mut backend, &control);
    assert!(backend.seen.is_empty(), "{:?}", backend.seen);
}

#[test]
fn a_backend_removes_its_own_fds_and_no_other() {
    let own = [eventfd(), eventfd()];
    let mut backend = Watcher::new(&[&own[0], &own[1]]);
    // Handling either event removes both fds: the other event of the same wake-up is not
    // delivered any more.
    backend.on_event = |watcher, _, events| {
        for fd in &watcher.fds {
            events.remove(*fd).map_err(DeviceError::Events)?;
        }
        Ok(())
    };
    let queues = vec![(0, eventfd())];
    let (stop, control) = (eventfd(), eventfd());
    let mut runner = QueueRunner::new(&queues, &stop).unwrap();
    runner.watch(&control, 1).unwrap();
    runner.activated(&mut backend).unwrap();
    own[0].write(1).unwrap();
    own[1].write(1).unwrap();
    run_once(&mut runner, &mut backend, &control);
    assert_eq!(backend.seen.len(), 1, "{:?}", backend.seen);
    assert_eq!(runner.backend_fd_count(), 0);

    // Nothing the backend did not add can be removed or changed through the registry.
    let mut registrations = runner.registrations();
    let queue_fd = queues[0].1.as_raw_fd();
    for err in [
        registrations.remove(queue_fd).unwrap_err(),
        registrations.modify(queue_fd, 1, EventSet::IN).unwrap_err(),
    ] {
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }
}

#[test]
fn a_failing_event_breaks_the_device_and_drops_its_fds() {
    let own = eventfd();
    let mut backend = Watcher::new(&[&own]);
    backend.on_event = |_, _, _| Err(DeviceError::UnknownQueue(9));
    let queues = vec![(0, eventfd())];
    let stop = eventfd();
    let mut runner = QueueRunner::new(&queues, &stop).unwrap();
    runner.activated(&mut backend).unwrap();
    own.write(1).unwrap();
    let err = runner.run(&mut backend).unwrap_err();
    assert!(matches!(
        err,
        RunnerError::Device(DeviceError::UnknownQueue(9))
    ));
    assert_eq!(runner.backend_fd_count(), 0);
    // The fd is still readable but no longer wakes the loop.
    stop.write(1).unwrap();
    assert_eq!(runner.run(&mut backend).unwrap(), Wake::Stop);
    assert_eq!(backend.seen.len(), 1);
}

#[test]
fn a_failed_registration_is_undone() {
    // epoll refuses regular files (EPERM): the second add fails after the first succeeded,
    // and the runner removes the first again.
    let good = eventfd();
    let file = std::fs::File::open(std::env::current_exe().unwrap()).unwrap();
    let mut backend = Watcher::new(&[&good, &file]);
    let queues = vec![(0, eventfd())];
    let stop = eventfd();
    let mut runner = QueueRunner::new(&queues, &stop).unwrap();
    let err = runner.activated(&mut backend).unwrap_err();
    assert!(matches!(err, DeviceError::Events(_)), "{err}");
    assert_eq!(runner.backend_fd_count(), 0);
    // The first fd is really gone from the epoll set: adding it again works.
    backend.fds.truncate(1);
    runner.activated(&mut backend).unwrap();
    assert_eq!(runner.backend_fd_count(), 1);
}

#[test]
fn keys_round_trip() {
    use super::Key;
    for key in [
        Key::Queue(0),
        Key::Queue(u32::MAX),
        Key::Stop,
        Key::Caller(7),
        Key::Backend(u32::MAX),
    ] {
        assert_eq!(Key::from_data(key.data()), Some(key));
    }
    assert_eq!(Key::from_data(4 << 32), None);
}
