//! `--device` specifications: the device kinds this build knows and their options.
//!
//! A spec is `KIND[=PATH][,OPTION=VALUE...]`. Parsing turns it into a [`DeviceSpec`] or one
//! error line that names the spec, the offending part and what is accepted instead. Nothing here
//! opens files or starts anything: see `device_setup` for that.
//!
//! | kind  | path | options          |
//! |-------|------|------------------|
//! | `rng` | none | `sandbox=on\|off` |
//!
//! Builds with the `test-faults` feature also take a hidden `fault=MODE` on every kind (see
//! `worker::fault`), only for sandboxed devices.

use std::fmt;

/// The device kinds this build supports, in the order `--help` and errors list them.
pub const SUPPORTED_KINDS: &[&str] = &["rng"];

/// A kind of virtio device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// virtio-rng, fed from the host's `/dev/urandom`.
    Rng,
}

impl DeviceKind {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Rng => "rng",
        }
    }

    /// Options the kind accepts besides none (every kind takes `sandbox`).
    fn options(self) -> &'static [&'static str] {
        match self {
            DeviceKind::Rng => &["sandbox"],
        }
    }

    /// The kind called `name` on the command line.
    pub fn from_name(name: &str) -> Option<DeviceKind> {
        match name {
            "rng" => Some(DeviceKind::Rng),
            _ => None,
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One validated `--device`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSpec {
    /// What the device is.
    pub kind: DeviceKind,
    /// Whether the device runs in a sandboxed worker process (`sandbox=on`, the default) or on
    /// a thread of svmm (`sandbox=off`, or `--no-sandbox` for every device).
    pub sandbox: bool,
    /// The test-only misbehaviour of its worker (`fault=MODE`).
    #[cfg(feature = "test-faults")]
    pub fault: Option<crate::worker::fault::Fault>,
}

/// A `--device` value that cannot be used. Every message names the whole spec.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeviceSpecError {
    /// Empty, or no kind before the first `,` or `=`.
    #[error("--device '{0}': expected KIND[=PATH][,OPTION=VALUE...]")]
    Syntax(String),
    /// A kind this build does not know.
    #[error("--device '{spec}': unknown device kind '{kind}' (supported: {})", SUPPORTED_KINDS.join(", "))]
    UnknownKind {
        /// The whole spec.
        spec: String,
        /// The kind that was not recognised.
        kind: String,
    },
    /// `KIND=PATH` for a kind that takes no path.
    #[error("--device '{spec}': {kind} takes no path")]
    UnexpectedPath {
        /// The whole spec.
        spec: String,
        /// The device kind.
        kind: DeviceKind,
    },
    /// An option the kind does not have.
    #[error("--device '{spec}': unknown option '{option}' for {kind} (supported: {supported})")]
    UnknownOption {
        /// The whole spec.
        spec: String,
        /// The device kind.
        kind: DeviceKind,
        /// The option name as given.
        option: String,
        /// The kind's options, comma-separated.
        supported: String,
    },
    /// An option without `=VALUE`, or with a value it does not take.
    #[error("--device '{spec}': option '{option}' needs {expected}")]
    BadValue {
        /// The whole spec.
        spec: String,
        /// The option as given (`name` or `name=value`).
        option: String,
        /// What the value may be.
        expected: &'static str,
    },
    /// `fault=` on a device that does not run in a worker process.
    #[cfg(feature = "test-faults")]
    #[error("--device '{0}': fault= needs a sandboxed device (sandbox=on, no --no-sandbox)")]
    FaultNeedsSandbox(String),
    /// The same option twice.
    #[error("--device '{spec}': option '{option}' given twice")]
    Repeated {
        /// The whole spec.
        spec: String,
        /// The option name.
        option: String,
    },
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
pub fn parse(spec: &str) -> Result<DeviceSpec, DeviceSpecError> {
    let mut parts = spec.split(',');
    let head = parts.next().unwrap_or_default();
    let (kind_name, path) = match head.split_once('=') {
        Some((kind, path)) => (kind, Some(path)),
        None => (head, None),
    };
    if kind_name.is_empty() {
        return Err(DeviceSpecError::Syntax(spec.to_string()));
    }
    let kind = DeviceKind::from_name(kind_name).ok_or_else(|| DeviceSpecError::UnknownKind {
        spec: spec.to_string(),
        kind: kind_name.to_string(),
    })?;
    if path.is_some() {
        return Err(DeviceSpecError::UnexpectedPath {
            spec: spec.to_string(),
            kind,
        });
    }
    let mut sandbox = None;
    #[cfg(feature = "test-faults")]
    let mut fault = None;
    for option in parts {
        let (name, value) = option.split_once('=').unwrap_or((option, ""));
        #[cfg(feature = "test-faults")]
        if name == "fault" {
            use crate::worker::fault::Fault;
            let mode = Fault::from_name(value).ok_or_else(|| DeviceSpecError::BadValue {
                spec: spec.to_string(),
                option: option.to_string(),
                expected: Fault::EXPECTED,
            })?;
            if fault.replace(mode).is_some() {
                return Err(DeviceSpecError::Repeated {
                    spec: spec.to_string(),
                    option: name.to_string(),
                });
            }
            continue;
        }
        if !kind.options().contains(&name) {
            return Err(DeviceSpecError::UnknownOption {
                spec: spec.to_string(),
                kind,
                option: name.to_string(),
                supported: kind.options().join(", "),
            });
        }
        // `sandbox` is the only option so far; kinds with more add their arms here.
        let on = on_off(value).ok_or_else(|| DeviceSpecError::BadValue {
            spec: spec.to_string(),
            option: option.to_string(),
            expected: "=on or =off",
        })?;
        if sandbox.replace(on).is_some() {
            return Err(DeviceSpecError::Repeated {
                spec: spec.to_string(),
                option: name.to_string(),
            });
        }
    }
    Ok(DeviceSpec {
        kind,
        sandbox: sandbox.unwrap_or(true),
        #[cfg(feature = "test-faults")]
        fault,
    })
}

fn on_off(value: &str) -> Option<bool> {
    match value {
        "on" => Some(true),
        "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_defaults_to_sandboxed() {
        let want = DeviceSpec {
            kind: DeviceKind::Rng,
            sandbox: true,
            #[cfg(feature = "test-faults")]
            fault: None,
        };
        assert_eq!(parse("rng"), Ok(want.clone()));
        assert_eq!(parse("rng,sandbox=on"), Ok(want));
        assert_eq!(
            parse("rng,sandbox=off"),
            Ok(DeviceSpec {
                kind: DeviceKind::Rng,
                sandbox: false,
                #[cfg(feature = "test-faults")]
                fault: None,
            })
        );
    }

    #[test]
    fn errors_name_the_problem() {
        let msg = |s: &str| parse(s).unwrap_err().to_string();
        assert_eq!(
            msg(""),
            "--device '': expected KIND[=PATH][,OPTION=VALUE...]"
        );
        assert_eq!(
            msg(",sandbox=off"),
            "--device ',sandbox=off': expected KIND[=PATH][,OPTION=VALUE...]"
        );
        assert_eq!(
            msg("blk=/tmp/disk"),
            "--device 'blk=/tmp/disk': unknown device kind 'blk' (supported: rng)"
        );
        assert_eq!(
            msg("rng=/dev/random"),
            "--device 'rng=/dev/random': rng takes no path"
        );
        assert_eq!(
            msg("rng,speed=3"),
            "--device 'rng,speed=3': unknown option 'speed' for rng (supported: sandbox)"
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
            "--device 'rng,': unknown option '' for rng (supported: sandbox)"
        );
    }

    #[cfg(feature = "test-faults")]
    #[test]
    fn hidden_fault_option() {
        use crate::worker::fault::Fault;
        assert_eq!(
            parse("rng,fault=garbage").unwrap().fault,
            Some(Fault::Garbage)
        );
        assert!(matches!(
            parse("rng,fault=nonsense"),
            Err(DeviceSpecError::BadValue { .. })
        ));
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
            Err(DeviceSpecError::UnknownOption { .. })
        ));
    }
}
