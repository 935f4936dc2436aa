//! Runs the selected tests, counts results, and ends the VM with the final line
//! `testguest: done pass=N fail=M`.

use crate::cmdline::Params;
use crate::port;
use crate::say;
use crate::serial;
use crate::tests::{self, Ctx, Test};
use core::sync::atomic::{AtomicU32, Ordering};

/// Exit status when a test failed; 0 when none did.
pub const STATUS_FAIL: u32 = 1;
/// Exit status after a panic.
pub const STATUS_PANIC: u32 = 3;

// One vCPU, no interrupts: plain loads and stores are enough (and need no locked
// read-modify-write instructions, which ring-0 emulation on PVM hosts may not support).
static PASSED: AtomicU32 = AtomicU32::new(0);
static FAILED: AtomicU32 = AtomicU32::new(0);

pub fn count_pass() {
    PASSED.store(PASSED.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

pub fn count_fail() {
    FAILED.store(FAILED.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

/// Runs one test and prints its result line, under `label` (the test's name, or `NAME@N`).
fn run_one(test: &Test, label: &str, ctx: &Ctx) {
    let outcome = (test.run)(ctx);
    let (verdict, text) = match &outcome {
        Ok(figures) => (" ok", figures),
        Err(reason) => (" FAIL", reason),
    };
    serial::write_bytes(b"testguest: ");
    serial::write_bytes(label.as_bytes());
    serial::write_bytes(verdict.as_bytes());
    if !text.as_bytes().is_empty() {
        serial::write_byte(b' ');
        serial::write_bytes(text.as_bytes());
    }
    serial::write_byte(b'\n');
    match outcome {
        Ok(_) => count_pass(),
        Err(_) => count_fail(),
    }
}

/// Runs the tests named by `testguest.run=` in the given order, or else every test that
/// applies to the devices found (`none`: no test). `NAME@N` runs test NAME on the N-th device (from 0) of its
/// kind, e.g. `rng@1` on the second virtio-rng device.
pub fn run_tests(ctx: &Ctx, params: &Params) {
    match params.run {
        Some(list) => {
            // `none` runs nothing (boot figures only).
            for word in list.split(',').filter(|n| !n.is_empty() && *n != "none") {
                let (name, instance) = match word.split_once('@') {
                    Some((name, n)) => (name, n.parse::<usize>().ok()),
                    None => (word, Some(0)),
                };
                match (tests::find(name), instance) {
                    (Some(test), Some(instance)) => {
                        run_one(test, word, &Ctx { instance, ..*ctx });
                    }
                    (None, _) => {
                        say!("{} FAIL unknown test", word);
                        count_fail();
                    }
                    (Some(_), None) => {
                        say!("{} FAIL bad instance", word);
                        count_fail();
                    }
                }
            }
        }
        None => {
            for test in tests::TESTS.iter().filter(|t| (t.applies)(ctx.devices)) {
                run_one(test, test.name, ctx);
            }
        }
    }
}

/// Prints the final line and ends the VM: status 0 if nothing failed, else 1, unless
/// `exit_override` (`testguest.exit=N`) says otherwise.
pub fn finish(exit_override: Option<u32>) -> ! {
    let passed = PASSED.load(Ordering::Relaxed);
    let failed = FAILED.load(Ordering::Relaxed);
    say!("done pass={} fail={}", passed, failed);
    let status = if failed == 0 { 0 } else { STATUS_FAIL };
    port::exit(exit_override.unwrap_or(status))
}

/// The end after a panic: the panic counts as one more failure, the status is 3.
pub fn finish_after_panic() -> ! {
    let passed = PASSED.load(Ordering::Relaxed);
    let failed = FAILED.load(Ordering::Relaxed);
    say!("done pass={} fail={}", passed, failed + 1);
    port::exit(STATUS_PANIC)
}
