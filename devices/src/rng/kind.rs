//! virtio-rng as a device kind: `--device rng`, fed from the host's [`ENTROPY_SOURCE`].

use std::io;
use std::path::Path;

use broker::{Access, FileTypes, HostFile, HostResource, Lock, Origin};

use super::{Rng, ENTROPY_SOURCE, MAX_QUEUE_SIZE, NUM_QUEUES, SECCOMP_PROFILE};
use crate::kind::{BuildError, Kind, OptionSpec, ResourceFds, Spec, SpecError, ValueSpec};
use crate::VIRTIO_ID_RNG;

/// The virtio-rng kind.
#[derive(Debug, Clone, Copy)]
pub struct RngKind;

/// virtio-rng takes no options.
#[derive(Debug, Clone, PartialEq, Eq, ipc::Encode, ipc::Decode)]
#[bincode(crate = "ipc::codec::bincode")]
pub struct RngConfig;

impl Kind for RngKind {
    type Config = RngConfig;
    type Backend = Rng;

    const NAME: &'static str = "rng";
    const SUMMARY: &'static str =
        "virtio-rng fed from the host's /dev/urandom, which svmm opens before any worker exists";
    const VALUE: ValueSpec = ValueSpec::None;
    const OPTIONS: &'static [&'static OptionSpec] = &[];
    const DEVICE_TYPE: u32 = VIRTIO_ID_RNG;
    const MAX_QUEUE_SIZE: u16 = MAX_QUEUE_SIZE;
    const SECCOMP_PROFILE: &'static str = SECCOMP_PROFILE;

    fn parse(_spec: &Spec<'_>) -> Result<RngConfig, SpecError> {
        Ok(RngConfig)
    }

    fn validate(_config: &RngConfig) -> Result<(), String> {
        Ok(())
    }

    fn queues(_config: &RngConfig) -> u16 {
        NUM_QUEUES
    }

    fn resources(_config: &RngConfig) -> Vec<HostResource> {
        vec![HostResource::File {
            file: HostFile {
                path: ENTROPY_SOURCE.into(),
                access: Access::ReadOnly,
                lock: Lock::None,
                direct: false,
                types: FileTypes::CHAR_DEVICE,
            },
            origin: Origin::Kind,
        }]
    }

    fn build(_config: &RngConfig, mut resources: ResourceFds) -> Result<Rng, BuildError> {
        Ok(Rng::new(resources.take_file(0)?))
    }

    fn test_spec(_scratch: &Path) -> io::Result<String> {
        Ok(Self::NAME.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::DeviceKind;

    #[test]
    fn rng_takes_nothing_and_reads_urandom() {
        let spec = Spec::parse("rng", "rng", RngKind::VALUE, RngKind::OPTIONS).unwrap();
        let config = RngKind.parse(&spec).unwrap();
        assert_eq!(config.kind(), "rng");
        assert_eq!(config.queues(), 1);
        assert_eq!(config.encode().unwrap(), Vec::<u8>::new());
        assert_eq!(RngKind.decode(&[]).unwrap(), config);
        assert!(RngKind.decode(&[0]).is_err(), "trailing bytes");
        let resources = config.resources();
        assert_eq!(resources.len(), 1);
        assert_eq!(resources[0].describe(), "/dev/urandom (read-only)");
        assert_eq!(config.sandbox(), crate::kind::SandboxNeeds::default());
        let opened = broker::resources::open(&resources).unwrap();
        let fds = opened.into_iter().map(|o| o.fd).collect();
        let built = config.build(ResourceFds::new(fds)).unwrap();
        assert_eq!(built.backend().device_type(), VIRTIO_ID_RNG);
        assert!(matches!(
            config.build(ResourceFds::default()),
            Err(BuildError::MissingResource(0))
        ));
    }
}
