//! Feeds arbitrary guest memory, queue state and negotiated offloads to virtio-net's transmit
//! copy-in parser. The logic (input layout, properties) lives in
//! `devices::net::fuzzing::parse_any`, which `devices/tests/fuzz_corpus.rs` also replays the
//! corpus through.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    devices::net::fuzzing::parse_any(data);
});
