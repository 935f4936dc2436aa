//! The guest side of virtio-wl: the device's two queues, its commands, and the messages it
//! puts in the in queue.
//!
//! Buffer space (`crate::virtio::queue`): [`IN_BUFS`] page-sized in buffers from offset 0, the
//! command at [`CMD_OFF`], the response at [`RESP_OFF`]. The in buffers stay posted: each one
//! the device fills is read, then given back at once.

use crate::fig;
use crate::line::Line;
use crate::tests::Ctx;
use crate::virtio::queue::{self, Buf};
use crate::virtio::{self, Device, ID_WL};

/// Feature bit 1: the READ/WRITE flag semantics.
pub const F_TRANS_FLAGS: u64 = 1 << 1;
/// Feature bit 3: `pfn`s are page numbers inside shared-memory region 0.
pub const F_USE_SHMEM: u64 = 1 << 3;

pub const CMD_VFD_NEW: u32 = 0x100;
pub const CMD_VFD_CLOSE: u32 = 0x101;
pub const CMD_VFD_SEND: u32 = 0x102;
pub const CMD_VFD_RECV: u32 = 0x103;
pub const CMD_VFD_NEW_CTX: u32 = 0x104;
pub const CMD_VFD_NEW_PIPE: u32 = 0x105;
pub const CMD_VFD_HUP: u32 = 0x106;
pub const RESP_OK: u32 = 0x1000;
pub const RESP_VFD_NEW: u32 = 0x1001;
pub const VFD_WRITE: u32 = 1;
pub const VFD_READ: u32 = 2;

const IN_BUFS: usize = 8;
const IN_LEN: u32 = 4096;
const CMD_OFF: usize = IN_BUFS * IN_LEN as usize;
/// Longest command (a `VFD_SEND` of up to 8 KiB of data).
pub const CMD_MAX: usize = 8192 + 16 + 4 * 28;
const RESP_OFF: usize = CMD_OFF + 16 * 1024;
const RESP_LEN: u32 = 64;
/// How long one command or one wait for host input may take.
pub const TIMEOUT_MS: u64 = 10_000;

/// A response to a command.
pub struct Resp {
    pub code: u32,
    pub id: u32,
    pub flags: u32,
    pub pfn: u64,
    pub size: u32,
}

/// A message from the in queue.
pub struct InMsg {
    pub kind: u32,
    /// The vfd it is about (`VFD_RECV`, `VFD_HUP`) or the new vfd's id (`VFD_NEW`).
    pub id: u32,
    pub flags: u32,
    pub pfn: u64,
    pub size: u32,
    /// vfds that came with a `VFD_RECV`.
    pub vfds: [u32; 28],
    pub nvfds: usize,
    /// A `VFD_RECV`'s bytes.
    pub data: [u8; IN_LEN as usize],
    pub len: usize,
}

/// An initialised virtio-wl device.
pub struct WlDev<'t> {
    dev: Device<'t>,
    /// Shared-memory region 0: guest-physical base and length.
    pub shm: (u64, u64),
    /// In buffer index of each head in flight on the in queue.
    in_of_head: [usize; 16],
    /// Poll the rings only, never `InterruptStatus` (ring-3 benchmark loops: every register
    /// access is an exit to the VMM), with interrupts declined ([`WlDev::set_lean`]).
    lean: bool,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl<'t> WlDev<'t> {
    /// Sets up the `n`-th virtio-wl device (`TRANS_FLAGS` and `USE_SHMEM` required) and posts
    /// the in buffers.
    pub fn open(ctx: &'t Ctx, n: usize) -> Result<WlDev<'t>, Line> {
        let mmio =
            virtio::find_nth(ctx.devices, ID_WL, n).ok_or_else(|| fig!("no_device n={}", n))?;
        let wanted = F_TRANS_FLAGS | F_USE_SHMEM;
        let negotiated =
            Device::negotiate(mmio, wanted, ctx.timer).map_err(|e| fig!("{} step=init", e))?;
        if negotiated.features() & wanted != wanted {
            return Err(fig!("features={:#x}", negotiated.features()));
        }
        let dev = negotiated.start(2).map_err(|e| fig!("{} step=start", e))?;
        let shm = mmio.shm_region(0).ok_or_else(|| fig!("no_shm_region"))?;
        let mut wl = WlDev {
            dev,
            shm,
            in_of_head: [usize::MAX; 16],
            lean: false,
        };
        for i in 0..IN_BUFS {
            wl.post_in(i);
        }
        wl.dev.notify(0);
        Ok(wl)
    }

    /// Enters or leaves lean mode: the rings polled only, and the device asked not to interrupt
    /// on either queue (`VIRTQ_AVAIL_F_NO_INTERRUPT`) while it lasts, as a polling driver does.
    pub fn set_lean(&mut self, lean: bool) {
        self.lean = lean;
        for queue in 0..2 {
            self.dev.set_no_interrupt(queue, lean);
        }
    }

    fn post_in(&mut self, i: usize) {
        let head = self
            .dev
            .submit(0, &[Buf::writable(i * IN_LEN as usize, IN_LEN)])
            .head;
        self.in_of_head[head as usize] = i;
    }

    /// Runs one command; its response.
    pub fn command(&mut self, cmd: &[u8]) -> Result<Resp, Line> {
        queue::write(Buf::readable(CMD_OFF, cmd.len() as u32), cmd);
        self.run(cmd.len() as u32)
    }

    /// Runs the `len`-byte command already in the command buffer; its response.
    fn run(&mut self, len: u32) -> Result<Resp, Line> {
        let out = Buf::readable(CMD_OFF, len);
        let resp = Buf::writable(RESP_OFF, RESP_LEN);
        let len = if self.lean {
            self.dev.submit(1, &[out, resp]);
            self.dev.notify(1);
            self.spin(1)?.1
        } else {
            self.dev
                .request_on(1, &[out, resp], TIMEOUT_MS)
                .map_err(|e| fig!("{} step=command", e))?
        };
        let mut bytes = [0u8; RESP_LEN as usize];
        queue::read(resp, &mut bytes[..len as usize]);
        if len < 8 {
            return Err(fig!("short_response len={}", len));
        }
        let code = le32(&bytes, 0);
        let full = len >= 28;
        Ok(Resp {
            code,
            id: if full { le32(&bytes, 8) } else { 0 },
            flags: if full { le32(&bytes, 12) } else { 0 },
            pfn: if full {
                u64::from(le32(&bytes, 16)) | (u64::from(le32(&bytes, 20)) << 32)
            } else {
                0
            },
            size: if full { le32(&bytes, 24) } else { 0 },
        })
    }

    /// `VFD_SEND` of `data` with `vfds` to `id`, encoded straight into the command buffer.
    pub fn send(&mut self, id: u32, vfds: &[u32], data: &[u8]) -> Result<Resp, Line> {
        let mut head = [0u8; 16 + 4 * 28];
        let mut words = [0u32; 30];
        words[0] = id;
        words[1] = vfds.len() as u32;
        words[2..2 + vfds.len()].copy_from_slice(vfds);
        let n = encode(&mut head, CMD_VFD_SEND, &words[..2 + vfds.len()]);
        if n + data.len() > CMD_MAX {
            return Err(fig!("send_too_long len={}", data.len()));
        }
        queue::write(Buf::readable(CMD_OFF, n as u32), &head[..n]);
        queue::write(Buf::readable(CMD_OFF + n, data.len() as u32), data);
        self.run((n + data.len()) as u32)
    }

    /// A command that must answer `RESP_OK`.
    pub fn command_ok(&mut self, cmd: &[u8], what: &str) -> Result<(), Line> {
        let resp = self.command(cmd)?;
        if resp.code != RESP_OK {
            return Err(fig!("{} resp={:#x}", what, resp.code));
        }
        Ok(())
    }

    /// A `VFD_NEW*` command that must answer `RESP_VFD_NEW` for `id`.
    pub fn command_new(&mut self, cmd: &[u8], what: &str) -> Result<Resp, Line> {
        let resp = self.command(cmd)?;
        if resp.code != RESP_VFD_NEW || resp.id != le32(cmd, 8) {
            return Err(fig!("{} resp={:#x} id={:#x}", what, resp.code, resp.id));
        }
        Ok(resp)
    }

    /// Polls queue `queue`'s used ring (only) for the next element, up to [`TIMEOUT_MS`].
    fn spin(&mut self, queue: usize) -> Result<(u16, u32), Line> {
        let timer = self.dev.timer();
        let deadline = timer.deadline_ms(TIMEOUT_MS);
        loop {
            if let Some((id, len)) = self.dev.poll_used(queue) {
                let head = u16::try_from(id).map_err(|_| fig!("used_id got={}", id))?;
                return Ok((head, len));
            }
            if timer.expired(deadline) {
                return Err(fig!("timeout queue={} lean=1", queue));
            }
        }
    }

    /// Waits for the next in-queue message.
    pub fn recv(&mut self, timeout_ms: u64) -> Result<InMsg, Line> {
        let (head, len) = if self.lean {
            self.spin(0)?
        } else {
            self.dev
                .wait_any(0, timeout_ms)
                .map_err(|e| fig!("{} step=recv", e))?
        };
        let i = *self
            .in_of_head
            .get(head as usize)
            .filter(|&&i| i < IN_BUFS)
            .ok_or_else(|| fig!("in_head head={}", head))?;
        let result = self.decode(i * IN_LEN as usize, (len as usize).min(IN_LEN as usize));
        // The buffer goes back to the device whatever it held.
        self.post_in(i);
        self.dev.notify(0);
        result
    }

    /// The message of `len` bytes in the in buffer at offset `buf`.
    fn decode(&self, buf: usize, len: usize) -> Result<InMsg, Line> {
        let mut header = [0u8; 16 + 4 * 28];
        let got = queue::read(
            Buf::writable(buf, IN_LEN),
            &mut header[..len.min(16 + 4 * 28)],
        );
        let bytes = &header[..got];
        if len < 12 {
            return Err(fig!("short_in len={}", len));
        }
        let mut msg = InMsg {
            kind: le32(bytes, 0),
            id: le32(bytes, 8),
            flags: 0,
            pfn: 0,
            size: 0,
            vfds: [0; 28],
            nvfds: 0,
            data: [0; IN_LEN as usize],
            len: 0,
        };
        match msg.kind {
            CMD_VFD_NEW if len >= 28 => {
                msg.flags = le32(bytes, 12);
                msg.pfn = u64::from(le32(bytes, 16)) | (u64::from(le32(bytes, 20)) << 32);
                msg.size = le32(bytes, 24);
            }
            CMD_VFD_RECV if len >= 16 => {
                let n = le32(bytes, 12) as usize;
                if n > 28 || 16 + 4 * n > len {
                    return Err(fig!("bad_recv vfds={}", n));
                }
                for k in 0..n {
                    msg.vfds[k] = le32(bytes, 16 + 4 * k);
                }
                msg.nvfds = n;
                let start = 16 + 4 * n;
                msg.len = len - start;
                let data = Buf::writable(buf + start, msg.len as u32);
                queue::read(data, &mut msg.data[..msg.len]);
            }
            CMD_VFD_HUP => {}
            other => return Err(fig!("bad_in kind={:#x} len={}", other, len)),
        }
        Ok(msg)
    }

    /// Resets the device (its vfds are gone).
    pub fn close(self) -> Result<(), Line> {
        self.dev.reset().map_err(|e| fig!("{} step=reset", e))
    }
}

/// A header and words, into `out`; the number of bytes.
pub fn encode(out: &mut [u8], kind: u32, words: &[u32]) -> usize {
    out[..4].copy_from_slice(&kind.to_le_bytes());
    out[4..8].copy_from_slice(&0u32.to_le_bytes());
    for (i, w) in words.iter().enumerate() {
        out[8 + 4 * i..12 + 4 * i].copy_from_slice(&w.to_le_bytes());
    }
    8 + 4 * words.len()
}

/// A `ctrl_vfd_new` (64 bytes, as Linux's driver sends it) of type `kind`.
pub fn vfd_new(kind: u32, id: u32, flags: u32, size: u32) -> [u8; 64] {
    let mut out = [0u8; 64];
    encode(&mut out, kind, &[id, flags, 0, 0, size]);
    out
}

/// `VFD_CLOSE id`.
pub fn close(id: u32) -> [u8; 12] {
    let mut out = [0u8; 12];
    encode(&mut out, CMD_VFD_CLOSE, &[id]);
    out
}
