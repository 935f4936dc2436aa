//! The stream endpoint (passt's and QEMU's `-netdev stream` framing) on a socketpair.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use super::super::endpoint::{Endpoint, Received, Sent, Stream};
use super::super::header::VnetHdr;
use super::super::MAX_FRAME;
use super::*;

fn pair() -> (Stream, UnixStream) {
    let (dev, host) = UnixStream::pair().unwrap();
    dev.set_nonblocking(true).unwrap();
    (Stream::new(OwnedFd::from(dev)), host)
}

fn framed(frame: &[u8]) -> Vec<u8> {
    let mut v = (frame.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(frame);
    v
}

fn recv(ep: &mut Stream) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; HDR_LEN + MAX_FRAME];
    match ep.recv(&mut buf).unwrap() {
        Received::Frame { hdr, len } => {
            assert_eq!(hdr, VnetHdr::default());
            Some(buf[HDR_LEN..HDR_LEN + len].to_vec())
        }
        Received::Nothing => None,
        Received::Malformed => panic!("malformed"),
    }
}

#[test]
fn frames_are_reassembled_from_any_split_of_the_stream() {
    let (mut ep, mut host) = pair();
    let frames: Vec<Vec<u8>> = [60, 1514, 65_550, 14, 9000]
        .iter()
        .map(|&n| frame(n, n as u8))
        .collect();
    let bytes: Vec<u8> = frames.iter().flat_map(|f| framed(f)).collect();
    let mut got = Vec::new();
    // Feed it in awkward pieces: 3 bytes, then 7 KiB at a time.
    let mut at = 0;
    for step in std::iter::once(3).chain(std::iter::repeat(7 * 1024)) {
        if at >= bytes.len() {
            break;
        }
        let end = (at + step).min(bytes.len());
        host.write_all(&bytes[at..end]).unwrap();
        at = end;
        while let Some(f) = recv(&mut ep) {
            got.push(f);
        }
    }
    assert_eq!(got, frames);
}

#[test]
fn a_bad_length_or_a_closed_peer_is_an_error() {
    let (mut ep, mut host) = pair();
    host.write_all(&[0, 2, 0, 0]).unwrap(); // 131,072 bytes: more than the largest frame
    host.write_all(&[0; 64]).unwrap();
    let mut buf = vec![0u8; HDR_LEN + MAX_FRAME];
    assert!(ep.recv(&mut buf).is_err());

    let (mut ep, host) = pair();
    drop(host);
    assert!(ep.recv(&mut buf).is_err());

    let (mut ep, mut host) = pair();
    host.write_all(&framed(&[0; 10])).unwrap(); // shorter than an Ethernet header
    assert!(ep.recv(&mut buf).is_err());
}

#[test]
fn a_partial_write_is_finished_from_the_backlog() {
    let (mut ep, mut host) = pair();
    let big = frame(60_000, 1);
    let mut buf = vec![0u8; HDR_LEN + MAX_FRAME];
    let mut sent = 0;
    // Send until the socket pushes back.
    loop {
        buf[HDR_LEN..HDR_LEN + big.len()].copy_from_slice(&big);
        match ep.send(&VnetHdr::default(), &mut buf, big.len()).unwrap() {
            Sent::Done => sent += 1,
            Sent::Blocked => break,
            Sent::Refused(e) => panic!("{e}"),
        }
        assert!(sent < 1000, "the socket never filled up");
    }
    host.set_nonblocking(true).unwrap();
    let mut received = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    let mut drain = |received: &mut Vec<u8>| {
        while let Ok(n) = host.read(&mut chunk) {
            received.extend_from_slice(&chunk[..n]);
        }
    };
    loop {
        drain(&mut received);
        if ep.flush().unwrap() {
            drain(&mut received);
            break;
        }
    }
    assert!(!ep.backlog());
    let want: Vec<u8> = (0..sent).flat_map(|_| framed(&big)).collect();
    assert_eq!(received.len(), want.len());
    assert!(received == want);
}

#[test]
fn a_net_device_on_a_stream_carries_frames_both_ways_without_offloads() {
    let mem = mem();
    let (dev, mut host) = UnixStream::pair().unwrap();
    dev.set_nonblocking(true).unwrap();
    let net = Net::new(config(), vec![Box::new(Stream::new(OwnedFd::from(dev)))]).unwrap();
    let feats = VIRTIO_F_VERSION_1 | f::MRG_RXBUF | f::MAC;
    let mut rig = Rig::activate(&mem, net, feats, Vec::new(), Offloads::default());
    let out = frame(1514, 2);
    rig.push_tx(0, BUF, &VnetHdr::default(), &out, 2);
    rig.kick(1);
    let mut got = vec![0u8; 4 + 1514];
    host.read_exact(&mut got).unwrap();
    assert_eq!(got, framed(&out));

    rig.push_rx(0, BUF + 0x1_0000, 2, 2048);
    let inbound = frame(3000, 3);
    host.write_all(&framed(&inbound)).unwrap();
    rig.ready(0, EventSet::IN);
    assert_eq!(rig.vqs[0].used_idx(), 2);
    let hdr = rig.read(BUF + 0x1_0000, HDR_LEN);
    assert_eq!(
        hdr,
        VnetHdr {
            num_buffers: 2,
            ..VnetHdr::default()
        }
        .to_bytes()
    );

    // The peer goes away: the device fails (and the loop will report it).
    drop(host);
    let err = rig
        .net
        .process_event(0, EventSet::IN | EventSet::HANG_UP, &mut rig.events);
    assert!(err.is_err());
    // A broken device ignores everything until reset.
    assert!(rig.net.process_queue(1, &mut rig.events).is_ok());
}
