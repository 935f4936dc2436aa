//! A thin wrapper over libtest-mimic for the `harness = false` test binaries.
//!
//! Trials that cannot run on this host are added with a reason; the runner lists them with their
//! reasons before anything runs, and libtest-mimic reports each as `ignored, <reason>`, so a skip is
//! never mistaken for a pass. (No `#[ignore]` attributes anywhere.) Each trial's wall time is
//! printed to stderr when it ends.

use std::time::Instant;

pub use libtest_mimic::Failed;
use libtest_mimic::{Arguments, Completion, Trial};

/// The result type of a trial body; `?` turns any `Display` error (e.g. [`crate::VmError`]) into a
/// failure with that message, and panics inside the body fail the trial too.
pub type TrialResult = Result<(), Failed>;

/// The trials of one test binary.
pub struct Suite {
    binary: &'static str,
    trials: Vec<Trial>,
    ignored: Vec<(String, String)>,
    sequential: bool,
}

impl Suite {
    /// An empty suite for the test binary `binary` (used as the prefix of its messages).
    pub fn new(binary: &'static str) -> Suite {
        Suite {
            binary,
            trials: Vec::new(),
            ignored: Vec::new(),
            sequential: false,
        }
    }

    /// Runs trials one at a time unless `--test-threads` says otherwise (for heavy guests that
    /// share a VM boot, or would compete for this host's few cores).
    pub fn sequential(mut self) -> Suite {
        self.sequential = true;
        self
    }

    /// Adds a trial that always runs.
    pub fn test<F>(self, name: &str, body: F) -> Suite
    where
        F: FnOnce() -> TrialResult + Send + 'static,
    {
        self.test_unless(name, None, body)
    }

    /// Adds a trial that runs unless `skip` gives a reason not to, in which case it is reported as
    /// ignored with that reason (listed at startup, and on the trial's result line).
    pub fn test_unless<F>(mut self, name: &str, skip: Option<String>, body: F) -> Suite
    where
        F: FnOnce() -> TrialResult + Send + 'static,
    {
        let trial = match skip {
            Some(reason) => {
                self.ignored.push((name.to_string(), reason.clone()));
                Trial::ignorable_test(name, move || Ok(Completion::ignored_with(reason)))
            }
            None => {
                let label = format!("{}::{name}", self.binary);
                Trial::test(name, move || {
                    let start = Instant::now();
                    let result = body();
                    eprintln!(
                        "svmm-tests: {label} finished in {:.2} s",
                        start.elapsed().as_secs_f64()
                    );
                    result
                })
            }
        };
        self.trials.push(trial);
        self
    }

    /// Parses the command line, announces the ignored trials, runs the rest, and exits with
    /// libtest's conventions (cargo then prints its usual summary).
    pub fn run(self) -> ! {
        let mut args = Arguments::from_args();
        if self.sequential && args.test_threads.is_none() {
            args.test_threads = Some(1);
        }
        for (name, reason) in &self.ignored {
            eprintln!("svmm-tests: {}: ignoring {name}: {reason}", self.binary);
        }
        libtest_mimic::run(&args, self.trials).exit()
    }
}
