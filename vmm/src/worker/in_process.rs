//! In-process devices (`sandbox=off`): [`run_device_confined`](super::run_device_confined) on a thread of svmm.
//!
//! The thread gets exactly what a spawned worker would get — its own end of the control
//! channel and its own copies of the fds — so the VMM side cannot tell the two apart, and the
//! device code is the same. What is missing is the isolation: a compromised device owns svmm.
//!
//! First the thread runs the kind's own last set-up (`devices::kind::Built::prepare`, e.g. an
//! io_uring ring, made on the thread that submits to it, so that its io-wq limits apply there);
//! once its event loop is set up, the thread installs its device's worker seccomp profile on
//! itself (see `crate::self_confine` for why that profile and not the VMM's).

use std::io;
use std::thread::{self, JoinHandle};

use devices::kind::Built;

use super::{run_device_confined, WorkerError, WorkerExit, WorkerFds};
use crate::self_confine::{self, ThreadRole};

/// Starts `backend` on a thread named `name`. `warn` runs on that thread with the one-line
/// warning of the kind's set-up, if any; `on_exit` with the result when the device stops
/// serving (for reporting; neither may block).
pub fn spawn(
    name: String,
    mut backend: Built,
    profile: &'static str,
    fds: WorkerFds,
    warn: impl FnOnce(&str) + Send + 'static,
    on_exit: impl FnOnce(&Result<WorkerExit, WorkerError>) + Send + 'static,
) -> io::Result<JoinHandle<()>> {
    thread::Builder::new().name(name).spawn(move || {
        if let Some(warning) = backend.prepare() {
            warn(&warning);
        }
        let result = run_device_confined(backend.into_backend(), fds, || {
            self_confine::enter(ThreadRole::Device(profile)).map_err(WorkerError::Confine)
        });
        on_exit(&result);
    })
}
