//! The virtio-net backend: construction from its configuration and endpoints, features,
//! config space, activation, reset. The loops are in `io`.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use ipc::DeviceStats;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::config::NetConfig;
use super::endpoint::Endpoint;
use super::header::TxLimits;
use super::io::{rx_accept, Active, Direction, Port, QueueState, Running};
use super::rate::{Limiter, Timer};
use super::NetError;
use super::{features, tun_flags, Offloads, MAX_FRAME, MAX_QUEUE_SIZE};
use crate::chain::ChainSource;
use crate::lifecycle::Lifecycle;
use crate::{
    activation, DeviceError, EventRegistry, EventSet, Interrupt, VirtioBackend,
    VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_RING_INDIRECT_DESC, VIRTIO_F_VERSION_1, VIRTIO_ID_NET,
};

/// Ethernet header plus one VLAN tag: what a plain frame may carry beyond the MTU.
const L2_OVERHEAD: usize = 18;

/// A virtio-net device.
pub struct Net {
    config: NetConfig,
    /// What every endpoint can do (the device offers the offloads all of them take).
    offloads: Offloads,
    ports: Vec<Port>,
    rx: Direction,
    tx: Direction,
    /// Inactive, active, or broken after a queue or endpoint failed (notifications and events
    /// ignored until reset).
    state: Lifecycle<Box<Active>>,
    /// Test builds: run the hostile probe (`net::probe`) at the next queue notification.
    #[cfg(feature = "test-faults")]
    probe_armed: bool,
}

impl Net {
    /// A device with `config` on `endpoints`, one per queue pair. Rate limits need
    /// [`prepare`](Self::prepare) too.
    pub fn new(config: NetConfig, endpoints: Vec<Box<dyn Endpoint>>) -> Result<Net, NetError> {
        config.validate()?;
        if endpoints.len() != usize::from(config.pairs) {
            return Err(NetError::Endpoints {
                pairs: config.pairs,
                got: endpoints.len(),
            });
        }
        let offloads = endpoints
            .iter()
            .map(|e| e.offloads())
            .reduce(|a, b| Offloads {
                vnet_hdr: a.vnet_hdr && b.vnet_hdr,
                ecn: a.ecn && b.ecn,
            })
            .unwrap_or_default();
        let now = Instant::now();
        let direction = |limits: &super::config::DirectionLimits| Direction {
            limiter: Limiter::new(limits, now),
            timer: None,
        };
        Ok(Net {
            rx: direction(&config.rx),
            tx: direction(&config.tx),
            config,
            offloads,
            ports: endpoints.into_iter().map(Port::new).collect(),
            state: Lifecycle::new(),
            #[cfg(feature = "test-faults")]
            probe_armed: false,
        })
    }

    /// Creates the timerfds that resume a rate-limited direction: the last set-up before the
    /// seccomp filter (`timerfd_create` is not in the net profile), on the thread that will
    /// serve the device, after the sandbox's fd step (which closes whatever is not
    /// inherited). Without them (the kernel refused a timerfd, which a worker's fd limit leaves
    /// room for) the device runs without its rate limits, and says so.
    pub fn prepare(&mut self) -> Option<String> {
        let mut failed = None;
        for (dir, limits) in [
            (&mut self.rx, &self.config.rx),
            (&mut self.tx, &self.config.tx),
        ] {
            if !limits.any() || dir.timer.is_some() {
                continue;
            }
            match Timer::new() {
                Ok(t) => dir.timer = Some(t),
                Err(e) => failed = Some(e),
            }
        }
        let e = failed?;
        let now = Instant::now();
        for dir in [&mut self.rx, &mut self.tx] {
            dir.timer = None;
            dir.limiter = Limiter::new(&super::config::DirectionLimits::default(), now);
        }
        self.config.rx = super::config::DirectionLimits::default();
        self.config.tx = super::config::DirectionLimits::default();
        Some(format!(
            "the rate limits are off: creating their timerfd failed ({e})"
        ))
    }

    /// The fds the device holds: endpoints first, then timers.
    pub fn fds(&self) -> Vec<std::os::fd::RawFd> {
        let endpoints = self.ports.iter().map(|p| p.ep.fd());
        let timers = [&self.rx.timer, &self.tx.timer]
            .into_iter()
            .flatten()
            .map(|t| t.as_raw_fd());
        endpoints.chain(timers).collect()
    }

    /// Test builds (svmm's `fault=host`): at its first queue notification after an
    /// activation the device tries what a compromised worker would against its tap
    /// (`net::probe`), and dies of `SIGSYS` on the first call outside its filter.
    #[cfg(feature = "test-faults")]
    pub fn arm_tap_probe(&mut self) {
        self.probe_armed = true;
    }

    /// The configuration.
    pub fn net_config(&self) -> &NetConfig {
        &self.config
    }

    fn check_activation(
        &self,
        driver_features: u64,
        mem: &GuestMemoryMmap,
        queues: &[Queue],
    ) -> Result<(), DeviceError> {
        let offer = activation::Offer {
            features: self.features(),
            num_queues: self.num_queues(),
            max_queue_size: MAX_QUEUE_SIZE,
        };
        self.state
            .check_activation(&offer, driver_features, mem, queues)
    }

    /// Runs `f` on the active device's moving parts; a failure breaks the device.
    fn running(
        &mut self,
        events: &mut dyn EventRegistry,
        f: impl FnOnce(&mut Running<'_>) -> Result<(), DeviceError>,
    ) -> Result<(), DeviceError> {
        let (ports, rx, tx) = (&mut self.ports, &mut self.rx, &mut self.tx);
        self.state.serve(|active| {
            f(&mut Running {
                a: active,
                ports,
                rx,
                tx,
                events,
            })
        })
    }
}

impl VirtioBackend for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn num_queues(&self) -> u16 {
        2 * self.config.pairs + 1
    }

    fn max_queue_size(&self) -> u16 {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        let mut f = VIRTIO_F_VERSION_1
            | VIRTIO_F_RING_EVENT_IDX
            | VIRTIO_F_RING_INDIRECT_DESC
            | self.config.base_features();
        if self.offloads.vnet_hdr {
            f |= features::CSUM
                | features::GUEST_CSUM
                | features::HOST_TSO4
                | features::HOST_TSO6
                | features::GUEST_TSO4
                | features::GUEST_TSO6
                | features::CTRL_GUEST_OFFLOADS;
            if self.offloads.ecn {
                f |= features::HOST_ECN | features::GUEST_ECN;
            }
        }
        f
    }

    fn config(&self) -> Vec<u8> {
        self.config.config_space()
    }

    fn write_config(&mut self, _offset: u32, _data: &[u8]) {
        // Every field is read-only for a modern driver (the MAC is writable only through the
        // legacy interface, which this device does not have).
    }

    fn activate(
        &mut self,
        driver_features: u64,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<dyn Interrupt>,
    ) -> Result<(), DeviceError> {
        self.check_activation(driver_features, &mem, &queues)?;
        let event_idx = driver_features & VIRTIO_F_RING_EVENT_IDX != 0;
        let indirect = driver_features & VIRTIO_F_RING_INDIRECT_DESC != 0;
        let queues: Vec<QueueState> = queues
            .into_iter()
            .map(|mut queue| {
                queue.set_event_idx(event_idx);
                QueueState {
                    source: ChainSource {
                        desc_table: GuestAddress(queue.desc_table()),
                        queue_size: queue.size(),
                        indirect,
                    },
                    ready: queue.ready(),
                    queue,
                    stats: Default::default(),
                }
            })
            .collect();
        let ctrl = (driver_features & features::CTRL_VQ != 0).then(|| {
            if driver_features & features::MQ != 0 {
                2 * self.config.pairs
            } else {
                2
            }
        });
        let guest = driver_features & features::GUEST_OFFLOADS;
        let flags = tun_flags::for_guest(guest);
        for port in &mut self.ports {
            port.ep.set_offloads(flags).map_err(DeviceError::HostIo)?;
        }
        let max_plain = if driver_features & features::MTU != 0 {
            usize::from(self.config.mtu) + L2_OVERHEAD
        } else {
            MAX_FRAME
        };
        let now = Instant::now();
        self.rx.limiter = Limiter::new(&self.config.rx, now);
        self.tx.limiter = Limiter::new(&self.config.tx, now);
        self.state.activate(Box::new(Active {
            mem,
            interrupt,
            negotiated: driver_features,
            queues,
            ctrl,
            active_pairs: 1,
            tx_limits: TxLimits {
                csum: driver_features & features::CSUM != 0,
                tso4: driver_features & features::HOST_TSO4 != 0,
                tso6: driver_features & features::HOST_TSO6 != 0,
                ecn: driver_features & features::HOST_ECN != 0,
                max_plain,
            },
            rx_accept: rx_accept(guest),
        }));
        Ok(())
    }

    fn register_events(&mut self, events: &mut dyn EventRegistry) -> Result<(), DeviceError> {
        for port in &mut self.ports {
            port.clear();
        }
        self.running(events, |r| r.register())
    }

    fn process_queue(
        &mut self,
        index: u16,
        events: &mut dyn EventRegistry,
    ) -> Result<(), DeviceError> {
        if index >= self.num_queues() {
            return Err(DeviceError::UnknownQueue(index));
        }
        #[cfg(feature = "test-faults")]
        if !self.state.is_inactive() && std::mem::take(&mut self.probe_armed) {
            if let Some(port) = self.ports.first() {
                super::probe::run(port.ep.fd());
            }
        }
        self.running(events, |r| r.queue(index))
    }

    fn process_event(
        &mut self,
        token: u32,
        ready: EventSet,
        events: &mut dyn EventRegistry,
    ) -> Result<(), DeviceError> {
        self.running(events, |r| r.event(token, ready))
    }

    fn reset(&mut self) -> Option<Vec<Queue>> {
        for port in &mut self.ports {
            port.clear();
            // Nothing offloaded until the next driver asks; a tap that refuses this is
            // reported at the next activation, which sets the offloads again.
            let _ = port.ep.set_offloads(0);
        }
        for timer in [&mut self.rx.timer, &mut self.tx.timer]
            .into_iter()
            .flatten()
        {
            let _ = timer.disarm();
        }
        let active = self.state.reset()?;
        Some(active.queues.into_iter().map(|q| q.queue).collect())
    }

    fn stats(&self) -> DeviceStats {
        match self.state.current() {
            Some(active) => DeviceStats {
                queues: active.queues.iter().map(|q| q.stats).collect(),
            },
            None => DeviceStats::default(),
        }
    }
}
