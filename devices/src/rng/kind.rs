//! virtio-rng as a device kind: `--device rng[,source=drbg|urandom]`, fed by the device's own
//! ChaCha20 generator keyed from the kernel (the default) or from the host's
//! [`ENTROPY_SOURCE`], which svmm then opens before any worker exists.

use std::io;
use std::path::Path;

use broker::{Access, FileTypes, HostFile, HostResource, Lock, Origin};

use super::{Drbg, Rng, ENTROPY_SOURCE, MAX_QUEUE_SIZE, NUM_QUEUES, SECCOMP_PROFILE};
use crate::kind::{
    BuildError, Kind, OptionSpec, OptionValue, ResourceFds, Restart, Spec, SpecError, ValueSpec,
};
use crate::VIRTIO_ID_RNG;

/// The virtio-rng kind.
#[derive(Debug, Clone, Copy)]
pub struct RngKind;

/// `source=drbg|urandom`: where the bytes come from.
pub const SOURCE: OptionSpec = OptionSpec {
    name: "source",
    value: OptionValue::Choice(&["drbg", "urandom"]),
    help: "drbg (default): the device's own ChaCha20 generator, keyed from the kernel's \
           getrandom before confinement, key erased after every request, re-keyed from the \
           kernel every 1 MiB or 1 s, no system call per request; urandom: one read of the \
           host's /dev/urandom per request, which svmm opens before any worker exists",
    hidden: false,
};

/// Where a virtio-rng device's bytes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ipc::Encode, ipc::Decode)]
#[bincode(crate = "ipc::codec::bincode")]
pub enum Source {
    /// The device's own generator ([`Drbg`]).
    #[default]
    Drbg,
    /// [`ENTROPY_SOURCE`], one `read` per request.
    Urandom,
}

/// `rng[,source=drbg|urandom]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, ipc::Encode, ipc::Decode)]
#[bincode(crate = "ipc::codec::bincode")]
pub struct RngConfig {
    /// Where the bytes come from.
    pub source: Source,
}

impl Kind for RngKind {
    type Config = RngConfig;
    type Backend = Rng;

    const NAME: &'static str = "rng";
    const SUMMARY: &'static str =
        "virtio-rng: random bytes from the device's own ChaCha20 generator keyed from the kernel, \
         or from the host's /dev/urandom";
    const VALUE: ValueSpec = ValueSpec::None;
    const OPTIONS: &'static [&'static OptionSpec] = &[&SOURCE];
    const DEVICE_TYPE: u32 = VIRTIO_ID_RNG;
    const MAX_QUEUE_SIZE: u16 = MAX_QUEUE_SIZE;
    const SECCOMP_PROFILE: &'static str = SECCOMP_PROFILE;
    const FEATURES: u64 = super::device::FEATURES;

    fn parse(spec: &Spec<'_>) -> Result<RngConfig, SpecError> {
        let source = match spec.choice(&SOURCE)? {
            Some("urandom") => Source::Urandom,
            _ => Source::Drbg,
        };
        Ok(RngConfig { source })
    }

    fn validate(_config: &RngConfig) -> Result<(), String> {
        Ok(())
    }

    fn queues(_config: &RngConfig) -> u16 {
        NUM_QUEUES
    }

    fn resources(config: &RngConfig) -> Vec<HostResource> {
        if config.source == Source::Drbg {
            return Vec::new();
        }
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

    /// Runs before confinement (in a worker and on an in-process thread alike), so the
    /// generator's first key comes from `getrandom` outside the sandbox.
    fn build(config: &RngConfig, mut resources: ResourceFds) -> Result<Rng, BuildError> {
        match config.source {
            Source::Drbg => Drbg::new()
                .map(Rng::with_drbg)
                .map_err(|e| BuildError::Refused(Box::new(e))),
            Source::Urandom => Ok(Rng::new(resources.take_file(0)?)),
        }
    }

    /// Any bytes do: a request in flight is filled again with fresh entropy (the dead
    /// worker's bytes, if it wrote some, are overwritten before the guest sees the request
    /// completed). The queue loop completes chains in the order it takes them.
    fn restart(_config: &RngConfig) -> Restart {
        Restart::Resume {
            repeated: "an entropy request in flight is filled again with fresh bytes",
        }
    }

    fn test_spec(_scratch: &Path) -> io::Result<String> {
        Ok(Self::NAME.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::{DeviceConfig, DeviceKind};

    fn parse(text: &str) -> Result<DeviceConfig, SpecError> {
        let spec = Spec::parse(text, "rng", RngKind::VALUE, RngKind::OPTIONS)?;
        DeviceKind::parse(&RngKind, &spec)
    }

    #[test]
    fn rng_defaults_to_its_own_generator_with_no_host_resource() {
        let config = parse("rng").unwrap();
        assert_eq!(config, parse("rng,source=drbg").unwrap());
        assert_eq!(config.kind(), "rng");
        assert_eq!(config.queues(), 1);
        assert_eq!(config.encode().unwrap(), vec![0, 0, 0, 0]);
        assert_eq!(RngKind.decode(&[0, 0, 0, 0]).unwrap(), config);
        assert!(config.resources().is_empty());
        assert_eq!(config.sandbox(), crate::kind::SandboxNeeds::default());
        let built = config.build(ResourceFds::default()).unwrap();
        assert_eq!(built.backend().device_type(), VIRTIO_ID_RNG);
        let err = parse("rng,source=random").unwrap_err().to_string();
        assert!(err.contains("source"), "{err}");
    }

    #[test]
    fn rng_source_urandom_reads_urandom() {
        let config = parse("rng,source=urandom").unwrap();
        assert_eq!(config.encode().unwrap(), vec![1, 0, 0, 0]);
        assert_eq!(RngKind.decode(&[1, 0, 0, 0]).unwrap(), config);
        assert!(RngKind.decode(&[]).is_err(), "no bytes");
        assert!(RngKind.decode(&[2, 0, 0, 0]).is_err(), "no such source");
        assert!(RngKind.decode(&[1, 0, 0, 0, 0]).is_err(), "trailing bytes");
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
