//! `ring3`: checks what the benchmark tests rely on (`crate::arch`). A closure run in ring 3
//! returns through `ud2` with its result; a page fault from ring 3 (a read of an unmapped
//! address) reaches the ring-0 handler with the right vector, error code and CR2; local APIC
//! timer interrupts arrive while ring 3 runs with interrupts enabled (the handler sees an
//! interrupted CS with RPL 3) and ring 3 resumes after each; the TSC read in ring 3 lies
//! between ring-0 reads before and after (ring 3 and ring 0 share one clock). Never in the
//! default set.
//!
//! `ring3 ok ud2_return=1 page_fault=1 irq_in_ring3=1 irqs=<n> tsc_ok=1 timer_khz=<n>
//! enter_exit_ns=<n>` (the last: one ring-3 entry and `ud2` exit, timed in ring 0).

use crate::arch::{apic, user};
use crate::cmdline::MmioDevice;
use crate::fig;
use crate::tests::{Ctx, Outcome};
use crate::timer::rdtsc;
use core::hint::spin_loop;

/// Above the 4 GiB the boot page tables map.
const UNMAPPED: u64 = (1 << 32) + 0x1000;
/// #PF error code bit 2: the access came from user mode.
const PF_USER: u64 = 4;
/// Timer interrupts waited for, every `PERIOD_US`, for at most `WAIT_MS`.
const IRQS: u64 = 10;
const PERIOD_US: u64 = 200;
const WAIT_MS: u64 = 1000;

pub fn applies(_devices: &[MmioDevice]) -> bool {
    false
}

pub fn run(ctx: &Ctx) -> Outcome {
    let timer = ctx.timer;
    let t0 = rdtsc();
    let value = user::run(false, &mut || 0x5a5a).map_err(|e| fig!("{} step=return", e))?;
    let t1 = rdtsc();
    if value != 0x5a5a {
        return Err(fig!("returned={:#x} want=0x5a5a", value));
    }
    let enter_exit_ns = timer.cycles_to_ns(t1 - t0);

    let mut inside = 0;
    let before = rdtsc();
    user::run(false, &mut || {
        inside = rdtsc();
        0
    })
    .map_err(|e| fig!("{} step=tsc", e))?;
    let after = rdtsc();
    if !(before < inside && inside < after) {
        return Err(fig!(
            "tsc before={} ring3={} after={}",
            before,
            inside,
            after
        ));
    }

    let fault = user::run(false, &mut || {
        // SAFETY: the address is not mapped; the read faults in ring 3 and never completes.
        unsafe { core::ptr::read_volatile(UNMAPPED as *const u64) }
    });
    match fault {
        Err(user::Error::Fault {
            vector: 14,
            err,
            cr2: UNMAPPED,
            ..
        }) if err & PF_USER != 0 => {}
        Err(e) => return Err(fig!("page_fault {}", e)),
        Ok(v) => return Err(fig!("page_fault read={:#x}", v)),
    }

    apic::init().map_err(|e| fig!("{} step=apic", e))?;
    let per_ms = apic::timer_per_ms(timer);
    let first = apic::timer_count();
    let deadline = timer.deadline_ms(WAIT_MS);
    apic::timer_start((per_ms * PERIOD_US / 1000).max(1) as u32, true);
    let seen = user::run(true, &mut || {
        while apic::timer_count() - first < IRQS && rdtsc() < deadline {
            spin_loop();
        }
        apic::timer_count() - first
    });
    apic::timer_stop();
    let seen = seen.map_err(|e| fig!("{} step=irq", e))?;
    let irqs = apic::timer_count() - first;
    if seen == 0 {
        return Err(fig!("no_timer_irq_in_ring3 timer_khz={}", per_ms));
    }
    if apic::timer_cs() & 3 != 3 {
        return Err(fig!("irq_cs={:#x}", apic::timer_cs()));
    }
    Ok(fig!(
        "ud2_return=1 page_fault=1 irq_in_ring3=1 irqs={} tsc_ok=1 timer_khz={} enter_exit_ns={}",
        irqs,
        per_ms,
        enter_exit_ns
    ))
}
