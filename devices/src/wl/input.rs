//! The host side: what the compositor sends becomes in-queue messages.
//!
//! Contexts and the device's pipe ends are registered with the loop under their vfd id. When
//! one is readable the device reads once (at most [`IN_DATA_MAX`] bytes and
//! [`MAX_SEND_VFDS`] fds), turns every fd into a host vfd (a memfd is sealed against shrinking
//! and mapped into the region by the VMM; a pipe end becomes a pipe vfd) or refuses it (closed
//! and counted), and queues `VFD_NEW`s and one `VFD_RECV` in the inbox. End of stream or a
//! hang-up queues `VFD_HUP` and ends the registration.
//!
//! While the inbox is full the device reads nothing more: a vfd that becomes ready then is
//! *parked* (taken out of the loop, so a level-triggered fd cannot spin it) until the guest
//! gives back in-queue buffers and the inbox drains.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use virtio_queue::QueueT;

use super::chain;
use super::device::{hung_up, Active};
use super::inbox::InMsg;
use super::protocol::{PAGE_SIZE, VFD_MAP, VFD_WRITE};
use super::sys::{self, Received};
use super::vfd::{Shm, Stream, Vfd, Watch};
use super::{IN_DATA_MAX, MAX_ALLOC_BYTES, MAX_SEND_VFDS, QUEUE_IN};
use crate::services::HostServices;
use crate::DeviceError;
use crate::{EventRegistry, EventSet};

impl Active {
    /// The fd of vfd `token` reported `ready`.
    pub fn on_ready(
        &mut self,
        token: u32,
        ready: EventSet,
        services: &mut dyn HostServices,
        events: &mut dyn EventRegistry,
    ) -> Result<(), DeviceError> {
        let stalled_here = self.stalled.as_ref().is_some_and(|st| st.target == token);
        if stalled_here && (ready.contains(EventSet::OUT) || hung_up(ready)) {
            self.retry_stalled(services, events)?;
        }
        let Some(Vfd::Stream(stream)) = self.vfds.get(token) else {
            return self.deliver(events);
        };
        let readable = stream.guest_reads && ready.contains(EventSet::IN);
        if !readable && !hung_up(ready) {
            return self.deliver(events);
        }
        if self.inbox.is_full() {
            self.set_parked(token, true, events);
            return self.deliver(events);
        }
        if readable {
            self.read_from(token, services, events);
        } else {
            // Hung up with nothing to read: a write end whose reader went away.
            self.hang_up(token, events);
        }
        self.deliver(events)
    }

    /// Reads once from vfd `id` (readable) and queues what came.
    fn read_from(
        &mut self,
        id: u32,
        services: &mut dyn HostServices,
        events: &mut dyn EventRegistry,
    ) {
        let Some(Vfd::Stream(stream)) = self.vfds.get(id) else {
            return;
        };
        let mut buf = std::mem::take(&mut self.buf);
        let result = if stream.context {
            sys::recv_with_fds(stream.fd.as_fd(), &mut buf[..IN_DATA_MAX])
        } else {
            sys::read(stream.fd.as_fd(), &mut buf[..IN_DATA_MAX]).map(|len| sys::Arrived {
                len,
                fds: Vec::new(),
                fds_lost: false,
            })
        };
        match result {
            Ok(arrived) if arrived.len == 0 && arrived.fds.is_empty() => self.hang_up(id, events),
            Ok(arrived) => {
                if arrived.fds_lost {
                    self.stats[usize::from(QUEUE_IN)].errors += 1;
                }
                let mut ids = Vec::with_capacity(arrived.fds.len());
                for (i, fd) in arrived.fds.into_iter().enumerate() {
                    if i >= MAX_SEND_VFDS {
                        // Alignment slack in the control buffer let a few more through.
                        self.stats[usize::from(QUEUE_IN)].errors += 1;
                        continue;
                    }
                    if let Some(host_id) = self.adopt(fd, services, events) {
                        ids.push(host_id);
                    }
                }
                self.stats[usize::from(QUEUE_IN)].bytes += arrived.len as u64;
                self.inbox.push(InMsg::Recv {
                    vfd: id,
                    ids,
                    data: buf[..arrived.len].to_vec(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => self.hang_up(id, events),
        }
        self.buf = buf;
    }

    /// Makes an fd from the compositor a host vfd and queues its `VFD_NEW`; `None` if it is
    /// refused (closed, counted).
    fn adopt(
        &mut self,
        fd: OwnedFd,
        services: &mut dyn HostServices,
        events: &mut dyn EventRegistry,
    ) -> Option<u32> {
        let refused = |active: &mut Active| {
            active.stats[usize::from(QUEUE_IN)].errors += 1;
            None
        };
        if !self.vfds.has_room(false) {
            return refused(self);
        }
        let kind = match sys::classify(fd.as_fd()) {
            Ok(kind) => kind,
            Err(_) => return refused(self),
        };
        match kind {
            Received::Shm { size, writable } => {
                if size == 0 || size > u64::from(MAX_ALLOC_BYTES) {
                    return refused(self);
                }
                let len = size.div_ceil(PAGE_SIZE) * PAGE_SIZE;
                let Some(offset) = self.space.alloc(len) else {
                    return refused(self);
                };
                if services.map_shm(fd.as_fd(), offset, len, writable).is_err() {
                    self.space.free(offset);
                    return refused(self);
                }
                let shm = Shm { fd, offset };
                let Ok(id) = self.vfds.insert_host(Vfd::Shm(shm)) else {
                    self.release_shm(offset, services);
                    return refused(self);
                };
                let flags = match (self.trans_flags, writable) {
                    (true, _) => 0,
                    (false, true) => VFD_WRITE | VFD_MAP,
                    (false, false) => VFD_MAP,
                };
                let pfn = self.pfn(offset);
                // size <= MAX_ALLOC_BYTES fits.
                let size = u32::try_from(size).unwrap_or(u32::MAX);
                self.inbox.push(InMsg::New {
                    id,
                    flags,
                    pfn,
                    size,
                });
                Some(id)
            }
            Received::Pipe { guest_reads } => {
                let stream = Stream {
                    fd,
                    remote: None,
                    context: false,
                    guest_reads,
                    guest_writes: !guest_reads,
                    watch: Watch::default(),
                };
                let Ok(id) = self.vfds.insert_host(Vfd::Stream(stream)) else {
                    return refused(self);
                };
                self.rewatch(id, events);
                let (flags, pfn) = (self.pipe_flags(guest_reads), self.no_pfn());
                self.inbox.push(InMsg::New {
                    id,
                    flags,
                    pfn,
                    size: 0,
                });
                Some(id)
            }
        }
    }

    /// The host end of `id` is gone: tell the guest once, stop watching it.
    fn hang_up(&mut self, id: u32, events: &mut dyn EventRegistry) {
        if let Some(Vfd::Stream(stream)) = self.vfds.get_mut(id) {
            if stream.watch.hung_up {
                return;
            }
            stream.watch.hung_up = true;
            self.rewatch(id, events);
            self.inbox.push(InMsg::Hup { vfd: id });
        }
    }

    fn set_parked(&mut self, id: u32, parked: bool, events: &mut dyn EventRegistry) {
        if let Some(Vfd::Stream(stream)) = self.vfds.get_mut(id) {
            stream.watch.parked = parked;
            self.rewatch(id, events);
        }
    }

    /// Brings vfd `id`'s registration in line with its state: `OUT` while a send waits on it;
    /// otherwise not watched once hung up or while parked, else `IN` if the guest reads it,
    /// and at least the hang-up/error events.
    pub fn rewatch(&mut self, id: u32, events: &mut dyn EventRegistry) {
        let stalled_here = self.stalled.as_ref().is_some_and(|st| st.target == id);
        let Some(Vfd::Stream(stream)) = self.vfds.get_mut(id) else {
            return;
        };
        let w = stream.watch;
        let reading = stream.guest_reads && !w.parked && !w.hung_up;
        let want = if stalled_here {
            // Kept even after a hang-up: the next event retries the send, which then fails
            // and is answered, so a stalled command never waits forever.
            Some(
                EventSet::OUT
                    | if reading {
                        EventSet::IN
                    } else {
                        EventSet::empty()
                    },
            )
        } else if w.hung_up || w.parked {
            None
        } else if reading {
            Some(EventSet::IN)
        } else {
            Some(EventSet::empty())
        };
        if want == w.registered {
            return;
        }
        let fd = stream.fd.as_raw_fd();
        let result = match (w.registered, want) {
            (None, Some(set)) => events.add(fd, id, set),
            (Some(_), Some(set)) => events.modify(fd, id, set),
            (Some(_), None) => events.remove(fd),
            (None, None) => Ok(()),
        };
        stream.watch.registered = if result.is_ok() { want } else { w.registered };
    }

    /// Writes waiting messages into in-queue buffers; when the inbox has room again, parked
    /// vfds are watched again.
    pub fn deliver(&mut self, events: &mut dyn EventRegistry) -> Result<(), DeviceError> {
        loop {
            self.in_queue
                .disable_notification(&self.mem)
                .map_err(DeviceError::Queue)?;
            while !self.inbox.is_empty() {
                let Some(head) = self.pop(QUEUE_IN)? else {
                    break;
                };
                let written = match chain::writable_segments(&self.mem, &self.in_source, head) {
                    Ok(segments) => match self.inbox.pop_fitting(chain::capacity(&segments)) {
                        Some(bytes) => {
                            self.stats[usize::from(QUEUE_IN)].requests += 1;
                            chain::write_segments(&self.mem, &segments, &bytes)
                        }
                        None => {
                            // A buffer too small for even a header: the guest's fault.
                            self.stats[usize::from(QUEUE_IN)].errors += 1;
                            0
                        }
                    },
                    Err(_guest_fault) => {
                        self.stats[usize::from(QUEUE_IN)].errors += 1;
                        0
                    }
                };
                // An in buffer is at most a few pages of the guest's choosing; cap the count.
                self.complete(QUEUE_IN, head, u32::try_from(written).unwrap_or(u32::MAX))?;
            }
            if self.inbox.is_empty()
                || !self
                    .in_queue
                    .enable_notification(&self.mem)
                    .map_err(DeviceError::Queue)?
            {
                break;
            }
        }
        if !self.inbox.is_full() {
            for id in self.vfds.parked() {
                self.set_parked(id, false, events);
            }
        }
        Ok(())
    }
}
