//! Host services a backend may ask the VMM for, when its kind declared them.
//!
//! A confined worker cannot open sockets or touch KVM. A device that needs a connection to a
//! host socket (virtio-wl's compositor) or guest-visible shared memory (virtio-wl's buffers in
//! its virtio-mmio shared-memory region) asks through [`HostServices`]; the VMM validates each
//! request against what the kind declared and answers. The backend gets the handle when it is
//! built, like its other host resources, and never knows whether it runs in a worker or a
//! thread: both talk to the VMM over the same service channel (`ipc::service`).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

pub use ipc::ServiceRefusal;
use ipc::{Channel, ChannelError, ServiceReply, ServiceRequest};

/// How long the device waits for the VMM's answer before it gives the channel up.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a service request failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The VMM refused it (a limit, a bad range, a failed connect).
    #[error("refused: {0}")]
    Refused(#[from] ServiceRefusal),
    /// The service channel broke (the VMM is gone or answered nonsense); no later request
    /// will succeed.
    #[error("service channel failed: {0}")]
    Channel(String),
}

/// The services of the device's kind, as the device sees them.
pub trait HostServices: Send {
    /// A new connection to the socket the kind declared (non-blocking, close-on-exec).
    fn connect(&mut self) -> Result<OwnedFd, ServiceError>;
    /// Maps the first `len` bytes of `fd` (a memfd sealed against shrinking) at `offset` in
    /// the device's shared-memory region; the guest may write it if `writable`.
    fn map_shm(
        &mut self,
        fd: BorrowedFd<'_>,
        offset: u64,
        len: u64,
        writable: bool,
    ) -> Result<(), ServiceError>;
    /// Removes the mapping that starts at `offset`.
    fn unmap_shm(&mut self, offset: u64) -> Result<(), ServiceError>;
    /// Tells the VMM the device closed one of the connections [`connect`](Self::connect) made,
    /// so that it no longer counts against the VM's limit.
    fn disconnected(&mut self) -> Result<(), ServiceError>;
}

/// A device without host services: every request is refused with
/// [`ServiceRefusal::NotDeclared`].
#[derive(Debug, Default, Clone, Copy)]
pub struct NoServices;

impl HostServices for NoServices {
    fn connect(&mut self) -> Result<OwnedFd, ServiceError> {
        Err(ServiceRefusal::NotDeclared.into())
    }

    fn map_shm(
        &mut self,
        _fd: BorrowedFd<'_>,
        _offset: u64,
        _len: u64,
        _writable: bool,
    ) -> Result<(), ServiceError> {
        Err(ServiceRefusal::NotDeclared.into())
    }

    fn unmap_shm(&mut self, _offset: u64) -> Result<(), ServiceError> {
        Err(ServiceRefusal::NotDeclared.into())
    }

    fn disconnected(&mut self) -> Result<(), ServiceError> {
        Err(ServiceRefusal::NotDeclared.into())
    }
}

/// [`HostServices`] over the service channel to the VMM (`ipc::service`): one request, one
/// reply, in order. The device's side, in a worker and in an in-process device alike. After a
/// failure of the channel itself (the VMM gone, an answer that does not fit the question, no
/// answer within 5 s) every later request fails at once.
#[derive(Debug)]
pub struct ChannelServices {
    channel: Channel,
    broken: bool,
}

impl ChannelServices {
    /// Services over `channel` (the device's end of its service channel), which this makes
    /// blocking with a 5 s timeout on each receive and send (`SO_RCVTIMEO`, `SO_SNDTIMEO`):
    /// waiting for the reply needs no `poll`, which a device's filter does not allow. Called
    /// while the device is built, before any filter.
    pub fn new(channel: Channel) -> Result<Self, ChannelError> {
        Self::with_timeout(channel, REPLY_TIMEOUT)
    }

    fn with_timeout(channel: Channel, timeout: Duration) -> Result<Self, ChannelError> {
        use rustix::net::sockopt::{set_socket_timeout, Timeout};
        channel.set_nonblocking(false)?;
        for which in [Timeout::Recv, Timeout::Send] {
            set_socket_timeout(&channel, which, Some(timeout)).map_err(|e| ChannelError::Io {
                op: "setsockopt(SO_RCVTIMEO/SO_SNDTIMEO)",
                source: e.into(),
            })?;
        }
        Ok(ChannelServices {
            channel,
            broken: false,
        })
    }

    /// Sends `request` with `fds` and waits for the reply and its fds.
    fn call(
        &mut self,
        request: ServiceRequest,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(ServiceReply, Vec<OwnedFd>), ServiceError> {
        if self.broken {
            return Err(ServiceError::Channel("broken earlier".into()));
        }
        let result = self.exchange(request, fds);
        if result.is_err() {
            self.broken = true;
        }
        result
    }

    fn exchange(
        &self,
        request: ServiceRequest,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(ServiceReply, Vec<OwnedFd>), ServiceError> {
        let fail = |e: &dyn std::fmt::Display| ServiceError::Channel(e.to_string());
        let timed_out = |what| ServiceError::Channel(format!("no {what} within the timeout"));
        match self.channel.send(&request, fds) {
            Err(ChannelError::WouldBlock) => return Err(timed_out("room for the request")),
            other => other.map_err(|e| fail(&e))?,
        }
        let (reply, fds) = match self.channel.recv::<ServiceReply>() {
            Err(ChannelError::WouldBlock) => return Err(timed_out("reply")),
            other => other.map_err(|e| fail(&e))?,
        };
        if fds.len() != reply.fd_count() {
            return Err(ServiceError::Channel(format!(
                "{reply:?} came with {} fds",
                fds.len()
            )));
        }
        Ok((reply, fds))
    }
}

/// The answer `want` (with its fds), a refusal, or a broken channel.
fn expect(
    got: (ServiceReply, Vec<OwnedFd>),
    want: ServiceReply,
) -> Result<Vec<OwnedFd>, ServiceError> {
    match got {
        (ServiceReply::Refused(refusal), _) => Err(ServiceError::Refused(refusal)),
        (reply, fds) if reply == want => Ok(fds),
        (reply, _) => Err(ServiceError::Channel(format!(
            "asked for {want:?}, got {reply:?}"
        ))),
    }
}

impl HostServices for ChannelServices {
    fn connect(&mut self) -> Result<OwnedFd, ServiceError> {
        let got = self.call(ServiceRequest::Connect, &[])?;
        let result = expect(got, ServiceReply::Connected);
        if matches!(result, Err(ServiceError::Channel(_))) {
            self.broken = true;
        }
        result?
            .pop()
            .ok_or_else(|| ServiceError::Channel("Connected without an fd".into()))
    }

    fn map_shm(
        &mut self,
        fd: BorrowedFd<'_>,
        offset: u64,
        len: u64,
        writable: bool,
    ) -> Result<(), ServiceError> {
        let request = ServiceRequest::MapShm {
            offset,
            len,
            writable,
        };
        let got = self.call(request, &[fd])?;
        let result = expect(got, ServiceReply::Mapped).map(drop);
        if matches!(result, Err(ServiceError::Channel(_))) {
            self.broken = true;
        }
        result
    }

    fn unmap_shm(&mut self, offset: u64) -> Result<(), ServiceError> {
        let got = self.call(ServiceRequest::UnmapShm { offset }, &[])?;
        let result = expect(got, ServiceReply::Unmapped).map(drop);
        if matches!(result, Err(ServiceError::Channel(_))) {
            self.broken = true;
        }
        result
    }

    fn disconnected(&mut self) -> Result<(), ServiceError> {
        let got = self.call(ServiceRequest::Disconnected, &[])?;
        let result = expect(got, ServiceReply::Released).map(drop);
        if matches!(result, Err(ServiceError::Channel(_))) {
            self.broken = true;
        }
        result
    }
}

impl AsFd for ChannelServices {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.channel.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use super::*;

    /// Plays the VMM: answers each request with `answer(request)`.
    fn vmm(
        channel: Channel,
        mut answer: impl FnMut(ServiceRequest, Vec<OwnedFd>) -> Option<(ServiceReply, Vec<OwnedFd>)>
            + Send
            + 'static,
    ) -> std::thread::JoinHandle<usize> {
        std::thread::spawn(move || {
            let mut served = 0;
            while let Ok((request, fds)) = channel.recv::<ServiceRequest>() {
                served += 1;
                let Some((reply, out)) = answer(request, fds) else {
                    continue;
                };
                let borrowed: Vec<BorrowedFd<'_>> = out.iter().map(|f| f.as_fd()).collect();
                channel.send(&reply, &borrowed).unwrap();
            }
            served
        })
    }

    #[test]
    fn requests_and_replies_travel_with_their_fds() {
        let (device, vmm_end) = Channel::pair().unwrap();
        let server = vmm(vmm_end, |request, fds| match request {
            ServiceRequest::Connect => {
                let (a, _b) = UnixStream::pair().unwrap();
                Some((ServiceReply::Connected, vec![a.into()]))
            }
            ServiceRequest::MapShm { offset: 0, .. } if fds.len() == 1 => {
                Some((ServiceReply::Mapped, vec![]))
            }
            ServiceRequest::MapShm { .. } => {
                Some((ServiceReply::Refused(ServiceRefusal::BadRange), vec![]))
            }
            ServiceRequest::UnmapShm { .. } => Some((ServiceReply::Unmapped, vec![])),
            ServiceRequest::Disconnected => Some((ServiceReply::Released, vec![])),
        });
        let mut services = ChannelServices::new(device).unwrap();
        let socket = services.connect().unwrap();
        assert!(rustix::net::sockopt::socket_type(&socket).is_ok());
        let (memfd, _) = UnixStream::pair().unwrap();
        services.map_shm(memfd.as_fd(), 0, 4096, true).unwrap();
        assert!(matches!(
            services.map_shm(memfd.as_fd(), 4096, 4096, true),
            Err(ServiceError::Refused(ServiceRefusal::BadRange))
        ));
        services.unmap_shm(0).unwrap();
        services.disconnected().unwrap();
        drop(services);
        assert_eq!(server.join().unwrap(), 5);
    }

    #[test]
    fn a_wrong_answer_breaks_the_channel_for_good() {
        let (device, vmm_end) = Channel::pair().unwrap();
        let server = vmm(vmm_end, |_, _| Some((ServiceReply::Unmapped, vec![])));
        let mut services = ChannelServices::new(device).unwrap();
        assert!(matches!(services.connect(), Err(ServiceError::Channel(_))));
        assert!(matches!(
            services.unmap_shm(0),
            Err(ServiceError::Channel(_))
        ));
        drop(services);
        assert_eq!(server.join().unwrap(), 1);
    }

    #[test]
    fn a_vmm_that_does_not_answer_is_a_channel_error_after_the_timeout() {
        let (device, _silent) = Channel::pair().unwrap();
        let mut services =
            ChannelServices::with_timeout(device, Duration::from_millis(50)).unwrap();
        let started = std::time::Instant::now();
        let Err(ServiceError::Channel(why)) = services.connect() else {
            panic!("connected without an answer");
        };
        assert!(why.contains("no reply"), "{why}");
        assert!(started.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn a_vmm_that_goes_away_is_a_channel_error() {
        let (device, vmm_end) = Channel::pair().unwrap();
        drop(vmm_end);
        let mut services = ChannelServices::new(device).unwrap();
        assert!(matches!(services.connect(), Err(ServiceError::Channel(_))));
        assert!(matches!(
            NoServices.connect(),
            Err(ServiceError::Refused(ServiceRefusal::NotDeclared))
        ));
    }
}
