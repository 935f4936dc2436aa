//! vCPU threads: one per vCPU, each running `KVM_RUN` and dispatching its exits.
//!
//! Port I/O goes to the legacy devices and MMIO to the devices on the [`MmioBus`] (the virtio-mmio
//! windows); anything that ends the VM (power-off, reset, a crash,
//! an exit KVM should never produce) becomes one [`VmEvent`] and the thread stops.
//!
//! **Stopping**: when the VM ends, the other vCPUs of an SMP guest are still in `KVM_RUN`, using
//! guest RAM through KVM. [`Vcpus::stop`] raises a stop flag and kicks every thread with
//! [`kick_signal`] (a real-time signal whose handler does nothing: its only effect is that
//! `KVM_RUN` returns `EINTR`) until each has seen the flag and ended; only then may guest RAM be
//! unmapped (`crate::vm::Vm`'s drop order). The kick repeats because a signal that lands just
//! before a thread enters `KVM_RUN` is consumed without interrupting it.
//!
//! **Seccomp**: a vCPU thread installs the `vmm` profile on itself first thing, before its
//! first `KVM_RUN` (`self_confine`). Nothing is left to set up by then: the main thread made
//! every vCPU set-up ioctl (`KVM_SET_CPUID2`, `KVM_SET_SREGS`, `KVM_SET_REGS`, `KVM_SET_FPU`,
//! `KVM_SET_MSRS`, `KVM_SET_LAPIC`) and registered every irqfd and ioeventfd before the thread
//! started. What the thread does from then on — `KVM_RUN`, `KVM_GET_REGS` for a crash report,
//! the I/O its exits cause (serial output, irqfd writes, a device worker's control socket with
//! a deadline, the channel to the main thread) — is what the profile allows.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::legacy::PioBus;
use crate::mmio_bus::MmioBus;
use crate::self_confine::{self, ThreadRole};
use crate::vm_events::{VmEvent, VmEvents};
use worker::report::one_line;

/// The signal that kicks a vCPU thread out of `KVM_RUN`: the first real-time signal, which the C
/// library leaves to programs.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

/// Installs the (empty) handler of [`kick_signal`]: once per process, before any vCPU thread
/// starts and before the main thread confines itself (`rt_sigaction` is not in the `vmm`
/// profile). Without a handler the signal would end the process.
pub fn install_kick_handler() -> std::io::Result<()> {
    extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
    register_signal_handler(kick_signal(), on_kick)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// How long [`Vcpus::stop`] kicks before it gives up on a thread.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause between two rounds of kicks.
const KICK_INTERVAL: Duration = Duration::from_millis(1);

/// The VM's vCPU threads, the gate that holds them before their first `KVM_RUN` and the flag
/// that stops them.
#[derive(Default)]
pub struct Vcpus {
    threads: Vec<(u8, JoinHandle<()>)>,
    stop: Arc<AtomicBool>,
    /// Opened ([`Vcpus::release`]) once the main thread has confined itself: no vCPU runs the
    /// guest while any thread of svmm is unfiltered.
    gate: Arc<(Mutex<bool>, Condvar)>,
    /// `--test-gate-probe`: whether each vCPU reports the main thread's seccomp mode when it
    /// passes the gate, and the probe [`Vcpus::release`] reads before it opens it
    /// (`crate::gate_probe`).
    #[cfg(feature = "test-faults")]
    gate_probe: Option<Mutex<Option<std::fs::File>>>,
}

impl Vcpus {
    /// `--test-gate-probe` (`crate::gate_probe`): call before the first [`Vcpus::spawn`], from
    /// the main thread while it may still open files.
    #[cfg(feature = "test-faults")]
    pub fn probe_gate(&mut self) -> std::io::Result<()> {
        self.gate_probe = Some(Mutex::new(Some(crate::gate_probe::open()?)));
        Ok(())
    }

    /// Starts the thread that runs vCPU `id`.
    pub fn spawn(
        &mut self,
        id: u8,
        vcpu: VcpuFd,
        bus: Arc<PioBus>,
        mmio: Arc<MmioBus>,
        control: VmEvents,
    ) -> std::io::Result<()> {
        let stop = self.stop.clone();
        let gate = self.gate.clone();
        #[cfg(feature = "test-faults")]
        let probe = match self.gate_probe {
            Some(_) => Some(crate::gate_probe::open()?),
            None => None,
        };
        let thread = thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                let event = match self_confine::enter(ThreadRole::Vcpu(id)) {
                    Ok(()) => {
                        wait_open(&gate);
                        #[cfg(feature = "test-faults")]
                        if let Some(probe) = probe {
                            let what = format!("vcpu{id} passed the gate");
                            crate::gate_probe::report(probe, &what);
                        }
                        run(id, vcpu, &bus, &mmio, &stop)
                    }
                    Err(e) => Some(VmEvent::Internal(format!("vCPU {id}: {}", one_line(&e)))),
                };
                if let Some(event) = event {
                    control.request(event);
                }
            })?;
        self.threads.push((id, thread));
        Ok(())
    }

    /// Lets the vCPU threads run the guest (each has confined itself already; the main thread
    /// calls this once it has too).
    pub fn release(&self) {
        #[cfg(feature = "test-faults")]
        if let Some(probe) = self.gate_probe.as_ref().and_then(|p| p.lock().ok()?.take()) {
            crate::gate_probe::report(probe, "gate opened");
        }
        let (open, changed) = &*self.gate;
        *open.lock().unwrap_or_else(|e| e.into_inner()) = true;
        changed.notify_all();
    }

    /// Stops every vCPU thread and joins it: afterwards no thread runs guest code or touches
    /// guest RAM. Returns the vCPUs that did not stop within [`STOP_TIMEOUT`] (stuck outside
    /// `KVM_RUN`); their threads are left running, so the caller must keep guest RAM mapped.
    pub fn stop(&mut self) -> Vec<u8> {
        self.stop.store(true, Ordering::Release);
        // Threads still at the gate go through it, see the stop flag and end.
        self.release();
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            let (done, running): (Vec<_>, Vec<_>) = std::mem::take(&mut self.threads)
                .into_iter()
                .partition(|(_, thread)| thread.is_finished());
            for (_, thread) in done {
                // A vCPU thread that panicked has stopped too; the panic was reported already.
                let _ = thread.join();
            }
            self.threads = running;
            if self.threads.is_empty() || Instant::now() >= deadline {
                return self.threads.iter().map(|(id, _)| *id).collect();
            }
            for (_, thread) in &self.threads {
                // Fails only for a thread that already ended, which the next round joins.
                let _ = thread.kill(kick_signal());
            }
            thread::sleep(KICK_INTERVAL);
        }
    }
}

/// Waits until `gate` is open.
fn wait_open(gate: &(Mutex<bool>, Condvar)) {
    let (open, changed) = gate;
    let guard = open.lock().unwrap_or_else(|e| e.into_inner());
    drop(
        changed
            .wait_while(guard, |open| !*open)
            .unwrap_or_else(|e| e.into_inner()),
    );
}

/// Runs the vCPU until something ends the VM (its event) or `stop` is raised (`None`).
fn run(
    id: u8,
    mut vcpu: VcpuFd,
    bus: &PioBus,
    mmio: &MmioBus,
    stop: &AtomicBool,
) -> Option<VmEvent> {
    loop {
        if stop.load(Ordering::Acquire) {
            return None;
        }
        let outcome = match vcpu.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                bus.read(port, data);
                None
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                bus.write(port, data);
                None
            }
            // Addresses no device claims read as all-ones, like unclaimed ports.
            Ok(VcpuExit::MmioRead(addr, data)) => {
                mmio.read(addr, data);
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                mmio.write(addr, data);
                None
            }
            Ok(VcpuExit::Intr) => None,
            Ok(VcpuExit::SystemEvent(kind, _)) => Some(match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => VmEvent::PowerOff,
                KVM_SYSTEM_EVENT_RESET => VmEvent::Reboot,
                KVM_SYSTEM_EVENT_CRASH => crash("guest reported a crash"),
                other => crash(format!("unknown system event {other}")),
            }),
            Ok(VcpuExit::Shutdown) => Some(crash("triple fault (KVM_EXIT_SHUTDOWN)")),
            Ok(VcpuExit::Hlt) => Some(crash("vCPU halted for good (KVM_EXIT_HLT)")),
            Ok(VcpuExit::InternalError) => Some(crash(format!(
                "KVM internal error (suberror {})",
                internal_suberror(&mut vcpu)
            ))),
            Ok(VcpuExit::FailEntry(reason, cpu)) => Some(crash(format!(
                "VM entry failed (hardware reason {reason:#x}, host cpu {cpu})"
            ))),
            Ok(other) => Some(crash(format!("unexpected exit {other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
            Err(e) => Some(VmEvent::Internal(format!("vCPU {id}: KVM_RUN failed: {e}"))),
        };
        if let Some(event) = outcome {
            return Some(locate(event, id, &vcpu));
        }
    }
}

/// A crash event; [`locate`] adds where it happened.
fn crash(reason: impl Into<String>) -> VmEvent {
    VmEvent::Crashed(reason.into())
}

/// Adds the vCPU and its instruction pointer to a crash report.
fn locate(event: VmEvent, id: u8, vcpu: &VcpuFd) -> VmEvent {
    match event {
        VmEvent::Crashed(reason) => {
            let rip = vcpu
                .get_regs()
                .map_or_else(|_| "unknown".to_string(), |r| format!("{:#x}", r.rip));
            VmEvent::Crashed(format!("{reason} on vCPU {id} at RIP {rip}"))
        }
        other => other,
    }
}

/// The `suberror` KVM stored for the last `KVM_EXIT_INTERNAL_ERROR`.
fn internal_suberror(vcpu: &mut VcpuFd) -> u32 {
    let run = vcpu.get_kvm_run();
    // SAFETY: the last exit was KVM_EXIT_INTERNAL_ERROR, for which KVM fills the `internal`
    // member of the exit union; reading a u32 from it has no other requirement.
    unsafe { run.__bindgen_anon_1.internal.suberror }
}
