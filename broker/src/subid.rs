//! Subordinate ids (`/etc/subuid`, `/etc/subgid`): how an unprivileged svmm gives each worker a
//! host uid and gid of its own.
//!
//! An unprivileged process may map only its own uid into a user namespace it makes. The
//! setuid helpers `newuidmap`/`newgidmap` (Debian's `uidmap`) map more: the ranges the
//! administrator delegated to the user in `/etc/subuid` and `/etc/subgid`, one `NAME:FIRST:COUNT`
//! (or `UID:FIRST:COUNT`) line per range. This is how rootless podman, buildah and
//! `unshare --map-auto` get more than one id.
//!
//! svmm uses them for the broker process ([`crate::server`]): the broker unshares a user
//! namespace right after the fork, and svmm (not yet confined, not `no_new_privs`: the broker
//! itself may not exec a setuid helper) runs `newuidmap BROKER 0 FIRST N N EUID 1` and the same
//! with `newgidmap` ([`map_broker`]): namespace ids `0..N` are the subordinate ids, `N` is svmm's
//! own. The broker holds every capability of the namespace it made; it drops to an id of its own
//! keeping `CAP_SETUID`/`CAP_SETGID` — the root path — and gives worker `i` namespace id `1 + i`
//! ([`SubIds::worker`]), which the host sees as `FIRST + 1 + i`: each worker its own host uid
//! and gid, no supplementary groups. svmm's own ids are not namespace id 0 on purpose: a worker
//! that must act as the user ([`SubIds::as_user`]) is mapped to them, and a map onto id 0 of the
//! parent namespace would need `CAP_SETFCAP` there (the kernel's `verify_root_map`).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Command;

use crate::spawn::{IdChoice, IdRange};

/// Most subordinate ids svmm maps (a VM has at most a few dozen workers; this is the usual
/// size of one delegated range).
pub const MAX_MAPPED: u32 = 65536;

/// One delegated range of host ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// Its first host id.
    pub first: u32,
    /// How many ids.
    pub count: u32,
}

/// The ranges of `text` (the format of `/etc/subuid` and `/etc/subgid`) that belong to the user
/// named `name` or numbered `id`, in file order. Lines that do not parse — wrong field count,
/// non-numbers, an empty range, one that would wrap past `u32::MAX` or contain 0 — and comments
/// are skipped, as shadow's own tools skip them.
pub fn ranges(text: &str, name: Option<&str>, id: u32) -> Vec<Range> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.starts_with('#') {
                return None;
            }
            let mut fields = line.split(':');
            let (owner, first, count) = (fields.next()?, fields.next()?, fields.next()?);
            if fields.next().is_some() {
                return None;
            }
            let mine = name.is_some_and(|n| n == owner) || owner.parse::<u32>() == Ok(id);
            let first: u32 = first.parse().ok()?;
            let count: u32 = count.parse().ok()?;
            let last = first.checked_add(count.checked_sub(1)?)?;
            (mine && first > 0 && last < u32::MAX).then_some(Range { first, count })
        })
        .collect()
}

/// The first range of `ranges` with at least `need` ids.
pub fn first_fit(ranges: &[Range], need: u32) -> Option<Range> {
    ranges.iter().copied().find(|r| r.count >= need)
}

/// An unprivileged svmm's subordinate ids: a host uid range and a host gid range, both mapped
/// into the broker's user namespace from namespace id 1 (namespace id 0 is svmm's own ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubIds {
    /// Host uids.
    pub uids: Range,
    /// Host gids.
    pub gids: Range,
}

impl SubIds {
    /// How many subordinate ids are mapped (the same number of uids and gids).
    pub fn mapped(&self) -> u32 {
        self.uids.count.min(self.gids.count).min(MAX_MAPPED)
    }

    /// The namespace ids the broker hands out, as an [`IdRange`] of the root path (`1..N`):
    /// worker `i` namespace id `1 + i`, the broker the range's second-to-last (its last is
    /// unused: svmm keeps its own ids, and so is namespace id 0).
    fn ns_range(&self) -> Option<IdRange> {
        IdRange::new(1, self.mapped().checked_sub(1)?)
    }

    /// The host's view of namespace uid and gid `id` (below [`SubIds::mapped`]).
    fn host(&self, id: u32) -> (u32, u32) {
        (self.uids.first + id, self.gids.first + id)
    }

    /// The ids of worker number `index`, or `None` past the end of the range.
    pub fn worker(&self, index: u32) -> Option<IdChoice> {
        match self.ns_range()?.ids(index)? {
            IdChoice::Root { uid, gid } => Some(IdChoice::Subordinate {
                uid,
                gid,
                ns_uid: uid,
                ns_gid: gid,
                host_uid: self.host(uid).0,
                host_gid: self.host(gid).1,
            }),
            _ => None,
        }
    }

    /// The ids of a worker that must reach the user's files as the user (`user_files`): svmm's
    /// own host ids, `host_uid`/`host_gid`, which are id `N` ([`SubIds::mapped`]) of the
    /// broker's namespace, seen as [`crate::NS_WORKER_ID`] inside the worker's.
    pub fn as_user(&self, host_uid: u32, host_gid: u32) -> IdChoice {
        IdChoice::Subordinate {
            uid: crate::NS_WORKER_ID,
            gid: crate::NS_WORKER_ID,
            ns_uid: self.mapped(),
            ns_gid: self.mapped(),
            host_uid,
            host_gid,
        }
    }

    /// The broker's ids inside its namespace, and the host's view of them.
    pub fn broker(&self) -> Option<((u32, u32), (u32, u32))> {
        let id = self.ns_range()?.broker()?;
        Some(((id, id), self.host(id)))
    }

    /// The user's subordinate ids, if `/etc/subuid` and `/etc/subgid` both delegate a range of
    /// at least `need` ids to the user `uid` (named in the password database or by number).
    pub fn of_user(uid: u32, need: u32) -> Option<SubIds> {
        let name = user_name(uid);
        let read = |path| std::fs::read_to_string(path).unwrap_or_default();
        let uids = first_fit(&ranges(&read("/etc/subuid"), name.as_deref(), uid), need)?;
        let gids = first_fit(&ranges(&read("/etc/subgid"), name.as_deref(), uid), need)?;
        Some(SubIds { uids, gids })
    }
}

/// What an unprivileged svmm uses: the user's subordinate ids if it has a range of at least
/// `need` ids in both files and both helpers are installed; otherwise why not, for
/// `--print-sandbox`.
pub fn detect(uid: u32, need: u32) -> Result<SubIds, &'static str> {
    let ids = SubIds::of_user(uid, need).ok_or(
        "svmm's user has no subordinate id range (in both /etc/subuid and /etc/subgid) large \
         enough",
    )?;
    if helper("newuidmap").is_none() || helper("newgidmap").is_none() {
        return Err("newuidmap/newgidmap are not installed (Debian's uidmap)");
    }
    Ok(ids)
}

/// The login name of `uid`, if the password database has one.
fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: an all-zero passwd is a valid value for getpwuid_r to overwrite.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: pwd, buf (with its true length) and found are live for the call; getpwuid_r
    // writes the strings it points pwd at into buf.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() || pwd.pw_name.is_null() {
        return None;
    }
    // SAFETY: found is non-null, so pw_name points at a NUL-terminated string inside buf,
    // which lives until the end of this function.
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
    Some(name.to_string_lossy().into_owned())
}

/// The helper `name` (`newuidmap`, `newgidmap`): on `PATH`, else in `/usr/bin`.
pub fn helper(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([std::path::PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Why the broker's ids could not be mapped.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// The broker did not say it had made its user namespace.
    #[error("the broker did not make its user namespace")]
    NoNamespace(#[source] io::Error),
    /// `newuidmap` or `newgidmap` is not installed.
    #[error("{0} not found (install Debian's uidmap, or run with --subids=off)")]
    NoHelper(&'static str),
    /// The helper could not run or failed.
    #[error("{helper} {args} failed: {why} (run with --subids=off to do without)")]
    Helper {
        /// Which.
        helper: &'static str,
        /// Its arguments.
        args: String,
        /// Its status and stderr, on one line.
        why: String,
    },
    /// The broker could not be told.
    #[error("cannot tell the broker its ids are mapped")]
    Tell(#[source] io::Error),
}

/// svmm's side of [`SubIds`]: waits on `sync` until the broker `pid` has unshared its user
/// namespace, maps namespace ids `0..N` to the subordinate ranges and `N` to svmm's own uid and
/// gid with `newuidmap`/`newgidmap`, then tells the broker. Call it right after the fork,
/// while svmm may still exec (single-threaded, without `no_new_privs`).
pub fn map_broker(pid: i32, ids: &SubIds, sync: &OwnedFd) -> Result<(), MapError> {
    let mut byte = [0u8; 1];
    // SAFETY: reads one byte into a live one-byte buffer from an fd we own.
    let n = unsafe { libc::read(sync.as_raw_fd(), byte.as_mut_ptr().cast(), 1) };
    if n != 1 {
        let e = if n < 0 {
            io::Error::last_os_error()
        } else {
            io::Error::from(io::ErrorKind::UnexpectedEof)
        };
        return Err(MapError::NoNamespace(e));
    }
    // SAFETY: geteuid/getegid have no preconditions and cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let n = ids.mapped();
    run_helper("newgidmap", pid, gid, ids.gids.first, n)?;
    run_helper("newuidmap", pid, uid, ids.uids.first, n)?;
    // SAFETY: writes one byte from a live buffer to an fd we own.
    if unsafe { libc::write(sync.as_raw_fd(), b"m".as_ptr().cast(), 1) } != 1 {
        return Err(MapError::Tell(io::Error::last_os_error()));
    }
    Ok(())
}

/// `HELPER PID 0 FIRST N N OWN 1`.
fn run_helper(
    helper: &'static str,
    pid: i32,
    own: u32,
    first: u32,
    n: u32,
) -> Result<(), MapError> {
    let path = self::helper(helper).ok_or(MapError::NoHelper(helper))?;
    let args: Vec<String> = [pid as u32, 0, first, n, n, own, 1]
        .iter()
        .map(u32::to_string)
        .collect();
    let fail = |why: String| MapError::Helper {
        helper,
        args: args.join(" "),
        why,
    };
    let out = Command::new(&path)
        .args(&args)
        .env_clear()
        .output()
        .map_err(|e| fail(e.to_string()))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stderr: String = stderr
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    Err(fail(format!("{}: {stderr}", out.status)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# delegated ranges
alice:100000:65536
1001:165536:65536
bob:231072:10
alice:300000:2
";

    #[test]
    fn by_name_in_file_order() {
        assert_eq!(
            ranges(FILE, Some("alice"), 1000),
            [
                Range {
                    first: 100000,
                    count: 65536
                },
                Range {
                    first: 300000,
                    count: 2
                }
            ]
        );
    }

    #[test]
    fn by_number_too() {
        assert_eq!(
            ranges(FILE, Some("carol"), 1001),
            [Range {
                first: 165536,
                count: 65536
            }]
        );
        // A user with no name in the password database is found by number alone.
        assert_eq!(ranges(FILE, None, 1001).len(), 1);
        assert!(ranges(FILE, None, 1002).is_empty());
    }

    #[test]
    fn first_range_big_enough() {
        let bob = ranges(FILE, Some("bob"), 5);
        assert_eq!(first_fit(&bob, 10).map(|r| r.first), Some(231072));
        assert_eq!(first_fit(&bob, 11), None);
        let alice = ranges("alice:300000:2\nalice:100000:65536\n", Some("alice"), 1);
        assert_eq!(first_fit(&alice, 3).map(|r| r.first), Some(100000));
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let text = "alice\nalice:1\nalice:x:5\nalice:5:y\nalice:5:0\nalice:0:5\n\
                    alice:4294967295:1\nalice:4294967290:10\nalice:-1:5\nalice:1:2:3\n\
                    :1:2\nalice::\n\u{0}:\u{ff}:\n alice:7:8 \nalice:9:10";
        assert_eq!(
            ranges(text, Some("alice"), 1),
            [
                Range { first: 7, count: 8 },
                Range {
                    first: 9,
                    count: 10
                }
            ]
        );
        assert!(ranges("", Some("alice"), 1).is_empty());
    }

    #[test]
    fn workers_and_broker_get_distinct_host_ids_inside_the_ranges() {
        let ids = SubIds {
            uids: Range {
                first: 100000,
                count: 65536,
            },
            gids: Range {
                first: 200000,
                count: 100,
            },
        };
        assert_eq!(ids.mapped(), 100);
        assert_eq!(
            ids.worker(0),
            Some(IdChoice::Subordinate {
                uid: 1,
                gid: 1,
                ns_uid: 1,
                ns_gid: 1,
                host_uid: 100001,
                host_gid: 200001
            })
        );
        assert_eq!(
            ids.worker(96),
            Some(IdChoice::Subordinate {
                uid: 97,
                gid: 97,
                ns_uid: 97,
                ns_gid: 97,
                host_uid: 100097,
                host_gid: 200097
            })
        );
        // Namespace ids 1..100: the last two are not workers' (the broker's and an unused one).
        assert_eq!(ids.worker(97), None);
        assert_eq!(ids.broker(), Some(((98, 98), (100098, 200098))));
        // A worker acting as the user: svmm's own ids, namespace id 100 (not 0).
        assert_eq!(
            ids.as_user(1000, 1001),
            IdChoice::Subordinate {
                uid: crate::NS_WORKER_ID,
                gid: crate::NS_WORKER_ID,
                ns_uid: 100,
                ns_gid: 100,
                host_uid: 1000,
                host_gid: 1001
            }
        );
    }
}
