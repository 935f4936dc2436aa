//! The control queue and multiqueue routing.

use vm_memory::{Bytes, GuestAddress};

use super::super::ctrl::{CLASS_GUEST_OFFLOADS, CLASS_MQ, ERR, OK};
use super::super::header::VnetHdr;
use super::*;

/// Pushes a control command on queue `q` (class, command, data; ack byte preset to 0xee) and
/// kicks it. Returns the ack.
fn command(rig: &mut Rig<'_>, q: usize, n: u64, class: u8, cmd: u8, data: &[u8]) -> u8 {
    let at = BUF + 0x8_0000 + 0x100 * n;
    rig.mem
        .write_slice(&[class, cmd], GuestAddress(at))
        .unwrap();
    rig.mem.write_slice(data, GuestAddress(at + 0x10)).unwrap();
    rig.mem.write_obj(0xeeu8, GuestAddress(at + 0x80)).unwrap();
    let mut descs = vec![(at, 2, 0)];
    if !data.is_empty() {
        descs.push((at + 0x10, data.len() as u32, 0));
    }
    descs.push((at + 0x80, 1, F_WRITE));
    let head = rig.vqs[q].push(&descs);
    rig.kick(q as u16);
    assert_eq!(rig.vqs[q].used_len_of(head), Some(1));
    rig.mem.read_obj(GuestAddress(at + 0x80)).unwrap()
}

#[test]
fn guest_offloads_switch_the_tap_and_what_the_driver_receives() {
    let mem = mem();
    let mut rig = Rig::new(&mem, config(), LINUX);
    assert_eq!(rig.offloads.last(), Some(0x07));
    // Off: the tap stops offloading, and a TSO frame still in flight is dropped.
    assert_eq!(
        command(&mut rig, 2, 0, CLASS_GUEST_OFFLOADS, 0, &0u64.to_le_bytes()),
        OK
    );
    assert_eq!(rig.offloads.last(), Some(0));
    rig.push_rx(0, BUF, 4, 2048);
    let tso = VnetHdr {
        flags: 1,
        gso_type: 1,
        gso_size: 1000,
        csum_start: 34,
        csum_offset: 16,
        hdr_len: 54,
        num_buffers: 0,
    };
    rig.host_send(0, &tso, &frame(3000, 1));
    rig.ready(0, EventSet::IN);
    assert_eq!(rig.vqs[0].used_idx(), 0);
    // Back on (CSUM and TSO4 only).
    let on = f::GUEST_CSUM | f::GUEST_TSO4;
    assert_eq!(
        command(&mut rig, 2, 1, CLASS_GUEST_OFFLOADS, 0, &on.to_le_bytes()),
        OK
    );
    assert_eq!(rig.offloads.last(), Some(0x03));
    rig.host_send(0, &tso, &frame(3000, 1));
    rig.ready(0, EventSet::IN);
    assert_eq!(rig.vqs[0].used_idx(), 2);
    // An offload the driver never negotiated, a short payload, an unknown class: ERR.
    let ecn = f::GUEST_ECN.to_le_bytes();
    assert_eq!(command(&mut rig, 2, 2, CLASS_GUEST_OFFLOADS, 0, &ecn), ERR);
    assert_eq!(
        command(&mut rig, 2, 3, CLASS_GUEST_OFFLOADS, 0, &[1, 2]),
        ERR
    );
    assert_eq!(command(&mut rig, 2, 4, 0, 0, &[1]), ERR); // CTRL_RX, not offered
                                                          // MQ was not negotiated: VQ_PAIRS_SET is refused.
    assert_eq!(
        command(&mut rig, 2, 5, CLASS_MQ, 0, &1u16.to_le_bytes()),
        ERR
    );
    assert_eq!(rig.offloads.last(), Some(0x03));
    assert_eq!(rig.stats(2), (6, 0, 4, 0));
}

#[test]
fn a_control_chain_without_an_ack_byte_is_returned_empty() {
    let mem = mem();
    let mut rig = Rig::new(&mem, config(), LINUX);
    mem.write_slice(&[CLASS_GUEST_OFFLOADS, 0], GuestAddress(BUF))
        .unwrap();
    let head = rig.vqs[2].push(&[(BUF, 2, 0), (BUF + 0x10, 8, 0)]);
    rig.kick(2);
    assert_eq!(rig.vqs[2].used_len_of(head), Some(0));
    assert_eq!(rig.stats(2), (0, 0, 1, 0));
}

#[test]
fn queue_pairs_route_each_port_to_its_own_queues_once_enabled() {
    let mem = mem();
    let mut mq = config();
    mq.pairs = 2;
    let mut rig = Rig::new(&mem, mq, LINUX | f::MQ);
    assert_eq!(rig.vqs.len(), 5);
    rig.push_rx(0, BUF, 4, 2048);
    rig.push_rx(1, BUF + 0x1_0000, 4, 2048);
    // One pair active: port 1's frames go to receive queue 0 (pair 1 is not in use yet).
    rig.host_send(1, &VnetHdr::default(), &frame(100, 1));
    rig.ready(1, EventSet::IN);
    assert_eq!((rig.vqs[0].used_idx(), rig.vqs[2].used_idx()), (1, 0));
    // Enable both pairs (the control queue is queue 4 with MQ).
    assert_eq!(
        command(&mut rig, 4, 0, CLASS_MQ, 0, &2u16.to_le_bytes()),
        OK
    );
    rig.host_send(1, &VnetHdr::default(), &frame(100, 2));
    rig.ready(1, EventSet::IN);
    rig.host_send(0, &VnetHdr::default(), &frame(100, 3));
    rig.ready(0, EventSet::IN);
    assert_eq!((rig.vqs[0].used_idx(), rig.vqs[2].used_idx()), (2, 1));
    // Transmit queue k sends on port k.
    rig.push_tx(1, BUF + 0x4_0000, &VnetHdr::default(), &frame(64, 4), 1);
    rig.kick(3);
    assert!(rig.host_recv(0).is_none());
    assert_eq!(rig.host_recv(1).unwrap().1, frame(64, 4));
    // Out of range: refused, the pairs stay.
    assert_eq!(
        command(&mut rig, 4, 1, CLASS_MQ, 0, &3u16.to_le_bytes()),
        ERR
    );
    assert_eq!(
        command(&mut rig, 4, 2, CLASS_MQ, 0, &0u16.to_le_bytes()),
        ERR
    );
    rig.host_send(1, &VnetHdr::default(), &frame(100, 5));
    rig.ready(1, EventSet::IN);
    assert_eq!(rig.vqs[2].used_idx(), 2);
}
