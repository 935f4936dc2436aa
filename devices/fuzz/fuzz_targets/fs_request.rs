//! Feeds arbitrary guest memory and queue state to virtio-fs's FUSE request parser. The logic
//! (input layout, properties) lives in `devices::fs::fuzzing::parse_any`, which
//! `devices/tests/fuzz_corpus.rs` also replays the corpus through.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    devices::fs::fuzzing::parse_any(data);
});
