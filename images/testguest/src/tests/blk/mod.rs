//! `blk`, `blk_ro` and `blk_write`: a virtio-blk device (device ID 2) through the guest's own
//! virtqueue driver (`crate::virtio`, requests in `io.rs`).
//!
//! Every test needs a disk of at least `MIN_CAPACITY` sectors and uses these regions of it (in
//! 512-byte sectors; C is the capacity, b the logical block in sectors, `blk_size / 512`, 1
//! without BLK_SIZE; `up`/`down` round to a multiple):
//!
//! | region | first sector | sectors | written through | read through |
//! |---|---|---|---|---|
//! | A | 0 | b | 1 buffer | 1 buffer |
//! | B | up(7, b) | 8 | 3 buffers (1536 + 1000 + 1560 bytes) | 1 buffer |
//! | C | down(C/2, 8) | 64 | 3 buffers (8 + 16 + 8 KiB) | 2 buffers (16 + 16 KiB) |
//! | D | down(C, b) - 8 | 8 | 1 buffer | 2 buffers (2 + 2 KiB) |
//! | discard | up(C/8, 16) | 16 | | |
//! | write-zeroes | up(C/8, 16) + 16 | 16 | | |
//! | queues | down(C/4, 8) | 8 per request, up to 8 requests | | |
//!
//! and the data pattern of `io::pattern_word`: the 8-byte little-endian word at byte offset
//! `8 k` of the disk is `(seed << 32) | (k mod 2^32)`, seed from `testguest.blk_pattern=`
//! (default `DEFAULT_SEED`).
//!
//! `blk` (default with a writable blk device): pattern written to A, B, C, D, read back and
//! checked; FLUSH (if offered); GET_ID; reads at and across the end, and a write across it, get
//! IOERR and D still holds the pattern; discard and write-zeroes (if offered) over patterned
//! sectors read back as zeroes; then a batch of writes — two per queue, on every queue at once —
//! and a batch of reads of them, checked. `blk_ro` (default with a device that offers RO):
//! reads A, B, C, D (and checks the pattern if `testguest.blk_pattern=` is given), a read at
//! the end gets IOERR, a write gets IOERR and changes nothing, GET_ID. `blk_write` (by name
//! only): writes the pattern to A, B, C, D and flushes, for a host that kills the VMM and reads
//! the image (use `testguest.sleep_ms=` to keep the guest alive meanwhile). `blk_loop` (by
//! name only): for `testguest.loop_ms=` ms (after a `running blk_loop` line), rounds of a
//! batch of writes — up to `LOOP_PER_QUEUE` per queue, on every queue at once, over the
//! "queues" region, with seed + round as the pattern's seed — a FLUSH (if offered), and a batch
//! of reads of them, checked: for a harness that kills the device's worker meanwhile. The
//! region then holds the last round's pattern; it reports `rounds=R depth=N first=S
//! sectors=K flush=F seed=X`.
//!
//! All drive the first virtio-blk device, or the N-th (from 0) when run as `NAME@N`.

pub mod bounce;
mod io;

use crate::cmdline::MmioDevice;
use crate::fig;
use crate::line::Line;
use crate::tests::{Ctx, Outcome};
use crate::virtio::queue::{self, Buf};
use crate::virtio::Pending;
use io::*;

/// The pattern seed without `testguest.blk_pattern=` ("svmm").
pub const DEFAULT_SEED: u32 = 0x7376_6d6d;
/// Smallest disk the tests accept, in sectors (512 KiB): the regions must not overlap.
const MIN_CAPACITY: u64 = 1024;
/// Sectors per request in the multi-queue batch, and most requests per queue.
const BATCH_SECTORS: u64 = 8;
const BATCH_PER_QUEUE: usize = 2;
/// Most requests per queue in one `blk_loop` batch, and in all.
const LOOP_PER_QUEUE: usize = 4;
const LOOP_MAX: usize = 8;
/// Sectors discarded / zeroed.
const ZERO_SECTORS: u64 = 16;

/// One patterned region: where, how long, and how its data is split into buffers.
struct Region {
    sector: u64,
    count: u64,
    write: [u32; 3],
    read: [u32; 3],
}

/// `parts` without its trailing zeroes.
fn parts(parts: &[u32; 3]) -> &[u32] {
    let n = parts.iter().position(|&p| p == 0).unwrap_or(3);
    &parts[..n]
}

fn up(x: u64, to: u64) -> u64 {
    x.div_ceil(to) * to
}

fn down(x: u64, to: u64) -> u64 {
    x / to * to
}

/// Regions A, B, C, D (see the module's table).
fn regions(capacity: u64, b: u64) -> [Region; 4] {
    let block = (b as usize * SECTOR) as u32;
    [
        Region {
            sector: 0,
            count: b,
            write: [block, 0, 0],
            read: [block, 0, 0],
        },
        Region {
            sector: up(7, b),
            count: 8,
            write: [1536, 1000, 1560],
            read: [4096, 0, 0],
        },
        Region {
            sector: down(capacity / 2, 8),
            count: 64,
            write: [8192, 16384, 8192],
            read: [16384, 16384, 0],
        },
        Region {
            sector: down(capacity, b) - 8,
            count: 8,
            write: [4096, 0, 0],
            read: [2048, 2048, 0],
        },
    ]
}

fn discard_sector(capacity: u64) -> u64 {
    up(capacity / 8, ZERO_SECTORS)
}

fn batch_sector(capacity: u64) -> u64 {
    down(capacity / 4, BATCH_SECTORS)
}

/// The first virtio-blk device, or the one `NAME@N` names.
fn device(ctx: &Ctx) -> Result<crate::virtio::mmio::Mmio, Line> {
    find(ctx.devices, ctx.instance).ok_or_else(|| fig!("no_device"))
}

pub fn applies(devices: &[MmioDevice]) -> bool {
    find(devices, 0).is_some_and(|mmio| !offers_ro(mmio))
}

pub fn applies_ro(devices: &[MmioDevice]) -> bool {
    find(devices, 0).is_some_and(offers_ro)
}

/// Never in the default set: it is for the harness's kill-and-read-the-image check (and
/// `blk_bounce` for its memory check).
pub fn applies_write(_devices: &[MmioDevice]) -> bool {
    false
}

/// Opens the device accepting `accept` and checks RO against `want_ro` and the capacity.
fn open<'t>(ctx: &'t Ctx, accept: u64, want_ro: bool) -> Result<Blk<'t>, Line> {
    let blk = Blk::open(device(ctx)?, accept, ctx.timer)?;
    match (blk.has(F_RO), want_ro) {
        (true, false) => return Err(fig!("read_only")),
        (false, true) => return Err(fig!("not_read_only")),
        _ => {}
    }
    if blk.capacity < MIN_CAPACITY {
        return Err(fig!("capacity={} below={}", blk.capacity, MIN_CAPACITY));
    }
    if !blk.blk_size.is_power_of_two() || !(512..=4096).contains(&blk.blk_size) {
        return Err(fig!("blk_size={} unsupported", blk.blk_size));
    }
    Ok(blk)
}

/// Resets the device and returns the figures plus `extra`.
fn finish(blk: Blk, extra: Line) -> Outcome {
    let figures = blk.figures();
    blk.dev.reset().map_err(|e| fig!("{} step=reset", e))?;
    Ok(fig!(
        "{} {}",
        core::str::from_utf8(figures.as_bytes()).unwrap_or(""),
        core::str::from_utf8(extra.as_bytes()).unwrap_or("")
    ))
}

fn write_regions(blk: &mut Blk, seed: u32) -> Result<(), Line> {
    for r in regions(blk.capacity, blk.block_sectors()) {
        blk.write_pattern(seed, r.sector, r.count, parts(&r.write))?;
    }
    Ok(())
}

fn flush(blk: &mut Blk) -> Result<u8, Line> {
    if !blk.has(F_FLUSH) {
        return Ok(0);
    }
    blk.expect(T_FLUSH, 0, &Data::NONE, S_OK, "flush")?;
    Ok(1)
}

/// GET_ID: the id string, bytes up to the first NUL, anything but printable ASCII as `?`.
fn get_id(blk: &mut Blk) -> Result<([u8; ID_LEN], usize), Line> {
    queue::fill(Buf::writable(ID, ID_LEN as u32), 0);
    blk.expect(T_GET_ID, 0, &Data::one(ID, ID_LEN, true), S_OK, "get_id")?;
    let mut id = [0u8; ID_LEN];
    get(ID, &mut id);
    let len = id.iter().position(|&c| c == 0).unwrap_or(ID_LEN);
    for c in &mut id[..len] {
        if !c.is_ascii_graphic() {
            *c = b'?';
        }
    }
    Ok((id, len))
}

fn id_str(id: &([u8; ID_LEN], usize)) -> &str {
    core::str::from_utf8(&id.0[..id.1]).unwrap_or("?")
}

/// Reads at and across the end and a write across it get IOERR; region D is unchanged.
fn past_end(blk: &mut Blk, seed: u32) -> Result<(), Line> {
    let b = blk.block_sectors();
    let end = down(blk.capacity, b);
    let len = (2 * b) as usize * SECTOR;
    blk.expect(
        T_IN,
        end,
        &Data::one(DATA, len / 2, true),
        S_IOERR,
        "read_at_end",
    )?;
    blk.expect(
        T_IN,
        end - b,
        &Data::one(DATA, len, true),
        S_IOERR,
        "read_across_end",
    )?;
    queue::fill(Buf::readable(DATA, len as u32), 0xee);
    blk.expect(
        T_OUT,
        end - b,
        &Data::one(DATA, len, false),
        S_IOERR,
        "write_across_end",
    )?;
    let d = &regions(blk.capacity, b)[3];
    blk.check_pattern(seed, d.sector, d.count, parts(&d.read))
}

/// Pattern over `ZERO_SECTORS` at `sector`, then `typ` (discard or write-zeroes) over them:
/// they must read back as zeroes.
fn zero_range(blk: &mut Blk, seed: u32, typ: u32, sector: u64, what: &str) -> Result<(), Line> {
    let (max_sectors, max_seg) = if typ == T_DISCARD {
        (CFG_MAX_DISCARD_SECTORS, CFG_MAX_DISCARD_SEG)
    } else {
        (CFG_MAX_WRITE_ZEROES_SECTORS, CFG_MAX_WRITE_ZEROES_SEG)
    };
    let max_sectors = blk.config32(max_sectors)?;
    let max_seg = blk.config32(max_seg)?;
    let alignment = if typ == T_DISCARD {
        blk.config32(CFG_DISCARD_SECTOR_ALIGNMENT)?.max(1)
    } else {
        1
    };
    if u64::from(max_sectors) < ZERO_SECTORS
        || max_seg == 0
        || !ZERO_SECTORS.is_multiple_of(u64::from(alignment))
    {
        return Err(fig!(
            "{}_limits max_sectors={} max_seg={} alignment={}",
            what,
            max_sectors,
            max_seg,
            alignment
        ));
    }
    let bytes = (ZERO_SECTORS as usize * SECTOR) as u32;
    blk.write_pattern(seed, sector, ZERO_SECTORS, &[bytes])?;
    // struct virtio_blk_discard_write_zeroes: sector, num_sectors, flags (0: no unmap).
    let mut segment = [0u8; 16];
    segment[0..8].copy_from_slice(&sector.to_le_bytes());
    segment[8..12].copy_from_slice(&(ZERO_SECTORS as u32).to_le_bytes());
    put(SEGMENT, &segment);
    blk.expect(typ, 0, &Data::one(SEGMENT, 16, false), S_OK, what)?;
    blk.read(sector, ZERO_SECTORS, &[bytes])?;
    verify_zeroes(DATA, sector, ZERO_SECTORS, what)
}

/// Writes, then reads back and checks, `BATCH_PER_QUEUE` requests per queue, all in flight
/// at once on every queue. Returns the number of requests in each batch.
fn batch(blk: &mut Blk, seed: u32) -> Result<usize, Line> {
    let n = batch_size(blk, BATCH_PER_QUEUE, MAX_SLOTS);
    write_read(blk, seed, n, false)?;
    Ok(n)
}

/// Requests in a batch of up to `per_queue` on every queue, at most `max`: each request is a
/// chain of three descriptors.
fn batch_size(blk: &Blk, per_queue: usize, max: usize) -> usize {
    let queues = blk.dev.queues();
    let smallest = (0..queues)
        .map(|q| blk.dev.queue_size(q))
        .min()
        .unwrap_or(0);
    let per_queue = per_queue.min(usize::from(smallest) / 3).max(1);
    (queues * per_queue).min(max)
}

/// A batch of `n` writes of the pattern (`seed`) from the batch sector on, spread over every
/// queue, all in flight at once, then (with `flush`, if offered) a FLUSH, then a batch of reads
/// of them, checked.
fn write_read(blk: &mut Blk, seed: u32, n: usize, flush_between: bool) -> Result<(), Line> {
    let queues = blk.dev.queues();
    let first = batch_sector(blk.capacity);
    let bytes = BATCH_SECTORS as usize * SECTOR;
    assert!(n <= MAX_SLOTS && n * bytes <= DATA_LEN);
    let mut pending = [Pending {
        queue: 0,
        head: 0,
        len: None,
    }; MAX_SLOTS];
    for write in [true, false] {
        for (slot, p) in pending.iter_mut().enumerate().take(n) {
            let sector = first + slot as u64 * BATCH_SECTORS;
            let offset = DATA + slot * bytes;
            if write {
                fill_pattern(offset, seed, sector, BATCH_SECTORS);
            } else {
                queue::fill(Buf::writable(offset, bytes as u32), 0xee);
            }
            let (typ, data) = if write {
                (T_OUT, Data::one(offset, bytes, false))
            } else {
                (T_IN, Data::one(offset, bytes, true))
            };
            *p = blk.submit(slot % queues, slot, typ, sector, &data);
        }
        let what = if write { "batch_write" } else { "batch_read" };
        blk.wait(&mut pending[..n], what)?;
        if write && flush_between {
            flush(blk)?;
        }
        for slot in 0..n {
            let sector = first + slot as u64 * BATCH_SECTORS;
            match status(slot) {
                Ok(S_OK) => {}
                Ok(got) => return Err(fig!("{} status={} sector={}", what, got, sector)),
                Err(()) => return Err(fig!("no_status step={} sector={}", what, sector)),
            }
            if !write {
                verify_pattern(DATA + slot * bytes, seed, sector, BATCH_SECTORS)?;
            }
        }
    }
    Ok(())
}

pub fn run_loop(ctx: &Ctx) -> Outcome {
    let seed = ctx.params.blk_pattern.unwrap_or(DEFAULT_SEED);
    let mut blk = open(ctx, F_RO | F_BLK_SIZE | F_FLUSH | F_MQ, false)?;
    let n = batch_size(&blk, LOOP_PER_QUEUE, LOOP_MAX);
    crate::say!("running blk_loop requests={} ms={}", n, ctx.params.loop_ms);
    let deadline = ctx.timer.deadline_ms(ctx.params.loop_ms);
    let mut rounds = 0u32;
    while rounds == 0 || !ctx.timer.expired(deadline) {
        write_read(&mut blk, seed.wrapping_add(rounds), n, true)
            .map_err(|e| {
                let reason = core::str::from_utf8(e.as_bytes()).unwrap_or("");
                fig!("{} round={}", reason, rounds)
            })?;
        rounds += 1;
    }
    let extra = fig!(
        "rounds={} depth={} first={} sectors={} flush={} seed={:#x}",
        rounds,
        n,
        batch_sector(blk.capacity),
        n as u64 * BATCH_SECTORS,
        u8::from(blk.has(F_FLUSH)),
        seed
    );
    finish(blk, extra)
}

pub fn run(ctx: &Ctx) -> Outcome {
    let seed = ctx.params.blk_pattern.unwrap_or(DEFAULT_SEED);
    let accept = F_RO | F_BLK_SIZE | F_FLUSH | F_MQ | F_DISCARD | F_WRITE_ZEROES;
    let mut blk = open(ctx, accept, false)?;
    write_regions(&mut blk, seed)?;
    for r in regions(blk.capacity, blk.block_sectors()) {
        blk.check_pattern(seed, r.sector, r.count, parts(&r.read))?;
    }
    let flushed = flush(&mut blk)?;
    let id = get_id(&mut blk)?;
    past_end(&mut blk, seed)?;
    let discard = discard_sector(blk.capacity);
    let discarded = blk.has(F_DISCARD);
    if discarded {
        zero_range(&mut blk, seed, T_DISCARD, discard, "discard")?;
    }
    let zeroed = blk.has(F_WRITE_ZEROES);
    if zeroed {
        zero_range(
            &mut blk,
            seed,
            T_WRITE_ZEROES,
            discard + ZERO_SECTORS,
            "write_zeroes",
        )?;
    }
    let depth = batch(&mut blk, seed)?;
    let extra = fig!(
        "capacity={} blk_size={} queues={} depth={} flush={} discard={} write_zeroes={} seed={:#x} id={}",
        blk.capacity,
        blk.blk_size,
        blk.dev.queues(),
        depth,
        flushed,
        u8::from(discarded),
        u8::from(zeroed),
        seed,
        id_str(&id)
    );
    finish(blk, extra)
}

pub fn run_ro(ctx: &Ctx) -> Outcome {
    let seed = ctx.params.blk_pattern;
    let mut blk = open(ctx, F_RO | F_BLK_SIZE, true)?;
    let b = blk.block_sectors();
    for r in regions(blk.capacity, b) {
        blk.read(r.sector, r.count, parts(&r.read))?;
        if let Some(seed) = seed {
            verify_pattern(DATA, seed, r.sector, r.count)?;
        }
    }
    let end = down(blk.capacity, b);
    let block = b as usize * SECTOR;
    blk.expect(
        T_IN,
        end,
        &Data::one(DATA, block, true),
        S_IOERR,
        "read_at_end",
    )?;
    // Block 0 before, a write of other bytes (refused), block 0 after: the same.
    blk.read(0, b, &[block as u32])?;
    let other = DATA + 2 * block;
    queue::fill(Buf::readable(other, block as u32), 0x5a);
    blk.expect(T_OUT, 0, &Data::one(other, block, false), S_IOERR, "write")?;
    queue::fill(Buf::writable(other, block as u32), 0xee);
    blk.expect(T_IN, 0, &Data::one(other, block, true), S_OK, "read")?;
    for i in (0..block).step_by(8) {
        let (before, after) = (queue::read_u64(DATA + i), queue::read_u64(other + i));
        if before != after {
            return Err(fig!(
                "changed_by_refused_write byte={} before={:#x} after={:#x}",
                i,
                before,
                after
            ));
        }
    }
    let id = get_id(&mut blk)?;
    let extra = fig!(
        "capacity={} blk_size={} verified={} id={}",
        blk.capacity,
        blk.blk_size,
        u8::from(seed.is_some()),
        id_str(&id)
    );
    finish(blk, extra)
}

pub fn run_write(ctx: &Ctx) -> Outcome {
    let seed = ctx.params.blk_pattern.unwrap_or(DEFAULT_SEED);
    let mut blk = open(ctx, F_RO | F_BLK_SIZE | F_FLUSH, false)?;
    write_regions(&mut blk, seed)?;
    let flushed = flush(&mut blk)?;
    let extra = fig!(
        "capacity={} flush={} seed={:#x}",
        blk.capacity,
        flushed,
        seed
    );
    finish(blk, extra)
}
