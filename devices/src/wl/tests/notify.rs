//! When the device interrupts the driver: once per pass over the queues with used chains (not
//! once per chain), never while the driver polls (`VIRTQ_AVAIL_F_NO_INTERRUPT`), and with
//! `EVENT_IDX` when `used_event` is passed.

use rustix::fs::MemfdFlags;

use super::*;
use crate::VIRTIO_F_RING_EVENT_IDX;

/// Queues `n` `VFD_NEW` commands (ids from `first`) without notifying; their heads.
fn submit_allocs(rig: &mut Rig, first: u32, n: u32) -> Vec<u16> {
    (first..first + n)
        .map(|id| rig.submit(&vfd_new_cmd(CMD_VFD_NEW, id, 0, 4096), 64))
        .collect()
}

fn all_answered(rig: &mut Rig, heads: &[u16]) {
    for &head in heads {
        let resp = rig.response(head, 64).expect("answered");
        assert_eq!(code(&resp), RESP_VFD_NEW);
    }
}

#[test]
fn one_interrupt_per_pass_over_the_out_queue() {
    let mut rig = Rig::new();
    let heads = submit_allocs(&mut rig, 1, 3);
    rig.wl.process_queue(1, &mut rig.lp).unwrap();
    all_answered(&mut rig, &heads);
    assert_eq!(rig.interrupts(), 1, "three answers, one interrupt");
    // A notification with nothing new: no interrupt.
    rig.wl.process_queue(1, &mut rig.lp).unwrap();
    rig.wl.process_queue(0, &mut rig.lp).unwrap();
    assert_eq!(rig.interrupts(), 1);
}

#[test]
fn a_host_event_interrupts_once_for_all_its_messages() {
    let mut rig = Rig::new();
    let peer = rig.open_ctx(1);
    rig.give_in_buffers(4);
    let before = rig.interrupts();
    // A memfd and bytes in one message: VFD_NEW then VFD_RECV, two in-queue buffers.
    let fd =
        rustix::fs::memfd_create("t", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    rustix::fs::ftruncate(&fd, 4096).unwrap();
    peer_send(&peer, b"pool", &[fd.as_fd()]);
    rig.pump(50);
    assert_eq!(rig.take_in().len(), 2);
    assert_eq!(rig.interrupts() - before, 1);
}

#[test]
fn no_interrupt_while_the_driver_polls() {
    let mut rig = Rig::new();
    rig.set_no_interrupt(0, true);
    rig.set_no_interrupt(1, true);
    let peer = rig.open_ctx(1);
    rig.give_in_buffers(4);
    let heads = submit_allocs(&mut rig, 2, 2);
    rig.wl.process_queue(1, &mut rig.lp).unwrap();
    all_answered(&mut rig, &heads);
    peer_send(&peer, b"event", &[]);
    rig.pump(50);
    assert_eq!(rig.take_in().len(), 1, "delivered all the same");
    assert_eq!(rig.interrupts(), 0);
    // Asked for again: the next pass interrupts.
    rig.set_no_interrupt(1, false);
    let heads = submit_allocs(&mut rig, 4, 1);
    rig.wl.process_queue(1, &mut rig.lp).unwrap();
    all_answered(&mut rig, &heads);
    assert_eq!(rig.interrupts(), 1);
}

#[test]
fn used_event_decides_with_event_idx() {
    let mut rig = Rig::with_features(FEATURES | VIRTIO_F_RING_EVENT_IDX);
    // The avail flag means nothing with EVENT_IDX; used_event 2: interrupt once the used
    // index moves past 2.
    rig.set_no_interrupt(1, true);
    rig.set_used_event(1, 2);
    let heads = submit_allocs(&mut rig, 1, 2);
    rig.wl.process_queue(1, &mut rig.lp).unwrap();
    all_answered(&mut rig, &heads);
    assert_eq!(rig.interrupts(), 0, "used 0 -> 2: 2 not passed");
    let heads = submit_allocs(&mut rig, 3, 2);
    rig.wl.process_queue(1, &mut rig.lp).unwrap();
    all_answered(&mut rig, &heads);
    assert_eq!(rig.interrupts(), 1, "used 2 -> 4 passes 2");
}
