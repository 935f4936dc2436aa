//! Rate limits: a throttled direction holds its frame, stops reading its fd (receive) and
//! waits for the timerfd, which the event loop reports like any other fd.

use std::thread::sleep;
use std::time::Duration;

use super::super::config::{DirectionLimits, RateSpec};
use super::super::header::VnetHdr;
use super::super::io::{RX_TIMER, TX_TIMER};
use super::*;

#[test]
fn transmit_beyond_the_packet_rate_waits_for_the_timer() {
    let mem = mem();
    let mut c = config();
    c.tx = DirectionLimits {
        bytes: None,
        packets: Some(RateSpec {
            rate: 1000,
            burst: 2,
        }),
    };
    let mut rig = Rig::new(&mem, c, LINUX);
    assert_eq!(rig.events.interest(TX_TIMER), Some(EventSet::IN));
    for i in 0..4u64 {
        rig.push_tx(
            0,
            BUF + 0x1_0000 * i,
            &VnetHdr::default(),
            &frame(100, i as u8),
            1,
        );
    }
    rig.kick(1);
    let mut sent = 0;
    while rig.host_recv(0).is_some() {
        sent += 1;
    }
    assert_eq!(sent, 2);
    // A stale wake-up (the timer has not fired) changes nothing.
    rig.ready(TX_TIMER, EventSet::IN);
    assert!(rig.host_recv(0).is_none());
    sleep(Duration::from_millis(5));
    rig.ready(TX_TIMER, EventSet::IN);
    while rig.host_recv(0).is_some() {
        sent += 1;
    }
    assert_eq!(sent, 4);
    assert_eq!(rig.stats(1), (4, 400, 0, 0));
}

#[test]
fn receive_beyond_the_byte_rate_stops_reading_until_the_timer() {
    let mem = mem();
    let mut c = config();
    c.rx = DirectionLimits {
        bytes: Some(RateSpec {
            rate: 100_000,
            burst: 1000,
        }),
        packets: None,
    };
    let mut rig = Rig::new(&mem, c, LINUX);
    rig.push_rx(0, BUF, 8, 2048);
    for i in 0..3 {
        rig.host_send(0, &VnetHdr::default(), &frame(1000, i));
    }
    rig.ready(0, EventSet::IN);
    assert_eq!(rig.vqs[0].used_idx(), 1);
    // Throttled: the endpoint is not read until the timer fires (10 ms at 100 kB/s).
    assert_eq!(rig.events.interest(0), Some(EventSet::empty()));
    sleep(Duration::from_millis(15));
    rig.ready(RX_TIMER, EventSet::IN);
    assert_eq!(rig.vqs[0].used_idx(), 2);
    sleep(Duration::from_millis(15));
    rig.ready(RX_TIMER, EventSet::IN);
    assert_eq!(rig.vqs[0].used_idx(), 3);
    assert_eq!(rig.events.interest(0), Some(EventSet::IN));
    assert_eq!(rig.stats(0), (3, 3000, 0, 0));
}
