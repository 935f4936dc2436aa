//! svmm's top-level error: every failure the binary can report, each mapped to its exit code.

use crate::boot::BootError;
use crate::cli::CliError;
use crate::cpu::CpuError;
use crate::device_setup::DeviceSetupError;
use crate::exit_code::ExitCode;
use crate::kvm::{KvmUnavailable, VmSetupError};
use worker::guest_ram::MemoryError;

/// Anything that stops svmm before or while running the VM.
#[derive(Debug, thiserror::Error)]
pub enum SvmmError {
    /// The command line is wrong.
    #[error(transparent)]
    Cli(#[from] CliError),
    /// The kernel or initrd cannot be used.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// KVM is not usable.
    #[error(transparent)]
    Kvm(#[from] KvmUnavailable),
    /// Creating the VM failed.
    #[error(transparent)]
    VmSetup(#[from] VmSetupError),
    /// Creating guest RAM failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Configuring a vCPU failed.
    #[error(transparent)]
    Cpu(#[from] CpuError),
    /// Writing the ACPI tables failed.
    #[error(transparent)]
    Acpi(#[from] crate::acpi::AcpiError),
    /// Writing the MP table failed.
    #[error(transparent)]
    MpTable(#[from] crate::mptable::MpTableError),
    /// A virtio device could not be set up.
    #[error(transparent)]
    Device(#[from] crate::device_setup::DeviceSetupError),
    /// `--print-sandbox` could not make its report.
    #[error(transparent)]
    PrintSandbox(#[from] crate::print_sandbox::PrintSandboxError),
    /// svmm could not put its own threads under their seccomp filters.
    #[error(transparent)]
    SelfConfine(#[from] crate::self_confine::SelfConfineError),
    /// A host resource (eventfd, thread, irqfd) could not be set up.
    #[error("cannot {0}")]
    Host(&'static str, #[source] std::io::Error),
}

impl SvmmError {
    /// The exit code this failure ends svmm with.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::Cli(_) => ExitCode::Usage,
            Self::Boot(BootError::CmdlineTooLong(_)) => ExitCode::Usage,
            Self::Boot(BootError::Memory(_) | BootError::Configure(_)) => ExitCode::SetupFailed,
            Self::Boot(_) => ExitCode::BadInput,
            Self::Device(DeviceSetupError::HostResources { source, .. })
                if source.is_bad_input() =>
            {
                ExitCode::BadInput
            }
            Self::Kvm(_) => ExitCode::KvmUnavailable,
            Self::VmSetup(_)
            | Self::Memory(_)
            | Self::Cpu(_)
            | Self::Acpi(_)
            | Self::MpTable(_)
            | Self::Device(_)
            | Self::PrintSandbox(_)
            | Self::SelfConfine(_)
            | Self::Host(..) => ExitCode::SetupFailed,
        }
    }
}
