//! Boot-time segment descriptors: the GDT svmm writes into guest memory and the matching
//! `kvm_segment` values it loads into the vCPU, so the hidden and visible state agree.

use kvm_bindings::kvm_segment;

/// Builds a GDT entry from flags (granularity/size/long bits and access byte), base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// Null, 64-bit code, data, TSS: the GDT for the 64-bit Linux entry.
pub const GDT_64: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff), // code: present, DPL0, execute/read, L=1, G=1
    gdt_entry(0xc093, 0, 0xfffff), // data: present, DPL0, read/write, D/B=1, G=1
    gdt_entry(0x808b, 0, 0xfffff), // TSS: present, busy 64-bit TSS
];

/// Null, 32-bit code, data, TSS: the GDT for the 32-bit PVH entry.
pub const GDT_32: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xc09b, 0, 0xfffff), // code: present, DPL0, execute/read, D/B=1, G=1
    gdt_entry(0xc093, 0, 0xfffff), // data: present, DPL0, read/write, D/B=1, G=1
    gdt_entry(0x008b, 0, 0x67),    // TSS: present, busy 32-bit TSS
];

/// The `kvm_segment` KVM needs for GDT entry `index` of `table`.
pub fn segment_from_gdt(table: &[u64], index: u8) -> kvm_segment {
    let entry = table.get(usize::from(index)).copied().unwrap_or(0);
    let get = |shift: u32, mask: u64| ((entry >> shift) & mask) as u8;
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let mut limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let g = get(55, 1);
    if g == 1 {
        limit = (limit << 12) | 0xfff;
    }
    let present = get(47, 1);
    kvm_segment {
        base,
        limit,
        selector: u16::from(index) * 8,
        type_: get(40, 0xf),
        present,
        dpl: get(45, 3),
        db: get(54, 1),
        s: get(44, 1),
        l: get(53, 1),
        g,
        avl: get(52, 1),
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_64() {
        let cs = segment_from_gdt(&GDT_64, 1);
        assert_eq!(
            (cs.selector, cs.l, cs.db, cs.g, cs.present),
            (8, 1, 0, 1, 1)
        );
        assert_eq!(
            (cs.base, cs.limit, cs.type_, cs.s),
            (0, 0xffff_ffff, 0xb, 1)
        );
    }

    #[test]
    fn code_segment_32() {
        let cs = segment_from_gdt(&GDT_32, 1);
        assert_eq!((cs.l, cs.db, cs.limit), (0, 1, 0xffff_ffff));
        let tss = segment_from_gdt(&GDT_32, 3);
        assert_eq!((tss.type_, tss.limit, tss.s), (0xb, 0x67, 0));
    }

    #[test]
    fn out_of_range_index_is_unusable() {
        assert_eq!(segment_from_gdt(&GDT_64, 9).unusable, 1);
    }
}
