//! Raw `capget`/`capset` (version 3, 64-bit sets). libc exposes the syscall numbers but not the
//! structures; glibc has no wrapper at all.
//!
//! The functions here are plain system calls without allocation, so the pre-exec child may use
//! them too.

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const VERSION_3: u32 = 0x2008_0522;

/// The capabilities the pre-exec child hands over to the exec'd worker as ambient capabilities,
/// so that `confine` can still mount, pivot_root, change ids and drop the bounding set inside
/// the worker's user namespace. `confine` drops all of them again (step 4).
pub(crate) const HANDOVER: [u32; 4] = [CAP_SETGID, CAP_SETUID, CAP_SETPCAP, CAP_SYS_ADMIN];

/// Capability numbers (`linux/capability.h`); libc does not export them.
pub(crate) const CAP_SETGID: u32 = 6;
/// See [`CAP_SETGID`].
pub(crate) const CAP_SETUID: u32 = 7;
/// See [`CAP_SETGID`].
pub(crate) const CAP_SETPCAP: u32 = 8;
/// See [`CAP_SETGID`].
pub(crate) const CAP_SYS_ADMIN: u32 = 21;

#[repr(C)]
struct Header {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The three capability sets of a thread, as 64-bit masks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CapSets {
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
}

/// Mask with the bit of each capability in `caps`.
pub(crate) fn mask(caps: &[u32]) -> u64 {
    caps.iter().fold(0, |m, &c| m | (1u64 << c))
}

/// `capget` for the calling thread. Returns the raw `errno` on failure.
pub(crate) fn get() -> Result<CapSets, i32> {
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: the header and a two-element data array (what version 3 requires) are live and
    // writable for the duration of the call; the kernel writes nothing else.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(errno());
    }
    let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
    Ok(CapSets {
        effective: join(data[0].effective, data[1].effective),
        permitted: join(data[0].permitted, data[1].permitted),
        inheritable: join(data[0].inheritable, data[1].inheritable),
    })
}

/// `capset` for the calling thread. Returns the raw `errno` on failure.
pub(crate) fn set(sets: CapSets) -> Result<(), i32> {
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let split = |v: u64| (v as u32, (v >> 32) as u32);
    let (e0, e1) = split(sets.effective);
    let (p0, p1) = split(sets.permitted);
    let (i0, i1) = split(sets.inheritable);
    let data = [
        Data {
            effective: e0,
            permitted: p0,
            inheritable: i0,
        },
        Data {
            effective: e1,
            permitted: p1,
            inheritable: i1,
        },
    ];
    // SAFETY: header and the two-element data array are live for the call; capset only reads
    // them.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc != 0 {
        return Err(errno());
    }
    Ok(())
}

/// The calling thread's `errno`.
pub(crate) fn errno() -> i32 {
    // SAFETY: __errno_location always returns a valid pointer to the calling thread's errno.
    unsafe { *libc::__errno_location() }
}
