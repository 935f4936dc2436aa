//! virtio-fs as a device kind: `--device fs=DIR,tag=TAG[,ro][,uid-map=UID:GID]
//! [,cache=none|auto|always][,queues=N]`. svmm opens DIR (`O_PATH | O_DIRECTORY | O_NOFOLLOW`)
//! and the host's `/proc` before any worker exists; the worker gets those two fds and Landlock
//! rights beneath DIR only.

use std::io;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use broker::{CustomOpener, HostResource, OpenedResource, Origin};

use super::{
    CachePolicy, Fs, FsOptions, IdMap, MAX_FDS, MAX_QUEUE_SIZE, MAX_REQUEST_QUEUES, TAG_LEN,
};
use crate::kind::{
    BuildError, FileSize, InputError, Kind, LandlockRule, OptionSpec, OptionValue, ResourceFds,
    Restart, SandboxNeeds, Spec, SpecError, ValueSpec,
};
use crate::VIRTIO_ID_FS;

/// `tag=TAG`: the mount tag (required).
pub const TAG: OptionSpec = OptionSpec {
    name: "tag",
    value: OptionValue::Text {
        placeholder: "TAG",
        min_len: 1,
        max_len: TAG_LEN,
    },
    help: "the name the guest mounts the share by (mount -t virtiofs TAG, or rootfstype=virtiofs \
           root=TAG), 1 to 36 bytes; required",
    hidden: false,
};
/// `ro`: a read-only share.
pub const RO: OptionSpec = OptionSpec {
    name: "ro",
    value: OptionValue::Flag,
    help: "refuses every modifying request with EROFS; Landlock grants the worker read rights \
           only and its seccomp filter has no call that changes a file system",
    hidden: false,
};
/// `uid-map=UID:GID`: the owner every node presents.
pub const UID_MAP: OptionSpec = OptionSpec {
    name: "uid-map",
    value: OptionValue::Text {
        placeholder: "UID:GID",
        min_len: 3,
        max_len: 21,
    },
    help: "presents every file as owned by UID:GID in the guest (default: as the guest asked, \
           root for files it did not create); host ownership never changes",
    hidden: false,
};
/// `cache=none|auto|always`.
pub const CACHE: OptionSpec = OptionSpec {
    name: "cache",
    value: OptionValue::Choice(&["none", "auto", "always"]),
    help: "how long the guest may cache entries, attributes and contents: none (direct I/O), \
           auto (1 s, default), always (a day, contents kept across opens)",
    hidden: false,
};
/// `queues=N`: request queues.
pub const QUEUES: OptionSpec = OptionSpec {
    name: "queues",
    value: OptionValue::Number {
        min: 1,
        max: MAX_REQUEST_QUEUES as u64,
        unit: None,
    },
    help: "request queues (num_request_queues) beside the hiprio queue, default 1",
    hidden: false,
};

/// The virtio-fs kind.
#[derive(Debug, Clone, Copy)]
pub struct FsKind;

/// `fs=DIR,tag=TAG[,...]`, validated.
#[derive(Debug, Clone, PartialEq, Eq, ipc::Encode, ipc::Decode)]
#[bincode(crate = "ipc::codec::bincode")]
pub struct FsConfig {
    /// The shared directory, as given (svmm opens it; the worker only gets the fd).
    pub dir: PathBuf,
    /// How the device presents it.
    pub options: FsOptions,
}

/// The host's procfs, re-opened through as `self/fd/N` only.
const PROC: &str = "/proc";

/// How svmm opens [`PROC`]: one opener for every device, so that the resources of one config
/// compare equal however often they are declared.
fn open_proc() -> Arc<dyn Fn() -> io::Result<std::os::fd::OwnedFd> + Send + Sync> {
    type Opener = Arc<dyn Fn() -> io::Result<std::os::fd::OwnedFd> + Send + Sync>;
    static OPENER: std::sync::LazyLock<Opener> = std::sync::LazyLock::new(|| {
        Arc::new(|| broker::open_directory(PROC.as_ref()).map_err(io::Error::other))
    });
    Arc::clone(&OPENER)
}

/// `UID:GID`, both decimal below `u32::MAX`.
fn parse_id_map(text: &str) -> Option<IdMap> {
    let (uid, gid) = text.split_once(':')?;
    let id = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u32>().ok())
            .flatten()
            .filter(|&n| n != u32::MAX)
    };
    Some(IdMap {
        uid: id(uid)?,
        gid: id(gid)?,
    })
}

impl Kind for FsKind {
    type Config = FsConfig;
    type Backend = Fs;

    const NAME: &'static str = "fs";
    const SUMMARY: &'static str =
        "virtio-fs sharing a host directory, which svmm opens before any worker exists; the \
         worker resolves every name beneath it (openat2 RESOLVE_BENEATH) and Landlock keeps it \
         there";
    const VALUE: ValueSpec = ValueSpec::Required {
        placeholder: "DIR",
        noun: "a directory",
    };
    const OPTIONS: &'static [&'static OptionSpec] = &[&TAG, &RO, &UID_MAP, &CACHE, &QUEUES];
    const DEVICE_TYPE: u32 = VIRTIO_ID_FS;
    const MAX_QUEUE_SIZE: u16 = MAX_QUEUE_SIZE;
    const SECCOMP_PROFILE: &'static str = super::SECCOMP_PROFILE;
    const FEATURES: u64 = super::config::FEATURES;

    /// A read-only share runs under `fs_ro`, which has no call that changes a file system.
    fn seccomp_profile(config: &FsConfig) -> &'static str {
        if config.options.read_only {
            super::SECCOMP_PROFILE_RO
        } else {
            super::SECCOMP_PROFILE
        }
    }

    fn parse(spec: &Spec<'_>) -> Result<FsConfig, SpecError> {
        let bad = |option: &str, expected: &str| SpecError::BadValue {
            spec: spec.as_str().to_string(),
            option: option.to_string(),
            expected: expected.to_string(),
        };
        let tag = spec
            .string(&TAG)?
            .ok_or_else(|| bad("tag", "to be given: tag=TAG, 1 to 36 bytes"))?;
        let uid_map = match spec.string(&UID_MAP)? {
            Some(text) => Some(
                parse_id_map(text)
                    .ok_or_else(|| bad(&format!("uid-map={text}"), "UID:GID, two decimal ids"))?,
            ),
            None => None,
        };
        let cache = match spec.choice(&CACHE)? {
            Some("none") => CachePolicy::None,
            Some("always") => CachePolicy::Always,
            _ => CachePolicy::Auto,
        };
        Ok(FsConfig {
            dir: PathBuf::from(spec.value().unwrap_or_default()),
            options: FsOptions {
                tag: tag.to_string(),
                read_only: spec.switch(&RO)?.unwrap_or(false),
                cache,
                // The range was checked against QUEUES, which fits a u16.
                queues: spec.number(&QUEUES)?.map_or(1, |n| n as u16),
                uid_map,
            },
        })
    }

    fn validate(config: &FsConfig) -> Result<(), String> {
        let o = &config.options;
        if !TAG.accepts_text(&o.tag) {
            return Err(format!("tag {:?} is not 1 to 36 bytes", o.tag));
        }
        if !QUEUES.accepts_number(u64::from(o.queues)) {
            return Err(format!("queues={} is outside 1..=16", o.queues));
        }
        if o.uid_map
            .is_some_and(|m| m.uid == u32::MAX || m.gid == u32::MAX)
        {
            return Err("uid-map ids must be below 4294967295".into());
        }
        Ok(())
    }

    fn queues(config: &FsConfig) -> u16 {
        1 + config.options.queues
    }

    fn resources(config: &FsConfig) -> Vec<HostResource> {
        vec![
            HostResource::Directory {
                path: config.dir.clone(),
                origin: Origin::User,
            },
            HostResource::Custom(CustomOpener {
                what: format!(
                    "{PROC} (directory, O_PATH; the worker opens only self/fd/N through it, to \
                     re-open nodes of the share it holds; Landlock still limits every open to \
                     the share)"
                ),
                open: open_proc(),
            }),
        ]
    }

    /// The share and `/proc`, exactly as the device checks them (`Fs::new` on duplicates).
    fn check(config: &FsConfig, opened: &[OpenedResource]) -> Result<(), InputError> {
        let bad = |source: Box<dyn std::error::Error + Send + Sync>| InputError {
            what: config.dir.display().to_string(),
            source,
        };
        let fd = |i: usize| {
            opened
                .get(i)
                .and_then(|o| o.fd.as_ref())
                .ok_or_else(|| bad("the directory was not opened".into()))
                .and_then(|fd| fd.try_clone().map_err(|e| bad(Box::new(e))))
        };
        Fs::new(fd(0)?, fd(1)?, config.options.clone()).map_err(|e| bad(Box::new(e)))?;
        Ok(())
    }

    /// One fd per node the guest holds and per open handle; writes of any size for a writable
    /// share; Landlock beneath the share (read rights only with `ro`).
    fn sandbox(config: &FsConfig) -> SandboxNeeds {
        let writable = !config.options.read_only;
        SandboxNeeds {
            file_size: if writable {
                FileSize::Unlimited
            } else {
                FileSize::Nothing
            },
            extra_fds: broker::NOFILE_MARGIN + MAX_FDS,
            landlock: vec![LandlockRule {
                resource: 0,
                writable,
            }],
            // The guest's files are the user's: reached as the user, not a subordinate id.
            user_files: true,
            ..SandboxNeeds::default()
        }
    }

    fn build(config: &FsConfig, mut resources: ResourceFds) -> Result<Fs, BuildError> {
        let dir = resources.take(0)?;
        let proc = resources.take(1)?;
        Fs::new(dir, proc, config.options.clone()).map_err(|e| BuildError::Refused(Box::new(e)))
    }

    /// Not replayable: a FUSE request names node ids and file handles of the server that died
    /// (its node table and open files die with it), and the guest's FUSE session (INIT, the
    /// lookups behind every cached dentry) would have to be redone by the driver. A new worker
    /// starts with an empty table and the device needs a reset; Linux's virtio-fs driver does
    /// not reset a device, so the mount's requests get no answer until the VM restarts.
    fn restart(_config: &FsConfig) -> Restart {
        Restart::Reset {
            lost: "its FUSE session: the node table, open files and directory handles",
        }
    }

    fn test_spec(scratch: &Path) -> io::Result<String> {
        let dir = scratch.join("fs-test-share");
        std::fs::create_dir_all(&dir)?;
        Ok(format!("fs={},tag=test", dir.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::DeviceKind;

    fn parse(text: &str) -> Result<FsConfig, SpecError> {
        let spec = Spec::parse(text, "fs", FsKind::VALUE, FsKind::OPTIONS)?;
        <FsKind as Kind>::parse(&spec)
    }

    #[test]
    fn the_grammar_and_its_defaults() {
        let c = parse("fs=/srv/share,tag=home").unwrap();
        assert_eq!(c.dir, PathBuf::from("/srv/share"));
        assert_eq!(
            c.options,
            FsOptions {
                tag: "home".into(),
                ..FsOptions::default()
            }
        );
        let c = parse("fs=/d,tag=t,ro,uid-map=1000:100,cache=none,queues=4").unwrap();
        assert!(c.options.read_only);
        assert_eq!(
            c.options.uid_map,
            Some(IdMap {
                uid: 1000,
                gid: 100
            })
        );
        assert_eq!(c.options.cache, CachePolicy::None);
        assert_eq!(FsKind::queues(&c), 5);
        assert_eq!(<FsKind as Kind>::seccomp_profile(&c), "fs_ro");
        assert_eq!(FsKind::validate(&c), Ok(()));
        let long = "t".repeat(36);
        assert!(parse(&format!("fs=/d,tag={long}")).is_ok());
        for bad in [
            "fs=/d",
            "fs,tag=t",
            "fs=/d,tag=",
            &format!("fs=/d,tag={long}x"),
            "fs=/d,tag=t,uid-map=1000",
            "fs=/d,tag=t,uid-map=a:b",
            "fs=/d,tag=t,uid-map=1:4294967295",
            "fs=/d,tag=t,uid-map=-1:2",
            "fs=/d,tag=t,cache=sometimes",
            "fs=/d,tag=t,queues=0",
            "fs=/d,tag=t,queues=17",
            "fs=/d,tag=t,colour=blue",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn resources_sandbox_and_the_worker_encoding() {
        let c = parse("fs=/srv/share,tag=t").unwrap();
        let r = FsKind::resources(&c);
        assert_eq!(
            r[0],
            HostResource::Directory {
                path: "/srv/share".into(),
                origin: Origin::User
            }
        );
        assert!(r[1].describe().starts_with("/proc (directory, O_PATH; "));
        assert_eq!(FsKind::resources(&c), r, "the same resources every time");
        assert_eq!(r[1].origin(), Origin::Kind);
        let proc = r[1].open().unwrap().fd.unwrap();
        assert!(super::super::host::Proc::new(proc).is_ok(), "a procfs");
        let needs = FsKind::sandbox(&c);
        assert_eq!(needs.file_size, FileSize::Unlimited);
        assert_eq!(
            needs.landlock,
            [LandlockRule {
                resource: 0,
                writable: true
            }]
        );
        assert!(needs.extra_fds > MAX_FDS);
        let ro = parse("fs=/srv/share,tag=t,ro").unwrap();
        assert_eq!(FsKind::sandbox(&ro).file_size, FileSize::Nothing);
        assert!(!FsKind::sandbox(&ro).landlock[0].writable);
        let spec = Spec::parse("fs=/d,tag=t,ro", "fs", FsKind::VALUE, FsKind::OPTIONS).unwrap();
        let config = FsKind.parse(&spec).unwrap();
        assert_eq!(config.seccomp_profile(), "fs_ro");
        let bytes = config.encode().unwrap();
        assert_eq!(FsKind.decode(&bytes).unwrap(), config);
        let mut bad = parse("fs=/d,tag=t").unwrap();
        bad.options.tag = String::new();
        assert!(FsKind::validate(&bad).is_err());
    }
}
