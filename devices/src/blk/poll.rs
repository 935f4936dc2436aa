//! The idle-poll window of one queue: how long the queue loop keeps polling a queue that ran dry
//! (notifications still suppressed) before it re-enables them and sleeps, and how that length
//! adapts between 0 and the configured maximum (`poll=N`).
//!
//! Polling only pays while the driver can submit during the window. When the host has no spare
//! CPU, the spinning device takes the CPU the vCPU needs to produce the next request: every
//! window then runs out, and each request waits for the whole window *and* a notification. So
//! the window adapts, in the spirit of QEMU's `poll-grow`/`poll-shrink`:
//!
//! ```text
//!   window found work                   → back to the maximum
//!   window ran out                      → halved (below MIN_WINDOW: 0, no polling)
//!   woken after sleeping ≤ the maximum  → grown (0 → GROW_FROM, else doubled, up to the maximum):
//!                                         a window would probably have caught that request
//! ```
//!
//! A steady depth-1 guest keeps the full window; a guest that goes quiet, or a host where the
//! device cannot poll usefully, costs a few windows and then none.

use std::time::{Duration, Instant};

/// Polls between two clock reads: keeps the clock (vDSO `clock_gettime`, a few tens of ns) off
/// most iterations without overshooting the window by more than a fraction of a microsecond.
const CHECKS_PER_CLOCK_READ: u32 = 16;
/// A halved window shorter than this becomes 0: too short to catch anything.
pub(crate) const MIN_WINDOW: Duration = Duration::from_micros(1);
/// Where a zero window grows from (QEMU's initial `poll-grow` step is 4 µs too).
pub(crate) const GROW_FROM: Duration = Duration::from_micros(4);

/// One queue's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PollWindow {
    max: Duration,
    current: Duration,
    /// When the queue loop last returned (notifications enabled, nothing to do).
    idle_since: Option<Instant>,
}

impl PollWindow {
    /// A window of at most `max` (zero: never poll), starting at `max`.
    pub(crate) fn new(max: Duration) -> Self {
        PollWindow {
            max,
            current: max,
            idle_since: None,
        }
    }

    /// The length of the next poll.
    pub(crate) fn current(&self) -> Duration {
        self.current
    }

    /// The queue loop starts (the queue was notified). Reads the clock only if polling is on.
    pub(crate) fn wake(&mut self) {
        if !self.max.is_zero() {
            self.woken(Instant::now());
        }
    }

    /// The queue loop returns. Reads the clock only if polling is on.
    pub(crate) fn sleep(&mut self) {
        if !self.max.is_zero() {
            self.sleeping(Instant::now());
        }
    }

    /// [`wake`](Self::wake) at `now`.
    pub(crate) fn woken(&mut self, now: Instant) {
        let Some(since) = self.idle_since.take() else {
            return;
        };
        if now.saturating_duration_since(since) <= self.max {
            self.current = if self.current.is_zero() {
                GROW_FROM
            } else {
                self.current.saturating_mul(2)
            }
            .min(self.max);
        }
    }

    /// [`sleep`](Self::sleep) at `now`: the queue sleeps until the next notification.
    pub(crate) fn sleeping(&mut self, now: Instant) {
        self.idle_since = Some(now);
    }

    /// A poll ended: `found` new work, or ran out.
    pub(crate) fn polled(&mut self, found: bool) {
        self.current = if found {
            self.max
        } else {
            Some(self.current / 2)
                .filter(|w| *w >= MIN_WINDOW)
                .unwrap_or_default()
        };
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
    fn a_window_that_runs_out_halves_down_to_zero() {
        let mut w = PollWindow::new(MAX);
        assert_eq!(w.current(), MAX);
        let mut seen = Vec::new();
        for _ in 0..7 {
            w.polled(false);
            seen.push(w.current().as_micros());
        }
        assert_eq!(seen, [16, 8, 4, 2, 1, 0, 0]);
        w.polled(true);
        assert_eq!(w.current(), MAX, "work found: back to the maximum");
    }

    #[test]
    fn a_short_sleep_grows_the_window_and_a_long_one_does_not() {
        let t0 = Instant::now();
        let mut w = PollWindow::new(MAX);
        for _ in 0..6 {
            w.polled(false);
        }
        assert_eq!(w.current(), Duration::ZERO);
        // Woken long after going to sleep: a window would not have caught it.
        w.sleeping(t0);
        w.woken(t0 + MAX + Duration::from_micros(1));
        assert_eq!(w.current(), Duration::ZERO);
        // Near misses: 0 → 4 → 8 → 16 → 32 → 32.
        let mut seen = Vec::new();
        for _ in 0..5 {
            w.sleeping(t0);
            w.woken(t0 + MAX);
            seen.push(w.current().as_micros());
        }
        assert_eq!(seen, [4, 8, 16, 32, 32]);
        // Woken without having slept (the first notification): nothing to learn.
        w.polled(false);
        w.woken(t0);
        assert_eq!(w.current().as_micros(), 16);
    }

    #[test]
    fn a_zero_maximum_never_polls() {
        let t0 = Instant::now();
        let mut w = PollWindow::new(Duration::ZERO);
        w.sleeping(t0);
        w.woken(t0);
        w.polled(true);
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
