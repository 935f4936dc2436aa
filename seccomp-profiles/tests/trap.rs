//! End to end, with real filters: a forked child installs the SIGSYS reporter on its end of an
//! `ipc::Channel` and an embedded profile, then makes a call; the parent checks what arrives on
//! the channel and how the child ended.
//!
//! `harness = false`: these tests fork, which needs a single-threaded process, and a filter
//! once installed stays for the life of the process.

use std::collections::HashMap;
use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Instant;

use ipc::{Channel, ChannelError, VmmToWorker, WorkerToVmm};
use seccomp_profiles::sigsys::{self, AUDIT_ARCH_X86_64};
use seccomp_profiles::{install, install_all_threads, program, syscall_name, Mode};

/// Child exit code when it survived a call that should have killed it.
const SURVIVED: i32 = 1;
/// Child exit code when its own setup failed (or panicked).
const SETUP_FAILED: i32 = 2;

fn main() {
    let tests: [(&str, fn()); 5] = [
        (
            "forbidden_openat_is_reported_then_sigsys",
            forbidden_openat_is_reported,
        ),
        (
            "argument_filter_denial_is_reported",
            exec_mapping_is_reported,
        ),
        (
            "vmm_profile_traps_execve_on_all_threads",
            vmm_profile_traps_execve,
        ),
        (
            "base_allows_an_event_loop_round_trip",
            base_allows_a_worker_round_trip,
        ),
        (
            "log_mode_lets_the_call_through",
            log_mode_lets_the_call_through,
        ),
    ];
    for (name, test) in tests {
        print!("test {name} ... ");
        std::io::stdout().flush().unwrap();
        test();
        println!("ok");
    }
    println!("\ntest result: ok. {} passed", tests.len());
}

#[derive(Debug, PartialEq, Eq)]
enum Ended {
    Exited(i32),
    Killed(i32),
}

/// Forks a child that runs `child` on its end of a fresh channel pair and `_exit`s with the
/// code it returns. Returns the parent's end and the child's pid.
fn spawn(child: impl FnOnce(&Channel) -> i32) -> (Channel, libc::pid_t) {
    let (parent, worker) = Channel::pair().unwrap();
    // SAFETY: this test binary has one thread (harness = false), so the child gets a
    // consistent copy of the process and may go on running Rust code.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        drop(parent);
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| child(&worker)))
            .unwrap_or(SETUP_FAILED);
        // SAFETY: ends the child without running the parent's remaining test code.
        unsafe { libc::_exit(code) };
    }
    drop(worker);
    (parent, pid)
}

fn wait(pid: libc::pid_t) -> Ended {
    let mut status = 0;
    // SAFETY: `pid` is our child and `status` a valid out-parameter.
    let reaped = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(reaped, pid, "waitpid: {}", std::io::Error::last_os_error());
    if libc::WIFSIGNALED(status) {
        Ended::Killed(libc::WTERMSIG(status))
    } else {
        Ended::Exited(libc::WEXITSTATUS(status))
    }
}

/// What a worker does before its filter: no core files (the default action of SIGSYS dumps
/// core), and the reporter on its control socket.
fn prepare_child(channel: &Channel) {
    let none = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `none` is a valid rlimit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_CORE, &none) }, 0);
    sigsys::install_reporter(channel.as_raw_fd()).unwrap();
}

/// Expects exactly one report, for `syscall`, then the child's death by SIGSYS.
fn expect_violation(parent: &Channel, pid: libc::pid_t, syscall: i64) {
    let (message, fds) = parent.recv::<WorkerToVmm>().unwrap();
    assert!(fds.is_empty());
    assert_eq!(
        message,
        WorkerToVmm::SeccompViolation {
            syscall,
            arch: AUDIT_ARCH_X86_64
        }
    );
    assert!(matches!(
        parent.recv::<WorkerToVmm>(),
        Err(ChannelError::PeerGone)
    ));
    assert_eq!(wait(pid), Ended::Killed(libc::SIGSYS));
}

fn forbidden_openat_is_reported() {
    let (parent, pid) = spawn(|channel| {
        let path = CString::new("/dev/null").unwrap();
        let filter = program("rng", Mode::Trap).unwrap();
        prepare_child(channel);
        install(&filter).unwrap();
        // SAFETY: `path` is a valid C string; the filter denies the call anyway.
        unsafe { libc::openat(libc::AT_FDCWD, path.as_ptr(), libc::O_RDONLY) };
        SURVIVED
    });
    expect_violation(&parent, pid, libc::SYS_openat);
    assert_eq!(syscall_name(libc::SYS_openat), Some("openat"));
}

/// mmap is allowed, mmap with PROT_EXEC is not. The handler must repeat the denied call with
/// its own arguments to die of SIGSYS: with any others, this mmap would be allowed.
fn exec_mapping_is_reported() {
    let (parent, pid) = spawn(|channel| {
        let filter = program("rng", Mode::Trap).unwrap();
        prepare_child(channel);
        install(&filter).unwrap();
        // SAFETY: an anonymous private mapping touches no existing memory.
        unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        SURVIVED
    });
    expect_violation(&parent, pid, libc::SYS_mmap);
}

fn vmm_profile_traps_execve() {
    let (parent, pid) = spawn(|channel| {
        let path = CString::new("/bin/true").unwrap();
        let argv = [path.as_ptr(), std::ptr::null()];
        let envp = [std::ptr::null()];
        let filter = program("vmm", Mode::Trap).unwrap();
        prepare_child(channel);
        install_all_threads(&filter).unwrap();
        // SAFETY: argv and envp are NULL-terminated arrays of valid C strings.
        unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        SURVIVED
    });
    expect_violation(&parent, pid, libc::SYS_execve);
}

/// A worker's ordinary work — allocating, timing, hashing, eventfd I/O, messages both ways —
/// passes the rng profile (base + nothing).
fn base_allows_a_worker_round_trip() {
    let (parent, pid) = spawn(|channel| {
        // SAFETY: plain eventfd creation; the new fd is owned right away.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if raw < 0 {
            return SETUP_FAILED;
        }
        // SAFETY: `raw` is a fresh fd nobody else owns.
        let eventfd = unsafe { OwnedFd::from_raw_fd(raw) };
        let filter = program("rng", Mode::Trap).unwrap();
        prepare_child(channel);
        install(&filter).unwrap();

        let start = Instant::now();
        let mut big = vec![1u8; 4 << 20];
        big.resize(16 << 20, 2);
        let mut map = HashMap::new();
        map.insert("bytes", big.iter().map(|&b| u64::from(b)).sum::<u64>());
        drop(big);
        let one = 1u64.to_ne_bytes();
        let mut got = [0u8; 8];
        // SAFETY: `one` and `got` are valid 8-byte buffers for eventfd I/O.
        let io_ok = unsafe {
            libc::write(eventfd.as_raw_fd(), one.as_ptr().cast(), 8) == 8
                && libc::read(eventfd.as_raw_fd(), got.as_mut_ptr().cast(), 8) == 8
        };
        if !io_ok || got != one || map["bytes"] != (4 << 20) + 2 * (12 << 20) {
            return SURVIVED;
        }
        channel.send(&WorkerToVmm::Activated, &[]).unwrap();
        let (request, _) = channel.recv::<VmmToWorker>().unwrap();
        assert!(start.elapsed().as_secs() < 60);
        drop(eventfd);
        if request == VmmToWorker::Shutdown {
            0
        } else {
            SURVIVED
        }
    });
    let (message, _) = parent.recv::<WorkerToVmm>().unwrap();
    assert_eq!(message, WorkerToVmm::Activated, "the child was trapped");
    parent.send(&VmmToWorker::Shutdown, &[]).unwrap();
    // A report here names the syscall the profile lacks.
    let after = parent.recv::<WorkerToVmm>().map(|(m, _)| m);
    assert!(matches!(after, Err(ChannelError::PeerGone)), "{after:?}");
    assert_eq!(wait(pid), Ended::Exited(0));
}

fn log_mode_lets_the_call_through() {
    let (parent, pid) = spawn(|channel| {
        let path = CString::new("/dev/null").unwrap();
        let filter = program("rng", Mode::Log).unwrap();
        prepare_child(channel);
        install(&filter).unwrap();
        // SAFETY: `path` is a valid C string.
        let fd = unsafe { libc::openat(libc::AT_FDCWD, path.as_ptr(), libc::O_RDONLY) };
        if fd < 0 {
            return SURVIVED;
        }
        // SAFETY: `fd` was just opened here.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
        0
    });
    // No report: the channel just closes when the child exits.
    assert!(matches!(
        parent.recv::<WorkerToVmm>(),
        Err(ChannelError::PeerGone)
    ));
    assert_eq!(wait(pid), Ended::Exited(0));
}
