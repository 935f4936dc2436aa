//! svmm confines itself: which of its own threads runs under which seccomp profile, from when.
//!
//! DESIGN.md's threat model: the VMM's vCPU and event-loop threads run under the `vmm` profile
//! (`seccomp-profiles/profiles/vmm.json`) from before the first `KVM_RUN`. What spawns workers
//! is not a thread of svmm but the broker, a single-threaded process forked before svmm has
//! any other thread, under its own `broker` profile (`crate::sandboxed`). Seccomp filters
//! belong to threads and are inherited by the threads they create, so each thread installs its
//! own, once its set-up is done ([`enter`]):
//!
//! | thread | filter | installed |
//! |---|---|---|
//! | main | none while it builds the VM, then `vmm` | by itself, right after the vCPU threads started and before any of them runs the guest (`vm::run`) |
//! | `vcpuN` | `vmm` | by itself at thread start; its first `KVM_RUN` waits until the main thread is confined too |
//! | `console-in` | `vmm` | by itself at thread start |
//! | `mon-DEV` | `vmm` | by itself at thread start ([`ThreadRole::Monitor`]) |
//! | `svc-DEV` (devices with host services) | `vmm_service` | by itself at thread start ([`ThreadRole::Service`]) |
//! | `dev-DEV` (`sandbox=off`) | the device's worker profile (`rng`: base + rng) | by itself once set up, before it serves a request |
//!
//! - **vCPU threads**: every set-up ioctl (`KVM_CREATE_VCPU`, `KVM_SET_CPUID2`, `KVM_SET_SREGS`,
//!   `KVM_SET_REGS`, `KVM_SET_FPU`, `KVM_SET_MSRS`, `KVM_SET_LAPIC`) and every VM-wide one
//!   (`KVM_IRQFD`, `KVM_IOEVENTFD`, memory slots, irqchip) is made by the main thread before
//!   the vCPU thread exists. At run time a vCPU makes `KVM_RUN`, `KVM_GET_REGS` (crash
//!   reports), and whatever its exits cost: serial output on stdout, irqfd writes, the
//!   request/reply with a device worker on its control socket (with a deadline), the channel to
//!   the main thread. The profile allows exactly that.
//! - **Not TSYNC** (`install_all_threads`): each thread's filter is installed where its set-up
//!   ends, and a thread started before the main thread's filter must not get it at a random
//!   point of its own set-up.
//! - **The main thread** keeps everything while it builds the VM (it opens the kernel, creates
//!   the KVM objects, opens host resources, forks the broker and starts every thread; as root
//!   it drops to its own unprivileged uid before it starts any thread), then confines itself
//!   before any vCPU runs guest code (the vCPUs wait at a gate, already confined). Confined,
//!   while the guest boots, it has the broker start the sandboxed workers and takes every
//!   worker's `Ready` (untrusted input, read under the filter), then waits for the VM to end. At the end it only reports statistics
//!   (control sockets), restores the terminal (`TCSETS`) and exits.
//! - **In-process device threads** (`sandbox=off`) run device code, not VMM code: they install
//!   their device's worker profile (base + device), the very filter a sandboxed worker gets, so
//!   the `vmm` profile never has to grow by what devices need, and an in-process run exercises
//!   the worker profile too. (It is no boundary there: the thread shares svmm's memory.)
//! - **Violations**: with `--seccomp=trap` the kernel raises `SIGSYS` in the offending thread;
//!   the handler [`init`] installs prints one line naming the thread and the system call,
//!   restores the terminal and ends svmm with status 70 (internal error). With `--seccomp=log`
//!   the call goes through and the kernel logs it (`dmesg`, audit type 1326).
//!
//! Before [`init`], [`enter`] does nothing: unit tests run VMM code on threads unfiltered.

use std::cell::Cell;
use std::ffi::{c_int, c_void};
use std::io;
use std::sync::OnceLock;

use seccomp_profiles::sigsys::{SigsysInfo, SYS_SECCOMP};
use seccomp_profiles::Mode;

use crate::config::SeccompMode;
use crate::exit_code::ExitCode;

/// The profile of svmm's own threads.
pub const VMM_PROFILE: &str = "vmm";
/// The profile of the threads that perform devices' host services (`crate::services`).
pub const SERVICE_PROFILE: &str = "vmm_service";

/// What a thread of svmm is, for choosing its filter and naming it in a violation report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadRole {
    /// The main thread, once the VM is built.
    Main,
    /// The thread running vCPU `n`.
    Vcpu(u8),
    /// The thread forwarding stdin to the serial port.
    ConsoleInput,
    /// A device's monitor thread (worker messages, worker death), started by `supervisor`.
    Monitor,
    /// A device's host-services thread (`crate::services`): connections, shared memory.
    Service,
    /// An in-process device's thread, with the device's seccomp profile.
    Device(&'static str),
}

impl ThreadRole {
    /// The seccomp profile the thread runs under.
    pub fn profile(self) -> &'static str {
        match self {
            ThreadRole::Device(profile) => profile,
            ThreadRole::Main | ThreadRole::Vcpu(_) | ThreadRole::ConsoleInput => VMM_PROFILE,
            ThreadRole::Monitor => VMM_PROFILE,
            ThreadRole::Service => SERVICE_PROFILE,
        }
    }

    /// `vcpu0`, `main`, ...: the start of the thread's name.
    fn label(self) -> &'static str {
        match self {
            ThreadRole::Main => "main",
            ThreadRole::Vcpu(_) => "vcpu",
            ThreadRole::ConsoleInput => "console-in",
            ThreadRole::Monitor => "device monitor",
            ThreadRole::Service => "device host services",
            ThreadRole::Device(_) => "in-process device",
        }
    }
}

/// One row of the thread policy, as `--print-sandbox` shows it.
#[derive(Debug, Clone, Copy)]
pub struct ThreadPolicy {
    /// The thread (its name, or a pattern of names).
    pub thread: &'static str,
    /// Its filter.
    pub filter: &'static str,
    /// When it is installed, and why this way.
    pub when: &'static str,
}

/// The table of the module docs.
pub const THREAD_POLICY: &[ThreadPolicy] = &[
    ThreadPolicy {
        thread: "main",
        filter: "none while it builds the VM, then the vmm profile",
        when: "by itself right after the vCPU threads started, before any of them runs the \
               guest; until then it opens the kernel, creates the KVM objects, forks the broker \
               and starts every thread; under it, it has the broker start the workers and takes \
               their Ready",
    },
    ThreadPolicy {
        thread: "vcpuN",
        filter: "the vmm profile",
        when: "by itself at thread start; its first KVM_RUN waits until the main thread is \
               confined too (the main thread made every set-up ioctl before)",
    },
    ThreadPolicy {
        thread: "console-in",
        filter: "the vmm profile",
        when: "by itself at thread start",
    },
    ThreadPolicy {
        thread: "mon-DEVICE",
        filter: "the vmm profile",
        when: "by itself at thread start",
    },
    ThreadPolicy {
        thread: "svc-DEVICE (devices with host services)",
        filter: "the vmm_service profile",
        when: "by itself at thread start: it connects the device's declared socket, maps \
               memfds into the device's shared-memory region (KVM memory slots) and makes each \
               worker's service channel, nothing else",
    },
    ThreadPolicy {
        thread: "dev-DEVICE (sandbox=off)",
        filter: "the device's worker profile (shown with the device)",
        when: "by itself once its event loop is set up, before it serves the first request",
    },
];

/// Why svmm could not confine itself.
#[derive(Debug, thiserror::Error)]
pub enum SelfConfineError {
    /// The binary lacks a profile it needs (a build bug).
    #[error("no seccomp profile named {0:?} in this build")]
    UnknownProfile(&'static str),
    /// The kernel refused the filter.
    #[error("cannot install the {profile} seccomp profile on the {thread} thread")]
    Install {
        /// The profile.
        profile: &'static str,
        /// The thread's role.
        thread: &'static str,
        /// The cause.
        #[source]
        source: seccomp_profiles::Error,
    },
    /// Installing the SIGSYS handler failed.
    #[error("cannot install the SIGSYS handler")]
    Sigaction(#[source] io::Error),
}

/// The mode chosen on the command line; unset until [`init`].
static MODE: OnceLock<Mode> = OnceLock::new();

thread_local! {
    /// The calling thread's role once it confined itself, for the SIGSYS report.
    static ROLE: Cell<Option<ThreadRole>> = const { Cell::new(None) };
}

/// Turns self-confinement on for this process with `mode`, and installs the SIGSYS handler
/// that reports a violation. Call once, on the main thread, before any thread is started.
pub fn init(mode: SeccompMode) -> Result<(), SelfConfineError> {
    install_sigsys_handler()?;
    let _ = MODE.set(mode.into());
    Ok(())
}

/// The mode [`init`] set, if it was called.
pub fn mode() -> Option<Mode> {
    MODE.get().copied()
}

/// Installs the filter of `role` on the calling thread (see the module docs for when each
/// thread calls this). Does nothing before [`init`].
pub fn enter(role: ThreadRole) -> Result<(), SelfConfineError> {
    enter_with(role, mode())
}

/// [`enter`] with the mode given; `None` = not confining.
fn enter_with(role: ThreadRole, mode: Option<Mode>) -> Result<(), SelfConfineError> {
    let Some(mode) = mode else {
        return Ok(());
    };
    let profile = role.profile();
    let program = seccomp_profiles::program(profile, mode)
        .ok_or(SelfConfineError::UnknownProfile(profile))?;
    ROLE.with(|r| r.set(Some(role)));
    seccomp_profiles::install(&program).map_err(|source| SelfConfineError::Install {
        profile,
        thread: role.label(),
        source,
    })
}

fn install_sigsys_handler() -> Result<(), SelfConfineError> {
    // SAFETY: `sigaction` is plain data; all-zero is valid (no flags, empty mask).
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_sigsys as *const () as usize;
    // SA_ONSTACK: Rust gives every thread an alternate signal stack.
    action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
    // SAFETY: `action.sa_mask` is a valid sigset_t owned by this frame.
    unsafe { libc::sigfillset(&mut action.sa_mask) };
    // SAFETY: `action` is initialised and `on_sigsys` has the SA_SIGINFO signature; it only
    // reads its arguments and a thread-local, writes to its stack, and makes async-signal-safe
    // calls (write, tcsetattr, _exit).
    if unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) } != 0 {
        return Err(SelfConfineError::Sigaction(io::Error::last_os_error()));
    }
    Ok(())
}

/// Reports the denied call in one line on stderr, restores the terminal and ends svmm.
extern "C" fn on_sigsys(_signal: c_int, info: *mut libc::siginfo_t, _context: *mut c_void) {
    // SAFETY: with SA_SIGINFO the kernel passes a valid siginfo_t, which is larger than
    // `SigsysInfo` and has the `_sigsys` layout for SIGSYS.
    let info = unsafe { &*info.cast::<SigsysInfo>() };
    let mut line = Line::default();
    line.push(b"svmm: internal error: ");
    if info.code == SYS_SECCOMP {
        // A const-initialised thread-local Cell of a Copy value: a plain TLS read.
        let role = ROLE.with(Cell::get);
        line.push(b"seccomp denied system call ");
        let nr = i64::from(info.syscall);
        match seccomp_profiles::syscall_name(nr) {
            Some(name) => line.push(name.as_bytes()),
            None => line.push(b"?"),
        }
        line.push(b" (");
        line.number(nr.unsigned_abs());
        line.push(b") on the ");
        match role {
            Some(role) => {
                line.push(role.label().as_bytes());
                if let ThreadRole::Vcpu(id) = role {
                    line.number(u64::from(id));
                }
                line.push(b" thread, profile ");
                line.push(role.profile().as_bytes());
            }
            None => line.push(b"unknown thread"),
        }
        line.push(b" (--seccomp=log lists every such call in the kernel log)\n");
    } else {
        line.push(b"SIGSYS\n");
    }
    // SAFETY: write on stderr with a buffer on this stack; async-signal-safe.
    unsafe { libc::write(libc::STDERR_FILENO, line.buf.as_ptr().cast(), line.len) };
    crate::terminal::restore();
    // SAFETY: _exit is async-signal-safe and ends the process without running Rust code.
    unsafe { libc::_exit(i32::from(ExitCode::Internal as u8)) };
}

/// A fixed buffer for the handler's one line (no allocation in a signal handler).
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Default for Line {
    fn default() -> Self {
        Line {
            buf: [0; 256],
            len: 0,
        }
    }
}

impl Line {
    /// Appends what fits.
    fn push(&mut self, bytes: &[u8]) {
        let room = self.buf.len() - self.len;
        let n = bytes.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    /// Appends `n` in decimal.
    fn number(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            // Cannot truncate: a decimal digit.
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[at..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_line_formats_numbers_and_truncates() {
        let mut line = Line::default();
        line.push(b"nr ");
        line.number(0);
        line.push(b" ");
        line.number(18_446_744_073_709_551_615);
        assert_eq!(&line.buf[..line.len], b"nr 0 18446744073709551615");
        line.push(&[b'x'; 300]);
        assert_eq!(line.len, 256);
    }

    #[test]
    fn every_role_has_a_compiled_profile() {
        let devices = crate::kinds::KINDS
            .iter()
            .map(|kind| ThreadRole::Device(kind.seccomp_profile()));
        let vmm = [
            ThreadRole::Main,
            ThreadRole::Vcpu(3),
            ThreadRole::ConsoleInput,
            ThreadRole::Monitor,
        ];
        for role in vmm.into_iter().chain(devices) {
            assert!(
                seccomp_profiles::program(role.profile(), Mode::Trap).is_some(),
                "{role:?}"
            );
        }
    }

    /// A child process (fork: the test process must stay unfiltered) with the handler and the
    /// trap-mode `vmm` filter makes a call the profile lacks (`getppid`): it ends with status 70
    /// and one line naming the call, its number and the thread.
    #[test]
    fn a_denied_call_is_named_and_ends_svmm_with_status_70() {
        let program = seccomp_profiles::program(VMM_PROFILE, Mode::Trap).unwrap();
        let mut pipe = [0; 2];
        // SAFETY: `pipe` has room for the two fds pipe() writes.
        assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
        ROLE.with(|r| r.set(Some(ThreadRole::Vcpu(7))));
        // SAFETY: the child only makes raw system calls (dup2, sigaction, prctl, seccomp,
        // getppid, write, _exit) and touches memory prepared before the fork: nothing that
        // another thread of the test process could have left locked.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: see above; each call gets valid arguments, and _exit never returns.
            unsafe {
                libc::dup2(pipe[1], libc::STDERR_FILENO);
                if install_sigsys_handler().is_err() {
                    libc::_exit(1);
                }
                if seccomp_profiles::install(&program).is_err() {
                    libc::_exit(2);
                }
                libc::syscall(libc::SYS_getppid);
                libc::_exit(3);
            }
        }
        ROLE.with(|r| r.set(None));
        // SAFETY: the parent closes its copy of the write end, so read() sees EOF at the
        // child's exit.
        unsafe { libc::close(pipe[1]) };
        let mut status = 0;
        // SAFETY: waits for our own child; `status` is a valid place for its status.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        let mut buf = [0u8; 512];
        // SAFETY: reads into `buf`, which is as large as the length passed.
        let n = unsafe { libc::read(pipe[0], buf.as_mut_ptr().cast(), buf.len()) };
        // SAFETY: closes the read end we own.
        unsafe { libc::close(pipe[0]) };
        let text = String::from_utf8_lossy(&buf[..usize::try_from(n).unwrap_or(0)]);
        assert!(libc::WIFEXITED(status), "child status {status:#x}: {text}");
        assert_eq!(libc::WEXITSTATUS(status), 70, "{text}");
        assert_eq!(
            text,
            "svmm: internal error: seccomp denied system call getppid (110) on the vcpu7 \
             thread, profile vmm (--seccomp=log lists every such call in the kernel log)\n"
        );
    }

    /// The signal the main thread kicks vCPUs with passes the trap-mode `vmm` filter, and a
    /// neighbouring one does not: the filter's number is what `vcpu::kick_signal` really sends.
    /// A child (fork) installs the kick handler and the filter and sends the kick to itself
    /// (`pthread_kill`, as `Vcpus::stop` does): it must survive and exit 0; SIGUSR1 must kill it
    /// with SIGSYS (no SIGSYS handler in the child).
    #[test]
    fn the_kick_signal_passes_the_vmm_filter() {
        let program = seccomp_profiles::program(VMM_PROFILE, Mode::Trap).unwrap();
        let kick = crate::vcpu::kick_signal();
        for (signal, survives) in [(kick, true), (libc::SIGUSR1, false)] {
            // SAFETY: the child only makes raw system calls (sigaction via the kick handler's
            // registration, prctl, seccomp, pthread_kill's getpid/gettid/tgkill, _exit) on
            // memory prepared before the fork.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0);
            if pid == 0 {
                // SAFETY: see above; _exit never returns.
                unsafe {
                    // SIGUSR1 must not end the child by its default action.
                    libc::signal(libc::SIGUSR1, libc::SIG_IGN);
                    if crate::vcpu::install_kick_handler().is_err() {
                        libc::_exit(1);
                    }
                    if seccomp_profiles::install(&program).is_err() {
                        libc::_exit(2);
                    }
                    libc::pthread_kill(libc::pthread_self(), signal);
                    libc::_exit(0);
                }
            }
            let mut status = 0;
            // SAFETY: waits for our own child into a valid int.
            assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
            if survives {
                assert!(
                    libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                    "kick signal {signal}: child status {status:#x}"
                );
            } else {
                assert!(
                    libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
                    "signal {signal}: child status {status:#x}"
                );
            }
        }
        assert_eq!(kick, 34, "glibc's SIGRTMIN, the number vmm.json allows");
    }

    /// Without `init` (as in every unit test), `enter` leaves the thread unfiltered.
    #[test]
    fn enter_before_init_does_nothing() {
        std::thread::spawn(|| {
            enter_with(ThreadRole::Vcpu(0), None).unwrap();
            let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
            assert!(status.lines().any(|l| l == "Seccomp:\t0"), "{status}");
        })
        .join()
        .unwrap();
    }

    /// With a mode, `enter` filters the calling thread and no other. Log mode, so that the
    /// `openat` below (not in the vmm profile) is only logged.
    #[test]
    fn enter_installs_the_filter_on_the_calling_thread_only() {
        std::thread::spawn(|| {
            enter_with(ThreadRole::Vcpu(0), Some(Mode::Log)).unwrap();
            assert_eq!(ROLE.with(Cell::get), Some(ThreadRole::Vcpu(0)));
            let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
            assert!(status.lines().any(|l| l == "Seccomp:\t2"), "{status}");
            assert!(status.lines().any(|l| l == "NoNewPrivs:\t1"), "{status}");
        })
        .join()
        .unwrap();
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        assert!(status.lines().any(|l| l == "Seccomp:\t0"), "{status}");
    }
}
