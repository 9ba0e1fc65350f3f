//! The policy dataplane (`from_endpoint` / `to_endpoint`) through the verifier and
//! BPF_PROG_TEST_RUN with hand-filled tables: verdicts, port prefixes, ICMP,
//! peer classes, wildcard class, fail-closed misses, conntrack, generation flips,
//! staged (pending) lookups and events, malformed packets, IPv6 extension headers,
//! source-port classes (from a compiled policy).
//!
//! BPF_PROG_TEST_RUN runs TC programs on an skb of the loopback device, so the
//! endpoint under test is registered as ifindex 1.
use std::net::IpAddr;

use agent::dataplane::{
    port_range_prefixes, Dataplane, FlowRecord, Hook, PeerMatch, PortMatch, RuleEntry, Table,
    TableSet,
};
use agent::model::ir::Direction;
use agent_common::{action, active_flags, endpoint_flags, stat, EndpointInfo, Verdict};
use aya::programs::{TestRun, TestRunOptions};
use lab::packet::{Packet, ACK, ICMP, ICMPV6, RST, SYN, TCP, UDP};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const LOOPBACK: u32 = 1;
const EP: u32 = 7;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn allow(policy: u32, rule: i32) -> Verdict {
    Verdict {
        action: action::ALLOW,
        flags: 0,
        tier: 1,
        policy,
        rule,
    }
}

fn deny(policy: u32, rule: i32) -> Verdict {
    Verdict {
        action: action::DENY,
        ..allow(policy, rule)
    }
}

fn entry(
    dir: Direction,
    table: Table,
    peer: PeerMatch,
    protocol: Option<u8>,
    ports: PortMatch,
    verdict: Verdict,
) -> RuleEntry {
    RuleEntry {
        endpoint_id: EP,
        direction: dir,
        table,
        peer,
        protocol,
        source_port_class: protocol.map(|_| 0),
        ports,
        verdict,
    }
}

fn load(flags: u32) -> Dataplane {
    let mut dp = Dataplane::load().expect("both programs through the verifier (needs root)");
    dp.set_endpoint(LOOPBACK, EndpointInfo { id: EP, flags })
        .unwrap();
    dp
}

fn run(dp: &mut Dataplane, hook: Hook, p: &Packet) -> u32 {
    run_frame(dp, hook, &p.frame())
}

fn run_frame(dp: &mut Dataplane, hook: Hook, frame: &[u8]) -> u32 {
    dp.program(hook)
        .unwrap()
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN")
        .return_value
}

fn count(dp: &Dataplane, index: u32) -> u64 {
    dp.counters().unwrap().get(index)
}

/// Pod 10.65.0.10 (class 1 peers: 10.65.0.0/24, fd65::/64), web at 10.65.1.0/24 (class 2).
fn base_tables() -> TableSet {
    use Direction::*;
    use PeerMatch::*;
    use Table::*;
    TableSet {
        peers: vec![
            ("10.65.0.0/24".parse().unwrap(), 1),
            ("10.65.1.0/24".parse().unwrap(), 2),
            ("10.65.1.128/25".parse().unwrap(), 3),
            ("fd65::/64".parse().unwrap(), 1),
            ("fd66::/48".parse().unwrap(), 2),
        ],
        rules: vec![
            // Egress: to class 2 on TCP 8000-8099 allowed, other TCP to class 2 denied.
            entry(
                Egress,
                Enforced,
                Group(2),
                Some(TCP),
                PortMatch::Range(8000, 8099),
                allow(10, 0),
            ),
            entry(
                Egress,
                Enforced,
                Group(2),
                Some(TCP),
                PortMatch::Any,
                deny(10, -1),
            ),
            // Class 3 (inside class 2's /24 by LPM) only on 443.
            entry(
                Egress,
                Enforced,
                Group(3),
                Some(TCP),
                PortMatch::Range(443, 443),
                allow(11, 0),
            ),
            // UDP 53 to anyone.
            entry(
                Egress,
                Enforced,
                Any,
                Some(UDP),
                PortMatch::Range(53, 53),
                allow(12, 0),
            ),
            // ICMP echo request (type 8, any code) to anyone; ICMP 3/4 only.
            entry(
                Egress,
                Enforced,
                Any,
                Some(ICMP),
                PortMatch::Icmp {
                    icmp_type: 8,
                    code: None,
                },
                allow(13, 0),
            ),
            entry(
                Egress,
                Enforced,
                Any,
                Some(ICMP),
                PortMatch::Icmp {
                    icmp_type: 3,
                    code: Some(4),
                },
                allow(13, 1),
            ),
            entry(
                Egress,
                Enforced,
                Any,
                Some(ICMPV6),
                PortMatch::Icmp {
                    icmp_type: 128,
                    code: Some(0),
                },
                allow(13, 2),
            ),
            // Ingress: everything from class 1, TCP 22 from anyone.
            entry(
                Ingress,
                Enforced,
                Group(1),
                None,
                PortMatch::Any,
                allow(20, 0),
            ),
            entry(
                Ingress,
                Enforced,
                Any,
                Some(TCP),
                PortMatch::Range(22, 22),
                allow(21, 0),
            ),
        ],
        sports: vec![],
        groups: vec![],
    }
    // Hand-written: group n is class n.
    .with_identity_groups()
}

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
fn non_ip_passes_and_malformed_is_dropped() {
    let mut dp = load(0);
    dp.install(&base_tables()).unwrap();
    // ARP.
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
    arp.extend_from_slice(&[0; 28]);
    assert_eq!(run_frame(&mut dp, Hook::FromEndpoint, &arp), TC_ACT_OK);
    assert_eq!(count(&dp, stat::NON_IP), 1);

    let good = Packet::tcp(ip("10.65.0.10"), 1, ip("10.65.1.5"), 8000).frame();
    let mut bad: Vec<(Vec<u8>, &str)> = Vec::new();
    bad.push((good[..14 + 20 + 10].to_vec(), "truncated TCP header"));
    let mut ihl = good.clone();
    ihl[14] = 0x44;
    bad.push((ihl, "IHL 4"));
    let mut ihl_long = good.clone();
    ihl_long[14] = 0x4f; // 60-byte header, longer than the frame's L3+L4
    bad.push((ihl_long[..14 + 40].to_vec(), "IHL past the end"));
    let mut version = good.clone();
    version[14] = 0x65;
    bad.push((version, "version 6 in an IPv4 ethertype"));
    let v6 = Packet::udp(ip("fd65::10"), 1, ip("fd66::5"), 53).frame();
    bad.push((v6[..14 + 40 + 2].to_vec(), "truncated UDP over IPv6"));
    let v6ext = Packet::udp(ip("fd65::10"), 1, ip("fd66::5"), 53)
        .with_ipv6_ext(&[0])
        .frame();
    bad.push((v6ext[..14 + 40 + 4].to_vec(), "truncated hop-by-hop"));
    let many = Packet::udp(ip("fd65::10"), 1, ip("fd66::5"), 53)
        .with_ipv6_ext(&[0, 60, 60, 60, 60, 60, 60, 60, 60])
        .frame();
    bad.push((many, "more extension headers than the parser follows"));
    // (BPF_PROG_TEST_RUN itself refuses frames shorter than an Ethernet header and
    // IPv4 frames shorter than a 20-byte IPv4 header, so those are not run here.)
    for (i, (frame, what)) in bad.iter().enumerate() {
        assert_eq!(
            run_frame(&mut dp, Hook::FromEndpoint, frame),
            TC_ACT_SHOT,
            "{what}"
        );
        assert_eq!(count(&dp, stat::MALFORMED), i as u64 + 1, "{what}");
    }
    assert_eq!(run_frame(&mut dp, Hook::FromEndpoint, &good), TC_ACT_OK);
    assert!(
        dp.drain_events().is_empty(),
        "malformed drops are counted, not reported"
    );
}

#[test]
fn ipv6_extension_headers_are_skipped() {
    let mut dp = load(0);
    dp.install(&base_tables()).unwrap();
    let me6 = ip("fd65::10");
    for (i, ext) in [
        vec![0],
        vec![60],
        vec![43],
        vec![0, 43, 60],
        vec![44],
        vec![0, 60, 44],
    ]
    .into_iter()
    .enumerate()
    {
        let port = 5000 + i as u16;
        let ok = Packet::udp(me6, port, ip("fd67::1"), 53).with_ipv6_ext(&ext);
        assert_eq!(run(&mut dp, Hook::FromEndpoint, &ok), TC_ACT_OK, "{ext:?}");
        let no = Packet::udp(me6, port, ip("fd67::1"), 54).with_ipv6_ext(&ext);
        assert_eq!(
            run(&mut dp, Hook::FromEndpoint, &no),
            TC_ACT_SHOT,
            "{ext:?}"
        );
    }
    assert_eq!(count(&dp, stat::MALFORMED), 0);
}

#[test]
fn non_first_fragments_are_judged_with_port_zero() {
    let mut dp = load(0);
    let mut t = base_tables();
    t.rules.push(entry(
        Direction::Egress,
        Table::Enforced,
        PeerMatch::Group(2),
        Some(UDP),
        PortMatch::Any,
        allow(14, 0),
    ));
    dp.install(&t.clone().with_identity_groups()).unwrap();
    let me = ip("10.65.0.10");
    // Class 2 allows all of UDP: a later fragment passes; to the world only port 53
    // is allowed, so a later fragment (port unknown, judged as 0) is dropped.
    let frag = Packet::udp(me, 1, ip("10.65.1.5"), 9999).fragment(100);
    assert_eq!(run(&mut dp, Hook::FromEndpoint, &frag), TC_ACT_OK);
    let frag = Packet::udp(me, 1, ip("8.8.8.8"), 53).fragment(100);
    assert_eq!(run(&mut dp, Hook::FromEndpoint, &frag), TC_ACT_SHOT);
    let frag6 = Packet::udp(ip("fd65::10"), 1, ip("fd66::5"), 9999)
        .with_ipv6_ext(&[0, 44])
        .fragment(100);
    assert_eq!(
        run(&mut dp, Hook::FromEndpoint, &frag6),
        TC_ACT_OK,
        "v6 class 2"
    );
    let frag6 = Packet::udp(ip("fd65::10"), 1, ip("fd67::5"), 53)
        .with_ipv6_ext(&[44])
        .fragment(100);
    assert_eq!(
        run(&mut dp, Hook::FromEndpoint, &frag6),
        TC_ACT_SHOT,
        "v6 world"
    );
    assert_eq!(count(&dp, stat::FRAGMENTS), 4);
    assert_eq!(count(&dp, stat::MALFORMED), 0);
}

#[test]
fn later_fragments_take_their_first_fragments_ports() {
    let mut dp = load(0);
    dp.install(&base_tables()).unwrap();
    let (me, dns) = (ip("10.65.0.10"), ip("8.8.8.8"));
    let from = |dp: &mut Dataplane, p: Packet| run(dp, Hook::FromEndpoint, &p);
    let to = |dp: &mut Dataplane, p: Packet| run(dp, Hook::ToEndpoint, &p);
    // A query to UDP 53 (a port-only allow) in three fragments: all pass.
    let q = Packet::udp(me, 5000, dns, 53);
    assert_eq!(from(&mut dp, q.clone().first_fragment(0x1234)), TC_ACT_OK);
    assert_eq!(
        from(&mut dp, q.clone().later_fragment(0x1234, 185, true)),
        TC_ACT_OK
    );
    assert_eq!(
        from(&mut dp, q.clone().later_fragment(0x1234, 370, false)),
        TC_ACT_OK
    );
    // The fragmented answer belongs to the flow (nothing allows UDP in from the world).
    let r = q.reply();
    assert_eq!(to(&mut dp, r.clone().first_fragment(0x0777)), TC_ACT_OK);
    assert_eq!(
        to(&mut dp, r.clone().later_fragment(0x0777, 185, false)),
        TC_ACT_OK
    );
    assert_eq!(count(&dp, stat::FRAGMENTS_TRACKED), 3);
    assert_eq!(
        count(&dp, stat::NEW_FLOWS),
        1,
        "one flow, every fragment in it"
    );
    // A later fragment of a datagram whose first fragment was not seen: port 0,
    // which the port-only allow does not cover.
    assert_eq!(
        from(&mut dp, q.clone().later_fragment(0x9999, 185, false)),
        TC_ACT_SHOT
    );
    // A denied first fragment (port 54) takes its later fragments with it.
    let q54 = Packet::udp(me, 5001, dns, 54);
    assert_eq!(
        from(&mut dp, q54.clone().first_fragment(0x2000)),
        TC_ACT_SHOT
    );
    assert_eq!(
        from(&mut dp, q54.clone().later_fragment(0x2000, 185, false)),
        TC_ACT_SHOT
    );
    let events = dp.drain_events();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!((events[0].dst_port, events[0].fragment), (0, true));
    assert_eq!((events[1].dst_port, events[1].fragment), (54, false));
    // Fragmented echo (a large ping) and its fragmented reply.
    let mut echo = Packet::icmp(me, dns, 8, 0);
    echo.icmp_id = 77;
    assert_eq!(from(&mut dp, echo.clone().first_fragment(5)), TC_ACT_OK);
    assert_eq!(
        from(&mut dp, echo.clone().later_fragment(5, 185, false)),
        TC_ACT_OK
    );
    let mut echo_reply = Packet::icmp(dns, me, 0, 0);
    echo_reply.icmp_id = 77;
    assert_eq!(to(&mut dp, echo_reply.clone().first_fragment(6)), TC_ACT_OK);
    assert_eq!(
        to(&mut dp, echo_reply.clone().later_fragment(6, 185, false)),
        TC_ACT_OK
    );

    // IPv6 fragment headers, also with a destination options header in the
    // fragmentable part (present in the first fragment only; the fragment
    // header's next header names it in every fragment).
    let (me6, w6) = (ip("fd65::10"), ip("fd67::1"));
    for (i, ext) in [vec![44], vec![0, 44, 60]].into_iter().enumerate() {
        let q6 = Packet::udp(me6, 5000 + i as u16, w6, 53).with_ipv6_ext(&ext);
        let id = 0xabcd_ef00 + i as u32;
        assert_eq!(from(&mut dp, q6.clone().first_fragment(id)), TC_ACT_OK);
        assert_eq!(
            from(&mut dp, q6.clone().later_fragment(id, 100, false)),
            TC_ACT_OK,
            "{ext:?}"
        );
        assert_eq!(
            from(&mut dp, q6.clone().later_fragment(id + 0x100, 100, false)),
            TC_ACT_SHOT,
            "{ext:?}: unknown datagram"
        );
        let r6 = q6.reply();
        assert_eq!(to(&mut dp, r6.clone().first_fragment(id)), TC_ACT_OK);
        assert_eq!(
            to(&mut dp, r6.clone().later_fragment(id, 100, false)),
            TC_ACT_OK,
            "{ext:?} answer"
        );
    }
    assert_eq!(count(&dp, stat::FRAGMENTS_TRACKED), 3 + 1 + 2 + 4);
    assert_eq!(count(&dp, stat::FRAGMENTS), 10 + 1 + 2);
    assert_eq!(count(&dp, stat::MALFORMED), 0);
}

#[test]
fn conntrack_hits_replies_and_epoch_flip() {
    let mut dp = load(0);
    dp.install(&base_tables()).unwrap();
    let syn = Packet::tcp(ip("10.65.0.10"), 40000, ip("10.65.1.5"), 8000);
    assert_eq!(run(&mut dp, Hook::FromEndpoint, &syn), TC_ACT_OK);
    assert_eq!(count(&dp, stat::CT_HITS), 0);
    assert_eq!(count(&dp, stat::NEW_FLOWS), 1);
    // The reply arrives on to_endpoint (the pod receives it): no ingress rule allows
    // TCP from class 2, but replies of an approved flow pass.
    let synack = syn.reply().flags(SYN | ACK);
    assert_eq!(run(&mut dp, Hook::ToEndpoint, &synack), TC_ACT_OK);
    assert_eq!(count(&dp, stat::CT_HITS), 1);
    let ack = syn.clone().flags(ACK);
    assert_eq!(run(&mut dp, Hook::FromEndpoint, &ack), TC_ACT_OK);
    assert_eq!(count(&dp, stat::CT_HITS), 2);
    assert_eq!(count(&dp, stat::NEW_FLOWS), 1);
    // A new connection from class 2 to the pod is not a reply: denied.
    let inbound = Packet::tcp(ip("10.65.1.5"), 8000, ip("10.65.0.10"), 40001);
    assert_eq!(run(&mut dp, Hook::ToEndpoint, &inbound), TC_ACT_SHOT);

    // Policy change: class 2 loses 8000 (flip to the other copy, epoch bumped).
    let before = dp.active().unwrap();
    let mut t = base_tables();
    t.rules.remove(0);
    let after = dp.install(&t.clone().with_identity_groups()).unwrap();
    assert_eq!(after.generation, before.generation ^ 1);
    assert_eq!(after.epoch, before.epoch + 1);
    assert_eq!(
        run(&mut dp, Hook::FromEndpoint, &ack),
        TC_ACT_SHOT,
        "established flow cut"
    );
    assert_eq!(count(&dp, stat::CT_STALE), 1);
    // Its replies are cut too (re-judged in the flow's orientation), and stay cut.
    assert_eq!(
        run(&mut dp, Hook::ToEndpoint, &synack.clone().flags(ACK)),
        TC_ACT_SHOT
    );
    assert_eq!(run(&mut dp, Hook::FromEndpoint, &ack), TC_ACT_SHOT);

    // Allowed again, after another flip back: the flow resumes.
    dp.install(&base_tables()).unwrap();
    assert_eq!(
        run(&mut dp, Hook::ToEndpoint, &synack.clone().flags(ACK)),
        TC_ACT_OK
    );
    assert_eq!(run(&mut dp, Hook::FromEndpoint, &ack), TC_ACT_OK);
    // RST closes it; the entry lives on with a short timeout (still a hit now).
    assert_eq!(
        run(&mut dp, Hook::FromEndpoint, &syn.clone().flags(RST)),
        TC_ACT_OK
    );

    // UDP and ICMP echo replies.
    let dns = Packet::udp(ip("10.65.0.10"), 5353, ip("8.8.8.8"), 53);
    assert_eq!(run(&mut dp, Hook::FromEndpoint, &dns), TC_ACT_OK);
    assert_eq!(run(&mut dp, Hook::ToEndpoint, &dns.reply()), TC_ACT_OK);
    let mut echo = Packet::icmp(ip("10.65.0.10"), ip("8.8.8.8"), 8, 0);
    echo.icmp_id = 77;
    assert_eq!(run(&mut dp, Hook::FromEndpoint, &echo), TC_ACT_OK);
    let mut echo_reply = Packet::icmp(ip("8.8.8.8"), ip("10.65.0.10"), 0, 0);
    echo_reply.icmp_id = 77;
    assert_eq!(run(&mut dp, Hook::ToEndpoint, &echo_reply), TC_ACT_OK);
    echo_reply.icmp_id = 78;
    assert_eq!(
        run(&mut dp, Hook::ToEndpoint, &echo_reply),
        TC_ACT_SHOT,
        "unsolicited echo reply"
    );
}

/// TCP 8080 both ways, UDP out (any port) and in (9999), echo requests out; no
/// other ICMP or ICMPv6 in either direction.
fn related_tables() -> TableSet {
    use Direction::*;
    use PeerMatch::Any;
    let e = |dir, protocol, ports, rule| {
        entry(
            dir,
            Table::Enforced,
            Any,
            Some(protocol),
            ports,
            allow(40, rule),
        )
    };
    TableSet {
        peers: vec![("10.65.1.0/24".parse().unwrap(), 2)],
        rules: vec![
            e(Egress, TCP, PortMatch::Range(8080, 8080), 0),
            e(Egress, UDP, PortMatch::Any, 1),
            e(
                Egress,
                ICMP,
                PortMatch::Icmp {
                    icmp_type: 8,
                    code: None,
                },
                2,
            ),
            e(Ingress, TCP, PortMatch::Range(8080, 8080), 3),
            e(Ingress, UDP, PortMatch::Range(9999, 9999), 4),
        ],
        sports: Vec::new(),
        groups: Vec::new(),
    }
}

#[test]
fn icmp_errors_quoting_an_approved_flow_are_related() {
    let mut dp = load(0);
    dp.install(&related_tables()).unwrap();
    let (me, web, router) = (ip("10.65.0.10"), ip("10.65.1.5"), ip("10.64.0.1"));
    let from = |dp: &mut Dataplane, p: &Packet| run(dp, Hook::FromEndpoint, p);
    let to = |dp: &mut Dataplane, p: &Packet| run(dp, Hook::ToEndpoint, p);

    // PMTU discovery under a TCP-only policy: the frag-needed about the pod's
    // segment reaches it although no rule allows ICMP in.
    let syn = Packet::tcp(me, 40000, web, 8080);
    assert_eq!(from(&mut dp, &syn), TC_ACT_OK);
    let frag_needed = Packet::icmp_error(router, me, 3, 4, &syn);
    assert_eq!(to(&mut dp, &frag_needed), TC_ACT_OK);
    assert_eq!(count(&dp, stat::ICMP_RELATED), 1);
    // The same error about a flow nobody saw is plain ICMP: denied.
    let unknown = Packet::icmp_error(router, me, 3, 4, &Packet::tcp(me, 40001, web, 8080));
    assert_eq!(to(&mut dp, &unknown), TC_ACT_SHOT);
    // Sent to someone other than the quoted packet's sender: not related either.
    let astray = Packet::icmp_error(router, ip("10.65.0.99"), 3, 4, &syn);
    assert_eq!(to(&mut dp, &astray), TC_ACT_SHOT);
    // A flow this side denied relates nothing.
    let denied = Packet::tcp(me, 40002, web, 9000);
    assert_eq!(from(&mut dp, &denied), TC_ACT_SHOT);
    let about_denied = Packet::icmp_error(router, me, 3, 4, &denied);
    assert_eq!(to(&mut dp, &about_denied), TC_ACT_SHOT);
    // A quote too short for the ports is judged as the ICMP it is, not malformed.
    let mut short = frag_needed.frame();
    short.truncate(14 + 20 + 8 + 20 + 2);
    assert_eq!(run_frame(&mut dp, Hook::ToEndpoint, &short), TC_ACT_SHOT);
    assert_eq!(count(&dp, stat::MALFORMED), 0);
    assert_eq!(count(&dp, stat::ICMP_RELATED), 1);

    // Inbound flow: errors about the pod's replies come back to it, and the
    // pod's own port unreachable leaves it (its egress allows no ICMP).
    let syn_in = Packet::tcp(web, 50000, me, 8080);
    assert_eq!(to(&mut dp, &syn_in), TC_ACT_OK);
    let synack = syn_in.reply().flags(SYN | ACK);
    assert_eq!(from(&mut dp, &synack), TC_ACT_OK);
    assert_eq!(
        to(&mut dp, &Packet::icmp_error(router, me, 3, 4, &synack)),
        TC_ACT_OK
    );
    let udp_in = Packet::udp(web, 5000, me, 9999);
    assert_eq!(to(&mut dp, &udp_in), TC_ACT_OK);
    let port_unreachable = Packet::icmp_error(me, web, 3, 3, &udp_in);
    assert_eq!(from(&mut dp, &port_unreachable), TC_ACT_OK);
    // Echo (tracked by identifier) and traceroute's time exceeded.
    let mut echo = Packet::icmp(me, ip("8.8.8.8"), 8, 0);
    echo.icmp_id = 77;
    assert_eq!(from(&mut dp, &echo), TC_ACT_OK);
    assert_eq!(
        to(&mut dp, &Packet::icmp_error(router, me, 3, 1, &echo)),
        TC_ACT_OK
    );
    let probe = Packet::udp(me, 6000, ip("8.8.8.8"), 33434);
    assert_eq!(from(&mut dp, &probe), TC_ACT_OK);
    assert_eq!(
        to(&mut dp, &Packet::icmp_error(router, me, 11, 0, &probe)),
        TC_ACT_OK
    );
    assert_eq!(count(&dp, stat::ICMP_RELATED), 5);

    // After a policy change the flow's approval is stale: the error is judged on
    // its own until the flow's next packet has been re-judged.
    dp.install(&related_tables()).unwrap();
    assert_eq!(to(&mut dp, &frag_needed), TC_ACT_SHOT);
    assert_eq!(from(&mut dp, &syn.clone().flags(ACK)), TC_ACT_OK);
    assert_eq!(to(&mut dp, &frag_needed), TC_ACT_OK);

    // IPv6: packet too big, also when the quoted packet has extension headers.
    let (me6, web6, router6) = (ip("fd65::10"), ip("fd66::5"), ip("fd64::1"));
    let syn6 = Packet::tcp(me6, 40000, web6, 8080);
    assert_eq!(from(&mut dp, &syn6), TC_ACT_OK);
    assert_eq!(
        to(&mut dp, &Packet::icmp_error(router6, me6, 2, 0, &syn6)),
        TC_ACT_OK
    );
    let other6 = Packet::tcp(me6, 40001, web6, 8080);
    assert_eq!(
        to(&mut dp, &Packet::icmp_error(router6, me6, 2, 0, &other6)),
        TC_ACT_SHOT
    );
    let ext6 = Packet::tcp(me6, 40002, web6, 8080).with_ipv6_ext(&[0, 60]);
    assert_eq!(from(&mut dp, &ext6), TC_ACT_OK);
    assert_eq!(
        to(&mut dp, &Packet::icmp_error(router6, me6, 2, 0, &ext6)),
        TC_ACT_OK
    );
    assert_eq!(count(&dp, stat::ICMP_RELATED), 8);
    assert_eq!(count(&dp, stat::MALFORMED), 0);
}

#[test]
fn non_syn_without_entry_is_judged_as_new() {
    let mut dp = load(0);
    dp.install(&base_tables()).unwrap();
    let mid = Packet::tcp(ip("10.65.0.10"), 40000, ip("10.65.1.5"), 8000).flags(ACK);
    assert_eq!(run(&mut dp, Hook::FromEndpoint, &mid), TC_ACT_OK);
    assert_eq!(run(&mut dp, Hook::ToEndpoint, &mid.reply()), TC_ACT_OK);
    let mid = Packet::tcp(ip("10.65.0.10"), 40000, ip("10.65.1.5"), 9000).flags(ACK);
    assert_eq!(run(&mut dp, Hook::FromEndpoint, &mid), TC_ACT_SHOT);
}

#[test]
fn denied_flows_are_cached_and_reported_once() {
    let mut dp = load(0);
    dp.install(&base_tables()).unwrap();
    let p = Packet::tcp(ip("10.65.0.10"), 40000, ip("10.65.1.5"), 9000);
    for _ in 0..5 {
        assert_eq!(run(&mut dp, Hook::FromEndpoint, &p), TC_ACT_SHOT);
    }
    let events = dp.drain_events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].enforced, deny(10, -1));
    assert_eq!(count(&dp, stat::CT_HITS), 4);
    // Allowed flows on endpoints without staged policy are not reported.
    let ok = Packet::tcp(ip("10.65.0.10"), 40001, ip("10.65.1.5"), 8000);
    assert_eq!(run(&mut dp, Hook::FromEndpoint, &ok), TC_ACT_OK);
    assert!(dp.drain_events().is_empty());
}

fn staged_tables() -> TableSet {
    use Direction::*;
    use PeerMatch::*;
    let mut t = base_tables();
    // Pending: a staged policy would deny 8000-8049 to class 2 and allow 9000.
    let pending: Vec<RuleEntry> = t
        .rules
        .iter()
        .map(|e| RuleEntry {
            table: Table::Pending,
            ..*e
        })
        .collect();
    t.rules.extend(pending);
    t.rules.push(entry(
        Egress,
        Table::Pending,
        Group(2),
        Some(TCP),
        PortMatch::Range(8000, 8049),
        deny(30, 0),
    ));
    t.rules.push(entry(
        Egress,
        Table::Pending,
        Group(2),
        Some(TCP),
        PortMatch::Range(9000, 9000),
        allow(30, 1),
    ));
    t.with_identity_groups()
}

#[test]
fn staged_event_carries_both_verdicts_once_per_flow() {
    let mut dp = load(endpoint_flags::HAS_STAGED);
    dp.install(&staged_tables()).unwrap();
    let me = ip("10.65.0.10");
    let p = Packet::tcp(me, 40000, ip("10.65.1.5"), 8010);
    assert_eq!(
        run(&mut dp, Hook::FromEndpoint, &p),
        TC_ACT_OK,
        "pending deny changes nothing"
    );
    assert_eq!(
        run(&mut dp, Hook::FromEndpoint, &p.clone().flags(ACK)),
        TC_ACT_OK
    );
    assert_eq!(
        run(&mut dp, Hook::ToEndpoint, &p.reply().flags(ACK)),
        TC_ACT_OK
    );
    let q = Packet::tcp(me, 40001, ip("10.65.1.5"), 9000);
    assert_eq!(
        run(&mut dp, Hook::FromEndpoint, &q),
        TC_ACT_SHOT,
        "pending allow changes nothing"
    );
    assert_eq!(run(&mut dp, Hook::FromEndpoint, &q), TC_ACT_SHOT);
    let events = dp.drain_events();
    assert_eq!(events.len(), 2, "one event per flow: {events:?}");
    let e: &FlowRecord = &events[0];
    assert_eq!(
        (e.src, e.dst, e.src_port, e.dst_port, e.protocol),
        (me, ip("10.65.1.5"), 40000, 8010, TCP)
    );
    assert_eq!(
        (e.endpoint_id, e.ifindex, e.direction),
        (EP, LOOPBACK, Direction::Egress)
    );
    assert_eq!(e.enforced, allow(10, 0));
    assert_eq!(e.pending, Some(deny(30, 0)));
    assert!(e.timestamp_ns > 0);
    assert_eq!(events[1].enforced, deny(10, -1));
    assert_eq!(events[1].pending, Some(allow(30, 1)));
    assert_eq!(count(&dp, stat::STAGED_LOOKUPS), 2);
}

/// xorshift64*: deterministic random packets without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(self.next() % items.len() as u64) as usize]
    }
}

fn random_packet(rng: &mut Rng) -> (Hook, Packet) {
    let v4 = [
        "10.65.0.10",
        "10.65.0.20",
        "10.65.1.5",
        "10.65.1.200",
        "8.8.8.8",
    ];
    let v6 = ["fd65::10", "fd66::5", "fd67::1"];
    let pool = if rng.next().is_multiple_of(3) {
        &v6[..]
    } else {
        &v4[..]
    };
    let (src, dst) = (ip(rng.pick(pool)), ip(rng.pick(pool)));
    let ports = [
        22,
        53,
        443,
        7999,
        8000,
        8049,
        8050,
        8099,
        8100,
        9000,
        (rng.next() % 65536) as u16,
    ];
    let sport = 1024 + (rng.next() % 60000) as u16;
    let mut p = match rng.next() % 4 {
        0 => Packet::udp(src, sport, dst, rng.pick(&ports)),
        1 => Packet::icmp(
            src,
            dst,
            rng.pick(&[0, 3, 8, 128, 129]),
            rng.pick(&[0, 1, 4]),
        ),
        _ => Packet::tcp(src, sport, dst, rng.pick(&ports)).flags(rng.pick(&[SYN, ACK, SYN | ACK])),
    };
    p.icmp_id = (rng.next() % 4) as u16;
    let hook = if rng.next().is_multiple_of(2) {
        Hook::FromEndpoint
    } else {
        Hook::ToEndpoint
    };
    if rng.next().is_multiple_of(4) {
        // Replay the reverse of some flow too.
        return (hook, p.reply());
    }
    (hook, p)
}

#[test]
fn staged_pass_never_changes_a_verdict() {
    // Same packet sequence through: no staged flag and no pending entries; the staged
    // flag with pending entries. Verdicts (including conntrack effects) must match.
    let mut plain = load(0);
    plain.install(&base_tables()).unwrap();
    let mut staged = load(endpoint_flags::HAS_STAGED);
    staged.install(&staged_tables()).unwrap();
    let mut flagged_only = load(endpoint_flags::HAS_STAGED);
    flagged_only.install(&base_tables()).unwrap();
    let mut entries_only = load(0);
    entries_only.install(&staged_tables()).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut allowed = 0;
    for i in 0..3000 {
        let (hook, p) = random_packet(&mut rng);
        let frame = p.frame();
        let a = run_frame(&mut plain, hook, &frame);
        let b = run_frame(&mut staged, hook, &frame);
        let c = run_frame(&mut flagged_only, hook, &frame);
        let d = run_frame(&mut entries_only, hook, &frame);
        assert_eq!(a, b, "packet {i} {hook:?} {p:?}");
        assert_eq!(a, c, "packet {i} {hook:?} {p:?}");
        assert_eq!(a, d, "packet {i} {hook:?} {p:?}");
        allowed += usize::from(a == TC_ACT_OK);
        if i % 500 == 0 {
            staged.drain_events();
            flagged_only.drain_events();
            plain.drain_events();
            entries_only.drain_events();
        }
    }
    assert!(
        allowed > 300 && allowed < 2700,
        "a mix of verdicts: {allowed} allowed"
    );
    assert!(staged.counters().unwrap().get(stat::STAGED_LOOKUPS) > 0);
    assert_eq!(plain.counters().unwrap().get(stat::STAGED_LOOKUPS), 0);
    assert_eq!(
        entries_only.counters().unwrap().get(stat::STAGED_LOOKUPS),
        0
    );
    // Pending verdicts show up in the events of the staged run, and differ from
    // the enforced ones somewhere.
    let events = staged.drain_events();
    assert!(events.iter().all(|e| e.pending.is_some()));
    assert!(
        events.iter().any(|e| Some(e.enforced) != e.pending),
        "{events:?}"
    );
}

#[test]
fn measure_ns_per_packet() {
    const REPEAT: u32 = 1_000_000;
    let bench = |dp: &mut Dataplane, hook: Hook, p: &Packet| -> u64 {
        let frame = p.frame();
        // One run to create the conntrack entry where that applies.
        run_frame(dp, hook, &frame);
        let r = dp
            .program(hook)
            .unwrap()
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                repeat: REPEAT,
                ..Default::default()
            })
            .unwrap();
        r.duration.as_nanos() as u64
    };
    let allowed = Packet::tcp(ip("10.65.0.10"), 40000, ip("10.65.1.5"), 8000);
    let mut dp = load(0);
    dp.install(&base_tables()).unwrap();
    let established = bench(&mut dp, Hook::FromEndpoint, &allowed);
    dp.set_active_flags(active_flags::NO_CT_INSERT).unwrap();
    let fresh = Packet::tcp(ip("10.65.0.10"), 40001, ip("10.65.1.5"), 8000);
    let new_flow = bench(&mut dp, Hook::FromEndpoint, &fresh);
    let wildcard = bench(
        &mut dp,
        Hook::FromEndpoint,
        &Packet::udp(ip("10.65.0.10"), 1, ip("8.8.8.8"), 53),
    );

    let mut none = Dataplane::load().unwrap();
    let not_endpoint = bench(&mut none, Hook::FromEndpoint, &allowed);

    let mut st = load(endpoint_flags::HAS_STAGED);
    st.install(&staged_tables()).unwrap();
    st.set_active_flags(active_flags::NO_CT_INSERT).unwrap();
    let staged_new = bench(&mut st, Hook::FromEndpoint, &fresh);
    let c = st.counters().unwrap();
    let mut st2 = load(endpoint_flags::HAS_STAGED);
    st2.install(&staged_tables()).unwrap();
    let staged_established = bench(&mut st2, Hook::FromEndpoint, &allowed);

    eprintln!("ns/packet over {REPEAT} runs (BPF_PROG_TEST_RUN, includes ~35 ns of test harness):");
    eprintln!("  interface not an endpoint (1 hash lookup) {not_endpoint:>5}");
    eprintln!("  established flow (conntrack hit)          {established:>5}");
    eprintln!("  new flow (ct miss, class LPM, rule LPM)   {new_flow:>5}");
    eprintln!("  new flow, wildcard-class probe            {wildcard:>5}");
    eprintln!(
        "  new flow + staged lookup + event attempt  {staged_new:>5}  (events {}, ringbuf full {})",
        c.get(stat::EVENTS),
        c.get(stat::RINGBUF_FULL)
    );
    eprintln!("  established flow, staged endpoint         {staged_established:>5}");
}

/// A veth pair (the kernel here has no dummy driver), for runs with ifindexes
/// other than loopback's; deleted on drop.
struct VethPair {
    name: String,
    ifindex: [u32; 2],
}

impl VethPair {
    fn new() -> VethPair {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("dpt{}x{n}", std::process::id() % 100_000);
        let peer = format!("{name}p");
        let ip_cmd = |args: &[&str]| {
            std::process::Command::new("ip")
                .args(args)
                .output()
                .expect("ip (needs root and iproute2)")
        };
        let _ = ip_cmd(&["link", "del", &name]);
        let out = ip_cmd(&["link", "add", &name, "type", "veth", "peer", "name", &peer]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let index = |n: &str| {
            std::fs::read_to_string(format!("/sys/class/net/{n}/ifindex"))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        VethPair {
            ifindex: [index(&name), index(&peer)],
            name,
        }
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.name])
            .output();
    }
}

/// Runs with `__sk_buff.ifindex` set (the only non-zero field), so the program
/// sees the packet on that interface.
fn run_on(dp: &mut Dataplane, hook: Hook, ifindex: u32, p: &Packet) -> u32 {
    let mut ctx = [0u8; 44]; // __sk_buff up to and including ifindex (offset 40)
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    let frame = p.frame();
    dp.program(hook)
        .unwrap()
        .test_run(TestRunOptions {
            data_in: Some(&frame),
            ctx_in: Some(&ctx),
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN with an __sk_buff")
        .return_value
}

#[test]
fn pod_to_pod_needs_both_sides() {
    use Direction::*;
    let veth = VethPair::new();
    let [a, b] = veth.ifindex;
    let mut dp = Dataplane::load().unwrap();
    dp.set_endpoint(a, EndpointInfo { id: 1, flags: 0 })
        .unwrap();
    dp.set_endpoint(b, EndpointInfo { id: 2, flags: 0 })
        .unwrap();
    let rule = |id, dir, protocol, ports, verdict| RuleEntry {
        endpoint_id: id,
        direction: dir,
        table: Table::Enforced,
        peer: PeerMatch::Group(1),
        protocol: Some(protocol),
        source_port_class: Some(0),
        ports,
        verdict,
    };
    dp.install(
        &TableSet {
            peers: vec![("10.65.0.0/24".parse().unwrap(), 1)],
            rules: vec![
                // A may send any TCP to class 1; B accepts only port 80 from class 1.
                rule(1, Egress, TCP, PortMatch::Any, allow(1, 0)),
                rule(2, Ingress, TCP, PortMatch::Range(80, 80), allow(2, 0)),
            ],
            sports: vec![],
            groups: vec![],
        }
        .with_identity_groups(),
    )
    .unwrap();
    let (pa, pb) = (ip("10.65.0.10"), ip("10.65.0.20"));

    let syn = Packet::tcp(pa, 40000, pb, 80);
    assert_eq!(run_on(&mut dp, Hook::FromEndpoint, a, &syn), TC_ACT_OK);
    assert_eq!(run_on(&mut dp, Hook::ToEndpoint, b, &syn), TC_ACT_OK);
    let synack = syn.reply().flags(SYN | ACK);
    assert_eq!(
        run_on(&mut dp, Hook::FromEndpoint, b, &synack),
        TC_ACT_OK,
        "reply leaves B"
    );
    assert_eq!(
        run_on(&mut dp, Hook::ToEndpoint, a, &synack),
        TC_ACT_OK,
        "reply reaches A"
    );
    assert_eq!(
        count(&dp, stat::NEW_FLOWS),
        1,
        "one entry serves both endpoints"
    );

    // A's egress allows 81, B's ingress does not: dropped at B, and stays dropped.
    let syn81 = Packet::tcp(pa, 40001, pb, 81);
    assert_eq!(run_on(&mut dp, Hook::FromEndpoint, a, &syn81), TC_ACT_OK);
    assert_eq!(run_on(&mut dp, Hook::ToEndpoint, b, &syn81), TC_ACT_SHOT);
    assert_eq!(run_on(&mut dp, Hook::FromEndpoint, a, &syn81), TC_ACT_OK);
    assert_eq!(run_on(&mut dp, Hook::ToEndpoint, b, &syn81), TC_ACT_SHOT);
    let events = dp.drain_events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!((events[0].ifindex, events[0].endpoint_id), (b, 2));
    assert_eq!(events[0].direction, Ingress);
    // B has no egress entries: its own new connections fail closed.
    let from_b = Packet::tcp(pb, 40002, pa, 80);
    assert_eq!(run_on(&mut dp, Hook::FromEndpoint, b, &from_b), TC_ACT_SHOT);
}

#[test]
fn deny_events_are_rate_limited() {
    let mut dp = load(0);
    dp.install(&base_tables()).unwrap();
    const FLOWS: u16 = 2500;
    for i in 0..FLOWS {
        let p = Packet::tcp(ip("10.65.0.10"), 10000 + i, ip("10.65.1.5"), 9000);
        assert_eq!(run(&mut dp, Hook::FromEndpoint, &p), TC_ACT_SHOT);
    }
    let c = dp.counters().unwrap();
    let events = dp.drain_events().len() as u64;
    assert_eq!(events, c.get(stat::EVENTS));
    assert!(c.get(stat::EVENTS_RATE_LIMITED) > 0, "{c:?}");
    assert_eq!(
        c.get(stat::EVENTS) + c.get(stat::EVENTS_RATE_LIMITED) + c.get(stat::RINGBUF_FULL),
        u64::from(FLOWS)
    );
}

#[test]
fn sweep_deletes_only_idle_conntrack_entries() {
    use agent::dataplane::{monotonic_coarse_ns, CtSweep};
    let mut dp = load(0);
    dp.install(&base_tables()).unwrap();
    let syn = Packet::tcp(ip("10.65.0.10"), 40000, ip("10.65.1.5"), 8000);
    assert_eq!(run(&mut dp, Hook::FromEndpoint, &syn), TC_ACT_OK);
    let synack = syn.reply().flags(SYN | ACK);
    assert_eq!(run(&mut dp, Hook::ToEndpoint, &synack), TC_ACT_OK);
    let dns = Packet::udp(ip("10.65.0.10"), 5353, ip("8.8.8.8"), 53);
    assert_eq!(run(&mut dp, Hook::FromEndpoint, &dns), TC_ACT_OK);
    let mut echo = Packet::icmp(ip("10.65.0.10"), ip("8.8.8.8"), 8, 0);
    echo.icmp_id = 7;
    assert_eq!(run(&mut dp, Hook::FromEndpoint, &echo), TC_ACT_OK);

    const S: u64 = 1_000_000_000;
    let now = monotonic_coarse_ns();
    let sweep = |dp: &mut Dataplane, at: u64| dp.sweep_conntrack(at).unwrap();
    assert_eq!(
        sweep(&mut dp, now),
        CtSweep {
            live: 3,
            removed: 0
        }
    );
    // Past UDP's 60 s and ICMP's 30 s, within TCP established's hour.
    assert_eq!(
        sweep(&mut dp, now + 61 * S),
        CtSweep {
            live: 1,
            removed: 2
        }
    );
    let left: Vec<_> = dp.conntrack().unwrap().keys().map(|k| k.unwrap()).collect();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].protocol, 6, "the established TCP flow stays");
    // The flow is still tracked: its reply passes with a conntrack hit.
    let hits = count(&dp, stat::CT_HITS);
    assert_eq!(
        run(&mut dp, Hook::ToEndpoint, &synack.clone().flags(ACK)),
        TC_ACT_OK
    );
    assert_eq!(count(&dp, stat::CT_HITS), hits + 1);
    assert_eq!(
        sweep(&mut dp, monotonic_coarse_ns() + 3601 * S),
        CtSweep {
            live: 0,
            removed: 1
        }
    );
    assert_eq!(dp.conntrack().unwrap().keys().count(), 0);
}

#[test]
fn expired_entries_are_misses() {
    let mut dp = load(0);
    dp.install(&base_tables()).unwrap();
    let dns = Packet::udp(ip("10.65.0.10"), 5353, ip("8.8.8.8"), 53);
    assert_eq!(run(&mut dp, Hook::FromEndpoint, &dns), TC_ACT_OK);
    assert_eq!(run(&mut dp, Hook::ToEndpoint, &dns.reply()), TC_ACT_OK);
    // Age the entry past the UDP timeout (last seen at boot).
    {
        let mut ct = dp.conntrack().unwrap();
        let entries: Vec<_> = ct.iter().map(|r| r.unwrap()).collect();
        assert_eq!(entries.len(), 1);
        let (key, mut value) = entries[0];
        value.last_seen_ns = 0;
        ct.insert(&key, &value, 0).unwrap();
    }
    // The "reply" is now a new flow from 8.8.8.8 to the pod: no ingress entry.
    assert_eq!(run(&mut dp, Hook::ToEndpoint, &dns.reply()), TC_ACT_SHOT);
    assert_eq!(count(&dp, stat::NEW_FLOWS), 2);
}

#[test]
fn attaches_to_an_interface_with_tcx() {
    let veth = VethPair::new();
    let mut dp = Dataplane::load().unwrap();
    dp.attach(&veth.name).expect("TCX attach of both programs");
    assert!(matches!(
        dp.attach("no-such-if0"),
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
