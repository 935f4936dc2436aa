//! Channel tests over real socketpairs.
//!
//! Tests that count `/proc/self/fd` hold `FD_LOCK`, and so does every test here that opens
//! fds, so the counts are not disturbed by tests running in parallel. No other module's tests
//! open fds.

use super::*;
use crate::messages::{VmmToWorker, WorkerToVmm};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, MutexGuard};

static FD_LOCK: Mutex<()> = Mutex::new(());

fn lock() -> MutexGuard<'static, ()> {
    FD_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn write_config() -> VmmToWorker {
    VmmToWorker::WriteConfig {
        offset: 4,
        data: vec![1, 2, 3, 4],
    }
}

/// Sends raw bytes and fds, bypassing `Channel::send`'s checks.
fn raw_send(channel: &Channel, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
    }
    let sent = sendmsg(
        channel,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::empty(),
    )
    .unwrap();
    assert_eq!(sent, bytes.len());
}

/// Asserts that every copy of `ours`' peer socket is closed: once `ours` is dropped, its peer
/// reads EOF only if no other fd (e.g. a leaked received copy) still refers to it.
fn assert_all_copies_closed(ours: UnixStream, mut peer: UnixStream) {
    drop(ours);
    peer.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(
        peer.read(&mut buf)
            .expect("a leaked copy keeps the socket open"),
        0
    );
}

#[test]
fn round_trip_without_fds() {
    let _guard = lock();
    let (vmm, worker) = Channel::pair().unwrap();
    vmm.send(&write_config(), &[]).unwrap();
    let (msg, fds) = worker.recv::<VmmToWorker>().unwrap();
    assert_eq!(msg, write_config());
    assert!(fds.is_empty());
    worker.send(&WorkerToVmm::Activated, &[]).unwrap();
    assert_eq!(
        vmm.recv_with_fd_count::<WorkerToVmm>(0).unwrap().0,
        WorkerToVmm::Activated
    );
}

fn transfer_and_use(count: usize) {
    let _guard = lock();
    let (vmm, worker) = Channel::pair().unwrap();
    let pairs: Vec<_> = (0..count).map(|_| UnixStream::pair().unwrap()).collect();
    let sent: Vec<_> = pairs.iter().map(|(a, _)| a.as_fd()).collect();
    vmm.send(&VmmToWorker::GetStats, &sent).unwrap();
    let (msg, fds) = worker.recv_with_fd_count::<VmmToWorker>(count).unwrap();
    assert_eq!(msg, VmmToWorker::GetStats);
    for (i, (fd, (_, peer))) in fds.into_iter().zip(&pairs).enumerate() {
        let flags = rustix::io::fcntl_getfd(&fd).unwrap();
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
        // The received fd is a live duplicate: write through it, read at the far end.
        UnixStream::from(fd).write_all(&[i as u8]).unwrap();
        let mut byte = [0u8];
        (&*peer).read_exact(&mut byte).unwrap();
        assert_eq!(byte[0], i as u8);
    }
}

#[test]
fn transfers_one_fd() {
    transfer_and_use(1);
}

#[test]
fn transfers_max_fds() {
    transfer_and_use(MAX_FDS);
}

#[test]
fn pair_is_cloexec_seqpacket() {
    let _guard = lock();
    let (a, b) = Channel::pair().unwrap();
    for end in [&a, &b] {
        assert!(rustix::io::fcntl_getfd(end)
            .unwrap()
            .contains(rustix::io::FdFlags::CLOEXEC));
    }
    let a = Channel::try_from_fd(OwnedFd::from(a)).unwrap();
    let (stream, _) = UnixStream::pair().unwrap();
    assert!(matches!(
        Channel::try_from_fd(stream.into()),
        Err(ChannelError::NotSeqpacket)
    ));
    drop((a, b));
}

#[test]
fn more_than_max_fds_refused_before_sending() {
    let _guard = lock();
    let (vmm, worker) = Channel::pair().unwrap();
    let (s, _peer) = UnixStream::pair().unwrap();
    let fds = vec![s.as_fd(); MAX_FDS + 1];
    assert!(matches!(
        vmm.send(&VmmToWorker::Reset, &fds),
        Err(ChannelError::TooManyFds { count }) if count == MAX_FDS + 1
    ));
    worker.set_nonblocking(true).unwrap();
    assert!(matches!(
        worker.recv::<VmmToWorker>(),
        Err(ChannelError::WouldBlock)
    ));
}

#[test]
fn too_many_raw_fds_are_refused_and_closed() {
    let _guard = lock();
    let (worker, vmm) = Channel::pair().unwrap();
    let (ours, peer) = UnixStream::pair().unwrap();
    let before = open_fds();
    let bytes = codec::encode(&WorkerToVmm::Activated).unwrap();
    // Just over the limit, the control buffer's alignment slack still has room and the count
    // check refuses; further over, the kernel truncates (MSG_CTRUNC). Both must close all fds.
    for count in MAX_FDS + 1..=MAX_FDS + 4 {
        raw_send(&worker, &bytes, &vec![ours.as_fd(); count]);
        match vmm.recv::<WorkerToVmm>() {
            Err(ChannelError::ControlTruncated) => {}
            Err(ChannelError::TooManyFds { count: n }) => assert!(n > MAX_FDS && n <= count),
            other => panic!("{count} fds: {other:?}"),
        }
        assert_eq!(open_fds(), before);
    }
    assert_all_copies_closed(ours, peer);
    // The channel is still in sync: the next packet is received normally.
    worker.send(&WorkerToVmm::ResetDone, &[]).unwrap();
    assert_eq!(vmm.recv::<WorkerToVmm>().unwrap().0, WorkerToVmm::ResetDone);
}

#[test]
fn oversized_packet_is_refused_and_its_fds_closed() {
    let _guard = lock();
    let (worker, vmm) = Channel::pair().unwrap();
    let (ours, peer) = UnixStream::pair().unwrap();
    let before = open_fds();
    raw_send(
        &worker,
        &vec![0u8; MAX_MESSAGE_SIZE + 1],
        &[ours.as_fd(), ours.as_fd()],
    );
    assert!(matches!(
        vmm.recv::<WorkerToVmm>(),
        Err(ChannelError::Oversized { len }) if len == MAX_MESSAGE_SIZE + 1
    ));
    assert_eq!(open_fds(), before);
    assert_all_copies_closed(ours, peer);
    worker.send(&WorkerToVmm::Activated, &[]).unwrap();
    assert_eq!(vmm.recv::<WorkerToVmm>().unwrap().0, WorkerToVmm::Activated);
}

#[test]
fn malformed_packet_is_refused_and_its_fds_closed() {
    let _guard = lock();
    let (worker, vmm) = Channel::pair().unwrap();
    let (ours, peer) = UnixStream::pair().unwrap();
    let before = open_fds();
    let mut trailing = codec::encode(&WorkerToVmm::Activated).unwrap();
    trailing.push(0);
    raw_send(&worker, &trailing, &[ours.as_fd()]);
    raw_send(&worker, &[0xff; 7], &[]);
    assert!(matches!(
        vmm.recv::<WorkerToVmm>(),
        Err(ChannelError::Codec(CodecError::TrailingBytes { .. }))
    ));
    assert!(matches!(
        vmm.recv::<WorkerToVmm>(),
        Err(ChannelError::Codec(CodecError::Decode(_)))
    ));
    assert_eq!(open_fds(), before);
    assert_all_copies_closed(ours, peer);
}

#[test]
fn wrong_fd_count_is_detected_and_fds_closed() {
    let _guard = lock();
    let (vmm, worker) = Channel::pair().unwrap();
    let (ours, peer) = UnixStream::pair().unwrap();
    let before = open_fds();
    vmm.send(&VmmToWorker::Reset, &[ours.as_fd(), ours.as_fd()])
        .unwrap();
    assert!(matches!(
        worker.recv_with_fd_count::<VmmToWorker>(1),
        Err(ChannelError::WrongFdCount {
            expected: 1,
            received: 2
        })
    ));
    vmm.send(&VmmToWorker::Reset, &[]).unwrap();
    assert!(matches!(
        worker.recv_with_fd_count::<VmmToWorker>(1),
        Err(ChannelError::WrongFdCount {
            expected: 1,
            received: 0
        })
    ));
    assert_eq!(open_fds(), before);
    assert_all_copies_closed(ours, peer);
}

#[test]
fn peer_gone_on_recv_and_send() {
    let _guard = lock();
    let (vmm, worker) = Channel::pair().unwrap();
    vmm.send(&VmmToWorker::Shutdown, &[]).unwrap();
    drop(vmm);
    // Queued packets are still delivered, then the closed peer shows as a zero-length read.
    assert_eq!(
        worker.recv::<VmmToWorker>().unwrap().0,
        VmmToWorker::Shutdown
    );
    assert!(matches!(
        worker.recv::<VmmToWorker>(),
        Err(ChannelError::PeerGone)
    ));
    // Sending to a closed peer is an error, not a SIGPIPE.
    assert!(matches!(
        worker.send(&WorkerToVmm::ResetDone, &[]),
        Err(ChannelError::PeerGone)
    ));
}

#[test]
fn nonblocking_recv_would_block() {
    let _guard = lock();
    let (vmm, worker) = Channel::pair().unwrap();
    worker.set_nonblocking(true).unwrap();
    assert!(matches!(
        worker.recv::<VmmToWorker>(),
        Err(ChannelError::WouldBlock)
    ));
    vmm.send(&VmmToWorker::GetStats, &[]).unwrap();
    assert_eq!(
        worker.recv::<VmmToWorker>().unwrap().0,
        VmmToWorker::GetStats
    );
    worker.set_nonblocking(false).unwrap();
}

#[test]
fn oversized_message_is_not_sent() {
    let _guard = lock();
    let (vmm, worker) = Channel::pair().unwrap();
    let msg = VmmToWorker::WriteConfig {
        offset: 0,
        data: vec![0; MAX_MESSAGE_SIZE],
    };
    assert!(matches!(
        vmm.send(&msg, &[]),
        Err(ChannelError::Codec(CodecError::TooLarge))
    ));
    worker.set_nonblocking(true).unwrap();
    assert!(matches!(
        worker.recv::<VmmToWorker>(),
        Err(ChannelError::WouldBlock)
    ));
}

#[test]
fn errors_chain_their_sources() {
    let err = ChannelError::from(CodecError::TooLarge);
    assert_eq!(err.to_string(), "bad message");
    let source = std::error::Error::source(&err).unwrap();
    assert_eq!(
        source.to_string(),
        "message is larger than the 4096-byte limit"
    );
}

/// `recv_without_fds` takes a plain message, and refuses one with fds without installing
/// them: the kernel discards them (no control buffer), so every copy of the sent socket is
/// closed once the sender drops its own.
#[test]
fn recv_without_fds_discards_attached_fds() {
    let _guard = lock();
    let (a, b) = Channel::pair().unwrap();
    a.send(&write_config(), &[]).unwrap();
    assert_eq!(b.recv_without_fds::<VmmToWorker>().unwrap(), write_config());
    let (ours, peer) = UnixStream::pair().unwrap();
    let before = open_fds();
    a.send(&write_config(), &[ours.as_fd()]).unwrap();
    let err = b.recv_without_fds::<VmmToWorker>().unwrap_err();
    assert!(matches!(err, ChannelError::FdsDiscarded), "{err:?}");
    assert_eq!(open_fds(), before);
    assert_all_copies_closed(ours, peer);
    // The channel goes on.
    a.send(&write_config(), &[]).unwrap();
    assert_eq!(b.recv_without_fds::<VmmToWorker>().unwrap(), write_config());
}
