//! What the `wl_command` fuzz target runs, shared with the corpus replay test
//! (`devices/tests/fuzz_corpus.rs`), plus the seed inputs.
//!
//! An input is one flag byte (bit 0: the driver acknowledged `TRANS_FLAGS`) followed by the
//! command bytes as the device's private copy would hold them. [`parse_any`] parses it and
//! panics (what the fuzzer looks for) if a property breaks: a parse that panics, an accepted
//! command whose values break the published bounds (ids outside their ranges, more than
//! `MAX_SEND_VFDS` vfds, a size of 0 or over `MAX_ALLOC_BYTES`, flags the command does not
//! allow, data that is not exactly the bytes after the ids), a refusal answered with a code
//! that is not an error, or a different answer the second time on the same bytes.
//!
//! Not used by the VMM or workers.

use super::command::{is_guest_id, is_vfd_id, parse, Command};
use super::protocol::{
    CMD_VFD_CLOSE, CMD_VFD_NEW, CMD_VFD_NEW_CTX, CMD_VFD_NEW_CTX_NAMED, CMD_VFD_NEW_DMABUF,
    CMD_VFD_NEW_PIPE, CMD_VFD_SEND, CTRL_SEND_LEN, RESP_ERR, VFD_MAP, VFD_READ, VFD_WRITE,
};
use super::{MAX_ALLOC_BYTES, MAX_SEND_VFDS};

/// Parses one fuzz input and checks the properties above.
pub fn parse_any(data: &[u8]) {
    let Some((&flag, bytes)) = data.split_first() else {
        return;
    };
    let trans = flag & 1 != 0;
    let first = parse(bytes, trans);
    assert_eq!(first, parse(bytes, trans), "parse is not deterministic");
    let cmd = match first {
        Ok(cmd) => cmd,
        Err(refusal) => {
            assert!(
                refusal.code() >= RESP_ERR,
                "refusal {refusal:?} answered as success"
            );
            return;
        }
    };
    match cmd {
        Command::New { id, flags, size } => {
            assert!(is_guest_id(id));
            assert!(size > 0 && size <= MAX_ALLOC_BYTES);
            let allowed = if trans { 0 } else { VFD_WRITE | VFD_MAP };
            assert_eq!(flags & !allowed, 0);
        }
        Command::Close { id } => assert!(is_vfd_id(id)),
        Command::Send { id, vfds, data } => {
            assert!(is_vfd_id(id));
            assert!(vfds.len() <= MAX_SEND_VFDS);
            assert!(vfds.iter().all(|&v| is_vfd_id(v)));
            assert_eq!(data.len(), bytes.len() - CTRL_SEND_LEN - 4 * vfds.len());
            assert_eq!(data[..], bytes[bytes.len() - data.len()..]);
        }
        Command::NewCtx { id, name } => {
            assert!(is_guest_id(id));
            assert!(name.len() <= 32 && !name.contains('\0'));
        }
        Command::NewPipe { id, flags } => {
            assert!(is_guest_id(id));
            assert!(flags == VFD_READ || flags == VFD_WRITE);
        }
        Command::Unsupported { kind } => assert!((0x107..=0x109).contains(&kind)),
    }
}

fn command(kind: u32, words: &[u32]) -> Vec<u8> {
    let mut out = kind.to_le_bytes().to_vec();
    out.extend_from_slice(&0u32.to_le_bytes());
    for w in words {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out
}

/// `ctrl_vfd_new` as the Linux driver sends it: 64 bytes.
fn vfd_new(kind: u32, id: u32, flags: u32, size: u32, name: &[u8]) -> Vec<u8> {
    let mut out = command(kind, &[id, flags, 0, 0, size]);
    let mut tail = [0u8; 36];
    tail[..name.len()].copy_from_slice(name);
    out.extend_from_slice(&tail);
    out
}

/// Seed inputs, named `valid-*` when they parse and `found-*`/`bad-*` when they are refused.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let with_flag = |flag: u8, bytes: Vec<u8>| {
        let mut v = vec![flag];
        v.extend(bytes);
        v
    };
    let mut send = command(CMD_VFD_SEND, &[1, 2, 3, 0x4000_0000]);
    send.extend_from_slice(b"\x01\x00\x00\x00\x01\x00\x0c\x00\x02\x00\x00\x00");
    let seeds = vec![
        (
            "valid-new",
            with_flag(1, vfd_new(CMD_VFD_NEW, 5, 0, 4096, b"")),
        ),
        (
            "valid-new-old-flags",
            with_flag(0, vfd_new(CMD_VFD_NEW, 5, 3, 8192, b"")),
        ),
        (
            "valid-close",
            with_flag(1, command(CMD_VFD_CLOSE, &[0x4000_0001])),
        ),
        ("valid-send", with_flag(1, send)),
        (
            "valid-ctx",
            with_flag(1, vfd_new(CMD_VFD_NEW_CTX, 1, 3, 0, b"")),
        ),
        (
            "valid-ctx-named",
            with_flag(1, vfd_new(CMD_VFD_NEW_CTX_NAMED, 2, 0, 0, b"wayland-0")),
        ),
        (
            "valid-pipe",
            with_flag(1, vfd_new(CMD_VFD_NEW_PIPE, 3, 2, 0, b"")),
        ),
        (
            "valid-dmabuf",
            with_flag(1, vfd_new(CMD_VFD_NEW_DMABUF, 4, 0, 0, b"")),
        ),
        ("bad-short-header", with_flag(1, vec![0, 1, 0])),
        (
            "bad-new-host-id",
            with_flag(1, vfd_new(CMD_VFD_NEW, 0x4000_0000, 0, 4096, b"")),
        ),
        (
            "bad-new-zero",
            with_flag(1, vfd_new(CMD_VFD_NEW, 5, 0, 0, b"")),
        ),
        (
            "bad-new-huge",
            with_flag(1, vfd_new(CMD_VFD_NEW, 5, 0, u32::MAX, b"")),
        ),
        (
            "bad-new-flags",
            with_flag(1, vfd_new(CMD_VFD_NEW, 5, 1, 4096, b"")),
        ),
        (
            "bad-send-count",
            with_flag(1, command(CMD_VFD_SEND, &[1, 29])),
        ),
        (
            "bad-send-short-ids",
            with_flag(1, command(CMD_VFD_SEND, &[1, 2, 7])),
        ),
        (
            "bad-send-sign-bit",
            with_flag(1, command(CMD_VFD_SEND, &[1, 1, 0x8000_0000])),
        ),
        ("bad-close-zero", with_flag(1, command(CMD_VFD_CLOSE, &[0]))),
        (
            "bad-pipe-both",
            with_flag(1, vfd_new(CMD_VFD_NEW_PIPE, 3, 3, 0, b"")),
        ),
        (
            "bad-ctx-name-utf8",
            with_flag(1, vfd_new(CMD_VFD_NEW_CTX_NAMED, 2, 0, 0, b"\xff\xfe")),
        ),
        ("bad-unknown", with_flag(1, command(0x4242, &[1]))),
    ];
    seeds
        .into_iter()
        .map(|(name, bytes)| (name.to_owned(), bytes))
        .collect()
}
