//! What `/proc` says about a live process: its children, status fields, namespaces, open fds and
//! root directory. The sandbox trials use it to check a worker's confinement from the outside,
//! without trusting anything the worker or svmm reports about itself.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The namespaces DESIGN.md gives every worker, by their `/proc/<pid>/ns/` names.
pub const WORKER_NAMESPACES: [&str; 8] =
    ["user", "pid", "mnt", "net", "ipc", "uts", "cgroup", "time"];

fn proc_path(pid: u32, rest: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{rest}"))
}

/// The direct children of `pid`, over all of its threads.
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = fs::read_dir(proc_path(pid, "task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let text = fs::read_to_string(task.path().join("children")).unwrap_or_default();
        out.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Waits up to `timeout` until `pid` has at least `count` children, and returns them.
pub fn wait_for_children(pid: u32, count: usize, timeout: Duration) -> Vec<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        let kids = children(pid);
        if kids.len() >= count || Instant::now() >= deadline {
            return kids;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The worker processes of svmm `pid`: its descendants that run `svmm __worker` (the broker,
/// svmm's child, spawns them), in pid order.
pub fn workers(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut stack = children(pid);
    while let Some(p) = stack.pop() {
        if cmdline(p).is_ok_and(|c| c.split_whitespace().nth(1) == Some("__worker")) {
            out.push(p);
        }
        stack.extend(children(p));
    }
    out.sort_unstable();
    out
}

/// The broker process of svmm `pid`: its child named `svmm-broker`.
pub fn broker(pid: u32) -> Option<u32> {
    children(pid).into_iter().find(|c| {
        fs::read_to_string(proc_path(*c, "comm")).is_ok_and(|n| n.trim() == "svmm-broker")
    })
}

/// Waits up to `timeout` until svmm `pid` has at least `count` workers, and returns them.
pub fn wait_for_workers(pid: u32, count: usize, timeout: Duration) -> Vec<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        let found = workers(pid);
        if found.len() >= count || Instant::now() >= deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `pid` still exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match status(pid) {
        Ok(fields) => fields.get("State").is_none_or(|s| !s.starts_with('Z')),
        Err(_) => false,
    }
}

/// `/proc/<pid>/status` as a map from field name to its (trimmed) value.
pub fn status(pid: u32) -> io::Result<BTreeMap<String, String>> {
    let text = fs::read_to_string(proc_path(pid, "status"))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect())
}

/// The first value of a `Uid:`/`Gid:` line (the real id).
pub fn real_id(fields: &BTreeMap<String, String>, key: &str) -> Option<u32> {
    fields.get(key)?.split_whitespace().next()?.parse().ok()
}

/// The `/proc/<pid>/ns/<name>` link target, e.g. `net:[4026531840]`.
pub fn namespace(pid: u32, name: &str) -> io::Result<String> {
    Ok(fs::read_link(proc_path(pid, &format!("ns/{name}")))?
        .to_string_lossy()
        .into_owned())
}

/// The open fds of `pid` and what each points to (`socket:[..]`, `anon_inode:[eventfd]`,
/// `/memfd:name (deleted)`, a path, ...).
pub fn fds(pid: u32) -> io::Result<BTreeMap<u32, String>> {
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(proc_path(pid, "fd"))? {
        let entry = entry?;
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let target = fs::read_link(entry.path())
            .map(|t| t.to_string_lossy().into_owned())
            .unwrap_or_else(|e| format!("<unreadable: {e}>"));
        out.insert(fd, target);
    }
    Ok(out)
}

/// The entries of the process's root directory, as the process sees it.
pub fn root_entries(pid: u32) -> io::Result<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(proc_path(pid, "root"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

/// The process's command line, arguments joined by spaces.
pub fn cmdline(pid: u32) -> io::Result<String> {
    let raw = fs::read(proc_path(pid, "cmdline"))?;
    Ok(raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect::<Vec<_>>()
        .join(" "))
}

/// One thread of a process: its id, its name (`comm`) and its `Seccomp:` mode (0 none, 1
/// strict, 2 filter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadSeccomp {
    /// The thread id.
    pub tid: u32,
    /// `/proc/<pid>/task/<tid>/comm`.
    pub name: String,
    /// The `Seccomp:` field of the thread's status.
    pub seccomp: String,
}

/// Every thread of `pid` with its seccomp mode, read from `/proc/<pid>/task/*/status`. A thread
/// that ends while it is read is left out.
pub fn thread_seccomp(pid: u32) -> io::Result<Vec<ThreadSeccomp>> {
    let mut out = Vec::new();
    for task in fs::read_dir(proc_path(pid, "task"))? {
        let path = task?.path();
        let Some(tid) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse().ok())
        else {
            continue;
        };
        let (Ok(status), Ok(comm)) = (
            fs::read_to_string(path.join("status")),
            fs::read_to_string(path.join("comm")),
        ) else {
            continue;
        };
        let seccomp = status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .unwrap_or("?")
            .trim()
            .to_string();
        out.push(ThreadSeccomp {
            tid,
            name: comm.trim().to_string(),
            seccomp,
        });
    }
    out.sort_by_key(|t| t.tid);
    Ok(out)
}
