//! Disk images for the virtio-blk trials: the test guest's data pattern, recomputed on the
//! host, what an image must hold after each of the guest's blk tests
//! (images/testguest/README.md, "blk tests"), and waiting for svmm's lock on an image to go.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

/// Bytes per sector.
pub const SECTOR: usize = 512;
/// The image the blk trials give the guest: 4 MiB, 8192 sectors.
pub const IMAGE_BYTES: usize = 4 << 20;
/// Every byte of a fresh image, so that the host sees both what the guest wrote and what it must
/// not have touched.
pub const BACKGROUND: u8 = 0xa5;

/// A fresh image: [`IMAGE_BYTES`] of [`BACKGROUND`].
pub fn fresh_image() -> Vec<u8> {
    vec![BACKGROUND; IMAGE_BYTES]
}

/// Writes the guest's pattern over `count` sectors from `sector` into `image`: the 8-byte
/// little-endian word at byte offset `8 k` of the disk is `(seed << 32) | (k mod 2^32)`.
pub fn put_pattern(image: &mut [u8], seed: u32, sector: usize, count: usize) {
    let range = sector * SECTOR..(sector + count) * SECTOR;
    for (word, at) in image[range.clone()]
        .chunks_exact_mut(8)
        .zip(range.step_by(8))
    {
        let k = (at / 8) as u64 & 0xffff_ffff;
        word.copy_from_slice(&((u64::from(seed) << 32) | k).to_le_bytes());
    }
}

/// What a fresh image holds after a `blk_write` run (`batch_requests == 0`), or after a `blk`
/// run whose batch had `batch_requests` requests of 8 sectors, on a device with 512-byte
/// blocks: see [`expected_image_blocks`].
pub fn expected_image(seed: u32, batch_requests: usize) -> Vec<u8> {
    expected_image_blocks(seed, batch_requests, 1)
}

/// [`expected_image`] on a device whose logical block is `block` sectors (`blk_size / 512`,
/// e.g. 8 with `direct=on` on a disk with 4 KiB direct-I/O alignment), where the guest places
/// its regions by blocks (images/testguest/src/tests/blk/mod.rs): A = block 0, B = 8 sectors
/// from `up(7, block)`, C = 64 sectors from `down(C/2, 8)`, D = the 8 sectors before
/// `down(C, block)`; the batch region (C/4) with the pattern, 32 zeroed sectors from
/// `up(C/8, 16)` (discard, then write-zeroes); the background everywhere else.
pub fn expected_image_blocks(seed: u32, batch_requests: usize, block: usize) -> Vec<u8> {
    let mut image = fresh_image();
    let capacity = IMAGE_BYTES / SECTOR;
    let up = |x: usize, to: usize| x.div_ceil(to) * to;
    let down = |x: usize, to: usize| x / to * to;
    let regions = [
        (0, block),
        (up(7, block), 8),
        (down(capacity / 2, 8), 64),
        (down(capacity, block) - 8, 8),
    ];
    for (sector, count) in regions {
        put_pattern(&mut image, seed, sector, count);
    }
    if batch_requests > 0 {
        put_pattern(&mut image, seed, down(capacity / 4, 8), 8 * batch_requests);
        let zeroed = up(capacity / 8, 16);
        image[zeroed * SECTOR..(zeroed + 32) * SECTOR].fill(0);
    }
    image
}

/// Compares the image file at `path` with `want`; the error names the first sector that
/// differs.
pub fn compare_image(path: &Path, want: &[u8], what: &str) -> Result<(), String> {
    let got = std::fs::read(path).map_err(|e| format!("{what}: read {}: {e}", path.display()))?;
    if got.len() != want.len() {
        return Err(format!(
            "{what}: the image is {} bytes, expected {}",
            got.len(),
            want.len()
        ));
    }
    let differs =
        |s: &usize| got[s * SECTOR..(s + 1) * SECTOR] != want[s * SECTOR..(s + 1) * SECTOR];
    match (0..got.len() / SECTOR).find(differs) {
        None => Ok(()),
        Some(sector) => {
            let at = sector * SECTOR;
            Err(format!(
                "{what}: sector {sector} of the image is not as expected\n  got  {:02x?}\n  want {:02x?}",
                &got[at..at + 16],
                &want[at..at + 16]
            ))
        }
    }
}

/// Waits up to `within` until nobody holds a lock on `image` any more: the workers of a killed
/// svmm die through their parent-death signal, and the kernel drops an io_uring's files (the
/// image) only after the ring's own asynchronous teardown, so svmm's `flock` outlives svmm for a
/// moment (the next svmm on the image would fail with "in use", exit 67).
pub fn wait_unlocked(image: &Path, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        let file = std::fs::File::open(image)
            .map_err(|e| format!("cannot open {}: {e}", image.display()))?;
        // SAFETY: flock only reads its two integer arguments; `file` keeps the fd open (and
        // closing it drops the lock we may have taken).
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{} is still locked {} s after svmm ended",
                image.display(),
                within.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_words_carry_seed_and_index() {
        let mut image = vec![0u8; 2 * SECTOR];
        put_pattern(&mut image, 0x1234_5678, 1, 1);
        assert!(image[..SECTOR].iter().all(|&b| b == 0));
        let word = |i: usize| u64::from_le_bytes(image[i * 8..i * 8 + 8].try_into().unwrap());
        assert_eq!(word(64), 0x1234_5678_0000_0040);
        assert_eq!(word(127), 0x1234_5678_0000_007f);
    }

    #[test]
    fn expected_images_differ_where_the_tests_wrote() {
        let written = expected_image(7, 0);
        let fresh = fresh_image();
        assert_ne!(written[..SECTOR], fresh[..SECTOR]);
        assert_eq!(written[SECTOR..7 * SECTOR], fresh[SECTOR..7 * SECTOR]);
        let full = expected_image(7, 4);
        assert!(full[1024 * SECTOR..1056 * SECTOR].iter().all(|&b| b == 0));
        // 4 KiB blocks: region A is a whole block, B starts at the next one.
        let blocks = expected_image_blocks(7, 4, 8);
        assert_ne!(
            blocks[7 * SECTOR..8 * SECTOR],
            fresh[7 * SECTOR..8 * SECTOR]
        );
        assert_eq!(
            blocks[8 * SECTOR..15 * SECTOR],
            full[8 * SECTOR..15 * SECTOR]
        );
        assert_eq!(blocks[..SECTOR], full[..SECTOR]);
    }
}
