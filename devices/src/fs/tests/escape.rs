//! Nothing the guest sends reaches outside the share: `..`, names with `/`, absolute and
//! relative symlinks, a symlink to an outside directory, a hard link the host made to an
//! outside file. An inotify watch on the canary beside the share proves the device never
//! opened, read or changed it.

use std::os::fd::OwnedFd;
use std::os::unix::fs::symlink;

use fuse_abi::linux as abi;
use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
use zerocopy::IntoBytes;

use super::*;
use crate::blk::tests::memory;

const ROOT: u64 = 1;
const S_IFMT: u32 = 0o170000;
const S_IFLNK: u32 = 0o120000;

/// Watches every kind of access to `path`.
fn watch(path: &Path) -> OwnedFd {
    let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK).unwrap();
    let all = WatchFlags::ACCESS
        | WatchFlags::MODIFY
        | WatchFlags::ATTRIB
        | WatchFlags::OPEN
        | WatchFlags::CLOSE_WRITE
        | WatchFlags::CLOSE_NOWRITE
        | WatchFlags::DELETE_SELF
        | WatchFlags::MOVE_SELF;
    inotify::add_watch(&fd, path, all).unwrap();
    fd
}

/// Fails if the watch saw anything.
fn assert_untouched(watch: &OwnedFd, what: &str) {
    let mut buf = [0u8; 256];
    match rustix::io::read(watch, &mut buf) {
        Err(rustix::io::Errno::AGAIN) => {}
        other => panic!("{what} was accessed: {other:?}"),
    }
}

#[test]
fn nothing_the_guest_names_leaves_the_share() {
    let mem = memory();
    let share = Share::new();
    let canary = share.outside.join("canary");
    std::fs::write(share.outside.join("linked"), b"linked from outside\n").unwrap();
    std::fs::write(share.path("inside"), b"inside\n").unwrap();
    std::fs::create_dir(share.path("sub")).unwrap();
    symlink("/etc/passwd", share.path("abs")).unwrap();
    symlink(&canary, share.path("abs-canary")).unwrap();
    symlink("../outside/canary", share.path("rel")).unwrap();
    symlink("../outside", share.path("outdir")).unwrap();
    symlink("../../outside", share.path("sub/up")).unwrap();
    std::fs::hard_link(share.outside.join("linked"), share.path("hardlink")).unwrap();
    let canary_watch = watch(&canary);
    let outside_watch = watch(&share.outside);

    let mut c = Client::ready(&mem, &share, options());
    let sub = c.lookup(ROOT, "sub").unwrap().nodeid;

    // `.`, `..` and names with `/` are refused before anything is resolved.
    for name in [
        "..",
        ".",
        "../outside/canary",
        "/etc/passwd",
        "sub/../../outside",
        "sub/",
        "a/b",
    ] {
        assert_eq!(c.lookup(ROOT, name).err(), Some(errno::INVAL), "{name}");
        assert_eq!(c.lookup(sub, name).err(), Some(errno::INVAL), "{name}");
    }
    assert_eq!(
        c.create(ROOT, "../evil", 2, 0o644).err(),
        Some(errno::INVAL)
    );
    assert_eq!(c.mkdir(ROOT, "a/b", 0o755).err(), Some(errno::INVAL));
    assert_eq!(c.symlink(ROOT, "x/y", "z").err(), Some(errno::INVAL));
    std::fs::write(share.path("movable"), b"m").unwrap();
    assert_eq!(
        c.rename(ROOT, "movable", ROOT, "../moved", 0).err(),
        Some(errno::INVAL)
    );
    assert_eq!(
        c.rename(ROOT, "../outside/canary", ROOT, "stolen", 0).err(),
        Some(errno::INVAL)
    );
    let inside = c.lookup(ROOT, "inside").unwrap().nodeid;
    assert_eq!(c.link(inside, ROOT, "../l").err(), Some(errno::INVAL));
    // A name longer than NAME_MAX.
    assert_eq!(
        c.lookup(ROOT, &"n".repeat(256)).err(),
        Some(errno::NAMETOOLONG)
    );

    // Symlinks are nodes of their own: never followed, never opened, never a directory.
    for (name, target) in [
        ("abs", "/etc/passwd".to_string()),
        ("abs-canary", canary.display().to_string()),
        ("rel", "../outside/canary".into()),
        ("outdir", "../outside".into()),
    ] {
        let e = c.lookup(ROOT, name).unwrap();
        assert_eq!(e.attr.mode & S_IFMT, S_IFLNK, "{name}");
        assert_eq!(c.open(e.nodeid, 0).err(), Some(errno::LOOP), "{name}");
        assert_eq!(c.opendir(e.nodeid).err(), Some(errno::NOTDIR), "{name}");
        assert_eq!(
            c.lookup(e.nodeid, "canary").err(),
            Some(errno::NOTDIR),
            "{name}"
        );
        // READLINK gives the target's text: the guest kernel resolves it in the guest.
        let text = c.call(opcode::READLINK, e.nodeid, &[]).unwrap();
        assert_eq!(text, target.as_bytes(), "{name}");
        // SETATTR on a symlink never reaches its target.
        let chmod = abi::fuse_setattr_in {
            valid: abi::FATTR_MODE,
            mode: 0o777,
            ..Default::default()
        };
        assert!(c.setattr(e.nodeid, chmod).is_err(), "{name}");
    }
    let up = c.lookup(sub, "up").unwrap();
    assert_eq!(c.lookup(up.nodeid, "canary").err(), Some(errno::NOTDIR));

    // A symlink the guest makes is just as inert.
    let mine = c.symlink(ROOT, "mine", "/etc/passwd").unwrap();
    assert_eq!(c.open(mine.nodeid, 0).err(), Some(errno::LOOP));
    // CREATE over an existing symlink does not follow it.
    assert!(c.create(ROOT, "rel", 2, 0o644).is_err());
    assert!(c.create(ROOT, "abs", 0o1 | 0o1000, 0o644).is_err());

    // The host's hard link to an outside file is served as that one file, and nothing
    // reachable from it leads further.
    let h = c.lookup(ROOT, "hardlink").unwrap();
    let fh = c.open(h.nodeid, 0).unwrap();
    assert_eq!(c.read(fh, 0, 4096).unwrap(), b"linked from outside\n");
    assert_eq!(c.lookup(h.nodeid, "canary").err(), Some(errno::NOTDIR));
    assert_eq!(c.lookup(h.nodeid, "..").err(), Some(errno::INVAL));

    // Listing the share lists the share.
    let names: Vec<String> = c
        .readdirplus(ROOT, 4096)
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(!names.contains(&"canary".to_string()), "{names:?}");
    // Node ids the guest never got lead nowhere.
    for node in [0, 2, 1 << 40, u64::MAX] {
        let _ = c.getattr(node);
        let _ = c.lookup(node, "canary");
    }

    assert_untouched(&canary_watch, "the canary");
    assert_untouched(&outside_watch, "the outside directory");
    assert_eq!(std::fs::read(&canary).unwrap(), CANARY);
}

#[test]
fn the_share_must_be_a_directory_and_proc_a_procfs() {
    let share = Share::new();
    std::fs::write(share.path("file"), b"x").unwrap();
    let file = rustix::fs::open(
        share.path("file"),
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    assert!(matches!(
        Fs::new(file, proc_fd(), options()),
        Err(crate::fs::FsError::NotADirectory)
    ));
    assert!(matches!(
        Fs::new(share.fd(), share.fd(), options()),
        Err(crate::fs::FsError::NotProc)
    ));
    let long = FsOptions {
        tag: "t".repeat(37),
        ..options()
    };
    assert!(Fs::new(share.fd(), proc_fd(), long).is_err());
    let none = FsOptions {
        queues: 0,
        ..options()
    };
    assert!(Fs::new(share.fd(), proc_fd(), none).is_err());
    let _ = abi::fuse_attr::default().as_bytes();
}
