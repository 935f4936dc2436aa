//! The guest's physical memory map, as both boot protocols describe it (e820 types).

use crate::layout::{EBDA_START, HIMEM_START, MMIO_GAP_START, RAM_START};
use worker::guest_ram::ram_ranges;

/// e820 type: usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type: reserved.
pub const E820_RESERVED: u32 = 2;

/// One entry: address, size, e820 type.
pub type MemmapEntry = (u64, u64, u32);

/// Usable RAM below the EBDA, the reserved legacy/ACPI area up to 1 MiB, then RAM from 1 MiB to
/// the MMIO gap and above 4 GiB.
pub fn memory_map(mem_bytes: u64) -> Vec<MemmapEntry> {
    let mut map = vec![
        (RAM_START, EBDA_START - RAM_START, E820_RAM),
        (EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
    ];
    for (addr, len, _) in ram_ranges(mem_bytes) {
        let start = addr.0.max(HIMEM_START);
        let end = addr.0 + len;
        if end > start {
            map.push((start, end - start, E820_RAM));
        }
    }
    debug_assert!(map.iter().all(|e| e.0 < MMIO_GAP_START || e.0 >= 1 << 32));
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest() {
        let map = memory_map(256 << 20);
        assert_eq!(
            map,
            vec![
                (0, EBDA_START, E820_RAM),
                (EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
                (HIMEM_START, (256 << 20) - HIMEM_START, E820_RAM),
            ]
        );
    }

    #[test]
    fn large_guest_skips_the_gap() {
        let map = memory_map(4 << 30);
        assert_eq!(map.len(), 4);
        assert_eq!(
            map[2],
            (HIMEM_START, MMIO_GAP_START - HIMEM_START, E820_RAM)
        );
        assert_eq!(map[3], (1 << 32, (4 << 30) - MMIO_GAP_START, E820_RAM));
    }
}
