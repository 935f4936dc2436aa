//! How the device side reports: an error and its sources as one line ([`one_line`]), and a
//! worker's own message on stderr ([`say`]). svmm's own reports use [`one_line`] too, and
//! [`line`] for the lines people and tests read while workers may write to the same stderr.

/// Formats an error and its sources as one line: `outer: inner: innermost`.
pub fn one_line(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line.replace('\n', " ")
}

/// Prints `svmm worker: MESSAGE` on stderr if it can. Never panics: the worker's stderr may be
/// /dev/null, gone, or a file its `RLIMIT_FSIZE` of 0 refuses to grow.
pub fn say(message: &str) {
    line(&format!("svmm worker: {message}"));
}

/// Prints `text` and a newline on stderr in one `write` (as far as the kernel takes it), so
/// that the lines of svmm and of its workers, which share a stderr, never mix within a line
/// (`eprintln!` writes its pieces one by one). Errors are ignored, as `eprintln!` would panic
/// on them.
pub fn line(text: &str) {
    use std::io::Write;
    let mut bytes = Vec::with_capacity(text.len() + 1);
    bytes.extend_from_slice(text.as_bytes());
    bytes.push(b'\n');
    let _ = std::io::stderr().lock().write_all(&bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn sources_are_chained_once() {
        let err = Outer(std::io::Error::other("inner\ntwo lines"));
        assert_eq!(one_line(&err), "outer: inner two lines");
    }
}
