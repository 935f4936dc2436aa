//! virtio-blk on io_uring inside a sandbox-like process: a ring prepared while privileged,
//! then an unprivileged uid and `RLIMIT_NPROC` 0, as a confined worker has. The kernel cannot
//! start io-wq threads there and cancels blocking operations (`ECANCELED`); the engine redoes
//! them synchronously, so every request still completes correctly.
//!
//! `harness = false`: it forks, which must happen while the process is single-threaded, so its
//! one trial runs on the main thread (libtest-mimic with one test thread). Needs root (to switch
//! uid) and a kernel that gives out io_uring instances; without either the trial is reported
//! as ignored, with the reason. Every set-up step that fails in the child fails the trial.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use devices::blk::{Blk, BlkOptions, EngineKind};
use devices::{Interrupt, NoEvents, VirtioBackend, VIRTIO_F_VERSION_1};
use libtest_mimic::{Arguments, Completion, Trial};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

struct NoIrq;
impl Interrupt for NoIrq {
    fn signal_used_queue(&self) {}
    fn signal_config_change(&self) {}
}

const FLUSH_FEATURE: u64 = 1 << 9;
const DISCARD_FEATURE: u64 = 1 << 13;

/// A status byte no request completion writes (OK 0, IOERR 1, UNSUPP 2): what every status
/// byte holds until the device completes its request.
const UNTOUCHED: u8 = 0xff;

/// Guest address of request `n`'s status byte.
fn status(n: u64) -> u64 {
    0x6000 + n
}

/// Runs in the child: `Err` with what went wrong, or `Ok` when every request completed right.
fn child(path: &std::path::Path) -> Result<(), String> {
    let image = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| format!("cannot open the image: {e}"))?;
    let mut blk =
        Blk::new(image, BlkOptions::default()).map_err(|e| format!("Blk::new failed: {e}"))?;
    match blk.prepare_engine() {
        Ok(EngineKind::IoUring) => {}
        Ok(other) => return Err(format!("the engine is {other:?}, not io_uring")),
        Err(e) => return Err(format!("prepare_engine failed: {e}")),
    }
    // SAFETY: plain system calls on this (single-threaded) child's own credentials and limits;
    // no memory is passed but the rlimit struct on the stack.
    let ok = unsafe {
        let limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setgid(65534) == 0
            && libc::setuid(65534) == 0
            && libc::setrlimit(libc::RLIMIT_NPROC, &limit) == 0
    };
    if !ok {
        return Err(format!(
            "could not drop privileges: {}",
            std::io::Error::last_os_error()
        ));
    }

    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)])
        .map_err(|e| format!("cannot make guest memory: {e}"))?;
    let vq = MockSplitQueue::create(&mem, GuestAddress(0), 64);
    let mut queue: Queue = vq
        .create_queue()
        .map_err(|e| format!("cannot make the queue: {e}"))?;
    queue.set_used_ring_address(Some(0x2000), Some(0));
    let features = VIRTIO_F_VERSION_1 | FLUSH_FEATURE | DISCARD_FEATURE;
    blk.activate(features, mem.clone(), vec![queue], Arc::new(NoIrq))
        .map_err(|e| format!("activate failed: {e}"))?;
    mem.write_slice(&[UNTOUCHED; 18], GuestAddress(status(0)))
        .map_err(|e| format!("cannot preset the status bytes: {e}"))?;

    // 8 writes of 4 KiB, a flush, a discard of the last one, then 8 reads.
    let mut next = 0u16;
    let mut push = |descs: &[(u64, u32, u16)]| {
        let head = next;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let last = i + 1 == descs.len();
            let flags = if last { flags } else { flags | 1 };
            let d = Descriptor::new(addr, len, flags, next + 1);
            vq.desc_table().store(next, RawDescriptor::from(d)).unwrap();
            next += 1;
        }
        let idx = vq.avail().idx().load();
        vq.avail()
            .ring()
            .ref_at(usize::from(idx % 64))
            .unwrap()
            .store(head);
        vq.avail().idx().store(idx + 1);
    };
    let hdr = |n: u64, kind: u32, sector: u64| {
        let at = 0x4000 + 32 * n;
        mem.write_obj(kind, GuestAddress(at)).unwrap();
        mem.write_obj(sector, GuestAddress(at + 8)).unwrap();
        at
    };
    for n in 0..8u64 {
        mem.write_slice(&[n as u8 + 1; 4096], GuestAddress(0x1_0000 + 0x1000 * n))
            .unwrap();
        let h = hdr(n, 1, 8 * n);
        push(&[
            (h, 16, 0),
            (0x1_0000 + 0x1000 * n, 4096, 0),
            (status(n), 1, 2),
        ]);
    }
    let h = hdr(8, 4, 0);
    push(&[(h, 16, 0), (status(8), 1, 2)]);
    let mut seg = 56u64.to_le_bytes().to_vec();
    seg.extend_from_slice(&8u32.to_le_bytes());
    seg.extend_from_slice(&0u32.to_le_bytes());
    mem.write_slice(&seg, GuestAddress(0x5000)).unwrap();
    let h = hdr(9, 11, 0);
    push(&[(h, 16, 0), (0x5000, 16, 0), (status(9), 1, 2)]);
    blk.process_queue(0, &mut NoEvents)
        .map_err(|e| format!("processing the writes failed: {e}"))?;
    for n in 0..8u64 {
        let h = hdr(10 + n, 0, 8 * n);
        push(&[
            (h, 16, 0),
            (0x8_0000 + 0x1000 * n, 4096, 2),
            (status(10 + n), 1, 2),
        ]);
    }
    blk.process_queue(0, &mut NoEvents)
        .map_err(|e| format!("processing the reads failed: {e}"))?;

    for n in 0..18u64 {
        let st: u8 = mem.read_obj(GuestAddress(status(n))).unwrap();
        match st {
            0 => {}
            UNTOUCHED => return Err(format!("request {n} was never completed")),
            st => return Err(format!("request {n} completed with status {st}")),
        }
    }
    for n in 0..8u64 {
        let mut got = vec![0u8; 4096];
        mem.read_slice(&mut got, GuestAddress(0x8_0000 + 0x1000 * n))
            .unwrap();
        let want = if n == 7 { 0 } else { n as u8 + 1 };
        if got.iter().any(|&b| b != want) {
            return Err(format!("read {n} returned the wrong bytes"));
        }
    }
    Ok(())
}

fn main() {
    let mut args = Arguments::from_args();
    // The trial forks: it must run on the main thread, with no other thread alive.
    args.test_threads = Some(1);
    let trial = Trial::ignorable_test("io_uring_under_rlimit_nproc_0", || {
        // SAFETY: geteuid reads the caller's credentials only.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(Completion::ignored_with(
                "needs root to switch to an unprivileged uid",
            ));
        }
        if let Err(e) = io_uring::IoUring::new(2) {
            return Ok(Completion::ignored_with(format!(
                "this kernel gives out no io_uring instance: {e}"
            )));
        }
        run_child()
            .map(|()| Completion::Completed)
            .map_err(Into::into)
    });
    libtest_mimic::run(&args, vec![trial]).exit();
}

/// Forks, runs [`child`] there on a fresh image, and reports how the child ended.
fn run_child() -> Result<(), String> {
    let path = std::env::temp_dir().join(format!("svmm-uring-nproc-{}.img", std::process::id()));
    let file = std::fs::File::create(&path).map_err(|e| format!("cannot create the image: {e}"))?;
    file.write_all_at(&vec![0xEE; 1 << 20], 0)
        .map_err(|e| format!("cannot fill the image: {e}"))?;
    drop(file);

    // SAFETY: the trial runs on the main thread of a binary without the libtest harness and
    // with one test thread, so this process has a single thread and the child may run
    // arbitrary code after fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let _ = std::fs::remove_file(&path);
        return Err(format!("fork failed: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        let code = match child(&path) {
            Ok(()) => 0,
            Err(msg) => {
                eprintln!("uring_nproc: {msg}");
                1
            }
        };
        // SAFETY: ends the child without running the parent's atexit handlers twice.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked; `status` is a valid out-pointer.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    let _ = std::fs::remove_file(&path);
    if waited != pid {
        return Err(format!(
            "waitpid failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else {
        Err(format!(
            "the child failed (wait status {status:#x}; its reason is above)"
        ))
    }
}
