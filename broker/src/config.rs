//! What a worker's sandbox consists of ([`ConfineConfig`]), and how it travels from the VMM to
//! the exec'd worker: as `--sandbox-*` arguments on the worker's command line
//! ([`ConfineConfig::to_args`], [`ConfineConfig::from_args`]). The seccomp program does not
//! travel: the worker takes it from the seccomp-profiles crate compiled into the same binary.

use crate::spawn::WorkerIds;
use seccompiler::BpfProgram;
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;

/// Resource limits the worker sets on itself (soft = hard).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimits {
    /// `RLIMIT_NPROC`: 0 = no new processes *and no new threads* (threads count too).
    pub nproc: u64,
    /// `RLIMIT_NOFILE`: highest fd number + 1 the worker may ever hold.
    pub nofile: u64,
    /// `RLIMIT_FSIZE`: largest file the worker may write (0: none; `None` = leave as is, for
    /// devices that write to an image file).
    pub fsize: Option<u64>,
    /// `RLIMIT_AS`: most bytes of address space the worker may map — guest RAM, which it maps
    /// whole, plus a margin for its own code, heap and buffers (`None` = leave as is).
    pub address_space: Option<u64>,
}

/// A directory (an inherited fd, opened by the broker before confinement) beneath which
/// Landlock lets the worker act.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LandlockBeneath {
    /// The inherited directory fd (usually `O_PATH`).
    pub fd: RawFd,
    /// Read and write (true) or read only (false).
    pub writable: bool,
}

/// Everything `confine` needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfineConfig {
    /// The worker was spawned into fresh namespaces (its own mount namespace, so pivot_root is
    /// safe). `false` skips the empty root.
    pub namespaces: bool,
    /// The ids to take (inside the worker's user namespace).
    pub ids: WorkerIds,
    /// How many fds the worker inherited at 3, 4, ...; every other fd above 2 is closed.
    pub fds: u32,
    /// An inherited fd whose peer only the VMM holds (the control socket, fd 3): if it has
    /// hung up when the death signal is armed, the VMM already died and confine fails.
    pub lifeline: Option<RawFd>,
    /// Resource limits.
    pub rlimits: Rlimits,
    /// Landlock exceptions (e.g. the fs device's shared directory). Empty: no filesystem rights.
    pub landlock_beneath: Vec<LandlockBeneath>,
    /// Go on when the kernel cannot enforce Landlock (only on the user's explicit request).
    pub allow_missing_landlock: bool,
    /// The seccomp filter of the device kind, installed last.
    pub seccomp: BpfProgram,
}

/// Fds a worker may open or create after confinement (epoll, eventfds, timers) on top of the
/// inherited ones; the default `RLIMIT_NOFILE` is `3 + fds + NOFILE_MARGIN`.
pub const NOFILE_MARGIN: u64 = 16;

impl ConfineConfig {
    /// The usual sandbox: namespaces, the given ids, `fds` inherited fds with the control socket
    /// at 3 as lifeline, no processes, no core, no file writes, a small fd table, no filesystem.
    pub fn new(ids: WorkerIds, fds: u32, seccomp: BpfProgram) -> Self {
        ConfineConfig {
            namespaces: true,
            ids,
            fds,
            lifeline: (fds > 0).then_some(3),
            rlimits: Rlimits {
                nproc: 0,
                nofile: 3 + u64::from(fds) + NOFILE_MARGIN,
                fsize: Some(0),
                address_space: None,
            },
            landlock_beneath: Vec::new(),
            allow_missing_landlock: false,
            seccomp,
        }
    }

    /// The `--sandbox-*` arguments that carry this config (all but the seccomp program).
    pub fn to_args(&self) -> Vec<CString> {
        let mut args = vec![
            format!("--sandbox-namespaces={}", u8::from(self.namespaces)),
            format!("--sandbox-uid={}", self.ids.uid),
            format!("--sandbox-gid={}", self.ids.gid),
            format!("--sandbox-drop-groups={}", u8::from(self.ids.drop_groups)),
            format!("--sandbox-fds={}", self.fds),
            format!("--sandbox-lifeline={}", opt(self.lifeline)),
            format!("--sandbox-nproc={}", self.rlimits.nproc),
            format!("--sandbox-nofile={}", self.rlimits.nofile),
            format!("--sandbox-fsize={}", opt(self.rlimits.fsize)),
            format!("--sandbox-as={}", opt(self.rlimits.address_space)),
            format!(
                "--sandbox-allow-missing-landlock={}",
                u8::from(self.allow_missing_landlock)
            ),
        ];
        for rule in &self.landlock_beneath {
            let kind = if rule.writable { "rw" } else { "ro" };
            args.push(format!("--sandbox-landlock-{kind}={}", rule.fd));
        }
        args.into_iter()
            .map(|a| CString::new(a).expect("formatted numbers contain no NUL"))
            .collect()
    }

    /// Rebuilds the config from a worker's arguments: takes every `--sandbox-*` argument (all
    /// scalar ones are required, unknown ones refused) and returns the remaining arguments.
    pub fn from_args<I, S>(args: I, seccomp: BpfProgram) -> Result<(Self, Vec<OsString>), ArgsError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut parsed = Parsed::default();
        let mut rest = Vec::new();
        for arg in args {
            let arg = arg.as_ref();
            match arg.as_bytes().strip_prefix(b"--sandbox-") {
                Some(tail) => parsed.take(tail, arg)?,
                None => rest.push(arg.to_os_string()),
            }
        }
        Ok((parsed.finish(seccomp)?, rest))
    }
}

/// Why `--sandbox-*` arguments could not be understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    /// Not `--sandbox-NAME=VALUE` with a known name and a valid value.
    #[error("invalid sandbox argument {0:?}")]
    Invalid(OsString),
    /// A required argument is absent.
    #[error("missing sandbox argument --sandbox-{0}")]
    Missing(&'static str),
}

/// `none` or the number.
fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "none".to_string(), |v| v.to_string())
}

/// Arguments seen so far.
#[derive(Default)]
struct Parsed {
    namespaces: Option<bool>,
    uid: Option<u32>,
    gid: Option<u32>,
    drop_groups: Option<bool>,
    fds: Option<u32>,
    lifeline: Option<Option<RawFd>>,
    nproc: Option<u64>,
    nofile: Option<u64>,
    fsize: Option<Option<u64>>,
    address_space: Option<Option<u64>>,
    allow_missing_landlock: Option<bool>,
    landlock_beneath: Vec<LandlockBeneath>,
}

impl Parsed {
    /// Records one argument (`tail` is what follows `--sandbox-`).
    fn take(&mut self, tail: &[u8], arg: &OsStr) -> Result<(), ArgsError> {
        let bad = || ArgsError::Invalid(arg.to_os_string());
        let text = std::str::from_utf8(tail).map_err(|_| bad())?;
        let (name, value) = text.split_once('=').ok_or_else(bad)?;
        let num = |v: &str| v.parse::<u64>().map_err(|_| bad());
        let small = |v: &str| v.parse::<u32>().map_err(|_| bad());
        let flag = |v: &str| match v {
            "0" => Ok(false),
            "1" => Ok(true),
            _ => Err(bad()),
        };
        let fd = |v: &str| {
            v.parse::<RawFd>()
                .ok()
                .filter(|fd| *fd >= 0)
                .ok_or_else(bad)
        };
        match name {
            "namespaces" => self.namespaces = Some(flag(value)?),
            "uid" => self.uid = Some(small(value)?),
            "gid" => self.gid = Some(small(value)?),
            "drop-groups" => self.drop_groups = Some(flag(value)?),
            "fds" => self.fds = Some(small(value)?),
            "lifeline" if value == "none" => self.lifeline = Some(None),
            "lifeline" => self.lifeline = Some(Some(fd(value)?)),
            "nproc" => self.nproc = Some(num(value)?),
            "nofile" => self.nofile = Some(num(value)?),
            "fsize" if value == "none" => self.fsize = Some(None),
            "fsize" => self.fsize = Some(Some(num(value)?)),
            "as" if value == "none" => self.address_space = Some(None),
            "as" => self.address_space = Some(Some(num(value)?)),
            "allow-missing-landlock" => self.allow_missing_landlock = Some(flag(value)?),
            "landlock-ro" | "landlock-rw" => self.landlock_beneath.push(LandlockBeneath {
                fd: fd(value)?,
                writable: name == "landlock-rw",
            }),
            _ => return Err(bad()),
        }
        Ok(())
    }

    /// The config, if every required argument was given.
    fn finish(self, seccomp: BpfProgram) -> Result<ConfineConfig, ArgsError> {
        Ok(ConfineConfig {
            namespaces: self.namespaces.ok_or(ArgsError::Missing("namespaces"))?,
            ids: WorkerIds {
                uid: self.uid.ok_or(ArgsError::Missing("uid"))?,
                gid: self.gid.ok_or(ArgsError::Missing("gid"))?,
                drop_groups: self.drop_groups.ok_or(ArgsError::Missing("drop-groups"))?,
            },
            fds: self.fds.ok_or(ArgsError::Missing("fds"))?,
            lifeline: self.lifeline.ok_or(ArgsError::Missing("lifeline"))?,
            rlimits: Rlimits {
                nproc: self.nproc.ok_or(ArgsError::Missing("nproc"))?,
                nofile: self.nofile.ok_or(ArgsError::Missing("nofile"))?,
                fsize: self.fsize.ok_or(ArgsError::Missing("fsize"))?,
                address_space: self.address_space.ok_or(ArgsError::Missing("as"))?,
            },
            landlock_beneath: self.landlock_beneath,
            allow_missing_landlock: self
                .allow_missing_landlock
                .ok_or(ArgsError::Missing("allow-missing-landlock"))?,
            seccomp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spawn::IdChoice;

    fn sample() -> ConfineConfig {
        let mut cfg = ConfineConfig::new(IdChoice::Unprivileged.worker_ids(), 3, Vec::new());
        cfg.rlimits.fsize = None;
        cfg.rlimits.address_space = Some(160 << 20);
        cfg.landlock_beneath = vec![
            LandlockBeneath {
                fd: 5,
                writable: true,
            },
            LandlockBeneath {
                fd: 4,
                writable: false,
            },
        ];
        cfg
    }

    #[test]
    fn args_round_trip_and_keep_the_rest() {
        let cfg = sample();
        let mut args: Vec<OsString> = vec!["svmm".into(), "__worker".into(), "rng".into()];
        args.extend(
            cfg.to_args()
                .into_iter()
                .map(|c| OsStr::from_bytes(c.as_bytes()).to_os_string()),
        );
        args.push("--other".into());
        let (back, rest) = ConfineConfig::from_args(&args, Vec::new()).unwrap();
        assert_eq!(back, cfg);
        assert_eq!(rest, ["svmm", "__worker", "rng", "--other"]);
    }

    #[test]
    fn bad_args_are_refused() {
        let mut args: Vec<String> = sample()
            .to_args()
            .into_iter()
            .map(|c| c.into_string().unwrap())
            .collect();
        args.retain(|a| !a.starts_with("--sandbox-nofile="));
        assert_eq!(
            ConfineConfig::from_args(&args, Vec::new()).unwrap_err(),
            ArgsError::Missing("nofile")
        );
        for bad in [
            "--sandbox-uid=-1",
            "--sandbox-fds",
            "--sandbox-frobnicate=1",
            "--sandbox-landlock-rw=-3",
            "--sandbox-namespaces=yes",
        ] {
            let err = ConfineConfig::from_args([bad], Vec::new()).unwrap_err();
            assert_eq!(err, ArgsError::Invalid(bad.into()), "{bad}");
        }
    }
}
