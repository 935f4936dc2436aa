//! Control protocol between the VMM and device workers.
//!
//! This crate will own the message enums (one per direction), the bincode codec with explicit
//! size limits (the only place that knows the wire format), the SOCK_SEQPACKET channel with
//! SCM_RIGHTS fd passing, and typed errors. It contains no device or KVM logic. Nothing is
//! implemented here yet: the sandboxed-workers issue fills it.
