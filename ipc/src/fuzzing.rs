//! What the `decode` fuzz target runs, shared with the corpus replay test so both check the
//! same properties, plus the sample messages the seed corpus and unit tests are built from.
//!
//! Not used by the VMM or workers.

use crate::codec::{decode, encode};
use crate::messages::{
    DeviceErrorKind, DeviceStats, QueueConfig, QueueStats, VmmToWorker, WorkerToVmm,
};
use crate::validate::{DeviceLayout, Limits, MAX_QUEUE_SIZE};
use bincode::{Decode, Encode};
use std::fmt::Debug;

/// Decodes `data` as each direction's message; whatever decodes is validated and re-encoded.
///
/// Panics (which is what the fuzzer looks for) only if a property breaks: a decoded message
/// must re-encode to exactly `data` (the encoding is canonical) and decode back to itself.
/// Validation may accept or reject, but must not panic.
pub fn decode_any(data: &[u8]) {
    if let Ok(msg) = decode::<WorkerToVmm>(data) {
        assert_round_trip(&msg, data);
        for limits in [
            Limits::default(),
            sample_layout().limits(),
            roomy_layout().limits(),
        ] {
            if msg.validate(&limits).is_ok() {
                if let Some(layout) = msg.layout() {
                    let _ = layout.limits();
                }
            }
        }
    }
    if let Ok(msg) = decode::<VmmToWorker>(data) {
        assert_round_trip(&msg, data);
        let _ = msg.validate(&sample_layout());
        let _ = msg.validate(&roomy_layout());
    }
}

fn assert_round_trip<T: Encode + Decode<()> + PartialEq + Debug>(msg: &T, data: &[u8]) {
    let bytes = encode(msg).expect("a decoded message must re-encode");
    assert_eq!(bytes, data, "encoding of {msg:?} is not canonical");
    let again: T = decode(&bytes).expect("a re-encoded message must decode");
    assert_eq!(&again, msg);
}

/// The largest layout a worker could declare: lets the fuzzer reach the deeper checks.
fn roomy_layout() -> DeviceLayout {
    DeviceLayout {
        device_features: u64::MAX,
        num_queues: u16::MAX,
        max_queue_size: MAX_QUEUE_SIZE,
        config_len: 4096,
    }
}

/// The layout the sample `Ready` declares; the sample `VmmToWorker` messages are valid for it.
pub fn sample_layout() -> DeviceLayout {
    DeviceLayout {
        device_features: (1 << 32) | (1 << 5),
        num_queues: 2,
        max_queue_size: 256,
        config_len: 8,
    }
}

/// One valid message of every `WorkerToVmm` variant (valid for `Limits::default()`).
pub fn sample_worker_messages() -> Vec<WorkerToVmm> {
    let layout = sample_layout();
    vec![
        WorkerToVmm::Ready {
            device_type: 1,
            device_features: layout.device_features,
            num_queues: layout.num_queues,
            max_queue_size: layout.max_queue_size,
            config: vec![0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x01, 0x00],
        },
        WorkerToVmm::ConfigChanged {
            config: vec![0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x00, 0x00],
        },
        WorkerToVmm::Activated,
        WorkerToVmm::ResetDone,
        WorkerToVmm::Stats(DeviceStats {
            queues: vec![
                QueueStats {
                    requests: 10,
                    bytes: 4096,
                    errors: 0,
                    drops: 0,
                },
                QueueStats {
                    requests: 3,
                    bytes: 1500,
                    errors: 1,
                    drops: 2,
                },
            ],
        }),
        WorkerToVmm::DeviceError {
            reason: DeviceErrorKind::HostIo { errno: 5 },
        },
        WorkerToVmm::SeccompViolation {
            syscall: 59,
            arch: 0xc000_003e,
        },
        WorkerToVmm::Resumed { pending: 3 },
    ]
}

/// One valid message of every `VmmToWorker` variant (valid for [`sample_layout`]).
pub fn sample_vmm_messages() -> Vec<VmmToWorker> {
    let queues = vec![
        QueueConfig {
            index: 0,
            size: 256,
            desc_table: 0x10_0000,
            avail_ring: 0x10_1000,
            used_ring: 0x10_2000,
        },
        QueueConfig {
            index: 1,
            size: 128,
            desc_table: 0x11_0000,
            avail_ring: 0x11_0800,
            used_ring: 0x11_1000,
        },
    ];
    vec![
        VmmToWorker::Activate {
            driver_features: 1 << 32,
            queues: queues.clone(),
        },
        VmmToWorker::WriteConfig {
            offset: 6,
            data: vec![1, 0],
        },
        VmmToWorker::Reset,
        VmmToWorker::Shutdown,
        VmmToWorker::GetStats,
        VmmToWorker::Resume {
            driver_features: 1 << 32,
            queues,
        },
    ]
}

/// The seed corpus: `(file name, bytes)`, deterministic. Valid encodings of every sample
/// message, then a few malformed inputs.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let name = |prefix: &str, debug: String| {
        let variant: String = debug
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        format!("{prefix}-{}", variant.to_ascii_lowercase())
    };
    let mut seeds = Vec::new();
    for msg in sample_worker_messages() {
        let bytes = encode(&msg).expect("samples fit");
        seeds.push((name("valid-w2v", format!("{msg:?}")), bytes));
    }
    for msg in sample_vmm_messages() {
        let bytes = encode(&msg).expect("samples fit");
        seeds.push((name("valid-v2w", format!("{msg:?}")), bytes));
    }
    let ready = encode(&sample_worker_messages()[0]).expect("samples fit");
    let mut huge_len = 1u32.to_le_bytes().to_vec();
    huge_len.extend((1u64 << 60).to_le_bytes());
    seeds.extend([
        ("garbage-bad-tag".to_owned(), 77u32.to_le_bytes().to_vec()),
        ("garbage-huge-len".to_owned(), huge_len),
        (
            "garbage-trailing".to_owned(),
            [ready.as_slice(), &[0]].concat(),
        ),
        (
            "garbage-truncated".to_owned(),
            ready[..ready.len() - 1].to_vec(),
        ),
    ]);
    seeds
}
