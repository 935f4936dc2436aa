//! The Wayland wire format, as much as the tests speak: requests built into a fixed buffer,
//! events cut out of the byte stream a context delivers (which may split or join messages).
//!
//! A message is `object id: u32`, `size << 16 | opcode: u32`, then 32-bit arguments: int,
//! uint, fixed, object and new_id are one word; a string is its length including the NUL,
//! then the bytes padded to 4; an array is its length, then the bytes padded to 4. fds travel
//! beside the bytes (here: as vfd ids of the `VFD_SEND`), never in them.

use core::cell::UnsafeCell;

use crate::arch::{Page, Word};

/// Largest request the tests build.
const MSG_MAX: usize = 256;
/// Bytes the stream keeps while a message is incomplete.
const STREAM_MAX: usize = 16 * 1024;
/// Largest event arguments kept.
pub const ARGS_MAX: usize = 1024;

/// A request being built.
pub struct Msg {
    buf: [u8; MSG_MAX],
    len: usize,
}

impl Msg {
    pub fn new(object: u32, opcode: u16) -> Msg {
        let mut msg = Msg {
            buf: [0; MSG_MAX],
            len: 8,
        };
        msg.buf[..4].copy_from_slice(&object.to_le_bytes());
        msg.buf[4..8].copy_from_slice(&u32::from(opcode).to_le_bytes());
        msg
    }

    pub fn uint(mut self, value: u32) -> Msg {
        self.buf[self.len..self.len + 4].copy_from_slice(&value.to_le_bytes());
        self.len += 4;
        self
    }

    pub fn int(self, value: i32) -> Msg {
        self.uint(value as u32)
    }

    pub fn string(mut self, s: &str) -> Msg {
        let n = s.len() + 1;
        self = self.uint(n as u32);
        self.buf[self.len..self.len + s.len()].copy_from_slice(s.as_bytes());
        // The NUL and the padding are already zero.
        self.len += n.next_multiple_of(4);
        self
    }

    /// The finished message (its size patched in).
    pub fn bytes(&mut self) -> &[u8] {
        let opcode = u32::from_le_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]);
        let word = ((self.len as u32) << 16) | (opcode & 0xffff);
        self.buf[4..8].copy_from_slice(&word.to_le_bytes());
        &self.buf[..self.len]
    }
}

/// One event, its arguments copied out of the stream.
pub struct Event {
    pub object: u32,
    pub opcode: u16,
    args: [u8; ARGS_MAX],
    len: usize,
}

impl Event {
    /// A reader over the arguments.
    pub fn args(&self) -> Args<'_> {
        Args {
            bytes: &self.args[..self.len],
            at: 0,
        }
    }
}

/// Reads arguments in order; a missing one reads as 0 / empty.
pub struct Args<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Args<'a> {
    pub fn uint(&mut self) -> u32 {
        let Some(word) = self.bytes.get(self.at..self.at + 4) else {
            return 0;
        };
        self.at += 4;
        u32::from_le_bytes([word[0], word[1], word[2], word[3]])
    }

    pub fn int(&mut self) -> i32 {
        self.uint() as i32
    }

    /// A string or array's bytes (a string without its NUL).
    pub fn bytes(&mut self, string: bool) -> &'a [u8] {
        let n = self.uint() as usize;
        let start = self.at;
        let end = (start + n).min(self.bytes.len());
        self.at = start + n.next_multiple_of(4);
        let raw = &self.bytes[start.min(end)..end];
        if string {
            raw.strip_suffix(&[0]).unwrap_or(raw)
        } else {
            raw
        }
    }
}

/// The stream's bytes: static (not on the 64 KiB boot stack), not zeroed at boot; one
/// [`Stream`] at a time uses them.
#[link_section = ".noinit.wl"]
static STREAM_BUF: Page<[u8; STREAM_MAX]> = Page(UnsafeCell::new([0; STREAM_MAX]));
/// Set while a [`Stream`] owns [`STREAM_BUF`].
static STREAM_TAKEN: Word = Word::new(0);

/// The bytes a context delivered, cut into events.
pub struct Stream {
    buf: &'static mut [u8; STREAM_MAX],
    len: usize,
}

impl Drop for Stream {
    fn drop(&mut self) {
        STREAM_TAKEN.set(0);
    }
}

/// The stream got a message it cannot hold.
#[derive(Debug)]
pub struct Overflow;

impl Stream {
    /// The stream over the static buffer. Panics if another one holds it.
    pub fn new() -> Stream {
        assert!(STREAM_TAKEN.get() == 0, "one wl stream at a time");
        STREAM_TAKEN.set(1);
        Stream {
            // SAFETY: STREAM_TAKEN guarantees this is the only reference until the Stream is
            // dropped; one vCPU, and the buffer is never shared with a device.
            buf: unsafe { &mut *STREAM_BUF.0.get() },
            len: 0,
        }
    }

    pub fn push(&mut self, data: &[u8]) -> Result<(), Overflow> {
        let end = self.len + data.len();
        if end > STREAM_MAX {
            return Err(Overflow);
        }
        self.buf[self.len..end].copy_from_slice(data);
        self.len = end;
        Ok(())
    }

    /// The next complete event, if there is one. A malformed size is an overflow.
    pub fn next(&mut self) -> Result<Option<Event>, Overflow> {
        if self.len < 8 {
            return Ok(None);
        }
        let word = |i: usize| {
            u32::from_le_bytes([
                self.buf[i],
                self.buf[i + 1],
                self.buf[i + 2],
                self.buf[i + 3],
            ])
        };
        let object = word(0);
        let size = (word(4) >> 16) as usize;
        let opcode = (word(4) & 0xffff) as u16;
        if size < 8 || !size.is_multiple_of(4) || size - 8 > ARGS_MAX {
            return Err(Overflow);
        }
        if self.len < size {
            return Ok(None);
        }
        let mut event = Event {
            object,
            opcode,
            args: [0; ARGS_MAX],
            len: size - 8,
        };
        event.args[..size - 8].copy_from_slice(&self.buf[8..size]);
        self.buf.copy_within(size..self.len, 0);
        self.len -= size;
        Ok(Some(event))
    }
}
