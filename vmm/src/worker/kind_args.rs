//! A device kind's parameters on a spawned worker's command line, after the kind:
//!
//! | kind  | arguments (each exactly once)                                         |
//! |-------|-----------------------------------------------------------------------|
//! | `rng` | none                                                                  |
//! | `blk` | `--blk-ro=0\|1 --blk-id=STR --blk-queues=N --blk-direct=0\|1 --blk-poll-us=N` |
//!
//! The VMM writes them ([`to_args`], from the validated `--device` spec); the worker parses
//! them strictly ([`parse`]): every argument of its kind present once, nothing unknown, values
//! in the same ranges the spec allows. Host paths never travel: the worker gets the image as an
//! fd.

use std::ffi::OsString;

use devices::blk::{self, BlkOptions};

use super::backend::BackendConfig;
use crate::device_spec::DeviceKind;

/// A worker argument of the kind that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KindArgsError {
    /// A required argument is missing.
    #[error("missing worker argument --{0}=")]
    Missing(&'static str),
    /// The same argument twice.
    #[error("worker argument {0:?} given twice")]
    Repeated(String),
    /// An argument of the kind's prefix that the kind does not have.
    #[error("unknown worker argument {0:?}")]
    Unknown(String),
    /// A value out of range or malformed.
    #[error("invalid worker argument {0:?}")]
    Invalid(String),
}

/// The arguments that carry `config`.
pub fn to_args(config: &BackendConfig) -> Vec<String> {
    match config {
        BackendConfig::Rng => Vec::new(),
        BackendConfig::Blk(o) => vec![
            format!("--blk-ro={}", u8::from(o.read_only)),
            format!("--blk-id={}", o.id),
            format!("--blk-queues={}", o.queues),
            format!("--blk-direct={}", u8::from(o.direct)),
            format!("--blk-poll-us={}", o.poll_us),
        ],
    }
}

/// Takes `kind`'s arguments (`--KIND-*`) out of `args`: the configuration, and the other
/// arguments in order.
pub fn parse(
    kind: DeviceKind,
    args: &[OsString],
) -> Result<(BackendConfig, Vec<OsString>), KindArgsError> {
    let prefix = format!("--{}-", kind.name());
    let mut mine = Vec::new();
    let mut rest = Vec::new();
    for arg in args {
        match arg.to_str().and_then(|a| a.strip_prefix(prefix.as_str())) {
            Some(tail) => mine.push((tail, arg)),
            None => rest.push(arg.clone()),
        }
    }
    let config = match kind {
        DeviceKind::Rng => match mine.first() {
            Some((_, arg)) => return Err(unknown(arg)),
            None => BackendConfig::Rng,
        },
        DeviceKind::Blk => BackendConfig::Blk(blk_options(&mine)?),
    };
    Ok((config, rest))
}

/// `--blk-*` as `(tail after the prefix, whole argument)`.
fn blk_options(args: &[(&str, &OsString)]) -> Result<BlkOptions, KindArgsError> {
    let (mut ro, mut id, mut queues, mut direct, mut poll) = (None, None, None, None, None);
    for (tail, arg) in args {
        let (name, value) = tail.split_once('=').ok_or_else(|| invalid(arg))?;
        let slot = match name {
            "ro" => set(&mut ro, flag(value), arg)?,
            "direct" => set(&mut direct, flag(value), arg)?,
            "id" => {
                let ok = !value.is_empty() && value.len() <= blk::ID_BYTES;
                set(&mut id, ok.then(|| value.to_string()), arg)?
            }
            "queues" => {
                let digits = value.bytes().all(|b| b.is_ascii_digit());
                let n = value.parse::<u16>().ok().filter(|_| digits);
                let n = n.filter(|n| (1..=blk::MAX_QUEUES).contains(n));
                set(&mut queues, n, arg)?
            }
            "poll-us" => {
                let digits = value.bytes().all(|b| b.is_ascii_digit());
                let n = value.parse::<u32>().ok().filter(|_| digits);
                let n = n.filter(|n| *n <= blk::MAX_POLL_US);
                set(&mut poll, n, arg)?
            }
            _ => return Err(unknown(arg)),
        };
        slot.then_some(()).ok_or_else(|| invalid(arg))?;
    }
    Ok(BlkOptions {
        read_only: ro.ok_or(KindArgsError::Missing("blk-ro"))?,
        id: id.ok_or(KindArgsError::Missing("blk-id"))?,
        queues: queues.ok_or(KindArgsError::Missing("blk-queues"))?,
        direct: direct.ok_or(KindArgsError::Missing("blk-direct"))?,
        poll_us: poll.ok_or(KindArgsError::Missing("blk-poll-us"))?,
        // No command-line switch yet: merging is always on in a worker.
        merge: true,
    })
}

/// Stores `value` in `slot`: an error if the slot is taken, `false` if the value is invalid.
fn set<T>(slot: &mut Option<T>, value: Option<T>, arg: &OsString) -> Result<bool, KindArgsError> {
    if slot.is_some() {
        return Err(KindArgsError::Repeated(arg.to_string_lossy().into_owned()));
    }
    let valid = value.is_some();
    *slot = value;
    Ok(valid)
}

fn flag(value: &str) -> Option<bool> {
    match value {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    }
}

fn unknown(arg: &OsString) -> KindArgsError {
    KindArgsError::Unknown(arg.to_string_lossy().into_owned())
}

fn invalid(arg: &OsString) -> KindArgsError {
    KindArgsError::Invalid(arg.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn blk(args: &[&str]) -> Result<BackendConfig, KindArgsError> {
        parse(DeviceKind::Blk, &os(args)).map(|(config, _)| config)
    }

    const GOOD: [&str; 5] = [
        "--blk-ro=1",
        "--blk-id=root disk=1",
        "--blk-queues=4",
        "--blk-direct=0",
        "--blk-poll-us=64",
    ];

    #[test]
    fn blk_round_trips_and_leaves_the_rest() {
        let config = BackendConfig::Blk(BlkOptions {
            read_only: true,
            id: "root disk=1".into(),
            direct: false,
            queues: 4,
            poll_us: 64,
            merge: true,
        });
        let mut args = os(&["--seccomp=trap"]);
        args.extend(to_args(&config).into_iter().map(OsString::from));
        args.push("--sandbox-fds=9".into());
        let (back, rest) = parse(DeviceKind::Blk, &args).unwrap();
        assert_eq!(back, config);
        assert_eq!(rest, os(&["--seccomp=trap", "--sandbox-fds=9"]));
        assert_eq!(to_args(&config), GOOD);
    }

    #[test]
    fn blk_is_parsed_strictly() {
        let with = |i: usize, arg: &str| {
            let mut args = GOOD.to_vec();
            args[i] = arg;
            blk(&args)
        };
        assert!(blk(&GOOD).is_ok());
        assert_eq!(
            blk(&GOOD[1..]),
            Err(KindArgsError::Missing("blk-ro")),
            "every argument is required"
        );
        let repeated = [&GOOD[..], &["--blk-queues=2"]].concat();
        assert!(matches!(blk(&repeated), Err(KindArgsError::Repeated(_))));
        for bad in ["--blk-ro=yes", "--blk-ro", "--blk-ro=", "--blk-ro=2"] {
            assert!(
                matches!(with(0, bad), Err(KindArgsError::Invalid(_))),
                "{bad}"
            );
        }
        let long = format!("--blk-id={}", "x".repeat(21));
        for bad in ["--blk-id=", long.as_str()] {
            assert!(
                matches!(with(1, bad), Err(KindArgsError::Invalid(_))),
                "{bad}"
            );
        }
        for bad in [
            "--blk-queues=0",
            "--blk-queues=17",
            "--blk-queues=+1",
            "--blk-queues= 1",
        ] {
            assert!(
                matches!(with(2, bad), Err(KindArgsError::Invalid(_))),
                "{bad}"
            );
        }
        for bad in [
            "--blk-poll-us=1001",
            "--blk-poll-us=",
            "--blk-poll-us=-1",
            "--blk-poll-us=+1",
            "--blk-poll-us=4294967296",
            "--blk-poll-us=x",
        ] {
            assert!(
                matches!(with(4, bad), Err(KindArgsError::Invalid(_))),
                "{bad}"
            );
        }
        for good in ["--blk-poll-us=0", "--blk-poll-us=1000"] {
            assert!(with(4, good).is_ok(), "{good}");
        }
        assert_eq!(
            blk(&GOOD[..4]),
            Err(KindArgsError::Missing("blk-poll-us")),
            "the poll window is required too"
        );
        assert!(matches!(
            with(3, "--blk-cache=none"),
            Err(KindArgsError::Unknown(_))
        ));
    }

    #[test]
    fn rng_takes_no_kind_arguments() {
        let (config, rest) = parse(DeviceKind::Rng, &os(&["--seccomp=log"])).unwrap();
        assert_eq!(config, BackendConfig::Rng);
        assert_eq!(rest, os(&["--seccomp=log"]));
        assert!(to_args(&BackendConfig::Rng).is_empty());
        assert!(matches!(
            parse(DeviceKind::Rng, &os(&["--rng-speed=1"])),
            Err(KindArgsError::Unknown(_))
        ));
    }
}
