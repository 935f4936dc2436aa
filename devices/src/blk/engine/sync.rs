//! The synchronous engine: each operation is one blocking system call on the calling thread
//! (`preadv2`, `pwritev2`, `fdatasync`, `fallocate`). Depth 1; used for tests, in-process
//! devices without a prepared ring, kernels without io_uring, and by the io_uring engine to redo
//! an operation the kernel cancelled.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;

use super::{Completion, Engine, EngineKind, IoVecs, Op, MAX_OPS_PER_REQUEST};

/// Runs each operation when it is submitted.
pub(crate) struct SyncEngine {
    image: Arc<File>,
    done: VecDeque<Completion>,
}

impl SyncEngine {
    /// An engine on `image`.
    pub(crate) fn new(image: Arc<File>) -> Self {
        SyncEngine {
            image,
            done: VecDeque::new(),
        }
    }
}

impl Engine for SyncEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Sync
    }

    fn submit(&mut self, token: u64, op: Op) -> Result<(), (Op, io::Error)> {
        let result = execute(&self.image, &op);
        self.done.push_back(Completion { token, op, result });
        Ok(())
    }

    fn wait(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        out.extend(self.done.drain(..));
        Ok(())
    }

    /// Every operation finished when it was submitted.
    fn reap_ready(&mut self, out: &mut Vec<Completion>) -> io::Result<bool> {
        let any = !self.done.is_empty();
        out.extend(self.done.drain(..));
        Ok(any)
    }

    fn in_flight(&self) -> usize {
        self.done.len()
    }

    /// One request's worth: the device pops the next chain only after this one completed.
    fn capacity(&self) -> usize {
        MAX_OPS_PER_REQUEST
    }
}

/// Runs `op` on `image` with a blocking system call; returns the bytes transferred.
///
/// Reads and writes are retried after `EINTR` and continued after a short transfer; a read
/// that hits the end of the file returns what it got.
pub(crate) fn execute(image: &File, op: &Op) -> io::Result<usize> {
    match op {
        Op::Read { offset, iov } => transfer(image, iov, *offset, Dir::Read),
        Op::Write { offset, iov } => transfer(image, iov, *offset, Dir::Write),
        Op::Sync => retry(|| rustix::fs::fdatasync(image.as_fd())).map(|()| 0),
        Op::Fallocate { mode, offset, len } => {
            retry(|| rustix::fs::fallocate(image.as_fd(), mode.flags(), *offset, *len)).map(|()| 0)
        }
    }
}

fn retry(mut f: impl FnMut() -> rustix::io::Result<()>) -> io::Result<()> {
    loop {
        match f() {
            Err(rustix::io::Errno::INTR) => continue,
            other => return other.map_err(io::Error::from),
        }
    }
}

#[derive(Clone, Copy)]
enum Dir {
    Read,
    Write,
}

/// `preadv2`/`pwritev2` until `iov` is done, the file ends, or an error.
fn transfer(image: &File, iov: &IoVecs, offset: u64, dir: Dir) -> io::Result<usize> {
    let mut vecs = iov.to_vec();
    let mut first = 0usize;
    let mut done = 0usize;
    let total = iov.len();
    while done < total {
        let at = offset
            .checked_add(done as u64)
            .and_then(|o| libc::off_t::try_from(o).ok())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let rest = &vecs[first..];
        let count = libc::c_int::try_from(rest.len()).unwrap_or(libc::c_int::MAX);
        let n = match dir {
            // SAFETY: every iovec in `rest` names memory that stays valid and writable for the
            // whole call: guest memory kept mapped by the `Arc` inside `iov`, or `iov`'s own
            // bounce buffer (see the `iovec` module); `iov` is borrowed for the call. No Rust
            // reference to that memory exists while the kernel writes it. `count` is the
            // length of `rest`, and the fd is the open image.
            Dir::Read => unsafe { libc::preadv2(image.as_raw_fd(), rest.as_ptr(), count, at, 0) },
            // SAFETY: as above, for memory the kernel only reads. Flags 0: the one value the
            // `blk` seccomp profile allows (durability comes from a following `fdatasync`).
            Dir::Write => unsafe { libc::pwritev2(image.as_raw_fd(), rest.as_ptr(), count, at, 0) },
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        let n = usize::try_from(n).unwrap_or(0);
        if n == 0 {
            break; // end of file
        }
        done += n;
        advance(&mut vecs, &mut first, n);
    }
    Ok(done)
}

/// Skips `n` transferred bytes: whole iovecs move `first`, a partial one is shortened.
fn advance(vecs: &mut [libc::iovec], first: &mut usize, mut n: usize) {
    while n > 0 {
        let Some(v) = vecs.get_mut(*first) else {
            return;
        };
        if n >= v.iov_len {
            n -= v.iov_len;
            *first += 1;
        } else {
            v.iov_base = v.iov_base.cast::<u8>().wrapping_add(n).cast();
            v.iov_len -= n;
            n = 0;
        }
    }
}
