//! The benchmark tests (by name only, never in the default set): `bench_cpu` (`cpu.rs`), and
//! `bench_rng`, `bench_seqread`, `bench_seqwrite`, `bench_rand1`, `bench_rand16`,
//! `bench_getid`, and the virtio-fs ones `bench_fs_meta`, `bench_fs_rand4k`,
//! `bench_fs_seqread`, `bench_fs_seqwrite` (`dev.rs`, requests in `fsreq.rs`). Their request loops run in ring 3 (`engine.rs`, through
//! `crate::arch::user`); ring 0 sets the device up, routes its interrupt in `irq` mode,
//! resets it afterwards and prints the figures. Latencies: `samples.rs`.

mod cpu;
mod dev;
mod engine;
mod fsreq;
mod net;
pub mod samples;

use crate::cmdline::MmioDevice;

pub use cpu::run as run_cpu;
pub use dev::{
    run_fs_meta, run_fs_rand4k, run_fs_seqread, run_fs_seqwrite, run_getid, run_rand1, run_rand16,
    run_rng, run_seqread, run_seqwrite,
};
pub use net::{
    run_rr as run_net_rr, run_rx1500 as run_net_rx1500, run_rx64 as run_net_rx64,
    run_rxgso as run_net_rxgso, run_tx1500 as run_net_tx1500, run_tx64 as run_net_tx64,
    run_txgso as run_net_txgso,
};

pub fn applies(_devices: &[MmioDevice]) -> bool {
    false
}
