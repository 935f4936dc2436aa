//! Replays the checked-in `wl_command` fuzz corpus through the fuzz target's own function, so
//! the corpus (and the properties it guards) cannot rot between fuzzing runs.
//!
//! After changing the seeds, regenerate the seed files with
//! `SVMM_REGENERATE_CORPUS=1 cargo test -p devices --test wl_fuzz_corpus seed_files_are_current`.

use std::fs;
use std::path::{Path, PathBuf};

use devices::wl::{command, fuzzing};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/wl_command")
}

#[test]
fn corpus_replays_cleanly() {
    let mut replayed = 0;
    for entry in fs::read_dir(corpus_dir()).expect("corpus directory exists") {
        let data = fs::read(entry.unwrap().path()).unwrap();
        fuzzing::parse_any(&data);
        replayed += 1;
    }
    assert!(
        replayed >= fuzzing::seeds().len(),
        "corpus is missing files"
    );
}

#[test]
fn seed_files_are_current() {
    if std::env::var_os("SVMM_REGENERATE_CORPUS").is_some() {
        fs::create_dir_all(corpus_dir()).unwrap();
        for (name, bytes) in fuzzing::seeds() {
            fs::write(corpus_dir().join(name), bytes).unwrap();
        }
    }
    for (name, bytes) in fuzzing::seeds() {
        let path = corpus_dir().join(&name);
        let on_disk = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            on_disk, bytes,
            "{name} is stale: regenerate the seed corpus"
        );
    }
}

#[test]
fn valid_seeds_parse_and_the_others_do_not() {
    for (name, bytes) in fuzzing::seeds() {
        let ok = command::parse(&bytes[1..], bytes[0] & 1 != 0).is_ok();
        assert_eq!(ok, name.starts_with("valid"), "{name}");
    }
}
