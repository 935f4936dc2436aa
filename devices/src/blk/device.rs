//! The virtio-blk backend: construction from an open image, activation, reset.
//!
//! [`Blk`] implements [`VirtioBackend`]; the queue loop itself is in `io`. The engine belongs to
//! the device, not to an activation: a ring prepared before confinement cannot be made again
//! after it, so it survives resets.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use ipc::{DeviceStats, QueueStats};
use rustix::fs::{AtFlags, FileType, OFlags, SeekFrom, StatxFlags};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::config::{
    Geometry, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_WRITE_ZEROES,
};
use super::engine::{self, Engine, EngineKind, SyncEngine, UringEngine};
use super::io::{Active, DirectIo, QueueState};
use super::kind::{ID, POLL, QUEUES};
use super::order::InOrder;
use super::poll::PollWindow;
use super::request::{ChainSource, DiskLimits};
use super::{BlkError, DEFAULT_POLL_US, ID_BYTES, MAX_QUEUE_SIZE, SECTOR_SIZE};
use crate::lifecycle::Lifecycle;
use crate::{
    activation, DeviceError, EventRegistry, Interrupt, VirtioBackend, VIRTIO_F_RING_EVENT_IDX,
    VIRTIO_F_RING_INDIRECT_DESC, VIRTIO_ID_BLOCK,
};

/// How the device presents the image.
#[derive(Debug, Clone, PartialEq, Eq, ipc::Encode, ipc::Decode)]
#[bincode(crate = "ipc::codec::bincode")]
pub struct BlkOptions {
    /// Refuse writes, discard and write-zeroes; offer `VIRTIO_BLK_F_RO`.
    pub read_only: bool,
    /// What `GET_ID` answers, at most [`ID_BYTES`] bytes (the VMM derives a default from the
    /// path).
    pub id: String,
    /// The image fd is (or is made) `O_DIRECT`; `blk_size` is the host's direct-I/O alignment.
    pub direct: bool,
    /// Number of request queues, `1..=`[`MAX_QUEUES`](super::MAX_QUEUES).
    pub queues: u16,
    /// Idle-poll window in µs, `0..=`[`MAX_POLL_US`](super::MAX_POLL_US) (0: off): how long a queue that ran dry
    /// keeps being polled, notifications still suppressed, before the device re-enables them
    /// and returns (see the module docs).
    pub poll_us: u32,
    /// Request merging (QEMU's `request-merging`, see `merge`): adjacent reads or writes of
    /// one batch become one host I/O. On by default.
    pub merge: bool,
    /// The engine to run on: io_uring (the default; the synchronous engine if the kernel
    /// refuses it), or the synchronous engine only, with no io_uring instance at all.
    pub engine: EngineKind,
}

impl BlkOptions {
    /// Checks the options against the ranges the command line accepts (the kind's option
    /// declarations, `blk::kind`); an empty id is what an image path without a file name
    /// gives, and is accepted.
    pub fn check(&self) -> Result<(), BlkError> {
        if !self.id.is_empty() && !ID.accepts_text(&self.id) {
            return Err(BlkError::IdTooLong(self.id.clone()));
        }
        if !QUEUES.accepts_number(u64::from(self.queues)) {
            return Err(BlkError::QueueCount(self.queues));
        }
        if !POLL.accepts_number(u64::from(self.poll_us)) {
            return Err(BlkError::PollWindow(self.poll_us));
        }
        Ok(())
    }
}

impl Default for BlkOptions {
    fn default() -> Self {
        BlkOptions {
            read_only: false,
            id: String::new(),
            direct: false,
            queues: 1,
            poll_us: DEFAULT_POLL_US,
            merge: true,
            engine: EngineKind::IoUring,
        }
    }
}

/// A virtio-blk device on a raw image.
pub struct Blk {
    image: Arc<File>,
    geometry: Geometry,
    id: [u8; ID_BYTES],
    direct: Option<DirectIo>,
    /// Idle-poll window of every activation.
    poll: Duration,
    /// Request merging in every activation.
    merge: bool,
    /// The engine `engine=` asked for ([`prepare_engine`](Self::prepare_engine) makes a ring
    /// only for io_uring).
    wanted: EngineKind,
    engine: Box<dyn Engine>,
    state: Lifecycle<Box<Active>>,
    /// Test builds: run the hostile worker's disk probe at the next queue notification.
    #[cfg(feature = "test-faults")]
    probe_armed: bool,
}

impl Blk {
    /// A device on `image`, opened (and locked) by the broker: read-write unless
    /// `options.read_only`, `O_DIRECT` if `options.direct` (set here if missing).
    ///
    /// Checks that the image is a regular file or block device whose size is a multiple of
    /// 512, and for `direct` reads the host's direct-I/O alignment. Uses `fstat`, `lseek`,
    /// `statx` and `fcntl`, none of which the `blk` seccomp profile allows: call it before the
    /// worker confines itself, then [`prepare_engine`](Self::prepare_engine).
    ///
    /// The device starts on the synchronous engine.
    pub fn new(image: File, options: BlkOptions) -> Result<Blk, BlkError> {
        options.check()?;
        let inspect = |e: rustix::io::Errno| BlkError::Inspect(e.into());
        let stat = rustix::fs::fstat(image.as_fd()).map_err(inspect)?;
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::RegularFile | FileType::BlockDevice => {}
            _ => return Err(BlkError::NotAnImage),
        }
        // lseek rather than st_size: a block device's st_size is 0.
        let size = rustix::fs::seek(image.as_fd(), SeekFrom::End(0)).map_err(inspect)?;
        rustix::fs::seek(image.as_fd(), SeekFrom::Start(0)).map_err(inspect)?;
        if size % SECTOR_SIZE != 0 {
            return Err(BlkError::SizeNotSectorMultiple(size));
        }
        let flags = rustix::fs::fcntl_getfl(image.as_fd()).map_err(inspect)?;
        if !options.read_only && !flags.contains(OFlags::RDWR) && !flags.contains(OFlags::WRONLY) {
            return Err(BlkError::OpenedReadOnly);
        }
        let direct = if options.direct {
            if !flags.contains(OFlags::DIRECT) {
                rustix::fs::fcntl_setfl(image.as_fd(), flags | OFlags::DIRECT)
                    .map_err(|e| BlkError::Direct(e.into()))?;
            }
            Some(dio_alignment(&image))
        } else {
            None
        };
        let blk_size = direct.map_or(SECTOR_SIZE as u32, |d| {
            u32::try_from(d.offset_align).unwrap_or(SECTOR_SIZE as u32)
        });
        let mut id = [0u8; ID_BYTES];
        id[..options.id.len()].copy_from_slice(options.id.as_bytes());
        let image = Arc::new(image);
        Ok(Blk {
            engine: Box::new(SyncEngine::new(Arc::clone(&image))),
            image,
            geometry: Geometry {
                capacity: size / SECTOR_SIZE,
                blk_size,
                num_queues: options.queues,
                read_only: options.read_only,
            },
            id,
            direct,
            poll: Duration::from_micros(u64::from(options.poll_us)),
            merge: options.merge,
            wanted: options.engine,
            state: Lifecycle::new(),
            #[cfg(feature = "test-faults")]
            probe_armed: false,
        })
    }

    /// Sets up the io_uring engine (see the module docs for the ring's restrictions). Call it
    /// before confinement: it needs `io_uring_setup` and `io_uring_register`, which the `blk`
    /// profile does not allow; afterwards only `io_uring_enter` is used.
    ///
    /// If the kernel refuses io_uring, the device keeps the synchronous engine (depth 1) and
    /// the error is returned for the caller to report; the device works either way. Refused
    /// while the device is active. With `engine=sync` it makes no ring and keeps the
    /// synchronous engine.
    pub fn prepare_engine(&mut self) -> Result<EngineKind, std::io::Error> {
        if !self.state.is_inactive() {
            return Err(std::io::Error::from_raw_os_error(libc::EBUSY));
        }
        if self.wanted == EngineKind::Sync {
            return Ok(EngineKind::Sync);
        }
        let entries = u32::from(MAX_QUEUE_SIZE);
        let ring = UringEngine::new(Arc::clone(&self.image), entries)?;
        self.engine = Box::new(ring);
        Ok(EngineKind::IoUring)
    }

    /// The fds the device holds: the image, and the io_uring instance once
    /// [`prepare_engine`](Self::prepare_engine) made it.
    pub fn held_fds(&self) -> Vec<RawFd> {
        std::iter::once(self.image.as_raw_fd())
            .chain(self.engine.extra_fd())
            .collect()
    }

    /// Test builds only: at the first queue notification of an active device, act as a
    /// compromised worker against the host disk (`engine::probe`: the ring's operations, then
    /// the system calls the filter must refuse) before serving anything.
    #[cfg(feature = "test-faults")]
    pub fn arm_disk_probe(&mut self) {
        self.probe_armed = true;
    }

    /// The engine the device runs on.
    pub fn engine_kind(&self) -> EngineKind {
        self.engine.kind()
    }

    /// Size of the image in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.geometry.capacity
    }

    /// The `blk_size` the device advertises.
    pub fn blk_size(&self) -> u32 {
        self.geometry.blk_size
    }

    /// Replaces the engine (tests: recording and failing engines).
    #[cfg(test)]
    pub(crate) fn set_engine(&mut self, engine: Box<dyn Engine>) {
        self.engine = engine;
    }

    /// Takes the engine out, leaving a synchronous one (tests wrap the real engine).
    #[cfg(test)]
    pub(crate) fn take_engine_for_test(&mut self) -> Box<dyn Engine> {
        let sync = Box::new(SyncEngine::new(Arc::clone(&self.image)));
        std::mem::replace(&mut self.engine, sync)
    }

    /// Sets the idle-poll window beyond [`MAX_POLL_US`] (tests: a window no scheduler delay
    /// outlasts). Takes effect at the next activation.
    #[cfg(test)]
    pub(crate) fn set_poll(&mut self, poll: Duration) {
        self.poll = poll;
    }

    /// The image file (tests wrap its engine).
    #[cfg(test)]
    pub(crate) fn image(&self) -> Arc<File> {
        Arc::clone(&self.image)
    }

    fn check_activation(
        &self,
        driver_features: u64,
        mem: &GuestMemoryMmap,
        queues: &[Queue],
    ) -> Result<(), DeviceError> {
        let offer = activation::Offer {
            features: self.features(),
            num_queues: self.geometry.num_queues,
            max_queue_size: MAX_QUEUE_SIZE,
        };
        self.state
            .check_activation(&offer, driver_features, mem, queues)
    }
}

/// The host's direct-I/O alignment of `image` (`statx` `STATX_DIOALIGN`, Linux 6.1). Where
/// the kernel or file system does not report it, 512 for both: the logical block size every
/// Linux block device and file system supports for direct I/O except 4Kn disks, where I/O
/// then fails with `IOERR` rather than silently.
fn dio_alignment(image: &File) -> DirectIo {
    const FALLBACK: DirectIo = DirectIo {
        mem_align: SECTOR_SIZE as usize,
        offset_align: SECTOR_SIZE,
    };
    let Ok(stx) = rustix::fs::statx(
        image.as_fd(),
        c"",
        AtFlags::EMPTY_PATH,
        StatxFlags::DIOALIGN,
    ) else {
        return FALLBACK;
    };
    let reported = StatxFlags::from_bits_retain(stx.stx_mask).contains(StatxFlags::DIOALIGN);
    if !reported || stx.stx_dio_offset_align == 0 || stx.stx_dio_mem_align == 0 {
        return FALLBACK;
    }
    // Never advertise a block size below a sector, nor one that is not a power of two.
    let offset_align = u64::from(stx.stx_dio_offset_align).max(SECTOR_SIZE);
    if !offset_align.is_power_of_two() || !stx.stx_dio_mem_align.is_power_of_two() {
        return FALLBACK;
    }
    DirectIo {
        mem_align: stx.stx_dio_mem_align as usize,
        offset_align,
    }
}

impl VirtioBackend for Blk {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn num_queues(&self) -> u16 {
        self.geometry.num_queues
    }

    fn max_queue_size(&self) -> u16 {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        self.geometry.features()
    }

    fn config(&self) -> Vec<u8> {
        self.geometry.config()
    }

    fn write_config(&mut self, _offset: u32, _data: &[u8]) {
        // Nothing is writable without VIRTIO_BLK_F_CONFIG_WCE, which is not offered.
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
                    poll: PollWindow::new(Duration::ZERO),
                    order: InOrder::default(),
                    used_unsignalled: false,
                }
            })
            .collect();
        let disk = DiskLimits {
            capacity: self.geometry.capacity,
            read_only: self.geometry.read_only,
            discard: driver_features & VIRTIO_BLK_F_DISCARD != 0,
            write_zeroes: driver_features & VIRTIO_BLK_F_WRITE_ZEROES != 0,
        };
        self.state.activate(Box::new(
            Active::new(
                Arc::new(mem),
                queues,
                interrupt,
                disk,
                driver_features & VIRTIO_BLK_F_FLUSH != 0,
                self.direct,
                self.id,
            )
            .with_poll(self.poll)
            .with_merge(self.merge),
        ));
        Ok(())
    }

    fn process_queue(
        &mut self,
        index: u16,
        _events: &mut dyn EventRegistry,
    ) -> Result<(), DeviceError> {
        if index >= self.geometry.num_queues {
            return Err(DeviceError::UnknownQueue(index));
        }
        #[cfg(feature = "test-faults")]
        if !self.state.is_inactive() && std::mem::take(&mut self.probe_armed) {
            let size = self.geometry.capacity * SECTOR_SIZE;
            self.engine.probe(&self.image, size);
        }
        let engine = self.engine.as_mut();
        let result = self.state.serve(|active| active.process(index, engine));
        if result.is_err() {
            // Nothing may stay in flight on a device that stops serving; an engine that
            // cannot even drain is reported by its own error on the next use.
            let _ = engine::drain(self.engine.as_mut());
        }
        result
    }

    fn reset(&mut self) -> Option<Vec<Queue>> {
        let _ = engine::drain(self.engine.as_mut());
        self.state.reset().map(|active| active.into_queues())
    }

    fn stats(&self) -> DeviceStats {
        self.state
            .current()
            .map_or_else(DeviceStats::default, |a| a.stats())
    }
}

/// The raw fd of the image (for callers that pass it on).
impl AsRawFd for Blk {
    fn as_raw_fd(&self) -> RawFd {
        self.image.as_raw_fd()
    }
}
