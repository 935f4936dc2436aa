//! `svmm`: command-line entry point.
//!
//! Parses the command line, builds and runs the VM, and turns what ended it into svmm's exit
//! status (see [`exit_code`]). Every failure is reported as one line on stderr.

mod acpi;
mod boot;
mod cli;
mod config;
mod cpu;
mod device_setup;
mod device_spec;
mod error;
mod exit_code;
mod fd_wait;
#[cfg(feature = "test-faults")]
mod gate_probe;
mod host_resources;
mod kinds;
mod kvm;
mod layout;
mod legacy;
mod mmio_bus;
mod mptable;
mod plan;
mod print_sandbox;
mod sandboxed;
mod self_confine;
mod services;
mod supervisor;
mod terminal;
#[cfg(test)]
mod test_kind;
mod vcpu;
mod virtio;
mod vm;
mod vm_events;
mod worker_stderr;

use std::io::Write;

use crate::vm_events::VmEvent;
use worker::report::one_line;

use crate::error::SvmmError;
use crate::exit_code::ExitCode;

fn main() {
    let code = run();
    terminal::restore();
    let _ = std::io::stdout().flush();
    std::process::exit(i32::from(code));
}

fn run() -> u8 {
    // Hidden worker mode (`svmm __worker KIND`), started by the broker with its fds in place.
    let mut argv = std::env::args_os().skip(1);
    let first = argv.next();
    if first
        .as_ref()
        .is_some_and(|a| a == worker::args::WORKER_ARG)
    {
        let rest: Vec<String> = argv.map(|a| a.to_string_lossy().into_owned()).collect();
        return worker::spawned::main(&rest, kinds::KINDS);
    }
    // Test builds: `svmm __test-specs DIR` (see `kinds::print_test_specs`).
    #[cfg(feature = "test-faults")]
    if first.as_ref().is_some_and(|a| a == kinds::TEST_SPECS_ARG) {
        return kinds::print_test_specs(argv.next().map(std::path::PathBuf::from));
    }
    let args = match cli::parse() {
        Ok(args) => args,
        Err(e) => return report_clap_error(&e),
    };
    if args.print_sandbox {
        return match print_sandbox_report(&args) {
            Ok(report) => {
                print!("{report}");
                0
            }
            Err(e) => fail(&e),
        };
    }
    let config = match args.validate(cli::host_mem_mib()) {
        Ok(config) => config,
        Err(e) => return fail(&SvmmError::from(e)),
    };
    match vm::run(&config) {
        // The VM is kept alive until the process exits: its vCPU threads still use it.
        Ok((vm, event)) => {
            let _ = std::io::stdout().flush();
            vm.report_device_stats();
            finish(event)
        }
        Err(e) => fail(&e),
    }
}

/// `--print-sandbox`: the report for the command line's `--device`s, `--no-sandbox`,
/// `--seccomp`, `--worker-ids`, `--subids` and `--allow-missing-landlock`.
fn print_sandbox_report(args: &cli::Args) -> Result<String, SvmmError> {
    let devices = args.device_specs()?;
    let options = config::SandboxOptions {
        seccomp: args.seccomp.into(),
        worker_ids: args.worker_ids,
        allow_missing_landlock: args.allow_missing_landlock,
        host_ids: config::HostIds::detect(args.subids == cli::OnOff::On, devices.len()),
        guest_ram: args.mem << 20,
    };
    Ok(print_sandbox::report(
        &devices,
        args.seccomp,
        &options,
        args.mem << 20,
    )?)
}

/// Reports the event that ended the VM and returns the exit code for it.
fn finish(event: VmEvent) -> u8 {
    match event {
        VmEvent::PowerOff => ExitCode::PowerOff as u8,
        VmEvent::GuestStatus(status) => exit_code::guest_status(status),
        VmEvent::Reboot => {
            eprintln!("svmm: the guest asked for a reboot; svmm does not reboot guests, it ends");
            ExitCode::GuestReboot as u8
        }
        VmEvent::Crashed(reason) => {
            eprintln!("svmm: guest crashed: {reason}");
            ExitCode::GuestCrashed as u8
        }
        VmEvent::UserQuit => {
            eprintln!("svmm: ended from the console (Ctrl-A x)");
            ExitCode::PowerOff as u8
        }
        VmEvent::DeviceFailed(reason) => {
            eprintln!("svmm: stopping the VM (--on-worker-exit=stop): device {reason}");
            ExitCode::DeviceFailed as u8
        }
        VmEvent::Internal(reason) => {
            eprintln!("svmm: internal error: {reason}");
            ExitCode::Internal as u8
        }
    }
}

fn fail(error: &SvmmError) -> u8 {
    eprintln!("svmm: error: {}", one_line(error));
    error.exit_code() as u8
}

/// `--help` and `--version` print and succeed; any other clap error is one line plus a hint.
fn report_clap_error(error: &clap::Error) -> u8 {
    use clap::error::ErrorKind;
    match error.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = error.print();
            0
        }
        _ => {
            // clap's message is its first paragraph (the error and, for missing arguments, the
            // arguments on the following lines); usage and tips come after a blank line.
            let rendered = error.render().to_string();
            let message: Vec<&str> = rendered
                .lines()
                .map(str::trim)
                .skip_while(|l| l.is_empty())
                .take_while(|l| !l.is_empty())
                .collect();
            let message = message.join(" ");
            let message = message.trim_start_matches("error: ");
            eprintln!("svmm: error: {message} (see svmm --help)");
            ExitCode::Usage as u8
        }
    }
}
