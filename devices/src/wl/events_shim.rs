//! The event-registry interface of INTERFACES.md §1, until `devices::events` lands (issue 9):
//! the same trait, so the backend's code does not change when it is swapped for the crate's.

use std::os::fd::RawFd;

pub use vmm_sys_util::epoll::EventSet;

/// The device's event loop, as a backend sees it: the backend adds, changes and removes its own
/// fds; the loop calls the backend's `process_event(token, ..)` when one is ready.
pub trait EventRegistry {
    /// Watch `fd` (level-triggered) for `interest`; `token` is the backend's own number for it.
    fn add(&mut self, fd: RawFd, token: u32, interest: EventSet) -> std::io::Result<()>;
    /// Change what `fd` (added before) is watched for, or its token.
    fn modify(&mut self, fd: RawFd, token: u32, interest: EventSet) -> std::io::Result<()>;
    /// Stop watching `fd`.
    fn remove(&mut self, fd: RawFd) -> std::io::Result<()>;
}
