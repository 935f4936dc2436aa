//! Worker broker.
//!
//! This crate will own turning a `--device` spec into a confined worker process: opening host
//! resources before confinement, the control socket and eventfds, fork + exec of the svmm binary
//! in worker mode, the sandbox steps in order (namespaces, pivot_root, uid/gid, capabilities,
//! no_new_privs, PDEATHSIG, rlimits, Landlock, seccomp), child handles and reaping. It never
//! decides device behaviour. Nothing is implemented here yet: the sandboxed-workers issue fills it.
