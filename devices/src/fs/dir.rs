//! Directory listing: OPENDIR, READDIR, READDIRPLUS.
//!
//! A directory handle is the node re-opened `O_RDONLY | O_DIRECTORY`. Each READDIR seeks it to
//! the guest's offset (0, or a `d_off` cookie the server gave out earlier) and reads entries
//! with `getdents64` until the reply is full; every entry carries its own cookie, so the next
//! request continues after the last entry the guest got, whatever the host buffered. For
//! READDIRPLUS each entry also carries a lookup (`fuse_entry_out`), counted like a LOOKUP —
//! except `.` and `..`, which get an empty entry and are never looked up (`..` of the shared
//! directory is outside it).

use std::mem::MaybeUninit;
use std::os::fd::AsFd;

use fuse_abi::linux as abi;
use rustix::fs::{FileType, OFlags, RawDir, SeekFrom};
use zerocopy::IntoBytes;

use super::host;
use super::inode::Handle;
use super::reply::bytes_of;
use super::server::Server;
use super::Errno;

/// Bytes of `fuse_dirent` without its name.
const DIRENT_LEN: usize = size_of::<abi::fuse_dirent>();
/// Bytes of `fuse_entry_out`.
const ENTRY_LEN: usize = size_of::<abi::fuse_entry_out>();
/// Bytes `getdents64` may fill per call.
const GETDENTS_BUF: usize = 8192;

impl Server {
    pub(crate) fn opendir(&mut self, node: u64) -> Result<Vec<u8>, Errno> {
        let fd = self.dir_fd(node)?;
        let dir = self.proc.reopen(fd, OFlags::RDONLY | OFlags::DIRECTORY)?;
        let fh = self.handles.add(Handle::Dir { fd: dir })?;
        Ok(bytes_of(&abi::fuse_open_out {
            fh,
            open_flags: self.open_flags(true),
            backing_id: 0,
        }))
    }

    pub(crate) fn readdir(
        &mut self,
        node: u64,
        fh: u64,
        offset: u64,
        size: u32,
        plus: bool,
    ) -> Result<Vec<u8>, Errno> {
        // The handle leaves the table while entries are looked up (which changes the node
        // table), and goes back whatever happens.
        let handle = self.handles.take(fh)?;
        let result = self.list(&handle, node, offset, size, plus);
        self.handles.put_back(fh, handle);
        result
    }

    fn list(
        &mut self,
        handle: &Handle,
        node: u64,
        offset: u64,
        size: u32,
        plus: bool,
    ) -> Result<Vec<u8>, Errno> {
        let Handle::Dir { fd: dir } = handle else {
            return Err(Errno::BADF);
        };
        rustix::fs::seek(dir, SeekFrom::Start(offset))?;
        let size = size as usize;
        let mut out = Vec::with_capacity(size.min(GETDENTS_BUF));
        let mut buf = vec![MaybeUninit::<u8>::uninit(); GETDENTS_BUF];
        let mut entries = RawDir::new(dir.as_fd(), &mut buf);
        while let Some(entry) = entries.next() {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) if out.is_empty() => return Err(e),
                Err(_) => break,
            };
            let name = entry.file_name();
            let bytes = name.to_bytes();
            let dot = bytes == b"." || bytes == b"..";
            let record = DIRENT_LEN + bytes.len();
            let padded = record.next_multiple_of(8);
            let need = padded + if plus { ENTRY_LEN } else { 0 };
            if out.len() + need > size {
                break;
            }
            let mut ino = entry.ino();
            if plus {
                let lookup = if dot {
                    Ok(abi::fuse_entry_out::default())
                } else {
                    host::lookup(self.dir_fd(node)?, name).and_then(|fd| self.add_entry(fd))
                };
                match lookup {
                    Ok(e) => {
                        if !dot {
                            ino = e.attr.ino;
                        }
                        out.extend_from_slice(e.as_bytes());
                    }
                    // Gone since getdents saw it: leave it out.
                    Err(Errno::NOENT) => continue,
                    Err(e) if out.is_empty() => return Err(e),
                    Err(_) => break,
                }
            }
            let dirent = abi::fuse_dirent {
                ino,
                off: entry.next_entry_cookie(),
                namelen: bytes.len() as u32,
                type_: dirent_type(entry.file_type()),
                name: Default::default(),
            };
            out.extend_from_slice(&dirent.as_bytes()[..DIRENT_LEN]);
            out.extend_from_slice(bytes);
            out.resize(out.len() + padded - record, 0);
        }
        Ok(out)
    }
}

/// The `d_type` (`DT_*`, the file type bits shifted down) FUSE puts in a dirent.
fn dirent_type(kind: FileType) -> u32 {
    match kind {
        FileType::Unknown => 0,
        kind => (kind.as_raw_mode() >> 12) & 0o17,
    }
}
