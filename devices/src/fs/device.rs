//! The virtio-fs backend: construction from the shared directory's fd, activation, the queue
//! loop, reset.
//!
//! Queue 0 is the hiprio queue (FORGET, INTERRUPT), queues 1..=N the request queues; all are
//! served the same way, one request at a time, in the order of each queue:
//!
//! ```text
//!   ┌─▶ disable notifications
//!   │   pop → parse (copy-in, once) → server → reply written once → add_used
//!   │   ... until the queue is empty; one interrupt for the batch if the driver wants one
//!   └── enable notifications ── new chains meanwhile? ──▶ loop, else return
//! ```
//!
//! A request that fails validation is answered with an errno (or used length 0 when it cannot
//! be answered) and the device keeps serving. Only a broken ring (bad avail index, head index
//! outside the queue, used ring not writable) stops it until reset.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use ipc::{DeviceStats, QueueStats};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::config::{self, FEATURES};
use super::reply::{self, Answer};
use super::request::{self, Op};
use super::server::{check_proc, Server};
use super::{FsError, FsOptions, MAX_QUEUE_SIZE, MAX_REQUEST_QUEUES, TAG_LEN};
use crate::chain::ChainSource;
use crate::notify::interrupts_suppressed;
use crate::{
    activation, DeviceError, EventRegistry, Interrupt, VirtioBackend, VIRTIO_F_RING_EVENT_IDX,
    VIRTIO_F_RING_INDIRECT_DESC, VIRTIO_ID_FS,
};

/// A virtio-fs device sharing one host directory.
pub struct Fs {
    server: Server,
    config: Vec<u8>,
    /// Request queues (the hiprio queue comes on top).
    request_queues: u16,
    state: State,
}

enum State {
    Inactive,
    Active(Box<Active>),
    /// A queue could not be completed; notifications are ignored until reset.
    Broken(Box<Active>),
}

/// One activated queue.
struct QueueState {
    queue: Queue,
    /// The driver set it up; a queue that is not is never touched.
    ready: bool,
    source: ChainSource,
    stats: QueueStats,
}

/// Everything the device holds between activate and reset.
struct Active {
    mem: GuestMemoryMmap,
    queues: Vec<QueueState>,
    interrupt: Arc<dyn Interrupt>,
}

impl Fs {
    /// A device sharing the directory `dir` (svmm opened it `O_PATH | O_DIRECTORY |
    /// O_NOFOLLOW`), re-opening its nodes through `proc` (an fd of the host's `/proc`).
    ///
    /// Checks the options, that `dir` is a directory and that `proc` is a procfs (`fstat`,
    /// `fstatfs`: call it before the worker confines itself).
    pub fn new(dir: OwnedFd, proc: OwnedFd, options: FsOptions) -> Result<Fs, FsError> {
        if options.tag.is_empty() || options.tag.len() > TAG_LEN {
            return Err(FsError::TagLength(options.tag));
        }
        if options.queues == 0 || options.queues > MAX_REQUEST_QUEUES {
            return Err(FsError::QueueCount(options.queues));
        }
        let proc = check_proc(proc)?;
        let server = Server::new(dir, proc, &options)?;
        Ok(Fs {
            server,
            config: config::config(&options.tag, options.queues),
            request_queues: options.queues,
            state: State::Inactive,
        })
    }

    /// Nodes the guest holds (root included) and open handles (tests, statistics).
    pub fn open_counts(&self) -> (usize, usize) {
        (self.server.inodes.len(), self.server.handles.len())
    }

    fn check_activation(
        &self,
        driver_features: u64,
        mem: &GuestMemoryMmap,
        queues: &[Queue],
    ) -> Result<(), DeviceError> {
        if !matches!(self.state, State::Inactive) {
            return Err(DeviceError::AlreadyActive);
        }
        let offer = activation::Offer {
            features: FEATURES,
            num_queues: self.num_queues(),
            max_queue_size: MAX_QUEUE_SIZE,
        };
        activation::check(&offer, driver_features, mem, queues)
    }
}

impl Active {
    /// Serves queue `index` until it is empty.
    fn process(&mut self, index: u16, server: &mut Server) -> Result<(), DeviceError> {
        let Some(q) = self.queues.get_mut(usize::from(index)).filter(|q| q.ready) else {
            return Ok(()); // not set up by the driver: nothing to serve
        };
        let mem = &self.mem;
        loop {
            q.queue
                .disable_notification(mem)
                .map_err(DeviceError::Queue)?;
            let mut used = 0u32;
            while let Some(head) = pop(&mut q.queue, mem)? {
                let (len, error, bytes) = serve(server, mem, &q.source, head);
                q.queue
                    .add_used(mem, head, len)
                    .map_err(DeviceError::Queue)?;
                q.stats.requests += 1;
                q.stats.bytes += bytes;
                q.stats.errors += u64::from(error);
                used += 1;
            }
            if used > 0
                && q.queue
                    .needs_notification(mem)
                    .map_err(DeviceError::Queue)?
                && !interrupts_suppressed(&q.queue, mem)
            {
                self.interrupt.signal_used_queue();
            }
            if !q
                .queue
                .enable_notification(mem)
                .map_err(DeviceError::Queue)?
            {
                return Ok(());
            }
        }
    }
}

/// The next available head index, checked to be a descriptor of the queue.
fn pop(queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<Option<u16>, DeviceError> {
    let Some(chain) = queue.iter(mem).map_err(DeviceError::Queue)?.next() else {
        return Ok(None);
    };
    // Only the head index is taken from virtio-queue's chain; the descriptors themselves are
    // read by `request::parse`, once.
    let (head, size) = (chain.head_index(), queue.size());
    if head >= size {
        return Err(DeviceError::BadHeadIndex { head, size });
    }
    Ok(Some(head))
}

/// Parses, executes and answers the chain at `head`. Returns the used length, whether it was
/// an error, and the payload bytes moved.
fn serve(
    server: &mut Server,
    mem: &GuestMemoryMmap,
    source: &ChainSource,
    head: u16,
) -> (u32, bool, u64) {
    match request::parse(mem, source, head) {
        Ok(parsed) => {
            let bytes = match &parsed.request.op {
                Op::Write { size, .. } => u64::from(*size),
                _ => 0,
            };
            let answer = server.handle(&parsed.request, mem);
            let read = match (&parsed.request.op, &answer) {
                (Op::Read { .. }, Answer::Ok(data)) => data.len() as u64,
                _ => 0,
            };
            let (len, error) = reply::send(mem, &parsed.reply, parsed.request.unique, answer);
            (len, error, bytes + read)
        }
        Err(rejected) => match &rejected.answer {
            Some((unique, to)) => {
                let (len, _) = reply::send(mem, to, *unique, Answer::Error(rejected.errno()));
                (len, true, 0)
            }
            None => (0, true, 0),
        },
    }
}

impl VirtioBackend for Fs {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn num_queues(&self) -> u16 {
        1 + self.request_queues
    }

    fn max_queue_size(&self) -> u16 {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        FEATURES
    }

    fn config(&self) -> Vec<u8> {
        self.config.clone()
    }

    fn write_config(&mut self, _offset: u32, _data: &[u8]) {
        // The virtio-fs config space is read-only.
    }

    fn activate(
        &mut self,
        driver_features: u64,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<dyn Interrupt>,
    ) -> Result<(), DeviceError> {
        self.check_activation(driver_features, &mem, &queues)?;
        let event_idx = driver_features & VIRTIO_F_RING_EVENT_IDX != 0;
        let indirect = driver_features & VIRTIO_F_RING_INDIRECT_DESC != 0;
        let queues = queues
            .into_iter()
            .map(|mut queue| {
                queue.set_event_idx(event_idx);
                QueueState {
                    source: ChainSource {
                        desc_table: GuestAddress(queue.desc_table()),
                        queue_size: queue.size(),
                        indirect,
                    },
                    ready: queue.ready(),
                    queue,
                    stats: QueueStats::default(),
                }
            })
            .collect();
        self.state = State::Active(Box::new(Active {
            mem,
            queues,
            interrupt,
        }));
        Ok(())
    }

    fn process_queue(
        &mut self,
        index: u16,
        _events: &mut dyn EventRegistry,
    ) -> Result<(), DeviceError> {
        if index >= self.num_queues() {
            return Err(DeviceError::UnknownQueue(index));
        }
        let State::Active(active) = &mut self.state else {
            return Ok(());
        };
        let result = active.process(index, &mut self.server);
        if result.is_err() {
            if let State::Active(active) = std::mem::replace(&mut self.state, State::Inactive) {
                self.state = State::Broken(active);
            }
        }
        result
    }

    fn reset(&mut self) -> Option<Vec<Queue>> {
        self.server.reset();
        match std::mem::replace(&mut self.state, State::Inactive) {
            State::Inactive => None,
            State::Active(active) | State::Broken(active) => {
                Some(active.queues.into_iter().map(|q| q.queue).collect())
            }
        }
    }

    fn stats(&self) -> DeviceStats {
        match &self.state {
            State::Active(active) | State::Broken(active) => DeviceStats {
                queues: active.queues.iter().map(|q| q.stats).collect(),
            },
            State::Inactive => DeviceStats::default(),
        }
    }
}
