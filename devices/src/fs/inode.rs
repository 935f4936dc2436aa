//! The nodes the guest holds and the handles it opened.
//!
//! A node is one host inode the guest looked up: an `O_PATH` fd of it (never a path), its type,
//! its `(st_dev, st_ino)` (one node per host inode, however many names lead to it) and the
//! guest's lookup count. Node 1 is the shared directory itself and is never forgotten. Node
//! ids are never reused within a device's life, so a stale id the guest sends finds nothing.
//!
//! A handle is an fd the server opened for the guest (OPEN, OPENDIR, CREATE): a regular file or
//! a directory, nothing else.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::FileType;
use rustix::io::Errno;

use super::{MAX_HANDLES, MAX_INODES, MAX_OWNER_RECORDS};

/// The node id of the shared directory (`FUSE_ROOT_ID`).
pub(crate) const ROOT: u64 = 1;

/// One node.
#[derive(Debug)]
pub(crate) struct Inode {
    /// `O_PATH` fd of the host inode.
    pub fd: OwnedFd,
    pub kind: FileType,
    /// `(st_dev, st_ino)`.
    pub key: (u64, u64),
    /// Lookups the guest has not forgotten.
    lookups: u64,
}

/// The node table.
#[derive(Debug)]
pub(crate) struct Inodes {
    nodes: HashMap<u64, Inode>,
    by_key: HashMap<(u64, u64), u64>,
    next: u64,
}

impl Inodes {
    /// A table holding only the shared directory.
    pub(crate) fn new(root: OwnedFd, key: (u64, u64)) -> Inodes {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Inode {
                fd: root,
                kind: FileType::Directory,
                key,
                lookups: 1,
            },
        );
        let mut by_key = HashMap::new();
        by_key.insert(key, ROOT);
        Inodes {
            nodes,
            by_key,
            next: ROOT + 1,
        }
    }

    pub(crate) fn get(&self, id: u64) -> Result<&Inode, Errno> {
        // A guest that names a node it never got (or forgot) gets the errno Linux gives a
        // stale NFS handle; nothing else can be reached through it.
        self.nodes.get(&id).ok_or(Errno::STALE)
    }

    /// The node's fd.
    pub(crate) fn fd(&self, id: u64) -> Result<BorrowedFd<'_>, Errno> {
        self.get(id).map(|i| i.fd.as_fd())
    }

    /// Counts one lookup of the host inode `key` (`fd` an `O_PATH` fd of it): an existing node
    /// gains a lookup (and `fd` is closed), else a new node is made. Fails with `ENFILE` when
    /// the table is full.
    pub(crate) fn add(
        &mut self,
        fd: OwnedFd,
        kind: FileType,
        key: (u64, u64),
    ) -> Result<u64, Errno> {
        if let Some(&id) = self.by_key.get(&key) {
            if let Some(node) = self.nodes.get_mut(&id) {
                node.lookups = node.lookups.saturating_add(1);
                return Ok(id);
            }
        }
        if self.nodes.len() >= MAX_INODES {
            return Err(Errno::NFILE);
        }
        let id = self.next;
        self.next += 1;
        self.nodes.insert(
            id,
            Inode {
                fd,
                kind,
                key,
                lookups: 1,
            },
        );
        self.by_key.insert(key, id);
        Ok(id)
    }

    /// The guest forgets `n` lookups of `id`; the node goes when none are left. The root and
    /// unknown ids are ignored (FORGET has no reply).
    pub(crate) fn forget(&mut self, id: u64, n: u64) {
        if id == ROOT {
            return;
        }
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        node.lookups = node.lookups.saturating_sub(n);
        if node.lookups == 0 {
            if let Some(node) = self.nodes.remove(&id) {
                self.by_key.remove(&node.key);
            }
        }
    }

    /// Drops every node but the root (DESTROY, reset).
    pub(crate) fn clear(&mut self) {
        self.nodes.retain(|&id, _| id == ROOT);
        self.by_key.retain(|_, &mut id| id == ROOT);
    }

    /// Number of nodes (root included).
    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }
}

/// What an open handle is.
#[derive(Debug)]
pub(crate) enum Handle {
    /// A regular file, opened with these access rights.
    File { fd: OwnedFd, writable: bool },
    /// A directory, opened `O_RDONLY | O_DIRECTORY`.
    Dir { fd: OwnedFd },
}

/// The open handles.
#[derive(Debug, Default)]
pub(crate) struct Handles {
    open: HashMap<u64, Handle>,
    next: u64,
}

impl Handles {
    /// Stores `handle`; `ENFILE` when [`MAX_HANDLES`] are open.
    pub(crate) fn add(&mut self, handle: Handle) -> Result<u64, Errno> {
        if self.open.len() >= MAX_HANDLES {
            return Err(Errno::NFILE);
        }
        self.next += 1;
        self.open.insert(self.next, handle);
        Ok(self.next)
    }

    /// A file handle's fd (`EBADF` for an unknown or directory handle).
    pub(crate) fn file(&self, fh: u64) -> Result<(BorrowedFd<'_>, bool), Errno> {
        match self.open.get(&fh) {
            Some(Handle::File { fd, writable }) => Ok((fd.as_fd(), *writable)),
            _ => Err(Errno::BADF),
        }
    }

    /// Any handle's fd.
    pub(crate) fn any(&self, fh: u64) -> Result<BorrowedFd<'_>, Errno> {
        match self.open.get(&fh) {
            Some(Handle::File { fd, .. } | Handle::Dir { fd }) => Ok(fd.as_fd()),
            None => Err(Errno::BADF),
        }
    }

    /// Takes directory handle `fh` out of the table for a while ([`put_back`](Self::put_back)).
    pub(crate) fn take(&mut self, fh: u64) -> Result<Handle, Errno> {
        match self.open.remove(&fh) {
            Some(h @ Handle::Dir { .. }) => Ok(h),
            Some(h) => {
                self.open.insert(fh, h);
                Err(Errno::BADF)
            }
            None => Err(Errno::BADF),
        }
    }

    /// Returns a handle [`take`](Self::take) took.
    pub(crate) fn put_back(&mut self, fh: u64, handle: Handle) {
        self.open.insert(fh, handle);
    }

    /// Closes `fh` (unknown handles are ignored: the guest gets success either way).
    pub(crate) fn remove(&mut self, fh: u64) {
        self.open.remove(&fh);
    }

    /// Closes every handle.
    pub(crate) fn clear(&mut self) {
        self.open.clear();
    }

    /// Number of open handles.
    pub(crate) fn len(&self) -> usize {
        self.open.len()
    }
}

/// Owners the guest asked for, by host inode (see "Ownership" in the module docs).
#[derive(Debug, Default)]
pub(crate) struct Owners(HashMap<(u64, u64), (u32, u32)>);

impl Owners {
    /// The recorded owner of `key`, or `0:0`.
    pub(crate) fn get(&self, key: (u64, u64)) -> (u32, u32) {
        self.0.get(&key).copied().unwrap_or((0, 0))
    }

    /// Records `owner` for `key` (silently dropped when [`MAX_OWNER_RECORDS`] are kept and
    /// `key` has none yet).
    pub(crate) fn set(&mut self, key: (u64, u64), owner: (u32, u32)) {
        if owner == (0, 0) {
            self.0.remove(&key);
        } else if self.0.len() < MAX_OWNER_RECORDS || self.0.contains_key(&key) {
            self.0.insert(key, owner);
        }
    }
}
