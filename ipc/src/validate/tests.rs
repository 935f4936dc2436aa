//! Each check in `validate` accepts the good case and rejects every bad one.

use super::*;
use crate::fuzzing::{sample_vmm_messages, sample_worker_messages};
use crate::messages::{DeviceStats, QueueStats};

fn ready(device_type: u32, num_queues: u16, max_queue_size: u16, config_len: usize) -> WorkerToVmm {
    WorkerToVmm::Ready {
        device_type,
        device_features: 1 << 32,
        num_queues,
        max_queue_size,
        config: vec![0; config_len],
    }
}

fn layout() -> DeviceLayout {
    DeviceLayout {
        device_features: (1 << 32) | 0b1010,
        num_queues: 2,
        max_queue_size: 256,
        config_len: 8,
    }
}

fn queue(index: u16, size: u16) -> QueueConfig {
    QueueConfig {
        index,
        size,
        desc_table: 0x1000,
        avail_ring: 0x2000,
        used_ring: 0x3000,
    }
}

fn activate(queues: Vec<QueueConfig>) -> VmmToWorker {
    VmmToWorker::Activate {
        driver_features: 1 << 32,
        queues,
    }
}

#[test]
fn samples_are_valid() {
    for msg in sample_worker_messages() {
        assert_eq!(msg.validate(&Limits::default()), Ok(()), "{msg:?}");
    }
    for msg in sample_vmm_messages() {
        assert_eq!(
            msg.validate(&crate::fuzzing::sample_layout()),
            Ok(()),
            "{msg:?}"
        );
    }
}

#[test]
fn ready_bounds() {
    let limits = Limits::default();
    assert_eq!(ready(2, 1, 256, 60).validate(&limits), Ok(()));
    assert_eq!(ready(2, 64, 32768, 256).validate(&limits), Ok(()));
    assert_eq!(
        ready(0, 1, 256, 60).validate(&limits),
        Err(ProtocolError::ReservedDeviceType)
    );
    assert_eq!(
        ready(2, 0, 256, 60).validate(&limits),
        Err(ProtocolError::NoQueues)
    );
    assert_eq!(
        ready(2, 65, 256, 60).validate(&limits),
        Err(ProtocolError::TooManyQueues { count: 65, max: 64 })
    );
    for bad in [0, 3, 255, 65535] {
        assert_eq!(
            ready(2, 1, bad, 60).validate(&limits),
            Err(ProtocolError::BadMaxQueueSize(bad))
        );
    }
    assert_eq!(
        ready(2, 1, 256, 257).validate(&limits),
        Err(ProtocolError::ConfigTooLong { len: 257, max: 256 })
    );
    let custom = Limits {
        max_config_len: 16,
        max_queues: 1,
    };
    assert!(ready(2, 1, 256, 17).validate(&custom).is_err());
    assert!(ready(2, 2, 256, 16).validate(&custom).is_err());
}

#[test]
fn layout_narrows_later_messages() {
    let msg = ready(2, 2, 128, 8);
    let layout = msg.layout().unwrap();
    assert_eq!(
        layout,
        DeviceLayout {
            device_features: 1 << 32,
            num_queues: 2,
            max_queue_size: 128,
            config_len: 8
        }
    );
    assert_eq!(WorkerToVmm::Activated.layout(), None);
    let limits = layout.limits();
    let stats = |n| {
        WorkerToVmm::Stats(DeviceStats {
            queues: vec![QueueStats::default(); n],
        })
    };
    assert_eq!(stats(2).validate(&limits), Ok(()));
    assert_eq!(
        stats(3).validate(&limits),
        Err(ProtocolError::TooManyQueues { count: 3, max: 2 })
    );
    let changed = |n| WorkerToVmm::ConfigChanged { config: vec![1; n] };
    assert_eq!(changed(8).validate(&limits), Ok(()));
    assert_eq!(
        changed(9).validate(&limits),
        Err(ProtocolError::ConfigTooLong { len: 9, max: 8 })
    );
}

#[test]
fn activate_accepts_good_queues() {
    assert_eq!(
        activate(vec![queue(1, 256), queue(0, 1)]).validate(&layout()),
        Ok(())
    );
    assert_eq!(activate(vec![]).validate(&layout()), Ok(()));
}

#[test]
fn activate_rejects_unoffered_features() {
    let msg = VmmToWorker::Activate {
        driver_features: (1 << 32) | 0b0101,
        queues: vec![],
    };
    assert_eq!(
        msg.validate(&layout()),
        Err(ProtocolError::UnofferedFeatures { extra: 0b0101 })
    );
}

#[test]
fn activate_rejects_bad_queues() {
    let l = layout();
    assert_eq!(
        activate(vec![queue(0, 8); 3]).validate(&l),
        Err(ProtocolError::TooManyQueues { count: 3, max: 2 })
    );
    assert_eq!(
        activate(vec![queue(2, 8)]).validate(&l),
        Err(ProtocolError::QueueIndexOutOfRange {
            index: 2,
            num_queues: 2
        })
    );
    assert_eq!(
        activate(vec![queue(1, 8), queue(1, 8)]).validate(&l),
        Err(ProtocolError::DuplicateQueue(1))
    );
    for size in [0, 3, 100, 512, 32768] {
        assert_eq!(
            activate(vec![queue(0, size)]).validate(&l),
            Err(ProtocolError::BadQueueSize {
                index: 0,
                size,
                max: 256
            })
        );
    }
}

#[test]
fn activate_rejects_bad_ring_addresses() {
    type Field = fn(&mut QueueConfig) -> &mut u64;
    let cases: [(Field, &str, u64); 6] = [
        (|q| &mut q.desc_table, "descriptor table", 0x1008),
        (|q| &mut q.avail_ring, "available ring", 0x2001),
        (|q| &mut q.used_ring, "used ring", 0x3002),
        (|q| &mut q.desc_table, "descriptor table", u64::MAX - 15),
        (|q| &mut q.avail_ring, "available ring", u64::MAX - 1),
        (|q| &mut q.used_ring, "used ring", u64::MAX - 3),
    ];
    for (field, ring, addr) in cases {
        let mut q = queue(1, 16);
        *field(&mut q) = addr;
        assert_eq!(
            activate(vec![q]).validate(&layout()),
            Err(ProtocolError::BadRingAddress {
                index: 1,
                ring,
                addr
            })
        );
    }
}

#[test]
fn config_writes_stay_inside_config_space() {
    let l = layout();
    let write = |offset, len| VmmToWorker::WriteConfig {
        offset,
        data: vec![0; len],
    };
    assert_eq!(write(0, 8).validate(&l), Ok(()));
    assert_eq!(write(4, 4).validate(&l), Ok(()));
    assert_eq!(write(8, 0).validate(&l), Ok(()));
    for (offset, len) in [(5, 4), (8, 1), (9, 0), (u32::MAX, 1), (u32::MAX, 0)] {
        assert_eq!(
            write(offset, len).validate(&l),
            Err(ProtocolError::ConfigWriteOutOfRange {
                offset,
                len,
                config_len: 8
            })
        );
    }
}

#[test]
fn errors_read_well() {
    let e = ProtocolError::ConfigWriteOutOfRange {
        offset: 5,
        len: 4,
        config_len: 8,
    };
    assert_eq!(
        e.to_string(),
        "config write of 4 bytes at offset 5 outside a 8-byte config space"
    );
}

/// `Resume` is checked exactly as `Activate`: the same features and queues.
#[test]
fn resume_is_checked_like_activate() {
    let resume = |driver_features, queues| VmmToWorker::Resume {
        driver_features,
        queues,
    };
    let l = layout();
    assert_eq!(
        resume(1 << 32, vec![queue(1, 256), queue(0, 1)]).validate(&l),
        Ok(())
    );
    assert_eq!(
        resume((1 << 32) | 0b0101, vec![]).validate(&l),
        Err(ProtocolError::UnofferedFeatures { extra: 0b0101 })
    );
    assert_eq!(
        resume(1 << 32, vec![queue(0, 8), queue(0, 8)]).validate(&l),
        Err(ProtocolError::DuplicateQueue(0))
    );
    assert!(resume(1 << 32, vec![queue(2, 8)]).validate(&l).is_err());
}

/// A worker cannot claim more pending chains than its queues can hold.
#[test]
fn resumed_pending_is_bounded_by_the_queues() {
    let limits = layout().limits();
    let resumed = |pending| WorkerToVmm::Resumed { pending };
    assert_eq!(resumed(0).validate(&limits), Ok(()));
    assert_eq!(resumed(65536).validate(&limits), Ok(()));
    assert_eq!(
        resumed(65537).validate(&limits),
        Err(ProtocolError::TooManyPending {
            pending: 65537,
            max: 65536
        })
    );
}
