//! Which backend a device kind runs, and the host resources it is built from.
//!
//! The VMM opens a kind's host resources, before any worker exists, with
//! [`open_host_resources`]; whoever runs the device builds the backend from them with
//! [`build`]. In a spawned worker the resources arrive as inherited fds, in the order listed
//! here, after the queue eventfds (see [`super::fd_numbers`]).
//!
//! | kind  | queues | host resources (in order)   |
//! |-------|--------|-----------------------------|
//! | `rng` | 1      | `/dev/urandom`, read-only   |

use std::fs::File;

use devices::rng::{self, Rng};
use devices::VirtioBackend;

use crate::device_spec::DeviceKind;

/// Where virtio-rng's entropy comes from.
pub const ENTROPY_SOURCE: &str = "/dev/urandom";

/// The host files a device works on, opened outside the sandbox, in the kind's fixed order.
#[derive(Debug)]
pub struct HostResources {
    /// The files, in the order of the table above.
    pub files: Vec<File>,
}

/// Why a backend could not be built from its host resources.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The broker could not open a host resource.
    #[error("the {kind} device")]
    Open {
        /// The device kind.
        kind: DeviceKind,
        /// What failed (names the file).
        #[source]
        source: broker::ResourceError,
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

/// How many queues (and so queue eventfds) a kind has; known before its backend exists.
pub fn num_queues(kind: DeviceKind) -> u16 {
    match kind {
        DeviceKind::Rng => rng::NUM_QUEUES,
    }
}

/// How many host resources `kind` is built from (the length of [`HostResources::files`]).
pub fn host_resource_count(kind: DeviceKind) -> usize {
    host_files(kind).len()
}

/// Opens what `kind` works on through the broker (VMM side, before the worker is spawned or
/// started).
pub fn open_host_resources(kind: DeviceKind) -> Result<HostResources, BackendError> {
    let files = host_files(kind)
        .iter()
        .map(broker::open_host_file)
        .collect::<Result<_, _>>()
        .map_err(|source| BackendError::Open { kind, source })?;
    Ok(HostResources { files })
}

/// The host files `kind` declares, in the order of the table above; the broker opens them.
pub fn host_files(kind: DeviceKind) -> Vec<broker::HostFile> {
    match kind {
        DeviceKind::Rng => vec![broker::HostFile {
            path: ENTROPY_SOURCE.into(),
            access: broker::Access::ReadOnly,
            lock: broker::Lock::None,
            direct: false,
        }],
    }
}

/// Builds the backend of `kind` from its host resources (worker side).
pub fn build(
    kind: DeviceKind,
    resources: HostResources,
) -> Result<Box<dyn VirtioBackend>, BackendError> {
    let got = resources.files.len();
    match kind {
        DeviceKind::Rng => match <[File; 1]>::try_from(resources.files) {
            Ok([source]) => Ok(Box::new(Rng::new(source))),
            Err(_) => Err(BackendError::ResourceCount {
                kind,
                expected: host_resource_count(kind),
                got,
            }),
        },
    }
}
