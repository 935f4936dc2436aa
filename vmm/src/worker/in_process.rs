//! In-process devices (`sandbox=off`): [`run_device_confined`](super::run_device_confined) on a thread of svmm.
//!
//! The thread gets exactly what a spawned worker would get — its own end of the control
//! channel and its own copies of the fds — so the VMM side cannot tell the two apart, and the
//! device code is the same. What is missing is the isolation: a compromised device owns svmm.
//!
//! Once its event loop is set up, the thread installs its device's worker seccomp profile on
//! itself (see `crate::self_confine` for why that profile and not the VMM's).

use std::io;
use std::thread::{self, JoinHandle};

use devices::VirtioBackend;

use super::{run_device_confined, WorkerError, WorkerExit, WorkerFds};
use crate::self_confine::{self, ThreadRole};

/// Starts `backend` on a thread named `name`. `on_exit` runs on that thread with the result
/// when the device stops serving (for reporting; it must not block).
pub fn spawn(
    name: String,
    backend: Box<dyn VirtioBackend>,
    fds: WorkerFds,
    on_exit: impl FnOnce(&Result<WorkerExit, WorkerError>) + Send + 'static,
) -> io::Result<JoinHandle<()>> {
    let profile = backend.sandbox_needs().seccomp_profile;
    thread::Builder::new().name(name).spawn(move || {
        let result = run_device_confined(backend, fds, || {
            self_confine::enter(ThreadRole::Device(profile)).map_err(WorkerError::Confine)
        });
        on_exit(&result);
    })
}
