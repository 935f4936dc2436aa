//! The host terminal: raw mode while the guest owns the console, restored on every way out
//! (normal exit, error, panic, and the fatal signals a user or supervisor sends).

use std::sync::OnceLock;

/// Terminal settings saved before raw mode; set once, read by the restore paths.
static SAVED: OnceLock<libc::termios> = OnceLock::new();

/// Signals after which svmm restores the terminal and exits with 128 + signal.
const FATAL_SIGNALS: [libc::c_int; 4] = [libc::SIGTERM, libc::SIGHUP, libc::SIGINT, libc::SIGQUIT];

/// Puts stdin into raw mode when it is a terminal. Returns whether it did: only then does the
/// console escape (Ctrl-A x) apply. Output processing is left on so the guest's `\n` still
/// starts a new line.
pub fn enter_raw_mode() -> bool {
    // SAFETY: isatty only inspects the fd.
    if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
        return false;
    }
    // SAFETY: termios is plain data; zeroed is a valid value that tcgetattr overwrites.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `saved` is a valid termios for tcgetattr to fill.
    if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut saved) } != 0 {
        return false;
    }
    if SAVED.set(saved).is_err() {
        return true;
    }
    install_restore_handlers();
    let mut raw = saved;
    raw.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG | libc::IEXTEN);
    raw.c_iflag &= !(libc::IXON | libc::ICRNL | libc::INLCR | libc::IGNCR);
    raw.c_cc[libc::VMIN] = 1;
    raw.c_cc[libc::VTIME] = 0;
    // SAFETY: `raw` is a valid termios derived from the current settings.
    unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) == 0 }
}

/// Restores the saved terminal settings, if raw mode was entered. Async-signal-safe.
pub fn restore() {
    if let Some(saved) = SAVED.get() {
        // SAFETY: `saved` came from tcgetattr on this fd; tcsetattr is async-signal-safe.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, saved) };
    }
}

extern "C" fn on_fatal_signal(signal: libc::c_int) {
    restore();
    // SAFETY: _exit is async-signal-safe and ends the process without running Rust code.
    unsafe { libc::_exit(128 + signal) };
}

fn install_restore_handlers() {
    for signal in FATAL_SIGNALS {
        // SAFETY: sigaction is plain data; zeroed means empty mask and no flags.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_fatal_signal as *const () as usize;
        // SAFETY: the handler only calls async-signal-safe functions; `action` is valid.
        unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) };
    }
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore();
        default_hook(info);
    }));
}
