//! The host's pool of 2 MiB huge pages (hugetlbfs), for what runs `svmm --hugepages`: the
//! hugepages suite and the benchmark. [`Reserved`] grows the pool by what a run lacks, under a
//! lock every such run on this host takes, and puts `nr_hugepages` back when dropped, so the
//! host is left as it was.

use std::fs::{self, File};
use std::os::fd::AsRawFd;

/// The host's 2 MiB pool.
pub const POOL: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB";

/// One counter of the pool.
pub fn counter(name: &str) -> Result<u64, String> {
    let path = format!("{POOL}/{name}");
    let text = fs::read_to_string(&path).map_err(|e| format!("read {path}: {e}"))?;
    text.trim()
        .parse()
        .map_err(|_| format!("{path} is not a number: {text:?}"))
}

/// Pages free and not promised to anyone.
pub fn available() -> Result<u64, String> {
    Ok(counter("free_hugepages")?.saturating_sub(counter("resv_hugepages")?))
}

/// Huge pages reserved for one run: the pool grown by what it lacks, under a lock that
/// serialises every run on this host that resizes it (`/tmp/svmm-hugepages.lock`), and
/// `nr_hugepages` put back to what it was when dropped.
pub struct Reserved {
    previous: u64,
    now: u64,
    _lock: File,
}

impl Reserved {
    /// Makes `pages` pages available (needs root when the pool must grow).
    pub fn pages(pages: u64) -> Result<Reserved, String> {
        let lock = File::create("/tmp/svmm-hugepages.lock").map_err(|e| format!("lock: {e}"))?;
        // SAFETY: flock on a valid fd we own; blocks until no other holder.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(format!("flock: {}", std::io::Error::last_os_error()));
        }
        let previous = counter("nr_hugepages")?;
        let mut reserved = Reserved {
            previous,
            now: previous,
            _lock: lock,
        };
        let short = pages.saturating_sub(available()?);
        if short > 0 {
            reserved.now = previous + short;
            set_pool(reserved.now)?;
            let got = available()?;
            if got < pages {
                return Err(format!(
                    "asked the host for {short} more 2 MiB huge pages: {got} available of the \
                     {pages} needed"
                ));
            }
        }
        Ok(reserved)
    }

    /// `nr_hugepages` before, and while this reservation holds.
    pub fn pool(&self) -> (u64, u64) {
        (self.previous, self.now)
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        if self.now == self.previous {
            return;
        }
        if let Err(e) = set_pool(self.previous) {
            eprintln!("could not restore nr_hugepages to {}: {e}", self.previous);
        }
    }
}

fn set_pool(pages: u64) -> Result<(), String> {
    fs::write(format!("{POOL}/nr_hugepages"), pages.to_string())
        .map_err(|e| format!("write {POOL}/nr_hugepages = {pages}: {e}"))
}
