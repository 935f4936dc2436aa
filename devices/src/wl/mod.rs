//! virtio-wl: a guest's Wayland clients talk to a compositor on the host.
//!
//! The protocol is crosvm's virtio-wl (device ID 63, not in the virtio spec), which the
//! ChromeOS `virtio_wl` driver speaks and sommelier uses, so such guests work unchanged. Two
//! queues: "in" (0, the device writes what the host sends: `VFD_NEW`, `VFD_RECV`, `VFD_HUP`)
//! and "out" (1, the guest's commands, each answered in place). The device moves Wayland
//! messages verbatim between a guest vfd and a host socket and turns file descriptors into
//! vfds and back; it never parses Wayland itself.
//!
//! Served: `VFD_NEW` (shared memory: a sealed memfd the VMM maps into the device's
//! virtio-mmio shared-memory region, region 0), `VFD_CLOSE`, `VFD_SEND` (bytes and vfds to a
//! context, as `SCM_RIGHTS`, or bytes to a pipe), `VFD_NEW_CTX` (a new compositor connection,
//! which the VMM makes: the device has no `socket`/`connect`), `VFD_NEW_CTX_NAMED` with the
//! empty name, `VFD_NEW_PIPE`; towards the guest `VFD_NEW` for every memfd and pipe the
//! compositor sends, `VFD_RECV`, `VFD_HUP`. Features: `TRANS_FLAGS`, `USE_SHMEM`.
//! Answered `INVALID_CMD`: dmabuf allocation and sync, `SEND_FOREIGN_ID` (no virtio-gpu).
//! Named contexts other than the default: `RESP_ERR`. fds of other types from the compositor
//! (sockets, plain files, dma-bufs, fences) are closed and counted, never passed on.
//!
//! - `protocol`: codes, flags, encodings.
//! - `chain`: copy-in of descriptor chains (the only guest-memory reads).
//! - `command`: parsing a private copy into a validated [`command::Command`].
//! - `vfd`: the vfd table, its limits, the region's space.
//! - `inbox`: messages waiting for in-queue buffers.
//! - `sys`: the host calls (memfds, pipes, `SCM_RIGHTS`).
//! - `device`: the [`Wl`] backend; `exec` runs out-queue commands, `input` the host side.
//! - `kind`: `--device wayland[=SOCKET][,shm=MIB]` ([`WlKind`]).
//!
//! Sandbox needs: seccomp profile [`SECCOMP_PROFILE`]; host services: a connection to the
//! compositor socket per context and mappings into the shared-memory region, asked of the VMM
//! through [`crate::services::HostServices`].

mod chain;
pub mod command;
mod device;
mod exec;
pub mod fuzzing;
mod inbox;
mod input;
pub mod kind;
pub mod protocol;
mod sys;
#[cfg(test)]
mod tests;
mod vfd;

pub use device::Wl;
pub use kind::{WlConfig, WlKind};

/// Number of queues: in (0) and out (1).
pub const NUM_QUEUES: u16 = 2;
/// The in queue: the device writes messages from the host.
pub const QUEUE_IN: u16 = 0;
/// The out queue: the guest's commands.
pub const QUEUE_OUT: u16 = 1;
/// Largest queue size the device accepts.
pub const MAX_QUEUE_SIZE: u16 = 256;
/// Name of the device's seccomp profile in the `seccomp-profiles` crate.
pub const SECCOMP_PROFILE: &str = "wl";

/// Most vfds one `VFD_SEND` (or one receive from the compositor) carries; libwayland's limit.
pub const MAX_SEND_VFDS: usize = 28;
/// Most bytes of data in one `VFD_SEND`.
pub const MAX_SEND_DATA: usize = 64 * 1024;
/// Longest out-queue command the device copies in.
pub const MAX_COMMAND_BYTES: usize = protocol::CTRL_SEND_LEN + 4 * MAX_SEND_VFDS + MAX_SEND_DATA;
/// Most bytes of one receive from the compositor: a page-sized in buffer less the `VFD_RECV`
/// header and the most ids (what crosvm reads, so one message fits the driver's buffer).
pub const IN_DATA_MAX: usize = 4096 - protocol::CTRL_SEND_LEN - 4 * MAX_SEND_VFDS;
/// Largest shared-memory vfd, guest-made or host-sent: 256 MiB.
pub const MAX_ALLOC_BYTES: u32 = 256 << 20;
/// Most vfds at a time (each holds at most two host fds).
pub const MAX_VFDS: usize = 256;
/// Most context connections at a time (the VMM enforces its own per-VM limit too).
pub const MAX_CONTEXTS: usize = 16;
