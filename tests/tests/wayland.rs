//! virtio-wl against a real compositor (Debian's weston, headless, see `tests::weston`): the
//! screenshot path checked with a host client first, then the test guest's Wayland clients
//! through svmm's wayland device, sandboxed and in-process — the registry against
//! `wayland-info`, a window checked pixel for pixel, pipes both ways, a killed worker, a guest
//! that floods the device — and the bad inputs svmm refuses in one line.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::Command;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tests::bench::figures::{self, TestLine};
use tests::bench::Mode;
use tests::binary::svmm_bin;
use tests::confinement::{self, Identity, Planned};
use tests::output::number_field;
use tests::paths::{self, TempDir};
use tests::suite::TrialResult;
use tests::weston::{self, Global, Weston, BACKGROUND};
use tests::{procfs, sandbox_report, Suite, TestVm};

/// The output the trials use: big enough for weston-simple-shm's 250 × 250 window.
const OUTPUT: (u32, u32) = (400, 300);
/// How long a guest may take for anything.
const TIMEOUT: Duration = Duration::from_secs(120);
/// Exit status of bad input, and of a bad command line (`vmm/src/exit_code.rs`).
const BAD_INPUT: i32 = 65;
const USAGE: i32 = 64;

/// The test guest with a wayland device on `socket` running `tests`.
fn guest(socket: &Path, sandboxed: bool, tests: &str) -> TestVm {
    let off = if sandboxed { "" } else { ",sandbox=off" };
    TestVm::svmm(paths::artefact("testguest.elf"))
        .device(format!("wayland={}{off}", socket.display()))
        .cmdline(format!("testguest.run={tests}"))
        .timeout(TIMEOUT)
}

/// weston-simple-shm on the host: the screenshot shows its window exactly where the scene
/// graph says, and only there. The baseline for the guest's pixel check.
fn host_client_baseline() -> TrialResult {
    let weston = Weston::start(OUTPUT.0, OUTPUT.1)?;
    let before = weston.screenshot()?;
    if (0..before.height).any(|y| (0..before.width).any(|x| before.pixel(x, y) != BACKGROUND)) {
        return Err(format!("the empty output is not all background {BACKGROUND:06x}").into());
    }
    let mut client = weston
        .client("weston-simple-shm")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("weston-simple-shm: {e}"))?;
    let result = (|| -> TrialResult {
        let deadline = Instant::now() + Duration::from_secs(10);
        let rect = loop {
            match weston.window_rect("simple-shm") {
                Ok(rect) => break rect,
                Err(e) if Instant::now() > deadline => return Err(e.into()),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        // Let it draw a frame or two.
        std::thread::sleep(Duration::from_millis(300));
        let shot = weston.screenshot()?;
        let (x0, y0, x1, y1) = rect;
        let mut inside_changed = 0u64;
        for y in 0..shot.height as i32 {
            for x in 0..shot.width as i32 {
                let changed = shot.pixel(x as u32, y as u32) != BACKGROUND;
                let inside = (x0..x1).contains(&x) && (y0..y1).contains(&y);
                if changed && !inside {
                    return Err(
                        format!("pixel ({x},{y}) changed outside the window {rect:?}").into(),
                    );
                }
                inside_changed += u64::from(changed && inside);
            }
        }
        let area = ((x1 - x0) * (y1 - y0)) as u64;
        if area != 250 * 250 || inside_changed * 10 < area * 9 {
            return Err(format!("window {rect:?}: {inside_changed} of {area} pixels drawn").into());
        }
        eprintln!("wayland: host baseline: simple-shm at {rect:?}, {inside_changed} pixels drawn");
        Ok(())
    })();
    let _ = client.kill();
    let _ = client.wait();
    result
}

/// The guest's registry, as its `wl global` lines list it, is `wayland-info`'s, and has what a
/// window needs.
fn globals(sandboxed: bool) -> TrialResult {
    let weston = Weston::start(OUTPUT.0, OUTPUT.1)?;
    let out = guest(&weston.socket(), sandboxed, "wl").run()?;
    out.assert_status(0);
    out.assert_line("testguest: wl ok globals=");
    let mut seen: Vec<Global> = out
        .lines_with("testguest: wl global ")
        .iter()
        .filter_map(|l| {
            let mut words = l.strip_prefix("testguest: wl global ")?.split(' ');
            Some(Global {
                name: words.next()?.parse().ok()?,
                interface: words.next()?.to_string(),
                version: words.next()?.parse().ok()?,
            })
        })
        .collect();
    let mut want = weston.globals()?;
    seen.sort();
    want.sort();
    if seen != want {
        return Err(format!("the guest saw {seen:?}\nwayland-info saw {want:?}").into());
    }
    for needed in ["wl_compositor", "wl_shm", "xdg_wm_base"] {
        assert!(seen.iter().any(|g| g.interface == needed), "no {needed}");
    }
    eprintln!(
        "wayland: {} globals, as wayland-info lists them",
        seen.len()
    );
    Ok(())
}

/// The guest's fullscreen window is on the output pixel for pixel.
fn pixels(sandboxed: bool) -> TrialResult {
    let weston = Weston::start(OUTPUT.0, OUTPUT.1)?;
    let mut vm = guest(&weston.socket(), sandboxed, "wl_shm").spawn()?;
    let ready = vm.wait_for_text("testguest: wl_shm ready", TIMEOUT)?;
    let shot = weston.screenshot();
    vm.write_stdin(b"\n")?;
    let out = vm.wait()?;
    out.assert_status(0);
    out.assert_line("testguest: wl_shm ok");
    let field = |name| number_field(&ready, name).ok_or(format!("no {name} in {ready:?}"));
    let (w, h) = (field("width")? as u32, field("height")? as u32);
    let seed = ready
        .split("seed=0x")
        .nth(1)
        .and_then(|s| u32::from_str_radix(s.trim(), 16).ok())
        .ok_or(format!("no seed in {ready:?}"))?;
    if (w, h) != weston.size() {
        return Err(format!("the window is {w}x{h}, the output {:?}", weston.size()).into());
    }
    let checked = weston::check_pattern(&shot?, w, h, seed)?;
    eprintln!("wayland: {checked} pixels of the guest's buffer on screen, all as drawn");
    Ok(())
}

/// A unix socket the guest's second wayland device connects to: reads the pipe end it is
/// sent to EOF and echoes the bytes back on the connection. Ignores svmm's start-up checks
/// (connections that send nothing). Returns the bytes it read. Any uid may connect: svmm run
/// as root connects as its own unprivileged uid.
fn pipe_peer(path: &Path) -> std::io::Result<JoinHandle<Result<Vec<u8>, String>>> {
    use std::os::unix::fs::PermissionsExt;
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(std::thread::spawn(move || {
        for conn in listener.incoming() {
            let conn = conn.map_err(|e| e.to_string())?;
            conn.set_read_timeout(Some(TIMEOUT))
                .map_err(|e| e.to_string())?;
            let (n, fds) = recv_fds(&conn)?;
            let Some(pipe) = fds.into_iter().next() else {
                if n == 0 {
                    continue; // svmm checking that something listens
                }
                return Err(format!("{n} bytes without a pipe"));
            };
            let mut data = Vec::new();
            std::fs::File::from(pipe)
                .read_to_end(&mut data)
                .map_err(|e| e.to_string())?;
            (&conn).write_all(&data).map_err(|e| e.to_string())?;
            return Ok(data);
        }
        Err("no connection".into())
    }))
}

/// One message and its fds from `conn`.
fn recv_fds(conn: &UnixStream) -> Result<(usize, Vec<std::os::fd::OwnedFd>), String> {
    use std::mem::MaybeUninit;
    let mut buf = [0u8; 256];
    let mut space = [MaybeUninit::uninit(); 64];
    let mut control = rustix::net::RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        conn,
        &mut [rustix::io::IoSliceMut::new(&mut buf)],
        &mut control,
        rustix::net::RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(|e| e.to_string())?;
    let mut fds = Vec::new();
    for message in control.drain() {
        if let rustix::net::RecvAncillaryMessage::ScmRights(arrived) = message {
            fds.extend(arrived);
        }
    }
    Ok((got.bytes, fds))
}

/// Compositor → guest through a pipe the guest made (weston writes its scene graph into it),
/// guest → host through a pipe whose read end the guest sends to a second device's peer.
fn pipes(sandboxed: bool) -> TrialResult {
    let weston = Weston::start(OUTPUT.0, OUTPUT.1)?;
    let dir = TempDir::new("wl-pipe");
    let peer_path = dir.path().join("peer.sock");
    let peer = pipe_peer(&peer_path)?;
    let off = if sandboxed { "" } else { ",sandbox=off" };
    let out = guest(&weston.socket(), sandboxed, "wl_pipe")
        .device(format!("wayland={}{off}", peer_path.display()))
        .run()?;
    out.assert_status(0);
    let line = out.assert_line("testguest: wl_pipe ok").to_string();
    let got = peer.join().map_err(|_| "peer panicked")??;
    let want: Vec<u8> = (0..3000).map(|i| b'a' + (i % 26) as u8).collect();
    if got != want {
        return Err(format!("the peer read {} bytes, not the guest's 3000", got.len()).into());
    }
    let from_compositor = number_field(&line, "from_compositor").unwrap_or(0);
    assert!(from_compositor > 0, "{line}");
    eprintln!("wayland: {from_compositor} bytes from weston, 3000 to the host, through pipes");
    Ok(())
}

/// Unix-socket fds weston holds, polled until it is `want` (or 5 s have passed).
fn weston_sockets_become(weston: &Weston, want: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = weston.sockets();
        if now == want || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// svmm's plan for a sandboxed wayland device on `socket` (`--print-sandbox`).
fn planned(socket: &Path) -> Result<Planned, String> {
    let out = Command::new(svmm_bin())
        .args(["--print-sandbox", "--mem", "128", "--device"])
        .arg(format!("wayland={}", socket.display()))
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    Planned::parse(sandbox_report::section(&text, "== wayland#0"))
}

/// A wayland worker with a window on screen is confined like every worker (`tests::confinement`,
/// from `/proc`), holding exactly its two queues' eventfds, its service channel, the one
/// compositor connection svmm made for it and the buffer's memfd. Killed: one line from svmm
/// (a new worker, `--on-worker-exit=restart` being the default, and the device needing reset),
/// weston sees the guest's connection close, the VM runs on and the guest finds the device
/// broken; its next window — same region offsets, a new connection — is served by the new
/// worker (svmm dropped the dead one's mappings and connections first).
fn killed_worker() -> TrialResult {
    const SHM_READY: &str = "testguest: wl_shm ready";
    let weston = Weston::start(OUTPUT.0, OUTPUT.1)?;
    let idle = weston.sockets();
    let mut vm = guest(&weston.socket(), true, "wl_shm,echo,wl_shm")
        .cmdline("testguest.run=wl_shm,echo,wl_shm testguest.echo_timeout_ms=60000")
        .mem_mib(128)
        .spawn()?;
    vm.wait_for_line("testguest: wl_shm ready", TIMEOUT)?;
    // The guest's connection (and, for a moment, svmm's start-up check of the socket).
    let connected = weston.sockets();
    if connected <= idle {
        return Err(format!("weston holds {connected} sockets, {idle} before the guest").into());
    }
    let workers = procfs::workers(vm.pid());
    let [worker] = workers[..] else {
        return Err(format!("expected one worker, found {workers:?}").into());
    };
    let identity = match confinement::is_root() {
        true => Identity::Root,
        false => Identity::Unprivileged,
    };
    // svmm's plan for it (fds 3-7 fixed, 8-9 the queues, 10 the service channel; NOFILE with
    // room for 2 fds per vfd, FSIZE the region), plus what the guest's window added at run
    // time: the compositor connection svmm made for its context and the buffer's memfd.
    let mut planned = planned(&weston.socket())?;
    for (name, want) in [("NOFILE", 3 + 8 + 2 * 256 + 16), ("FSIZE", 256 << 20)] {
        if planned.rlimits.get(name) != Some(&Some(want)) {
            return Err(format!(
                "planned {name} {:?}, want {want}",
                planned.rlimits.get(name)
            )
            .into());
        }
    }
    planned.created.extend([
        "the compositor connection svmm made for the guest's context".to_string(),
        "the guest's buffer (memfd)".to_string(),
    ]);
    let fds = procfs::fds(worker)?;
    let unplanned = |prefix: &str| {
        fds.iter()
            .filter(|(fd, t)| !planned.fds.contains_key(fd) && t.starts_with(prefix))
            .count()
    };
    let runtime = (unplanned("socket:"), unplanned("/memfd:"));
    let mut problems = confinement::problems(worker, vm.pid(), identity, &planned)?;
    if runtime != (1, 1) {
        problems.push(format!(
            "{runtime:?} unplanned sockets and memfds, want (1, 1)"
        ));
    }
    if !problems.is_empty() {
        vm.kill();
        return Err(format!("wayland worker: {}\nfds: {fds:?}", problems.join("; ")).into());
    }
    // SAFETY: kill has no memory-safety preconditions; `worker` is the broker's child, alive
    // a moment ago and reaped by nobody but the broker.
    unsafe { libc::kill(worker as i32, libc::SIGKILL) };
    let after = weston_sockets_become(&weston, idle);
    vm.write_stdin(b"\nafter-kill\n")?;
    // The second window, from the new worker.
    let deadline = Instant::now() + TIMEOUT;
    while vm.stdout_so_far().matches(SHM_READY).count() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    vm.write_stdin(b"\n")?;
    let out = vm.wait()?;
    out.log("svmm testguest wl_shm + worker killed, wl_shm again");
    let report = out.assert_worker_report(worker, "wayland#0", "SIGKILL");
    let lost = "device needs reset: its requests cannot be taken again (its compositor \
                connections, shared-memory buffers and pipes died with the worker)";
    assert!(
        report.contains("; restart 1 (pid ") && report.contains(lost),
        "{}",
        out.report()
    );
    let fail = out.assert_line("testguest: wl_shm FAIL").to_string();
    assert!(fail.contains("needs_reset"), "{}", out.report());
    out.assert_line("testguest: echo ok line=after-kill");
    out.assert_line("testguest: wl_shm ok");
    assert_eq!(out.testguest_summary(), Some((2, 1)), "{}", out.report());
    eprintln!("wayland: {report}\nwayland: then the guest: {fail}, then wl_shm ok");
    if after != idle {
        return Err(
            format!("weston still holds {after} sockets ({idle} idle) after the kill").into(),
        );
    }
    eprintln!("wayland: killed worker restarted, VM ran on, weston back to {idle} sockets");
    Ok(())
}

/// Resident memory of `pid`, its children (the broker) and its workers, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::iter::once(pid)
        .chain(procfs::children(pid))
        .chain(procfs::workers(pid))
        .filter_map(|p| procfs::status(p).ok())
        .filter_map(|s| {
            s.get("VmRSS")
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .sum()
}

/// A guest that floods the device gets refusals at the limits, and svmm's memory stays put.
fn flood(sandboxed: bool) -> TrialResult {
    let weston = Weston::start(OUTPUT.0, OUTPUT.1)?;
    let mut vm = guest(&weston.socket(), sandboxed, "wl_flood").spawn()?;
    vm.wait_for_line("testguest: wl_flood begin", TIMEOUT)?;
    let before = rss_kib(vm.pid());
    vm.write_stdin(b"\n")?;
    let full = vm.wait_for_text("testguest: wl_flood full", TIMEOUT)?;
    let during = rss_kib(vm.pid());
    vm.write_stdin(b"\n")?;
    let out = vm.wait()?;
    out.assert_status(0);
    let line = out.assert_line("testguest: wl_flood ok").to_string();
    let field = |name| number_field(&line, name).unwrap_or(u64::MAX);
    // The device's limits: 16 contexts, then 256 vfds in all.
    assert_eq!(field("contexts"), 16, "{line}");
    assert_eq!(field("vfds"), 256 - 16, "{line}");
    assert!(
        line.contains("ctx_refused=0x1101") && line.contains(" refused=0x1101"),
        "{line}"
    );
    let grown = during.saturating_sub(before);
    eprintln!("wayland: {full:?}; svmm (+ worker) RSS {before} KiB → {during} KiB");
    if grown > 16 << 10 {
        return Err(format!("svmm's memory grew by {grown} KiB during the flood").into());
    }
    Ok(())
}

/// svmm with `args`, its environment without Wayland variables plus `env`: exit status and
/// stderr.
fn svmm(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(svmm_bin())
        .args(args)
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("XDG_RUNTIME_DIR")
        .envs(env.iter().copied())
        .output()
        .expect("svmm runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One line on stderr, starting `svmm:`, containing `needle`, with exit status `code`.
fn one_line(result: (Option<i32>, String), code: i32, needle: &str) -> TrialResult {
    let (status, stderr) = result;
    let lines: Vec<&str> = stderr.lines().collect();
    if status != Some(code)
        || lines.len() != 1
        || !lines[0].starts_with("svmm:")
        || !lines[0].contains(needle)
    {
        return Err(format!(
            "want exit {code} and one line with {needle:?}; got {status:?}:\n{stderr}"
        )
        .into());
    }
    Ok(())
}

fn bad_inputs() -> TrialResult {
    let kernel = paths::artefact("testguest.elf");
    let kernel = kernel.to_str().unwrap();
    let dir = TempDir::new("wl-bad");
    let run =
        |device: &str, env: &[(&str, &str)]| svmm(&["--kernel", kernel, "--device", device], env);
    one_line(run("wayland", &[]), BAD_INPUT, "no compositor socket")?;
    let missing = dir.path().join("nothing");
    one_line(
        run(&format!("wayland={}", missing.display()), &[]),
        BAD_INPUT,
        "no such socket",
    )?;
    let file = dir.file("file", b"");
    one_line(
        run(&format!("wayland={}", file.display()), &[]),
        BAD_INPUT,
        "not a socket",
    )?;
    let dead = dir.path().join("dead.sock");
    drop(UnixListener::bind(&dead)?);
    one_line(
        run(&format!("wayland={}", dead.display()), &[]),
        BAD_INPUT,
        "no compositor is listening",
    )?;
    // The environment's socket when none is given: XDG_RUNTIME_DIR/WAYLAND_DISPLAY.
    let runtime = dir.path().to_str().unwrap();
    one_line(
        run(
            "wayland",
            &[
                ("XDG_RUNTIME_DIR", runtime),
                ("WAYLAND_DISPLAY", "dead.sock"),
            ],
        ),
        BAD_INPUT,
        "dead.sock",
    )?;
    let live = dir.path().join("live.sock");
    let _listener = UnixListener::bind(&live)?;
    for bad in ["shm=0", "shm=4097", "shm=x", "bogus=1"] {
        one_line(
            run(&format!("wayland={},{bad}", live.display()), &[]),
            USAGE,
            "wayland",
        )?;
    }
    Ok(())
}

/// svmm run as root connects to the compositor as its own unprivileged uid (the last id of
/// `--worker-ids`), so a compositor socket only its owner may reach is refused in one line at
/// start-up (exit 65), after svmm dropped its privileges and before any device starts (the
/// other trials' weston lets every uid reach its socket).
fn unreachable_socket() -> TrialResult {
    let weston = Weston::start(OUTPUT.0, OUTPUT.1)?;
    weston.only_owner()?;
    let before = weston.sockets();
    let kernel = paths::artefact("testguest.elf");
    let kernel = kernel.to_str().unwrap();
    for sandbox in ["", ",sandbox=off"] {
        let device = format!("wayland={}{sandbox}", weston.socket().display());
        one_line(
            svmm(&["--kernel", kernel, "--device", device.as_str()], &[]),
            BAD_INPUT,
            "which cannot: Permission denied",
        )?;
    }
    if weston_sockets_become(&weston, before) != before {
        return Err("weston kept a connection of the refused svmm".into());
    }
    Ok(())
}

/// `--print-sandbox` shows the wayland worker: its service channel, its shared-memory window,
/// the wl profile's calls and the service thread's.
fn print_sandbox() -> TrialResult {
    let dir = TempDir::new("wl-print");
    let socket = dir.path().join("w.sock");
    let _listener = UnixListener::bind(&socket)?;
    let spec = format!("wayland={},shm=64", socket.display());
    let out = Command::new(svmm_bin())
        .args(["--print-sandbox", "--device", &spec])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "== wayland#0: sandboxed worker process",
        "service channel (SOCK_SEQPACKET",
        &format!("new connections to {}", socket.display()),
        "shared-memory region 0x100000000..0x104000000",
        "--shm-window=100000000:4000000",
        "memfd_create",
        "pipe2",
        "svc-DEVICE",
        "vmm_service",
    ] {
        assert!(text.contains(needle), "no {needle:?} in\n{text}");
    }
    // The worker's filter: 29 calls (crosvm's wl device: 96), none that reaches out.
    let worker = sandbox_report::section(&text, "== wayland#0");
    let mut calls = sandbox_report::allowed_syscalls(worker);
    // One rule per argument pattern (fcntl's seals and flags): distinct calls.
    calls.sort_unstable();
    calls.dedup();
    assert_eq!(calls.len(), 29, "{calls:?}");
    for outward in ["socket", "connect", "open", "openat", "execve", "ioctl"] {
        assert!(!calls.contains(&outward), "{outward} allowed: {calls:?}");
    }
    let command = sandbox_report::command_line(worker).unwrap_or_default();
    assert_eq!(
        sandbox_report::argument(command, "--shm-window="),
        Some("--shm-window=100000000:4000000")
    );
    Ok(())
}

/// The `bench_wl_*` tests (50 ms each) on a full-screen output: result lines as the benchmark
/// harness reads them (`tests::bench::figures`), frames of the output's size. Never timed here.
fn bench_tests(sandboxed: bool) -> TrialResult {
    let weston = Weston::start(640, 480)?;
    let tests = figures::WL_BENCH_TESTS.join(",");
    let out = guest(&weston.socket(), sandboxed, &tests)
        .cmdline(format!(
            "testguest.run={tests} testguest.irq=poll testguest.bench_ms=50"
        ))
        .run()?;
    out.log(&format!("svmm testguest {tests}"));
    for test in figures::WL_BENCH_TESTS {
        let Some(TestLine::Ok(fields, line)) = figures::find_result(out.lines(), test) else {
            return Err(format!("no `{test} ok` line\n{}", out.report()).into());
        };
        eprintln!("    {line}");
        let samples = figures::guest_samples(test, &fields, Mode::Poll)
            .map_err(|e| format!("{test}: {e}: {line}"))?;
        if samples.is_empty() || samples.iter().any(|(_, v)| *v <= 0.0) {
            return Err(format!("{test}: figures {samples:?} from {line}").into());
        }
    }
    let Some(TestLine::Ok(fps, _)) = figures::find_result(out.lines(), "bench_wl_fps") else {
        unreachable!("checked above");
    };
    assert_eq!(
        (fps["width"].as_str(), fps["height"].as_str()),
        ("640", "480")
    );
    assert_eq!(out.testguest_summary(), Some((2, 0)), "{}", out.report());
    Ok(())
}

fn main() {
    let missing = weston::missing_programs();
    let mut suite = Suite::new("wayland").sequential().test_unless(
        "host_client_baseline",
        missing.clone(),
        host_client_baseline,
    );
    for (mode, sandboxed) in [("sandboxed", true), ("in_process", false)] {
        suite = suite
            .test_unless(&format!("globals_{mode}"), missing.clone(), move || {
                globals(sandboxed)
            })
            .test_unless(&format!("pixels_{mode}"), missing.clone(), move || {
                pixels(sandboxed)
            })
            .test_unless(&format!("pipes_{mode}"), missing.clone(), move || {
                pipes(sandboxed)
            })
            .test_unless(&format!("flood_{mode}"), missing.clone(), move || {
                flood(sandboxed)
            })
            .test_unless(&format!("bench_tests_{mode}"), missing.clone(), move || {
                bench_tests(sandboxed)
            });
    }
    suite
        .test_unless("killed_worker", missing, killed_worker)
        .test("bad_inputs", bad_inputs)
        .test_unless(
            "unreachable_socket",
            (!confinement::is_root()).then(|| {
                "svmm keeps its caller's uid when not run as root (nothing to refuse)".to_string()
            }),
            unreachable_socket,
        )
        .test("print_sandbox", print_sandbox)
        .run();
}
