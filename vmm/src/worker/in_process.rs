//! In-process devices (`sandbox=off`): [`run_device`](super::run_device) on a thread of svmm.
//!
//! The thread gets exactly what a spawned worker would get — its own end of the control
//! channel and its own copies of the fds — so the VMM side cannot tell the two apart, and the
//! device code is the same. What is missing is the isolation: a compromised device owns svmm.

use std::io;
use std::thread::{self, JoinHandle};

use devices::VirtioBackend;

use super::{run_device, WorkerError, WorkerExit, WorkerFds};

/// Starts `backend` on a thread named `name`. `on_exit` runs on that thread with the result
/// when the device stops serving (for reporting; it must not block).
pub fn spawn(
    name: String,
    backend: Box<dyn VirtioBackend>,
    fds: WorkerFds,
    on_exit: impl FnOnce(&Result<WorkerExit, WorkerError>) + Send + 'static,
) -> io::Result<JoinHandle<()>> {
    thread::Builder::new().name(name).spawn(move || {
        let result = run_device(backend, fds);
        on_exit(&result);
    })
}
