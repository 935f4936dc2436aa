//! Floods and exhaustion hit limits with an answer; reset closes everything.

use super::*;
use crate::wl::{MAX_CONTEXTS, MAX_VFDS};

#[test]
fn allocations_stop_at_the_region_with_out_of_memory() {
    let mut rig = Rig::new();
    let pages = REGION.len / 4096;
    for id in 1..=pages as u32 {
        assert_eq!(code(&rig.alloc(id, 4096)), RESP_VFD_NEW, "allocation {id}");
    }
    assert_eq!(code(&rig.alloc(1000, 4096)), RESP_OUT_OF_MEMORY);
    // Larger than the region altogether.
    assert_eq!(
        code(&rig.alloc(1001, REGION.len as u32 + 4096)),
        RESP_OUT_OF_MEMORY
    );
    assert_eq!(rig.services.0.lock().unwrap().maps.len() as u64, pages);
    // Freeing one makes room for exactly one.
    assert_eq!(code(&rig.command(&cmd(CMD_VFD_CLOSE, &[7]))), RESP_OK);
    assert_eq!(code(&rig.alloc(1000, 4096)), RESP_VFD_NEW);
    assert_eq!(code(&rig.alloc(1002, 4096)), RESP_OUT_OF_MEMORY);
}

#[test]
fn vfds_and_contexts_are_bounded() {
    let mut rig = Rig::new();
    for id in 1..=MAX_CONTEXTS as u32 {
        rig.open_ctx(id);
    }
    let over = vfd_new_cmd(CMD_VFD_NEW_CTX, 500, 0, 0);
    assert_eq!(code(&rig.command(&over)), RESP_OUT_OF_MEMORY);
    assert_eq!(rig.services.0.lock().unwrap().peers.len(), MAX_CONTEXTS);
    for id in 100..(100 + (MAX_VFDS - MAX_CONTEXTS) as u32) {
        let resp = rig.command(&vfd_new_cmd(CMD_VFD_NEW_PIPE, id, VFD_READ, 0));
        assert_eq!(code(&resp), RESP_VFD_NEW);
    }
    assert_eq!(rig.wl.vfd_count(), MAX_VFDS);
    let pipe = vfd_new_cmd(CMD_VFD_NEW_PIPE, 5000, VFD_READ, 0);
    assert_eq!(code(&rig.command(&pipe)), RESP_OUT_OF_MEMORY);
    assert_eq!(code(&rig.alloc(5001, 4096)), RESP_OUT_OF_MEMORY);
    // A full table also refuses what the compositor sends, counted.
    rig.give_in_buffers(4);
    let (r, _w) = rustix::pipe::pipe().unwrap();
    peer_send(&rig.peer(0), b"x", &[r.as_fd()]);
    rig.pump(50);
    assert_eq!(rig.wl.stats().queues[0].errors, 1);
    assert_eq!(rig.wl.vfd_count(), MAX_VFDS);
}

#[test]
fn reset_closes_connections_and_unmaps() {
    let mut rig = Rig::new();
    let peer = rig.open_ctx(1);
    rig.alloc(2, 8192);
    rig.command(&vfd_new_cmd(CMD_VFD_NEW_PIPE, 3, VFD_READ, 0));
    assert_eq!(rig.services.0.lock().unwrap().maps.len(), 1);
    let queues = rig.wl.reset().unwrap();
    assert_eq!(queues.len(), 2);
    assert!(rig.services.0.lock().unwrap().maps.is_empty());
    assert_eq!(rig.services.0.lock().unwrap().disconnected, 1);
    assert_eq!(rig.wl.vfd_count(), 0);
    // The compositor sees its connection close (its other copy is in the services log).
    rig.services.0.lock().unwrap().peers.clear();
    let mut buf = [0u8; 8];
    assert_eq!(std::io::Read::read(&mut &peer, &mut buf).unwrap(), 0);
    // Events after reset are ignored.
    assert!(rig.wl.process_event(1, EventSet::IN, &mut rig.lp).is_ok());
    assert!(rig.wl.process_queue(1, &mut rig.lp).is_ok());
}
