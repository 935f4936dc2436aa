//! Per-vCPU CPUID: what KVM supports, adjusted so each vCPU reports its own APIC ID and a
//! topology that matches the number of vCPUs (one socket, one thread per core).

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// CPUID.1:ECX bit 31: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:ECX bit 24: TSC deadline timer, which KVM's in-kernel LAPIC emulates.
const ECX_TSC_DEADLINE: u32 = 1 << 24;
/// CPUID.1:EDX bit 28: more than one logical processor per package.
const EDX_HTT: u32 = 1 << 28;
/// Extended topology level types (CPUID.0BH:ECX[15:8]).
const LEVEL_TYPE_THREAD: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Number of bits needed to hold APIC IDs 0..count (the x2APIC ID shift of a level).
fn id_bits(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

/// Adjusts `cpuid` (from `KVM_GET_SUPPORTED_CPUID`) for vCPU `cpu_id` of `cpu_count`.
pub fn filter_cpuid(cpuid: &mut CpuId, cpu_id: u8, cpu_count: u8) {
    let id = u32::from(cpu_id);
    let count = u32::from(cpu_count);
    for entry in cpuid.as_mut_slice() {
        filter_entry(entry, id, count);
    }
}

fn filter_entry(entry: &mut kvm_cpuid_entry2, id: u32, count: u32) {
    match entry.function {
        1 => {
            // EBX[31:24] initial APIC ID, [23:16] logical processors per package,
            // [15:8] CLFLUSH line size in 8-byte units (keep what the host says).
            entry.ebx = (id << 24) | (count << 16) | (entry.ebx & 0xffff);
            entry.ecx |= ECX_HYPERVISOR | ECX_TSC_DEADLINE;
            if count > 1 {
                entry.edx |= EDX_HTT;
            } else {
                entry.edx &= !EDX_HTT;
            }
        }
        4 => {
            // Deterministic cache parameters: EAX[31:26] cores per package - 1; every cache is
            // shared by one thread (EAX[25:14] = 0).
            entry.eax = (entry.eax & 0x3fff) | ((count - 1) << 26);
        }
        6 => {
            // No thermal/power management interfaces: the guest must not poke those MSRs.
            entry.ecx &= !(1 << 3); // performance-energy bias
        }
        0xb | 0x1f => {
            // Extended topology: one thread per core, `count` cores.
            entry.edx = id;
            match entry.index {
                0 => {
                    entry.eax = 0;
                    entry.ebx = 1;
                    entry.ecx = (LEVEL_TYPE_THREAD << 8) | entry.index;
                }
                1 => {
                    entry.eax = id_bits(count);
                    entry.ebx = count;
                    entry.ecx = (LEVEL_TYPE_CORE << 8) | entry.index;
                }
                _ => {
                    entry.eax = 0;
                    entry.ebx = 0;
                    entry.ecx = entry.index;
                }
            }
        }
        0x8000_001e => {
            // AMD extended APIC ID, compute unit (core) ID with one thread per core, and a
            // single node per package: otherwise every vCPU reports the host's values and Linux
            // sees them on different dies.
            entry.eax = id;
            entry.ebx = (entry.ebx & !0xffff) | (id & 0xff);
            entry.ecx = 0;
        }
        0x8000_0008 => {
            // ECX[7:0] number of cores - 1, ECX[15:12] APIC ID size (AMD).
            entry.ecx = (entry.ecx & !0xf0ff) | (count - 1) | (id_bits(count) << 12);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0x0008_0800,
            ..Default::default()
        }
    }

    #[test]
    fn apic_id_and_count_in_leaf_1() {
        let mut e = entry(1, 0);
        filter_entry(&mut e, 3, 4);
        assert_eq!(e.ebx >> 24, 3);
        assert_eq!((e.ebx >> 16) & 0xff, 4);
        assert_eq!(e.ebx & 0xffff, 0x0800);
        assert_ne!(e.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e.edx & EDX_HTT, 0);
    }

    #[test]
    fn topology_leaf() {
        let mut thread = entry(0xb, 0);
        let mut core = entry(0xb, 1);
        filter_entry(&mut thread, 2, 3);
        filter_entry(&mut core, 2, 3);
        assert_eq!(
            (thread.ebx, thread.edx, thread.ecx >> 8),
            (1, 2, LEVEL_TYPE_THREAD)
        );
        assert_eq!((core.eax, core.ebx, core.ecx >> 8), (2, 3, LEVEL_TYPE_CORE));
    }

    #[test]
    fn amd_topology_leaf() {
        let mut e = entry(0x8000_001e, 0);
        e.ecx = 0x0302;
        filter_entry(&mut e, 1, 2);
        assert_eq!((e.eax, e.ebx & 0xffff, e.ecx), (1, 1, 0));
    }

    #[test]
    fn id_bits_counts() {
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(3), 2);
        assert_eq!(id_bits(4), 2);
        assert_eq!(id_bits(5), 3);
    }
}
