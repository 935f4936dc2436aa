//! The idle-poll window of one queue: how long the queue loop keeps polling a queue that ran dry
//! (notifications still suppressed) before it re-enables them and sleeps, and how that length
//! adapts between a floor and the configured maximum (`poll=N`).
//!
//! Polling only pays while the driver can submit during the window. When the host has no spare
//! CPU, the spinning device takes the CPU the vCPU needs to produce the next request: every
//! window then runs out, and each request waits for the whole window *and* a notification. So
//! the window adapts, in the spirit of QEMU's `poll-grow`/`poll-shrink`:
//!
//! ```text
//!   window found work  → back to the maximum
//!   window ran out     → halved, but not below the floor (max / FLOOR_DIVISOR, at least 1 µs)
//! ```
//!
//! A steady depth-1 guest keeps the full window; a guest that goes quiet, or a host where the
//! device cannot poll usefully, costs one short floor window per request. The floor is never
//! 0: a window that shrank to nothing could only grow back from notification timings, and on
//! a host where one notification costs more than the maximum window (PVM: ~25 µs of exit plus
//! a wake-up) it never would.

use std::time::{Duration, Instant};

/// Polls between two clock reads: keeps the clock (vDSO `clock_gettime`, a few tens of ns) off
/// most iterations without overshooting the window by more than a fraction of a microsecond.
const CHECKS_PER_CLOCK_READ: u32 = 16;
/// The floor of a window that keeps running out: this fraction of the maximum.
pub(crate) const FLOOR_DIVISOR: u32 = 8;
/// The floor is at least this long (or the maximum, if that is shorter).
const MIN_FLOOR: Duration = Duration::from_micros(1);

/// One queue's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PollWindow {
    max: Duration,
    floor: Duration,
    current: Duration,
}

impl PollWindow {
    /// A window of at most `max` (zero: never poll), starting at `max`.
    pub(crate) fn new(max: Duration) -> Self {
        PollWindow {
            max,
            floor: (max / FLOOR_DIVISOR).max(MIN_FLOOR).min(max),
            current: max,
        }
    }

    /// The length of the next poll.
    pub(crate) fn current(&self) -> Duration {
        self.current
    }

    /// A poll ended: `found` new work, or ran out.
    pub(crate) fn polled(&mut self, found: bool) {
        self.current = if found {
            self.max
        } else {
            (self.current / 2).max(self.floor)
        };
    }

    /// A poll ran out and the caller slept until the work came, `after` the poll began: a
    /// window of `after` would have caught it. Within the maximum → back to the maximum (so a
    /// window that once shrank below a steady latency grows back); else halved, as by
    /// [`polled`](Self::polled)`(false)`.
    pub(crate) fn slept(&mut self, after: Duration) {
        self.polled(after <= self.max && !self.max.is_zero());
    }
}

/// Calls `has_work` until it returns `true` (→ `Ok(true)`) or `window` has passed since the
/// start (→ `Ok(false)`), spinning in between. A zero window returns `Ok(false)` at once.
pub(crate) fn spin<E>(
    window: Duration,
    mut has_work: impl FnMut() -> Result<bool, E>,
) -> Result<bool, E> {
    if window.is_zero() {
        return Ok(false);
    }
    let start = Instant::now();
    loop {
        for _ in 0..CHECKS_PER_CLOCK_READ {
            if has_work()? {
                return Ok(true);
            }
            std::hint::spin_loop();
        }
        if start.elapsed() >= window {
            return Ok(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_micros(32);

    #[test]
    fn a_window_that_runs_out_halves_down_to_its_floor() {
        let mut w = PollWindow::new(MAX);
        assert_eq!(w.current(), MAX);
        let mut seen = Vec::new();
        for _ in 0..5 {
            w.polled(false);
            seen.push(w.current().as_micros());
        }
        assert_eq!(seen, [16, 8, 4, 4, 4], "floor: 32 / 8");
        w.polled(true);
        assert_eq!(w.current(), MAX, "work found: back to the maximum");
    }

    #[test]
    fn a_window_grows_back_when_the_work_came_within_the_maximum() {
        let mut w = PollWindow::new(MAX);
        for _ in 0..5 {
            w.polled(false);
        }
        assert_eq!(w.current().as_micros(), 4, "at the floor");
        w.slept(Duration::from_micros(20));
        assert_eq!(
            w.current(),
            MAX,
            "20 µs would have been caught by the maximum"
        );
        w.slept(Duration::from_micros(33));
        assert_eq!(w.current().as_micros(), 16, "33 µs is beyond it: halved");
        let mut off = PollWindow::new(Duration::ZERO);
        off.slept(Duration::ZERO);
        assert_eq!(off.current(), Duration::ZERO);
    }

    #[test]
    fn small_maxima_keep_a_floor_of_one_microsecond_or_the_maximum() {
        let floor = |max_us: u64| {
            let mut w = PollWindow::new(Duration::from_micros(max_us));
            for _ in 0..20 {
                w.polled(false);
            }
            w.current()
        };
        assert_eq!(floor(1000), Duration::from_micros(125));
        assert_eq!(floor(4), Duration::from_micros(1));
        assert_eq!(floor(1), Duration::from_micros(1));
    }

    #[test]
    fn a_zero_maximum_never_polls() {
        let mut w = PollWindow::new(Duration::ZERO);
        w.polled(true);
        assert_eq!(w.current(), Duration::ZERO);
        w.polled(false);
        assert_eq!(w.current(), Duration::ZERO);
        let mut calls = 0;
        assert_eq!(
            spin::<()>(w.current(), || {
                calls += 1;
                Ok(true)
            }),
            Ok(false)
        );
        assert_eq!(calls, 0);
    }

    #[test]
    fn spin_stops_at_work_or_error() {
        let mut calls = 0;
        let found = spin::<()>(Duration::from_secs(60), || {
            calls += 1;
            Ok(calls == 3)
        });
        assert_eq!((found, calls), (Ok(true), 3));
        assert_eq!(spin(Duration::from_secs(60), || Err("ring")), Err("ring"));
        // A window that ends (no time assertion: it just has to return).
        assert_eq!(
            spin::<()>(Duration::from_micros(1), || Ok(false)),
            Ok(false)
        );
    }
}
