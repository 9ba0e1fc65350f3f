//! The first slice program through the verifier and BPF_PROG_TEST_RUN:
//! crafted packets, verdicts, ring-buffer events and counters.
use std::net::IpAddr;

use agent::dataplane::slice::SliceDropper;
use agent_common::counter;
use aya::programs::{TestRun, TestRunOptions};
use lab::packet::{Packet, TCP, UDP};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn run(dropper: &mut SliceDropper, frame: &[u8]) -> u32 {
    let prog = dropper.program().expect("program");
    let result = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN (needs root and BPF)");
    result.return_value
}

#[test]
fn drops_listed_port_and_reports_it() {
    let mut d = SliceDropper::load().expect("load through the verifier (needs root and BPF)");
    d.drop_port(TCP, 8080).unwrap();

    let listed = Packet::tcp(ip("10.65.0.10"), 40000, ip("10.65.0.30"), 8080);
    let other_port = Packet::tcp(ip("10.65.0.10"), 40000, ip("10.65.0.30"), 80);
    let other_proto = Packet::udp(ip("10.65.0.10"), 40000, ip("10.65.0.30"), 8080);
    assert_eq!(run(&mut d, &listed.frame()), TC_ACT_SHOT);
    assert_eq!(run(&mut d, &other_port.frame()), TC_ACT_OK);
    assert_eq!(run(&mut d, &other_proto.frame()), TC_ACT_OK);

    let events = d.drain_events();
    assert_eq!(events.len(), 1, "one drop, one event: {events:?}");
    let e = &events[0];
    assert_eq!((e.src, e.dst), (ip("10.65.0.10"), ip("10.65.0.30")));
    assert_eq!((e.src_port, e.dst_port, e.protocol), (40000, 8080, TCP));
    assert_eq!(d.dropped().unwrap(), 1);
    assert_eq!(d.counter(counter::PACKETS).unwrap(), 3);
}

#[test]
fn ipv6_udp() {
    let mut d = SliceDropper::load().expect("load");
    d.drop_port(UDP, 53).unwrap();
    let p = Packet::udp(ip("fd65::10"), 5353, ip("fd65::30"), 53);
    assert_eq!(run(&mut d, &p.frame()), TC_ACT_SHOT);
    let events = d.drain_events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].src, ip("fd65::10"));
    assert_eq!(events[0].dst_port, 53);
    let p = Packet::udp(ip("fd65::10"), 5353, ip("fd65::30"), 54);
    assert_eq!(run(&mut d, &p.frame()), TC_ACT_OK);
}

#[test]
fn truncated_packet_is_dropped_and_counted() {
    let mut d = SliceDropper::load().expect("load");
    let mut frame = Packet::tcp(ip("10.65.0.10"), 1, ip("10.65.0.30"), 2).frame();
    frame.truncate(14 + 20 + 2); // IPv4 header, half a port
    assert_eq!(run(&mut d, &frame), TC_ACT_SHOT);
    assert_eq!(d.counter(counter::MALFORMED).unwrap(), 1);
    assert!(
        d.drain_events().is_empty(),
        "malformed drops are counted, not reported"
    );
}
