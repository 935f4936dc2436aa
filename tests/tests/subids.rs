//! An unprivileged svmm's workers and subordinate ids (`--subids`, `broker/src/subid.rs`), read
//! from `/proc` while the guest runs, svmm run as the test user `svmm-test` (in the `kvm` group;
//! `tests/run.sh` creates it).
//!
//! **The host is changed**: each trial makes sure `svmm-test` has a subordinate id range —
//! if it has no range of 65536 ids in both `/etc/subuid` and `/etc/subgid`, one line
//! `svmm-test:FIRST:65536` is appended to each, FIRST the first multiple of 65536 from
//! 1,400,000,000 that overlaps no range of either file nor svmm's default `--worker-ids`
//! (1,500,000,000 and up); idempotent, and the range stays for later runs
//! (`tests::confinement::ensure_subordinate_range`). The trials need root for that and for
//! switching user; run otherwise they are reported as ignored with that reason.
//!
//! - With the range and the default `--subids=on`, two rng workers each run with a host uid and
//!   gid of their own inside it, no supplementary groups, the broker too; the guest works.
//! - With `--subids=off`, and for a user with no range (`nobody`), today's mode: the workers run
//!   as svmm's own host ids, and `--print-sandbox` says so and why.
//! - When `newgidmap`/`newuidmap` refuse (a fake one first on `PATH` that fails as an unsetuid
//!   install would), svmm stops before the guest runs with one line that names the helper, its
//!   error and `--subids=off`, and leaves no broker or worker behind.

use std::time::Duration;

use tests::confinement::{self, is_root};
use tests::procfs;
use tests::suite::TrialResult;
use tests::{paths, Backend, Suite, TestVm, VmOutput};

const TIMEOUT: Duration = Duration::from_secs(60);
/// What the test guest prints when its tests are done and it idles (`testguest.sleep_ms`).
const SLEEPING: &str = "testguest: sleep ms=";
/// svmm's exit status for a VM that could not be set up.
const SETUP_FAILED: i32 = 67;

fn main() {
    let not_root = (!is_root())
        .then(|| "not running as root (adds a subordinate range, switches user)".to_string());
    Suite::new("subids")
        .sequential()
        .test_unless(
            "unprivileged_workers_get_subordinate_ids",
            not_root.clone(),
            unprivileged_workers_get_subordinate_ids,
        )
        .test_unless(
            "unprivileged_without_subids_shares_svmm_ids",
            not_root.clone(),
            unprivileged_without_subids_shares_svmm_ids,
        )
        .test_unless(
            "failing_id_map_helper_is_one_line",
            not_root,
            failing_id_map_helper_is_one_line,
        )
        .run()
}

fn guest(cmdline: &str) -> TestVm {
    TestVm::testguest(cmdline).timeout(TIMEOUT)
}

/// The ids (real, effective, saved, fs) of `pid`'s `Uid:` or `Gid:` line, and its `Groups:`.
fn ids_of(pid: u32) -> Result<(Vec<u32>, Vec<u32>, String), String> {
    let status = procfs::status(pid).map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let groups = status.get("Groups").cloned().unwrap_or_default();
    Ok((
        confinement::four_ids(&status, "Uid"),
        confinement::four_ids(&status, "Gid"),
        groups.trim().to_string(),
    ))
}

/// svmm run as `svmm-test` with `args` and two rng devices, the guest at rest: its output
/// so far, svmm's pid and its workers' pids, while `f` looks at them.
fn two_workers_as_test_user<T>(
    args: &[&str],
    f: impl FnOnce(u32, &[u32]) -> Result<T, String>,
) -> Result<(T, VmOutput), tests::suite::Failed> {
    let copies = paths::TempDir::new("subids");
    let vm = guest("testguest.run=rng@1 testguest.sleep_ms=3000")
        .args(args.iter().copied())
        .device("rng")
        .device("rng");
    let running = confinement::unprivileged(vm, &copies)?.spawn()?;
    running.wait_for_line(SLEEPING, TIMEOUT)?;
    let svmm = running.pid();
    let workers = procfs::wait_for_workers(svmm, 2, Duration::from_secs(5));
    let seen = f(svmm, &workers)?;
    let out = running.wait()?;
    out.assert_line("testguest: rng@1 ok ");
    out.assert_status(0);
    Ok((seen, out))
}

/// As `svmm-test` with its subordinate range (made by the trial if missing, see the module
/// docs) and the default `--subids=on`: `--print-sandbox` names the range, and each of two rng
/// workers runs with a host uid and gid of its own (all four of each the same), inside that
/// range, not svmm's, different from the other worker's, with no supplementary groups; the
/// broker runs as a subordinate id too; the guest's rng test passes through the second device.
fn unprivileged_workers_get_subordinate_ids() -> TrialResult {
    let (first_uid, first_gid) = confinement::ensure_subordinate_range()?;
    let uid_range = u64::from(first_uid)..u64::from(first_uid) + 65536;
    let gid_range = u64::from(first_gid)..u64::from(first_gid) + 65536;
    let copies = paths::TempDir::new("subids-report");
    let report = confinement::unprivileged(
        TestVm::new(Backend::Svmm)
            .arg("--print-sandbox")
            .device("rng")
            .device("rng"),
        &copies,
    )?
    .timeout(TIMEOUT)
    .run()?;
    let want = format!(
        "sandboxed workers get subordinate ids of this user: host uids {first_uid}..={} and \
         gids {first_gid}..={}",
        first_uid + 65535,
        first_gid + 65535
    );
    if !report.stdout.contains(&want) {
        return Err(format!("--print-sandbox does not say {want:?}\n{}", report.report()).into());
    }
    let (seen, out) = two_workers_as_test_user(&[], |svmm, workers| {
        let (svmm_uid, svmm_gid, _) = ids_of(svmm)?;
        let mut problems = Vec::new();
        let mut hosts = Vec::new();
        if workers.len() != 2 {
            problems.push(format!("workers {workers:?}, want 2"));
        }
        for &w in workers {
            let (uids, gids, groups) = ids_of(w)?;
            for (name, ids, svmm_id, range) in [
                ("uid", &uids, &svmm_uid, &uid_range),
                ("gid", &gids, &svmm_gid, &gid_range),
            ] {
                let same = ids.len() == 4 && ids.iter().all(|&i| i == ids[0]);
                if !same || !range.contains(&u64::from(ids[0])) || svmm_id.first() == ids.first() {
                    problems.push(format!(
                        "worker {w}: {name}s {ids:?} (want four alike in {range:?}, not \
                         svmm's {svmm_id:?})"
                    ));
                }
            }
            if !groups.is_empty() {
                problems.push(format!("worker {w}: Groups {groups:?} (want none)"));
            }
            hosts.push((uids.first().copied(), gids.first().copied()));
        }
        if hosts.len() == 2 && (hosts[0].0 == hosts[1].0 || hosts[0].1 == hosts[1].1) {
            problems.push(format!("both workers have the same host ids {hosts:?}"));
        }
        if let Some(broker) = procfs::broker(svmm) {
            let (uids, _, _) = ids_of(broker)?;
            if !uids
                .first()
                .is_some_and(|&u| uid_range.contains(&u64::from(u)))
            {
                problems.push(format!(
                    "broker {broker}: uids {uids:?} not in {uid_range:?}"
                ));
            }
        } else {
            problems.push("no broker process".into());
        }
        if problems.is_empty() {
            Ok(hosts)
        } else {
            Err(problems.join("\n"))
        }
    })?;
    out.log("svmm testguest rng@1 as svmm-test with subordinate ids, two rng devices");
    eprintln!("    workers' host (uid, gid): {seen:?}");
    Ok(())
}

/// Today's unprivileged behaviour stays where subordinate ids are not used: with
/// `--subids=off` both workers run as svmm's own host uid and gid (mapped to 1000 inside their
/// namespaces) and `--print-sandbox` says so and why; as a user with no range at all (`nobody`,
/// which never gets one) `--print-sandbox` says that is why.
fn unprivileged_without_subids_shares_svmm_ids() -> TrialResult {
    let (_, out) = two_workers_as_test_user(&["--subids=off"], |svmm, workers| {
        let (svmm_uid, svmm_gid, _) = ids_of(svmm)?;
        for &w in workers {
            let (uids, gids, _) = ids_of(w)?;
            if uids.first() != svmm_uid.first() || gids.first() != svmm_gid.first() {
                return Err(format!(
                    "worker {w}: uids {uids:?} gids {gids:?}, want svmm's {svmm_uid:?} {svmm_gid:?}"
                ));
            }
        }
        Ok(())
    })?;
    out.log("svmm testguest rng@1 as svmm-test, --subids=off, two rng devices");
    let copies = paths::TempDir::new("no-subids-report");
    let off = confinement::unprivileged(
        TestVm::new(Backend::Svmm)
            .args(["--print-sandbox", "--subids=off"])
            .device("rng"),
        &copies,
    )?
    .timeout(TIMEOUT)
    .run()?;
    off.assert_status(0);
    if !off
        .stdout
        .contains("(no subordinate id range is used: --subids=off; workers share svmm's host uid")
    {
        return Err(format!("--subids=off not reported\n{}", off.report()).into());
    }
    // `nobody` has no range: the same report, with that reason (no KVM needed to print it).
    let svmm = copies.path().join("svmm");
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .arg(&svmm)
        .args(["--print-sandbox", "--device", "rng"])
        .output()
        .map_err(|e| format!("setpriv: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let want = "(no subordinate id range is used: svmm's user has no subordinate id range";
    if !out.status.success() || !stdout.contains(want) {
        return Err(format!(
            "as nobody: {} {stdout} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

/// With a range but id-map helpers that fail (fakes first on `PATH`, failing as
/// `newgidmap` does when it is not setuid): one line naming the helper, its error and the way
/// out, svmm's set-up failure status, no guest output, and no process of the VM left.
fn failing_id_map_helper_is_one_line() -> TrialResult {
    use std::os::unix::fs::PermissionsExt;
    let copies = paths::TempDir::new("subids-helper-fails");
    let bin = copies.path().join("fake-bin");
    std::fs::create_dir(&bin).map_err(|e| format!("mkdir {}: {e}", bin.display()))?;
    for helper in ["newuidmap", "newgidmap"] {
        let map = &helper[3..6];
        let script = format!(
            "#!/bin/sh\necho \"{helper}: write to {map}_map failed: Operation not permitted\" >&2\nexit 1\n"
        );
        let path = bin.join(helper);
        std::fs::write(&path, script).map_err(|e| format!("write {}: {e}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("chmod {}: {e}", path.display()))?;
    }
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod {}: {e}", bin.display()))?;
    let vm = guest("testguest.run=rng@1")
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .device("rng")
        .device("rng");
    let out = confinement::unprivileged(vm, &copies)?.run()?;
    out.log("svmm as svmm-test with failing newgidmap/newuidmap");
    out.assert_status(SETUP_FAILED);
    let lines: Vec<&str> = out.stderr.lines().collect();
    let ok = match lines[..] {
        [line] => {
            line.starts_with("svmm: error: ")
                && line.contains("newgidmap ")
                && line.contains("write to gid_map failed: Operation not permitted")
                && line.contains("--subids=off")
        }
        _ => false,
    };
    if !ok {
        return Err(format!(
            "expected one line naming newgidmap, its error and --subids=off\n{}",
            out.report()
        )
        .into());
    }
    if !out.stdout.is_empty() {
        return Err(format!("the guest ran\n{}", out.report()).into());
    }
    // The broker dies with svmm (its parent-death signal): give the kernel a moment.
    let svmm = copies.path().join("svmm");
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let left = running(&svmm);
        if left.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("processes of this VM still running: {left:?}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The processes whose executable is `exe`.
fn running(exe: &std::path::Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == exe))
        .collect()
}
