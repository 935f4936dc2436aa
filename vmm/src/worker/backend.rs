//! Which backend a device kind runs, what it is built with, and the host resources it works on.
//!
//! The VMM opens a device's host resources, before any worker exists, with
//! [`open_host_resources`] (which also checks a disk image the way the device will); whoever
//! runs the device builds the backend from them with [`build`], then — on the thread or in the
//! process that serves it, before confinement — calls [`Built::prepare`]. In a spawned worker
//! the resources arrive as inherited fds, in the order listed here, after the queue eventfds
//! (see [`super::fd_numbers`]), and the kind's parameters as arguments ([`BackendConfig`],
//! `super::worker_args`).
//!
//! | kind  | queues      | host resources (in order)                                   | sandbox beyond the default |
//! |-------|-------------|-------------------------------------------------------------|----------------------------|
//! | `rng` | 1           | `/dev/urandom`, read-only                                   | —                          |
//! | `blk` | `queues=N`  | the image: read-write + `flock(LOCK_EX)`, or read-only + `flock(LOCK_SH)` with `ro`; `O_DIRECT` with `direct=on` | `RLIMIT_NPROC` [`blk::SANDBOX_NPROC`] (io_uring's kernel io-wq threads; the worker's filter still forbids `clone`), `RLIMIT_FSIZE` = the image size (writes stay inside the image) |

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use devices::blk::{self, Blk, BlkError, BlkOptions, EngineKind};
use devices::rng::{self, Rng};
use devices::{SandboxNeeds, VirtioBackend};

use crate::device_spec::{BlkParams, DeviceKind, DeviceParams, DeviceSpec};

/// Where virtio-rng's entropy comes from.
pub const ENTROPY_SOURCE: &str = "/dev/urandom";

/// The host files a device works on, opened outside the sandbox, in the kind's fixed order.
#[derive(Debug)]
pub struct HostResources {
    /// The files, in the order of the table above.
    pub files: Vec<File>,
}

/// What a backend is built with, besides its host resources: the kind and its parameters
/// without host paths. This is what travels to a spawned worker on its command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendConfig {
    /// virtio-rng.
    Rng,
    /// virtio-blk with these options.
    Blk(BlkOptions),
}

impl BackendConfig {
    /// The backend configuration of `spec`.
    pub fn of(spec: &DeviceSpec) -> BackendConfig {
        match &spec.params {
            DeviceParams::Rng => BackendConfig::Rng,
            DeviceParams::Blk(params) => BackendConfig::Blk(blk_options(params)),
        }
    }

    /// The device kind.
    pub fn kind(&self) -> DeviceKind {
        match self {
            BackendConfig::Rng => DeviceKind::Rng,
            BackendConfig::Blk(_) => DeviceKind::Blk,
        }
    }

    /// How many queues (and so queue eventfds) the device has; known before its backend exists.
    pub fn num_queues(&self) -> u16 {
        match self {
            BackendConfig::Rng => rng::NUM_QUEUES,
            BackendConfig::Blk(options) => options.queues,
        }
    }

    /// How many host resources the device is built from (the length of
    /// [`HostResources::files`]).
    pub fn host_resource_count(&self) -> usize {
        match self {
            BackendConfig::Rng | BackendConfig::Blk(_) => 1,
        }
    }
}

/// The device options of `blk` parameters.
fn blk_options(params: &BlkParams) -> BlkOptions {
    BlkOptions {
        read_only: params.read_only,
        id: params.id.clone(),
        direct: params.direct,
        queues: params.queues,
        poll_us: params.poll_us,
        merge: true,
    }
}

/// Why a device's host resources cannot be opened, or its backend built from them.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The broker could not open a host resource the kind itself needs (not one the user named).
    #[error("the {kind} device")]
    Open {
        /// The device kind.
        kind: DeviceKind,
        /// What failed (names the file).
        #[source]
        source: broker::ResourceError,
    },
    /// The disk image the user named could not be opened or locked (names the image).
    #[error(transparent)]
    Image(broker::ResourceError),
    /// The disk image cannot back a device: not a regular file or block device, a size that is
    /// not whole sectors, ...
    #[error("{}", path.display())]
    BadImage {
        /// The image.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: BlkError,
    },
    /// The backend refused its (already opened) image (worker side, where no path is known).
    #[error("the {kind} device cannot use its host resources")]
    Build {
        /// The device kind.
        kind: DeviceKind,
        /// Why.
        #[source]
        source: BlkError,
    },
    /// The wrong number of host resources for the kind.
    #[error("the {kind} device needs {expected} host resources, got {got}")]
    ResourceCount {
        /// The device kind.
        kind: DeviceKind,
        /// Resources the kind needs.
        expected: usize,
        /// Resources given.
        got: usize,
    },
}

impl BackendError {
    /// Whether the user's input file is at fault (missing, unreadable, a directory, not a
    /// whole number of sectors), as opposed to the host (a lock held by another process, a
    /// host resource svmm needs).
    pub fn is_bad_input(&self) -> bool {
        use broker::ResourceError as R;
        match self {
            BackendError::Image(R::Open { .. } | R::Directory { .. }) => true,
            BackendError::BadImage { .. } => true,
            BackendError::Image(_)
            | BackendError::Open { .. }
            | BackendError::Build { .. }
            | BackendError::ResourceCount { .. } => false,
        }
    }
}

/// The host files `params` declares, in the order of the table above; the broker opens them.
pub fn host_files(params: &DeviceParams) -> Vec<broker::HostFile> {
    match params {
        DeviceParams::Rng => vec![broker::HostFile {
            path: ENTROPY_SOURCE.into(),
            access: broker::Access::ReadOnly,
            lock: broker::Lock::None,
            direct: false,
        }],
        DeviceParams::Blk(p) => vec![broker::HostFile {
            path: p.path.clone(),
            access: match p.read_only {
                true => broker::Access::ReadOnly,
                false => broker::Access::ReadWrite,
            },
            lock: match p.read_only {
                true => broker::Lock::Shared,
                false => broker::Lock::Exclusive,
            },
            direct: p.direct,
        }],
    }
}

/// Opens what `spec` works on through the broker (VMM side, before the worker is spawned or
/// started). A disk image is checked first by path (so that a fifo is never opened, and a
/// directory is named as such) and then, once open and locked, exactly as the device checks
/// it (`Blk::new` on a duplicate of the fd): a sandboxed device builds its backend in the
/// worker, and the user must get the error here, in one line, not from a worker.
pub fn open_host_resources(spec: &DeviceSpec) -> Result<HostResources, BackendError> {
    let kind = spec.kind();
    let DeviceParams::Blk(params) = &spec.params else {
        let files = host_files(&spec.params)
            .iter()
            .map(broker::open_host_file)
            .collect::<Result<_, _>>()
            .map_err(|source| BackendError::Open { kind, source })?;
        return Ok(HostResources { files });
    };
    let bad = |source| BackendError::BadImage {
        path: params.path.clone(),
        source,
    };
    check_image_path(&params.path)?;
    let files: Vec<File> = host_files(&spec.params)
        .iter()
        .map(broker::open_host_file)
        .collect::<Result<_, _>>()
        .map_err(BackendError::Image)?;
    for file in &files {
        let probe = file.try_clone().map_err(|e| bad(BlkError::Inspect(e)))?;
        Blk::new(probe, blk_options(params)).map_err(bad)?;
    }
    Ok(HostResources { files })
}

/// Refuses, by path, what cannot be an image, before it is opened: a directory (named as one)
/// and special files such as a fifo (whose read-only open would block).
fn check_image_path(path: &Path) -> Result<(), BackendError> {
    let Ok(meta) = std::fs::metadata(path) else {
        // Missing or unreachable: opening it gives the precise error.
        return Ok(());
    };
    use std::os::unix::fs::FileTypeExt;
    let kind = meta.file_type();
    if kind.is_dir() {
        return Err(BackendError::Image(broker::ResourceError::Directory {
            path: path.to_path_buf(),
        }));
    }
    if !kind.is_file() && !kind.is_block_device() {
        return Err(BackendError::BadImage {
            path: path.to_path_buf(),
            source: BlkError::NotAnImage,
        });
    }
    Ok(())
}

/// The sandbox's resource limits for a device of `config` on `resources`, from the broker's
/// defaults `base` (see the table above).
pub fn rlimits(
    config: &BackendConfig,
    resources: &HostResources,
    base: broker::Rlimits,
) -> broker::Rlimits {
    match config {
        BackendConfig::Rng => base,
        BackendConfig::Blk(options) => broker::Rlimits {
            nproc: blk::SANDBOX_NPROC,
            // A read-only device writes nothing: the default (no file writes) stands.
            fsize: match options.read_only {
                true => base.fsize,
                false => Some(resources.files.first().map_or(0, image_size)),
            },
            ..base
        },
    }
}

/// The size of an image in bytes (`lseek`: a block device's `st_size` is 0); 0 when unknown.
fn image_size(file: &File) -> u64 {
    use std::io::{Seek, SeekFrom};
    let Ok(mut dup) = file.as_fd().try_clone_to_owned().map(File::from) else {
        return 0;
    };
    let size = dup.seek(SeekFrom::End(0)).unwrap_or(0);
    let _ = dup.seek(SeekFrom::Start(0));
    size
}

/// What a device creates for itself before confinement (besides what the VMM passes), for
/// `--print-sandbox`.
pub fn created_before_confinement(config: &BackendConfig) -> &'static [&'static str] {
    match config {
        BackendConfig::Rng => &[],
        BackendConfig::Blk(_) => &[
            "an io_uring instance (set up in the last step before the seccomp filter; its fd is \
             the next free number): the image as its only, fixed file, at most 4 + 4 io-wq \
             threads, restricted to READV, WRITEV, FSYNC and FALLOCATE on that file, no \
             io_uring_register afterwards; if the kernel refuses io_uring the worker says so in \
             one line and serves one request at a time",
        ],
    }
}

/// A built backend, before it serves: each kind's own set-up step is still to run.
pub enum Built {
    /// A backend whose kind has no set-up step (virtio-rng).
    Ready(Box<dyn VirtioBackend>),
    /// virtio-blk: its io_uring ring is still to be made.
    Blk(Blk),
}

impl Built {
    /// What the device's sandbox must leave it.
    pub fn sandbox_needs(&self) -> SandboxNeeds {
        self.backend().sandbox_needs()
    }

    /// The kind's last set-up before confinement, on the thread that will serve the device:
    /// virtio-blk's io_uring ring (`Blk::prepare_engine`). Returns a one-line warning when the
    /// device must make do with less (io_uring refused: the synchronous engine).
    pub fn prepare(&mut self) -> Option<String> {
        match self {
            Built::Ready(_) => None,
            Built::Blk(blk) => match blk.prepare_engine() {
                Ok(_) => None,
                Err(e) => Some(format!(
                    "io_uring is not available ({e}): the blk device uses the {} engine, one \
                     request at a time",
                    EngineKind::Sync
                )),
            },
        }
    }

    /// The backend, ready to serve.
    pub fn into_backend(self) -> Box<dyn VirtioBackend> {
        match self {
            Built::Ready(backend) => backend,
            Built::Blk(blk) => Box::new(blk),
        }
    }

    /// The backend, still owned here.
    pub fn backend(&self) -> &dyn VirtioBackend {
        match self {
            Built::Ready(backend) => &**backend,
            Built::Blk(blk) => blk,
        }
    }
}

/// Builds the backend of `config` from its host resources (worker side: this only stores and
/// checks them).
pub fn build(config: &BackendConfig, resources: HostResources) -> Result<Built, BackendError> {
    let kind = config.kind();
    let got = resources.files.len();
    let count = BackendError::ResourceCount {
        kind,
        expected: config.host_resource_count(),
        got,
    };
    let Ok([file]) = <[File; 1]>::try_from(resources.files) else {
        return Err(count);
    };
    match config {
        BackendConfig::Rng => Ok(Built::Ready(Box::new(Rng::new(file)))),
        BackendConfig::Blk(options) => Blk::new(file, options.clone())
            .map(Built::Blk)
            .map_err(|source| BackendError::Build { kind, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device_spec;

    /// A fresh directory for this test's images.
    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("svmm-backend-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn open(spec: &str) -> Result<HostResources, BackendError> {
        open_host_resources(&device_spec::parse(spec).unwrap())
    }

    #[test]
    fn bad_images_are_bad_input_and_named() {
        let dir = temp_dir("bad");
        let small = dir.join("small.img");
        std::fs::write(&small, [0u8; 1000]).unwrap();
        let fifo = dir.join("fifo.img");
        let c_fifo = std::ffi::CString::new(fifo.display().to_string()).unwrap();
        // SAFETY: mkfifo reads the NUL-terminated path, which `c_fifo` keeps alive.
        assert_eq!(unsafe { libc::mkfifo(c_fifo.as_ptr(), 0o600) }, 0);
        for (path, why) in [
            (dir.join("missing.img"), "cannot open"),
            (dir.clone(), "is a directory"),
            (small, "image size 1000 bytes is not a multiple of 512"),
            // Read-only, so a blocking open of the fifo would hang the test.
            (fifo, "neither a regular file nor a block device"),
        ] {
            let err = open(&format!("blk={},ro", path.display())).unwrap_err();
            let line = crate::error::one_line(&err);
            assert!(err.is_bad_input(), "{line}");
            assert!(line.contains(&path.display().to_string()), "{line}");
            assert!(line.contains(why), "{line}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_locked_image_is_named_and_not_bad_input() {
        let dir = temp_dir("lock");
        let image = dir.join("disk.img");
        std::fs::write(&image, [0u8; 4096]).unwrap();
        let held = open(&format!("blk={}", image.display())).unwrap();
        for options in ["", ",ro", ",sandbox=off"] {
            let err = open(&format!("blk={}{options}", image.display())).unwrap_err();
            let line = crate::error::one_line(&err);
            assert!(!err.is_bad_input(), "{line}");
            assert!(line.contains("is in use by another process"), "{line}");
            assert!(line.contains(&image.display().to_string()), "{line}");
        }
        drop(held);
        // Readers share.
        let _a = open(&format!("blk={},ro", image.display())).unwrap();
        let _b = open(&format!("blk={},ro", image.display())).unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn blk_limits_follow_the_image() {
        let dir = temp_dir("limits");
        let image = dir.join("disk.img");
        std::fs::write(&image, vec![0u8; 8192]).unwrap();
        let base = broker::Rlimits {
            nproc: 0,
            nofile: 20,
            fsize: Some(0),
        };
        let spec = device_spec::parse(&format!("blk={},queues=3", image.display())).unwrap();
        let config = BackendConfig::of(&spec);
        assert_eq!(config.num_queues(), 3);
        let resources = open_host_resources(&spec).unwrap();
        let limits = rlimits(&config, &resources, base);
        assert_eq!(
            limits,
            broker::Rlimits {
                nproc: blk::SANDBOX_NPROC,
                nofile: 20,
                fsize: Some(8192),
            }
        );
        drop(resources);
        let spec = device_spec::parse(&format!("blk={},ro", image.display())).unwrap();
        let resources = open_host_resources(&spec).unwrap();
        let limits = rlimits(&BackendConfig::of(&spec), &resources, base);
        assert_eq!(limits.fsize, Some(0), "a read-only device writes nothing");
        let rng = device_spec::parse("rng").unwrap();
        assert_eq!(
            rlimits(
                &BackendConfig::Rng,
                &open_host_resources(&rng).unwrap(),
                base
            ),
            base
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn blk_builds_and_prepares_its_engine() {
        let dir = temp_dir("build");
        let image = dir.join("disk.img");
        std::fs::write(&image, vec![0u8; 4096]).unwrap();
        let spec = device_spec::parse(&format!("blk={},id=x", image.display())).unwrap();
        let config = BackendConfig::of(&spec);
        let mut built = build(&config, open_host_resources(&spec).unwrap()).unwrap();
        assert_eq!(built.sandbox_needs().seccomp_profile, blk::SECCOMP_PROFILE);
        // io_uring may be refused on some hosts: then a warning, never an error.
        if let Some(warning) = built.prepare() {
            assert!(warning.contains("one request at a time"), "{warning}");
        }
        let backend = built.into_backend();
        assert_eq!(backend.device_type(), devices::VIRTIO_ID_BLOCK);
        assert!(matches!(
            build(&config, HostResources { files: Vec::new() }),
            Err(BackendError::ResourceCount {
                expected: 1,
                got: 0,
                ..
            })
        ));
        let _ = std::fs::remove_dir_all(dir);
    }
}
