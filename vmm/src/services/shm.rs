//! A device's shared-memory region as svmm maps it: memfds the device sends, checked, mapped
//! into svmm and given to KVM as memory slots inside the device's guest-physical window.
//!
//! Only svmm can put memory in front of the guest: a worker asks (`ipc::ServiceRequest::MapShm`
//! with the fd), [`ShmMapper::map`] checks the request against the window (page-aligned,
//! inside, no overlap, the device's mapping limit, a free KVM slot) and the fd (a memfd sealed
//! against shrinking, so neither KVM nor svmm can fault on a truncated file; at least as long
//! as the mapping; open for writing and not write-sealed if the guest is to write it), maps it
//! `MAP_SHARED` (never executable) and adds the slot (`KVM_MEM_READONLY` for a read-only one).
//! Unmapping removes the slot before the memory goes. Every mapping is removed when the mapper
//! is dropped: the device's worker died or the VM ends.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::{Arc, Mutex};

use ipc::ServiceRefusal;
use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_READONLY};
use kvm_ioctls::VmFd;
use rustix::fs::{FileType, OFlags, SealFlags};

use devices::kind::ShmWindow;

/// Most mappings one device may hold (each is a KVM memory slot).
pub const MAX_MAPPINGS: usize = 512;
/// The first KVM memory slot used for shared memory (guest RAM takes 0 and 1).
pub const FIRST_SLOT: u32 = 16;
const PAGE: u64 = 4096;

/// The VM's free KVM memory slots for shared-memory mappings, shared by its devices.
#[derive(Debug)]
pub struct Slots {
    free: Mutex<Vec<u32>>,
}

impl Slots {
    /// Slots `FIRST_SLOT..limit` (`limit`: what `KVM_CAP_NR_MEMSLOTS` reports).
    pub fn new(limit: u32) -> Arc<Slots> {
        Arc::new(Slots {
            free: Mutex::new((FIRST_SLOT..limit).rev().collect()),
        })
    }

    fn take(&self) -> Option<u32> {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    fn give_back(&self, slot: u32) {
        self.free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(slot);
    }
}

/// One mapping: svmm's view of the memfd and its KVM slot.
#[derive(Debug)]
struct Mapping {
    slot: u32,
    host: usize,
    len: u64,
    writable: bool,
}

/// One device's window and what is mapped in it.
pub struct ShmMapper {
    vm: Arc<VmFd>,
    window: ShmWindow,
    slots: Arc<Slots>,
    maps: BTreeMap<u64, Mapping>,
    /// KVM supports `KVM_MEM_READONLY` slots.
    readonly_slots: bool,
}

impl ShmMapper {
    /// An empty window.
    pub fn new(vm: Arc<VmFd>, window: ShmWindow, slots: Arc<Slots>) -> ShmMapper {
        let readonly_slots = vm.check_extension(kvm_ioctls::Cap::ReadonlyMem);
        ShmMapper {
            vm,
            window,
            slots,
            maps: BTreeMap::new(),
            readonly_slots,
        }
    }

    /// The window.
    pub fn window(&self) -> ShmWindow {
        self.window
    }

    /// Number of live mappings.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.maps.len()
    }

    /// Whether nothing is mapped.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.maps.is_empty()
    }

    /// Maps the first `len` bytes of `fd` at `offset` in the window (already checked to be
    /// page-aligned and inside it by `ServiceRequest::validate`).
    pub fn map(
        &mut self,
        fd: BorrowedFd<'_>,
        offset: u64,
        len: u64,
        writable: bool,
    ) -> Result<(), ServiceRefusal> {
        let end = offset.checked_add(len).ok_or(ServiceRefusal::BadRange)?;
        if len == 0 || offset % PAGE != 0 || len % PAGE != 0 || end > self.window.len {
            return Err(ServiceRefusal::BadRange);
        }
        let overlaps = self
            .maps
            .range(..end)
            .next_back()
            .is_some_and(|(&start, m)| start + m.len > offset);
        if overlaps {
            return Err(ServiceRefusal::Overlap);
        }
        if self.maps.len() >= MAX_MAPPINGS {
            return Err(ServiceRefusal::LimitReached);
        }
        check_fd(fd, len, writable)?;
        if !writable && !self.readonly_slots {
            return Err(ServiceRefusal::MapFailed {
                errno: libc::EOPNOTSUPP,
            });
        }
        let slot = self.slots.take().ok_or(ServiceRefusal::LimitReached)?;
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        let size = usize::try_from(len).map_err(|_| ServiceRefusal::BadRange)?;
        // SAFETY: a new shared mapping chosen by the kernel (no address hint, no MAP_FIXED), of
        // a file the checks above found to be a memfd sealed against shrinking and at least
        // `len` bytes long, so every byte of it is backed; the result is checked.
        let host = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if host == libc::MAP_FAILED {
            self.slots.give_back(slot);
            return Err(ServiceRefusal::MapFailed {
                errno: std::io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::EIO),
            });
        }
        let region = kvm_userspace_memory_region {
            slot,
            flags: if writable { 0 } else { KVM_MEM_READONLY },
            guest_phys_addr: self.window.base + offset,
            memory_size: len,
            userspace_addr: host as u64,
        };
        // SAFETY: `host` is a live mapping of `len` bytes that this mapper owns until it
        // removes the slot (in `unmap` or on drop, always before munmap); the guest range lies
        // inside the device's window, which overlaps no RAM and no other window, and no other
        // mapping of this window (checked above); the slot is one no other mapping holds.
        if let Err(e) = unsafe { self.vm.set_user_memory_region(region) } {
            // SAFETY: the mapping made above, not given to KVM.
            unsafe { libc::munmap(host, size) };
            self.slots.give_back(slot);
            return Err(ServiceRefusal::MapFailed { errno: e.errno() });
        }
        self.maps.insert(
            offset,
            Mapping {
                slot,
                host: host as usize,
                len,
                writable,
            },
        );
        Ok(())
    }

    /// Removes the mapping that starts at `offset`.
    pub fn unmap(&mut self, offset: u64) -> Result<(), ServiceRefusal> {
        let mapping = self.maps.remove(&offset).ok_or(ServiceRefusal::NotMapped)?;
        self.release(offset, mapping);
        Ok(())
    }

    /// Removes every mapping.
    pub fn clear(&mut self) {
        for (offset, mapping) in std::mem::take(&mut self.maps) {
            self.release(offset, mapping);
        }
    }

    /// The slot goes first (from then on the guest sees nothing there), then svmm's mapping.
    fn release(&self, offset: u64, mapping: Mapping) {
        let region = kvm_userspace_memory_region {
            slot: mapping.slot,
            flags: if mapping.writable {
                0
            } else {
                KVM_MEM_READONLY
            },
            guest_phys_addr: self.window.base + offset,
            memory_size: 0,
            userspace_addr: mapping.host as u64,
        };
        // SAFETY: a memory size of 0 deletes the slot this mapper added; nothing else uses it.
        let removed = unsafe { self.vm.set_user_memory_region(region) }.is_ok();
        if removed {
            // SAFETY: the mapping this mapper made, no longer in any KVM slot.
            unsafe { libc::munmap(mapping.host as *mut libc::c_void, mapping.len as usize) };
            self.slots.give_back(mapping.slot);
        } else {
            // KVM still points at the memory: leave it mapped (a leak, never a dangling slot).
            eprintln!(
                "svmm: cannot remove the memory slot of a shared-memory mapping; it stays mapped"
            );
        }
    }
}

impl Drop for ShmMapper {
    fn drop(&mut self) {
        self.clear();
    }
}

/// A memfd sealed against shrinking, covering `len` bytes, writable if asked.
fn check_fd(fd: BorrowedFd<'_>, len: u64, writable: bool) -> Result<(), ServiceRefusal> {
    let stat = rustix::fs::fstat(fd).map_err(|_| ServiceRefusal::BadFd)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(ServiceRefusal::BadFd);
    }
    let seals = rustix::fs::fcntl_get_seals(fd).map_err(|_| ServiceRefusal::BadFd)?;
    if !seals.contains(SealFlags::SHRINK) {
        return Err(ServiceRefusal::BadFd);
    }
    let size = u64::try_from(stat.st_size).map_err(|_| ServiceRefusal::BadFd)?;
    if size.div_ceil(PAGE) * PAGE < len {
        return Err(ServiceRefusal::BadFd);
    }
    if writable {
        let access =
            rustix::fs::fcntl_getfl(fd).map_err(|_| ServiceRefusal::BadFd)? & OFlags::RWMODE;
        let write_sealed = seals.intersects(SealFlags::WRITE | SealFlags::FUTURE_WRITE);
        if access != OFlags::RDWR || write_sealed {
            return Err(ServiceRefusal::BadFd);
        }
    }
    Ok(())
}
