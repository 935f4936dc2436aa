//! virtio-wl against a driver built on virtio-queue's mock queues, with socketpairs standing
//! in for compositor connections and a services double that checks what the VMM checks.
//!
//! - `commands`: every out-queue command, its answers and refusals.
//! - `host`: what the compositor sends (data, memfds, pipes, refused fds, hang-ups), parking,
//!   stalled sends.
//! - `limits`: floods and exhaustion, reset.
//! - `notify`: when the driver is interrupted (once per pass, never when it polls).

mod commands;
mod host;
mod limits;
mod notify;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::fs::SealFlags;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent};

use super::inbox::InMsg;
use super::protocol::*;
use super::Wl;
use crate::kind::ShmWindow;
use crate::services::{HostServices, ServiceError, ServiceRefusal};
use crate::{EventRegistry, EventSet, Interrupt, VirtioBackend, VIRTIO_F_VERSION_1};

const F_WRITE: u16 = 2;
const F_NEXT: u16 = 1;
/// Queue size of both test queues.
pub const QSIZE: u16 = 16;
const MEM_SIZE: usize = 0x40_0000;
/// Where the in queue's mock rings sit, and its own used ring (see rng's tests: the mock's
/// used ring overlaps its avail ring).
const IN_RINGS: u64 = 0x0;
const IN_USED: u64 = 0x1000;
const OUT_RINGS: u64 = 0x2000;
const OUT_USED: u64 = 0x3000;
/// In-queue buffers: one page each.
const IN_BUFS: u64 = 0x1_0000;
/// Out-queue commands and responses.
const OUT_BUFS: u64 = 0x10_0000;
/// The shared-memory region the tests give the device.
pub const REGION: ShmWindow = ShmWindow {
    base: 0x1_0000_0000,
    len: 64 * 4096,
};
/// Features the test driver acknowledges.
pub const FEATURES: u64 = VIRTIO_F_VERSION_1 | F_TRANS_FLAGS | F_USE_SHMEM;

/// Counts interrupts.
#[derive(Default)]
pub struct Irqs(pub AtomicUsize);

impl Interrupt for Irqs {
    fn signal_used_queue(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
    fn signal_config_change(&self) {}
}

/// What the services double saw and holds.
#[derive(Default)]
pub struct ServiceLog {
    /// Compositor ends of the connections handed out, in order.
    pub peers: Vec<UnixStream>,
    /// Live mappings: offset → (len, writable).
    pub maps: BTreeMap<u64, (u64, bool)>,
    /// Refuse connections with this.
    pub refuse_connect: Option<ServiceRefusal>,
    /// Refuse mappings with this.
    pub refuse_map: Option<ServiceRefusal>,
    /// Connections the device said it closed.
    pub disconnected: usize,
}

/// A [`HostServices`] that hands out socketpairs and checks mappings as the VMM does.
#[derive(Clone, Default)]
pub struct FakeServices(pub Arc<Mutex<ServiceLog>>);

impl HostServices for FakeServices {
    fn connect(&mut self) -> Result<OwnedFd, ServiceError> {
        let mut log = self.0.lock().unwrap();
        if let Some(r) = log.refuse_connect {
            return Err(r.into());
        }
        let (device, peer) = UnixStream::pair().unwrap();
        log.peers.push(peer);
        Ok(device.into())
    }

    fn map_shm(
        &mut self,
        fd: BorrowedFd<'_>,
        offset: u64,
        len: u64,
        writable: bool,
    ) -> Result<(), ServiceError> {
        let mut log = self.0.lock().unwrap();
        if let Some(r) = log.refuse_map {
            return Err(r.into());
        }
        let seals = rustix::fs::fcntl_get_seals(fd).map_err(|_| ServiceRefusal::BadFd)?;
        let size = rustix::fs::fstat(fd).unwrap().st_size as u64;
        if !seals.contains(SealFlags::SHRINK) || size.div_ceil(4096) * 4096 < len {
            return Err(ServiceRefusal::BadFd.into());
        }
        assert!(offset % 4096 == 0 && len % 4096 == 0 && offset + len <= REGION.len);
        let overlap = log
            .maps
            .iter()
            .any(|(&o, &(l, _))| offset < o + l && o < offset + len);
        if overlap {
            return Err(ServiceRefusal::Overlap.into());
        }
        log.maps.insert(offset, (len, writable));
        Ok(())
    }

    fn unmap_shm(&mut self, offset: u64) -> Result<(), ServiceError> {
        match self.0.lock().unwrap().maps.remove(&offset) {
            Some(_) => Ok(()),
            None => Err(ServiceRefusal::NotMapped.into()),
        }
    }

    fn disconnected(&mut self) -> Result<(), ServiceError> {
        self.0.lock().unwrap().disconnected += 1;
        Ok(())
    }
}

/// A real epoll behind the registry interface, so tests run the device's fds like the loop.
pub struct Loop {
    epoll: Epoll,
    /// fd → token, as registered.
    pub fds: BTreeMap<RawFd, u32>,
}

impl Loop {
    fn new() -> Self {
        Loop {
            epoll: Epoll::new().unwrap(),
            fds: BTreeMap::new(),
        }
    }
}

impl EventRegistry for Loop {
    fn add(&mut self, fd: RawFd, token: u32, interest: EventSet) -> std::io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(interest, u64::from(token)),
        )?;
        self.fds.insert(fd, token);
        Ok(())
    }
    fn modify(&mut self, fd: RawFd, token: u32, interest: EventSet) -> std::io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Modify,
            fd,
            EpollEvent::new(interest, u64::from(token)),
        )?;
        self.fds.insert(fd, token);
        Ok(())
    }
    fn remove(&mut self, fd: RawFd) -> std::io::Result<()> {
        self.fds.remove(&fd);
        self.epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
    }
}

/// One driver-side queue: the mock's descriptor table and avail ring, our own used ring.
struct DriverQueue<'m> {
    vq: MockSplitQueue<'m, GuestMemoryMmap>,
    used: u64,
    next_desc: u16,
    seen: u16,
}

impl<'m> DriverQueue<'m> {
    fn new(mem: &'m GuestMemoryMmap, rings: u64, used: u64) -> Self {
        DriverQueue {
            vq: MockSplitQueue::create(mem, GuestAddress(rings), QSIZE),
            used,
            next_desc: 0,
            seen: 0,
        }
    }

    fn queue(&self) -> Queue {
        let mut q: Queue = self.vq.create_queue().unwrap();
        q.set_used_ring_address(Some(self.used as u32), Some(0));
        q
    }

    /// Stores a chain of `(addr, len, writable)` buffers and makes it available; its head.
    fn push(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, writable)) in bufs.iter().enumerate() {
            let idx = self.next_desc;
            self.next_desc = (self.next_desc + 1) % QSIZE;
            let mut flags = if writable { F_WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= F_NEXT;
            }
            let d = Descriptor::new(addr, len, flags, self.next_desc);
            self.vq
                .desc_table()
                .store(idx, RawDescriptor::from(d))
                .unwrap();
        }
        let avail = self.vq.avail().idx().load();
        self.vq
            .avail()
            .ring()
            .ref_at(usize::from(avail % QSIZE))
            .unwrap()
            .store(head);
        self.vq.avail().idx().store(avail.wrapping_add(1));
        head
    }

    /// Used elements added since the last call: (id, len).
    fn take_used(&mut self, mem: &GuestMemoryMmap) -> Vec<(u32, u32)> {
        let idx: u16 = mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        let mut out = Vec::new();
        while self.seen != idx {
            let slot = self.used + 4 + 8 * u64::from(self.seen % QSIZE);
            let id: u32 = mem.read_obj(GuestAddress(slot)).unwrap();
            let len: u32 = mem.read_obj(GuestAddress(slot + 4)).unwrap();
            out.push((id, len));
            self.seen = self.seen.wrapping_add(1);
        }
        out
    }
}

/// The device, its guest memory, both driver queues, its loop and its services double.
pub struct Rig {
    pub mem: &'static GuestMemoryMmap,
    pub wl: Wl,
    pub lp: Loop,
    pub services: FakeServices,
    pub irqs: Arc<Irqs>,
    inq: DriverQueue<'static>,
    outq: DriverQueue<'static>,
    /// In buffers handed to the device, by head.
    in_heads: BTreeMap<u16, u64>,
    /// In-queue completions not yet looked at: (head, used length).
    in_done: Vec<(u32, u32)>,
    /// Out-queue completions not yet looked at: head → used length.
    out_done: BTreeMap<u16, u32>,
    next_in_buf: u64,
}

impl Rig {
    /// An active device with `features` acknowledged.
    pub fn with_features(features: u64) -> Rig {
        let mem: &'static GuestMemoryMmap = Box::leak(Box::new(
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap(),
        ));
        let services = FakeServices::default();
        let mut wl = Wl::new(REGION, Box::new(services.clone()));
        let inq = DriverQueue::new(mem, IN_RINGS, IN_USED);
        let outq = DriverQueue::new(mem, OUT_RINGS, OUT_USED);
        let irqs = Arc::new(Irqs::default());
        wl.activate(
            features,
            mem.clone(),
            vec![inq.queue(), outq.queue()],
            irqs.clone(),
        )
        .unwrap();
        Rig {
            mem,
            wl,
            lp: Loop::new(),
            services,
            irqs,
            inq,
            outq,
            in_heads: BTreeMap::new(),
            in_done: Vec::new(),
            out_done: BTreeMap::new(),
            next_in_buf: 0,
        }
    }

    /// An active device with [`FEATURES`].
    pub fn new() -> Rig {
        Self::with_features(FEATURES)
    }

    /// Sends one command; returns the response bytes (up to `resp_len`).
    pub fn command_with(&mut self, cmd: &[u8], resp_len: u32) -> Vec<u8> {
        let head = self.submit(cmd, resp_len);
        self.wl.process_queue(1, &mut self.lp).unwrap();
        self.response(head, resp_len).expect("command answered")
    }

    /// Sends one command with room for a `ctrl_vfd_new` response.
    pub fn command(&mut self, cmd: &[u8]) -> Vec<u8> {
        self.command_with(cmd, 64)
    }

    /// Queues a command without notifying; its head.
    pub fn submit(&mut self, cmd: &[u8], resp_len: u32) -> u16 {
        let slot = OUT_BUFS + 0x2_0000 * u64::from(self.outq.next_desc / 2);
        self.mem.write_slice(cmd, GuestAddress(slot)).unwrap();
        let resp = slot + 0x1_8000;
        self.mem
            .write_slice(&[0xee; 64], GuestAddress(resp))
            .unwrap();
        self.outq
            .push(&[(slot, cmd.len() as u32, false), (resp, resp_len, true)])
    }

    /// The response of chain `head` if it completed (reads every completion so far).
    pub fn response(&mut self, head: u16, resp_len: u32) -> Option<Vec<u8>> {
        for (id, len) in self.outq.take_used(self.mem) {
            self.out_done.insert(id as u16, len);
        }
        let len = self.out_done.remove(&head)?;
        assert!(len <= resp_len);
        let slot = OUT_BUFS + 0x2_0000 * u64::from(head / 2);
        let mut buf = vec![0u8; len as usize];
        self.mem
            .read_slice(&mut buf, GuestAddress(slot + 0x1_8000))
            .unwrap();
        Some(buf)
    }

    /// Gives the device `n` page-sized in buffers (fewer if the queue would overflow) and
    /// notifies the in queue.
    pub fn give_in_buffers(&mut self, n: usize) {
        for (id, len) in self.inq.take_used(self.mem) {
            self.in_done.push((id, len));
        }
        let free = usize::from(QSIZE) - (self.in_heads.len() - self.in_done.len());
        for _ in 0..n.min(free) {
            let addr = IN_BUFS + 0x1000 * (self.next_in_buf % u64::from(QSIZE));
            self.next_in_buf += 1;
            let head = self.inq.push(&[(addr, 0x1000, true)]);
            self.in_heads.insert(head, addr);
        }
        self.wl.process_queue(0, &mut self.lp).unwrap();
    }

    /// Sets or clears `VIRTQ_AVAIL_F_NO_INTERRUPT` in queue `queue`'s avail ring (0 in, 1 out).
    pub fn set_no_interrupt(&mut self, queue: u16, no_interrupt: bool) {
        let vq = if queue == 0 {
            &self.inq.vq
        } else {
            &self.outq.vq
        };
        self.mem
            .write_obj(u16::from(no_interrupt), vq.avail_addr())
            .unwrap();
    }

    /// Sets queue `queue`'s `used_event` (the driver's `EVENT_IDX` threshold).
    pub fn set_used_event(&mut self, queue: u16, used_event: u16) {
        let vq = if queue == 0 {
            &self.inq.vq
        } else {
            &self.outq.vq
        };
        let at = vq.avail_addr().0 + 4 + 2 * u64::from(QSIZE);
        self.mem.write_obj(used_event, GuestAddress(at)).unwrap();
    }

    /// Interrupts raised so far.
    pub fn interrupts(&self) -> usize {
        self.irqs.0.load(Ordering::SeqCst)
    }

    /// Messages the device wrote into in buffers since the last call.
    pub fn take_in(&mut self) -> Vec<InMsg> {
        let mut out = Vec::new();
        let mut done = std::mem::take(&mut self.in_done);
        done.extend(self.inq.take_used(self.mem));
        for (id, len) in done {
            let addr = self.in_heads.remove(&(id as u16)).expect("a head we gave");
            let mut buf = vec![0u8; len as usize];
            self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
            out.push(decode_in(&buf));
        }
        out
    }

    /// Runs the device's fds until nothing is ready for `idle_ms`.
    pub fn pump(&mut self, idle_ms: i32) {
        let mut events = vec![EpollEvent::default(); 16];
        loop {
            let n = self.lp.epoll.wait(idle_ms, &mut events).unwrap();
            if n == 0 {
                return;
            }
            for e in &events[..n] {
                let token = e.data() as u32;
                self.wl
                    .process_event(token, e.event_set(), &mut self.lp)
                    .unwrap();
            }
        }
    }

    /// The compositor end of connection `i`.
    pub fn peer(&self, i: usize) -> UnixStream {
        self.services.0.lock().unwrap().peers[i]
            .try_clone()
            .unwrap()
    }

    /// Opens a context with guest id `id`; asserts it worked.
    pub fn open_ctx(&mut self, id: u32) -> UnixStream {
        let resp = self.command(&vfd_new_cmd(CMD_VFD_NEW_CTX, id, VFD_READ | VFD_WRITE, 0));
        assert_eq!(code(&resp), RESP_VFD_NEW, "{resp:?}");
        let n = self.services.0.lock().unwrap().peers.len();
        let peer = self.peer(n - 1);
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        peer
    }

    /// Allocates shared memory under `id`; returns the response.
    pub fn alloc(&mut self, id: u32, size: u32) -> Vec<u8> {
        self.command(&vfd_new_cmd(CMD_VFD_NEW, id, 0, size))
    }
}

/// Decodes an in-queue message (the device's [`InMsg`], as the guest sees it).
pub fn decode_in(buf: &[u8]) -> InMsg {
    assert!(
        buf.len() >= 8,
        "an in-queue message without a header: {buf:?}"
    );
    let w = |i: usize| u32::from_le_bytes(buf[i..i + 4].try_into().unwrap());
    match w(0) {
        CMD_VFD_NEW => InMsg::New {
            id: w(8),
            flags: w(12),
            pfn: u64::from_le_bytes(buf[16..24].try_into().unwrap()),
            size: w(24),
        },
        CMD_VFD_RECV => {
            let n = w(12) as usize;
            InMsg::Recv {
                vfd: w(8),
                ids: (0..n).map(|i| w(16 + 4 * i)).collect(),
                data: buf[16 + 4 * n..].to_vec(),
            }
        }
        CMD_VFD_HUP => InMsg::Hup { vfd: w(8) },
        other => panic!("unexpected in-queue message {other:#x}"),
    }
}

/// A `VFD_RECV` of `data` for `vfd`, with no vfds.
pub fn recv(vfd: u32, data: &[u8]) -> InMsg {
    InMsg::Recv {
        vfd,
        ids: vec![],
        data: data.to_vec(),
    }
}

/// The response code of a response.
pub fn code(resp: &[u8]) -> u32 {
    u32::from_le_bytes(resp[..4].try_into().unwrap())
}

/// A field of a `ctrl_vfd_new` response: (id, flags, pfn, size).
pub fn vfd_new_fields(resp: &[u8]) -> (u32, u32, u64, u32) {
    let w = |i: usize| u32::from_le_bytes(resp[i..i + 4].try_into().unwrap());
    (
        w(8),
        w(12),
        u64::from_le_bytes(resp[16..24].try_into().unwrap()),
        w(24),
    )
}

/// A command header followed by `words`.
pub fn cmd(kind: u32, words: &[u32]) -> Vec<u8> {
    let mut out = kind.to_le_bytes().to_vec();
    out.extend_from_slice(&0u32.to_le_bytes());
    for w in words {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out
}

/// A 64-byte `ctrl_vfd_new` as the Linux driver sends it.
pub fn vfd_new_cmd(kind: u32, id: u32, flags: u32, size: u32) -> Vec<u8> {
    let mut out = cmd(kind, &[id, flags, 0, 0, size]);
    out.resize(64, 0);
    out
}

/// A `VFD_SEND` of `data` and `vfds` to `id`.
pub fn send_cmd(id: u32, vfds: &[u32], data: &[u8]) -> Vec<u8> {
    let mut words = vec![id, vfds.len() as u32];
    words.extend_from_slice(vfds);
    let mut out = cmd(CMD_VFD_SEND, &words);
    out.extend_from_slice(data);
    out
}

/// Reads exactly `n` bytes and the fds that come with them from a compositor end.
pub fn peer_recv(peer: &UnixStream, n: usize) -> (Vec<u8>, Vec<OwnedFd>) {
    let mut data = vec![0u8; n];
    let mut got = 0;
    let mut fds = Vec::new();
    while got < n {
        let arrived = super::sys::recv_with_fds(peer.as_fd(), &mut data[got..]).unwrap();
        assert!(arrived.len > 0, "peer saw EOF after {got} bytes");
        got += arrived.len;
        fds.extend(arrived.fds);
    }
    (data, fds)
}

/// Sends `data` and up to 64 `fds` from a compositor end (more than the device takes).
pub fn peer_send(peer: &UnixStream, data: &[u8], fds: &[BorrowedFd<'_>]) {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(64))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    assert!(fds.is_empty() || control.push(SendAncillaryMessage::ScmRights(fds)));
    let iov = [rustix::io::IoSlice::new(data)];
    let n = rustix::net::sendmsg(peer, &iov, &mut control, SendFlags::NOSIGNAL).unwrap();
    assert_eq!(n, data.len());
}

/// Everything readable on a (blocking) pipe end until EOF.
pub fn read_to_end(fd: OwnedFd) -> Vec<u8> {
    let mut file = std::fs::File::from(fd);
    let mut out = Vec::new();
    file.read_to_end(&mut out).unwrap();
    out
}

/// Writes all of `data` to a pipe end.
pub fn write_all(fd: &OwnedFd, data: &[u8]) {
    let mut file = std::fs::File::from(fd.try_clone().unwrap());
    file.write_all(data).unwrap();
}
