//! The policy dataplane's conntrack through BPF_PROG_TEST_RUN: hits, replies
//! and epoch flips, ICMP errors related to an approved flow, mid-flow pickup,
//! cached denials, both sides of a pod-to-pod flow, idle entries (misses in the
//! kernel, deleted by the agent's sweep).
use agent::dataplane::{Dataplane, Hook, PeerMatch, PortMatch, RuleEntry, Table, TableSet};
use agent::model::ir::Direction;
use agent_common::{stat, EndpointInfo};
use lab::packet::{Packet, ACK, ICMP, RST, SYN, TCP, UDP};

#[path = "common/bpf.rs"]
mod bpf;
use bpf::{
    allow, base_tables, count, deny, entry, ip, load, run, run_frame, VethPair, TC_ACT_OK,
    TC_ACT_SHOT,
};

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
    assert_eq!(veth.run_on(&mut dp, Hook::FromEndpoint, a, &syn), TC_ACT_OK);
    assert_eq!(veth.run_on(&mut dp, Hook::ToEndpoint, b, &syn), TC_ACT_OK);
    let synack = syn.reply().flags(SYN | ACK);
    assert_eq!(
        veth.run_on(&mut dp, Hook::FromEndpoint, b, &synack),
        TC_ACT_OK,
        "reply leaves B"
    );
    assert_eq!(
        veth.run_on(&mut dp, Hook::ToEndpoint, a, &synack),
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
    for time in ["first", "again"] {
        let at_a = veth.run_on(&mut dp, Hook::FromEndpoint, a, &syn81);
        let at_b = veth.run_on(&mut dp, Hook::ToEndpoint, b, &syn81);
        assert_eq!((at_a, at_b), (TC_ACT_OK, TC_ACT_SHOT), "{time}");
    }
    let events = dp.drain_events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!((events[0].ifindex, events[0].endpoint_id), (b, 2));
    assert_eq!(events[0].direction, Ingress);
    // B has no egress entries: its own new connections fail closed.
    let from_b = Packet::tcp(pb, 40002, pa, 80);
    assert_eq!(
        veth.run_on(&mut dp, Hook::FromEndpoint, b, &from_b),
        TC_ACT_SHOT
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

/// The sweep's delete: an entry idle when the sweep read it but refreshed by
/// a packet before the delete is put back as the packet left it.
#[test]
fn sweep_delete_puts_back_an_entry_refreshed_since_the_read() {
    use agent::dataplane::{delete_if_idle, monotonic_coarse_ns, Swept};
    let mut dp = load(0);
    dp.install(&base_tables()).unwrap();
    let dns = Packet::udp(ip("10.65.0.10"), 5353, ip("8.8.8.8"), 53);
    assert_eq!(run(&mut dp, Hook::FromEndpoint, &dns), TC_ACT_OK);
    let (key, live) = {
        let ct = dp.conntrack().unwrap();
        let all: Vec<_> = ct.iter().map(|r| r.unwrap()).collect();
        assert_eq!(all.len(), 1);
        all[0]
    };
    let now = monotonic_coarse_ns();
    // Live at `now` (as if a packet refreshed it after the sweep's read):
    // taken, seen live, put back unchanged.
    assert_eq!(
        delete_if_idle(dp.conntrack_map().unwrap(), &key, now).unwrap(),
        Swept::Kept
    );
    assert_eq!(dp.conntrack().unwrap().get(&key, 0).unwrap(), live);
    // Idle (last seen at boot): deleted; then there is nothing to delete.
    let mut idle = live;
    idle.last_seen_ns = 0;
    dp.conntrack().unwrap().insert(&key, &idle, 0).unwrap();
    assert_eq!(
        delete_if_idle(dp.conntrack_map().unwrap(), &key, now).unwrap(),
        Swept::Deleted
    );
    assert!(dp.conntrack().unwrap().get(&key, 0).is_err());
    assert_eq!(
        delete_if_idle(dp.conntrack_map().unwrap(), &key, now).unwrap(),
        Swept::Gone
    );
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
