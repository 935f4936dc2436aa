//! Time from the TSC, calibrated at boot against PIT channel 2 (gated and read through port
//! 0x61), or channel 0 where there is no port 0x61: KVM's in-kernel PIT serves port 0x61 only
//! when the VMM asks for it (svmm does, QEMU does not), and QEMU microvm has no speaker device
//! of its own. If the PIT does not answer, the TSC rate comes from CPUID, or is guessed;
//! `Timer::source` says which.

use crate::port::{inb, outb};
use core::arch::asm;

const PIT_HZ: u64 = 1_193_182;
/// Channel n's data port is 0x40 + n.
const PIT_DATA: u16 = 0x40;
const PIT_COMMAND: u16 = 0x43;
/// Port 0x61: bit 0 gates channel 2, bit 1 drives the speaker, bit 5 reads channel 2's output.
const PIT_CH2_CONTROL: u16 = 0x61;
const CH2_GATE: u8 = 0x01;
const CH2_SPEAKER: u8 = 0x02;
const CH2_OUTPUT: u8 = 0x20;

const CALIBRATE_MS: u64 = 10;
/// Most repeated measurements (see `settled`).
const CALIBRATE_MAX_ROUNDS: u32 = 10;
/// Polls of the PIT output before giving up on it (each poll is a VM exit).
const CALIBRATE_MAX_POLLS: u32 = 200_000;

pub struct Timer {
    tsc_khz: u64,
    /// How `tsc_khz` was found: "pit" (channel 2), "pit-ch0", "cpuid" or "guess".
    pub source: &'static str,
}

pub fn rdtsc() -> u64 {
    let lo: u32;
    let hi: u32;
    // SAFETY: `rdtsc` only reads the time-stamp counter into edx:eax.
    unsafe {
        asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

pub fn cpu_relax() {
    // SAFETY: `pause` is a spin-loop hint with no architectural effect.
    unsafe { asm!("pause", options(nomem, nostack, preserves_flags)) };
}

/// One PIT measurement of the TSC rate, in kHz.
#[derive(Clone, Copy)]
struct Sample {
    khz: u64,
    /// The start and the end of the count were seen within 4% of its length in all (so the
    /// midpoint is within 2%). Under PVM, where each poll is a few emulated exits, the spread
    /// is ~2%; it is far larger when the vCPU was descheduled at the wrong moment.
    precise: bool,
}

/// Starts a ~10 ms one-shot count (mode 0) on PIT channel `channel` and measures the TSC
/// until `out_is_high` sees the channel's output rise, as Linux's `pit_calibrate_tsc` does,
/// bracketing both ends with TSC reads. `None` if the output never rises, or rises at once
/// (no PIT).
fn calibrate_pit(channel: u8, out_is_high: fn() -> bool) -> Option<Sample> {
    let latch = PIT_HZ * CALIBRATE_MS / 1000;
    let data = PIT_DATA + u16::from(channel);
    outb(PIT_COMMAND, (channel << 6) | 0x30); // lobyte/hibyte access, mode 0, binary
    outb(data, latch as u8);
    let load_start = rdtsc();
    outb(data, (latch >> 8) as u8); // the count starts with this write
    let load_end = rdtsc();
    let mut poll_start = load_end;
    let mut polls = 0u32;
    loop {
        let previous_poll_start = poll_start;
        poll_start = rdtsc();
        if out_is_high() {
            // The output rose after the previous poll began and before this one ended.
            let rise_end = rdtsc();
            if polls == 0 {
                return None;
            }
            let shortest = previous_poll_start.wrapping_sub(load_end);
            let longest = rise_end.wrapping_sub(load_start);
            let cycles = shortest / 2 + longest / 2;
            if cycles < CALIBRATE_MS * 1000 {
                return None; // below 1 MHz: not a working PIT
            }
            let precise = longest.wrapping_sub(shortest) <= cycles / 25;
            return Some(Sample {
                khz: cycles / CALIBRATE_MS,
                precise,
            });
        }
        polls += 1;
        if polls == CALIBRATE_MAX_POLLS {
            return None;
        }
    }
}

/// Repeats a PIT measurement until two precise ones in a row agree within 1%, and returns
/// the last. A single one is not trusted: under QEMU+KVM the first measurement after boot
/// has come out up to 60% short (something in the VMM still settles the TSC or PIT then),
/// and a descheduled vCPU makes one long. Falls back to the last precise sample, or the last.
fn settled(measure: fn() -> Option<Sample>) -> Option<u64> {
    let mut last = measure()?;
    let mut last_precise = if last.precise { Some(last.khz) } else { None };
    for _ in 0..CALIBRATE_MAX_ROUNDS {
        let next = measure()?;
        if next.precise && last.precise && next.khz.abs_diff(last.khz) <= next.khz / 100 {
            return Some(next.khz);
        }
        if next.precise {
            last_precise = Some(next.khz);
        }
        last = next;
    }
    Some(last_precise.unwrap_or(last.khz))
}

/// Channel 2, gated and read through port 0x61. It raises no interrupt, so it is the first
/// choice.
fn calibrate_pit_ch2() -> Option<Sample> {
    // Gate high, speaker off.
    outb(
        PIT_CH2_CONTROL,
        (inb(PIT_CH2_CONTROL) & !CH2_SPEAKER) | CH2_GATE,
    );
    calibrate_pit(2, || inb(PIT_CH2_CONTROL) & CH2_OUTPUT != 0)
}

/// Channel 0 (always gated), its output read with the read-back command, for machines without
/// port 0x61 (QEMU microvm, with KVM or TCG). Its terminal count raises IRQ 0, which this
/// guest never takes: interrupts stay disabled.
fn calibrate_pit_ch0() -> Option<Sample> {
    calibrate_pit(0, || {
        outb(PIT_COMMAND, 0xe2); // read-back: status only, channel 0
        inb(PIT_DATA) & 0x80 != 0 // status bit 7: OUT
    })
}

fn cpuid(leaf: u32) -> [u32; 4] {
    let r = core::arch::x86_64::__cpuid_count(leaf, 0);
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// The TSC rate in kHz from CPUID: the hypervisor timing leaf 0x4000_0010 (VMware/KVM
/// convention), else leaf 0x16's base frequency in MHz.
fn calibrate_cpuid() -> Option<u64> {
    if cpuid(0x4000_0000)[0] >= 0x4000_0010 {
        let khz = cpuid(0x4000_0010)[0];
        if khz != 0 {
            return Some(u64::from(khz));
        }
    }
    if cpuid(0)[0] >= 0x16 {
        let mhz = cpuid(0x16)[0];
        if mhz != 0 {
            return Some(u64::from(mhz) * 1000);
        }
    }
    None
}

impl Timer {
    pub fn calibrate() -> Timer {
        if let Some(tsc_khz) = settled(calibrate_pit_ch2) {
            return Timer {
                tsc_khz,
                source: "pit",
            };
        }
        if let Some(tsc_khz) = settled(calibrate_pit_ch0) {
            return Timer {
                tsc_khz,
                source: "pit-ch0",
            };
        }
        if let Some(tsc_khz) = calibrate_cpuid() {
            return Timer {
                tsc_khz,
                source: "cpuid",
            };
        }
        Timer {
            tsc_khz: 1_000_000,
            source: "guess",
        }
    }

    pub fn tsc_khz(&self) -> u64 {
        self.tsc_khz
    }

    /// Microseconds since the TSC started (roughly: since the VM started).
    pub fn now_us(&self) -> u64 {
        self.cycles_to_us(rdtsc())
    }

    pub fn cycles_to_us(&self, cycles: u64) -> u64 {
        (cycles / self.tsc_khz) * 1000 + (cycles % self.tsc_khz) * 1000 / self.tsc_khz
    }

    pub fn cycles_to_ns(&self, cycles: u64) -> u64 {
        (cycles / self.tsc_khz) * 1_000_000 + (cycles % self.tsc_khz) * 1_000_000 / self.tsc_khz
    }

    /// A TSC value `ms` milliseconds from now, for `expired`.
    pub fn deadline_ms(&self, ms: u64) -> u64 {
        rdtsc().saturating_add(ms.saturating_mul(self.tsc_khz))
    }

    pub fn expired(&self, deadline: u64) -> bool {
        rdtsc() >= deadline
    }

    pub fn sleep_ms(&self, ms: u64) {
        let deadline = self.deadline_ms(ms);
        while !self.expired(deadline) {
            cpu_relax();
        }
    }
}
