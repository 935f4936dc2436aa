//! Tests of the virtio-mmio transport against a fake proxy that records what it is asked.

use super::*;
use crate::virtio::DeviceInfo;

const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;
/// Some device feature in the low word.
const F_LOW: u64 = 1 << 3;
const OFFERED: u64 = VERSION_1 | F_LOW;
const MAX_SIZE: u16 = 256;

/// What the transport asked of the proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Call {
    Activate(u64, Vec<QueueConfig>),
    WriteConfig(u32, Vec<u8>),
    Reset,
    Ack(u32),
    Notify(u16),
    ConfigChange,
}

struct Fake {
    info: DeviceInfo,
    broken: bool,
    fail_activate: bool,
    int_status: u32,
    calls: Vec<Call>,
}

impl Fake {
    fn new() -> Self {
        Self {
            info: DeviceInfo {
                device_type: 4,
                device_features: OFFERED,
                num_queues: 2,
                max_queue_size: MAX_SIZE,
                config: (0u8..12).collect(),
                config_generation: 7,
            },
            broken: false,
            fail_activate: false,
            int_status: 0,
            calls: Vec::new(),
        }
    }
}

impl DeviceProxy for Fake {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }
    fn activate(&mut self, features: u64, queues: &[QueueConfig]) -> Result<(), ProxyError> {
        // What the transport promises: validated features and queues, never while broken.
        assert!(!self.broken);
        assert_eq!(features & !self.info.device_features, 0);
        assert_ne!(features & VERSION_1, 0);
        let layout = DeviceLayout {
            device_features: self.info.device_features,
            num_queues: self.info.num_queues,
            max_queue_size: self.info.max_queue_size,
            config_len: self.info.config.len(),
        };
        let request = VmmToWorker::Activate {
            driver_features: features,
            queues: queues.to_vec(),
        };
        assert_eq!(request.validate(&layout), Ok(()));
        assert!(queues.windows(2).all(|p| p[0].index < p[1].index));
        self.calls.push(Call::Activate(features, queues.to_vec()));
        if self.fail_activate {
            return Err(ProxyError::Device(ipc::DeviceErrorKind::BadActivation));
        }
        Ok(())
    }
    fn write_config(&mut self, offset: u32, data: &[u8]) -> Result<(), ProxyError> {
        let end = offset as usize + data.len();
        assert!(end <= self.info.config.len());
        self.calls.push(Call::WriteConfig(offset, data.to_vec()));
        Ok(())
    }
    fn reset(&mut self) -> Result<(), ProxyError> {
        self.calls.push(Call::Reset);
        if self.broken {
            return Err(ProxyError::Broken);
        }
        Ok(())
    }
    fn interrupt_status(&self) -> u32 {
        self.int_status
    }
    fn interrupt_ack(&mut self, bits: u32) {
        self.calls.push(Call::Ack(bits));
        self.int_status &= !bits;
    }
    fn is_broken(&self) -> bool {
        self.broken
    }
    fn notify(&mut self, queue: u16) -> Result<(), ProxyError> {
        assert!(queue < self.info.num_queues);
        self.calls.push(Call::Notify(queue));
        Ok(())
    }
    fn signal_config_change(&mut self) {
        self.calls.push(Call::ConfigChange);
        self.int_status |= INT_CONFIG;
    }
}

type Transport = MmioTransport<Fake>;

fn transport() -> Transport {
    MmioTransport::new("test#0", Fake::new())
}

fn rd(t: &mut Transport, offset: u64) -> u32 {
    let mut data = [0xaa; 4];
    t.read(offset, &mut data);
    u32::from_le_bytes(data)
}

fn wr(t: &mut Transport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

/// `Status |= bit`, the way Linux's `virtio_add_status` does it; returns the status read back.
fn add_status(t: &mut Transport, bit: u32) -> u32 {
    let status = rd(t, reg::STATUS);
    wr(t, reg::STATUS, status | bit);
    rd(t, reg::STATUS)
}

fn calls(t: &Transport) -> Vec<Call> {
    t.proxy().calls.clone()
}

const QUEUE0: QueueConfig = QueueConfig {
    index: 0,
    size: 128,
    desc_table: 0x1_0000_1000,
    avail_ring: 0x2000,
    used_ring: 0x3000,
};

/// Linux's `vm_setup_vq` for `q`.
fn setup_queue(t: &mut Transport, q: &QueueConfig) {
    wr(t, reg::QUEUE_SEL, u32::from(q.index));
    assert_eq!(rd(t, reg::QUEUE_READY), 0);
    assert_eq!(rd(t, reg::QUEUE_NUM_MAX), u32::from(MAX_SIZE));
    wr(t, reg::QUEUE_NUM, u32::from(q.size));
    for (low, addr) in [
        (reg::QUEUE_DESC_LOW, q.desc_table),
        (reg::QUEUE_DRIVER_LOW, q.avail_ring),
        (reg::QUEUE_DEVICE_LOW, q.used_ring),
    ] {
        wr(t, low, addr as u32);
        wr(t, low + 4, (addr >> 32) as u32);
    }
    wr(t, reg::QUEUE_READY, 1);
    assert_eq!(rd(t, reg::QUEUE_READY), 1);
}

/// Linux's probe up to FEATURES_OK, accepting `features`; returns the status read back.
fn negotiate(t: &mut Transport, features: u64) -> u32 {
    wr(t, reg::STATUS, 0);
    assert_eq!(rd(t, reg::MAGIC_VALUE), MAGIC_VALUE);
    assert_eq!(rd(t, reg::VERSION), 2);
    let without_needs_reset = |status| status & !DEVICE_NEEDS_RESET;
    assert_eq!(without_needs_reset(add_status(t, ACKNOWLEDGE)), ACKNOWLEDGE);
    assert_eq!(
        without_needs_reset(add_status(t, DRIVER)),
        ACKNOWLEDGE | DRIVER
    );
    wr(t, reg::DEVICE_FEATURES_SEL, 1);
    let high = rd(t, reg::DEVICE_FEATURES);
    wr(t, reg::DEVICE_FEATURES_SEL, 0);
    let low = rd(t, reg::DEVICE_FEATURES);
    assert_eq!(u64::from(high) << 32 | u64::from(low), OFFERED);
    wr(t, reg::DRIVER_FEATURES_SEL, 1);
    wr(t, reg::DRIVER_FEATURES, (features >> 32) as u32);
    wr(t, reg::DRIVER_FEATURES_SEL, 0);
    wr(t, reg::DRIVER_FEATURES, features as u32);
    add_status(t, FEATURES_OK)
}

/// Linux's whole probe with queue 0 set up, ending in DRIVER_OK.
fn linux_init(t: &mut Transport) {
    assert_eq!(negotiate(t, OFFERED), ACKNOWLEDGE | DRIVER | FEATURES_OK);
    setup_queue(t, &QUEUE0);
    add_status(t, DRIVER_OK);
}

#[test]
fn identification_registers() {
    let mut t = transport();
    assert_eq!(rd(&mut t, reg::MAGIC_VALUE), 0x7472_6976);
    assert_eq!(rd(&mut t, reg::VERSION), 2);
    assert_eq!(rd(&mut t, reg::DEVICE_ID), 4);
    assert_eq!(rd(&mut t, reg::VENDOR_ID), 0x4d4d_5653);
    assert_eq!(rd(&mut t, reg::CONFIG_GENERATION), 7);
    assert_eq!(rd(&mut t, reg::STATUS), 0);
    wr(&mut t, reg::DEVICE_FEATURES_SEL, 2);
    assert_eq!(rd(&mut t, reg::DEVICE_FEATURES), 0);
    wr(&mut t, reg::QUEUE_SEL, 2);
    assert_eq!(rd(&mut t, reg::QUEUE_NUM_MAX), 0);
    wr(&mut t, reg::QUEUE_SEL, 1);
    assert_eq!(rd(&mut t, reg::QUEUE_NUM_MAX), u32::from(MAX_SIZE));
    assert_eq!(rd(&mut t, reg::SHM_LEN_LOW), u32::MAX);
    assert_eq!(rd(&mut t, reg::SHM_LEN_HIGH), u32::MAX);
    // Read-only registers ignore writes.
    wr(&mut t, reg::MAGIC_VALUE, 0);
    wr(&mut t, reg::DEVICE_ID, 9);
    assert_eq!(rd(&mut t, reg::MAGIC_VALUE), MAGIC_VALUE);
    assert_eq!(rd(&mut t, reg::DEVICE_ID), 4);
}

#[test]
fn shared_memory_regions_by_selector() {
    let mut t = MmioTransport::new("test#0", Fake::new())
        .with_shm_regions(vec![(0x1_4000_0000, 0x1000_0000)]);
    // Region 0 is selected after a reset.
    assert_eq!(rd(&mut t, reg::SHM_LEN_LOW), 0x1000_0000);
    assert_eq!(rd(&mut t, reg::SHM_LEN_HIGH), 0);
    assert_eq!(rd(&mut t, reg::SHM_BASE_LOW), 0x4000_0000);
    assert_eq!(rd(&mut t, reg::SHM_BASE_HIGH), 1);
    for missing in [1, u32::MAX] {
        wr(&mut t, reg::SHM_SEL, missing);
        for r in [
            reg::SHM_LEN_LOW,
            reg::SHM_LEN_HIGH,
            reg::SHM_BASE_LOW,
            reg::SHM_BASE_HIGH,
        ] {
            assert_eq!(rd(&mut t, r), u32::MAX);
        }
    }
    wr(&mut t, reg::SHM_SEL, 0);
    assert_eq!(rd(&mut t, reg::SHM_BASE_HIGH), 1);
    // SHMSel is write-only; the region registers read-only.
    assert_eq!(rd(&mut t, reg::SHM_SEL), 0);
    wr(&mut t, reg::SHM_LEN_LOW, 5);
    assert_eq!(rd(&mut t, reg::SHM_LEN_LOW), 0x1000_0000);
}

#[test]
fn transport_features_the_transport_lacks_are_not_offered() {
    let mut fake = Fake::new();
    fake.info.device_features = OFFERED | (1 << 38) | (1 << 40);
    let mut t = MmioTransport::new("test#0", fake);
    wr(&mut t, reg::DEVICE_FEATURES_SEL, 1);
    assert_eq!(rd(&mut t, reg::DEVICE_FEATURES), 1);
}

#[test]
fn linux_init_sequence_activates_with_the_queue_set_up() {
    let mut t = transport();
    linux_init(&mut t);
    assert_eq!(
        rd(&mut t, reg::STATUS),
        ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK
    );
    assert_eq!(
        calls(&t),
        vec![Call::Reset, Call::Activate(OFFERED, vec![QUEUE0])]
    );
}

#[test]
fn steps_in_one_write_are_taken_in_order() {
    let mut t = transport();
    wr(&mut t, reg::STATUS, ACKNOWLEDGE | DRIVER);
    wr(&mut t, reg::DRIVER_FEATURES_SEL, 1);
    wr(&mut t, reg::DRIVER_FEATURES, 1);
    setup_queue(&mut t, &QueueConfig { index: 1, ..QUEUE0 });
    wr(
        &mut t,
        reg::STATUS,
        ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
    );
    assert_eq!(rd(&mut t, reg::STATUS), 0xf);
    let queue1 = QueueConfig { index: 1, ..QUEUE0 };
    assert_eq!(calls(&t), vec![Call::Activate(VERSION_1, vec![queue1])]);
}

#[test]
fn out_of_order_and_clearing_status_writes_are_ignored() {
    let mut t = transport();
    wr(&mut t, reg::STATUS, DRIVER);
    assert_eq!(rd(&mut t, reg::STATUS), 0);
    add_status(&mut t, ACKNOWLEDGE);
    assert_eq!(add_status(&mut t, DRIVER_OK), ACKNOWLEDGE);
    assert_eq!(add_status(&mut t, FEATURES_OK), ACKNOWLEDGE);
    assert_eq!(add_status(&mut t, 0x10), ACKNOWLEDGE);
    add_status(&mut t, DRIVER);
    wr(&mut t, reg::STATUS, DRIVER);
    assert_eq!(rd(&mut t, reg::STATUS), ACKNOWLEDGE | DRIVER);
    // FAILED sticks; only a reset leaves it.
    assert_eq!(add_status(&mut t, FAILED), ACKNOWLEDGE | DRIVER | FAILED);
    assert_eq!(
        add_status(&mut t, FEATURES_OK),
        ACKNOWLEDGE | DRIVER | FAILED
    );
    wr(&mut t, reg::STATUS, 0);
    assert_eq!(rd(&mut t, reg::STATUS), 0);
    assert!(!calls(&t).iter().any(|c| matches!(c, Call::Activate(..))));
}

#[test]
fn features_ok_refused_for_unoffered_or_legacy_features() {
    let mut t = transport();
    let status = negotiate(&mut t, OFFERED | 1 << 5);
    assert_eq!(status, ACKNOWLEDGE | DRIVER);
    let status = negotiate(&mut t, F_LOW);
    assert_eq!(status, ACKNOWLEDGE | DRIVER);
    // Refused, the driver gives up with FAILED; DRIVER_OK cannot follow.
    assert_eq!(add_status(&mut t, FAILED), ACKNOWLEDGE | DRIVER | FAILED);
    assert_eq!(
        add_status(&mut t, FEATURES_OK | DRIVER_OK),
        ACKNOWLEDGE | DRIVER | FAILED
    );
    // A modern driver accepting a subset succeeds.
    assert_eq!(
        negotiate(&mut t, VERSION_1),
        ACKNOWLEDGE | DRIVER | FEATURES_OK
    );
    assert!(!calls(&t).iter().any(|c| matches!(c, Call::Activate(..))));
}

#[test]
fn driver_features_are_locked_after_features_ok() {
    let mut t = transport();
    negotiate(&mut t, VERSION_1);
    wr(&mut t, reg::DRIVER_FEATURES_SEL, 0);
    wr(&mut t, reg::DRIVER_FEATURES, F_LOW as u32);
    setup_queue(&mut t, &QUEUE0);
    add_status(&mut t, DRIVER_OK);
    assert_eq!(
        calls(&t).last(),
        Some(&Call::Activate(VERSION_1, vec![QUEUE0]))
    );
}

#[test]
fn broken_proxy_refuses_features_ok_and_shows_needs_reset() {
    let mut t = transport();
    t.proxy_mut().broken = true;
    // After a reset the device reads 0, so a driver waiting for 0 does not hang.
    wr(&mut t, reg::STATUS, 0);
    assert_eq!(rd(&mut t, reg::STATUS), 0);
    let status = negotiate(&mut t, OFFERED);
    assert_eq!(status, ACKNOWLEDGE | DRIVER | DEVICE_NEEDS_RESET);
    // DRIVER_OK is out of order without FEATURES_OK: still nothing activated.
    add_status(&mut t, DRIVER_OK);
    assert!(!calls(&t).iter().any(|c| matches!(c, Call::Activate(..))));
    assert_eq!(rd(&mut t, reg::STATUS) & DRIVER_OK, 0);
}

#[test]
fn proxy_breaking_after_features_ok_fails_driver_ok_with_an_interrupt() {
    let mut t = transport();
    negotiate(&mut t, OFFERED);
    setup_queue(&mut t, &QUEUE0);
    t.proxy_mut().broken = true;
    let status = add_status(&mut t, DRIVER_OK);
    assert_eq!(status, 0xf | DEVICE_NEEDS_RESET);
    assert_eq!(calls(&t).last(), Some(&Call::ConfigChange));
    assert!(!calls(&t).iter().any(|c| matches!(c, Call::Activate(..))));
    assert_eq!(rd(&mut t, reg::INTERRUPT_STATUS), INT_CONFIG);
}

#[test]
fn failed_activation_sets_needs_reset_once_with_an_interrupt() {
    let mut t = transport();
    t.proxy_mut().fail_activate = true;
    linux_init(&mut t);
    assert_eq!(rd(&mut t, reg::STATUS), 0xf | DEVICE_NEEDS_RESET);
    let tail = calls(&t)[1..].to_vec();
    assert_eq!(
        tail,
        vec![Call::Activate(OFFERED, vec![QUEUE0]), Call::ConfigChange]
    );
    // Latched: a second mark does not interrupt again; a reset clears it.
    t.mark_needs_reset();
    assert_eq!(calls(&t).len(), 3);
    wr(&mut t, reg::STATUS, 0);
    assert_eq!(rd(&mut t, reg::STATUS), 0);
    assert_eq!(add_status(&mut t, ACKNOWLEDGE), ACKNOWLEDGE);
}

#[test]
fn invalid_queue_addresses_fail_activation_without_the_proxy() {
    let mut t = transport();
    negotiate(&mut t, OFFERED);
    let misaligned = QueueConfig {
        desc_table: 0x1008,
        ..QUEUE0
    };
    setup_queue(&mut t, &misaligned);
    assert_eq!(add_status(&mut t, DRIVER_OK), 0xf | DEVICE_NEEDS_RESET);
    assert_eq!(calls(&t), vec![Call::Reset, Call::ConfigChange]);
}

#[test]
fn mark_needs_reset_interrupts_only_a_live_device() {
    let mut t = transport();
    t.mark_needs_reset();
    assert_eq!(rd(&mut t, reg::STATUS), 0);
    negotiate(&mut t, OFFERED);
    t.mark_needs_reset();
    assert_eq!(rd(&mut t, reg::STATUS), 0xb | DEVICE_NEEDS_RESET);
    assert!(!calls(&t).contains(&Call::ConfigChange));
    let mut t = transport();
    linux_init(&mut t);
    t.mark_needs_reset();
    assert_eq!(rd(&mut t, reg::STATUS), 0xf | DEVICE_NEEDS_RESET);
    assert_eq!(calls(&t).last(), Some(&Call::ConfigChange));
}

#[test]
fn reset_forwards_to_the_proxy_and_clears_state() {
    let mut t = transport();
    linux_init(&mut t);
    wr(&mut t, reg::QUEUE_SEL, 1);
    wr(&mut t, reg::DEVICE_FEATURES_SEL, 1);
    wr(&mut t, reg::STATUS, 0);
    assert_eq!(calls(&t).last(), Some(&Call::Reset));
    assert_eq!(rd(&mut t, reg::STATUS), 0);
    // Selectors are back to 0, queue 0 is not ready and has its maximum size again, the driver
    // features are gone.
    assert_eq!(rd(&mut t, reg::DEVICE_FEATURES), OFFERED as u32);
    assert_eq!(rd(&mut t, reg::QUEUE_READY), 0);
    let fresh = QueueState::new(MAX_SIZE);
    assert_eq!(t.queues, vec![fresh; 2]);
    assert_eq!(t.driver_features, 0);
    assert_eq!((t.queue_sel, t.driver_features_sel), (0, 0));
    // Re-initialising works and activates afresh.
    linux_init(&mut t);
    assert_eq!(
        calls(&t).last(),
        Some(&Call::Activate(OFFERED, vec![QUEUE0]))
    );
}

#[test]
fn config_reads_in_and_out_of_bounds() {
    let mut t = transport();
    let mut b = [0xaau8; 1];
    t.read(CONFIG_OFFSET + 3, &mut b);
    assert_eq!(b, [3]);
    let mut w = [0xaau8; 2];
    t.read(CONFIG_OFFSET + 10, &mut w);
    assert_eq!(w, [10, 11]);
    assert_eq!(rd(&mut t, CONFIG_OFFSET + 4), 0x0706_0504);
    let mut q = [0xaau8; 8];
    t.read(CONFIG_OFFSET + 4, &mut q);
    assert_eq!(q, [4, 5, 6, 7, 8, 9, 10, 11]);
    // Past the end, straddling it, far away, or of an odd width: zeros.
    assert_eq!(rd(&mut t, CONFIG_OFFSET + 12), 0);
    assert_eq!(rd(&mut t, CONFIG_OFFSET + 10), 0);
    assert_eq!(rd(&mut t, 0xffc), 0);
    assert_eq!(rd(&mut t, u64::MAX - 3), 0);
    let mut odd = [0xaau8; 3];
    t.read(CONFIG_OFFSET, &mut odd);
    assert_eq!(odd, [0; 3]);
    // A new config generation shows through.
    t.proxy_mut().info.config_generation = 8;
    t.proxy_mut().info.config[0] = 0x55;
    assert_eq!(rd(&mut t, reg::CONFIG_GENERATION), 8);
    t.read(CONFIG_OFFSET, &mut b);
    assert_eq!(b, [0x55]);
}

#[test]
fn config_writes_are_forwarded_inside_the_config_space_only() {
    let mut t = transport();
    t.write(CONFIG_OFFSET + 2, &[9, 8]);
    t.write(CONFIG_OFFSET + 11, &[1, 2]);
    t.write(CONFIG_OFFSET + 12, &[1]);
    t.write(CONFIG_OFFSET, &[1, 2, 3]);
    t.write(u64::MAX, &[1]);
    t.write(CONFIG_OFFSET + 4, &[1; 8]);
    assert_eq!(
        calls(&t),
        vec![
            Call::WriteConfig(2, vec![9, 8]),
            Call::WriteConfig(4, vec![1; 8])
        ]
    );
}

#[test]
fn interrupt_status_and_ack_pass_through() {
    let mut t = transport();
    t.proxy_mut().int_status = INT_VRING | INT_CONFIG | 0xf0;
    assert_eq!(rd(&mut t, reg::INTERRUPT_STATUS), INT_VRING | INT_CONFIG);
    wr(&mut t, reg::INTERRUPT_ACK, 0xffff_fff1);
    assert_eq!(calls(&t), vec![Call::Ack(INT_VRING)]);
    assert_eq!(rd(&mut t, reg::INTERRUPT_STATUS), INT_CONFIG);
    wr(&mut t, reg::INTERRUPT_ACK, INT_CONFIG);
    assert_eq!(rd(&mut t, reg::INTERRUPT_STATUS), 0);
}

#[test]
fn queue_registers_are_locked_after_driver_ok() {
    let mut t = transport();
    linux_init(&mut t);
    let before = t.queues.clone();
    for q in 0..2 {
        wr(&mut t, reg::QUEUE_SEL, q);
        wr(&mut t, reg::QUEUE_NUM, 64);
        wr(&mut t, reg::QUEUE_DESC_LOW, 0x8000);
        wr(&mut t, reg::QUEUE_DRIVER_HIGH, 1);
        wr(&mut t, reg::QUEUE_DEVICE_LOW, 0x9000);
        wr(&mut t, reg::QUEUE_READY, 1 - q);
    }
    assert_eq!(t.queues, before);
    wr(&mut t, reg::QUEUE_SEL, 0);
    assert_eq!(rd(&mut t, reg::QUEUE_READY), 1);
}

#[test]
fn queue_registers_are_checked_before_driver_ok() {
    let mut t = transport();
    negotiate(&mut t, OFFERED);
    wr(&mut t, reg::QUEUE_SEL, 0);
    for bad in [0, 3, 100, u32::from(MAX_SIZE) * 2, 1 << 16, u32::MAX] {
        wr(&mut t, reg::QUEUE_NUM, bad);
        assert_eq!(t.queues[0].size, MAX_SIZE, "QueueNum {bad}");
    }
    wr(&mut t, reg::QUEUE_NUM, 1);
    assert_eq!(t.queues[0].size, 1);
    wr(&mut t, reg::QUEUE_READY, 2);
    assert_eq!(rd(&mut t, reg::QUEUE_READY), 0);
    // A ready queue keeps its set-up until it is disabled again.
    wr(&mut t, reg::QUEUE_READY, 1);
    wr(&mut t, reg::QUEUE_NUM, 4);
    wr(&mut t, reg::QUEUE_DESC_LOW, 0x40);
    assert_eq!((t.queues[0].size, t.queues[0].desc_table), (1, 0));
    wr(&mut t, reg::QUEUE_READY, 0);
    wr(&mut t, reg::QUEUE_NUM, 4);
    assert_eq!(t.queues[0].size, 4);
    // Queues the device lacks take nothing.
    wr(&mut t, reg::QUEUE_SEL, 2);
    wr(&mut t, reg::QUEUE_READY, 1);
    wr(&mut t, reg::QUEUE_NUM, 4);
    assert_eq!(rd(&mut t, reg::QUEUE_READY), 0);
    assert_eq!(t.queues.len(), 2);
}

#[test]
fn notify_is_forwarded_for_live_queues_only() {
    let mut t = transport();
    negotiate(&mut t, OFFERED);
    setup_queue(&mut t, &QUEUE0);
    wr(&mut t, QUEUE_NOTIFY_OFFSET, 0);
    add_status(&mut t, DRIVER_OK);
    for queue in [0, 1, 2, u32::MAX] {
        wr(&mut t, QUEUE_NOTIFY_OFFSET, queue);
    }
    let notified: Vec<_> = calls(&t)
        .into_iter()
        .filter(|c| matches!(c, Call::Notify(_)))
        .collect();
    assert_eq!(notified, vec![Call::Notify(0)]);
}

#[test]
fn wrong_width_register_accesses_are_ignored() {
    let mut t = transport();
    let mut half = [0xaau8; 2];
    t.read(reg::MAGIC_VALUE, &mut half);
    assert_eq!(half, [0, 0]);
    let mut wide = [0xaau8; 8];
    t.read(reg::MAGIC_VALUE, &mut wide);
    assert_eq!(wide, [0; 8]);
    t.write(reg::STATUS, &[ACKNOWLEDGE as u8]);
    t.write(reg::STATUS, &u64::from(ACKNOWLEDGE).to_le_bytes());
    t.write(reg::STATUS, &[]);
    assert_eq!(rd(&mut t, reg::STATUS), 0);
    // Unaligned and unknown offsets read 0.
    assert_eq!(rd(&mut t, reg::MAGIC_VALUE + 1), 0);
    assert_eq!(rd(&mut t, 0x0c0), 0);
    assert!(calls(&t).is_empty());
}

/// xorshift64*: a small deterministic generator, so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One step of a well-behaved driver, so that random walks also get the device going.
fn driver_step(t: &mut Transport, rng: &mut Rng) {
    match rng.below(3) {
        0 => {
            let status = rd(t, reg::STATUS);
            if let Some(step) = STEPS.into_iter().find(|step| status & step == 0) {
                wr(t, reg::STATUS, status | step);
            }
        }
        1 => {
            wr(t, reg::DRIVER_FEATURES_SEL, 1);
            wr(t, reg::DRIVER_FEATURES, 1);
            wr(t, reg::DRIVER_FEATURES_SEL, 0);
            wr(t, reg::DRIVER_FEATURES, (F_LOW * rng.below(2)) as u32);
        }
        _ => {
            wr(t, reg::QUEUE_SEL, rng.below(3) as u32);
            wr(t, reg::QUEUE_NUM, 1 << rng.below(5));
            let base = rng.below(1 << 20) * 0x1000;
            for (i, low) in [
                reg::QUEUE_DESC_LOW,
                reg::QUEUE_DRIVER_LOW,
                reg::QUEUE_DEVICE_LOW,
            ]
            .into_iter()
            .enumerate()
            {
                wr(t, low, (base + i as u64 * 0x400) as u32);
                wr(t, low + 4, (base >> 32) as u32);
            }
            wr(t, reg::QUEUE_READY, 1);
        }
    }
}

/// Random guest accesses (and a proxy that breaks and fails at random) never panic, and the
/// transport's promises hold throughout: the fake proxy asserts that every activation is
/// validated, and the status always reads as a legal prefix of the initialisation.
#[test]
fn random_accesses_never_panic() {
    const REGISTERS: [u64; 28] = [
        0x000, 0x004, 0x008, 0x00c, 0x010, 0x014, 0x020, 0x024, 0x030, 0x034, 0x038, 0x044, 0x050,
        0x060, 0x064, 0x070, 0x080, 0x084, 0x090, 0x094, 0x0a0, 0x0a4, 0x0ac, 0x0b0, 0x0b8, 0x0c0,
        0x0fc, 0x100,
    ];
    const SIZES: [usize; 8] = [0, 1, 2, 3, 4, 4, 8, 16];
    let legal: Vec<u32> = (0..=STEPS.len())
        .map(|n| STEPS[..n].iter().fold(0, |acc, bit| acc | bit))
        .collect();
    let mut rng = Rng(0x5eed_cafe_f00d_0001);
    let mut activations = 0;
    for round in 0..40 {
        let mut t = transport();
        t.proxy_mut().info.num_queues = 1 + (round % 3) as u16;
        t.proxy_mut().info.max_queue_size = 1 << (round % 5);
        for _ in 0..5_000 {
            let offset = match rng.below(4) {
                0 => rng.below(0x1100),
                1 => rng.next(),
                _ => REGISTERS[rng.below(REGISTERS.len() as u64) as usize] + rng.below(2) * 0x100,
            };
            let value = match rng.below(4) {
                0 => rng.next() as u32,
                1 => 1 << rng.below(32),
                2 => rng.below(3) as u32,
                _ => rd(&mut t, reg::STATUS) | STEPS[rng.below(4) as usize],
            };
            let size = SIZES[rng.below(SIZES.len() as u64) as usize];
            let mut data = vec![0u8; size];
            let bytes = value.to_le_bytes();
            data.iter_mut().zip(bytes).for_each(|(d, b)| *d = b);
            match rng.below(64) {
                0 => t.proxy_mut().broken = !t.proxy().broken,
                1 => t.proxy_mut().fail_activate = rng.below(2) == 0,
                2 => t.mark_needs_reset(),
                3..=20 => driver_step(&mut t, &mut rng),
                21..=40 => t.read(offset, &mut data),
                _ => t.write(offset, &data),
            }
            let status = t.device_status() & !(DEVICE_NEEDS_RESET | FAILED);
            assert!(legal.contains(&status), "status {status:#x}");
            assert_eq!(rd(&mut t, reg::MAGIC_VALUE), MAGIC_VALUE);
        }
        activations += t
            .proxy()
            .calls
            .iter()
            .filter(|c| matches!(c, Call::Activate(..)))
            .count();
    }
    // The walk is not trivial: it gets devices activated (42 times with this seed).
    assert!(activations >= 10, "{activations} activations");
}
