//! Virtio device backends.
//!
//! This crate will own one plain struct per virtio device (rng, blk, net, fs, wl), each behind a
//! single backend trait (features, config read/write, activate with queues + memory + an
//! interrupt handle, reset), with its queue loop and its request parsing (copy-in, validate,
//! then act). A backend never knows whether it runs in a sandboxed worker or in the VMM
//! process, and never depends on KVM. Nothing is implemented here yet: the device issue fills it.
#![forbid(unsafe_code)]
