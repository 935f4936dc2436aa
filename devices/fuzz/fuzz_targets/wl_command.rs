//! Feeds arbitrary bytes to virtio-wl's command parser, as the device's private copy of an
//! out-queue command. The logic (input layout, properties) lives in
//! `devices::wl::fuzzing::parse_any`, which `devices/tests/wl_fuzz_corpus.rs` also replays the
//! corpus through.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    devices::wl::fuzzing::parse_any(data);
});
