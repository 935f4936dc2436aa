//! Per-request latencies and the benchmarks' pseudo-random numbers.
//!
//! Latencies (TSC cycles) go into a fixed array of [`CAPACITY`] samples. When it is full,
//! every other sample is dropped and from then on only every `stride`-th latency is kept
//! (the stride doubles each time), so the samples stay spread evenly over the whole measured
//! phase. Percentiles come from sorting the kept samples — in ring 3, like everything else
//! that loops (sorting 65536 samples in emulated ring 0 would take seconds on PVM hosts).

use crate::arch::Page;
use core::cell::UnsafeCell;

pub const CAPACITY: usize = 65536;

#[link_section = ".noinit.bench"]
static STORE: Page<[u64; CAPACITY]> = Page(UnsafeCell::new([0; CAPACITY]));

/// The kept latencies and a sum over all of them (for the mean).
pub struct Samples {
    count: usize,
    stride: u64,
    seen: u64,
    pub sum: u64,
}

impl Samples {
    pub const fn new() -> Samples {
        Samples {
            count: 0,
            stride: 1,
            seen: 0,
            sum: 0,
        }
    }

    fn store(&mut self) -> &'static mut [u64; CAPACITY] {
        // SAFETY: one `Samples` is alive at a time (the benchmark tests run one after the
        // other) and only it touches the store, from one context at a time.
        unsafe { &mut *STORE.0.get() }
    }

    #[inline]
    pub fn push(&mut self, cycles: u64) {
        self.sum += cycles;
        if self.seen.is_multiple_of(self.stride) {
            if self.count == CAPACITY {
                let store = self.store();
                for i in 0..CAPACITY / 2 {
                    store[i] = store[2 * i];
                }
                self.count = CAPACITY / 2;
                self.stride *= 2;
            }
            if self.seen.is_multiple_of(self.stride) {
                let n = self.count;
                self.store()[n] = cycles;
                self.count += 1;
            }
        }
        self.seen += 1;
    }

    /// All latencies pushed (kept or not).
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Sorts the kept samples (call it in ring 3).
    pub fn sort(&mut self) {
        let n = self.count;
        self.store()[..n].sort_unstable();
    }

    /// The `pct`-th percentile (0..=100) of the sorted samples, in cycles (0 if none).
    pub fn percentile(&mut self, pct: usize) -> u64 {
        let n = self.count;
        if n == 0 {
            return 0;
        }
        self.store()[(n * pct / 100).min(n - 1)]
    }
}

/// xorshift64 (Marsaglia), seeded with a constant: the same offsets on every run.
pub struct XorShift(u64);

impl XorShift {
    pub const SEED: u64 = 0x7376_6d6d_6265_6e63; // "svmmbenc"

    pub const fn new(seed: u64) -> XorShift {
        XorShift(seed)
    }

    #[inline]
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}
