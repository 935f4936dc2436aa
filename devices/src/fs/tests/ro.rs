//! A read-only share: every modifying request gets `EROFS`, the directory stays as it was, and
//! reading still works.

use fuse_abi::linux as abi;
use zerocopy::IntoBytes;

use super::*;
use crate::blk::tests::memory;

const ROOT: u64 = 1;

#[test]
fn every_modifying_request_gets_erofs_and_nothing_changes() {
    let mem = memory();
    let share = Share::new();
    std::fs::write(share.path("f"), b"read only\n").unwrap();
    std::fs::create_dir(share.path("d")).unwrap();
    std::fs::write(share.path("d/g"), b"g").unwrap();
    let before = Share::tree(&share.dir);
    let opts = FsOptions {
        read_only: true,
        ..options()
    };
    let mut c = Client::ready(&mem, &share, opts);
    let f = c.lookup(ROOT, "f").unwrap().nodeid;
    let d = c.lookup(ROOT, "d").unwrap().nodeid;

    // Reading works.
    let fh = c.open(f, 0).unwrap();
    assert_eq!(c.read(fh, 0, 100).unwrap(), b"read only\n");
    assert_eq!(c.readdirplus(d, 4096).unwrap().len(), 3);

    let name = |n: &str| cstr(n);
    let with = |head: &[u8], tail: &[u8]| [head, tail].concat();
    let setattr = abi::fuse_setattr_in {
        valid: abi::FATTR_SIZE,
        size: 0,
        ..Default::default()
    };
    let create = abi::fuse_create_in {
        flags: 2,
        mode: 0o100644,
        umask: 0,
        open_flags: 0,
    };
    let write = abi::fuse_write_in {
        fh,
        offset: 0,
        size: 3,
        ..Default::default()
    };
    let falloc = abi::fuse_fallocate_in {
        fh,
        offset: 0,
        length: 4096,
        mode: 0,
        padding: 0,
    };
    let rename = abi::fuse_rename2_in {
        newdir: ROOT,
        flags: 0,
        padding: 0,
    };
    let setxattr = abi::fuse_setxattr_in {
        size: 1,
        flags: 0,
        setxattr_flags: 0,
        padding: 0,
    };
    let cases: Vec<(&str, u32, u64, Vec<u8>)> = vec![
        ("setattr", opcode::SETATTR, f, setattr.as_bytes().to_vec()),
        (
            "symlink",
            opcode::SYMLINK,
            ROOT,
            with(&name("s"), &name("f")),
        ),
        (
            "mknod",
            opcode::MKNOD,
            ROOT,
            with(abi::fuse_mknod_in::default().as_bytes(), &name("n")),
        ),
        (
            "mkdir",
            opcode::MKDIR,
            ROOT,
            with(abi::fuse_mkdir_in::default().as_bytes(), &name("m")),
        ),
        ("unlink", opcode::UNLINK, ROOT, name("f")),
        ("rmdir", opcode::RMDIR, d, name("g")),
        (
            "rename",
            opcode::RENAME2,
            ROOT,
            [rename.as_bytes(), &name("f"), &name("r")].concat(),
        ),
        (
            "link",
            opcode::LINK,
            ROOT,
            with(abi::fuse_link_in { oldnodeid: f }.as_bytes(), &name("h")),
        ),
        (
            "open-write",
            opcode::OPEN,
            f,
            abi::fuse_open_in {
                flags: 1,
                open_flags: 0,
            }
            .as_bytes()
            .to_vec(),
        ),
        (
            "open-trunc",
            opcode::OPEN,
            f,
            abi::fuse_open_in {
                flags: 0o1000,
                open_flags: 0,
            }
            .as_bytes()
            .to_vec(),
        ),
        ("write", opcode::WRITE, f, with(write.as_bytes(), b"abc")),
        (
            "create",
            opcode::CREATE,
            ROOT,
            with(create.as_bytes(), &name("c")),
        ),
        (
            "fallocate",
            opcode::FALLOCATE,
            f,
            falloc.as_bytes().to_vec(),
        ),
        (
            "setxattr",
            opcode::SETXATTR,
            f,
            [setxattr.as_bytes(), &name("user.x"), b"v"].concat(),
        ),
        ("removexattr", opcode::REMOVEXATTR, f, name("user.x")),
    ];
    for (what, op, node, args) in cases {
        assert_eq!(c.call(op, node, &args).err(), Some(errno::ROFS), "{what}");
    }
    // ACCESS for writing says so too.
    let access = abi::fuse_access_in {
        mask: 2,
        padding: 0,
    };
    assert_eq!(
        c.call(opcode::ACCESS, f, access.as_bytes()).err(),
        Some(errno::ROFS)
    );
    assert_eq!(Share::tree(&share.dir), before);
}
