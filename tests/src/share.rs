//! Shared directories for the virtio-fs trials and benchmarks: the layout the test guest's fs
//! tests expect (`images/testguest/src/tests/fs/mod.rs`), the canary beside it, the host's view
//! of a tree, and an inotify watch proving a file was never touched.

use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::paths::TempDir;

/// `hello.txt`.
pub const HELLO: &[u8] = b"hello from the host\n";
/// `sub/nested.txt`.
pub const NESTED: &[u8] = b"nested\n";
/// `outside/linked`, hard-linked into the share as `hardlink` for `fs_escape`.
pub const LINKED: &[u8] = b"linked from outside\n";
/// The canary beside the share.
pub const CANARY: &[u8] = b"canary: the guest must never read or change this\n";
/// `data.bin`'s length.
pub const DATA_LEN: usize = 40000;
/// The guest's pattern seed ("svmm").
const SEED: u64 = 0x7376_6d6d;
/// `bench.bin`'s size for the fs benchmarks.
pub const BENCH_FILE_BYTES: u64 = 64 << 20;

/// The pattern the fs tests use: the little-endian word `k` is `(SEED << 32) | k`.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len.div_ceil(8))
        .flat_map(|k| ((SEED << 32) | k as u64).to_le_bytes())
        .take(len)
        .collect()
}

/// A temporary directory holding `share/` (the shared directory) and `outside/` (the canary,
/// and the target of the escape test's links) side by side.
pub struct Share {
    pub dir: TempDir,
    pub share: PathBuf,
    pub outside: PathBuf,
}

impl Share {
    /// An empty share and `outside/canary`, every directory 0777 so a worker running under its
    /// own uid may write in the share.
    pub fn empty(label: &str) -> Share {
        let dir = TempDir::new(label);
        let share = dir.path().join("share");
        let outside = dir.path().join("outside");
        fs::create_dir(&share).expect("create share");
        fs::create_dir(&outside).expect("create outside");
        fs::write(outside.join("canary"), CANARY).expect("write canary");
        fs::write(outside.join("linked"), LINKED).expect("write linked");
        for d in [dir.path(), &share, &outside] {
            open_up(d);
        }
        Share {
            dir,
            share,
            outside,
        }
    }

    /// The files every fs test reads (`hello.txt`, `data.bin`, `empty`, `sub/nested.txt`).
    pub fn with_files(label: &str) -> Share {
        let s = Share::empty(label);
        s.write("hello.txt", HELLO);
        s.write("data.bin", &pattern(DATA_LEN));
        s.write("empty", b"");
        fs::create_dir(s.share.join("sub")).expect("create sub");
        open_up(&s.share.join("sub"));
        s.write("sub/nested.txt", NESTED);
        s
    }

    /// [`with_files`](Self::with_files) and the escape test's links: `passwd` → `/etc/passwd`,
    /// `abs` → the canary's absolute path, `rel` → `../outside/canary`, `outdir` →
    /// `../outside`, and `hardlink`, a hard link to `outside/linked`.
    pub fn with_escapes(label: &str) -> Share {
        let s = Share::with_files(label);
        symlink("/etc/passwd", s.share.join("passwd")).expect("symlink");
        symlink(s.canary(), s.share.join("abs")).expect("symlink");
        symlink("../outside/canary", s.share.join("rel")).expect("symlink");
        symlink("../outside", s.share.join("outdir")).expect("symlink");
        fs::hard_link(s.outside.join("linked"), s.share.join("hardlink")).expect("hard link");
        s
    }

    /// Writes `contents` to `rel` in the share, readable and writable by anyone.
    pub fn write(&self, rel: &str, contents: &[u8]) {
        let path = self.share.join(rel);
        fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).expect("chmod");
    }

    /// The canary file.
    pub fn canary(&self) -> PathBuf {
        self.outside.join("canary")
    }

    /// `fs=SHARE,tag=TAG` and `options`.
    pub fn spec(&self, tag: &str, options: &str) -> String {
        format!("fs={},tag={tag}{options}", self.share.display())
    }
}

/// Lets anyone enter, list and create in `dir` (a worker has a uid of its own).
fn open_up(dir: &Path) {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o777)).expect("chmod 777");
}

/// Every entry below `dir`, sorted: relative path, and the file's contents, a symlink's target
/// (`-> target`) or `None` for a directory.
pub fn tree(dir: &Path) -> Vec<(String, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(dir).unwrap_or(&p).display().to_string();
            let Ok(meta) = fs::symlink_metadata(&p) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(p);
                out.push((rel, None));
            } else if meta.is_symlink() {
                let t = fs::read_link(&p).map(|t| t.display().to_string());
                out.push((
                    rel,
                    Some(format!("-> {}", t.unwrap_or_default()).into_bytes()),
                ));
            } else {
                out.push((rel, Some(fs::read(&p).unwrap_or_default())));
            }
        }
    }
    out.sort();
    out
}

/// An inotify watch on a file or directory: every open, read, write, attribute change, move or
/// deletion of it (for a directory: of it or anything directly in it) shows.
pub struct Watch {
    fd: OwnedFd,
}

impl Watch {
    /// Starts watching `path`.
    pub fn new(path: &Path) -> std::io::Result<Watch> {
        // SAFETY: inotify_init1 takes flags only and returns a new fd or -1.
        let raw = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh fd owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        let mask = libc::IN_ACCESS
            | libc::IN_MODIFY
            | libc::IN_ATTRIB
            | libc::IN_OPEN
            | libc::IN_CLOSE_WRITE
            | libc::IN_CLOSE_NOWRITE
            | libc::IN_MOVE_SELF
            | libc::IN_DELETE_SELF
            | libc::IN_CREATE
            | libc::IN_DELETE
            | libc::IN_MOVED_FROM
            | libc::IN_MOVED_TO;
        // SAFETY: `c` is a valid C string and `fd` an inotify instance.
        if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), mask) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Watch { fd })
    }

    /// The event masks seen since the watch began (empty: untouched).
    pub fn events(&self) -> Vec<u32> {
        let mut buf = [0u8; 4096];
        let mut masks = Vec::new();
        loop {
            // SAFETY: `buf` is valid for its length; the fd is non-blocking.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return masks;
            }
            let mut at = 0usize;
            while at + 16 <= n as usize {
                let mask = u32::from_ne_bytes([buf[at + 4], buf[at + 5], buf[at + 6], buf[at + 7]]);
                let len =
                    u32::from_ne_bytes([buf[at + 12], buf[at + 13], buf[at + 14], buf[at + 15]]);
                masks.push(mask);
                at += 16 + len as usize;
            }
        }
    }
}
