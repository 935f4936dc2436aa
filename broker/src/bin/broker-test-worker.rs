//! Test-only worker for `tests/spawn.rs`: the exec'd image a spawn test starts in place of
//! svmm's worker mode. It calls `broker::confine` first thing, exactly as a real worker, and
//! then reports over fd 3 (a socket to the test) what it can observe from inside.
//!
//! Usage: `broker-test-worker MODE --sandbox-...` with MODE one of
//! - `report`: confine, write `key=value` lines and `end` to fd 3, wait for a byte (or EOF) on
//!   fd 3, exit 0;
//! - `hold`: confine, write `confined` to fd 3, then sleep until killed;
//! - `beneath`: confine (with a Landlock rule on the directory at fd 4), try to create, read,
//!   make special files in, execute from and leave that directory, write `op=errno` lines and
//!   `end` to fd 3, exit 0;
//! - `violate`: confine, write `confined`, then make the syscall the test filter forbids
//!   (`acct`), which must kill the process with SIGSYS.
//!
//! A failed confine step exits with status 100 + its step number (message on stderr).
//! The seccomp filter is a test one: allow everything except `acct` (kill process).

use broker::{confine, ConfineConfig};
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;

fn main() {
    let args: Vec<_> = std::env::args_os().collect();
    let (cfg, rest) = match ConfineConfig::from_args(args.iter().skip(1), test_filter()) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("broker-test-worker: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = confine(&cfg) {
        eprintln!("broker-test-worker: {e}");
        std::process::exit(100 + e.step() as i32);
    }
    // SAFETY: fd 3 is the socket the test passed as the first listed fd; confine checked that
    // it is open, and nothing else in this process owns it.
    let mut control = unsafe { UnixStream::from_raw_fd(3) };
    let mode = rest.first().and_then(|m| m.to_str()).unwrap_or("");
    match mode {
        "report" => {
            let _ = control.write_all(observe().as_bytes());
            let mut byte = [0u8; 1];
            let _ = control.read(&mut byte);
        }
        "hold" => {
            let _ = control.write_all(b"confined\n");
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        "beneath" => {
            let _ = control.write_all(beneath().as_bytes());
        }
        "violate" => {
            let _ = control.write_all(b"confined\n");
            // SAFETY: acct(NULL) would only switch accounting off; the filter kills us first.
            unsafe { libc::syscall(libc::SYS_acct, std::ptr::null::<libc::c_char>()) };
            std::process::exit(3); // Not reached when the filter works.
        }
        _ => std::process::exit(2),
    }
}

/// Allow everything but `acct`, which kills the process.
fn test_filter() -> BpfProgram {
    let rules = BTreeMap::from([(libc::SYS_acct, Vec::new())]);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::KillProcess,
        TargetArch::x86_64,
    )
    .expect("static test filter is valid");
    filter.try_into().expect("static test filter compiles")
}

/// `errno` of the last failed call, or 0 when `rc` is not -1.
fn errno_of(rc: libc::c_long) -> i32 {
    if rc == -1 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    } else {
        0
    }
}

/// What the worker may do beneath the directory at fd 4 (`op=errno`, 0 for success), then `end`.
fn beneath() -> String {
    let mut out = String::new();
    let mut put = |k: &str, rc: libc::c_long| {
        let _ = writeln!(out, "{k}={}", errno_of(rc));
    };
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
    let (existing, created, dir, link, fifo, sock, prog, up) = (
        c("existing"),
        c("created"),
        c("dir"),
        c("link"),
        c("fifo"),
        c("sock"),
        c("prog"),
        c("../outside"),
    );
    // SAFETY: plain system calls on fd 4 (an inherited directory fd) with valid C strings; the
    // fds they return are closed right away; execveat either fails or replaces the process
    // (which the test then sees as a report ending early).
    unsafe {
        let fd = libc::openat(4, existing.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        put("read", i64::from(fd.min(0)));
        libc::close(fd);
        let fd = libc::openat(
            4,
            created.as_ptr(),
            libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
            0o600,
        );
        put("create", i64::from(fd.min(0)));
        libc::close(fd);
        put("mkdir", i64::from(libc::mkdirat(4, dir.as_ptr(), 0o700)));
        put(
            "symlink",
            i64::from(libc::symlinkat(existing.as_ptr(), 4, link.as_ptr())),
        );
        put(
            "mkfifo",
            i64::from(libc::mknodat(4, fifo.as_ptr(), libc::S_IFIFO | 0o600, 0)),
        );
        put(
            "mksock",
            i64::from(libc::mknodat(4, sock.as_ptr(), libc::S_IFSOCK | 0o600, 0)),
        );
        let fd = libc::openat(4, up.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        put("outside", i64::from(fd.min(0)));
        libc::close(fd);
        let argv = [prog.as_ptr(), std::ptr::null()];
        let envp = [std::ptr::null::<libc::c_char>()];
        put(
            "exec",
            libc::syscall(
                libc::SYS_execveat,
                4,
                prog.as_ptr(),
                argv.as_ptr(),
                envp.as_ptr(),
                0,
            ),
        );
    }
    out.push_str("end\n");
    out
}

/// Everything the test checks, as `key=value` lines, then `end`.
fn observe() -> String {
    let mut out = String::new();
    let mut put = |k: &str, v: String| {
        let _ = writeln!(out, "{k}={v}");
    };
    // SAFETY: plain system calls with integer arguments or pointers to live locals; this process
    // is single-threaded and confined, and the forked child only calls _exit.
    unsafe {
        put("pid", libc::getpid().to_string());
        put("ppid", libc::getppid().to_string());
        let (mut r, mut e, mut s) = (0, 0, 0);
        libc::getresuid(&mut r, &mut e, &mut s);
        put("uid", format!("{r},{e},{s}"));
        libc::getresgid(&mut r, &mut e, &mut s);
        put("gid", format!("{r},{e},{s}"));
        put(
            "groups",
            libc::getgroups(0, std::ptr::null_mut()).to_string(),
        );
        let mut header = [0x2008_0522u32, 0];
        let mut data = [0u32; 6];
        libc::syscall(libc::SYS_capget, header.as_mut_ptr(), data.as_mut_ptr());
        put("capget", format!("{data:?}"));
        let bounding = (0..64)
            .filter(|&c| libc::prctl(libc::PR_CAPBSET_READ, c, 0, 0, 0) == 1)
            .count();
        put("bounding", bounding.to_string());
        let ambient = (0..64)
            .filter(|&c| {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_IS_SET as libc::c_ulong,
                    c as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                ) == 1
            })
            .count();
        put("ambient", ambient.to_string());
        put(
            "securebits",
            libc::prctl(libc::PR_GET_SECUREBITS, 0, 0, 0, 0).to_string(),
        );
        put(
            "nnp",
            libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0).to_string(),
        );
        put(
            "seccomp",
            libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0).to_string(),
        );
        let mut sig = 0;
        libc::prctl(libc::PR_GET_PDEATHSIG, &mut sig as *mut i32, 0, 0, 0);
        put("pdeathsig", sig.to_string());
        for (name, res) in [
            ("nproc", libc::RLIMIT_NPROC),
            ("core", libc::RLIMIT_CORE),
            ("nofile", libc::RLIMIT_NOFILE),
            ("fsize", libc::RLIMIT_FSIZE),
            ("as", libc::RLIMIT_AS),
        ] {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::getrlimit(res, &mut lim);
            put(name, format!("{},{}", lim.rlim_cur, lim.rlim_max));
        }
        let mut action: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGXFSZ, std::ptr::null(), &mut action);
        put(
            "sigxfsz_ignored",
            u8::from(action.sa_sigaction == libc::SIG_IGN).to_string(),
        );
        let open_fds: Vec<String> = (0..256)
            .filter(|&fd| libc::fcntl(fd, libc::F_GETFD) != -1)
            .map(|fd| fd.to_string())
            .collect();
        put("fds", open_fds.join(","));
        let rc = libc::mkdir(c"/x".as_ptr(), 0o700);
        put("mkdir_errno", errno_of(rc.into()).to_string());
        let rc = libc::open(c"/etc/passwd".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        put("open_passwd_errno", errno_of(rc.into()).to_string());
        let rc = libc::open(
            c"/".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        put("open_root_errno", errno_of(rc.into()).to_string());
        let rc = libc::fork();
        if rc == 0 {
            libc::_exit(0);
        }
        put("fork_errno", errno_of(rc.into()).to_string());
        let sock = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 80u16.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be(),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            sock,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        put("connect_errno", errno_of(rc.into()).to_string());
        libc::close(sock);
    }
    out.push_str("end\n");
    out
}
