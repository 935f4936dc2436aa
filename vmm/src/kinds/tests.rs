//! Walks the registry: every kind is listed by `--help`, round-trips through the worker
//! encoding, is described by `--print-sandbox`, misbehaves on request through the generic
//! fault wrapper, and has a seccomp profile with a reason for every call. A new kind without
//! one of these fails here, not in review.

use std::path::{Path, PathBuf};

use devices::DeviceKind;
use seccomp_profiles::Mode;

use super::*;
use crate::config::SandboxOptions;
use crate::config::SeccompMode;
use crate::device_spec::{self, DeviceSpec};
use crate::host_resources::declared_size;
use crate::plan;
use worker::args::WorkerArgs;

/// A scratch directory for one kind's fixtures, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(kind: &str) -> Scratch {
        // Tests run in parallel: each call gets a directory of its own.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("svmm-kinds-{}-{n}-{kind}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Each kind with its test spec, parsed, and the scratch directory that holds its fixtures.
fn every_kind() -> Vec<(&'static dyn DeviceKind, DeviceSpec, Scratch)> {
    KINDS
        .iter()
        .map(|kind| {
            let scratch = Scratch::new(kind.name());
            let text = kind.test_spec(&scratch.0).unwrap();
            let spec = device_spec::parse(&text)
                .unwrap_or_else(|e| panic!("{}: its test spec {text:?}: {e}", kind.name()));
            assert_eq!(spec.kind(), kind.name(), "{text}");
            (*kind, spec, scratch)
        })
        .collect()
}

/// What a worker of `spec` is built from, on a thread here: its opened resources and, for a
/// kind with host services, a service channel (the VMM's end, returned, answers nothing) and a
/// window where svmm would put its shared-memory region.
fn resource_fds(
    spec: &DeviceSpec,
    resources: &crate::host_resources::HostResources,
) -> (devices::kind::ResourceFds, Option<ipc::Channel>) {
    let fds = devices::kind::ResourceFds::new(resources.worker_fds().unwrap());
    if !spec.config.has_services() {
        return (fds, None);
    }
    let (ours, theirs) = ipc::Channel::pair().unwrap();
    let window = spec
        .config
        .shm_region()
        .map(|len| devices::kind::ShmWindow { base: 1 << 32, len });
    (fds.with_services(theirs.into(), window), Some(ours))
}

fn options() -> SandboxOptions {
    SandboxOptions {
        seccomp: Mode::Trap,
        worker_ids: broker::IdRange::DEFAULT,
        allow_missing_landlock: false,
        host_ids: crate::config::HostIds::detect(false, 0),
        guest_ram: 128 << 20,
    }
}

fn plan_of(spec: &DeviceSpec) -> plan::WorkerPlan {
    let resources = spec.config.resources();
    let size_of = |i: usize| declared_size(&resources[i]);
    plan::plan(0, 0, spec, &options(), &size_of, None).unwrap()
}

#[test]
fn names_are_unique_and_found() {
    let mut names: Vec<&str> = KINDS.iter().map(|k| k.name()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), KINDS.len(), "two kinds share a name");
    for kind in KINDS {
        assert_eq!(find(kind.name()).map(|k| k.name()), Some(kind.name()));
        assert!(super::names().contains(kind.name()));
    }
    assert!(find("bogus").is_none());
}

#[test]
fn help_lists_every_kind() {
    let help = crate::cli::command().render_long_help().to_string();
    let short = crate::cli::command().render_help().to_string();
    for kind in KINDS {
        // clap wraps long lines: compare without line breaks and indentation.
        let flat = help.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(flat.contains(&kind.usage()), "{}:\n{help}", kind.name());
        let summary = kind
            .summary()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        assert!(flat.contains(&summary), "{}:\n{help}", kind.name());
        for option in kind.options().iter().filter(|o| !o.hidden) {
            let text = option.help.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(
                flat.contains(&text),
                "{} {}:\n{help}",
                kind.name(),
                option.name
            );
        }
        let flat_short = short.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            flat_short.contains(&kind.usage()),
            "{}:\n{short}",
            kind.name()
        );
    }
}

#[test]
fn configs_round_trip_through_the_worker_encoding() {
    for (kind, spec, _scratch) in every_kind() {
        let plan = plan_of(&spec);
        let argv: Vec<String> = plan
            .argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(argv[2], kind.name());
        let (_, rest) = broker::ConfineConfig::from_args(&argv[3..], Vec::new()).unwrap();
        let args = WorkerArgs::parse(&rest).unwrap();
        let back = find(&argv[2]).unwrap().decode(&args.config).unwrap();
        assert_eq!(back, spec.config, "{}", kind.name());
        assert_eq!(back.queues(), spec.config.queues());
        assert_eq!(back.resources(), spec.config.resources());
    }
}

#[test]
fn print_sandbox_describes_every_kind() {
    for (kind, spec, _scratch) in every_kind() {
        let name = kind.name();
        for sandboxed in [true, false] {
            let spec = DeviceSpec {
                sandbox: sandboxed,
                ..spec.clone()
            };
            let options = options();
            let text = crate::print_sandbox::report(
                std::slice::from_ref(&spec),
                SeccompMode::Trap,
                &options,
                256 << 20,
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            let heading = match sandboxed {
                true => format!("== {name}#0: sandboxed worker process"),
                false => format!("== {name}#0: in-process (sandbox=off)"),
            };
            assert!(text.contains(&heading), "{text}");
            for resource in spec.config.resources() {
                assert!(text.contains(&resource.describe()), "{name}: {text}");
            }
            for what in spec.config.sandbox().before_filter {
                assert!(text.contains(what), "{name}: {text}");
            }
            let profile = format!("seccomp: profile \"{}\"", kind.seccomp_profile());
            assert!(text.contains(&profile), "{name}: {text}");
        }
    }
}

/// The rows of `profile`'s section in seccomp-profiles/README.md: (syscall, reason).
fn readme_rows(readme: &str, profile: &str) -> Vec<(String, String)> {
    let heading = format!("## `{profile}.json`");
    let Some(start) = readme.find(&heading) else {
        return Vec::new();
    };
    readme[start + heading.len()..]
        .lines()
        .take_while(|l| !l.starts_with("## "))
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| {
            let (call, rest) = l.split_once('`')?;
            let reason = rest
                .trim_start_matches(" |")
                .trim()
                .trim_end_matches('|')
                .trim();
            Some((call.to_string(), reason.to_string()))
        })
        .collect()
}

#[test]
fn every_kind_has_its_seccomp_profile_with_a_reason_per_call() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../seccomp-profiles");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    for kind in KINDS {
        let profile = kind.seccomp_profile();
        assert!(
            seccomp_profiles::profiles().contains(&profile),
            "{}: no compiled profile {profile:?}",
            kind.name()
        );
        assert!(seccomp_profiles::program(profile, Mode::Trap).is_some());
        let json = std::fs::read_to_string(root.join(format!("profiles/{profile}.json")))
            .unwrap_or_else(|e| panic!("{}: profiles/{profile}.json: {e}", kind.name()));
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        let calls: Vec<&str> = value[profile]["filter"]
            .as_array()
            .unwrap()
            .iter()
            .map(|rule| rule["syscall"].as_str().unwrap())
            .collect();
        assert!(
            readme.contains(&format!("## `{profile}.json`")),
            "README has no section for {profile}.json"
        );
        let rows = readme_rows(&readme, profile);
        for call in calls {
            let row = rows.iter().find(|(c, _)| c == call);
            assert!(
                row.is_some_and(|(_, reason)| !reason.is_empty()),
                "{profile}: no reason for {call} in seccomp-profiles/README.md"
            );
        }
    }
}

#[cfg(feature = "test-faults")]
mod faults;

/// Every kind's backend, built from its test spec, announces what its kind declares
/// (`DeviceConfig::shape`): svmm refuses any other `Ready`, so a kind whose declaration and
/// backend disagree would never start.
#[test]
fn every_backend_fits_its_declared_shape() {
    for (kind, spec, _scratch) in every_kind() {
        let shape = spec.config.shape();
        let resources = crate::host_resources::HostResources::open(&spec.config, None).unwrap();
        let (fds, _services) = resource_fds(&spec, &resources);
        let built = spec
            .config
            .build(fds)
            .unwrap_or_else(|e| panic!("{}: {e}", kind.name()));
        let backend = built.backend();
        let name = kind.name();
        assert_eq!(shape.kind, name);
        assert_eq!(backend.device_type(), shape.device_type, "{name}");
        assert_eq!(backend.num_queues(), shape.queues, "{name}");
        assert_eq!(backend.max_queue_size(), shape.max_queue_size, "{name}");
        let extra = backend.features() & !shape.features;
        assert_eq!(extra, 0, "{name} offers {extra:#x} beyond Kind::FEATURES");
    }
}
