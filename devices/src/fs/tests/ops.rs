//! Every operation end to end against a real directory, byte-exact.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use fuse_abi::linux as abi;
use zerocopy::IntoBytes;

use super::*;
use crate::blk::tests::memory;
use crate::fs::{CachePolicy, IdMap};

const ROOT: u64 = 1;
const O_RDONLY: u32 = 0;
const O_WRONLY: u32 = 1;
const O_RDWR: u32 = 2;
const O_EXCL: u32 = 0o200;
const O_TRUNC: u32 = 0o1000;

/// A file of `len` bytes with a position-dependent pattern.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn init_negotiates_7_31_and_requests_before_it_fail() {
    let mem = memory();
    let share = Share::new();
    let mut c = Client::new(&mem, &share, options());
    assert_eq!(c.lookup(ROOT, "x"), Err(errno::IO));
    let out = c.init().unwrap();
    assert_eq!((out.major, out.minor), (7, 31));
    assert_eq!(out.max_write, crate::fs::MAX_IO);
    assert_eq!(out.max_pages, 32);
    // Offered and accepted; POSIX locks offered by the guest but not taken.
    assert_ne!(out.flags & abi::FUSE_DO_READDIRPLUS, 0);
    assert_eq!(out.flags & abi::FUSE_POSIX_LOCKS, 0);
    // A second INIT without DESTROY is refused; after DESTROY it works again.
    assert_eq!(c.init().err(), Some(errno::IO));
    c.call(opcode::DESTROY, 0, &[]).unwrap();
    assert_eq!(c.lookup(ROOT, "x"), Err(errno::IO));
    c.init().unwrap();
    // Major version 8: the server answers with its own, for the guest to retry.
    let args = abi::fuse_init_in {
        major: 8,
        minor: 0,
        ..Default::default()
    };
    let body = c.call(opcode::INIT, 0, &args.as_bytes()[..16]).unwrap();
    assert_eq!(body.len(), 8);
    assert_eq!(&body[..4], &7u32.to_le_bytes());
    // Major 6 or minor < 9: EPROTO.
    let args = abi::fuse_init_in {
        major: 7,
        minor: 8,
        ..Default::default()
    };
    assert_eq!(
        c.call(opcode::INIT, 0, &args.as_bytes()[..16]).err(),
        Some(71)
    );
}

#[test]
fn lookup_getattr_open_read_are_byte_exact() {
    let mem = memory();
    let share = Share::new();
    let big = pattern(300_000);
    std::fs::write(share.path("big"), &big).unwrap();
    std::fs::create_dir(share.path("sub")).unwrap();
    std::fs::write(share.path("sub/small"), b"hello, guest\n").unwrap();
    let mut c = Client::ready(&mem, &share, options());

    let e = c.lookup(ROOT, "big").unwrap();
    assert!(e.nodeid > ROOT);
    assert_eq!(e.attr.size, big.len() as u64);
    assert_eq!(e.attr.mode & 0o170000, 0o100000);
    assert_eq!(
        e.attr.ino,
        std::fs::metadata(share.path("big")).unwrap().ino()
    );
    assert_eq!((e.entry_valid, e.attr_valid), (1, 1));
    assert_eq!(c.getattr(e.nodeid).unwrap().size, big.len() as u64);
    // The same inode looked up again is the same node.
    assert_eq!(c.lookup(ROOT, "big").unwrap().nodeid, e.nodeid);

    let fh = c.open(e.nodeid, O_RDONLY).unwrap();
    let mut got = Vec::new();
    let mut off = 0u64;
    loop {
        let chunk = c.read(fh, off, 128 * 1024).unwrap();
        if chunk.is_empty() {
            break;
        }
        off += chunk.len() as u64;
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, big);
    assert_eq!(c.read(fh, 299_990, 100).unwrap(), big[299_990..]);
    // Larger than MAX_IO: refused.
    assert_eq!(c.read(fh, 0, 128 * 1024 + 1).err(), Some(27));
    c.release(fh, false).unwrap();
    assert_eq!(c.read(fh, 0, 10).err(), Some(errno::BADF));

    let sub = c.lookup(ROOT, "sub").unwrap();
    let small = c.lookup(sub.nodeid, "small").unwrap();
    let fh = c.open(small.nodeid, O_RDONLY).unwrap();
    assert_eq!(c.read(fh, 0, 4096).unwrap(), b"hello, guest\n");
    assert_eq!(c.lookup(ROOT, "missing").err(), Some(errno::NOENT));
    assert_eq!(c.lookup(small.nodeid, "x").err(), Some(errno::NOTDIR));
    assert_eq!(c.open(sub.nodeid, O_RDONLY).err(), Some(errno::ISDIR));
    assert_eq!(c.getattr(9999).err(), Some(errno::STALE));
}

#[test]
fn readdirplus_lists_everything_across_small_replies() {
    let mem = memory();
    let share = Share::new();
    let mut names: Vec<String> = (0..40)
        .map(|i| format!("file-{i:02}-{}", "x".repeat(i)))
        .collect();
    for n in &names {
        std::fs::write(share.path(n), n.as_bytes()).unwrap();
    }
    std::fs::create_dir(share.path("dir")).unwrap();
    names.push("dir".into());
    let mut c = Client::ready(&mem, &share, options());
    // 600-byte replies: a few entries per request.
    let list = c.readdirplus(ROOT, 600).unwrap();
    let mut listed: Vec<String> = list
        .iter()
        .map(|(n, _)| n.clone())
        .filter(|n| n != "." && n != "..")
        .collect();
    listed.sort();
    names.sort();
    assert_eq!(listed, names);
    for (name, entry) in &list {
        if name == "." || name == ".." {
            assert_eq!(entry.nodeid, 0, "{name} must not be looked up");
            continue;
        }
        // Each entry was looked up: the node works.
        let attr = c.getattr(entry.nodeid).unwrap();
        if name == "dir" {
            assert_eq!(attr.mode & 0o170000, 0o040000);
        } else {
            assert_eq!(attr.size, name.len() as u64);
        }
    }
    // Plain READDIR of the same directory.
    let fh = c.opendir(ROOT).unwrap();
    let args = abi::fuse_read_in {
        fh,
        size: 4096,
        ..Default::default()
    };
    let body = c.call(opcode::READDIR, ROOT, args.as_bytes()).unwrap();
    assert!(body.len() > 24);
    // A reply too small for one entry is empty, not an error.
    let args = abi::fuse_read_in {
        fh,
        size: 10,
        ..Default::default()
    };
    assert_eq!(
        c.call(opcode::READDIRPLUS, ROOT, args.as_bytes()).unwrap(),
        b""
    );
}

#[test]
fn create_write_fsync_rename_unlink_mkdir_rmdir() {
    let mem = memory();
    let share = Share::new();
    let mut c = Client::ready(&mem, &share, options());
    c.ids = (1000, 1001);
    let data = pattern(200_000);

    let (entry, fh) = c.create(ROOT, "new", O_RDWR | O_EXCL, 0o640).unwrap();
    assert_eq!(entry.attr.mode & 0o7777, 0o640);
    // Presented as the creator's ids.
    assert_eq!((entry.attr.uid, entry.attr.gid), (1000, 1001));
    let mut off = 0;
    for chunk in data.chunks(100_000) {
        assert_eq!(c.write(fh, off, chunk).unwrap(), chunk.len() as u32);
        off += chunk.len() as u64;
    }
    let args = abi::fuse_fsync_in {
        fh,
        fsync_flags: 0,
        padding: 0,
    };
    c.call(opcode::FSYNC, entry.nodeid, args.as_bytes())
        .unwrap();
    let flush = abi::fuse_flush_in {
        fh,
        ..Default::default()
    };
    c.call(opcode::FLUSH, entry.nodeid, flush.as_bytes())
        .unwrap();
    c.release(fh, false).unwrap();
    assert_eq!(std::fs::read(share.path("new")).unwrap(), data);
    let meta = std::fs::metadata(share.path("new")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    // Owned on the host by the process serving the device (here: the test's uid).
    assert_eq!(meta.uid(), std::fs::metadata("/proc/self").unwrap().uid());

    // O_EXCL on an existing name; without it the existing file is opened (and truncated).
    assert_eq!(
        c.create(ROOT, "new", O_RDWR | O_EXCL, 0o600).err(),
        Some(errno::EXIST)
    );
    let (again, fh) = c.create(ROOT, "new", O_WRONLY | O_TRUNC, 0o600).unwrap();
    assert_eq!(again.nodeid, entry.nodeid);
    c.release(fh, false).unwrap();
    assert_eq!(std::fs::metadata(share.path("new")).unwrap().len(), 0);

    let d = c.mkdir(ROOT, "d", 0o750).unwrap();
    assert_eq!(d.attr.mode & 0o7777, 0o750);
    assert!(share.path("d").is_dir());
    c.rename(ROOT, "new", d.nodeid, "moved", 0).unwrap();
    assert!(share.path("d/moved").is_file() && !share.path("new").exists());
    std::fs::write(share.path("other"), b"o").unwrap();
    // NOREPLACE refuses an existing target; EXCHANGE swaps.
    assert_eq!(
        c.rename(ROOT, "other", d.nodeid, "moved", 1).err(),
        Some(errno::EXIST)
    );
    c.rename(ROOT, "other", d.nodeid, "moved", 2).unwrap();
    assert_eq!(std::fs::read(share.path("d/moved")).unwrap(), b"o");
    assert_eq!(std::fs::read(share.path("other")).unwrap(), b"");
    // WHITEOUT (4) would create a device node: refused.
    assert_eq!(
        c.rename(ROOT, "other", ROOT, "x", 4).err(),
        Some(errno::INVAL)
    );
    assert_eq!(
        c.call(opcode::RMDIR, ROOT, &cstr("d")).err(),
        Some(errno::NOTEMPTY)
    );
    c.call(opcode::UNLINK, d.nodeid, &cstr("moved")).unwrap();
    c.call(opcode::RMDIR, ROOT, &cstr("d")).unwrap();
    c.call(opcode::UNLINK, ROOT, &cstr("other")).unwrap();
    assert_eq!(Share::tree(&share.dir), vec![]);
}

#[test]
fn symlinks_links_setattr_statfs_access_lseek_fallocate() {
    let mem = memory();
    let share = Share::new();
    std::fs::write(share.path("f"), pattern(10_000)).unwrap();
    let mut c = Client::ready(&mem, &share, options());

    let l = c.symlink(ROOT, "l", "f").unwrap();
    assert_eq!(l.attr.mode & 0o170000, 0o120000);
    assert_eq!(
        std::fs::read_link(share.path("l")).unwrap().to_str(),
        Some("f")
    );
    assert_eq!(c.call(opcode::READLINK, l.nodeid, &[]).unwrap(), b"f");
    let f = c.lookup(ROOT, "f").unwrap();
    assert_eq!(
        c.call(opcode::READLINK, f.nodeid, &[]).err(),
        Some(errno::INVAL)
    );

    let h = c.link(f.nodeid, ROOT, "hard").unwrap();
    assert_eq!(h.nodeid, f.nodeid, "a hard link is the same node");
    assert_eq!(h.attr.nlink, 2);
    assert_eq!(
        std::fs::metadata(share.path("hard")).unwrap().ino(),
        std::fs::metadata(share.path("f")).unwrap().ino()
    );

    // SETATTR: size, mode (set-user-ID never reaches the host), times, owner as presented.
    let attr = c
        .setattr(
            f.nodeid,
            abi::fuse_setattr_in {
                valid: abi::FATTR_SIZE | abi::FATTR_MODE | abi::FATTR_MTIME,
                size: 1234,
                mode: 0o4755,
                mtime: 1_000_000_000,
                mtimensec: 5,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(attr.size, 1234);
    assert_eq!(attr.mode & 0o7777, 0o755);
    assert_eq!((attr.mtime, attr.mtimensec), (1_000_000_000, 5));
    let meta = std::fs::metadata(share.path("f")).unwrap();
    assert_eq!(
        (meta.len(), meta.permissions().mode() & 0o7777),
        (1234, 0o755)
    );
    let attr = c
        .setattr(
            f.nodeid,
            abi::fuse_setattr_in {
                valid: abi::FATTR_UID | abi::FATTR_GID,
                uid: 7,
                gid: 8,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!((attr.uid, attr.gid), (7, 8));
    assert_eq!(c.getattr(f.nodeid).unwrap().uid, 7);
    // The host file's owner is untouched.
    assert_eq!(
        meta.uid(),
        std::fs::metadata(share.path("f")).unwrap().uid()
    );
    // Bad nanoseconds are refused.
    let bad = abi::fuse_setattr_in {
        valid: abi::FATTR_ATIME,
        atimensec: 1_000_000_000,
        ..Default::default()
    };
    assert_eq!(c.setattr(f.nodeid, bad).err(), Some(errno::INVAL));

    let st = c.call(opcode::STATFS, ROOT, &[]).unwrap();
    let st: abi::fuse_statfs_out = struct_of(&st);
    assert!(st.st.bsize > 0 && st.st.namelen >= 255);

    c.ids = (1000, 1000);
    let access = |mask: u32| abi::fuse_access_in { mask, padding: 0 };
    // 0o755, presented owner 7:8: others may read and execute, not write.
    assert!(c
        .call(opcode::ACCESS, f.nodeid, access(5).as_bytes())
        .is_ok());
    assert_eq!(
        c.call(opcode::ACCESS, f.nodeid, access(2).as_bytes()).err(),
        Some(errno::ACCES)
    );
    c.ids = (7, 8);
    assert!(c
        .call(opcode::ACCESS, f.nodeid, access(7).as_bytes())
        .is_ok());

    let fh = c.open(f.nodeid, O_RDWR).unwrap();
    let falloc = abi::fuse_fallocate_in {
        fh,
        offset: 0,
        length: 1 << 20,
        mode: 0,
        padding: 0,
    };
    c.call(opcode::FALLOCATE, f.nodeid, falloc.as_bytes())
        .unwrap();
    assert_eq!(std::fs::metadata(share.path("f")).unwrap().len(), 1 << 20);
    let seek = abi::fuse_lseek_in {
        fh,
        offset: 0,
        whence: 2,
        padding: 0,
    };
    let out: abi::fuse_lseek_out =
        struct_of(&c.call(opcode::LSEEK, f.nodeid, seek.as_bytes()).unwrap());
    assert_eq!(out.offset, 1 << 20);
    let seek = abi::fuse_lseek_in { whence: 9, ..seek };
    assert_eq!(
        c.call(opcode::LSEEK, f.nodeid, seek.as_bytes()).err(),
        Some(errno::INVAL)
    );
}

#[test]
fn xattrs_locks_mknod_and_unknown_opcodes_are_refused_explicitly() {
    let mem = memory();
    let share = Share::new();
    let mut c = Client::ready(&mem, &share, options());
    let getxattr = abi::fuse_getxattr_in {
        size: 64,
        padding: 0,
    };
    let mut args = getxattr.as_bytes().to_vec();
    args.extend_from_slice(&cstr("user.x"));
    assert_eq!(
        c.call(opcode::GETXATTR, ROOT, &args).err(),
        Some(errno::NOSYS)
    );
    assert_eq!(
        c.call(opcode::LISTXATTR, ROOT, getxattr.as_bytes()).err(),
        Some(errno::NOSYS)
    );
    let lk = abi::fuse_lk_in::default();
    assert_eq!(
        c.call(opcode::SETLK, ROOT, lk.as_bytes()).err(),
        Some(errno::NOSYS)
    );
    let mknod = abi::fuse_mknod_in {
        mode: 0o010644,
        ..Default::default()
    };
    let mut args = mknod.as_bytes().to_vec();
    args.extend_from_slice(&cstr("fifo"));
    assert_eq!(c.call(opcode::MKNOD, ROOT, &args).err(), Some(errno::PERM));
    assert!(!share.path("fifo").exists());
    assert_eq!(c.call(4242, ROOT, &[]).err(), Some(errno::NOSYS));
}

#[test]
fn forget_drops_nodes_and_the_hiprio_queue_needs_no_reply_buffer() {
    let mem = memory();
    let share = Share::new();
    std::fs::write(share.path("a"), b"a").unwrap();
    std::fs::write(share.path("b"), b"b").unwrap();
    let mut c = Client::ready(&mem, &share, options());
    let a = c.lookup(ROOT, "a").unwrap().nodeid;
    c.lookup(ROOT, "a").unwrap();
    let b = c.lookup(ROOT, "b").unwrap().nodeid;
    assert_eq!(c.fs.open_counts().0, 3);
    // FORGET on the hiprio queue: no reply buffer, used length 0.
    let req = c.request_bytes(opcode::FORGET, a, &1u64.to_le_bytes());
    assert_eq!(c.raw(0, &req, 0).0, 0);
    assert!(c.getattr(a).is_ok(), "one lookup left");
    let mut batch = abi::fuse_batch_forget_in { count: 2, dummy: 0 }
        .as_bytes()
        .to_vec();
    batch.extend_from_slice(
        abi::fuse_forget_one {
            nodeid: a,
            nlookup: 1,
        }
        .as_bytes(),
    );
    batch.extend_from_slice(
        abi::fuse_forget_one {
            nodeid: b,
            nlookup: 5,
        }
        .as_bytes(),
    );
    let req = c.request_bytes(opcode::BATCH_FORGET, 0, &batch);
    assert_eq!(c.raw(0, &req, 0).0, 0);
    assert_eq!(c.getattr(a).err(), Some(errno::STALE));
    assert_eq!(c.getattr(b).err(), Some(errno::STALE));
    assert_eq!(c.fs.open_counts().0, 1);
    // A node id is never reused.
    assert!(c.lookup(ROOT, "a").unwrap().nodeid > b);
}

#[test]
fn cache_policy_and_uid_map_shape_the_replies() {
    let mem = memory();
    let share = Share::new();
    std::fs::write(share.path("f"), b"x").unwrap();
    let opts = FsOptions {
        cache: CachePolicy::None,
        uid_map: Some(IdMap {
            uid: 1000,
            gid: 100,
        }),
        ..options()
    };
    let mut c = Client::ready(&mem, &share, opts);
    let e = c.lookup(ROOT, "f").unwrap();
    assert_eq!((e.entry_valid, e.attr_valid), (0, 0));
    assert_eq!((e.attr.uid, e.attr.gid), (1000, 100));
    let body = c
        .call(
            opcode::OPEN,
            e.nodeid,
            abi::fuse_open_in::default().as_bytes(),
        )
        .unwrap();
    let open: abi::fuse_open_out = struct_of(&body);
    assert_eq!(open.open_flags, abi::FOPEN_DIRECT_IO);
    // chown to other ids: EPERM; to the mapped ones: fine.
    let chown = |uid| abi::fuse_setattr_in {
        valid: abi::FATTR_UID,
        uid,
        ..Default::default()
    };
    assert_eq!(c.setattr(e.nodeid, chown(0)).err(), Some(errno::PERM));
    assert!(c.setattr(e.nodeid, chown(1000)).is_ok());

    let opts = FsOptions {
        cache: CachePolicy::Always,
        ..options()
    };
    let mem = memory();
    let mut c = Client::ready(&mem, &share, opts);
    let e = c.lookup(ROOT, "f").unwrap();
    assert_eq!(e.entry_valid, 86_400);
    // Nodes the guest did not create are presented as root's.
    assert_eq!((e.attr.uid, e.attr.gid), (0, 0));
}

#[test]
fn every_request_queue_serves_and_interrupts() {
    let mem = memory();
    let share = Share::new();
    std::fs::write(share.path("f"), b"queue").unwrap();
    let opts = FsOptions {
        queues: 3,
        ..options()
    };
    let mut c = Client::ready(&mem, &share, opts);
    assert_eq!(c.fs.num_queues(), 4);
    assert_eq!(&c.fs.config()[36..], &[3, 0, 0, 0]);
    for q in 1..=3u16 {
        let req = c.request_bytes(opcode::LOOKUP, ROOT, &cstr("f"));
        let (used, out) = c.raw(q, &req, 256);
        let e: abi::fuse_entry_out = struct_of(&check_reply(used, &out, c.unique).unwrap());
        assert_eq!(e.attr.size, 5);
    }
    assert!(c.irq.used.load(Ordering::SeqCst) >= 4);
    // Reset forgets every node and the session.
    let queues = c.fs.reset().unwrap();
    assert_eq!(queues.len(), 4);
    assert_eq!(c.fs.open_counts(), (1, 0));
}
