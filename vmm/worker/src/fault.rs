//! Deliberately misbehaving workers, for the sandbox tests only (cargo feature `test-faults`).
//!
//! `--device KIND,fault=MODE` (a hidden option, accepted only in builds with the feature and only
//! for sandboxed devices) passes `--fault=MODE` to `svmm __worker KIND`, which wraps its backend
//! in [`Faulty`]. At the first queue notification after an activation — that is, once the guest
//! really uses the device, after every sandbox layer is in place — the worker:
//!
//! | mode      | does                                                                    |
//! |-----------|-------------------------------------------------------------------------|
//! | `syscall` | calls `openat`, which no device profile allows (dies of `SIGSYS`)        |
//! | `garbage` | sends bytes on the control socket that decode as no message, then serves nothing more |
//! | `silent`  | stops answering: blocks forever, never reads the control socket again   |
//! | `flood`   | sends valid but unsolicited messages on the control socket, without end |
//! | `exit`    | exits with status 3                                                     |
//! | `escape`  | (with `--seccomp=log`, which lets the calls reach the other layers) opens `/`, makes `/x` and opens `/etc/passwd`, printing each `errno`: Landlock and the empty read-only root must refuse them; then serves on |
//! | `impostor`| its `Ready` announces another device (virtio-blk, ID 2) with a feature no kind offers (bit 50), from the start |
//! | `unready` | never sends its `Ready`: parks for good once confined (svmm's set-up must fail at the worker's deadline) |
//! | `stderr`  | writes terminal escape sequences, a forged `svmm: error:` line, bidirectional overrides and a flood of lines on its stderr, then serves on (svmm must show none of it raw) |
//! | `fds`     | sends a valid message with fds attached (its control socket and the stop eventfd), which svmm receives without room for fds, then serves nothing more |
//! | `host`    | the kind's own probe against its host resources, run by the device itself (`devices::kind::Kind::arm_host_probe`; blk: tries to grow the image and allocate host disk through its ring and its system calls, then dies of `SIGSYS`); a kind without one refuses to start |
//!
//! The VMM must survive each of them: report it in one line, kill the worker, and keep the VM
//! and every other device running (restarting the device's worker, or marking the device
//! broken, as `--on-worker-exit` says).
//!
//! A worker that sent svmm something it must act on (`garbage`, `fds`, `flood`) serves no
//! request after it: it waits, reading and dropping whatever comes, until svmm hangs up its
//! control socket, and then ends as any worker whose VMM went away. What the guest sees of the
//! device from then on is svmm's reaction alone. One that served on would race svmm's monitor
//! thread, which on a loaded host may read the message only after the guest got every answer it
//! wanted from the device: the guest's test then passes, and the device breaks later, at some
//! other request (sandbox `malicious_worker_garbage` flaked that way; under a parallel build
//! the guest got up to 27 of its 32 rng answers from a worker that had already sent garbage).
//!
//! With `fault-after=N` as well (`--fault-after=N` for the worker) the fault comes in the middle
//! of the device's work instead, and once: when the device raises its N-th used-buffer
//! interrupt of an activation that started from fresh rings — while other requests may be in
//! flight. A worker whose queues were resumed past their start (one restarted after its
//! predecessor died) never commits it, so a restarted worker serves on.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use devices::{
    DeviceError, EventRegistry, EventSet, GuestMemoryMmap, Interrupt, Queue, VirtioBackend,
};
use ipc::WorkerToVmm;
use virtio_queue::QueueT;

/// The worker argument that selects a fault: `--fault=MODE`.
pub const ARG_PREFIX: &str = "--fault=";
/// The worker argument that delays it to the N-th used-buffer interrupt: `--fault-after=N`.
pub const AFTER_ARG_PREFIX: &str = "--fault-after=";

/// What `fault=impostor` announces: virtio-blk.
const IMPOSTOR_DEVICE_TYPE: u32 = 2;

/// The exit status of `fault=exit`.
pub const EXIT_STATUS: i32 = 3;

/// One way to misbehave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// A system call the seccomp profile forbids (`openat`).
    Syscall,
    /// Undecodable bytes on the control socket.
    Garbage,
    /// Never answer again.
    Silent,
    /// Unsolicited messages without end.
    Flood,
    /// Exit with [`EXIT_STATUS`].
    Exit,
    /// A valid message with fds attached.
    Fds,
    /// A `Ready` for another device than its kind.
    Impostor,
    /// No `Ready` at all.
    Unready,
    /// Escape sequences, a forged svmm line and a flood on its stderr.
    Stderr,
    /// File system accesses the seccomp filter would trap (run with `--seccomp=log`) and
    /// Landlock and the read-only root must refuse.
    Escape,
    /// The kind's own probe against its host resources (`Kind::arm_host_probe`), run by the
    /// device itself; the wrapper does nothing.
    Host,
}

impl Fault {
    /// Every mode's name, in the order of the table above.
    pub const NAMES: &'static [&'static str] = &[
        "syscall", "garbage", "silent", "flood", "exit", "fds", "escape", "impostor", "unready",
        "stderr", "host",
    ];

    /// The mode called `name`.
    pub fn from_name(name: &str) -> Option<Fault> {
        match name {
            "syscall" => Some(Fault::Syscall),
            "garbage" => Some(Fault::Garbage),
            "silent" => Some(Fault::Silent),
            "flood" => Some(Fault::Flood),
            "exit" => Some(Fault::Exit),
            "fds" => Some(Fault::Fds),
            "impostor" => Some(Fault::Impostor),
            "unready" => Some(Fault::Unready),
            "stderr" => Some(Fault::Stderr),
            "escape" => Some(Fault::Escape),
            "host" => Some(Fault::Host),
            _ => None,
        }
    }

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Syscall => "syscall",
            Fault::Garbage => "garbage",
            Fault::Silent => "silent",
            Fault::Flood => "flood",
            Fault::Exit => "exit",
            Fault::Fds => "fds",
            Fault::Impostor => "impostor",
            Fault::Unready => "unready",
            Fault::Stderr => "stderr",
            Fault::Escape => "escape",
            Fault::Host => "host",
        }
    }
}

/// A backend that behaves like `inner` until its first queue notification after an activation
/// (or, with [`Faulty::after`], its N-th used-buffer interrupt), then commits `fault`.
pub struct Faulty {
    inner: Box<dyn VirtioBackend>,
    fault: Fault,
    /// The worker's control socket (misbehaviour is sent on it directly, bypassing the codec).
    control: RawFd,
    /// Commit at this used-buffer interrupt of a fresh activation instead of at the first
    /// notification.
    after: Option<u32>,
    /// Commit at the next notification (active, and no `after`).
    armed: bool,
}

impl Faulty {
    /// Wraps `inner`; `control` is the worker's control socket fd.
    pub fn new(inner: Box<dyn VirtioBackend>, fault: Fault, control: RawFd) -> Self {
        Faulty {
            inner,
            fault,
            control,
            after: None,
            armed: false,
        }
    }

    /// Commits the fault at the `n`-th used-buffer interrupt of an activation from fresh rings
    /// instead (see the module docs); `None` keeps the first notification.
    pub fn after(mut self, n: Option<u32>) -> Self {
        self.after = n;
        self
    }
}

/// Commits `fault` on the worker whose control socket is `control`. Returns (unless the fault
/// ends the worker or parks it) whether the worker may serve on: `syscall` in `--seccomp=log`
/// mode, `escape` and `stderr` may; after `garbage`, `fds` or a `flood` the VMM has hung up.
fn misbehave(fault: Fault, control: RawFd) -> bool {
    crate::report::say(&format!("test fault '{}' now", fault.name()));
    match fault {
        Fault::Syscall => {
            // SAFETY: openat with a NUL-terminated literal path; the fd, if the filter lets
            // the call through (log mode), is closed right away.
            let fd = unsafe { libc::openat(libc::AT_FDCWD, c"/".as_ptr(), libc::O_RDONLY) };
            if fd >= 0 {
                // SAFETY: `fd` was just opened above and is owned by nothing else.
                unsafe { libc::close(fd) };
            }
            true
        }
        Fault::Garbage => {
            send_raw(control, &[0xff; 48]);
            wait_for_hang_up(control);
            false
        }
        // Parked for good (a futex wait the filter allows; no timed sleep).
        Fault::Silent => loop {
            std::thread::park();
        },
        Fault::Flood => {
            if let Ok(bytes) = ipc::encode(&WorkerToVmm::ConfigChanged { config: Vec::new() }) {
                while send_raw(control, &bytes) {}
            }
            false
        }
        Fault::Exit => std::process::exit(EXIT_STATUS),
        Fault::Escape => {
            escape();
            true
        }
        // It lied at Ready already, or never sent it; svmm never got this far.
        Fault::Impostor | Fault::Unready => true,
        Fault::Stderr => {
            use std::io::Write;
            let mut err = std::io::stderr();
            let _ = err.write_all(
                b"\x1b[2J\x1b]0;owned\x07svmm: error: forged by the worker\n\
                  \xe2\x80\xaereversed\x1b[0m\r\n",
            );
            for i in 0..200 {
                let _ = writeln!(err, "flood line {i}");
            }
            true
        }
        Fault::Fds => {
            if let Ok(bytes) = ipc::encode(&WorkerToVmm::ConfigChanged { config: Vec::new() }) {
                send_with_fds(control, &bytes, &[control, crate::fd_numbers::STOP]);
            }
            wait_for_hang_up(control);
            false
        }
        Fault::Host => true,
    }
}

/// Blocks until the VMM hangs up `control` (the worker's blocking control socket): reads and
/// drops every packet until end-of-file or an error, with `recvmsg` (the call every device
/// profile allows; libc's `recv` would be `recvfrom`). svmm shuts the socket down when it
/// breaks the device; a test holding the other end drops it.
fn wait_for_hang_up(control: RawFd) {
    let mut buf = [0u8; 256];
    loop {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: `msghdr` is plain data; all-zero means no address and no control buffer (fds
        // sent with a packet are discarded by the kernel).
        let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
        header.msg_iov = &mut iov;
        header.msg_iovlen = 1;
        // SAFETY: `header` points at one iovec over `buf`, live and writable for the call, and
        // `control` is the worker's control socket, open for the worker's whole life.
        let n = unsafe { libc::recvmsg(control, &mut header, 0) };
        match n {
            0 => return,
            n if n > 0 => {}
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            _ => return,
        }
    }
}

/// The interrupt of a [`Faulty`] backend with `after`: counts used-buffer interrupts and commits
/// the fault at the chosen one, once.
struct CountingInterrupt {
    inner: Arc<dyn Interrupt>,
    fault: Fault,
    control: RawFd,
    at: u32,
    seen: AtomicU32,
}

impl Interrupt for CountingInterrupt {
    fn signal_used_queue(&self) {
        self.inner.signal_used_queue();
        if self.seen.fetch_add(1, Ordering::Relaxed).wrapping_add(1) == self.at {
            // Mid-run: the backend's loop goes on either way; after `garbage` it has waited
            // for svmm to hang up first.
            misbehave(self.fault, self.control);
        }
    }

    fn signal_config_change(&self) {
        self.inner.signal_config_change();
    }
}

/// Tries what only Landlock and the empty read-only root stand in the way of once the filter
/// lets it through: prints `svmm worker: escape: WHAT: errno N` per attempt.
fn escape() {
    let errno = |rc: libc::c_int| match rc {
        rc if rc >= 0 => 0,
        _ => std::io::Error::last_os_error().raw_os_error().unwrap_or(-1),
    };
    let attempts: [(&str, &std::ffi::CStr, bool); 3] = [
        ("open / (read-dir)", c"/", false),
        ("mkdir /x", c"/x", true),
        ("open /etc/passwd", c"/etc/passwd", false),
    ];
    for (what, path, mkdir) in attempts {
        let rc = if mkdir {
            // SAFETY: mkdirat with a NUL-terminated literal path reads no other memory.
            unsafe { libc::mkdirat(libc::AT_FDCWD, path.as_ptr(), 0o700) }
        } else {
            // SAFETY: openat with a NUL-terminated literal path; a returned fd is closed below.
            let fd = unsafe {
                libc::openat(
                    libc::AT_FDCWD,
                    path.as_ptr(),
                    libc::O_RDONLY | libc::O_CLOEXEC,
                )
            };
            if fd >= 0 {
                // SAFETY: `fd` was just opened and is owned by nothing else.
                unsafe { libc::close(fd) };
            }
            fd
        };
        crate::report::say(&format!("escape: {what}: errno {}", errno(rc)));
    }
}

/// Sends `bytes` as one packet on `fd` with `fds` attached (`SCM_RIGHTS`); false once the peer
/// is gone.
fn send_with_fds(fd: RawFd, bytes: &[u8], fds: &[RawFd]) -> bool {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr().cast_mut().cast(),
        iov_len: bytes.len(),
    };
    let payload = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(payload as u32) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    // SAFETY: `msghdr` is plain data; all-zero means no address and no control data.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    header.msg_control = control.as_mut_ptr().cast();
    header.msg_controllen = space;
    // SAFETY: the control buffer is CMSG_SPACE(payload) bytes, 8-byte aligned, so the first
    // header and its data fit; CMSG_FIRSTHDR and CMSG_DATA point into it.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&header);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(payload as u32) as usize;
        std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg).cast(), fds.len());
    }
    // SAFETY: `header` points at one iovec over `bytes` and the control buffer above, both
    // alive for the call; sendmsg only reads them.
    let sent = unsafe { libc::sendmsg(fd, &header, libc::MSG_NOSIGNAL) };
    sent >= 0
}

/// Sends `bytes` as one packet on `fd` (blocking, no SIGPIPE); false once the peer is gone.
fn send_raw(fd: RawFd, bytes: &[u8]) -> bool {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr().cast_mut().cast(),
        iov_len: bytes.len(),
    };
    // SAFETY: `msghdr` is plain data; all-zero means no address and no control data.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    // SAFETY: `header` points at one iovec describing `bytes`, which sendmsg only reads, and
    // `fd` is the worker's control socket, open for the worker's whole life.
    let sent = unsafe { libc::sendmsg(fd, &header, libc::MSG_NOSIGNAL) };
    sent >= 0
}

impl VirtioBackend for Faulty {
    fn device_type(&self) -> u32 {
        match self.fault {
            // Announces a block device, whatever it is.
            Fault::Impostor => IMPOSTOR_DEVICE_TYPE,
            _ => self.inner.device_type(),
        }
    }
    fn num_queues(&self) -> u16 {
        self.inner.num_queues()
    }
    fn max_queue_size(&self) -> u16 {
        self.inner.max_queue_size()
    }
    fn features(&self) -> u64 {
        match self.fault {
            Fault::Impostor => self.inner.features() | 1 << 50,
            _ => self.inner.features(),
        }
    }
    fn config(&self) -> Vec<u8> {
        self.inner.config()
    }
    fn write_config(&mut self, offset: u32, data: &[u8]) {
        self.inner.write_config(offset, data)
    }
    fn activate(
        &mut self,
        driver_features: u64,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<dyn Interrupt>,
    ) -> Result<(), DeviceError> {
        // Queues that start past their beginning were resumed: a restarted worker serves on.
        let fresh = queues
            .iter()
            .all(|q| q.next_avail() == 0 && q.next_used() == 0);
        let interrupt: Arc<dyn Interrupt> = match self.after {
            Some(at) if fresh => Arc::new(CountingInterrupt {
                inner: interrupt,
                fault: self.fault,
                control: self.control,
                at,
                seen: AtomicU32::new(0),
            }),
            _ => interrupt,
        };
        self.inner
            .activate(driver_features, mem, queues, interrupt)?;
        self.armed = self.after.is_none();
        Ok(())
    }
    fn register_events(&mut self, events: &mut dyn EventRegistry) -> Result<(), DeviceError> {
        self.inner.register_events(events)
    }
    fn process_queue(
        &mut self,
        index: u16,
        events: &mut dyn EventRegistry,
    ) -> Result<(), DeviceError> {
        if self.armed && !misbehave(self.fault, self.control) {
            return Ok(()); // serves nothing more (see the module docs)
        }
        self.inner.process_queue(index, events)
    }
    fn process_event(
        &mut self,
        token: u32,
        ready: EventSet,
        events: &mut dyn EventRegistry,
    ) -> Result<(), DeviceError> {
        if self.armed && !misbehave(self.fault, self.control) {
            return Ok(());
        }
        self.inner.process_event(token, ready, events)
    }
    fn reset(&mut self) -> Option<Vec<Queue>> {
        self.armed = false;
        self.inner.reset()
    }
    fn stats(&self) -> ipc::DeviceStats {
        self.inner.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for fault in [
            Fault::Syscall,
            Fault::Garbage,
            Fault::Silent,
            Fault::Flood,
            Fault::Exit,
        ] {
            assert_eq!(Fault::from_name(fault.name()), Some(fault));
            assert!(Fault::NAMES.contains(&fault.name()));
        }
        assert_eq!(Fault::from_name("segfault"), None);
    }
}
