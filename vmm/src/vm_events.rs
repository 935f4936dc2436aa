//! How threads tell the main thread that the VM must end, and why.
//!
//! vCPU threads and device models hold a [`VmEvents`]; the main thread waits on the other end
//! for the first [`VmEvent`] and turns it into svmm's exit status.

use std::sync::mpsc;

/// A reason for the VM to end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmEvent {
    /// The guest powered off (ACPI S5 or a KVM system event).
    PowerOff,
    /// The test guest wrote its status to the exit port.
    GuestStatus(u32),
    /// The guest asked for a reset (i8042 or a KVM system event).
    Reboot,
    /// The guest crashed: the message says how and where.
    Crashed(String),
    /// The user ended svmm from the console (Ctrl-A x).
    UserQuit,
    /// A device worker died or misbehaved and `--on-worker-exit=stop` asks to end the VM.
    DeviceFailed(String),
    /// svmm itself failed while running the VM.
    Internal(String),
}

/// Sending side, cloned into every thread and device that can end the VM.
#[derive(Clone, Debug)]
pub struct VmEvents(mpsc::Sender<VmEvent>);

impl VmEvents {
    /// A new control channel: the sender for the VM, the receiver for the main thread.
    pub fn new() -> (Self, mpsc::Receiver<VmEvent>) {
        let (tx, rx) = mpsc::channel();
        (Self(tx), rx)
    }

    /// Asks for the VM to end. Only the first event counts; later ones are dropped with the
    /// receiver when svmm exits.
    pub fn request(&self, event: VmEvent) {
        // The receiver lives until process exit; a send error can only happen during exit.
        let _ = self.0.send(event);
    }
}
