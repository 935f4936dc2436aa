//! From a taken chain to engine operations: `request::parse` validates it once, the request
//! becomes its operations (a read or write into guest memory or through a bounce buffer, a
//! `fdatasync`, one `fallocate` per range) or is completed at once, and plain reads and writes
//! are staged for merging (`merge`) until the batch's run is submitted. What happens when the
//! operations finish is the parent module's (`Active::finish_op`).

use vm_memory::Bytes;

use super::{bounce_len, Active, InFlight};
use crate::blk::engine::{Engine, Fallocate, IoVecs, Op};
use crate::blk::merge::{Direction, Run};
use crate::blk::request::{self, Range, Request, Segment};
use crate::blk::{status, ID_BYTES, SECTOR_SIZE};
use crate::DeviceError;

impl Active {
    /// Parses the chain at `head`, taken as number `seq` of its queue, and submits its
    /// operations (or completes it at once).
    pub(super) fn start(
        &mut self,
        queue: u16,
        seq: u64,
        head: u16,
        engine: &mut dyn Engine,
    ) -> Result<(), DeviceError> {
        let Some(source) = self.queue(queue).map(|q| q.source) else {
            return Err(DeviceError::UnknownQueue(queue));
        };
        let valid = match request::parse(&*self.mem, &source, head, &self.disk) {
            Ok(valid) => valid,
            Err(rejected) => {
                let byte = rejected.status_byte();
                return self.complete(queue, seq, head, rejected.status, byte, 0, 0);
            }
        };
        let mut req = InFlight {
            queue,
            seq,
            head,
            status_addr: valid.status,
            status: status::OK,
            data_written: 0,
            bytes: 0,
            ops_left: 0,
            sync_after: false,
            discard: false,
            copy_out: Vec::new(),
            members: Vec::new(),
        };
        let status_addr = Some(valid.status);
        let ops = match valid.request {
            // A zero-length read or write: nothing to do.
            Request::Read { ref bufs, .. } | Request::Write { ref bufs, .. } if bufs.is_empty() => {
                return self.complete(queue, seq, head, status_addr, status::OK, 0, 0);
            }
            Request::Read { sector, bufs } => match self.data_iov(sector, &bufs, false) {
                Some((offset, iov)) => {
                    req.data_written = u32::try_from(iov.len()).unwrap_or(0);
                    req.bytes = iov.len() as u64;
                    if iov.bounce_bytes().is_some() {
                        req.copy_out = bufs;
                    } else if self.merge {
                        return self.stage(req, Direction::Read, offset, iov, engine);
                    }
                    vec![Op::Read { offset, iov }]
                }
                None => return self.complete(queue, seq, head, status_addr, status::IOERR, 0, 0),
            },
            Request::Write { sector, bufs } => match self.data_iov(sector, &bufs, true) {
                Some((offset, iov)) => {
                    req.bytes = iov.len() as u64;
                    // Without FLUSH a write is durable before it completes: an fdatasync
                    // after it (once per merged run), not `RWF_DSYNC` (see "Durability").
                    req.sync_after = !self.flush;
                    if self.merge && iov.bounce_bytes().is_none() {
                        return self.stage(req, Direction::Write, offset, iov, engine);
                    }
                    vec![Op::Write { offset, iov }]
                }
                None => return self.complete(queue, seq, head, status_addr, status::IOERR, 0, 0),
            },
            Request::Flush => vec![Op::Sync],
            Request::GetId { bufs } => {
                let (byte, n) = self.write_id(&bufs);
                return self.complete(queue, seq, head, status_addr, byte, n, 0);
            }
            Request::Discard { ranges } => {
                req.discard = true;
                req.sync_after = !self.flush;
                fallocate_ops(&ranges, Fallocate::PunchHole)
            }
            Request::WriteZeroes { ranges, unmap } => {
                req.sync_after = !self.flush;
                let mode = if unmap {
                    Fallocate::PunchHole
                } else {
                    Fallocate::ZeroRange
                };
                fallocate_ops(&ranges, mode)
            }
            Request::Unsupported { .. } => {
                return self.complete(queue, seq, head, status_addr, status::UNSUPP, 0, 0);
            }
        };
        let ops = if ops.is_empty() && req.sync_after {
            req.sync_after = false;
            vec![Op::Sync]
        } else {
            ops
        };
        if ops.is_empty() {
            return self.complete(queue, seq, head, status_addr, status::OK, 0, 0);
        }

        // Whatever was staged before this request reaches the engine first (a FLUSH's
        // IO_DRAIN must find every earlier write submitted).
        self.submit_run(engine)?;
        let slot = self.take_slot();
        for op in ops {
            let bounce = bounce_len(&op);
            match engine.submit(slot as u64, op) {
                Ok(()) => {
                    req.ops_left += 1;
                    self.bounce_in_flight += bounce;
                }
                Err(_) => req.status = status::IOERR,
            }
        }
        self.requests_in_flight += 1;
        if req.ops_left == 0 {
            // Nothing reached the engine: finish here.
            return self.finish_request(req, slot);
        }
        self.slots[slot] = Some(req);
        Ok(())
    }

    /// A free request slot.
    fn take_slot(&mut self) -> usize {
        match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        }
    }

    /// Stages a plain read or write for merging: it joins the open run if it continues it,
    /// else the open run is submitted and it begins a new one.
    fn stage(
        &mut self,
        mut req: InFlight,
        direction: Direction,
        offset: u64,
        iov: IoVecs,
        engine: &mut dyn Engine,
    ) -> Result<(), DeviceError> {
        let slot = self.take_slot();
        req.ops_left = 1;
        self.slots[slot] = Some(req);
        self.requests_in_flight += 1;
        match &mut self.run {
            Some(run) if run.continues(direction, offset, &iov) => {
                run.push(iov, slot);
                Ok(())
            }
            _ => {
                self.submit_run(engine)?;
                self.run = Some(Run::new(direction, offset, iov, slot));
                Ok(())
            }
        }
    }

    /// Submits the open run (if any) as one operation tagged with its first member's slot.
    pub(super) fn submit_run(&mut self, engine: &mut dyn Engine) -> Result<(), DeviceError> {
        let Some(run) = self.run.take() else {
            return Ok(());
        };
        let leader = run.slots[0];
        let Some(iov) = IoVecs::join(run.parts) else {
            // Staged parts are never bounce buffers and share one memory: cannot happen.
            return self.fail_members(&run.slots);
        };
        let op = match run.direction {
            Direction::Read => Op::Read {
                offset: run.offset,
                iov,
            },
            Direction::Write => Op::Write {
                offset: run.offset,
                iov,
            },
        };
        if engine.submit(leader as u64, op).is_err() {
            return self.fail_members(&run.slots);
        }
        if let Some(req) = self.slots.get_mut(leader).and_then(Option::as_mut) {
            req.members = run.slots[1..].to_vec();
        }
        Ok(())
    }

    /// Completes the staged requests in `slots` with `IOERR` (their operation failed).
    fn fail_members(&mut self, slots: &[usize]) -> Result<(), DeviceError> {
        for &slot in slots {
            if let Some(mut req) = self.slots.get_mut(slot).and_then(Option::take) {
                req.status = status::IOERR;
                self.finish_request(req, slot)?;
            }
        }
        Ok(())
    }

    /// The image offset and iovecs of a read (`write == false`) or write: straight into guest
    /// memory, or through a bounce buffer where direct I/O needs alignment the guest's buffers
    /// lack. `None`: the request cannot be done (misaligned for direct I/O).
    fn data_iov(&self, sector: u64, bufs: &[Segment], write: bool) -> Option<(u64, IoVecs)> {
        // The parser checked sector + len/512 <= capacity, and capacity * 512 is the image
        // size, so neither product nor sum overflows.
        let offset = sector.checked_mul(SECTOR_SIZE)?;
        let len: u64 = bufs.iter().map(|b| u64::from(b.len)).sum();
        let mem_align = match self.direct {
            Some(d) if offset % d.offset_align != 0 || len % d.offset_align != 0 => return None,
            Some(d) => d.mem_align,
            None => 1,
        };
        if let Some(iov) = IoVecs::guest(&self.mem, bufs, mem_align, !write).ok()? {
            return Some((offset, iov));
        }
        let mut iov = IoVecs::bounce(usize::try_from(len).ok()?, mem_align);
        if write {
            // Copy the payload in before the kernel sees the bounce buffer.
            let bytes = iov.bounce_bytes_mut()?;
            let mut at = 0;
            for b in bufs {
                let n = b.len as usize;
                self.mem.read_slice(&mut bytes[at..at + n], b.addr).ok()?;
                at += n;
            }
        }
        Some((offset, iov))
    }

    /// Writes the id (NUL-padded to 20 bytes, cut to the buffers) into `bufs`.
    fn write_id(&self, bufs: &[Segment]) -> (u8, u32) {
        let mut at = 0usize;
        for b in bufs {
            let n = (b.len as usize).min(ID_BYTES - at);
            if self.mem.write_slice(&self.id[at..at + n], b.addr).is_err() {
                return (status::IOERR, 0);
            }
            at += n;
        }
        (status::OK, u32::try_from(at).unwrap_or(0))
    }
}

/// One `fallocate` per range.
fn fallocate_ops(ranges: &[Range], mode: Fallocate) -> Vec<Op> {
    ranges
        .iter()
        .map(|r| Op::Fallocate {
            mode,
            // sector + sectors <= capacity, so both products fit (see `data_iov`).
            offset: r.sector.saturating_mul(SECTOR_SIZE),
            len: u64::from(r.sectors) * SECTOR_SIZE,
        })
        .collect()
}
