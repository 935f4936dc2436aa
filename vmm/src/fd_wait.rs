//! Waiting for one fd to become readable, with a deadline: how the VMM waits for a device
//! worker's reply without ever blocking a vCPU for good.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

/// Waits until `fd` is readable (or hung up) or `timeout` has passed; `Ok(true)` if readable.
/// Interrupted waits resume with the time left.
pub fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // Round up so that a wait of less than 1 ms is not a busy poll of 0 ms.
        let ms = i32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid, initialised pollfd that lives across the call, and the
        // count passed is 1; `fd` is borrowed, so it stays open while poll runs.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        match n {
            0 if left.is_zero() || Instant::now() >= deadline => return Ok(false),
            0 => continue,
            n if n > 0 => return Ok(true),
            _ => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn readable_and_timeout() {
        let (a, b) = ipc::Channel::pair().unwrap();
        let start = Instant::now();
        assert!(!wait_readable(a.as_fd(), Duration::from_millis(50)).unwrap());
        assert!(start.elapsed() >= Duration::from_millis(50));
        b.send(&1u32, &[]).unwrap();
        assert!(wait_readable(a.as_fd(), Duration::from_secs(5)).unwrap());
        // A closed peer counts as readable: the next receive reports it.
        let (c, d) = ipc::Channel::pair().unwrap();
        drop(d);
        assert!(wait_readable(c.as_fd(), Duration::from_secs(5)).unwrap());
    }
}
