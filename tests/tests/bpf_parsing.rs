//! The policy dataplane's packet parsing through BPF_PROG_TEST_RUN: non-IP
//! frames pass, malformed IP is dropped, IPv6 extension headers are skipped,
//! fragments are judged with their first fragment's ports (or port 0).
use agent::dataplane::{Dataplane, Hook, PeerMatch, PortMatch, Table};
use agent::model::ir::Direction;
use agent_common::stat;
use lab::packet::{Packet, UDP};

#[path = "common/bpf.rs"]
mod bpf;
use bpf::{allow, base_tables, count, entry, ip, load, run, run_frame, TC_ACT_OK, TC_ACT_SHOT};

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
