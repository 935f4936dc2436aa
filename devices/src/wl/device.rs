//! The virtio-wl backend: activation, the queue entry points, reset, statistics.
//!
//! [`Wl`] owns the device's host services handle and, while active, an `Active` with the two
//! queues, the vfd table, the region's free space and the inbox. Out-queue commands run in
//! `exec`, the host side (fds becoming ready, delivery to the in queue) in `input`.
//!
//! Notifications come three ways: the out queue (commands), the in queue (the guest gave back
//! buffers: deliver what waits, resume reading from parked vfds), and the device's own fds
//! (contexts and pipe ends, registered with the loop under their vfd id as token).
//!
//! Used chains do not interrupt one by one: each entry point ends with one decision over both
//! queues (`Active::signal_used`), so a pass that answers eight commands and delivers three
//! messages costs the driver at most one interrupt, and none when it asked for none
//! (`VIRTQ_AVAIL_F_NO_INTERRUPT` without `EVENT_IDX`, `used_event` with it).

use std::sync::Arc;

use ipc::{DeviceStats, QueueStats};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::chain::{ChainSource, Segment};
use super::inbox::Inbox;
use super::protocol::{F_TRANS_FLAGS, F_USE_SHMEM, PFN_SHIFT, VFD_CONTROL, VFD_READ, VFD_WRITE};
use super::vfd::{ShmSpace, VfdTable};
use super::{MAX_CONTEXTS, MAX_QUEUE_SIZE, MAX_VFDS, NUM_QUEUES, QUEUE_IN, QUEUE_OUT};
use crate::kind::ShmWindow;
use crate::notify::wants_interrupt;
use crate::services::HostServices;
use crate::{
    activation, DeviceError, Interrupt, VirtioBackend, VIRTIO_F_RING_EVENT_IDX,
    VIRTIO_F_RING_INDIRECT_DESC, VIRTIO_F_VERSION_1, VIRTIO_ID_WL,
};
use crate::{EventRegistry, EventSet};

/// Features virtio-wl offers.
pub(super) const FEATURES: u64 = VIRTIO_F_VERSION_1
    | VIRTIO_F_RING_INDIRECT_DESC
    | VIRTIO_F_RING_EVENT_IDX
    | F_TRANS_FLAGS
    | F_USE_SHMEM;

/// A virtio-wl device.
pub struct Wl {
    services: Box<dyn HostServices>,
    region: ShmWindow,
    state: State,
}

enum State {
    Inactive,
    Active(Box<Active>),
    /// A queue could not be completed; notifications are ignored until reset.
    Broken(Box<Active>),
}

/// A `VFD_SEND` in progress: its chain is popped but not answered yet (`exec` makes and
/// finishes it).
#[derive(Debug)]
pub struct Stalled {
    /// Head of its chain.
    pub head: u16,
    /// Where its response goes.
    pub response: Vec<Segment>,
    /// The vfd it writes to.
    pub target: u32,
    /// Bytes still to send.
    pub data: Vec<u8>,
    /// vfds still to send (with the first byte); empty once they went.
    pub vfds: Vec<u32>,
}

/// Everything the device holds between activate and reset.
pub(super) struct Active {
    pub mem: GuestMemoryMmap,
    pub in_queue: Queue,
    pub out_queue: Queue,
    /// Where each queue's chains live (for the shared chain walk).
    pub in_source: ChainSource,
    pub out_source: ChainSource,
    pub interrupt: Arc<dyn Interrupt>,
    /// The driver acknowledged `TRANS_FLAGS`.
    pub trans_flags: bool,
    /// The driver acknowledged `USE_SHMEM`.
    pub use_shmem: bool,
    pub region: ShmWindow,
    pub vfds: VfdTable,
    pub space: ShmSpace,
    pub inbox: Inbox,
    /// An out-queue command waiting for its target to take more bytes.
    pub stalled: Option<Stalled>,
    /// Counters: in queue (messages delivered, data bytes, refused fds and bad buffers), out
    /// queue (commands, data bytes sent, refused commands and bad chains).
    pub stats: [QueueStats; 2],
    /// Per queue (in, out): chains were used since the driver was last considered for an
    /// interrupt ([`Active::signal_used`]).
    pub used_unsignalled: [bool; 2],
    /// Receive buffer for the host side.
    pub buf: Vec<u8>,
}

impl Wl {
    /// A device whose buffers go into `region`, asking `services` for connections and
    /// mappings.
    pub fn new(region: ShmWindow, services: Box<dyn HostServices>) -> Self {
        Wl {
            services,
            region,
            state: State::Inactive,
        }
    }

    fn break_on_error(&mut self, result: Result<(), DeviceError>) -> Result<(), DeviceError> {
        if result.is_err() {
            if let State::Active(active) = std::mem::replace(&mut self.state, State::Inactive) {
                self.state = State::Broken(active);
            }
        }
        result
    }

    /// Number of open vfds (for tests and limits checks).
    pub fn vfd_count(&self) -> usize {
        match &self.state {
            State::Active(active) | State::Broken(active) => active.vfds.len(),
            State::Inactive => 0,
        }
    }
}

impl VirtioBackend for Wl {
    /// virtio device ID.
    fn device_type(&self) -> u32 {
        VIRTIO_ID_WL
    }

    /// Number of queues.
    fn num_queues(&self) -> u16 {
        NUM_QUEUES
    }

    /// Largest queue size.
    fn max_queue_size(&self) -> u16 {
        MAX_QUEUE_SIZE
    }

    /// Features offered.
    fn features(&self) -> u64 {
        FEATURES
    }

    /// The config space: virtio-wl has none.
    fn config(&self) -> Vec<u8> {
        Vec::new()
    }

    fn write_config(&mut self, _offset: u32, _data: &[u8]) {
        // No config space; the transport already refused out-of-range writes.
    }

    /// Starts the device (see `VirtioBackend::activate`).
    fn activate(
        &mut self,
        driver_features: u64,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<dyn Interrupt>,
    ) -> Result<(), DeviceError> {
        if !matches!(self.state, State::Inactive) {
            return Err(DeviceError::AlreadyActive);
        }
        let offer = activation::Offer {
            features: FEATURES,
            num_queues: NUM_QUEUES,
            max_queue_size: MAX_QUEUE_SIZE,
        };
        activation::check(&offer, driver_features, &mem, &queues)?;
        let [mut in_queue, mut out_queue]: [Queue; 2] =
            queues
                .try_into()
                .map_err(|q: Vec<Queue>| DeviceError::QueueCount {
                    expected: NUM_QUEUES,
                    got: q.len(),
                })?;
        // Both queues carry traffic: the second must be usable too.
        if !out_queue.ready() || !out_queue.is_valid(&mem) {
            return Err(DeviceError::InvalidQueue { index: QUEUE_OUT });
        }
        let event_idx = driver_features & VIRTIO_F_RING_EVENT_IDX != 0;
        let indirect = driver_features & VIRTIO_F_RING_INDIRECT_DESC != 0;
        let source = |q: &Queue| ChainSource {
            desc_table: GuestAddress(q.desc_table()),
            queue_size: q.size(),
            indirect,
        };
        let (in_source, out_source) = (source(&in_queue), source(&out_queue));
        in_queue.set_event_idx(event_idx);
        out_queue.set_event_idx(event_idx);
        self.state = State::Active(Box::new(Active {
            mem,
            in_queue,
            out_queue,
            in_source,
            out_source,
            interrupt,
            trans_flags: driver_features & F_TRANS_FLAGS != 0,
            use_shmem: driver_features & F_USE_SHMEM != 0,
            region: self.region,
            vfds: VfdTable::new(MAX_VFDS, MAX_CONTEXTS),
            space: ShmSpace::new(self.region.len),
            inbox: Inbox::default(),
            stalled: None,
            stats: [QueueStats::default(); 2],
            used_unsignalled: [false; 2],
            buf: vec![0; super::IN_DATA_MAX],
        }));
        Ok(())
    }

    /// Queue `index` was notified.
    fn process_queue(
        &mut self,
        index: u16,
        events: &mut dyn EventRegistry,
    ) -> Result<(), DeviceError> {
        if index >= NUM_QUEUES {
            return Err(DeviceError::UnknownQueue(index));
        }
        let State::Active(active) = &mut self.state else {
            return Ok(());
        };
        let result = if index == QUEUE_OUT {
            active.process_out(self.services.as_mut(), events)
        } else {
            active.deliver(events)
        };
        // Whatever ended the pass, the driver hears of every chain already used.
        let signalled = active.signal_used();
        self.break_on_error(result.and(signalled))
    }

    /// One of the device's fds (the vfd `token`) is ready.
    fn process_event(
        &mut self,
        token: u32,
        ready: EventSet,
        events: &mut dyn EventRegistry,
    ) -> Result<(), DeviceError> {
        let State::Active(active) = &mut self.state else {
            return Ok(());
        };
        let result = active.on_ready(token, ready, self.services.as_mut(), events);
        let signalled = active.signal_used();
        self.break_on_error(result.and(signalled))
    }

    /// Stops the device: every vfd is closed (mappings removed, connections closed) and the
    /// queues come back.
    fn reset(&mut self) -> Option<Vec<Queue>> {
        match std::mem::replace(&mut self.state, State::Inactive) {
            State::Inactive => None,
            State::Active(mut active) | State::Broken(mut active) => {
                active.close_all(self.services.as_mut());
                Some(vec![active.in_queue, active.out_queue])
            }
        }
    }

    /// Counters since activation: in queue, out queue.
    fn stats(&self) -> DeviceStats {
        match &self.state {
            State::Active(active) | State::Broken(active) => DeviceStats {
                queues: active.stats.to_vec(),
            },
            State::Inactive => DeviceStats::default(),
        }
    }
}

impl Active {
    /// The `pfn` of region offset `offset`.
    pub fn pfn(&self, offset: u64) -> u64 {
        if self.use_shmem {
            offset >> PFN_SHIFT
        } else {
            (self.region.base + offset) >> PFN_SHIFT
        }
    }

    /// The `pfn` of a vfd without memory: 0 for guest-physical numbers, the region's length in
    /// pages with `USE_SHMEM` (where 0 is a valid offset), as crosvm answers.
    pub fn no_pfn(&self) -> u64 {
        if self.use_shmem {
            self.region.len >> PFN_SHIFT
        } else {
            0
        }
    }

    /// Flags of a context, for the guest.
    pub fn context_flags(&self) -> u32 {
        if self.trans_flags {
            VFD_READ | VFD_WRITE
        } else {
            VFD_CONTROL
        }
    }

    /// Flags of a pipe, for the guest.
    pub fn pipe_flags(&self, guest_reads: bool) -> u32 {
        match (self.trans_flags, guest_reads) {
            (false, _) => 0,
            (true, true) => VFD_READ,
            (true, false) => VFD_WRITE,
        }
    }

    /// The next available head of queue `queue`, checked to be one of its descriptors (only
    /// the index is taken from virtio-queue; the chain is walked by `chain`).
    pub fn pop(&mut self, queue: u16) -> Result<Option<u16>, DeviceError> {
        let q = if queue == QUEUE_IN {
            &mut self.in_queue
        } else {
            &mut self.out_queue
        };
        let Some(chain) = q.iter(&self.mem).map_err(DeviceError::Queue)?.next() else {
            return Ok(None);
        };
        let (head, size) = (chain.head_index(), q.size());
        if head >= size {
            return Err(DeviceError::BadHeadIndex { head, size });
        }
        Ok(Some(head))
    }

    /// Adds the used element; the interrupt, if the driver wants one, follows at the end of
    /// the pass ([`Self::signal_used`]).
    pub fn complete(&mut self, queue: u16, head: u16, len: u32) -> Result<(), DeviceError> {
        let q = if queue == QUEUE_IN {
            &mut self.in_queue
        } else {
            &mut self.out_queue
        };
        q.add_used(&self.mem, head, len)
            .map_err(DeviceError::Queue)?;
        self.used_unsignalled[usize::from(queue)] = true;
        Ok(())
    }

    /// Interrupts the driver once if a queue that used chains since the last call wants it
    /// (decided per queue by [`crate::notify::wants_interrupt`]); both queues are considered
    /// even when the first already decided, so that `EVENT_IDX`'s bookkeeping stays exact.
    pub fn signal_used(&mut self) -> Result<(), DeviceError> {
        let mut interrupt = false;
        for (index, q) in [
            (QUEUE_IN, &mut self.in_queue),
            (QUEUE_OUT, &mut self.out_queue),
        ] {
            let used = &mut self.used_unsignalled[usize::from(index)];
            if std::mem::take(used) {
                interrupt |= wants_interrupt(q, &self.mem).map_err(DeviceError::Queue)?;
            }
        }
        if interrupt {
            self.interrupt.signal_used_queue();
        }
        Ok(())
    }
}

/// Whether `ready` reports the peer gone or an error.
pub(super) fn hung_up(ready: EventSet) -> bool {
    ready.intersects(EventSet::HANG_UP | EventSet::ERROR | EventSet::READ_HANG_UP)
}
