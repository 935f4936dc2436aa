//! virtio-blk as a device kind: `--device blk=PATH[,ro][,id=STR][,direct=on|off][,queues=N]
//! [,poll=N][,merge=on|off][,engine=io_uring|sync]` on a raw image svmm opens, locks and checks
//! before any worker exists.

use std::io;
use std::path::{Path, PathBuf};

use broker::{Access, FileTypes, HostFile, HostResource, Lock, OpenedResource, Origin};

use super::engine::EngineKind;
use super::{
    Blk, BlkOptions, DEFAULT_POLL_US, ID_BYTES, MAX_BOUNCE_BYTES, MAX_POLL_US, MAX_QUEUES,
    MAX_QUEUE_SIZE, SANDBOX_NPROC, SECCOMP_PROFILE,
};
use crate::kind::{
    BuildError, FileSize, InputError, Kind, OptionSpec, OptionValue, ResourceFds, Restart,
    SandboxNeeds, Spec, SpecError, ValueSpec,
};
use crate::VIRTIO_ID_BLOCK;

/// `ro`: read-only image and device.
pub const RO: OptionSpec = OptionSpec {
    name: "ro",
    value: OptionValue::Flag,
    help: "opens the image read-only with a shared lock (several VMs may share it, nobody may \
           write it meanwhile) and makes the device read-only for the guest",
    hidden: false,
};
/// `id=STR`: the disk's serial.
pub const ID: OptionSpec = OptionSpec {
    name: "id",
    value: OptionValue::Text {
        placeholder: "STR",
        min_len: 1,
        max_len: ID_BYTES,
    },
    help: "what the guest reads as the disk's serial (GET_ID); default the image's file name, \
           cut to 20 bytes",
    hidden: false,
};
/// `direct=on|off`: `O_DIRECT`.
pub const DIRECT: OptionSpec = OptionSpec {
    name: "direct",
    value: OptionValue::Switch,
    help: "on opens the image O_DIRECT (the device then advertises the host's direct-I/O \
           alignment as its block size)",
    hidden: false,
};
/// `queues=N`: request queues.
pub const QUEUES: OptionSpec = OptionSpec {
    name: "queues",
    value: OptionValue::Number {
        min: 1,
        max: MAX_QUEUES as u64,
        unit: None,
    },
    help: "request queues (VIRTIO_BLK_F_MQ), default 1",
    hidden: false,
};
/// `poll=N`: the longest idle-poll window.
pub const POLL: OptionSpec = OptionSpec {
    name: "poll",
    value: OptionValue::Number {
        min: 0,
        max: MAX_POLL_US as u64,
        unit: Some("µs"),
    },
    help: "the longest time an idle queue keeps being polled before the device waits for a \
           notification again (in-flight completions are polled for up to 4 times as long), 0 = off, \
           default 32; shorter while polling finds nothing",
    hidden: false,
};

/// `merge=on|off`: request merging.
pub const MERGE: OptionSpec = OptionSpec {
    name: "merge",
    value: OptionValue::Switch,
    help: "on (default) merges adjacent reads or writes the guest made available together into \
           one host I/O (QEMU's request-merging): fewer host requests, and one cache flush per \
           merged write when the guest did not negotiate FLUSH; off: one host I/O per request",
    hidden: false,
};

/// `engine=io_uring|sync`: where the image I/O runs.
pub const ENGINE: OptionSpec = OptionSpec {
    name: "engine",
    value: OptionValue::Choice(&["io_uring", "sync"]),
    help: "io_uring (default): requests overlap on an io_uring instance the worker sets up \
           before its filter (the synchronous engine if the kernel refuses one); sync: no \
           io_uring at all, one request at a time with preadv2/pwritev2/fdatasync on the \
           worker's thread (the smallest kernel surface, and no io-wq threads)",
    hidden: false,
};

/// The virtio-blk kind.
#[derive(Debug, Clone, Copy)]
pub struct BlkKind;

/// `blk=PATH[,ro][,id=STR][,direct=on|off][,queues=N][,poll=N][,merge=on|off]
/// [,engine=io_uring|sync]`, validated.
#[derive(Debug, Clone, PartialEq, Eq, ipc::Encode, ipc::Decode)]
#[bincode(crate = "ipc::codec::bincode")]
pub struct BlkConfig {
    /// The raw image, as given (svmm opens it; the worker only gets the fd).
    pub path: PathBuf,
    /// How the device presents it.
    pub options: BlkOptions,
}

/// The id a device gets without `id=`: the image's file name, cut to at most [`ID_BYTES`]
/// bytes on a character boundary.
pub fn default_id(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut end = name.len().min(ID_BYTES);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_string()
}

/// What the worker sets up right before its filter ([`Blk::prepare_engine`]).
const RING: &str = "an io_uring instance (set up in the last step before the seccomp filter; \
                    its fd is the next free number): the image as its only, fixed file, at most \
                    4 + 4 io-wq threads, restricted to READV, WRITEV and FSYNC on that file \
                    (discard and write-zeroes are fallocate system calls, two modes only), no \
                    io_uring_register afterwards; if the kernel refuses io_uring \
                    the worker says so in one line and serves one request at a time";

impl Kind for BlkKind {
    type Config = BlkConfig;
    type Backend = Blk;

    const NAME: &'static str = "blk";
    const SUMMARY: &'static str =
        "virtio-blk on a raw image (a regular file or a block device whose size is a multiple \
         of 512 bytes), which svmm opens and locks before any worker exists: read-write with \
         an exclusive flock, or read-only with a shared one";
    const VALUE: ValueSpec = ValueSpec::Required {
        placeholder: "PATH",
        noun: "a path",
    };
    const OPTIONS: &'static [&'static OptionSpec] =
        &[&RO, &ID, &DIRECT, &QUEUES, &POLL, &MERGE, &ENGINE];
    const DEVICE_TYPE: u32 = VIRTIO_ID_BLOCK;
    const MAX_QUEUE_SIZE: u16 = MAX_QUEUE_SIZE;
    const SECCOMP_PROFILE: &'static str = SECCOMP_PROFILE;
    const FEATURES: u64 = super::config::ALL_FEATURES;

    fn parse(spec: &Spec<'_>) -> Result<BlkConfig, SpecError> {
        let path = PathBuf::from(spec.value().unwrap_or_default());
        let id = match spec.string(&ID)? {
            Some(id) => id.to_string(),
            None => default_id(&path),
        };
        // The ranges were checked against QUEUES and POLL, which fit these types.
        let queues = spec.number(&QUEUES)?.map_or(1, |n| n as u16);
        let poll_us = spec.number(&POLL)?.map_or(DEFAULT_POLL_US, |n| n as u32);
        Ok(BlkConfig {
            path,
            options: BlkOptions {
                read_only: spec.switch(&RO)?.unwrap_or(false),
                id,
                direct: spec.switch(&DIRECT)?.unwrap_or(false),
                queues,
                poll_us,
                merge: spec.switch(&MERGE)?.unwrap_or(true),
                engine: match spec.choice(&ENGINE)? {
                    Some("sync") => EngineKind::Sync,
                    _ => EngineKind::IoUring,
                },
            },
        })
    }

    fn validate(config: &BlkConfig) -> Result<(), String> {
        config.options.check().map_err(|e| e.to_string())
    }

    fn queues(config: &BlkConfig) -> u16 {
        config.options.queues
    }

    fn resources(config: &BlkConfig) -> Vec<HostResource> {
        let read_only = config.options.read_only;
        vec![HostResource::File {
            file: HostFile {
                path: config.path.clone(),
                access: if read_only {
                    Access::ReadOnly
                } else {
                    Access::ReadWrite
                },
                lock: if read_only {
                    Lock::Shared
                } else {
                    Lock::Exclusive
                },
                direct: config.options.direct,
                types: FileTypes::IMAGE,
            },
            origin: Origin::User,
        }]
    }

    /// The image, exactly as the device will check it: `Blk::new` on a duplicate of its fd
    /// (regular file or block device, whole sectors, opened writable unless `ro`).
    fn check(config: &BlkConfig, opened: &[OpenedResource]) -> Result<(), InputError> {
        let bad = |source: Box<dyn std::error::Error + Send + Sync>| InputError {
            what: config.path.display().to_string(),
            source,
        };
        let image = opened
            .first()
            .and_then(|o| o.fd.as_ref())
            .ok_or_else(|| bad("the image was not opened".into()))?;
        let probe = image.try_clone().map_err(|e| bad(Box::new(e)))?;
        Blk::new(probe.into(), config.options.clone()).map_err(|e| bad(Box::new(e)))?;
        Ok(())
    }

    /// The kernel's io-wq threads of its io_uring need `RLIMIT_NPROC` (its filter still has no
    /// `clone`), and a writable device may write up to the image's size, not beyond. With
    /// `engine=sync` there is no ring: no io-wq threads, nothing set up before the filter.
    fn sandbox(config: &BlkConfig) -> SandboxNeeds {
        let uring = config.options.engine == EngineKind::IoUring;
        SandboxNeeds {
            nproc: if uring { SANDBOX_NPROC } else { 0 },
            file_size: if config.options.read_only {
                FileSize::Nothing
            } else {
                FileSize::SizeOf(0)
            },
            before_filter: if uring { &[RING] } else { &[] },
            memory: MAX_BOUNCE_BYTES as u64,
            ..SandboxNeeds::default()
        }
    }

    fn build(config: &BlkConfig, mut resources: ResourceFds) -> Result<Blk, BuildError> {
        let image = resources.take_file(0)?;
        Blk::new(image, config.options.clone()).map_err(|e| BuildError::Refused(Box::new(e)))
    }

    #[cfg(feature = "test-faults")]
    fn arm_host_probe(blk: &mut Blk) -> bool {
        blk.arm_disk_probe();
        true
    }

    fn prepare(blk: &mut Blk) -> Option<String> {
        blk.prepare_engine().err().map(|e| {
            format!(
                "io_uring is not available ({e}): the blk device uses the {} engine, one \
                 request at a time",
                EngineKind::Sync
            )
        })
    }

    /// A read or write names its sectors and carries its data (a write's bytes are still in the
    /// guest's buffers, which the driver does not touch before the completion): doing it again
    /// leaves the image as doing it once. A FLUSH is repeated, GET_ID answered again, a discard
    /// or write-zeroes punched or zeroed again. The queue loop returns chains in the order it
    /// took them (see `io`), so the used index is where the completed ones end.
    fn restart(_config: &BlkConfig) -> Restart {
        Restart::Resume {
            repeated: "a read, write, flush, discard or write-zeroes in flight is done again on \
                       the same sectors with the same bytes, which leaves the image as doing it \
                       once",
        }
    }

    fn test_spec(scratch: &Path) -> io::Result<String> {
        let image = scratch.join("blk-test.img");
        std::fs::write(&image, vec![0u8; 1 << 16])?;
        Ok(format!("blk={}", image.display()))
    }
}

#[cfg(test)]
mod tests;
