//! The io_uring engine: operations are queued as submission entries and completed in the
//! order the kernel finishes them.
//!
//! The ring is built before the worker is confined ([`UringEngine::new`]): created disabled,
//! given the image as fixed file 0, capped at [`IO_WORKERS`] io-wq threads, restricted to
//! `READV`, `WRITEV` and `FSYNC` on fixed files (with `IO_DRAIN` the only other flag), then
//! enabled. After that no `io_uring_register` call is allowed (not by the restrictions, not by
//! the seccomp profile), so a compromised worker holding the ring can do exactly those three
//! things to the image and nothing else, through `io_uring_enter`.
//!
//! **`fallocate` is not among them.** io_uring's restrictions pin the opcode, not its
//! arguments: a ring allowed `FALLOCATE` takes any mode at any offset — `ZERO_RANGE |
//! KEEP_SIZE` far past the end preallocates host disk that `RLIMIT_FSIZE` never counts,
//! `INSERT_RANGE` grows the image by shifting it. So discard and write-zeroes run as
//! `fallocate` system calls ([`super::sync::execute`], on the worker's thread, once everything
//! submitted before has finished, as for an `IO_DRAIN` entry),
//! where the seccomp filter allows only the two modes the device uses (see
//! [`super::Fallocate`]). What the ring still can do: read and write anywhere in the image
//! (the guest's data anyway), with any `rw_flags` — `RWF_APPEND` or an offset past the end
//! would grow the file, which `RLIMIT_FSIZE` (= the image size) refuses with `EFBIG` — and
//! `fdatasync` it.
//!
//! An operation the kernel cancels (`ECANCELED`/`EAGAIN`: io-wq could not start a thread under
//! the sandbox's `RLIMIT_NPROC`) is redone synchronously with [`super::sync::execute`].

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use io_uring::register::Restriction;
use io_uring::squeue::{self, Flags};
use io_uring::{opcode, types, IoUring};

use super::sync::execute;
use super::{Completion, Engine, EngineKind, Op};
use crate::blk::IO_WORKERS;

/// The image's index among the ring's fixed files.
const IMAGE: types::Fixed = types::Fixed(0);

/// An io_uring with the image as its only file.
pub(crate) struct UringEngine {
    ring: IoUring,
    image: Arc<File>,
    /// Operations the kernel may still use, indexed by their `user_data`.
    slots: Vec<Option<(u64, Op)>>,
    free: Vec<usize>,
    in_flight: usize,
    /// Operations done outside the ring (`fallocate`), handed back by the next `wait`.
    done: Vec<Completion>,
    /// Operations the kernel cancelled and [`execute`] redid.
    pub(crate) redone: u64,
}

impl UringEngine {
    /// Sets up a ring of `entries` entries on `image` (see the module docs). Uses
    /// `io_uring_setup` and `io_uring_register`, which the confined worker may not call.
    pub(crate) fn new(image: Arc<File>, entries: u32) -> io::Result<Self> {
        // Cooperative task running (Linux 5.19+, else a plain ring): a completion is posted by
        // task work that waits for this thread to enter the kernel, flagged in the ring
        // (`IORING_SQ_TASKRUN`) instead of interrupting the thread on its CPU; a thread asleep
        // in `io_uring_enter` is still woken. So the in-flight poll (`reap_ready`) sees a
        // finished read without an inter-processor interrupt, which costs ~16 µs on the
        // development host's virtual CPUs.
        let ring: IoUring = match IoUring::builder()
            .setup_r_disabled()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .build(entries)
        {
            Ok(ring) => ring,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                IoUring::builder().setup_r_disabled().build(entries)?
            }
            Err(e) => return Err(e),
        };
        let submitter = ring.submitter();
        submitter.register_files(&[image.as_raw_fd()])?;
        // Older kernels (< 5.15) lack the limit; the sandbox's RLIMIT_NPROC still bounds them.
        let _ = submitter.register_iowq_max_workers(&mut [IO_WORKERS, IO_WORKERS]);
        let mut restrictions = [
            Restriction::sqe_op(opcode::Readv::CODE),
            Restriction::sqe_op(opcode::Writev::CODE),
            Restriction::sqe_op(opcode::Fsync::CODE),
            Restriction::sqe_flags_allowed((Flags::FIXED_FILE | Flags::IO_DRAIN).bits()),
            Restriction::sqe_flags_required(Flags::FIXED_FILE.bits()),
        ];
        submitter.register_restrictions(&mut restrictions)?;
        submitter.register_enable_rings()?;
        let capacity = ring.params().sq_entries() as usize;
        Ok(UringEngine {
            ring,
            image,
            slots: Vec::with_capacity(capacity),
            free: Vec::new(),
            in_flight: 0,
            done: Vec::new(),
            redone: 0,
        })
    }

    /// The submission entry for `op`, tagged with `slot`.
    fn entry(op: &Op, slot: usize) -> squeue::Entry {
        let entry = match op {
            Op::Read { offset, iov } => opcode::Readv::new(IMAGE, iov.as_ptr(), iov.count())
                .offset(*offset)
                .build(),
            Op::Write { offset, iov } => opcode::Writev::new(IMAGE, iov.as_ptr(), iov.count())
                .offset(*offset)
                .build(),
            // IO_DRAIN: starts only after everything submitted before it has completed, so
            // a FLUSH covers every write the driver had submitted before it.
            Op::Sync => opcode::Fsync::new(IMAGE)
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .flags(Flags::IO_DRAIN),
            // Never reaches the ring (`submit`); a NOP that the restrictions refuse keeps the
            // match whole.
            Op::Fallocate { .. } => opcode::Nop::new().build(),
        };
        entry.user_data(slot as u64)
    }

    /// Enters the kernel until `want` completions are available (`EINTR` retried).
    fn enter(&self, want: usize) -> io::Result<()> {
        loop {
            match self.ring.submit_and_wait(want) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // The completion queue is full: reap first (the caller does).
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }
}

impl Engine for UringEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::IoUring
    }

    fn submit(&mut self, token: u64, op: Op) -> Result<(), (Op, io::Error)> {
        if matches!(op, Op::Fallocate { .. }) {
            // Outside the ring, under the seccomp filter (see the module docs), and, like an
            // `IO_DRAIN` entry, only once everything submitted before it has finished: a
            // discard after a FLUSH must not overtake the writes the FLUSH waited for.
            let mut done = std::mem::take(&mut self.done);
            while self.in_flight > 0 {
                if let Err(e) = self.reap(&mut done) {
                    self.done = done;
                    return Err((op, e));
                }
            }
            self.done = done;
            let result = execute(&self.image, &op);
            self.done.push(Completion { token, op, result });
            return Ok(());
        }
        if self.in_flight >= self.capacity() {
            return Err((op, io::Error::from_raw_os_error(libc::EBUSY)));
        }
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        let entry = Self::entry(&op, slot);
        // The op (and the iovecs the entry points to) moves into its slot before the kernel can
        // see the entry; moving an `IoVecs` does not move the memory its pointers name.
        self.slots[slot] = Some((token, op));
        let mut pushed = false;
        for _ in 0..2 {
            // SAFETY: the entry names only the fixed image file and, for reads and writes, the
            // iovec array and buffers owned by the `IoVecs` now stored in `self.slots[slot]`.
            // That slot is emptied only when the entry's completion is reaped (`wait`), and
            // `Drop` waits for every completion, so the memory stays valid (and guest memory
            // mapped, see the `iovec` module) for the whole operation.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                pushed = true;
                break;
            }
            // The submission queue is full: hand it to the kernel, then retry once.
            if let Err(e) = self.ring.submit() {
                return Err(self.unslot(slot, e));
            }
        }
        if !pushed {
            let e = io::Error::from_raw_os_error(libc::EBUSY);
            return Err(self.unslot(slot, e));
        }
        self.in_flight += 1;
        Ok(())
    }

    fn wait(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        if !self.done.is_empty() {
            // Finished already: hand them back without waiting for the ring.
            out.append(&mut self.done);
            return Ok(());
        }
        self.reap(out)
    }

    /// Hands queued entries to the kernel and runs the task work of finished operations (one
    /// `io_uring_enter` without waiting, only when there are entries or the ring flags task
    /// work), then reads the completion queue in user space. A device that spins here is
    /// never woken from sleep for a completion.
    fn reap_ready(&mut self, out: &mut Vec<Completion>) -> io::Result<bool> {
        if !self.done.is_empty() {
            out.append(&mut self.done);
            return Ok(true);
        }
        if self.in_flight == 0 {
            return Ok(false);
        }
        let pending = {
            let sq = self.ring.submission();
            !sq.is_empty() || sq.taskrun()
        };
        if pending {
            // `submit_and_wait(0)` adds GETEVENTS (flags 1) when the ring flags task work.
            self.enter(0)?;
        }
        Ok(self.take_finished(out) > 0)
    }

    fn in_flight(&self) -> usize {
        self.in_flight + self.done.len()
    }

    fn capacity(&self) -> usize {
        self.ring.params().sq_entries() as usize
    }

    fn extra_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(self.ring.as_raw_fd())
    }

    #[cfg(feature = "test-faults")]
    fn probe(&mut self, image: &File, size: u64) {
        super::probe::run(Some(&mut self.ring), image, size);
    }
}

impl UringEngine {
    /// Waits for at least one operation in the ring to finish (returns at once if none is in
    /// flight) and appends every finished one to `out`.
    fn reap(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        if self.in_flight == 0 {
            return Ok(());
        }
        self.enter(1)?;
        self.take_finished(out);
        Ok(())
    }

    /// Appends the operations of every entry in the completion queue to `out`, without
    /// entering the kernel; returns how many there were.
    fn take_finished(&mut self, out: &mut Vec<Completion>) -> usize {
        let finished: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        let count = finished.len();
        for (user_data, res) in finished {
            let slot = usize::try_from(user_data).unwrap_or(usize::MAX);
            let Some((token, op)) = self.slots.get_mut(slot).and_then(Option::take) else {
                continue; // not ours; cannot happen with this ring
            };
            self.free.push(slot);
            self.in_flight -= 1;
            let result = match res {
                n if n >= 0 => Ok(usize::try_from(n).unwrap_or(0)),
                n if n == -libc::ECANCELED || n == -libc::EAGAIN => {
                    self.redone += 1;
                    execute(&self.image, &op)
                }
                n => Err(io::Error::from_raw_os_error(-n)),
            };
            out.push(Completion { token, op, result });
        }
        count
    }

    /// Takes back an op whose entry never reached the queue.
    fn unslot(&mut self, slot: usize, e: io::Error) -> (Op, io::Error) {
        self.free.push(slot);
        match self.slots[slot].take() {
            Some((_, op)) => (op, e),
            None => (Op::Sync, e),
        }
    }
}

impl Drop for UringEngine {
    /// Waits for every operation the kernel may still be using before their buffers go. If
    /// the ring cannot be entered any more, the buffers are leaked rather than freed under the
    /// kernel's feet.
    fn drop(&mut self) {
        while self.in_flight > 0 {
            if self.enter(self.in_flight).is_err() {
                std::mem::forget(std::mem::take(&mut self.slots));
                return;
            }
            let reaped: Vec<u64> = self.ring.completion().map(|c| c.user_data()).collect();
            for user_data in reaped {
                let slot = usize::try_from(user_data).unwrap_or(usize::MAX);
                if self.slots.get_mut(slot).and_then(Option::take).is_some() {
                    self.in_flight -= 1;
                }
            }
        }
    }
}
