//! The one event loop that drives a [`VirtioBackend`]: its queues and its own fds.
//!
//! A worker process and an in-process device thread run the same loop: wait (epoll) on the
//! queue notification eventfds (the KVM ioeventfds), drain the one that fired, call
//! [`VirtioBackend::process_queue`] for its queue; and for an fd the backend added itself
//! (see [`crate::events`]) call [`VirtioBackend::process_event`] with the backend's token. The
//! loop returns to its caller when the stop eventfd is readable or when one of the caller's own
//! fds (a control socket, a command eventfd) is readable, so the caller handles those and calls
//! [`QueueRunner::run`] again:
//!
//! ```text
//!   let mut runner = QueueRunner::new(&queue_events, &stop)?;
//!   runner.watch(&control, CONTROL)?;                   // optional, any number of fds
//!   loop {
//!       match runner.run(&mut backend)? {
//!           Wake::Stop => break,
//!           Wake::Fd(CONTROL) => {
//!               // recv one message. Activate: backend.activate(..), then
//!               // runner.activated(&mut backend); Reset: runner.reset_events(), then
//!               // backend.reset(); WriteConfig, GetStats, ...
//!           }
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
//! **The backend's own fds** are its business while the device is active, and the loop's
//! otherwise: [`QueueRunner::activated`] calls [`VirtioBackend::register_events`] after an
//! activation (dropping whatever an earlier activation left), [`QueueRunner::reset_events`]
//! removes every one of them (the caller does it on reset), and so does the loop itself when
//! the backend fails (`process_queue` or `process_event` returned an error): a broken device's
//! level-triggered fds must not keep waking the loop.
//!
//! Queue eventfds are drained before `process_queue` runs, so a notification that arrives while
//! the device works is never lost. Notifications before activation reach the backend, which
//! ignores them. The stop eventfd is never read: once written, every runner watching it (one
//! stop fd may serve several device threads) returns [`Wake::Stop`] until its owner drains it.
//! The caller's fds and the backend's are level-triggered and never read here either.
//!
//! Why this loop and not rust-vmm's `event-manager`: see ARCHITECTURE.md ("The device's event
//! loop").

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::events::EventRegistry;
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
    Fd(u32),
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
    /// The backend could not process a queue or one of its own events; the device needs a
    /// reset.
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

/// What an epoll registration stands for, encoded in its 64-bit data: the kind in the upper
/// half, the queue position or token in the lower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    /// Entry `i` of `queue_events`.
    Queue(u32),
    Stop,
    /// A caller's fd and its token.
    Caller(u32),
    /// One of the backend's own fds and the backend's token.
    Backend(u32),
}

impl Key {
    fn data(self) -> u64 {
        let (kind, value) = match self {
            Key::Queue(i) => (0u64, i),
            Key::Stop => (1, 0),
            Key::Caller(token) => (2, token),
            Key::Backend(token) => (3, token),
        };
        kind << 32 | u64::from(value)
    }

    fn from_data(data: u64) -> Option<Key> {
        // The lower half, as put there by `data`.
        let value = data as u32;
        match data >> 32 {
            0 => Some(Key::Queue(value)),
            1 => Some(Key::Stop),
            2 => Some(Key::Caller(value)),
            3 => Some(Key::Backend(value)),
            _ => None,
        }
    }
}

/// The fds the backend added, with their tokens: the loop's [`EventRegistry`].
#[derive(Debug)]
struct Registrations<'e> {
    epoll: &'e Epoll,
    fds: &'e mut Vec<(RawFd, u32)>,
}

impl Registrations<'_> {
    fn position(&self, fd: RawFd) -> Option<usize> {
        self.fds.iter().position(|(f, _)| *f == fd)
    }

    fn not_added(fd: RawFd) -> io::Error {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("fd {fd} was not added by the device"),
        )
    }

    /// Removes every fd the backend added. An fd the backend closed meanwhile is already gone
    /// from the epoll set, so failures are expected and ignored.
    fn clear(&mut self) {
        for (fd, _) in self.fds.drain(..) {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
    }

    fn watches(&self, token: u32) -> bool {
        self.fds.iter().any(|(_, t)| *t == token)
    }
}

impl EventRegistry for Registrations<'_> {
    fn add(&mut self, fd: RawFd, token: u32, interest: EventSet) -> io::Result<()> {
        let event = EpollEvent::new(interest, Key::Backend(token).data());
        self.epoll.ctl(ControlOperation::Add, fd, event)?;
        // An fd closed without `remove` left the epoll set by itself; its number may be
        // reused by the fd added now.
        match self.position(fd) {
            Some(i) => self.fds[i] = (fd, token),
            None => self.fds.push((fd, token)),
        }
        Ok(())
    }

    fn modify(&mut self, fd: RawFd, token: u32, interest: EventSet) -> io::Result<()> {
        let i = self.position(fd).ok_or_else(|| Self::not_added(fd))?;
        let event = EpollEvent::new(interest, Key::Backend(token).data());
        self.epoll.ctl(ControlOperation::Modify, fd, event)?;
        self.fds[i].1 = token;
        Ok(())
    }

    fn remove(&mut self, fd: RawFd) -> io::Result<()> {
        let i = self.position(fd).ok_or_else(|| Self::not_added(fd))?;
        self.fds.swap_remove(i);
        self.epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
    }
}

/// Waits on a device's queue eventfds, a stop eventfd, the caller's fds and the backend's own
/// fds, and feeds them to a backend. See the module docs for the calling pattern.
#[derive(Debug)]
pub struct QueueRunner<'a> {
    epoll: Epoll,
    queue_events: &'a [(u16, EventFd)],
    /// The fds the backend added since its last activation, with its tokens.
    backend_fds: Vec<(RawFd, u32)>,
    events: Vec<EpollEvent>,
}

impl<'a> QueueRunner<'a> {
    /// A runner for `queue_events` (queue index, notification eventfd) and `stop`.
    pub fn new(queue_events: &'a [(u16, EventFd)], stop: &'a EventFd) -> Result<Self, RunnerError> {
        let epoll = Epoll::new().map_err(RunnerError::Setup)?;
        Self::with_epoll(epoll, queue_events, stop)
    }

    /// [`new`](Self::new) on an epoll instance made earlier, which must watch nothing yet: a
    /// worker makes it before it installs its seccomp filter, so the filter need not allow
    /// `epoll_create1` (adding and removing fds, `epoll_ctl`, stays allowed).
    pub fn with_epoll(
        epoll: Epoll,
        queue_events: &'a [(u16, EventFd)],
        stop: &'a EventFd,
    ) -> Result<Self, RunnerError> {
        let runner = QueueRunner {
            epoll,
            queue_events,
            backend_fds: Vec::new(),
            events: vec![EpollEvent::default(); EVENT_BATCH],
        };
        for (i, (_, event)) in (0u32..).zip(queue_events) {
            runner.add(event.as_raw_fd(), Key::Queue(i))?;
        }
        runner.add(stop.as_raw_fd(), Key::Stop)?;
        Ok(runner)
    }

    /// Also wakes up when `fd` is readable (or hung up): [`run`](Self::run) then returns
    /// [`Wake::Fd`]`(token)`. The runner never reads `fd`.
    ///
    /// `fd` is anything with an fd (a control socket, an `EventFd`, an `OwnedFd`) and must
    /// outlive the runner.
    pub fn watch<F: AsRawFd + ?Sized>(&mut self, fd: &'a F, token: u32) -> Result<(), RunnerError> {
        self.add(fd.as_raw_fd(), Key::Caller(token))
    }

    fn add(&self, fd: RawFd, key: Key) -> Result<(), RunnerError> {
        self.epoll
            .ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, key.data()),
            )
            .map_err(RunnerError::Setup)
    }

    fn registrations(&mut self) -> Registrations<'_> {
        Registrations {
            epoll: &self.epoll,
            fds: &mut self.backend_fds,
        }
    }

    /// Call right after `backend` was activated: drops the fds an earlier activation left, then
    /// lets the backend add its own ([`VirtioBackend::register_events`]). On an error every fd
    /// it added is removed again; the caller then resets the device and reports the error.
    pub fn activated(&mut self, backend: &mut dyn VirtioBackend) -> Result<(), DeviceError> {
        let mut registrations = self.registrations();
        registrations.clear();
        let result = backend.register_events(&mut registrations);
        if result.is_err() {
            registrations.clear();
        }
        result
    }

    /// Removes every fd the backend added (call it when the device is reset).
    pub fn reset_events(&mut self) {
        self.registrations().clear();
    }

    /// How many fds the backend has added and not removed.
    pub fn backend_fd_count(&self) -> usize {
        self.backend_fds.len()
    }

    /// Processes queue notifications and the backend's events until the stop fd or a watched
    /// fd is readable.
    ///
    /// Queue notifications and backend events that arrived in the same wake-up are processed
    /// first. Returns an error as soon as the backend fails (its own fds are then removed); the
    /// caller reports it and resets the device.
    pub fn run(&mut self, backend: &mut dyn VirtioBackend) -> Result<Wake, RunnerError> {
        loop {
            let n = match self.epoll.wait(-1, &mut self.events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(RunnerError::Wait(e)),
            };
            let mut stop = false;
            let mut caller = None;
            for i in 0..n {
                let event = self.events[i];
                if let Err(e) = self.dispatch(event, backend, &mut stop, &mut caller) {
                    if matches!(e, RunnerError::Device(_)) {
                        self.reset_events();
                    }
                    return Err(e);
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

    /// Acts on one epoll event: a queue's or the backend's is handled here, the stop fd's and
    /// the caller's are noted for [`run`](Self::run) to return.
    fn dispatch(
        &mut self,
        event: EpollEvent,
        backend: &mut dyn VirtioBackend,
        stop: &mut bool,
        caller: &mut Option<u32>,
    ) -> Result<(), RunnerError> {
        match Key::from_data(event.data()) {
            Some(Key::Queue(i)) => {
                let queue_events = self.queue_events;
                let Some((index, fd)) = usize::try_from(i).ok().and_then(|i| queue_events.get(i))
                else {
                    return Ok(());
                };
                drain(fd).map_err(|source| RunnerError::Notification {
                    index: *index,
                    source,
                })?;
                backend.process_queue(*index, &mut self.registrations())?;
            }
            Some(Key::Backend(token)) => {
                let mut registrations = self.registrations();
                // The backend may have removed this fd while handling an earlier event of the
                // same wake-up: then it hears nothing more of it.
                if registrations.watches(token) {
                    let ready = EventSet::from_bits_truncate(event.events());
                    backend.process_event(token, ready, &mut registrations)?;
                }
            }
            Some(Key::Stop) => *stop = true,
            Some(Key::Caller(token)) => *caller = caller.or(Some(token)),
            // Only keys made by `Key::data` are ever registered.
            None => {}
        }
        Ok(())
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

/// Runs `backend`'s queues until `stop` is readable: [`QueueRunner`] with no other fds. The
/// backend is taken as already activated: its own fds are registered first.
pub fn run_queues(
    backend: &mut dyn VirtioBackend,
    queue_events: &[(u16, EventFd)],
    stop: &EventFd,
) -> Result<(), RunnerError> {
    let mut runner = QueueRunner::new(queue_events, stop)?;
    runner.activated(backend)?;
    loop {
        match runner.run(backend)? {
            Wake::Stop => return Ok(()),
            // No caller fds are registered, so this cannot happen; keep waiting if it does.
            Wake::Fd(_) => {}
        }
    }
}

#[cfg(test)]
mod tests;
