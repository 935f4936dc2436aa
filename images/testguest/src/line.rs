//! A fixed-size text buffer (no allocator): what a test reports after `ok` or `FAIL`.

use core::fmt;

const CAPACITY: usize = 240;

/// Up to 240 bytes of a result line; longer text is cut off. Control characters are
/// replaced by `?` so that a result always stays on one output line.
pub struct Line {
    buf: [u8; CAPACITY],
    len: usize,
}

impl Line {
    pub const fn new() -> Self {
        Line {
            buf: [0; CAPACITY],
            len: 0,
        }
    }

    pub fn push_bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.len == CAPACITY {
                return;
            }
            self.buf[self.len] = if b < 0x20 || b == 0x7f { b'?' } else { b };
            self.len += 1;
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push_bytes(s.as_bytes());
        Ok(())
    }
}

/// Formats into a `Line`: `line_fmt(format_args!(...))`, usually through `fig!`.
pub fn line_fmt(args: fmt::Arguments) -> Line {
    let mut line = Line::new();
    // Writing to a `Line` never fails (it truncates).
    let _ = fmt::Write::write_fmt(&mut line, args);
    line
}

/// `fig!("bytes={} us={}", n, t)` builds a `Line` for a test's result.
#[macro_export]
macro_rules! fig {
    ($($arg:tt)*) => { $crate::line::line_fmt(format_args!($($arg)*)) };
}
