//! The host's pool of reserved 2 MiB huge pages (hugetlbfs), which `--hugepages` backs guest RAM
//! with: how many are free, and the one line that tells a user how to reserve more.
//!
//! Huge pages of the hugetlb pool are set aside by the administrator
//! (`/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages`, or `hugepages=N` on the kernel
//! command line); a process takes them through a hugetlbfs file such as a
//! `memfd_create(MFD_HUGETLB)` memfd, and nothing else can use them meanwhile. Unlike
//! transparent huge pages they do not depend on `transparent_hugepage/shmem_enabled`, so a
//! shared memfd (which svmm's workers map) gets them on any host that reserved some.

use std::fs;
use std::io;
use std::path::Path;

/// The huge page size svmm uses: 2 MiB, the one every x86_64 host has.
pub const HUGE_PAGE_SIZE: u64 = 2 << 20;

/// The sysfs directory of the 2 MiB pool.
pub const POOL_DIR: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB";

/// The pool's counters, in pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    /// `nr_hugepages`: pages reserved for hugetlb.
    pub total: u64,
    /// `free_hugepages` minus `resv_hugepages`: pages nobody has allocated or promised.
    pub available: u64,
}

impl Pool {
    /// Reads the 2 MiB pool's counters from sysfs.
    pub fn read() -> io::Result<Self> {
        Self::read_from(Path::new(POOL_DIR))
    }

    /// Reads the counters from a directory laid out like [`POOL_DIR`].
    pub fn read_from(dir: &Path) -> io::Result<Self> {
        let counter = |name: &str| -> io::Result<u64> {
            let text = fs::read_to_string(dir.join(name))?;
            text.trim().parse().map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}/{name} is not a number: {text:?}", dir.display()),
                )
            })
        };
        let free = counter("free_hugepages")?;
        let reserved = counter("resv_hugepages")?;
        Ok(Self {
            total: counter("nr_hugepages")?,
            available: free.saturating_sub(reserved),
        })
    }
}

/// The 2 MiB pages that `bytes` of guest RAM take (rounded up).
pub fn pages_for(bytes: u64) -> u64 {
    bytes.div_ceil(HUGE_PAGE_SIZE)
}

/// What to do when `needed` pages are wanted and the pool is `pool`: the command that reserves
/// enough (keeping what others hold).
pub fn how_to_reserve(needed: u64, pool: Pool) -> String {
    let target = pool.total + needed.saturating_sub(pool.available);
    format!("reserve them as root with `echo {target} > {POOL_DIR}/nr_hugepages`")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool_dir(total: &str, free: &str, resv: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "svmm-hugepages-test-{}-{total}-{free}-{resv}",
            std::process::id()
        ));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("nr_hugepages"), format!("{total}\n")).unwrap();
        fs::write(dir.join("free_hugepages"), format!("{free}\n")).unwrap();
        fs::write(dir.join("resv_hugepages"), format!("{resv}\n")).unwrap();
        dir
    }

    #[test]
    fn available_is_free_minus_promised() {
        let dir = pool_dir("100", "60", "20");
        assert_eq!(
            Pool::read_from(&dir).unwrap(),
            Pool {
                total: 100,
                available: 40
            }
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn garbage_counter_is_an_error() {
        let dir = pool_dir("x", "0", "0");
        let err = Pool::read_from(&dir).unwrap_err();
        assert!(
            err.to_string().contains("nr_hugepages is not a number"),
            "{err}"
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn advice_adds_only_the_shortfall() {
        assert_eq!(pages_for(128 << 20), 64);
        assert_eq!(pages_for(3 << 20), 2);
        let advice = how_to_reserve(
            64,
            Pool {
                total: 100,
                available: 40,
            },
        );
        assert_eq!(
            advice,
            format!("reserve them as root with `echo 124 > {POOL_DIR}/nr_hugepages`")
        );
    }
}
