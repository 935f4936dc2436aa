//! A compiled seccomp profile, read back from the merged JSON it was compiled from
//! (`seccomp_profiles::source`, the same data `seccomp-profiles/README.md` documents), and
//! rendered as the allowed system calls with their argument filters and reasons.

use std::fmt::Write as _;

use serde_json::Value;

/// One rule: the call is allowed when every condition holds (none: always).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The system call's name.
    pub syscall: String,
    /// Why it is allowed.
    pub comment: String,
    /// Conditions on its arguments, all of which must hold.
    pub args: Vec<Condition>,
}

/// One argument condition of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// The argument's index (0 = first).
    pub index: u64,
    /// `dword` (low 32 bits) or `qword`.
    pub width: String,
    /// The comparison, e.g. `== 0x1` or `& 0x4 == 0x0`.
    pub test: String,
    /// What the condition means.
    pub comment: String,
}

/// Why a profile cannot be shown.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// No profile by that name in this build.
    #[error("no seccomp profile named {0:?} in this build")]
    Unknown(String),
    /// The embedded JSON is not what `seccomp-profiles/build.rs` writes (a build bug).
    #[error("seccomp profile {profile:?}: unexpected JSON: {what}")]
    Shape {
        /// The profile.
        profile: String,
        /// What was wrong.
        what: String,
    },
}

/// The rules of `profile`, in the order of its source (base rules first for a device).
pub fn rules(profile: &str) -> Result<Vec<Rule>, ProfileError> {
    let source =
        seccomp_profiles::source(profile).ok_or_else(|| ProfileError::Unknown(profile.into()))?;
    let bad = |what: &str| ProfileError::Shape {
        profile: profile.into(),
        what: what.into(),
    };
    let value: Value = serde_json::from_str(source).map_err(|e| bad(&e.to_string()))?;
    let filter = value
        .get(profile)
        .and_then(|f| f.get("filter"))
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no filter array"))?;
    filter
        .iter()
        .map(|rule| parse_rule(rule).map_err(|e| bad(&e)))
        .collect()
}

fn parse_rule(rule: &Value) -> Result<Rule, String> {
    let text = |v: &Value, key: &str| {
        v.get(key)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("a rule or condition without a string {key:?}"))
    };
    let syscall = text(rule, "syscall")?;
    let comment = text(rule, "comment")?;
    let args = match rule.get("args") {
        None => Vec::new(),
        Some(Value::Array(args)) => args
            .iter()
            .map(|arg| {
                Ok(Condition {
                    index: arg
                        .get("index")
                        .and_then(Value::as_u64)
                        .ok_or(format!("{syscall}: a condition without an index"))?,
                    width: text(arg, "type")?,
                    test: comparison(arg.get("op"), arg.get("val"))
                        .ok_or(format!("{syscall}: an unknown op or value"))?,
                    comment: text(arg, "comment")?,
                })
            })
            .collect::<Result<_, String>>()?,
        Some(_) => return Err(format!("{syscall}: args is not an array")),
    };
    Ok(Rule {
        syscall,
        comment,
        args,
    })
}

/// seccompiler's `op` and `val` as C-like text: `== 0x1`, `& 0x4 == 0x0`, `<= 0x10`.
fn comparison(op: Option<&Value>, val: Option<&Value>) -> Option<String> {
    let val = val?.as_u64()?;
    let text = match op? {
        Value::String(op) => {
            let sym = match op.as_str() {
                "eq" => "==",
                "ne" => "!=",
                "lt" => "<",
                "le" => "<=",
                "gt" => ">",
                "ge" => ">=",
                _ => return None,
            };
            format!("{sym} {val:#x}")
        }
        Value::Object(map) => {
            let mask = map.get("masked_eq")?.as_u64()?;
            format!("& {mask:#x} == {val:#x}")
        }
        _ => return None,
    };
    Some(text)
}

/// Width of the system call column.
const NAME_WIDTH: usize = 20;

/// The rules as an indented list: one line per rule (name, then its conditions or "any
/// arguments"), the reason on the next line, each condition's meaning in brackets.
pub fn render(rules: &[Rule], indent: &str) -> String {
    let mut out = String::new();
    let pad = " ".repeat(NAME_WIDTH);
    for rule in rules {
        let conditions = match rule.args.as_slice() {
            [] => "any arguments".to_string(),
            args => {
                let parts: Vec<String> = args
                    .iter()
                    .map(|c| {
                        let width = if c.width == "qword" { "" } else { " (32 bits)" };
                        format!("arg{}{width} {} [{}]", c.index, c.test, c.comment)
                    })
                    .collect();
                format!("only if {}", parts.join(" and "))
            }
        };
        let _ = writeln!(out, "{indent}{:<NAME_WIDTH$} {conditions}", rule.syscall);
        let _ = writeln!(out, "{indent}{pad} why: {}", rule.comment);
    }
    out
}

/// The distinct system calls `rules` allow (a call with several rules counts once).
pub fn syscall_count(rules: &[Rule]) -> usize {
    let mut names: Vec<&str> = rules.iter().map(|r| r.syscall.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    names.len()
}
