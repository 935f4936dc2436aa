//! A device's host resources on the VMM side: opened before any worker exists, checked the way
//! the device will check them, and held for as long as the device exists.
//!
//! The kind declares them (`devices::Kind::resources`, in the order the worker receives them);
//! the broker opens each (`broker::HostResource::open`: files with their mode and lock,
//! directories, the kind's own openers, inherited fds, helper processes); the kind then checks
//! what was opened (`devices::Kind::check`: a disk image's type and size), so that a bad input
//! is one line from svmm, not a dead worker. svmm keeps the opened resources with the device
//! (their locks, helper processes) and hands each worker or device thread duplicates
//! ([`HostResources::worker_fds`]), so the device could be started again from them.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use broker::{HostResource, OpenedResource, Origin, ResourceError};
use devices::kind::{FileSize, InputError};
use devices::DeviceConfig;

/// One device's host resources, opened, in the order its kind declares them.
#[derive(Debug)]
pub struct HostResources {
    /// Each resource as opened.
    pub opened: Vec<OpenedResource>,
}

/// Why a device's host resources cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HostResourceError {
    /// A resource the user named (an image, a directory, an fd) cannot be opened; the error
    /// names it.
    #[error(transparent)]
    User(ResourceError),
    /// A resource the kind itself needs cannot be opened.
    #[error("the {kind} device")]
    Kind {
        /// The device kind.
        kind: &'static str,
        /// What failed (names the resource).
        #[source]
        source: ResourceError,
    },
    /// The user's resource was opened but cannot back the device.
    #[error(transparent)]
    Input(#[from] InputError),
}

impl HostResourceError {
    /// Whether the user's input is at fault (exit status 65): a resource they named is missing,
    /// unreadable or unusable — not a lock another process holds, nor a resource svmm needs.
    pub fn is_bad_input(&self) -> bool {
        match self {
            HostResourceError::User(e) => e.is_bad_input(),
            HostResourceError::Input(_) => true,
            HostResourceError::Kind { .. } => false,
        }
    }
}

impl HostResources {
    /// Opens and checks the resources of `config`; helper processes run as `helper_user`
    /// (the unprivileged user a root svmm becomes, so it can still kill them at its end).
    pub fn open(
        config: &DeviceConfig,
        helper_user: Option<(u32, u32)>,
    ) -> Result<HostResources, HostResourceError> {
        let declared = config.resources();
        let mut opened = Vec::with_capacity(declared.len());
        for resource in &declared {
            let one = resource
                .open_as(helper_user)
                .map_err(|source| match resource.origin() {
                    Origin::User => HostResourceError::User(source),
                    Origin::Kind => HostResourceError::Kind {
                        kind: config.kind(),
                        source,
                    },
                })?;
            opened.push(one);
        }
        config.check(&opened)?;
        Ok(HostResources { opened })
    }

    /// Duplicates of the fds, one slot per resource (empty for a resource without an fd): what
    /// a worker or device thread is given.
    pub fn worker_fds(&self) -> io::Result<Vec<Option<OwnedFd>>> {
        self.opened
            .iter()
            .map(|o| o.fd.as_ref().map(|fd| fd.try_clone()).transpose())
            .collect()
    }

    /// Takes the fds out, one slot per resource (empty for one without an fd), leaving only
    /// what else the resources hold (helper processes): a sandboxed device's fds go to the
    /// broker, and svmm keeps no copy of them.
    pub fn take_fds(&mut self) -> Vec<Option<OwnedFd>> {
        self.opened.iter_mut().map(|o| o.fd.take()).collect()
    }

    /// The size of resource `index` in bytes (`lseek` on its fd: a block device's `st_size` is
    /// 0).
    pub fn size(&self, index: usize) -> io::Result<u64> {
        let fd = self
            .opened
            .get(index)
            .and_then(|o| o.fd.as_ref())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such resource fd"))?;
        fd_size(fd.as_fd())
    }
}

/// The size of the file behind `fd`, from the end of a duplicate (the offset is shared, so it
/// is put back to the start, where nobody has read yet).
pub fn fd_size(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut dup = std::fs::File::from(fd.try_clone_to_owned()?);
    let size = dup.seek(SeekFrom::End(0))?;
    dup.seek(SeekFrom::Start(0))?;
    Ok(size)
}

/// The size of a declared resource without opening it for the device (for `--print-sandbox`,
/// which must not open, lock or create anything): a file is opened read-only, unlocked, just
/// to measure it; other resources have no size.
pub fn declared_size(resource: &HostResource) -> io::Result<u64> {
    match resource {
        HostResource::File { file, .. } => {
            let meta = std::fs::metadata(&file.path)?;
            if meta.is_file() {
                return Ok(meta.len());
            }
            use std::os::unix::fs::FileTypeExt;
            if meta.file_type().is_block_device() {
                return fd_size(std::fs::File::open(&file.path)?.as_fd());
            }
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} has no size", file.path.display()),
            ))
        }
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "only a file resource has a size",
        )),
    }
}

/// `RLIMIT_FSIZE` for `limit`, given how to measure a resource (`None`: left as svmm's).
pub fn file_size_limit(
    limit: FileSize,
    size_of: impl Fn(usize) -> io::Result<u64>,
) -> io::Result<Option<u64>> {
    match limit {
        FileSize::Nothing => Ok(Some(0)),
        FileSize::SizeOf(index) => size_of(index).map(Some),
        FileSize::Unlimited => Ok(None),
        FileSize::Bytes(bytes) => Ok(Some(bytes)),
    }
}
