//! Evaluator tests, on models built from IR types directly. Scenarios marked
//! "pol_prog" follow felix/bpf/ut/pol_prog_test.go.
use std::net::IpAddr;

use ipnet::IpNet;

use super::*;
use crate::model::ir::{
    Endpoint, IcmpMatch, Model, NetworkSet, Policy, PolicyId, PolicyKind, PortMatch, Profile,
    Protocol, Rule, StagedAction, TierDefault,
};
use crate::selector::Selector;
use crate::testkit::ir::*;

// ---------- builders ----------

fn rule(action: Action) -> Rule {
    Rule::matching_all(action)
}
fn allow() -> Rule {
    rule(Action::Allow)
}
fn deny() -> Rule {
    rule(Action::Deny)
}
fn pass() -> Rule {
    rule(Action::Pass)
}

const CLIENT: &str = "10.0.0.1";
const SERVER: &str = "10.0.0.2";
const CLIENT6: &str = "fd00::1";
const SERVER6: &str = "fd00::2";

/// A client pod and a server pod in `ns`, both dual-stack.
fn client_server() -> Vec<Endpoint> {
    vec![
        pod("ns", "client", &[CLIENT, CLIENT6]),
        pod("ns", "server", &[SERVER, SERVER6]),
    ]
}

/// The server's ingress verdict for a packet from `src` (to the server's IP of that family).
fn ingress(m: &Model, set: PolicySet, src: &str, packet: Packet) -> EndVerdict {
    let server = m.endpoints.iter().position(|e| e.name == "server").unwrap();
    let src = ip(src);
    let dst = if src.is_ipv4() {
        ip(SERVER)
    } else {
        ip(SERVER6)
    };
    evaluate_end(m, set, server, Direction::Ingress, src, dst, &packet)
}

fn server_ingress(policies: Vec<Policy>, src: &str, packet: Packet) -> EndVerdict {
    ingress(
        &model(client_server(), policies),
        PolicySet::Enforced,
        src,
        packet,
    )
}

fn action_of(policies: Vec<Policy>, src: &str, packet: Packet) -> Verdict {
    server_ingress(policies, src, packet).action
}

fn traces(v: &EndVerdict) -> Vec<String> {
    v.trace.iter().map(ToString::to_string).collect()
}

/// A packet of another protocol, without ports (pol_prog's `packetNoPorts(253, ..)`).
fn no_ports() -> Packet {
    Packet::without_ports(Protocol::from_number(253))
}

fn icmp(t: u8, c: u8) -> Packet {
    Packet::icmp(Protocol::ICMP, t, c)
}

use Verdict::{Allow, Deny};

// ---------- ordering ----------

#[test]
fn tiers_are_consulted_by_order_then_name_with_unset_order_last() {
    let m = Model {
        tiers: vec![
            tier("unset", None, TierDefault::Deny),
            tier("b-late", Some(20.0), TierDefault::Deny),
            tier("a-late", Some(20.0), TierDefault::Deny),
            tier("early", Some(5.0), TierDefault::Deny),
        ],
        ..model(client_server(), vec![])
    };
    let policies = vec![
        in_tier(gnp("in-unset", vec![allow()]), "unset", None),
        in_tier(gnp("in-b", vec![pass()]), "b-late", None),
        in_tier(gnp("in-a", vec![pass()]), "a-late", None),
        in_tier(gnp("in-early", vec![pass()]), "early", None),
    ];
    let m = Model { policies, ..m };
    let v = ingress(&m, PolicySet::Enforced, CLIENT, Packet::tcp(80));
    assert_eq!(v.action, Allow);
    assert_eq!(
        traces(&v),
        [
            "0|early|gnp:in-early|pass|0",
            "1|a-late|gnp:in-a|pass|0",
            "2|b-late|gnp:in-b|pass|0",
            "3|unset|gnp:in-unset|allow|0",
        ]
    );
}

#[test]
fn a_tier_nobody_defined_comes_after_defined_tiers_and_denies_at_its_end() {
    let policies = vec![
        in_tier(gnp("ghost", vec![]), "aaa-undefined", None),
        in_tier(gnp("admin", vec![pass()]), "kube-admin", None),
    ];
    let v = server_ingress(policies, CLIENT, Packet::tcp(80));
    assert_eq!(
        traces(&v),
        [
            "0|kube-admin|gnp:admin|pass|0",
            "1|aaa-undefined|gnp:ghost|deny|-1"
        ]
    );
}

#[test]
fn policies_are_consulted_by_order_with_unset_order_last() {
    let policies = vec![
        gnp("unset-allow", vec![allow()]),
        in_tier(gnp("second-deny", vec![deny()]), "default", Some(20.0)),
        in_tier(
            gnp("first-log", vec![rule(Action::Log)]),
            "default",
            Some(1.5),
        ),
    ];
    let v = server_ingress(policies, CLIENT, Packet::tcp(80));
    assert_eq!(v.action, Deny);
    assert_eq!(traces(&v), ["0|default|gnp:second-deny|deny|0"]);
    assert_eq!(
        v.decided_by,
        DecidedBy::PolicyRule {
            tier: "default".into(),
            policy: PolicyId {
                kind: PolicyKind::GlobalNetworkPolicy,
                namespace: None,
                name: "second-deny".into()
            },
            rule: 0
        }
    );
}

#[test]
fn equal_orders_tie_break_on_name_then_namespace_then_kind() {
    let order = Some(10.0);
    // Same name: "p//GlobalNetworkPolicy" < "p/ns/KubernetesNetworkPolicy" < "p/ns/NetworkPolicy".
    let np = in_tier(
        policy(PolicyKind::NetworkPolicy, Some("ns"), "p"),
        "default",
        order,
    );
    let knp = in_tier(
        policy(PolicyKind::KubernetesNetworkPolicy, Some("ns"), "p"),
        "default",
        order,
    );
    let g = in_tier(gnp("p", vec![]), "default", order);
    let b = in_tier(gnp("b", vec![]), "default", order);
    let m = model(client_server(), vec![np, knp, g, b]);
    let prepared = PreparedSet::new(&m, PolicySet::Enforced);
    let default_tier = prepared.tiers.iter().find(|t| t.name == "default").unwrap();
    let ids: Vec<String> = default_tier
        .policies
        .iter()
        .map(|p| policy_flow_log_name(&p.id))
        .collect();
    assert_eq!(ids, ["gnp:b", "gnp:p", "knp:ns/p", "np:ns/p"]);
}

#[test]
fn tie_break_uses_name_before_namespace() {
    // "a/zz/NetworkPolicy" < "b//GlobalNetworkPolicy": the name decides first.
    let np = in_tier(
        with_ingress(
            policy(PolicyKind::NetworkPolicy, Some("zz"), "a"),
            vec![deny()],
        ),
        "default",
        Some(1.0),
    );
    let g = in_tier(gnp("b", vec![allow()]), "default", Some(1.0));
    assert_eq!(action_of(vec![g, np], CLIENT, Packet::tcp(80)), Deny);
}

fn with_ingress(mut p: Policy, ingress: Vec<Rule>) -> Policy {
    p.ingress = ingress;
    p
}

// ---------- actions and flow control ----------

#[test]
fn pass_jumps_to_the_next_tier_skipping_the_rest_of_its_tier() {
    // pol_prog "pass to allow" / "pass to deny".
    let policies = |next: Rule| {
        vec![
            in_tier(
                gnp("pass-through", vec![pass(), deny()]),
                "kube-admin",
                Some(1.0),
            ),
            in_tier(gnp("later-in-tier", vec![deny()]), "kube-admin", Some(2.0)),
            gnp("next", vec![next]),
        ]
    };
    let v = server_ingress(policies(allow()), CLIENT, Packet::tcp(80));
    assert_eq!(v.action, Allow);
    assert_eq!(
        traces(&v),
        [
            "0|kube-admin|gnp:pass-through|pass|0",
            "1|default|gnp:next|allow|0"
        ]
    );
    assert_eq!(action_of(policies(deny()), CLIENT, no_ports()), Deny);
}

#[test]
fn pass_to_nowhere_ends_in_profiles_and_no_profile_denies() {
    // pol_prog "pass to nowhere": with no profile the endpoint denies.
    let mut m = model(client_server(), vec![gnp("pass", vec![pass()])]);
    std::sync::Arc::make_mut(&mut m.endpoints[1])
        .profiles
        .clear();
    let v = ingress(&m, PolicySet::Enforced, CLIENT, icmp(8, 0));
    assert_eq!(v.action, Deny);
    assert_eq!(v.decided_by, DecidedBy::NoMatch);
    assert_eq!(
        traces(&v),
        [
            "0|default|gnp:pass|pass|0",
            "1|__PROFILE__|pro:__NO_MATCH__|deny|0"
        ]
    );
}

#[test]
fn a_tier_with_no_decision_ends_with_deny_at_rule_minus_one() {
    let selective = Rule {
        protocol: Some(Protocol::UDP),
        ..allow()
    };
    let v = server_ingress(
        vec![gnp("first", vec![]), gnp("last", vec![selective])],
        CLIENT,
        Packet::tcp(80),
    );
    assert_eq!(v.action, Deny);
    // Attributed to the tier's last applicable policy.
    assert_eq!(traces(&v), ["0|default|gnp:last|deny|-1"]);
    assert_eq!(
        v.decided_by,
        DecidedBy::EndOfTier {
            tier: "default".into(),
            policy: gnp("last", vec![]).id
        }
    );
}

#[test]
fn a_tier_with_default_pass_goes_on_to_the_next_tier() {
    let v = server_ingress(
        vec![in_tier(gnp("admin", vec![]), "kube-admin", None)],
        CLIENT,
        Packet::tcp(80),
    );
    assert_eq!(v.action, Allow);
    assert_eq!(
        traces(&v),
        [
            "0|kube-admin|gnp:admin|pass|-1",
            "1|__PROFILE__|pro:kns.ns|allow|0"
        ]
    );
}

#[test]
fn a_tier_with_no_applicable_policy_has_no_effect() {
    // pol_prog "empty tier has no impact": the deny policy selects nobody here.
    let nobody = selecting(gnp("nobody", vec![deny()]), Selector::equals("app", "none"));
    let egress_rule = egress_only(gnp("egress-deny", vec![]), vec![deny()]);
    let v = server_ingress(vec![nobody, egress_rule], CLIENT, Packet::tcp(80));
    assert_eq!(v.action, Allow);
    assert_eq!(traces(&v), ["0|__PROFILE__|pro:kns.ns|allow|0"]);
}

#[test]
fn log_rules_log_and_continue() {
    let v = server_ingress(
        vec![gnp("logged", vec![rule(Action::Log), deny()])],
        CLIENT,
        Packet::tcp(80),
    );
    assert_eq!(v.action, Deny);
    assert_eq!(traces(&v), ["0|default|gnp:logged|deny|1"]);
}

#[test]
fn unreachable_tier_after_an_allow_is_not_consulted() {
    // pol_prog "unreachable tier".
    let policies = vec![
        in_tier(gnp("allow-all", vec![allow()]), "kube-admin", None),
        gnp("deny-all", vec![deny()]),
    ];
    let v = server_ingress(policies, CLIENT, no_ports());
    assert_eq!(v.action, Allow);
    assert_eq!(traces(&v), ["0|kube-admin|gnp:allow-all|allow|0"]);
}

// ---------- profiles ----------

#[test]
fn a_pod_no_policy_selects_is_allowed_by_its_namespace_profile() {
    let v = server_ingress(vec![], CLIENT, Packet::tcp(80));
    assert_eq!(v.action, Allow);
    assert_eq!(
        v.decided_by,
        DecidedBy::ProfileRule {
            profile: "kns.ns".into(),
            rule: 0
        }
    );
    assert_eq!(traces(&v), ["0|__PROFILE__|pro:kns.ns|allow|0"]);
}

#[test]
fn profiles_apply_in_order_and_a_profile_pass_counts_as_deny() {
    let mut m = model(client_server(), vec![]);
    m.profiles = vec![
        Profile {
            name: "first".into(),
            ingress: vec![
                Rule {
                    protocol: Some(Protocol::UDP),
                    ..pass()
                },
                Rule {
                    protocol: Some(Protocol::ICMP),
                    ..deny()
                },
            ],
            egress: vec![],
            labels_to_apply: Default::default(),
        },
        Profile {
            name: "kns.ns".into(),
            ingress: vec![allow()],
            egress: vec![allow()],
            labels_to_apply: Default::default(),
        },
    ];
    std::sync::Arc::make_mut(&mut m.endpoints[1]).profiles = vec!["first".into(), "kns.ns".into()];
    let udp = ingress(&m, PolicySet::Enforced, CLIENT, Packet::udp(53));
    assert_eq!(udp.action, Deny);
    assert_eq!(traces(&udp), ["0|__PROFILE__|pro:first|pass|0"]);
    let icmp_v = ingress(&m, PolicySet::Enforced, CLIENT, icmp(8, 0));
    assert_eq!(icmp_v.action, Deny);
    assert_eq!(traces(&icmp_v), ["0|__PROFILE__|pro:first|deny|1"]);
    let tcp = ingress(&m, PolicySet::Enforced, CLIENT, Packet::tcp(80));
    assert_eq!(tcp.action, Allow);
    assert_eq!(traces(&tcp), ["0|__PROFILE__|pro:kns.ns|allow|0"]);
}

#[test]
fn a_profile_with_no_matching_rule_or_no_profile_denies() {
    let mut m = model(client_server(), vec![]);
    m.profiles = vec![Profile {
        name: "empty".into(),
        ingress: vec![],
        egress: vec![],
        labels_to_apply: Default::default(),
    }];
    std::sync::Arc::make_mut(&mut m.endpoints[1]).profiles = vec!["empty".into()];
    let v = ingress(&m, PolicySet::Enforced, CLIENT, Packet::tcp(80));
    assert_eq!((v.action, &v.decided_by), (Deny, &DecidedBy::NoMatch));
    std::sync::Arc::make_mut(&mut m.endpoints[1])
        .profiles
        .clear();
    let v = ingress(&m, PolicySet::Enforced, CLIENT, Packet::tcp(80));
    assert_eq!((v.action, &v.decided_by), (Deny, &DecidedBy::NoMatch));
}

// ---------- flows: both ends ----------

#[test]
fn a_flow_needs_the_source_egress_and_the_destination_ingress_to_allow() {
    let client_egress_deny = selecting(
        egress_only(gnp("client-egress", vec![]), vec![deny()]),
        Selector::equals("app", "client"),
    );
    let m = model(client_server(), vec![client_egress_deny]);
    let flow = Flow {
        src: ip(CLIENT),
        dst: ip(SERVER),
        packet: Packet::tcp(80),
    };
    let v = evaluate_flow(&m, &flow);
    assert_eq!(v.source_endpoint.as_deref(), Some("ns/client"));
    assert_eq!(v.destination_endpoint.as_deref(), Some("ns/server"));
    assert_eq!(v.enforced.action, Deny);
    assert_eq!(v.enforced.egress.as_ref().unwrap().action, Deny);
    assert_eq!(v.enforced.ingress.as_ref().unwrap().action, Allow);
    // The reverse direction: the client's ingress and the server's egress both allow.
    let back = evaluate_flow(
        &m,
        &Flow {
            src: ip(SERVER),
            dst: ip(CLIENT),
            packet: Packet::tcp(80),
        },
    );
    assert_eq!(back.enforced.action, Allow);
}

#[test]
fn an_end_that_is_no_endpoint_is_not_policed() {
    let deny_all = gnp("deny-all", vec![deny()]);
    let m = model(client_server(), vec![deny_all]);
    let outbound = evaluate_flow(
        &m,
        &Flow {
            src: ip(SERVER),
            dst: ip("192.0.2.9"),
            packet: Packet::tcp(443),
        },
    );
    assert_eq!(outbound.enforced.action, Allow);
    assert!(outbound.enforced.ingress.is_none());
    assert_eq!(outbound.destination_endpoint, None);
    let inbound = evaluate_flow(
        &m,
        &Flow {
            src: ip("192.0.2.9"),
            dst: ip(SERVER),
            packet: Packet::tcp(443),
        },
    );
    assert_eq!(inbound.enforced.action, Deny);
    assert!(inbound.enforced.egress.is_none());
}

#[test]
fn flow_verdicts_serialize_with_lowercase_actions_and_trace_strings() {
    let m = model(client_server(), vec![gnp("deny-all", vec![deny()])]);
    let v = evaluate_flow(
        &m,
        &Flow {
            src: ip(CLIENT),
            dst: ip(SERVER),
            packet: Packet::tcp(80),
        },
    );
    let json = serde_json::to_value(&v).unwrap();
    assert_eq!(json["enforced"]["action"], "deny");
    assert_eq!(json["pending"]["action"], "deny");
    assert_eq!(json["enforced"]["egress"]["action"], "allow");
    assert_eq!(
        json["enforced"]["ingress"]["trace"][0],
        "0|default|gnp:deny-all|deny|0"
    );
    assert_eq!(
        json["enforced"]["ingress"]["decided_by"]["by"],
        "policy_rule"
    );
}

// ---------- rule matching ----------

#[test]
fn ip_version_rules_do_not_exist_for_the_other_family() {
    let v6_only = Rule {
        ip_version: Some(6),
        ..allow()
    };
    let p = || vec![gnp("v6", vec![v6_only.clone()])];
    assert_eq!(action_of(p(), CLIENT6, Packet::tcp(80)), Allow);
    let v4 = server_ingress(p(), CLIENT, Packet::tcp(80));
    assert_eq!(v4.action, Deny);
    assert_eq!(traces(&v4), ["0|default|gnp:v6|deny|-1"]);
}

#[test]
fn protocol_and_not_protocol() {
    // pol_prog "allow tcp" / "allow !tcp" / "allow udp".
    let tcp = || {
        vec![gnp(
            "tcp",
            vec![Rule {
                protocol: Some(Protocol::TCP),
                ..allow()
            }],
        )]
    };
    let not_tcp = || {
        vec![gnp(
            "not-tcp",
            vec![Rule {
                not_protocol: Some(Protocol::TCP),
                ..allow()
            }],
        )]
    };
    for src in [CLIENT, CLIENT6] {
        assert_eq!(action_of(tcp(), src, Packet::tcp(80)), Allow);
        assert_eq!(action_of(tcp(), src, Packet::udp(80)), Deny);
        assert_eq!(action_of(tcp(), src, icmp(8, 0)), Deny);
        assert_eq!(action_of(tcp(), src, no_ports()), Deny);
        assert_eq!(action_of(not_tcp(), src, Packet::tcp(80)), Deny);
        assert_eq!(action_of(not_tcp(), src, Packet::udp(80)), Allow);
        assert_eq!(action_of(not_tcp(), src, no_ports()), Allow);
    }
}

#[test]
fn icmp_type_and_code() {
    let with = |icmp_match: IcmpMatch, negate: bool| {
        let mut r = Rule {
            protocol: Some(Protocol::ICMP),
            ..allow()
        };
        if negate {
            r.not_icmp = Some(icmp_match);
        } else {
            r.icmp = Some(icmp_match);
        }
        vec![gnp("icmp", vec![r])]
    };
    let echo = IcmpMatch {
        icmp_type: 8,
        code: None,
    };
    let unreachable_port = IcmpMatch {
        icmp_type: 3,
        code: Some(3),
    };
    assert_eq!(action_of(with(echo, false), CLIENT, icmp(8, 0)), Allow);
    assert_eq!(action_of(with(echo, false), CLIENT, icmp(8, 5)), Allow);
    assert_eq!(action_of(with(echo, false), CLIENT, icmp(0, 0)), Deny);
    assert_eq!(action_of(with(echo, false), CLIENT, Packet::tcp(8)), Deny);
    assert_eq!(
        action_of(with(unreachable_port, false), CLIENT, icmp(3, 3)),
        Allow
    );
    assert_eq!(
        action_of(with(unreachable_port, false), CLIENT, icmp(3, 1)),
        Deny
    );
    assert_eq!(action_of(with(echo, true), CLIENT, icmp(8, 0)), Deny);
    assert_eq!(action_of(with(echo, true), CLIENT, icmp(0, 0)), Allow);
    assert_eq!(
        action_of(with(unreachable_port, true), CLIENT, icmp(3, 1)),
        Allow
    );
    // ICMP rules do not match ICMPv6.
    let v6_echo = Packet::icmp(Protocol::ICMPV6, 8, 0);
    assert_eq!(action_of(with(echo, false), CLIENT6, v6_echo), Deny);
}

#[test]
fn source_nets_and_not_nets() {
    // pol_prog "allow from 10.0.0.0/8", "allow from CIDRs", "allow from !CIDRs".
    let from = |nets: &[&str], negate: bool| {
        let nets: Vec<IpNet> = nets.iter().map(|s| net(s)).collect();
        let mut r = allow();
        if negate {
            r.source.not_nets = nets;
        } else {
            r.source.nets = nets;
        }
        vec![gnp("nets", vec![r])]
    };
    assert_eq!(
        action_of(from(&["10.0.0.0/8"], false), "10.0.0.1", no_ports()),
        Allow
    );
    assert_eq!(
        action_of(from(&["10.0.0.0/8"], false), "11.0.0.1", icmp(8, 0)),
        Deny
    );
    let cidrs = ["102.0.0.0/8", "10.0.0.1/32", "11.0.0.1/32"];
    assert_eq!(
        action_of(from(&cidrs, false), "11.0.0.1", icmp(8, 0)),
        Allow
    );
    assert_eq!(action_of(from(&cidrs, false), "10.0.0.2", no_ports()), Deny);
    assert_eq!(action_of(from(&cidrs, true), "10.0.0.2", no_ports()), Allow);
    assert_eq!(
        action_of(from(&cidrs, true), "10.0.0.1", Packet::udp(80)),
        Deny
    );
    // IPv4 notNets do not exclude IPv6 traffic; IPv4 nets never match it.
    assert_eq!(
        action_of(from(&cidrs, true), "ff02::1", Packet::tcp(80)),
        Allow
    );
    assert_eq!(
        action_of(from(&cidrs, false), "ff02::1", Packet::tcp(80)),
        Deny
    );
    let v6 = ["ffe2:0:1111::1/64", "ffe2::f/128"];
    assert_eq!(
        action_of(from(&v6, false), "ffe2:0:1111::9", Packet::tcp(80)),
        Allow
    );
    assert_eq!(
        action_of(from(&v6, false), "ffe2:0:1112::1", Packet::tcp(80)),
        Deny
    );
}

#[test]
fn destination_nets_and_not_nets() {
    // pol_prog "allow to 10.0.0.0/8" / "allow to !10.0.0.0/8", on the client's egress.
    let to = |negate: bool| {
        let mut r = allow();
        if negate {
            r.destination.not_nets = vec![net("10.0.0.0/8")];
        } else {
            r.destination.nets = vec![net("10.0.0.0/8")];
        }
        model(
            client_server(),
            vec![egress_only(gnp("to", vec![]), vec![r])],
        )
    };
    let egress = |m: &Model, dst: &str| {
        evaluate_end(
            m,
            PolicySet::Enforced,
            0,
            Direction::Egress,
            ip(dst),
            ip(CLIENT),
            &Packet::udp(1024),
        )
        .action
    };
    assert_eq!(egress(&to(false), "10.0.0.2"), Allow);
    assert_eq!(egress(&to(false), "123.0.0.1"), Deny);
    assert_eq!(egress(&to(true), "123.0.0.1"), Allow);
    assert_eq!(egress(&to(true), "10.0.0.2"), Deny);
}

fn db_network_set() -> NetworkSet {
    NetworkSet {
        namespace: None,
        name: "external-dbs".into(),
        labels: labels(&[("role", "db")]),
        nets: vec![net("198.51.100.0/24")],
    }
}

/// The server, with a client labelled `role=db`, a network set labelled `role=db`.
fn selector_model(rule_for: impl Fn(Selector) -> Rule) -> Model {
    let mut m = model(
        client_server(),
        vec![gnp("sel", vec![rule_for(Selector::equals("role", "db"))])],
    );
    m.endpoints
        .push(pod("ns", "db-client", &["10.0.0.3"]).into());
    std::sync::Arc::make_mut(&mut m.endpoints[2])
        .labels
        .insert("role".into(), "db".into());
    m.network_sets.push(db_network_set());
    m
}

#[test]
fn a_selector_matches_ips_of_matching_endpoints_and_network_sets_only() {
    let m = selector_model(|s| {
        let mut r = allow();
        r.source.selector = Some(s);
        r
    });
    let at = |src| ingress(&m, PolicySet::Enforced, src, Packet::tcp(80)).action;
    assert_eq!(at("10.0.0.3"), Allow, "endpoint with role=db");
    assert_eq!(at("198.51.100.7"), Allow, "inside the role=db network set");
    assert_eq!(at(CLIENT), Deny, "endpoint without the label");
    assert_eq!(at("192.0.2.1"), Deny, "outside traffic matches no selector");
}

#[test]
fn a_not_selector_also_matches_traffic_from_outside() {
    let m = selector_model(|s| {
        let mut r = allow();
        r.source.not_selector = Some(s);
        r
    });
    let at = |src| ingress(&m, PolicySet::Enforced, src, Packet::tcp(80)).action;
    assert_eq!(at("10.0.0.3"), Deny);
    assert_eq!(at("198.51.100.7"), Deny);
    assert_eq!(at(CLIENT), Allow);
    assert_eq!(at("192.0.2.1"), Allow);
}

#[test]
fn a_negated_selector_matches_only_known_endpoints_and_sets() {
    // `selector: !has(role)` vs `notSelector: has(role)` (SEMANTICS, Rules).
    let m = selector_model(|_| {
        let mut r = allow();
        r.source.selector = Some(Selector::has("role").not());
        r
    });
    let at = |src| ingress(&m, PolicySet::Enforced, src, Packet::tcp(80)).action;
    assert_eq!(at(CLIENT), Allow);
    assert_eq!(at("10.0.0.3"), Deny);
    assert_eq!(at("192.0.2.1"), Deny);
}

/// The server has named port `http` = TCP 8080.
fn named_port_model(policies: Vec<Policy>) -> Model {
    let mut m = model(client_server(), policies);
    std::sync::Arc::make_mut(&mut m.endpoints[1])
        .named_ports
        .push(named_port("http", Protocol::TCP, 8080));
    m
}

#[test]
fn named_destination_ports_resolve_against_the_destination_endpoint() {
    let mut r = allow();
    r.destination.ports = vec![PortMatch::Named("http".into())];
    let m = named_port_model(vec![gnp("http", vec![r.clone()])]);
    let at = |p| ingress(&m, PolicySet::Enforced, CLIENT, p).action;
    assert_eq!(at(Packet::tcp(8080)), Allow);
    assert_eq!(at(Packet::tcp(8081)), Deny);
    assert_eq!(at(Packet::udp(8080)), Deny, "named port is TCP only");
    // On the client's egress the destination is the server: same resolution.
    let m = named_port_model(vec![selecting(
        egress_only(gnp("to-http", vec![]), vec![r]),
        Selector::equals("app", "client"),
    )]);
    let egress = |dst: &str| {
        evaluate_end(
            &m,
            PolicySet::Enforced,
            0,
            Direction::Egress,
            ip(dst),
            ip(CLIENT),
            &Packet::tcp(8080),
        )
        .action
    };
    assert_eq!(egress(SERVER), Allow);
    assert_eq!(egress("192.0.2.1"), Deny, "nobody there defines http");
}

#[test]
fn a_named_port_nobody_defines_matches_nothing_and_not_ports_excludes_it() {
    let mut undefined = allow();
    undefined.destination.ports = vec![PortMatch::Named("grpc".into())];
    let mut not_http = allow();
    not_http.destination.not_ports = vec![PortMatch::Named("http".into())];
    let m = named_port_model(vec![gnp("grpc", vec![undefined])]);
    assert_eq!(
        ingress(&m, PolicySet::Enforced, CLIENT, Packet::tcp(8080)).action,
        Deny
    );
    let m = named_port_model(vec![gnp("not-http", vec![not_http])]);
    assert_eq!(
        ingress(&m, PolicySet::Enforced, CLIENT, Packet::tcp(8080)).action,
        Deny
    );
    assert_eq!(
        ingress(&m, PolicySet::Enforced, CLIENT, Packet::tcp(80)).action,
        Allow
    );
}

#[test]
fn named_source_ports_resolve_against_the_source_endpoint() {
    let mut r = allow();
    r.source.ports = vec![PortMatch::Named("http".into())];
    // The server's egress reply-like packet from its http port: the source is the server.
    let m = named_port_model(vec![selecting(
        egress_only(gnp("from-http", vec![]), vec![r]),
        Selector::equals("app", "server"),
    )]);
    let egress = |src_port| {
        evaluate_end(
            &m,
            PolicySet::Enforced,
            1,
            Direction::Egress,
            ip(CLIENT),
            ip(SERVER),
            &Packet::with_ports(Protocol::TCP, src_port, 5555),
        )
        .action
    };
    assert_eq!(egress(8080), Allow);
    assert_eq!(egress(8081), Deny);
}

#[test]
fn destination_port_ranges_and_not_ports() {
    // pol_prog "allow to tcp:ranges" and "allow to tcp:!ranges".
    let ranges = || vec![range(80, 81), range(90, 90)];
    let to = |negate: bool| {
        let mut r = Rule {
            protocol: Some(Protocol::TCP),
            ..allow()
        };
        if negate {
            r.destination.not_ports = ranges();
        } else {
            r.destination.ports = ranges();
        }
        vec![gnp("ports", vec![r])]
    };
    for port in [80, 81, 90] {
        assert_eq!(
            action_of(to(false), CLIENT, Packet::tcp(port)),
            Allow,
            "{port}"
        );
        assert_eq!(
            action_of(to(false), CLIENT6, Packet::tcp(port)),
            Allow,
            "{port}"
        );
        assert_eq!(
            action_of(to(true), CLIENT, Packet::tcp(port)),
            Deny,
            "{port}"
        );
    }
    for port in [79, 82, 89, 91] {
        assert_eq!(
            action_of(to(false), CLIENT, Packet::tcp(port)),
            Deny,
            "{port}"
        );
        assert_eq!(
            action_of(to(true), CLIENT, Packet::tcp(port)),
            Allow,
            "{port}"
        );
    }
    assert_eq!(action_of(to(false), CLIENT, Packet::udp(80)), Deny);
    assert_eq!(action_of(to(false), CLIENT, no_ports()), Deny);
    let mut wide = allow();
    wide.destination.ports = vec![range(80, 65535)];
    assert_eq!(
        action_of(
            vec![gnp("wide", vec![wide.clone()])],
            CLIENT,
            Packet::tcp(65535)
        ),
        Allow
    );
    assert_eq!(
        action_of(vec![gnp("wide", vec![wide])], CLIENT, Packet::tcp(79)),
        Deny
    );
}

#[test]
fn source_port_ranges() {
    // pol_prog "allow from tcp:80-81".
    let mut r = Rule {
        protocol: Some(Protocol::TCP),
        ..allow()
    };
    r.source.ports = vec![range(80, 81)];
    let p = || vec![gnp("src-ports", vec![r.clone()])];
    let from = |port| Packet::with_ports(Protocol::TCP, port, 31245);
    assert_eq!(action_of(p(), CLIENT, from(80)), Allow);
    assert_eq!(action_of(p(), CLIENT, from(81)), Allow);
    assert_eq!(action_of(p(), CLIENT6, from(80)), Allow);
    assert_eq!(action_of(p(), CLIENT, from(79)), Deny);
    assert_eq!(action_of(p(), CLIENT, from(82)), Deny);
    assert_eq!(
        action_of(p(), CLIENT, Packet::with_ports(Protocol::UDP, 80, 1)),
        Deny
    );
}

// ---------- host endpoints ----------

fn host_model(policies: Vec<Policy>) -> Model {
    model(
        vec![
            host("node1", &["192.168.0.1"]),
            pod("ns", "web", &["10.0.0.5"]),
        ],
        policies,
    )
}

fn host_end(m: &Model, direction: Direction, packet: Packet) -> EndVerdict {
    evaluate_end(
        m,
        PolicySet::Enforced,
        0,
        direction,
        ip("192.168.0.99"),
        ip("192.168.0.1"),
        &packet,
    )
}

#[test]
fn a_host_endpoint_without_policy_or_profile_denies_except_failsafes() {
    let m = host_model(vec![]);
    let v = host_end(&m, Direction::Ingress, Packet::tcp(80));
    assert_eq!((v.action, &v.decided_by), (Deny, &DecidedBy::NoMatch));
    assert_eq!(traces(&v), ["0|__PROFILE__|pro:__NO_MATCH__|deny|0"]);
    let ssh = host_end(&m, Direction::Ingress, Packet::tcp(22));
    assert_eq!(ssh.action, Allow);
    assert_eq!(
        ssh.decided_by,
        DecidedBy::Failsafe {
            protocol: Protocol::TCP,
            port: 22
        }
    );
    assert!(ssh.trace.is_empty());
}

#[test]
fn failsafe_ssh_survives_a_deny_all_policy_on_the_host() {
    let deny_all = Policy {
        egress_type: true,
        egress: vec![deny()],
        ..selecting(gnp("deny-all", vec![deny()]), Selector::has("host"))
    };
    let m = host_model(vec![deny_all]);
    assert_eq!(
        host_end(&m, Direction::Ingress, Packet::tcp(22)).action,
        Allow
    );
    assert_eq!(
        host_end(&m, Direction::Ingress, Packet::tcp(23)).action,
        Deny
    );
    // Inbound and outbound lists differ: DNS out is failsafe, DNS in is not; SSH out is not.
    assert_eq!(
        host_end(&m, Direction::Egress, Packet::udp(53)).action,
        Allow
    );
    assert_eq!(
        host_end(&m, Direction::Ingress, Packet::udp(53)).action,
        Deny
    );
    assert_eq!(
        host_end(&m, Direction::Egress, Packet::tcp(22)).action,
        Deny
    );
    // Failsafes are for host endpoints only.
    let web = evaluate_end(
        &m,
        PolicySet::Enforced,
        1,
        Direction::Ingress,
        ip("192.168.0.99"),
        ip("10.0.0.5"),
        &Packet::tcp(22),
    );
    assert_eq!(web.action, Allow, "deny-all selects only the host");
}

#[test]
fn a_failsafe_with_a_net_only_covers_that_net() {
    let mut m = host_model(vec![]);
    m.failsafes.inbound = vec![failsafe(Protocol::TCP, 22, Some(net("192.168.0.0/24")))];
    assert_eq!(
        host_end(&m, Direction::Ingress, Packet::tcp(22)).action,
        Allow
    );
    let far = evaluate_end(
        &m,
        PolicySet::Enforced,
        0,
        Direction::Ingress,
        ip("203.0.113.1"),
        ip("192.168.0.1"),
        &Packet::tcp(22),
    );
    assert_eq!(far.action, Deny);
}

#[test]
fn flows_resolve_host_endpoint_ips() {
    let m = host_model(vec![]);
    let v = evaluate_flow(
        &m,
        &Flow {
            src: ip("10.0.0.5"),
            dst: ip("192.168.0.1"),
            packet: Packet::tcp(80),
        },
    );
    assert_eq!(v.destination_endpoint.as_deref(), Some("node1"));
    assert_eq!(v.enforced.action, Deny);
}

/// A host-endpoint policy on node1 in a phase: untracked or pre-DNAT.
fn host_phase_policy(name: &str, untracked: bool, ingress: Vec<Rule>, egress: Vec<Rule>) -> Policy {
    Policy {
        do_not_track: untracked,
        pre_dnat: !untracked,
        apply_on_forward: true,
        egress_type: !egress.is_empty(),
        egress,
        ..selecting(gnp(name, ingress), Selector::has("host"))
    }
}

fn to_host_port(port: u16) -> Rule {
    let mut r = allow();
    r.destination.ports = vec![range(port, port)];
    r
}

#[test]
fn host_pre_dnat_allow_is_final_and_no_decision_falls_through_to_normal_policy() {
    let normal_deny = selecting(gnp("normal-deny", vec![deny()]), Selector::has("host"));
    let pre_dnat = host_phase_policy("pre-dnat", false, vec![to_host_port(8443)], vec![]);
    let m = host_model(vec![normal_deny, pre_dnat]);
    let allowed = host_end(&m, Direction::Ingress, Packet::tcp(8443));
    assert_eq!(allowed.action, Allow);
    assert_eq!(traces(&allowed), ["0|default|gnp:pre-dnat|allow|0"]);
    // No pre-DNAT decision, no end-of-tier deny there: normal policy decides.
    let denied = host_end(&m, Direction::Ingress, Packet::tcp(8080));
    assert_eq!(denied.action, Deny);
    assert_eq!(traces(&denied), ["0|default|gnp:normal-deny|deny|0"]);
    let ev = Evaluator::new(&m);
    let phases: Vec<Phase> = ev
        .applicable_policies(PolicySet::Enforced, 0, Direction::Ingress)
        .iter()
        .map(|t| t.phase)
        .collect();
    assert_eq!(phases, [Phase::PreDnat, Phase::Normal]);
}

#[test]
fn host_untracked_policy_decides_before_everything_but_failsafes() {
    let normal_allow = Policy {
        egress_type: true,
        egress: vec![allow()],
        ..selecting(gnp("normal-allow", vec![allow()]), Selector::has("host"))
    };
    let untracked = host_phase_policy("untracked", true, vec![deny()], vec![to_host_port(9999)]);
    let m = host_model(vec![normal_allow, untracked]);
    let v = host_end(&m, Direction::Ingress, Packet::tcp(80));
    assert_eq!(v.action, Deny);
    assert_eq!(traces(&v), ["0|default|gnp:untracked|deny|0"]);
    assert_eq!(
        host_end(&m, Direction::Ingress, Packet::tcp(22)).action,
        Allow,
        "failsafe first"
    );
    let out = host_end(&m, Direction::Egress, Packet::tcp(80));
    assert_eq!(traces(&out), ["0|default|gnp:normal-allow|allow|0"]);
}

#[test]
fn untracked_and_pre_dnat_policies_do_not_apply_to_workloads() {
    let mut pre_dnat = host_phase_policy("pre-dnat", false, vec![deny()], vec![]);
    pre_dnat.selector = Selector::all();
    let m = host_model(vec![pre_dnat]);
    let web = evaluate_end(
        &m,
        PolicySet::Enforced,
        1,
        Direction::Ingress,
        ip("192.168.0.99"),
        ip("10.0.0.5"),
        &Packet::tcp(80),
    );
    assert_eq!(web.action, Allow);
    assert_eq!(traces(&web), ["0|__PROFILE__|pro:kns.ns|allow|0"]);
}

// ---------- staged policies ----------

/// The server with an enforced `gate` policy that allows, and a staged namesake.
fn staged_model(staged_action: Option<StagedAction>, staged_rules: Vec<Rule>) -> Model {
    let enforced = gnp("gate", vec![allow()]);
    let staged_gate = staged(gnp("gate", staged_rules), staged_action);
    model(client_server(), vec![enforced, staged_gate])
}

fn both(m: &Model) -> (EndVerdict, EndVerdict) {
    (
        ingress(m, PolicySet::Enforced, CLIENT, Packet::tcp(80)),
        ingress(m, PolicySet::Pending, CLIENT, Packet::tcp(80)),
    )
}

#[test]
fn staged_set_replaces_its_enforced_namesake_in_pending_only() {
    for action in [None, Some(StagedAction::Set), Some(StagedAction::Learn)] {
        let (enforced, pending) = both(&staged_model(action, vec![deny()]));
        assert_eq!(enforced.action, Allow, "{action:?}");
        assert_eq!(traces(&enforced), ["0|default|gnp:gate|allow|0"]);
        assert_eq!(pending.action, Deny, "{action:?}");
        // The staged kind code shows which staged policy decided.
        assert_eq!(traces(&pending), ["0|default|sgnp:gate|deny|0"]);
    }
}

#[test]
fn staged_set_without_a_namesake_is_added_in_pending() {
    let m = model(
        client_server(),
        vec![staged(
            policy(PolicyKind::NetworkPolicy, Some("ns"), "lockdown"),
            None,
        )],
    );
    let (enforced, pending) = both(&m);
    assert_eq!(enforced.action, Allow);
    assert_eq!(pending.action, Deny);
    assert_eq!(traces(&pending), ["0|default|snp:ns/lockdown|deny|-1"]);
}

#[test]
fn staged_delete_removes_the_enforced_namesake_in_pending() {
    let mut m = staged_model(Some(StagedAction::Delete), vec![]);
    m.policies[0].ingress = vec![deny()];
    let (enforced, pending) = both(&m);
    assert_eq!(enforced.action, Deny);
    assert_eq!(pending.action, Allow);
    assert_eq!(traces(&pending), ["0|__PROFILE__|pro:kns.ns|allow|0"]);
}

#[test]
fn staged_ignore_changes_nothing() {
    let (enforced, pending) = both(&staged_model(Some(StagedAction::Ignore), vec![deny()]));
    assert_eq!(enforced, pending);
    assert_eq!(pending.action, Allow);
}

#[test]
fn a_promoted_staged_policy_only_replaces_the_same_kind_and_namespace() {
    // A StagedNetworkPolicy `gate` in ns promotes to NetworkPolicy ns/gate, not GlobalNetworkPolicy gate.
    let enforced = gnp("gate", vec![allow()]);
    let staged_np = in_tier(
        staged(
            with_ingress(
                policy(PolicyKind::NetworkPolicy, Some("ns"), "gate"),
                vec![deny()],
            ),
            None,
        ),
        "default",
        Some(1.0),
    );
    let m = model(client_server(), vec![enforced, staged_np]);
    let (_, pending) = both(&m);
    assert_eq!(traces(&pending), ["0|default|snp:ns/gate|deny|0"]);
    let prepared = PreparedSet::new(&m, PolicySet::Pending);
    assert_eq!(
        prepared
            .tiers
            .iter()
            .map(|t| t.policies.len())
            .sum::<usize>(),
        2
    );
}

#[test]
fn a_promoted_staged_policy_takes_its_own_tier_and_order() {
    let enforced = in_tier(gnp("gate", vec![deny()]), "default", Some(1.0));
    let staged_gate = in_tier(staged(gnp("gate", vec![allow()]), None), "kube-admin", None);
    let m = model(client_server(), vec![enforced, staged_gate]);
    let (enforced, pending) = both(&m);
    assert_eq!(enforced.action, Deny);
    assert_eq!(traces(&pending), ["0|kube-admin|sgnp:gate|allow|0"]);
}

// ---------- applicable policies ----------

#[test]
fn applicable_policies_lists_tiers_and_policies_that_select_the_endpoint() {
    let policies = vec![
        selecting(
            gnp("server-only", vec![]),
            Selector::equals("app", "server"),
        ),
        selecting(
            gnp("client-only", vec![]),
            Selector::equals("app", "client"),
        ),
        in_tier(gnp("admin", vec![]), "kube-admin", Some(1.0)),
        egress_only(gnp("egress", vec![]), vec![]),
        staged(gnp("staged", vec![]), None),
    ];
    let m = model(client_server(), policies);
    let ev = Evaluator::new(&m);
    let names = |set, dir| -> Vec<(String, Vec<String>)> {
        ev.applicable_policies(set, 1, dir)
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    t.policies
                        .iter()
                        .map(|p| policy_flow_log_name(&p.id))
                        .collect(),
                )
            })
            .collect()
    };
    let tiers = |v: Vec<(&str, Vec<&str>)>| -> Vec<(String, Vec<String>)> {
        v.into_iter()
            .map(|(t, ps)| (t.to_string(), ps.into_iter().map(String::from).collect()))
            .collect()
    };
    assert_eq!(
        names(PolicySet::Enforced, Direction::Ingress),
        tiers(vec![
            ("kube-admin", vec!["gnp:admin"]),
            ("default", vec!["gnp:server-only"])
        ])
    );
    assert_eq!(
        names(PolicySet::Pending, Direction::Ingress),
        tiers(vec![
            ("kube-admin", vec!["gnp:admin"]),
            ("default", vec!["gnp:server-only", "sgnp:staged"])
        ])
    );
    assert_eq!(
        names(PolicySet::Enforced, Direction::Egress),
        tiers(vec![("default", vec!["gnp:egress"])])
    );
    let free = applicable_policies(&m, PolicySet::Enforced, 1, Direction::Ingress);
    assert_eq!(free.len(), 2);
}

// ---------- the seed scenario (examples/*.yaml) ----------

fn seed_model() -> Model {
    let prod_pod = |name: &str, v4: &str, v6: &str| {
        let mut e = pod("prod", name, &[v4, v6]);
        e.labels.insert("env".into(), "prod".into());
        e.labels.insert("pcns.env".into(), "prod".into());
        e
    };
    let mut database = prod_pod("database", "10.65.0.30", "fd65::30");
    database
        .named_ports
        .push(named_port("http", Protocol::TCP, 8080));
    let endpoints = vec![
        prod_pod("frontend", "10.65.0.10", "fd65::10"),
        prod_pod("backend", "10.65.0.20", "fd65::20"),
        database,
    ];
    let app = |a: &str| Selector::equals("env", "prod").and(Selector::equals("app", a));
    let mut from_backend = Rule {
        protocol: Some(Protocol::TCP),
        ..allow()
    };
    from_backend.source.selector = Some(app("backend"));
    from_backend.destination.ports = vec![range(8080, 8080)];
    let database_allow = selecting(
        gnp("database-allow-from-backend", vec![from_backend]),
        app("database"),
    );
    let mut lockdown = selecting(gnp("backend-lockdown-staged", vec![]), app("backend"));
    lockdown.id.kind = PolicyKind::StagedGlobalNetworkPolicy;
    lockdown.staged_action = None;
    model(endpoints, vec![database_allow, lockdown])
}

fn seed_flow(ev: &Evaluator, from: &str, to: &str, port: u16) -> FlowVerdict {
    let ip_of = |name: &str| {
        let e = ev
            .model()
            .endpoints
            .iter()
            .find(|e| e.name == name)
            .unwrap();
        e.ips[0]
    };
    ev.evaluate_flow(&Flow {
        src: ip_of(from),
        dst: ip_of(to),
        packet: Packet::tcp(port),
    })
}

#[test]
fn seed_scenario_enforced_and_pending() {
    let m = seed_model();
    let ev = Evaluator::new(&m);

    let v = seed_flow(&ev, "backend", "database", 8080);
    assert_eq!(v.enforced.action, Allow);
    assert_eq!(
        traces(v.enforced.egress.as_ref().unwrap()),
        ["0|__PROFILE__|pro:kns.prod|allow|0"]
    );
    assert_eq!(
        traces(v.enforced.ingress.as_ref().unwrap()),
        ["0|default|gnp:database-allow-from-backend|allow|0"]
    );
    assert_eq!(v.pending.action, Allow);

    let v = seed_flow(&ev, "frontend", "database", 8080);
    assert_eq!(v.enforced.action, Deny);
    assert_eq!(
        traces(v.enforced.ingress.as_ref().unwrap()),
        ["0|default|gnp:database-allow-from-backend|deny|-1"]
    );
    assert_eq!(v.pending.action, Deny);

    let v = seed_flow(&ev, "backend", "database", 8081);
    assert_eq!(v.enforced.action, Deny);

    let v = seed_flow(&ev, "frontend", "backend", 8080);
    assert_eq!(v.enforced.action, Allow);
    assert_eq!(
        traces(v.enforced.ingress.as_ref().unwrap()),
        ["0|__PROFILE__|pro:kns.prod|allow|0"]
    );
    assert_eq!(v.pending.action, Deny);
    assert_eq!(
        traces(v.pending.ingress.as_ref().unwrap()),
        ["0|default|sgnp:backend-lockdown-staged|deny|-1"]
    );
}

// ---------- properties ----------

mod properties {
    use proptest::prelude::*;

    use super::*;

    const APPS: [&str; 3] = ["a", "b", "c"];
    const TIERS: [&str; 3] = ["kube-admin", "default", "extra"];

    fn selector() -> impl Strategy<Value = Selector> {
        prop_oneof![
            Just(Selector::all()),
            (0..APPS.len()).prop_map(|i| Selector::equals("app", APPS[i])),
            (0..APPS.len()).prop_map(|i| Selector::equals("app", APPS[i]).not()),
            Just(Selector::has("role")),
        ]
    }

    fn rule_strategy() -> impl Strategy<Value = Rule> {
        (
            prop_oneof![
                Just(Action::Allow),
                Just(Action::Deny),
                Just(Action::Pass),
                Just(Action::Log)
            ],
            prop::option::of(prop_oneof![Just(Protocol::TCP), Just(Protocol::UDP)]),
            prop::option::of((1u16..100, 0u16..20)),
            prop::option::of(selector()),
            prop::option::of(prop_oneof![Just(4u8), Just(6u8)]),
        )
            .prop_map(|(action, protocol, ports, peer, ip_version)| {
                let mut r = rule(action);
                r.protocol = protocol;
                r.ip_version = ip_version;
                if let Some((first, width)) = ports {
                    r.destination.ports = vec![range(first, first + width)];
                }
                r.source.selector = peer;
                r
            })
    }

    fn policy_strategy(staged_kinds: bool) -> impl Strategy<Value = Policy> {
        (
            0..6usize,
            0..TIERS.len(),
            prop::option::of(0..4u8),
            selector(),
            any::<(bool, bool)>(),
            prop::collection::vec(rule_strategy(), 0..4),
            prop::collection::vec(rule_strategy(), 0..4),
            prop::option::of(prop_oneof![
                Just(StagedAction::Set),
                Just(StagedAction::Learn),
                Just(StagedAction::Delete),
                Just(StagedAction::Ignore)
            ]),
            any::<bool>(),
        )
            .prop_map(
                move |(name, t, order, sel, (ing, eg), ingress, egress, action, namespaced)| {
                    let (kind, ns) = if namespaced {
                        (PolicyKind::NetworkPolicy, Some("ns"))
                    } else {
                        (PolicyKind::GlobalNetworkPolicy, None)
                    };
                    let mut p = policy(kind, ns, &format!("p{name}"));
                    p.tier = TIERS[t].into();
                    p.order = order.map(f64::from);
                    p.selector = sel;
                    p.ingress_type = ing || !eg;
                    p.egress_type = eg;
                    p.ingress = ingress;
                    p.egress = egress;
                    if staged_kinds {
                        p = staged(p, action);
                    }
                    p
                },
            )
    }

    fn endpoints() -> Vec<Endpoint> {
        let mut eps: Vec<Endpoint> = APPS
            .iter()
            .enumerate()
            .map(|(i, app)| {
                pod(
                    "ns",
                    app,
                    &[&format!("10.0.0.{}", i + 1), &format!("fd00::{}", i + 1)],
                )
            })
            .collect();
        eps[1].labels.insert("role".into(), "x".into());
        eps[2].profiles.clear();
        eps
    }

    fn packet() -> impl Strategy<Value = Packet> {
        prop_oneof![
            (1u16..120).prop_map(Packet::tcp),
            (1u16..120).prop_map(Packet::udp),
            Just(Packet::icmp(Protocol::ICMP, 8, 0)),
        ]
    }

    fn enforced_model(policies: Vec<Policy>) -> Model {
        let mut m = model(endpoints(), policies);
        m.tiers.push(tier("extra", Some(2000.0), TierDefault::Deny));
        m
    }

    /// Every flow between the endpoints (and to an outside IP), v4 and v6.
    fn flows(packet: Packet) -> Vec<Flow> {
        let mut ips: Vec<IpAddr> = endpoints().iter().flat_map(|e| e.ips.clone()).collect();
        ips.push(ip("192.0.2.1"));
        ips.push(ip("2001:db8::1"));
        let mut flows = vec![];
        for &src in &ips {
            for &dst in &ips {
                if src != dst && src.is_ipv4() == dst.is_ipv4() {
                    flows.push(Flow { src, dst, packet });
                }
            }
        }
        flows
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn pending_equals_enforced_without_staged_policies(
            policies in prop::collection::vec(policy_strategy(false), 0..8),
            packet in packet(),
        ) {
            let m = enforced_model(policies);
            let ev = Evaluator::new(&m);
            for flow in flows(packet) {
                let v = ev.evaluate_flow(&flow);
                prop_assert_eq!(&v.enforced, &v.pending);
            }
        }

        #[test]
        fn staged_policies_never_change_the_enforced_verdict(
            policies in prop::collection::vec(policy_strategy(false), 0..6),
            staged_policies in prop::collection::vec(policy_strategy(true), 1..5),
            packet in packet(),
        ) {
            let without = enforced_model(policies.clone());
            let mut with = without.clone();
            with.policies.extend(staged_policies);
            let (ev_without, ev_with) = (Evaluator::new(&without), Evaluator::new(&with));
            for flow in flows(packet) {
                let a = ev_without.evaluate_flow(&flow);
                let b = ev_with.evaluate_flow(&flow);
                prop_assert_eq!(&a.enforced, &b.enforced);
            }
        }
    }
}

// ---------- the rule prefilter ----------

/// Random models, with extra rules on peer nets (/32s of endpoints and wider
/// nets, either side) spread through their policies: the prefiltered evaluator
/// gives every probe the same verdict and trace as one scanning every rule.
#[test]
fn prefilter_gives_the_verdicts_and_traces_of_the_plain_scan() {
    use crate::compile::testgen::{random_model, random_probe, random_rule, Rng, Shape};
    let mut rng = Rng::new(0x9f1e_7e12);
    let mut indexed_decisions = 0;
    for round in 0..200 {
        let mut model = random_model(&mut rng, Shape::default());
        let peers: Vec<IpNet> = model
            .endpoints
            .iter()
            .flat_map(|e| e.ips.iter().map(|&a| IpNet::from(a)))
            .chain(["10.0.0.0/8", "fd00::/8", "0.0.0.0/0", "::/0"].map(|s| s.parse().unwrap()))
            .collect();
        for policy in &mut model.policies {
            for _ in 0..rng.below(6) {
                let mut rule = random_rule(&mut rng, Shape::default());
                let nets: Vec<IpNet> = (0..1 + rng.below(2)).map(|_| rng.pick(&peers)).collect();
                if rng.chance(60) {
                    rule.source.nets = nets;
                } else {
                    rule.destination.nets = nets;
                }
                let rules = if rng.chance(50) {
                    &mut policy.ingress
                } else {
                    &mut policy.egress
                };
                let at = rng.below(rules.len() + 1);
                rules.insert(at, rule);
            }
        }
        let endpoints: Vec<usize> = (0..model.endpoints.len())
            .filter(|&i| !model.endpoints[i].ips.is_empty())
            .collect();
        if endpoints.is_empty() {
            continue;
        }
        let indexed = Evaluator::new(&model);
        let scanning = Evaluator::scanning_every_rule(&model);
        for _ in 0..60 {
            let p = random_probe(&mut rng, &model, &endpoints);
            for set in [PolicySet::Enforced, PolicySet::Pending] {
                let ask = |e: &Evaluator| p.evaluate(e, set);
                let want = ask(&scanning);
                assert_eq!(ask(&indexed), want, "round {round} {set:?} {p:?}");
                indexed_decisions +=
                    usize::from(matches!(want.decided_by, DecidedBy::PolicyRule { .. }));
            }
        }
    }
    // The comparison covered rule decisions, not only defaults.
    assert!(indexed_decisions > 1000, "{indexed_decisions}");
}

// ---------- applicable tiers shared by label set ----------

/// Random models with copies of their endpoints: one with the same labels,
/// one of the other kind (host endpoints also have untracked and pre-DNAT
/// phases), one with a label changed. The evaluator's applicable tiers (shared
/// by endpoints of one kind and label set, selectors evaluated once per label
/// set) equal those evaluated for each endpoint alone, and the kind is part
/// of what is shared.
#[test]
fn applicable_tiers_shared_by_label_set_equal_those_of_each_endpoint() {
    use crate::compile::testgen::{random_model, Rng, Shape};
    type Seen = Vec<(Phase, String, TierDefault, Vec<*const Policy>)>;
    let seen = |tiers: &[ApplicableTier]| -> Seen {
        let policies = |t: &ApplicableTier| t.policies.iter().map(|p| *p as *const _).collect();
        let tier = |t: &ApplicableTier| (t.phase, t.name.clone(), t.default_action, policies(t));
        tiers.iter().map(tier).collect()
    };
    let mut rng = Rng::new(0x1abe_15e7);
    let mut kind_mattered = 0;
    for round in 0..200 {
        let mut model = random_model(&mut rng, Shape::default());
        let original = rng.below(model.endpoints.len());
        let mut same = (*model.endpoints[original]).clone();
        same.name = "same-labels".into();
        let mut other_kind = same.clone();
        other_kind.name = "other-kind".into();
        other_kind.kind = match same.kind {
            EndpointKind::Host => EndpointKind::Workload,
            EndpointKind::Workload => EndpointKind::Host,
        };
        let mut relabelled = same.clone();
        relabelled.name = "relabelled".into();
        relabelled
            .labels
            .insert("app".into(), rng.pick(&["a", "b", "web", "db"]).into());
        model
            .endpoints
            .extend([same, other_kind, relabelled].map(std::sync::Arc::new));
        let shared = Evaluator::new(&model);
        let some: Vec<usize> = (0..model.endpoints.len()).filter(|e| e % 2 == 0).collect();
        let selecting: Vec<bool> = model
            .policies
            .iter()
            .map(|p| {
                some.iter()
                    .any(|&e| p.selector.evaluate(&model.endpoints[e].labels))
            })
            .collect();
        assert_eq!(shared.selecting_any(some), selecting, "round {round}");
        for set in [PolicySet::Enforced, PolicySet::Pending] {
            for direction in [Direction::Ingress, Direction::Egress] {
                for e in (0..model.endpoints.len()).rev() {
                    let want = seen(&applicable_policies(&model, set, e, direction));
                    let got = seen(shared.applicable_policies(set, e, direction));
                    assert_eq!(
                        got, want,
                        "round {round} {set:?} {direction:?} endpoint {e}"
                    );
                }
                let n = model.endpoints.len();
                let of = |e: usize| seen(shared.applicable_policies(set, e, direction));
                kind_mattered += usize::from(of(n - 2) != of(original));
            }
        }
    }
    assert!(
        kind_mattered > 0,
        "no model where the kind changed the tiers"
    );
}
