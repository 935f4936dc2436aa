//! svmm's test guest: a freestanding x86_64 program booted through PVH (see README.md).
//! It reads its devices and test plan from the command line, runs the tests, prints one line
//! per result on COM1 and ends the VM through the exit port with its status.

#![no_std]
#![no_main]
// No allocator: a test's figures or reason is a fixed-size `Line`, returned by value.
#![allow(clippy::result_large_err)]

mod arch;
mod boot;
mod cmdline;
mod line;
mod net;
mod port;
mod pvh;
mod runner;
mod serial;
mod tests;
mod timer;
mod virtio;

use cmdline::BadKind;
use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, Ordering};

/// Called by the entry stub in `boot.rs`, in 64-bit mode with the boot stack.
#[no_mangle]
pub extern "C" fn rust_main(start_info_paddr: u32) -> ! {
    serial::init();
    arch::init();
    say!("svmm test guest v1");

    let cmdline = match pvh::start_info(start_info_paddr).and_then(|info| pvh::cmdline(&info)) {
        Ok(cmdline) => cmdline,
        Err(err) => {
            report_boot_error(err);
            ""
        }
    };
    say!("cmdline: {}", cmdline);

    let params = cmdline::parse(cmdline);
    for (index, dev) in params.devices().iter().enumerate() {
        say!(
            "virtio-mmio {} addr={:#x} size={:#x} irq={} {}",
            index,
            dev.addr,
            dev.size,
            dev.irq,
            virtio::probe(dev)
        );
    }
    say!("found {} virtio-mmio devices", params.devices().len());
    for &(kind, text) in params.bad() {
        match kind {
            BadKind::Entry => {
                say!("bad virtio_mmio.device entry '{}'", text);
                say!("cmdline FAIL bad-entry={}", text);
            }
            BadKind::Param => say!("cmdline FAIL bad-param={}", text),
        }
        runner::count_fail();
    }
    for _ in 0..params.bad_overflow {
        say!("cmdline FAIL bad-word");
        runner::count_fail();
    }

    let timer = timer::Timer::calibrate();
    say!("timer tsc_khz={} source={}", timer.tsc_khz(), timer.source);

    let ctx = tests::Ctx {
        devices: params.devices(),
        timer: &timer,
        params: &params,
        instance: 0,
    };
    runner::run_tests(&ctx, &params);

    if params.sleep_ms > 0 {
        say!("sleep ms={}", params.sleep_ms);
        timer.sleep_ms(params.sleep_ms);
    }
    runner::finish(params.exit)
}

fn report_boot_error(err: pvh::Error) {
    match err {
        pvh::Error::BadStartInfoAddress(a) => say!("start_info FAIL bad-address={:#x}", a),
        pvh::Error::BadMagic(m) => say!("start_info FAIL bad-magic={:#x}", m),
        pvh::Error::BadCmdlineAddress(a) => say!("cmdline FAIL bad-address={:#x}", a),
        pvh::Error::NotUtf8 => say!("cmdline FAIL not-utf8"),
    }
    runner::count_fail();
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    if arch::cpl() == 3 {
        // Ring 3 cannot print: hand the message to ring 0, which reports it.
        arch::user::panic_exit(info);
    }
    static PANICKING: AtomicBool = AtomicBool::new(false);
    if PANICKING.load(Ordering::Relaxed) {
        // Panicked while reporting a panic: just stop.
        port::exit(runner::STATUS_PANIC);
    }
    PANICKING.store(true, Ordering::Relaxed);
    match info.location() {
        Some(at) => say!("panic: {} at {}:{}", info.message(), at.file(), at.line()),
        None => say!("panic: {}", info.message()),
    }
    runner::finish_after_panic()
}
