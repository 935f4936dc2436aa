//! In-process devices (`sandbox=off`): [`map_memory`](crate::map_memory) and
//! [`serve`](crate::serve) on a thread of svmm.
//!
//! The thread gets exactly what a spawned worker would get — its own end of the control
//! channel and its own copies of the fds — so the VMM side cannot tell the two apart, and the
//! device code is the same. What is missing is the isolation: a compromised device owns svmm.
//!
//! First the thread runs the kind's own last set-up (`devices::kind::Built::prepare`, e.g. an
//! io_uring ring, made on the thread that submits to it, so that its io-wq limits apply there);
//! once its event loop is set up, the thread installs its device's worker seccomp profile on
//! itself through the caller's `confine` (svmm's `self_confine` says why that profile and not
//! the VMM's).

use std::io;
use std::thread::{self, JoinHandle};

use devices::kind::Built;

use crate::{map_memory, serve, WorkerError, WorkerExit, WorkerFds};

/// Starts `backend` on a thread named `name`. `warn` runs on that thread with the one-line
/// warning of the kind's set-up, if any; `confine` once the event loop is set up, before the
/// first request (it installs the thread's seccomp filter); `on_exit` with the result when the
/// device stops serving (for reporting; none of them may block).
pub fn spawn<E>(
    name: String,
    mut backend: Built,
    fds: WorkerFds,
    warn: impl FnOnce(&str) + Send + 'static,
    confine: impl FnOnce() -> Result<(), E> + Send + 'static,
    on_exit: impl FnOnce(&Result<WorkerExit, WorkerError>) + Send + 'static,
) -> io::Result<JoinHandle<()>>
where
    E: std::error::Error + Send + Sync + 'static,
{
    thread::Builder::new().name(name).spawn(move || {
        if let Some(warning) = backend.prepare() {
            warn(&warning);
        }
        let result = map_memory(backend.backend(), fds).and_then(|mapped| {
            serve(backend.into_backend(), mapped, || {
                confine().map_err(|e| WorkerError::Confine(Box::new(e)))
            })
        });
        on_exit(&result);
    })
}
