//! virtio-fs: a host directory shared with the guest through FUSE (virtio spec 1.2, section
//! 5.11), read-only or read-write, that the guest cannot leave.
//!
//! svmm (never the worker) opens the shared directory `O_PATH | O_DIRECTORY | O_NOFOLLOW` and
//! an fd of the host's `/proc` before any worker exists; [`Fs::new`] takes both and nothing
//! else of the host file system.
//!
//! - `config`: feature bits and the config space (`tag`, `num_request_queues`).
//! - `request`: **the one copy-in function**: every descriptor, the FUSE request header and
//!   every argument are read from guest memory exactly once into private memory, validated
//!   there and turned into a typed [`Request`].
//! - `host`: the only code that names host files: `openat2` with `RESOLVE_BENEATH |
//!   RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS` relative to a node's fd, one name (no `/`) at
//!   a time, and the re-opening of a node's `O_PATH` fd through `/proc/self/fd/N`.
//! - `inode`: the node table (node id → `O_PATH` fd, lookup count, presented owner) and the
//!   open handles.
//! - `server`, `ops`, `dir`: the FUSE operations on those fds; `reply` builds each reply in
//!   private memory and writes it into the chain once.
//! - `device`: the [`Fs`] backend and its queue loop.
//! - `kind`: [`FsKind`], what svmm knows about the kind, including that a worker restarted
//!   after its predecessor died cannot take the requests in flight again (`Kind::restart`):
//!   they name node ids and file handles of the server that died, so the device needs a reset
//!   (a driver that resets it is served by the new worker; Linux's does not reset it).
//!
//! # Why no path can leave the share
//!
//! The server never builds a path. Every name the guest sends is a single validated component
//! (no `/`, not `.` or `..`), resolved relative to the `O_PATH` fd of the node it names with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS)` and `O_NOFOLLOW`:
//! `..`, absolute and relative symlinks and magic links are refused by the kernel at the
//! resolution itself, so a rename racing a lookup cannot make it escape either. A symlink is a
//! node like any other: the server reads its target (READLINK) but never follows it; the guest
//! kernel resolves it inside the guest. A hard link the host made to a file outside is served
//! as that one file: nothing reachable from it leads further. Only regular files and
//! directories are ever opened for I/O (no fifo can block the worker, no device node is
//! opened). Beneath this, the sandbox's Landlock rules limit the worker to the shared directory
//! (read rights only with `ro`; no execute, no device nodes, fifos or sockets created), so even
//! a compromised worker reaches nothing else; `/proc` is used only as `self/fd/N`.
//!
//! # Ownership
//!
//! On the host, everything the guest creates belongs to the process serving it: the worker's
//! own uid and gid (as root, the per-device ids from `--worker-ids`; unprivileged, svmm's
//! user), or svmm's for an in-process device. The server never changes host ownership (the
//! worker has no capabilities). The host's permission checks apply to those ids: the guest
//! reaches what the worker's uid may reach in the shared directory.
//!
//! To the guest, nodes are presented with these owners:
//! - with `uid-map=UID:GID`, every node belongs to `UID:GID`, and a chown to other ids gets
//!   `EPERM`;
//! - otherwise, as the guest asked: a node the guest created belongs to the uid and gid of the
//!   guest process that created it, a chown changes what the guest sees (not the host file),
//!   and nodes the guest has not created or chowned belong to `0:0`. These records live in the
//!   device's memory for the life of the device (at most [`MAX_OWNER_RECORDS`]; beyond that a
//!   node keeps the default).
//!
//! Set-user-ID and set-group-ID bits are never set on host files (cleared from every mode the
//! guest asks for; set-group-ID stays allowed on directories).
//!
//! # Cache policy
//!
//! `cache=none`: no entry or attribute caching in the guest, every open direct I/O;
//! `cache=auto` (default): entries and attributes valid for 1 s; `cache=always`: for a day,
//! and the guest keeps file and directory contents cached across opens.

mod config;
mod device;
mod dir;
pub mod fuzzing;
mod host;
mod inode;
pub mod kind;
mod ops;
mod reply;
pub mod request;
mod server;
#[cfg(test)]
mod tests;

pub use device::Fs;
pub use kind::{FsConfig, FsKind};
pub use request::{Op, Request};
pub use rustix::io::Errno;

/// Largest queue size the device accepts.
pub const MAX_QUEUE_SIZE: u16 = 256;
/// Most request queues (`num_request_queues`); the hiprio queue comes on top.
pub const MAX_REQUEST_QUEUES: u16 = 16;
/// Longest tag (the config space field).
pub const TAG_LEN: usize = 36;
/// Largest READ or WRITE (`max_write`, and `max_pages` of 4 KiB).
pub const MAX_IO: u32 = 128 * 1024;
/// Most argument bytes of a request other than a WRITE's payload (a symlink's name and
/// target, a forget batch, ...).
pub const MAX_ARGS: usize = 8192;
/// Longest name of a directory entry.
pub const NAME_MAX: usize = 255;
/// Longest symlink target (`PATH_MAX` without its NUL).
pub const TARGET_MAX: usize = 4095;
/// Most nodes the guest may hold at once (each keeps one `O_PATH` fd open).
pub const MAX_INODES: usize = 8192;
/// Most open handles (files and directories) at once.
pub const MAX_HANDLES: usize = 1024;
/// Most presented-owner records (see "Ownership").
pub const MAX_OWNER_RECORDS: usize = 65536;
/// Fds the device holds beyond its inherited ones: one per node and handle, and one for
/// a re-opened file during a SETATTR.
pub const MAX_FDS: u64 = (MAX_INODES + MAX_HANDLES + 1) as u64;
/// Name of the device's seccomp profile in the `seccomp-profiles` crate.
pub const SECCOMP_PROFILE: &str = "fs";
/// The profile of a read-only share.
pub const SECCOMP_PROFILE_RO: &str = "fs_ro";

/// How long the guest may cache entries, attributes and contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ipc::Encode, ipc::Decode)]
#[bincode(crate = "ipc::codec::bincode")]
pub enum CachePolicy {
    /// Nothing: every lookup and getattr goes to the device, I/O is direct.
    None,
    /// Entries and attributes for 1 s.
    #[default]
    Auto,
    /// Entries and attributes for a day; contents kept across opens.
    Always,
}

/// Who the guest sees as the owner of every node (`uid-map=UID:GID`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ipc::Encode, ipc::Decode)]
#[bincode(crate = "ipc::codec::bincode")]
pub struct IdMap {
    /// The uid every node presents.
    pub uid: u32,
    /// The gid every node presents.
    pub gid: u32,
}

/// How the device presents the shared directory.
#[derive(Debug, Clone, PartialEq, Eq, ipc::Encode, ipc::Decode)]
#[bincode(crate = "ipc::codec::bincode")]
pub struct FsOptions {
    /// The mount tag the guest names the share by, 1 to [`TAG_LEN`] bytes.
    pub tag: String,
    /// Refuse every modifying request with `EROFS`.
    pub read_only: bool,
    /// Guest caching.
    pub cache: CachePolicy,
    /// Number of request queues, `1..=`[`MAX_REQUEST_QUEUES`].
    pub queues: u16,
    /// Fixed presented owner, or `None` for "as the guest asked" (see "Ownership").
    pub uid_map: Option<IdMap>,
}

impl Default for FsOptions {
    fn default() -> Self {
        FsOptions {
            tag: String::new(),
            read_only: false,
            cache: CachePolicy::Auto,
            queues: 1,
            uid_map: None,
        }
    }
}

/// Why a directory cannot be shared.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// `fstat`/`fstatfs` of the shared directory or the `/proc` fd failed.
    #[error("cannot inspect the shared directory")]
    Inspect(#[source] std::io::Error),
    /// The shared fd is not a directory.
    #[error("the shared path is not a directory")]
    NotADirectory,
    /// The `/proc` fd is not the root of a procfs.
    #[error("the /proc fd is not a procfs")]
    NotProc,
    /// `tag=` empty or longer than [`TAG_LEN`].
    #[error("tag {0:?} is not 1 to 36 bytes")]
    TagLength(String),
    /// `queues=` outside `1..=MAX_REQUEST_QUEUES`.
    #[error("queues={0} is outside 1..=16")]
    QueueCount(u16),
}
