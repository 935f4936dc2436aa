//! Feature bits and the config space of virtio-fs (`struct virtio_fs_config`).

use super::TAG_LEN;
use crate::{VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_RING_INDIRECT_DESC, VIRTIO_F_VERSION_1};

/// Features the device offers: no notification queue, no DAX window.
pub(crate) const FEATURES: u64 =
    VIRTIO_F_VERSION_1 | VIRTIO_F_RING_INDIRECT_DESC | VIRTIO_F_RING_EVENT_IDX;

/// Bytes of the config space: `tag[36]`, `num_request_queues` (le32).
pub(crate) const CONFIG_LEN: usize = TAG_LEN + 4;

/// The config space for `tag` (at most [`TAG_LEN`] bytes, NUL-padded; a tag of exactly 36
/// bytes has no NUL, as the spec allows) and `queues` request queues.
pub(crate) fn config(tag: &str, queues: u16) -> Vec<u8> {
    let mut space = vec![0u8; CONFIG_LEN];
    let n = tag.len().min(TAG_LEN);
    space[..n].copy_from_slice(&tag.as_bytes()[..n]);
    space[TAG_LEN..].copy_from_slice(&u32::from(queues).to_le_bytes());
    space
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_space_is_the_spec_layout() {
        let c = config("share", 3);
        assert_eq!(c.len(), 40);
        assert_eq!(&c[..6], b"share\0");
        assert!(c[5..36].iter().all(|&b| b == 0));
        assert_eq!(&c[36..], &[3, 0, 0, 0]);
        let long = "x".repeat(36);
        assert_eq!(&config(&long, 1)[..36], long.as_bytes());
    }
}
