//! The BPF programs `build.rs` compiled, and turning them back into [`BpfProgram`]s.
//!
//! `build.rs` writes each instruction (`struct sock_filter`) as one `u64`:
//! `code | jt << 16 | jf << 24 | k << 32`.

use seccompiler::{sock_filter, BpfProgram};

use crate::Mode;

/// One compiled profile.
pub(crate) struct Profile {
    /// File stem of `profiles/<name>.json`.
    pub name: &'static str,
    /// The merged JSON it was compiled from.
    pub source: &'static str,
    /// Compiled with `mismatch_action` "trap".
    pub trap: &'static [u64],
    /// Compiled with `mismatch_action` "log".
    pub log: &'static [u64],
}

include!(concat!(env!("OUT_DIR"), "/profiles.rs"));

/// The names of [`PROFILES`], in the same (sorted) order.
pub(crate) const NAMES: &[&str] = &names();

const fn names() -> [&'static str; PROFILES.len()] {
    let mut names = [""; PROFILES.len()];
    let mut i = 0;
    while i < PROFILES.len() {
        names[i] = PROFILES[i].name;
        i += 1;
    }
    names
}

/// The profile called `name`.
pub(crate) fn find(name: &str) -> Option<&'static Profile> {
    PROFILES.iter().find(|p| p.name == name)
}

impl Profile {
    /// A fresh copy of the program for `mode`.
    pub fn program(&self, mode: Mode) -> BpfProgram {
        let words = match mode {
            Mode::Trap => self.trap,
            Mode::Log => self.log,
        };
        words.iter().map(|&w| decode(w)).collect()
    }
}

/// Inverse of `build.rs`'s encoding; the truncating casts take exactly the packed fields.
fn decode(word: u64) -> sock_filter {
    sock_filter {
        code: word as u16,
        jt: (word >> 16) as u8,
        jf: (word >> 24) as u8,
        k: (word >> 32) as u32,
    }
}
