//! `--device KIND[=VALUE][,OPTION[=VALUE]...]`: the grammar every kind shares, and the one
//! parser of it.
//!
//! A kind declares what may follow `KIND=` ([`ValueSpec`]) and its options, each an
//! [`OptionSpec`] constant: its name, how its value is written ([`OptionValue`]: on/off,
//! a bare flag, a number in a range, a string of bounded length, one of a few words) and one
//! line of help. [`Spec::parse`] checks a spec against that declaration — unknown and repeated
//! options, a value where none is taken, a missing one — and the kind reads its typed values
//! with [`Spec::switch`], [`Spec::number`], [`Spec::string`], [`Spec::choice`], which check each
//! against its declaration. Every message names the whole spec and says what is accepted,
//! generated from the declaration, so a range is written once: in the kind's constant, which
//! the kind's config validation uses too ([`OptionSpec::accepts_number`],
//! [`OptionSpec::accepts_text`]).
//!
//! The options every kind takes (`sandbox=`, and the test-only `fault=`) are declared and read
//! by the caller, outside the kind, with the same parser.

use std::fmt;

/// What may follow `KIND=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueSpec {
    /// Nothing: `rng`.
    None,
    /// Required: `blk=PATH`.
    Required {
        /// How usage messages write it (`PATH`).
        placeholder: &'static str,
        /// What it is, with its article (`a path`).
        noun: &'static str,
    },
    /// Optional: `wayland[=SOCKET]`.
    Optional {
        /// How usage messages write it (`SOCKET`).
        placeholder: &'static str,
    },
}

/// How an option's value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionValue {
    /// `NAME=on` or `NAME=off`.
    Switch,
    /// `NAME` alone (on), `NAME=on` or `NAME=off`.
    Flag,
    /// `NAME=N`: decimal digits only, from `min` to `max`.
    Number {
        /// Smallest value.
        min: u64,
        /// Largest value.
        max: u64,
        /// The unit, if the number has one (`µs`).
        unit: Option<&'static str>,
    },
    /// `NAME=STR` of `min_len` to `max_len` bytes.
    Text {
        /// How usage messages write it (`STR`, `NAME`).
        placeholder: &'static str,
        /// Fewest bytes.
        min_len: usize,
        /// Most bytes.
        max_len: usize,
    },
    /// `NAME=WORD`, one of these words.
    Choice(&'static [&'static str]),
}

/// One option a kind (or every kind) takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionSpec {
    /// Its name.
    pub name: &'static str,
    /// How its value is written.
    pub value: OptionValue,
    /// What it does, for `--help` (one sentence, no final full stop).
    pub help: &'static str,
    /// Left out of `--help` and of the supported options an error lists (the test-only
    /// `fault=`).
    pub hidden: bool,
}

impl OptionSpec {
    /// How `--help` writes it: `ro`, `direct=on|off`, `queues=N`, `id=STR`, `fault=a|b`.
    pub fn usage(&self) -> String {
        let name = self.name;
        match self.value {
            OptionValue::Switch => format!("{name}=on|off"),
            OptionValue::Flag => name.to_string(),
            OptionValue::Number { .. } => format!("{name}=N"),
            OptionValue::Text { placeholder, .. } => format!("{name}={placeholder}"),
            OptionValue::Choice(words) => format!("{name}={}", words.join("|")),
        }
    }

    /// What the value may be, for an error: `=on or =off`, `=N with N from 1 to 16`.
    pub fn expected(&self) -> String {
        match self.value {
            OptionValue::Switch => "=on or =off".to_string(),
            OptionValue::Flag => "no value, =on or =off".to_string(),
            OptionValue::Number { min, max, unit } => match unit {
                Some(unit) => format!("=N ({unit}) with N from {min} to {max}"),
                None => format!("=N with N from {min} to {max}"),
            },
            OptionValue::Text {
                placeholder,
                min_len,
                max_len,
            } => format!("={placeholder} of {min_len} to {max_len} bytes"),
            OptionValue::Choice(words) => {
                let words: Vec<String> = words.iter().map(|w| format!("={w}")).collect();
                match words.as_slice() {
                    [rest @ .., last] if !rest.is_empty() => {
                        format!("{} or {last}", rest.join(", "))
                    }
                    _ => words.join(""),
                }
            }
        }
    }

    /// Whether `n` is in the declared range (false for an option that is not a number).
    pub fn accepts_number(&self, n: u64) -> bool {
        matches!(self.value, OptionValue::Number { min, max, .. } if (min..=max).contains(&n))
    }

    /// Whether `text` has a declared length (false for an option that is not text).
    pub fn accepts_text(&self, text: &str) -> bool {
        matches!(self.value, OptionValue::Text { min_len, max_len, .. }
            if (min_len..=max_len).contains(&text.len()))
    }
}

/// `--device` values that cannot be used. Every message names the whole spec.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// Empty, or no kind before the first `,` or `=`.
    #[error("--device '{0}': expected KIND[=PATH][,OPTION=VALUE...]")]
    Syntax(String),
    /// A kind this build does not know.
    #[error("--device '{spec}': unknown device kind '{kind}' (supported: {supported})")]
    UnknownKind {
        /// The whole spec.
        spec: String,
        /// The kind that was not recognised.
        kind: String,
        /// The kinds this build knows, comma-separated.
        supported: String,
    },
    /// `KIND=VALUE` for a kind that takes no value.
    #[error("--device '{spec}': {kind} takes no path")]
    UnexpectedValue {
        /// The whole spec.
        spec: String,
        /// The device kind.
        kind: &'static str,
    },
    /// A kind that needs `=VALUE`, without it.
    #[error("--device '{spec}': {kind} needs {noun}: {kind}={placeholder}")]
    MissingValue {
        /// The whole spec.
        spec: String,
        /// The device kind.
        kind: &'static str,
        /// What the value is (`a path`).
        noun: &'static str,
        /// How it is written (`PATH`).
        placeholder: &'static str,
    },
    /// An option the kind does not have.
    #[error("--device '{spec}': unknown option '{option}' for {kind} (supported: {supported})")]
    UnknownOption {
        /// The whole spec.
        spec: String,
        /// The device kind.
        kind: &'static str,
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
        expected: String,
    },
    /// The same option twice.
    #[error("--device '{spec}': option '{option}' given twice")]
    Repeated {
        /// The whole spec.
        spec: String,
        /// The option name.
        option: String,
    },
    /// Options that do not go together, or a value only the kind can judge (a kind's own
    /// rule, checked in its `parse`).
    #[error("--device '{spec}': {reason}")]
    Invalid {
        /// The whole spec.
        spec: String,
        /// What is wrong and what would do.
        reason: String,
    },
}

/// One option as given.
#[derive(Debug, Clone, Copy)]
struct Given<'a> {
    spec: &'static OptionSpec,
    /// `None` for a bare `name`.
    value: Option<&'a str>,
    /// `name` or `name=value`, as typed.
    text: &'a str,
}

/// One `--device` value, checked against its kind's declaration.
#[derive(Debug, Clone)]
pub struct Spec<'a> {
    text: &'a str,
    value: Option<&'a str>,
    given: Vec<Given<'a>>,
}

impl<'a> Spec<'a> {
    /// The kind's name at the start of `text` (before the first `=` or `,`).
    pub fn kind_name(text: &str) -> Result<&str, SpecError> {
        let head = text.split(',').next().unwrap_or_default();
        let name = head.split_once('=').map_or(head, |(name, _)| name);
        if name.is_empty() {
            return Err(SpecError::Syntax(text.to_string()));
        }
        Ok(name)
    }

    /// Checks `text`, whose kind is `kind`, against what the kind takes after `KIND=` and its
    /// `options` (the kind's own, then those every kind takes): each option known and given at
    /// most once. The values are checked when they are read.
    pub fn parse(
        text: &'a str,
        kind: &'static str,
        value_spec: ValueSpec,
        options: &[&'static OptionSpec],
    ) -> Result<Spec<'a>, SpecError> {
        let mut parts = text.split(',');
        let head = parts.next().unwrap_or_default();
        let value = head.split_once('=').map(|(_, value)| value);
        let missing = |noun, placeholder| SpecError::MissingValue {
            spec: text.to_string(),
            kind,
            noun,
            placeholder,
        };
        let value = match (value_spec, value) {
            (ValueSpec::None, None) => None,
            (ValueSpec::None, Some(_)) => {
                return Err(SpecError::UnexpectedValue {
                    spec: text.to_string(),
                    kind,
                })
            }
            (ValueSpec::Required { placeholder, noun }, value) => Some(
                value
                    .filter(|v| !v.is_empty())
                    .ok_or(missing(noun, placeholder))?,
            ),
            (ValueSpec::Optional { placeholder }, Some("")) => {
                return Err(missing("a value after '='", placeholder));
            }
            (ValueSpec::Optional { .. }, value) => value,
        };
        let mut given: Vec<Given<'a>> = Vec::new();
        for option in parts {
            let (name, value) = match option.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (option, None),
            };
            if given.iter().any(|g| g.spec.name == name) {
                return Err(SpecError::Repeated {
                    spec: text.to_string(),
                    option: name.to_string(),
                });
            }
            let Some(spec) = options.iter().find(|o| o.name == name) else {
                let supported: Vec<&str> = options
                    .iter()
                    .filter(|o| !o.hidden)
                    .map(|o| o.name)
                    .collect();
                return Err(SpecError::UnknownOption {
                    spec: text.to_string(),
                    kind,
                    option: name.to_string(),
                    supported: supported.join(", "),
                });
            };
            given.push(Given {
                spec,
                value,
                text: option,
            });
        }
        Ok(Spec { text, value, given })
    }

    /// The whole spec, as typed.
    pub fn as_str(&self) -> &'a str {
        self.text
    }

    /// What followed `KIND=`: always there (and not empty) for a kind whose value is
    /// [`ValueSpec::Required`], never for [`ValueSpec::None`].
    pub fn value(&self) -> Option<&'a str> {
        self.value
    }

    fn given(&self, option: &OptionSpec) -> Option<Given<'a>> {
        self.given
            .iter()
            .find(|g| g.spec.name == option.name)
            .copied()
    }

    fn bad(&self, given: Given<'_>) -> SpecError {
        SpecError::BadValue {
            spec: self.text.to_string(),
            option: given.text.to_string(),
            expected: given.spec.expected(),
        }
    }

    /// A [`OptionValue::Switch`] or [`OptionValue::Flag`] option: `None` if not given.
    pub fn switch(&self, option: &OptionSpec) -> Result<Option<bool>, SpecError> {
        let Some(given) = self.given(option) else {
            return Ok(None);
        };
        match (given.spec.value, given.value) {
            (OptionValue::Flag, None) => Ok(Some(true)),
            (OptionValue::Flag | OptionValue::Switch, Some("on")) => Ok(Some(true)),
            (OptionValue::Flag | OptionValue::Switch, Some("off")) => Ok(Some(false)),
            _ => Err(self.bad(given)),
        }
    }

    /// An [`OptionValue::Number`] option, checked against its range: `None` if not given.
    pub fn number(&self, option: &OptionSpec) -> Result<Option<u64>, SpecError> {
        let Some(given) = self.given(option) else {
            return Ok(None);
        };
        let text = given.value.unwrap_or_default();
        let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
        let n = text.parse::<u64>().ok().filter(|_| digits);
        match n {
            Some(n) if given.spec.accepts_number(n) => Ok(Some(n)),
            _ => Err(self.bad(given)),
        }
    }

    /// An [`OptionValue::Text`] option, checked against its length: `None` if not given.
    pub fn string(&self, option: &OptionSpec) -> Result<Option<&'a str>, SpecError> {
        let Some(given) = self.given(option) else {
            return Ok(None);
        };
        match given.value {
            Some(text) if given.spec.accepts_text(text) => Ok(Some(text)),
            _ => Err(self.bad(given)),
        }
    }

    /// An [`OptionValue::Choice`] option: the word given, `None` if not given.
    pub fn choice(&self, option: &OptionSpec) -> Result<Option<&'static str>, SpecError> {
        let Some(given) = self.given(option) else {
            return Ok(None);
        };
        let OptionValue::Choice(words) = given.spec.value else {
            return Err(self.bad(given));
        };
        match given.value.and_then(|v| words.iter().find(|w| **w == v)) {
            Some(word) => Ok(Some(word)),
            None => Err(self.bad(given)),
        }
    }
}

impl fmt::Display for Spec<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text)
    }
}

/// `blk=PATH[,ro][,id=STR]`: how `--help` writes a kind (its non-hidden options).
pub fn usage(kind: &str, value: ValueSpec, options: &[&OptionSpec]) -> String {
    let mut out = kind.to_string();
    match value {
        ValueSpec::None => {}
        ValueSpec::Required { placeholder, .. } => out.push_str(&format!("={placeholder}")),
        ValueSpec::Optional { placeholder } => out.push_str(&format!("[={placeholder}]")),
    }
    for option in options.iter().filter(|o| !o.hidden) {
        out.push_str(&format!("[,{}]", option.usage()));
    }
    out
}

#[cfg(test)]
mod tests;
