//! Where the host runs each VMM's threads during the bench runs.
//!
//! On a host with two CPUs the device figures depended on which CPU the host scheduler gave the
//! vCPU thread: the host disk interrupts one CPU only, and an interrupt into a CPU that is running
//! the guest costs an exit, while the device's I/O thread on that CPU takes its completions
//! locally (BENCHMARKS.md, "Where the gaps come from"). The host chose anew each run, for each
//! VMM alike, so one configuration's five runs could land mostly on one placement and another's
//! on the other; the sandboxed/in-process and svmm/QEMU ratios then measured the scheduler.
//!
//! [`Placement::Split`] fixes it the same way for all three VMMs: the whole VMM (its own threads,
//! svmm's broker and workers, QEMU's I/O threads and virtiofsd) starts on the `rest` CPUs
//! (`taskset -c`, inherited through every fork and exec), and its vCPU thread moves to the `vcpu`
//! CPU as soon as it exists. Only the bench runs are placed: the boot runs measure thread and
//! process creation itself, which the move would race.

use std::fs;
use std::time::{Duration, Instant};

use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet, Pid};

/// The vCPU thread's name: svmm's (`vmm::vcpu`) and QEMU's with `-name ...,debug-threads=on`.
pub const SVMM_VCPU: &str = "vcpu0";
/// See [`SVMM_VCPU`].
pub const QEMU_VCPU: &str = "CPU 0/KVM";

/// How often [`Placement::place_vcpu`] looks for the vCPU thread.
const LOOK_EVERY: Duration = Duration::from_micros(500);

/// Where the bench runs' threads run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Wherever the host scheduler puts them.
    Free,
    /// The vCPU thread on `vcpu`, everything else of the VMM on `rest`.
    Split {
        /// The vCPU thread's CPU.
        vcpu: usize,
        /// Every other thread's CPUs.
        rest: Vec<usize>,
    },
}

impl Placement {
    /// The CPUs this process may run on (its VMs inherit them).
    pub fn allowed_cpus() -> Result<Vec<usize>, String> {
        let set = sched_getaffinity(None).map_err(|e| format!("sched_getaffinity: {e}"))?;
        Ok((0..CpuSet::MAX_CPU).filter(|c| set.is_set(*c)).collect())
    }

    /// `--placement VALUE` on a host where `allowed` are the CPUs to use: `free`, `split` (the
    /// vCPU on the lowest allowed CPU) or `split:N` (the vCPU on CPU N); `auto` is `split` with
    /// two or more CPUs, else `free`.
    pub fn parse(value: &str, allowed: &[usize]) -> Result<Placement, String> {
        let split = |vcpu: usize| -> Result<Placement, String> {
            if !allowed.contains(&vcpu) {
                return Err(format!(
                    "--placement {value}: CPU {vcpu} is not one this process may use ({})",
                    list(allowed)
                ));
            }
            let rest: Vec<usize> = allowed.iter().copied().filter(|c| *c != vcpu).collect();
            if rest.is_empty() {
                return Err(format!(
                    "--placement {value}: needs a second CPU for the VMM's other threads \
                     (allowed: {})",
                    list(allowed)
                ));
            }
            Ok(Placement::Split { vcpu, rest })
        };
        let lowest = allowed.first().copied();
        match value {
            "free" => Ok(Placement::Free),
            "auto" if allowed.len() < 2 => Ok(Placement::Free),
            "auto" | "split" => split(lowest.ok_or("no CPU to run on")?),
            _ => match value.strip_prefix("split:").map(str::parse::<usize>) {
                Some(Ok(cpu)) => split(cpu),
                _ => Err(format!(
                    "--placement {value}: expected auto, free, split or split:CPU"
                )),
            },
        }
    }

    /// What goes in front of a bench run's command: `taskset -c REST`, or nothing.
    pub fn wrapper(&self) -> Vec<String> {
        match self {
            Placement::Free => Vec::new(),
            Placement::Split { rest, .. } => vec!["taskset".into(), "-c".into(), list(rest)],
        }
    }

    /// Moves the thread named `thread` of process `pid` to the vCPU's CPU once it exists
    /// (a no-op for [`Placement::Free`]). Fails if it does not appear within `timeout` or the
    /// process ends first (`ended`: an exited child stays in /proc until it is reaped).
    pub fn place_vcpu(
        &self,
        pid: u32,
        thread: &str,
        timeout: Duration,
        ended: impl Fn() -> bool,
    ) -> Result<(), String> {
        let Placement::Split { vcpu, .. } = self else {
            return Ok(());
        };
        let mut set = CpuSet::new();
        set.set(*vcpu);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(tid) = find_thread(pid, thread)? {
                let tid = i32::try_from(tid)
                    .ok()
                    .and_then(Pid::from_raw)
                    .ok_or_else(|| format!("thread id {tid} out of range"))?;
                return sched_setaffinity(Some(tid), &set).map_err(|e| {
                    format!("cannot move the vCPU thread '{thread}' to CPU {vcpu}: {e}")
                });
            }
            if ended() {
                return Err(format!(
                    "the VMM (pid {pid}) ended before it had a thread '{thread}'"
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the VMM (pid {pid}) had no thread '{thread}' after {timeout:?}: cannot place \
                     its vCPU (--placement free runs without)"
                ));
            }
            std::thread::sleep(LOOK_EVERY);
        }
    }

    /// What the report says.
    pub fn describe(&self) -> String {
        match self {
            Placement::Free => "wherever the host scheduler puts them (`--placement free`)".into(),
            Placement::Split { vcpu, rest } => format!(
                "in bench runs each VMM runs under `taskset -c {}` (every thread, process and \
                 helper it starts inherits it) and its vCPU thread is moved to CPU {vcpu} as \
                 soon as it exists, the same for all three; boot runs are not placed",
                list(rest)
            ),
        }
    }
}

/// `0,2,3`.
fn list(cpus: &[usize]) -> String {
    cpus.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The id of `pid`'s thread named `name`, if it has one; an error once `pid` is gone.
fn find_thread(pid: u32, name: &str) -> Result<Option<u32>, String> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task"))
        .map_err(|e| format!("the VMM (pid {pid}) ended before its vCPU was placed: {e}"))?;
    for task in tasks.flatten() {
        // A thread can end between the listing and the read: skip it.
        let Ok(comm) = fs::read_to_string(task.path().join("comm")) else {
            continue;
        };
        if comm.trim_end_matches('\n') == name {
            return Ok(task.file_name().to_str().and_then(|t| t.parse().ok()));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_picks_the_vcpu_and_the_rest() {
        let two = [0, 1];
        assert_eq!(
            Placement::parse("auto", &two),
            Ok(Placement::Split {
                vcpu: 0,
                rest: vec![1]
            })
        );
        assert_eq!(
            Placement::parse("split:1", &[0, 1, 3]),
            Ok(Placement::Split {
                vcpu: 1,
                rest: vec![0, 3]
            })
        );
        assert_eq!(Placement::parse("free", &two), Ok(Placement::Free));
        assert_eq!(Placement::parse("auto", &[2]), Ok(Placement::Free));
        let one = Placement::parse("split", &[2]).unwrap_err();
        assert!(one.contains("needs a second CPU"), "{one}");
        let absent = Placement::parse("split:5", &two).unwrap_err();
        assert!(absent.contains("CPU 5 is not one"), "{absent}");
        let bad = Placement::parse("pinned", &two).unwrap_err();
        assert!(
            bad.contains("expected auto, free, split or split:CPU"),
            "{bad}"
        );
        assert!(Placement::parse("split:x", &two).is_err());
    }

    #[test]
    fn the_wrapper_runs_everything_but_the_vcpu_on_the_rest() {
        let split = Placement::Split {
            vcpu: 0,
            rest: vec![1, 2],
        };
        assert_eq!(split.wrapper(), ["taskset", "-c", "1,2"]);
        assert!(Placement::Free.wrapper().is_empty());
        assert!(split.describe().contains("`taskset -c 1,2`"));
        assert!(split.describe().contains("moved to CPU 0"));
    }

    #[test]
    fn a_named_thread_is_moved_and_a_missing_one_is_an_error() {
        let allowed = Placement::allowed_cpus().unwrap();
        assert!(!allowed.is_empty());
        let cpu = *allowed.last().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::Builder::new()
            .name("place-me".into())
            .spawn(move || {
                rx.recv().unwrap();
                Placement::allowed_cpus().unwrap()
            })
            .unwrap();
        let split = Placement::Split {
            vcpu: cpu,
            rest: Vec::new(),
        };
        split
            .place_vcpu(
                std::process::id(),
                "place-me",
                Duration::from_secs(5),
                || false,
            )
            .unwrap();
        tx.send(()).unwrap();
        assert_eq!(worker.join().unwrap(), [cpu]);
        let missing = split
            .place_vcpu(
                std::process::id(),
                "no-such",
                Duration::from_millis(20),
                || false,
            )
            .unwrap_err();
        assert!(missing.contains("had no thread 'no-such'"), "{missing}");
        let gone = split
            .place_vcpu(
                std::process::id(),
                "no-such",
                Duration::from_secs(60),
                || true,
            )
            .unwrap_err();
        assert!(
            gone.contains("ended before it had a thread 'no-such'"),
            "{gone}"
        );
        assert_eq!(
            Placement::Free.place_vcpu(1, "anything", Duration::ZERO, || false),
            Ok(())
        );
    }
}
