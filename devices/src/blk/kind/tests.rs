//! `--device blk=...` as the kind declares it: grammar, messages, config encoding, the image
//! as a resource, its check, the sandbox and the build.

use super::*;
use crate::kind::{DeviceConfig, DeviceKind};

fn parse(text: &str) -> Result<DeviceConfig, SpecError> {
    let spec = Spec::parse(text, "blk", BlkKind::VALUE, BlkKind::OPTIONS)?;
    BlkKind.parse(&spec)
}

/// The typed config of `text`, read back through the generic encoding.
fn config(text: &str) -> BlkConfig {
    let bytes = parse(text).unwrap().encode().unwrap();
    ipc::decode(&bytes).unwrap()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("svmm-blk-kind-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn defaults_and_options() {
    let want = BlkConfig {
        path: "/images/disk.img".into(),
        options: BlkOptions {
            read_only: false,
            id: "disk.img".into(),
            direct: false,
            queues: 1,
            poll_us: DEFAULT_POLL_US,
            merge: true,
            engine: EngineKind::IoUring,
        },
    };
    assert_eq!(config("blk=/images/disk.img"), want);
    assert_eq!(
        config("blk=disk.img,ro,id=root,direct=on,queues=4,poll=64,merge=off,engine=sync"),
        BlkConfig {
            path: "disk.img".into(),
            options: BlkOptions {
                read_only: true,
                id: "root".into(),
                direct: true,
                queues: 4,
                poll_us: 64,
                merge: false,
                engine: EngineKind::Sync,
            },
        }
    );
    assert_eq!(config("blk=d,poll=0").options.poll_us, 0);
    assert!(config("blk=d,merge=on").options.merge);
    assert_eq!(
        config("blk=d,engine=io_uring").options.engine,
        EngineKind::IoUring
    );
    assert_eq!(config("blk=d,poll=1000").options.poll_us, 1000);
    assert!(config("blk=d,ro=on").options.read_only);
    assert!(!config("blk=d,ro=off").options.read_only);
    assert_eq!(config("blk=d,queues=16").options.queues, 16);
    assert_eq!(config("blk=d,id=12345678901234567890").options.id.len(), 20);
    assert_eq!(parse("blk=d,queues=3").unwrap().queues(), 3);
}

#[test]
fn default_id_is_the_file_name_cut_to_20_bytes() {
    assert_eq!(default_id(Path::new("/a/b/root.ext4")), "root.ext4");
    assert_eq!(
        default_id(Path::new("/x/a-very-long-image-name.raw")),
        "a-very-long-image-na"
    );
    // Cut on a character boundary: 19 ASCII bytes and a 2-byte character give 19 bytes.
    assert_eq!(
        default_id(Path::new("abcdefghijklmnopqrsé")),
        "abcdefghijklmnopqrs"
    );
    assert_eq!(default_id(Path::new("/")), "");
}

#[test]
fn errors_name_the_problem() {
    let msg = |s: &str| parse(s).unwrap_err().to_string();
    assert_eq!(msg("blk"), "--device 'blk': blk needs a path: blk=PATH");
    assert_eq!(
        msg("blk=,ro"),
        "--device 'blk=,ro': blk needs a path: blk=PATH"
    );
    assert_eq!(
        msg("blk=d,id=123456789012345678901"),
        "--device 'blk=d,id=123456789012345678901': option 'id=123456789012345678901' \
         needs =STR of 1 to 20 bytes"
    );
    assert_eq!(
        msg("blk=d,id="),
        "--device 'blk=d,id=': option 'id=' needs =STR of 1 to 20 bytes"
    );
    for bad in [
        "queues=0",
        "queues=17",
        "queues=x",
        "queues",
        "queues=-1",
        "queues=+2",
    ] {
        assert_eq!(
            msg(&format!("blk=d,{bad}")),
            format!("--device 'blk=d,{bad}': option '{bad}' needs =N with N from 1 to 16")
        );
    }
    for bad in [
        "poll=1001",
        "poll=x",
        "poll",
        "poll=",
        "poll=-1",
        "poll=+2",
        "poll=4294967296",
    ] {
        assert_eq!(
            msg(&format!("blk=d,{bad}")),
            format!("--device 'blk=d,{bad}': option '{bad}' needs =N (µs) with N from 0 to 1000")
        );
    }
    assert_eq!(
        msg("blk=d,ro=yes"),
        "--device 'blk=d,ro=yes': option 'ro=yes' needs no value, =on or =off"
    );
    assert_eq!(
        msg("blk=d,direct"),
        "--device 'blk=d,direct': option 'direct' needs =on or =off"
    );
}

#[test]
fn a_decoded_config_is_checked_like_the_command_line() {
    let good = config("blk=d,queues=2");
    for (options, why) in [
        (
            BlkOptions {
                queues: 0,
                ..good.options.clone()
            },
            "queues=0 needs =N with N from 1 to 16",
        ),
        (
            BlkOptions {
                poll_us: 1001,
                ..good.options.clone()
            },
            "poll=1001 needs =N (µs) with N from 0 to 1000",
        ),
        (
            BlkOptions {
                id: "x".repeat(21),
                ..good.options.clone()
            },
            "needs =STR of 1 to 20 bytes",
        ),
    ] {
        let bytes = ipc::encode(&BlkConfig {
            path: good.path.clone(),
            options,
        })
        .unwrap();
        let err = BlkKind.decode(&bytes).unwrap_err().to_string();
        assert!(err.contains(why), "{err}");
    }
    assert!(BlkKind.decode(&[1, 2, 3]).is_err());
}

#[test]
fn the_image_is_the_one_resource_opened_as_the_options_say() {
    let describe = |text: &str| {
        let resources = parse(text).unwrap().resources();
        assert_eq!(resources.len(), 1);
        assert_eq!(resources[0].origin(), Origin::User);
        resources[0].describe()
    };
    assert_eq!(
        describe("blk=/i/d.img"),
        "/i/d.img (read-write, flock LOCK_EX: no other svmm may open it)"
    );
    assert_eq!(
        describe("blk=/i/d.img,ro,direct=on"),
        "/i/d.img (read-only, O_DIRECT, flock LOCK_SH: other readers may share it, no writer)"
    );
}

#[test]
fn the_check_names_the_image_and_what_is_wrong() {
    let dir = temp_dir("check");
    let small = dir.join("small.img");
    std::fs::write(&small, [0u8; 1000]).unwrap();
    let config = parse(&format!("blk={},ro", small.display())).unwrap();
    let opened = broker::resources::open(&config.resources()).unwrap();
    let err = config.check(&opened).unwrap_err();
    let line = format!("{err}: {}", err.source);
    assert_eq!(
        line,
        format!(
            "{}: image size 1000 bytes is not a multiple of 512",
            small.display()
        )
    );
    let good = dir.join("good.img");
    std::fs::write(&good, [0u8; 4096]).unwrap();
    let config = parse(&format!("blk={}", good.display())).unwrap();
    let opened = broker::resources::open(&config.resources()).unwrap();
    config.check(&opened).unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn sandbox_needs_follow_the_options() {
    let rw = parse("blk=d").unwrap().sandbox();
    assert_eq!(rw.nproc, SANDBOX_NPROC);
    assert_eq!(rw.file_size, FileSize::SizeOf(0));
    assert_eq!(rw.extra_fds, broker::NOFILE_MARGIN);
    assert!(rw.landlock.is_empty());
    assert!(rw.before_filter[0].starts_with("an io_uring instance"));
    let ro = parse("blk=d,ro").unwrap().sandbox();
    assert_eq!(
        ro.file_size,
        FileSize::Nothing,
        "a read-only device writes nothing"
    );
    // No ring: no io-wq threads to allow, nothing set up before the filter.
    let sync = parse("blk=d,engine=sync").unwrap().sandbox();
    assert_eq!((sync.nproc, sync.before_filter.len()), (0, 0));
}

#[test]
fn builds_and_prepares_its_engine() {
    let dir = temp_dir("build");
    let spec = <BlkKind as Kind>::test_spec(&dir).unwrap();
    let config = parse(&format!("{spec},id=x")).unwrap();
    let opened = broker::resources::open(&config.resources()).unwrap();
    let fds = opened.into_iter().map(|o| o.fd).collect();
    let mut built = config.build(ResourceFds::new(fds)).unwrap();
    assert_eq!(built.backend().device_type(), crate::VIRTIO_ID_BLOCK);
    // io_uring may be refused on some hosts: then a warning, never an error.
    if let Some(warning) = built.prepare() {
        assert!(warning.contains("one request at a time"), "{warning}");
    }
    assert_eq!(built.into_backend().num_queues(), 1);
    // engine=sync: no ring, so nothing to warn about. (Another image: the first one stays
    // locked until the kernel has torn its ring down.)
    let sync_dir = temp_dir("build-sync");
    let sync_spec = <BlkKind as Kind>::test_spec(&sync_dir).unwrap();
    let sync = parse(&format!("{sync_spec},engine=sync")).unwrap();
    let opened = broker::resources::open(&sync.resources()).unwrap();
    let fds = opened.into_iter().map(|o| o.fd).collect();
    let mut built = sync.build(ResourceFds::new(fds)).unwrap();
    assert_eq!(built.prepare(), None);
    assert!(matches!(
        config.build(ResourceFds::default()),
        Err(BuildError::MissingResource(0))
    ));
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(sync_dir);
}
