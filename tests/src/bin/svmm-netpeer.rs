//! The net tests' peer, run inside a network namespace the test made: see `tests::netpeer`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = tests::netpeer::Options::parse(&args).and_then(|o| tests::netpeer::run(&o));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("svmm-netpeer: {e}");
            ExitCode::from(2)
        }
    }
}
