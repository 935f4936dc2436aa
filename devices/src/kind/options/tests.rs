//! The shared grammar with a made-up kind that has one option of each sort.

use super::*;

const FLAG: OptionSpec = OptionSpec {
    name: "ro",
    value: OptionValue::Flag,
    help: "read-only",
    hidden: false,
};
const SWITCH: OptionSpec = OptionSpec {
    name: "direct",
    value: OptionValue::Switch,
    help: "O_DIRECT",
    hidden: false,
};
const NUMBER: OptionSpec = OptionSpec {
    name: "poll",
    value: OptionValue::Number {
        min: 0,
        max: 1000,
        unit: Some("µs"),
    },
    help: "poll window",
    hidden: false,
};
const TEXT: OptionSpec = OptionSpec {
    name: "id",
    value: OptionValue::Text {
        placeholder: "STR",
        min_len: 1,
        max_len: 20,
    },
    help: "serial",
    hidden: false,
};
const CHOICE: OptionSpec = OptionSpec {
    name: "fault",
    value: OptionValue::Choice(&["exit", "flood", "silent"]),
    help: "misbehave",
    hidden: true,
};
const OPTIONS: &[&OptionSpec] = &[&FLAG, &SWITCH, &NUMBER, &TEXT, &CHOICE];
const PATH: ValueSpec = ValueSpec::Required {
    placeholder: "PATH",
    noun: "a path",
};

fn parse(text: &str) -> Result<Spec<'_>, SpecError> {
    Spec::parse(text, "disk", PATH, OPTIONS)
}

fn msg(text: &str) -> String {
    let spec = match parse(text) {
        Ok(spec) => spec,
        Err(e) => return e.to_string(),
    };
    let read = || -> Result<(), SpecError> {
        spec.switch(&FLAG)?;
        spec.switch(&SWITCH)?;
        spec.number(&NUMBER)?;
        spec.string(&TEXT)?;
        spec.choice(&CHOICE)?;
        Ok(())
    };
    read().map_or_else(|e| e.to_string(), |()| "ok".to_string())
}

#[test]
fn values_are_read_typed() {
    let spec = parse("disk=/a/b,ro,direct=off,poll=0,id=x y,fault=flood").unwrap();
    assert_eq!(spec.value(), Some("/a/b"));
    assert_eq!(
        spec.as_str(),
        "disk=/a/b,ro,direct=off,poll=0,id=x y,fault=flood"
    );
    assert_eq!(spec.switch(&FLAG), Ok(Some(true)));
    assert_eq!(spec.switch(&SWITCH), Ok(Some(false)));
    assert_eq!(spec.number(&NUMBER), Ok(Some(0)));
    assert_eq!(spec.string(&TEXT), Ok(Some("x y")));
    assert_eq!(spec.choice(&CHOICE), Ok(Some("flood")));
    let spec = parse("disk=d,ro=off,poll=1000").unwrap();
    assert_eq!(spec.switch(&FLAG), Ok(Some(false)));
    assert_eq!(spec.number(&NUMBER), Ok(Some(1000)));
    assert_eq!(spec.switch(&SWITCH), Ok(None), "not given");
    assert_eq!(spec.string(&TEXT), Ok(None));
}

#[test]
fn every_error_names_the_spec_and_what_is_accepted() {
    assert_eq!(Spec::kind_name("disk=x,ro"), Ok("disk"));
    assert_eq!(
        Spec::kind_name(",ro").unwrap_err().to_string(),
        "--device ',ro': expected KIND[=PATH][,OPTION=VALUE...]"
    );
    assert_eq!(msg("disk"), "--device 'disk': disk needs a path: disk=PATH");
    assert_eq!(
        msg("disk=,ro"),
        "--device 'disk=,ro': disk needs a path: disk=PATH"
    );
    assert_eq!(
        msg("disk=d,cache=none"),
        "--device 'disk=d,cache=none': unknown option 'cache' for disk \
         (supported: ro, direct, poll, id)"
    );
    assert_eq!(
        msg("disk=d,"),
        "--device 'disk=d,': unknown option '' for disk (supported: ro, direct, poll, id)"
    );
    assert_eq!(
        msg("disk=d,ro,ro=off"),
        "--device 'disk=d,ro,ro=off': option 'ro' given twice"
    );
    assert_eq!(
        msg("disk=d,ro=yes"),
        "--device 'disk=d,ro=yes': option 'ro=yes' needs no value, =on or =off"
    );
    assert_eq!(
        msg("disk=d,direct"),
        "--device 'disk=d,direct': option 'direct' needs =on or =off"
    );
    for bad in [
        "poll=1001",
        "poll=x",
        "poll",
        "poll=",
        "poll=-1",
        "poll=+2",
        "poll= 2",
    ] {
        assert_eq!(
            msg(&format!("disk=d,{bad}")),
            format!("--device 'disk=d,{bad}': option '{bad}' needs =N (µs) with N from 0 to 1000")
        );
    }
    assert_eq!(
        msg("disk=d,poll=99999999999999999999999"),
        "--device 'disk=d,poll=99999999999999999999999': option 'poll=99999999999999999999999' \
         needs =N (µs) with N from 0 to 1000"
    );
    for bad in ["id=", "id", "id=123456789012345678901"] {
        assert_eq!(
            msg(&format!("disk=d,{bad}")),
            format!("--device 'disk=d,{bad}': option '{bad}' needs =STR of 1 to 20 bytes")
        );
    }
    assert_eq!(
        msg("disk=d,fault=crash"),
        "--device 'disk=d,fault=crash': option 'fault=crash' needs =exit, =flood or =silent"
    );
}

#[test]
fn kinds_without_a_value_and_with_an_optional_one() {
    let none = |t| Spec::parse(t, "rng", ValueSpec::None, &[]).map(|s| s.value());
    assert_eq!(none("rng"), Ok(None));
    assert_eq!(
        none("rng=/dev/random").unwrap_err().to_string(),
        "--device 'rng=/dev/random': rng takes no path"
    );
    assert_eq!(
        none("rng=").unwrap_err().to_string(),
        "--device 'rng=': rng takes no path"
    );
    let optional = ValueSpec::Optional {
        placeholder: "SOCKET",
    };
    let opt = |t| Spec::parse(t, "wl", optional, &[]).map(|s| s.value());
    assert_eq!(opt("wl"), Ok(None));
    assert_eq!(opt("wl=/run/w"), Ok(Some("/run/w")));
    assert!(matches!(opt("wl="), Err(SpecError::MissingValue { .. })));
}

#[test]
fn usage_and_ranges_come_from_the_declaration() {
    assert_eq!(
        usage("disk", PATH, OPTIONS),
        "disk=PATH[,ro][,direct=on|off][,poll=N][,id=STR]"
    );
    assert_eq!(
        usage("wl", ValueSpec::Optional { placeholder: "S" }, &[]),
        "wl[=S]"
    );
    assert!(NUMBER.accepts_number(1000) && !NUMBER.accepts_number(1001));
    assert!(
        TEXT.accepts_text("a") && !TEXT.accepts_text("") && !TEXT.accepts_text(&"x".repeat(21))
    );
    assert!(!FLAG.accepts_number(0) && !FLAG.accepts_text("a"));
    assert_eq!(CHOICE.usage(), "fault=exit|flood|silent");
}
