//! svmm's seccomp profiles: reviewed data, compiled at build time, installed at run time.
//!
//! Owns: the JSON profiles in `profiles/` (seccompiler 0.5 format, deny by default, a `comment`
//! on every rule) — `base.json` (what every device worker's event loop needs once confined),
//! one file per device kind (`rng.json`, `blk.json`, `wl.json`; the base rules are merged into each at build time) and
//! `vmm.json` (the VMM's vCPU and event-loop threads; standalone) — their BPF programs for x86_64
//! in two [`Mode`]s, embedded by `build.rs`; the x86_64 syscall table for naming a trapped call
//! ([`syscall_name`]); thin wrappers that install a program ([`install`],
//! [`install_all_threads`]); and the worker's SIGSYS reporter ([`sigsys`]).
//!
//! Must not allow `open`, `openat`, `openat2`, `execve`, `execveat`, `socket`, `fork`, `vfork`,
//! `clone` or `clone3` in a device profile: everything a worker touches is opened for it before
//! confinement. The tests enforce this, and that every rule says why it exists
//! (`README.md` lists the reasons per profile).

#[cfg(not(target_arch = "x86_64"))]
compile_error!("seccomp-profiles embeds x86_64 BPF programs only");

mod embedded;
pub mod sigsys;
mod syscall_table;
#[cfg(test)]
mod tests;

pub use seccompiler::BpfProgram;

/// What a filter does with a syscall its profile does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Deny it with `SIGSYS` (`SECCOMP_RET_TRAP`); a worker's [`sigsys`] reporter names it to the
    /// VMM, then the worker dies. The default.
    Trap,
    /// Let it through and log it to the kernel audit log (`SECCOMP_RET_LOG`), for debugging a
    /// profile (`--seccomp=log`).
    Log,
}

/// Why a filter could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `prctl(PR_SET_NO_NEW_PRIVS)` or `seccomp(SECCOMP_SET_MODE_FILTER)` failed, or, with
    /// `TSYNC`, another thread already runs an incompatible filter.
    #[error("cannot install the seccomp filter")]
    Install(#[source] seccompiler::Error),
}

/// The compiled program of `profile` (see [`profiles`]) in `mode`, or `None` for an unknown name.
pub fn program(profile: &str, mode: Mode) -> Option<BpfProgram> {
    embedded::find(profile).map(|p| p.program(mode))
}

/// The installable profiles, sorted: one per device kind, and `"vmm"`. (`base` is merged into
/// the device profiles and is not one of its own.)
pub fn profiles() -> &'static [&'static str] {
    embedded::NAMES
}

/// The JSON `profile` was compiled from, base rules merged in, with `mismatch_action` "trap" —
/// what `svmm --print-sandbox` shows. `None` for an unknown name.
pub fn source(profile: &str) -> Option<&'static str> {
    embedded::find(profile).map(|p| p.source)
}

/// The name of x86_64 system call `nr` (`0` → `"read"`), or `None` if no such syscall exists.
pub fn syscall_name(nr: i64) -> Option<&'static str> {
    let index = usize::try_from(nr).ok()?;
    syscall_table::NAMES.get(index).copied().flatten()
}

/// Installs `program` on the calling thread (threads it creates later inherit it). Also sets
/// `PR_SET_NO_NEW_PRIVS`, which seccomp requires of an unprivileged caller.
pub fn install(program: &BpfProgram) -> Result<(), Error> {
    seccompiler::apply_filter(program).map_err(Error::Install)
}

/// Installs `program` on every thread of the process at once (`SECCOMP_FILTER_FLAG_TSYNC`).
/// Threads that must keep more (the broker's spawner thread) have to install their own filter
/// instead; this is for a process whose threads all share one profile.
pub fn install_all_threads(program: &BpfProgram) -> Result<(), Error> {
    seccompiler::apply_filter_all_threads(program).map_err(Error::Install)
}
