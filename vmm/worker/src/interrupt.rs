//! The [`Interrupt`] a worker hands its backend: raise the bit in the shared status word, then
//! write the irqfd, so that the guest's `InterruptStatus` read (served by the VMM from the same
//! word) already shows why it was interrupted.

use devices::irq_status::IrqStatus;
use devices::{Interrupt, INT_CONFIG, INT_VRING};
use vmm_sys_util::eventfd::EventFd;

/// Status word + irqfd of one device.
pub struct IrqfdInterrupt {
    status: IrqStatus,
    irqfd: EventFd,
}

impl IrqfdInterrupt {
    /// Signals through `irqfd` after raising bits in `status`.
    pub fn new(status: IrqStatus, irqfd: EventFd) -> Self {
        IrqfdInterrupt { status, irqfd }
    }

    fn signal(&self, bits: u32) {
        self.status.raise(bits);
        // The only failure is a counter at u64::MAX - 1 (EAGAIN): an interrupt is pending
        // anyway, and an edge-triggered GSI needs no second one.
        let _ = self.irqfd.write(1);
    }
}

impl Interrupt for IrqfdInterrupt {
    fn signal_used_queue(&self) {
        self.signal(INT_VRING);
    }

    fn signal_config_change(&self) {
        self.signal(INT_CONFIG);
    }
}
