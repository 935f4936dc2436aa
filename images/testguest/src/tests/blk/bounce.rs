//! `blk_bounce` (by name only): the worst case for the memory of a `direct=on` device. Every
//! request is the largest the device takes (`MAX_REQUEST` bytes, one descriptor, or the whole
//! disk if it is smaller), its buffer one byte off any alignment, so the device must copy it
//! through a bounce buffer; all requests share one buffer in guest RAM (as a hostile guest
//! may). Queue 0 is filled with as many of them as it has descriptors (each request is one
//! indirect descriptor; reads and writes alternate) and notified once: all are available to
//! the device at once. Without a cap on bounce buffers in flight the device would hold the sum
//! of them all (16 × 7.9 MiB). Passes when every request completes with `OK` (the harness
//! checks the worker's memory from `/proc`).

use super::io::*;
use super::open;
use crate::fig;
use crate::tests::{Ctx, Outcome};
use crate::virtio::Pending;

/// The device's largest request (virtio-blk's `seg_max * size_max`: 126 × 64 KiB).
const MAX_REQUEST: u64 = 126 * 64 * 1024;
/// The shared buffer: guest RAM at 64 MiB, one byte in (an odd address: misaligned for any
/// direct-I/O memory alignment). The guest needs more than 72 MiB of RAM.
const FAR: usize = (64 << 20) + 1;

pub fn run(ctx: &Ctx) -> Outcome {
    let mut blk = open(ctx, F_BLK_SIZE | F_MQ | F_INDIRECT_DESC, false)?;
    if !blk.has(F_INDIRECT_DESC) {
        return Err(fig!("no_indirect_descriptors"));
    }
    let block = u64::from(blk.blk_size);
    let len = MAX_REQUEST.min(blk.capacity * SECTOR as u64) / block * block;
    let queues = blk.dev.queues();
    // A request is one (indirect) descriptor of the ring.
    let per_queue = (0..queues)
        .map(|q| usize::from(blk.dev.queue_size(q)))
        .min()
        .unwrap_or(0);
    // Queue 0 first: the device serves one queue at a time, so its own requests are the ones
    // that overlap.
    let n = per_queue.min(MAX_SLOTS);
    if n == 0 {
        return Err(fig!("no_room queues={}", queues));
    }
    let mut pending = [Pending {
        queue: 0,
        head: 0,
        len: None,
    }; MAX_SLOTS];
    for (slot, p) in pending.iter_mut().enumerate().take(n) {
        let read = slot % 2 == 1;
        let typ = if read { T_IN } else { T_OUT };
        let data = Data::far(FAR, len as u32, read);
        *p = blk.submit_indirect(0, slot, typ, 0, &data);
    }
    blk.wait(&mut pending[..n], "bounce")?;
    for slot in 0..n {
        match status(slot) {
            Ok(S_OK) => {}
            Ok(got) => return Err(fig!("bounce status={} request={}", got, slot)),
            Err(()) => return Err(fig!("no_status step=bounce request={}", slot)),
        }
    }
    let extra = fig!(
        "requests_in_flight={} request_bytes={} queues={} blk_size={}",
        n,
        len,
        queues,
        blk.blk_size
    );
    super::finish(blk, extra)
}
