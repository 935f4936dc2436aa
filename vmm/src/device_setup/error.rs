//! What can go wrong while the VM's virtio devices are set up and started.

use std::io;

use crate::host_resources::HostResourceError;
use crate::mmio_bus::MmioBusError;
use crate::plan::PlanError;
use crate::sandboxed::SandboxError;
use crate::virtio::ProxyError;

/// Setting up a device failed. Every variant names the device (`rng#0`).
#[derive(Debug, thiserror::Error)]
pub enum DeviceSetupError {
    /// More devices than slots (the command line is checked first, so this is a bug).
    #[error("{0}: no free virtio-mmio slot")]
    NoSlot(String),
    /// A host resource (eventfd, memfd, socket, thread) could not be created.
    #[error("{name}: cannot {what}")]
    Host {
        /// The device.
        name: String,
        /// What failed.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Registering an eventfd with KVM failed.
    #[error("{name}: cannot register its {what} with KVM")]
    Kvm {
        /// The device.
        name: String,
        /// Which eventfd.
        what: &'static str,
        /// The KVM error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The device's host resources could not be opened, or cannot back it.
    #[error("{name}")]
    HostResources {
        /// The device.
        name: String,
        /// Why.
        #[source]
        source: HostResourceError,
    },
    /// The device's worker cannot be planned.
    #[error("{name}")]
    Plan {
        /// The device.
        name: String,
        /// Why.
        #[source]
        source: PlanError,
    },
    /// The in-process backend could not be built from its resources.
    #[error("{name}: the {kind} device")]
    Build {
        /// The device.
        name: String,
        /// Its kind.
        kind: &'static str,
        /// Why.
        #[source]
        source: devices::kind::BuildError,
    },
    /// The broker could not create the device's control channel or eventfds.
    #[error("{name}")]
    Resources {
        /// The device.
        name: String,
        /// What failed.
        #[source]
        source: broker::ResourceError,
    },
    /// The sandbox cannot be set up (before the first sandboxed worker).
    #[error(transparent)]
    Sandbox(SandboxError),
    /// The broker could not start the device's worker.
    #[error("{name}: sandboxed worker")]
    Spawn {
        /// The device.
        name: String,
        /// Why.
        #[source]
        source: SandboxError,
    },
    /// The worker did not come up.
    #[error("{name}: device worker did not start")]
    Start {
        /// The device.
        name: String,
        /// Why.
        #[source]
        source: ProxyError,
    },
    /// The MMIO window is taken.
    #[error("{name}: cannot place its registers")]
    Bus {
        /// The device.
        name: String,
        /// The bus error.
        #[source]
        source: MmioBusError,
    },
}
