//! Header validation and checksums.

use super::super::header::*;
use super::super::{HDR_LEN, MAX_FRAME};

const ALL: TxLimits = TxLimits {
    csum: true,
    tso4: true,
    tso6: true,
    ecn: true,
    max_plain: 1518,
};

#[test]
fn the_header_round_trips() {
    let h = VnetHdr {
        flags: 1,
        gso_type: 0x81,
        hdr_len: 0x1234,
        gso_size: 0x5678,
        csum_start: 0x9abc,
        csum_offset: 0xdef0,
        num_buffers: 0x1122,
    };
    let b = h.to_bytes();
    assert_eq!(b.len(), HDR_LEN);
    assert_eq!(b[2..4], [0x34, 0x12]);
    assert_eq!(VnetHdr::from_bytes(&b), h);
}

#[test]
fn validation_accepts_exactly_the_consistent_requests() {
    let csum = VnetHdr {
        flags: F_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 16,
        ..VnetHdr::default()
    };
    let ok = TxHeader::validate(&csum, 100, &ALL).unwrap();
    assert_eq!(
        ok.csum,
        Some(Csum {
            start: 34,
            offset: 16
        })
    );
    assert_eq!(ok.to_vnet(), csum);
    // The checksum's last byte exactly at the end is fine; one further is not.
    let edge = VnetHdr {
        csum_start: 82,
        ..csum
    };
    assert!(TxHeader::validate(&edge, 100, &ALL).is_ok());
    let over = VnetHdr {
        csum_start: 83,
        ..csum
    };
    assert!(TxHeader::validate(&over, 100, &ALL).is_err());
    // Lengths.
    assert!(TxHeader::validate(&VnetHdr::default(), 13, &ALL).is_err());
    assert!(TxHeader::validate(&VnetHdr::default(), 1518, &ALL).is_ok());
    assert!(TxHeader::validate(&VnetHdr::default(), 1519, &ALL).is_err());
    let tso = VnetHdr {
        gso_type: GSO_TCPV6 | GSO_ECN,
        gso_size: 1400,
        hdr_len: 74,
        ..csum
    };
    let ok = TxHeader::validate(&tso, MAX_FRAME, &ALL).unwrap();
    assert_eq!(
        ok.gso,
        Some(Gso {
            kind: GsoKind::Tcp6,
            ecn: true,
            size: 1400,
            hdr_len: 74
        })
    );
    assert_eq!(ok.to_vnet(), tso);
    assert!(TxHeader::validate(&tso, MAX_FRAME + 1, &ALL).is_err());
    let no_ecn = TxLimits { ecn: false, ..ALL };
    assert_eq!(
        TxHeader::validate(&tso, 3000, &no_ecn),
        Err(HeaderError::GsoType(GSO_TCPV6 | GSO_ECN))
    );
    // ECN alone is not a GSO type.
    let ecn_only = VnetHdr {
        gso_type: GSO_ECN,
        ..csum
    };
    assert!(TxHeader::validate(&ecn_only, 100, &ALL).is_err());
}

#[test]
fn receive_verdicts() {
    let all = RxAccept {
        csum: true,
        tso4: true,
        tso6: true,
        ecn: true,
    };
    let tso = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        gso_size: 1448,
        hdr_len: 66,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 9,
    };
    assert_eq!(
        rx_verdict(&tso, 60_000, &all),
        RxVerdict::Deliver(VnetHdr {
            num_buffers: 0,
            ..tso
        })
    );
    assert_eq!(
        rx_verdict(&tso, 60_000, &RxAccept { tso4: false, ..all }),
        RxVerdict::Drop
    );
    assert_eq!(
        rx_verdict(&tso, 60_000, &RxAccept { csum: false, ..all }),
        RxVerdict::Drop
    );
    assert_eq!(
        rx_verdict(&VnetHdr { gso_size: 0, ..tso }, 60_000, &all),
        RxVerdict::Drop
    );
    assert_eq!(
        rx_verdict(
            &VnetHdr {
                csum_start: 59_990,
                ..tso
            },
            60_000,
            &all
        ),
        RxVerdict::Drop
    );
    let partial = VnetHdr {
        flags: F_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 6,
        ..VnetHdr::default()
    };
    assert_eq!(
        rx_verdict(&partial, 100, &RxAccept::default()),
        RxVerdict::CompleteCsum(Csum {
            start: 34,
            offset: 6
        })
    );
    let valid = VnetHdr {
        flags: F_DATA_VALID,
        ..VnetHdr::default()
    };
    assert_eq!(
        rx_verdict(&valid, 100, &RxAccept::default()),
        RxVerdict::Deliver(VnetHdr::default())
    );
    assert_eq!(rx_verdict(&valid, 100, &all), RxVerdict::Deliver(valid));
    assert_eq!(rx_verdict(&VnetHdr::default(), 10, &all), RxVerdict::Drop);
}

#[test]
fn checksums_are_internet_checksums() {
    // RFC 1071's example: 0x0001 0xf203 0xf4f5 0xf6f7 sums to 0xddf2.
    assert_eq!(
        fold(ones_sum(
            &[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7],
            0
        )),
        0xddf2
    );
    // Odd lengths pad with a zero byte.
    assert_eq!(fold(ones_sum(&[0xab], 0)), 0xab00);
    let mut frame = vec![0x11u8; 40];
    frame[20..22].copy_from_slice(&[0, 0]);
    assert!(complete_csum(
        &mut frame,
        Csum {
            start: 10,
            offset: 10
        }
    ));
    assert_eq!(fold(ones_sum(&frame[10..], 0)), 0xffff);
    assert!(!complete_csum(
        &mut frame,
        Csum {
            start: 30,
            offset: 9
        }
    ));
}
