//! Host services against a real KVM VM and real sockets: what is granted, what is refused.

use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::time::Duration;

use devices::kind::ShmWindow;
use ipc::{Channel, ServiceRefusal, ServiceReply, ServiceRequest};
use kvm_ioctls::Kvm;
use rustix::fs::{MemfdFlags, OFlags, SealFlags};

use super::shm::{ShmMapper, Slots, FIRST_SLOT};
use super::{Connections, DeviceServices, ServiceLink};

const PAGE: u64 = 4096;
const WINDOW: ShmWindow = ShmWindow {
    base: 1 << 32,
    len: 16 * PAGE,
};

/// A fresh directory for sockets.
fn scratch(label: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("svmm-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn mapper() -> ShmMapper {
    let kvm = Kvm::new().expect("/dev/kvm (the services tests need KVM)");
    let vm = Arc::new(kvm.create_vm().unwrap());
    ShmMapper::new(vm, WINDOW, Slots::new(FIRST_SLOT + 8))
}

fn memfd(len: u64, seals: SealFlags) -> std::os::fd::OwnedFd {
    let fd =
        rustix::fs::memfd_create("t", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    rustix::fs::ftruncate(&fd, len).unwrap();
    rustix::fs::fcntl_add_seals(&fd, seals).unwrap();
    fd
}

#[test]
fn sealed_memfds_map_and_unmap() {
    let mut m = mapper();
    let fd = memfd(2 * PAGE, SealFlags::SHRINK);
    m.map(fd.as_fd(), 0, 2 * PAGE, true).unwrap();
    m.map(fd.as_fd(), 4 * PAGE, PAGE, true).unwrap();
    assert_eq!(m.len(), 2);
    assert_eq!(
        m.map(fd.as_fd(), PAGE, PAGE, true),
        Err(ServiceRefusal::Overlap)
    );
    assert_eq!(
        m.map(fd.as_fd(), 3 * PAGE, 2 * PAGE, true),
        Err(ServiceRefusal::Overlap)
    );
    m.map(fd.as_fd(), 2 * PAGE, PAGE, true).unwrap();
    m.unmap(0).unwrap();
    assert_eq!(m.unmap(0), Err(ServiceRefusal::NotMapped));
    m.map(fd.as_fd(), 0, PAGE, true).unwrap();
    m.clear();
    assert!(m.is_empty());
}

#[test]
fn bad_fds_and_ranges_are_refused() {
    let mut m = mapper();
    let unsealed = memfd(PAGE, SealFlags::empty());
    assert_eq!(
        m.map(unsealed.as_fd(), 0, PAGE, true),
        Err(ServiceRefusal::BadFd)
    );
    let short = memfd(PAGE, SealFlags::SHRINK);
    assert_eq!(
        m.map(short.as_fd(), 0, 2 * PAGE, true),
        Err(ServiceRefusal::BadFd)
    );
    let write_sealed = memfd(PAGE, SealFlags::SHRINK | SealFlags::WRITE);
    assert_eq!(
        m.map(write_sealed.as_fd(), 0, PAGE, true),
        Err(ServiceRefusal::BadFd)
    );
    let (socket, _) = std::os::unix::net::UnixStream::pair().unwrap();
    assert_eq!(
        m.map(socket.as_fd(), 0, PAGE, false),
        Err(ServiceRefusal::BadFd)
    );
    // A read-only view of a sealed memfd may be mapped read-only, not writable.
    let fd = memfd(PAGE, SealFlags::SHRINK);
    let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
    let ro = rustix::fs::open(
        path.as_str(),
        OFlags::RDONLY | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    assert_eq!(m.map(ro.as_fd(), 0, PAGE, true), Err(ServiceRefusal::BadFd));
    match m.map(ro.as_fd(), 0, PAGE, false) {
        Ok(()) => m.unmap(0).unwrap(),
        // A KVM without read-only memory slots refuses it as a mapping failure.
        Err(e) => assert!(matches!(e, ServiceRefusal::MapFailed { .. }), "{e:?}"),
    }
    let ok = memfd(PAGE, SealFlags::SHRINK);
    for (offset, len) in [
        (1, PAGE),
        (0, 0),
        (0, PAGE + 1),
        (WINDOW.len, PAGE),
        (15 * PAGE, 2 * PAGE),
    ] {
        assert_eq!(
            m.map(ok.as_fd(), offset, len, true),
            Err(ServiceRefusal::BadRange)
        );
    }
    assert!(m.is_empty());
}

#[test]
fn the_vm_runs_out_of_slots_not_of_memory() {
    let kvm = Kvm::new().unwrap();
    let vm = Arc::new(kvm.create_vm().unwrap());
    let slots = Slots::new(FIRST_SLOT + 2);
    let mut a = ShmMapper::new(vm.clone(), WINDOW, slots.clone());
    let mut b = ShmMapper::new(
        vm,
        ShmWindow {
            base: 2 << 32,
            ..WINDOW
        },
        slots,
    );
    let fd = memfd(PAGE, SealFlags::SHRINK);
    a.map(fd.as_fd(), 0, PAGE, true).unwrap();
    b.map(fd.as_fd(), 0, PAGE, true).unwrap();
    assert_eq!(
        a.map(fd.as_fd(), PAGE, PAGE, true),
        Err(ServiceRefusal::LimitReached)
    );
    drop(b);
    a.map(fd.as_fd(), PAGE, PAGE, true).unwrap();
}

fn services(
    socket: Option<std::path::PathBuf>,
    limit: usize,
) -> (DeviceServices, ServiceLink, Arc<Connections>) {
    let connections = Connections::new(limit);
    let (s, link) =
        DeviceServices::new("test#0".into(), socket, Some(mapper()), connections.clone()).unwrap();
    (s, link, connections)
}

#[test]
fn connections_are_limited_per_vm() {
    let dir = scratch("services");
    let path = dir.join("compositor.sock");
    let _listener = UnixListener::bind(&path).unwrap();
    let (mut s, _link, connections) = services(Some(path.clone()), 2);
    let (reply, fds) = s.answer(ServiceRequest::Connect, &[]);
    assert_eq!((reply, fds.len()), (ServiceReply::Connected, 1));
    let flags = rustix::fs::fcntl_getfl(&fds[0]).unwrap();
    assert!(flags.contains(OFlags::NONBLOCK));
    assert_eq!(
        s.answer(ServiceRequest::Connect, &[]).0,
        ServiceReply::Connected
    );
    assert_eq!(
        s.answer(ServiceRequest::Connect, &[]).0,
        ServiceReply::Refused(ServiceRefusal::LimitReached)
    );
    assert_eq!(connections.open(), 2);
    assert_eq!(
        s.answer(ServiceRequest::Disconnected, &[]).0,
        ServiceReply::Released
    );
    assert_eq!(connections.open(), 1);
    assert_eq!(
        s.answer(ServiceRequest::Connect, &[]).0,
        ServiceReply::Connected
    );
    // Disconnects beyond what the device got do not lower the VM's count.
    for _ in 0..5 {
        s.answer(ServiceRequest::Disconnected, &[]);
    }
    assert_eq!(connections.open(), 0);
    drop(_listener);
    let _ = std::fs::remove_file(&path);
    assert!(matches!(
        s.answer(ServiceRequest::Connect, &[]).0,
        ServiceReply::Refused(ServiceRefusal::ConnectFailed { .. })
    ));
    assert_eq!(connections.open(), 0);
    let (mut none, _d, _) = services(None, 2);
    assert_eq!(
        none.answer(ServiceRequest::Connect, &[]).0,
        ServiceReply::Refused(ServiceRefusal::NotDeclared)
    );
}

#[test]
fn requests_with_the_wrong_fds_are_refused() {
    let (mut s, _link, _) = services(None, 1);
    let map = ServiceRequest::MapShm {
        offset: 0,
        len: PAGE,
        writable: true,
    };
    assert_eq!(
        s.answer(map, &[]).0,
        ServiceReply::Refused(ServiceRefusal::BadFd)
    );
    let fd = memfd(PAGE, SealFlags::SHRINK);
    let two = [fd.try_clone().unwrap(), fd.try_clone().unwrap()];
    assert_eq!(
        s.answer(map, &two).0,
        ServiceReply::Refused(ServiceRefusal::BadFd)
    );
    assert_eq!(
        s.answer(
            ServiceRequest::UnmapShm { offset: 0 },
            &[fd.try_clone().unwrap()]
        )
        .0,
        ServiceReply::Refused(ServiceRefusal::BadFd)
    );
    assert_eq!(s.answer(map, &[fd]).0, ServiceReply::Mapped);
}

/// Each worker's channel in turn: when one closes (its worker died), its connections and
/// mappings go before the next worker's channel is parked; the thread ends with the link (the
/// parked channel it serves closes with it).
#[test]
fn a_closed_channel_releases_everything_before_the_next() {
    let dir = scratch("services-close");
    let path = dir.join("compositor.sock");
    let _listener = UnixListener::bind(&path).unwrap();
    let (s, link, connections) = services(Some(path), 4);
    let server = std::thread::spawn(move || s.serve());
    let map = ServiceRequest::MapShm {
        offset: 0,
        len: PAGE,
        writable: true,
    };
    for worker in 0..3 {
        let device = Channel::from(link.take(Duration::from_secs(5)).unwrap());
        device.send(&ServiceRequest::Connect, &[]).unwrap();
        let (reply, fds) = device.recv::<ServiceReply>().unwrap();
        assert_eq!((reply, fds.len()), (ServiceReply::Connected, 1), "{worker}");
        // The same offset each time: the predecessor's mapping is gone.
        let fd = memfd(PAGE, SealFlags::SHRINK);
        device.send(&map, &[fd.as_fd()]).unwrap();
        assert_eq!(
            device.recv::<ServiceReply>().unwrap().0,
            ServiceReply::Mapped,
            "{worker}"
        );
        assert_eq!(connections.open(), 1, "{worker}");
        drop(device);
    }
    drop(link);
    server.join().unwrap();
    assert_eq!(connections.open(), 0);
}

/// The start-up check connects once and closes; a socket it cannot use is one sentence naming
/// the uid svmm runs as and the error.
#[test]
fn the_reachability_check_connects_once_and_names_the_uid() {
    let dir = scratch("services-reach");
    let path = dir.join("compositor.sock");
    let listener = UnixListener::bind(&path).unwrap();
    listener.set_nonblocking(true).unwrap();
    assert_eq!(super::check_reachable(&path, 4242), Ok(()));
    let (probe, _) = listener.accept().unwrap();
    let mut byte = [0u8; 1];
    use std::io::Read;
    assert_eq!(
        (&probe).read(&mut byte).unwrap(),
        0,
        "closed at once, nothing sent"
    );
    drop(listener);
    let why = super::check_reachable(&path, 4242).unwrap_err();
    assert!(
        why.contains("uid 4242") && why.contains("Connection refused"),
        "{why}"
    );
}
