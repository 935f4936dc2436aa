//! The control messages, one enum per direction.
//!
//! The control channel carries rare events only; queue notifications and interrupts go through
//! KVM ioeventfd/irqfd and never through here. A typical conversation:
//!
//! ```text
//!   VMM                                   worker
//!    │ ◀──────────── Ready { features, queues, config } ─ after sandboxing, before any guest data
//!    │   (guest negotiates features, sets up queues, writes DRIVER_OK)
//!    │ ─ Activate { driver_features, queues } ─────────▶   (+ fds if the transport needs them)
//!    │ ◀──────────────────────────────────── Activated ─
//!    │ ─ WriteConfig { offset, data } ─────────────────▶   (not acknowledged)
//!    │ ◀───────────────────── ConfigChanged { config } ─   (VMM updates its cache, may interrupt)
//!    │ ─ GetStats ─────────────────────────────────────▶
//!    │ ◀─────────────────────────────────── Stats(..) ─
//!    │ ─ Reset ────────────────────────────────────────▶
//!    │ ◀──────────────────────────────────── ResetDone ─
//!    │ ─ Shutdown ─────────────────────────────────────▶   worker exits
//!    │ ◀── DeviceError / SeccompViolation ── at any time
//! ```
//!
//! A worker started again for a device whose worker died (`--on-worker-exit=restart`) gets,
//! after its `Ready`, the guest's config writes again and, if the device was running, `Resume`
//! instead of `Activate`: the same features and queues, each resumed where the guest sees it
//! (its used index), answered by `Resumed`.
//!
//! Every `WorkerToVmm` is untrusted: the VMM runs `WorkerToVmm::validate` on it before acting,
//! and the worker runs `VmmToWorker::validate` on what it receives (both in [`crate::validate`]).
//! Message order is the VMM's state machine's business.

use bincode::{Decode, Encode};

/// Requests from the VMM to one device worker.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum VmmToWorker {
    /// The driver wrote DRIVER_OK: start the device with these features and queues.
    Activate {
        /// Features the driver acknowledged; a subset of the device's offer.
        driver_features: u64,
        /// The queues the driver set up (`QueueReady` = 1), in any order.
        queues: Vec<QueueConfig>,
    },
    /// The guest wrote `data` at `offset` into the device-specific config space.
    WriteConfig {
        /// Byte offset from the start of the config space.
        offset: u32,
        /// The bytes written (1, 2, 4 or 8 for MMIO accesses).
        data: Vec<u8>,
    },
    /// The driver wrote 0 to `Status`: stop the queues and return to the pre-activation state.
    Reset,
    /// Exit cleanly.
    Shutdown,
    /// Reply with [`WorkerToVmm::Stats`].
    GetStats,
    /// The device's earlier worker died while the device was running: start it with these
    /// features and queues (as [`VmmToWorker::Activate`] would), each queue resumed from what
    /// the guest can see — its next chain to take and its next used entry are both the used
    /// ring's index, so the chains the dead worker had taken but not completed are taken again
    /// — then serve every queue once and interrupt. Only for kinds whose requests may be done
    /// twice (`devices::Kind::restart`).
    Resume {
        /// Features the driver acknowledged; a subset of the device's offer.
        driver_features: u64,
        /// The queues the driver set up, as for `Activate`.
        queues: Vec<QueueConfig>,
    },
}

/// One virtqueue as the driver configured it through the transport registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct QueueConfig {
    /// Queue index (`QueueSel`).
    pub index: u16,
    /// Number of descriptors (`QueueNum`).
    pub size: u16,
    /// Guest-physical address of the descriptor table.
    pub desc_table: u64,
    /// Guest-physical address of the available (driver) ring.
    pub avail_ring: u64,
    /// Guest-physical address of the used (device) ring.
    pub used_ring: u64,
}

/// Reports from a device worker to the VMM. Untrusted input.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum WorkerToVmm {
    /// The worker is confined and its device is constructed. Sent once, first.
    Ready {
        /// virtio device ID (1 = net, 2 = block, 4 = rng, 26 = fs, ...).
        device_type: u32,
        /// Features the device offers.
        device_features: u64,
        /// Number of queues the device has.
        num_queues: u16,
        /// Largest queue size the device accepts (`QueueNumMax`).
        max_queue_size: u16,
        /// The whole device-specific config space; the VMM answers guest reads from this copy.
        config: Vec<u8>,
    },
    /// The config space changed (e.g. a resized disk); replaces the VMM's cached copy.
    ConfigChanged {
        /// The whole new config space.
        config: Vec<u8>,
    },
    /// Reply to [`VmmToWorker::Activate`]: the queues are running.
    Activated,
    /// Reply to [`VmmToWorker::Reset`]: the queues are stopped and released.
    ResetDone,
    /// Reply to [`VmmToWorker::GetStats`].
    Stats(DeviceStats),
    /// The device stopped because of an error; the VMM sets `DEVICE_NEEDS_RESET`.
    DeviceError {
        /// What went wrong.
        reason: DeviceErrorKind,
    },
    /// The worker's seccomp filter trapped a syscall (reported from its SIGSYS handler).
    SeccompViolation {
        /// The syscall number.
        syscall: i64,
        /// The `AUDIT_ARCH_*` value of the trapped call.
        arch: u32,
    },
    /// Reply to [`VmmToWorker::Resume`]: the queues run again.
    Resumed {
        /// Chains the guest had made available and not yet got back when the queues were
        /// resumed, over all queues: the requests the new worker takes (again).
        pending: u32,
    },
}

/// Per-device counters, one entry per queue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
pub struct DeviceStats {
    /// Indexed by queue index; at most the device's `num_queues` entries.
    pub queues: Vec<QueueStats>,
}

/// Counters of one queue since activation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Encode, Decode)]
pub struct QueueStats {
    /// Descriptor chains completed.
    pub requests: u64,
    /// Payload bytes moved.
    pub bytes: u64,
    /// Requests the driver got wrong: a malformed chain or request, a refused command.
    pub errors: u64,
    /// Well-formed requests the device could not carry out and let go without the driver's
    /// fault (net: frames lost — larger than the driver's buffers, an offload it did not
    /// accept, refused by the host).
    pub drops: u64,
}

/// Why a device stopped. A closed set: the VMM logs it, it never parses free text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum DeviceErrorKind {
    /// The guest put something malformed in a queue (bad chain, bad request header).
    GuestFault,
    /// A queue or buffer address lies outside guest memory.
    GuestMemory,
    /// The worker rejected an [`VmmToWorker::Activate`] (see `VmmToWorker::validate`).
    BadActivation,
    /// The host resource behind the device failed; `errno` is the OS error number.
    HostIo {
        /// `errno` of the failed operation.
        errno: i32,
    },
    /// A bug in the worker.
    Internal,
}

#[cfg(test)]
mod tests {
    use crate::codec::{decode, encode};
    use crate::fuzzing::{sample_vmm_messages, sample_worker_messages};

    #[test]
    fn every_worker_message_round_trips() {
        let samples = sample_worker_messages();
        // One sample per variant at least (8 variants).
        assert!(samples.len() >= 8);
        for msg in samples {
            let bytes = encode(&msg).unwrap();
            assert_eq!(decode::<super::WorkerToVmm>(&bytes).unwrap(), msg);
        }
    }

    #[test]
    fn every_vmm_message_round_trips() {
        let samples = sample_vmm_messages();
        assert!(samples.len() >= 6);
        for msg in samples {
            let bytes = encode(&msg).unwrap();
            assert_eq!(decode::<super::VmmToWorker>(&bytes).unwrap(), msg);
        }
    }
}
