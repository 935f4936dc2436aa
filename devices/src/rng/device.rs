//! The virtio-rng backend and its queue loop.
//!
//! [`Rng`] implements [`VirtioBackend`]. Its queue loop is the one in virtio-queue's `Queue`
//! docs: disable notifications, pop every available chain, parse it (`request::parse`), execute
//! it ([`Active::fill`]), `add_used`, interrupt if the driver wants it (`needs_notification`: its
//! `used_event`; and `notify`: its `VIRTQ_AVAIL_F_NO_INTERRUPT` flag without `EVENT_IDX`), then re-enable
//! notifications and go round again if the driver added chains meanwhile.

use std::fs::File;
use std::io::{self, Read};
use std::sync::Arc;

use ipc::{DeviceStats, QueueStats};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};

use super::drbg::Drbg;
use super::request::{self, EntropyRequest};
use super::{MAX_QUEUE_SIZE, MAX_REQUEST_BYTES, NUM_QUEUES};
use crate::lifecycle::Lifecycle;
use crate::notify::interrupts_suppressed;
use crate::{
    activation, DeviceError, EventRegistry, Interrupt, VirtioBackend, VIRTIO_F_RING_EVENT_IDX,
    VIRTIO_F_RING_INDIRECT_DESC, VIRTIO_F_VERSION_1, VIRTIO_ID_RNG,
};

/// Features virtio-rng offers. Indirect descriptors are safe to offer: virtio-queue's chain
/// iterator bounds indirect tables and refuses nested ones.
pub(crate) const FEATURES: u64 =
    VIRTIO_F_VERSION_1 | VIRTIO_F_RING_INDIRECT_DESC | VIRTIO_F_RING_EVENT_IDX;

/// A virtio-rng device.
pub struct Rng {
    /// Where random bytes come from.
    source: Box<dyn Read + Send>,
    /// Private staging buffer, [`MAX_REQUEST_BYTES`] long; guest memory is written from here.
    buf: Vec<u8>,
    state: Lifecycle<Active>,
}

/// Everything the device holds between activate and reset.
struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<dyn Interrupt>,
    stats: QueueStats,
    /// Chains were used since the driver was last considered for an interrupt.
    used_unsignalled: bool,
}

/// The outcome of executing one request.
struct Filled {
    /// Bytes written into guest buffers (the used length).
    written: u32,
    /// The entropy source failed; the device must stop after completing this chain.
    host_error: Option<io::Error>,
}

impl Rng {
    /// A device reading from `source`, normally `/dev/urandom` opened before confinement
    /// (`source=urandom`: one `read` per request).
    pub fn new(source: File) -> Self {
        Self::build(Box::new(source))
    }

    /// A device fed by its own ChaCha20 generator ([`Drbg`], seeded from `getrandom` when it
    /// was built: build it before confinement). No fd to keep; `getrandom` (its reseeds) is in
    /// the base seccomp profile.
    pub fn with_drbg(drbg: Drbg) -> Self {
        Self::build(Box::new(drbg))
    }

    /// A device reading from any reader (tests).
    pub fn with_reader(source: impl Read + Send + 'static) -> Self {
        Self::build(Box::new(source))
    }

    fn build(source: Box<dyn Read + Send>) -> Self {
        Rng {
            source,
            buf: vec![0; MAX_REQUEST_BYTES as usize],
            state: Lifecycle::new(),
        }
    }

    /// Checks the activation parameters; on success the queues are usable as they are.
    fn check_activation(
        &self,
        driver_features: u64,
        mem: &GuestMemoryMmap,
        queues: &[Queue],
    ) -> Result<(), DeviceError> {
        let offer = activation::Offer {
            features: FEATURES,
            num_queues: NUM_QUEUES,
            max_queue_size: MAX_QUEUE_SIZE,
        };
        self.state
            .check_activation(&offer, driver_features, mem, queues)
    }
}

impl Active {
    /// The queue loop. Returns an error only when the queue itself cannot be used any more
    /// (a broken ring or a head index outside the queue) or the entropy source failed.
    /// The driver gets one interrupt per batch of chains served (if it wants one), not one per
    /// chain.
    fn process(&mut self, source: &mut dyn Read, buf: &mut [u8]) -> Result<(), DeviceError> {
        loop {
            self.queue
                .disable_notification(&self.mem)
                .map_err(DeviceError::Queue)?;
            let served = self.serve_available(source, buf);
            // Even after a failure, the driver hears of the chains already used.
            let signalled = self.signal_used();
            served.and(signalled)?;
            if !self
                .queue
                .enable_notification(&self.mem)
                .map_err(DeviceError::Queue)?
            {
                return Ok(());
            }
        }
    }

    /// Serves every chain available now.
    fn serve_available(
        &mut self,
        source: &mut dyn Read,
        buf: &mut [u8],
    ) -> Result<(), DeviceError> {
        let mem = &self.mem;
        loop {
            let chain = match self.queue.iter(mem) {
                Ok(mut avail) => avail.next(),
                Err(e) => return Err(DeviceError::Queue(e)),
            };
            let Some(chain) = chain else {
                return Ok(());
            };

            let head = chain.head_index();
            let size = self.queue.size();
            if head >= size {
                return Err(DeviceError::BadHeadIndex { head, size });
            }
            let filled = match request::parse(mem, chain, size) {
                Ok(req) => Self::fill(mem, &req, source, buf),
                Err(_guest_fault) => {
                    self.stats.errors += 1;
                    Filled {
                        written: 0,
                        host_error: None,
                    }
                }
            };
            self.queue
                .add_used(mem, head, filled.written)
                .map_err(DeviceError::Queue)?;
            self.used_unsignalled = true;
            self.stats.requests += 1;
            self.stats.bytes += u64::from(filled.written);
            if let Some(e) = filled.host_error {
                self.stats.errors += 1;
                return Err(DeviceError::HostIo(e));
            }
        }
    }

    /// Interrupts the driver if chains were used since the last call and it wants to hear.
    fn signal_used(&mut self) -> Result<(), DeviceError> {
        if !std::mem::take(&mut self.used_unsignalled) {
            return Ok(());
        }
        if self
            .queue
            .needs_notification(&self.mem)
            .map_err(DeviceError::Queue)?
            && !interrupts_suppressed(&self.queue, &self.mem)
        {
            self.interrupt.signal_used_queue();
        }
        Ok(())
    }

    /// Executes a validated request: reads up to `req.len` bytes of entropy into the private
    /// buffer, then copies them into the guest buffers with volatile writes. A short read (EOF)
    /// fills fewer bytes; a failed read is reported after the chain is completed.
    fn fill(
        mem: &GuestMemoryMmap,
        req: &EntropyRequest,
        source: &mut dyn Read,
        buf: &mut [u8],
    ) -> Filled {
        let want = (req.len as usize).min(buf.len());
        let (got, host_error) = read_entropy(source, &mut buf[..want]);
        let mut written = 0usize;
        for seg in &req.segments {
            if written == got {
                break;
            }
            let n = (seg.len as usize).min(got - written);
            // The range was validated against this same (fixed-layout) memory; a failure here
            // would be a bug, and stopping short with an honest used length is the safe answer.
            if mem
                .write_slice(&buf[written..written + n], seg.addr)
                .is_err()
            {
                break;
            }
            written += n;
        }
        Filled {
            // `written <= MAX_REQUEST_BYTES`, which fits in a u32.
            written: u32::try_from(written).unwrap_or(0),
            host_error,
        }
    }
}

/// Reads until `buf` is full, the source is exhausted, or it fails. Returns the bytes read and
/// the error, if any.
fn read_entropy(source: &mut dyn Read, buf: &mut [u8]) -> (usize, Option<io::Error>) {
    let mut got = 0;
    while got < buf.len() {
        match source.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return (got, Some(e)),
        }
    }
    (got, None)
}

impl VirtioBackend for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn num_queues(&self) -> u16 {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> u16 {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        FEATURES
    }

    fn config(&self) -> Vec<u8> {
        Vec::new()
    }

    fn write_config(&mut self, _offset: u32, _data: &[u8]) {
        // virtio-rng has no config space; the transport already refused out-of-range writes.
    }

    fn activate(
        &mut self,
        driver_features: u64,
        mem: GuestMemoryMmap,
        mut queues: Vec<Queue>,
        interrupt: Arc<dyn Interrupt>,
    ) -> Result<(), DeviceError> {
        self.check_activation(driver_features, &mem, &queues)?;
        let Some(mut queue) = queues.pop() else {
            return Err(DeviceError::QueueCount {
                expected: NUM_QUEUES,
                got: 0,
            });
        };
        queue.set_event_idx(driver_features & VIRTIO_F_RING_EVENT_IDX != 0);
        self.state.activate(Active {
            mem,
            queue,
            interrupt,
            stats: QueueStats::default(),
            used_unsignalled: false,
        });
        Ok(())
    }

    fn process_queue(
        &mut self,
        index: u16,
        _events: &mut dyn EventRegistry,
    ) -> Result<(), DeviceError> {
        if index >= NUM_QUEUES {
            return Err(DeviceError::UnknownQueue(index));
        }
        let (source, buf) = (self.source.as_mut(), &mut self.buf);
        self.state.serve(|active| active.process(source, buf))
    }

    fn reset(&mut self) -> Option<Vec<Queue>> {
        self.state.reset().map(|active| vec![active.queue])
    }

    fn stats(&self) -> DeviceStats {
        self.state
            .current()
            .map_or_else(DeviceStats::default, |active| DeviceStats {
                queues: vec![active.stats],
            })
    }
}
