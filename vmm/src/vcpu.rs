//! vCPU threads: one per vCPU, each running `KVM_RUN` and dispatching its exits.
//!
//! Port I/O goes to the legacy devices and MMIO to the devices on the [`MmioBus`] (the virtio-mmio
//! windows); anything that ends the VM (power-off, reset, a crash,
//! an exit KVM should never produce) becomes one [`VmEvent`] and the thread stops.
//!
//! **Seccomp**: a vCPU thread installs the `vmm` profile on itself first thing, before its
//! first `KVM_RUN` (`self_confine`). Nothing is left to set up by then: the main thread made
//! every vCPU set-up ioctl (`KVM_SET_CPUID2`, `KVM_SET_SREGS`, `KVM_SET_REGS`, `KVM_SET_FPU`,
//! `KVM_SET_MSRS`, `KVM_SET_LAPIC`) and registered every irqfd and ioeventfd before the thread
//! started. What the thread does from then on — `KVM_RUN`, `KVM_GET_REGS` for a crash report,
//! the I/O its exits cause (serial output, irqfd writes, a device worker's control socket with
//! a deadline, the channel to the main thread) — is what the profile allows.

use std::sync::Arc;
use std::thread;

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::control::{VmControl, VmEvent};
use crate::error::one_line;
use crate::legacy::PioBus;
use crate::mmio_bus::MmioBus;
use crate::self_confine::{self, ThreadRole};

/// Starts the thread that runs vCPU `id`.
pub fn spawn(
    id: u8,
    vcpu: VcpuFd,
    bus: Arc<PioBus>,
    mmio: Arc<MmioBus>,
    control: VmControl,
) -> std::io::Result<thread::JoinHandle<()>> {
    thread::Builder::new()
        .name(format!("vcpu{id}"))
        .spawn(move || {
            let event = match self_confine::enter(ThreadRole::Vcpu(id)) {
                Ok(()) => run(id, vcpu, &bus, &mmio),
                Err(e) => VmEvent::Internal(format!("vCPU {id}: {}", one_line(&e))),
            };
            control.request(event);
        })
}

/// Runs the vCPU until something ends the VM.
fn run(id: u8, mut vcpu: VcpuFd, bus: &PioBus, mmio: &MmioBus) -> VmEvent {
    loop {
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
            return locate(event, id, &vcpu);
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
