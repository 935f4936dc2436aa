//! `--device` specifications: `KIND[=VALUE][,OPTION[=VALUE]...]` into a [`DeviceSpec`].
//!
//! The kind is looked up in the registry ([`crate::kinds`]); the spec is checked against the
//! kind's own declaration and parsed by the kind itself into its validated config
//! (`devices::kind::options` is the grammar every kind shares). The options every kind takes
//! are read here, outside the kind: `sandbox=on|off`, and in builds with the `test-faults`
//! feature the hidden `fault=MODE` (see `worker::fault`), only for sandboxed devices. Errors
//! are one line naming the spec, the offending part and what is accepted instead. Nothing here
//! opens files or starts anything: see `device_setup` for that.

use devices::kind::{OptionSpec, OptionValue, Spec, SpecError};
use devices::DeviceConfig;

use crate::kinds;

/// `sandbox=on|off`, which every kind takes.
const SANDBOX: OptionSpec = OptionSpec {
    name: "sandbox",
    value: OptionValue::Switch,
    help: "off runs the same device code on a thread of svmm instead of a sandboxed worker \
           process",
    hidden: false,
};

/// `fault=MODE`: a deliberately misbehaving worker (test builds only, never listed).
#[cfg(feature = "test-faults")]
const FAULT: OptionSpec = OptionSpec {
    name: "fault",
    value: OptionValue::Choice(worker::fault::Fault::NAMES),
    help: "the worker misbehaves this way once the guest uses the device",
    hidden: true,
};

/// `fault-after=N`: the fault comes at the worker's N-th used-buffer interrupt, in the middle of
/// its work, and a restarted worker does not commit it (test builds only, never listed).
#[cfg(feature = "test-faults")]
const FAULT_AFTER: OptionSpec = OptionSpec {
    name: "fault-after",
    value: OptionValue::Number {
        min: 1,
        max: 1_000_000,
        unit: None,
    },
    help: "the fault comes at the worker's N-th used-buffer interrupt instead, once",
    hidden: true,
};

/// The options every kind takes, after the kind's own.
#[cfg(feature = "test-faults")]
const EVERY_KIND: &[&OptionSpec] = &[&SANDBOX, &FAULT, &FAULT_AFTER];
#[cfg(not(feature = "test-faults"))]
const EVERY_KIND: &[&OptionSpec] = &[&SANDBOX];

/// One validated `--device`.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceSpec {
    /// The kind's validated configuration; it answers for its kind.
    pub config: DeviceConfig,
    /// Whether the device runs in a sandboxed worker process (`sandbox=on`, the default) or on
    /// a thread of svmm (`sandbox=off`, or `--no-sandbox` for every device).
    pub sandbox: bool,
    /// The test-only misbehaviour of its worker (`fault=MODE`).
    #[cfg(feature = "test-faults")]
    pub fault: Option<worker::fault::Fault>,
    /// When the fault comes (`fault-after=N`): at the N-th used-buffer interrupt.
    #[cfg(feature = "test-faults")]
    pub fault_after: Option<u32>,
}

impl DeviceSpec {
    /// A sandboxed device with `config` and no fault: what `KIND[=VALUE]` alone gives.
    pub fn new(config: DeviceConfig) -> DeviceSpec {
        DeviceSpec {
            config,
            sandbox: true,
            #[cfg(feature = "test-faults")]
            fault: None,
            #[cfg(feature = "test-faults")]
            fault_after: None,
        }
    }

    /// The device's kind (`rng`).
    pub fn kind(&self) -> &'static str {
        self.config.kind()
    }
}

/// A `--device` value that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeviceSpecError {
    /// The spec does not fit the grammar or its kind.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// `fault=` on a device that does not run in a worker process.
    #[cfg(feature = "test-faults")]
    #[error("--device '{0}': fault= needs a sandboxed device (sandbox=on, no --no-sandbox)")]
    FaultNeedsSandbox(String),
    /// `fault-after=` without `fault=`.
    #[cfg(feature = "test-faults")]
    #[error("--device '{0}': fault-after= needs fault=")]
    FaultAfterWithoutFault(String),
}

/// Parses one `--device` value, as `--no-sandbox` (`no_sandbox`) leaves it.
pub fn parse_with_switch(spec: &str, no_sandbox: bool) -> Result<DeviceSpec, DeviceSpecError> {
    let mut device = parse(spec)?;
    device.sandbox &= !no_sandbox;
    #[cfg(feature = "test-faults")]
    if device.fault.is_some() && !device.sandbox {
        return Err(DeviceSpecError::FaultNeedsSandbox(spec.to_string()));
    }
    Ok(device)
}

/// Parses one `--device` value.
pub fn parse(text: &str) -> Result<DeviceSpec, DeviceSpecError> {
    let name = Spec::kind_name(text)?;
    let kind = kinds::find(name).ok_or_else(|| SpecError::UnknownKind {
        spec: text.to_string(),
        kind: name.to_string(),
        supported: kinds::names(),
    })?;
    let options: Vec<&'static OptionSpec> =
        kind.options().iter().chain(EVERY_KIND).copied().collect();
    let spec = Spec::parse(text, kind.name(), kind.value(), &options)?;
    let mut device = DeviceSpec::new(kind.parse(&spec)?);
    device.sandbox = spec.switch(&SANDBOX)?.unwrap_or(true);
    #[cfg(feature = "test-faults")]
    {
        use worker::fault::Fault;
        device.fault = spec.choice(&FAULT)?.and_then(Fault::from_name);
        device.fault_after = spec
            .number(&FAULT_AFTER)?
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX));
        if device.fault_after.is_some() && device.fault.is_none() {
            return Err(DeviceSpecError::FaultAfterWithoutFault(text.to_string()));
        }
    }
    Ok(device)
}

/// What `--help` says about `--device`: the grammar, every kind of the registry with its
/// options, and the options every kind takes.
pub fn help() -> String {
    let mut out = String::from(
        "Add a virtio device, given as KIND[=VALUE][,OPTION[=VALUE]...]. May be repeated; each \
         device instance runs in its own sandboxed worker process. Devices get the virtio-mmio \
         slots in the order given: slot i at 0xd0000000 + i * 0x1000, interrupts 5, 6, 7, 10, \
         11, ... The kinds:",
    );
    for kind in kinds::KINDS {
        out.push_str(&format!("\n\n{}: {}.", kind.usage(), kind.summary()));
        for option in kind.options().iter().filter(|o| !o.hidden) {
            out.push_str(&format!(" `{}`: {}.", option.usage(), option.help));
        }
    }
    for option in EVERY_KIND.iter().filter(|o| !o.hidden) {
        out.push_str(&format!(
            "\n\nEvery kind takes `{}`: {}.",
            option.usage(),
            option.help
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_to_sandboxed() {
        let rng = parse("rng").unwrap();
        assert_eq!(rng.kind(), "rng");
        assert!(rng.sandbox);
        assert_eq!(parse("rng,sandbox=on").unwrap(), rng);
        assert!(!parse("rng,sandbox=off").unwrap().sandbox);
        assert!(!parse_with_switch("rng", true).unwrap().sandbox);
    }

    #[test]
    fn errors_name_the_problem() {
        let msg = |s: &str| parse(s).unwrap_err().to_string();
        let supported = kinds::names();
        assert_eq!(
            msg(""),
            "--device '': expected KIND[=PATH][,OPTION=VALUE...]"
        );
        assert_eq!(
            msg(",sandbox=off"),
            "--device ',sandbox=off': expected KIND[=PATH][,OPTION=VALUE...]"
        );
        assert_eq!(
            msg("bogus=/tmp/x"),
            format!(
                "--device 'bogus=/tmp/x': unknown device kind 'bogus' (supported: {supported})"
            )
        );
        assert_eq!(
            msg("rng=/dev/random"),
            "--device 'rng=/dev/random': rng takes no path"
        );
        assert_eq!(
            msg("rng,speed=3"),
            "--device 'rng,speed=3': unknown option 'speed' for rng (supported: source, sandbox)"
        );
        assert_eq!(
            msg("rng,sandbox"),
            "--device 'rng,sandbox': option 'sandbox' needs =on or =off"
        );
        assert_eq!(
            msg("rng,sandbox=maybe"),
            "--device 'rng,sandbox=maybe': option 'sandbox=maybe' needs =on or =off"
        );
        assert_eq!(
            msg("rng,sandbox=on,sandbox=off"),
            "--device 'rng,sandbox=on,sandbox=off': option 'sandbox' given twice"
        );
        assert_eq!(
            msg("rng,"),
            "--device 'rng,': unknown option '' for rng (supported: source, sandbox)"
        );
    }

    #[test]
    fn help_lists_every_kind_and_the_generic_options() {
        let text = help();
        for kind in kinds::KINDS {
            assert!(text.contains(&format!("\n\n{}: ", kind.usage())), "{text}");
        }
        assert!(text.contains("Every kind takes `sandbox=on|off`"), "{text}");
        assert!(!text.contains("fault="), "{text}");
    }

    #[cfg(feature = "test-faults")]
    #[test]
    fn hidden_fault_option() {
        use worker::fault::Fault;
        assert_eq!(
            parse("rng,fault=garbage").unwrap().fault,
            Some(Fault::Garbage)
        );
        assert!(matches!(
            parse("rng,fault=nonsense"),
            Err(DeviceSpecError::Spec(SpecError::BadValue { .. }))
        ));
        assert_eq!(
            parse("rng,speed=1").unwrap_err().to_string(),
            "--device 'rng,speed=1': unknown option 'speed' for rng (supported: source, sandbox)",
            "fault is never listed"
        );
        assert!(matches!(
            parse_with_switch("rng,fault=exit,sandbox=off", false),
            Err(DeviceSpecError::FaultNeedsSandbox(_))
        ));
        assert!(matches!(
            parse_with_switch("rng,fault=exit", true),
            Err(DeviceSpecError::FaultNeedsSandbox(_))
        ));
        assert!(parse_with_switch("rng,fault=exit", false).is_ok());
    }

    #[cfg(not(feature = "test-faults"))]
    #[test]
    fn fault_is_unknown_without_the_test_feature() {
        assert!(matches!(
            parse("rng,fault=exit"),
            Err(DeviceSpecError::Spec(SpecError::UnknownOption { .. }))
        ));
    }
}
