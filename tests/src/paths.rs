//! Where things are: the repository root, the guest artefacts `images/build.sh` produces, and
//! self-cleaning temporary directories for test inputs.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// The repository (Cargo workspace) root: the parent of this crate's directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives one level below the workspace root")
        .to_path_buf()
}

/// `images/out/`, where `images/build.sh` puts every guest artefact, or `SVMM_IMAGES_DIR` if set
/// (e.g. images built elsewhere, or a test guest under development).
pub fn images_out() -> PathBuf {
    match std::env::var_os("SVMM_IMAGES_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => repo_root().join("images").join("out"),
    }
}

/// The path of the guest artefact `name` (e.g. `testguest.elf`, `vmlinux`, `bzImage`,
/// `initramfs.cpio.gz`, `rootfs.ext4`) in `images/out/`.
///
/// # Panics
/// When the file is missing, with a message that says how to build it: a test must fail loudly
/// rather than pass without its guest.
pub fn artefact(name: &str) -> PathBuf {
    let path = images_out().join(name);
    if !path.is_file() {
        panic!(
            "\n\n*** guest artefact missing: {} ***\n\
             The integration tests need the guest images. Build them first:\n\n    \
             {}/images/build.sh\n\n\
             (or run the whole suite with tests/run.sh, which does that for you)\n",
            path.display(),
            repo_root().display()
        );
    }
    path
}

/// A directory under the system temporary directory, removed with its contents on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a fresh, empty directory whose name contains `label` and this process's id.
    pub fn new(label: &str) -> TempDir {
        TempDir::new_in(&std::env::temp_dir(), label)
    }

    /// Like [`TempDir::new`], under `base` instead of the system temporary directory (e.g. on
    /// a file system that supports `O_DIRECT`, for disk images).
    pub fn new_in(base: &Path, label: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = base.join(format!("svmm-tests-{label}-{}-{n}", std::process::id()));
        // A leftover from an earlier process with the same pid is stale: start clean.
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create temporary dir {}: {e}", path.display()));
        TempDir { path }
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `contents` to the file `name` inside the directory and returns its path.
    pub fn file(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.path.join(name);
        fs::write(&path, contents)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}
