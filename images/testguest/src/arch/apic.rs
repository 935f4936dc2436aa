//! Interrupt controllers: the 8259 PICs are masked, the local APIC (xAPIC, MMIO at
//! 0xfee0_0000) is software-enabled with its timer, and IOAPIC redirection entries route a
//! virtio-mmio device's pin to [`DEVICE_VECTOR`] on this CPU, edge-triggered, fixed delivery.
//! Pins 0..23 are on the IOAPIC at 0xfec0_0000; QEMU microvm puts pins 24 and up on a second
//! one at 0xfec1_0000 when it has one (with `acpi=off` its virtio-mmio devices get pins below
//! 24). Edge triggering suits both VMMs: svmm injects through irqfds (a pulse per interrupt),
//! QEMU raises the line while `InterruptStatus` is non-zero, and the handler's acknowledge
//! lowers it before the next completion raises it again.
//!
//! All of this runs in ring 0 (set-up only); interrupts are only ever enabled in ring 3.

use super::idt::{DEVICE_COUNT, DEVICE_MMIO, DEVICE_STATUS, TIMER_COUNT, TIMER_CS};
use super::Word;
use crate::port::outb;
use crate::timer::Timer;
use core::arch::asm;
use core::fmt;
use core::ptr::{read_volatile, write_volatile};

pub const TIMER_VECTOR: u8 = 0x30;
pub const DEVICE_VECTOR: u8 = 0x31;
/// The low four bits must be ones for older APICs; any vector works with KVM's.
pub const SPURIOUS_VECTOR: u8 = 0x3f;

const LAPIC_BASE: u64 = 0xfee0_0000;
/// The EOI register's address (the handlers write it from assembly).
pub const LAPIC_EOI: u64 = LAPIC_BASE + 0xb0;

// Local APIC registers.
const ID: usize = 0x20;
const TPR: usize = 0x80;
const SVR: usize = 0xf0;
const LVT_TIMER: usize = 0x320;
const LVT_LINT0: usize = 0x350;
const LVT_LINT1: usize = 0x360;
const LVT_ERROR: usize = 0x370;
const TIMER_INITIAL: usize = 0x380;
const TIMER_CURRENT: usize = 0x390;
const TIMER_DIVIDE: usize = 0x3e0;
const ICR_LOW: usize = 0x300;
const ICR_HIGH: usize = 0x310;
/// ICR delivery mode INIT, level assert.
const ICR_INIT: u32 = 0x4500;
/// ICR delivery mode STARTUP (the vector is the start page), level assert.
const ICR_STARTUP: u32 = 0x4600;
/// ICR delivery status: the IPI is still being sent.
const ICR_PENDING: u32 = 1 << 12;
const APIC_ENABLE: u32 = 0x100;
const LVT_MASKED: u32 = 1 << 16;
const LVT_PERIODIC: u32 = 1 << 17;
/// Divide configuration value for "divide by 1".
const DIVIDE_BY_1: u32 = 0xb;

const IA32_APIC_BASE: u32 = 0x1b;
const APIC_BASE_ENABLE: u64 = 1 << 11;
const APIC_BASE_X2APIC: u64 = 1 << 10;

const IOAPIC: [usize; 2] = [0xfec0_0000, 0xfec1_0000];
const IOAPIC_PINS: u32 = 24;
const IOREGSEL: usize = 0x00;
const IOWIN: usize = 0x10;
const IOAPIC_VERSION: u32 = 1;

/// How long the timer's rate is measured against the TSC.
const CALIBRATE_MS: u64 = 2;

static APIC_ID: Word = Word::new(u64::MAX);
/// Timer counts per millisecond at divide-by-1 (0: not measured yet).
static TIMER_PER_MS: Word = Word::new(0);

#[derive(Clone, Copy)]
pub enum Error {
    /// IA32_APIC_BASE does not show an enabled xAPIC at the usual address.
    ApicBase(u64),
    /// The IOAPIC for this pin is missing or has fewer entries.
    NoPin { irq: u32 },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match *self {
            Error::ApicBase(msr) => write!(f, "apic_base={msr:#x}"),
            Error::NoPin { irq } => write!(f, "no_ioapic_pin irq={irq}"),
        }
    }
}

fn lapic_read(reg: usize) -> u32 {
    // SAFETY: a local APIC register, identity mapped (uncached) by boot.rs; MMIO that no Rust
    // object owns.
    unsafe { read_volatile((LAPIC_BASE as usize + reg) as *const u32) }
}

fn lapic_write(reg: usize, value: u32) {
    // SAFETY: as for `lapic_read`.
    unsafe { write_volatile((LAPIC_BASE as usize + reg) as *mut u32, value) }
}

fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: reads an architectural MSR (ring 0); no memory effect.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Masks the PICs and enables the local APIC (once). Returns this CPU's APIC ID.
pub fn init() -> Result<u32, Error> {
    if APIC_ID.get() != u64::MAX {
        return Ok(APIC_ID.get() as u32);
    }
    let base = rdmsr(IA32_APIC_BASE);
    if base & APIC_BASE_ENABLE == 0 || base & APIC_BASE_X2APIC != 0 || base & !0xfff != LAPIC_BASE {
        return Err(Error::ApicBase(base));
    }
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
    lapic_write(TPR, 0);
    lapic_write(LVT_TIMER, LVT_MASKED | u32::from(TIMER_VECTOR));
    lapic_write(LVT_LINT0, LVT_MASKED);
    lapic_write(LVT_LINT1, LVT_MASKED);
    lapic_write(LVT_ERROR, LVT_MASKED);
    lapic_write(SVR, APIC_ENABLE | u32::from(SPURIOUS_VECTOR));
    let id = lapic_read(ID) >> 24;
    APIC_ID.set(u64::from(id));
    Ok(id)
}

/// Sends `command` (ICR low word) to the local APIC with ID `apic_id`, and waits until the
/// local APIC has sent it.
fn send_ipi(apic_id: u32, command: u32) {
    lapic_write(ICR_HIGH, apic_id << 24);
    lapic_write(ICR_LOW, command);
    while lapic_read(ICR_LOW) & ICR_PENDING != 0 {}
}

/// INIT to the CPU with local APIC ID `apic_id` (the first step of starting an AP).
pub fn send_init(apic_id: u32) {
    send_ipi(apic_id, ICR_INIT);
}

/// STARTUP to the CPU with local APIC ID `apic_id`: it starts in real mode at `page << 12`.
pub fn send_startup(apic_id: u32, page: u8) {
    send_ipi(apic_id, ICR_STARTUP | u32::from(page));
}

/// Starts the timer: `count` ticks (divide by 1), once or periodically, on [`TIMER_VECTOR`].
pub fn timer_start(count: u32, periodic: bool) {
    lapic_write(TIMER_DIVIDE, DIVIDE_BY_1);
    lapic_write(
        LVT_TIMER,
        u32::from(TIMER_VECTOR) | if periodic { LVT_PERIODIC } else { 0 },
    );
    lapic_write(TIMER_INITIAL, count);
}

pub fn timer_stop() {
    lapic_write(TIMER_INITIAL, 0);
    lapic_write(LVT_TIMER, LVT_MASKED | u32::from(TIMER_VECTOR));
}

/// Timer ticks per millisecond (measured once against the TSC, with the timer masked).
pub fn timer_per_ms(timer: &Timer) -> u64 {
    if TIMER_PER_MS.get() == 0 {
        lapic_write(TIMER_DIVIDE, DIVIDE_BY_1);
        lapic_write(LVT_TIMER, LVT_MASKED | u32::from(TIMER_VECTOR));
        lapic_write(TIMER_INITIAL, u32::MAX);
        timer.sleep_ms(CALIBRATE_MS);
        let elapsed = u64::from(u32::MAX - lapic_read(TIMER_CURRENT));
        lapic_write(TIMER_INITIAL, 0);
        TIMER_PER_MS.set((elapsed / CALIBRATE_MS).max(1));
    }
    TIMER_PER_MS.get()
}

pub fn timer_count() -> u64 {
    TIMER_COUNT.get()
}

/// The CS the last timer interrupt interrupted (RPL 3: it arrived in ring 3).
pub fn timer_cs() -> u64 {
    TIMER_CS.get()
}

fn ioapic(irq: u32) -> Option<(usize, u32)> {
    if irq >= 2 * IOAPIC_PINS {
        return None;
    }
    let (base, pin) = if irq < IOAPIC_PINS {
        (IOAPIC[0], irq)
    } else {
        (IOAPIC[1], irq - IOAPIC_PINS)
    };
    let version = ioapic_read(base, IOAPIC_VERSION);
    // Bits 16..23: the highest redirection entry. All ones: nothing there.
    (version != u32::MAX && pin <= (version >> 16) & 0xff).then_some((base, pin))
}

fn ioapic_read(base: usize, reg: u32) -> u32 {
    // SAFETY: the IOAPIC's index and data registers, identity mapped (uncached); MMIO owned by
    // no Rust object. Where there is no IOAPIC the read returns all ones (or the VMM's
    // default) and the caller refuses the pin.
    unsafe {
        write_volatile((base + IOREGSEL) as *mut u32, reg);
        read_volatile((base + IOWIN) as *const u32)
    }
}

fn ioapic_write(base: usize, reg: u32, value: u32) {
    // SAFETY: as for `ioapic_read`; the caller checked that the IOAPIC has this entry.
    unsafe {
        write_volatile((base + IOREGSEL) as *mut u32, reg);
        write_volatile((base + IOWIN) as *mut u32, value);
    }
}

/// Routes pin `irq` to [`DEVICE_VECTOR`] on this CPU (edge, active high, fixed, physical)
/// for the device whose registers start at `mmio_base`, and clears the handler's counters.
pub fn route_device(irq: u32, mmio_base: usize) -> Result<(), Error> {
    let apic_id = init()?;
    let (base, pin) = ioapic(irq).ok_or(Error::NoPin { irq })?;
    DEVICE_MMIO.set(mmio_base as u64);
    DEVICE_COUNT.set(0);
    DEVICE_STATUS.set(0);
    ioapic_write(base, 0x11 + 2 * pin, apic_id << 24);
    ioapic_write(base, 0x10 + 2 * pin, u32::from(DEVICE_VECTOR));
    Ok(())
}

/// Masks pin `irq` again.
pub fn mask_device(irq: u32) {
    if let Some((base, pin)) = ioapic(irq) {
        ioapic_write(base, 0x10 + 2 * pin, LVT_MASKED | u32::from(DEVICE_VECTOR));
    }
}

/// Device interrupts taken since `route_device`.
pub fn device_count() -> u64 {
    DEVICE_COUNT.get()
}

/// The OR of the `InterruptStatus` values the handler read since `route_device`.
pub fn device_status() -> u64 {
    DEVICE_STATUS.get()
}
