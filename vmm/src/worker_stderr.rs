//! What a worker writes on its stderr, as svmm passes it on.
//!
//! A worker's fd 2 is the write end of a pipe of its own (the broker makes one per worker);
//! svmm's monitor thread reads the other end. The worker is untrusted, and svmm's stderr is
//! often a terminal (or a journal): so nothing it writes reaches svmm's stderr raw. Each line
//! becomes one line `svmm: DEVICE worker: TEXT`, where TEXT
//!
//! - is cut at [`MAX_LINE`] characters (the rest of that line is dropped, `[...]` says so);
//! - has every control character (escape sequences, carriage returns, backspaces, NUL) and
//!   every Unicode format character (bidirectional overrides, zero-width joiners) replaced by
//!   `?`, and invalid UTF-8 by `U+FFFD`;
//! - loses a leading `svmm worker: ` (what a worker's own reports start with);
//!
//! and lines are rate-limited: a burst of [`BURST`] lines, then [`PER_SECOND`] per second;
//! what is dropped is counted and said in one line once lines pass again. So a worker can
//! neither write to the terminal, nor forge a line that seems to come from svmm itself, nor
//! flood svmm's stderr.

use std::io::Write;
use std::time::Instant;

/// Longest line passed on, in characters.
pub const MAX_LINE: usize = 240;
/// Lines that may pass at once.
pub const BURST: f64 = 20.0;
/// Lines per second that may pass after a burst.
pub const PER_SECOND: f64 = 5.0;
/// Bytes buffered for one unfinished line before it is cut.
const MAX_PENDING: usize = 4 * MAX_LINE;

/// The relay of one worker's stderr.
#[derive(Debug)]
pub struct StderrRelay {
    prefix: String,
    /// The unfinished line.
    pending: Vec<u8>,
    /// The current line was cut: drop everything up to its end.
    cutting: bool,
    tokens: f64,
    refilled: Instant,
    dropped: u64,
}

impl StderrRelay {
    /// A relay for the worker of device `name` (`rng#0`).
    pub fn new(name: &str) -> Self {
        StderrRelay {
            prefix: format!("svmm: {name} worker: "),
            pending: Vec::new(),
            cutting: false,
            tokens: BURST,
            refilled: Instant::now(),
            dropped: 0,
        }
    }

    /// Passes on the complete lines in `bytes` (what one read of the pipe returned).
    pub fn feed(&mut self, bytes: &[u8], out: &mut dyn Write) {
        for &b in bytes {
            if b == b'\n' {
                if !std::mem::take(&mut self.cutting) {
                    let line = std::mem::take(&mut self.pending);
                    self.emit(&line, false, out);
                }
                self.pending.clear();
                continue;
            }
            if self.cutting {
                continue;
            }
            self.pending.push(b);
            if self.pending.len() >= MAX_PENDING {
                let line = std::mem::take(&mut self.pending);
                self.emit(&line, true, out);
                self.cutting = true;
            }
        }
    }

    /// The pipe was closed: passes on an unfinished last line, and what was dropped.
    pub fn finish(&mut self, out: &mut dyn Write) {
        if !self.pending.is_empty() && !self.cutting {
            let line = std::mem::take(&mut self.pending);
            self.emit(&line, false, out);
        }
        self.report_dropped(out);
    }

    fn emit(&mut self, raw: &[u8], cut: bool, out: &mut dyn Write) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * PER_SECOND).min(BURST);
        self.refilled = now;
        if self.tokens < 1.0 {
            self.dropped += 1;
            return;
        }
        self.tokens -= 1.0;
        self.report_dropped(out);
        let text = clean(raw, cut);
        let _ = writeln!(out, "{}{text}", self.prefix);
    }

    fn report_dropped(&mut self, out: &mut dyn Write) {
        if self.dropped > 0 {
            let n = std::mem::take(&mut self.dropped);
            let _ = writeln!(out, "{}({n} more lines dropped: too many)", self.prefix);
        }
    }
}

/// One line as it may be shown: see the module docs.
pub fn clean(raw: &[u8], cut: bool) -> String {
    let text = String::from_utf8_lossy(raw);
    let text = text.strip_prefix("svmm worker: ").unwrap_or(&text);
    let mut shown: String = text
        .chars()
        .take(MAX_LINE)
        .map(|c| if is_unsafe(c) { '?' } else { c })
        .collect();
    if cut || text.chars().count() > MAX_LINE {
        shown.push_str(" [...]");
    }
    shown
}

/// Control characters (C0, DEL, C1) and format characters that change how text is shown
/// (bidirectional controls, zero-width characters, the BOM).
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(input: &[&[u8]]) -> String {
        let mut relay = StderrRelay::new("rng#0");
        let mut out = Vec::new();
        for chunk in input {
            relay.feed(chunk, &mut out);
        }
        relay.finish(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn lines_are_prefixed_and_split_across_reads() {
        assert_eq!(
            relay(&[b"svmm worker: one\ntw", b"o\nthree"]),
            "svmm: rng#0 worker: one\nsvmm: rng#0 worker: two\nsvmm: rng#0 worker: three\n"
        );
    }

    #[test]
    fn escapes_and_forged_lines_are_defused() {
        let out = relay(&[b"\x1b[2J\x1b]0;pwned\x07ok\rsvmm: error: fake\n\xe2\x80\xaeevil\n"]);
        assert!(!out.contains('\x1b') && !out.contains('\r') && !out.contains('\x07'));
        assert!(!out.contains('\u{202e}'));
        for line in out.lines() {
            assert!(line.starts_with("svmm: rng#0 worker: "), "{line:?}");
        }
        assert!(out.contains("?[2J?]0;pwned?ok?svmm: error: fake"), "{out}");
        assert_eq!(out.lines().count(), 2);
    }

    #[test]
    fn long_lines_are_cut() {
        let long = vec![b'x'; 10_000];
        let out = relay(&[&long, b"\nnext\n"]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(lines[0].ends_with(" [...]"));
        assert!(lines[0].len() < MAX_LINE + 40);
        assert_eq!(lines[1], "svmm: rng#0 worker: next");
    }

    #[test]
    fn floods_are_rate_limited_and_counted() {
        let flood = b"spam\n".repeat(1000);
        let out = relay(&[&flood]);
        let shown = out.lines().filter(|l| l.ends_with(": spam")).count();
        assert!(
            (BURST as usize..=BURST as usize + 2).contains(&shown),
            "{shown}"
        );
        assert!(out.contains("more lines dropped: too many"), "{out}");
    }
}
