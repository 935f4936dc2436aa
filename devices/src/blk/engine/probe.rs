//! The hostile worker's disk probe (cargo feature `test-faults` only): what a compromised blk
//! worker would try against the host disk with the ring and the system calls it still has, so
//! that a test can check that none of it changes the image or allocates host disk space.
//!
//! [`run`] tries, in this order, printing one line per attempt on stderr:
//!
//! 1. through the ring: `FALLOCATE` with `ZERO_RANGE | KEEP_SIZE` past the end of the image
//!    (preallocation that `RLIMIT_FSIZE` does not see), `FALLOCATE` with `INSERT_RANGE` (grows
//!    the image by shifting its blocks), a plain `FALLOCATE` past the end, a `WRITEV` with
//!    `RWF_APPEND`, and a `WRITEV` past the end;
//! 2. as system calls under the worker's seccomp filter: `fallocate(ZERO_RANGE)` past the end
//!    (the image's `RLIMIT_FSIZE` refuses it), then `fallocate(ZERO_RANGE | KEEP_SIZE)` past the
//!    end, which the filter must answer with `SIGSYS` — the worker dies there.
//!
//! Each attempt asks for [`PROBE_BYTES`] of disk. The probe runs once, on the first queue
//! notification after an activation, before the device serves anything.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;

use io_uring::squeue::Entry;
use io_uring::{opcode, types, IoUring};

/// How much disk each attempt asks for.
pub(crate) const PROBE_BYTES: u64 = 256 << 20;

const FALLOC_FL_KEEP_SIZE: i32 = 0x01;
const FALLOC_FL_ZERO_RANGE: i32 = 0x10;
const FALLOC_FL_INSERT_RANGE: i32 = 0x20;

/// Runs the ring attempts on `ring` (whose fixed file 0 is the image), then the system calls on
/// `image` of `size` bytes. Returns only if the filter let the last call through.
pub(crate) fn run(ring: Option<&mut IoUring>, image: &File, size: u64) {
    let image_fixed = types::Fixed(0);
    let mut block = vec![0x5au8; 4096];
    let iov = libc::iovec {
        iov_base: block.as_mut_ptr().cast(),
        iov_len: block.len(),
    };
    if let Some(ring) = ring {
        let attempts: [(&str, Entry); 5] = [
            (
                "ring fallocate ZERO_RANGE|KEEP_SIZE past the end",
                opcode::Fallocate::new(image_fixed, PROBE_BYTES)
                    .offset(size)
                    .mode(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE)
                    .build(),
            ),
            (
                "ring fallocate INSERT_RANGE at 0",
                opcode::Fallocate::new(image_fixed, 1 << 20)
                    .offset(0)
                    .mode(FALLOC_FL_INSERT_RANGE)
                    .build(),
            ),
            (
                "ring fallocate past the end",
                opcode::Fallocate::new(image_fixed, PROBE_BYTES)
                    .offset(size)
                    .build(),
            ),
            (
                "ring writev RWF_APPEND",
                opcode::Writev::new(image_fixed, &iov, 1)
                    .offset(0)
                    .rw_flags(libc::RWF_APPEND)
                    .build(),
            ),
            (
                "ring writev past the end",
                opcode::Writev::new(image_fixed, &iov, 1)
                    .offset(size)
                    .build(),
            ),
        ];
        for (what, entry) in attempts {
            report(what, submit_one(ring, entry));
        }
    }
    let zero = rustix::fs::FallocateFlags::ZERO_RANGE;
    let keep = rustix::fs::FallocateFlags::KEEP_SIZE;
    for (what, flags) in [
        ("fallocate ZERO_RANGE past the end", zero),
        ("fallocate ZERO_RANGE|KEEP_SIZE past the end", zero | keep),
    ] {
        let result = rustix::fs::fallocate(image.as_fd(), flags, size, PROBE_BYTES)
            .map(|()| 0)
            .map_err(io::Error::from);
        report(what, result);
    }
    drop(block);
}

/// Submits `entry` alone and waits for its completion: the number the kernel returned.
fn submit_one(ring: &mut IoUring, entry: Entry) -> io::Result<usize> {
    let entry = entry.user_data(u64::MAX);
    // SAFETY: the entry names the ring's fixed file 0 and, for the writes, one iovec over
    // `block` in `run`, which lives until after this function waited for the completion.
    unsafe { ring.submission().push(&entry) }
        .map_err(|_| io::Error::from_raw_os_error(libc::EBUSY))?;
    ring.submit_and_wait(1)?;
    let mut result = Err(io::Error::from_raw_os_error(libc::EIO));
    for completion in ring.completion() {
        if completion.user_data() == u64::MAX {
            let res = completion.result();
            result = if res >= 0 {
                Ok(usize::try_from(res).unwrap_or(0))
            } else {
                Err(io::Error::from_raw_os_error(-res))
            };
        }
    }
    result
}

fn report(what: &str, result: io::Result<usize>) {
    use std::io::Write;
    let outcome = match result {
        Ok(n) => format!("done ({n})"),
        Err(e) => format!("refused: {e}"),
    };
    let _ = writeln!(io::stderr(), "svmm worker: blk probe: {what}: {outcome}");
}
