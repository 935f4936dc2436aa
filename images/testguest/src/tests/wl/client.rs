//! A Wayland client on a virtio-wl context: requests out as `VFD_SEND`, events in from
//! `VFD_RECV`, the registry's globals, and the generic events every client handles
//! (`wl_display.error`, `delete_id`, `xdg_wm_base.ping`).
//!
//! Object ids: 1 is `wl_display`; the client hands out 2, 3, ... Bytes that arrive for other
//! vfds (a pipe the test reads) are kept in [`Side`] for the test to look at.

use core::cell::UnsafeCell;

use super::dev::{self, InMsg, WlDev, CMD_VFD_HUP, CMD_VFD_NEW, CMD_VFD_NEW_CTX, CMD_VFD_RECV};
use super::wire::{Event, Msg, Stream};
use crate::arch::Page;
use crate::fig;
use crate::line::Line;
use crate::tests::Ctx;

const DISPLAY: u32 = 1;
const MAX_GLOBALS: usize = 48;
const IFACE_MAX: usize = 48;
/// Bytes kept of data for a side vfd.
const SIDE_MAX: usize = 16 * 1024;

/// A global the registry announced.
#[derive(Clone, Copy)]
pub struct Global {
    pub name: u32,
    pub version: u32,
    iface: [u8; IFACE_MAX],
    iface_len: usize,
}

impl Global {
    pub fn interface(&self) -> &str {
        core::str::from_utf8(&self.iface[..self.iface_len]).unwrap_or("?")
    }
}

/// The side vfd's bytes: static, not zeroed at boot (see `wire::Stream`).
#[link_section = ".noinit.wl"]
static SIDE_BUF: Page<[u8; SIDE_MAX]> = Page(UnsafeCell::new([0; SIDE_MAX]));

/// What arrived for the vfd the test watches besides the context.
pub struct Side {
    pub id: u32,
    pub data: &'static mut [u8; SIDE_MAX],
    pub len: usize,
    pub hup: bool,
}

/// A Wayland connection through virtio-wl.
pub struct Client<'t> {
    pub dev: WlDev<'t>,
    /// The context's vfd id.
    pub ctx: u32,
    next_object: u32,
    stream: Stream,
    pub globals: [Global; MAX_GLOBALS],
    pub nglobals: usize,
    /// The `xdg_wm_base` object, if bound (for pings).
    pub wm_base: u32,
    pub side: Side,
    /// Host vfds the compositor sent (closed at once: the tests need none).
    pub received_vfds: u32,
    /// The last object id `wl_display.delete_id` released (it may be used again).
    pub deleted: u32,
}

impl<'t> Client<'t> {
    /// Opens the `n`-th virtio-wl device and a context on it (vfd id `ctx`).
    pub fn connect(ctx: &'t Ctx, n: usize, ctx_id: u32) -> Result<Client<'t>, Line> {
        // First: the one-client guard.
        let stream = Stream::new();
        let mut dev = WlDev::open(ctx, n)?;
        let resp = dev.command_new(&dev::vfd_new(CMD_VFD_NEW_CTX, ctx_id, 0, 0), "new_ctx")?;
        if resp.flags != dev::VFD_READ | dev::VFD_WRITE {
            return Err(fig!("ctx_flags flags={:#x}", resp.flags));
        }
        Ok(Client {
            dev,
            ctx: ctx_id,
            next_object: 2,
            stream,
            globals: [Global {
                name: 0,
                version: 0,
                iface: [0; IFACE_MAX],
                iface_len: 0,
            }; MAX_GLOBALS],
            nglobals: 0,
            wm_base: 0,
            side: Side {
                id: 0,
                // SAFETY: the stream above took its one-client guard, so no other Client (and
                // so no other reference to SIDE_BUF) exists until this one is dropped.
                data: unsafe { &mut *SIDE_BUF.0.get() },
                len: 0,
                hup: false,
            },
            received_vfds: 0,
            deleted: 0,
        })
    }

    /// Resets the device and gives up the client's buffers.
    pub fn close(self) -> Result<(), Line> {
        self.dev.close()
    }

    /// A fresh object id.
    pub fn new_id(&mut self) -> u32 {
        let id = self.next_object;
        self.next_object += 1;
        id
    }

    /// Sends a request (with vfds, e.g. a pool's memory).
    pub fn send(&mut self, msg: &mut Msg, vfds: &[u32]) -> Result<(), Line> {
        self.send_raw(self.ctx, msg.bytes(), vfds)
    }

    /// Sends bytes to a vfd (a context or a pipe the guest writes).
    pub fn send_raw(&mut self, id: u32, data: &[u8], vfds: &[u32]) -> Result<(), Line> {
        let resp = self.dev.send(id, vfds, data)?;
        if resp.code != dev::RESP_OK {
            return Err(fig!("send resp={:#x} vfd={}", resp.code, id));
        }
        Ok(())
    }

    /// The next event for the test. Handles `wl_display.error` (a failure) and pings itself
    /// (`delete_id` is noted in [`Client::deleted`] and returned); keeps what arrives for the
    /// side vfd.
    pub fn next_event(&mut self) -> Result<Event, Line> {
        loop {
            if let Some(event) = self.stream.next().map_err(|_| fig!("stream_overflow"))? {
                match (event.object, event.opcode) {
                    (DISPLAY, 0) => {
                        let mut a = event.args();
                        let (object, code) = (a.uint(), a.uint());
                        let mut reason =
                            fig!("wl_display_error object={} code={} msg=", object, code);
                        reason.push_bytes(a.bytes(true));
                        return Err(reason);
                    }
                    (DISPLAY, 1) => {
                        // Returned too: a caller waiting to use the id again looks for it.
                        self.deleted = event.args().uint();
                        return Ok(event);
                    }
                    (o, 0) if o == self.wm_base && o != 0 => {
                        let serial = event.args().uint();
                        self.send(&mut Msg::new(self.wm_base, 3).uint(serial), &[])?;
                        continue;
                    }
                    _ => return Ok(event),
                }
            }
            let msg = self.dev.recv(dev::TIMEOUT_MS)?;
            self.take(&msg)?;
        }
    }

    /// Files one in-queue message: context bytes into the stream, side-vfd bytes aside, new
    /// host vfds closed.
    fn take(&mut self, msg: &InMsg) -> Result<(), Line> {
        match msg.kind {
            CMD_VFD_NEW => {
                self.received_vfds += 1;
                self.dev.command_ok(&dev::close(msg.id), "close_host_vfd")
            }
            CMD_VFD_RECV if msg.id == self.ctx => self
                .stream
                .push(&msg.data[..msg.len])
                .map_err(|_| fig!("stream_overflow")),
            CMD_VFD_RECV if msg.id == self.side.id => {
                let n = msg.len.min(SIDE_MAX - self.side.len);
                self.side.data[self.side.len..self.side.len + n].copy_from_slice(&msg.data[..n]);
                self.side.len += n;
                Ok(())
            }
            CMD_VFD_HUP if msg.id == self.ctx => Err(fig!("context_hup")),
            CMD_VFD_HUP if msg.id == self.side.id => {
                self.side.hup = true;
                Ok(())
            }
            kind => Err(fig!("unexpected kind={:#x} vfd={}", kind, msg.id)),
        }
    }

    /// Waits for an in-queue message and files it (for tests waiting on the side vfd).
    pub fn pump(&mut self) -> Result<(), Line> {
        let msg = self.dev.recv(dev::TIMEOUT_MS)?;
        self.take(&msg)
    }

    /// `wl_display.get_registry` and a round trip: the globals.
    pub fn registry(&mut self) -> Result<u32, Line> {
        let registry = self.new_id();
        self.send(&mut Msg::new(DISPLAY, 1).uint(registry), &[])?;
        self.roundtrip(Some(registry))?;
        Ok(registry)
    }

    /// `wl_display.sync` and waits for its `done`, filing registry globals on the way (if
    /// `registry` is given). Returns the callback's data.
    pub fn roundtrip(&mut self, registry: Option<u32>) -> Result<u32, Line> {
        let callback = self.new_id();
        self.send(&mut Msg::new(DISPLAY, 0).uint(callback), &[])?;
        loop {
            let event = self.next_event()?;
            if event.object == callback && event.opcode == 0 {
                return Ok(event.args().uint());
            }
            if Some(event.object) == registry && event.opcode == 0 {
                let mut a = event.args();
                let name = a.uint();
                let iface = a.bytes(true);
                let version = a.uint();
                if self.nglobals == MAX_GLOBALS || iface.len() > IFACE_MAX {
                    return Err(fig!("too_many_globals"));
                }
                let g = &mut self.globals[self.nglobals];
                g.name = name;
                g.version = version;
                g.iface[..iface.len()].copy_from_slice(iface);
                g.iface_len = iface.len();
                self.nglobals += 1;
                continue;
            }
            // Anything else (a buffer release, a surface entering the output) is not waited
            // for here.
        }
    }

    /// The global for `interface`.
    pub fn global(&self, interface: &str) -> Option<Global> {
        self.globals[..self.nglobals]
            .iter()
            .find(|g| g.interface() == interface)
            .copied()
    }

    /// `wl_registry.bind` to `interface` at `version` (at most what it offers); the new
    /// object's id.
    pub fn bind(&mut self, registry: u32, interface: &str, version: u32) -> Result<u32, Line> {
        let global = self
            .global(interface)
            .ok_or_else(|| fig!("missing_global {}", interface))?;
        let id = self.new_id();
        let mut msg = Msg::new(registry, 0)
            .uint(global.name)
            .string(interface)
            .uint(version.min(global.version))
            .uint(id);
        self.send(&mut msg, &[])?;
        Ok(id)
    }
}
