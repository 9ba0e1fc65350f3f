//! The policy dataplane (`from_endpoint` / `to_endpoint`) through the verifier and
//! BPF_PROG_TEST_RUN with hand-filled tables: the table lookups. Verdicts, port
//! prefixes, ICMP, peer classes, wildcard class, fail-closed misses, ICMPv6
//! neighbour discovery, interfaces without an endpoint, TCX attachment,
//! source-port classes (from a compiled policy), a network set of 100k nets.
//! Parsing, conntrack and events: `bpf_parsing`, `bpf_conntrack`, `bpf_events`.
//!
//! BPF_PROG_TEST_RUN runs TC programs on an skb of the loopback device, so the
//! endpoint under test is registered as ifindex 1.
use std::net::IpAddr;

use agent::dataplane::{
    port_range_prefixes, Dataplane, Hook, PeerMatch, PortMatch, Table, TableSet,
};
use agent::model::ir::Direction;
use agent_common::{endpoint_flags, stat, EndpointInfo, Verdict};
use lab::packet::{Packet, ACK, ICMPV6, SYN, TCP, UDP};

#[path = "common/bpf.rs"]
mod bpf;
use bpf::{
    allow, base_tables, count, entry, ip, load, run, VethPair, EP, LOOPBACK, TC_ACT_OK, TC_ACT_SHOT,
};

#[test]
fn verifier_accepts_both_programs() {
    let mut dp = Dataplane::load().expect("load through the verifier (needs root)");
    for hook in Hook::ALL {
        assert!(dp.program(hook).unwrap().fd().is_ok(), "{hook:?} loaded");
    }
}

#[test]
fn port_ranges_peer_classes_and_icmp() {
    let mut dp = load(0);
    dp.install(&base_tables()).unwrap();
    let me = ip("10.65.0.10");
    let case = |dp: &mut Dataplane, p: Packet, want: u32, what: &str| {
        assert_eq!(run(dp, Hook::FromEndpoint, &p), want, "{what}: {p:?}");
    };
    // The range 8000..=8099 is stored as prefixes: both edges in, both neighbours out.
    assert!(port_range_prefixes(8000, 8099).len() > 1);
    for (port, want) in [
        (7999, TC_ACT_SHOT),
        (8000, TC_ACT_OK),
        (8050, TC_ACT_OK),
        (8099, TC_ACT_OK),
        (8100, TC_ACT_SHOT),
    ] {
        case(
            &mut dp,
            Packet::tcp(me, 40000 + port, ip("10.65.1.5"), port),
            want,
            "range edge",
        );
    }
    // Longest prefix: 10.65.1.200 is class 3, which has only 443.
    case(
        &mut dp,
        Packet::tcp(me, 41000, ip("10.65.1.200"), 8000),
        TC_ACT_SHOT,
        "class 3 not 2",
    );
    case(
        &mut dp,
        Packet::tcp(me, 41001, ip("10.65.1.200"), 443),
        TC_ACT_OK,
        "class 3 443",
    );
    // Wildcard class: UDP 53 to the world (class 0) and to class 2.
    case(
        &mut dp,
        Packet::udp(me, 5000, ip("8.8.8.8"), 53),
        TC_ACT_OK,
        "udp 53 world",
    );
    case(
        &mut dp,
        Packet::udp(me, 5001, ip("10.65.1.5"), 53),
        TC_ACT_OK,
        "udp 53 class 2",
    );
    case(
        &mut dp,
        Packet::udp(me, 5002, ip("8.8.8.8"), 54),
        TC_ACT_SHOT,
        "udp 54",
    );
    // ICMP type-only and type/code rules.
    case(
        &mut dp,
        Packet::icmp(me, ip("8.8.8.8"), 8, 0),
        TC_ACT_OK,
        "echo",
    );
    case(
        &mut dp,
        Packet::icmp(me, ip("8.8.8.8"), 8, 5),
        TC_ACT_OK,
        "type 8 any code",
    );
    case(
        &mut dp,
        Packet::icmp(me, ip("8.8.8.8"), 3, 4),
        TC_ACT_OK,
        "3/4",
    );
    case(
        &mut dp,
        Packet::icmp(me, ip("8.8.8.8"), 3, 3),
        TC_ACT_SHOT,
        "3/3",
    );
    case(
        &mut dp,
        Packet::icmp(me, ip("8.8.8.8"), 13, 0),
        TC_ACT_SHOT,
        "timestamp",
    );
    // IPv6 peers and ICMPv6.
    let me6 = ip("fd65::10");
    case(
        &mut dp,
        Packet::tcp(me6, 40000, ip("fd66::5"), 8080),
        TC_ACT_OK,
        "v6 class 2",
    );
    case(
        &mut dp,
        Packet::tcp(me6, 40001, ip("fd67::5"), 8080),
        TC_ACT_SHOT,
        "v6 world",
    );
    case(
        &mut dp,
        Packet::icmp(me6, ip("fd67::5"), 128, 0),
        TC_ACT_OK,
        "icmpv6 echo",
    );
    let mut other_code = Packet::icmp(me6, ip("fd67::5"), 128, 1);
    other_code.icmp_id = 2; // not the echo flow just allowed
    case(&mut dp, other_code, TC_ACT_SHOT, "icmpv6 128/1");
    // Neighbour discovery always passes.
    case(
        &mut dp,
        Packet::icmp(me6, ip("ff02::1"), 135, 0),
        TC_ACT_OK,
        "neighbour solicitation",
    );

    // Ingress: all protocols from class 1 (IPv4 and IPv6), TCP 22 from anyone.
    let to = |dp: &mut Dataplane, p: Packet| run(dp, Hook::ToEndpoint, &p);
    assert_eq!(
        to(&mut dp, Packet::udp(ip("10.65.0.20"), 1, me, 9999)),
        TC_ACT_OK
    );
    assert_eq!(
        to(&mut dp, Packet::icmp(ip("10.65.0.20"), me, 13, 0)),
        TC_ACT_OK
    );
    assert_eq!(
        to(&mut dp, Packet::tcp(ip("fd65::20"), 1, me6, 9999)),
        TC_ACT_OK
    );
    assert_eq!(
        to(&mut dp, Packet::tcp(ip("1.2.3.4"), 1, me, 22)),
        TC_ACT_OK
    );
    assert_eq!(
        to(&mut dp, Packet::tcp(ip("1.2.3.4"), 2, me, 23)),
        TC_ACT_SHOT
    );
    assert_eq!(
        to(&mut dp, Packet::tcp(ip("fd66::1"), 2, me6, 23)),
        TC_ACT_SHOT
    );
}

#[test]
fn icmpv6_nd_and_mld_pass_like_calico_the_rest_is_policy() {
    let mut dp = load(0);
    let mut t = base_tables();
    // Let the pod send MLDv2 reports: for 143 the policy decides.
    t.rules.push(entry(
        Direction::Egress,
        Table::Enforced,
        PeerMatch::Any,
        Some(ICMPV6),
        PortMatch::Icmp {
            icmp_type: 143,
            code: None,
        },
        allow(15, 0),
    ));
    dp.install(&t.clone().with_identity_groups()).unwrap();
    // Link-local peers (class 0): no table entry covers ICMPv6 with them.
    let (me, gw) = (ip("fe80::10"), ip("fe80::ecee:eeff:feee:eeee"));
    for icmp_type in [130, 131, 132, 133, 135, 136] {
        for ext in [vec![], vec![0]] {
            let out = Packet::icmp(me, ip("ff02::16"), icmp_type, 0).with_ipv6_ext(&ext);
            assert_eq!(
                run(&mut dp, Hook::FromEndpoint, &out),
                TC_ACT_OK,
                "{icmp_type} out"
            );
            let inbound = Packet::icmp(gw, me, icmp_type, 0).with_ipv6_ext(&ext);
            assert_eq!(
                run(&mut dp, Hook::ToEndpoint, &inbound),
                TC_ACT_OK,
                "{icmp_type} in"
            );
        }
    }
    assert_eq!(count(&dp, stat::NEW_FLOWS), 0, "passed before policy");
    for icmp_type in [134, 137, 143] {
        let out = Packet::icmp(me, ip("ff02::1"), icmp_type, 0);
        let want = if icmp_type == 143 {
            TC_ACT_OK
        } else {
            TC_ACT_SHOT
        };
        assert_eq!(
            run(&mut dp, Hook::FromEndpoint, &out),
            want,
            "{icmp_type} out"
        );
        let inbound = Packet::icmp(gw, me, icmp_type, 0);
        assert_eq!(
            run(&mut dp, Hook::ToEndpoint, &inbound),
            TC_ACT_SHOT,
            "{icmp_type} in"
        );
    }
    assert_eq!(count(&dp, stat::NEW_FLOWS), 6, "judged by policy");
    // ICMP (v4) types with the same numbers are ordinary ICMP.
    let v4 = Packet::icmp(ip("10.65.0.10"), ip("8.8.8.8"), 135, 0);
    assert_eq!(run(&mut dp, Hook::FromEndpoint, &v4), TC_ACT_SHOT);
}

#[test]
fn missing_entry_denies_and_counts() {
    let mut dp = load(0);
    dp.install(&base_tables()).unwrap();
    let before = count(&dp, stat::NO_TABLE_ENTRY);
    let p = Packet::tcp(ip("10.65.0.10"), 1234, ip("8.8.8.8"), 80);
    assert_eq!(run(&mut dp, Hook::FromEndpoint, &p), TC_ACT_SHOT);
    assert_eq!(count(&dp, stat::NO_TABLE_ENTRY), before + 1);
    let events = dp.drain_events();
    assert_eq!(events.len(), 1, "denied new flows are reported: {events:?}");
    assert_eq!(events[0].enforced, Verdict::NO_ENTRY);
    assert_eq!(events[0].pending, None);
    // Empty tables (nothing installed yet) fail closed too.
    let mut empty = load(0);
    assert_eq!(run(&mut empty, Hook::ToEndpoint, &p), TC_ACT_SHOT);
}

#[test]
fn interface_without_endpoint_is_not_policed() {
    let mut dp = Dataplane::load().unwrap();
    dp.install(&TableSet::default()).unwrap();
    let p = Packet::tcp(ip("10.65.0.10"), 1234, ip("8.8.8.8"), 80);
    assert_eq!(run(&mut dp, Hook::FromEndpoint, &p), TC_ACT_OK);
    assert_eq!(count(&dp, stat::NOT_ENDPOINT), 1);
    // Registered, then removed again.
    dp.set_endpoint(LOOPBACK, EndpointInfo { id: EP, flags: 0 })
        .unwrap();
    assert_eq!(run(&mut dp, Hook::FromEndpoint, &p), TC_ACT_SHOT);
    dp.remove_endpoint(LOOPBACK).unwrap();
    assert_eq!(run(&mut dp, Hook::FromEndpoint, &p), TC_ACT_OK);
}

#[test]
fn attaches_to_an_interface_with_tcx() {
    let veth = VethPair::new();
    let mut dp = Dataplane::load().unwrap();
    veth.run(|| dp.attach(&veth.name))
        .expect("TCX attach of both programs");
    assert!(matches!(
        veth.run(|| dp.attach("no-such-if0")),
        Err(agent::dataplane::DataplaneError::Program { .. })
            | Err(agent::dataplane::DataplaneError::NoInterface(_))
    ));
}

/// A datastore with one policed pod (10.65.0.10, fd65::10) whose ingress takes
/// UDP only from source port `dns_port` and TCP to 5432 only from source ports
/// 1000-2000, and whose egress allows TCP only from unprivileged source ports.
fn source_port_model(dns_port: u16) -> agent::model::ir::Model {
    let yaml = format!(
        "apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {{name: db, namespace: prod, labels: {{app: db}}}}
spec: {{interfaceName: calidb, ipNetworks: [10.65.0.10/32, fd65::10/128]}}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {{name: by-source-port}}
spec:
  order: 10
  selector: app == 'db'
  types: [Ingress, Egress]
  ingress:
    - {{action: Allow, protocol: UDP, source: {{ports: [{dns_port}]}}}}
    - {{action: Allow, protocol: TCP, source: {{ports: ['1000:2000']}}, destination: {{ports: [5432]}}}}
  egress:
    - {{action: Allow, protocol: TCP, source: {{notPorts: ['1:1023']}}}}
"
    );
    let loaded =
        agent::model::load::load_sources(&[(std::path::PathBuf::from("sport.yaml"), yaml)]);
    assert!(
        loaded
            .diagnostics
            .iter()
            .all(|d| d.severity != agent::model::Severity::Error),
        "{:?}",
        loaded.diagnostics
    );
    loaded.model
}

#[test]
fn source_port_rules_from_a_compiled_policy() {
    use agent::compile::compile;
    let c = compile(&source_port_model(53)).unwrap();
    let db = &c.endpoints[0];
    assert!(db.source_ports);
    // HAS_STAGED on top (no pending entries): every new flow is reported, so
    // allows name their deciding rule too.
    let mut info = db.info();
    info.flags |= endpoint_flags::HAS_STAGED;
    let mut dp = Dataplane::load().expect("both programs through the verifier (needs root)");
    dp.set_endpoint(LOOPBACK, info).unwrap();
    dp.install(&c.tables).unwrap();
    let (me4, me6) = (ip("10.65.0.10"), ip("fd65::10"));
    let judge = |dp: &mut Dataplane, hook, p: &Packet| {
        let rc = run(dp, hook, p);
        let events = dp.drain_events();
        assert_eq!(events.len(), 1, "{p:?}: {events:?}");
        (rc, c.describe(&events[0].enforced), events[0].src_port)
    };
    let allowed = |rule: i32| {
        (
            TC_ACT_OK,
            format!("default|gnp:by-source-port|allow|{rule}"),
        )
    };
    let denied = || {
        (
            TC_ACT_SHOT,
            "default|gnp:by-source-port|deny|-1".to_string(),
        )
    };
    for (peer, me) in [(ip("8.8.8.8"), me4), (ip("2001:db8::53"), me6)] {
        for (protocol, sport, dport, want) in [
            (UDP, 53, 33000, allowed(0)),
            (UDP, 52, 33000, denied()),
            (UDP, 54, 53, denied()),
            (TCP, 53, 5432, denied()),
            (TCP, 999, 5432, denied()),
            (TCP, 1000, 5432, allowed(1)),
            (TCP, 1777, 5432, allowed(1)),
            (TCP, 2000, 5432, allowed(1)),
            (TCP, 2001, 5432, denied()),
            (TCP, 1000, 5433, denied()),
        ] {
            let mut p = Packet::tcp(peer, sport, me, dport);
            p.protocol = protocol;
            if protocol == UDP {
                p.tcp_flags = 0;
            }
            let (rc, by, src_port) = judge(&mut dp, Hook::ToEndpoint, &p);
            assert_eq!((rc, by), want, "ingress {p:?}");
            assert_eq!(src_port, sport);
        }
        // Egress: the pod's own source port.
        for (sport, want) in [(40000, allowed(0)), (1023, denied()), (1024, allowed(0))] {
            let p = Packet::tcp(me, sport, peer, 443);
            let (rc, by, _) = judge(&mut dp, Hook::FromEndpoint, &p);
            assert_eq!((rc, by), want, "egress {p:?}");
        }
    }

    // Stale conntrack entries are re-judged with the initiator's source port,
    // whichever way the next packet goes.
    let query_answer = Packet::udp(ip("9.9.9.9"), 53, me4, 33001);
    let (rc, ..) = judge(&mut dp, Hook::ToEndpoint, &query_answer);
    assert_eq!(rc, TC_ACT_OK);
    let back = query_answer.reply(); // from port 33001: no rule allows that
    assert_eq!(
        run(&mut dp, Hook::FromEndpoint, &back),
        TC_ACT_OK,
        "tracked"
    );
    let outbound = Packet::tcp(me4, 40001, ip("1.1.1.1"), 443);
    assert_eq!(judge(&mut dp, Hook::FromEndpoint, &outbound).0, TC_ACT_OK);
    let answer = outbound.reply().flags(SYN | ACK); // from 443: privileged
    assert_eq!(
        run(&mut dp, Hook::ToEndpoint, &answer),
        TC_ACT_OK,
        "tracked"
    );
    // Same policy again (a flip and an epoch bump): both flows survive, though
    // the packets' own source ports (33001, 443) would not be allowed.
    dp.install(&c.tables).unwrap();
    let (rc, by, src_port) = judge(&mut dp, Hook::FromEndpoint, &back);
    assert_eq!((rc, by, src_port), (allowed(0).0, allowed(0).1, 53));
    let (rc, by, src_port) = judge(&mut dp, Hook::ToEndpoint, &answer);
    assert_eq!((rc, by, src_port), (allowed(0).0, allowed(0).1, 40001));
    // Now DNS answers must come from port 5353: the established one is cut.
    let c2 = compile(&source_port_model(5353)).unwrap();
    assert_eq!(c2.endpoints[0].id, db.id);
    dp.install(&c2.tables).unwrap();
    let (rc, by, src_port) = judge(&mut dp, Hook::FromEndpoint, &back);
    assert_eq!((rc, by, src_port), (denied().0, denied().1, 53));
    assert_eq!(run(&mut dp, Hook::ToEndpoint, &query_answer), TC_ACT_SHOT);
    let from_5353 = Packet::udp(ip("9.9.9.9"), 5353, me4, 33002);
    assert_eq!(judge(&mut dp, Hook::ToEndpoint, &from_5353).0, TC_ACT_OK);
}

#[test]
fn source_port_class_is_zero_without_entries_or_without_the_flag() {
    use agent::compile::compile;
    // The flag raised before tables that need it are live (as the daemon does):
    // no SPORTS entry for the endpoint, class 0, all those tables use.
    let mut dp = load(endpoint_flags::SOURCE_PORTS);
    dp.install(&base_tables()).unwrap();
    let ssh = Packet::tcp(ip("10.65.1.5"), 1234, ip("10.65.0.10"), 22);
    assert_eq!(run(&mut dp, Hook::ToEndpoint, &ssh), TC_ACT_OK);
    // Source-port tables without the flag: every source port is class 0, and
    // port 53's class is not (a control for the test above).
    let c = compile(&source_port_model(53)).unwrap();
    let id = c.endpoints[0].id;
    dp.set_endpoint(LOOPBACK, EndpointInfo { id, flags: 0 })
        .unwrap();
    dp.install(&c.tables).unwrap();
    let sim = agent::compile::testgen::TableModel::new(&c.tables).unwrap();
    assert_ne!(sim.source_port_class(id, Direction::Ingress, UDP, 53), 0);
    let dns = Packet::udp(ip("8.8.8.8"), 53, ip("10.65.0.10"), 33000);
    assert_eq!(run(&mut dp, Hook::ToEndpoint, &dns), TC_ACT_SHOT);
    dp.set_endpoint(LOOPBACK, c.endpoints[0].info()).unwrap();
    let dns = Packet::udp(ip("8.8.8.8"), 53, ip("10.65.0.10"), 33001);
    assert_eq!(run(&mut dp, Hook::ToEndpoint, &dns), TC_ACT_OK);
}

/// Addresses right next to feed net `i` that the first `n` nets do not hold.
fn feed_neighbours(n: usize, i: usize) -> Vec<IpAddr> {
    use agent::compile::feed;
    let net = feed::net(i);
    let (first, last) = match (net.network(), net.broadcast()) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u128::from(u32::from(a)), u128::from(u32::from(b))),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b)),
        _ => unreachable!("one family"),
    };
    [first - 1, last + 1]
        .into_iter()
        .map(|a| match net.network() {
            IpAddr::V4(_) => IpAddr::V4((a as u32).into()),
            IpAddr::V6(_) => IpAddr::V6(a.into()),
        })
        .filter(|&a| !feed::holds(n, a))
        .collect()
}

/// A network set of 100,000 nets (a threat feed; a GlobalNetworkSet with a
/// global policy, then a NetworkSet with a namespaced one) denied both ways,
/// compiled and installed: the kernel holds exactly the compiled tables (every
/// net a `PEERS` prefix), packets to and from addresses in its first, middle
/// and last nets (IPv4 /32 and /24, IPv6 /64) are dropped, and packets to and
/// from addresses just outside them pass.
#[test]
fn network_set_of_100k_nets_is_enforced() {
    for namespaced in [false, true] {
        feed_is_enforced(100_000, namespaced);
    }
}

fn feed_is_enforced(n: usize, namespaced: bool) {
    use agent::compile::{compile, feed};
    let loaded = agent::model::load::load_sources(&[(
        std::path::PathBuf::from("feed.yaml"),
        feed::yaml(n, 1, namespaced),
    )]);
    assert!(loaded
        .diagnostics
        .iter()
        .all(|d| d.severity != agent::model::Severity::Error));
    let c = compile(&loaded.model).unwrap();
    assert!(c.stats.peer_prefixes > n);
    let mut dp = Dataplane::load().expect("both programs through the verifier (needs root)");
    dp.set_endpoint(LOOPBACK, c.endpoints[0].info()).unwrap();
    dp.install(&c.tables).unwrap();
    assert!(dp.live_tables_equal(&c.tables).unwrap());
    let mut sport = 20_000;
    let mut judge = |dp: &mut Dataplane, peer: IpAddr, want: u32| {
        sport += 1;
        let me = feed::endpoint_ip(0, peer.is_ipv6());
        let out = Packet::tcp(me, sport, peer, 443);
        assert_eq!(run(dp, Hook::FromEndpoint, &out), want, "to {peer}");
        let into = Packet::tcp(peer, sport, me, 8080);
        assert_eq!(run(dp, Hook::ToEndpoint, &into), want, "from {peer}");
    };
    let samples = [
        0,
        1,
        7,
        8,
        9,
        n / 2,
        n / 2 + 7,
        n / 2 + 9,
        n - 3,
        n - 2,
        n - 1,
    ];
    for i in samples {
        judge(&mut dp, feed::inside(i), TC_ACT_SHOT);
        for outside in feed_neighbours(n, i) {
            judge(&mut dp, outside, TC_ACT_OK);
        }
    }
    for outside in ["1.1.1.1", "128.0.0.1", "2001:db9::1", "10.65.0.200"] {
        judge(&mut dp, ip(outside), TC_ACT_OK);
    }
}
