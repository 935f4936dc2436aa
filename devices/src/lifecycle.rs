//! The state machine every device shares (the diagram in the crate docs): inactive until an
//! activation passes the checks every device makes (`activation`), active while it serves, broken
//! after a failure it cannot complete — notifications ignored until the next reset — and
//! inactive again after a reset, which hands back whatever the activation held.
//!
//! A device keeps its activation-time state `A` (queues, memory, interrupt, counters) in a
//! [`Lifecycle<A>`] and writes only what is its own: how to build `A`, how to serve it.

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use crate::activation::{self, Offer};
use crate::DeviceError;

enum State<A> {
    Inactive,
    Active(A),
    /// A queue could not be completed; notifications are ignored until reset.
    Broken(A),
}

/// One device's state between activations (see the module docs).
pub(crate) struct Lifecycle<A> {
    state: State<A>,
}

impl<A> Lifecycle<A> {
    /// An inactive device.
    pub fn new() -> Self {
        Lifecycle {
            state: State::Inactive,
        }
    }

    /// Whether the device is inactive (never activated, or reset since).
    pub fn is_inactive(&self) -> bool {
        matches!(self.state, State::Inactive)
    }

    /// The checks before an activation: the device is inactive, and the driver's features and
    /// the queues fit `offer`.
    pub fn check_activation(
        &self,
        offer: &Offer,
        driver_features: u64,
        mem: &GuestMemoryMmap,
        queues: &[Queue],
    ) -> Result<(), DeviceError> {
        if !self.is_inactive() {
            return Err(DeviceError::AlreadyActive);
        }
        activation::check(offer, driver_features, mem, queues)
    }

    /// The device is active with `active` (after [`check_activation`](Self::check_activation)).
    pub fn activate(&mut self, active: A) {
        self.state = State::Active(active);
    }

    /// Serves the active device with `serve`; a failure leaves it broken until reset. Inactive
    /// or broken, nothing runs and the answer is `Ok`: such notifications are ignored.
    pub fn serve(
        &mut self,
        serve: impl FnOnce(&mut A) -> Result<(), DeviceError>,
    ) -> Result<(), DeviceError> {
        let State::Active(active) = &mut self.state else {
            return Ok(());
        };
        let result = serve(active);
        if result.is_err() {
            if let State::Active(active) = std::mem::replace(&mut self.state, State::Inactive) {
                self.state = State::Broken(active);
            }
        }
        result
    }

    /// Stops the device: what the activation held, active or broken (`None` if inactive).
    pub fn reset(&mut self) -> Option<A> {
        match std::mem::replace(&mut self.state, State::Inactive) {
            State::Inactive => None,
            State::Active(active) | State::Broken(active) => Some(active),
        }
    }

    /// What the activation holds, active or broken (its counters outlive a failure).
    pub fn current(&self) -> Option<&A> {
        match &self.state {
            State::Active(active) | State::Broken(active) => Some(active),
            State::Inactive => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_breaks_the_device_until_reset() {
        let mut device: Lifecycle<u32> = Lifecycle::new();
        assert!(device.is_inactive());
        // Inactive: nothing is served.
        assert!(device.serve(|_| panic!("served while inactive")).is_ok());
        device.activate(1);
        let bump = |n: &mut u32| {
            *n += 1;
            Ok(())
        };
        assert!(device.serve(bump).is_ok());
        assert_eq!(device.current(), Some(&2));
        let err = device.serve(|_| Err(DeviceError::UnknownQueue(7)));
        assert!(matches!(err, Err(DeviceError::UnknownQueue(7))));
        // Broken: ignored, but its state stays readable.
        assert!(device.serve(|_| panic!("served while broken")).is_ok());
        assert_eq!(device.current(), Some(&2));
        assert!(!device.is_inactive());
        assert_eq!(device.reset(), Some(2));
        assert!(device.is_inactive() && device.current().is_none());
        assert_eq!(device.reset(), None);
    }

    #[test]
    fn a_second_activation_is_refused() {
        let mut device: Lifecycle<()> = Lifecycle::new();
        device.activate(());
        let mem = GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 0x1000)]).unwrap();
        let offer = Offer {
            features: 0,
            num_queues: 0,
            max_queue_size: 8,
        };
        assert!(matches!(
            device.check_activation(&offer, 0, &mem, &[]),
            Err(DeviceError::AlreadyActive)
        ));
        device.reset();
        assert!(device.check_activation(&offer, 0, &mem, &[]).is_ok());
    }
}
