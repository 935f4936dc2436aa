//! Host services svmm performs for a device that its kind declared: connections to a socket
//! (`HostResource::SocketPath`) and mappings into the device's shared-memory region
//! (`Kind::shm_region`). Kind-agnostic: nothing here knows what the device is.
//!
//! A device with services gets a service channel (`ipc::service`, SEQPACKET, its own next to
//! the control channel); one `svc-DEVICE` thread per such device answers it, one request at a
//! time, under its own seccomp profile (`vmm_service`: the unix socket it connects, the KVM
//! memory-slot ioctl, `mmap` of the memfds, nothing else). Every request is untrusted: it is
//! validated against what the kind declared (`ServiceRequest::validate`, the fd count, the
//! fd itself in [`shm::ShmMapper::map`]) before svmm acts, and refused with a reason otherwise.
//!
//! ```text
//!   device (worker or thread)        svc-wayland#0 (svmm)
//!     Connect ─────────────────────▶ VM's open connections < limit? connect(2) to the declared
//!     ◀──────────── Connected + fd ─   path (non-blocking, close-on-exec), hand it over
//!     MapShm + memfd ──────────────▶ ShmMapper::map: checks, mmap, KVM memory slot
//!     UnmapShm ────────────────────▶ slot removed, munmap
//!     Disconnected ────────────────▶ the VM's count goes down
//!     (channel closed: worker dead, VM ending) → every mapping removed, its connections
//!                                                 released from the count
//! ```
//!
//! Each worker of the device gets a channel of its own, made by the device's `svc-` thread
//! (its filter allows a `socketpair` of `AF_UNIX` `SOCK_SEQPACKET` sockets; svmm's other
//! threads may not make one) and parked on a hand-off socket, whose other end is the device's
//! [`ServiceLink`]: whoever starts a worker ([`crate::sandboxed::Sandbox::start`] — the main
//! thread at set-up, a monitor thread on restart — passes it in the broker's `Start`; the
//! set-up of an in-process device builds the backend with it) takes the parked end
//! ([`ServiceLink::take`]: a `poll` and a `recvmsg`). The thread serves one channel at a time:
//! when it closes (the worker died, or its start failed and the parked end was dropped) it
//! removes what that worker held and only then makes and parks the next channel — so a
//! restarted worker (`--on-worker-exit=restart`) finds the region empty and the VM's count
//! without its predecessor's connections. The first channel is parked before any thread exists
//! ([`DeviceServices::new`]). The thread ends when the hand-off socket closes (the VM ends).
//!
//! `Connect` runs as svmm's own uid: as root, svmm has dropped to the last id of
//! `--worker-ids` before its devices start, so the compositor's socket must be one that uid
//! may connect to. svmm checks that once, after the drop and before any device starts
//! ([`check_reachable`]), and refuses in one line otherwise.
//!
//! The per-VM limit on open connections counts what svmm handed out less what the device says
//! it closed; svmm keeps no copy of a connection (the compositor sees it close when the device
//! or its worker does).

pub mod shm;

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use broker::HostResource;
use ipc::{Channel, ChannelError, ServiceRefusal, ServiceReply, ServiceRequest};
use kvm_ioctls::VmFd;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use devices::kind::ShmWindow;

use crate::device_spec::DeviceSpec;
use crate::fd_wait::wait_readable;
use crate::layout::{shm_windows_start, SHM_WINDOW_ALIGN};
use crate::self_confine::{self, ThreadRole};
use shm::{ShmMapper, Slots};
use worker::report::one_line;

/// Most connections the devices of one VM may hold open at once.
pub const MAX_CONNECTIONS_PER_VM: usize = 32;

/// Where each device's shared-memory region lies (`None` for a device without one): one window
/// after another from `layout::shm_windows_start` above `ram_size` bytes of RAM, each aligned
/// to `SHM_WINDOW_ALIGN`. The same for device set-up and `--print-sandbox`.
pub fn windows(devices: &[DeviceSpec], ram_size: u64) -> Vec<Option<ShmWindow>> {
    let mut next = shm_windows_start(ram_size);
    devices
        .iter()
        .map(|spec| {
            spec.config.shm_region().map(|len| {
                let window = ShmWindow { base: next, len };
                next = (next + len).div_ceil(SHM_WINDOW_ALIGN) * SHM_WINDOW_ALIGN;
                window
            })
        })
        .collect()
}

/// The VM's count of open connections, shared by its devices.
#[derive(Debug)]
pub struct Connections {
    open: Mutex<usize>,
    max: usize,
}

impl Connections {
    /// A count of 0 with limit `max`.
    pub fn new(max: usize) -> Arc<Connections> {
        Arc::new(Connections {
            open: Mutex::new(0),
            max,
        })
    }

    fn acquire(&self) -> bool {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if *open >= self.max {
            return false;
        }
        *open += 1;
        true
    }

    fn release(&self, n: usize) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        *open = open.saturating_sub(n);
    }

    /// Connections open now.
    #[cfg(test)]
    pub fn open(&self) -> usize {
        *self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What svmm's side of every device's host services shares: the VM (for memory slots), its
/// free slots and its count of open connections.
pub struct VmServices {
    vm: Arc<VmFd>,
    slots: Arc<Slots>,
    connections: Arc<Connections>,
}

impl VmServices {
    /// For the devices of `vm`: as many memory slots as KVM has, [`MAX_CONNECTIONS_PER_VM`].
    pub fn new(vm: &Arc<VmFd>) -> VmServices {
        let limit = u32::try_from(vm.check_extension_int(kvm_ioctls::Cap::NrMemslots)).unwrap_or(0);
        VmServices {
            vm: vm.clone(),
            slots: Slots::new(limit),
            connections: Connections::new(MAX_CONNECTIONS_PER_VM),
        }
    }

    /// The host services of device `name` with shared-memory window `window`, if its kind
    /// declares any: svmm's side (not started) and the link its workers' service channels come
    /// through, the first channel parked on it.
    pub fn of(
        &self,
        name: &str,
        spec: &DeviceSpec,
        window: Option<ShmWindow>,
    ) -> io::Result<Option<(DeviceServices, ServiceLink)>> {
        if !spec.config.has_services() {
            return Ok(None);
        }
        let socket = spec.config.resources().into_iter().find_map(|r| match r {
            HostResource::SocketPath { path } => Some(path),
            _ => None,
        });
        let shm = window.map(|w| ShmMapper::new(self.vm.clone(), w, self.slots.clone()));
        DeviceServices::new(name.to_string(), socket, shm, self.connections.clone()).map(Some)
    }
}

/// What starts the workers of a device with services holds: the receiving end of the hand-off
/// socket on which the device's `svc-` thread parks each worker's service channel.
pub struct ServiceLink {
    handoff: Channel,
}

/// The one message on a hand-off socket (never empty: a zero-length datagram reads as EOF).
const HANDOFF: u8 = 1;

impl ServiceLink {
    /// The device's end of the service channel for its next worker, parked by the `svc-` thread
    /// (which serves the other end); waits up to `timeout` for the thread to have released what
    /// the previous worker held and parked it.
    pub fn take(&self, timeout: Duration) -> io::Result<OwnedFd> {
        if !wait_readable(self.handoff.as_fd(), timeout)? {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the host-services thread parked none within {timeout:?}"),
            ));
        }
        match self.handoff.recv::<u8>() {
            Ok((HANDOFF, fds)) => <[OwnedFd; 1]>::try_from(fds)
                .map(|[fd]| fd)
                .map_err(|_| io::Error::other("a hand-off without its channel")),
            Ok(_) => Err(io::Error::other("an unknown hand-off")),
            Err(ChannelError::PeerGone) => Err(io::Error::other("the host-services thread ended")),
            Err(e) => Err(io::Error::other(e)),
        }
    }
}

/// One device's services and the state they hold.
pub struct DeviceServices {
    /// `wayland#0`.
    pub name: String,
    /// Where each of the device's workers' service channels is parked ([`ServiceLink`]).
    handoff: Channel,
    /// svmm's end of the channel parked last, served next.
    next: Option<Channel>,
    /// The socket `Connect` connects to, if the kind declared one.
    pub socket: Option<PathBuf>,
    /// The device's shared-memory region, if the kind declared one.
    pub shm: Option<ShmMapper>,
    /// The VM's connection count.
    pub connections: Arc<Connections>,
    /// Connections handed to this device and not reported closed.
    handed: usize,
}

impl DeviceServices {
    /// The services of device `name`, and the link its workers' channels come through, with
    /// the first worker's channel parked on it.
    pub fn new(
        name: String,
        socket: Option<PathBuf>,
        shm: Option<ShmMapper>,
        connections: Arc<Connections>,
    ) -> io::Result<(Self, ServiceLink)> {
        let (handoff, link) = Channel::pair().map_err(io::Error::other)?;
        let mut services = DeviceServices {
            name,
            handoff,
            next: None,
            socket,
            shm,
            connections,
            handed: 0,
        };
        services.next = services.park();
        if services.next.is_none() {
            return Err(io::Error::other("cannot park the first service channel"));
        }
        Ok((services, ServiceLink { handoff: link }))
    }

    /// Answers requests on a `svc-DEVICE` thread until the channel closes.
    pub fn spawn(self) -> io::Result<JoinHandle<()>> {
        thread::Builder::new()
            .name(format!("svc-{}", self.name))
            .spawn(move || {
                if let Err(e) = self_confine::enter(ThreadRole::Service) {
                    eprintln!("svmm: {}: host services: {}", self.name, one_line(&e));
                    return;
                }
                self.serve();
            })
    }

    /// Serves each worker's channel in turn until the hand-off socket closes.
    pub fn serve(mut self) {
        while let Some(channel) = self.next.take() {
            self.serve_channel(&channel);
            drop(channel);
            self.next = self.park();
        }
    }

    /// Makes the next worker's channel and parks the device's end on the hand-off socket;
    /// svmm's end, or `None` once the link is gone (the VM ends).
    fn park(&self) -> Option<Channel> {
        let (svmm, device) = Channel::pair().ok()?;
        self.handoff.send(&HANDOFF, &[device.as_fd()]).ok()?;
        Some(svmm)
    }

    /// Answers requests until `channel` closes, then removes what its worker held.
    fn serve_channel(&mut self, channel: &Channel) {
        loop {
            let (request, fds) = match channel.recv::<ServiceRequest>() {
                Ok(message) => message,
                Err(ChannelError::PeerGone) => break,
                Err(e) => {
                    eprintln!(
                        "svmm: {}: service channel: {}; no more host services for its worker",
                        self.name,
                        one_line(&e)
                    );
                    break;
                }
            };
            let (reply, out) = self.answer(request, &fds);
            drop(fds);
            let out: Vec<BorrowedFd<'_>> = out.iter().map(AsFd::as_fd).collect();
            if channel.send(&reply, &out).is_err() {
                break;
            }
        }
        // The worker is gone (it died, the VM ends) or broke its channel: what it held goes
        // with it.
        if let Some(shm) = &mut self.shm {
            shm.clear();
        }
        self.connections.release(self.handed);
        self.handed = 0;
    }

    /// One request, validated, performed: the reply and its fds.
    pub fn answer(
        &mut self,
        request: ServiceRequest,
        fds: &[OwnedFd],
    ) -> (ServiceReply, Vec<OwnedFd>) {
        let refused = |r| (ServiceReply::Refused(r), Vec::new());
        let region = self.shm.as_ref().map_or(0, |m| m.window().len);
        if let Err(r) = request.validate(region) {
            return refused(r);
        }
        if fds.len() != request.fd_count() {
            return refused(ServiceRefusal::BadFd);
        }
        match request {
            ServiceRequest::Connect => {
                let Some(path) = &self.socket else {
                    return refused(ServiceRefusal::NotDeclared);
                };
                if !self.connections.acquire() {
                    return refused(ServiceRefusal::LimitReached);
                }
                match connect(path) {
                    Ok(socket) => {
                        self.handed += 1;
                        (ServiceReply::Connected, vec![socket])
                    }
                    Err(errno) => {
                        self.connections.release(1);
                        refused(ServiceRefusal::ConnectFailed { errno })
                    }
                }
            }
            ServiceRequest::MapShm {
                offset,
                len,
                writable,
            } => match (&mut self.shm, fds.first()) {
                (Some(shm), Some(fd)) => match shm.map(fd.as_fd(), offset, len, writable) {
                    Ok(()) => (ServiceReply::Mapped, Vec::new()),
                    Err(r) => refused(r),
                },
                (None, _) => refused(ServiceRefusal::NotDeclared),
                (Some(_), None) => refused(ServiceRefusal::BadFd),
            },
            ServiceRequest::UnmapShm { offset } => match &mut self.shm {
                Some(shm) => match shm.unmap(offset) {
                    Ok(()) => (ServiceReply::Unmapped, Vec::new()),
                    Err(r) => refused(r),
                },
                None => refused(ServiceRefusal::NotDeclared),
            },
            ServiceRequest::Disconnected => {
                if self.handed > 0 {
                    self.handed -= 1;
                    self.connections.release(1);
                }
                (ServiceReply::Released, Vec::new())
            }
        }
    }
}

/// Whether svmm, now running as `uid` (root dropped to it), may connect to `path`: one
/// connection, closed at once; why not (`EACCES` for a socket or directory it may not use), in
/// words for the user, if not.
pub fn check_reachable(path: &std::path::Path, uid: u32) -> Result<(), String> {
    connect(path).map(drop).map_err(|errno| {
        format!(
            "svmm connects to it as its own uid {uid} (as root, svmm becomes the last id of \
             --worker-ids once KVM is open), which cannot: {}; let that uid reach the socket \
             (search on its directories, write on the socket) or run svmm as the compositor's \
             user",
            io::Error::from_raw_os_error(errno)
        )
    })
}

/// A new non-blocking, close-on-exec connection to the unix socket `path`; the errno if not.
fn connect(path: &std::path::Path) -> Result<OwnedFd, i32> {
    let errno = |e: rustix::io::Errno| e.raw_os_error();
    let address = SocketAddrUnix::new(path).map_err(errno)?;
    let socket = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .map_err(errno)?;
    loop {
        match rustix::net::connect(&socket, &address) {
            Err(rustix::io::Errno::INTR) => continue,
            result => break result.map_err(errno)?,
        }
    }
    Ok(socket)
}

#[cfg(test)]
mod tests;
