//! virtio-blk tests.
