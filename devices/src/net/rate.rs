//! Rate limits of one direction: a token bucket for bytes and one for frames (each optional,
//! like Firecracker's), and the timerfd that wakes the device when a throttled direction may
//! go on.
//!
//! A bucket holds at most `burst` tokens and gains `rate` per second. A frame may go when
//! every bucket holds at least its cost (or is full, for a frame larger than the bucket);
//! its cost is then taken, possibly into debt, so a frame larger than the burst is never
//! stuck and the long-run rate still holds. Token counts are kept in billionths, so refills
//! are exact in integer arithmetic.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use rustix::time::{
    timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags,
    Timespec,
};

use super::config::{DirectionLimits, RateSpec};

const NANO: i128 = 1_000_000_000;

/// One token bucket.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    spec: RateSpec,
    /// Tokens in billionths; negative while in debt.
    tokens: i128,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(spec: RateSpec, now: Instant) -> Self {
        TokenBucket {
            spec,
            tokens: i128::from(spec.burst) * NANO,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        self.last = now;
        let gained = i128::try_from(elapsed)
            .unwrap_or(i128::MAX / 2)
            .saturating_mul(i128::from(self.spec.rate));
        let cap = i128::from(self.spec.burst) * NANO;
        self.tokens = self.tokens.saturating_add(gained).min(cap);
    }

    /// How long until a frame costing `cost` may go (zero: now).
    fn wait_for(&mut self, cost: u64, now: Instant) -> Duration {
        self.refill(now);
        let need = i128::from(cost.min(self.spec.burst)) * NANO;
        if self.tokens >= need {
            return Duration::ZERO;
        }
        let missing = need - self.tokens;
        let rate = i128::from(self.spec.rate.max(1));
        // Ceiling division: never wake a nanosecond too early.
        let ns = (missing + rate - 1) / rate;
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    fn take(&mut self, cost: u64) {
        self.tokens -= i128::from(cost) * NANO;
    }
}

/// Both buckets of one direction.
#[derive(Debug, Clone, Default)]
pub struct Limiter {
    bytes: Option<TokenBucket>,
    packets: Option<TokenBucket>,
}

impl Limiter {
    /// Full buckets for `limits`.
    pub fn new(limits: &DirectionLimits, now: Instant) -> Self {
        Limiter {
            bytes: limits.bytes.map(|s| TokenBucket::new(s, now)),
            packets: limits.packets.map(|s| TokenBucket::new(s, now)),
        }
    }

    /// Whether any bucket exists.
    pub fn limited(&self) -> bool {
        self.bytes.is_some() || self.packets.is_some()
    }

    /// How long until one frame of `bytes` may go; zero if it may go now.
    pub fn wait_for(&mut self, bytes: usize, now: Instant) -> Duration {
        let b = self
            .bytes
            .as_mut()
            .map_or(Duration::ZERO, |t| t.wait_for(bytes as u64, now));
        let p = self
            .packets
            .as_mut()
            .map_or(Duration::ZERO, |t| t.wait_for(1, now));
        b.max(p)
    }

    /// Charges one frame of `bytes` (after [`wait_for`](Self::wait_for) said zero).
    pub fn take(&mut self, bytes: usize) {
        if let Some(t) = &mut self.bytes {
            t.take(bytes as u64);
        }
        if let Some(t) = &mut self.packets {
            t.take(1);
        }
    }
}

/// A non-blocking monotonic timerfd that wakes a throttled direction.
#[derive(Debug)]
pub struct Timer {
    fd: OwnedFd,
    armed: bool,
}

impl Timer {
    /// A disarmed timer. `timerfd_create` is not in the net seccomp profile: make it before
    /// confinement (the device does, in `Net::new`).
    pub fn new() -> io::Result<Timer> {
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        Ok(Timer { fd, armed: false })
    }

    /// Fires once after `after` (at least a microsecond), replacing an earlier deadline.
    pub fn arm(&mut self, after: Duration) -> io::Result<()> {
        let after = after.max(Duration::from_micros(1));
        let spec = Itimerspec {
            it_interval: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: Timespec {
                tv_sec: i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(after.subsec_nanos()),
            },
        };
        timerfd_settime(&self.fd, TimerfdTimerFlags::empty(), &spec)?;
        self.armed = true;
        Ok(())
    }

    /// Disarms the timer and drops an expiry nobody read.
    pub fn disarm(&mut self) -> io::Result<()> {
        if self.armed {
            let zero = Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            let spec = Itimerspec {
                it_interval: zero,
                it_value: zero,
            };
            timerfd_settime(&self.fd, TimerfdTimerFlags::empty(), &spec)?;
            self.armed = false;
        }
        Ok(())
    }

    /// Whether a deadline is pending (set by [`arm`](Self::arm), cleared by
    /// [`expired`](Self::expired)).
    pub fn armed(&self) -> bool {
        self.armed
    }

    /// Reads the expiry count (the fd was reported readable). `false` if nothing had expired
    /// (a stale wake-up after the timer was re-armed).
    pub fn expired(&mut self) -> io::Result<bool> {
        let mut count = [0u8; 8];
        match rustix::io::read(&self.fd, &mut count) {
            Ok(_) => {
                self.armed = false;
                Ok(true)
            }
            Err(rustix::io::Errno::AGAIN) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

impl AsRawFd for Timer {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_fd().as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(rate: u64, burst: u64) -> RateSpec {
        RateSpec { rate, burst }
    }

    #[test]
    fn a_full_bucket_lets_its_burst_through_then_paces() {
        let t0 = Instant::now();
        let mut lim = Limiter::new(
            &DirectionLimits {
                bytes: None,
                packets: Some(spec(1000, 10)),
            },
            t0,
        );
        for _ in 0..10 {
            assert_eq!(lim.wait_for(1500, t0), Duration::ZERO);
            lim.take(1500);
        }
        // Empty: the next frame needs one token, 1 ms at 1000/s.
        assert_eq!(lim.wait_for(1500, t0), Duration::from_millis(1));
        let t1 = t0 + Duration::from_millis(1);
        assert_eq!(lim.wait_for(1500, t1), Duration::ZERO);
    }

    #[test]
    fn a_frame_larger_than_the_burst_goes_when_the_bucket_is_full_and_leaves_debt() {
        let t0 = Instant::now();
        let mut lim = Limiter::new(
            &DirectionLimits {
                bytes: Some(spec(1_000_000, 1000)),
                packets: None,
            },
            t0,
        );
        assert_eq!(lim.wait_for(65_550, t0), Duration::ZERO);
        lim.take(65_550);
        // 64,550 bytes of debt plus a full bucket of 1000 to refill: 65.55 ms at 1 MB/s.
        assert_eq!(lim.wait_for(65_550, t0), Duration::from_micros(65_550));
        // Over a long run the rate holds: 100 such frames need about 6.5 s.
        let mut now = t0;
        for _ in 0..100 {
            now += lim.wait_for(65_550, now);
            lim.take(65_550);
        }
        let secs = now.duration_since(t0).as_secs_f64();
        assert!((6.4..6.7).contains(&secs), "{secs}");
    }

    #[test]
    fn both_buckets_must_allow_and_refills_stop_at_the_burst() {
        let t0 = Instant::now();
        let mut lim = Limiter::new(
            &DirectionLimits {
                bytes: Some(spec(10_000, 3000)),
                packets: Some(spec(2, 1)),
            },
            t0,
        );
        assert_eq!(lim.wait_for(100, t0), Duration::ZERO);
        lim.take(100);
        // Packets: empty, 0.5 s for one at 2/s; bytes: plenty.
        assert_eq!(lim.wait_for(100, t0), Duration::from_millis(500));
        // A long idle time refills only up to the bursts.
        let later = t0 + Duration::from_secs(100);
        assert_eq!(lim.wait_for(3000, later), Duration::ZERO);
        lim.take(3000);
        assert_eq!(lim.wait_for(1, later), Duration::from_millis(500));
    }

    #[test]
    fn no_limits_never_wait() {
        let t0 = Instant::now();
        let mut lim = Limiter::new(&DirectionLimits::default(), t0);
        assert!(!lim.limited());
        assert_eq!(lim.wait_for(usize::MAX, t0), Duration::ZERO);
        lim.take(usize::MAX);
    }

    #[test]
    fn the_timer_fires_once_and_reads_as_not_expired_after_a_rearm() {
        let mut timer = Timer::new().unwrap();
        assert!(!timer.expired().unwrap());
        timer.arm(Duration::from_millis(1)).unwrap();
        assert!(timer.armed());
        std::thread::sleep(Duration::from_millis(5));
        assert!(timer.expired().unwrap());
        assert!(!timer.armed());
        timer.arm(Duration::from_secs(60)).unwrap();
        assert!(!timer.expired().unwrap());
        timer.disarm().unwrap();
        assert!(!timer.armed());
    }
}
