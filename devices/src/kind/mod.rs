//! What a device kind is, declared once in the kind's own folder: everything svmm, the broker
//! and the worker need to know about it.
//!
//! A kind implements [`Kind`] in `devices/src/<kind>/kind.rs`:
//!
//! | item | what | used by |
//! |---|---|---|
//! | [`Kind::NAME`], [`Kind::SUMMARY`], [`Kind::VALUE`], [`Kind::OPTIONS`] | `--device KIND[=VALUE][,OPTION...]`: name, `--help` text, grammar ([`options`]) | CLI, `--help` |
//! | [`Kind::Config`], [`Kind::parse`], [`Kind::validate`] | the kind's typed, validated configuration; it travels to a spawned worker encoded once by `ipc::codec` ([`DeviceConfig::encode`], [`DeviceKind::decode`]) | CLI, worker entry |
//! | [`Kind::queues`], [`Kind::MAX_QUEUE_SIZE`], [`Kind::DEVICE_TYPE`] | the virtio device, known before any backend exists | device set-up |
//! | [`Kind::resources`], [`Kind::check`] | the host resources svmm opens before any worker exists (`broker::HostResource`), and the check of what was opened that must fail in svmm, in one line, rather than in a worker | device set-up, `--print-sandbox` |
//! | [`Kind::shm_region`] | the size of the device's virtio-mmio shared-memory region, if it has one: svmm reserves a guest-physical window for it and maps into it on the device's request | device set-up, the transport |
//! | [`Kind::SECCOMP_PROFILE`], [`Kind::sandbox`] | the seccomp profile, rlimits beyond the default, Landlock rules beneath a directory resource, the set-up before the filter ([`SandboxNeeds`]) | the worker's plan, `--print-sandbox` |
//! | [`Kind::build`], [`Kind::prepare`] | the backend from config + resources (worker and in-process alike), and its last set-up step before the seccomp filter | worker entry, in-process thread |
//! | [`Kind::restart`] | whether a restarted worker may take again the requests its dead predecessor had taken but not completed ([`Restart`]) | the supervisor (`--on-worker-exit=restart`) |
//! | [`Kind::test_spec`] | a spec that works on any test host, for the registry's tests | tests |
//!
//! svmm keeps one static list of `&'static dyn DeviceKind` (its registry); [`DeviceKind`] is
//! [`Kind`] with the types erased, implemented for every kind, and a parsed [`DeviceConfig`]
//! answers for its own kind, so nothing outside the kind's folder ever matches on a kind.

pub mod options;

mod erased;

use std::error::Error;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use broker::{HostResource, OpenedResource};

use crate::VirtioBackend;
pub use erased::{Built, DeviceConfig, Shape};
pub use options::{OptionSpec, OptionValue, Spec, SpecError, ValueSpec};

/// A virtio device kind, implemented once in its own folder (see the module docs).
///
/// Every item is an associated function or constant: a kind is a unit struct, and svmm's
/// registry holds it as a `&'static dyn DeviceKind`.
pub trait Kind: Send + Sync + 'static {
    /// The kind's validated configuration: everything its backend is built with besides the
    /// host resources (never a host path the worker does not need).
    type Config: Clone + fmt::Debug + PartialEq + Send + Sync + ipc::Encode + ipc::Decode<()>;
    /// The backend the kind builds.
    type Backend: VirtioBackend + 'static;

    /// The name on the command line, in device names (`blk#0`) and after `svmm __worker`.
    const NAME: &'static str;
    /// What the kind is, for `--help`: one sentence without a final full stop.
    const SUMMARY: &'static str;
    /// What may follow `KIND=`.
    const VALUE: ValueSpec;
    /// The kind's own options (`sandbox=` and `fault=` are every kind's, declared elsewhere).
    const OPTIONS: &'static [&'static OptionSpec];
    /// The virtio device ID.
    const DEVICE_TYPE: u32;
    /// The largest queue size the device accepts.
    const MAX_QUEUE_SIZE: u16;
    /// Every feature bit a device of this kind may offer, whatever its configuration: svmm
    /// refuses a worker whose `Ready` offers any other (a worker that lies about its device).
    const FEATURES: u64;
    /// The device's seccomp profile in the `seccomp-profiles` crate.
    const SECCOMP_PROFILE: &'static str;

    /// The profile a device with `config` runs under: [`Self::SECCOMP_PROFILE`] unless the
    /// kind narrows it for some configurations (fs: `fs_ro` for a read-only share).
    fn seccomp_profile(config: &Self::Config) -> &'static str {
        let _ = config;
        Self::SECCOMP_PROFILE
    }

    /// The config of a spec whose value and option names were checked against [`Self::VALUE`]
    /// and [`Self::OPTIONS`]; reads each option with the typed getters of [`Spec`], which check
    /// its value.
    fn parse(spec: &Spec<'_>) -> Result<Self::Config, SpecError>;

    /// Checks a config that did not come from [`Self::parse`] (decoded in a worker) against the
    /// same declarations, so that a worker never builds a device from values the command line
    /// would refuse. The message says which value is wrong.
    fn validate(config: &Self::Config) -> Result<(), String>;

    /// How many queues the device has.
    fn queues(config: &Self::Config) -> u16;

    /// The host resources svmm opens for the device before any worker exists, in the order the
    /// worker receives them. A pure function of the config: the worker calls it too, to know
    /// what it inherited.
    fn resources(config: &Self::Config) -> Vec<HostResource>;

    /// Checks the opened resources (in [`Self::resources`] order) as the device will, in svmm,
    /// so that a bad input is one line from svmm and not a dead worker. Only the user's input
    /// can be at fault here.
    fn check(config: &Self::Config, opened: &[OpenedResource]) -> Result<(), InputError> {
        let _ = (config, opened);
        Ok(())
    }

    /// The length of the device's shared-memory region 0 (virtio-mmio `SHMSel`/`SHMLen`/
    /// `SHMBase`), if it has one: a page-aligned number of bytes. svmm reserves a window of
    /// guest-physical addresses for it and maps memfds into it when the device asks over its
    /// service channel (`ipc::service`); the backend learns where the window is from
    /// [`ResourceFds::shm_region`].
    fn shm_region(config: &Self::Config) -> Option<u64> {
        let _ = config;
        None
    }

    /// What the sandbox must leave the device beyond the default.
    fn sandbox(config: &Self::Config) -> SandboxNeeds {
        let _ = config;
        SandboxNeeds::default()
    }

    /// Builds the backend from its config and the fds of its resources. Runs in the worker
    /// before confinement (or on an in-process device's thread): it may inspect the fds, but
    /// whatever its filter forbids belongs in [`Self::prepare`].
    fn build(config: &Self::Config, resources: ResourceFds) -> Result<Self::Backend, BuildError>;

    /// The last set-up before the seccomp filter, on the thread that will serve the device
    /// (virtio-blk: its io_uring ring). Returns a one-line warning when the device must make do
    /// with less; the device works either way.
    fn prepare(backend: &mut Self::Backend) -> Option<String> {
        let _ = backend;
        None
    }

    /// Test builds: arms the kind's own hostile probe against its host resources (svmm's
    /// `fault=host`; blk: [`crate::blk::Blk::arm_disk_probe`]), which the device runs at its
    /// first queue notification. False for a kind that has none.
    #[cfg(feature = "test-faults")]
    fn arm_host_probe(backend: &mut Self::Backend) -> bool {
        let _ = backend;
        false
    }

    /// What a worker started again after its predecessor died (`--on-worker-exit=restart`)
    /// may do with the requests the dead one had taken but not completed: resume the queues
    /// and take them again, or start fresh with the device needing a reset. Every kind
    /// decides (no default): a request done twice must be harmless for [`Restart::Resume`].
    fn restart(config: &Self::Config) -> Restart;

    /// A `--device` spec of this kind that works on any host the test suite runs on, with
    /// whatever it needs (an image, a directory) created under `scratch`. For the registry's
    /// tests, which prove every kind is listed, round-trips, is described and misbehaves on
    /// request.
    fn test_spec(scratch: &Path) -> io::Result<String>;
}

/// [`Kind`] without its types: what svmm's registry holds. Implemented for every [`Kind`].
pub trait DeviceKind: Send + Sync {
    /// [`Kind::NAME`].
    fn name(&self) -> &'static str;
    /// [`Kind::SUMMARY`].
    fn summary(&self) -> &'static str;
    /// [`Kind::VALUE`].
    fn value(&self) -> ValueSpec;
    /// [`Kind::OPTIONS`].
    fn options(&self) -> &'static [&'static OptionSpec];
    /// [`Kind::DEVICE_TYPE`].
    fn device_type(&self) -> u32;
    /// [`Kind::MAX_QUEUE_SIZE`].
    fn max_queue_size(&self) -> u16;
    /// [`Kind::SECCOMP_PROFILE`].
    fn seccomp_profile(&self) -> &'static str;
    /// [`Kind::parse`], into a config that answers for its kind.
    fn parse(&self, spec: &Spec<'_>) -> Result<DeviceConfig, SpecError>;
    /// Decodes a config [`DeviceConfig::encode`] made, and [`Kind::validate`]s it.
    fn decode(&self, bytes: &[u8]) -> Result<DeviceConfig, ConfigError>;
    /// [`Kind::test_spec`].
    fn test_spec(&self, scratch: &Path) -> io::Result<String>;
    /// `blk=PATH[,ro][,id=STR]...`: how `--help` writes the kind.
    fn usage(&self) -> String {
        options::usage(self.name(), self.value(), self.options())
    }
}

impl fmt::Debug for dyn DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceKind({})", self.name())
    }
}

/// What a restarted worker does with the requests its dead predecessor had taken but not
/// completed ([`Kind::restart`]).
///
/// The VMM owns the transport state (features, queue sizes and addresses, the guest's config
/// writes) and hands it to the new worker; what it cannot know is which chains the dead
/// worker had taken from the available ring and not yet returned. The guest can see where
/// the device's completions end — the used ring's index — so a resumed queue starts there:
/// its next chain to take and its next used entry are both the used index, and every chain
/// made available after it is taken (again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Doing a request twice is harmless, so the new worker resumes every queue at its used
    /// index and the guest driver sees at most a delay. The kind must put chains into each
    /// used ring in the order it took them from the available ring (later requests may finish
    /// first, but are returned after the earlier ones): only then are the chains before the
    /// used index exactly the completed ones.
    Resume {
        /// What a request taken again does twice, for people (docs, `--help`).
        repeated: &'static str,
    },
    /// The requests depend on state that died with the worker: the new worker starts fresh
    /// and the device shows `DEVICE_NEEDS_RESET` until the driver resets it (and then works
    /// again with the new worker).
    Reset {
        /// What died with the worker, for the restart line and people.
        lost: &'static str,
    },
}

/// The file size a worker may write ([`SandboxNeeds::file_size`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FileSize {
    /// Nothing: `RLIMIT_FSIZE` 0 (the default).
    #[default]
    Nothing,
    /// The size of host resource number N (a writable disk image: writes stay inside it).
    SizeOf(usize),
    /// No limit beyond svmm's own (a writable shared directory: files of any size).
    Unlimited,
    /// At most this many bytes (files the device makes itself: virtio-wl's memfds).
    Bytes(u64),
}

/// A Landlock rule beneath a directory resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LandlockRule {
    /// The [`HostResource::Directory`] it applies beneath, by its index in the resources.
    pub resource: usize,
    /// Read and write (true) or read only.
    pub writable: bool,
}

/// What a device's sandbox must leave it beyond the default worker sandbox (no processes, no
/// file writes, a small fd table, no filesystem access).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxNeeds {
    /// `RLIMIT_NPROC` (0: no processes and no threads).
    pub nproc: u64,
    /// `RLIMIT_FSIZE`.
    pub file_size: FileSize,
    /// Fds the worker may create after confinement on top of the inherited ones (epoll,
    /// eventfds, an io_uring instance, timers): `RLIMIT_NOFILE` is the inherited ones plus
    /// this.
    pub extra_fds: u64,
    /// Landlock rights beneath directory resources (none: no filesystem access at all).
    pub landlock: Vec<LandlockRule>,
    /// What the kind sets up in the last step before its seccomp filter ([`Kind::prepare`]),
    /// one sentence each, for `--print-sandbox`.
    pub before_filter: &'static [&'static str],
    /// Bytes of memory the device may hold on top of guest RAM and a worker's usual margin
    /// (blk: its direct-I/O bounce buffers in flight); `RLIMIT_AS` counts them.
    pub memory: u64,
    /// The worker opens host files by path with its own credentials (fs, beneath its share),
    /// so it must be the user svmm runs as: with an unprivileged svmm's subordinate ids it
    /// keeps svmm's host uid and gid instead of ids of its own (still in its own user
    /// namespace, as 1000 there, without supplementary groups). As root every worker has ids
    /// of its own from `--worker-ids` whatever this says.
    pub user_files: bool,
}

impl Default for SandboxNeeds {
    fn default() -> Self {
        SandboxNeeds {
            nproc: 0,
            file_size: FileSize::Nothing,
            extra_fds: broker::NOFILE_MARGIN,
            landlock: Vec::new(),
            before_filter: &[],
            memory: 0,
            user_files: false,
        }
    }
}

/// Where a device's shared-memory region lies in guest-physical memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShmWindow {
    /// Guest-physical address of its first byte.
    pub base: u64,
    /// Its length ([`Kind::shm_region`]).
    pub len: u64,
}

/// The fds of a device's host resources, one slot per declared resource (empty for one
/// without an fd), for [`Kind::build`]; and, for a device with host services (a
/// [`HostResource::SocketPath`] or a [`Kind::shm_region`]), its end of the service channel
/// and where its region is.
#[derive(Debug, Default)]
pub struct ResourceFds {
    fds: Vec<Option<OwnedFd>>,
    services: Option<OwnedFd>,
    shm_region: Option<ShmWindow>,
}

impl ResourceFds {
    /// The fds in declaration order.
    pub fn new(fds: Vec<Option<OwnedFd>>) -> Self {
        ResourceFds {
            fds,
            services: None,
            shm_region: None,
        }
    }

    /// With the device's end of its service channel and its shared-memory window.
    pub fn with_services(mut self, channel: OwnedFd, shm_region: Option<ShmWindow>) -> Self {
        self.services = Some(channel);
        self.shm_region = shm_region;
        self
    }

    /// The device's host services over its service channel (`ipc::service`).
    pub fn take_services(&mut self) -> Result<crate::services::ChannelServices, BuildError> {
        let fd = self.services.take().ok_or(BuildError::NoServiceChannel)?;
        let channel =
            ipc::Channel::try_from_fd(fd).map_err(|e| BuildError::Refused(Box::new(e)))?;
        crate::services::ChannelServices::new(channel).map_err(|e| BuildError::Refused(Box::new(e)))
    }

    /// Where the device's shared-memory region lies, if it has one.
    pub fn shm_region(&self) -> Option<ShmWindow> {
        self.shm_region
    }

    /// How many resources there are.
    pub fn len(&self) -> usize {
        self.fds.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    /// Takes the fd of resource `index`.
    pub fn take(&mut self, index: usize) -> Result<OwnedFd, BuildError> {
        self.fds
            .get_mut(index)
            .and_then(Option::take)
            .ok_or(BuildError::MissingResource(index))
    }

    /// Takes the fd of resource `index` as a file.
    pub fn take_file(&mut self, index: usize) -> Result<File, BuildError> {
        self.take(index).map(File::from)
    }
}

/// The user's input (a resource they named) cannot back the device: exit status 65.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct InputError {
    /// What it is (the image's path).
    pub what: String,
    /// What is wrong with it.
    #[source]
    pub source: Box<dyn Error + Send + Sync>,
}

/// Why a backend could not be built from its config and resources.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A resource's fd was not passed (a set-up bug).
    #[error("host resource {0} was not passed")]
    MissingResource(usize),
    /// The device has host services but no service channel was passed (a set-up bug).
    #[error("the service channel was not passed")]
    NoServiceChannel,
    /// The device has a shared-memory region but its window was not passed (a set-up bug).
    #[error("the shared-memory window was not passed")]
    NoShmWindow,
    /// The backend refused its resources.
    #[error("the device cannot use its host resources")]
    Refused(#[source] Box<dyn Error + Send + Sync>),
}

/// Why an encoded config cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The bytes are not a config of this kind.
    #[error("the device configuration does not decode")]
    Decode(#[source] ipc::CodecError),
    /// It decodes to values the kind refuses.
    #[error("invalid device configuration: {0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests;
