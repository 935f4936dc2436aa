//! Replies: built in private memory, then written into the chain's writable stream once.
//!
//! A reply is a `fuse_out_header` (`len`, `error` = minus the errno or 0, `unique`) followed by
//! the operation's bytes. The parser already checked that every fixed-size reply fits; a
//! variable one (READ, READDIR, READLINK) is sized by the server to what the chain holds. A
//! reply that would not fit anyway becomes `ERANGE`, never a partial write.

use fuse_abi::linux as abi;
use vm_memory::{Address, Bytes, GuestMemoryMmap};
use zerocopy::IntoBytes;

use super::request::{ReplyTo, OUT_HEADER_LEN};
use super::Errno;

/// What the server answers.
#[derive(Debug)]
pub(crate) enum Answer {
    /// Nothing (FORGET, BATCH_FORGET, INTERRUPT): the chain completes with used length 0.
    None,
    /// An error.
    Error(Errno),
    /// Success, with these bytes after the header (possibly none).
    Ok(Vec<u8>),
}

impl From<Result<Vec<u8>, Errno>> for Answer {
    fn from(r: Result<Vec<u8>, Errno>) -> Self {
        match r {
            Ok(bytes) => Answer::Ok(bytes),
            Err(e) => Answer::Error(e),
        }
    }
}

/// The bytes of a fixed-size reply struct.
pub(crate) fn bytes_of<T: IntoBytes + zerocopy::Immutable>(value: &T) -> Vec<u8> {
    value.as_bytes().to_vec()
}

/// Writes `answer` to `to` for request `unique`. Returns the used length (0 if nothing was
/// written), and whether it was an error reply.
pub(crate) fn send(
    mem: &GuestMemoryMmap,
    to: &ReplyTo,
    unique: u64,
    answer: Answer,
) -> (u32, bool) {
    let (errno, body) = match answer {
        Answer::None => return (0, false),
        Answer::Error(e) => (Some(e), Vec::new()),
        Answer::Ok(body) if (OUT_HEADER_LEN + body.len()) as u64 > to.capacity => {
            (Some(Errno::RANGE), Vec::new())
        }
        Answer::Ok(body) => (None, body),
    };
    let len = OUT_HEADER_LEN + body.len();
    let header = abi::fuse_out_header {
        len: len as u32,
        error: errno.map_or(0, |e| -e.raw_os_error()),
        unique,
    };
    if (len as u64) > to.capacity {
        return (0, true); // not even a header fits: the parser never lets this through
    }
    let mut parts = [header.as_bytes(), &body[..]].into_iter();
    let mut part = parts.next().unwrap_or_default();
    let mut written = 0usize;
    for seg in &to.segments {
        let mut at = seg.addr;
        let mut room = seg.len as usize;
        while room > 0 {
            while part.is_empty() {
                match parts.next() {
                    Some(p) => part = p,
                    None => return (written as u32, errno.is_some()),
                }
            }
            let n = room.min(part.len());
            if mem.write_slice(&part[..n], at).is_err() {
                // The parser checked the segment lies in memory; nothing more can be done.
                return (written as u32, true);
            }
            written += n;
            part = &part[n..];
            room -= n;
            at = at.unchecked_add(n as u64);
        }
    }
    (written as u32, errno.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::Segment;
    use vm_memory::GuestAddress;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    fn to(segs: &[(u64, u32)]) -> ReplyTo {
        ReplyTo {
            segments: segs
                .iter()
                .map(|&(a, l)| Segment {
                    addr: GuestAddress(a),
                    len: l,
                })
                .collect(),
            capacity: segs.iter().map(|s| u64::from(s.1)).sum(),
        }
    }

    #[test]
    fn a_reply_spans_segments_and_says_its_length() {
        let mem = mem();
        let (n, err) = send(
            &mem,
            &to(&[(0x100, 10), (0x200, 100)]),
            7,
            Answer::Ok(vec![9; 20]),
        );
        assert_eq!((n, err), (36, false));
        let mut out = [0u8; 10];
        mem.read_slice(&mut out, GuestAddress(0x100)).unwrap();
        assert_eq!(&out[..4], &36u32.to_le_bytes());
        let mut rest = [0u8; 26];
        mem.read_slice(&mut rest, GuestAddress(0x200)).unwrap();
        assert_eq!(&rest[6..], &[9; 20]);
        // The header's last 6 bytes (the rest of `unique`) open the second segment.
        assert_eq!(&rest[..6], &[0; 6]);
    }

    #[test]
    fn errors_and_oversized_replies_are_headers_only() {
        let mem = mem();
        let (n, err) = send(&mem, &to(&[(0x100, 64)]), 1, Answer::Error(Errno::NOENT));
        assert_eq!((n, err), (16, true));
        let e: i32 = mem.read_obj(GuestAddress(0x104)).unwrap();
        assert_eq!(e, -2);
        let (n, err) = send(&mem, &to(&[(0x100, 20)]), 1, Answer::Ok(vec![1; 8]));
        assert_eq!((n, err), (16, true));
        let e: i32 = mem.read_obj(GuestAddress(0x104)).unwrap();
        assert_eq!(e, -34);
        assert_eq!(send(&mem, &to(&[(0x100, 20)]), 1, Answer::None), (0, false));
    }
}
