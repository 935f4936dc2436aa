//! Reading a `svmm --print-sandbox` report: its sections, a worker's command line and the
//! system calls a seccomp section allows. One reader for every test that checks a report.

/// The part of `report` from the line starting with `heading` (e.g. `== rng#0: sandboxed`) to
/// the next `== ` heading; empty if there is no such line.
pub fn section<'a>(report: &'a str, heading: &str) -> &'a str {
    let Some(start) = report.find(heading) else {
        return "";
    };
    let rest = &report[start..];
    let end = rest[heading.len()..]
        .find("\n== ")
        .map_or(rest.len(), |i| heading.len() + i + 1);
    &rest[..end]
}

/// The system calls the first seccomp section of `section` lists as allowed: the first word of
/// each rule line (4 spaces of indent; the reasons below them are indented further).
pub fn allowed_syscalls(section: &str) -> Vec<&str> {
    section
        .lines()
        .skip_while(|l| !l.starts_with("seccomp: "))
        .skip(2)
        .take_while(|l| l.starts_with("    "))
        .filter(|l| !l.starts_with("     "))
        .filter_map(|l| l.split_whitespace().next())
        .collect()
}

/// The worker's command line in `section` (after `command line: `).
pub fn command_line(section: &str) -> Option<&str> {
    section
        .lines()
        .find_map(|l| l.strip_prefix("command line: "))
}

/// The argument of `command_line` that starts with `prefix` (`--config=`).
pub fn argument<'a>(command_line: &'a str, prefix: &str) -> Option<&'a str> {
    command_line
        .split_whitespace()
        .find(|w| w.starts_with(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "svmm sandbox report: 1 device(s)\n\
        \n\
        == rng#0: sandboxed worker process ==\n\
        command line: svmm __worker rng --seccomp=trap --config=\n\
        seccomp: profile \"rng\" in mode trap: ...\n\
        \x20 allowed system calls (2 calls, 2 rules; ...):\n\
        \x20   read                 \n\
        \x20                        why: reads\n\
        \x20   write                \n\
        \n\
        == svmm itself: its threads ==\n\
        seccomp: profile \"vmm\" in mode trap: ...\n\
        \x20 allowed system calls (1 calls, 1 rules; ...):\n\
        \x20   ioctl                only if ...\n";

    #[test]
    fn sections_calls_and_arguments() {
        let rng = section(REPORT, "== rng#0");
        assert!(rng.starts_with("== rng#0") && !rng.contains("svmm itself"));
        assert_eq!(allowed_syscalls(rng), ["read", "write"]);
        assert_eq!(
            allowed_syscalls(section(REPORT, "== svmm itself")),
            ["ioctl"]
        );
        let cmd = command_line(rng).unwrap();
        assert_eq!(argument(cmd, "--config="), Some("--config="));
        assert_eq!(section(REPORT, "== blk#0"), "");
    }
}
