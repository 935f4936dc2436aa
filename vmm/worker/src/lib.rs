//! svmm's device side: what runs in a worker process (`svmm __worker KIND`) and on an
//! in-process device thread. This crate cannot import the VMM side (`vmm`), which depends on
//! it: the worker knows its fds, its config and the control protocol, nothing else of svmm.
//!
//! [`map_memory`] and [`serve`] are the whole life of a device once it holds its fds: guest RAM
//! and the interrupt status page mapped, `Ready` announced, then queue notifications (through
//! `devices::runner::QueueRunner`) and control messages served until the VMM says `Shutdown`,
//! closes its end, or the stop eventfd fires. The very same code runs
//!
//! - **in-process** (`--device KIND,sandbox=off`): on a thread of svmm ([`in_process::spawn`]),
//!   with the worker end of an `ipc::Channel::pair()`;
//! - **sandboxed** (`--device KIND`, the default): in `svmm __worker KIND` ([`spawned`]),
//!   spawned by the broker with the fds at fixed numbers ([`fd_numbers`]) and the arguments of
//!   [`args`], after `broker::confine` and the device's seccomp filter.
//!
//! ```text
//!   VMM (WorkerProxy)                         serve
//!    │                      ◀── Ready ──────── first, before any guest data is read
//!    │ ── Activate ─────────▶ validate against own layout → build Queues (is_valid against
//!    │                      ◀── Activated      guest RAM) → backend.activate(.., IrqfdInterrupt)
//!    │                          | DeviceError{BadActivation | GuestMemory}
//!    │ ── Resume ───────────▶ as Activate, each queue from its used index (queues::resume),
//!    │                      ◀── Resumed{pending}  then every ready queue kicked, one interrupt
//!    │ ── WriteConfig ──────▶ backend.write_config (no reply; ConfigChanged if config changed)
//!    │ ── Reset ────────────▶ backend.reset()    ◀── ResetDone
//!    │ ── GetStats ─────────▶                     ◀── Stats (summed over activations)
//!    │ ── Shutdown ─────────▶ return Ok(Shutdown)
//!    │  (closes its end)      return Ok(PeerGone)
//!    │                      ◀── DeviceError{..}   a queue failed (device waits for Reset)
//! ```
//!
//! A message from the VMM that does not decode, or carries fds, is a protocol violation: the
//! worker answers `DeviceError { Internal }` and returns an error (the VMM then sees the device as
//! broken). Nothing here panics on what arrives over the channel or sits in guest memory.
//!
//! Also here, because both sides need them and the VMM side may use this crate but not the
//! other way round: guest RAM as a sealed memfd ([`guest_ram`]: made by the VMM, mapped the
//! same way by both) and the one-line error format ([`report`]).

pub mod args;
#[cfg(feature = "test-faults")]
pub mod fault;
pub mod guest_ram;
pub mod hugepages;
pub mod in_process;
mod interrupt;
mod queues;
pub mod report;
mod serve;
pub mod spawned;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;

use vmm_sys_util::eventfd::EventFd;

pub use serve::{map_memory, serve, Mapped};

/// Fixed fd numbers of a spawned worker (`svmm __worker KIND`): what the broker passes where.
///
/// ```text
///   3  control socket (SOCK_SEQPACKET, worker end)
///   4  guest RAM memfd (sealed; its size is the RAM size, layout as guest_ram::ram_ranges)
///   5  interrupt status page memfd (devices::irq_status)
///   6  irqfd (eventfd registered with KVM on the device's GSI)
///   7  stop eventfd (the broker may keep a copy to ask for a graceful stop)
///   8.. one ioeventfd per queue, in queue index order (num_queues of them)
///   then the kind's host resources that have an fd, in the order the kind declares them
///   (`devices::Kind::resources`)
/// ```
///
/// The VMM side lays the fds out ([`passed`](fd_numbers::passed),
/// [`first_resource`](fd_numbers::first_resource)) and the worker adopts them with the same
/// functions.
pub mod fd_numbers {
    /// The control socket.
    pub const CONTROL: i32 = 3;
    /// The guest RAM memfd.
    pub const GUEST_RAM: i32 = 4;
    /// The interrupt status page.
    pub const IRQ_STATUS: i32 = 5;
    /// The irqfd.
    pub const IRQFD: i32 = 6;
    /// The stop eventfd.
    pub const STOP: i32 = 7;
    /// The first queue eventfd; queue `i` is at `FIRST_QUEUE + i`.
    pub const FIRST_QUEUE: i32 = 8;

    /// The fd of the first host resource of a device with `queues` queues.
    pub fn first_resource(queues: u16) -> i32 {
        FIRST_QUEUE + i32::from(queues)
    }

    /// How many fds a worker of a device with `queues` queues and `resource_fds` host
    /// resources with an fd inherits at 3, 4, ...
    pub fn passed(queues: u16, resource_fds: usize) -> u32 {
        let fixed = (FIRST_QUEUE - CONTROL) as u32;
        let resources = u32::try_from(resource_fds).unwrap_or(u32::MAX);
        fixed
            .saturating_add(u32::from(queues))
            .saturating_add(resources)
    }
}

/// Every fd a device worker needs from the VMM, owned. See [`fd_numbers`] for how a spawned
/// worker receives them.
pub struct WorkerFds {
    /// The worker's end of the control channel.
    pub control: ipc::Channel,
    /// The sealed guest RAM memfd. Its size is the guest RAM size; the worker maps it at the
    /// places [`guest_ram::ram_ranges`] gives, exactly as the VMM does.
    pub guest_ram: File,
    /// The interrupt status page (`devices::irq_status::IrqStatus::create` on the VMM side).
    pub irq_status: OwnedFd,
    /// The device's irqfd, written after a status bit is raised.
    pub irqfd: EventFd,
    /// One notification eventfd per queue, indexed by queue (KVM ioeventfds on `QueueNotify`).
    pub queue_events: Vec<EventFd>,
    /// Readable = stop serving. Never written by the VMM for a spawned worker; an in-process
    /// device's owner may keep a clone to end the thread.
    pub stop: EventFd,
}

/// Why [`serve`] returned normally.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerExit {
    /// The VMM sent `Shutdown`.
    Shutdown,
    /// The VMM closed its end of the channel.
    PeerGone,
    /// The stop eventfd fired.
    Stopped,
}

/// Why [`map_memory`] or [`serve`] failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Mapping guest RAM failed.
    #[error("cannot map guest RAM")]
    GuestRam(#[source] guest_ram::MemoryError),
    /// Reading the guest RAM memfd's size failed.
    #[error("cannot read the guest RAM size")]
    GuestRamSize(#[source] io::Error),
    /// Mapping the interrupt status page failed.
    #[error("cannot map the interrupt status page")]
    IrqStatus(#[source] io::Error),
    /// The number of queue eventfds does not match the device.
    #[error("device has {expected} queues but {got} queue eventfds were passed")]
    QueueEvents {
        /// The backend's queue count.
        expected: u16,
        /// Eventfds passed.
        got: usize,
    },
    /// The control channel failed, or the VMM sent something that is not a valid message.
    #[error("control channel failed")]
    Control(#[source] ipc::ChannelError),
    /// The VMM attached fds to a message that takes none.
    #[error("the VMM sent {0} fds with a message that takes none")]
    UnexpectedFds(usize),
    /// An in-process device thread could not install its seccomp filter.
    #[error("cannot confine the device thread")]
    Confine(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The queue runner failed (event loop, not the device).
    #[error("queue event loop failed")]
    Runner(#[source] devices::runner::RunnerError),
}
