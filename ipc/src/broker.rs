//! The broker channel: what svmm may ask of its broker process about one declared device, and
//! what the broker answers.
//!
//! One `SOCK_SEQPACKET` channel per device declared at start-up, made before the broker is
//! forked: a request on channel N can only be about device N. svmm asks, the broker answers;
//! the broker also reports, unasked, when the device's worker has ended:
//!
//! ```text
//!   svmm                                                   broker
//!    │ ─ Start { device } + the worker's guest-facing fds ─▶  spawns the device's worker from
//!    │                                                        its fixed plan, with fresh
//!    │                                                        duplicates of its host resources,
//!    │ ◀── Started { device, pid } + control end, pidfd, stderr  a fresh control channel, stop
//!    │                                                        eventfd and stderr pipe (svmm
//!    │                                                        gets the channel's and pipe's end),
//!    │                                                        as soon as the worker is released
//!    │ ◀────────────── Failed { device, pid, reason } ───  it failed before its exec (the exec
//!    │                                                        happens after Started)
//!    │ ─ Stop { device } ─────────────────────────────────▶  SIGKILL to the device's worker
//!    │ ◀──────────────── Exited { device, pid, status } ───  the worker was reaped (always sent
//!    │                                                        once per worker, however it ended)
//!    │ ◀──────────────────── Refused { device, reason } ───  instead of Started, or for anything
//!                                                             the broker will not do (logged)
//! ```
//!
//! `Start` while a worker runs is refused: a restart is `Stop` (or the worker's own end),
//! `Exited`, then `Start` again. The guest-facing fds (guest RAM, the interrupt status page,
//! the irqfd and one notification eventfd per queue, in `worker::fd_numbers` order; the broker
//! puts the worker's stop eventfd among them) are svmm's own objects,
//! passed through to the worker; the broker holds them only while it spawns, and never maps
//! guest RAM. A device with host services adds, after them, the device's end of a fresh
//! service channel (`ipc::service`) for this worker alone, which the broker passes on after the
//! host resources, as the worker's last fd (`broker::server::Declared::trailing_fds`).

use bincode::{Decode, Encode};

/// A request from svmm about device `device` (its index in `--device` order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum BrokerRequest {
    /// Start the device's worker; the message carries its guest-facing fds.
    Start {
        /// The device.
        device: u32,
    },
    /// Kill the device's worker (an `Exited` follows once it is reaped).
    Stop {
        /// The device.
        device: u32,
    },
}

/// How a worker ended, as `waitid` told the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum WorkerStatus {
    /// It exited with this status.
    Exited(i32),
    /// A signal ended it (`SIGSYS`: its seccomp filter).
    Killed(i32),
}

/// The broker's answers and reports.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum BrokerReply {
    /// The worker runs; the message carries svmm's end of its control channel (twice), the
    /// worker's pidfd and the read end of its stderr pipe ([`STARTED_FDS`]).
    Started {
        /// The device.
        device: u32,
        /// The worker's pid (in svmm's pid namespace).
        pid: i32,
    },
    /// The device's worker `pid`, already `Started`, failed before its exec (an `Exited`
    /// follows once it is reaped).
    Failed {
        /// The device.
        device: u32,
        /// The worker's pid.
        pid: i32,
        /// The failed stage and its error, in a few words.
        reason: String,
    },
    /// The device's worker `pid` was reaped.
    Exited {
        /// The device.
        device: u32,
        /// The worker's pid.
        pid: i32,
        /// How it ended.
        status: WorkerStatus,
    },
    /// The request was not carried out (logged by the broker).
    Refused {
        /// The device the request named.
        device: u32,
        /// Why, in a few words.
        reason: String,
    },
}

/// Fds that come with [`BrokerReply::Started`]: svmm's end of the control channel, non-blocking,
/// twice (two fds of one socket: one for the device's proxy, one its monitor polls — svmm's
/// filter has no call to duplicate an fd), the worker's pidfd (svmm can poll it for the
/// worker's end; it cannot signal or reap the broker's child through it), then the read end of
/// the worker's stderr pipe.
pub const STARTED_FDS: usize = 4;

/// The longest refusal reason the broker sends (a hostile-looking request is answered, not
/// echoed).
pub const MAX_REASON: usize = 200;
