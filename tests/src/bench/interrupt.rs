//! Ctrl-C and `kill` for `svmm-bench`. The harness changes the host for its run (the huge page
//! pool, a network namespace, scratch images, a weston), and the owners of those put them back
//! when they are dropped. A signal's default action would skip that, so the first SIGINT,
//! SIGTERM or SIGHUP only asks the round robin to stop after the VM that is running; the
//! harness then returns an error through its normal path, which drops everything in order. A
//! second signal ends the process at once (and says what it may leave behind).
//!
//! A handler, not a blocked mask and a waiting thread: the VMs the harness starts inherit a
//! signal mask across `exec` (std's `Command` does not reset it), while caught signals go back
//! to their default action there, so svmm and QEMU see Ctrl-C as they would from a shell. The
//! handler is installed with `SA_RESTART`; the harness's own waits also retry on `EINTR`.

use std::sync::atomic::{AtomicI32, Ordering};

/// The signal that asked for a stop, 0 while none did.
static REQUESTED: AtomicI32 = AtomicI32::new(0);

const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

const FIRST: &[u8] = b"svmm-bench: signal: stopping after the VM that is running, then putting \
the host back (huge page pool, network namespace, scratch files); send it again to exit at once\n";
const AGAIN: &[u8] = b"svmm-bench: signal again: exiting now; the huge page pool, the network \
namespace and the scratch directory may be left as the run set them\n";

/// Catches SIGINT, SIGTERM and SIGHUP for the rest of the process's life.
pub fn install() -> Result<(), String> {
    for signal in SIGNALS {
        // SAFETY: a zeroed sigaction is a valid value to fill in; the handler is an
        // `extern "C" fn(c_int)` that only touches an atomic and calls write/_exit, which are
        // async-signal-safe; sigemptyset initialises the mask it is given.
        let rc = unsafe {
            let mut action = std::mem::zeroed::<libc::sigaction>();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(format!(
                "catch {}: {}",
                name(signal),
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// The signal that asked the harness to stop, if one did.
pub fn requested() -> Option<i32> {
    match REQUESTED.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

/// The signal's name, for messages.
pub fn name(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

extern "C" fn on_signal(signal: libc::c_int) {
    let first = REQUESTED
        .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok();
    let text = if first { FIRST } else { AGAIN };
    // SAFETY: write(2) of a static buffer and _exit are async-signal-safe; nothing here
    // allocates or takes a lock.
    unsafe {
        libc::write(libc::STDERR_FILENO, text.as_ptr().cast(), text.len());
        if !first {
            libc::_exit(128 + signal);
        }
    }
}
