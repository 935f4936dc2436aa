//! The test table. To add a test: write `tests/<name>.rs` with `applies` and `run`, and add a
//! row to `TESTS`. `applies` decides whether the test is in the default set (no
//! `testguest.run=`), given the virtio-mmio devices on the command line; `run` returns the
//! figures printed after `ok`, or the reason printed after `FAIL`.

mod bench;
mod blk;
mod echo;
mod fs;
mod net;
mod panic;
mod ring3;
mod rng;
mod smp;
mod triplefault;
mod wl;

use crate::cmdline::{MmioDevice, Params};
use crate::line::Line;
use crate::timer::Timer;

/// What a test gets: the devices, the timer, the parsed command line, and which instance of
/// its device kind to drive (`NAME@N` in `testguest.run=`; 0 by default).
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    pub devices: &'a [MmioDevice],
    pub timer: &'a Timer,
    pub params: &'a Params<'a>,
    pub instance: usize,
}

/// `Ok(figures)` → `testguest: <name> ok <figures>`; `Err(reason)` → `... FAIL <reason>`.
pub type Outcome = Result<Line, Line>;

pub struct Test {
    pub name: &'static str,
    pub applies: fn(&[MmioDevice]) -> bool,
    pub run: fn(&Ctx) -> Outcome,
}

pub static TESTS: &[Test] = &[
    Test {
        name: "bench_cpu",
        applies: bench::applies,
        run: bench::run_cpu,
    },
    Test {
        name: "bench_fs_meta",
        applies: bench::applies,
        run: bench::run_fs_meta,
    },
    Test {
        name: "bench_fs_rand4k",
        applies: bench::applies,
        run: bench::run_fs_rand4k,
    },
    Test {
        name: "bench_fs_seqread",
        applies: bench::applies,
        run: bench::run_fs_seqread,
    },
    Test {
        name: "bench_fs_seqwrite",
        applies: bench::applies,
        run: bench::run_fs_seqwrite,
    },
    Test {
        name: "bench_wl_fps",
        applies: bench::applies,
        run: wl::run_bench_fps,
    },
    Test {
        name: "bench_wl_sync",
        applies: bench::applies,
        run: wl::run_bench_sync,
    },
    Test {
        name: "bench_getid",
        applies: bench::applies,
        run: bench::run_getid,
    },
    Test {
        name: "bench_net_rr",
        applies: bench::applies,
        run: bench::run_net_rr,
    },
    Test {
        name: "bench_net_rx1500",
        applies: bench::applies,
        run: bench::run_net_rx1500,
    },
    Test {
        name: "bench_net_rx64",
        applies: bench::applies,
        run: bench::run_net_rx64,
    },
    Test {
        name: "bench_net_rxgso",
        applies: bench::applies,
        run: bench::run_net_rxgso,
    },
    Test {
        name: "bench_net_tx1500",
        applies: bench::applies,
        run: bench::run_net_tx1500,
    },
    Test {
        name: "bench_net_tx64",
        applies: bench::applies,
        run: bench::run_net_tx64,
    },
    Test {
        name: "bench_net_txgso",
        applies: bench::applies,
        run: bench::run_net_txgso,
    },
    Test {
        name: "bench_rand1",
        applies: bench::applies,
        run: bench::run_rand1,
    },
    Test {
        name: "bench_rand16",
        applies: bench::applies,
        run: bench::run_rand16,
    },
    Test {
        name: "bench_rng",
        applies: bench::applies,
        run: bench::run_rng,
    },
    Test {
        name: "bench_seqread",
        applies: bench::applies,
        run: bench::run_seqread,
    },
    Test {
        name: "bench_seqwrite",
        applies: bench::applies,
        run: bench::run_seqwrite,
    },
    Test {
        name: "blk",
        applies: blk::applies,
        run: blk::run,
    },
    Test {
        name: "blk_bounce",
        applies: blk::applies_write,
        run: blk::bounce::run,
    },
    Test {
        name: "blk_loop",
        applies: blk::applies_write,
        run: blk::run_loop,
    },
    Test {
        name: "blk_ro",
        applies: blk::applies_ro,
        run: blk::run_ro,
    },
    Test {
        name: "blk_write",
        applies: blk::applies_write,
        run: blk::run_write,
    },
    Test {
        name: "echo",
        applies: echo::applies,
        run: echo::run,
    },
    Test {
        name: "fs",
        applies: fs::applies,
        run: fs::run,
    },
    Test {
        name: "fs_escape",
        applies: fs::by_name,
        run: fs::run_escape,
    },
    Test {
        name: "fs_ro",
        applies: fs::by_name,
        run: fs::run_ro,
    },
    Test {
        name: "fs_write",
        applies: fs::by_name,
        run: fs::run_write,
    },
    Test {
        name: "net",
        applies: net::applies,
        run: net::run,
    },
    Test {
        name: "net_mq",
        applies: net::by_name,
        run: net::run_mq,
    },
    Test {
        name: "net_offload",
        applies: net::by_name,
        run: net::run_offload,
    },
    Test {
        name: "net_passt",
        applies: net::by_name,
        run: net::run_passt,
    },
    Test {
        name: "panic",
        applies: panic::applies,
        run: panic::run,
    },
    Test {
        name: "ring3",
        applies: ring3::applies,
        run: ring3::run,
    },
    Test {
        name: "rng",
        applies: rng::applies,
        run: rng::run,
    },
    Test {
        name: "rng_loop",
        applies: rng::applies_reinit,
        run: rng::run_loop,
    },
    Test {
        name: "rng_reinit",
        applies: rng::applies_reinit,
        run: rng::run_reinit,
    },
    Test {
        name: "smp",
        applies: smp::applies,
        run: smp::run,
    },
    Test {
        name: "triplefault",
        applies: triplefault::applies,
        run: triplefault::run,
    },
    Test {
        name: "wl",
        applies: wl::applies,
        run: wl::run,
    },
    Test {
        name: "wl_flood",
        applies: wl::by_name_only,
        run: wl::run_flood,
    },
    Test {
        name: "wl_pipe",
        applies: wl::by_name_only,
        run: wl::run_pipe,
    },
    Test {
        name: "wl_shm",
        applies: wl::by_name_only,
        run: wl::run_shm,
    },
];

pub fn find(name: &str) -> Option<&'static Test> {
    TESTS.iter().find(|t| t.name == name)
}
