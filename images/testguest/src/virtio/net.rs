//! A virtio-net driver (device ID 1) for the net tests and benchmarks, run in ring 3.
//!
//! [`NetDev::init`] negotiates the features a test asks for, reads the configuration space
//! (MAC, status, queue pairs, MTU), sets up the receive and transmit rings of one or two queue
//! pairs and the control queue when negotiated (`netq`), and fills every receive ring with
//! device-writable buffers of one slot each. Frames go out as one descriptor holding the
//! 12-byte header and the frame ([`NetDev::send`]); received ones are reassembled from as many
//! buffers as the header's `num_buffers` says into one private buffer ([`NetDev::recv`]) and
//! the buffers are offered again at once. Completion is polled in the rings (no MMIO);
//! [`NetDev::interrupt_status`] reads and acknowledges InterruptStatus when a test wants to
//! see that the device raised its interrupt.

use super::mmio::{self, Mmio};
use super::netq::{self, NetRing, DESC_F_NEXT, DESC_F_WRITE};
use super::{set_status, Device, Error, ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK};
use crate::arch::Page;
use crate::timer::Timer;
use core::cell::UnsafeCell;
use core::ptr::{read_volatile, write_volatile};

/// virtio device ID of a network card.
pub const ID_NET: u32 = 1;

// Feature bits (virtio 1.2 §5.1.3).
pub const F_CSUM: u64 = 1 << 0;
pub const F_GUEST_CSUM: u64 = 1 << 1;
pub const F_CTRL_GUEST_OFFLOADS: u64 = 1 << 2;
pub const F_MTU: u64 = 1 << 3;
pub const F_MAC: u64 = 1 << 5;
pub const F_GUEST_TSO4: u64 = 1 << 7;
pub const F_HOST_TSO4: u64 = 1 << 11;
pub const F_MRG_RXBUF: u64 = 1 << 15;
pub const F_STATUS: u64 = 1 << 16;
pub const F_CTRL_VQ: u64 = 1 << 17;
pub const F_MQ: u64 = 1 << 22;

/// Header flags and GSO types.
pub const HDR_F_NEEDS_CSUM: u8 = 1;
pub const GSO_TCPV4: u8 = 1;
/// Bytes of `virtio_net_hdr_v1`.
pub const HDR_LEN: usize = 12;
/// The largest frame the driver reassembles.
pub const MAX_FRAME: usize = 65_550;
/// Control classes and commands.
pub const CTRL_MQ: u8 = 4;
pub const CTRL_GUEST_OFFLOADS: u8 = 5;
/// How long a transmit slot or a reassembly may wait for the device.
const WAIT_MS: u64 = 2000;

/// The header in front of every frame.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Hdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
    pub num_buffers: u16,
}

impl Hdr {
    fn to_bytes(self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        for (i, v) in [
            self.hdr_len,
            self.gso_size,
            self.csum_start,
            self.csum_offset,
            self.num_buffers,
        ]
        .iter()
        .enumerate()
        {
            b[2 + 2 * i..4 + 2 * i].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    fn from_bytes(b: &[u8]) -> Hdr {
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Hdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
            num_buffers: u(10),
        }
    }
}

/// A received frame: where it came from and its header; the bytes are in [`NetDev::frame`].
#[derive(Clone, Copy)]
pub struct Rx {
    pub queue: usize,
    pub hdr: Hdr,
    pub len: usize,
}

/// Ring sizes and slot strides of one device.
#[derive(Clone, Copy)]
pub struct Layout {
    pub rx_size: u16,
    pub rx_stride: usize,
    pub tx_size: u16,
    pub tx_stride: usize,
}

impl Layout {
    /// 128 receive buffers of 2 KiB (a 64 KiB frame takes 33 with MRG_RXBUF), 64 transmit
    /// slots of 2 KiB.
    pub const DEFAULT: Layout = Layout {
        rx_size: 128,
        rx_stride: 2048,
        tx_size: 64,
        tx_stride: 2048,
    };
}

/// Reassembled frames.
#[link_section = ".noinit.net"]
static FRAME: Page<[u8; MAX_FRAME + 4096]> = Page(UnsafeCell::new([0; MAX_FRAME + 4096]));

/// An initialised virtio-net device.
pub struct NetDev<'t> {
    pub mmio: Mmio,
    pub features: u64,
    pub mac: [u8; 6],
    pub status: u16,
    pub max_pairs: u16,
    pub mtu: u16,
    /// Queue pairs set up.
    pub pairs: usize,
    rx: [Option<NetRing>; 2],
    tx: [Option<NetRing>; 2],
    ctrl: Option<NetRing>,
    tx_next: [u16; 2],
    timer: &'t Timer,
}

fn config8(mmio: Mmio, offset: usize) -> Result<u8, Error> {
    let word = mmio.config16(offset & !1)?;
    Ok((word >> (8 * (offset & 1))) as u8)
}

impl<'t> NetDev<'t> {
    /// Resets and initialises the device: features (VERSION_1 and those of `accept` it
    /// offers), `pairs` queue pairs (1 or 2; 2 needs MQ and CTRL_VQ), the control queue if
    /// negotiated, DRIVER_OK, receive rings filled.
    pub fn init(
        mmio: Mmio,
        accept: u64,
        pairs: usize,
        layout: Layout,
        timer: &'t Timer,
    ) -> Result<NetDev<'t>, Error> {
        let neg = Device::negotiate(mmio, accept, timer)?;
        let features = neg.features;
        let mut mac = [0u8; 6];
        if features & F_MAC != 0 {
            for (i, b) in mac.iter_mut().enumerate() {
                *b = config8(mmio, i)?;
            }
        }
        let status = if features & F_STATUS != 0 {
            mmio.config16(6)?
        } else {
            1
        };
        let max_pairs = if features & F_MQ != 0 {
            mmio.config16(8)?
        } else {
            1
        };
        let mtu = if features & F_MTU != 0 {
            mmio.config16(10)?
        } else {
            1500
        };
        let pairs = pairs.clamp(1, 2).min(usize::from(max_pairs));
        let ctrl_index = match (features & F_CTRL_VQ != 0, features & F_MQ != 0) {
            (false, _) => None,
            (true, true) => Some(2 * max_pairs),
            (true, false) => Some(2),
        };
        let notify = mmio.addr(mmio::QUEUE_NOTIFY);
        let setup = |set: usize, index: u16, size: u16, stride: usize| -> Result<NetRing, Error> {
            mmio.write(mmio::QUEUE_SEL, u32::from(index));
            if mmio.read(mmio::QUEUE_READY) != 0 {
                return Err(Error::QueueBusy);
            }
            let max = mmio.read(mmio::QUEUE_NUM_MAX);
            if max == 0 {
                return Err(Error::QueueSize { max });
            }
            let size = 1u16 << max.min(u32::from(size)).ilog2();
            let ring = NetRing::new(set, index, size, stride, notify);
            let (desc, avail, used) = ring.addresses();
            mmio.write(mmio::QUEUE_NUM, u32::from(size));
            mmio.write_addr(mmio::QUEUE_DESC_LOW, mmio::QUEUE_DESC_HIGH, desc);
            mmio.write_addr(mmio::QUEUE_DRIVER_LOW, mmio::QUEUE_DRIVER_HIGH, avail);
            mmio.write_addr(mmio::QUEUE_DEVICE_LOW, mmio::QUEUE_DEVICE_HIGH, used);
            mmio.write(mmio::QUEUE_READY, 1);
            Ok(ring)
        };
        let mut dev = NetDev {
            mmio,
            features,
            mac,
            status,
            max_pairs,
            mtu,
            pairs,
            rx: [None, None],
            tx: [None, None],
            ctrl: None,
            tx_next: [0; 2],
            timer,
        };
        for p in 0..pairs {
            let (rx, tx) = (2 * p as u16, 2 * p as u16 + 1);
            dev.rx[p] = Some(setup(2 * p, rx, layout.rx_size, layout.rx_stride)?);
            dev.tx[p] = Some(setup(2 * p + 1, tx, layout.tx_size, layout.tx_stride)?);
        }
        if let Some(index) = ctrl_index {
            dev.ctrl = Some(setup(4, index, 4, 4096)?);
        }
        // The receive rings are filled before DRIVER_OK (virtio 1.2 §3.1.1 step 7), so the
        // device has buffers the moment it may deliver.
        for ring in dev.rx.iter_mut().flatten() {
            let stride = ring.stride() as u32;
            for slot in 0..ring.size() {
                ring.post(slot, stride, true);
            }
        }
        set_status(mmio, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK)?;
        for ring in dev.rx.iter_mut().flatten() {
            ring.kick_always();
        }
        Ok(dev)
    }

    /// Transmit ring of pair `pair`.
    pub fn tx_ring(&mut self, pair: usize) -> &mut NetRing {
        self.tx[pair].as_mut().expect("pair set up")
    }

    /// Receive ring of pair `pair`.
    pub fn rx_ring(&mut self, pair: usize) -> &mut NetRing {
        self.rx[pair].as_mut().expect("pair set up")
    }

    /// Sends `frame` with header `hdr` on pair `pair`'s transmit queue (waits for a free slot
    /// for at most 2 s).
    pub fn send(&mut self, pair: usize, hdr: Hdr, frame: &[u8]) -> Result<(), Error> {
        let deadline = self.timer.deadline_ms(WAIT_MS);
        let next = self.tx_next[pair];
        let ring = self.tx[pair].as_mut().expect("pair set up");
        assert!(
            HDR_LEN + frame.len() <= ring.stride(),
            "frame larger than a slot"
        );
        // Slots go round in order and the device completes them in order: wait until the slot
        // is free (fewer than `size` in flight).
        loop {
            while ring.pop_used().is_some() {}
            if ring.in_flight() < ring.size() {
                break;
            }
            if self.timer.expired(deadline) {
                return Err(Error::Timeout { interrupt: false });
            }
        }
        let at = ring.slot(next);
        netq::copy(hdr.to_bytes().as_ptr() as usize, at, HDR_LEN);
        netq::copy(frame.as_ptr() as usize, at + HDR_LEN, frame.len());
        ring.post(next, (HDR_LEN + frame.len()) as u32, false);
        ring.kick();
        self.tx_next[pair] = (next + 1) % ring.size();
        Ok(())
    }

    /// Waits until every transmitted frame of pair `pair` came back (at most 2 s).
    pub fn flush(&mut self, pair: usize) -> Result<(), Error> {
        let deadline = self.timer.deadline_ms(WAIT_MS);
        let ring = self.tx[pair].as_mut().expect("pair set up");
        loop {
            while ring.pop_used().is_some() {}
            if ring.in_flight() == 0 {
                return Ok(());
            }
            if self.timer.expired(deadline) {
                return Err(Error::Timeout { interrupt: false });
            }
        }
    }

    /// The next received frame on any pair, waiting up to `timeout_ms`; `None` if none came.
    /// Its buffers are offered again before it returns. `NeedsReset` once the device is broken.
    pub fn recv(&mut self, timeout_ms: u64) -> Result<Option<Rx>, Error> {
        let deadline = self.timer.deadline_ms(timeout_ms);
        loop {
            for q in 0..self.pairs {
                if self.rx[q].as_ref().is_some_and(NetRing::has_used) {
                    return self.take(q).map(Some);
                }
            }
            if self.timer.expired(deadline) {
                // Nothing came: a device that broke (its worker died) says so in its status,
                // and waiting longer would only run into the caller's timeout.
                if self.mmio.read(mmio::STATUS) & super::DEVICE_NEEDS_RESET != 0 {
                    return Err(Error::NeedsReset);
                }
                return Ok(None);
            }
        }
    }

    /// Reassembles the frame at the front of receive ring `q`.
    fn take(&mut self, q: usize) -> Result<Rx, Error> {
        let mrg = self.features & F_MRG_RXBUF != 0;
        let deadline = self.timer.deadline_ms(WAIT_MS);
        let ring = self.rx[q].as_mut().expect("pair set up");
        let frame = FRAME.0.get() as usize;
        let stride = ring.stride() as u32;
        let (id, len) = ring.pop_used().expect("has_used");
        let slot = slot_of(ring, id)?;
        let first = ring.slot(slot);
        let mut raw = [0u8; HDR_LEN];
        netq::copy(first, raw.as_mut_ptr() as usize, HDR_LEN);
        let hdr = Hdr::from_bytes(&raw);
        let body = (len as usize).saturating_sub(HDR_LEN).min(MAX_FRAME);
        netq::copy(first + HDR_LEN, frame, body);
        let mut total = body;
        ring.post(slot, stride, true);
        let buffers = if mrg { hdr.num_buffers.max(1) } else { 1 };
        for _ in 1..buffers {
            let (id, len) = loop {
                if let Some(e) = ring.pop_used() {
                    break e;
                }
                if self.timer.expired(deadline) {
                    return Err(Error::Timeout { interrupt: false });
                }
            };
            let slot = slot_of(ring, id)?;
            let n = (len as usize).min(MAX_FRAME + 4096 - total);
            netq::copy(ring.slot(slot), frame + total, n);
            total += n;
            ring.post(slot, stride, true);
        }
        ring.kick_always();
        Ok(Rx {
            queue: q,
            hdr,
            len: total,
        })
    }

    /// The bytes of the frame [`recv`](Self::recv) returned last.
    pub fn frame(&self, rx: &Rx) -> &[u8] {
        // SAFETY: FRAME is written only by `take`, which needs `&mut self`; the slice lives as
        // long as this shared borrow, so no `take` can run meanwhile.
        unsafe { core::slice::from_raw_parts(FRAME.0.get() as *const u8, rx.len) }
    }

    /// Sends a control command and returns the device's ack (0 OK, 1 ERR).
    pub fn ctrl(&mut self, class: u8, command: u8, data: &[u8]) -> Result<u8, Error> {
        let deadline = self.timer.deadline_ms(WAIT_MS);
        let ring = self.ctrl.as_mut().ok_or(Error::QueueSize { max: 0 })?;
        let at = ring.slot(0);
        // SAFETY: slot 0 of the control ring's area; no command is in flight.
        unsafe {
            write_volatile(at as *mut u8, class);
            write_volatile((at + 1) as *mut u8, command);
            write_volatile((at + 512) as *mut u8, 0xee);
        }
        netq::copy(data.as_ptr() as usize, at + 16, data.len());
        ring.set_desc(0, at as u64, 2, DESC_F_NEXT, 1);
        ring.set_desc(1, (at + 16) as u64, data.len() as u32, DESC_F_NEXT, 2);
        ring.set_desc(2, (at + 512) as u64, 1, DESC_F_WRITE, 0);
        ring.publish(0);
        ring.kick_always();
        loop {
            if let Some((id, len)) = ring.pop_used() {
                if id != 0 || len != 1 {
                    return Err(Error::UsedId {
                        expected: 0,
                        got: id,
                    });
                }
                break;
            }
            if self.timer.expired(deadline) {
                return Err(Error::Timeout { interrupt: false });
            }
        }
        // SAFETY: the ack byte, written by the device before it returned the chain.
        Ok(unsafe { read_volatile((at + 512) as *const u8) })
    }

    /// Reads and acknowledges InterruptStatus.
    pub fn interrupt_status(&self) -> u32 {
        let status = self.mmio.read(mmio::INTERRUPT_STATUS);
        if status != 0 {
            self.mmio.write(mmio::INTERRUPT_ACK, status);
        }
        status
    }

    /// Resets the device.
    pub fn reset(self) -> Result<(), Error> {
        super::reset(self.mmio, self.timer)
    }
}

/// The slot of a used element, which must be one of the ring's descriptors.
fn slot_of(ring: &NetRing, id: u32) -> Result<u16, Error> {
    match u16::try_from(id) {
        Ok(slot) if slot < ring.size() => Ok(slot),
        _ => Err(Error::UsedId {
            expected: 0,
            got: id,
        }),
    }
}
