//! `--on-worker-exit=restart`: a dead worker's device gets a new worker, with its state.
//!
//! ```text
//!   worker died (pidfd readable)           monitor thread, transport locked throughout
//!     │ restarts in the last minute < --max-restarts?  no ──▶ give up: DEVICE_NEEDS_RESET
//!     ▼
//!   Sandbox::start(N) ── the device's plan, fresh duplicates of its fds and host resources,
//!     │                   same sandbox (crate::sandboxed: the one "start device N" entry)
//!     ▼
//!   proxy.replace_worker ── Ready: the same device? ── the guest's config writes again
//!     ▼
//!   driver running (DRIVER_OK, no reset pending)?
//!     ├ kind says Restart::Resume ─▶ proxy.resume(features, queues): each queue from its used
//!     │                              index; the chains the guest had not got back are taken
//!     │                              again — the driver sees a delay, never an error
//!     ├ kind says Restart::Reset ──▶ DEVICE_NEEDS_RESET (+ config interrupt): the new worker
//!     │                              serves once the driver resets the device
//!     └ not running ───────────────▶ nothing: the driver's DRIVER_OK activates it as usual
//! ```
//!
//! Everything the new worker is told comes from the VMM: the transport's registers (features,
//! queue sizes and addresses) and the config writes the proxy kept; the dead worker is never
//! asked or believed. The guest's own rings say where each queue stands.
//!
//! The transport stays locked from the death to the resumed queues, so the guest cannot reset
//! or re-initialise the device half-way; a vCPU touching the device's registers meanwhile
//! waits, as it does for any reply (the new worker's `Ready` has the usual 5 s deadline, the
//! `Resume` reply 1 s). Queue notifications and interrupts never take this lock.

use std::collections::VecDeque;
use std::sync::Weak;
use std::time::{Duration, Instant};

use devices::kind::Restart;

use crate::sandboxed::{Sandbox, Watch};
use crate::virtio::mmio::MmioTransport;
use crate::virtio::worker_proxy::WorkerProxy;
use worker::report::one_line;

use super::Supervised;

/// The window `--max-restarts` counts restarts in.
pub const WINDOW: Duration = Duration::from_secs(60);

/// What a device's monitor needs to restart its worker.
pub struct Restarter {
    /// The VM's sandbox (gone once the VM ends: then nothing is restarted).
    pub sandbox: Weak<Sandbox>,
    /// The device's number (`--device` order), for [`Sandbox::start`].
    pub index: usize,
    /// What its kind says about the requests in flight.
    pub policy: Restart,
    /// Restarts allowed within [`WINDOW`].
    pub max: u32,
    /// When the last restarts happened (at most `max`).
    recent: VecDeque<Instant>,
}

/// Why a dead worker was not replaced.
pub enum NotRestarted {
    /// The VM is ending: nothing is restarted.
    Ending,
    /// The device is left needing a reset, for this reason.
    GaveUp(String),
}

/// A restart that happened: what the monitor watches from now on and the end of its line.
pub struct Restarted {
    /// The new worker's socket and pidfd.
    pub watch: Watch,
    /// What happened, after "svmm: NAME worker (pid P) CAUSE; ". Its time ("serving again
    /// after X ms") runs from svmm seeing the death (the pidfd readable) to the new worker
    /// serving the resumed queues.
    pub line: String,
}

impl Restarter {
    /// Device `index`'s restarter: at most `max` restarts a minute, its kind's `policy`.
    pub fn new(sandbox: Weak<Sandbox>, index: usize, policy: Restart, max: u32) -> Self {
        Restarter {
            sandbox,
            index,
            policy,
            max,
            recent: VecDeque::new(),
        }
    }

    /// Whether another restart at `now` stays within the limit.
    fn allowed(&mut self, now: Instant) -> bool {
        while self
            .recent
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= WINDOW)
        {
            self.recent.pop_front();
        }
        self.recent.len() < self.max as usize
    }

    /// Starts a new worker for the device whose worker just died (noticed at `noticed`) and
    /// hands it the device's state (see the module docs). `Err`: why the device is left
    /// broken instead (the caller reports it and marks the device as needing a reset), or that
    /// the VM is ending.
    pub fn restart(
        &mut self,
        transport: &mut MmioTransport<WorkerProxy>,
        supervised: &std::sync::Arc<Supervised>,
        noticed: Instant,
    ) -> Result<Restarted, NotRestarted> {
        use NotRestarted::{Ending, GaveUp};
        if !self.allowed(noticed) {
            return Err(GaveUp(format!(
                "restart limit reached ({} in the last minute, --max-restarts={})",
                self.recent.len(),
                self.max
            )));
        }
        let sandbox = self.sandbox.upgrade().ok_or(Ending)?;
        let started = sandbox
            .start(self.index)
            .map_err(|e| GaveUp(format!("no new worker: {}", one_line(&e))))?;
        drop(sandbox);
        let pid = started.worker.pid();
        if !supervised.replace(started.worker) {
            return Err(Ending);
        }
        self.recent.push_back(noticed);
        let count = transport.proxy().restarts() + 1;
        let head = format!(
            "restart {count} (pid {pid}; {} of at most {} in a minute)",
            self.recent.len(),
            self.max
        );
        if let Err(e) = transport.proxy_mut().replace_worker(started.control) {
            supervised.kill_for("did not start", Duration::ZERO);
            return Err(GaveUp(format!("{head} failed: {}", one_line(&e))));
        }
        let hook = supervised.clone();
        transport
            .proxy_mut()
            .set_terminate(move |reason, grace| hook.kill_for(reason, grace));
        let running = transport.running_state();
        let ms = || noticed.elapsed().as_secs_f64() * 1000.0;
        let tail = match (self.policy, running) {
            (Restart::Resume { .. }, Some((features, queues))) => {
                match transport.proxy_mut().resume(features, &queues) {
                    Ok(pending) => format!(
                        "queues resumed, {pending} pending request{} taken again; serving \
                         again after {:.1} ms",
                        if pending == 1 { "" } else { "s" },
                        ms()
                    ),
                    Err(e) => {
                        transport.mark_needs_reset();
                        format!(
                            "its queues could not be resumed ({}); device needs reset",
                            one_line(&e)
                        )
                    }
                }
            }
            (Restart::Reset { lost }, _) if transport.initialising() => {
                transport.mark_needs_reset();
                format!(
                    "device needs reset: its requests cannot be taken again ({lost} died with \
                     the worker)"
                )
            }
            _ => format!(
                "nothing to resume (the driver had not started the device); ready after {:.1} ms",
                ms()
            ),
        };
        Ok(Restarted {
            watch: started.watch,
            line: format!("{head}: {tail}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_max_restarts_in_any_minute() {
        let mut r = Restarter::new(Weak::new(), 0, Restart::Reset { lost: "x" }, 2);
        let t0 = Instant::now();
        assert!(r.allowed(t0));
        r.recent.push_back(t0);
        assert!(r.allowed(t0 + Duration::from_secs(1)));
        r.recent.push_back(t0 + Duration::from_secs(1));
        assert!(!r.allowed(t0 + Duration::from_secs(59)));
        // The first one leaves the window a minute after it happened.
        assert!(r.allowed(t0 + Duration::from_secs(60)));
        assert_eq!(r.recent.len(), 1);
    }
}
