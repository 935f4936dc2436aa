//! Replays the checked-in fuzz corpus through the fuzz target's own function, so the corpus
//! (and the properties it guards) cannot rot between fuzzing runs.
//!
//! After changing the messages, regenerate the seed files with
//! `SVMM_REGENERATE_CORPUS=1 cargo test -p ipc --test fuzz_corpus seed_files_are_current`.

use std::fs;
use std::path::{Path, PathBuf};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode")
}

#[test]
fn corpus_replays_cleanly() {
    let mut replayed = 0;
    for entry in fs::read_dir(corpus_dir()).expect("corpus directory exists") {
        let path = entry.unwrap().path();
        let data = fs::read(&path).unwrap();
        ipc::fuzzing::decode_any(&data);
        replayed += 1;
    }
    assert!(
        replayed >= ipc::fuzzing::seeds().len(),
        "corpus is missing files"
    );
}

#[test]
fn seed_files_are_current() {
    if std::env::var_os("SVMM_REGENERATE_CORPUS").is_some() {
        fs::create_dir_all(corpus_dir()).unwrap();
        for (name, bytes) in ipc::fuzzing::seeds() {
            fs::write(corpus_dir().join(name), bytes).unwrap();
        }
    }
    for (name, bytes) in ipc::fuzzing::seeds() {
        let path = corpus_dir().join(&name);
        let on_disk = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            on_disk, bytes,
            "{name} is stale: regenerate the seed corpus"
        );
    }
}

#[test]
fn valid_seeds_decode() {
    for (name, bytes) in ipc::fuzzing::seeds() {
        let decodes = ipc::decode::<ipc::WorkerToVmm>(&bytes).is_ok()
            || ipc::decode::<ipc::VmmToWorker>(&bytes).is_ok();
        assert_eq!(decodes, name.starts_with("valid"), "{name}");
    }
}
