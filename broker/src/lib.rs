//! Worker broker: turns a device's worker spec into a confined worker process.
//!
//! Owns fork + exec of the svmm binary in worker mode ([`spawn`], [`Spawner`]), the sandbox
//! steps the exec'd worker applies to itself ([`confine`]), and the VMM's handle on a worker
//! ([`Worker`]: pidfd, kill, reaping). It never decides device behaviour: what a worker needs
//! (fds, seccomp profile, Landlock directories) comes from the device's declaration.
//!
//! The life cycle is DESIGN.md's "Worker life cycle":
//! 1. the VMM opens host resources and creates the control socket and eventfds;
//! 2. [`Spawner::spawn`] clones the worker into fresh namespaces (`clone3`, pidfd), writes its
//!    id maps and execs the svmm binary through an `O_PATH` fd ([`self_exe`]) with only the
//!    listed fds (module `spawn`, child side in `preexec`);
//! 3. the worker calls [`confine`] first thing, with the [`ConfineConfig`] it got as
//!    `--sandbox-*` arguments ([`ConfineConfig::from_args`]) — or [`confine_with`], to run its
//!    last set-up (SIGSYS reporter, memory mappings) right before the seccomp filter;
//! 4. the VMM supervises it through [`Worker::pidfd`] and reaps it ([`Worker::wait`], `Drop`).

mod caps;
pub mod config;
pub mod confine;
mod preexec;
pub mod resources;
pub mod server;
pub mod spawn;
pub mod subid;
pub mod worker;

pub use config::{ArgsError, ConfineConfig, LandlockBeneath, Rlimits, NOFILE_MARGIN};
pub use confine::{
    confine, confine_with, describe, landlock_abi_version, ConfineError, Step,
    REQUIRED_LANDLOCK_ABI,
};
pub use preexec::ChildStage;
pub use resources::{
    open_directory, open_host_file, Access, CustomOpener, DeviceFds, FileTypes, HelperProcess,
    HelperSpec, HostFile, HostResource, Lock, OpenedResource, Origin, ResourceError, SocketKind,
};
pub use server::{BrokerError, BrokerProcess, BrokerSetup, Declared};
pub use spawn::{
    may_map_other_ids, self_exe, spawn, Exec, IdChoice, IdRange, SpawnError, Spawner, Stderr,
    WorkerIds, WorkerSpec, MAX_WORKER_FDS, NS_WORKER_ID,
};
pub use subid::SubIds;
pub use worker::{ExitCause, Worker, WorkerError};

/// INTERFACES.md's name for [`Worker`].
pub type WorkerHandle = Worker;

/// INTERFACES.md's path for the worker side: `broker::child::confine`.
pub mod child {
    pub use crate::config::ConfineConfig;
    pub use crate::confine::{confine, confine_with, describe, ConfineError, Step};
}
