//! The device's own deterministic random bit generator: ChaCha20 (`rand_chacha`), keyed from
//! the kernel and re-keyed from it on a fixed schedule, so a guest's random bytes cost no
//! system call.
//!
//! # Construction
//!
//! - **Seed**: 32 bytes from `getrandom(2)` (the kernel's CRNG, the same generator behind
//!   `/dev/urandom`), taken when the device is built, before the worker confines itself.
//! - **Output**: each request's bytes are the ChaCha20 keystream under the current key.
//! - **Fast key erasure** (the construction the kernel's CRNG uses for the same purpose): right
//!   after every request the generator draws 32 more bytes of its own keystream and makes them
//!   its new key, so the key that produced a request's bytes is gone once they are delivered;
//!   the state held afterwards cannot recompute them.
//! - **Reseed schedule**: before a request, if [`RESEED_BYTES`] have been delivered since the
//!   last (re)seed or [`RESEED_INTERVAL`] has passed since it, the key becomes fresh `getrandom`
//!   bytes XORed with 32 bytes of the current keystream (so a reseed can only add entropy).
//!   `getrandom` is in the base seccomp profile; a reseed that fails fails the request's device
//!   like a failing `/dev/urandom` read would (host I/O error).
//!
//! # Why this is as strong as reading `/dev/urandom` for every request
//!
//! Reading `/dev/urandom` returns ChaCha20 keystream of the kernel's per-CPU CRNG, whose key is
//! itself derived from the kernel's base CRNG and refreshed from the entropy pool about once a
//! minute. The worker does the same one level down, with the same cipher:
//!
//! - *Unpredictability* rests on the same assumption: ChaCha20 keystream under a secret,
//!   uniformly random 256-bit key is indistinguishable from random. The key comes from the
//!   kernel CRNG and never leaves the worker.
//! - *Freshness*: no byte comes from a key derived longer than [`RESEED_INTERVAL`] or
//!   [`RESEED_BYTES`] ago from the kernel, a much tighter bound than the kernel's own reseed
//!   interval (60 s); an entropy event that reaches the kernel reaches the device's output at
//!   the next reseed.
//! - *State compromise*: whoever can read the worker's memory can already read all of guest
//!   RAM (the worker maps it), including every random byte the guest holds, so the generator's
//!   state adds nothing. Even so, fast key erasure keeps past output unrecoverable from it, and
//!   the next reseed locks such an observer out of future output — the two properties the
//!   kernel's CRNG gives.
//!
//! `source=urandom` keeps the device on a `/dev/urandom` fd opened before confinement (one
//! `read` per request) for those who want the kernel's bytes verbatim.

use std::io::{self, Read};
use std::time::{Duration, Instant};

use rand_chacha::rand_core::{Rng as _, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// The generator is re-keyed from the kernel after this many bytes of output.
pub const RESEED_BYTES: u64 = 1 << 20;
/// ... and before the first request served this long after the last (re)seed.
pub const RESEED_INTERVAL: Duration = Duration::from_secs(1);

/// Bytes of a ChaCha20 key.
const KEY_BYTES: usize = 32;

/// Fills a buffer with bytes from the kernel (`getrandom` in production).
pub type EntropyFn = fn(&mut [u8]) -> io::Result<()>;

/// `getrandom(2)` without flags (blocks only before the kernel CRNG is initialised, which is
/// long past once a VMM runs), retried on `EINTR`.
fn kernel_entropy(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        match rustix::rand::getrandom(&mut buf[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A ChaCha20 DRBG keyed from the kernel (see the module docs). Implements [`Read`] so the
/// device uses it exactly like an entropy file; every read fills the whole buffer.
pub struct Drbg {
    rng: ChaCha20Rng,
    /// Bytes delivered since the last (re)seed.
    since_seed: u64,
    seeded_at: Instant,
    entropy: EntropyFn,
    reseeds: u64,
}

impl Drbg {
    /// A generator seeded by `getrandom`. Call it before confinement (it is allowed after
    /// too, but the first seed should not depend on the sandbox).
    pub fn new() -> io::Result<Drbg> {
        Drbg::with_entropy(kernel_entropy)
    }

    /// A generator seeded (and reseeded) by `entropy` (tests count and fail reseeds).
    pub fn with_entropy(entropy: EntropyFn) -> io::Result<Drbg> {
        let mut key = [0u8; KEY_BYTES];
        entropy(&mut key)?;
        let rng = ChaCha20Rng::from_seed(key);
        key.fill(0);
        Ok(Drbg {
            rng,
            since_seed: 0,
            seeded_at: Instant::now(),
            entropy,
            reseeds: 0,
        })
    }

    /// How many times the generator was re-keyed from the kernel since it was built.
    pub fn reseeds(&self) -> u64 {
        self.reseeds
    }

    /// Replaces the key with `entropy` bytes XORed with the current keystream.
    fn reseed(&mut self) -> io::Result<()> {
        let mut fresh = [0u8; KEY_BYTES];
        (self.entropy)(&mut fresh)?;
        let mut key = [0u8; KEY_BYTES];
        self.rng.fill_bytes(&mut key);
        for (k, f) in key.iter_mut().zip(&fresh) {
            *k ^= f;
        }
        self.rng = ChaCha20Rng::from_seed(key);
        key.fill(0);
        fresh.fill(0);
        self.since_seed = 0;
        self.seeded_at = Instant::now();
        self.reseeds += 1;
        Ok(())
    }

    /// Fast key erasure: the next key is the generator's own next 32 bytes.
    fn erase_key(&mut self) {
        let mut key = [0u8; KEY_BYTES];
        self.rng.fill_bytes(&mut key);
        self.rng = ChaCha20Rng::from_seed(key);
        key.fill(0);
    }

    /// Fills `buf` (one request's bytes): reseeds first if the schedule says so, erases the
    /// key after.
    pub fn fill(&mut self, buf: &mut [u8]) -> io::Result<()> {
        if self.since_seed >= RESEED_BYTES || self.seeded_at.elapsed() >= RESEED_INTERVAL {
            self.reseed()?;
        }
        self.rng.fill_bytes(buf);
        self.erase_key();
        self.since_seed = self.since_seed.saturating_add(buf.len() as u64);
        Ok(())
    }
}

impl Read for Drbg {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.fill(buf)?;
        Ok(buf.len())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[test]
    fn output_differs_between_generators_and_requests() {
        let mut a = Drbg::new().unwrap();
        let mut b = Drbg::new().unwrap();
        let (mut x, mut y, mut z) = ([0u8; 64], [0u8; 64], [0u8; 64]);
        a.fill(&mut x).unwrap();
        a.fill(&mut y).unwrap();
        b.fill(&mut z).unwrap();
        assert_ne!(x, y);
        assert_ne!(x, z);
        assert_ne!(x, [0; 64]);
    }

    #[test]
    fn the_key_is_erased_after_every_request() {
        // Two generators with the same seed: after one request, the state is not the one that
        // produced it (a second request is not the continuation of the first's keystream).
        fn fixed(buf: &mut [u8]) -> io::Result<()> {
            buf.fill(7);
            Ok(())
        }
        let mut a = Drbg::with_entropy(fixed).unwrap();
        let mut first = [0u8; 64];
        a.fill(&mut first).unwrap();
        let mut next = [0u8; 64];
        a.fill(&mut next).unwrap();
        let mut plain = ChaCha20Rng::from_seed([7; 32]);
        let mut stream = [0u8; 128];
        plain.fill_bytes(&mut stream);
        assert_eq!(first[..], stream[..64], "ChaCha20 keystream under the seed");
        assert_ne!(next[..], stream[64..], "a fresh key, not the old keystream");
    }

    static CALLS: AtomicU64 = AtomicU64::new(0);

    fn counting(buf: &mut [u8]) -> io::Result<()> {
        CALLS.fetch_add(1, Ordering::SeqCst);
        buf.fill(1);
        Ok(())
    }

    #[test]
    fn reseeds_from_the_kernel_every_reseed_bytes() {
        let mut d = Drbg::with_entropy(counting).unwrap();
        let before = CALLS.load(Ordering::SeqCst);
        let mut buf = vec![0u8; 64 * 1024];
        // 16 requests of 64 KiB = RESEED_BYTES: no reseed yet; the 17th reseeds first.
        for _ in 0..16 {
            d.fill(&mut buf).unwrap();
        }
        assert_eq!(d.reseeds(), 0);
        d.fill(&mut buf).unwrap();
        assert_eq!(d.reseeds(), 1);
        assert!(CALLS.load(Ordering::SeqCst) > before);
    }

    #[test]
    fn reseeds_after_the_interval_and_reports_a_failing_kernel() {
        fn failing(buf: &mut [u8]) -> io::Result<()> {
            // The first call (the seed) succeeds, every later one fails.
            static SEEDED: AtomicU64 = AtomicU64::new(0);
            if SEEDED.fetch_add(1, Ordering::SeqCst) == 0 {
                buf.fill(3);
                return Ok(());
            }
            Err(io::Error::from_raw_os_error(libc::EIO))
        }
        let mut d = Drbg::with_entropy(failing).unwrap();
        let mut buf = [0u8; 16];
        d.fill(&mut buf).unwrap();
        d.seeded_at = Instant::now()
            .checked_sub(RESEED_INTERVAL)
            .expect("the clock is past one interval");
        let err = d.read(&mut buf).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO));
    }
}
