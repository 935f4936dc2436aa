//! The control protocol between the VMM and its device worker processes (and, in [`broker`],
//! between the VMM and its broker process).
//!
//! Owns: the message enums, one per direction ([`VmmToWorker`], [`WorkerToVmm`]); their
//! semantic validation ([`validate`]); the wire format, a bincode codec with hard size limits
//! ([`codec`], the only module that knows it); and the `SOCK_SEQPACKET` [`Channel`] that carries
//! one message per packet with file descriptors alongside.
//!
//! Carries rare control events only — config space, feature negotiation, activation, reset,
//! shutdown, errors, statistics, seccomp reports. The data path (queue notifications,
//! interrupts) goes through KVM ioeventfd/irqfd and never through here.
//!
//! Must not contain device or KVM logic: it knows queue *addresses*, never queue contents.
//!
//! Threat model: a worker is hostile once compromised, so every received byte is untrusted.
//! Decoding never panics, never allocates more than [`codec::DECODE_ALLOC_LIMIT`], and rejects
//! oversized, truncated and trailing input; receiving never leaks a descriptor; the receiver
//! then runs `validate` before acting on a message.

#![forbid(unsafe_code)]

pub mod broker;
pub mod channel;
pub mod codec;
pub mod fuzzing;
pub mod messages;
pub mod service;
pub mod validate;

pub use broker::{BrokerReply, BrokerRequest, WorkerStatus};
pub use channel::{Channel, ChannelError, MAX_FDS};
pub use codec::{decode, encode, CodecError, Decode, Encode, MAX_MESSAGE_SIZE};
pub use messages::{
    DeviceErrorKind, DeviceStats, QueueConfig, QueueStats, VmmToWorker, WorkerToVmm,
};
pub use service::{ServiceRefusal, ServiceReply, ServiceRequest};
pub use validate::{DeviceLayout, Limits, ProtocolError, MAX_QUEUE_SIZE};
