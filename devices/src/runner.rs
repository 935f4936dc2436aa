//! The one event loop that drives a [`VirtioBackend`]'s queues.
//!
//! A worker process and an in-process device thread run the same loop: wait (epoll) on the
//! queue notification eventfds (the KVM ioeventfds), drain the one that fired, call
//! [`VirtioBackend::process_queue`] for its queue. The loop returns to its caller when the stop
//! eventfd is readable or when one of the caller's own fds (a control socket, a command
//! eventfd) is readable, so the caller handles those and calls [`QueueRunner::run`] again:
//!
//! ```text
//!   let mut runner = QueueRunner::new(&queue_events, &stop)?;
//!   runner.watch(&control, CONTROL)?;                   // optional, any number of fds
//!   loop {
//!       match runner.run(&mut backend)? {
//!           Wake::Stop => break,
//!           Wake::Fd(CONTROL) => { /* recv one message: Activate, Reset, GetStats, ... */ }
//!           Wake::Fd(_) => unreachable,
//!       }
//!   }
//! ```
//!
//! - **Worker**: `watch` the control socket; `Activate`/`Reset`/`WriteConfig` call the backend
//!   between two `run`s. The stop fd can be an eventfd nobody writes, or the SIGTERM path.
//! - **In-process thread**: the thread owns the backend; the VMM sends commands over a channel
//!   and writes a watched command eventfd; `stop` ends the thread. [`run_queues`] is the whole
//!   loop when there is nothing else to watch.
//!
//! Queue eventfds are drained before `process_queue` runs, so a notification that arrives while
//! the device works is never lost. Notifications before activation reach the backend, which
//! ignores them. The stop eventfd is never read: once written, every runner watching it (one
//! stop fd may serve several device threads) returns [`Wake::Stop`] until its owner drains it.
//! The caller's fds are level-triggered and never read here either.

use std::io;
use std::os::fd::AsRawFd;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::{DeviceError, VirtioBackend};

/// Epoll events fetched per wait.
const EVENT_BATCH: usize = 16;

/// Why [`QueueRunner::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The stop eventfd is readable.
    Stop,
    /// The caller's fd registered with this token (see [`QueueRunner::watch`]) is readable or
    /// hung up.
    Fd(u64),
}

/// Why the runner stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// Creating the epoll instance or registering an fd failed.
    #[error("setting up the event loop failed")]
    Setup(#[source] io::Error),
    /// `epoll_wait` failed.
    #[error("waiting for queue events failed")]
    Wait(#[source] io::Error),
    /// Reading a queue's notification eventfd failed.
    #[error("reading queue {index}'s notification eventfd failed")]
    Notification {
        /// The queue index.
        index: u16,
        /// The read error.
        #[source]
        source: io::Error,
    },
    /// The backend could not process a queue; the device needs a reset.
    #[error(transparent)]
    Device(#[from] DeviceError),
}

impl From<&RunnerError> for ipc::DeviceErrorKind {
    fn from(err: &RunnerError) -> Self {
        match err {
            RunnerError::Device(e) => e.into(),
            RunnerError::Setup(_) | RunnerError::Wait(_) | RunnerError::Notification { .. } => {
                ipc::DeviceErrorKind::Internal
            }
        }
    }
}

/// What an epoll registration stands for; the epoll data is the index into `QueueRunner::slots`.
#[derive(Debug, Clone, Copy)]
enum Slot {
    /// Entry `i` of `queue_events`.
    Queue(usize),
    Stop,
    /// A caller's fd and its token.
    Caller(u64),
}

/// Waits on a device's queue eventfds, a stop eventfd and the caller's fds, and feeds
/// notifications to a backend. See the module docs for the calling pattern.
#[derive(Debug)]
pub struct QueueRunner<'a> {
    epoll: Epoll,
    queue_events: &'a [(u16, EventFd)],
    slots: Vec<Slot>,
    events: Vec<EpollEvent>,
}

impl<'a> QueueRunner<'a> {
    /// A runner for `queue_events` (queue index, notification eventfd) and `stop`.
    pub fn new(queue_events: &'a [(u16, EventFd)], stop: &'a EventFd) -> Result<Self, RunnerError> {
        let mut runner = QueueRunner {
            epoll: Epoll::new().map_err(RunnerError::Setup)?,
            queue_events,
            slots: Vec::with_capacity(queue_events.len() + 2),
            events: vec![EpollEvent::default(); EVENT_BATCH],
        };
        for (i, (_, event)) in queue_events.iter().enumerate() {
            runner.add(event.as_raw_fd(), Slot::Queue(i))?;
        }
        runner.add(stop.as_raw_fd(), Slot::Stop)?;
        Ok(runner)
    }

    /// Also wakes up when `fd` is readable (or hung up): [`run`](Self::run) then returns
    /// [`Wake::Fd`]`(token)`. The runner never reads `fd`.
    ///
    /// `fd` is anything with an fd (a control socket, an `EventFd`, an `OwnedFd`) and must
    /// outlive the runner.
    pub fn watch<F: AsRawFd + ?Sized>(&mut self, fd: &'a F, token: u64) -> Result<(), RunnerError> {
        self.add(fd.as_raw_fd(), Slot::Caller(token))
    }

    fn add(&mut self, fd: i32, slot: Slot) -> Result<(), RunnerError> {
        let data = self.slots.len() as u64;
        self.epoll
            .ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, data),
            )
            .map_err(RunnerError::Setup)?;
        self.slots.push(slot);
        Ok(())
    }

    /// Processes queue notifications until the stop fd or a watched fd is readable.
    ///
    /// Queue notifications that arrived in the same wake-up are processed first. Returns an
    /// error as soon as the backend fails a queue; the caller reports it and resets the device.
    pub fn run(&mut self, backend: &mut dyn VirtioBackend) -> Result<Wake, RunnerError> {
        loop {
            let n = match self.epoll.wait(-1, &mut self.events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(RunnerError::Wait(e)),
            };
            let mut stop = false;
            let mut caller = None;
            for event in &self.events[..n] {
                let slot = usize::try_from(event.data())
                    .ok()
                    .and_then(|i| self.slots.get(i).copied());
                match slot {
                    Some(Slot::Queue(i)) => {
                        let (index, fd) = &self.queue_events[i];
                        drain(fd).map_err(|source| RunnerError::Notification {
                            index: *index,
                            source,
                        })?;
                        backend.process_queue(*index)?;
                    }
                    Some(Slot::Stop) => stop = true,
                    Some(Slot::Caller(token)) => caller = caller.or(Some(token)),
                    // Only slot indices are ever registered.
                    None => {}
                }
            }
            if stop {
                return Ok(Wake::Stop);
            }
            if let Some(token) = caller {
                return Ok(Wake::Fd(token));
            }
        }
    }
}

/// Resets a notification eventfd's counter. It was reported readable and the runner is its only
/// reader, so the read does not block; `WouldBlock` (a non-blocking fd drained elsewhere) is fine.
fn drain(fd: &EventFd) -> io::Result<()> {
    match fd.read() {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e),
    }
}

/// Runs `backend`'s queues until `stop` is readable: [`QueueRunner`] with no other fds.
pub fn run_queues(
    backend: &mut dyn VirtioBackend,
    queue_events: &[(u16, EventFd)],
    stop: &EventFd,
) -> Result<(), RunnerError> {
    let mut runner = QueueRunner::new(queue_events, stop)?;
    loop {
        match runner.run(backend)? {
            Wake::Stop => return Ok(()),
            // No caller fds are registered, so this cannot happen; keep waiting if it does.
            Wake::Fd(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::Queue;
    use vm_memory::GuestMemoryMmap;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::{run_queues, QueueRunner, RunnerError, Wake};
    use crate::rng::tests::{memory, queue_of, used_idx, Counter, Recorder};
    use crate::rng::Rng;
    use crate::{DeviceError, Interrupt, SandboxNeeds, VirtioBackend, VIRTIO_F_VERSION_1};

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
        fn process_queue(&mut self, index: u16) -> Result<(), DeviceError> {
            self.calls.lock().unwrap().push(index);
            if self.fail_on == Some(index) {
                return Err(DeviceError::UnknownQueue(index));
            }
            Ok(())
        }
        fn reset(&mut self) -> Option<Vec<Queue>> {
            None
        }
        fn sandbox_needs(&self) -> SandboxNeeds {
            SandboxNeeds {
                seccomp_profile: "none",
                keep_fds: Vec::new(),
                landlock_paths: Vec::new(),
            }
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
}
