//! [`Kind`] with its types erased: [`DeviceKind`] for the registry, [`DeviceConfig`] for a
//! parsed device, [`Built`] for a backend before its last set-up step. Each is implemented once,
//! generically, so no code outside a kind's folder matches on a kind.

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::path::Path;
use std::sync::Arc;

use broker::{HostResource, OpenedResource};

use super::{
    BuildError, ConfigError, DeviceKind, InputError, Kind, OptionSpec, ResourceFds, Restart,
    SandboxNeeds, Spec, SpecError, ValueSpec,
};
use crate::VirtioBackend;

impl<K: Kind> DeviceKind for K {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn summary(&self) -> &'static str {
        K::SUMMARY
    }

    fn value(&self) -> ValueSpec {
        K::VALUE
    }

    fn options(&self) -> &'static [&'static OptionSpec] {
        K::OPTIONS
    }

    fn device_type(&self) -> u32 {
        K::DEVICE_TYPE
    }

    fn max_queue_size(&self) -> u16 {
        K::MAX_QUEUE_SIZE
    }

    fn seccomp_profile(&self) -> &'static str {
        K::SECCOMP_PROFILE
    }

    fn parse(&self, spec: &Spec<'_>) -> Result<DeviceConfig, SpecError> {
        K::parse(spec).map(DeviceConfig::of::<K>)
    }

    fn decode(&self, bytes: &[u8]) -> Result<DeviceConfig, ConfigError> {
        let config: K::Config = ipc::decode(bytes).map_err(ConfigError::Decode)?;
        K::validate(&config).map_err(ConfigError::Invalid)?;
        Ok(DeviceConfig::of::<K>(config))
    }

    fn test_spec(&self, scratch: &Path) -> io::Result<String> {
        K::test_spec(scratch)
    }
}

/// What a device of a given config is, from its kind's declaration and the config alone —
/// never from a worker: the VMM checks a worker's `Ready` against it (a worker that announces
/// another device type, other queues or a feature outside its kind's set is refused).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// [`Kind::NAME`].
    pub kind: &'static str,
    /// [`Kind::DEVICE_TYPE`].
    pub device_type: u32,
    /// [`Kind::queues`] of the config.
    pub queues: u16,
    /// [`Kind::MAX_QUEUE_SIZE`].
    pub max_queue_size: u16,
    /// [`Kind::FEATURES`]: every feature it may offer.
    pub features: u64,
}

/// What [`DeviceConfig`] asks of the config inside it.
trait AnyConfig: Send + Sync {
    fn kind(&self) -> &'static str;
    fn seccomp_profile(&self) -> &'static str;
    fn encode(&self) -> Result<Vec<u8>, ipc::CodecError>;
    fn queues(&self) -> u16;
    fn shape(&self) -> Shape;
    fn resources(&self) -> Vec<HostResource>;
    fn check(&self, opened: &[OpenedResource]) -> Result<(), InputError>;
    fn shm_region(&self) -> Option<u64>;
    fn sandbox(&self) -> SandboxNeeds;
    fn build(&self, resources: ResourceFds) -> Result<Box<dyn AnyBuilt>, BuildError>;
    fn restart(&self) -> Restart;
    fn debug(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result;
}

/// A config of kind `K`.
struct Typed<K: Kind> {
    config: K::Config,
    kind: PhantomData<fn() -> K>,
}

impl<K: Kind> AnyConfig for Typed<K> {
    fn kind(&self) -> &'static str {
        K::NAME
    }

    fn seccomp_profile(&self) -> &'static str {
        K::seccomp_profile(&self.config)
    }

    fn encode(&self) -> Result<Vec<u8>, ipc::CodecError> {
        ipc::encode(&self.config)
    }

    fn queues(&self) -> u16 {
        K::queues(&self.config)
    }

    fn shape(&self) -> Shape {
        Shape {
            kind: K::NAME,
            device_type: K::DEVICE_TYPE,
            queues: K::queues(&self.config),
            max_queue_size: K::MAX_QUEUE_SIZE,
            features: K::FEATURES,
        }
    }

    fn resources(&self) -> Vec<HostResource> {
        K::resources(&self.config)
    }

    fn check(&self, opened: &[OpenedResource]) -> Result<(), InputError> {
        K::check(&self.config, opened)
    }

    fn shm_region(&self) -> Option<u64> {
        K::shm_region(&self.config)
    }

    fn sandbox(&self) -> SandboxNeeds {
        K::sandbox(&self.config)
    }

    fn build(&self, resources: ResourceFds) -> Result<Box<dyn AnyBuilt>, BuildError> {
        let backend = K::build(&self.config, resources)?;
        Ok(Box::new(BuiltOf::<K> {
            backend,
            kind: PhantomData,
        }))
    }

    fn restart(&self) -> Restart {
        K::restart(&self.config)
    }

    fn debug(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", K::NAME, self.config)
    }
}

/// One device's validated configuration, of whichever kind: it answers for its kind (queues,
/// resources, sandbox, building the backend) and encodes itself for a spawned worker.
#[derive(Clone)]
pub struct DeviceConfig(Arc<dyn AnyConfig>);

impl DeviceConfig {
    fn of<K: Kind>(config: K::Config) -> DeviceConfig {
        DeviceConfig(Arc::new(Typed::<K> {
            config,
            kind: PhantomData,
        }))
    }

    /// The kind's name ([`Kind::NAME`]).
    pub fn kind(&self) -> &'static str {
        self.0.kind()
    }

    /// [`Kind::SECCOMP_PROFILE`].
    pub fn seccomp_profile(&self) -> &'static str {
        self.0.seccomp_profile()
    }

    /// The config as a spawned worker receives it (`ipc::codec`; the kind's
    /// [`DeviceKind::decode`] reads it back).
    pub fn encode(&self) -> Result<Vec<u8>, ipc::CodecError> {
        self.0.encode()
    }

    /// [`Kind::queues`].
    pub fn queues(&self) -> u16 {
        self.0.queues()
    }

    /// What a worker serving this device must announce in its `Ready` (see [`Shape`]).
    pub fn shape(&self) -> Shape {
        self.0.shape()
    }

    /// [`Kind::resources`].
    pub fn resources(&self) -> Vec<HostResource> {
        self.0.resources()
    }

    /// [`Kind::check`].
    pub fn check(&self, opened: &[OpenedResource]) -> Result<(), InputError> {
        self.0.check(opened)
    }

    /// [`Kind::shm_region`].
    pub fn shm_region(&self) -> Option<u64> {
        self.0.shm_region()
    }

    /// Whether the device has host services, and so a service channel: a socket svmm
    /// connects to on its request, or a shared-memory region.
    pub fn has_services(&self) -> bool {
        self.shm_region().is_some()
            || self
                .resources()
                .iter()
                .any(|r| matches!(r, HostResource::SocketPath { .. }))
    }

    /// [`Kind::sandbox`].
    pub fn sandbox(&self) -> SandboxNeeds {
        self.0.sandbox()
    }

    /// [`Kind::restart`].
    pub fn restart(&self) -> Restart {
        self.0.restart()
    }

    /// [`Kind::build`]: the backend, before its last set-up step.
    pub fn build(&self, resources: ResourceFds) -> Result<Built, BuildError> {
        self.0.build(resources).map(Built)
    }
}

impl fmt::Debug for DeviceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.debug(f)
    }
}

impl PartialEq for DeviceConfig {
    /// Same kind, same encoding (the encoding is canonical: one value, one byte string).
    fn eq(&self, other: &Self) -> bool {
        self.kind() == other.kind() && self.encode().ok() == other.encode().ok()
    }
}

/// What [`Built`] asks of the backend inside it.
trait AnyBuilt: Send {
    fn backend(&self) -> &dyn VirtioBackend;
    fn prepare(&mut self) -> Option<String>;
    #[cfg(feature = "test-faults")]
    fn arm_host_probe(&mut self) -> bool;
    fn into_backend(self: Box<Self>) -> Box<dyn VirtioBackend>;
}

struct BuiltOf<K: Kind> {
    backend: K::Backend,
    kind: PhantomData<fn() -> K>,
}

impl<K: Kind> AnyBuilt for BuiltOf<K> {
    fn backend(&self) -> &dyn VirtioBackend {
        &self.backend
    }

    fn prepare(&mut self) -> Option<String> {
        K::prepare(&mut self.backend)
    }

    #[cfg(feature = "test-faults")]
    fn arm_host_probe(&mut self) -> bool {
        K::arm_host_probe(&mut self.backend)
    }

    fn into_backend(self: Box<Self>) -> Box<dyn VirtioBackend> {
        Box::new(self.backend)
    }
}

/// A backend built from its config and resources, before its kind's last set-up step.
pub struct Built(Box<dyn AnyBuilt>);

impl Built {
    /// The backend, still owned here.
    pub fn backend(&self) -> &dyn VirtioBackend {
        self.0.backend()
    }

    /// [`Kind::prepare`]: run it on the thread (or in the process) that serves the device,
    /// right before its seccomp filter.
    pub fn prepare(&mut self) -> Option<String> {
        self.0.prepare()
    }

    /// Test builds: [`Kind::arm_host_probe`]; false for a kind without a probe.
    #[cfg(feature = "test-faults")]
    pub fn arm_host_probe(&mut self) -> bool {
        self.0.arm_host_probe()
    }

    /// The backend, ready to serve.
    pub fn into_backend(self) -> Box<dyn VirtioBackend> {
        self.0.into_backend()
    }
}
