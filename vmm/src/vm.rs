//! Assembling and running a VM: guest RAM, KVM, the virtio devices, ACPI tables, the kernel,
//! legacy devices and vCPU threads, then waiting for the first event that ends it.
//!
//! Order matters: the devices come before the ACPI tables (the DSDT lists them) and before the
//! kernel command line is written (it lists them too).

use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use crate::acpi::{self, AcpiConfig};
use crate::boot::{self, BootInputs};
use crate::cli::VmConfig;
use crate::control::{VmControl, VmEvent};
use crate::device_setup::{self, VirtioDevices};
use crate::error::SvmmError;
use crate::layout::{ACPI_SLEEP_CONTROL_PORT, EXIT_PORT, I8042_DATA_PORT, SERIAL_IRQ, SERIAL_PORT};
use crate::legacy::{AcpiSleep, ConsoleInput, ConsoleSerial, ExitPort, PioBus, I8042};
use crate::memory::{create_guest_ram, GuestRam};
use crate::mmio_bus::MmioBus;
use crate::self_confine::{self, ThreadRole};
use crate::{cpu, kvm, mptable, terminal, vcpu};

/// A built VM. It must stay alive (not dropped) while its vCPU threads run: they use its memory
/// mappings. svmm ends the process with the VM still in scope.
pub struct Vm {
    _vm: VmFd,
    _ram: GuestRam,
    devices: VirtioDevices,
}

impl Vm {
    /// Prints per-device statistics (at VM end).
    pub fn report_device_stats(&self) {
        self.devices.report_stats();
    }
}

/// Builds the VM described by `config`, starts it and returns the event that ended it, together
/// with the VM itself, which the caller keeps until the process exits.
pub fn run(config: &VmConfig) -> Result<(Vm, VmEvent), SvmmError> {
    // Before any thread starts: each confines itself (see self_confine for which and when).
    self_confine::init(config.seccomp)?;
    let kvm = kvm::open_kvm()?;
    let ram = create_guest_ram(config.mem_bytes)?;
    let vm = kvm::create_vm(&kvm, &ram)?;
    let (control, events) = VmControl::new();
    let mut mmio_bus = MmioBus::default();
    let devices = device_setup::create(&vm, &ram, config, &mut mmio_bus, &control)?;

    let rsdp = if config.acpi {
        Some(acpi::create_acpi_tables(
            &ram.memory,
            &AcpiConfig {
                num_cpus: config.cpus,
                virtio_mmio: &devices.acpi,
            },
        )?)
    } else {
        None
    };
    // Beside the ACPI tables, for kernels without ACPI (or booted with acpi=off).
    mptable::write(&ram.memory, config.cpus)?;
    let cmdline = match devices.cmdline.as_str() {
        "" => config.cmdline.clone(),
        entries => format!("{} {entries}", config.cmdline),
    };
    let entry = boot::load(
        &ram.memory,
        &BootInputs {
            kernel: &config.kernel,
            initrd: config.initrd.as_deref(),
            cmdline: &cmdline,
            mem_bytes: config.mem_bytes,
            rsdp,
        },
    )?;

    let (bus, serial) = legacy_devices(&vm, &control)?;

    let base_cpuid = cpu::supported_cpuid(&kvm)?;
    let mut vcpus = Vec::with_capacity(usize::from(config.cpus));
    for id in 0..config.cpus {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(|e| kvm::VmSetupError::CreateVcpu(id, e))?;
        let boot = (id == 0).then_some((&entry, &ram.memory));
        cpu::configure_vcpu(&fd, &base_cpuid, id, config.cpus, boot)?;
        vcpus.push(fd);
    }

    let raw = terminal::enter_raw_mode();
    ConsoleInput::spawn(serial, control.clone(), raw)
        .map_err(|e| SvmmError::Host("start the console input thread", e))?;
    let bus = Arc::new(bus);
    let mmio_bus = Arc::new(mmio_bus);
    for (id, fd) in (0u8..).zip(vcpus) {
        vcpu::spawn(id, fd, bus.clone(), mmio_bus.clone(), control.clone())
            .map_err(|e| SvmmError::Host("start a vCPU thread", e))?;
    }
    // The VM is built: from here on the main thread only waits, reports and exits.
    self_confine::enter(ThreadRole::Main)?;
    // `control` stays alive here, so the channel cannot close before an event arrives.
    let event = events
        .recv()
        .unwrap_or_else(|_| VmEvent::Internal("VM event channel closed".into()));
    let vm = Vm {
        _vm: vm,
        _ram: ram,
        devices,
    };
    Ok((vm, event))
}
/// COM1, the i8042, the ACPI sleep registers and the exit port on a fresh port bus.
fn legacy_devices(
    vm: &VmFd,
    control: &VmControl,
) -> Result<(PioBus, Arc<Mutex<ConsoleSerial>>), SvmmError> {
    let serial_irq = EventFd::new(libc::EFD_NONBLOCK)
        .map_err(|e| SvmmError::Host("create the serial interrupt eventfd", e))?;
    vm.register_irqfd(&serial_irq, SERIAL_IRQ)
        .map_err(|e| SvmmError::Host("register the serial irqfd", e.into()))?;
    let serial = Arc::new(Mutex::new(ConsoleSerial::new(serial_irq)));
    let mut bus = PioBus::default();
    bus.insert(SERIAL_PORT, 8, serial.clone());
    bus.insert(
        I8042_DATA_PORT,
        5,
        Arc::new(Mutex::new(I8042::new(control.clone()))),
    );
    bus.insert(
        ACPI_SLEEP_CONTROL_PORT,
        2,
        Arc::new(Mutex::new(AcpiSleep::new(control.clone()))),
    );
    bus.insert(
        EXIT_PORT,
        4,
        Arc::new(Mutex::new(ExitPort::new(control.clone()))),
    );
    Ok((bus, serial))
}
