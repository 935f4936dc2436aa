//! A device kind that exists only in svmm's unit tests, so that the generic code — planning,
//! host resources, the worker entry — is tested with every sort of host resource without
//! naming a real kind: a file the user names, a directory with a Landlock rule beneath it, and
//! a socket path without an fd.

use std::io;
use std::path::{Path, PathBuf};

use broker::{Access, FileTypes, HostFile, HostResource, Lock, Origin};
use devices::kind::{
    BuildError, FileSize, Kind, LandlockRule, OptionSpec, OptionValue, ResourceFds, Restart,
    SandboxNeeds, Spec, SpecError, ValueSpec,
};
use devices::rng::Rng;

/// `fake=FILE,dir=DIR[,rw=on|off]`: FILE read-write and locked, DIR beneath Landlock, and
/// connections to `/run/fake.sock` on request.
pub struct FakeKind;

const DIR: OptionSpec = OptionSpec {
    name: "dir",
    value: OptionValue::Text {
        placeholder: "DIR",
        min_len: 1,
        max_len: 4096,
    },
    help: "a directory",
    hidden: false,
};
const RW: OptionSpec = OptionSpec {
    name: "rw",
    value: OptionValue::Switch,
    help: "read-write beneath the directory",
    hidden: false,
};

/// The fake kind's config.
#[derive(Debug, Clone, PartialEq, Eq, ipc::Encode, ipc::Decode)]
#[bincode(crate = "ipc::codec::bincode")]
pub struct FakeConfig {
    file: PathBuf,
    dir: PathBuf,
    rw: bool,
}

impl Kind for FakeKind {
    type Config = FakeConfig;
    type Backend = Rng;

    const NAME: &'static str = "fake";
    const SUMMARY: &'static str = "a test kind";
    const VALUE: ValueSpec = ValueSpec::Required {
        placeholder: "FILE",
        noun: "a file",
    };
    const OPTIONS: &'static [&'static OptionSpec] = &[&DIR, &RW];
    const DEVICE_TYPE: u32 = 0;
    const MAX_QUEUE_SIZE: u16 = 8;
    const SECCOMP_PROFILE: &'static str = "rng";
    const FEATURES: u64 = 1 << 32;

    fn parse(spec: &Spec<'_>) -> Result<FakeConfig, SpecError> {
        Ok(FakeConfig {
            file: spec.value().unwrap_or_default().into(),
            dir: spec.string(&DIR)?.unwrap_or("/").into(),
            rw: spec.switch(&RW)?.unwrap_or(false),
        })
    }

    fn validate(_config: &FakeConfig) -> Result<(), String> {
        Ok(())
    }

    fn queues(_config: &FakeConfig) -> u16 {
        2
    }

    fn resources(config: &FakeConfig) -> Vec<HostResource> {
        vec![
            HostResource::File {
                file: HostFile {
                    path: config.file.clone(),
                    access: Access::ReadWrite,
                    lock: Lock::Exclusive,
                    direct: false,
                    types: FileTypes::IMAGE,
                },
                origin: Origin::User,
            },
            HostResource::SocketPath {
                path: "/run/fake.sock".into(),
            },
            HostResource::Directory {
                path: config.dir.clone(),
                origin: Origin::User,
            },
        ]
    }

    fn sandbox(config: &FakeConfig) -> SandboxNeeds {
        SandboxNeeds {
            file_size: FileSize::SizeOf(0),
            landlock: vec![LandlockRule {
                resource: 2,
                writable: config.rw,
            }],
            ..SandboxNeeds::default()
        }
    }

    fn build(_config: &FakeConfig, mut resources: ResourceFds) -> Result<Rng, BuildError> {
        Ok(Rng::new(resources.take_file(0)?))
    }

    fn restart(_config: &FakeConfig) -> Restart {
        Restart::Reset {
            lost: "nothing (a test kind)",
        }
    }

    fn test_spec(scratch: &Path) -> io::Result<String> {
        let file = scratch.join("fake.img");
        std::fs::write(&file, [0u8; 512])?;
        Ok(format!("fake={},dir={}", file.display(), scratch.display()))
    }
}

/// A parsed spec of the fake kind.
pub fn spec(text: &str) -> crate::device_spec::DeviceSpec {
    let kind: &dyn devices::DeviceKind = &FakeKind;
    let parsed = Spec::parse(text, kind.name(), kind.value(), kind.options()).unwrap();
    crate::device_spec::DeviceSpec::new(kind.parse(&parsed).unwrap())
}
