//! `panic`: panics on purpose, so that the harness can check the panic path (the
//! `testguest: panic: ...` line, `done` with one more failure, exit status 3). Never in the
//! default set.

use crate::cmdline::MmioDevice;
use crate::tests::{Ctx, Outcome};

pub fn applies(_devices: &[MmioDevice]) -> bool {
    false
}

pub fn run(_ctx: &Ctx) -> Outcome {
    panic!("requested by testguest.run=panic");
}
