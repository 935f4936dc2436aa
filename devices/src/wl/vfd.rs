//! The vfd table: every virtual fd the guest can name, what backs it, and the limits.
//!
//! A vfd is one of:
//!
//! - **shared memory**: a memfd sealed against shrinking, mapped at `offset` in the device's
//!   shared-memory region (the guest reaches it there; the compositor through the fd);
//! - **a context**: a connected stream socket to the compositor;
//! - **a pipe**: the device's end (`local`, non-blocking) and, until the guest sends it to the
//!   compositor, the other end (`remote`).
//!
//! Guest-created vfds take the guest's id (`command::is_guest_id`); vfds the compositor sent
//! get ids from the host range, handed out in order and never two alike. The table holds at
//! most [`super::MAX_VFDS`] vfds and [`super::MAX_CONTEXTS`] contexts, so a guest that floods
//! `VFD_NEW` or `NEW_CTX` hits a limit, not the host's memory or fd table.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::command::{HOST_ID_MAX, HOST_ID_MIN};
use crate::EventSet;

/// Shared memory mapped into the region.
#[derive(Debug)]
pub struct Shm {
    /// The sealed memfd.
    pub fd: OwnedFd,
    /// Where it is mapped in the region.
    pub offset: u64,
}

/// Which events the device's loop watches a vfd's fd for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Watch {
    /// What is registered now (`None`: not registered).
    pub registered: Option<EventSet>,
    /// The host end hung up (HUP announced); never watched again.
    pub hung_up: bool,
    /// Reading is paused because the guest has no room for more input.
    pub parked: bool,
}

/// A vfd with an fd the device waits on.
#[derive(Debug)]
pub struct Stream {
    /// The context socket or the device's pipe end.
    pub fd: OwnedFd,
    /// For a pipe: the end the compositor gets, until the guest sends it.
    pub remote: Option<OwnedFd>,
    /// A context (socket), not a pipe.
    pub context: bool,
    /// The guest reads from it (a context, or a pipe whose local end is a read end).
    pub guest_reads: bool,
    /// The guest writes to it (a context, or a pipe whose local end is a write end).
    pub guest_writes: bool,
    /// Registration state.
    pub watch: Watch,
}

/// One vfd.
#[derive(Debug)]
pub enum Vfd {
    /// Shared memory.
    Shm(Shm),
    /// A context or a pipe.
    Stream(Stream),
}

impl Vfd {
    /// The fd that goes to the compositor when the guest sends this vfd: the memfd, the
    /// context socket, or the pipe's remote end (`None` once that was sent).
    pub fn send_fd(&self) -> Option<BorrowedFd<'_>> {
        match self {
            Vfd::Shm(shm) => Some(shm.fd.as_fd()),
            Vfd::Stream(s) if s.context => Some(s.fd.as_fd()),
            Vfd::Stream(s) => s.remote.as_ref().map(|r| r.as_fd()),
        }
    }

    /// Whether it is a context.
    pub fn is_context(&self) -> bool {
        matches!(self, Vfd::Stream(s) if s.context)
    }
}

/// Why a vfd could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableError {
    /// The id is taken.
    Exists,
    /// The vfd or context limit is reached.
    Full,
}

/// All vfds of an active device.
#[derive(Debug)]
pub struct VfdTable {
    vfds: BTreeMap<u32, Vfd>,
    /// Next host id to try.
    next_host: u32,
    max_vfds: usize,
    max_contexts: usize,
}

impl VfdTable {
    /// An empty table with these limits.
    pub fn new(max_vfds: usize, max_contexts: usize) -> Self {
        VfdTable {
            vfds: BTreeMap::new(),
            next_host: HOST_ID_MIN,
            max_vfds,
            max_contexts,
        }
    }

    /// Whether one more vfd (a context, if `context`) fits.
    pub fn has_room(&self, context: bool) -> bool {
        self.vfds.len() < self.max_vfds && (!context || self.contexts() < self.max_contexts)
    }

    /// Number of contexts.
    pub fn contexts(&self) -> usize {
        self.vfds.values().filter(|v| v.is_context()).count()
    }

    /// Number of vfds.
    pub fn len(&self) -> usize {
        self.vfds.len()
    }

    /// Whether `id` is taken.
    pub fn contains(&self, id: u32) -> bool {
        self.vfds.contains_key(&id)
    }

    /// Adds a guest-created vfd under the guest's `id`.
    pub fn insert_guest(&mut self, id: u32, vfd: Vfd) -> Result<(), TableError> {
        if self.vfds.contains_key(&id) {
            return Err(TableError::Exists);
        }
        if !self.has_room(vfd.is_context()) {
            return Err(TableError::Full);
        }
        self.vfds.insert(id, vfd);
        Ok(())
    }

    /// Adds a host-created vfd under a fresh host id.
    pub fn insert_host(&mut self, vfd: Vfd) -> Result<u32, TableError> {
        if !self.has_room(vfd.is_context()) {
            return Err(TableError::Full);
        }
        // At most max_vfds ids are taken, far fewer than the range holds: this ends.
        while self.vfds.contains_key(&self.next_host) {
            self.advance();
        }
        let id = self.next_host;
        self.advance();
        self.vfds.insert(id, vfd);
        Ok(id)
    }

    fn advance(&mut self) {
        self.next_host = if self.next_host >= HOST_ID_MAX {
            HOST_ID_MIN
        } else {
            self.next_host + 1
        };
    }

    /// The vfd `id`.
    pub fn get(&self, id: u32) -> Option<&Vfd> {
        self.vfds.get(&id)
    }

    /// The vfd `id`, mutable.
    pub fn get_mut(&mut self, id: u32) -> Option<&mut Vfd> {
        self.vfds.get_mut(&id)
    }

    /// Removes `id`.
    pub fn remove(&mut self, id: u32) -> Option<Vfd> {
        self.vfds.remove(&id)
    }

    /// Removes every vfd.
    pub fn drain(&mut self) -> Vec<(u32, Vfd)> {
        std::mem::take(&mut self.vfds).into_iter().collect()
    }

    /// Ids of the streams that are parked.
    pub fn parked(&self) -> Vec<u32> {
        self.vfds
            .iter()
            .filter_map(|(id, v)| match v {
                Vfd::Stream(s) if s.watch.parked => Some(*id),
                _ => None,
            })
            .collect()
    }
}

/// Page-granular allocation of offsets in the shared-memory region, first fit.
#[derive(Debug)]
pub struct ShmSpace {
    size: u64,
    /// Allocated ranges: offset → length.
    used: BTreeMap<u64, u64>,
}

impl ShmSpace {
    /// A region of `size` bytes (page-aligned), all free.
    pub fn new(size: u64) -> Self {
        ShmSpace {
            size,
            used: BTreeMap::new(),
        }
    }

    /// Reserves `len` bytes (page-aligned, not 0); the lowest offset that fits.
    pub fn alloc(&mut self, len: u64) -> Option<u64> {
        if len == 0 {
            return None;
        }
        let mut candidate = 0u64;
        for (&offset, &used) in &self.used {
            if candidate.checked_add(len)? <= offset {
                break;
            }
            candidate = offset + used;
        }
        if candidate.checked_add(len)? > self.size {
            return None;
        }
        self.used.insert(candidate, len);
        Some(candidate)
    }

    /// Frees the range at `offset`.
    pub fn free(&mut self, offset: u64) {
        self.used.remove(&offset);
    }

    /// Bytes reserved.
    #[cfg(test)]
    pub fn used_bytes(&self) -> u64 {
        self.used.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_fit_reuses_holes() {
        let page = 4096;
        let mut space = ShmSpace::new(8 * page);
        assert_eq!(space.alloc(2 * page), Some(0));
        assert_eq!(space.alloc(page), Some(2 * page));
        assert_eq!(space.alloc(4 * page), Some(3 * page));
        assert_eq!(space.alloc(2 * page), None);
        assert_eq!(space.alloc(page), Some(7 * page));
        space.free(0);
        assert_eq!(space.alloc(3 * page), None);
        assert_eq!(space.alloc(page), Some(0));
        assert_eq!(space.alloc(page), Some(page));
        assert_eq!(space.used_bytes(), 8 * page);
        assert_eq!(space.alloc(0), None);
        assert_eq!(ShmSpace::new(page).alloc(u64::MAX), None);
    }

    fn stream(context: bool) -> Vfd {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        Vfd::Stream(Stream {
            fd: a.into(),
            remote: None,
            context,
            guest_reads: true,
            guest_writes: true,
            watch: Watch::default(),
        })
    }

    #[test]
    fn limits_and_host_ids() {
        let mut table = VfdTable::new(4, 2);
        table.insert_guest(1, stream(true)).unwrap();
        assert_eq!(
            table.insert_guest(1, stream(false)),
            Err(TableError::Exists)
        );
        table.insert_guest(2, stream(true)).unwrap();
        assert_eq!(table.insert_guest(3, stream(true)), Err(TableError::Full));
        assert_eq!(table.insert_host(stream(false)), Ok(HOST_ID_MIN));
        assert_eq!(table.insert_host(stream(false)), Ok(HOST_ID_MIN + 1));
        assert_eq!(table.insert_host(stream(false)), Err(TableError::Full));
        assert_eq!(table.contexts(), 2);
        table.remove(HOST_ID_MIN);
        // Ids are not reused at once.
        assert_eq!(table.insert_host(stream(false)), Ok(HOST_ID_MIN + 2));
    }

    #[test]
    fn host_ids_wrap_and_skip_taken_ones() {
        let mut table = VfdTable::new(8, 8);
        table.next_host = HOST_ID_MAX;
        assert_eq!(table.insert_host(stream(false)), Ok(HOST_ID_MAX));
        assert_eq!(table.insert_host(stream(false)), Ok(HOST_ID_MIN));
        table.next_host = HOST_ID_MAX;
        assert_eq!(table.insert_host(stream(false)), Ok(HOST_ID_MIN + 1));
    }
}
