//! Resident memory of a VMM process and of each device worker, without guest RAM: the sum of
//! `Pss:` over every mapping of `/proc/<pid>/smaps` except the guest-RAM mapping.
//!
//! PSS (proportional set size) charges a page shared by N processes 1/N to each, so svmm's
//! binary text, mapped by the VMM and every worker, is not counted five times. Guest RAM is left
//! out because it is the guest's, the same size for every configuration, and only as resident as
//! the guest made it:
//! - svmm: its RAM is one memfd named `svmm-guest-ram` (`vmm/src/memory.rs`), which the VMM and
//!   every worker map; `/proc` shows the mapping as `/memfd:svmm-guest-ram (deleted)`.
//! - QEMU: the bench gives it a `memory-backend-memfd` (the same kind of pages as svmm's, and
//!   shared, which vhost-user needs), `/memfd:memory-backend-memfd (deleted)`, which virtiofsd
//!   maps too; by default QEMU's RAM block is an anonymous mapping exactly the size of `-m`.

use std::fs;

/// How the guest-RAM mapping of a process is recognised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RamRule {
    /// svmm: mappings of the memfd with this name.
    Memfd(&'static str),
    /// QEMU: anonymous mappings of exactly this many KiB.
    AnonymousOfKib(u64),
}

/// svmm's guest-RAM memfd name (`vmm/src/memory.rs`).
pub const SVMM_RAM_MEMFD: &str = "svmm-guest-ram";

/// The memfd QEMU's `memory-backend-memfd` makes (the guest RAM when a vhost-user device, the
/// fs benchmark's, needs it shared; virtiofsd maps it too).
pub const QEMU_SHARED_RAM_MEMFD: &str = "memory-backend-memfd";

/// One mapping of `/proc/<pid>/smaps`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mapping {
    /// The path or pseudo-name (`[heap]`, `/memfd:x (deleted)`), empty for anonymous memory.
    pub name: String,
    /// `Size:` in KiB.
    pub size_kib: u64,
    /// `Rss:` in KiB.
    pub rss_kib: u64,
    /// `Pss:` in KiB.
    pub pss_kib: u64,
}

impl Mapping {
    /// Whether this is guest RAM under `rule`.
    pub fn is_guest_ram(&self, rule: RamRule) -> bool {
        match rule {
            RamRule::Memfd(name) => self
                .name
                .strip_prefix("/memfd:")
                .is_some_and(|rest| rest == name || rest.starts_with(&format!("{name} "))),
            RamRule::AnonymousOfKib(kib) => self.name.is_empty() && self.size_kib == kib,
        }
    }
}

/// The mappings in the text of a `/proc/<pid>/smaps` file.
pub fn parse_smaps(text: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if first.ends_with(':') {
            let value = || words.clone().next().and_then(|v| v.parse::<u64>().ok());
            let Some(current) = out.last_mut() else {
                continue;
            };
            match first {
                "Size:" => current.size_kib = value().unwrap_or(0),
                "Rss:" => current.rss_kib = value().unwrap_or(0),
                "Pss:" => current.pss_kib = value().unwrap_or(0),
                _ => {}
            }
        } else if first.contains('-') {
            // address perms offset dev inode [name...]; the name may contain spaces.
            let name = line
                .split_whitespace()
                .skip(5)
                .collect::<Vec<_>>()
                .join(" ");
            out.push(Mapping {
                name,
                ..Mapping::default()
            });
        }
    }
    out
}

/// A process's memory without guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// PSS over every other mapping, KiB.
    pub pss_kib: u64,
    /// RSS over every other mapping, KiB (shared pages counted whole).
    pub rss_kib: u64,
    /// How many guest-RAM mappings were left out.
    pub ram_mappings: usize,
}

/// Sums `mappings` except the guest RAM under `rule`.
pub fn usage(mappings: &[Mapping], rule: RamRule) -> Usage {
    let mut u = Usage {
        pss_kib: 0,
        rss_kib: 0,
        ram_mappings: 0,
    };
    for m in mappings {
        if m.is_guest_ram(rule) {
            u.ram_mappings += 1;
        } else {
            u.pss_kib += m.pss_kib;
            u.rss_kib += m.rss_kib;
        }
    }
    u
}

/// Reads `/proc/<pid>/smaps` and sums it without guest RAM. A process with no guest-RAM
/// mapping under `rule` is an error: the rule no longer matches what the VMM does, and the
/// figure would silently include (or miss) guest RAM.
pub fn process_usage(pid: u32, rule: RamRule) -> Result<Usage, String> {
    let path = format!("/proc/{pid}/smaps");
    let text = fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let u = usage(&parse_smaps(&text), rule);
    if u.ram_mappings == 0 {
        return Err(format!(
            "{path} has no guest-RAM mapping ({rule:?}): cannot tell guest RAM from the process's own memory"
        ));
    }
    Ok(u)
}

/// [`process_usage`] summed over `pid` and its descendants (QEMU's virtiofsd, whose sandbox
/// serves the device from a child process): at least one of them must map guest RAM.
pub fn tree_usage(pid: u32, rule: RamRule) -> Result<Usage, String> {
    let mut total = Usage {
        pss_kib: 0,
        rss_kib: 0,
        ram_mappings: 0,
    };
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        let path = format!("/proc/{p}/smaps");
        let text = fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
        let u = usage(&parse_smaps(&text), rule);
        total.pss_kib += u.pss_kib;
        total.rss_kib += u.rss_kib;
        total.ram_mappings += u.ram_mappings;
        stack.extend(crate::procfs::children(p));
    }
    if total.ram_mappings == 0 {
        return Err(format!(
            "no process of {pid}'s tree maps guest RAM ({rule:?}): cannot tell guest RAM from \
             its own memory"
        ));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
561821189000-56182120e000 r--p 00000000 fe:00 5752293                    /work/target/release/svmm
Size:                532 kB
Rss:                 468 kB
Pss:                 117 kB
VmFlags: rd mr mw me sd
7f81d7ae9000-7f81dfae9000 rw-s 00000000 00:01 2526                       /memfd:svmm-guest-ram (deleted)
Size:             131072 kB
Rss:                2048 kB
Pss:                1024 kB
7fcb93e00000-7fcb9be00000 rw-p 00000000 00:00 0 
Size:             131072 kB
Rss:                4096 kB
Pss:                4096 kB
7fcb9be00000-7fcb9be21000 rw-p 00000000 00:00 0                          [heap]
Size:                132 kB
Rss:                  40 kB
Pss:                  40 kB
7fcb9be21000-7fcb9be22000 rw-s 00000000 00:01 9                          /memfd:svmm-guest-ram-other (deleted)
Size:                  4 kB
Rss:                   4 kB
Pss:                   2 kB
";

    #[test]
    fn smaps_is_parsed() {
        let maps = parse_smaps(SMAPS);
        assert_eq!(maps.len(), 5);
        assert_eq!(maps[0].name, "/work/target/release/svmm");
        assert_eq!(
            (maps[0].size_kib, maps[0].rss_kib, maps[0].pss_kib),
            (532, 468, 117)
        );
        assert_eq!(maps[1].name, "/memfd:svmm-guest-ram (deleted)");
        assert_eq!(maps[2].name, "");
        assert_eq!(maps[3].name, "[heap]");
    }

    #[test]
    fn svmm_guest_ram_is_the_named_memfd_only() {
        let u = usage(&parse_smaps(SMAPS), RamRule::Memfd(SVMM_RAM_MEMFD));
        assert_eq!(u.ram_mappings, 1);
        assert_eq!(u.pss_kib, 117 + 4096 + 40 + 2);
        assert_eq!(u.rss_kib, 468 + 4096 + 40 + 4);
    }

    #[test]
    fn qemu_guest_ram_is_the_anonymous_mapping_of_its_size() {
        let u = usage(&parse_smaps(SMAPS), RamRule::AnonymousOfKib(128 * 1024));
        assert_eq!(u.ram_mappings, 1);
        assert_eq!(u.pss_kib, 117 + 1024 + 40 + 2);
        let none = usage(&parse_smaps(SMAPS), RamRule::AnonymousOfKib(64 * 1024));
        assert_eq!(none.ram_mappings, 0);
    }

    #[test]
    fn this_process_has_no_svmm_ram() {
        let e = process_usage(std::process::id(), RamRule::Memfd(SVMM_RAM_MEMFD)).unwrap_err();
        assert!(e.contains("no guest-RAM mapping"), "{e}");
    }
}
