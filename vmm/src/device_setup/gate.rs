//! A device's window on the MMIO bus before its worker is `Ready`: the vCPUs run while the
//! workers still come up, and a vCPU waits only at its first access to a device whose worker
//! has not answered yet.
//!
//! The guest touches a virtio-mmio window only when its driver probes the device, long after
//! it started; until then nothing needs the worker. [`gate`] makes the window's bus entry
//! ([`Gate`]) and the one handle that ends its wait ([`Opener`]): [`Opener::open`] with the
//! device's transport once its worker is `Ready` (every access goes to the transport from
//! then on), or — dropped unopened, when the device did not start and the VM is ending —
//! closed: accesses read as 0 and writes are dropped. The set-up that holds the opener waits
//! for the worker under the worker's own deadline, so a vCPU never waits longer than that.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::mmio_bus::MmioDevice;

/// A device's transport as svmm shares it (`crate::virtio::Transport`).
type Shared<D> = Arc<Mutex<D>>;

/// What the gate of one device knows.
enum State<D> {
    /// The device's worker is not `Ready` yet.
    Waiting,
    /// Its transport.
    Open(Shared<D>),
    /// It never will be (the VM is ending).
    Closed,
}

struct Inner<D> {
    state: Mutex<State<D>>,
    changed: Condvar,
}

/// The device's entry on the MMIO bus.
pub struct Gate<D> {
    shared: Arc<Inner<D>>,
    /// The transport, once the gate saw it open.
    transport: Option<Shared<D>>,
}

/// Opens (or, dropped, closes) one [`Gate`].
pub struct Opener<D> {
    shared: Arc<Inner<D>>,
}

/// A closed-until-opened window and its opener.
pub fn gate<D>() -> (Gate<D>, Opener<D>) {
    let shared = Arc::new(Inner {
        state: Mutex::new(State::Waiting),
        changed: Condvar::new(),
    });
    let gate = Gate {
        shared: shared.clone(),
        transport: None,
    };
    (gate, Opener { shared })
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl<D> Opener<D> {
    /// The worker is `Ready`: every access goes to `transport` from now on.
    pub fn open(self, transport: &Shared<D>) {
        self.set(State::Open(transport.clone()));
    }

    fn set(&self, state: State<D>) {
        let mut current = lock(&self.shared.state);
        if matches!(*current, State::Waiting) {
            *current = state;
        }
        self.shared.changed.notify_all();
    }
}

impl<D> Drop for Opener<D> {
    /// Not opened: closed for good.
    fn drop(&mut self) {
        self.set(State::Closed);
    }
}

impl<D> Gate<D> {
    /// The transport, once the device's worker is `Ready` (waiting for it until then); `None`
    /// if the device never started.
    fn transport(&mut self) -> Option<&Shared<D>> {
        if self.transport.is_none() {
            let mut state = lock(&self.shared.state);
            while matches!(*state, State::Waiting) {
                state = self
                    .shared
                    .changed
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner());
            }
            if let State::Open(transport) = &*state {
                self.transport = Some(transport.clone());
            }
        }
        self.transport.as_ref()
    }
}

impl<D: MmioDevice> MmioDevice for Gate<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match self.transport() {
            Some(transport) => lock(transport).read(offset, data),
            None => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(transport) = self.transport() {
            lock(transport).write(offset, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Reads its offset's low byte, counts writes.
    struct Echo(u32);

    impl MmioDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, _offset: u64, _data: &[u8]) {
            self.0 += 1;
        }
    }

    #[test]
    fn an_opened_gate_passes_accesses_on_and_wakes_its_waiter() {
        let (mut gate, opener) = gate::<Echo>();
        let waiter = std::thread::spawn(move || {
            let mut data = [0u8; 4];
            gate.read(7, &mut data);
            gate.write(0, &[1, 2, 3, 4]);
            gate.write(0, &[1, 2, 3, 4]);
            data
        });
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            !waiter.is_finished(),
            "the vCPU waits while the worker comes up"
        );
        let echo = Arc::new(Mutex::new(Echo(0)));
        opener.open(&echo);
        assert_eq!(waiter.join().unwrap(), [7; 4]);
        assert_eq!(echo.lock().unwrap().0, 2);
    }

    #[test]
    fn a_closed_gate_reads_zero_and_wakes_its_waiter() {
        let (mut gate, opener) = gate::<Echo>();
        let waiter = std::thread::spawn(move || {
            let mut data = [0xffu8; 4];
            gate.read(0, &mut data);
            gate.write(0, &[1, 2, 3, 4]);
            data
        });
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            !waiter.is_finished(),
            "the vCPU waits while the worker comes up"
        );
        drop(opener);
        assert_eq!(waiter.join().unwrap(), [0; 4]);
    }
}
