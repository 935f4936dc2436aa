//! The virtio-blk queue loop: pop chains, parse them (`request::parse`), turn each validated
//! request into engine operations, and complete requests in the order the engine finishes them
//! — returning each queue's chains to its used ring in the order they were taken (`order`).
//!
//! One `process_queue` call runs this loop until the queue is idle:
//!
//! ```text
//!   ┌─▶ disable notifications
//!   │   pop + parse + submit while < MAX_IN_FLIGHT requests and the engine has room
//!   │   nothing in flight? ── poll the avail index for the window ── new chain? ──▶ loop
//!   │                         window over ── enable notifications ── nothing new? ──▶ return
//!   │   poll the engine's completions (and, with room, the avail index) for the in-flight
//!   │   window; only if that found nothing, sleep until ≥ 1 completion;
//!   │   per finished request: status byte, then add_used of
//!   │   every finished chain no earlier chain of its queue waits for
//!   │   one interrupt for all the chains used since the last one, if the driver wants it
//!   └───────────────────────────────────────────────────────────────┘
//! ```
//!
//! The interrupt is raised once per batch (after the requests completed at once while
//! popping, and after each batch of engine completions), always before the loop blocks or
//! polls, so the driver never waits for one the device holds back. One per request would cost
//! a driver that takes interrupts one injection each (KVM defers an irqfd aimed at an IOAPIC
//! pin to a kernel worker) and often more guest interrupts, for the same used ring.
//!
//! The idle poll (window > 0; `poll` says how the window adapts) only reads the ring's avail
//! index (acquire) while notifications stay suppressed, so a driver that submits within the
//! window needs no notification (no MMIO exit, no wake-up of a sleeping worker). When the
//! window ends the loop re-enables notifications and re-checks the avail index exactly as
//! without polling, so a chain made available at any moment is either seen or notified.
//!
//! The in-flight poll (see "In-flight polling" in the module above) spins on the engine's
//! completions the same way while requests are in flight, before the loop sleeps in `wait`.
//!
//! A request that fails validation is completed at once with `IOERR`/`UNSUPP` (or used length
//! 0 when the chain has no status byte); a host I/O error completes its request with `IOERR`.
//! Neither stops the device. Only a broken ring (bad avail index, head index outside the
//! queue, used ring not writable) or an engine that cannot wait any more does.
//!
//! Here: the loop, its polls, and completions (status byte, used ring, interrupt). How a taken
//! chain becomes engine operations — parse, build, stage for merging, submit — is `submit`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipc::{DeviceStats, QueueStats};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::engine::{Completion, Engine, Fallocate, Op, MAX_OPS_PER_REQUEST};
use super::merge::Run;
use super::order::InOrder;
use super::poll::{self, PollWindow};
use super::request::{ChainSource, DiskLimits, Segment};
use super::{status, ID_BYTES, MAX_BOUNCE_BYTES, MAX_DATA_BYTES, MAX_IN_FLIGHT};
use crate::notify::interrupts_suppressed;
use crate::{DeviceError, Interrupt};

mod submit;

/// One activated queue.
pub(crate) struct QueueState {
    pub queue: Queue,
    /// The driver set it up (`ready`); a queue that is not is never touched.
    pub ready: bool,
    /// Where its chains live, fixed at activation.
    pub source: ChainSource,
    pub stats: QueueStats,
    /// Its idle-poll window (zero until [`Active::with_poll`]).
    pub poll: PollWindow,
    /// Its chains from taken to returned, in taking order.
    pub order: InOrder,
    /// Chains were put in its used ring since the driver was last considered for an interrupt
    /// ([`Active::signal_used`]).
    pub used_unsignalled: bool,
}

/// Direct-I/O alignment of the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DirectIo {
    /// Alignment of buffer addresses and lengths in memory.
    pub mem_align: usize,
    /// Alignment of file offsets and transfer lengths (the advertised `blk_size`).
    pub offset_align: u64,
}

/// A request between its parse and its completion.
struct InFlight {
    queue: u16,
    /// Its number in its queue's taking order.
    seq: u64,
    head: u16,
    status_addr: GuestAddress,
    status: u8,
    /// Bytes the request writes into device-writable data buffers when it succeeds.
    data_written: u32,
    /// Payload bytes moved (statistics).
    bytes: u64,
    ops_left: usize,
    /// `fdatasync` once every op succeeded (writes, discard and write-zeroes without `FLUSH`).
    sync_after: bool,
    /// A discard: `EOPNOTSUPP` from the file system is not an error (discard is a hint).
    discard: bool,
    /// A read through a bounce buffer: the guest buffers its bytes go to.
    copy_out: Vec<Segment>,
    /// The other requests (slots) merged into this one's operation (see `merge`): they
    /// complete with it.
    members: Vec<usize>,
}

/// Everything the device holds between activate and reset.
pub(crate) struct Active {
    mem: Arc<GuestMemoryMmap>,
    /// Indexed by queue.
    queues: Vec<QueueState>,
    interrupt: Arc<dyn Interrupt>,
    disk: DiskLimits,
    /// `VIRTIO_BLK_F_FLUSH` was negotiated: writes need not be durable before completion.
    flush: bool,
    direct: Option<DirectIo>,
    id: [u8; ID_BYTES],
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    requests_in_flight: usize,
    /// Bytes of bounce buffers held by operations in flight (at most [`MAX_BOUNCE_BYTES`]).
    bounce_in_flight: usize,
    completions: Vec<Completion>,
    /// Request merging is on (`BlkOptions::merge`).
    merge: bool,
    /// The open run of staged requests (see `merge`), submitted when the batch ends.
    run: Option<Run>,
    /// How long the loop polls for completions while requests are in flight (zero until
    /// [`Active::with_poll`]).
    in_flight_poll: PollWindow,
}

/// The in-flight poll window's maximum, in idle-poll windows: long enough to cover a 4 KiB
/// read on a disk of ~100 µs (the default 32 µs window gives 128 µs), short enough that a
/// long write costs little before the window adapts down to its floor.
pub(crate) const IN_FLIGHT_POLL_FACTOR: u32 = 4;

impl Active {
    pub(crate) fn new(
        mem: Arc<GuestMemoryMmap>,
        queues: Vec<QueueState>,
        interrupt: Arc<dyn Interrupt>,
        disk: DiskLimits,
        flush: bool,
        direct: Option<DirectIo>,
        id: [u8; ID_BYTES],
    ) -> Self {
        Active {
            mem,
            queues,
            interrupt,
            disk,
            flush,
            direct,
            id,
            slots: Vec::new(),
            free: Vec::new(),
            requests_in_flight: 0,
            bounce_in_flight: 0,
            completions: Vec::new(),
            merge: false,
            run: None,
            in_flight_poll: PollWindow::new(Duration::ZERO),
        }
    }

    /// Turns request merging on or off (off, the default: one host I/O per request).
    pub(crate) fn with_merge(mut self, merge: bool) -> Self {
        self.merge = merge;
        self
    }

    /// Gives every queue an idle-poll window of at most `max` (zero, the default: no polling).
    pub(crate) fn with_poll(mut self, max: Duration) -> Self {
        for q in &mut self.queues {
            q.poll = PollWindow::new(max);
        }
        self.in_flight_poll = PollWindow::new(max.saturating_mul(IN_FLIGHT_POLL_FACTOR));
        self
    }

    /// The queues, for reset.
    pub(crate) fn into_queues(self) -> Vec<Queue> {
        self.queues.into_iter().map(|q| q.queue).collect()
    }

    pub(crate) fn stats(&self) -> DeviceStats {
        DeviceStats {
            queues: self.queues.iter().map(|q| q.stats).collect(),
        }
    }

    /// Serves queue `index` until it is idle and nothing is in flight.
    pub(crate) fn process(
        &mut self,
        index: u16,
        engine: &mut dyn Engine,
    ) -> Result<(), DeviceError> {
        if self.queue(index).is_none() {
            return Ok(()); // not set up by the driver: nothing to serve
        }
        let served = self.serve(index, engine);
        // Whatever ended the loop, the driver hears of every chain already used.
        let signalled = self.signal_used();
        served.and(signalled)
    }

    /// The loop of [`process`](Self::process). The driver is interrupted once per batch of
    /// completions, before the loop blocks or polls again, not once per request: a batch of
    /// eight merged reads costs the guest one interrupt (and KVM one injection), not eight.
    fn serve(&mut self, index: u16, engine: &mut dyn Engine) -> Result<(), DeviceError> {
        loop {
            self.with_queue(index, |q, mem| q.disable_notification(mem))?;
            self.fill(index, engine)?;
            self.signal_used()?;
            if self.requests_in_flight == 0 {
                if self.poll_for_work(index)? {
                    continue;
                }
                if !self.with_queue(index, |q, mem| q.enable_notification(mem))? {
                    return Ok(());
                }
                continue;
            }
            let mut done = std::mem::take(&mut self.completions);
            let started = Instant::now();
            if !self.poll_in_flight(index, engine, &mut done)? {
                engine.wait(&mut done).map_err(DeviceError::HostIo)?;
                self.in_flight_poll.slept(started.elapsed());
            }
            for completion in done.drain(..) {
                self.finish_op(engine, completion)?;
            }
            self.completions = done;
            self.signal_used()?;
        }
    }

    /// Interrupts the driver once if a queue that used chains since the last call needs it
    /// (`EVENT_IDX`'s `used_event`, or without it the avail ring's flags, decide per queue).
    fn signal_used(&mut self) -> Result<(), DeviceError> {
        let mem = Arc::clone(&self.mem);
        let mut interrupt = false;
        for q in self.queues.iter_mut().filter(|q| q.used_unsignalled) {
            q.used_unsignalled = false;
            if q.queue
                .needs_notification(&*mem)
                .map_err(DeviceError::Queue)?
                && !interrupts_suppressed(&q.queue, &mem)
            {
                interrupt = true;
            }
        }
        if interrupt {
            self.interrupt.signal_used_queue();
        }
        Ok(())
    }

    /// The idle poll: spins for the queue's current window, notifications still suppressed,
    /// until the driver publishes an avail index past the last chain taken. `true`: there is
    /// new work; `false`: the window ended (or is zero) with none.
    fn poll_for_work(&mut self, index: u16) -> Result<bool, DeviceError> {
        let mem = Arc::clone(&self.mem);
        let q = self.queue(index).ok_or(DeviceError::UnknownQueue(index))?;
        let window = q.poll.current();
        if window.is_zero() {
            return Ok(false);
        }
        let queue = &q.queue;
        let found = poll::spin(window, || {
            queue
                .avail_idx(&*mem, Ordering::Acquire)
                .map(|avail| avail.0 != queue.next_avail())
                .map_err(DeviceError::Queue)
        })?;
        q.poll.polled(found);
        Ok(found)
    }

    /// The in-flight poll: spins for the current in-flight window until the engine has
    /// finished operations (appended to `done`) or, while there is room for another request,
    /// the driver published a new chain. `true`: one of them happened; `false`: the window
    /// ended (or is zero) and the caller sleeps in [`Engine::wait`], then tells the window how
    /// long the completion took ([`PollWindow::slept`]): a window at its floor grows back when
    /// the maximum would have caught it.
    fn poll_in_flight(
        &mut self,
        index: u16,
        engine: &mut dyn Engine,
        done: &mut Vec<Completion>,
    ) -> Result<bool, DeviceError> {
        let window = self.in_flight_poll.current();
        if window.is_zero() {
            return Ok(false);
        }
        let room = self.has_room(engine);
        let mem = Arc::clone(&self.mem);
        let q = self.queue(index).ok_or(DeviceError::UnknownQueue(index))?;
        let queue = &q.queue;
        let found = poll::spin(window, || {
            if engine.reap_ready(done).map_err(DeviceError::HostIo)? {
                return Ok(true);
            }
            Ok(room
                && queue
                    .avail_idx(&*mem, Ordering::Acquire)
                    .map(|avail| avail.0 != queue.next_avail())
                    .map_err(DeviceError::Queue)?)
        })?;
        if found {
            self.in_flight_poll.polled(true);
        }
        Ok(found)
    }

    fn queue(&mut self, index: u16) -> Option<&mut QueueState> {
        self.queues.get_mut(usize::from(index)).filter(|q| q.ready)
    }

    /// Runs a virtio-queue call on queue `index` with guest memory.
    fn with_queue<T>(
        &mut self,
        index: u16,
        f: impl FnOnce(&mut Queue, &GuestMemoryMmap) -> Result<T, virtio_queue::Error>,
    ) -> Result<T, DeviceError> {
        let mem = Arc::clone(&self.mem);
        let q = self.queue(index).ok_or(DeviceError::UnknownQueue(index))?;
        f(&mut q.queue, &mem).map_err(DeviceError::Queue)
    }

    /// Pops and starts chains while there is room — in the engine, and with direct I/O for one
    /// more maximal bounce buffer under [`MAX_BOUNCE_BYTES`] — then submits the batch's open
    /// run.
    fn fill(&mut self, index: u16, engine: &mut dyn Engine) -> Result<(), DeviceError> {
        while self.has_room(engine) {
            let Some((seq, head)) = self.pop(index)? else {
                break;
            };
            self.start(index, seq, head, engine)?;
        }
        self.submit_run(engine)
    }

    /// Whether one more request may start: in the engine, and with direct I/O for one more
    /// maximal bounce buffer under [`MAX_BOUNCE_BYTES`].
    fn has_room(&self, engine: &dyn Engine) -> bool {
        let bounce_room = self
            .bounce_in_flight
            .saturating_add(MAX_DATA_BYTES as usize)
            <= MAX_BOUNCE_BYTES;
        self.requests_in_flight < MAX_IN_FLIGHT
            && engine.in_flight() + usize::from(self.run.is_some()) + MAX_OPS_PER_REQUEST
                <= engine.capacity()
            && (self.direct.is_none() || bounce_room)
    }

    /// The next available head index, checked to be a descriptor of the queue, with its number
    /// in the queue's taking order. None either when the queue is empty or when as many chains
    /// as the queue has descriptors wait to be returned (only a driver that reuses descriptors
    /// it has not got back gets there; an earlier chain must finish first).
    fn pop(&mut self, index: u16) -> Result<Option<(u64, u16)>, DeviceError> {
        let mem = Arc::clone(&self.mem);
        let q = self.queue(index).ok_or(DeviceError::UnknownQueue(index))?;
        if q.order.len() >= usize::from(q.queue.size()) {
            return Ok(None);
        }
        let chain = q.queue.iter(&*mem).map_err(DeviceError::Queue)?.next();
        let Some(chain) = chain else {
            return Ok(None);
        };
        // Only the head index is taken from virtio-queue's chain; the descriptors themselves
        // are read by `request::parse`, once.
        let (head, size) = (chain.head_index(), q.queue.size());
        if head >= size {
            return Err(DeviceError::BadHeadIndex { head, size });
        }
        Ok(Some((q.order.take(), head)))
    }

    /// One operation finished: account for it, and complete its request when it was the last.
    fn finish_op(&mut self, engine: &mut dyn Engine, c: Completion) -> Result<(), DeviceError> {
        let Ok(slot) = usize::try_from(c.token) else {
            return Ok(());
        };
        let mem = Arc::clone(&self.mem);
        let Some(req) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return Ok(()); // not a live request's (cannot happen)
        };
        req.ops_left = req.ops_left.saturating_sub(1);
        self.bounce_in_flight = self.bounce_in_flight.saturating_sub(bounce_len(&c.op));
        let expected = c.op.transfer_len();
        match (&c.op, &c.result) {
            (Op::Read { iov, .. }, Ok(n)) if *n == expected => {
                if let Some(bytes) = iov.bounce_bytes().filter(|_| !req.copy_out.is_empty()) {
                    if !copy_out(&mem, bytes, &req.copy_out) {
                        req.status = status::IOERR;
                    }
                }
            }
            (_, Ok(n)) if *n == expected => {}
            (Op::Fallocate { mode, offset, len }, Err(e))
                if e.raw_os_error() == Some(libc::EOPNOTSUPP) =>
            {
                if req.discard {
                    // Discard is a hint; a file system that cannot punch holes ignores it.
                } else if *mode == Fallocate::ZeroRange {
                    // No zero-range here: punching a hole also reads back as zeroes.
                    let retry = Op::Fallocate {
                        mode: Fallocate::PunchHole,
                        offset: *offset,
                        len: *len,
                    };
                    match engine.submit(c.token, retry) {
                        Ok(()) => req.ops_left += 1,
                        Err(_) => req.status = status::IOERR,
                    }
                } else {
                    req.status = status::IOERR;
                }
            }
            // A host error or a short transfer (the image shrank under us).
            _ => req.status = status::IOERR,
        }
        if req.ops_left > 0 {
            return Ok(());
        }
        if req.sync_after && req.status == status::OK {
            req.sync_after = false;
            match engine.submit(c.token, Op::Sync) {
                Ok(()) => {
                    req.ops_left = 1;
                    return Ok(());
                }
                Err(_) => req.status = status::IOERR,
            }
        }
        let Some(mut req) = self.slots.get_mut(slot).and_then(Option::take) else {
            return Ok(());
        };
        // A merged operation: its members share its outcome, and complete after it in the
        // order the driver made them available.
        let members = std::mem::take(&mut req.members);
        let outcome = req.status;
        self.finish_request(req, slot)?;
        for member in members {
            if let Some(mut m) = self.slots.get_mut(member).and_then(Option::take) {
                if outcome != status::OK {
                    m.status = outcome;
                }
                self.finish_request(m, member)?;
            }
        }
        Ok(())
    }

    /// Completes a request whose operations are all done and frees its slot.
    fn finish_request(&mut self, req: InFlight, slot: usize) -> Result<(), DeviceError> {
        self.free.push(slot);
        self.requests_in_flight = self.requests_in_flight.saturating_sub(1);
        let (written, bytes) = if req.status == status::OK {
            (req.data_written, req.bytes)
        } else {
            (0, 0)
        };
        self.complete(
            req.queue,
            req.seq,
            req.head,
            Some(req.status_addr),
            req.status,
            written,
            bytes,
        )
    }

    /// Writes the status byte (if there is one) of chain `seq` of `queue`, then puts every
    /// finished chain no earlier one of the queue waits for into the used ring (the interrupt,
    /// if the driver wants one, follows at the batch's end: [`Self::signal_used`]). The used
    /// length counts the data bytes written plus the status.
    #[allow(clippy::too_many_arguments)]
    fn complete(
        &mut self,
        queue: u16,
        seq: u64,
        head: u16,
        status_addr: Option<GuestAddress>,
        status_byte: u8,
        data_written: u32,
        bytes: u64,
    ) -> Result<(), DeviceError> {
        let mem = Arc::clone(&self.mem);
        let used_len = match status_addr {
            // The address was checked to be inside guest memory when the chain was parsed.
            Some(addr) if mem.write_obj(status_byte, addr).is_ok() => {
                data_written.saturating_add(1)
            }
            _ => 0,
        };
        let q = self.queue(queue).ok_or(DeviceError::UnknownQueue(queue))?;
        q.stats.requests += 1;
        q.stats.bytes += bytes;
        if status_byte != status::OK || used_len == 0 {
            q.stats.errors += 1;
        }
        q.order.finish(seq, head, used_len);
        while let Some((head, used_len)) = q.order.pop_ready() {
            q.queue
                .add_used(&*mem, head, used_len)
                .map_err(DeviceError::Queue)?;
            q.used_unsignalled = true;
        }
        Ok(())
    }
}

/// Bytes of bounce buffer `op` holds (0 unless it is a read or write through one).
fn bounce_len(op: &Op) -> usize {
    match op {
        Op::Read { iov, .. } | Op::Write { iov, .. } => iov.bounce_bytes().map_or(0, <[u8]>::len),
        Op::Sync | Op::Fallocate { .. } => 0,
    }
}

/// Copies a bounce buffer's bytes into the guest buffers `to`.
fn copy_out(mem: &GuestMemoryMmap, bytes: &[u8], to: &[Segment]) -> bool {
    let mut at = 0;
    for seg in to {
        let n = seg.len as usize;
        let Some(src) = bytes.get(at..at + n) else {
            return false;
        };
        if mem.write_slice(src, seg.addr).is_err() {
            return false;
        }
        at += n;
    }
    true
}
