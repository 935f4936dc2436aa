//! Plans with rng and with the test-only kind that has every sort of host resource.

use std::ffi::OsString;

use super::*;
use crate::test_kind;
use worker::args::WorkerArgs;

fn options(mode: Mode) -> SandboxOptions {
    SandboxOptions {
        seccomp: mode,
        worker_ids: IdRange::DEFAULT,
        allow_missing_landlock: false,
        host_ids: crate::config::HostIds::detect(false, 0),
        guest_ram: 128 << 20,
    }
}

/// rng reading `/dev/urandom`: a device with one host resource.
fn rng() -> DeviceSpec {
    crate::device_spec::parse("rng,source=urandom").unwrap()
}

fn no_size(_: usize) -> io::Result<u64> {
    Err(io::Error::other("nothing to measure"))
}

fn strings(argv: &[CString]) -> Vec<String> {
    argv.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

#[test]
fn rng_with_its_own_generator_has_no_host_resource() {
    let spec = crate::device_spec::parse("rng").unwrap();
    let plan = plan(0, 0, &spec, &options(Mode::Trap), &no_size, None).unwrap();
    let numbers: Vec<RawFd> = plan.fds.iter().map(|f| f.number).collect();
    assert_eq!(numbers, (0..=8).collect::<Vec<_>>());
    assert!(!plan.fds.iter().any(|f| f.what.contains("host resource")));
    assert_eq!(plan.confine.fds, 6);
    assert_eq!(strings(&plan.argv).last().unwrap(), "--config=00000000");
}

#[test]
fn rng_worker_fds_follow_the_fixed_numbers() {
    let plan = plan(0, 0, &rng(), &options(Mode::Trap), &no_size, None).unwrap();
    let numbers: Vec<RawFd> = plan.fds.iter().map(|f| f.number).collect();
    assert_eq!(numbers, (0..=9).collect::<Vec<_>>());
    assert!(plan.fds[3].what.starts_with("control socket"));
    assert!(plan.fds[4].what.contains("sealed"));
    assert!(plan.fds[8].what.starts_with("queue 0 notify eventfd"));
    assert_eq!(
        plan.fds[9].what,
        "host resource of rng: /dev/urandom (read-only)"
    );
    // The sandbox covers exactly the fds above stderr.
    assert_eq!(plan.confine.fds, 7);
    assert_eq!(plan.confine.lifeline, Some(CONTROL));
    assert_eq!(plan.confine.rlimits.fsize, Some(0));
    assert_eq!(plan.confine.rlimits.nofile, 3 + 7 + broker::NOFILE_MARGIN);
    // RLIMIT_AS: guest RAM (128 MiB here) and the margin; rng holds nothing more.
    assert_eq!(
        plan.confine.rlimits.address_space,
        Some((128 << 20) + crate::plan::WORKER_AS_MARGIN)
    );
    assert_eq!(plan.seccomp_profile, "rng");
    assert!(plan.on_request.is_empty() && plan.before_filter.is_empty());
    assert_eq!(plan.name, "rng#0");
}

#[test]
fn argv_round_trips_through_the_worker_parser() {
    let spec = rng();
    let mut opts = options(Mode::Log);
    opts.allow_missing_landlock = true;
    let plan = plan(3, 1, &spec, &opts, &no_size, None).unwrap();
    let argv = strings(&plan.argv);
    assert_eq!(
        argv[..4],
        ["svmm", WORKER_ARG, "rng", "--seccomp=log"],
        "{argv:?}"
    );
    assert!(argv[4].starts_with("--sandbox-"), "{argv:?}");
    // RngConfig { source: Urandom }: variant 1 as a fixed 4-byte integer.
    assert_eq!(argv.last().unwrap(), "--config=01000000");
    // What the worker reads back: the sandbox, then the mode and the kind's config.
    let (back, rest) = ConfineConfig::from_args(&argv[3..], Vec::new()).unwrap();
    assert_eq!(back, plan.confine);
    assert!(back.allow_missing_landlock);
    let rest: Vec<OsString> = rest.into_iter().collect();
    let args = WorkerArgs::parse(&rest).unwrap();
    assert_eq!(args.seccomp, Mode::Log);
    let kind = crate::kinds::find(&argv[2]).unwrap();
    assert_eq!(kind.decode(&args.config).unwrap(), spec.config);
}

#[test]
fn every_sort_of_resource_gets_its_place() {
    let spec = test_kind::spec("fake=/i/f.img,dir=/srv/share,rw=on");
    let sizes = |i: usize| match i {
        0 => Ok(8192),
        _ => no_size(i),
    };
    let plan = plan(0, 0, &spec, &options(Mode::Trap), &sizes, None).unwrap();
    // Two queues at 8 and 9, then the file at 10 and the directory at 11: the socket path has
    // no fd and is made on request, through the service channel at 12.
    let numbers: Vec<RawFd> = plan.fds.iter().map(|f| f.number).collect();
    assert_eq!(numbers, (0..=12).collect::<Vec<_>>());
    assert!(plan.fds[10]
        .what
        .starts_with("host resource of fake: /i/f.img (read-write"));
    assert!(plan.fds[11]
        .what
        .starts_with("host resource of fake: /srv/share (directory"));
    assert!(
        plan.fds[12]
            .what
            .starts_with("service channel (SOCK_SEQPACKET")
            && plan.fds[12]
                .what
                .contains("new connections to /run/fake.sock"),
        "{}",
        plan.fds[12].what
    );
    assert_eq!(
        plan.on_request,
        ["connections to /run/fake.sock, made by svmm when the worker asks"]
    );
    assert_eq!(plan.confine.fds, 10);
    assert_eq!(plan.confine.rlimits.fsize, Some(8192));
    assert_eq!(
        plan.confine.landlock_beneath,
        [LandlockBeneath {
            fd: 11,
            writable: true
        }]
    );
    // The worker counts the same fds: the resources' and the service channel.
    let resource_fds = spec
        .config
        .resources()
        .iter()
        .filter(|r| r.has_fd())
        .count();
    assert_eq!(
        worker::fd_numbers::passed(spec.config.queues(), resource_fds + 1),
        plan.confine.fds
    );
    // A size that cannot be measured is an error naming the resource.
    let err = super::plan(0, 0, &spec, &options(Mode::Trap), &no_size, None).unwrap_err();
    assert!(
        err.to_string().starts_with("cannot measure /i/f.img"),
        "{err}"
    );
}

#[test]
fn ids_depend_on_who_runs_svmm() {
    let ids = worker_ids(2, IdRange::DEFAULT, None, false).unwrap();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert_eq!(ids, IdRange::DEFAULT.ids(2).unwrap());
        assert_ne!(
            worker_ids(3, IdRange::DEFAULT, None, false).unwrap(),
            ids,
            "each worker has its own ids"
        );
        let plan = plan(5, 2, &rng(), &options(Mode::Trap), &no_size, None).unwrap();
        assert_eq!(
            plan.ids, ids,
            "ids follow the worker number, not the device index"
        );
    } else {
        assert_eq!(ids, IdChoice::Unprivileged);
    }
}
