//! The out queue: each chain is copied in, parsed, executed, and answered in place.
//!
//! The loop is virtio-queue's (disable notifications, pop, answer, `add_used`, interrupt if
//! asked, enable, again if the driver added chains meanwhile), with one addition: a `VFD_SEND`
//! whose target cannot take all its bytes now (a full socket or pipe) is kept as [`Stalled`]
//! and the loop stops there, so commands keep their order. The target is then watched for
//! `EPOLLOUT`; when it drains, the send goes on, the chain is answered and the loop resumes.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use virtio_queue::QueueT;

use super::chain::{self, Segment};
use super::command::{self, Command};
use super::device::{Active, Stalled};
use super::protocol::{
    encode_status, encode_vfd_new, PAGE_SIZE, RESP_ERR, RESP_INVALID_CMD, RESP_INVALID_ID,
    RESP_INVALID_TYPE, RESP_OK, RESP_OUT_OF_MEMORY, RESP_VFD_NEW, VFD_READ,
};
use super::sys;
use super::vfd::{Shm, Stream, TableError, Vfd, Watch};
use super::{MAX_COMMAND_BYTES, QUEUE_OUT};
use crate::services::{HostServices, ServiceError, ServiceRefusal};
use crate::DeviceError;
use crate::EventRegistry;

/// What executing a command came to.
enum Outcome {
    /// Answer with these bytes.
    Answer(Vec<u8>),
    /// A send that has to wait.
    Stall(Stalled),
}

/// How far a send got.
enum Progress {
    /// Everything went.
    Done,
    /// `n` bytes (and the vfds, if any) went; the rest has to wait.
    Partial(usize),
    /// Nothing went; try again when writable.
    Blocked,
    /// The target failed (peer gone); answer `RESP_ERR`.
    Failed,
}

impl Active {
    /// Runs every available out-queue command, unless one is stalled.
    pub fn process_out(
        &mut self,
        services: &mut dyn HostServices,
        events: &mut dyn EventRegistry,
    ) -> Result<(), DeviceError> {
        while self.stalled.is_none() {
            self.out_queue
                .disable_notification(&self.mem)
                .map_err(DeviceError::Queue)?;
            while self.stalled.is_none() {
                let Some(head) = self.pop(QUEUE_OUT)? else {
                    break;
                };
                self.stats[usize::from(QUEUE_OUT)].requests += 1;
                let copied =
                    chain::copy_out_chain(&self.mem, &self.out_source, head, MAX_COMMAND_BYTES);
                let out = match copied {
                    Ok(out) => out,
                    Err(_guest_fault) => {
                        self.stats[usize::from(QUEUE_OUT)].errors += 1;
                        self.complete(QUEUE_OUT, head, 0)?;
                        continue;
                    }
                };
                let outcome = match command::parse(&out.command, self.trans_flags) {
                    Ok(cmd) => self.execute(cmd, head, &out.response, services, events),
                    Err(refusal) => Outcome::Answer(encode_status(refusal.code())),
                };
                match outcome {
                    Outcome::Answer(bytes) => self.answer(head, &out.response, &bytes)?,
                    Outcome::Stall(stalled) => {
                        let target = stalled.target;
                        self.stalled = Some(stalled);
                        self.rewatch(target, events);
                    }
                }
            }
            if self.stalled.is_some()
                || !self
                    .out_queue
                    .enable_notification(&self.mem)
                    .map_err(DeviceError::Queue)?
            {
                break;
            }
        }
        Ok(())
    }

    /// Writes `bytes` as the response of chain `head` and completes it. A response that is
    /// not `RESP_OK` / `RESP_VFD_NEW` counts as an out-queue error.
    fn answer(&mut self, head: u16, response: &[Segment], bytes: &[u8]) -> Result<(), DeviceError> {
        let code = bytes
            .get(..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        if !matches!(code, Some(RESP_OK | RESP_VFD_NEW)) {
            self.stats[usize::from(QUEUE_OUT)].errors += 1;
        }
        let written = chain::write_segments(&self.mem, response, bytes);
        // At most a few dozen bytes.
        self.complete(QUEUE_OUT, head, u32::try_from(written).unwrap_or(0))
    }

    fn execute(
        &mut self,
        cmd: Command,
        head: u16,
        response: &[Segment],
        services: &mut dyn HostServices,
        events: &mut dyn EventRegistry,
    ) -> Outcome {
        let status = |code| Outcome::Answer(encode_status(code));
        match cmd {
            Command::New { id, flags, size } => self.new_shm(id, flags, size, services),
            Command::Close { id } => {
                if self.close_vfd(id, services, events) {
                    status(RESP_OK)
                } else {
                    status(RESP_INVALID_ID)
                }
            }
            Command::Send { id, vfds, data } => {
                let stalled = Stalled {
                    head,
                    response: response.to_vec(),
                    target: id,
                    data,
                    vfds,
                };
                self.send(stalled)
            }
            Command::NewCtx { id, name } => self.new_context(id, &name, services, events),
            Command::NewPipe { id, flags } => self.new_pipe(id, flags, events),
            Command::Unsupported { .. } => status(RESP_INVALID_CMD),
        }
    }

    /// `VFD_NEW`: a sealed memfd, mapped into the region by the VMM.
    fn new_shm(
        &mut self,
        id: u32,
        flags: u32,
        size: u32,
        services: &mut dyn HostServices,
    ) -> Outcome {
        let status = |code| Outcome::Answer(encode_status(code));
        if self.vfds.contains(id) {
            return status(RESP_INVALID_ID);
        }
        if !self.vfds.has_room(false) {
            return status(RESP_OUT_OF_MEMORY);
        }
        // size <= MAX_ALLOC_BYTES, far from overflowing.
        let len = u64::from(size).div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let Some(offset) = self.space.alloc(len) else {
            return status(RESP_OUT_OF_MEMORY);
        };
        let fd = match sys::sealed_memfd(len) {
            Ok(fd) => fd,
            Err(_) => {
                self.space.free(offset);
                return status(RESP_OUT_OF_MEMORY);
            }
        };
        if let Err(e) = services.map_shm(fd.as_fd(), offset, len, true) {
            self.space.free(offset);
            return status(refusal_code(&e));
        }
        let shm = Shm { fd, offset };
        if self.vfds.insert_guest(id, Vfd::Shm(shm)).is_err() {
            // Checked above; undo the mapping all the same.
            self.release_shm(offset, services);
            return status(RESP_OUT_OF_MEMORY);
        }
        // len <= MAX_ALLOC_BYTES fits a u32.
        let size = u32::try_from(len).unwrap_or(u32::MAX);
        Outcome::Answer(encode_vfd_new(
            RESP_VFD_NEW,
            id,
            flags,
            self.pfn(offset),
            size,
        ))
    }

    /// Unmaps a range and frees it; a range the VMM would not unmap stays reserved, so it is
    /// never handed out twice.
    pub fn release_shm(&mut self, offset: u64, services: &mut dyn HostServices) {
        if services.unmap_shm(offset).is_ok() {
            self.space.free(offset);
        } else {
            self.stats[usize::from(QUEUE_OUT)].errors += 1;
        }
    }

    /// Closes vfd `id` and what only it could have delivered. `false` if there is no such vfd.
    pub fn close_vfd(
        &mut self,
        id: u32,
        services: &mut dyn HostServices,
        events: &mut dyn EventRegistry,
    ) -> bool {
        let Some(vfd) = self.vfds.remove(id) else {
            return false;
        };
        match vfd {
            Vfd::Shm(shm) => self.release_shm(shm.offset, services),
            Vfd::Stream(stream) => {
                if stream.watch.registered.is_some() {
                    // The fd is closed right after, which also ends the registration.
                    let _ = events.remove(stream.fd.as_raw_fd());
                }
                if stream.context {
                    drop(stream);
                    // Best effort: the VMM's count of open connections goes down.
                    let _ = services.disconnected();
                }
            }
        }
        for orphan in self.inbox.forget(id) {
            self.close_vfd(orphan, services, events);
        }
        true
    }

    /// Closes every vfd (reset).
    pub fn close_all(&mut self, services: &mut dyn HostServices) {
        self.stalled = None;
        self.inbox.clear();
        for (_, vfd) in self.vfds.drain() {
            match vfd {
                Vfd::Shm(shm) => self.release_shm(shm.offset, services),
                Vfd::Stream(stream) if stream.context => {
                    drop(stream);
                    let _ = services.disconnected();
                }
                Vfd::Stream(_) => {}
            }
        }
    }

    /// `VFD_NEW_CTX` / `VFD_NEW_CTX_NAMED`: a connection the VMM makes.
    fn new_context(
        &mut self,
        id: u32,
        name: &str,
        services: &mut dyn HostServices,
        events: &mut dyn EventRegistry,
    ) -> Outcome {
        let status = |code| Outcome::Answer(encode_status(code));
        if !name.is_empty() {
            // Only the default socket is served.
            return status(RESP_ERR);
        }
        if self.vfds.contains(id) {
            return status(RESP_INVALID_ID);
        }
        if !self.vfds.has_room(true) {
            return status(RESP_OUT_OF_MEMORY);
        }
        let socket = match services.connect() {
            Ok(socket) => socket,
            Err(e) => return status(refusal_code(&e)),
        };
        if sys::set_nonblocking(&socket).is_err() {
            return status(RESP_ERR);
        }
        let stream = Stream {
            fd: socket,
            remote: None,
            context: true,
            guest_reads: true,
            guest_writes: true,
            watch: Watch::default(),
        };
        match self.vfds.insert_guest(id, Vfd::Stream(stream)) {
            Ok(()) => {}
            Err(TableError::Exists) => return status(RESP_INVALID_ID),
            Err(TableError::Full) => return status(RESP_OUT_OF_MEMORY),
        }
        self.rewatch(id, events);
        let (flags, pfn) = (self.context_flags(), self.no_pfn());
        Outcome::Answer(encode_vfd_new(RESP_VFD_NEW, id, flags, pfn, 0))
    }

    /// `VFD_NEW_PIPE`: the guest reads (`VFD_READ`) or writes the device's end.
    fn new_pipe(&mut self, id: u32, flags: u32, events: &mut dyn EventRegistry) -> Outcome {
        let status = |code| Outcome::Answer(encode_status(code));
        if self.vfds.contains(id) {
            return status(RESP_INVALID_ID);
        }
        if !self.vfds.has_room(false) {
            return status(RESP_OUT_OF_MEMORY);
        }
        let guest_reads = flags == VFD_READ;
        let Ok((local, remote)) = sys::pipe(guest_reads) else {
            return status(RESP_OUT_OF_MEMORY);
        };
        let stream = Stream {
            fd: local,
            remote: Some(remote),
            context: false,
            guest_reads,
            guest_writes: !guest_reads,
            watch: Watch::default(),
        };
        if self.vfds.insert_guest(id, Vfd::Stream(stream)).is_err() {
            return status(RESP_OUT_OF_MEMORY);
        }
        self.rewatch(id, events);
        let (flags, pfn) = (self.pipe_flags(guest_reads), self.no_pfn());
        Outcome::Answer(encode_vfd_new(RESP_VFD_NEW, id, flags, pfn, 0))
    }

    /// `VFD_SEND` (first attempt or a retry): as much as the target takes now.
    fn send(&mut self, mut st: Stalled) -> Outcome {
        let status = |code| Outcome::Answer(encode_status(code));
        let progress = match self.try_send(&st) {
            Ok(progress) => progress,
            Err(code) => return status(code),
        };
        match progress {
            Progress::Done => {
                self.sent(&st);
                self.stats[usize::from(QUEUE_OUT)].bytes += st.data.len() as u64;
                status(RESP_OK)
            }
            Progress::Partial(n) => {
                self.sent(&st);
                self.stats[usize::from(QUEUE_OUT)].bytes += n as u64;
                st.vfds.clear();
                st.data.drain(..n);
                Outcome::Stall(st)
            }
            Progress::Blocked => Outcome::Stall(st),
            Progress::Failed => status(RESP_ERR),
        }
    }

    /// One send attempt. `Err(code)`: refused before anything went.
    fn try_send(&self, st: &Stalled) -> Result<Progress, u32> {
        let Some(Vfd::Stream(target)) = self.vfds.get(st.target) else {
            return Err(match self.vfds.get(st.target) {
                None => RESP_INVALID_ID,
                Some(_) => RESP_INVALID_TYPE,
            });
        };
        let mut fds: Vec<BorrowedFd<'_>> = Vec::with_capacity(st.vfds.len());
        for id in &st.vfds {
            let vfd = self.vfds.get(*id).ok_or(RESP_INVALID_ID)?;
            fds.push(vfd.send_fd().ok_or(RESP_INVALID_TYPE)?);
        }
        let result = if target.context {
            if st.data.is_empty() {
                // A stream socket cannot carry fds without a byte.
                return if fds.is_empty() {
                    Ok(Progress::Done)
                } else {
                    Err(RESP_INVALID_TYPE)
                };
            }
            sys::send_with_fds(target.fd.as_fd(), &st.data, &fds)
        } else if target.guest_writes && fds.is_empty() {
            if st.data.is_empty() {
                return Ok(Progress::Done);
            }
            sys::write(target.fd.as_fd(), &st.data)
        } else {
            return Err(RESP_INVALID_TYPE);
        };
        Ok(match result {
            Ok(n) if n >= st.data.len() => Progress::Done,
            Ok(n) => Progress::Partial(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Progress::Blocked,
            Err(_) => Progress::Failed,
        })
    }

    /// The vfds of `st` reached the compositor: pipe ends we held for it are closed here, so
    /// the device's own end sees the hang-up when the compositor closes its copy.
    fn sent(&mut self, st: &Stalled) {
        for id in &st.vfds {
            if let Some(Vfd::Stream(stream)) = self.vfds.get_mut(*id) {
                if !stream.context {
                    stream.remote = None;
                }
            }
        }
    }

    /// The stalled send's target became writable (or failed): go on, and if it finished,
    /// answer it and resume the out queue.
    pub fn retry_stalled(
        &mut self,
        services: &mut dyn HostServices,
        events: &mut dyn EventRegistry,
    ) -> Result<(), DeviceError> {
        let Some(st) = self.stalled.take() else {
            return Ok(());
        };
        let (head, response, target) = (st.head, st.response.clone(), st.target);
        match self.send(st) {
            Outcome::Stall(st) => {
                self.stalled = Some(st);
                Ok(())
            }
            Outcome::Answer(bytes) => {
                self.rewatch(target, events);
                self.answer(head, &response, &bytes)?;
                self.process_out(services, events)
            }
        }
    }
}

/// The guest answer for a failed service request: limits and refused mappings read as "out
/// of memory", anything else as a device error.
fn refusal_code(e: &ServiceError) -> u32 {
    match e {
        ServiceError::Refused(ServiceRefusal::LimitReached)
        | ServiceError::Refused(ServiceRefusal::Overlap)
        | ServiceError::Refused(ServiceRefusal::MapFailed { .. }) => RESP_OUT_OF_MEMORY,
        _ => RESP_ERR,
    }
}
