//! `--device net,...` as the kind declares it: grammar, messages, config encoding, the
//! endpoint as a resource, the check of a handed-in fd, the sandbox and the build.

use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::net::UnixStream;

use super::*;
use crate::kind::{DeviceConfig, DeviceKind};
use crate::net::features as f;

fn parse(text: &str) -> Result<DeviceConfig, SpecError> {
    let spec = Spec::parse(text, "net", NetKind::VALUE, NetKind::OPTIONS)?;
    NetKind.parse(&spec)
}

/// The typed config of `text`, read back through the generic encoding.
fn config(text: &str) -> NetKindConfig {
    let bytes = parse(text).unwrap().encode().unwrap();
    ipc::decode(&bytes).unwrap()
}

fn error(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn a_tap_with_every_option() {
    let c = config(
        "net,tap=tap0,mac=52:54:00:ab:cd:ef,queues=4,mtu=9000,rx-rate=10M,tx-rate=1G:64K,\
         rx-pps=1000:10,tx-pps=20K",
    );
    assert_eq!(
        c.endpoint,
        EndpointSpec::Tap {
            name: "tap0".into()
        }
    );
    assert_eq!(c.device.mac, [0x52, 0x54, 0, 0xab, 0xcd, 0xef]);
    assert_eq!((c.device.pairs, c.device.mtu), (4, 9000));
    assert_eq!(
        c.device.rx.bytes,
        Some(RateSpec {
            rate: 10_000_000,
            burst: 1_000_000
        })
    );
    assert_eq!(
        c.device.tx.bytes,
        Some(RateSpec {
            rate: 1_000_000_000,
            burst: 64_000
        })
    );
    assert_eq!(
        c.device.rx.packets,
        Some(RateSpec {
            rate: 1000,
            burst: 10
        })
    );
    assert_eq!(
        c.device.tx.packets,
        Some(RateSpec {
            rate: 20_000,
            burst: 2000
        })
    );
    assert_eq!(parse("net,tap=t,queues=4").unwrap().queues(), 9);
    assert_eq!(parse("net,tap=t").unwrap().queues(), 3);
}

#[test]
fn defaults_give_each_device_its_own_mac() {
    let a = config("net,tap=t");
    let b = config("net,tap=t");
    assert_ne!(a.device.mac, b.device.mac);
    assert_eq!(a.device.mac[..5], [0x52, 0x54, 0x00, 0x12, 0x34]);
    assert_eq!((a.device.pairs, a.device.mtu), (1, 1500));
    assert_eq!(a.device.rx, DirectionLimits::default());
}

#[test]
fn bad_specs_are_one_line_each() {
    let cases = [
        ("net", "needs an endpoint: tap=NAME, passt or fd=N"),
        (
            "net,tap=a,fd=5",
            "give only one of tap=NAME, passt and fd=N",
        ),
        ("net,tap=a,passt", "give only one of"),
        ("net,fd=5,queues=2", "queues=2 needs tap=NAME"),
        ("net,tap=a,mac=01:00:5e:00:00:01", "unicast"),
        (
            "net,tap=a,mac=52:54:00:12:34",
            "option 'mac=52:54:00:12:34' needs =MAC of 17",
        ),
        ("net,tap=a,mac=52-54-00-12-34-zz", "six hex bytes"),
        ("net,tap=a,queues=0", "=N with N from 1 to 8"),
        ("net,tap=a,queues=9", "=N with N from 1 to 8"),
        ("net,tap=a,mtu=67", "=N with N from 68 to 65521"),
        (
            "net,tap=a,tx-rate=fast",
            "=BYTES[:BURST] with numbers above 0",
        ),
        ("net,tap=a,rx-pps=0", "=FRAMES[:BURST] with numbers above 0"),
        ("net,tap=a,rx-rate=1M:", "=BYTES[:BURST]"),
        ("net,fd=2", "=N with N from 3 to"),
        ("net,tap=a/b", "not an interface name"),
        ("net,tap=0123456789abcdef", "=NAME of 1 to 15 bytes"),
        ("net,tap=a,bogus=1", "unknown option 'bogus' for net"),
        ("net=x", "net takes no path"),
    ];
    for (text, want) in cases {
        let e = error(text);
        assert!(e.contains(want), "{text}: {e}");
        assert!(!e.contains('\n'), "{text}: {e}");
    }
}

#[test]
fn passt_is_found_on_path_or_named_as_missing() {
    match open::find_passt() {
        Ok(program) => {
            let c = config("net,passt");
            assert_eq!(c.endpoint, EndpointSpec::Passt { program });
            let HostResource::Helper(h) = &NetKind::resources(&c)[0] else {
                panic!("passt is a helper");
            };
            assert_eq!(
                h.args,
                ["--foreground", "--quiet", "--fd", "3", "--mtu", "1500"]
            );
            assert!(h.quiet && h.fd == 3 && h.socket == SocketKind::Stream);
        }
        Err(_) => assert!(error("net,passt").contains("passt is not installed")),
    }
}

#[test]
fn resources_are_one_tap_queue_per_pair() {
    let c = config("net,tap=tap9,queues=2");
    let resources = NetKind::resources(&c);
    assert_eq!(resources.len(), 2);
    assert!(resources[1]
        .describe()
        .starts_with("tap tap9, queue pair 1 (/dev/net/tun attached with TUNSETIFF"));
    assert!(resources[0].describe().contains("IFF_MULTI_QUEUE"));
    let c = config("net,fd=7");
    assert_eq!(
        NetKind::resources(&c),
        vec![HostResource::Inherited { fd: 7 }]
    );
}

#[test]
fn validation_refuses_what_the_command_line_would() {
    let ok = config("net,tap=t");
    assert_eq!(NetKind::validate(&ok), Ok(()));
    let mut two_fd = config("net,fd=5");
    two_fd.device.pairs = 2;
    assert!(NetKind::validate(&two_fd).is_err());
    let mut relative = config("net,fd=5");
    relative.endpoint = EndpointSpec::Passt {
        program: "passt".into(),
    };
    assert!(NetKind::validate(&relative).is_err());
    let mut bad_mtu = ok.clone();
    bad_mtu.device.mtu = 20;
    assert!(NetKind::validate(&bad_mtu).is_err());
    let mut zero_rate = ok;
    zero_rate.device.tx.bytes = Some(RateSpec { rate: 0, burst: 1 });
    assert!(NetKind::validate(&zero_rate).is_err());
}

#[test]
fn a_handed_in_fd_must_be_a_stream_socket_or_a_vnet_tap() {
    let devnull = std::fs::File::open("/dev/null").unwrap();
    let c = config(&format!("net,fd={}", devnull.as_raw_fd()));
    let opened = broker::resources::open(&NetKind::resources(&c)).unwrap();
    let e = NetKind::check(&c, &opened).unwrap_err();
    assert!(e.to_string().starts_with("fd="), "{e}");

    let dgram = std::os::unix::net::UnixDatagram::unbound().unwrap();
    let c = config(&format!("net,fd={}", dgram.as_raw_fd()));
    let opened = broker::resources::open(&NetKind::resources(&c)).unwrap();
    assert!(
        NetKind::check(&c, &opened).is_err(),
        "a datagram socket is no stream"
    );
}

#[test]
fn the_test_spec_builds_a_stream_device_with_a_control_queue() {
    let text = NetKind.test_spec(Path::new("/nonexistent")).unwrap();
    let config = parse(&text).unwrap();
    let opened = broker::resources::open(&config.resources()).unwrap();
    config.check(&opened).unwrap();
    let fds = opened.into_iter().map(|o| o.fd).collect();
    let mut built = config.build(ResourceFds::new(fds)).unwrap();
    assert_eq!(built.prepare(), None);
    let backend = built.backend();
    assert_eq!(backend.device_type(), VIRTIO_ID_NET);
    assert_eq!(backend.num_queues(), config.queues());
    assert_eq!(backend.features() & (f::CSUM | f::MQ), 0);
    assert_ne!(backend.features() & f::CTRL_VQ, 0);
}

#[test]
fn rate_limits_add_their_timers_before_the_filter() {
    assert!(NetKind::sandbox(&config("net,tap=t"))
        .before_filter
        .is_empty());
    let limited = NetKind::sandbox(&config("net,tap=t,tx-pps=100"));
    assert_eq!(limited.before_filter, &[TIMERS]);
    // A limited device made by hand: prepare makes the timers, once.
    let (ours, peer) = UnixStream::pair().unwrap();
    let _ = peer.into_raw_fd();
    ours.set_nonblocking(true).unwrap();
    let mut c = config("net,tap=t,rx-rate=1M");
    c.device.pairs = 1;
    let mut net = Net::new(c.device, vec![Box::new(Stream::new(ours.into()))]).unwrap();
    assert_eq!(net.prepare(), None);
    assert_eq!(net.fds().len(), 2, "the endpoint and one timer");
    assert_eq!(net.prepare(), None);
    assert_eq!(net.fds().len(), 2);
}
