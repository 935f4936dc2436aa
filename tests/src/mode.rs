//! The two ways svmm runs a device, for trials that run in both: in a sandboxed worker process
//! (the default) or on a thread of svmm (`sandbox=off`).

/// Where a device runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A confined worker process.
    Sandboxed,
    /// A thread of svmm.
    InProcess,
}

impl Mode {
    /// Both, sandboxed first.
    pub const BOTH: [Mode; 2] = [Mode::Sandboxed, Mode::InProcess];

    /// What the mode adds to a `--device` spec.
    pub fn option(self) -> &'static str {
        match self {
            Mode::Sandboxed => "",
            Mode::InProcess => ",sandbox=off",
        }
    }

    /// The mode as svmm's statistics line names it (`sandboxed`, `in-process`).
    pub fn name(self) -> &'static str {
        match self {
            Mode::Sandboxed => "sandboxed",
            Mode::InProcess => "in-process",
        }
    }

    /// `test_sandboxed`, `test_in_process`: a trial name for `test` in this mode.
    pub fn trial(self, test: &str) -> String {
        format!("{test}_{}", self.name().replace('-', "_"))
    }
}
