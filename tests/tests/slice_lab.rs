//! The first slice end to end: a TC program attached (TCX) to a lab pod's
//! host-side interface drops a port chosen through a BPF map, real TCP and UDP
//! traffic shows it, and the drop arrives on the ring buffer.
use std::time::Duration;

use agent::dataplane::slice::SliceDropper;
use aya::programs::tc::TcAttachType;
use lab::{Lab, TcpProbe, UdpProbe, PROBE_TIMEOUT, SHORT_TIMEOUT};

/// Loads the program and attaches it to both hooks of `interface` in the node namespace.
fn attach_in_node(lab: &Lab, interface: &str) -> SliceDropper {
    lab.node().run(|| {
        let mut d = SliceDropper::load().expect("load through the verifier (needs root and BPF)");
        d.attach(interface, TcAttachType::Ingress)
            .expect("tcx ingress");
        d.attach(interface, TcAttachType::Egress)
            .expect("tcx egress");
        d
    })
}

fn wait_for_events(d: &mut SliceDropper) -> Vec<agent::dataplane::slice::Drop> {
    for _ in 0..40 {
        let events = d.drain_events();
        if !events.is_empty() {
            return events;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Vec::new()
}

#[test]
fn tcp_port_dropped_with_real_traffic_and_reported() {
    lab::require_root();
    let lab = Lab::new();
    let frontend = lab.add_pod("prod", "frontend");
    let database = lab.add_pod("prod", "database");
    let _db8080 = database.tcp_listen(8080);
    let _db80 = database.tcp_listen(80);

    // Before: both ports reachable.
    assert_eq!(
        frontend.tcp_connect(database.ipv4, 8080, PROBE_TIMEOUT),
        TcpProbe::Connected
    );

    let mut d = attach_in_node(&lab, &database.host_if);
    d.drop_port(6, 8080).unwrap();

    for dst in database.ips() {
        assert_eq!(
            frontend.tcp_connect(dst, 8080, SHORT_TIMEOUT),
            TcpProbe::TimedOut,
            "to {dst}"
        );
        assert_eq!(
            frontend.tcp_connect(dst, 80, PROBE_TIMEOUT),
            TcpProbe::Connected,
            "to {dst}"
        );
    }
    let events = wait_for_events(&mut d);
    let first = events.first().expect("a drop event on the ring buffer");
    assert_eq!(first.src, std::net::IpAddr::from(frontend.ipv4));
    assert_eq!(first.dst, std::net::IpAddr::from(database.ipv4));
    assert_eq!((first.protocol, first.dst_port), (6, 8080));
    assert_eq!(first.ifindex, database.host_ifindex);
    assert!(
        d.dropped().unwrap() >= 2,
        "SYNs over IPv4 and IPv6 were dropped"
    );

    // Detaching (drop) restores the traffic.
    drop(d);
    assert_eq!(
        frontend.tcp_connect(database.ipv4, 8080, PROBE_TIMEOUT),
        TcpProbe::Connected
    );
}

#[test]
fn udp_port_dropped_in_both_directions() {
    lab::require_root();
    let lab = Lab::new();
    let client = lab.add_pod("prod", "client");
    let server = lab.add_pod("prod", "server");
    let _echo = server.udp_echo(5353);
    let _echo_client_side = client.udp_echo(5353);
    assert_eq!(
        client.udp_request(server.ipv6, 5353, PROBE_TIMEOUT),
        UdpProbe::Replied
    );

    // Attached to the CLIENT's interface: its requests leave through TC ingress.
    let mut d = attach_in_node(&lab, &client.host_if);
    d.drop_port(17, 5353).unwrap();
    assert_eq!(
        client.udp_request(server.ipv6, 5353, SHORT_TIMEOUT),
        UdpProbe::TimedOut
    );
    // And requests TO the client arrive through TC egress.
    assert_eq!(
        server.udp_request(client.ipv4, 5353, SHORT_TIMEOUT),
        UdpProbe::TimedOut
    );
    let events = wait_for_events(&mut d);
    assert!(events
        .iter()
        .any(|e| e.dst == std::net::IpAddr::from(server.ipv6)));
}
