//! virtio-blk feature bits and config space (`struct virtio_blk_config`, little endian).
//!
//! The config space is read-only for the driver: the only writable field in the spec
//! (`writeback`) needs `VIRTIO_BLK_F_CONFIG_WCE`, which is not offered.

use super::{
    MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, MAX_WRITE_ZEROES_SECTORS, MAX_WRITE_ZEROES_SEG,
    SECTOR_SIZE, SEG_MAX, SIZE_MAX,
};
use crate::{VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_RING_INDIRECT_DESC, VIRTIO_F_VERSION_1};

/// `size_max` is valid.
pub const VIRTIO_BLK_F_SIZE_MAX: u64 = 1 << 1;
/// `seg_max` is valid.
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
/// The device is read-only.
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
/// `blk_size` is valid.
pub const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << 6;
/// Cache flush command.
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
/// `num_queues` is valid.
pub const VIRTIO_BLK_F_MQ: u64 = 1 << 12;
/// Discard command.
pub const VIRTIO_BLK_F_DISCARD: u64 = 1 << 13;
/// Write-zeroes command.
pub const VIRTIO_BLK_F_WRITE_ZEROES: u64 = 1 << 14;

/// Bytes of config space published: everything up to and including
/// `write_zeroes_may_unmap` and its padding (secure erase and zoned fields are not offered).
pub const CONFIG_LEN: usize = 60;

/// What the device is, as the config space and feature bits tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Size in 512-byte sectors.
    pub capacity: u64,
    /// Logical block size advertised in `blk_size` (512, or the direct-I/O alignment).
    pub blk_size: u32,
    /// Number of request queues.
    pub num_queues: u16,
    /// Writes, discard and write-zeroes are refused.
    pub read_only: bool,
}

/// Every feature a blk device may offer, read-only or not.
pub(crate) const ALL_FEATURES: u64 = VIRTIO_F_VERSION_1
    | VIRTIO_F_RING_INDIRECT_DESC
    | VIRTIO_F_RING_EVENT_IDX
    | VIRTIO_BLK_F_SIZE_MAX
    | VIRTIO_BLK_F_SEG_MAX
    | VIRTIO_BLK_F_BLK_SIZE
    | VIRTIO_BLK_F_FLUSH
    | VIRTIO_BLK_F_MQ
    | VIRTIO_BLK_F_RO
    | VIRTIO_BLK_F_DISCARD
    | VIRTIO_BLK_F_WRITE_ZEROES;

impl Geometry {
    /// Features offered (a subset of [`ALL_FEATURES`]). `GET_ID` has no feature bit: every
    /// device answers it.
    /// Indirect descriptors are safe to offer: the copy-in walks an indirect table under the
    /// same bounds as the ring's chain.
    pub fn features(&self) -> u64 {
        let mut f = VIRTIO_F_VERSION_1
            | VIRTIO_F_RING_INDIRECT_DESC
            | VIRTIO_F_RING_EVENT_IDX
            | VIRTIO_BLK_F_SIZE_MAX
            | VIRTIO_BLK_F_SEG_MAX
            | VIRTIO_BLK_F_BLK_SIZE
            | VIRTIO_BLK_F_FLUSH
            | VIRTIO_BLK_F_MQ;
        if self.read_only {
            f |= VIRTIO_BLK_F_RO;
        } else {
            f |= VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES;
        }
        f
    }

    /// The config space bytes.
    pub fn config(&self) -> Vec<u8> {
        let mut c = vec![0u8; CONFIG_LEN];
        let mut put = |offset: usize, bytes: &[u8]| {
            c[offset..offset + bytes.len()].copy_from_slice(bytes);
        };
        put(0, &self.capacity.to_le_bytes());
        put(8, &SIZE_MAX.to_le_bytes());
        put(12, &SEG_MAX.to_le_bytes());
        // 16..20: geometry (cylinders, heads, sectors): not offered.
        put(20, &self.blk_size.to_le_bytes());
        // 24..32: topology: not offered. 32: writeback, 33: unused.
        put(34, &self.num_queues.to_le_bytes());
        put(36, &MAX_DISCARD_SECTORS.to_le_bytes());
        put(40, &MAX_DISCARD_SEG.to_le_bytes());
        let alignment = u32::try_from(u64::from(self.blk_size) / SECTOR_SIZE).unwrap_or(1);
        put(44, &alignment.max(1).to_le_bytes());
        put(48, &MAX_WRITE_ZEROES_SECTORS.to_le_bytes());
        put(52, &MAX_WRITE_ZEROES_SEG.to_le_bytes());
        // write_zeroes_may_unmap: with the unmap flag the range is punched out (reads as zeroes).
        put(56, &[1]);
        c
    }
}
