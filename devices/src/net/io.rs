//! The virtio-net queue loops: transmit (queue → endpoint), receive (endpoint → queue), the
//! control queue, and what the device's own fds (endpoints, rate-limit timers) wake up.
//!
//! ```text
//!   TX kick / endpoint writable / TX timer ─▶ tx(pair): pending chain first, then
//!       pop → tx::parse_chain (header copied and validated) → rate check →
//!       endpoint.send_guest (a tap: a frame above 4 KiB in one pwritev2 of the header and the
//!       guest buffers, a smaller one copied and written) → used
//!       blocked: keep the chain, watch the fd for OUT; throttled: keep it, arm the timer
//!   endpoint readable / RX kick / RX timer ─▶ rx_port(port): pending frame first, then
//!       endpoint.recv → header verdict → rate check → rx::deliver into the routed RX queue
//!       no buffers: keep the frame, stop reading the fd, ask the driver for a kick
//! ```
//!
//! A port (one endpoint per queue pair) keeps at most one frame per direction that could not
//! go on: a received one in its private buffer, a transmit chain (validated header, frame
//! still in guest memory, not yet returned to the driver); while it holds a received one it
//! does not read its fd, so
//! the host queues (and eventually drops) frames, not the device. With `MQ`, port `i` feeds
//! receive queue `i` while `i` is below the active pairs, else `i mod active` (a tap spreads
//! flows over every queue fd it has, active or not). Transmit queue `k` always sends on port
//! `k`.
//!
//! Fd interest (level-triggered): `IN` while the port holds no received frame and receive is
//! not throttled; `OUT` while it holds a frame to send or a stream backlog.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipc::QueueStats;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};

use super::ctrl::{self, Command};
use super::endpoint::{Endpoint, Received, Sent};
use super::header::{self, RxAccept, RxVerdict, TxLimits, VnetHdr};
use super::rate::{Limiter, Timer};
use super::rx::{pop_head, Delivery, RxQueue};
use super::{features, tun_flags, tx, HDR_LEN, MAX_FRAME};
use crate::chain::{ChainSource, Segment};
use crate::events::{EventRegistry, EventSet};
use crate::notify::interrupts_suppressed;
use crate::{DeviceError, Interrupt};

/// Event token of the receive rate-limit timer (ports use their index).
pub(crate) const RX_TIMER: u32 = 0x100;
/// Event token of the transmit rate-limit timer.
pub(crate) const TX_TIMER: u32 = 0x101;
/// Frames received per port and wake-up before the loop looks at its other events (the fd
/// stays readable, so the loop comes back).
const BATCH: usize = 64;

/// Bytes a port holds: one receive and one transmit frame with its header.
pub(crate) const PORT_BYTES: usize = HDR_LEN + MAX_FRAME + tx::TX_BUF;

/// One endpoint and the frames it holds back.
pub(crate) struct Port {
    pub ep: Box<dyn Endpoint>,
    rx_buf: Vec<u8>,
    /// A received frame in `rx_buf` waiting for buffers or tokens, with its final header.
    rx_pending: Option<(VnetHdr, usize)>,
    /// Private room for a transmit frame, for endpoints that need the bytes in hand.
    tx_buf: Vec<u8>,
    /// A validated chain the endpoint could not take yet (or tokens ran out).
    tx_pending: Option<PendingTx>,
    /// What the fd is registered for (`None`: not registered).
    interest: Option<EventSet>,
}

impl Port {
    pub(crate) fn new(ep: Box<dyn Endpoint>) -> Self {
        Port {
            ep,
            rx_buf: vec![0; HDR_LEN + MAX_FRAME],
            rx_pending: None,
            tx_buf: vec![0; tx::TX_BUF],
            tx_pending: None,
            interest: None,
        }
    }

    /// Forgets held frames and registrations (on reset; the loop removed the fds).
    pub(crate) fn clear(&mut self) {
        self.rx_pending = None;
        self.tx_pending = None;
        self.interest = None;
    }
}

/// A transmit chain popped and validated but not sent: it goes back to the driver once sent
/// (or refused by the host).
struct PendingTx {
    head: u16,
    /// The canonical header made from the validated one.
    hdr: VnetHdr,
    /// Frame bytes.
    len: usize,
    /// The frame's guest buffers (claimed as payload by the parser).
    frame: Vec<Segment>,
}

/// The rate limit of one direction and its timer.
pub(crate) struct Direction {
    pub limiter: Limiter,
    pub timer: Option<Timer>,
}

impl Direction {
    fn throttled(&self) -> bool {
        self.timer.as_ref().is_some_and(Timer::armed)
    }

    /// How long the frame of `len` bytes must wait; zero: it may go (and is not charged yet).
    fn wait_for(&mut self, len: usize) -> Duration {
        if self.throttled() {
            // Still waiting: nothing goes before the timer fires.
            return Duration::MAX;
        }
        if !self.limiter.limited() {
            return Duration::ZERO;
        }
        self.limiter.wait_for(len, Instant::now())
    }

    /// Arms the timer for `wait` (unless it is already armed).
    fn throttle(&mut self, wait: Duration) -> Result<(), DeviceError> {
        match &mut self.timer {
            Some(t) if !t.armed() => t.arm(wait).map_err(DeviceError::HostIo),
            _ => Ok(()),
        }
    }
}

/// One activated queue.
pub(crate) struct QueueState {
    pub queue: Queue,
    pub source: ChainSource,
    /// The driver set it up; a queue that is not is never touched.
    pub ready: bool,
    pub stats: QueueStats,
}

/// Everything the device holds between activate and reset.
pub(crate) struct Active {
    pub mem: GuestMemoryMmap,
    pub interrupt: Arc<dyn Interrupt>,
    /// The driver's features.
    pub negotiated: u64,
    /// Indexed by virtio queue index.
    pub queues: Vec<QueueState>,
    /// The control queue's index, if negotiated.
    pub ctrl: Option<u16>,
    /// Queue pairs in use (`VQ_PAIRS_SET`; 1 without `MQ`).
    pub active_pairs: u16,
    pub tx_limits: TxLimits,
    pub rx_accept: RxAccept,
}

impl Active {
    fn ready(&self, index: usize) -> bool {
        self.queues.get(index).is_some_and(|q| q.ready)
    }

    /// Signals the driver if the queue's notification rules ask for it.
    fn notify(&mut self, index: usize) -> Result<(), DeviceError> {
        let Some(q) = self.queues.get_mut(index) else {
            return Ok(());
        };
        if q.queue
            .needs_notification(&self.mem)
            .map_err(DeviceError::Queue)?
            && !interrupts_suppressed(&q.queue, &self.mem)
        {
            self.interrupt.signal_used_queue();
        }
        Ok(())
    }

    /// The receive queue port `port` feeds.
    fn rx_queue_of(&self, port: usize) -> usize {
        2 * (port % usize::from(self.active_pairs.max(1)))
    }
}

/// Asks the driver to notify when it makes more buffers available than it has now (not merely
/// more than the device took: a receive frame may need more than the ring holds). `true` if
/// some arrived meanwhile, so the caller tries again instead of waiting.
fn want_more_buffers(queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool, DeviceError> {
    let seen = queue
        .avail_idx(mem, Ordering::Acquire)
        .map_err(DeviceError::Queue)?
        .0;
    let next = queue.next_avail();
    // With EVENT_IDX, `enable_notification` publishes `avail_event = next_avail`: publish
    // `seen` instead, then put the device's position back.
    queue.set_next_avail(seen);
    let more = queue.enable_notification(mem).map_err(DeviceError::Queue);
    queue.set_next_avail(next);
    more
}

/// The device's moving parts for one call from the event loop.
pub(crate) struct Running<'a> {
    pub a: &'a mut Active,
    pub ports: &'a mut [Port],
    pub rx: &'a mut Direction,
    pub tx: &'a mut Direction,
    pub events: &'a mut dyn EventRegistry,
}

impl Running<'_> {
    /// Adds every port's fd (for `IN`) and the timers.
    pub(crate) fn register(&mut self) -> Result<(), DeviceError> {
        for (timer, token) in [(&self.rx.timer, RX_TIMER), (&self.tx.timer, TX_TIMER)] {
            if let Some(t) = timer {
                self.events
                    .add(t.as_raw_fd(), token, EventSet::IN)
                    .map_err(DeviceError::HostIo)?;
            }
        }
        for i in 0..self.ports.len() {
            self.update_interest(i)?;
        }
        Ok(())
    }

    /// Registers or changes port `i`'s fd interest to what its state asks for.
    fn update_interest(&mut self, i: usize) -> Result<(), DeviceError> {
        let rx_throttled = self.rx.throttled();
        let port = &mut self.ports[i];
        let mut want = EventSet::empty();
        if port.rx_pending.is_none() && !rx_throttled {
            want |= EventSet::IN;
        }
        if port.tx_pending.is_some() || port.ep.backlog() {
            want |= EventSet::OUT;
        }
        if port.interest == Some(want) {
            return Ok(());
        }
        let fd = port.ep.fd();
        // Port indices are below MAX_PAIRS.
        let token = i as u32;
        match port.interest {
            None => self.events.add(fd, token, want),
            Some(_) => self.events.modify(fd, token, want),
        }
        .map_err(DeviceError::HostIo)?;
        port.interest = Some(want);
        Ok(())
    }

    /// A queue notification.
    pub(crate) fn queue(&mut self, index: u16) -> Result<(), DeviceError> {
        let i = usize::from(index);
        if Some(index) == self.a.ctrl {
            return self.ctrl(i);
        }
        let pairs = if self.a.negotiated & features::MQ != 0 {
            self.ports.len()
        } else {
            1
        };
        if i >= 2 * pairs || !self.a.ready(i) {
            return Ok(()); // not a queue this driver set up
        }
        if i % 2 == 1 {
            return self.tx(i / 2);
        }
        // New receive buffers: every port that feeds this queue may go on.
        for port in 0..self.ports.len() {
            if self.a.rx_queue_of(port) == i {
                self.rx_port(port)?;
            }
        }
        Ok(())
    }

    /// One of the device's own fds is ready.
    pub(crate) fn event(&mut self, token: u32, ready: EventSet) -> Result<(), DeviceError> {
        match token {
            RX_TIMER => {
                if let Some(t) = &mut self.rx.timer {
                    if !t.expired().map_err(DeviceError::HostIo)? {
                        return Ok(());
                    }
                }
                for port in 0..self.ports.len() {
                    self.rx_port(port)?;
                }
                Ok(())
            }
            TX_TIMER => {
                if let Some(t) = &mut self.tx.timer {
                    if !t.expired().map_err(DeviceError::HostIo)? {
                        return Ok(());
                    }
                }
                for pair in 0..self.ports.len() {
                    self.tx(pair)?;
                }
                Ok(())
            }
            token => {
                let i = token as usize;
                if i >= self.ports.len() {
                    return Ok(());
                }
                if ready.intersects(EventSet::ERROR | EventSet::HANG_UP) {
                    return Err(DeviceError::HostIo(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the network endpoint hung up or failed",
                    )));
                }
                if ready.contains(EventSet::OUT) {
                    if self.ports[i].ep.flush().map_err(DeviceError::HostIo)? {
                        self.tx(i)?;
                    } else {
                        self.update_interest(i)?;
                    }
                }
                if ready.contains(EventSet::IN) {
                    self.rx_port(i)?;
                }
                Ok(())
            }
        }
    }

    /// Transmit queue of pair `k`: the held frame first, then the ring.
    fn tx(&mut self, k: usize) -> Result<(), DeviceError> {
        let qi = 2 * k + 1;
        if k >= self.ports.len() || !self.a.ready(qi) {
            return Ok(());
        }
        let mut completed = false;
        let result = self.tx_loop(k, qi, &mut completed);
        if completed {
            self.a.notify(qi)?;
        }
        result?;
        self.update_interest(k)
    }

    /// Runs until the ring is empty, the endpoint blocks or the rate limit stops it. Not
    /// batched: nothing else would wake the loop for chains left in the ring (their
    /// notification is suppressed while the device works).
    fn tx_loop(&mut self, k: usize, qi: usize, completed: &mut bool) -> Result<(), DeviceError> {
        loop {
            if let Some(pending) = self.ports[k].tx_pending.take() {
                let wait = self.tx.wait_for(pending.len);
                if !wait.is_zero() {
                    self.ports[k].tx_pending = Some(pending);
                    if wait != Duration::MAX {
                        self.tx.throttle(wait)?;
                    }
                    return Ok(());
                }
                let port = &mut self.ports[k];
                let q = &mut self.a.queues[qi];
                let sent = port.ep.send_guest(
                    &pending.hdr,
                    &self.a.mem,
                    &pending.frame,
                    pending.len,
                    &mut port.tx_buf,
                );
                let (head, len) = (pending.head, pending.len);
                match sent {
                    Ok(Sent::Done) => {
                        self.tx.limiter.take(len);
                        q.stats.requests += 1;
                        q.stats.bytes += len as u64;
                    }
                    // A valid frame the host would not take: lost, not the driver's fault.
                    Ok(Sent::Refused(_)) => q.stats.drops += 1,
                    Ok(Sent::Blocked) => {
                        port.tx_pending = Some(pending);
                        return Ok(());
                    }
                    Err(e) => {
                        port.tx_pending = Some(pending);
                        return Err(DeviceError::HostIo(e));
                    }
                }
                // The host has the frame's bytes (or refused them): the chain can go back.
                q.queue
                    .add_used(&self.a.mem, head, 0)
                    .map_err(DeviceError::Queue)?;
                *completed = true;
            }
            let mem = &self.a.mem;
            let q = &mut self.a.queues[qi];
            q.queue
                .disable_notification(mem)
                .map_err(DeviceError::Queue)?;
            let Some(head) = pop_head(&mut q.queue, mem)? else {
                if q.queue
                    .enable_notification(mem)
                    .map_err(DeviceError::Queue)?
                {
                    continue;
                }
                return Ok(());
            };
            match tx::parse_chain(mem, &q.source, head, &self.a.tx_limits) {
                Ok(chain) => {
                    self.ports[k].tx_pending = Some(PendingTx {
                        head,
                        hdr: chain.header.to_vnet(),
                        len: chain.len,
                        frame: chain.frame,
                    });
                }
                // A malformed chain or header: the driver's error (not a drop); it goes back
                // at once.
                Err(_) => {
                    q.stats.errors += 1;
                    q.queue.add_used(mem, head, 0).map_err(DeviceError::Queue)?;
                    *completed = true;
                }
            }
        }
    }

    /// Receive from port `i` into its receive queue: the held frame first, then the endpoint.
    fn rx_port(&mut self, i: usize) -> Result<(), DeviceError> {
        let qi = self.a.rx_queue_of(i);
        if !self.a.ready(qi) {
            return self.update_interest(i);
        }
        let mut delivered = false;
        let result = self.rx_loop(i, qi, &mut delivered);
        if delivered {
            self.a.notify(qi)?;
        }
        result?;
        self.update_interest(i)
    }

    fn rx_loop(&mut self, i: usize, qi: usize, delivered: &mut bool) -> Result<(), DeviceError> {
        let mergeable = self.a.negotiated & features::MRG_RXBUF != 0;
        for _ in 0..BATCH {
            let port = &mut self.ports[i];
            let (hdr, len) = match port.rx_pending.take() {
                Some(held) => held,
                None => {
                    let got = port
                        .ep
                        .recv(&mut port.rx_buf)
                        .map_err(DeviceError::HostIo)?;
                    let (host, len) = match got {
                        Received::Nothing => return Ok(()),
                        // The host's doing, not the driver's: a drop.
                        Received::Malformed => {
                            self.a.queues[qi].stats.drops += 1;
                            continue;
                        }
                        Received::Frame { hdr, len } => (hdr, len),
                    };
                    match header::rx_verdict(&host, len, &self.a.rx_accept) {
                        RxVerdict::Deliver(hdr) => (hdr, len),
                        RxVerdict::CompleteCsum(csum) => {
                            header::complete_csum(&mut port.rx_buf[HDR_LEN..HDR_LEN + len], csum);
                            (VnetHdr::default(), len)
                        }
                        // An offload the driver does not accept (or a header it cannot be
                        // given): the frame is lost, the driver did nothing wrong.
                        RxVerdict::Drop => {
                            self.a.queues[qi].stats.drops += 1;
                            continue;
                        }
                    }
                }
            };
            let wait = self.rx.wait_for(len);
            if !wait.is_zero() {
                port.rx_pending = Some((hdr, len));
                if wait != Duration::MAX {
                    self.rx.throttle(wait)?;
                }
                return Ok(());
            }
            let q = &mut self.a.queues[qi];
            let mut rxq = RxQueue {
                mem: &self.a.mem,
                queue: &mut q.queue,
                source: q.source,
                mergeable,
                stats: &mut q.stats,
            };
            match rxq.deliver(hdr, &mut port.rx_buf, len)? {
                Delivery::Delivered { .. } => {
                    self.rx.limiter.take(len);
                    *delivered = true;
                }
                Delivery::NoBuffers => {
                    port.rx_pending = Some((hdr, len));
                    if want_more_buffers(&mut q.queue, &self.a.mem)? {
                        continue;
                    }
                    return Ok(());
                }
                // Larger than the driver's buffer, or lost with a malformed chain (which
                // `deliver` counted as the error): a drop either way.
                Delivery::TooLarge | Delivery::Dropped => q.stats.drops += 1,
            }
        }
        Ok(())
    }

    /// The control queue.
    fn ctrl(&mut self, qi: usize) -> Result<(), DeviceError> {
        if !self.a.ready(qi) {
            return Ok(());
        }
        let mut completed = false;
        let result = self.ctrl_loop(qi, &mut completed);
        if completed {
            self.a.notify(qi)?;
        }
        result
    }

    fn ctrl_loop(&mut self, qi: usize, completed: &mut bool) -> Result<(), DeviceError> {
        loop {
            let mem = &self.a.mem;
            let q = &mut self.a.queues[qi];
            q.queue
                .disable_notification(mem)
                .map_err(DeviceError::Queue)?;
            let Some(head) = pop_head(&mut q.queue, mem)? else {
                if q.queue
                    .enable_notification(mem)
                    .map_err(DeviceError::Queue)?
                {
                    continue;
                }
                return Ok(());
            };
            let parsed = ctrl::parse(mem, &q.source, head, self.a.negotiated);
            let used = match parsed {
                Ok(p) => {
                    let ok = match p.command {
                        Ok(command) => self.execute(command)?,
                        Err(_) => false,
                    };
                    let ack = if ok { ctrl::OK } else { ctrl::ERR };
                    let q = &mut self.a.queues[qi];
                    q.stats.requests += 1;
                    if !ok {
                        q.stats.errors += 1;
                    }
                    // Checked to lie inside guest memory by the walk.
                    u32::from(self.a.mem.write_obj(ack, p.ack).is_ok())
                }
                Err(_) => {
                    self.a.queues[qi].stats.errors += 1;
                    0
                }
            };
            self.a.queues[qi]
                .queue
                .add_used(&self.a.mem, head, used)
                .map_err(DeviceError::Queue)?;
            *completed = true;
        }
    }

    /// Carries out a control command; `false`: refused (`VIRTIO_NET_ERR`).
    fn execute(&mut self, command: Command) -> Result<bool, DeviceError> {
        match command {
            Command::SetPairs(n) => {
                if n == 0 || usize::from(n) > self.ports.len() {
                    return Ok(false);
                }
                self.a.active_pairs = n;
                // Frames held for a queue that is no longer routed to stay with their port and
                // go to the port's new queue.
                for port in 0..self.ports.len() {
                    self.rx_port(port)?;
                }
                Ok(true)
            }
            Command::SetOffloads(offloads) => {
                let flags = tun_flags::for_guest(offloads);
                for port in self.ports.iter_mut() {
                    if port.ep.set_offloads(flags).is_err() {
                        return Ok(false);
                    }
                }
                self.a.rx_accept = rx_accept(offloads);
                Ok(true)
            }
        }
    }
}

/// What the driver accepts on receive for the guest offload features `guest`.
pub(crate) fn rx_accept(guest: u64) -> RxAccept {
    RxAccept {
        csum: guest & features::GUEST_CSUM != 0,
        tso4: guest & features::GUEST_TSO4 != 0,
        tso6: guest & features::GUEST_TSO6 != 0,
        ecn: guest & features::GUEST_ECN != 0,
    }
}
