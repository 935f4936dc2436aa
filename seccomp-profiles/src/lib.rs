//! Seccomp profiles.
//!
//! This crate will own one seccompiler JSON profile per device kind plus a common base and the
//! VMM's own profile, compiled to BPF in `build.rs` and embedded, with a test that every profile
//! parses and that every rule carries a comment. Nothing is implemented here yet: the
//! sandboxed-workers issue fills it.
