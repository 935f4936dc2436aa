//! A FUSE client over virtio-fs (virtio 1.2 §5.11, FUSE protocol 7.31): the requests the fs
//! tests send, one at a time on the first request queue (queue 1; queue 0 is hiprio, for
//! FORGET), with the structs encoded by hand (little-endian, `linux/fuse.h` layouts).
//!
//! A request is a chain of the 40-byte `fuse_in_header` (one descriptor), its arguments (one
//! descriptor, if any), a WRITE's payload (one descriptor), then the 16-byte `fuse_out_header`
//! (one device-writable descriptor) and room for the reply's body (one more). Buffers live in
//! the driver's buffer space at fixed offsets: arguments at [`ARGS`], payload at [`PAYLOAD`],
//! the reply body at [`BODY`].

use crate::fig;
use crate::line::Line;
use crate::timer::Timer;
use crate::virtio::mmio::Mmio;
use crate::virtio::queue::{self, Buf};
use crate::virtio::{Device, F_VERSION_1};

/// virtio device ID of a file system device.
pub const ID_FS: u32 = 26;

// Opcodes.
pub const LOOKUP: u32 = 1;
pub const FORGET: u32 = 2;
pub const GETATTR: u32 = 3;
pub const SETATTR: u32 = 4;
pub const READLINK: u32 = 5;
pub const SYMLINK: u32 = 6;
pub const MKNOD: u32 = 8;
pub const MKDIR: u32 = 9;
pub const UNLINK: u32 = 10;
pub const RMDIR: u32 = 11;
pub const LINK: u32 = 13;
pub const OPEN: u32 = 14;
pub const READ: u32 = 15;
pub const WRITE: u32 = 16;
pub const STATFS: u32 = 17;
pub const RELEASE: u32 = 18;
pub const FSYNC: u32 = 20;
pub const SETXATTR: u32 = 21;
pub const INIT: u32 = 26;
pub const OPENDIR: u32 = 27;
pub const RELEASEDIR: u32 = 29;
pub const CREATE: u32 = 35;
pub const READDIRPLUS: u32 = 44;
pub const RENAME2: u32 = 45;

// errno values the tests expect.
pub const ENOENT: i32 = 2;
pub const EINVAL: i32 = 22;
pub const ENOTDIR: i32 = 20;
pub const EROFS: i32 = 30;
pub const ELOOP: i32 = 40;

// open(2) flags.
pub const O_RDONLY: u32 = 0;
pub const O_WRONLY: u32 = 1;
pub const O_RDWR: u32 = 2;
pub const O_EXCL: u32 = 0o200;
pub const O_TRUNC: u32 = 0o1000;

// File types (st_mode & S_IFMT).
pub const S_IFMT: u32 = 0o170000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFLNK: u32 = 0o120000;

/// The root node (the shared directory).
pub const ROOT: u64 = 1;

// Buffer-space layout.
const IN_HEADER: usize = 0;
/// Arguments: up to 4032 bytes.
pub const ARGS: usize = 64;
const ARGS_LEN: usize = 4096 - ARGS;
/// A WRITE's payload: up to 16 KiB.
pub const PAYLOAD: usize = 4096;
pub const PAYLOAD_LEN: usize = 16384;
const OUT_HEADER: usize = PAYLOAD + PAYLOAD_LEN;
/// The reply body: up to 32 KiB.
pub const BODY: usize = 24576;
pub const BODY_LEN: usize = 32768;

/// Feature bits accepted: indirect descriptors and event index are not used by this driver.
const ACCEPT: u64 = F_VERSION_1;
/// How long one request may take (host I/O, `fsync`).
const TIMEOUT_MS: u64 = 10_000;

/// Bytes of `fuse_entry_out` and offsets of the fields the tests read.
pub const ENTRY_LEN: usize = 128;
const ATTR: usize = 40;

/// A node's attributes, as far as the tests look at them.
#[derive(Clone, Copy, Default)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    pub mode: u32,
}

/// A node the device returned.
#[derive(Clone, Copy, Default)]
pub struct Entry {
    pub nodeid: u64,
    pub attr: Attr,
}

/// A request's outcome: the body length, or the errno (positive).
pub type Reply = Result<usize, i32>;

/// The virtio-fs device with a FUSE session.
pub struct Fuse<'t> {
    pub dev: Device<'t>,
    unique: u64,
    /// Requests answered and data bytes moved, for the figures.
    pub requests: u32,
    pub bytes: u64,
    /// The mount tag from the config space.
    pub tag: [u8; 36],
}

/// Little-endian field encoders into a fixed array.
pub struct Args {
    buf: [u8; 512],
    len: usize,
}

impl Args {
    pub const fn new() -> Args {
        Args {
            buf: [0; 512],
            len: 0,
        }
    }
    pub fn u16(self, v: u16) -> Args {
        self.bytes(&v.to_le_bytes())
    }
    pub fn u32(self, v: u32) -> Args {
        self.bytes(&v.to_le_bytes())
    }
    pub fn u64(self, v: u64) -> Args {
        self.bytes(&v.to_le_bytes())
    }
    /// A name with its NUL.
    pub fn name(self, name: &[u8]) -> Args {
        self.bytes(name).bytes(&[0])
    }
    pub fn bytes(mut self, b: &[u8]) -> Args {
        let n = b.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&b[..n]);
        self.len += n;
        self
    }
    pub fn zeroes(self, n: usize) -> Args {
        let mut s = self;
        for _ in 0..n {
            s = s.bytes(&[0]);
        }
        s
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// The little-endian u64 at `at` in the reply body (one 8-byte load when aligned: ring-0
/// code is slow where it is emulated).
pub fn body_u64(at: usize) -> u64 {
    if (BODY + at).is_multiple_of(8) {
        return queue::read_u64(BODY + at);
    }
    let mut b = [0u8; 8];
    queue::read(Buf::writable(BODY + at, 8), &mut b);
    u64::from_le_bytes(b)
}

pub fn body_u32(at: usize) -> u32 {
    let mut b = [0u8; 4];
    queue::read(Buf::writable(BODY + at, 4), &mut b);
    u32::from_le_bytes(b)
}

/// `fuse_entry_out` at `at` in the reply body.
pub fn entry_at(at: usize) -> Entry {
    Entry {
        nodeid: body_u64(at),
        attr: attr_at(at + ATTR),
    }
}

/// `fuse_attr` at `at` in the reply body.
pub fn attr_at(at: usize) -> Attr {
    Attr {
        ino: body_u64(at),
        size: body_u64(at + 8),
        mode: body_u32(at + 60),
    }
}

impl<'t> Fuse<'t> {
    /// Initialises the device with the hiprio and one request queue and reads the tag.
    pub fn open(mmio: Mmio, timer: &'t Timer) -> Result<Fuse<'t>, Line> {
        let negotiated =
            Device::negotiate(mmio, ACCEPT, timer).map_err(|e| fig!("{} step=init", e))?;
        let mut tag = [0u8; 36];
        for (i, chunk) in tag.chunks_mut(4).enumerate() {
            let word = mmio
                .config32(i * 4)
                .map_err(|e| fig!("{} step=config", e))?;
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        let queues = mmio.config32(36).map_err(|e| fig!("{} step=config", e))?;
        if queues == 0 {
            return Err(fig!("num_request_queues=0"));
        }
        let dev = negotiated.start(2).map_err(|e| fig!("{} step=init", e))?;
        Ok(Fuse {
            dev,
            unique: 0,
            requests: 0,
            bytes: 0,
            tag,
        })
    }

    /// The tag up to its first NUL.
    pub fn tag(&self) -> &[u8] {
        let n = self.tag.iter().position(|&c| c == 0).unwrap_or(36);
        &self.tag[..n]
    }

    /// Sends one request on queue `queue`: header, `args`, `payload` bytes from [`PAYLOAD`],
    /// and room for `body` reply bytes (0: no reply expected at all, as for FORGET). Checks
    /// the reply header (length = used length, our unique) and returns the body length or the
    /// errno.
    #[allow(clippy::too_many_arguments)]
    pub fn send(
        &mut self,
        queue: usize,
        opcode: u32,
        nodeid: u64,
        args: &[u8],
        payload: usize,
        body: usize,
        step: &str,
    ) -> Result<Reply, Line> {
        assert!(args.len() <= ARGS_LEN && payload <= PAYLOAD_LEN && body <= BODY_LEN);
        self.unique += 1;
        let len = 40 + args.len() + payload;
        let header = Args::new()
            .u32(len as u32)
            .u32(opcode)
            .u64(self.unique)
            .u64(nodeid)
            .u32(0)
            .u32(0)
            .u32(1)
            .u16(0)
            .u16(0);
        queue::write(Buf::readable(IN_HEADER, 40), header.as_bytes());
        queue::write(Buf::readable(ARGS, args.len() as u32), args);
        let mut bufs = [Buf::readable(0, 0); 5];
        let mut n = 0;
        bufs[n] = Buf::readable(IN_HEADER, 40);
        n += 1;
        if !args.is_empty() {
            bufs[n] = Buf::readable(ARGS, args.len() as u32);
            n += 1;
        }
        if payload > 0 {
            bufs[n] = Buf::readable(PAYLOAD, payload as u32);
            n += 1;
        }
        let expect_reply = body > 0 || opcode != FORGET;
        if expect_reply {
            queue::fill(Buf::writable(OUT_HEADER, 16), 0xee);
            bufs[n] = Buf::writable(OUT_HEADER, 16);
            n += 1;
            if body > 0 {
                bufs[n] = Buf::writable(BODY, body as u32);
                n += 1;
            }
        }
        let used = self
            .dev
            .request_on(queue, &bufs[..n], TIMEOUT_MS)
            .map_err(|e| fig!("{} step={}", e, step))?;
        self.requests += 1;
        if !expect_reply {
            if used != 0 {
                return Err(fig!("reply_to_forget len={} step={}", used, step));
            }
            return Ok(Ok(0));
        }
        let mut h = [0u8; 16];
        queue::read(Buf::writable(OUT_HEADER, 16), &mut h);
        let rlen = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let error = i32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        let mut u = [0u8; 8];
        u.copy_from_slice(&h[8..16]);
        let unique = u64::from_le_bytes(u);
        if rlen != used || used < 16 || unique != self.unique {
            return Err(fig!(
                "bad_reply len={} used={} unique={} want={} step={}",
                rlen,
                used,
                unique,
                self.unique,
                step
            ));
        }
        if error != 0 {
            if !(-4095..=0).contains(&error) || used != 16 {
                return Err(fig!(
                    "bad_error error={} used={} step={}",
                    error,
                    used,
                    step
                ));
            }
            return Ok(Err(-error));
        }
        Ok(Ok(used as usize - 16))
    }

    /// [`send`](Self::send) on queue 1 that must succeed; returns the body length.
    pub fn ok(
        &mut self,
        opcode: u32,
        nodeid: u64,
        args: &[u8],
        body: usize,
        step: &str,
    ) -> Result<usize, Line> {
        match self.send(1, opcode, nodeid, args, 0, body, step)? {
            Ok(n) => Ok(n),
            Err(errno) => Err(fig!("errno={} step={}", errno, step)),
        }
    }

    /// [`send`](Self::send) on queue 1 that must fail with `want` (any error if `want` is 0).
    pub fn fails(
        &mut self,
        opcode: u32,
        nodeid: u64,
        args: &[u8],
        body: usize,
        want: i32,
        step: &str,
    ) -> Result<i32, Line> {
        match self.send(1, opcode, nodeid, args, 0, body, step)? {
            Ok(_) => Err(fig!("succeeded step={}", step)),
            Err(errno) if want == 0 || errno == want => Ok(errno),
            Err(errno) => Err(fig!("errno={} want={} step={}", errno, want, step)),
        }
    }

    /// INIT: 7.31 (any 7.x ≥ 31 answer accepted), READDIRPLUS and big writes offered.
    pub fn init(&mut self) -> Result<(u32, u32), Line> {
        const BIG_WRITES: u32 = 1 << 5;
        const DO_READDIRPLUS: u32 = 1 << 13;
        const MAX_PAGES: u32 = 1 << 22;
        let args = Args::new()
            .u32(7)
            .u32(31)
            .u32(128 * 1024)
            .u32(BIG_WRITES | DO_READDIRPLUS | MAX_PAGES)
            .zeroes(48);
        let n = self.ok(INIT, 0, args.as_bytes(), 64, "init")?;
        let (major, minor) = (body_u32(0), body_u32(4));
        if n < 24 || major != 7 || minor < 31 {
            return Err(fig!("init len={} version={}.{}", n, major, minor));
        }
        Ok((major, minor))
    }

    pub fn lookup(&mut self, parent: u64, name: &[u8]) -> Result<Reply, Line> {
        let args = Args::new().name(name);
        self.send(1, LOOKUP, parent, args.as_bytes(), 0, ENTRY_LEN, "lookup")
    }

    /// LOOKUP that must succeed.
    pub fn entry(&mut self, parent: u64, name: &[u8], step: &str) -> Result<Entry, Line> {
        let args = Args::new().name(name);
        self.ok(LOOKUP, parent, args.as_bytes(), ENTRY_LEN, step)?;
        Ok(entry_at(0))
    }

    pub fn getattr(&mut self, node: u64, step: &str) -> Result<Attr, Line> {
        let args = Args::new().u32(0).u32(0).u64(0);
        self.ok(GETATTR, node, args.as_bytes(), 104, step)?;
        Ok(attr_at(16))
    }

    /// OPEN (or OPENDIR) that must succeed; the handle.
    pub fn open_node(&mut self, node: u64, flags: u32, dir: bool, step: &str) -> Result<u64, Line> {
        let args = Args::new().u32(flags).u32(0);
        let op = if dir { OPENDIR } else { OPEN };
        self.ok(op, node, args.as_bytes(), 16, step)?;
        Ok(body_u64(0))
    }

    pub fn release(&mut self, fh: u64, dir: bool, step: &str) -> Result<(), Line> {
        let args = Args::new().u64(fh).u32(0).u32(0).u64(0);
        let op = if dir { RELEASEDIR } else { RELEASE };
        self.ok(op, 0, args.as_bytes(), 0, step).map(drop)
    }

    /// READ of up to `size` bytes at `offset` into [`BODY`]; the bytes read.
    pub fn read(&mut self, fh: u64, offset: u64, size: u32, step: &str) -> Result<usize, Line> {
        let args = Args::new()
            .u64(fh)
            .u64(offset)
            .u32(size)
            .u32(0)
            .u64(0)
            .u32(0)
            .u32(0);
        let n = self.ok(READ, 0, args.as_bytes(), size as usize, step)?;
        self.bytes += n as u64;
        Ok(n)
    }

    /// WRITE of `size` bytes from [`PAYLOAD`] at `offset`; the bytes written.
    pub fn write(&mut self, fh: u64, offset: u64, size: usize, step: &str) -> Result<u32, Line> {
        let args = Args::new()
            .u64(fh)
            .u64(offset)
            .u32(size as u32)
            .u32(0)
            .u64(0)
            .u32(0)
            .u32(0);
        match self.send(1, WRITE, 0, args.as_bytes(), size, 8, step)? {
            Ok(_) => {
                let n = body_u32(0);
                self.bytes += u64::from(n);
                Ok(n)
            }
            Err(errno) => Err(fig!("errno={} step={}", errno, step)),
        }
    }

    /// CREATE of a regular file; the node and its handle.
    pub fn create(
        &mut self,
        parent: u64,
        name: &[u8],
        flags: u32,
        mode: u32,
        step: &str,
    ) -> Result<(Entry, u64), Line> {
        let args = Args::new()
            .u32(flags)
            .u32(S_IFREG | mode)
            .u32(0o022)
            .u32(0)
            .name(name);
        self.ok(CREATE, parent, args.as_bytes(), ENTRY_LEN + 16, step)?;
        Ok((entry_at(0), body_u64(ENTRY_LEN)))
    }

    /// The arguments of a CREATE (for requests that must fail).
    pub fn create_args(name: &[u8], flags: u32) -> Args {
        Args::new()
            .u32(flags)
            .u32(S_IFREG | 0o644)
            .u32(0)
            .u32(0)
            .name(name)
    }

    pub fn mkdir(&mut self, parent: u64, name: &[u8], step: &str) -> Result<Entry, Line> {
        let args = Args::new().u32(0o755).u32(0).name(name);
        self.ok(MKDIR, parent, args.as_bytes(), ENTRY_LEN, step)?;
        Ok(entry_at(0))
    }

    /// RENAME2 arguments: `old` in the request's node to `new` in `newdir`.
    pub fn rename_args(newdir: u64, old: &[u8], new: &[u8]) -> Args {
        Args::new().u64(newdir).u32(0).u32(0).name(old).name(new)
    }

    /// FORGET on the hiprio queue (no reply).
    pub fn forget(&mut self, node: u64, n: u64) -> Result<(), Line> {
        let args = Args::new().u64(n);
        self.send(0, FORGET, node, args.as_bytes(), 0, 0, "forget")?
            .map(drop)
            .map_err(|e| fig!("errno={} step=forget", e))
    }
}
