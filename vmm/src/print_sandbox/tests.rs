//! The report's content: every rule of the profiles, the fd table, the sandbox layers.

use super::profile::{self, Rule};
use super::*;

fn rng(sandbox: bool) -> DeviceSpec {
    DeviceSpec {
        sandbox,
        ..crate::device_spec::parse("rng,source=urandom").unwrap()
    }
}

/// The report for `devices`, filters in `mode`, default ids, Landlock required.
fn report(devices: &[DeviceSpec], mode: SeccompMode) -> Result<String, PrintSandboxError> {
    let options = SandboxOptions {
        seccomp: mode.into(),
        worker_ids: broker::IdRange::DEFAULT,
        allow_missing_landlock: false,
        host_ids: crate::config::HostIds::detect(false, 0),
        guest_ram: 128 << 20,
    };
    super::report(devices, mode, &options, 256 << 20)
}

/// The system calls the report lists as allowed in the section after `heading`.
fn allowed_after(report: &str, heading: &str) -> Vec<String> {
    let section = ::tests::sandbox_report::section(report, heading);
    assert!(!section.is_empty(), "no {heading:?} in\n{report}");
    ::tests::sandbox_report::allowed_syscalls(section)
        .into_iter()
        .map(str::to_string)
        .collect()
}

/// The rules of the JSON source, read independently of `profile::rules`.
fn json_syscalls(name: &str) -> Vec<String> {
    let value: serde_json::Value =
        serde_json::from_str(seccomp_profiles::source(name).unwrap()).unwrap();
    value[name]["filter"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["syscall"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn rng_report_lists_every_rule_of_base_and_rng() {
    let text = report(&[rng(true)], SeccompMode::Trap).unwrap();
    let listed = allowed_after(&text, "== rng#0: sandboxed worker process");
    // The merged source holds base's rules then rng's: each appears, in order, once per rule.
    assert_eq!(listed, json_syscalls("rng"));
    for call in [
        "read",
        "write",
        "recvmsg",
        "sendmsg",
        "epoll_wait",
        "futex",
        "exit_group",
    ] {
        assert!(listed.iter().any(|c| c == call), "{call} missing\n{text}");
    }
    for forbidden in [
        "open", "openat", "execve", "socket", "clone", "fork", "ioctl",
    ] {
        assert!(
            !listed.iter().any(|c| c == forbidden),
            "{forbidden} allowed\n{text}"
        );
    }
    let section = ::tests::sandbox_report::section(&text, "== rng#0: sandboxed worker process");
    assert!(!section.contains("openat"), "{text}");
    // Argument filters and comments are shown.
    assert!(
        text.contains("only if arg1 (32 bits) == 0x1 [F_GETFD only"),
        "{text}"
    );
    assert!(text.contains("only if arg2 (32 bits) & 0x4 == 0x0 [prot without PROT_EXEC"));
    assert!(text.contains("why: Reads the ioeventfds (queue notifications)"));
    assert!(text
        .contains("seccomp: profile \"rng\" in mode trap: any other call is denied with SIGSYS"));
}

#[test]
fn rng_report_lists_the_fds_and_every_layer() {
    let text = report(&[rng(true)], SeccompMode::Trap).unwrap();
    for needle in [
        "== rng#0: sandboxed worker process, virtio-mmio at 0xd0000000, GSI 5 ==",
        "command line: svmm __worker rng --seccomp=trap --sandbox-namespaces=1 ",
        "--sandbox-fds=7 ",
        "namespaces: own user, pid (worker is PID 1), mount, net",
        "cgroup, time",
        "root: empty read-only tmpfs (pivot_root)",
        "capabilities: none",
        "no_new_privs: set",
        "parent death: SIGKILL",
        "rlimits: NPROC 0 (no processes, no threads), CORE 0, NOFILE 26, FSIZE 0 (SIGXFSZ ignored: EFBIG), AS 192 MiB",
        "landlock: every filesystem right handled",
        "no filesystem access at all",
        "host view: uid ",
        "inherited fds (every other fd is closed before exec):",
        "    0  stdin: /dev/null",
        "    3  control socket (SOCK_SEQPACKET",
        "    4  guest RAM memfd (sealed",
        "    5  interrupt status page",
        "    6  irqfd",
        "    7  stop eventfd",
        "    8  queue 0 notify eventfd",
        "    9  host resource of rng: /dev/urandom (read-only)",
    ] {
        assert!(text.contains(needle), "missing {needle:?}\n{text}");
    }
    assert!(!text.contains("   10  "), "an fd too many\n{text}");
}

#[test]
fn vmm_section_lists_every_rule_with_its_filters() {
    let text = report(&[], SeccompMode::Log).unwrap();
    assert!(text.starts_with("svmm sandbox report: 0 device(s)\n"));
    let listed = allowed_after(&text, "== svmm itself");
    assert_eq!(listed, json_syscalls("vmm"));
    assert!(
        text.contains("ioctl                only if arg1 (32 bits) == 0xae80 [KVM_RUN (0xae80)]")
    );
    assert!(
        text.contains("seccomp: profile \"vmm\" in mode log: any other call is allowed and logged")
    );
    for row in THREAD_POLICY {
        assert!(
            text.contains(row.thread) && text.contains(row.when),
            "{}",
            row.thread
        );
    }
    for forbidden in ["openat", "execve", "clone", "socket"] {
        assert!(
            !listed.iter().any(|c| c == forbidden),
            "{forbidden} allowed\n{text}"
        );
    }
}

#[test]
fn in_process_device_shows_its_thread_and_profile() {
    let text = report(&[rng(true), rng(false)], SeccompMode::Trap).unwrap();
    assert!(text.contains("== rng#1: in-process (sandbox=off), thread dev-rng#1 of svmm, virtio-mmio at 0xd0001000, GSI 6 =="));
    let listed = allowed_after(&text, "== rng#1: in-process");
    assert_eq!(listed, json_syscalls("rng"));
    assert!(text.contains("  host resource of rng: /dev/urandom (read-only)"));
}

#[test]
fn every_profile_reads_back_with_comments_everywhere() {
    for name in seccomp_profiles::profiles() {
        let rules = profile::rules(name).unwrap();
        assert_eq!(rules.len(), json_syscalls(name).len(), "{name}");
        for Rule {
            syscall,
            comment,
            args,
        } in &rules
        {
            assert!(!comment.is_empty(), "{name}: {syscall}");
            assert!(
                args.iter().all(|a| !a.comment.is_empty()),
                "{name}: {syscall}"
            );
        }
    }
    assert!(matches!(
        profile::rules("nope"),
        Err(profile::ProfileError::Unknown(_))
    ));
}

#[test]
fn rendering_of_conditions() {
    let rules = vec![Rule {
        syscall: "madvise".into(),
        comment: "why not".into(),
        args: vec![profile::Condition {
            index: 2,
            width: "qword".into(),
            test: "== 0x4".into(),
            comment: "MADV_DONTNEED".into(),
        }],
    }];
    assert_eq!(
        profile::render(&rules, "  "),
        format!(
            "  madvise              only if arg2 == 0x4 [MADV_DONTNEED]\n  {} why: why not\n",
            " ".repeat(20)
        )
    );
    assert_eq!(
        profile::syscall_count(&[rules[0].clone(), rules[0].clone()]),
        1
    );
}

#[test]
fn broker_section_shows_the_process_what_it_holds_and_every_rule() {
    let text = report(&[rng(true), rng(false)], SeccompMode::Trap).unwrap();
    let listed = allowed_after(&text, "== the broker process (svmm-broker) ==");
    assert_eq!(listed, json_syscalls("broker"));
    for needle in [
        "single-threaded; dies with svmm",
        "  rng#0: host resource of rng: /dev/urandom (read-only)",
        "accepts on device N's channel only \"start device N\"",
        "never maps guest RAM",
        "seccomp: profile \"broker\" in mode trap",
    ] {
        assert!(text.contains(needle), "missing {needle:?}\n{text}");
    }
    // The in-process device's resource is svmm's, not the broker's.
    assert!(!text.contains("rng#1: host resource"), "{text}");
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        let (first, count) = (1_500_000_000u32, 65_536u32);
        let broker = first + count - 2;
        let svmm = first + count - 1;
        assert!(text.contains(&format!("runs as: uid {broker}, gid {broker}")));
        assert!(text.contains("only CAP_SETUID and CAP_SETGID"));
        assert!(text.contains(&format!("then uid {svmm}, gid {svmm}, no supplementary")));
    }
    // No sandboxed device, no broker.
    let text = report(&[rng(false)], SeccompMode::Trap).unwrap();
    assert!(!text.contains("== the broker process"), "{text}");
}
