//! The erased interface, with the two kinds of this crate.

use super::*;
use crate::blk::BlkKind;
use crate::rng::RngKind;

fn parse(kind: &dyn DeviceKind, text: &str) -> DeviceConfig {
    let spec = Spec::parse(text, kind.name(), kind.value(), kind.options()).unwrap();
    kind.parse(&spec).unwrap()
}

#[test]
fn a_config_answers_for_its_own_kind() {
    let rng = parse(&RngKind, "rng");
    let blk = parse(&BlkKind, "blk=/d.img,queues=2");
    assert_eq!((rng.kind(), blk.kind()), ("rng", "blk"));
    assert_eq!((rng.queues(), blk.queues()), (1, 2));
    assert_eq!(
        (rng.seccomp_profile(), blk.seccomp_profile()),
        ("rng", "blk")
    );
    assert_ne!(rng, blk);
    assert_eq!(blk, parse(&BlkKind, "blk=/d.img,queues=2,poll=32"));
    assert_ne!(blk, parse(&BlkKind, "blk=/d.img,queues=3"));
    assert!(format!("{blk:?}").starts_with("blk BlkConfig {"), "{blk:?}");
    // The encoding of one kind is not a config of another.
    let bytes = blk.encode().unwrap();
    assert_eq!(BlkKind.decode(&bytes).unwrap(), blk);
    assert!(matches!(
        RngKind.decode(&bytes),
        Err(ConfigError::Decode(_))
    ));
}

#[test]
fn the_registry_view_of_a_kind() {
    let kinds: [&dyn DeviceKind; 2] = [&RngKind, &BlkKind];
    assert_eq!(kinds[0].usage(), "rng[,source=drbg|urandom]");
    assert_eq!(
        kinds[1].usage(),
        "blk=PATH[,ro][,id=STR][,direct=on|off][,queues=N][,poll=N][,merge=on|off][,engine=io_uring|sync]"
    );
    assert_eq!(kinds[1].device_type(), crate::VIRTIO_ID_BLOCK);
    assert_eq!(kinds[0].max_queue_size(), crate::rng::MAX_QUEUE_SIZE);
    assert_eq!(format!("{:?}", kinds[1]), "DeviceKind(blk)");
}

#[test]
fn resource_fds_are_taken_once() {
    let null = std::fs::File::open("/dev/null").unwrap();
    let mut fds = ResourceFds::new(vec![None, Some(null.into())]);
    assert_eq!(fds.len(), 2);
    assert!(matches!(fds.take(0), Err(BuildError::MissingResource(0))));
    assert!(fds.take_file(1).is_ok());
    assert!(matches!(fds.take(1), Err(BuildError::MissingResource(1))));
    assert!(matches!(fds.take(7), Err(BuildError::MissingResource(7))));
}
