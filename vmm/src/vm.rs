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
use crate::config::VmConfig;
use crate::device_setup::{self, VirtioDevices};
use crate::error::SvmmError;
use crate::layout::{ACPI_SLEEP_CONTROL_PORT, EXIT_PORT, I8042_DATA_PORT, SERIAL_IRQ, SERIAL_PORT};
use crate::legacy::{AcpiSleep, ConsoleInput, ConsoleSerial, ExitPort, PioBus, I8042};
use crate::mmio_bus::MmioBus;
use crate::self_confine::{self, ThreadRole};
use crate::vcpu::{self, Vcpus};
use crate::vm_events::{VmEvent, VmEvents};
use crate::{cpu, kvm, mptable, terminal};
use worker::guest_ram::{create_guest_ram, GuestRam};

/// A built VM. It must stay alive (not dropped) while its vCPU threads run; dropping it stops
/// them first.
///
/// **Teardown order** — the one place it is decided; fields drop in declaration order, after
/// [`Drop::drop`] stopped the vCPUs:
///
/// 1. `vcpus`: every vCPU is kicked out of `KVM_RUN` and joined (`Drop::drop`), so no thread
///    runs guest code any more — an SMP guest's other vCPUs are still running when vCPU 0
///    powers off, and a vCPU that kept running after step 4 would write to whatever the host
///    mapped next at guest RAM's addresses;
/// 2. `devices`: every worker is killed and reaped (they map guest RAM themselves);
/// 3. `vm`: the KVM VM (it goes once the vCPU fds, closed by their threads, are gone too);
/// 4. `ram`: guest RAM is unmapped — unless a vCPU could not be stopped, in which case it stays
///    mapped until the process exits.
pub struct Vm {
    vcpus: Vcpus,
    devices: VirtioDevices,
    /// Shared with the devices' host-services threads (memory slots of shared-memory regions).
    _vm: Arc<VmFd>,
    ram: Option<GuestRam>,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let stuck = self.vcpus.stop();
        if !stuck.is_empty() {
            eprintln!(
                "svmm: vCPU(s) {stuck:?} did not stop; guest RAM stays mapped until svmm exits"
            );
            std::mem::forget(self.ram.take());
        }
    }
}

impl Vm {
    /// Prints per-device statistics (at VM end).
    pub fn report_device_stats(&self) {
        self.devices.report_stats();
    }

    /// Guest RAM (present until the VM is dropped).
    fn memory(&self) -> &GuestRam {
        self.ram
            .as_ref()
            .expect("guest RAM lives as long as the VM")
    }
}

/// Builds the VM described by `config`, starts it and returns the event that ended it, together
/// with the VM itself, which the caller drops (stopping it in order) before the process exits.
pub fn run(config: &VmConfig) -> Result<(Vm, VmEvent), SvmmError> {
    // Before any thread starts: each confines itself (see self_confine for which and when).
    self_confine::init(config.seccomp)?;
    vcpu::install_kick_handler()
        .map_err(|e| SvmmError::Host("install the vCPU kick handler", e))?;
    let kvm = kvm::open_kvm()?;
    let ram = create_guest_ram(config.mem_bytes, config.ram_backing)?;
    let vm_fd = kvm::create_vm(&kvm)?;
    // From here on the VM owns everything, so that a failure part-way tears it down in order.
    let mut vm = Vm {
        vcpus: Vcpus::default(),
        devices: VirtioDevices::default(),
        _vm: Arc::new(vm_fd),
        ram: Some(ram),
    };
    let (control, events) = VmEvents::new();
    let mut mmio_bus = MmioBus::default();
    // The devices' slots, resources, plans and eventfds; the broker process for the sandboxed
    // ones, forked now, while svmm is single-threaded, and asked right away to start their
    // workers, which come up while svmm goes on building the VM.
    vm.devices = device_setup::prepare(&vm._vm, vm.memory(), config)?;
    // Guest RAM's memory slot after the fork: on some hosts (PVM) this one call takes several
    // milliseconds, in which the workers' exec and set-up run beside it instead of beside the
    // booting guest.
    kvm::register_ram(&vm._vm, vm.memory())?;
    // (Here and below: which workers are Ready by now, for `--report-timings`; never waits.)
    vm.devices.note_ready()?;
    let memory = &vm.memory().memory;

    let rsdp = if config.acpi {
        Some(acpi::create_acpi_tables(
            memory,
            &AcpiConfig {
                num_cpus: config.cpus,
                virtio_mmio: &vm.devices.acpi,
            },
        )?)
    } else {
        None
    };
    // Beside the ACPI tables, for kernels without ACPI (or booted with acpi=off).
    mptable::write(memory, config.cpus)?;
    let cmdline = match vm.devices.cmdline.as_str() {
        "" => config.cmdline.clone(),
        entries => format!("{} {entries}", config.cmdline),
    };
    let entry = boot::load(
        memory,
        &BootInputs {
            kernel: &config.kernel,
            initrd: config.initrd.as_deref(),
            cmdline: &cmdline,
            mem_bytes: config.mem_bytes,
            rsdp,
        },
    )?;

    let (bus, serial) = legacy_devices(&vm._vm, &control)?;

    let base_cpuid = cpu::supported_cpuid(&kvm)?;
    let mut vcpus = Vec::with_capacity(usize::from(config.cpus));
    for id in 0..config.cpus {
        let fd = vm
            ._vm
            .create_vcpu(u64::from(id))
            .map_err(|e| kvm::VmSetupError::CreateVcpu(id, e))?;
        let boot = (id == 0).then_some((&entry, memory));
        cpu::configure_vcpu(&fd, &base_cpuid, id, config.cpus, boot)?;
        vcpus.push(fd);
    }
    vm.devices.note_ready()?;

    // Everything that needs svmm's privileges is open: as root, svmm becomes an unprivileged
    // user of its own (still single-threaded, so every thread it starts is that user too).
    if let Some(uid) = drop_privileges(config)? {
        // The sockets svmm connects to for devices, as the uid it connects as from now on.
        vm.devices.check_services_reachable(uid)?;
    }
    // The devices' threads start (in-process devices, host services, monitors) and their
    // windows go on the bus, closed until their workers are Ready.
    let mut starting = vm.devices.start(config, &mut mmio_bus, &control)?;

    let raw = terminal::enter_raw_mode();
    ConsoleInput::spawn(serial, control.clone(), raw)
        .map_err(|e| SvmmError::Host("start the console input thread", e))?;
    let bus = Arc::new(bus);
    let mmio_bus = Arc::new(mmio_bus);
    #[cfg(feature = "test-faults")]
    if config.gate_probe {
        vm.vcpus
            .probe_gate()
            .map_err(|e| SvmmError::Host("open the test gate probe", e))?;
    }
    for (id, fd) in (0u8..).zip(vcpus) {
        vm.vcpus
            .spawn(id, fd, bus.clone(), mmio_bus.clone(), control.clone())
            .map_err(|e| SvmmError::Host("start a vCPU thread", e))?;
    }
    starting.note_ready(&vm.devices)?;
    // The VM is built: from here on the main thread only waits, reports and exits. It confines
    // itself before any vCPU runs the guest (they wait, confined, at their gate).
    self_confine::enter(ThreadRole::Main)?;
    vm.vcpus.release();
    // While the guest boots: the sandboxed workers start, every device's Ready; a vCPU that
    // touches a device before its worker is Ready waits for it there (a device that fails
    // ends the VM with its error, as it would have before the first vCPU ran).
    vm.devices.finish(starting, config)?;
    // `control` stays alive here, so the channel cannot close before an event arrives.
    let event = events
        .recv()
        .unwrap_or_else(|_| VmEvent::Internal("VM event channel closed".into()));
    Ok((vm, event))
}
/// As root, becomes the unprivileged user `--worker-ids` reserves for svmm (its last id): no
/// supplementary groups, that gid and uid, and so no capabilities. Call it while svmm is
/// single-threaded, once KVM, guest RAM, the kernel and every host resource are open. The uid
/// it became, if it dropped.
fn drop_privileges(config: &VmConfig) -> Result<Option<u32>, SvmmError> {
    let Some((uid, gid)) = crate::plan::svmm_ids(config.sandbox.worker_ids) else {
        return Ok(None);
    };
    let fail = |what| SvmmError::Host(what, std::io::Error::last_os_error());
    // SAFETY: setgroups with an empty list reads no memory.
    if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
        return Err(fail("drop svmm's supplementary groups"));
    }
    // SAFETY: setresgid/setresuid take plain integers.
    if unsafe { libc::setresgid(gid, gid, gid) } != 0 {
        return Err(fail("set svmm's unprivileged gid"));
    }
    // SAFETY: as above. Leaving uid 0 without KEEPCAPS clears the permitted and effective
    // capability sets.
    if unsafe { libc::setresuid(uid, uid, uid) } != 0 {
        return Err(fail("set svmm's unprivileged uid"));
    }
    Ok(Some(uid))
}

/// COM1, the i8042, the ACPI sleep registers and the exit port on a fresh port bus.
fn legacy_devices(
    vm: &VmFd,
    control: &VmEvents,
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
