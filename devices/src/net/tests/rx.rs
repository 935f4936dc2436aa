//! Receive: frames from the host into the driver's buffers, one chain or merged, held while
//! the ring is empty, with the header the driver may see.

use super::super::header::{VnetHdr, F_DATA_VALID, F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6};

use super::*;

/// The header and frame the driver finds in used buffers `first..first + n` (chains of one
/// buffer each at `at`, `len` bytes apart).
fn received(rig: &Rig<'_>, first: u16, at: u64, len: u32) -> (VnetHdr, Vec<u8>) {
    let (head, used) = rig.vqs[0].used(first);
    let addr = at + u64::from(head) * u64::from(len);
    let bytes = rig.read(addr, used as usize);
    let mut raw = [0u8; HDR_LEN];
    raw.copy_from_slice(&bytes[..HDR_LEN]);
    let hdr = VnetHdr::from_bytes(&raw);
    let mut data = bytes[HDR_LEN..].to_vec();
    for i in 1..hdr.num_buffers {
        let (head, used) = rig.vqs[0].used(first + i);
        data.extend(rig.read(at + u64::from(head) * u64::from(len), used as usize));
    }
    (hdr, data)
}

#[test]
fn a_frame_lands_in_one_buffer_with_num_buffers_1() {
    let mem = mem();
    let mut rig = Rig::new(&mem, config(), LINUX);
    rig.push_rx(0, BUF, 4, 2048);
    let data = frame(1000, 1);
    rig.host_send(0, &VnetHdr::default(), &data);
    rig.ready(0, EventSet::IN);
    assert_eq!(rig.vqs[0].used_idx(), 1);
    let (hdr, got) = received(&rig, 0, BUF, 2048);
    assert_eq!(hdr.num_buffers, 1);
    assert_eq!(got, data);
    assert_eq!(rig.stats(0), (1, 1000, 0, 0));
    assert_eq!(rig.irq.used.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn a_64k_tso_frame_spreads_over_merged_buffers() {
    let mem = mem();
    let mut rig = Rig::new(&mem, config(), LINUX);
    rig.push_rx(0, BUF, 20, 4096);
    let data = frame(65_000, 2);
    let host = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: 66,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    };
    rig.host_send(0, &host, &data);
    rig.ready(0, EventSet::IN);
    let (hdr, got) = received(&rig, 0, BUF, 4096);
    assert_eq!(hdr.num_buffers, 16); // 65,012 bytes in 4 KiB buffers
    assert_eq!(rig.vqs[0].used_idx(), 16);
    assert_eq!(
        VnetHdr {
            num_buffers: 0,
            ..hdr
        },
        host
    );
    assert_eq!(got, data);
}

#[test]
fn without_buffers_the_frame_waits_and_the_fd_is_not_read() {
    let mem = mem();
    let mut rig = Rig::new(&mem, config(), LINUX);
    let first = frame(3000, 3);
    let second = frame(80, 4);
    rig.host_send(0, &VnetHdr::default(), &first);
    rig.host_send(0, &VnetHdr::default(), &second);
    rig.ready(0, EventSet::IN);
    assert_eq!(rig.vqs[0].used_idx(), 0);
    assert_eq!(rig.events.interest(0), Some(EventSet::empty()));
    // One 2 KiB buffer is not enough for 3000 bytes: still waiting, nothing taken.
    rig.push_rx(0, BUF, 1, 2048);
    rig.kick(0);
    assert_eq!(rig.vqs[0].used_idx(), 0);
    assert_eq!(rig.events.interest(0), Some(EventSet::empty()));
    // A second buffer: the frame goes over both, then the next frame is read and waits.
    rig.push_rx(0, BUF + 2048, 1, 2048);
    rig.kick(0);
    assert_eq!(rig.vqs[0].used_idx(), 2);
    let (hdr, got) = received(&rig, 0, BUF, 2048);
    assert_eq!((hdr.num_buffers, got), (2, first));
    assert_eq!(rig.events.interest(0), Some(EventSet::empty()));
    rig.push_rx(0, BUF + 4096, 1, 2048);
    rig.kick(0);
    assert_eq!(rig.vqs[0].used_idx(), 3);
    assert_eq!(rig.events.interest(0), Some(EventSet::IN));
    assert_eq!(rig.stats(0), (2, 3080, 0, 0));
}

#[test]
fn without_mrg_rxbuf_a_frame_too_big_for_a_chain_is_dropped_and_the_chain_kept() {
    let mem = mem();
    let mut rig = Rig::new(&mem, config(), LINUX & !f::MRG_RXBUF);
    rig.push_rx(0, BUF, 2, 1526);
    rig.host_send(0, &VnetHdr::default(), &frame(3000, 5));
    let small = frame(1500, 6);
    rig.host_send(0, &VnetHdr::default(), &small);
    rig.ready(0, EventSet::IN);
    assert_eq!(rig.vqs[0].used_idx(), 1);
    let (hdr, got) = received(&rig, 0, BUF, 1526);
    assert_eq!((hdr.num_buffers, got), (1, small));
    assert_eq!(rig.stats(0), (1, 1500, 0, 1));
}

#[test]
fn malformed_receive_chains_are_returned_empty_and_skipped() {
    let mem = mem();
    let mut rig = Rig::new(&mem, config(), LINUX);
    let bad_readable = rig.vqs[0].push(&[(BUF, 2048, 0)]);
    let bad_short = rig.vqs[0].push(&[(BUF + 0x1000, 8, F_WRITE)]);
    let bad_outside = rig.vqs[0].push(&[(0xffff_f000, 2048, F_WRITE)]);
    let good = rig.vqs[0].push(&[(BUF + 0x2000, 2048, F_WRITE)]);
    let data = frame(500, 7);
    rig.host_send(0, &VnetHdr::default(), &data);
    rig.ready(0, EventSet::IN);
    for head in [bad_readable, bad_short, bad_outside] {
        assert_eq!(rig.vqs[0].used_len_of(head), Some(0));
    }
    assert_eq!(rig.vqs[0].used_len_of(good), Some(512));
    assert_eq!(rig.read(BUF + 0x2000 + 12, 500), data);
    assert_eq!(rig.stats(0), (1, 500, 3, 0));
}

#[test]
fn host_headers_are_translated_to_what_the_driver_accepts() {
    let mem = mem();
    // The driver took GUEST_CSUM but no TSO.
    let feats = VIRTIO_F_VERSION_1 | f::MRG_RXBUF | f::GUEST_CSUM;
    let mut rig = Rig::new(&mem, config(), feats);
    rig.push_rx(0, BUF, 8, 2048);
    let valid = VnetHdr {
        flags: F_DATA_VALID,
        ..VnetHdr::default()
    };
    rig.host_send(0, &valid, &frame(100, 8));
    let tso6 = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_TCPV6,
        gso_size: 1400,
        csum_start: 54,
        csum_offset: 16,
        hdr_len: 74,
        num_buffers: 0,
    };
    rig.host_send(0, &tso6, &frame(3000, 9)); // not accepted: dropped
    rig.host_send(
        0,
        &VnetHdr {
            hdr_len: 7,
            gso_size: 3,
            ..VnetHdr::default()
        },
        &frame(100, 10),
    );
    rig.ready(0, EventSet::IN);
    assert_eq!(rig.vqs[0].used_idx(), 2);
    let (h0, _) = received(&rig, 0, BUF, 2048);
    assert_eq!(
        h0,
        VnetHdr {
            num_buffers: 1,
            ..valid
        }
    );
    let (h1, _) = received(&rig, 1, BUF, 2048);
    assert_eq!(
        h1,
        VnetHdr {
            num_buffers: 1,
            ..VnetHdr::default()
        }
    );
    assert_eq!(rig.stats(0), (2, 200, 0, 1));
}

#[test]
fn a_partial_checksum_for_a_driver_without_guest_csum_is_completed_in_software() {
    let mem = mem();
    let feats = VIRTIO_F_VERSION_1 | f::MRG_RXBUF;
    let mut rig = Rig::new(&mem, config(), feats);
    rig.push_rx(0, BUF, 1, 2048);
    // An IPv4/UDP frame whose checksum field holds the pseudo-header sum.
    let mut data = frame(14 + 20 + 8 + 32, 11);
    let udp = 34;
    data[udp + 6..udp + 8].copy_from_slice(&0x1234u16.to_be_bytes());
    let host = VnetHdr {
        flags: F_NEEDS_CSUM,
        csum_start: udp as u16,
        csum_offset: 6,
        ..VnetHdr::default()
    };
    rig.host_send(0, &host, &data);
    rig.ready(0, EventSet::IN);
    let (hdr, got) = received(&rig, 0, BUF, 2048);
    assert_eq!(hdr.flags, 0);
    // The field held the pseudo-header sum: with it, the completed segment sums to 0xffff.
    let sum = super::super::header::fold(super::super::header::ones_sum(&got[udp..], 0x1234));
    assert_eq!(sum, 0xffff);
    assert_eq!(&got[..udp], &data[..udp]);
}

#[test]
fn frames_queued_before_activation_are_delivered_after_it() {
    let mem = mem();
    let offloads = Offloads::default();
    let (ep, host) = tap_pair(&offloads);
    let mut net = Net::new(config(), vec![ep]).unwrap();
    // Before activation nothing reads the fd: the runner does not even watch it.
    let mut events = Events::default();
    assert!(net.process_event(0, EventSet::IN, &mut events).is_ok());
    host.send(&[0u8; 60]).unwrap();
    let mut rig = Rig::activate(&mem, net, LINUX, vec![host], offloads);
    rig.push_rx(0, BUF, 1, 2048);
    rig.ready(0, EventSet::IN);
    assert_eq!(rig.vqs[0].used_idx(), 1);
}
