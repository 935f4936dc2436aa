//! `fs`, `fs_write`, `fs_ro` and `fs_escape`: a virtio-fs device (device ID 26) through the
//! guest's own FUSE client (`fuse.rs`), against a directory the harness prepared:
//!
//! | path | contents |
//! |---|---|
//! | `hello.txt` | `hello from the host\n` |
//! | `data.bin` | 40000 bytes of the pattern: the 8-byte little-endian word `k` is `(0x73766d6d << 32) \| k` |
//! | `empty` | nothing |
//! | `sub/nested.txt` | `nested\n` |
//!
//! and for `fs_escape` also `passwd` (a symlink to `/etc/passwd`), `abs` (an absolute symlink
//! to a canary file beside the share), `rel` (`../outside/canary`), `outdir` (`../outside`, a
//! directory) and `hardlink` (a hard link to `../outside/linked`, which holds
//! `linked from outside\n`).
//!
//! - `fs` (default with a virtio-fs device): INIT, LOOKUP, GETATTR, OPEN, READ of every file
//!   (byte-exact), a READ at the end, a missing name, READDIRPLUS of the share (each file with
//!   its type and size), STATFS, FORGET on the hiprio queue.
//! - `fs_write` (by name): CREATE `written.bin` with the pattern (three WRITEs), FSYNC, read it
//!   back; MKDIR `newdir`, CREATE `newdir/tmp.txt` (`temporary\n`), RENAME it to
//!   `newdir/renamed.txt`; CREATE and UNLINK `doomed`; SYMLINK `link` → `written.bin`. The
//!   harness then checks the directory.
//! - `fs_ro` (by name, on a `ro` share): every modifying request gets `EROFS`; `hello.txt` still
//!   reads the same.
//! - `fs_escape` (by name): `..`, `.`, names with `/`, the symlinks (never opened, never a
//!   directory, READLINK only) and the hard link (served as itself, leads nowhere) — nothing
//!   outside the share is reached; the harness checks the canary was never read or changed.

mod fuse;

use crate::cmdline::MmioDevice;
use crate::fig;
use crate::line::Line;
use crate::tests::{Ctx, Outcome};
use crate::virtio;
use crate::virtio::queue::{self, Buf};
use fuse::*;

/// The pattern seed ("svmm").
const SEED: u64 = 0x7376_6d6d;
const HELLO: &[u8] = b"hello from the host\n";
const DATA_LEN: u64 = 40000;
const NESTED: &[u8] = b"nested\n";
const LINKED: &[u8] = b"linked from outside\n";
const TEMPORARY: &[u8] = b"temporary\n";
/// READ and WRITE size of the tests.
const CHUNK: u32 = 16384;

/// The first virtio-fs device, or the one `NAME@N` names, initialised (INIT done).
fn open<'t>(ctx: &'t Ctx) -> Result<Fuse<'t>, Line> {
    let mmio =
        virtio::find_nth(ctx.devices, ID_FS, ctx.instance).ok_or_else(|| fig!("no_device"))?;
    let mut f = Fuse::open(mmio, ctx.timer)?;
    f.init()?;
    Ok(f)
}

pub fn applies(devices: &[MmioDevice]) -> bool {
    virtio::find(devices, ID_FS).is_some()
}

/// Tests run by name only.
pub fn by_name(_devices: &[MmioDevice]) -> bool {
    false
}

/// Resets the device and reports the figures plus `extra`.
fn finish(f: Fuse, extra: Line) -> Outcome {
    let (requests, bytes) = (f.requests, f.bytes);
    let mut tag = [0u8; 36];
    let n = f.tag().len();
    tag[..n].copy_from_slice(f.tag());
    f.dev.reset().map_err(|e| fig!("{} step=reset", e))?;
    Ok(fig!(
        "bytes={} requests={} tag={} {}",
        bytes,
        requests,
        core::str::from_utf8(&tag[..n]).unwrap_or("?"),
        core::str::from_utf8(extra.as_bytes()).unwrap_or("")
    ))
}

/// The pattern word `k`.
fn word(k: u64) -> u64 {
    (SEED << 32) | k
}

/// Reads a whole file (node `node`, `size` bytes) and compares it with `want` (or with the
/// pattern when `want` is `None`).
fn check_file(
    f: &mut Fuse,
    node: u64,
    size: u64,
    want: Option<&[u8]>,
    what: &str,
) -> Result<(), Line> {
    let fh = f.open_node(node, O_RDONLY, false, what)?;
    let mut offset = 0u64;
    loop {
        let n = f.read(fh, offset, CHUNK, what)? as u64;
        if n == 0 {
            break;
        }
        match want {
            Some(bytes) => {
                let mut got = [0u8; 64];
                let len = n as usize;
                if offset + n > bytes.len() as u64 || len > got.len() {
                    return Err(fig!("too_long {} len={}", what, offset + n));
                }
                queue::read(Buf::writable(BODY, len as u32), &mut got[..len]);
                let start = offset as usize;
                if got[..len] != bytes[start..start + len] {
                    return Err(fig!("mismatch {} offset={}", what, offset));
                }
            }
            None => {
                if !n.is_multiple_of(8) && offset + n != size {
                    return Err(fig!("short_read {} n={}", what, n));
                }
                for i in 0..(n / 8) {
                    let k = (offset / 8) + i;
                    let got = body_u64(8 * i as usize);
                    if got != word(k) {
                        return Err(fig!("mismatch {} word={} got={:#x}", what, k, got));
                    }
                }
            }
        }
        offset += n;
    }
    if offset != size {
        return Err(fig!("size {} read={} want={}", what, offset, size));
    }
    // Nothing past the end.
    if f.read(fh, size, CHUNK, what)? != 0 {
        return Err(fig!("data_past_end {}", what));
    }
    f.release(fh, false, what)
}

/// A regular file of `size` bytes named `name` in `parent`.
fn file(f: &mut Fuse, parent: u64, name: &[u8], size: u64, step: &str) -> Result<Entry, Line> {
    let e = f.entry(parent, name, step)?;
    if e.attr.mode & S_IFMT != S_IFREG || e.attr.size != size {
        return Err(fig!(
            "attr {} mode={:#o} size={}",
            step,
            e.attr.mode,
            e.attr.size
        ));
    }
    Ok(e)
}

/// READDIRPLUS of `node`: calls `each(name, entry)` for every entry; returns how many.
fn list(
    f: &mut Fuse,
    node: u64,
    mut each: impl FnMut(&[u8], &Entry) -> Result<(), Line>,
) -> Result<u32, Line> {
    let fh = f.open_node(node, O_RDONLY, true, "opendir")?;
    let mut offset = 0u64;
    let mut count = 0;
    loop {
        let args = Args::new()
            .u64(fh)
            .u64(offset)
            .u32(4096)
            .u32(0)
            .u64(0)
            .u32(0)
            .u32(0);
        let n = f.ok(READDIRPLUS, node, args.as_bytes(), 4096, "readdirplus")?;
        if n == 0 {
            break;
        }
        let mut at = 0;
        while at + ENTRY_LEN + 24 <= n {
            let entry = entry_at(at);
            let d = at + ENTRY_LEN;
            offset = body_u64(d + 8);
            let namelen = body_u32(d + 16) as usize;
            let mut name = [0u8; 256];
            if namelen == 0 || namelen > 255 || d + 24 + namelen > n {
                return Err(fig!("bad_dirent at={} namelen={}", at, namelen));
            }
            queue::read(
                Buf::writable(BODY + d + 24, namelen as u32),
                &mut name[..namelen],
            );
            each(&name[..namelen], &entry)?;
            count += 1;
            at = (d + 24 + namelen).next_multiple_of(8);
        }
    }
    f.release(fh, true, "releasedir")?;
    Ok(count)
}

pub fn run(ctx: &Ctx) -> Outcome {
    let mut f = open(ctx)?;
    let hello = file(
        &mut f,
        ROOT,
        b"hello.txt",
        HELLO.len() as u64,
        "lookup_hello",
    )?;
    let attr = f.getattr(hello.nodeid, "getattr")?;
    if attr.size != HELLO.len() as u64 || attr.ino != hello.attr.ino {
        return Err(fig!("getattr size={} ino={}", attr.size, attr.ino));
    }
    check_file(
        &mut f,
        hello.nodeid,
        HELLO.len() as u64,
        Some(HELLO),
        "read_hello",
    )?;
    let data = file(&mut f, ROOT, b"data.bin", DATA_LEN, "lookup_data")?;
    check_file(&mut f, data.nodeid, DATA_LEN, None, "read_data")?;
    let empty = file(&mut f, ROOT, b"empty", 0, "lookup_empty")?;
    check_file(&mut f, empty.nodeid, 0, Some(b""), "read_empty")?;
    let sub = f.entry(ROOT, b"sub", "lookup_sub")?;
    if sub.attr.mode & S_IFMT != S_IFDIR {
        return Err(fig!("sub_not_dir mode={:#o}", sub.attr.mode));
    }
    let nested = file(
        &mut f,
        sub.nodeid,
        b"nested.txt",
        NESTED.len() as u64,
        "lookup_nested",
    )?;
    check_file(
        &mut f,
        nested.nodeid,
        NESTED.len() as u64,
        Some(NESTED),
        "read_nested",
    )?;
    match f.lookup(ROOT, b"missing")? {
        Err(ENOENT) => {}
        other => return Err(fig!("lookup_missing got={:?}", other)),
    }

    let mut seen = 0u32;
    let entries = list(&mut f, ROOT, |name, e| {
        let (size, kind) = match name {
            b"hello.txt" => (HELLO.len() as u64, S_IFREG),
            b"data.bin" => (DATA_LEN, S_IFREG),
            b"empty" => (0, S_IFREG),
            b"sub" => (e.attr.size, S_IFDIR),
            _ => return Ok(()),
        };
        if e.nodeid <= ROOT || e.attr.mode & S_IFMT != kind || e.attr.size != size {
            return Err(fig!(
                "listed {} node={} mode={:#o}",
                core::str::from_utf8(name).unwrap_or("?"),
                e.nodeid,
                e.attr.mode
            ));
        }
        seen += 1;
        Ok(())
    })?;
    if seen != 4 {
        return Err(fig!("listed_files={} want=4 entries={}", seen, entries));
    }
    f.ok(STATFS, ROOT, &[], 80, "statfs")?;
    f.forget(hello.nodeid, 1)?;
    let extra = fig!("files=4 entries={}", entries);
    finish(f, extra)
}

/// Writes the pattern words `first..first + size/8` into the payload buffer.
fn fill_pattern(first: u64, size: usize) {
    for i in 0..size / 8 {
        queue::write_u64(PAYLOAD + 8 * i, word(first + i as u64));
    }
}

pub fn run_write(ctx: &Ctx) -> Outcome {
    let mut f = open(ctx)?;
    let (written, fh) = f.create(ROOT, b"written.bin", O_RDWR | O_EXCL, 0o644, "create")?;
    let mut offset = 0u64;
    while offset < DATA_LEN {
        let size = (DATA_LEN - offset).min(u64::from(CHUNK)) as usize;
        fill_pattern(offset / 8, size);
        let n = f.write(fh, offset, size, "write")?;
        if n as usize != size {
            return Err(fig!("short_write n={} want={}", n, size));
        }
        offset += size as u64;
    }
    let fsync = Args::new().u64(fh).u32(0).u32(0);
    f.ok(FSYNC, written.nodeid, fsync.as_bytes(), 0, "fsync")?;
    f.release(fh, false, "release")?;
    check_file(&mut f, written.nodeid, DATA_LEN, None, "read_back")?;

    let dir = f.mkdir(ROOT, b"newdir", "mkdir")?;
    let (_, fh) = f.create(
        dir.nodeid,
        b"tmp.txt",
        O_WRONLY | O_EXCL,
        0o600,
        "create_tmp",
    )?;
    queue::write(Buf::readable(PAYLOAD, TEMPORARY.len() as u32), TEMPORARY);
    f.write(fh, 0, TEMPORARY.len(), "write_tmp")?;
    f.release(fh, false, "release_tmp")?;
    let rename = Fuse::rename_args(dir.nodeid, b"tmp.txt", b"renamed.txt");
    f.ok(RENAME2, dir.nodeid, rename.as_bytes(), 0, "rename")?;
    let (_, fh) = f.create(ROOT, b"doomed", O_WRONLY | O_EXCL, 0o600, "create_doomed")?;
    f.release(fh, false, "release_doomed")?;
    f.ok(
        UNLINK,
        ROOT,
        Args::new().name(b"doomed").as_bytes(),
        0,
        "unlink",
    )?;
    match f.lookup(ROOT, b"doomed")? {
        Err(ENOENT) => {}
        other => return Err(fig!("unlinked_still_there got={:?}", other)),
    }
    let link = Args::new().name(b"link").name(b"written.bin");
    f.ok(SYMLINK, ROOT, link.as_bytes(), ENTRY_LEN, "symlink")?;
    let extra = fig!("files=3 written={}", DATA_LEN + TEMPORARY.len() as u64);
    finish(f, extra)
}

pub fn run_ro(ctx: &Ctx) -> Outcome {
    let mut f = open(ctx)?;
    let hello = file(
        &mut f,
        ROOT,
        b"hello.txt",
        HELLO.len() as u64,
        "lookup_hello",
    )?;
    let sub = f.entry(ROOT, b"sub", "lookup_sub")?;
    check_file(
        &mut f,
        hello.nodeid,
        HELLO.len() as u64,
        Some(HELLO),
        "read_before",
    )?;
    let h = hello.nodeid;
    let setattr = Args::new().u32(8).u32(0).u64(0).u64(0).zeroes(64);
    let cases: [(&str, u32, u64, Args, usize); 12] = [
        (
            "create",
            CREATE,
            ROOT,
            Fuse::create_args(b"new", O_RDWR | O_EXCL),
            ENTRY_LEN + 16,
        ),
        (
            "mkdir",
            MKDIR,
            ROOT,
            Args::new().u32(0o755).u32(0).name(b"newdir"),
            ENTRY_LEN,
        ),
        ("unlink", UNLINK, ROOT, Args::new().name(b"hello.txt"), 0),
        (
            "rmdir",
            RMDIR,
            sub.nodeid,
            Args::new().name(b"nested.txt"),
            0,
        ),
        (
            "rename",
            RENAME2,
            ROOT,
            Fuse::rename_args(ROOT, b"hello.txt", b"moved"),
            0,
        ),
        (
            "symlink",
            SYMLINK,
            ROOT,
            Args::new().name(b"l").name(b"hello.txt"),
            ENTRY_LEN,
        ),
        (
            "link",
            LINK,
            ROOT,
            Args::new().u64(h).name(b"hl"),
            ENTRY_LEN,
        ),
        ("truncate", SETATTR, h, setattr, 104),
        ("open_write", OPEN, h, Args::new().u32(O_WRONLY).u32(0), 16),
        (
            "open_trunc",
            OPEN,
            h,
            Args::new().u32(O_RDONLY | O_TRUNC).u32(0),
            16,
        ),
        (
            "mknod",
            MKNOD,
            ROOT,
            Args::new()
                .u32(S_IFREG | 0o644)
                .u32(0)
                .u32(0)
                .u32(0)
                .name(b"n"),
            ENTRY_LEN,
        ),
        (
            "setxattr",
            SETXATTR,
            h,
            Args::new().u32(1).u32(0).name(b"user.x").bytes(b"v"),
            0,
        ),
    ];
    for (step, op, node, args, body) in cases.iter() {
        f.fails(*op, *node, args.as_bytes(), *body, EROFS, step)?;
    }
    check_file(
        &mut f,
        hello.nodeid,
        HELLO.len() as u64,
        Some(HELLO),
        "read_after",
    )?;
    let extra = fig!("refused={}", cases.len());
    finish(f, extra)
}

pub fn run_escape(ctx: &Ctx) -> Outcome {
    let mut f = open(ctx)?;
    let mut refused = 0u32;
    for name in [
        &b".."[..],
        b".",
        b"../outside",
        b"/etc/passwd",
        b"outdir/canary",
        b"sub/../../outside/canary",
    ] {
        match f.lookup(ROOT, name)? {
            Err(EINVAL) => refused += 1,
            other => {
                return Err(fig!(
                    "lookup {} got={:?}",
                    core::str::from_utf8(name).unwrap_or("?"),
                    other
                ))
            }
        }
    }
    for name in [&b"passwd"[..], b"abs", b"rel", b"outdir"] {
        let what = core::str::from_utf8(name).unwrap_or("?");
        let e = f.entry(ROOT, name, what)?;
        if e.attr.mode & S_IFMT != S_IFLNK {
            return Err(fig!("not_a_symlink {} mode={:#o}", what, e.attr.mode));
        }
        f.fails(
            OPEN,
            e.nodeid,
            Args::new().u32(O_RDONLY).u32(0).as_bytes(),
            16,
            ELOOP,
            what,
        )?;
        f.fails(
            OPENDIR,
            e.nodeid,
            Args::new().u32(0).u32(0).as_bytes(),
            16,
            ENOTDIR,
            what,
        )?;
        f.fails(
            LOOKUP,
            e.nodeid,
            Args::new().name(b"canary").as_bytes(),
            ENTRY_LEN,
            ENOTDIR,
            what,
        )?;
        if f.ok(READLINK, e.nodeid, &[], 4096, what)? == 0 {
            return Err(fig!("empty_readlink {}", what));
        }
        refused += 3;
    }
    let hard = file(&mut f, ROOT, b"hardlink", LINKED.len() as u64, "hardlink")?;
    check_file(
        &mut f,
        hard.nodeid,
        LINKED.len() as u64,
        Some(LINKED),
        "read_hardlink",
    )?;
    f.fails(
        LOOKUP,
        hard.nodeid,
        Args::new().name(b"canary").as_bytes(),
        ENTRY_LEN,
        ENOTDIR,
        "hardlink_dir",
    )?;
    f.fails(
        LOOKUP,
        hard.nodeid,
        Args::new().name(b"..").as_bytes(),
        ENTRY_LEN,
        EINVAL,
        "hardlink_up",
    )?;
    let hello = f.entry(ROOT, b"hello.txt", "lookup_hello")?;
    let slashes: [(&str, u32, Args, usize); 5] = [
        (
            "create_up",
            CREATE,
            Fuse::create_args(b"../evil", O_RDWR | O_EXCL),
            ENTRY_LEN + 16,
        ),
        (
            "mkdir_up",
            MKDIR,
            Args::new().u32(0o755).u32(0).name(b"../evildir"),
            ENTRY_LEN,
        ),
        (
            "rename_up",
            RENAME2,
            Fuse::rename_args(ROOT, b"hello.txt", b"../stolen"),
            0,
        ),
        (
            "symlink_slash",
            SYMLINK,
            Args::new().name(b"a/b").name(b"x"),
            ENTRY_LEN,
        ),
        (
            "link_up",
            LINK,
            Args::new().u64(hello.nodeid).name(b"../l"),
            ENTRY_LEN,
        ),
    ];
    for (step, op, args, body) in slashes.iter() {
        f.fails(*op, ROOT, args.as_bytes(), *body, EINVAL, step)?;
        refused += 1;
    }
    // A symlink the guest makes is just as inert.
    let mine = Args::new().name(b"mine").name(b"/etc/passwd");
    f.ok(SYMLINK, ROOT, mine.as_bytes(), ENTRY_LEN, "symlink_mine")?;
    let node = entry_at(0).nodeid;
    f.fails(
        OPEN,
        node,
        Args::new().u32(O_RDONLY).u32(0).as_bytes(),
        16,
        ELOOP,
        "open_mine",
    )?;
    f.ok(
        UNLINK,
        ROOT,
        Args::new().name(b"mine").as_bytes(),
        0,
        "unlink_mine",
    )?;
    // Node ids the guest never got lead nowhere.
    for node in [0u64, 12345, u64::MAX] {
        let args = Args::new().u32(0).u32(0).u64(0);
        f.fails(GETATTR, node, args.as_bytes(), 104, 0, "stale_node")?;
        refused += 1;
    }
    let extra = fig!("refused={}", refused);
    finish(f, extra)
}
