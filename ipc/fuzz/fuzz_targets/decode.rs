//! Decodes arbitrary bytes as both message directions; anything that decodes is validated
//! and must re-encode to the same bytes. The logic lives in `ipc::fuzzing::decode_any`, which
//! `ipc/tests/fuzz_corpus.rs` also replays the corpus through.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ipc::fuzzing::decode_any(data);
});
