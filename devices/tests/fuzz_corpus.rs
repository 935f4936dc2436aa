//! Replays the checked-in `blk_request`, `fs_request` and `net_tx` fuzz corpora through the
//! fuzz targets' own functions, so the corpora (and the properties they guard) cannot rot
//! between fuzzing runs.
//!
//! After changing the seeds, regenerate the seed files with
//! `SVMM_REGENERATE_CORPUS=1 cargo test -p devices --test fuzz_corpus seed_files_are_current`.

use std::fs;
use std::path::{Path, PathBuf};

use devices::blk::fuzzing;

/// The fuzz targets: corpus directory name, the target's function, its seeds.
type Target = (&'static str, fn(&[u8]), fn() -> Vec<(String, Vec<u8>)>);
const TARGETS: [Target; 3] = [
    ("blk_request", fuzzing::parse_any, fuzzing::seeds),
    (
        "fs_request",
        devices::fs::fuzzing::parse_any,
        devices::fs::fuzzing::seeds,
    ),
    (
        "net_tx",
        devices::net::fuzzing::parse_any,
        devices::net::fuzzing::seeds,
    ),
];

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

#[test]
fn corpus_replays_cleanly() {
    for (target, parse_any, seeds) in TARGETS {
        let mut replayed = 0;
        for entry in fs::read_dir(corpus_dir(target)).expect("corpus directory exists") {
            let path = entry.unwrap().path();
            let data = fs::read(&path).unwrap();
            parse_any(&data);
            replayed += 1;
        }
        assert!(
            replayed >= seeds().len(),
            "{target}: corpus is missing files"
        );
    }
}

#[test]
fn seed_files_are_current() {
    for (target, _, seeds) in TARGETS {
        let dir = corpus_dir(target);
        if std::env::var_os("SVMM_REGENERATE_CORPUS").is_some() {
            fs::create_dir_all(&dir).unwrap();
            for (name, bytes) in seeds() {
                fs::write(dir.join(name), bytes).unwrap();
            }
        }
        for (name, bytes) in seeds() {
            let path = dir.join(&name);
            let on_disk = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(
                on_disk, bytes,
                "{target}/{name} is stale: regenerate the seed corpus"
            );
        }
    }
}

#[test]
fn valid_fs_seeds_parse_and_the_others_do_not() {
    use devices::fs::fuzzing::{seeds, MEM_SIZE, PREFIX};
    use devices::fs::request::parse;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
    for (name, bytes) in seeds() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        mem.write_slice(&bytes[PREFIX..], GuestAddress(0)).unwrap();
        let source = devices::chain::ChainSource {
            desc_table: GuestAddress(0),
            queue_size: 16,
            indirect: true,
        };
        let ok = parse(&mem, &source, 0).is_ok();
        assert_eq!(ok, name.starts_with("valid"), "{name}");
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

#[test]
fn valid_net_seeds_parse_and_the_others_do_not() {
    use devices::chain::ChainSource;
    use devices::net::fuzzing::{seeds, MEM_SIZE, PREFIX};
    use devices::net::header::TxLimits;
    use devices::net::tx::{parse, TX_BUF};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
    let mut buf = vec![0u8; TX_BUF];
    for (name, bytes) in seeds() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        mem.write_slice(&bytes[PREFIX..], GuestAddress(0)).unwrap();
        let flags = bytes[4];
        let source = ChainSource {
            desc_table: GuestAddress(0),
            queue_size: 16,
            indirect: flags & 1 != 0,
        };
        let limits = TxLimits {
            csum: flags & 2 != 0,
            tso4: flags & 4 != 0,
            tso6: flags & 8 != 0,
            ecn: flags & 16 != 0,
            max_plain: if flags & 32 != 0 { 1518 } else { 65_550 },
        };
        let ok = parse(&mem, &source, 0, &limits, &mut buf).is_ok();
        assert_eq!(ok, name.starts_with("valid"), "{name}");
    }
}
