//! A fullscreen `xdg_toplevel` and its shared-memory buffer, for `wl_shm` and `bench_wl_fps`.
//!
//! [`Window::open`] binds the globals, makes the surface fullscreen (the compositor then
//! configures the output's size and shows it at the origin) and waits for the configure.
//! [`Window::buffer`] allocates the buffer with `VFD_NEW` in the device's shared-memory region,
//! maps the region here, and wraps it in a `wl_shm_pool` and a `wl_buffer`.
//! [`Window::present`] encodes attach, damage, frame callback and commit as one send.

use super::client::Client;
use super::dev;
use super::wire::Msg;
use crate::arch::highmem;
use crate::fig;
use crate::line::Line;

/// Size if the compositor leaves it to the client.
const DEFAULT_SIZE: (u32, u32) = (320, 240);
const XRGB8888: u32 = 1;
const TWO_MIB: u64 = 0x20_0000;

/// A configured fullscreen toplevel.
pub struct Window {
    pub surface: u32,
    pub xdg_surface: u32,
    pub width: u32,
    pub height: u32,
    shm: u32,
    serial: u32,
}

/// The window's buffer.
pub struct Buffer {
    /// Where the pixels are, in this program (identity mapped).
    pub addr: u64,
    /// Its page number in the region, as the device answered.
    pub pfn: u64,
    pub pool: u32,
    pub buffer: u32,
    vfd: u32,
}

impl Window {
    pub fn open(c: &mut Client, title: &str) -> Result<Window, Line> {
        let registry = c.registry()?;
        let compositor = c.bind(registry, "wl_compositor", 4)?;
        let shm = c.bind(registry, "wl_shm", 1)?;
        let wm = c.bind(registry, "xdg_wm_base", 1)?;
        c.wm_base = wm;
        let surface = c.new_id();
        c.send(&mut Msg::new(compositor, 0).uint(surface), &[])?;
        let xdg_surface = c.new_id();
        c.send(&mut Msg::new(wm, 2).uint(xdg_surface).uint(surface), &[])?;
        let toplevel = c.new_id();
        c.send(&mut Msg::new(xdg_surface, 1).uint(toplevel), &[])?;
        c.send(&mut Msg::new(toplevel, 2).string(title), &[])?;
        c.send(&mut Msg::new(toplevel, 11).uint(0), &[])?;
        c.send(&mut Msg::new(surface, 6), &[])?;
        let (mut w, mut h) = (0, 0);
        let serial = loop {
            let event = c.next_event()?;
            match (event.object, event.opcode) {
                (o, 0) if o == toplevel => {
                    let mut a = event.args();
                    w = a.int().max(0) as u32;
                    h = a.int().max(0) as u32;
                }
                (o, 0) if o == xdg_surface => break event.args().uint(),
                // wl_surface.enter/leave, wm_capabilities and the like.
                _ => {}
            }
        };
        let (width, height) = if w == 0 || h == 0 {
            DEFAULT_SIZE
        } else {
            (w, h)
        };
        if width % 2 != 0 || width > 4096 || height > 4096 {
            return Err(fig!("odd_size width={} height={}", width, height));
        }
        Ok(Window {
            surface,
            xdg_surface,
            width,
            height,
            shm,
            serial,
        })
    }

    /// Allocates the buffer (vfd `vfd`), maps the region, makes the pool and the buffer, and
    /// acknowledges the configure.
    pub fn buffer(&self, c: &mut Client, vfd: u32) -> Result<Buffer, Line> {
        let size = self.width * self.height * 4;
        let new = c
            .dev
            .command_new(&dev::vfd_new(dev::CMD_VFD_NEW, vfd, 0, size), "vfd_new")?;
        let (base, len) = c.dev.shm;
        let offset = new.pfn << 12;
        if offset + u64::from(new.size) > len || new.size < size {
            return Err(fig!(
                "vfd_outside pfn={:#x} size={} region={:#x}",
                new.pfn,
                new.size,
                len
            ));
        }
        let start = base & !(TWO_MIB - 1);
        let end = (base + len).next_multiple_of(TWO_MIB);
        highmem::map(start, end - start).map_err(|e| fig!("map {:?}", e))?;
        let pool = c.new_id();
        c.send(
            &mut Msg::new(self.shm, 0).uint(pool).int(size as i32),
            &[vfd],
        )?;
        let buffer = c.new_id();
        let mut create = Msg::new(pool, 0)
            .uint(buffer)
            .int(0)
            .int(self.width as i32)
            .int(self.height as i32)
            .int(self.width as i32 * 4)
            .uint(XRGB8888);
        c.send(&mut create, &[])?;
        c.send(&mut Msg::new(self.xdg_surface, 4).uint(self.serial), &[])?;
        Ok(Buffer {
            addr: base + offset,
            pfn: new.pfn,
            pool,
            buffer,
            vfd,
        })
    }

    /// attach + damage (whole buffer) + frame(`callback`) + commit, into `out`: the length.
    pub fn present(&self, out: &mut [u8; 256], buffer: u32, callback: u32) -> usize {
        let mut n = 0;
        let mut put = |msg: &mut Msg| {
            let bytes = msg.bytes();
            out[n..n + bytes.len()].copy_from_slice(bytes);
            n += bytes.len();
        };
        put(&mut Msg::new(self.surface, 1).uint(buffer).int(0).int(0));
        put(&mut Msg::new(self.surface, 9)
            .int(0)
            .int(0)
            .int(self.width as i32)
            .int(self.height as i32));
        put(&mut Msg::new(self.surface, 3).uint(callback));
        put(&mut Msg::new(self.surface, 6));
        n
    }
}

impl Buffer {
    /// Destroys the buffer and the pool and closes the memory's vfd.
    pub fn destroy(self, c: &mut Client) -> Result<(), Line> {
        c.send(&mut Msg::new(self.buffer, 0), &[])?;
        c.send(&mut Msg::new(self.pool, 1), &[])?;
        c.roundtrip(None)?;
        c.dev.command_ok(&dev::close(self.vfd), "close_pool")
    }
}
