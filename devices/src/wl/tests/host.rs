//! What the compositor sends: data, memfds, pipes, refused fds, hang-ups; parking while the
//! guest has no buffers; sends that stall on a full socket.

use std::os::fd::AsFd;

use rustix::fs::{MemfdFlags, SealFlags};

use super::*;
use crate::wl::command::HOST_ID_MIN;
use crate::wl::inbox::INBOX_LIMIT;

fn memfd(size: u64, seal: bool) -> OwnedFd {
    let flags = if seal {
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING
    } else {
        MemfdFlags::CLOEXEC
    };
    let fd = rustix::fs::memfd_create("test", flags).unwrap();
    rustix::fs::ftruncate(&fd, size).unwrap();
    fd
}

#[test]
fn compositor_data_waits_for_buffers_then_arrives_in_order() {
    let mut rig = Rig::new();
    let peer = rig.open_ctx(1);
    peer_send(&peer, b"first", &[]);
    rig.pump(50);
    peer_send(&peer, b"second", &[]);
    rig.pump(50);
    assert!(rig.take_in().is_empty());
    rig.give_in_buffers(4);
    assert_eq!(rig.take_in(), vec![recv(1, b"first"), recv(1, b"second")]);
    peer_send(&peer, b"third", &[]);
    rig.pump(50);
    assert_eq!(rig.take_in(), vec![recv(1, b"third")]);
    let stats = rig.wl.stats();
    assert_eq!((stats.queues[0].requests, stats.queues[0].bytes), (3, 16));
}

#[test]
fn memfds_become_mapped_host_vfds() {
    let mut rig = Rig::new();
    let peer = rig.open_ctx(1);
    rig.give_in_buffers(8);
    let keymap = memfd(5000, true);
    peer_send(&peer, b"keymap", &[keymap.as_fd()]);
    rig.pump(50);
    let seen = rig.take_in();
    assert_eq!(
        seen,
        vec![
            InMsg::New {
                id: HOST_ID_MIN,
                flags: 0,
                pfn: 0,
                size: 5000
            },
            InMsg::Recv {
                vfd: 1,
                ids: vec![HOST_ID_MIN],
                data: b"keymap".to_vec()
            },
        ]
    );
    // The device sealed it against shrinking; the compositor can no longer truncate it.
    let seals = rustix::fs::fcntl_get_seals(&keymap).unwrap();
    assert!(seals.contains(SealFlags::SHRINK));
    assert!(rustix::fs::ftruncate(&keymap, 10).is_err());
    assert_eq!(
        rig.services.0.lock().unwrap().maps.get(&0),
        Some(&(8192, true))
    );

    // A write-sealed one is mapped read-only.
    let ro = memfd(4096, true);
    rustix::fs::fcntl_add_seals(&ro, SealFlags::WRITE).unwrap();
    peer_send(&peer, b"ro", &[ro.as_fd()]);
    rig.pump(50);
    assert_eq!(rig.take_in().len(), 2);
    assert_eq!(
        rig.services.0.lock().unwrap().maps.get(&8192),
        Some(&(4096, false))
    );

    // Closing the host vfd unmaps it.
    assert_eq!(
        code(&rig.command(&cmd(CMD_VFD_CLOSE, &[HOST_ID_MIN]))),
        RESP_OK
    );
    assert!(!rig.services.0.lock().unwrap().maps.contains_key(&0));
}

#[test]
fn other_fd_types_are_refused_and_counted() {
    let mut rig = Rig::new();
    let peer = rig.open_ctx(1);
    rig.give_in_buffers(8);
    let (socket, _other) = UnixStream::pair().unwrap();
    let unsealable = memfd(4096, false);
    let empty = memfd(0, true);
    let dir = std::fs::File::open("/").unwrap();
    let devnull = std::fs::File::open("/dev/null").unwrap();
    peer_send(
        &peer,
        b"junk",
        &[
            socket.as_fd(),
            unsealable.as_fd(),
            empty.as_fd(),
            dir.as_fd(),
            devnull.as_fd(),
        ],
    );
    rig.pump(50);
    assert_eq!(rig.take_in(), vec![recv(1, b"junk")]);
    assert_eq!(rig.wl.stats().queues[0].errors, 5);
    assert!(rig.services.0.lock().unwrap().maps.is_empty());
    assert_eq!(rig.wl.vfd_count(), 1);
}

#[test]
fn compositor_pipes_become_pipe_vfds() {
    let mut rig = Rig::new();
    let peer = rig.open_ctx(1);
    rig.give_in_buffers(8);
    // The compositor gives the guest a write end (as wl_data_source.send does)...
    let (read, write) = rustix::pipe::pipe().unwrap();
    peer_send(&peer, b"send", &[write.as_fd()]);
    drop(write);
    rig.pump(50);
    let w_id = HOST_ID_MIN;
    assert_eq!(
        rig.take_in(),
        vec![
            InMsg::New {
                id: w_id,
                flags: VFD_WRITE,
                pfn: REGION.len >> 12,
                size: 0
            },
            InMsg::Recv {
                vfd: 1,
                ids: vec![w_id],
                data: b"send".to_vec()
            },
        ]
    );
    assert_eq!(
        code(&rig.command(&send_cmd(w_id, &[], b"clipboard"))),
        RESP_OK
    );
    assert_eq!(code(&rig.command(&cmd(CMD_VFD_CLOSE, &[w_id]))), RESP_OK);
    assert_eq!(read_to_end(read), b"clipboard");

    // ...and a read end: data flows to the guest, then the hang-up.
    let (read, write) = rustix::pipe::pipe().unwrap();
    peer_send(&peer, b"recv", &[read.as_fd()]);
    drop(read);
    rig.pump(50);
    let r_id = HOST_ID_MIN + 1;
    assert_eq!(rig.take_in().len(), 2);
    write_all(&write, b"offer");
    drop(write);
    rig.pump(50);
    assert_eq!(
        rig.take_in(),
        vec![recv(r_id, b"offer"), InMsg::Hup { vfd: r_id },]
    );
}

#[test]
fn guest_pipes_carry_data_both_ways() {
    let mut rig = Rig::new();
    let peer = rig.open_ctx(1);
    rig.give_in_buffers(8);
    rig.command(&vfd_new_cmd(CMD_VFD_NEW_PIPE, 2, VFD_READ, 0));
    rig.command(&vfd_new_cmd(CMD_VFD_NEW_PIPE, 3, VFD_WRITE, 0));
    assert_eq!(code(&rig.command(&send_cmd(1, &[2, 3], b"pipes"))), RESP_OK);
    let (_, mut fds) = peer_recv(&peer, 5);
    let host_read = fds.pop().unwrap();
    let host_write = fds.pop().unwrap();
    write_all(&host_write, b"to guest");
    drop(host_write);
    rig.pump(50);
    assert_eq!(
        rig.take_in(),
        vec![recv(2, b"to guest"), InMsg::Hup { vfd: 2 },]
    );
    assert_eq!(code(&rig.command(&send_cmd(3, &[], b"to host"))), RESP_OK);
    assert_eq!(code(&rig.command(&cmd(CMD_VFD_CLOSE, &[3]))), RESP_OK);
    assert_eq!(read_to_end(host_read), b"to host");
}

#[test]
fn a_hung_up_context_is_announced_once_and_unwatched() {
    let mut rig = Rig::new();
    let peer = rig.open_ctx(1);
    rig.give_in_buffers(4);
    peer_send(&peer, b"bye", &[]);
    drop(peer);
    rig.services.0.lock().unwrap().peers.clear();
    rig.pump(50);
    assert_eq!(rig.take_in(), vec![recv(1, b"bye"), InMsg::Hup { vfd: 1 },]);
    assert!(rig.lp.fds.is_empty());
    // Sending to it now fails; closing it works.
    assert_eq!(code(&rig.command(&send_cmd(1, &[], b"x"))), RESP_ERR);
    assert_eq!(code(&rig.command(&cmd(CMD_VFD_CLOSE, &[1]))), RESP_OK);
}

#[test]
fn a_full_inbox_parks_readers_until_buffers_come() {
    let mut rig = Rig::new();
    let peer = rig.open_ctx(1);
    let total = INBOX_LIMIT + 40;
    for i in 0..total {
        peer_send(&peer, format!("m{i:03}").as_bytes(), &[]);
        // One message per read: let the device take each before the next is sent.
        rig.pump(5);
    }
    // The device stopped reading once the inbox was full.
    assert!(rig.lp.fds.is_empty(), "context still watched while parked");
    let mut got = Vec::new();
    for _ in 0..40 {
        rig.give_in_buffers(QSIZE as usize);
        rig.pump(5);
        got.extend(rig.take_in());
        if got.len() >= total {
            break;
        }
    }
    let data: Vec<u8> = got
        .iter()
        .flat_map(|m| match m {
            InMsg::Recv { data, .. } => data.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    let want: Vec<u8> = (0..total)
        .flat_map(|i| format!("m{i:03}").into_bytes())
        .collect();
    assert_eq!(data, want);
    assert_eq!(rig.lp.fds.len(), 1, "context watched again");
}

#[test]
fn a_send_to_a_full_socket_stalls_and_resumes_in_order() {
    let mut rig = Rig::new();
    let peer = rig.open_ctx(1);
    let chunk = vec![0x5a; 60 * 1024];
    let mut heads = Vec::new();
    let mut stalled = None;
    for _ in 0..64 {
        let head = rig.submit(&send_cmd(1, &[], &chunk), 8);
        rig.wl.process_queue(1, &mut rig.lp).unwrap();
        if rig.response(head, 8).is_none() {
            stalled = Some(head);
            break;
        }
        heads.push(head);
    }
    let stalled = stalled.expect("the socket filled up");
    // A later command waits behind it.
    let later = rig.submit(&vfd_new_cmd(CMD_VFD_NEW_PIPE, 9, VFD_READ, 0), 64);
    rig.wl.process_queue(1, &mut rig.lp).unwrap();
    assert_eq!(rig.response(later, 64), None);
    let sent = (heads.len() + 1) * chunk.len();
    let reader = std::thread::spawn(move || peer_recv(&peer, sent).0);
    for _ in 0..100 {
        rig.pump(20);
        if let Some(resp) = rig.response(stalled, 8) {
            assert_eq!(code(&resp), RESP_OK);
            break;
        }
    }
    assert!(rig.wl.stats().queues[1].bytes as usize >= sent);
    assert_eq!(
        code(&rig.response(later, 64).expect("resumed")),
        RESP_VFD_NEW
    );
    assert!(reader.join().unwrap().iter().all(|&b| b == 0x5a));
}

#[test]
fn closing_a_context_drops_its_pending_messages_and_their_vfds() {
    let mut rig = Rig::new();
    let peer = rig.open_ctx(1);
    let shm = memfd(4096, true);
    peer_send(&peer, b"late", &[shm.as_fd()]);
    rig.pump(50);
    assert_eq!(rig.wl.vfd_count(), 2);
    assert_eq!(code(&rig.command(&cmd(CMD_VFD_CLOSE, &[1]))), RESP_OK);
    assert_eq!(rig.wl.vfd_count(), 0);
    assert_eq!(rig.services.0.lock().unwrap().disconnected, 1);
    assert!(rig.services.0.lock().unwrap().maps.is_empty());
    rig.give_in_buffers(4);
    assert!(rig.take_in().is_empty());
}

#[test]
fn too_many_fds_in_one_message_are_counted() {
    let mut rig = Rig::new();
    let peer = rig.open_ctx(1);
    let pipes: Vec<_> = (0..40).map(|_| rustix::pipe::pipe().unwrap()).collect();
    let fds: Vec<_> = pipes.iter().map(|(r, _)| r.as_fd()).collect();
    peer_send(&peer, b"many", &fds);
    rig.pump(50);
    let mut seen = rig.take_in();
    for _ in 0..4 {
        rig.give_in_buffers(QSIZE as usize);
        seen.extend(rig.take_in());
    }
    let InMsg::Recv { ids, .. } = seen.last().unwrap() else {
        panic!("{seen:?}");
    };
    assert!(ids.len() <= crate::wl::MAX_SEND_VFDS);
    assert_eq!(seen.len(), ids.len() + 1);
    assert!(rig.wl.stats().queues[0].errors > 0);
}
