//! Block requests (virtio 1.2 §5.2.6) over the guest's virtqueue driver: the device's
//! configuration, one request at a time or a batch in flight on several queues, and the data
//! pattern.
//!
//! A request is a chain of a 16-byte header the device reads (type, reserved, sector), the
//! data buffers (read by the device for a write, written for a read), and one status byte the
//! device writes. Requests use numbered *slots* in the buffer space: slot `s` has its header at
//! `HEADER + 16 s` and its status byte at `STATUS + s`, so several can be in flight at once.

use crate::fig;
use crate::line::Line;
use crate::timer::Timer;
use crate::virtio::mmio::Mmio;
use crate::virtio::queue::{self, Buf, MAX_QUEUES};
use crate::virtio::{self, Device, Pending, ID_BLOCK};

// Request types.
pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
pub const T_DISCARD: u32 = 11;
pub const T_WRITE_ZEROES: u32 = 13;

// Status byte values; `NO_STATUS` is what the driver leaves there before a request.
pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
const NO_STATUS: u8 = 0xff;

// Feature bits.
pub const F_RO: u64 = 1 << 5;
pub const F_BLK_SIZE: u64 = 1 << 6;
/// VIRTIO_F_RING_INDIRECT_DESC.
pub const F_INDIRECT_DESC: u64 = 1 << 28;
pub const F_FLUSH: u64 = 1 << 9;
pub const F_MQ: u64 = 1 << 12;
pub const F_DISCARD: u64 = 1 << 13;
pub const F_WRITE_ZEROES: u64 = 1 << 14;

// Configuration space offsets (struct virtio_blk_config).
const CFG_CAPACITY: usize = 0x00;
const CFG_BLK_SIZE: usize = 0x14;
const CFG_NUM_QUEUES: usize = 0x22;
pub const CFG_MAX_DISCARD_SECTORS: usize = 0x24;
pub const CFG_MAX_DISCARD_SEG: usize = 0x28;
pub const CFG_DISCARD_SECTOR_ALIGNMENT: usize = 0x2c;
pub const CFG_MAX_WRITE_ZEROES_SECTORS: usize = 0x30;
pub const CFG_MAX_WRITE_ZEROES_SEG: usize = 0x34;

pub const SECTOR: usize = 512;
/// 8-byte pattern words per sector.
const WORDS: usize = SECTOR / 8;

// Buffer-space layout.
const HEADER: usize = 0;
const STATUS: usize = 512;
/// A discard / write-zeroes segment (16 bytes).
pub const SEGMENT: usize = 1024;
/// The GET_ID answer (20 bytes).
pub const ID: usize = 2048;
pub const ID_LEN: usize = 20;
/// Data: 60 KiB from here to the end of the buffer space.
pub const DATA: usize = 4096;
pub const DATA_LEN: usize = queue::BUF_SPACE - DATA;
/// Slots (headers and status bytes); a batch uses one per request.
pub const MAX_SLOTS: usize = 16;

/// Most data descriptors in one request.
const MAX_DATA_BUFS: usize = 4;

/// How long one request or one batch may take (host I/O, `fdatasync`).
const IO_TIMEOUT_MS: u64 = 10_000;

/// A blk device, initialised, with what its configuration says and running totals.
pub struct Blk<'t> {
    pub dev: Device<'t>,
    mmio: Mmio,
    timer: &'t Timer,
    /// In 512-byte sectors.
    pub capacity: u64,
    /// `blk_size` in bytes (512 without BLK_SIZE).
    pub blk_size: u32,
    /// Requests completed and data bytes moved (reads and writes), for the figures.
    pub requests: u32,
    pub bytes: u64,
    /// When the first request was submitted and the last batch completed (µs), for the
    /// figures.
    started_us: Option<u64>,
    finished_us: u64,
}

/// The `n`-th (from 0) virtio-blk device on the command line.
pub fn find(devices: &[crate::cmdline::MmioDevice], n: usize) -> Option<Mmio> {
    virtio::find_nth(devices, ID_BLOCK, n)
}

/// Whether the device offers RO (read without initialising it).
pub fn offers_ro(mmio: Mmio) -> bool {
    virtio::device_features(mmio) & F_RO != 0
}

/// A request's data buffers, in chain order.
#[derive(Clone, Copy)]
pub struct Data {
    bufs: [Buf; MAX_DATA_BUFS],
    n: usize,
}

impl Data {
    pub const NONE: Data = Data {
        bufs: [Buf::readable(0, 0); MAX_DATA_BUFS],
        n: 0,
    };

    /// `parts` (byte lengths) one after the other from `offset`, device-writable or not.
    pub fn split(offset: usize, parts: &[u32], writable: bool) -> Data {
        assert!(parts.len() <= MAX_DATA_BUFS);
        let mut data = Data::NONE;
        let mut at = offset;
        for &len in parts {
            data.bufs[data.n] = Buf {
                offset: at,
                len,
                writable,
                far: false,
            };
            data.n += 1;
            at += len as usize;
        }
        data
    }

    /// One buffer of `len` bytes at `offset`.
    pub fn one(offset: usize, len: usize, writable: bool) -> Data {
        Data::split(offset, &[len as u32], writable)
    }

    /// One buffer of `len` bytes at guest-physical `addr`, outside the buffer space.
    pub fn far(addr: usize, len: u32, writable: bool) -> Data {
        let mut data = Data::NONE;
        data.bufs[0] = Buf::far(addr, len, writable);
        data.n = 1;
        data
    }

    pub fn len(&self) -> u64 {
        self.bufs[..self.n].iter().map(|b| u64::from(b.len)).sum()
    }
}

impl<'t> Blk<'t> {
    /// Resets and initialises `mmio` accepting `accept` (plus VERSION_1), reads the
    /// configuration, and sets up min(num_queues, 4) queues (`num_queues` is 1 without MQ).
    pub fn open(mmio: Mmio, accept: u64, timer: &'t Timer) -> Result<Blk<'t>, Line> {
        let neg = Device::negotiate(mmio, accept, timer).map_err(|e| fig!("{} step=init", e))?;
        let features = neg.features();
        let cfg = |e| fig!("{} step=config", e);
        let capacity = mmio.config64(CFG_CAPACITY).map_err(cfg)?;
        let blk_size = if features & F_BLK_SIZE != 0 {
            mmio.config32(CFG_BLK_SIZE).map_err(cfg)?
        } else {
            SECTOR as u32
        };
        let num_queues = if features & F_MQ != 0 {
            mmio.config16(CFG_NUM_QUEUES).map_err(cfg)?
        } else {
            1
        };
        if num_queues == 0 {
            return Err(fig!("num_queues=0"));
        }
        let queues = usize::from(num_queues).min(MAX_QUEUES);
        let dev = neg.start(queues).map_err(|e| fig!("{} step=init", e))?;
        Ok(Blk {
            dev,
            mmio,
            timer,
            capacity,
            blk_size,
            requests: 0,
            bytes: 0,
            started_us: None,
            finished_us: 0,
        })
    }

    pub fn has(&self, feature: u64) -> bool {
        self.dev.features() & feature != 0
    }

    /// A 32-bit configuration field.
    pub fn config32(&self, offset: usize) -> Result<u32, Line> {
        self.mmio
            .config32(offset)
            .map_err(|e| fig!("{} step=config", e))
    }

    /// Sectors per logical block (`blk_size` / 512, at least 1).
    pub fn block_sectors(&self) -> u64 {
        (u64::from(self.blk_size) / SECTOR as u64).max(1)
    }

    /// Puts request `typ` at `sector` with `data` on `queue`, in slot `slot`; not notified.
    pub fn submit(
        &mut self,
        queue: usize,
        slot: usize,
        typ: u32,
        sector: u64,
        data: &Data,
    ) -> Pending {
        assert!(slot < MAX_SLOTS);
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&typ.to_le_bytes());
        header[8..16].copy_from_slice(&sector.to_le_bytes());
        put(HEADER + 16 * slot, &header);
        put(STATUS + slot, &[NO_STATUS]);
        let mut chain = [Buf::readable(0, 0); MAX_DATA_BUFS + 2];
        chain[0] = Buf::readable(HEADER + 16 * slot, 16);
        chain[1..=data.n].copy_from_slice(&data.bufs[..data.n]);
        chain[data.n + 1] = Buf::writable(STATUS + slot, 1);
        if self.started_us.is_none() {
            self.started_us = Some(self.timer.now_us());
        }
        if typ == T_IN || typ == T_OUT {
            self.bytes += data.len();
        }
        self.requests += 1;
        self.dev.submit(queue, &chain[..data.n + 2])
    }

    /// [`submit`](Self::submit) as one indirect descriptor (the device must have offered
    /// [`F_INDIRECT_DESC`]): its table goes in the data area at `DATA + 64 * slot`, so a queue
    /// of size N holds N such requests.
    pub fn submit_indirect(
        &mut self,
        queue: usize,
        slot: usize,
        typ: u32,
        sector: u64,
        data: &Data,
    ) -> Pending {
        assert!(slot < MAX_SLOTS);
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&typ.to_le_bytes());
        header[8..16].copy_from_slice(&sector.to_le_bytes());
        put(HEADER + 16 * slot, &header);
        put(STATUS + slot, &[NO_STATUS]);
        let mut chain = [Buf::readable(0, 0); MAX_DATA_BUFS + 2];
        chain[0] = Buf::readable(HEADER + 16 * slot, 16);
        chain[1..=data.n].copy_from_slice(&data.bufs[..data.n]);
        chain[data.n + 1] = Buf::writable(STATUS + slot, 1);
        if self.started_us.is_none() {
            self.started_us = Some(self.timer.now_us());
        }
        if typ == T_IN || typ == T_OUT {
            self.bytes += data.len();
        }
        self.requests += 1;
        let table = Buf::readable(DATA + 64 * slot, 64);
        self.dev.submit_indirect(queue, table, &chain[..data.n + 2])
    }

    /// Notifies every queue `batch` uses and waits for the whole batch.
    pub fn wait(&mut self, batch: &mut [Pending], what: &str) -> Result<(), Line> {
        for queue in 0..MAX_QUEUES {
            if batch.iter().any(|p| p.queue == queue) {
                self.dev.notify(queue);
            }
        }
        self.dev
            .wait(batch, IO_TIMEOUT_MS)
            .map_err(|e| fig!("{} step={}", e, what))?;
        self.finished_us = self.timer.now_us();
        Ok(())
    }

    /// One request on queue 0 (slot 0); returns its status byte.
    pub fn request(&mut self, typ: u32, sector: u64, data: &Data, what: &str) -> Result<u8, Line> {
        let mut batch = [self.submit(0, 0, typ, sector, data)];
        self.wait(&mut batch, what)?;
        status(0).map_err(|()| fig!("no_status step={}", what))
    }

    /// One request on queue 0 that must complete with `want` (`S_OK`, `S_IOERR`).
    pub fn expect(
        &mut self,
        typ: u32,
        sector: u64,
        data: &Data,
        want: u8,
        what: &str,
    ) -> Result<(), Line> {
        match self.request(typ, sector, data, what)? {
            got if got == want => Ok(()),
            got => Err(fig!(
                "{} status={} want={} sector={}",
                what,
                got,
                want,
                sector
            )),
        }
    }

    /// Writes the pattern of `sector..sector + count` through `parts` (byte lengths from
    /// `DATA`, summing to `count` sectors).
    pub fn write_pattern(
        &mut self,
        seed: u32,
        sector: u64,
        count: u64,
        parts: &[u32],
    ) -> Result<(), Line> {
        fill_pattern(DATA, seed, sector, count);
        self.expect(
            T_OUT,
            sector,
            &Data::split(DATA, parts, false),
            S_OK,
            "write",
        )
    }

    /// Reads `sector..sector + count` through `parts` and checks the pattern.
    pub fn check_pattern(
        &mut self,
        seed: u32,
        sector: u64,
        count: u64,
        parts: &[u32],
    ) -> Result<(), Line> {
        self.read(sector, count, parts)?;
        verify_pattern(DATA, seed, sector, count)
    }

    /// Reads `sector..sector + count` through `parts` into `DATA` (filled with 0xee first, so
    /// that bytes the device did not write show).
    pub fn read(&mut self, sector: u64, count: u64, parts: &[u32]) -> Result<(), Line> {
        queue::fill(Buf::writable(DATA, (count as usize * SECTOR) as u32), 0xee);
        self.expect(T_IN, sector, &Data::split(DATA, parts, true), S_OK, "read")
    }

    /// The figures every blk test prints: `bytes=N requests=N us=N kib_s=N` (data bytes read
    /// and written; time from the first submit to the last completion, checks included).
    pub fn figures(&self) -> Line {
        let us = self
            .started_us
            .map_or(0, |start| self.finished_us.saturating_sub(start));
        let kib_s = self.bytes * 1_000_000 / 1024 / us.max(1);
        fig!(
            "bytes={} requests={} us={} kib_s={}",
            self.bytes,
            self.requests,
            us,
            kib_s
        )
    }
}

/// Copies `bytes` into the buffer space at `offset`.
pub fn put(offset: usize, bytes: &[u8]) {
    queue::write(Buf::readable(offset, bytes.len() as u32), bytes);
}

/// Copies `out.len()` bytes from the buffer space at `offset`.
pub fn get(offset: usize, out: &mut [u8]) {
    queue::read(Buf::readable(offset, out.len() as u32), out);
}

/// Slot `slot`'s status byte, or `Err` if the device did not write one.
pub fn status(slot: usize) -> Result<u8, ()> {
    let mut byte = [0u8];
    get(STATUS + slot, &mut byte);
    if byte[0] == NO_STATUS {
        Err(())
    } else {
        Ok(byte[0])
    }
}

/// The pattern: the 8-byte little-endian word at byte offset `8 k` of the disk is
/// `(seed << 32) | (k mod 2^32)`.
pub fn pattern_word(seed: u32, k: u64) -> u64 {
    (u64::from(seed) << 32) | (k & 0xffff_ffff)
}

/// Puts the pattern of `sector..sector + count` into the buffer space at `offset`.
pub fn fill_pattern(offset: usize, seed: u32, sector: u64, count: u64) {
    for i in 0..count as usize * WORDS {
        queue::write_u64(
            offset + 8 * i,
            pattern_word(seed, sector * WORDS as u64 + i as u64),
        );
    }
}

/// Checks that the buffer space at `offset` holds the pattern of `sector..sector + count`.
pub fn verify_pattern(offset: usize, seed: u32, sector: u64, count: u64) -> Result<(), Line> {
    for i in 0..count as usize * WORDS {
        let want = pattern_word(seed, sector * WORDS as u64 + i as u64);
        let got = queue::read_u64(offset + 8 * i);
        if got != want {
            return Err(fig!(
                "mismatch sector={} byte={} got={:#x} want={:#x}",
                sector + (i / WORDS) as u64,
                (i % WORDS) * 8,
                got,
                want
            ));
        }
    }
    Ok(())
}

/// Checks that `count` sectors at `offset` in the buffer space are zero (`sector` names the
/// first in the reason).
pub fn verify_zeroes(offset: usize, sector: u64, count: u64, what: &str) -> Result<(), Line> {
    for i in 0..count as usize * WORDS {
        let got = queue::read_u64(offset + 8 * i);
        if got != 0 {
            return Err(fig!(
                "{}_not_zero sector={} byte={} got={:#x}",
                what,
                sector + (i / WORDS) as u64,
                (i % WORDS) * 8,
                got
            ));
        }
    }
    Ok(())
}
