//! Unit tests: the profiles are well-formed reviewed data, they compile, and the embedded
//! programs do what the JSON says (checked with a small BPF interpreter, no filter installed).

mod bpf;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::Value;

use self::bpf::{run, SeccompData, RET_ALLOW, RET_KILL_PROCESS, RET_LOG, RET_TRAP};
use crate::{profiles, program, source, syscall_name, syscall_table, Mode};

/// What no device profile may allow: ways to open files, run programs, create sockets or
/// processes, or inspect other processes. Everything a worker needs is handed to it.
const DEVICE_FORBIDDEN: &[&str] = &[
    "open",
    "openat",
    "openat2",
    "creat",
    "open_by_handle_at",
    "execve",
    "execveat",
    "socket",
    "fork",
    "vfork",
    "clone",
    "clone3",
    "ptrace",
];

/// The one exception to [`DEVICE_FORBIDDEN`]: the virtio-fs worker resolves guest-named
/// components beneath its inherited directory fd with `openat2` (`RESOLVE_BENEATH`, checked in
/// `devices::fs::host`) and re-opens its own nodes through `/proc/self/fd`; Landlock beneath the
/// shared directory bounds what that can reach. Nothing else may open files.
const DEVICE_EXCEPTIONS: &[(&str, &str)] = &[("fs", "openat2"), ("fs_ro", "openat2")];

/// Profiles that are not device profiles.
const NOT_DEVICES: &[&str] = &["base", "broker", "vmm", "vmm_service"];

/// Every `profiles/*.json`, parsed, by file stem.
fn json_files() -> BTreeMap<String, Value> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("profiles");
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).unwrap();
            let value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
            files.insert(stem, value);
        }
    }
    files
}

/// The rules of the one filter in a profile document.
fn rules(doc: &Value) -> &[Value] {
    let filters = doc.as_object().unwrap();
    assert_eq!(filters.len(), 1, "one filter per profile");
    let filter = filters.values().next().unwrap();
    filter["filter"].as_array().unwrap()
}

/// The syscall names a profile document has rules for.
fn syscalls(doc: &Value) -> BTreeSet<String> {
    rules(doc)
        .iter()
        .map(|r| r["syscall"].as_str().unwrap().to_string())
        .collect()
}

fn merged(profile: &str) -> Value {
    serde_json::from_str(source(profile).unwrap()).unwrap()
}

fn nr(name: &str) -> i64 {
    let index = syscall_table::NAMES
        .iter()
        .position(|n| *n == Some(name))
        .unwrap_or_else(|| panic!("{name} is not in the syscall table"));
    i64::try_from(index).unwrap()
}

fn verdict(profile: &str, mode: Mode, name: &str, args: [u64; 6]) -> u32 {
    run(
        &program(profile, mode).unwrap(),
        &SeccompData::x86_64(nr(name), args),
    )
}

fn is_device(profile: &str) -> bool {
    !NOT_DEVICES.contains(&profile)
}

#[test]
fn profiles_are_the_device_kinds_and_the_vmm() {
    assert_eq!(
        profiles(),
        [
            "blk",
            "broker",
            "fs",
            "fs_ro",
            "net",
            "rng",
            "vmm",
            "vmm_service",
            "wl"
        ]
    );
    assert!(program("base", Mode::Trap).is_none());
    assert!(program("no-such-device", Mode::Log).is_none());
    assert!(source("no-such-device").is_none());
}

#[test]
fn every_profile_file_parses_and_compiles() {
    for (name, doc) in json_files() {
        let text = serde_json::to_vec(&doc).unwrap();
        let compiled =
            seccompiler::compile_from_json(text.as_slice(), seccompiler::TargetArch::x86_64)
                .unwrap_or_else(|e| panic!("{name}.json: {e}"));
        assert!(
            compiled.contains_key(&name),
            "{name}.json names its filter {name:?}"
        );
    }
}

#[test]
fn embedded_programs_are_the_compiled_sources() {
    for &name in profiles() {
        let map = seccompiler::compile_from_json(
            source(name).unwrap().as_bytes(),
            seccompiler::TargetArch::x86_64,
        )
        .unwrap();
        assert_eq!(map[name], program(name, Mode::Trap).unwrap(), "{name}");
        assert_ne!(program(name, Mode::Trap), program(name, Mode::Log));
    }
}

#[test]
fn every_rule_and_condition_has_a_comment() {
    let mut checked = 0;
    for (name, doc) in json_files() {
        for rule in rules(&doc) {
            let syscall = rule["syscall"].as_str().unwrap();
            let comment = rule["comment"].as_str().unwrap_or_default();
            assert!(
                !comment.trim().is_empty(),
                "{name}: {syscall} has no comment"
            );
            for arg in rule
                .get("args")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let comment = arg["comment"].as_str().unwrap_or_default();
                assert!(
                    !comment.trim().is_empty(),
                    "{name}: {syscall} arg has no comment"
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 50, "only {checked} rules found");
}

#[test]
fn device_profiles_allow_no_forbidden_syscall() {
    let devices: Vec<&str> = profiles()
        .iter()
        .copied()
        .filter(|p| is_device(p))
        .collect();
    assert!(devices.contains(&"rng"));
    assert!(devices.contains(&"blk"));
    for profile in devices {
        let allowed = syscalls(&merged(profile));
        for &name in DEVICE_FORBIDDEN {
            if DEVICE_EXCEPTIONS.contains(&(profile, name)) {
                assert!(allowed.contains(name), "{profile}: stale exception {name}");
                continue;
            }
            assert!(!allowed.contains(name), "{profile} allows {name}");
            for args in [[0; 6], [u64::MAX; 6]] {
                assert_eq!(verdict(profile, Mode::Trap, name, args), RET_TRAP, "{name}");
                assert_eq!(verdict(profile, Mode::Log, name, args), RET_LOG, "{name}");
            }
        }
    }
}

#[test]
fn device_profiles_contain_every_base_rule() {
    let base = syscalls(&json_files()["base"]);
    for &profile in profiles().iter().filter(|p| is_device(p)) {
        let rules = syscalls(&merged(profile));
        assert!(base.is_subset(&rules), "{profile} lacks base rules");
    }
}

#[test]
fn listed_syscalls_are_allowed_in_both_modes() {
    for &profile in profiles() {
        for mode in [Mode::Trap, Mode::Log] {
            for name in ["read", "write", "futex", "exit_group", "rt_sigreturn"] {
                // The host-services thread reads nothing but its channel (recvmsg).
                if profile == "vmm_service" && name == "read" {
                    continue;
                }
                // futex: FUTEX_WAKE_PRIVATE, the one operation every std lock makes.
                let args = [0, 129, 0, 0, 0, 0];
                assert_eq!(
                    verdict(profile, mode, name, args),
                    RET_ALLOW,
                    "{profile} {name}"
                );
            }
        }
    }
}

#[test]
fn memory_can_never_become_executable() {
    const PROT_RW: u64 = 3;
    const PROT_EXEC: u64 = 4;
    // The broker's filter is also every worker's between its exec and its own filter, when
    // ld.so maps svmm's libraries executable; each worker's own filter then forbids it.
    for &profile in profiles().iter().filter(|p| **p != "broker") {
        for name in ["mmap", "mprotect"] {
            let call = |prot| verdict(profile, Mode::Trap, name, [0, 4096, prot, 0x22, 0, 0]);
            assert_eq!(call(PROT_RW), RET_ALLOW, "{profile} {name} rw");
            assert_eq!(call(PROT_RW | PROT_EXEC), RET_TRAP, "{profile} {name} rwx");
            assert_eq!(call(PROT_EXEC), RET_TRAP, "{profile} {name} x");
        }
        let madvise = |advice| verdict(profile, Mode::Trap, "madvise", [0, 4096, advice, 0, 0, 0]);
        assert_eq!(madvise(4), RET_ALLOW, "MADV_DONTNEED");
        assert_eq!(madvise(100), RET_TRAP, "MADV_HWPOISON");
    }
}

#[test]
fn vmm_ioctls_are_the_runtime_ones_only() {
    let ioctl = |request| verdict("vmm", Mode::Trap, "ioctl", [3, request, 0, 0, 0, 0]);
    // KVM_RUN, KVM_GET_REGS, TCSETS, TCGETS.
    for allowed in [0xae80, 0x8090_ae81, 0x5402, 0x5401] {
        assert_eq!(ioctl(allowed), RET_ALLOW, "{allowed:#x}");
    }
    // KVM_CREATE_VM, KVM_SET_USER_MEMORY_REGION, KVM_SET_REGS, TIOCSTI; and what only the
    // unconfined set-up uses: KVM_IRQFD, KVM_IOEVENTFD, FIONBIO.
    for denied in [
        0xae01,
        0x4020_ae46,
        0x4090_ae82,
        0x5412,
        0x4020_ae76,
        0x4040_ae79,
        0x5421,
    ] {
        assert_eq!(ioctl(denied), RET_TRAP, "{denied:#x}");
    }
    assert_eq!(
        verdict("rng", Mode::Trap, "ioctl", [3, 0xae80, 0, 0, 0, 0]),
        RET_TRAP
    );
    for name in ["execve", "openat", "socket", "clone3"] {
        assert_eq!(verdict("vmm", Mode::Trap, name, [0; 6]), RET_TRAP, "{name}");
    }
}

#[test]
fn net_may_only_switch_tap_offloads_arm_its_timers_and_write_frames() {
    let ioctl = |request| verdict("net", Mode::Trap, "ioctl", [3, request, 0, 0, 0, 0]);
    // TUNSETOFFLOAD.
    assert_eq!(ioctl(0x4004_54d0), RET_ALLOW);
    // TUNSETIFF, TUNSETQUEUE, TUNSETVNETHDRSZ, TUNSETSTEERINGEBPF, FIONBIO, KVM_RUN.
    for denied in [
        0x4004_54ca,
        0x4004_54d9,
        0x4004_54d8,
        0x8004_54e0,
        0x5421,
        0xae80,
    ] {
        assert_eq!(ioctl(denied), RET_TRAP, "{denied:#x}");
    }
    let settime = |flags| verdict("net", Mode::Trap, "timerfd_settime", [3, flags, 0, 0, 0, 0]);
    assert_eq!(settime(0), RET_ALLOW);
    assert_eq!(settime(1), RET_TRAP, "TFD_TIMER_ABSTIME");
    for name in [
        "timerfd_create",
        "socket",
        "openat",
        "writev",
        "sendto",
        "clone3",
    ] {
        assert_eq!(verdict("net", Mode::Trap, name, [0; 6]), RET_TRAP, "{name}");
    }
    // A tap's gathered write: offset -1 (writev) and flags 0 only.
    let pwritev2 =
        |offset, flags| verdict("net", Mode::Trap, "pwritev2", [3, 0, 2, offset, 0, flags]);
    assert_eq!(pwritev2(u64::MAX, 0), RET_ALLOW);
    assert_eq!(pwritev2(0, 0), RET_TRAP, "a positional write");
    assert_eq!(pwritev2(u64::MAX, 2), RET_TRAP, "RWF_DSYNC");
    // The base plus three: the smallest net profile we know of.
    assert_eq!(syscalls(&merged("net")).len(), 28);
}

#[test]
fn another_architecture_is_killed() {
    for &profile in profiles() {
        let mut data = SeccompData::x86_64(0, [0; 6]);
        data.arch = 0x4000_0003; // AUDIT_ARCH_I386: int 0x80 from a 64-bit process
        assert_eq!(
            run(&program(profile, Mode::Log).unwrap(), &data),
            RET_KILL_PROCESS
        );
    }
}

#[test]
fn syscall_names() {
    assert_eq!(syscall_name(0), Some("read"));
    assert_eq!(syscall_name(59), Some("execve"));
    assert_eq!(syscall_name(257), Some("openat"));
    assert_eq!(syscall_name(435), Some("clone3"));
    assert_eq!(syscall_name(462), Some("mseal"));
    for unknown in [-1, 336, 423, 463, 512, i64::MAX, i64::MIN] {
        assert_eq!(syscall_name(unknown), None, "{unknown}");
    }
}

/// Every table entry is the number seccompiler compiles that name to (and so the number the
/// profiles use): a one-rule filter for `name` must match `nr` and nothing next to it.
#[test]
fn syscall_table_agrees_with_seccompiler() {
    let mut seen = BTreeSet::new();
    for (nr, name) in syscall_table::NAMES.iter().enumerate() {
        let Some(name) = name else { continue };
        assert!(seen.insert(*name), "{name} twice");
        let json = format!(
            r#"{{"t": {{"mismatch_action": "allow", "match_action": "trap",
                "filter": [{{"syscall": "{name}"}}]}}}}"#
        );
        let map = seccompiler::compile_from_json(json.as_bytes(), seccompiler::TargetArch::x86_64)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let nr = i64::try_from(nr).unwrap();
        for (probe, want) in [(nr, RET_TRAP), (nr + 1, RET_ALLOW), (nr - 1, RET_ALLOW)] {
            let got = run(&map["t"], &SeccompData::x86_64(probe, [0; 6]));
            assert_eq!(got, want, "{name} probed with {probe}");
        }
    }
    assert!(seen.len() > 370);
}

#[test]
fn syscall_table_agrees_with_libc() {
    let pairs = [
        (libc::SYS_read, "read"),
        (libc::SYS_mmap, "mmap"),
        (libc::SYS_ioctl, "ioctl"),
        (libc::SYS_sendmsg, "sendmsg"),
        (libc::SYS_clone, "clone"),
        (libc::SYS_exit, "exit"),
        (libc::SYS_futex, "futex"),
        (libc::SYS_exit_group, "exit_group"),
        (libc::SYS_epoll_pwait, "epoll_pwait"),
        (libc::SYS_getrandom, "getrandom"),
        (libc::SYS_execveat, "execveat"),
        (libc::SYS_pidfd_send_signal, "pidfd_send_signal"),
        (libc::SYS_openat2, "openat2"),
        (libc::SYS_landlock_restrict_self, "landlock_restrict_self"),
    ];
    for (nr, name) in pairs {
        assert_eq!(syscall_name(nr), Some(name));
    }
}

/// README.md has one row per allowed syscall per profile file, each with a reason.
#[test]
fn readme_gives_a_reason_for_every_syscall() {
    let readme = include_str!("../../README.md");
    let mut sections: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut current = None;
    for line in readme.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            current = heading
                .split('`')
                .nth(1)
                .and_then(|f| f.strip_suffix(".json"))
                .map(str::to_string);
            continue;
        }
        let (Some(profile), Some(row)) = (&current, line.strip_prefix("| `")) else {
            continue;
        };
        let (syscall, rest) = row.split_once('`').unwrap();
        let reason = rest.trim_start_matches([' ', '|']).trim_end_matches('|');
        assert!(
            !reason.trim().is_empty(),
            "README: {profile}/{syscall} has no reason"
        );
        let fresh = sections
            .entry(profile.clone())
            .or_default()
            .insert(syscall.into());
        assert!(fresh, "README: {profile}/{syscall} listed twice");
    }
    for (name, doc) in json_files() {
        let listed = sections.remove(&name).unwrap_or_default();
        assert_eq!(listed, syscalls(&doc), "README section for {name}.json");
    }
    assert!(
        sections.is_empty(),
        "README sections without a profile: {sections:?}"
    );
}

/// blk gets its image I/O and nothing to set up a new ring or reconfigure the one it has.
#[test]
fn blk_allows_image_io_only() {
    let allow = |name, args| verdict("blk", Mode::Trap, name, args);
    const RWF_DSYNC: u64 = 2;
    const RWF_NOWAIT: u64 = 8;
    assert_eq!(allow("preadv2", [3, 0, 1, 0, 0, 0]), RET_ALLOW);
    assert_eq!(allow("preadv2", [3, 0, 1, 0, 0, RWF_NOWAIT]), RET_TRAP);
    assert_eq!(allow("pwritev2", [3, 0, 1, 0, 0, 0]), RET_ALLOW);
    // Durability is an fdatasync after the write, never a flag on it.
    assert_eq!(allow("pwritev2", [3, 0, 1, 0, 0, RWF_DSYNC]), RET_TRAP);
    assert_eq!(allow("pwritev2", [3, 0, 1, 0, 0, RWF_NOWAIT]), RET_TRAP);
    assert_eq!(allow("fdatasync", [3, 0, 0, 0, 0, 0]), RET_ALLOW);
    // PUNCH_HOLE|KEEP_SIZE and ZERO_RANGE (RLIMIT_FSIZE bounds it); not ZERO_RANGE|KEEP_SIZE
    // (preallocation past the end), not a plain allocate, KEEP_SIZE, COLLAPSE_RANGE or
    // INSERT_RANGE.
    for (mode, want) in [
        (3, RET_ALLOW),
        (16, RET_ALLOW),
        (17, RET_TRAP),
        (1, RET_TRAP),
        (0, RET_TRAP),
        (8, RET_TRAP),
        (32, RET_TRAP),
    ] {
        assert_eq!(
            allow("fallocate", [3, mode, 0, 4096, 0, 0]),
            want,
            "mode {mode}"
        );
    }
    assert_eq!(allow("io_uring_enter", [5, 1, 0, 0, 0, 0]), RET_ALLOW);
    assert_eq!(allow("io_uring_enter", [5, 1, 1, 1, 0, 0]), RET_ALLOW);
    // IORING_ENTER_EXT_ARG (8) or SQ_WAKEUP (2): not used.
    assert_eq!(allow("io_uring_enter", [5, 1, 1, 8, 0, 0]), RET_TRAP);
    for name in [
        "io_uring_setup",
        "io_uring_register",
        "pwrite64",
        "ftruncate",
        "ioctl",
        "statx",
        "lseek",
        "fcntl",
    ] {
        let args = if name == "fcntl" {
            [3, 4, 0, 0, 0, 0]
        } else {
            [0; 6]
        };
        assert_eq!(allow(name, args), RET_TRAP, "{name}");
    }
}

/// wl makes memfds and pipes and classifies fds, and nothing that reaches outside the worker.
#[test]
fn wl_allows_its_fds_only() {
    let allow = |name, args| verdict("wl", Mode::Trap, name, args);
    const MFD_CLOEXEC_SEALING: u64 = 3;
    const MFD_HUGETLB: u64 = 4;
    const O_CLOEXEC: u64 = 0o2000000;
    assert_eq!(
        allow("memfd_create", [0, MFD_CLOEXEC_SEALING, 0, 0, 0, 0]),
        RET_ALLOW
    );
    assert_eq!(
        allow("memfd_create", [0, MFD_HUGETLB | 3, 0, 0, 0, 0]),
        RET_TRAP
    );
    assert_eq!(allow("memfd_create", [0, 1, 0, 0, 0, 0]), RET_TRAP);
    assert_eq!(allow("pipe2", [0, O_CLOEXEC, 0, 0, 0, 0]), RET_ALLOW);
    assert_eq!(
        allow("pipe2", [0, O_CLOEXEC | 0o4000, 0, 0, 0, 0]),
        RET_TRAP
    );
    assert_eq!(allow("ftruncate", [5, 4096, 0, 0, 0, 0]), RET_ALLOW);
    assert_eq!(allow("fstat", [5, 0, 0, 0, 0, 0]), RET_ALLOW);
    // F_GETFD (base), F_GETFL, F_SETFL, F_ADD_SEALS, F_GET_SEALS; not F_DUPFD, F_SETOWN,
    // F_SETLK or F_SETPIPE_SZ.
    for (cmd, want) in [
        (1, RET_ALLOW),
        (3, RET_ALLOW),
        (4, RET_ALLOW),
        (1033, RET_ALLOW),
        (1034, RET_ALLOW),
        (0, RET_TRAP),
        (8, RET_TRAP),
        (6, RET_TRAP),
        (1031, RET_TRAP),
    ] {
        assert_eq!(allow("fcntl", [5, cmd, 0, 0, 0, 0]), want, "fcntl {cmd}");
    }
    for name in [
        "socket",
        "connect",
        "ioctl",
        "openat",
        "memfd_secret",
        "dup",
        "dup3",
        "splice",
    ] {
        assert_eq!(allow(name, [0; 6]), RET_TRAP, "{name}");
    }
}

/// svmm's threads signal nothing but their own workers (by pidfd) and their own threads (the
/// vCPU kick and abort), and cannot reap or signal by pid.
#[test]
fn vmm_signals_only_its_workers_and_threads() {
    let call = |name, args| verdict("vmm", Mode::Trap, name, args);
    const SIGABRT: u64 = 6;
    const SIGKILL: u64 = 9;
    const SIGTERM: u64 = 15;
    const SIGSTOP: u64 = 19;
    const KICK: u64 = 34;
    let minus_one = u64::MAX; // pid -1: every process the caller may signal
    for sig in [0, SIGKILL, SIGTERM, SIGSTOP, SIGABRT] {
        assert_eq!(
            call("kill", [minus_one, sig, 0, 0, 0, 0]),
            RET_TRAP,
            "kill(-1, {sig})"
        );
        assert_eq!(
            call("kill", [1, sig, 0, 0, 0, 0]),
            RET_TRAP,
            "kill(1, {sig})"
        );
    }
    for name in [
        "tkill",
        "rt_sigqueueinfo",
        "rt_tgsigqueueinfo",
        "pidfd_open",
        "wait4",
    ] {
        assert_eq!(call(name, [1, 1, SIGKILL, 0, 0, 0]), RET_TRAP, "{name}");
    }
    assert_eq!(call("tgkill", [1, 1, SIGABRT, 0, 0, 0]), RET_ALLOW);
    assert_eq!(call("tgkill", [1, 1, KICK, 0, 0, 0]), RET_ALLOW);
    for sig in [SIGKILL, SIGTERM, SIGSTOP, 10, 33, 35, 64] {
        assert_eq!(
            call("tgkill", [1, 1, sig, 0, 0, 0]),
            RET_TRAP,
            "tgkill signal {sig}"
        );
    }
    assert_eq!(
        call("pidfd_send_signal", [5, SIGKILL, 0, 0, 0, 0]),
        RET_ALLOW
    );
    assert_eq!(
        call("pidfd_send_signal", [5, SIGTERM, 0, 0, 0, 0]),
        RET_TRAP
    );
    // The VMM has no epoll loop: nothing to add to one.
    for name in [
        "epoll_wait",
        "epoll_pwait",
        "epoll_ctl",
        "ppoll",
        "sched_yield",
        "nanosleep",
    ] {
        assert_eq!(call(name, [0; 6]), RET_TRAP, "{name}");
    }
}

/// `futex` only with the operations std and glibc use: no priority inheritance, requeue,
/// wake-op or fd operations (Firecracker restricts them the same way).
#[test]
fn futex_is_limited_to_what_std_uses() {
    const PRIVATE: u64 = 128;
    const CLOCK_REALTIME: u64 = 256;
    let (wait, wake, wait_bitset) = (0, 1, 9);
    for &profile in profiles() {
        let futex = |op| verdict(profile, Mode::Trap, "futex", [0, op, 0, 0, 0, 0]);
        for op in [wait | PRIVATE, wake | PRIVATE, wait_bitset | PRIVATE] {
            assert_eq!(futex(op), RET_ALLOW, "{profile} op {op}");
        }
        // FUTEX_FD, REQUEUE, CMP_REQUEUE, WAKE_OP, LOCK_PI, UNLOCK_PI, TRYLOCK_PI,
        // WAKE_BITSET, WAIT_REQUEUE_PI, CMP_REQUEUE_PI, LOCK_PI2, each private or not.
        for op in [2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13] {
            for flags in [0, PRIVATE, PRIVATE | CLOCK_REALTIME] {
                assert_eq!(futex(op | flags), RET_TRAP, "{profile} op {}", op | flags);
            }
        }
        // pthread_join (shared FUTEX_WAIT_BITSET on the realtime clock): only the VMM joins
        // threads once confined.
        let join = futex(wait_bitset | CLOCK_REALTIME);
        assert_eq!(join == RET_ALLOW, profile == "vmm", "{profile} join");
    }
}

/// Every profile (base merged in) allows at most 30 system calls, each with a reason
/// (`every_rule_and_condition_has_a_comment`). The exception is the file server: virtio-fs
/// answers FUSE operations on the shared tree, one system call (family) per operation.
#[test]
fn profiles_stay_small() {
    const LIMIT: usize = 30;
    const FILE_SERVER_LIMIT: usize = 45;
    // 92 for spawning and rng, blk, fs, wl; net adds ioctl(TUNSETOFFLOAD), timerfd_create and
    // timerfd_settime; wl's device build (before its own filter) setsockopt(SO_*TIMEO_NEW).
    const BROKER_LIMIT: usize = 96;
    for &profile in profiles() {
        let count = syscalls(&merged(profile)).len();
        let limit = match profile {
            "fs" | "fs_ro" => FILE_SERVER_LIMIT,
            // What spawning needs is what a worker needs from its exec to its own filter and
            // afterwards (filters are inherited): see the_broker_allows_what_every_worker_does.
            "broker" => BROKER_LIMIT,
            _ => LIMIT,
        };
        assert!(count <= limit, "{profile} allows {count} system calls");
    }
    assert!(syscalls(&json_files()["base"]).len() <= 25);
    // Made before the filter, or never needed once confined.
    for name in [
        "epoll_create1",
        "epoll_pwait",
        "poll",
        "ppoll",
        "clock_nanosleep",
        "restart_syscall",
        "sched_yield",
    ] {
        for &profile in profiles().iter().filter(|p| is_device(p)) {
            assert_eq!(
                verdict(profile, Mode::Trap, name, [0; 6]),
                RET_TRAP,
                "{profile} {name}"
            );
        }
    }
}

/// The host-services thread connects unix stream sockets and adds memory slots, nothing else.
#[test]
fn vmm_service_connects_and_maps_only() {
    let allow = |name, args| verdict("vmm_service", Mode::Trap, name, args);
    const STREAM_NONBLOCK_CLOEXEC: u64 = 0x80801;
    assert_eq!(
        allow("socket", [1, STREAM_NONBLOCK_CLOEXEC, 0, 0, 0, 0]),
        RET_ALLOW
    );
    assert_eq!(
        allow("socket", [2, STREAM_NONBLOCK_CLOEXEC, 0, 0, 0, 0]),
        RET_TRAP
    );
    assert_eq!(allow("socket", [1, 2, 0, 0, 0, 0]), RET_TRAP);
    assert_eq!(allow("connect", [5, 0, 110, 0, 0, 0]), RET_ALLOW);
    // Each worker's service channel: a SEQPACKET pair, nothing else.
    const SEQPACKET_CLOEXEC: u64 = 0x80005;
    assert_eq!(
        allow("socketpair", [1, SEQPACKET_CLOEXEC, 0, 0, 0, 0]),
        RET_ALLOW
    );
    assert_eq!(allow("socketpair", [1, 1, 0, 0, 0, 0]), RET_TRAP);
    assert_eq!(
        allow("socketpair", [2, SEQPACKET_CLOEXEC, 0, 0, 0, 0]),
        RET_TRAP
    );
    assert_eq!(allow("ioctl", [4, 0x4020ae46, 0, 0, 0, 0]), RET_ALLOW);
    // Not KVM_RUN, KVM_CREATE_VCPU, KVM_IRQFD or anything else.
    for request in [0xae80u64, 0xae41, 0x4020ae76, 0x5401] {
        assert_eq!(
            allow("ioctl", [4, request, 0, 0, 0, 0]),
            RET_TRAP,
            "{request:#x}"
        );
    }
    assert_eq!(allow("mmap", [0, 4096, 3, 1, 5, 0]), RET_ALLOW);
    assert_eq!(allow("mmap", [0, 4096, 7, 1, 5, 0]), RET_TRAP);
    for name in [
        "openat", "execve", "clone3", "bind", "listen", "accept4", "read",
    ] {
        assert_eq!(allow(name, [0; 6]), RET_TRAP, "{name}");
    }
}

/// Every worker runs under the broker's filter as well as its own (seccomp filters are
/// inherited): every call a device profile allows must be in the broker's, or that device
/// could not make it. A kind whose profile needs a new call must add it there too.
#[test]
fn the_broker_allows_what_every_worker_does() {
    let broker = syscalls(&merged("broker"));
    for &profile in profiles().iter().filter(|p| is_device(p)) {
        let missing: Vec<String> = syscalls(&merged(profile))
            .difference(&broker)
            .cloned()
            .collect();
        assert!(
            missing.is_empty(),
            "broker.json lacks {missing:?} of {profile}"
        );
    }
}

/// What spawning never needs stays out of the broker: no network, no other process's memory,
/// no program but svmm (and only through its fd), no signals by pid, no kernel extension.
#[test]
fn the_broker_cannot_reach_beyond_spawning() {
    let call = |name, args| verdict("broker", Mode::Trap, name, args);
    for name in [
        "socket",
        "connect",
        "bind",
        "listen",
        "accept4",
        "sendto",
        "ptrace",
        "process_vm_readv",
        "process_vm_writev",
        "execve",
        "kill",
        "tkill",
        "clone",
        "fork",
        "vfork",
        "bpf",
        "perf_event_open",
        "init_module",
        "finit_module",
        "kexec_load",
        "reboot",
        "swapon",
        "mknod",
        "mknodat",
        "chroot",
        "keyctl",
        "userfaultfd",
        "ioctl",
        "open_by_handle_at",
        "setns",
        "unshare",
    ] {
        assert_eq!(call(name, [0; 6]), RET_TRAP, "{name}");
    }
    const AT_EMPTY_PATH: u64 = 0x1000;
    assert_eq!(call("execveat", [3, 0, 0, 0, AT_EMPTY_PATH, 0]), RET_ALLOW);
    assert_eq!(call("execveat", [3, 0, 0, 0, 0, 0]), RET_TRAP, "by path");
    assert_eq!(call("pidfd_send_signal", [5, 9, 0, 0, 0, 0]), RET_ALLOW);
    assert_eq!(call("pidfd_send_signal", [5, 15, 0, 0, 0, 0]), RET_TRAP);
}
