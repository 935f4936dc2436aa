//! virtio-fs tests: a FUSE client over virtio-queue's mock queue (blk's `Vq` driver), against
//! a real temporary directory with a canary file beside it.
//!
//! - `ops`: every operation end to end, byte-exact.
//! - `ro`: a read-only share refuses every modifying request with `EROFS` and stays unchanged.
//! - `escape`: `..`, symlinks (absolute, relative, to an outside directory), a host-made hard
//!   link and names with `/` never reach outside the share; an inotify watch on the canary
//!   proves it was never opened, read or changed.
//! - `parse`: the copy-in parser on malformed requests.
//! - `tocttou`: every metadata byte read once; a racing driver rewriting requests.

mod escape;
mod ops;
mod parse;
mod ro;
mod tocttou;

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use fuse_abi::linux as abi;
use rustix::fs::{Mode, OFlags, CWD};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use zerocopy::{FromBytes, IntoBytes};

use super::request::opcode;
use super::{Fs, FsOptions};
use crate::blk::tests::{Vq, F_WRITE};
use crate::rng::tests::Recorder;
use crate::{NoEvents, VirtioBackend, VIRTIO_F_VERSION_1};

/// Where requests are laid out in guest memory.
pub(crate) const IN: u64 = 0x20_0000;
/// Where replies go.
pub(crate) const OUT: u64 = 0x28_0000;
/// Reply buffer size of an ordinary call.
pub(crate) const OUT_LEN: u32 = 0x2_0000;
/// What the canary file outside the share holds.
pub(crate) const CANARY: &[u8] = b"canary: never to be read by the guest\n";

/// A temporary directory: `share/` (the shared directory) and `outside/canary` beside it.
pub(crate) struct Share {
    pub base: PathBuf,
    pub dir: PathBuf,
    pub outside: PathBuf,
}

impl Share {
    pub(crate) fn new() -> Share {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let base = std::env::temp_dir().join(format!("svmm-fs-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let dir = base.join("share");
        let outside = base.join("outside");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("canary"), CANARY).unwrap();
        Share { base, dir, outside }
    }

    /// A path inside the share.
    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// The share opened as svmm opens it.
    pub(crate) fn fd(&self) -> OwnedFd {
        rustix::fs::open(
            &self.dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap()
    }

    /// Every file below `dir` with its contents (directories as `None`), sorted.
    pub(crate) fn tree(dir: &Path) -> Vec<(String, Option<Vec<u8>>)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let p = e.path();
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                let meta = std::fs::symlink_metadata(&p).unwrap();
                if meta.is_dir() {
                    stack.push(p);
                    out.push((rel, None));
                } else if meta.is_symlink() {
                    let t = std::fs::read_link(&p).unwrap();
                    out.push((rel, Some(t.display().to_string().into_bytes())));
                } else {
                    out.push((rel, Some(std::fs::read(&p).unwrap())));
                }
            }
        }
        out.sort();
        out
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// An fd of the host's `/proc`, as svmm opens it.
pub(crate) fn proc_fd() -> OwnedFd {
    rustix::fs::openat(
        CWD,
        "/proc",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap()
}

/// The options of a writable share tagged `test`.
pub(crate) fn options() -> FsOptions {
    FsOptions {
        tag: "test".into(),
        ..FsOptions::default()
    }
}

/// A guest-side FUSE client on the device's first request queue.
pub(crate) struct Client<'m> {
    pub fs: Fs,
    pub mem: &'m GuestMemoryMmap,
    pub vqs: Vec<Vq<'m>>,
    pub irq: Arc<Recorder>,
    unique: u64,
    /// uid and gid the requests carry.
    pub ids: (u32, u32),
}

/// An error reply's errno (positive).
pub(crate) type Errno = i32;

impl<'m> Client<'m> {
    /// A device on `share` with `options`, activated (no INIT yet).
    pub(crate) fn new(mem: &'m GuestMemoryMmap, share: &Share, options: FsOptions) -> Self {
        let mut fs = Fs::new(share.fd(), proc_fd(), options).unwrap();
        let vqs: Vec<Vq<'m>> = (0..fs.num_queues()).map(|q| Vq::new(mem, q, 64)).collect();
        let irq = Arc::new(Recorder::default());
        fs.activate(
            VIRTIO_F_VERSION_1,
            mem.clone(),
            vqs.iter().map(Vq::queue).collect(),
            irq.clone(),
        )
        .unwrap();
        Client {
            fs,
            mem,
            vqs,
            irq,
            unique: 0,
            ids: (0, 0),
        }
    }

    /// [`new`](Self::new) and INIT.
    pub(crate) fn ready(mem: &'m GuestMemoryMmap, share: &Share, options: FsOptions) -> Self {
        let mut c = Self::new(mem, share, options);
        c.init().unwrap();
        c
    }

    /// A request's bytes: header (with its length) and `args`.
    pub(crate) fn request_bytes(&mut self, opcode: u32, nodeid: u64, args: &[u8]) -> Vec<u8> {
        self.unique += 1;
        let header = abi::fuse_in_header {
            len: (size_of::<abi::fuse_in_header>() + args.len()) as u32,
            opcode,
            unique: self.unique,
            nodeid,
            uid: self.ids.0,
            gid: self.ids.1,
            pid: 42,
            total_extlen: 0,
            padding: 0,
        };
        let mut bytes = header.as_bytes().to_vec();
        bytes.extend_from_slice(args);
        bytes
    }

    /// Sends `descs` (address, length, flags) as one chain on `queue`, runs the device, and
    /// returns the used length.
    pub(crate) fn chain(&mut self, queue: u16, descs: &[(u64, u32, u16)]) -> u32 {
        let vq = &mut self.vqs[usize::from(queue)];
        let before = vq.used_idx();
        let head = vq.push(descs);
        self.fs.process_queue(queue, &mut NoEvents).unwrap();
        let vq = &self.vqs[usize::from(queue)];
        assert_eq!(vq.used_idx(), before.wrapping_add(1), "chain not used");
        let (id, len) = vq.used(before);
        assert_eq!(id, u32::from(head));
        len
    }

    /// Sends raw request bytes with a reply buffer of `out_len` bytes; returns the reply.
    pub(crate) fn raw(&mut self, queue: u16, request: &[u8], out_len: u32) -> (u32, Vec<u8>) {
        self.mem.write_slice(request, GuestAddress(IN)).unwrap();
        self.mem
            .write_slice(&vec![0xEE; out_len as usize], GuestAddress(OUT))
            .unwrap();
        let mut descs = vec![(IN, request.len() as u32, 0)];
        if out_len > 0 {
            descs.push((OUT, out_len, F_WRITE));
        }
        let used = self.chain(queue, &descs);
        let mut out = vec![0u8; used as usize];
        self.mem.read_slice(&mut out, GuestAddress(OUT)).unwrap();
        (used, out)
    }

    /// One request on the first request queue; `Ok(reply body)` or `Err(errno)`.
    pub(crate) fn call(&mut self, opcode: u32, nodeid: u64, args: &[u8]) -> Result<Vec<u8>, Errno> {
        let bytes = self.request_bytes(opcode, nodeid, args);
        let unique = self.unique;
        let (used, out) = self.raw(1, &bytes, OUT_LEN);
        check_reply(used, &out, unique)
    }

    pub(crate) fn init(&mut self) -> Result<abi::fuse_init_out, Errno> {
        let mut args = abi::fuse_init_in {
            major: 7,
            minor: 38,
            max_readahead: 65536,
            flags: abi::FUSE_DO_READDIRPLUS | abi::FUSE_MAX_PAGES | abi::FUSE_ASYNC_READ,
            ..Default::default()
        };
        args.flags |= abi::FUSE_POSIX_LOCKS;
        let body = self.call(opcode::INIT, 0, args.as_bytes())?;
        Ok(struct_of(&body))
    }

    pub(crate) fn lookup(&mut self, parent: u64, name: &str) -> Result<abi::fuse_entry_out, Errno> {
        self.call(opcode::LOOKUP, parent, &cstr(name))
            .map(|b| struct_of(&b))
    }

    pub(crate) fn getattr(&mut self, node: u64) -> Result<abi::fuse_attr, Errno> {
        let args = abi::fuse_getattr_in::default();
        self.call(opcode::GETATTR, node, args.as_bytes())
            .map(|b| struct_of::<abi::fuse_attr_out>(&b).attr)
    }

    pub(crate) fn open(&mut self, node: u64, flags: u32) -> Result<u64, Errno> {
        let args = abi::fuse_open_in {
            flags,
            open_flags: 0,
        };
        self.call(opcode::OPEN, node, args.as_bytes())
            .map(|b| struct_of::<abi::fuse_open_out>(&b).fh)
    }

    pub(crate) fn opendir(&mut self, node: u64) -> Result<u64, Errno> {
        let args = abi::fuse_open_in::default();
        self.call(opcode::OPENDIR, node, args.as_bytes())
            .map(|b| struct_of::<abi::fuse_open_out>(&b).fh)
    }

    pub(crate) fn read(&mut self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let args = abi::fuse_read_in {
            fh,
            offset,
            size,
            ..Default::default()
        };
        self.call(opcode::READ, 0, args.as_bytes())
    }

    pub(crate) fn write(&mut self, fh: u64, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        let args = abi::fuse_write_in {
            fh,
            offset,
            size: data.len() as u32,
            ..Default::default()
        };
        let mut bytes = args.as_bytes().to_vec();
        bytes.extend_from_slice(data);
        self.call(opcode::WRITE, 0, &bytes)
            .map(|b| struct_of::<abi::fuse_write_out>(&b).size)
    }

    pub(crate) fn create(
        &mut self,
        parent: u64,
        name: &str,
        flags: u32,
        mode: u32,
    ) -> Result<(abi::fuse_entry_out, u64), Errno> {
        let args = abi::fuse_create_in {
            flags,
            mode: 0o100000 | mode,
            umask: 0o022,
            open_flags: 0,
        };
        let mut bytes = args.as_bytes().to_vec();
        bytes.extend_from_slice(&cstr(name));
        let body = self.call(opcode::CREATE, parent, &bytes)?;
        let entry: abi::fuse_entry_out = struct_of(&body);
        let open: abi::fuse_open_out = struct_of(&body[size_of::<abi::fuse_entry_out>()..]);
        Ok((entry, open.fh))
    }

    pub(crate) fn mkdir(
        &mut self,
        parent: u64,
        name: &str,
        mode: u32,
    ) -> Result<abi::fuse_entry_out, Errno> {
        let args = abi::fuse_mkdir_in { mode, umask: 0 };
        let mut bytes = args.as_bytes().to_vec();
        bytes.extend_from_slice(&cstr(name));
        self.call(opcode::MKDIR, parent, &bytes)
            .map(|b| struct_of(&b))
    }

    pub(crate) fn symlink(
        &mut self,
        parent: u64,
        name: &str,
        target: &str,
    ) -> Result<abi::fuse_entry_out, Errno> {
        let mut bytes = cstr(name);
        bytes.extend_from_slice(&cstr(target));
        self.call(opcode::SYMLINK, parent, &bytes)
            .map(|b| struct_of(&b))
    }

    pub(crate) fn rename(
        &mut self,
        parent: u64,
        old: &str,
        newdir: u64,
        new: &str,
        flags: u32,
    ) -> Result<(), Errno> {
        let args = abi::fuse_rename2_in {
            newdir,
            flags,
            padding: 0,
        };
        let mut bytes = args.as_bytes().to_vec();
        bytes.extend_from_slice(&cstr(old));
        bytes.extend_from_slice(&cstr(new));
        self.call(opcode::RENAME2, parent, &bytes).map(drop)
    }

    pub(crate) fn link(
        &mut self,
        target: u64,
        parent: u64,
        name: &str,
    ) -> Result<abi::fuse_entry_out, Errno> {
        let args = abi::fuse_link_in { oldnodeid: target };
        let mut bytes = args.as_bytes().to_vec();
        bytes.extend_from_slice(&cstr(name));
        self.call(opcode::LINK, parent, &bytes)
            .map(|b| struct_of(&b))
    }

    pub(crate) fn release(&mut self, fh: u64, dir: bool) -> Result<(), Errno> {
        let args = abi::fuse_release_in {
            fh,
            ..Default::default()
        };
        let op = if dir {
            opcode::RELEASEDIR
        } else {
            opcode::RELEASE
        };
        self.call(op, 0, args.as_bytes()).map(drop)
    }

    pub(crate) fn setattr(
        &mut self,
        node: u64,
        args: abi::fuse_setattr_in,
    ) -> Result<abi::fuse_attr, Errno> {
        self.call(opcode::SETATTR, node, args.as_bytes())
            .map(|b| struct_of::<abi::fuse_attr_out>(&b).attr)
    }

    /// READDIRPLUS of the whole directory, in `size`-byte replies: names with their entries.
    pub(crate) fn readdirplus(
        &mut self,
        node: u64,
        size: u32,
    ) -> Result<Vec<(String, abi::fuse_entry_out)>, Errno> {
        let fh = self.opendir(node)?;
        let mut offset = 0;
        let mut all = Vec::new();
        loop {
            let args = abi::fuse_read_in {
                fh,
                offset,
                size,
                ..Default::default()
            };
            let body = self.call(opcode::READDIRPLUS, node, args.as_bytes())?;
            if body.is_empty() {
                break;
            }
            let mut at = 0;
            while at < body.len() {
                let entry: abi::fuse_entry_out = struct_of(&body[at..]);
                at += size_of::<abi::fuse_entry_out>();
                let d: abi::fuse_dirent = struct_of(&body[at..]);
                let name_at = at + 24;
                let name = &body[name_at..name_at + d.namelen as usize];
                all.push((String::from_utf8(name.to_vec()).unwrap(), entry));
                offset = d.off;
                at = (name_at + d.namelen as usize).next_multiple_of(8);
            }
        }
        self.release(fh, true)?;
        Ok(all)
    }
}

/// Checks a reply's header against the used length and the request; `Ok(body)` or
/// `Err(errno)`.
pub(crate) fn check_reply(used: u32, out: &[u8], unique: u64) -> Result<Vec<u8>, Errno> {
    assert!(used >= 16, "reply of {used} bytes");
    let h: abi::fuse_out_header = struct_of(out);
    assert_eq!(h.len, used, "reply length");
    assert_eq!(h.unique, unique, "reply unique");
    if h.error != 0 {
        assert!(h.error < 0 && h.error > -4096, "error {}", h.error);
        assert_eq!(used, 16, "error with a body");
        return Err(-h.error);
    }
    Ok(out[16..].to_vec())
}

/// A name with its NUL.
pub(crate) fn cstr(s: &str) -> Vec<u8> {
    CString::new(s).unwrap().into_bytes_with_nul()
}

/// A struct from the front of `bytes`.
pub(crate) fn struct_of<T: FromBytes>(bytes: &[u8]) -> T {
    T::read_from_prefix(bytes).unwrap().0
}

/// errno values the tests expect.
pub(crate) mod errno {
    pub const PERM: i32 = 1;
    pub const NOENT: i32 = 2;
    pub const IO: i32 = 5;
    pub const BADF: i32 = 9;
    pub const ACCES: i32 = 13;
    pub const EXIST: i32 = 17;
    pub const NOTDIR: i32 = 20;
    pub const ISDIR: i32 = 21;
    pub const INVAL: i32 = 22;
    pub const ROFS: i32 = 30;
    pub const NAMETOOLONG: i32 = 36;
    pub const NOSYS: i32 = 38;
    pub const NOTEMPTY: i32 = 39;
    pub const LOOP: i32 = 40;
    pub const STALE: i32 = 116;
}
