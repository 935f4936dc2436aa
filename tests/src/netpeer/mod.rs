//! `svmm-netpeer`: the real peer of the net tests, run inside the network namespace a test
//! made (never anywhere else). It binds to the namespace's addresses only and stops when its
//! stdin closes or its time limit passes, whichever comes first.
//!
//! Services (each a thread):
//! - **echo** on UDP `--port P`: every datagram is sent back to its sender.
//! - **commands** on UDP `P + 1`, one per datagram, answered to the sender:
//!   - `CSUM <anything>`: the peer finds the frame that carried this very datagram among those
//!     captured on the tap (`--tap`, an `AF_PACKET` socket with `PACKET_VNET_HDR`), completes
//!     its checksum as a NIC would if the vnet header asks for it, checks it, and answers
//!     `CSUM-OK partial|full` or `CSUM-BAD <why>`;
//!   - `GSO <bytes> <seed>`: answers `GSO-SENT <bytes>`, then injects one TCPv4 frame of that
//!     payload into the tap with a GSO vnet header (the host kernel passes it whole to the
//!     device when the tap's offloads allow, else segments it first).
//!   - `BLAST <frame bytes> <gso 0|1> <ms> <guest MAC>` (benchmarks): answers `BLAST-OK`, then
//!     injects frames to that MAC for `ms` as fast as it can — UDP frames of that size, or
//!     64 KiB TCPv4 GSO frames — in batches of [`BLAST_BATCH`] (`sendmmsg`); `STOP` ends it
//!     early (not answered).
//! - **netconsole** (`--netconsole PORT`): prints every datagram as `netpeer: netconsole <text>`.
//!
//! - **holding a queue** (`--hold-queue TAP`): attaches one queue of the tap without a vnet
//!   header, as another program would, for svmm's busy-tap and no-vnet-header checks.
//!
//! It prints `netpeer: ready` once every socket is bound, and a summary line when it stops.

mod hold;
mod packet;
mod raw;

pub use packet::{check_udp_csum, tcp_gso_frame, VnetHdr};

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use raw::Raw;

/// How long blocking reads wait before a thread looks at the stop flag.
const TICK: Duration = Duration::from_millis(200);
/// Captured frames kept for `CSUM` and `GSO`.
const KEEP: usize = 64;
/// Frames per `sendmmsg` while blasting.
pub const BLAST_BATCH: usize = 32;

/// The peer's command line.
#[derive(Debug, Clone)]
pub struct Options {
    /// The tap to capture on and inject into.
    pub tap: Option<String>,
    /// UDP echo port; commands on the next.
    pub port: u16,
    /// UDP port of the netconsole listener.
    pub netconsole: Option<u16>,
    /// Stop after this long at the latest.
    pub limit: Duration,
    /// Print every frame captured on the tap.
    pub verbose: bool,
    /// Do not capture on the tap (benchmarks: capturing costs every frame a copy); `CSUM` and
    /// `GSO` then cannot work.
    pub no_capture: bool,
    /// Attach to this tap without a vnet header and hold it (`hold`).
    pub hold_queue: Option<String>,
}

impl Options {
    /// Parses `--tap NAME --port P [--netconsole PORT] [--limit SECS]`.
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let mut o = Options {
            tap: None,
            port: 7777,
            netconsole: None,
            limit: Duration::from_secs(600),
            verbose: false,
            no_capture: false,
            hold_queue: None,
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut value = || it.next().ok_or(format!("{arg} needs a value"));
            match arg.as_str() {
                "--tap" => o.tap = Some(value()?.clone()),
                "--port" => o.port = value()?.parse().map_err(|e| format!("--port: {e}"))?,
                "--netconsole" => {
                    o.netconsole = Some(value()?.parse().map_err(|e| format!("--netconsole: {e}"))?)
                }
                "--limit" => {
                    o.limit =
                        Duration::from_secs(value()?.parse().map_err(|e| format!("--limit: {e}"))?)
                }
                "--verbose" => o.verbose = true,
                "--no-capture" => o.no_capture = true,
                "--hold-queue" => o.hold_queue = Some(value()?.clone()),
                other => return Err(format!("unknown argument '{other}'")),
            }
        }
        Ok(o)
    }
}

/// Frames captured coming in from the tap (the vnet header parsed, the frame after it).
type Captured = Arc<Mutex<VecDeque<(VnetHdr, Vec<u8>)>>>;

/// What the services share.
struct Shared {
    stop: AtomicBool,
    /// Bumped by `STOP` and by each new `BLAST`: a blast ends when it changes.
    blast_epoch: AtomicU64,
    echoed: AtomicU64,
    echoed_bytes: AtomicU64,
    captured: Captured,
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "netpeer: {line}");
    let _ = out.flush();
}

fn bind(port: u16) -> Result<UdpSocket, String> {
    let s =
        UdpSocket::bind(("0.0.0.0", port)).map_err(|e| format!("binding UDP port {port}: {e}"))?;
    s.set_read_timeout(Some(TICK)).map_err(|e| e.to_string())?;
    Ok(s)
}

/// Runs the peer until stdin closes or the limit passes.
pub fn run(o: &Options) -> Result<(), String> {
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        blast_epoch: AtomicU64::new(0),
        echoed: AtomicU64::new(0),
        echoed_bytes: AtomicU64::new(0),
        captured: Arc::new(Mutex::new(VecDeque::new())),
    });
    let _held = match &o.hold_queue {
        Some(tap) => {
            Some(hold::hold_queue(tap).map_err(|e| format!("holding a queue of {tap}: {e}"))?)
        }
        None => None,
    };
    let mut threads = Vec::new();
    let echo = bind(o.port)?;
    let s = shared.clone();
    threads.push(thread::spawn(move || echo_loop(&echo, &s)));
    let commands = bind(o.port + 1)?;
    let (sniff, inject) = match &o.tap {
        Some(tap) => {
            let sniff = Raw::open(tap, TICK.as_millis() as u64)
                .map_err(|e| format!("AF_PACKET on {tap}: {e}"))?;
            let inject = Raw::open(tap, TICK.as_millis() as u64)
                .map_err(|e| format!("AF_PACKET on {tap}: {e}"))?;
            let mac = std::fs::read_to_string(format!("/sys/class/net/{tap}/address"))
                .map_err(|e| format!("MAC of {tap}: {e}"))?;
            (
                Some(sniff),
                Some((Arc::new(inject), parse_mac(mac.trim())?)),
            )
        }
        None => (None, None),
    };
    if let Some(sniff) = sniff.filter(|_| !o.no_capture) {
        let s = shared.clone();
        let verbose = o.verbose;
        threads.push(thread::spawn(move || sniff_loop(&sniff, &s, verbose)));
    }
    let s = shared.clone();
    threads.push(thread::spawn(move || command_loop(&commands, inject, &s)));
    if let Some(port) = o.netconsole {
        let sock = bind(port)?;
        let s = shared.clone();
        threads.push(thread::spawn(move || netconsole_loop(&sock, &s)));
    }
    say("ready");
    let start = Instant::now();
    let limit = o.limit;
    let s = shared.clone();
    // stdin closing (the harness dropping its end) stops the peer.
    thread::spawn(move || {
        let mut line = String::new();
        let stdin = std::io::stdin();
        while stdin
            .lock()
            .read_line(&mut line)
            .map(|n| n > 0)
            .unwrap_or(false)
        {
            line.clear();
        }
        s.stop.store(true, Ordering::SeqCst);
    });
    while !shared.stop.load(Ordering::SeqCst) && start.elapsed() < limit {
        thread::sleep(TICK);
    }
    shared.stop.store(true, Ordering::SeqCst);
    for t in threads {
        let _ = t.join();
    }
    say(&format!(
        "stopped echoed={} echoed_bytes={}",
        shared.echoed.load(Ordering::SeqCst),
        shared.echoed_bytes.load(Ordering::SeqCst)
    ));
    Ok(())
}

fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let parts: Vec<u8> = text
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad MAC '{text}': {e}"))?;
    parts.try_into().map_err(|_| format!("bad MAC '{text}'"))
}

fn echo_loop(sock: &UdpSocket, s: &Shared) {
    let mut buf = vec![0u8; 65_536];
    while !s.stop.load(Ordering::SeqCst) {
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            if sock.send_to(&buf[..n], from).is_ok() {
                s.echoed.fetch_add(1, Ordering::SeqCst);
                s.echoed_bytes.fetch_add(n as u64, Ordering::SeqCst);
            }
        }
    }
}

fn sniff_loop(raw: &Raw, s: &Shared, verbose: bool) {
    let mut buf = vec![0u8; 70_000];
    while !s.stop.load(Ordering::SeqCst) {
        let Ok(Some((n, inbound))) = raw.recv(&mut buf) else {
            continue;
        };
        if verbose {
            let f = &buf[packet::VNET_HDR.min(n)..n];
            say(&format!(
                "captured {} {} bytes hdr={:?} head={:02x?}",
                if inbound { "in" } else { "out" },
                f.len(),
                VnetHdr::parse(&buf[..n]),
                &f[..f.len().min(48)]
            ));
        }
        if !inbound || n < packet::VNET_HDR {
            continue;
        }
        let Some(hdr) = VnetHdr::parse(&buf) else {
            continue;
        };
        let mut kept = s.captured.lock().unwrap();
        if kept.len() == KEEP {
            kept.pop_front();
        }
        kept.push_back((hdr, buf[packet::VNET_HDR..n].to_vec()));
    }
}

/// The captured frame that carried a UDP datagram with `payload` to `port`, waiting up to a
/// second for the capture thread to see it.
fn find_captured(s: &Shared, port: u16, payload: &[u8]) -> Option<(VnetHdr, Vec<u8>)> {
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        let kept = s.captured.lock().unwrap();
        let found = kept.iter().rev().find(|(_, f)| {
            packet::parse_udp(f).is_some_and(|u| u.dport == port && u.payload == payload)
        });
        if let Some(found) = found {
            return Some(found.clone());
        }
        drop(kept);
        thread::sleep(Duration::from_millis(10));
    }
    None
}

fn command_loop(sock: &UdpSocket, inject: Option<(Arc<Raw>, [u8; 6])>, s: &Arc<Shared>) {
    let port = sock.local_addr().map(|a| a.port()).unwrap_or(0);
    let mut buf = vec![0u8; 2048];
    while !s.stop.load(Ordering::SeqCst) {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let cmd = buf[..n].to_vec();
        let text = String::from_utf8_lossy(&cmd).into_owned();
        let reply = match text.split_whitespace().next() {
            Some("CSUM") => match find_captured(s, port, &cmd) {
                Some((hdr, frame)) => match check_udp_csum(&hdr, &frame) {
                    Ok(how) => format!("CSUM-OK {how}"),
                    Err(why) => format!("CSUM-BAD {why}"),
                },
                None => "CSUM-BAD not captured (no --tap?)".to_string(),
            },
            Some("GSO") => gso(
                &text,
                &cmd,
                port,
                from,
                inject.as_ref().map(|(r, m)| (&**r, *m)),
                sock,
                s,
            ),
            Some("BLAST") => blast(&text, port, from, inject.clone(), sock, s),
            Some("STOP") => {
                s.blast_epoch.fetch_add(1, Ordering::SeqCst);
                String::new()
            }
            _ => format!("ERR unknown command '{}'", text.trim()),
        };
        say(&format!("command '{}' from {from}: {reply}", text.trim()));
        if !reply.is_empty() {
            let _ = sock.send_to(reply.as_bytes(), from);
        }
    }
}

/// `GSO <bytes> <seed>`: answers first (so the answer reaches the guest before the frame),
/// then injects. Returns "" when it answered itself.
fn gso(
    text: &str,
    cmd: &[u8],
    port: u16,
    from: SocketAddr,
    inject: Option<(&Raw, [u8; 6])>,
    sock: &UdpSocket,
    s: &Shared,
) -> String {
    let mut words = text.split_whitespace().skip(1);
    let bytes: Option<usize> = words.next().and_then(|w| w.parse().ok());
    let seed: Option<u8> = words.next().and_then(|w| w.parse().ok());
    let (Some(bytes), Some(seed)) = (bytes, seed) else {
        return "ERR usage: GSO <bytes> <seed>".into();
    };
    if !(1..=65_000).contains(&bytes) {
        return "ERR bytes must be 1..=65000".into();
    }
    let Some((raw, tap_mac)) = inject else {
        return "ERR no --tap to inject into".into();
    };
    let Some((_, frame)) = find_captured(s, port, cmd) else {
        return "ERR the command's frame was not captured".into();
    };
    let Some(udp) = packet::parse_udp(&frame) else {
        return "ERR the command's frame is not UDP".into();
    };
    let SocketAddr::V4(guest) = from else {
        return "ERR not IPv4".into();
    };
    let frame = tcp_gso_frame(
        (tap_mac, udp.dst, port),
        (udp.src_mac, guest.ip().octets(), guest.port()),
        bytes,
        seed,
    );
    let _ = sock.send_to(format!("GSO-SENT {bytes}").as_bytes(), from);
    thread::sleep(Duration::from_millis(20));
    match raw.send(&frame) {
        Ok(()) => String::new(),
        Err(e) => {
            say(&format!("GSO injection failed: {e}"));
            String::new()
        }
    }
}

/// `BLAST <frame bytes> <gso> <ms> <mac>`: answers, then blasts on a thread of its own.
fn blast(
    text: &str,
    port: u16,
    from: SocketAddr,
    inject: Option<(Arc<Raw>, [u8; 6])>,
    sock: &UdpSocket,
    s: &Arc<Shared>,
) -> String {
    let w: Vec<&str> = text.split_whitespace().collect();
    let parsed = (|| -> Option<(usize, bool, u64, [u8; 6])> {
        Some((
            w.get(1)?.parse().ok()?,
            *w.get(2)? == "1",
            w.get(3)?.parse().ok()?,
            parse_mac(w.get(4)?).ok()?,
        ))
    })();
    let Some((bytes, gso, ms, guest_mac)) = parsed else {
        return "ERR usage: BLAST <frame bytes> <gso 0|1> <ms> <mac>".into();
    };
    if !gso && !(60..=1514).contains(&bytes) || ms > 120_000 {
        return "ERR frame bytes 60..=1514 (or gso 1), ms <= 120000".into();
    }
    let (Some((raw, tap_mac)), SocketAddr::V4(guest)) = (inject, from) else {
        return "ERR no --tap to inject into".into();
    };
    let Some(me) = local_ip_towards(guest.ip().octets()) else {
        return "ERR no route to the guest".into();
    };
    let src = (tap_mac, me, port);
    let dst = (guest_mac, guest.ip().octets(), guest.port());
    let frame = if gso {
        tcp_gso_frame(src, dst, 65_000, 0)
    } else {
        packet::udp_frame_with_vnet(src, dst, bytes)
    };
    let _ = sock.send_to(b"BLAST-OK", from);
    let s = s.clone();
    let epoch = s.blast_epoch.fetch_add(1, Ordering::SeqCst) + 1;
    thread::spawn(move || {
        thread::sleep(Duration::from_millis(20));
        let end = Instant::now() + Duration::from_millis(ms);
        let mut sent = 0u64;
        while Instant::now() < end
            && !s.stop.load(Ordering::SeqCst)
            && s.blast_epoch.load(Ordering::SeqCst) == epoch
        {
            match raw.send_many(&frame, BLAST_BATCH) {
                Ok(n) => sent += n as u64,
                Err(e) => {
                    say(&format!("blast failed: {e}"));
                    break;
                }
            }
        }
        say(&format!(
            "blast done frames={sent} frame_bytes={}",
            frame.len() - packet::VNET_HDR
        ));
    });
    String::new()
}

/// The address this namespace uses to reach `dst` (the tap's own address on its subnet).
fn local_ip_towards(dst: [u8; 4]) -> Option<[u8; 4]> {
    let sock = UdpSocket::bind("0.0.0.0:0").ok()?;
    sock.connect((std::net::Ipv4Addr::from(dst), 9)).ok()?;
    match sock.local_addr().ok()? {
        SocketAddr::V4(a) => Some(a.ip().octets()),
        SocketAddr::V6(_) => None,
    }
}

fn netconsole_loop(sock: &UdpSocket, s: &Shared) {
    let mut buf = vec![0u8; 2048];
    while !s.stop.load(Ordering::SeqCst) {
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]);
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                say(&format!("netconsole {}", line.trim_end()));
            }
        }
    }
}
