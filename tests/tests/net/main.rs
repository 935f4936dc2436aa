//! virtio-net end to end, with real peers: every trial makes its own network namespace (a tap,
//! or a veth uplink for passt), runs `svmm-netpeer` and svmm inside it (`ip netns exec`), and
//! no frame leaves it. What the guest reports is checked against what the peer and the host's
//! own counters saw.
//!
//! - The test guest's `net`, `net_mq` and `net_offload` on a multi-queue tap, sandboxed and
//!   in-process: ARP, pings, UDP echoes with verified checksums, two queue pairs, a partial
//!   checksum the peer completes and checks, a 64 KiB TCPv4 GSO frame over merged buffers,
//!   offloads switched off through the control queue (the host then segments).
//! - `net_passt` against a real passt, sandboxed and in-process: a DHCP lease, a UDP echo through
//!   passt to the peer; passt is gone when svmm is.
//! - Rate limits: the guest's transmit and receive benchmarks stay near the packet rates given.
//! - A SIGKILLed net worker, and every misbehaving-worker mode (`fault=`) including net's own
//!   tap probe: one line from svmm, the VM and the other device keep running (`faults`).
//! - Bad input, one line each with the documented exit status: options, taps that are missing,
//!   busy, without vnet header, not multi-queue, not taps, not ours; passt missing; fd=N.
//! - `--print-sandbox` and `/proc`: the worker holds its tap queue fds and nothing else.
//! - Linux: netconsole over a tap, `ip=dhcp` over passt, a user-space ping where user space
//!   runs (`linux`).

mod faults;
mod linux;

use std::time::Duration;

use tests::confinement::{self, Identity, Planned};
use tests::host::no_hw_virt_reason;
use tests::mode::Mode;
use tests::netns::{self, NetNs, Peer};
use tests::output::{number_field, queue_counters, stats_line};
use tests::suite::TrialResult;
use tests::{paths, procfs, require_kvm, sandbox_report, Suite, TestVm, VmOutput};

use linux::{linux_dhcp_passt, linux_netconsole_tap, linux_userspace_ping_tap};

const PEER: &str = env!("CARGO_BIN_EXE_svmm-netpeer");
const TIMEOUT: Duration = Duration::from_secs(120);
/// svmm's exit statuses (`vmm/src/exit_code.rs`).
const USAGE: i32 = 64;
const BAD_INPUT: i32 = 65;
const SETUP_FAILED: i32 = 67;
/// The tap's address and the guest's (the test guest's defaults).
const TAP_CIDR: &str = "10.77.0.1/24";
/// passt copies the uplink's address and gateway to the guest.
const UPLINK_CIDR: &str = "10.79.0.2/24";
const GATEWAY: &str = "10.79.0.1";
/// What the test guest prints when its tests are done and it idles.
const SLEEPING: &str = "testguest: sleep ms=";

fn main() {
    let ns_skip = netns::missing_reason();
    let passt_skip = netns::passt_missing_reason();
    let linux_skip = std::env::var_os("SVMM_SKIP_LINUX")
        .map(|_| "SVMM_SKIP_LINUX=1 is set: Linux boots skipped for a quick run".to_string());
    let mut suite = Suite::new("net").sequential();
    for mode in Mode::BOTH {
        suite = suite
            .test_unless(&mode.trial("guest_tap"), ns_skip.clone(), move || {
                guest_tap(mode)
            })
            .test_unless(&mode.trial("guest_passt"), passt_skip.clone(), move || {
                guest_passt(mode)
            });
    }
    suite
        .test_unless("rate_limits", ns_skip.clone(), rate_limits)
        .test_unless(
            "drops_counted_apart_from_errors",
            ns_skip.clone(),
            drops_not_errors,
        )
        .test_unless("worker_sigkill_restarted", ns_skip.clone(), || {
            faults::worker_sigkill(true)
        })
        .test_unless("worker_sigkill_kept_dead", ns_skip.clone(), || {
            faults::worker_sigkill(false)
        })
        .test_unless(
            "seccomp_violation_named",
            ns_skip.clone(),
            faults::seccomp_violation,
        )
        .test_unless("malicious_worker_garbage", ns_skip.clone(), || {
            faults::malicious("garbage")
        })
        .test_unless("malicious_worker_silent", ns_skip.clone(), || {
            faults::malicious("silent")
        })
        .test_unless("malicious_worker_flood", ns_skip.clone(), || {
            faults::malicious("flood")
        })
        .test_unless("malicious_worker_fds", ns_skip.clone(), || {
            faults::malicious("fds")
        })
        .test_unless("tap_probe_stopped", ns_skip.clone(), faults::host_probe)
        .test_unless("escape_refused", ns_skip.clone(), faults::escape)
        .test_unless(
            "worker_exit_stops_vm",
            ns_skip.clone(),
            faults::exit_stops_vm,
        )
        .test_unless("bad_taps", ns_skip.clone(), bad_taps)
        .test_unless(
            "worker_holds_its_taps",
            ns_skip.clone(),
            worker_holds_its_taps,
        )
        .test("bad_specs", bad_specs)
        .test("passt_missing", passt_missing)
        .test("print_sandbox_net", print_sandbox_net)
        .test_unless(
            "linux_netconsole_tap",
            linux_skip.clone().or(ns_skip.clone()),
            linux_netconsole_tap,
        )
        .test_unless(
            "linux_userspace_ping_tap",
            linux_skip
                .clone()
                .or(ns_skip.clone())
                .or_else(no_hw_virt_reason),
            linux_userspace_ping_tap,
        )
        .test_unless(
            "linux_dhcp_passt",
            linux_skip.or(passt_skip),
            linux_dhcp_passt,
        )
        .run()
}

/// The test guest with `cmdline`, its devices given as `specs`, run inside `ns`.
fn guest(ns: &NetNs, cmdline: &str, specs: &[String]) -> TestVm {
    require_kvm();
    let mut vm = TestVm::svmm(paths::artefact("testguest.elf"))
        .cmdline(cmdline)
        .mem_mib(128)
        .timeout(TIMEOUT)
        .wrapper(ns.exec());
    for spec in specs {
        vm = vm.device(spec.clone());
    }
    vm
}

/// A namespace with the multi-queue tap `tap0` at [`TAP_CIDR`] and the peer on it.
fn tap_ns(tag: &str, peer_args: &[&str]) -> Result<(NetNs, Peer), String> {
    let ns = NetNs::new(tag).map_err(|e| e.to_string())?;
    ns.tap("tap0", TAP_CIDR, true).map_err(|e| e.to_string())?;
    let mut args = vec!["--tap", "tap0", "--port", "7777", "--limit", "600"];
    args.extend_from_slice(peer_args);
    let peer = ns.peer(PEER, &args).map_err(|e| e.to_string())?;
    Ok((ns, peer))
}

/// The number after `name=` on the guest line starting with `prefix`.
fn field(out: &VmOutput, prefix: &str, name: &str) -> u64 {
    let line = out.assert_line(prefix);
    number_field(line, name).unwrap_or_else(|| panic!("no {name}= in {line}\n{}", out.report()))
}

/// `net`, `net_mq`, `net_offload` on a two-pair device.
fn guest_tap(mode: Mode) -> TrialResult {
    let (ns, mut peer) = tap_ns("tap", &[])?;
    let before = ns.counter("tap0", "rx_packets")?;
    let spec = format!("net,tap=tap0,queues=2{}", mode.option());
    let out = guest(&ns, "testguest.run=net,net_mq,net_offload", &[spec]).run()?;
    let seen = peer.stop();
    out.log(&format!("svmm testguest net on a tap ({})", mode.name()));
    let net = out.assert_line("testguest: net ok mac=52:54:00:12:34:56 mtu=1500 peer_mac=");
    assert!(net.contains("pings=4") && net.contains("udp=5"), "{net}");
    assert!(
        field(&out, "testguest: net_mq ok", "rx_q1") > 0,
        "\n{}",
        out.report()
    );
    let offload = out.assert_line("testguest: net_offload ok csum=partial_ok gso_bytes=65000");
    assert!(
        field(&out, "testguest: net_offload ok", "num_buffers") > 1,
        "a 64 KiB frame must span merged buffers: {offload}"
    );
    assert!(
        field(&out, "testguest: net_offload ok", "offloads_off_segments") > 1,
        "{offload}"
    );
    assert!(
        seen.contains("CSUM-OK partial"),
        "the peer must have completed and checked the partial checksum\n{seen}"
    );
    let echoed = seen
        .lines()
        .find_map(|l| number_field(l, "echoed"))
        .unwrap_or(0);
    assert!(echoed >= 13, "the peer echoed {echoed} datagrams\n{seen}");
    // The host's own count of frames the device wrote into the tap.
    let written = ns.counter("tap0", "rx_packets")? - before;
    assert!(written >= 20, "the tap saw {written} frames from the guest");
    let stats = format!("svmm: net#0 ({}): q0 requests=", mode.name());
    assert!(
        out.stderr
            .lines()
            .any(|l| l.starts_with(&stats) && l.contains(", q3 requests=")),
        "no statistics line for both pairs\n{}",
        out.report()
    );
    out.assert_no_panic();
    assert_eq!(out.testguest_summary(), Some((3, 0)), "\n{}", out.report());
    out.assert_status(0);
    Ok(())
}

/// `net_passt`: DHCP from passt, then a UDP echo through it to the peer on the namespace's
/// loopback (passt maps the gateway address to the host).
fn guest_passt(mode: Mode) -> TrialResult {
    let ns = NetNs::new("passt")?;
    ns.uplink("up0", UPLINK_CIDR, GATEWAY)?;
    let mut peer = ns.peer(PEER, &["--port", "7777", "--limit", "600"])?;
    let spec = format!("net,passt{}", mode.option());
    let out = guest(&ns, "testguest.run=net_passt", &[spec]).run()?;
    let seen = peer.stop();
    out.log(&format!("svmm testguest net on passt ({})", mode.name()));
    out.assert_line(&format!(
        "testguest: net_passt ok lease=10.79.0.2 mask=255.255.255.0 router={GATEWAY} "
    ));
    assert!(
        seen.contains("echoed=") && !seen.contains("echoed=0 "),
        "{seen}"
    );
    // passt was svmm's child and was reaped at its end.
    let left = std::process::Command::new("pgrep")
        .args(["-f", "passt --foreground --quiet --fd 3 --mtu"])
        .output()?;
    assert!(
        String::from_utf8_lossy(&left.stdout).trim().is_empty(),
        "passt outlived svmm"
    );
    out.assert_no_panic();
    assert_eq!(out.testguest_summary(), Some((1, 0)), "\n{}", out.report());
    // svmm killed and reaped passt under its own filter (through a pidfd) and ended cleanly.
    out.assert_status(0);
    Ok(())
}

/// 100 frames/s each way (bursts of 5): the guest's benchmarks, which would otherwise move tens
/// of thousands of frames per second, see about that. Only the upper bound is checked (a
/// loaded host can only make them slower).
fn rate_limits() -> TrialResult {
    let (ns, _peer) = tap_ns("rate", &["--no-capture"])?;
    let spec = "net,tap=tap0,tx-pps=100:5,rx-pps=100:5".to_string();
    let out = guest(
        &ns,
        "testguest.run=bench_net_tx64,bench_net_rx64 testguest.irq=poll testguest.bench_ms=500",
        &[spec],
    )
    .run()?;
    out.log("svmm testguest net with rate limits");
    for test in ["bench_net_tx64", "bench_net_rx64"] {
        let prefix = format!("testguest: {test} ok");
        let fps = field(&out, &prefix, "fps");
        assert!(
            (1..=150).contains(&fps),
            "{test}: {fps} frames/s under a limit of 100/s\n{}",
            out.report()
        );
    }
    Ok(())
}

/// A tap that is down refuses every frame written to it (`EIO`): the guest's ARP requests are
/// valid frames the host drops, so the transmit queue counts them as drops (`drops=`), not as
/// errors (`errors=` stays 0: the driver did nothing wrong), and sends none. The guest's `net`
/// test fails with `arp_timeout` (three tries), as it must without a peer.
fn drops_not_errors() -> TrialResult {
    let (ns, _peer) = tap_ns("drops", &[])?;
    ns.ip(&["link", "set", "tap0", "down"])?;
    let out = guest(&ns, "testguest.run=net", &["net,tap=tap0".to_string()]).run()?;
    out.log("svmm testguest net on a tap that is down");
    out.assert_line("testguest: net FAIL arp_timeout");
    out.assert_no_panic();
    let line = stats_line(&out.stderr, "net#0").ok_or_else(|| out.report())?;
    let queues = queue_counters(line).ok_or_else(|| format!("unreadable: {line}"))?;
    assert_eq!(queues.len(), 3, "rx, tx, ctrl: {line}");
    let tx = queues[1];
    assert!(
        tx.drops >= 3,
        "three ARP requests refused by the tap: {line}"
    );
    assert_eq!((tx.requests, tx.bytes), (0, 0), "nothing was sent: {line}");
    assert!(
        queues.iter().all(|q| q.errors == 0),
        "a refused frame is a drop, not an error: {line}"
    );
    Ok(())
}

/// svmm on `specs` inside `ns` (or outside with `None`) must fail with `status` and one
/// `svmm: error:` line containing `needle`.
fn refused(ns: Option<&NetNs>, specs: &[&str], status: i32, needle: &str) -> TrialResult {
    require_kvm();
    let mut vm = TestVm::svmm(paths::artefact("testguest.elf"))
        .cmdline("testguest.run=none")
        .timeout(Duration::from_secs(60));
    if let Some(ns) = ns {
        vm = vm.wrapper(ns.exec());
    }
    for spec in specs {
        vm = vm.device(spec.to_string());
    }
    let out = vm.run()?;
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("svmm: "))
        .collect();
    assert_eq!(out.status, Some(status), "{specs:?}\n{}", out.report());
    assert_eq!(errors.len(), 1, "{specs:?}: not one line\n{}", out.report());
    assert!(
        errors[0].contains(needle),
        "{specs:?}: {:?} does not say {needle:?}",
        errors[0]
    );
    out.assert_no_panic();
    Ok(())
}

fn bad_specs() -> TrialResult {
    let cases: [(&str, i32, &str); 8] = [
        (
            "net",
            USAGE,
            "net needs an endpoint: tap=NAME, passt or fd=N",
        ),
        (
            "net,tap=a,fd=3",
            USAGE,
            "give only one of tap=NAME, passt and fd=N",
        ),
        ("net,tap=a,mac=01:00:5e:00:00:01", USAGE, "unicast"),
        ("net,tap=a,queues=9", USAGE, "=N with N from 1 to 8"),
        (
            "net,tap=a,speed=10",
            USAGE,
            "unknown option 'speed' for net",
        ),
        ("net,tap=a,tx-rate=fast", USAGE, "BYTES[:BURST]"),
        ("net,fd=4,queues=2", USAGE, "queues=2 needs tap=NAME"),
        ("net,fd=99", BAD_INPUT, "fd 99 is not open"),
    ];
    for (spec, status, needle) in cases {
        refused(None, &[spec], status, needle)?;
    }
    Ok(())
}

/// Taps svmm cannot use: each one line naming the tap, exit 67, no worker started.
fn bad_taps() -> TrialResult {
    let ns = NetNs::new("badtap")?;
    ns.tap("single", "10.80.0.1/24", false)?;
    ns.tap("multi", "10.81.0.1/24", true)?;
    ns.uplink("veth0", "10.82.0.1/24", "10.82.0.2")?;
    refused(
        Some(&ns),
        &["net,tap=nosuch"],
        SETUP_FAILED,
        "no network interface 'nosuch'",
    )?;
    refused(
        Some(&ns),
        &["net,tap=veth0"],
        SETUP_FAILED,
        "'veth0' is not a tap",
    )?;
    refused(
        Some(&ns),
        &["net,tap=single,queues=2"],
        SETUP_FAILED,
        "tap 'single' was created without multi_queue, but queues=2 needs it",
    )?;
    // Another program holds the single-queue tap: busy. It holds a queue of the multi-queue
    // tap without a vnet header: svmm's queues would have none either.
    let _holder = ns.peer(PEER, &["--hold-queue", "single", "--port", "7787"])?;
    let _holder2 = ns.peer(PEER, &["--hold-queue", "multi", "--port", "7797"])?;
    refused(
        Some(&ns),
        &["net,tap=single"],
        SETUP_FAILED,
        "tap 'single' is busy",
    )?;
    refused(
        Some(&ns),
        &["net,tap=multi"],
        SETUP_FAILED,
        "tap 'multi' has no vnet header",
    )?;
    Ok(())
}

/// `net,passt` where PATH has no passt.
fn passt_missing() -> TrialResult {
    require_kvm();
    let dir = paths::TempDir::new("nopasst");
    let out = TestVm::svmm(paths::artefact("testguest.elf"))
        .cmdline("testguest.run=none")
        .device("net,passt")
        .env("PATH", dir.path())
        .run()?;
    out.assert_status(USAGE);
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("svmm: "))
        .collect();
    assert!(
        errors.len() == 1 && errors[0].contains("passt is not installed (not found on PATH)"),
        "{errors:?}"
    );
    Ok(())
}

/// `--print-sandbox` shows the tap queue fds and the one ioctl the worker may make; it opens
/// nothing (no namespace, no tap needed).
fn print_sandbox_net() -> TrialResult {
    let out = TestVm::svmm(paths::artefact("testguest.elf"))
        .args(["--print-sandbox"])
        .device("net,tap=tap7,queues=2,tx-rate=10M")
        .run()?;
    out.assert_status(0);
    let text = &out.stdout;
    for want in [
        "== net#0: sandboxed worker process",
        "tap tap7, queue pair 0 (/dev/net/tun attached with TUNSETIFF",
        "tap tap7, queue pair 1",
        "seccomp: profile \"net\"",
        "ioctl",
        "TUNSETOFFLOAD (0x400454d0) only",
        "timerfd_settime",
        "one timerfd per rate-limited direction",
    ] {
        assert!(
            text.contains(want),
            "--print-sandbox lacks {want:?}\n{text}"
        );
    }
    Ok(())
}

/// The sandboxed worker seen from `/proc`, confined like every worker (`tests::confinement`)
/// and holding exactly what svmm planned for it (`--print-sandbox` of the same spec): its two
/// tap queue fds and the timerfd of its one rate-limited direction, no other host file. The
/// plan's limits by ARCHITECTURE.md's formulas: NOFILE 3 + 12 inherited + 16, AS guest RAM +
/// 64 MiB + one frame each way per queue pair with its header (devices::net's `PORT_BYTES`).
fn worker_holds_its_taps() -> TrialResult {
    let (ns, _peer) = tap_ns("proc", &[])?;
    let spec = "net,tap=tap0,queues=2,tx-rate=100M";
    let report = TestVm::svmm(paths::artefact("testguest.elf"))
        .args(["--print-sandbox", "--seccomp=trap"])
        .mem_mib(128)
        .device(spec)
        .wrapper(ns.exec())
        .timeout(TIMEOUT)
        .run()?;
    let section = sandbox_report::section(&report.stdout, "== net#0: ");
    let planned = Planned::parse(section).map_err(|e| format!("{e}\n{}", report.report()))?;
    let mut problems = Vec::new();
    // Inherited: 3..=7 control, RAM, status page, irqfd, stop; 8..=12 the queues; 13, 14 the
    // taps (the timerfd is made by the worker).
    let address_space: u64 = (128 << 20) + (64 << 20) + 2 * 2 * (12 + 65_550);
    for (name, want) in [
        ("NPROC", 0),
        ("CORE", 0),
        ("NOFILE", 3 + 12 + 16),
        ("FSIZE", 0),
        ("AS", address_space >> 20 << 20),
    ] {
        if planned.rlimits.get(name) != Some(&Some(want)) {
            problems.push(format!(
                "planned {name} {:?}, want {want}",
                planned.rlimits.get(name)
            ));
        }
    }
    let taps = planned
        .fds
        .values()
        .filter(|what| what.contains("/dev/net/tun"))
        .count();
    if taps != 2 {
        problems.push(format!(
            "{taps} tap queue fds planned, want 2: {:?}",
            planned.fds
        ));
    }
    let mut running = guest(
        &ns,
        "testguest.run=net testguest.sleep_ms=30000",
        &[spec.to_string()],
    )
    .args(["--seccomp=trap"])
    .spawn()?;
    running.wait_for_line(SLEEPING, TIMEOUT)?;
    let svmm = running.pid();
    let worker = procfs::workers(svmm)
        .into_iter()
        .next()
        .ok_or("no worker")?;
    let identity = if confinement::is_root() {
        Identity::Root
    } else {
        Identity::Unprivileged
    };
    let confined = confinement::problems(worker, svmm, identity, &planned);
    let fds = procfs::fds(worker);
    running.kill();
    let out = running.wait()?;
    out.log("svmm testguest net, worker from /proc");
    problems.extend(confined.map_err(|e| format!("reading /proc/{worker}: {e}"))?);
    assert!(
        problems.is_empty(),
        "the net worker is not confined as planned: {problems:?}\nfds: {fds:?}\nplan:\n{section}"
    );
    Ok(())
}
