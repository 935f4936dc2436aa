//! The worker's SIGSYS reporter: names a trapped syscall to the VMM, then lets the worker die.
//!
//! With [`Mode::Trap`](crate::Mode::Trap) a denied syscall raises `SIGSYS` in the thread that
//! made it. A bare kill would leave the VMM with nothing but "killed by SIGSYS"; this handler
//! first sends `ipc::WorkerToVmm::SeccompViolation { syscall, arch }` on the control socket, so
//! the VMM can print the syscall's name ([`crate::syscall_name`]).
//!
//! A signal handler may only make async-signal-safe calls, and bincode encoding is not one
//! (nor is allocating). So [`install_reporter`] encodes a *template* message with `ipc::encode`
//! up front and checks that the two fields sit at fixed offsets (bincode with fixed-width
//! little-endian integers: `u32` variant tag, `i64` syscall, `u32` arch — 16 bytes). The
//! handler copies the template to its stack, patches the two fields, and sends the 16 bytes
//! with one `sendmsg(MSG_NOSIGNAL | MSG_DONTWAIT)`: it can neither block on a full socket nor
//! die of `SIGPIPE`. Everything it touches is a static atomic or on its own stack.
//!
//! Then the worker must die *of SIGSYS*, which is what the VMM's supervision and the tests look
//! for. The handler is installed with `SA_RESETHAND`, so on entry the disposition is back to the
//! default (terminate). The handler repeats the trapped syscall with the registers it trapped
//! with: the same filter denies it again, and since the kernel cannot run a handler for it, it
//! kills the process with `SIGSYS` (this needs no syscall beyond what the worker was already
//! allowed). Should the call somehow return, the handler ends the worker with
//! `_exit(128 + SIGSYS)` (`exit_group` is in every profile). A `SIGSYS` that did not come from
//! seccomp (`kill -SYS`) takes that `_exit` path without a report.
//!
//! The handler runs on an alternate signal stack, so a trap on a nearly full stack still
//! reports.

use std::ffi::{c_int, c_uint, c_void};
use std::io;
use std::mem;
use std::os::fd::RawFd;
use std::ptr;
use std::sync::atomic::{AtomicI32, AtomicU8, Ordering};

use ipc::WorkerToVmm;

/// `AUDIT_ARCH_X86_64`: the `arch` of a trapped call made with the 64-bit syscall ABI.
pub const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;

/// `si_code` of a `SIGSYS` raised by a seccomp filter (`SYS_SECCOMP`).
pub const SYS_SECCOMP: c_int = 1;

/// Bytes of an encoded `SeccompViolation`.
const REPORT_LEN: usize = 16;
/// Offset of the little-endian `i64` syscall number in the encoded message.
const SYSCALL_AT: usize = 4;
/// Offset of the little-endian `u32` arch in the encoded message.
const ARCH_AT: usize = 12;

/// Size of the alternate signal stack installed when the thread has none big enough.
const ALT_STACK_SIZE: usize = 64 * 1024;
/// Smallest existing alternate stack (e.g. Rust std's) this module accepts instead of its own.
const MIN_ALT_STACK_SIZE: usize = 8 * 1024;

/// The pre-encoded message; the handler patches a copy.
static TEMPLATE: [AtomicU8; REPORT_LEN] = [const { AtomicU8::new(0) }; REPORT_LEN];
/// Where the handler sends the report; -1 before [`install_reporter`].
static REPORT_FD: AtomicI32 = AtomicI32::new(-1);

/// Why the reporter could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum SigsysError {
    /// `ipc::encode` refused the template message.
    #[error("cannot encode the SeccompViolation template")]
    Encode(#[source] ipc::CodecError),
    /// ipc's encoding of `SeccompViolation` changed: the handler's fixed offsets would be wrong.
    #[error("SeccompViolation does not encode as {REPORT_LEN} bytes with fields at {SYSCALL_AT} and {ARCH_AT}")]
    Layout,
    /// Querying or setting the alternate signal stack failed.
    #[error("sigaltstack failed")]
    AltStack(#[source] io::Error),
    /// Installing the handler failed.
    #[error("sigaction(SIGSYS) failed")]
    Sigaction(#[source] io::Error),
}

/// Installs the SIGSYS reporter for the whole process, sending reports to `fd` (the worker's
/// end of its control socket, which must stay open for as long as the filter is installed).
///
/// Call it before installing the seccomp filter: it needs `sigaltstack` and `rt_sigaction`,
/// which no worker profile allows. The alternate stack is set up for the calling thread (the
/// worker's only thread); other threads run the handler on the alternate stack Rust gave them.
pub fn install_reporter(fd: RawFd) -> Result<(), SigsysError> {
    store_template()?;
    REPORT_FD.store(fd, Ordering::Release);
    ensure_alt_stack()?;

    // SAFETY: `sigaction` is plain data, all-zero is a valid value (no flags, empty mask).
    let mut action: libc::sigaction = unsafe { mem::zeroed() };
    action.sa_sigaction = on_sigsys as *const () as usize;
    action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESETHAND;
    // SAFETY: `action.sa_mask` is a valid sigset_t owned by this frame; blocking every other
    // signal keeps the handler from being interrupted half-way through its report.
    unsafe { libc::sigfillset(&mut action.sa_mask) };
    // SAFETY: `action` is fully initialised and `on_sigsys` has the SA_SIGINFO signature; it
    // only touches atomics and its own stack and makes async-signal-safe calls.
    if unsafe { libc::sigaction(libc::SIGSYS, &action, ptr::null_mut()) } != 0 {
        return Err(SigsysError::Sigaction(io::Error::last_os_error()));
    }
    Ok(())
}

/// Encodes the template with `ipc::encode`, checks the layout the handler relies on, and
/// publishes it in [`TEMPLATE`].
fn store_template() -> Result<(), SigsysError> {
    // Distinct bytes in every position, so a moved or resized field cannot match by accident.
    const PROBE_SYSCALL: i64 = 0x0807_0605_0403_0201;
    const PROBE_ARCH: u32 = 0x0c0b_0a09;
    let encoded = ipc::encode(&WorkerToVmm::SeccompViolation {
        syscall: PROBE_SYSCALL,
        arch: PROBE_ARCH,
    })
    .map_err(SigsysError::Encode)?;
    let bytes: [u8; REPORT_LEN] = encoded
        .as_slice()
        .try_into()
        .map_err(|_| SigsysError::Layout)?;
    if bytes[SYSCALL_AT..SYSCALL_AT + 8] != PROBE_SYSCALL.to_le_bytes()
        || bytes[ARCH_AT..ARCH_AT + 4] != PROBE_ARCH.to_le_bytes()
    {
        return Err(SigsysError::Layout);
    }
    for (slot, byte) in TEMPLATE.iter().zip(bytes) {
        slot.store(byte, Ordering::Relaxed);
    }
    Ok(())
}

/// The encoded `SeccompViolation { syscall, arch }`: the template with both fields patched.
/// Async-signal-safe (atomics and the stack only).
fn report(syscall: i64, arch: u32) -> [u8; REPORT_LEN] {
    let mut message = [0u8; REPORT_LEN];
    for (byte, slot) in message.iter_mut().zip(&TEMPLATE) {
        *byte = slot.load(Ordering::Relaxed);
    }
    let (syscall_bytes, arch_bytes) = (syscall.to_le_bytes(), arch.to_le_bytes());
    for (i, byte) in syscall_bytes.into_iter().enumerate() {
        message[SYSCALL_AT + i] = byte;
    }
    for (i, byte) in arch_bytes.into_iter().enumerate() {
        message[ARCH_AT + i] = byte;
    }
    message
}

/// Makes sure the calling thread has an alternate signal stack of useful size.
fn ensure_alt_stack() -> Result<(), SigsysError> {
    // SAFETY: `stack_t` is plain data; all-zero is valid and sigaltstack overwrites it.
    let mut current: libc::stack_t = unsafe { mem::zeroed() };
    // SAFETY: a query only (no new stack); `current` is a valid place for the answer.
    if unsafe { libc::sigaltstack(ptr::null(), &mut current) } != 0 {
        return Err(SigsysError::AltStack(io::Error::last_os_error()));
    }
    if current.ss_flags & libc::SS_DISABLE == 0 && current.ss_size >= MIN_ALT_STACK_SIZE {
        return Ok(());
    }
    // Leaked on purpose: the kernel may switch to it at any time for the rest of the thread.
    let stack: &'static mut [u8] = Box::leak(vec![0u8; ALT_STACK_SIZE].into_boxed_slice());
    let new = libc::stack_t {
        ss_sp: stack.as_mut_ptr().cast(),
        ss_flags: 0,
        ss_size: stack.len(),
    };
    // SAFETY: `new` describes memory that is valid, writable and never freed.
    if unsafe { libc::sigaltstack(&new, ptr::null_mut()) } != 0 {
        return Err(SigsysError::AltStack(io::Error::last_os_error()));
    }
    Ok(())
}

/// The `_sigsys` member of the kernel's `siginfo_t` on x86_64 (libc does not expose it): the
/// union starts at offset 16, after three `int`s and padding. Shared with svmm's own SIGSYS
/// handler (`vmm/src/self_confine.rs`).
#[repr(C)]
pub struct SigsysInfo {
    pub signo: c_int,
    pub errno: c_int,
    /// [`SYS_SECCOMP`] when a seccomp filter raised the signal.
    pub code: c_int,
    _pad: c_int,
    pub call_addr: *mut c_void,
    /// The denied system call's number.
    pub syscall: c_int,
    /// Its `AUDIT_ARCH_*`.
    pub arch: c_uint,
}

/// The handler. See the module docs for why each step is async-signal-safe.
extern "C" fn on_sigsys(_signal: c_int, info: *mut libc::siginfo_t, context: *mut c_void) {
    // SAFETY: with SA_SIGINFO the kernel passes a valid siginfo_t, which is at least as large
    // as `SigsysInfo` (128 bytes) and has the `_sigsys` layout for SIGSYS.
    let info = unsafe { &*info.cast::<SigsysInfo>() };
    if info.code == SYS_SECCOMP {
        let fd = REPORT_FD.load(Ordering::Acquire);
        if fd >= 0 {
            send(fd, &report(i64::from(info.syscall), info.arch));
        }
        // SAFETY: with SA_SIGINFO the third argument is the interrupted thread's ucontext_t.
        let gregs = unsafe { &(*context.cast::<libc::ucontext_t>()).uc_mcontext.gregs };
        let arg = |reg: c_int| gregs[reg as usize];
        // SAFETY: this repeats the call the filter just denied, with the same number and
        // arguments (x86_64 passes them in rdi, rsi, rdx, r10, r8, r9), so the filter denies it
        // again and nothing executes; with the disposition reset (SA_RESETHAND) the kernel then
        // kills the process with SIGSYS.
        unsafe {
            libc::syscall(
                libc::c_long::from(info.syscall),
                arg(libc::REG_RDI),
                arg(libc::REG_RSI),
                arg(libc::REG_RDX),
                arg(libc::REG_R10),
                arg(libc::REG_R8),
                arg(libc::REG_R9),
            )
        };
    }
    // SAFETY: _exit is async-signal-safe and ends the process without running Rust code.
    unsafe { libc::_exit(128 + libc::SIGSYS) };
}

/// Sends `message` as one packet on `fd`, never blocking and never raising SIGPIPE; failure is
/// ignored (the VMM still sees the worker die of SIGSYS). Async-signal-safe.
fn send(fd: RawFd, message: &[u8; REPORT_LEN]) {
    let mut iov = libc::iovec {
        iov_base: message.as_ptr().cast_mut().cast(),
        iov_len: message.len(),
    };
    // SAFETY: `msghdr` is plain data; all-zero means no address and no control data.
    let mut header: libc::msghdr = unsafe { mem::zeroed() };
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    // SAFETY: `header` points at one iovec describing `message`, which sendmsg only reads.
    unsafe { libc::sendmsg(fd, &header, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patched_template_decodes_as_the_violation() {
        store_template().unwrap();
        for (syscall, arch) in [
            (257, AUDIT_ARCH_X86_64),
            (0, 0),
            (-1, u32::MAX),
            (i64::MAX, 0x4000_003e),
        ] {
            let message = report(syscall, arch);
            assert_eq!(
                ipc::decode::<WorkerToVmm>(&message).unwrap(),
                WorkerToVmm::SeccompViolation { syscall, arch }
            );
        }
    }

    #[test]
    fn siginfo_layout_matches_the_kernel() {
        assert_eq!(mem::offset_of!(SigsysInfo, call_addr), 16);
        assert_eq!(mem::offset_of!(SigsysInfo, syscall), 24);
        assert_eq!(mem::offset_of!(SigsysInfo, arch), 28);
        assert!(mem::size_of::<SigsysInfo>() <= mem::size_of::<libc::siginfo_t>());
    }
}
