//! The command line of a spawned worker, after `svmm __worker KIND`: one format, written by the
//! VMM side (`plan::worker_argv`) and read here, strictly.
//!
//! ```text
//!   svmm __worker KIND --seccomp=trap|log --sandbox-... --config=HEX [--shm-window=BASE:LEN]
//!                      [--fault=MODE [--fault-after=N]]
//! ```
//!
//! - `--seccomp=`: the filter's mode;
//! - `--sandbox-*`: the sandbox (`broker::ConfineConfig::to_args`, read by `from_args`);
//! - `--config=`: the kind's config, encoded once by `ipc::codec` for every kind
//!   (`devices::DeviceConfig::encode`), as lower-case hex; the kind decodes and validates it;
//! - `--shm-window=`: where the device's shared-memory region lies (hex guest-physical base and
//!   length), for a kind that declares one (`devices::Kind::shm_region`);
//! - `--fault=`, `--fault-after=`: test builds only (`worker::fault`).
//!
//! Every argument is required once (except the `--fault` ones, at most once); anything else is
//! refused.

use std::ffi::OsString;

use devices::kind::ShmWindow;
use seccomp_profiles::Mode;

/// The first argument that selects worker mode.
pub const WORKER_ARG: &str = "__worker";
/// The worker argument that selects the seccomp filter's mode: `--seccomp=trap|log`.
pub const SECCOMP_ARG: &str = "--seccomp=";
/// The worker argument that carries the kind's config: `--config=HEX`.
pub const CONFIG_ARG: &str = "--config=";

/// The worker argument that says where the shared-memory region is: `--shm-window=BASE:LEN`.
pub const SHM_WINDOW_ARG: &str = "--shm-window=";

/// `--shm-window=` with `window` as two hex numbers.
pub fn shm_window_arg(window: ShmWindow) -> String {
    format!("{SHM_WINDOW_ARG}{:x}:{:x}", window.base, window.len)
}

/// The window of `--shm-window=BASE:LEN`: hex, a non-empty page-aligned range.
fn parse_window(text: &str) -> Option<ShmWindow> {
    let (base, len) = text.split_once(':')?;
    let hex = |t: &str| {
        (!t.is_empty())
            .then(|| u64::from_str_radix(t, 16).ok())
            .flatten()
    };
    let (base, len) = (hex(base)?, hex(len)?);
    let aligned = base % 4096 == 0 && len % 4096 == 0 && len != 0;
    (aligned && base.checked_add(len).is_some()).then_some(ShmWindow { base, len })
}

/// `--seccomp=trap`.
pub fn seccomp_arg(mode: Mode) -> String {
    let mode = match mode {
        Mode::Trap => "trap",
        Mode::Log => "log",
    };
    format!("{SECCOMP_ARG}{mode}")
}

/// `--config=` with `config` in hex.
pub fn config_arg(config: &[u8]) -> String {
    let mut arg = String::with_capacity(CONFIG_ARG.len() + 2 * config.len());
    arg.push_str(CONFIG_ARG);
    for byte in config {
        arg.push_str(&format!("{byte:02x}"));
    }
    arg
}

/// The bytes of lower-case hex `text`; `None` for anything else.
fn from_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    text.as_bytes()
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

/// The worker's arguments besides its kind and sandbox.
#[derive(Debug, PartialEq, Eq)]
pub struct WorkerArgs {
    /// `--seccomp=trap|log`.
    pub seccomp: Mode,
    /// `--config=HEX`, decoded from hex (the kind decodes the rest).
    pub config: Vec<u8>,
    /// `--shm-window=BASE:LEN`.
    pub shm_window: Option<ShmWindow>,
    /// `--fault=MODE` (test builds only).
    #[cfg(feature = "test-faults")]
    pub fault: Option<crate::fault::Fault>,
    /// `--fault-after=N` (test builds only).
    #[cfg(feature = "test-faults")]
    pub fault_after: Option<u32>,
}

impl WorkerArgs {
    /// Reads `args` (what is left after the `--sandbox-*` ones): each known argument once,
    /// nothing else.
    pub fn parse(args: &[OsString]) -> Result<WorkerArgs, String> {
        let mut seccomp = None;
        let mut config = None;
        let mut shm_window = None;
        #[cfg(feature = "test-faults")]
        let mut fault = None;
        #[cfg(feature = "test-faults")]
        let mut fault_after = None;
        let invalid = |arg: &OsString| format!("invalid worker argument {arg:?}");
        for arg in args {
            let text = arg.to_str().unwrap_or_default();
            if let Some(mode) = text.strip_prefix(SECCOMP_ARG) {
                let mode = match mode {
                    "trap" => Mode::Trap,
                    "log" => Mode::Log,
                    _ => return Err(invalid(arg)),
                };
                set(&mut seccomp, mode, arg)?;
            } else if let Some(hex) = text.strip_prefix(CONFIG_ARG) {
                set(&mut config, from_hex(hex).ok_or_else(|| invalid(arg))?, arg)?;
            } else if let Some(window) = text.strip_prefix(SHM_WINDOW_ARG) {
                set(
                    &mut shm_window,
                    parse_window(window).ok_or_else(|| invalid(arg))?,
                    arg,
                )?;
            } else {
                #[cfg(feature = "test-faults")]
                if let Some(name) = text.strip_prefix(crate::fault::ARG_PREFIX) {
                    let mode = crate::fault::Fault::from_name(name).ok_or_else(|| invalid(arg))?;
                    set(&mut fault, mode, arg)?;
                    continue;
                }
                #[cfg(feature = "test-faults")]
                if let Some(n) = text.strip_prefix(crate::fault::AFTER_ARG_PREFIX) {
                    let n = n
                        .parse::<u32>()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or_else(|| invalid(arg))?;
                    set(&mut fault_after, n, arg)?;
                    continue;
                }
                return Err(format!("unknown worker argument {arg:?}"));
            }
        }
        Ok(WorkerArgs {
            seccomp: seccomp.ok_or_else(|| format!("missing worker argument {SECCOMP_ARG}"))?,
            config: config.ok_or_else(|| format!("missing worker argument {CONFIG_ARG}"))?,
            shm_window,
            #[cfg(feature = "test-faults")]
            fault,
            #[cfg(feature = "test-faults")]
            fault_after,
        })
    }
}

fn set<T>(slot: &mut Option<T>, value: T, arg: &OsString) -> Result<(), String> {
    if slot.is_some() {
        return Err(format!("worker argument {arg:?} given twice"));
    }
    *slot = Some(value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn config_round_trips_through_hex() {
        for bytes in [vec![], vec![0u8, 1, 0x7f, 0x80, 0xff], (0..=255).collect()] {
            let arg = config_arg(&bytes);
            let args = WorkerArgs::parse(&os(&["--seccomp=log", &arg])).unwrap();
            assert_eq!(args.config, bytes);
            assert_eq!(args.seccomp, Mode::Log);
        }
        assert_eq!(config_arg(&[0xab, 1]), "--config=ab01");
    }

    #[test]
    fn arguments_are_read_strictly() {
        let err = |args: &[&str]| WorkerArgs::parse(&os(args)).unwrap_err();
        assert!(err(&["--config="]).contains("missing worker argument --seccomp="));
        assert!(err(&["--seccomp=trap"]).contains("missing worker argument --config="));
        for bad in [
            "--config=abc",
            "--config=AB",
            "--config=zz",
            "--seccomp=kill",
        ] {
            assert!(
                err(&["--seccomp=trap", "--config=", bad]).contains("worker argument"),
                "{bad}"
            );
        }
        assert!(err(&["--seccomp=trap", "--config=", "--seccomp=log"]).contains("twice"));
        assert!(err(&["--seccomp=trap", "--config=", "--kind-option=1"]).contains("unknown"));
    }

    #[test]
    fn shm_windows_round_trip_and_are_checked() {
        let window = ShmWindow {
            base: 1 << 32,
            len: 256 << 20,
        };
        let arg = shm_window_arg(window);
        assert_eq!(arg, "--shm-window=100000000:10000000");
        let args = WorkerArgs::parse(&os(&["--seccomp=trap", "--config=", &arg])).unwrap();
        assert_eq!(args.shm_window, Some(window));
        for bad in [
            "1000:0",
            "1001:1000",
            ":1000",
            "1000",
            "g:1000",
            "fffffffffffff000:2000",
        ] {
            let arg = format!("--shm-window={bad}");
            assert!(WorkerArgs::parse(&os(&["--seccomp=trap", "--config=", &arg])).is_err());
        }
    }
}
