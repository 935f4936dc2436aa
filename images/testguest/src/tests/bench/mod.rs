//! The benchmark tests (by name only, never in the default set): `bench_cpu` (`cpu.rs`), and
//! `bench_rng`, `bench_seqread`, `bench_seqwrite`, `bench_rand1`, `bench_rand16`,
//! `bench_getid` (`dev.rs`). Their request loops run in ring 3 (`engine.rs`, through
//! `crate::arch::user`); ring 0 sets the device up, routes its interrupt in `irq` mode,
//! resets it afterwards and prints the figures. Latencies: `samples.rs`.

mod cpu;
mod dev;
mod engine;
mod samples;

use crate::cmdline::MmioDevice;

pub use cpu::run as run_cpu;
pub use dev::{run_getid, run_rand1, run_rand16, run_rng, run_seqread, run_seqwrite};

pub fn applies(_devices: &[MmioDevice]) -> bool {
    false
}
