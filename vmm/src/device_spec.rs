//! `--device` specifications: the device kinds this build knows and their options.
//!
//! A spec is `KIND[=PATH][,OPTION[=VALUE]...]`. Parsing turns it into a [`DeviceSpec`] — the
//! kind's own parameters in [`DeviceParams`] — or one error line that names the spec, the
//! offending part and what is accepted instead. Nothing here opens files or starts anything:
//! see `device_setup` for that.
//!
//! | kind  | path            | options                                                        |
//! |-------|-----------------|----------------------------------------------------------------|
//! | `rng` | none            | `sandbox=on\|off`                                              |
//! | `blk` | the raw image   | `ro` (or `ro=on\|off`), `id=STR` (1–20 bytes; default: the image's file name, cut to 20 bytes), `direct=on\|off`, `queues=N` (1–16), `poll=N` (idle-poll window in µs, 0–1000, 0 = off; default [`blk::DEFAULT_POLL_US`]), `sandbox=on\|off` |
//!
//! Builds with the `test-faults` feature also take a hidden `fault=MODE` on every kind (see
//! `worker::fault`), only for sandboxed devices.

use std::fmt;
use std::path::{Path, PathBuf};

use devices::blk;

/// The device kinds this build supports, in the order `--help` and errors list them.
pub const SUPPORTED_KINDS: &[&str] = &["rng", "blk"];

/// A kind of virtio device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// virtio-rng, fed from the host's `/dev/urandom`.
    Rng,
    /// virtio-blk on a raw image file.
    Blk,
}

impl DeviceKind {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Rng => "rng",
            DeviceKind::Blk => "blk",
        }
    }

    /// The options the kind accepts (every kind takes `sandbox`).
    fn options(self) -> &'static [&'static str] {
        match self {
            DeviceKind::Rng => &["sandbox"],
            DeviceKind::Blk => &["ro", "id", "direct", "queues", "poll", "sandbox"],
        }
    }

    /// The kind called `name` on the command line.
    pub fn from_name(name: &str) -> Option<DeviceKind> {
        match name {
            "rng" => Some(DeviceKind::Rng),
            "blk" => Some(DeviceKind::Blk),
            _ => None,
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a device is, with the parameters of its kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceParams {
    /// virtio-rng: no parameters.
    Rng,
    /// virtio-blk.
    Blk(BlkParams),
}

impl DeviceParams {
    /// The kind these parameters belong to.
    pub fn kind(&self) -> DeviceKind {
        match self {
            DeviceParams::Rng => DeviceKind::Rng,
            DeviceParams::Blk(_) => DeviceKind::Blk,
        }
    }
}

/// `blk=PATH[,ro][,id=STR][,direct=on][,queues=N][,poll=N]`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlkParams {
    /// The raw image, as given.
    pub path: PathBuf,
    /// `ro`: the image is opened read-only (shared lock) and the device refuses writes.
    pub read_only: bool,
    /// What the device answers to `GET_ID`: `id=`, or the image's file name cut to 20 bytes.
    pub id: String,
    /// `direct=on`: the image is opened `O_DIRECT`.
    pub direct: bool,
    /// `queues=N`: request queues, 1 to [`blk::MAX_QUEUES`].
    pub queues: u16,
    /// `poll=N`: idle-poll window in µs, 0 (off) to [`blk::MAX_POLL_US`].
    pub poll_us: u32,
}

/// One validated `--device`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSpec {
    /// What the device is, and its kind's parameters.
    pub params: DeviceParams,
    /// Whether the device runs in a sandboxed worker process (`sandbox=on`, the default) or on
    /// a thread of svmm (`sandbox=off`, or `--no-sandbox` for every device).
    pub sandbox: bool,
    /// The test-only misbehaviour of its worker (`fault=MODE`).
    #[cfg(feature = "test-faults")]
    pub fault: Option<crate::worker::fault::Fault>,
}

impl DeviceSpec {
    /// A sandboxed device with `params` and no fault: what `KIND[=PATH]` alone gives.
    pub fn new(params: DeviceParams) -> DeviceSpec {
        DeviceSpec {
            params,
            sandbox: true,
            #[cfg(feature = "test-faults")]
            fault: None,
        }
    }

    /// The device's kind.
    pub fn kind(&self) -> DeviceKind {
        self.params.kind()
    }
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
    /// A kind that works on a file, without `=PATH`.
    #[error("--device '{spec}': {kind} needs a path: {kind}=PATH")]
    MissingPath {
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

/// What `queues=` accepts.
const QUEUES_EXPECTED: &str = "=N with N from 1 to 16";
/// What `poll=` accepts.
const POLL_EXPECTED: &str = "=N (µs) with N from 0 to 1000";
/// What `id=` accepts.
const ID_EXPECTED: &str = "=STR of 1 to 20 bytes";

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
    let path = match (kind, path) {
        (DeviceKind::Rng, None) => None,
        (DeviceKind::Rng, Some(_)) => {
            return Err(DeviceSpecError::UnexpectedPath {
                spec: spec.to_string(),
                kind,
            })
        }
        (DeviceKind::Blk, Some(path)) if !path.is_empty() => Some(Path::new(path)),
        (DeviceKind::Blk, _) => {
            return Err(DeviceSpecError::MissingPath {
                spec: spec.to_string(),
                kind,
            })
        }
    };
    let mut options = Options::new(spec, kind);
    for option in parts {
        options.add(option)?;
    }
    let params = match path {
        None => DeviceParams::Rng,
        Some(path) => DeviceParams::Blk(blk_params(path, &options)?),
    };
    let mut device = DeviceSpec::new(params);
    device.sandbox = options.on_off("sandbox")?.unwrap_or(true);
    #[cfg(feature = "test-faults")]
    {
        device.fault = options.fault;
    }
    Ok(device)
}

/// `blk`'s parameters from its checked options.
fn blk_params(path: &Path, options: &Options<'_>) -> Result<BlkParams, DeviceSpecError> {
    let id = match options.value("id") {
        Some((option, id)) => {
            if id.is_empty() || id.len() > blk::ID_BYTES {
                return Err(options.bad_value(option, ID_EXPECTED));
            }
            id.to_string()
        }
        None => default_id(path),
    };
    let queues = match options.value("queues") {
        Some((option, n)) => n
            .parse::<u16>()
            .ok()
            .filter(|q| n.bytes().all(|b| b.is_ascii_digit()) && (1..=blk::MAX_QUEUES).contains(q))
            .ok_or_else(|| options.bad_value(option, QUEUES_EXPECTED))?,
        None => 1,
    };
    let poll_us = match options.value("poll") {
        Some((option, n)) => n
            .parse::<u32>()
            .ok()
            .filter(|p| n.bytes().all(|b| b.is_ascii_digit()) && *p <= blk::MAX_POLL_US)
            .ok_or_else(|| options.bad_value(option, POLL_EXPECTED))?,
        None => blk::DEFAULT_POLL_US,
    };
    Ok(BlkParams {
        path: path.to_path_buf(),
        read_only: options.on_off("ro")?.unwrap_or(false),
        id,
        direct: options.on_off("direct")?.unwrap_or(false),
        queues,
        poll_us,
    })
}

/// The id a `blk` device gets without `id=`: the image's file name, cut to at most
/// [`blk::ID_BYTES`] bytes on a character boundary.
pub fn default_id(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut end = name.len().min(blk::ID_BYTES);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_string()
}

/// The options of one spec, checked against its kind, each at most once.
struct Options<'a> {
    spec: &'a str,
    kind: DeviceKind,
    /// `(name, value, as given)`; `value` is `None` for a bare `name`.
    given: Vec<(&'a str, Option<&'a str>, &'a str)>,
    #[cfg(feature = "test-faults")]
    fault: Option<crate::worker::fault::Fault>,
}

impl<'a> Options<'a> {
    fn new(spec: &'a str, kind: DeviceKind) -> Self {
        Options {
            spec,
            kind,
            given: Vec::new(),
            #[cfg(feature = "test-faults")]
            fault: None,
        }
    }

    /// Records `option` (`name` or `name=value`): unknown and repeated names are errors.
    fn add(&mut self, option: &'a str) -> Result<(), DeviceSpecError> {
        let (name, value) = match option.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (option, None),
        };
        let repeated = self.given.iter().any(|(n, ..)| *n == name);
        #[cfg(feature = "test-faults")]
        let repeated = repeated || (name == "fault" && self.fault.is_some());
        if repeated {
            return Err(DeviceSpecError::Repeated {
                spec: self.spec.to_string(),
                option: name.to_string(),
            });
        }
        #[cfg(feature = "test-faults")]
        if name == "fault" {
            use crate::worker::fault::Fault;
            let mode = Fault::from_name(value.unwrap_or_default())
                .ok_or_else(|| self.bad_value(option, Fault::EXPECTED))?;
            self.fault = Some(mode);
            return Ok(());
        }
        if !self.kind.options().contains(&name) {
            return Err(DeviceSpecError::UnknownOption {
                spec: self.spec.to_string(),
                kind: self.kind,
                option: name.to_string(),
                supported: self.kind.options().join(", "),
            });
        }
        self.given.push((name, value, option));
        Ok(())
    }

    /// `name=VALUE` as `(as given, VALUE)`; a bare `name` has the value "".
    fn value(&self, name: &str) -> Option<(&'a str, &'a str)> {
        self.given
            .iter()
            .find(|(n, ..)| *n == name)
            .map(|(_, value, option)| (*option, value.unwrap_or_default()))
    }

    /// `name=on|off`; `ro` may also stand alone for `ro=on`.
    fn on_off(&self, name: &str) -> Result<Option<bool>, DeviceSpecError> {
        let Some((_, value, option)) = self.given.iter().find(|(n, ..)| *n == name) else {
            return Ok(None);
        };
        match (*value, name) {
            (None, "ro") => Ok(Some(true)),
            (Some("on"), _) => Ok(Some(true)),
            (Some("off"), _) => Ok(Some(false)),
            (_, "ro") => Err(self.bad_value(option, "no value, =on or =off")),
            _ => Err(self.bad_value(option, "=on or =off")),
        }
    }

    fn bad_value(&self, option: &str, expected: &'static str) -> DeviceSpecError {
        DeviceSpecError::BadValue {
            spec: self.spec.to_string(),
            option: option.to_string(),
            expected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_defaults_to_sandboxed() {
        let want = DeviceSpec::new(DeviceParams::Rng);
        assert_eq!(parse("rng"), Ok(want.clone()));
        assert_eq!(parse("rng,sandbox=on"), Ok(want));
        assert_eq!(
            parse("rng,sandbox=off"),
            Ok(DeviceSpec {
                sandbox: false,
                ..DeviceSpec::new(DeviceParams::Rng)
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
            msg("net=/tmp/tap"),
            "--device 'net=/tmp/tap': unknown device kind 'net' (supported: rng, blk)"
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

    fn blk(spec: &str) -> BlkParams {
        match parse(spec).unwrap().params {
            DeviceParams::Blk(params) => params,
            other => panic!("{spec}: {other:?}"),
        }
    }

    #[test]
    fn blk_defaults_and_options() {
        let want = BlkParams {
            path: "/images/disk.img".into(),
            read_only: false,
            id: "disk.img".into(),
            direct: false,
            queues: 1,
            poll_us: blk::DEFAULT_POLL_US,
        };
        assert_eq!(blk("blk=/images/disk.img"), want);
        assert!(parse("blk=/images/disk.img").unwrap().sandbox);
        assert_eq!(
            blk("blk=disk.img,ro,id=root,direct=on,queues=4,poll=64"),
            BlkParams {
                path: "disk.img".into(),
                read_only: true,
                id: "root".into(),
                direct: true,
                queues: 4,
                poll_us: 64,
            }
        );
        assert_eq!(blk("blk=d,poll=0").poll_us, 0);
        assert_eq!(blk("blk=d,poll=1000").poll_us, 1000);
        assert!(blk("blk=d,ro=on").read_only);
        assert!(!blk("blk=d,ro=off").read_only);
        assert_eq!(blk("blk=d,queues=16").queues, 16);
        assert_eq!(blk("blk=d,id=12345678901234567890").id.len(), 20);
        let spec = parse("blk=d,sandbox=off,direct=off").unwrap();
        assert!(!spec.sandbox);
        assert_eq!(spec.kind(), DeviceKind::Blk);
    }

    #[test]
    fn blk_default_id_is_the_file_name_cut_to_20_bytes() {
        assert_eq!(default_id(Path::new("/a/b/root.ext4")), "root.ext4");
        assert_eq!(
            default_id(Path::new("/x/a-very-long-image-name.raw")),
            "a-very-long-image-na"
        );
        // Cut on a character boundary: 19 ASCII bytes and a 2-byte character give 19 bytes.
        assert_eq!(
            default_id(Path::new("abcdefghijklmnopqrsé")),
            "abcdefghijklmnopqrs"
        );
        assert_eq!(default_id(Path::new("/")), "");
    }

    #[test]
    fn blk_errors_name_the_problem() {
        let msg = |s: &str| parse(s).unwrap_err().to_string();
        assert_eq!(msg("blk"), "--device 'blk': blk needs a path: blk=PATH");
        assert_eq!(
            msg("blk=,ro"),
            "--device 'blk=,ro': blk needs a path: blk=PATH"
        );
        assert_eq!(
            msg("blk=d,id=123456789012345678901"),
            "--device 'blk=d,id=123456789012345678901': option 'id=123456789012345678901' \
             needs =STR of 1 to 20 bytes"
        );
        assert_eq!(
            msg("blk=d,id="),
            "--device 'blk=d,id=': option 'id=' needs =STR of 1 to 20 bytes"
        );
        for bad in [
            "queues=0",
            "queues=17",
            "queues=x",
            "queues",
            "queues=-1",
            "queues=+2",
        ] {
            assert_eq!(
                msg(&format!("blk=d,{bad}")),
                format!("--device 'blk=d,{bad}': option '{bad}' needs =N with N from 1 to 16")
            );
        }
        for bad in [
            "poll=1001",
            "poll=x",
            "poll",
            "poll=",
            "poll=-1",
            "poll=+2",
            "poll=4294967296",
        ] {
            assert_eq!(
                msg(&format!("blk=d,{bad}")),
                format!(
                    "--device 'blk=d,{bad}': option '{bad}' needs =N (µs) with N from 0 to 1000"
                )
            );
        }
        assert_eq!(
            msg("blk=d,cache=none"),
            "--device 'blk=d,cache=none': unknown option 'cache' for blk \
             (supported: ro, id, direct, queues, poll, sandbox)"
        );
        assert_eq!(
            msg("blk=d,ro=yes"),
            "--device 'blk=d,ro=yes': option 'ro=yes' needs no value, =on or =off"
        );
        assert_eq!(
            msg("blk=d,direct"),
            "--device 'blk=d,direct': option 'direct' needs =on or =off"
        );
        assert_eq!(
            msg("blk=d,ro,ro=off"),
            "--device 'blk=d,ro,ro=off': option 'ro' given twice"
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
