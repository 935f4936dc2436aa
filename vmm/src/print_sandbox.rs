//! `svmm --print-sandbox`: what each device's worker, and svmm itself, will be able to do.
//!
//! Nothing here describes a sandbox in words of its own. Each device's part is the plan the
//! spawner uses ([`crate::plan`]: the fd table with each host resource as its kind declares
//! it, the `broker::ConfineConfig` and its `broker::describe`, the worker's argv), and each
//! seccomp section comes from the merged JSON the filter was compiled from ([`profile`]); the
//! broker process's ids come from [`crate::plan::broker_ids`] and svmm's own from
//! [`crate::plan::svmm_ids`]; svmm's own threads come from
//! [`crate::self_confine::THREAD_POLICY`]. The report goes to
//! stdout; nothing is spawned, no VM is created, and no host resource is opened, locked or
//! created (a disk image is only measured, for its worker's `RLIMIT_FSIZE`).

pub mod profile;
#[cfg(test)]
mod tests;

use std::fmt::Write as _;

use broker::{IdChoice, REQUIRED_LANDLOCK_ABI};

use crate::config::SeccompMode;
use crate::config::{HostIds, SandboxOptions};
use crate::device_spec::DeviceSpec;
use crate::host_resources::declared_size;
use crate::layout::virtio_mmio_slot;
use crate::plan::{self, PlanError, WorkerPlan};
use crate::sandboxed::BROKER_PROFILE;
use crate::self_confine::{THREAD_POLICY, VMM_PROFILE};
use profile::ProfileError;

/// Why the report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PrintSandboxError {
    /// A device's worker could not be planned.
    #[error("{name}: {source}")]
    Plan {
        /// The device.
        name: String,
        /// Why.
        #[source]
        source: PlanError,
    },
    /// A seccomp profile could not be read back.
    #[error(transparent)]
    Profile(#[from] ProfileError),
}

/// The report for `devices`, their workers confined as `options` say (filters in `mode`), in a
/// VM of `ram_size` bytes (where the devices' shared-memory windows lie depends on it).
pub fn report(
    devices: &[DeviceSpec],
    mode: SeccompMode,
    options: &SandboxOptions,
    ram_size: u64,
) -> Result<String, PrintSandboxError> {
    let mut out = String::new();
    header(&mut out, devices.len(), mode, options);
    let mut workers = 0u32;
    let mut held = Vec::new();
    let windows = crate::services::windows(devices, ram_size);
    for ((index, spec), window) in (0u32..).zip(devices).zip(windows) {
        let name = format!("{}#{index}", spec.kind());
        let resources = spec.config.resources();
        let size_of = |i: usize| match resources.get(i) {
            Some(resource) => declared_size(resource),
            None => Err(std::io::Error::from(std::io::ErrorKind::NotFound)),
        };
        let plan = plan::plan(index, workers, spec, options, &size_of, window)
            .map_err(|source| PrintSandboxError::Plan { name, source })?;
        workers += u32::from(spec.sandbox);
        out.push('\n');
        device(&mut out, index, &plan, mode)?;
        if plan.sandboxed {
            // Its host resources' fds; a service channel after them is svmm's, passed through
            // with each start.
            let first = worker::fd_numbers::first_resource(spec.config.queues());
            let with_fd = resources.iter().filter(|r| r.has_fd()).count();
            let resources = plan
                .fds
                .iter()
                .filter(|fd| fd.number >= first)
                .take(with_fd);
            held.extend(resources.map(|fd| format!("{}: {}", plan.name, fd.what)));
            held.push(format!("{}: its plan (the command line above)", plan.name));
        }
    }
    if workers > 0 {
        out.push('\n');
        broker(&mut out, mode, options, &held)?;
    }
    out.push('\n');
    vmm(&mut out, mode)?;
    Ok(out)
}

fn header(out: &mut String, devices: usize, mode: SeccompMode, options: &SandboxOptions) {
    // SAFETY: geteuid and getegid have no preconditions and cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let who = match plan::svmm_ids(options.worker_ids) {
        Some((uid, gid)) => format!(
            "root while it opens KVM and the host resources, then uid {uid}, gid {gid}, no \
             supplementary groups and no capabilities (the last id of --worker-ids), before it \
             starts any thread; each worker gets host ids of its own from the worker id range"
        ),
        None => unprivileged_ids(uid, gid, options.host_ids),
    };
    let required = REQUIRED_LANDLOCK_ABI as i32;
    let landlock = match broker::landlock_abi_version() {
        0 => "missing: workers refuse to start".to_string(),
        v if v < required => {
            format!("ABI {v}, below the {required} workers need: they refuse to start")
        }
        v => format!("ABI {v}"),
    };
    let _ = writeln!(out, "svmm sandbox report: {devices} device(s)");
    let _ = writeln!(out, "svmm runs as {who}");
    let _ = writeln!(out, "landlock on this kernel: {landlock}");
    let _ = writeln!(out, "seccomp mode (--seccomp): {}", mode_name(mode));
}

fn mode_name(mode: SeccompMode) -> &'static str {
    match mode {
        SeccompMode::Trap => "trap",
        SeccompMode::Log => "log",
    }
}

/// One device: its worker process, or its thread of svmm.
fn device(
    out: &mut String,
    index: u32,
    plan: &WorkerPlan,
    mode: SeccompMode,
) -> Result<(), PrintSandboxError> {
    let slot = usize::try_from(index).ok().and_then(virtio_mmio_slot);
    let place = slot.map_or(String::new(), |(addr, _, irq)| {
        format!(", virtio-mmio at {addr:#x}, GSI {irq}")
    });
    if !plan.sandboxed {
        return in_process(out, plan, &place, mode);
    }
    let _ = writeln!(out, "== {}: sandboxed worker process{place} ==", plan.name);
    let argv: Vec<String> = plan
        .argv
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let _ = writeln!(out, "command line: {}", argv.join(" "));
    let _ = writeln!(
        out,
        "  started (and restarted) by the broker process (below) on svmm's request: clone3 into \
         new namespaces, then execveat of svmm's own binary through an O_PATH fd, empty \
         environment; the worker confines itself (below) before it reads a byte from svmm or \
         the guest"
    );
    // broker::describe is the sandbox's own account; the fd and seccomp lines are replaced by
    // the detailed sections below, and the ids line gets the host's view.
    for line in broker::describe(&plan.confine).lines() {
        if line.starts_with("fds:") || line.starts_with("seccomp:") {
            continue;
        }
        let _ = writeln!(out, "{line}");
        if line.starts_with("ids:") {
            let _ = writeln!(out, "  {}", host_ids(plan.ids));
        }
    }
    let _ = writeln!(out, "inherited fds (every other fd is closed before exec):");
    for fd in &plan.fds {
        let _ = writeln!(out, "  {:>3}  {}", fd.number, fd.what);
    }
    for what in &plan.on_request {
        let _ = writeln!(out, "  on the worker's request: {what}");
    }
    for what in plan.before_filter {
        let _ = writeln!(out, "  created by the worker itself: {what}");
    }
    let profile = plan.seccomp_profile;
    let violation = match mode {
        SeccompMode::Trap => {
            "any other call is denied with SIGSYS: the worker names it to svmm on its control \
             socket and dies (svmm reports the device, the pid and the call)"
        }
        SeccompMode::Log => {
            "any other call is allowed and logged to the kernel audit log (for debugging)"
        }
    };
    seccomp(out, profile, mode, violation)
}

/// A `sandbox=off` device: the same code on a thread of svmm.
fn in_process(
    out: &mut String,
    plan: &WorkerPlan,
    place: &str,
    mode: SeccompMode,
) -> Result<(), PrintSandboxError> {
    let name = &plan.name;
    let _ = writeln!(
        out,
        "== {name}: in-process (sandbox=off), thread dev-{name} of svmm{place} =="
    );
    let _ = writeln!(
        out,
        "no worker process: no namespaces, ids, Landlock, rlimits or root of its own; the \
         thread shares svmm's memory and fds, so a compromised device owns svmm"
    );
    let _ = writeln!(out, "works on its own copies of:");
    for fd in plan.fds.iter().filter(|fd| fd.number > 2) {
        let _ = writeln!(out, "  {}", fd.what);
    }
    for what in &plan.on_request {
        let _ = writeln!(out, "  on the device's request: {what}");
    }
    for what in plan.before_filter {
        let _ = writeln!(out, "  created by the device thread itself: {what}");
    }
    let violation = match mode {
        SeccompMode::Trap => {
            "installed by the thread once its event loop is set up; any other call is denied \
             with SIGSYS and ends svmm with status 70, naming the call"
        }
        SeccompMode::Log => {
            "installed by the thread once its event loop is set up; any other call is allowed \
             and logged to the kernel audit log"
        }
    };
    seccomp(out, plan.seccomp_profile, mode, violation)
}

/// Who svmm is and whose ids its workers get, unprivileged.
fn unprivileged_ids(uid: u32, gid: u32, host_ids: HostIds) -> String {
    match host_ids {
        HostIds::Subordinate(ids) => format!(
            "uid {uid}, gid {gid}; sandboxed workers get subordinate ids of this user: host \
             uids {}..={} and gids {}..={} (/etc/subuid and /etc/subgid), mapped with \
             newuidmap/newgidmap into the broker's user namespace: each worker a host uid and \
             gid of its own, no supplementary groups (a kind that reaches the user's files by \
             path, fs, keeps svmm's ids; --subids=off: every worker does)",
            ids.uids.first,
            ids.uids.first + ids.mapped() - 1,
            ids.gids.first,
            ids.gids.first + ids.mapped() - 1,
        ),
        HostIds::Shared(why) => format!(
            "uid {uid}, gid {gid}: workers keep these ids, mapped inside their user namespace \
             (no subordinate id range is used: {why}; workers share svmm's host uid and its \
             supplementary groups)"
        ),
        HostIds::Root => format!("uid {uid}, gid {gid}"),
    }
}

/// `IdChoice` as the host sees it.
fn host_ids(ids: IdChoice) -> String {
    match ids {
        IdChoice::Root { uid, gid } => format!(
            "host view: uid {uid}, gid {gid} (the worker's own, from svmm's worker id range; \
             the user namespace maps them to the same numbers)"
        ),
        IdChoice::Subordinate {
            uid,
            host_uid,
            host_gid,
            ..
        } if uid == broker::NS_WORKER_ID => format!(
            "host view: uid {host_uid}, gid {host_gid} (svmm's own ids, not a subordinate id: \
             the device reaches the user's files as the user; mapped through the broker's \
             user namespace)"
        ),
        IdChoice::Subordinate {
            host_uid, host_gid, ..
        } => format!(
            "host view: uid {host_uid}, gid {host_gid} (the worker's own, from svmm's user's \
             subordinate ids; the broker's user namespace maps them to the ids above)"
        ),
        IdChoice::Unprivileged => {
            // SAFETY: geteuid and getegid have no preconditions and cannot fail.
            let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
            format!(
                "host view: uid {uid}, gid {gid} (svmm's own ids, mapped to the ids above inside \
                 the worker's user namespace, which the worker does not own)"
            )
        }
    }
}

/// The seccomp section of `profile`.
fn seccomp(
    out: &mut String,
    profile: &str,
    mode: SeccompMode,
    violation: &str,
) -> Result<(), PrintSandboxError> {
    let rules = profile::rules(profile)?;
    let _ = writeln!(
        out,
        "seccomp: profile \"{profile}\" in mode {}: {violation}; a call through the 32-bit \
         ABI kills the process in either mode",
        mode_name(mode)
    );
    let _ = writeln!(
        out,
        "  allowed system calls ({} calls, {} rules; a call with several rules is allowed when \
         any of them matches):",
        profile::syscall_count(&rules),
        rules.len()
    );
    out.push_str(&profile::render(&rules, "    "));
    Ok(())
}

/// The broker process: who it runs as, what it holds and does, its profile.
fn broker(
    out: &mut String,
    mode: SeccompMode,
    options: &SandboxOptions,
    held: &[String],
) -> Result<(), PrintSandboxError> {
    let _ = writeln!(out, "== the broker process (svmm-broker) ==");
    let _ = writeln!(
        out,
        "forked from svmm before the guest runs and before svmm starts any thread; \
         single-threaded; dies with svmm (PR_SET_PDEATHSIG), and its workers with it"
    );
    let subids = options.host_ids.subids();
    let ids = match (plan::broker_ids(options.worker_ids, subids), subids) {
        (Some(_), Some(sub)) => {
            let ((uid, gid), (host_uid, host_gid)) = sub.broker().unwrap_or_default();
            format!(
                "every capability of a user namespace of its own (its ids 0..{n} are the \
                 subordinate ids, {n} svmm's own), then uid {uid}, gid {gid} there (host view: uid {host_uid}, \
                 gid {host_gid}), no supplementary groups; of all capabilities (in that \
                 namespace) only CAP_SETUID and CAP_SETGID (to map each worker's ids), \
                 bounding set included; no_new_privs",
                n = sub.mapped()
            )
        }
        (Some((uid, gid)), None) => format!(
            "uid {uid}, gid {gid} (the second-to-last id of --worker-ids), no supplementary \
             groups; of all capabilities only CAP_SETUID and CAP_SETGID (to map each worker's \
             ids), bounding set included; no_new_privs"
        ),
        (None, _) => "svmm's own ids, no capabilities; no_new_privs".to_string(),
    };
    let _ = writeln!(out, "runs as: {ids}");
    let _ = writeln!(
        out,
        "stdin and stdout /dev/null, stderr svmm's (its log lines); every other fd closed but:"
    );
    let _ = writeln!(out, "  svmm's executable (O_PATH), to exec workers");
    let _ = writeln!(out, "  one channel per sandboxed device (SOCK_SEQPACKET)");
    for what in held {
        let _ = writeln!(out, "  {what}");
    }
    let _ = writeln!(
        out,
        "accepts on device N's channel only \"start device N\" (with the guest-facing fds svmm \
         passes through, and a device with host services its fresh service channel; a worker \
         already running is refused) and \"stop device N\"; anything else is refused and \
         logged; reports each worker's end to svmm"
    );
    let _ = writeln!(
        out,
        "never maps guest RAM: it holds svmm's fd of it only while it starts a worker"
    );
    let violation = match mode {
        SeccompMode::Trap => {
            "any other call is denied with SIGSYS and kills the broker (svmm then reports its \
             workers dead); filters are inherited, so this one also stays on every worker, \
             under the worker's own"
        }
        SeccompMode::Log => {
            "any other call is allowed and logged to the kernel audit log; it also stays on \
             every worker, under the worker's own"
        }
    };
    seccomp(out, BROKER_PROFILE, mode, violation)
}

/// svmm's own threads and the `vmm` profile.
fn vmm(out: &mut String, mode: SeccompMode) -> Result<(), PrintSandboxError> {
    let _ = writeln!(out, "== svmm itself: its threads ==");
    for row in THREAD_POLICY {
        let _ = writeln!(out, "  {:<26} {}", row.thread, row.filter);
        let _ = writeln!(out, "  {:<26} {}", "", row.when);
    }
    let violation = match mode {
        SeccompMode::Trap => {
            "any other call is denied with SIGSYS: svmm prints the call and the thread, restores \
             the terminal and ends with status 70"
        }
        SeccompMode::Log => "any other call is allowed and logged to the kernel audit log",
    };
    seccomp(out, VMM_PROFILE, mode, violation)
}
