//! virtio-wl as a device kind: `--device wayland[=SOCKET][,shm=MIB]`.
//!
//! SOCKET is the compositor's socket; without it, what Wayland clients use:
//! `$WAYLAND_DISPLAY` if it is an absolute path, else `$XDG_RUNTIME_DIR/$WAYLAND_DISPLAY`
//! (`wayland-0` when `WAYLAND_DISPLAY` is unset). svmm checks before the VM starts that it is
//! a socket something listens on, and later connects to it once per context the guest opens,
//! on the device's request (the worker has no `socket` or `connect`). `shm=` is the size of the
//! device's shared-memory region, where the guest's buffers are mapped.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use broker::{HostResource, OpenedResource};

use super::{Wl, MAX_ALLOC_BYTES, MAX_QUEUE_SIZE, MAX_VFDS, NUM_QUEUES, SECCOMP_PROFILE};
use crate::kind::{
    BuildError, FileSize, InputError, Kind, OptionSpec, OptionValue, ResourceFds, Restart,
    SandboxNeeds, Spec, SpecError, ValueSpec,
};
use crate::VIRTIO_ID_WL;

/// Default size of the shared-memory region, in MiB.
pub const DEFAULT_SHM_MIB: u64 = 256;
/// Largest shared-memory region, in MiB.
pub const MAX_SHM_MIB: u64 = 4096;

/// `shm=MIB`: the shared-memory region's size.
pub const SHM: OptionSpec = OptionSpec {
    name: "shm",
    value: OptionValue::Number {
        min: 1,
        max: MAX_SHM_MIB,
        unit: Some("MiB"),
    },
    help: "the size of the device's shared-memory region, where the guest's Wayland buffers \
           are mapped (all of them together), default 256",
    hidden: false,
};

/// The virtio-wl kind.
#[derive(Debug, Clone, Copy)]
pub struct WlKind;

/// `wayland[=SOCKET][,shm=MIB]`, validated.
#[derive(Debug, Clone, PartialEq, Eq, ipc::Encode, ipc::Decode)]
#[bincode(crate = "ipc::codec::bincode")]
pub struct WlConfig {
    /// The compositor's socket, as given or found in the environment; `None` when neither
    /// says (refused, in one line, before the VM starts).
    pub socket: Option<PathBuf>,
    /// The shared-memory region's size in MiB.
    pub shm_mib: u64,
}

/// The socket Wayland clients would use: `$WAYLAND_DISPLAY` if absolute, else
/// `$XDG_RUNTIME_DIR/${WAYLAND_DISPLAY:-wayland-0}`.
pub fn default_socket() -> Option<PathBuf> {
    let display = std::env::var_os("WAYLAND_DISPLAY").filter(|d| !d.is_empty());
    if let Some(display) = &display {
        if Path::new(display).is_absolute() {
            return Some(PathBuf::from(display));
        }
    }
    let dir = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty())?;
    let name = display.unwrap_or_else(|| "wayland-0".into());
    Some(Path::new(&dir).join(name))
}

/// Why the socket cannot serve the device.
fn unusable(path: &Path) -> Option<String> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Some("no such socket (is the compositor running?)".into())
        }
        Err(e) => return Some(format!("cannot reach it: {e}")),
        Ok(meta) if !meta.file_type().is_socket() => return Some("not a socket".into()),
        Ok(_) => {}
    }
    match UnixStream::connect(path) {
        Ok(_) => None,
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            Some("no compositor is listening on this socket".into())
        }
        Err(e) => Some(format!("cannot connect: {e}")),
    }
}

impl Kind for WlKind {
    type Config = WlConfig;
    type Backend = Wl;

    const NAME: &'static str = "wayland";
    const SUMMARY: &'static str =
        "virtio-wl (crosvm's Wayland protocol, for guests with the virtio_wl driver and \
         sommelier): guest windows shown by the host's compositor, to whose socket svmm \
         connects on the device's request";
    const VALUE: ValueSpec = ValueSpec::Optional {
        placeholder: "SOCKET",
    };
    const OPTIONS: &'static [&'static OptionSpec] = &[&SHM];
    const DEVICE_TYPE: u32 = VIRTIO_ID_WL;
    const MAX_QUEUE_SIZE: u16 = MAX_QUEUE_SIZE;
    const SECCOMP_PROFILE: &'static str = SECCOMP_PROFILE;
    const FEATURES: u64 = super::device::FEATURES;

    fn parse(spec: &Spec<'_>) -> Result<WlConfig, SpecError> {
        let socket = match spec.value() {
            Some(path) if !path.is_empty() => Some(PathBuf::from(path)),
            _ => default_socket(),
        };
        let shm_mib = spec.number(&SHM)?.unwrap_or(DEFAULT_SHM_MIB);
        Ok(WlConfig { socket, shm_mib })
    }

    fn validate(config: &WlConfig) -> Result<(), String> {
        if !(1..=MAX_SHM_MIB).contains(&config.shm_mib) {
            return Err(format!(
                "shm={} is not in 1..={MAX_SHM_MIB}",
                config.shm_mib
            ));
        }
        if config
            .socket
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err("empty socket path".into());
        }
        Ok(())
    }

    fn queues(_config: &WlConfig) -> u16 {
        NUM_QUEUES
    }

    fn resources(config: &WlConfig) -> Vec<HostResource> {
        config
            .socket
            .iter()
            .map(|path| HostResource::SocketPath { path: path.clone() })
            .collect()
    }

    /// The socket exists, is a socket, and something listens on it (one connection, closed
    /// at once).
    fn check(config: &WlConfig, _opened: &[OpenedResource]) -> Result<(), InputError> {
        let Some(path) = &config.socket else {
            return Err(InputError {
                what: "wayland".into(),
                source: "no compositor socket: give wayland=SOCKET, or set WAYLAND_DISPLAY \
                         (and XDG_RUNTIME_DIR)"
                    .into(),
            });
        };
        match unusable(path) {
            None => Ok(()),
            Some(why) => Err(InputError {
                what: path.display().to_string(),
                source: why.into(),
            }),
        }
    }

    fn shm_region(config: &WlConfig) -> Option<u64> {
        Some(config.shm_mib << 20)
    }

    /// A pipe vfd holds two fds, anything else one; memfds up to the largest allocation.
    fn sandbox(_config: &WlConfig) -> SandboxNeeds {
        SandboxNeeds {
            extra_fds: 2 * MAX_VFDS as u64 + broker::NOFILE_MARGIN,
            file_size: FileSize::Bytes(u64::from(MAX_ALLOC_BYTES)),
            ..SandboxNeeds::default()
        }
    }

    fn build(_config: &WlConfig, mut resources: ResourceFds) -> Result<Wl, BuildError> {
        let window = resources.shm_region().ok_or(BuildError::NoShmWindow)?;
        let services = resources.take_services()?;
        Ok(Wl::new(window, Box::new(services)))
    }

    /// A context is a compositor connection and the guest's ids for it, a buffer a memfd in
    /// the region: none of it survives the worker, so the guest starts over.
    fn restart(_config: &WlConfig) -> Restart {
        Restart::Reset {
            lost: "its compositor connections, shared-memory buffers and pipes",
        }
    }

    /// A socket under `scratch` that listens for as long as the test process lives.
    fn test_spec(scratch: &Path) -> io::Result<String> {
        let path = scratch.join("wayland-test.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        // The registry's tests start svmm with this spec later; keep the socket listening.
        std::mem::forget(listener);
        Ok(format!("wayland={}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::DeviceKind;

    fn parse(text: &str) -> Result<WlConfig, SpecError> {
        let spec = Spec::parse(text, "wayland", WlKind::VALUE, WlKind::OPTIONS)?;
        <WlKind as Kind>::parse(&spec)
    }

    #[test]
    fn socket_and_region_size() {
        let config = parse("wayland=/run/x.sock,shm=64").unwrap();
        assert_eq!(config.socket.as_deref(), Some(Path::new("/run/x.sock")));
        assert_eq!(WlKind::shm_region(&config), Some(64 << 20));
        assert_eq!(WlKind::queues(&config), 2);
        assert_eq!(
            WlKind::resources(&config)[0].describe(),
            "connections to /run/x.sock, made by svmm when the worker asks"
        );
        assert!(parse("wayland=/x,shm=0").is_err());
        assert!(parse("wayland=/x,shm=4097").is_err());
        assert!(parse("wayland=/x,shm=lots").is_err());
        assert!(parse("wayland=/x,bogus=1").is_err());
        let spec = Spec::parse("wayland=/x", "wayland", WlKind::VALUE, WlKind::OPTIONS).unwrap();
        let config = DeviceKind::parse(&WlKind, &spec).unwrap();
        assert_eq!(WlKind.decode(&config.encode().unwrap()).unwrap(), config);
        assert!(config.has_services());
        assert!(WlKind::validate(&WlConfig {
            socket: None,
            shm_mib: 0
        })
        .is_err());
    }

    #[test]
    fn the_socket_is_checked_before_the_vm_starts() {
        let dir = std::env::temp_dir().join(format!("svmm-wl-kind-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let check = |socket: Option<PathBuf>| {
            WlKind::check(&WlConfig { socket, shm_mib: 1 }, &[])
                .map_err(|e| format!("{}: {}", e.what, e.source))
        };
        let missing = check(Some(dir.join("nothing"))).unwrap_err();
        assert!(
            missing.ends_with("no such socket (is the compositor running?)"),
            "{missing}"
        );
        std::fs::write(dir.join("file"), b"").unwrap();
        assert!(check(Some(dir.join("file")))
            .unwrap_err()
            .ends_with("not a socket"));
        let listener = UnixListener::bind(dir.join("live")).unwrap();
        assert_eq!(check(Some(dir.join("live"))), Ok(()));
        drop(listener);
        let dead = check(Some(dir.join("live"))).unwrap_err();
        assert!(
            dead.ends_with("no compositor is listening on this socket"),
            "{dead}"
        );
        let none = check(None).unwrap_err();
        assert!(none.starts_with("wayland: no compositor socket"), "{none}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
