//! Waiting for fds to become readable, with deadlines: how the VMM waits for a device worker's
//! reply without ever blocking a vCPU for good ([`wait_readable`]), and for every device's
//! `Ready` at once when the VM starts ([`wait_all_readable`]).

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

/// Waits until each of `fds` is readable (or hung up) or its own deadline has passed, all at
/// once: returns, for each fd in order, when it was seen readable (`None`: its deadline passed
/// first). Interrupted waits resume.
pub fn wait_all_readable(fds: &[(BorrowedFd<'_>, Instant)]) -> io::Result<Vec<Option<Instant>>> {
    let mut seen: Vec<Option<Instant>> = vec![None; fds.len()];
    let mut pending: Vec<usize> = (0..fds.len()).collect();
    while !pending.is_empty() {
        let now = Instant::now();
        // Deadlines that passed without the fd becoming readable end its wait.
        pending.retain(|&i| fds[i].1 > now);
        let Some(first) = pending.iter().map(|&i| fds[i].1).min() else {
            break;
        };
        let left = first.saturating_duration_since(now);
        let ms = i32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
        let mut pfds: Vec<libc::pollfd> = pending
            .iter()
            .map(|&i| libc::pollfd {
                fd: fds[i].0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let count = libc::nfds_t::try_from(pfds.len()).unwrap_or(libc::nfds_t::MAX);
        // SAFETY: `pfds` holds `count` valid, initialised pollfds that live across the call;
        // every fd is borrowed, so it stays open while poll runs.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), count, ms) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        let now = Instant::now();
        let mut still = Vec::with_capacity(pending.len());
        for (&i, pfd) in pending.iter().zip(&pfds) {
            if pfd.revents != 0 {
                seen[i] = Some(now);
            } else {
                still.push(i);
            }
        }
        pending = still;
    }
    Ok(seen)
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

    #[test]
    fn all_at_once_each_with_its_deadline() {
        let (a, a_peer) = ipc::Channel::pair().unwrap();
        let (b, _b_peer) = ipc::Channel::pair().unwrap();
        let (c, c_peer) = ipc::Channel::pair().unwrap();
        let start = Instant::now();
        let soon = start + Duration::from_millis(50);
        let later = start + Duration::from_secs(5);
        a_peer.send(&1u32, &[]).unwrap();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            c_peer.send(&1u32, &[]).unwrap();
            c_peer
        });
        let seen = wait_all_readable(&[(a.as_fd(), later), (b.as_fd(), soon), (c.as_fd(), later)])
            .unwrap();
        let _c_peer = writer.join().unwrap();
        assert!(seen[0].is_some(), "ready at once");
        assert!(
            seen[1].is_none(),
            "never ready: its own short deadline ended its wait"
        );
        let c_at = seen[2].expect("ready after 100 ms");
        assert!(c_at >= start + Duration::from_millis(100));
        assert!(c_at < later, "the others' deadlines did not hold it up");
        assert!(wait_all_readable(&[]).unwrap().is_empty());
    }
}
