//! Opening KVM and creating the VM: irqchip, PIT, guest memory slots.
//!
//! Errors here say what the user can do about them: a missing `/dev/kvm` and a permission
//! problem are the two things a new user meets first.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use worker::guest_ram::GuestRam;

/// KVM API version every kernel since 2.6.22 reports.
const KVM_API_VERSION: i32 = 12;
/// Task-state segment: three pages KVM needs on Intel, inside the MMIO gap below the IOAPIC.
const TSS_ADDRESS: usize = 0xfffb_d000;
/// Identity-map page for real-mode emulation on Intel, just below the TSS.
const IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// KVM is not usable on this host.
#[derive(Debug, thiserror::Error)]
pub enum KvmUnavailable {
    /// No `/dev/kvm`.
    #[error("/dev/kvm does not exist: this host has no KVM. Enable virtualization in the firmware and load the module (modprobe kvm_intel or kvm_amd)")]
    Missing,
    /// Permission denied.
    #[error("permission denied opening /dev/kvm: run svmm as a user in the kvm group (usermod -aG kvm USER, then log in again)")]
    Permission,
    /// Some other open failure.
    #[error("cannot open /dev/kvm")]
    Open(#[source] kvm_ioctls::Error),
    /// Wrong API version.
    #[error("/dev/kvm reports API version {0}, svmm needs {KVM_API_VERSION}")]
    ApiVersion(i32),
    /// A capability svmm needs is missing.
    #[error("KVM on this host lacks {0}, which svmm needs")]
    MissingCap(&'static str),
}

/// Setting up the VM failed.
#[derive(Debug, thiserror::Error)]
pub enum VmSetupError {
    /// KVM_CREATE_VM failed.
    #[error("cannot create the KVM VM")]
    CreateVm(#[source] kvm_ioctls::Error),
    /// KVM_SET_TSS_ADDR or KVM_SET_IDENTITY_MAP_ADDR failed.
    #[error("cannot set the TSS or identity-map address")]
    Tss(#[source] kvm_ioctls::Error),
    /// KVM_CREATE_IRQCHIP failed.
    #[error("cannot create the in-kernel irqchip")]
    Irqchip(#[source] kvm_ioctls::Error),
    /// KVM_CREATE_PIT2 failed.
    #[error("cannot create the in-kernel PIT")]
    Pit(#[source] kvm_ioctls::Error),
    /// KVM_CREATE_VCPU failed.
    #[error("cannot create vCPU {0}")]
    CreateVcpu(u8, #[source] kvm_ioctls::Error),
    /// KVM_SET_USER_MEMORY_REGION failed.
    #[error("cannot register guest memory slot {0} with KVM")]
    MemorySlot(u32, #[source] kvm_ioctls::Error),
}

/// Opens `/dev/kvm` and checks what svmm relies on.
pub fn open_kvm() -> Result<Kvm, KvmUnavailable> {
    let kvm = Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT | libc::ENXIO | libc::ENODEV => KvmUnavailable::Missing,
        libc::EACCES | libc::EPERM => KvmUnavailable::Permission,
        _ => KvmUnavailable::Open(e),
    })?;
    let version = kvm.get_api_version();
    if version != KVM_API_VERSION {
        return Err(KvmUnavailable::ApiVersion(version));
    }
    for (cap, name) in [
        (kvm_ioctls::Cap::Irqchip, "KVM_CAP_IRQCHIP"),
        (kvm_ioctls::Cap::Pit2, "KVM_CAP_PIT2"),
        (kvm_ioctls::Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
        (kvm_ioctls::Cap::Irqfd, "KVM_CAP_IRQFD"),
        (kvm_ioctls::Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(KvmUnavailable::MissingCap(name));
        }
    }
    Ok(kvm)
}

/// Creates the VM with its in-kernel irqchip and PIT ([`register_ram`] gives it guest RAM).
pub fn create_vm(kvm: &Kvm) -> Result<VmFd, VmSetupError> {
    let vm = kvm.create_vm().map_err(VmSetupError::CreateVm)?;
    vm.set_tss_address(TSS_ADDRESS).map_err(VmSetupError::Tss)?;
    vm.set_identity_map_address(IDENTITY_MAP_ADDRESS)
        .map_err(VmSetupError::Tss)?;
    vm.create_irq_chip().map_err(VmSetupError::Irqchip)?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(VmSetupError::Pit)?;
    Ok(vm)
}

/// Gives `vm` guest RAM, one memory slot per region. Before any vCPU runs; it may come after
/// the devices' eventfds are bound (it does: on some hosts this one call takes milliseconds,
/// which the sandboxed workers' start overlaps, see `crate::vm`).
pub fn register_ram(vm: &VmFd, ram: &GuestRam) -> Result<(), VmSetupError> {
    for (slot, region) in (0u32..).zip(ram.memory.iter()) {
        let mem_region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the region is a live mapping of `region.len()` bytes owned by `ram.memory`,
        // which the caller keeps alive for as long as the VM exists (both live until process
        // exit), and slots do not overlap because guest regions do not.
        unsafe { vm.set_user_memory_region(mem_region) }
            .map_err(|e| VmSetupError::MemorySlot(slot, e))?;
    }
    Ok(())
}
