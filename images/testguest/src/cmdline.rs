//! Command-line parsing: the virtio-mmio devices (Linux's `virtio_mmio.device=` form) and the
//! guest's own `testguest.*` parameters. Words are separated by spaces; other words (e.g.
//! `console=ttyS0`) are ignored.

/// Most virtio-mmio devices / bad words remembered (more are reported as bad).
pub const MAX_DEVICES: usize = 16;
const MAX_BAD: usize = 8;

pub const DEFAULT_ECHO_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_BENCH_MS: u64 = 1000;
/// `testguest.loop_ms=` without the parameter.
const DEFAULT_LOOP_MS: u64 = 2000;
/// Longest `testguest.loop_ms=` (ten minutes).
const MAX_LOOP_MS: u64 = 600_000;
pub const DEFAULT_NET_IP: [u8; 4] = [10, 77, 0, 2];
pub const DEFAULT_NET_PEER: [u8; 4] = [10, 77, 0, 1];
pub const DEFAULT_NET_PORT: u16 = 7777;
/// Longest `testguest.bench_ms=` (a minute per measured phase).
const MAX_BENCH_MS: u64 = 60_000;
/// Highest `testguest.exit=` status: svmm passes 0..=63 through and keeps 64 and above for
/// its own failures.
const MAX_EXIT_STATUS: u64 = 63;

/// One `virtio_mmio.device=SIZE@ADDR:IRQ[:ID]` entry.
#[derive(Clone, Copy, Default)]
pub struct MmioDevice {
    pub addr: u64,
    pub size: u64,
    pub irq: u32,
    /// The optional platform-device id after the IRQ (Linux's `:ID`).
    #[allow(dead_code)] // parsed for completeness; no test needs it yet
    pub id: Option<u32>,
}

/// How the benchmark tests learn that a request completed (`testguest.irq=`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// `poll`: no interrupts (VIRTQ_AVAIL_F_NO_INTERRUPT), ring 3 spins on the used ring.
    Poll,
    /// `irq`: the device's interrupt, through the IOAPIC and local APIC, wakes ring 3.
    Irq,
}

impl Completion {
    pub fn name(self) -> &'static str {
        match self {
            Completion::Poll => "poll",
            Completion::Irq => "irq",
        }
    }
}

/// Why a word was rejected.
#[derive(Clone, Copy)]
pub enum BadKind {
    /// A malformed (or one too many) `virtio_mmio.device=` entry; the text is its value.
    Entry,
    /// A malformed or unknown `testguest.*` parameter; the text is the whole word.
    Param,
}

pub struct Params<'a> {
    devices: [MmioDevice; MAX_DEVICES],
    n_devices: usize,
    bad: [(BadKind, &'a str); MAX_BAD],
    n_bad: usize,
    /// Bad words past `MAX_BAD`, counted but not kept.
    pub bad_overflow: usize,
    /// `testguest.run=A,B`: the comma-separated test names, or `None` for the default set.
    pub run: Option<&'a str>,
    /// `testguest.sleep_ms=N`: idle this long after the tests.
    pub sleep_ms: u64,
    /// `testguest.echo_timeout_ms=N`.
    pub echo_timeout_ms: u64,
    /// `testguest.exit=N` (0..=63): exit with N whatever the results (test hook).
    pub exit: Option<u32>,
    /// `testguest.blk_pattern=SEED` (32 bits): the seed of the blk tests' data pattern.
    pub blk_pattern: Option<u32>,
    /// `testguest.irq=poll|irq`: completion mode of the benchmark tests (default irq).
    pub irq: Completion,
    /// `testguest.bench_ms=N`: length of each benchmark's measured phase (default 1000).
    pub bench_ms: u64,
    /// `testguest.loop_ms=N`: how long `blk_loop` and `rng_loop` go on (default 2000).
    pub loop_ms: u64,
    /// `testguest.net_ip=A.B.C.D`: the net tests' own address (default 10.77.0.2).
    pub net_ip: [u8; 4],
    /// `testguest.net_peer=A.B.C.D`: the peer's address (default 10.77.0.1).
    pub net_peer: [u8; 4],
    /// `testguest.net_port=N`: the peer's UDP echo port (default 7777); its command service
    /// listens on the next port.
    pub net_port: u16,
}

impl<'a> Params<'a> {
    pub fn devices(&self) -> &[MmioDevice] {
        &self.devices[..self.n_devices]
    }

    pub fn bad(&self) -> &[(BadKind, &'a str)] {
        &self.bad[..self.n_bad]
    }

    fn add_bad(&mut self, kind: BadKind, text: &'a str) {
        if self.n_bad < MAX_BAD {
            self.bad[self.n_bad] = (kind, text);
            self.n_bad += 1;
        } else {
            self.bad_overflow += 1;
        }
    }
}

pub fn parse(cmdline: &str) -> Params<'_> {
    let mut p = Params {
        devices: [MmioDevice::default(); MAX_DEVICES],
        n_devices: 0,
        bad: [(BadKind::Entry, ""); MAX_BAD],
        n_bad: 0,
        bad_overflow: 0,
        run: None,
        sleep_ms: 0,
        echo_timeout_ms: DEFAULT_ECHO_TIMEOUT_MS,
        exit: None,
        blk_pattern: None,
        irq: Completion::Irq,
        bench_ms: DEFAULT_BENCH_MS,
        loop_ms: DEFAULT_LOOP_MS,
        net_ip: DEFAULT_NET_IP,
        net_peer: DEFAULT_NET_PEER,
        net_port: DEFAULT_NET_PORT,
    };
    for word in cmdline.split(' ').filter(|w| !w.is_empty()) {
        if let Some(value) = word.strip_prefix("virtio_mmio.device=") {
            match parse_device(value) {
                Some(dev) if p.n_devices < MAX_DEVICES => {
                    p.devices[p.n_devices] = dev;
                    p.n_devices += 1;
                }
                _ => p.add_bad(BadKind::Entry, value),
            }
        } else if let Some(param) = word.strip_prefix("testguest.") {
            if !apply_param(&mut p, param) {
                p.add_bad(BadKind::Param, word);
            }
        }
    }
    p
}

/// Applies one `testguest.KEY=VALUE` parameter (without the prefix); false if it is unknown
/// or its value is malformed.
fn apply_param<'a>(p: &mut Params<'a>, param: &'a str) -> bool {
    let Some((key, value)) = param.split_once('=') else {
        return false;
    };
    match key {
        "run" if !value.is_empty() => p.run = Some(value),
        "sleep_ms" => match parse_number(value) {
            Some(ms) => p.sleep_ms = ms,
            None => return false,
        },
        "echo_timeout_ms" => match parse_number(value) {
            Some(ms) => p.echo_timeout_ms = ms,
            None => return false,
        },
        "exit" => match parse_number(value).filter(|&n| n <= MAX_EXIT_STATUS) {
            Some(n) => p.exit = Some(n as u32),
            None => return false,
        },
        "blk_pattern" => match parse_number(value).and_then(|n| u32::try_from(n).ok()) {
            Some(seed) => p.blk_pattern = Some(seed),
            None => return false,
        },
        "irq" => match value {
            "poll" => p.irq = Completion::Poll,
            "irq" => p.irq = Completion::Irq,
            _ => return false,
        },
        "bench_ms" => match parse_number(value).filter(|&n| (1..=MAX_BENCH_MS).contains(&n)) {
            Some(ms) => p.bench_ms = ms,
            None => return false,
        },
        "loop_ms" => match parse_number(value).filter(|&n| (1..=MAX_LOOP_MS).contains(&n)) {
            Some(ms) => p.loop_ms = ms,
            None => return false,
        },
        "net_ip" => match crate::net::parse_ip(value) {
            Some(ip) => p.net_ip = ip,
            None => return false,
        },
        "net_peer" => match crate::net::parse_ip(value) {
            Some(ip) => p.net_peer = ip,
            None => return false,
        },
        "net_port" => match parse_number(value).filter(|&n| (1..=65534).contains(&n)) {
            Some(port) => p.net_port = port as u16,
            None => return false,
        },
        _ => return false,
    }
    true
}

/// `SIZE@ADDR:IRQ[:ID]`, as Linux's virtio_mmio driver reads it: SIZE and ADDR are numbers
/// (decimal or 0x-hex) with an optional K/M/G/T suffix, IRQ and ID are decimal.
fn parse_device(value: &str) -> Option<MmioDevice> {
    let (size, rest) = value.split_once('@')?;
    let mut fields = rest.split(':');
    let addr = parse_size(fields.next()?)?;
    let irq = parse_decimal(fields.next()?)?;
    let id = match fields.next() {
        Some(id) => Some(parse_decimal(id)?),
        None => None,
    };
    if fields.next().is_some() {
        return None;
    }
    let size = parse_size(size)?;
    if size == 0 || addr.checked_add(size - 1).is_none() {
        return None;
    }
    let irq = u32::try_from(irq).ok()?;
    let id = match id {
        Some(id) => Some(u32::try_from(id).ok()?),
        None => None,
    };
    Some(MmioDevice {
        addr,
        size,
        irq,
        id,
    })
}

/// A number with an optional binary-unit suffix: `4K`, `0x1000`, `2M`.
fn parse_size(text: &str) -> Option<u64> {
    let (digits, shift) = match text.as_bytes().last()? {
        b'k' | b'K' => (&text[..text.len() - 1], 10),
        b'm' | b'M' => (&text[..text.len() - 1], 20),
        b'g' | b'G' => (&text[..text.len() - 1], 30),
        b't' | b'T' => (&text[..text.len() - 1], 40),
        _ => (text, 0),
    };
    parse_number(digits)?.checked_mul(1u64 << shift)
}

/// Decimal, or hexadecimal with a `0x`/`0X` prefix.
fn parse_number(text: &str) -> Option<u64> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => parse_digits(hex, 16),
        None => parse_decimal(text),
    }
}

fn parse_decimal(text: &str) -> Option<u64> {
    parse_digits(text, 10)
}

fn parse_digits(text: &str, radix: u32) -> Option<u64> {
    if text.is_empty() {
        return None;
    }
    let mut value: u64 = 0;
    for c in text.chars() {
        let digit = c.to_digit(radix)?;
        value = value
            .checked_mul(u64::from(radix))?
            .checked_add(u64::from(digit))?;
    }
    Some(value)
}
