//! Replays the checked-in `blk_request` fuzz corpus through the fuzz target's own function, so
//! the corpus (and the properties it guards) cannot rot between fuzzing runs.
//!
//! After changing the seeds, regenerate the seed files with
//! `SVMM_REGENERATE_CORPUS=1 cargo test -p devices --test fuzz_corpus seed_files_are_current`.

use std::fs;
use std::path::{Path, PathBuf};

use devices::blk::fuzzing;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/blk_request")
}

#[test]
fn corpus_replays_cleanly() {
    let mut replayed = 0;
    for entry in fs::read_dir(corpus_dir()).expect("corpus directory exists") {
        let path = entry.unwrap().path();
        let data = fs::read(&path).unwrap();
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
    use devices::blk::request::{parse, ChainSource, DiskLimits};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
    for (name, bytes) in fuzzing::seeds() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), fuzzing::MEM_SIZE)]).unwrap();
        mem.write_slice(&bytes[fuzzing::PREFIX..], GuestAddress(0))
            .unwrap();
        let source = ChainSource {
            desc_table: GuestAddress(0),
            queue_size: 16,
            indirect: true,
        };
        let disk = DiskLimits {
            capacity: 64,
            read_only: false,
            discard: true,
            write_zeroes: true,
        };
        let ok = parse(&mem, &source, 0, &disk).is_ok();
        assert_eq!(ok, name.starts_with("valid"), "{name}");
    }
}
