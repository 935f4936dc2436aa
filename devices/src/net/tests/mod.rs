//! virtio-net against virtio-queue's mock driver queues (blk's `Vq` helper) and host ends that
//! stand in for a tap (a datagram socketpair: one datagram per frame, vnet header in front,
//! `TUNSETOFFLOAD` recorded) or for passt (a stream socketpair).
//!
//! - `tx`: transmit: copy-in, header validation, refused chains, a blocked endpoint.
//! - `rx`: receive: one chain, merged buffers, no buffers, header verdicts.
//! - `ctrl`: the control queue, multiqueue routing.
//! - `limits`: rate limits resumed by the timerfd.
//! - `stream`: the stream endpoint's framing.
//! - `header`: header validation and checksums.

mod ctrl;
mod header;
mod limits;
mod rx;
mod stream;
mod tx;

use std::collections::HashMap;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::endpoint::{Endpoint, Tap, TunControl};
use super::header::VnetHdr;
use super::{features as f, Net, NetConfig, HDR_LEN};
use crate::blk::tests::{memory, Vq};
use crate::rng::tests::Recorder;
use crate::{EventRegistry, EventSet, VirtioBackend, VIRTIO_F_VERSION_1};

pub(crate) const F_WRITE: u16 = 2;
/// Queue size of the tests' queues.
pub(crate) const QSIZE: u16 = 32;
/// Guest buffers from here on (blk's `Vq` keeps its rings below 0x4_0000).
pub(crate) const BUF: u64 = 0x10_0000;
/// The test MAC.
pub(crate) const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xaa, 0xbb, 0xcc];
/// What a Linux driver takes from a tap-backed device (no MQ).
pub(crate) const LINUX: u64 = VIRTIO_F_VERSION_1
    | f::MAC
    | f::MTU
    | f::STATUS
    | f::MRG_RXBUF
    | f::CSUM
    | f::GUEST_CSUM
    | f::HOST_TSO4
    | f::HOST_TSO6
    | f::GUEST_TSO4
    | f::GUEST_TSO6
    | f::CTRL_VQ
    | f::CTRL_GUEST_OFFLOADS;

/// Records `TUNSETOFFLOAD` calls instead of making them.
#[derive(Clone, Default)]
pub(crate) struct Offloads(pub Arc<Mutex<Vec<u32>>>);

impl TunControl for Offloads {
    fn set_offload(&mut self, _fd: BorrowedFd<'_>, flags: u32) -> io::Result<()> {
        self.0.lock().unwrap().push(flags);
        Ok(())
    }
}

impl Offloads {
    pub(crate) fn last(&self) -> Option<u32> {
        self.0.lock().unwrap().last().copied()
    }
}

/// The loop as a backend sees it: what each fd is registered for.
#[derive(Default)]
pub(crate) struct Events {
    pub fds: HashMap<RawFd, (u32, EventSet)>,
}

impl EventRegistry for Events {
    fn add(&mut self, fd: RawFd, token: u32, interest: EventSet) -> io::Result<()> {
        assert!(
            self.fds.insert(fd, (token, interest)).is_none(),
            "fd {fd} added twice"
        );
        Ok(())
    }
    fn modify(&mut self, fd: RawFd, token: u32, interest: EventSet) -> io::Result<()> {
        let slot = self.fds.get_mut(&fd).expect("modify of an fd never added");
        *slot = (token, interest);
        Ok(())
    }
    fn remove(&mut self, fd: RawFd) -> io::Result<()> {
        self.fds.remove(&fd).expect("remove of an fd never added");
        Ok(())
    }
}

impl Events {
    /// The interest of the fd registered with `token`.
    pub(crate) fn interest(&self, token: u32) -> Option<EventSet> {
        self.fds
            .values()
            .find(|(t, _)| *t == token)
            .map(|(_, i)| *i)
    }
}

/// A tap stand-in: the device's end is a non-blocking datagram socket, the host's end is kept
/// by the test.
pub(crate) fn tap_pair(offloads: &Offloads) -> (Box<dyn Endpoint>, UnixDatagram) {
    let (dev, host) = UnixDatagram::pair().unwrap();
    dev.set_nonblocking(true).unwrap();
    host.set_nonblocking(true).unwrap();
    let tap = Tap::with_control(OwnedFd::from(dev), Box::new(offloads.clone())).unwrap();
    (Box::new(tap), host)
}

/// A device on tap stand-ins, activated, its queues, and the host ends.
pub(crate) struct Rig<'m> {
    pub mem: &'m GuestMemoryMmap,
    pub net: Net,
    pub vqs: Vec<Vq<'m>>,
    pub irq: Arc<Recorder>,
    pub events: Events,
    pub hosts: Vec<UnixDatagram>,
    pub offloads: Offloads,
}

impl<'m> Rig<'m> {
    /// `config` on tap stand-ins, activated with `features` (queues as the device has them).
    pub(crate) fn new(mem: &'m GuestMemoryMmap, config: NetConfig, features: u64) -> Self {
        let offloads = Offloads::default();
        let (endpoints, hosts): (Vec<_>, Vec<_>) =
            (0..config.pairs).map(|_| tap_pair(&offloads)).unzip();
        let mut net = Net::new(config, endpoints).unwrap();
        assert_eq!(net.prepare(), None);
        Rig::activate(mem, net, features, hosts, offloads)
    }

    pub(crate) fn activate(
        mem: &'m GuestMemoryMmap,
        mut net: Net,
        features: u64,
        hosts: Vec<UnixDatagram>,
        offloads: Offloads,
    ) -> Self {
        let vqs: Vec<Vq<'m>> = (0..net.num_queues())
            .map(|q| Vq::new(mem, q, QSIZE))
            .collect();
        let irq = Arc::new(Recorder::default());
        net.activate(
            features,
            mem.clone(),
            vqs.iter().map(Vq::queue).collect(),
            irq.clone(),
        )
        .unwrap();
        let mut events = Events::default();
        net.register_events(&mut events).unwrap();
        Rig {
            mem,
            net,
            vqs,
            irq,
            events,
            hosts,
            offloads,
        }
    }

    /// Notifies queue `q`.
    pub(crate) fn kick(&mut self, q: u16) {
        self.net.process_queue(q, &mut self.events).unwrap();
    }

    /// Reports port `port`'s fd ready for `ready`.
    pub(crate) fn ready(&mut self, port: u32, ready: EventSet) {
        self.net
            .process_event(port, ready, &mut self.events)
            .unwrap();
    }

    /// Puts a transmit chain on pair `pair`'s queue: `hdr`, then `frame` split into `pieces`
    /// descriptors. Returns the head.
    pub(crate) fn push_tx(
        &mut self,
        pair: usize,
        at: u64,
        hdr: &VnetHdr,
        frame: &[u8],
        pieces: usize,
    ) -> u16 {
        self.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(at))
            .unwrap();
        let data = at + 0x100;
        self.mem.write_slice(frame, GuestAddress(data)).unwrap();
        let mut descs = vec![(at, HDR_LEN as u32, 0)];
        let step = frame.len().div_ceil(pieces.max(1));
        for (i, chunk) in frame.chunks(step.max(1)).enumerate() {
            descs.push((data + (i * step) as u64, chunk.len() as u32, 0));
        }
        self.vqs[2 * pair + 1].push(&descs)
    }

    /// Puts `n` receive chains of one `len`-byte buffer each on pair `pair`'s queue, from
    /// `at` on. Returns the heads.
    pub(crate) fn push_rx(&mut self, pair: usize, at: u64, n: usize, len: u32) -> Vec<u16> {
        (0..n)
            .map(|i| {
                let addr = at + i as u64 * u64::from(len);
                self.mem
                    .write_slice(&vec![0xee; len as usize], GuestAddress(addr))
                    .unwrap();
                self.vqs[2 * pair].push(&[(addr, len, F_WRITE)])
            })
            .collect()
    }

    /// The next datagram the host end of `port` received: header and frame.
    pub(crate) fn host_recv(&self, port: usize) -> Option<(VnetHdr, Vec<u8>)> {
        let mut buf = vec![0u8; HDR_LEN + super::MAX_FRAME + 16];
        match self.hosts[port].recv(&mut buf) {
            Ok(n) => {
                let mut raw = [0u8; HDR_LEN];
                raw.copy_from_slice(&buf[..HDR_LEN]);
                Some((VnetHdr::from_bytes(&raw), buf[HDR_LEN..n].to_vec()))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => panic!("{e}"),
        }
    }

    /// The host sends a frame with header `hdr` into `port`.
    pub(crate) fn host_send(&self, port: usize, hdr: &VnetHdr, frame: &[u8]) {
        let mut d = hdr.to_bytes().to_vec();
        d.extend_from_slice(frame);
        self.hosts[port].send(&d).unwrap();
    }

    /// Stats of queue `q`: (frames, bytes, errors, drops).
    pub(crate) fn stats(&self, q: usize) -> (u64, u64, u64, u64) {
        let s = self.net.stats().queues[q];
        (s.requests, s.bytes, s.errors, s.drops)
    }

    pub(crate) fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }
}

/// A frame of `len` bytes: Ethernet header to `MAC` from a fixed source, type IPv4, then a
/// pattern depending on `seed`.
pub(crate) fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len)
        .map(|i| seed.wrapping_mul(37).wrapping_add((i % 251) as u8))
        .collect();
    if len >= 14 {
        v[..6].copy_from_slice(&MAC);
        v[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
        v[12..14].copy_from_slice(&[0x08, 0x00]);
    }
    v
}

/// A tap-backed config with one pair.
pub(crate) fn config() -> NetConfig {
    NetConfig::new(MAC)
}

pub(crate) fn mem() -> GuestMemoryMmap {
    memory()
}

#[test]
fn features_config_space_and_queues_follow_the_endpoint() {
    let offloads = Offloads::default();
    let (ep, _host) = tap_pair(&offloads);
    let net = Net::new(config(), vec![ep]).unwrap();
    let feats = net.features();
    for want in [
        f::CSUM,
        f::GUEST_CSUM,
        f::HOST_TSO4,
        f::GUEST_TSO6,
        f::MRG_RXBUF,
        f::CTRL_VQ,
    ] {
        assert_ne!(feats & want, 0, "{want:#x}");
    }
    assert_eq!(feats & f::MQ, 0);
    assert_eq!(net.num_queues(), 3);
    assert_eq!(net.device_type(), crate::VIRTIO_ID_NET);
    assert_eq!(
        net.config(),
        vec![0x52, 0x54, 0, 0xaa, 0xbb, 0xcc, 1, 0, 1, 0, 0xdc, 0x05]
    );
    // The probe tried ECN first, then switched everything off.
    assert_eq!(*offloads.0.lock().unwrap(), vec![0x0f, 0]);

    let (dev, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
    let stream = super::endpoint::Stream::new(OwnedFd::from(dev));
    let net = Net::new(config(), vec![Box::new(stream)]).unwrap();
    let feats = net.features();
    assert_eq!(
        feats & (f::CSUM | f::GUEST_CSUM | f::HOST_TSO4 | f::CTRL_GUEST_OFFLOADS),
        0
    );
    assert_ne!(
        feats & f::CTRL_VQ,
        0,
        "the queue count must not depend on the endpoint"
    );
    assert_eq!(net.num_queues(), 3);

    let mut mq = config();
    mq.pairs = 4;
    let eps = (0..4).map(|_| tap_pair(&offloads).0).collect();
    let net = Net::new(mq, eps).unwrap();
    assert_ne!(net.features() & f::MQ, 0);
    assert_eq!(net.num_queues(), 9);
    assert_eq!(&net.config()[8..10], &[4, 0]);
}

#[test]
fn bad_configurations_are_refused() {
    let offloads = Offloads::default();
    let mut c = config();
    c.pairs = 2;
    assert!(matches!(
        Net::new(c, vec![tap_pair(&offloads).0]),
        Err(super::NetError::Endpoints { pairs: 2, got: 1 })
    ));
    let mut c = config();
    c.mtu = 10;
    assert!(Net::new(c, vec![tap_pair(&offloads).0]).is_err());
    let mut c = config();
    c.mac = [1, 2, 3, 4, 5, 6];
    assert!(Net::new(c, vec![tap_pair(&offloads).0]).is_err());
    assert!(super::parse_mac("52:54:00:12:34:56").is_ok());
    for bad in [
        "52:54:00:12:34",
        "01:00:5e:00:00:01",
        "00:00:00:00:00:00",
        "zz:54:00:12:34:56",
    ] {
        assert!(super::parse_mac(bad).is_err(), "{bad}");
    }
}

#[test]
fn activation_switches_the_negotiated_guest_offloads_on_and_reset_off() {
    let mem = mem();
    let mut rig = Rig::new(&mem, config(), LINUX);
    assert_eq!(rig.offloads.last(), Some(0x07)); // CSUM | TSO4 | TSO6
                                                 // The endpoint fd is watched for input.
    assert_eq!(rig.events.interest(0), Some(EventSet::IN));
    assert!(rig.net.reset().is_some());
    assert_eq!(rig.offloads.last(), Some(0));
    assert!(rig.net.reset().is_none());
}
