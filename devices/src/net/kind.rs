//! virtio-net as a device kind: `--device net,tap=NAME|passt|fd=N[,mac=MAC][,queues=N]
//! [,mtu=N][,rx-rate=..][,tx-rate=..][,rx-pps=..][,tx-pps=..]`.
//!
//! The endpoint is made in svmm before any worker exists (`net::open`): one `/dev/net/tun` fd
//! per queue pair attached to the user's tap (a `broker::CustomOpener` each), or a socketpair
//! with `passt --fd` on its other end (a `broker::HelperSpec`, killed and reaped with the
//! device), or a duplicate of the caller's fd. The worker gets those fds and nothing else; its
//! one set-up before the filter is the rate limits' timerfds.

use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use broker::{CustomOpener, HelperSpec, HostResource, OpenedResource, SocketKind};

use super::config::{default_mac, parse_mac, DirectionLimits, NetConfig, RateSpec};
use super::endpoint::{Endpoint, Stream, Tap, STREAM_BYTES};
use super::io::PORT_BYTES;
use super::open::{self, FdKind};
use super::{Net, DEFAULT_MTU, MAX_PAIRS, MAX_QUEUE_SIZE, MTU_RANGE, SECCOMP_PROFILE};
use crate::kind::{
    BuildError, InputError, Kind, OptionSpec, OptionValue, ResourceFds, Restart, SandboxNeeds,
    Spec, SpecError, ValueSpec,
};
use crate::VIRTIO_ID_NET;

/// `tap=NAME`: the user's tap.
pub const TAP: OptionSpec = OptionSpec {
    name: "tap",
    value: OptionValue::Text {
        placeholder: "NAME",
        min_len: 1,
        max_len: 15,
    },
    help: "attaches to the existing tap NAME (svmm never creates one: ip tuntap add dev NAME mode \
           tap vnet_hdr [multi_queue] [user USER]), one queue fd per queue pair, with the kernel's \
           vnet header and its offloads",
    hidden: false,
};
/// `passt`: user-mode networking.
pub const PASST: OptionSpec = OptionSpec {
    name: "passt",
    value: OptionValue::Flag,
    help: "user-mode networking without privileges: svmm starts passt (from PATH) on one end of a \
           socketpair and kills it with the VM; the guest gets DHCP, ARP and DNS from it",
    hidden: false,
};
/// `fd=N`: an fd handed in by the caller.
pub const FD: OptionSpec = OptionSpec {
    name: "fd",
    value: OptionValue::Number {
        min: 3,
        max: i32::MAX as u64,
        unit: None,
    },
    help:
        "an fd svmm inherited: a connected stream socket in QEMU's -netdev stream framing (4-byte \
           big-endian length, then the frame), or a tap queue fd attached with IFF_VNET_HDR",
    hidden: false,
};
/// `mac=MAC`.
pub const MAC: OptionSpec = OptionSpec {
    name: "mac",
    value: OptionValue::Text {
        placeholder: "MAC",
        min_len: 17,
        max_len: 17,
    },
    help: "the card's MAC address, e.g. 52:54:00:12:34:56 (unicast); default 52:54:00:12:34:56, \
           then :57, :58 ... for further net devices",
    hidden: false,
};
/// `queues=N`: queue pairs.
pub const QUEUES: OptionSpec = OptionSpec {
    name: "queues",
    value: OptionValue::Number {
        min: 1,
        max: MAX_PAIRS as u64,
        unit: None,
    },
    help: "receive/transmit queue pairs (VIRTIO_NET_F_MQ), one tap queue fd each, default 1; more \
           than one needs a multi_queue tap",
    hidden: false,
};
/// `mtu=N`.
pub const MTU: OptionSpec = OptionSpec {
    name: "mtu",
    value: OptionValue::Number {
        min: MTU_RANGE.0 as u64,
        max: MTU_RANGE.1 as u64,
        unit: None,
    },
    help: "the MTU the guest reads (VIRTIO_NET_F_MTU), default 1500; larger frames without GSO \
           are refused",
    hidden: false,
};
/// `rx-rate=BYTES[:BURST]`.
pub const RX_RATE: OptionSpec = OptionSpec {
    name: "rx-rate",
    value: OptionValue::Text {
        placeholder: "BYTES[:BURST]",
        min_len: 1,
        max_len: 40,
    },
    help: "limits host-to-guest traffic to BYTES per second (K, M, G: 10^3, 10^6, 10^9), bursts \
           of up to BURST bytes (default a tenth of a second's worth)",
    hidden: false,
};
/// `tx-rate=BYTES[:BURST]`.
pub const TX_RATE: OptionSpec = OptionSpec {
    name: "tx-rate",
    value: OptionValue::Text {
        placeholder: "BYTES[:BURST]",
        min_len: 1,
        max_len: 40,
    },
    help: "limits guest-to-host traffic the same way",
    hidden: false,
};
/// `rx-pps=FRAMES[:BURST]`.
pub const RX_PPS: OptionSpec = OptionSpec {
    name: "rx-pps",
    value: OptionValue::Text {
        placeholder: "FRAMES[:BURST]",
        min_len: 1,
        max_len: 40,
    },
    help: "limits host-to-guest frames per second (bursts of BURST frames), on top of rx-rate",
    hidden: false,
};
/// `tx-pps=FRAMES[:BURST]`.
pub const TX_PPS: OptionSpec = OptionSpec {
    name: "tx-pps",
    value: OptionValue::Text {
        placeholder: "FRAMES[:BURST]",
        min_len: 1,
        max_len: 40,
    },
    help: "limits guest-to-host frames per second the same way",
    hidden: false,
};

/// Where the device's frames go.
#[derive(Debug, Clone, PartialEq, Eq, ipc::Encode, ipc::Decode)]
#[bincode(crate = "ipc::codec::bincode")]
pub enum EndpointSpec {
    /// The user's tap, one queue fd per pair.
    Tap {
        /// The interface.
        name: String,
    },
    /// passt, started by svmm.
    Passt {
        /// Where `PATH` found it when the spec was parsed.
        program: PathBuf,
    },
    /// An fd svmm inherited.
    Fd {
        /// Its number in svmm.
        fd: i32,
    },
}

/// `net,...`, validated.
#[derive(Debug, Clone, PartialEq, Eq, ipc::Encode, ipc::Decode)]
#[bincode(crate = "ipc::codec::bincode")]
pub struct NetKindConfig {
    /// The endpoint.
    pub endpoint: EndpointSpec,
    /// The card.
    pub device: NetConfig,
}

/// The virtio-net kind.
#[derive(Debug, Clone, Copy)]
pub struct NetKind;

/// The fd number passt finds its end of the socketpair at.
const PASST_FD: i32 = 3;
/// The largest MTU passt assigns.
const PASST_MAX_MTU: u16 = 65_520;

/// Net devices parsed so far by this process: the default MAC of the next.
static NEXT_MAC: AtomicU8 = AtomicU8::new(0);

/// What the worker sets up right before its filter with rate limits ([`Net::prepare`]).
const TIMERS: &str = "one timerfd per rate-limited direction (CLOCK_MONOTONIC, non-blocking; \
                      made in the last step before the seccomp filter): it resumes a throttled \
                      direction, only timerfd_settime is allowed on it afterwards";

fn invalid(spec: &Spec<'_>, reason: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        spec: spec.as_str().to_string(),
        reason: reason.into(),
    }
}

/// A rate option: `RATE[:BURST]`.
fn rate(spec: &Spec<'_>, option: &OptionSpec) -> Result<Option<RateSpec>, SpecError> {
    let Some(text) = spec.string(option)? else {
        return Ok(None);
    };
    text.parse::<RateSpec>()
        .map(Some)
        .map_err(|_| SpecError::BadValue {
            spec: spec.as_str().to_string(),
            option: format!("{}={text}", option.name),
            expected: format!(
                "={} with numbers above 0 (a K, M or G suffix multiplies by 10^3, 10^6, 10^9)",
                match option.value {
                    OptionValue::Text { placeholder, .. } => placeholder,
                    _ => "RATE[:BURST]",
                }
            ),
        })
}

impl Kind for NetKind {
    type Config = NetKindConfig;
    type Backend = Net;

    const NAME: &'static str = "net";
    const SUMMARY: &'static str =
        "virtio-net on a tap, on passt or on an fd handed in: svmm attaches the endpoint \
         before any worker exists, the worker only moves frames (checksum and TSO offloads on a \
         tap, merged receive buffers, multiqueue, rate limits)";
    const VALUE: ValueSpec = ValueSpec::None;
    const OPTIONS: &'static [&'static OptionSpec] = &[
        &TAP, &PASST, &FD, &MAC, &QUEUES, &MTU, &RX_RATE, &TX_RATE, &RX_PPS, &TX_PPS,
    ];
    const DEVICE_TYPE: u32 = VIRTIO_ID_NET;
    const MAX_QUEUE_SIZE: u16 = MAX_QUEUE_SIZE;
    const FEATURES: u64 = super::features::ALL;
    const SECCOMP_PROFILE: &'static str = SECCOMP_PROFILE;

    fn parse(spec: &Spec<'_>) -> Result<NetKindConfig, SpecError> {
        let tap = spec.string(&TAP)?;
        let passt = spec.switch(&PASST)?.unwrap_or(false);
        let fd = spec.number(&FD)?;
        let pairs = spec.number(&QUEUES)?.map_or(1, |n| n as u16);
        let endpoint = match (tap, passt, fd) {
            (Some(name), false, None) => {
                open::check_name(name).map_err(|e| invalid(spec, e.to_string()))?;
                EndpointSpec::Tap {
                    name: name.to_string(),
                }
            }
            (None, true, None) => EndpointSpec::Passt {
                program: open::find_passt().map_err(|e| invalid(spec, e.to_string()))?,
            },
            // FD's range keeps it within i32.
            (None, false, Some(fd)) => EndpointSpec::Fd { fd: fd as i32 },
            (None, false, None) => {
                return Err(invalid(
                    spec,
                    "net needs an endpoint: tap=NAME, passt or fd=N",
                ))
            }
            _ => return Err(invalid(spec, "give only one of tap=NAME, passt and fd=N")),
        };
        if pairs > 1 && !matches!(endpoint, EndpointSpec::Tap { .. }) {
            return Err(invalid(
                spec,
                format!("queues={pairs} needs tap=NAME (passt and fd=N are one endpoint)"),
            ));
        }
        let mac = match spec.string(&MAC)? {
            Some(text) => parse_mac(text).map_err(|_| SpecError::BadValue {
                spec: spec.as_str().to_string(),
                option: format!("mac={text}"),
                expected: "=MAC: six hex bytes like 52:54:00:12:34:56, unicast, not all zero"
                    .to_string(),
            })?,
            None => default_mac(NEXT_MAC.fetch_add(1, Ordering::Relaxed)),
        };
        let device = NetConfig {
            mac,
            mtu: spec.number(&MTU)?.map_or(DEFAULT_MTU, |n| n as u16),
            pairs,
            rx: DirectionLimits {
                bytes: rate(spec, &RX_RATE)?,
                packets: rate(spec, &RX_PPS)?,
            },
            tx: DirectionLimits {
                bytes: rate(spec, &TX_RATE)?,
                packets: rate(spec, &TX_PPS)?,
            },
        };
        Ok(NetKindConfig { endpoint, device })
    }

    fn validate(config: &NetKindConfig) -> Result<(), String> {
        config.device.validate().map_err(|e| e.to_string())?;
        let single = config.device.pairs == 1;
        match &config.endpoint {
            EndpointSpec::Tap { name } => open::check_name(name).map_err(|e| e.to_string()),
            EndpointSpec::Passt { program } if program.is_absolute() && single => Ok(()),
            EndpointSpec::Fd { fd } if *fd >= 3 && single => Ok(()),
            other => Err(format!(
                "{other:?} with {} queue pairs",
                config.device.pairs
            )),
        }
    }

    /// The pairs and the control queue (every endpoint has one, see `Net`'s features).
    fn queues(config: &NetKindConfig) -> u16 {
        2 * config.device.pairs + 1
    }

    fn resources(config: &NetKindConfig) -> Vec<HostResource> {
        let pairs = config.device.pairs;
        match &config.endpoint {
            EndpointSpec::Tap { name } => (0..pairs)
                .map(|pair| {
                    let name = name.clone();
                    let what = format!(
                        "tap {name}, queue pair {pair} (/dev/net/tun attached with TUNSETIFF \
                         IFF_TAP|IFF_NO_PI|IFF_VNET_HDR{}, vnet header 12 bytes; the worker may \
                         only TUNSETOFFLOAD it)",
                        if pairs > 1 { "|IFF_MULTI_QUEUE" } else { "" }
                    );
                    HostResource::Custom(CustomOpener {
                        what,
                        open: Arc::new(move || {
                            open::open_tap_queue(&name, pairs).map_err(io::Error::other)
                        }),
                    })
                })
                .collect(),
            EndpointSpec::Passt { program } => vec![HostResource::Helper(HelperSpec {
                program: program.clone(),
                // passt offers the guest this MTU by DHCP (its own default, 65520, is more
                // than the device's).
                args: [
                    "--foreground".to_string(),
                    "--quiet".to_string(),
                    "--fd".to_string(),
                    PASST_FD.to_string(),
                    "--mtu".to_string(),
                    config.device.mtu.min(PASST_MAX_MTU).to_string(),
                ]
                .into_iter()
                .map(Into::into)
                .collect(),
                fd: PASST_FD,
                socket: SocketKind::Stream,
                quiet: true,
            })],
            EndpointSpec::Fd { fd } => vec![HostResource::Inherited { fd: *fd }],
        }
    }

    /// An inherited fd must be a stream socket or a tap with a vnet header.
    fn check(config: &NetKindConfig, opened: &[OpenedResource]) -> Result<(), InputError> {
        let EndpointSpec::Fd { fd } = config.endpoint else {
            return Ok(());
        };
        let bad = |source: Box<dyn std::error::Error + Send + Sync>| InputError {
            what: format!("fd={fd}"),
            source,
        };
        let dup = opened
            .first()
            .and_then(|o| o.fd.as_ref())
            .ok_or_else(|| bad("the fd was not duplicated".into()))?
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| bad(Box::new(e)))?;
        open::adopt_fd(dup).map_err(|e| bad(Box::new(e)))?;
        Ok(())
    }

    fn sandbox(config: &NetKindConfig) -> SandboxNeeds {
        let limited = config.device.rx.any() || config.device.tx.any();
        // One frame each way per queue pair; a socket (passt, or an fd that may be one) also
        // buffers its byte stream.
        let stream = match config.endpoint {
            EndpointSpec::Tap { .. } => 0,
            EndpointSpec::Passt { .. } | EndpointSpec::Fd { .. } => STREAM_BYTES,
        };
        SandboxNeeds {
            before_filter: if limited { &[TIMERS] } else { &[] },
            memory: (usize::from(config.device.pairs) * PORT_BYTES + stream) as u64,
            ..SandboxNeeds::default()
        }
    }

    /// The control queue's settings (the queue pairs in use, the guest's offloads) live in
    /// the worker and die with it; a new worker resumed with the defaults could hand the guest
    /// offloaded frames it switched off, so the driver must reset the device.
    fn restart(_config: &NetKindConfig) -> Restart {
        Restart::Reset {
            lost: "the control queue's settings (queue pairs in use, guest offloads) and the \
                   frames in flight",
        }
    }

    #[cfg(feature = "test-faults")]
    fn arm_host_probe(net: &mut Net) -> bool {
        net.arm_tap_probe();
        true
    }

    fn build(config: &NetKindConfig, mut resources: ResourceFds) -> Result<Net, BuildError> {
        let refused = |e: io::Error| BuildError::Refused(Box::new(e));
        let mut endpoints: Vec<Box<dyn Endpoint>> = Vec::new();
        match config.endpoint {
            EndpointSpec::Tap { .. } => {
                for pair in 0..usize::from(config.device.pairs) {
                    endpoints.push(Box::new(Tap::new(resources.take(pair)?).map_err(refused)?));
                }
            }
            EndpointSpec::Passt { .. } => {
                let fd = resources.take(0)?;
                set_nonblocking(&fd).map_err(refused)?;
                endpoints.push(Box::new(Stream::new(fd)));
            }
            EndpointSpec::Fd { .. } => {
                let (fd, kind) = open::adopt_fd(resources.take(0)?)
                    .map_err(|e| BuildError::Refused(Box::new(e)))?;
                endpoints.push(match kind {
                    FdKind::Tap => Box::new(Tap::new(fd).map_err(refused)?),
                    FdKind::Stream => Box::new(Stream::new(fd)),
                });
            }
        }
        Net::new(config.device, endpoints).map_err(|e| BuildError::Refused(Box::new(e)))
    }

    fn prepare(net: &mut Net) -> Option<String> {
        net.prepare()
    }

    /// A connected stream socket handed in as `fd=N` (its peer end stays open for as long as
    /// the test process runs): works on any host, without root, a tap or passt.
    /// passt (tests/run.sh installs it): the one endpoint another process can open from a spec
    /// alone, without a tap or an inherited fd. passt sends nothing until the guest does.
    fn test_spec(_scratch: &Path) -> io::Result<String> {
        Ok("net,passt".to_string())
    }
}

/// `O_NONBLOCK` on an fd (passt's socket arrives blocking).
fn set_nonblocking(fd: &impl AsFd) -> io::Result<()> {
    use rustix::fs::{fcntl_getfl, fcntl_setfl, OFlags};
    let flags = fcntl_getfl(fd)?;
    fcntl_setfl(fd, flags | OFlags::NONBLOCK)?;
    Ok(())
}

#[cfg(test)]
mod tests;
