//! A backend's own event sources: how a device adds fds of its own (a tap, a timerfd, a
//! socket) to the event loop that runs it, without knowing that loop.
//!
//! The loop ([`crate::runner::QueueRunner`]) implements [`EventRegistry`] and hands it to the
//! backend in [`VirtioBackend::register_events`](crate::VirtioBackend::register_events) (right
//! after every successful activation), [`process_queue`](crate::VirtioBackend::process_queue)
//! and [`process_event`](crate::VirtioBackend::process_event). A backend adds, changes and
//! removes its fds there and gets them back, by its own token, in `process_event`:
//!
//! ```text
//!   activate ─▶ register_events(events)      events.add(tap, TAP, EventSet::IN)
//!   tap readable ─▶ process_event(TAP, IN, events)
//!   process_queue(TX, events)                a write would block: events.modify(tap, TAP, IN | OUT)
//!   reset / device broken                    the loop removes every fd the backend added
//! ```
//!
//! Registrations are level-triggered: an fd that stays ready is reported again on every wait,
//! so a backend reads until `WouldBlock` or stops watching for that readiness. Readiness is a
//! hint: an event may arrive for an fd that has nothing to read by the time the backend looks
//! (nonblocking fds only). A backend never has to undo its registrations: the loop removes
//! them on reset, before a new activation, and when the device stops serving after an error.
//! A backend that closes one of its fds while the device runs removes it first.

use std::io;
use std::os::fd::RawFd;

pub use vmm_sys_util::epoll::EventSet;

/// The device's event loop, as a backend sees it: the backend adds, changes and removes its own
/// fds; the loop calls `VirtioBackend::process_event(token, ..)` when one is ready.
pub trait EventRegistry {
    /// Watch `fd` (level-triggered) for `interest`; `token` is the backend's own number for it.
    fn add(&mut self, fd: RawFd, token: u32, interest: EventSet) -> io::Result<()>;
    /// Change what `fd` (added before) is watched for, or its token.
    fn modify(&mut self, fd: RawFd, token: u32, interest: EventSet) -> io::Result<()>;
    /// Stop watching `fd`.
    fn remove(&mut self, fd: RawFd) -> io::Result<()>;
}

/// The registry of a caller that runs no event loop (a unit test, or a backend driven by hand):
/// every call fails with [`io::ErrorKind::Unsupported`]. Fine for devices without fds of their
/// own, such as rng and blk.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoEvents;

impl NoEvents {
    fn refuse() -> io::Error {
        io::Error::new(
            io::ErrorKind::Unsupported,
            "no event loop runs this device: it cannot watch fds of its own",
        )
    }
}

impl EventRegistry for NoEvents {
    fn add(&mut self, _fd: RawFd, _token: u32, _interest: EventSet) -> io::Result<()> {
        Err(Self::refuse())
    }

    fn modify(&mut self, _fd: RawFd, _token: u32, _interest: EventSet) -> io::Result<()> {
        Err(Self::refuse())
    }

    fn remove(&mut self, _fd: RawFd) -> io::Result<()> {
        Err(Self::refuse())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_events_refuses_everything() {
        let mut events = NoEvents;
        for result in [
            events.add(0, 1, EventSet::IN),
            events.modify(0, 1, EventSet::OUT),
            events.remove(0),
        ] {
            assert_eq!(result.unwrap_err().kind(), io::ErrorKind::Unsupported);
        }
    }
}
