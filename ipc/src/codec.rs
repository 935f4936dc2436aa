//! The wire format: the only module that knows how a message becomes bytes.
//!
//! Every message is one bincode 2 value with this configuration:
//!
//! - **Fixed-width little-endian integers** (`u16` = 2 bytes, `u64` = 8 bytes, enum tags and
//!   `Vec` lengths = `u32` / `u64`). Varints would save a few bytes on messages that are rare
//!   anyway, but they admit several encodings of one value; with fixed-width integers the
//!   encoding is *canonical*: every byte string that decodes has exactly one meaning and
//!   re-encodes to the same bytes (the fuzz target checks this).
//! - **[`MAX_MESSAGE_SIZE`] bytes on the wire**, enforced by [`encode`] and [`decode`] and by the
//!   channel's receive buffer. The largest legitimate message is a worker's `Ready` with its
//!   config space (≤ 256 bytes for virtio-mmio) or an `Activate` / `Stats` listing every queue
//!   (28 / 24 bytes per queue); 4 KiB leaves room for ~140 queues and still fits one page.
//! - **[`DECODE_ALLOC_LIMIT`] bytes of container allocation** (bincode's `with_limit`): before
//!   bincode allocates a `Vec` it claims `len * size_of::<T>()` against this budget, so a length
//!   prefix of 2^60 fails with `LimitExceeded` instead of allocating. It is larger than the wire
//!   limit because an element can be bigger in memory than on the wire (a 28-byte `QueueConfig`
//!   occupies 32 bytes); 4x covers every type built from integers and `Vec`s.
//! - **No trailing bytes**: a packet holds exactly one message.

use bincode::config::{Configuration, Fixint, Limit, LittleEndian};
use bincode::error::{DecodeError, EncodeError};
pub use bincode::{Decode, Encode};

/// The bincode crate, for the derive macros of types other crates encode through this module
/// (`#[derive(ipc::Encode, ipc::Decode)] #[bincode(crate = "ipc::codec::bincode")]`): one bincode,
/// one configuration, wherever a type is defined.
#[doc(hidden)]
pub use bincode;

/// Largest encoded message, in bytes, in either direction.
pub const MAX_MESSAGE_SIZE: usize = 4096;

/// Most bytes the decoder may allocate for containers while decoding one message.
pub const DECODE_ALLOC_LIMIT: usize = 4 * MAX_MESSAGE_SIZE;

type WireConfig = Configuration<LittleEndian, Fixint, Limit<DECODE_ALLOC_LIMIT>>;

const CONFIG: WireConfig = bincode::config::standard()
    .with_little_endian()
    .with_fixed_int_encoding()
    .with_limit::<DECODE_ALLOC_LIMIT>();

/// Why a message could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The input, or the encoding being produced, is longer than [`MAX_MESSAGE_SIZE`].
    #[error("message is larger than the {MAX_MESSAGE_SIZE}-byte limit")]
    TooLarge,
    /// bincode refused to encode the value.
    #[error("cannot encode message")]
    Encode(#[source] EncodeError),
    /// The bytes are not a valid message: truncated, bad enum tag, oversized container, ...
    #[error("malformed message")]
    Decode(#[source] DecodeError),
    /// A valid message was followed by more bytes.
    #[error("{extra} trailing bytes after a {used}-byte message")]
    TrailingBytes {
        /// Bytes the message itself occupied.
        used: usize,
        /// Bytes left over after it.
        extra: usize,
    },
}

/// Encodes `msg`, failing with [`CodecError::TooLarge`] if it needs more than
/// [`MAX_MESSAGE_SIZE`] bytes. Never writes (or allocates) more than that.
pub fn encode<T: Encode>(msg: &T) -> Result<Vec<u8>, CodecError> {
    let mut buf = vec![0u8; MAX_MESSAGE_SIZE];
    let len = bincode::encode_into_slice(msg, &mut buf, CONFIG).map_err(|e| match e {
        // The slice writer ran out of room: the message does not fit the limit.
        EncodeError::UnexpectedEnd => CodecError::TooLarge,
        e => CodecError::Encode(e),
    })?;
    buf.truncate(len);
    Ok(buf)
}

/// Decodes exactly one `T` from `bytes`.
///
/// Rejects input longer than [`MAX_MESSAGE_SIZE`], truncated input, invalid enum tags,
/// containers over [`DECODE_ALLOC_LIMIT`], and trailing bytes. Never panics on any input.
pub fn decode<T: Decode<()>>(bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() > MAX_MESSAGE_SIZE {
        return Err(CodecError::TooLarge);
    }
    let (msg, used) = bincode::decode_from_slice(bytes, CONFIG).map_err(CodecError::Decode)?;
    if used != bytes.len() {
        return Err(CodecError::TrailingBytes {
            used,
            extra: bytes.len() - used,
        });
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{QueueConfig, VmmToWorker, WorkerToVmm};
    use std::time::{Duration, Instant};

    /// xorshift64*: a fixed-seed PRNG so garbage tests are reproducible.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    fn valid_encodings() -> Vec<Vec<u8>> {
        crate::fuzzing::seeds()
            .into_iter()
            .filter(|(name, _)| name.starts_with("valid"))
            .map(|(_, bytes)| bytes)
            .collect()
    }

    fn assert_prefixes_fail<T: Encode + Decode<()> + std::fmt::Debug>(msg: &T) {
        let bytes = encode(msg).unwrap();
        for len in 0..bytes.len() {
            let result = decode::<T>(&bytes[..len]);
            assert!(
                result.is_err(),
                "{msg:?}: {len}-byte prefix decoded as {result:?}"
            );
        }
    }

    #[test]
    fn fixed_int_little_endian_layout() {
        let bytes = encode(&VmmToWorker::WriteConfig {
            offset: 0x0102_0304,
            data: vec![0xaa],
        })
        .unwrap();
        // u32 variant tag 1, u32 offset, u64 length, data.
        assert_eq!(
            bytes,
            [1, 0, 0, 0, 4, 3, 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0xaa]
        );
    }

    #[test]
    fn every_prefix_of_a_valid_encoding_fails() {
        crate::fuzzing::sample_worker_messages()
            .iter()
            .for_each(assert_prefixes_fail);
        crate::fuzzing::sample_vmm_messages()
            .iter()
            .for_each(assert_prefixes_fail);
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode(&WorkerToVmm::Activated).unwrap();
        bytes.push(0);
        assert!(matches!(
            decode::<WorkerToVmm>(&bytes),
            Err(CodecError::TrailingBytes { used: 4, extra: 1 })
        ));
    }

    #[test]
    fn invalid_variant_tag_is_rejected() {
        let bytes = 99u32.to_le_bytes();
        assert!(matches!(
            decode::<VmmToWorker>(&bytes),
            Err(CodecError::Decode(DecodeError::UnexpectedVariant { .. }))
        ));
    }

    #[test]
    fn oversized_encode_is_refused() {
        let msg = WorkerToVmm::ConfigChanged {
            config: vec![0; MAX_MESSAGE_SIZE],
        };
        assert!(matches!(encode(&msg), Err(CodecError::TooLarge)));
    }

    #[test]
    fn oversized_decode_is_refused() {
        // A well-formed message that is simply too long.
        let config = vec![7u8; MAX_MESSAGE_SIZE];
        let mut bytes = 1u32.to_le_bytes().to_vec();
        bytes.extend((config.len() as u64).to_le_bytes());
        bytes.extend(&config);
        assert!(matches!(
            decode::<WorkerToVmm>(&bytes),
            Err(CodecError::TooLarge)
        ));
    }

    #[test]
    fn largest_message_that_fits_round_trips() {
        // Queues are bigger in memory than on the wire: the allocation limit must not refuse
        // a message the wire limit accepts.
        let queue = QueueConfig {
            index: 0,
            size: 256,
            desc_table: 0,
            avail_ring: 0,
            used_ring: 0,
        };
        let fits = (MAX_MESSAGE_SIZE - 4 - 8 - 8) / 28;
        let msg = VmmToWorker::Activate {
            driver_features: 0,
            queues: vec![queue; fits],
        };
        let bytes = encode(&msg).unwrap();
        assert!(bytes.len() > MAX_MESSAGE_SIZE - 28);
        assert_eq!(decode::<VmmToWorker>(&bytes).unwrap(), msg);
        let too_many = VmmToWorker::Activate {
            driver_features: 0,
            queues: vec![queue; fits + 1],
        };
        assert!(matches!(encode(&too_many), Err(CodecError::TooLarge)));
    }

    #[test]
    fn huge_length_prefix_fails_fast_without_allocating() {
        for tag_and_prefix in [
            // WorkerToVmm::ConfigChanged { config: Vec<u8> of 2^60 bytes }
            (1u32, 1u64 << 60),
            // WorkerToVmm::Stats(DeviceStats { queues: Vec<QueueStats> of 2^60 }): overflows
            // len * size_of, which bincode also reports as LimitExceeded.
            (4, 1 << 60),
            (4, u64::MAX),
        ] {
            let mut bytes = tag_and_prefix.0.to_le_bytes().to_vec();
            bytes.extend(tag_and_prefix.1.to_le_bytes());
            let start = Instant::now();
            let err = decode::<WorkerToVmm>(&bytes).unwrap_err();
            assert!(
                matches!(err, CodecError::Decode(DecodeError::LimitExceeded)),
                "{err:?}"
            );
            assert!(start.elapsed() < Duration::from_millis(100));
        }
        // VmmToWorker::Activate { driver_features, queues: 2^60 }
        let mut bytes = 0u32.to_le_bytes().to_vec();
        bytes.extend(0u64.to_le_bytes());
        bytes.extend((1u64 << 60).to_le_bytes());
        assert!(matches!(
            decode::<VmmToWorker>(&bytes),
            Err(CodecError::Decode(DecodeError::LimitExceeded))
        ));
    }

    #[test]
    fn random_garbage_never_panics() {
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let mut buf = Vec::new();
        for _ in 0..20_000 {
            let len = (rng.next() % 96) as usize;
            buf.clear();
            buf.extend((0..len).map(|_| rng.next() as u8));
            // Bias the first four bytes towards valid variant tags so decoding goes deeper.
            if len >= 4 && rng.next() % 2 == 0 {
                buf[..4].copy_from_slice(&((rng.next() % 8) as u32).to_le_bytes());
            }
            crate::fuzzing::decode_any(&buf);
        }
    }

    #[test]
    fn mutated_valid_encodings_never_panic() {
        let mut rng = Rng(42);
        for bytes in valid_encodings() {
            for _ in 0..500 {
                let mut m = bytes.clone();
                let i = (rng.next() as usize) % m.len();
                m[i] = rng.next() as u8;
                crate::fuzzing::decode_any(&m);
            }
        }
    }
}
