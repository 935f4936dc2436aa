//! Transmit: what the driver puts on a transmit queue reaches the host as a private copy with
//! a canonical header, or is refused and counted while the device goes on.

use vm_memory::{Bytes, GuestAddress};

use super::super::header::{VnetHdr, F_NEEDS_CSUM, GSO_ECN, GSO_TCPV4, GSO_UDP};
use super::*;

#[test]
fn a_frame_split_over_descriptors_reaches_the_tap_whole() {
    let mem = mem();
    let mut rig = Rig::new(&mem, config(), LINUX);
    let data = frame(1514, 1);
    let head = rig.push_tx(0, BUF, &VnetHdr::default(), &data, 3);
    rig.kick(1);
    let (hdr, got) = rig.host_recv(0).expect("a frame");
    assert_eq!(hdr, VnetHdr::default());
    assert_eq!(got, data);
    assert_eq!(rig.vqs[1].used_len_of(head), Some(0));
    assert_eq!(rig.stats(1), (1, 1514, 0, 0));
    assert!(rig.irq.used.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    assert!(rig.host_recv(0).is_none());
}

/// A tap copies frames up to `COPY_UP_TO` bytes and writes larger ones from guest memory: on
/// both sides of the boundary the frame arrives whole and in order.
#[test]
fn frames_on_both_sides_of_the_copy_boundary_reach_the_tap_whole() {
    use crate::net::endpoint::COPY_UP_TO;
    let mem = mem();
    let mut rig = Rig::new(&mem, config(), LINUX);
    // Frames above the MTU: TSO frames, as a guest sends them.
    let tso = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    };
    let small = frame(COPY_UP_TO, 4);
    let large = frame(COPY_UP_TO + 1, 5);
    rig.push_tx(0, BUF, &tso, &small, 3);
    rig.push_tx(0, BUF + 0x2_0000, &tso, &large, 3);
    rig.kick(1);
    assert_eq!(rig.host_recv(0).map(|(_, f)| f), Some(small));
    assert_eq!(rig.host_recv(0).map(|(_, f)| f), Some(large));
    assert_eq!(rig.stats(1), (2, (2 * COPY_UP_TO + 1) as u64, 0, 0));
}

#[test]
fn partial_checksum_and_tso_pass_with_the_features_and_only_the_validated_fields() {
    let mem = mem();
    let mut rig = Rig::new(&mem, config(), LINUX);
    let data = frame(60_000, 2);
    let hdr = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
        // Linux's driver leaves this uninitialised without MRG_RXBUF: ignored, never passed on.
        num_buffers: 0x5a5a,
    };
    rig.push_tx(0, BUF, &hdr, &data, 15);
    // A plain frame whose header has stray GSO and checksum fields: they are dropped.
    let stray = VnetHdr {
        gso_size: 77,
        csum_start: 5,
        hdr_len: 9,
        ..VnetHdr::default()
    };
    rig.push_tx(0, BUF + 0x2_0000, &stray, &frame(100, 3), 1);
    rig.kick(1);
    let (got_hdr, got) = rig.host_recv(0).unwrap();
    assert_eq!(
        got_hdr,
        VnetHdr {
            num_buffers: 0,
            ..hdr
        }
    );
    assert_eq!(got, data);
    let (got_hdr, _) = rig.host_recv(0).unwrap();
    assert_eq!(got_hdr, VnetHdr::default());
    assert_eq!(rig.stats(1), (2, 60_100, 0, 0));
}

#[test]
fn refused_frames_are_used_counted_and_the_next_one_goes() {
    let mem = mem();
    // No CSUM, no TSO, no ECN: the driver took only the basics.
    let basic = VIRTIO_F_VERSION_1 | f::MTU | f::MRG_RXBUF;
    let mut rig = Rig::new(&mem, config(), basic);
    let csum = VnetHdr {
        flags: F_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 6,
        ..VnetHdr::default()
    };
    let tso = VnetHdr {
        gso_type: GSO_TCPV4,
        gso_size: 1000,
        flags: F_NEEDS_CSUM,
        ..VnetHdr::default()
    };
    let bad: Vec<(VnetHdr, usize)> = vec![
        (csum, 100), // CSUM not negotiated
        (tso, 3000), // TSO not negotiated
        (
            VnetHdr {
                flags: 2,
                ..VnetHdr::default()
            },
            100,
        ), // DATA_VALID on transmit
        (
            VnetHdr {
                gso_type: GSO_UDP,
                ..VnetHdr::default()
            },
            100,
        ), // UFO never offered
        (VnetHdr::default(), 1500 + 18 + 1), // above the MTU
        (VnetHdr::default(), 13), // shorter than Ethernet
    ];
    let mut heads = Vec::new();
    for (i, (hdr, len)) in bad.iter().enumerate() {
        heads.push(rig.push_tx(0, BUF + 0x1_0000 * i as u64, hdr, &frame(*len, 4), 1));
    }
    let good = frame(1518, 5);
    let last = rig.push_tx(0, BUF + 0x10_0000, &VnetHdr::default(), &good, 2);
    rig.kick(1);
    assert_eq!(rig.host_recv(0).unwrap().1, good);
    assert!(rig.host_recv(0).is_none());
    for head in heads.iter().chain([&last]) {
        assert_eq!(rig.vqs[1].used_len_of(*head), Some(0));
    }
    assert_eq!(rig.stats(1), (1, 1518, bad.len() as u64, 0));
}

#[test]
fn checksum_outside_the_frame_and_inconsistent_gso_are_refused() {
    let mem = mem();
    let with_ecn = LINUX; // HOST_ECN not negotiated
    let mut rig = Rig::new(&mem, config(), with_ecn);
    let cases = [
        VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 90,
            csum_offset: 9, // 90 + 9 + 2 > 100
            ..VnetHdr::default()
        },
        VnetHdr {
            gso_type: GSO_TCPV4, // GSO without NEEDS_CSUM
            gso_size: 1000,
            ..VnetHdr::default()
        },
        VnetHdr {
            gso_type: GSO_TCPV4,
            gso_size: 0, // no segment size
            flags: F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 16,
            ..VnetHdr::default()
        },
        VnetHdr {
            gso_type: GSO_TCPV4 | GSO_ECN, // ECN not negotiated
            gso_size: 1000,
            flags: F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 16,
            ..VnetHdr::default()
        },
        VnetHdr {
            gso_type: GSO_TCPV4,
            gso_size: 1000,
            hdr_len: 4000, // beyond the frame
            flags: F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 16,
            ..VnetHdr::default()
        },
    ];
    for (i, hdr) in cases.iter().enumerate() {
        let len = if hdr.gso_type == 0 { 100 } else { 3000 };
        rig.push_tx(0, BUF + 0x1_0000 * i as u64, hdr, &frame(len, 6), 1);
    }
    rig.kick(1);
    assert!(rig.host_recv(0).is_none());
    assert_eq!(rig.stats(1), (0, 0, cases.len() as u64, 0));
}

#[test]
fn broken_chains_are_returned_and_counted() {
    let mem = mem();
    let mut rig = Rig::new(&mem, config(), LINUX);
    let data = frame(200, 7);
    mem.write_slice(&VnetHdr::default().to_bytes(), GuestAddress(BUF))
        .unwrap();
    mem.write_slice(&data, GuestAddress(BUF + 0x100)).unwrap();
    // A device-writable buffer in a transmit chain.
    let a = rig.vqs[1].push(&[(BUF, 12, 0), (BUF + 0x100, 200, F_WRITE)]);
    // A buffer outside guest memory.
    let b = rig.vqs[1].push(&[(BUF, 12, 0), (0xffff_0000, 200, 0)]);
    // Only a header.
    let c = rig.vqs[1].push(&[(BUF, 12, 0)]);
    // More than the largest frame.
    let d = rig.vqs[1].push(&[(BUF, 12, 0), (BUF + 0x100, 70_000, 0)]);
    let ok = rig.vqs[1].push(&[(BUF, 12, 0), (BUF + 0x100, 200, 0)]);
    rig.kick(1);
    assert_eq!(rig.host_recv(0).unwrap().1, data);
    for head in [a, b, c, d, ok] {
        assert_eq!(rig.vqs[1].used_len_of(head), Some(0));
    }
    assert_eq!(rig.stats(1), (1, 200, 4, 0));
}

#[test]
fn a_header_laid_over_its_own_descriptor_is_refused() {
    let mem = mem();
    let mut rig = Rig::new(&mem, config(), LINUX);
    // Descriptor 0 of the transmit queue lives in the queue's table; point the header at it.
    let table = rig.vqs[1].mock.desc_table_addr().0;
    let head = rig.vqs[1].push(&[(table, 12, 0), (BUF, 100, 0)]);
    rig.kick(1);
    assert!(rig.host_recv(0).is_none());
    assert_eq!(rig.vqs[1].used_len_of(head), Some(0));
    assert_eq!(rig.stats(1).2, 1);
}

#[test]
fn a_blocked_tap_keeps_the_frame_watches_for_out_and_resumes() {
    let mem = mem();
    // Without MTU, plain frames may be as large as any frame.
    let mut rig = Rig::new(&mem, config(), LINUX & !f::MTU);
    // Fill the datagram socket (its send buffer) until the device's writes would block.
    let big = frame(60_000, 8);
    let mut pushed = 0;
    for round in 0..4 {
        for i in 0..8u64 {
            rig.push_tx(0, BUF + 0x1_0000 * i, &VnetHdr::default(), &big, 1);
            pushed += 1;
        }
        rig.kick(1);
        if rig
            .events
            .interest(0)
            .is_some_and(|i| i.contains(EventSet::OUT))
        {
            break;
        }
        assert!(round < 3, "the host end never filled up");
        for vq in rig.vqs.iter_mut() {
            vq.rewind();
        }
    }
    assert!(rig.events.interest(0).unwrap().contains(EventSet::OUT));
    // Drain the host side, then report the fd writable: everything arrives, in order.
    let mut got = 0;
    loop {
        while rig.host_recv(0).is_some() {
            got += 1;
        }
        if !rig.events.interest(0).unwrap().contains(EventSet::OUT) {
            break;
        }
        rig.ready(0, EventSet::OUT);
    }
    while rig.host_recv(0).is_some() {
        got += 1;
    }
    assert_eq!(got, pushed);
    assert_eq!(rig.stats(1), (pushed, pushed * 60_000, 0, 0));
}
