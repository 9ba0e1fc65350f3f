use super::testgen::{compile_random, random_model, random_probe, Rng, Shape, TableModel};
use super::*;
use agent_common::{action, Verdict, POLICY_NONE};
use ipnet::IpNet;

use crate::dataplane::tables::{PeerMatch, PortMatch as Ports, RuleEntry, Table};
use crate::eval::{Evaluator, PolicySet, EPHEMERAL_PORT};
use crate::model::ir::{
    Action, Direction, Endpoint, Model, NetworkSet, Policy, PolicyKind, PortMatch, PortRange,
    Protocol, Rule,
};
use crate::selector::parse;
use crate::testkit::ir::{self as testkit, ip, selecting, tcp_ports};

fn pod(name: &str, ips: &[&str]) -> Endpoint {
    testkit::pod("prod", name, ips)
}

fn rule(action: Action) -> Rule {
    Rule::matching_all(action)
}

fn policy(kind: PolicyKind, name: &str, selector: &str) -> Policy {
    selecting(testkit::policy(kind, None, name), parse(selector).unwrap())
}

/// prod/frontend, backend, database; enforced: backend -> database TCP 8080;
/// staged: default-deny of backend ingress.
fn seed() -> Model {
    let mut allow_db = policy(
        PolicyKind::GlobalNetworkPolicy,
        "allow-backend-to-db",
        "app == 'database'",
    );
    let mut r = tcp_ports(Action::Allow, 8080, 8080);
    r.source.selector = Some(parse("app == 'backend'").unwrap());
    allow_db.ingress = vec![r];
    let mut staged = policy(
        PolicyKind::StagedNetworkPolicy,
        "default-deny",
        "app == 'backend' && projectcalico.org/namespace == 'prod'",
    );
    staged.id.namespace = Some("prod".into());
    testkit::model(
        vec![
            pod("frontend", &["10.65.0.1", "fd65::1"]),
            pod("backend", &["10.65.0.2", "fd65::2"]),
            pod("database", &["10.65.0.3", "fd65::3"]),
        ],
        vec![allow_db, staged],
    )
}

/// Compares every probe: tables (as the kernel reads them) vs the evaluator.
fn agree(model: &Model, c: &Compiled, probes: &[Probe]) {
    let sim = TableModel::new(&c.tables).expect("tables encode");
    let eval = Evaluator::new(model);
    // TableModel does the source-port lookup for endpoints with entries: the
    // kernel does it for the flagged ones.
    for e in &c.endpoints {
        let has_entries = c.tables.sports.iter().any(|s| s.endpoint_id == e.id);
        assert_eq!(e.source_ports, has_entries, "{e:?}");
    }
    for p in probes {
        let ep = c
            .endpoints
            .iter()
            .find(|e| e.endpoint_index == p.endpoint_index)
            .unwrap();
        for (set, pending) in [(PolicySet::Enforced, false), (PolicySet::Pending, true)] {
            let want = c.verdict_of(&p.evaluate(&eval, set));
            // Endpoints without staged policy: the pending verdict is the enforced one.
            let pending = pending && ep.has_staged;
            let got = sim.lookup(
                ep.id,
                p.direction,
                pending,
                p.peer,
                p.protocol,
                p.src_port,
                p.port,
            );
            assert_eq!(
                got,
                want,
                "{set:?} {p:?}: tables say {}, evaluator {}",
                c.describe(&got),
                c.describe(&want)
            );
        }
    }
}

use super::testgen::Probe;

fn probe(endpoint: usize, d: Direction, local: &str, peer: &str, protocol: u8, port: u16) -> Probe {
    Probe {
        endpoint_index: endpoint,
        direction: d,
        local: ip(local),
        peer: ip(peer),
        protocol,
        src_port: 40000,
        port,
    }
}

#[test]
fn seed_scenario() {
    let model = seed();
    let c = compile(&model).unwrap();
    let sim = TableModel::new(&c.tables).unwrap();
    let ep = |name: &str| {
        c.endpoints
            .iter()
            .find(|e| model.endpoints[e.endpoint_index].name == name)
            .unwrap()
            .clone()
    };
    let (frontend, backend, database) = (ep("frontend"), ep("backend"), ep("database"));
    assert!(backend.has_staged);
    assert!(!database.has_staged && !frontend.has_staged);
    let look = |e: &CompiledEndpoint, pending, peer: &str, port| {
        let v = sim.lookup(
            e.id,
            Direction::Ingress,
            pending,
            ip(peer),
            Protocol::TCP.number(),
            EPHEMERAL_PORT,
            port,
        );
        c.describe(&v)
    };
    assert_eq!(
        look(&database, false, "10.65.0.2", 8080),
        "default|gnp:allow-backend-to-db|allow|0"
    );
    assert_eq!(
        look(&database, false, "fd65::2", 8080),
        "default|gnp:allow-backend-to-db|allow|0"
    );
    assert_eq!(
        look(&database, false, "10.65.0.1", 8080),
        "default|gnp:allow-backend-to-db|deny|-1"
    );
    assert_eq!(
        look(&database, false, "10.65.0.2", 8081),
        "default|gnp:allow-backend-to-db|deny|-1"
    );
    assert_eq!(
        look(&backend, false, "10.65.0.1", 8080),
        "__PROFILE__|pro:kns.prod|allow|0"
    );
    assert_eq!(
        look(&backend, true, "10.65.0.1", 8080),
        "default|snp:prod/default-deny|deny|-1"
    );
    // Frontend has no staged policy: no pending entries at all.
    assert!(c
        .tables
        .rules
        .iter()
        .all(|r| r.table == Table::Enforced || r.endpoint_id == backend.id));
    let probes: Vec<Probe> = [
        (2, "10.65.0.3", "10.65.0.2", 8080),
        (2, "10.65.0.3", "10.65.0.1", 8080),
        (1, "10.65.0.2", "10.65.0.1", 80),
        (1, "fd65::2", "fd65::1", 80),
        (0, "10.65.0.1", "8.8.8.8", 8080),
    ]
    .iter()
    .flat_map(|&(e, local, peer, port)| {
        [Direction::Ingress, Direction::Egress]
            .map(|d| probe(e, d, local, peer, Protocol::TCP.number(), port))
    })
    .collect();
    agree(&model, &c, &probes);
}

#[test]
fn identical_endpoints_share_a_class() {
    let mut model = seed();
    model
        .endpoints
        .push(pod("backend", &["10.65.0.12", "fd65::12"]).into());
    std::sync::Arc::make_mut(&mut model.endpoints[3]).name = "backend-2".into();
    std::sync::Arc::make_mut(&mut model.endpoints[3]).labels = model.endpoints[1].labels.clone();
    let c = compile(&model).unwrap();
    let sim = TableModel::new(&c.tables).unwrap();
    assert_eq!(sim.class(ip("10.65.0.2")), sim.class(ip("10.65.0.12")));
    assert_eq!(sim.class(ip("fd65::2")), sim.class(ip("fd65::12")));
    assert_ne!(sim.class(ip("10.65.0.2")), sim.class(ip("10.65.0.1")));
    assert_ne!(
        sim.class(ip("10.65.0.2")),
        sim.class(ip("fd65::2")),
        "classes are per family"
    );
    // Frontend and the world are alike for every selector: one class, and the
    // frontend's /32 is not even emitted.
    assert_eq!(sim.class(ip("10.65.0.1")), sim.class(ip("8.8.8.8")));
    assert!(c
        .tables
        .peers
        .iter()
        .all(|(n, _)| *n != "10.65.0.1/32".parse::<IpNet>().unwrap()));
}

#[test]
fn policies_selecting_no_compiled_endpoint_add_no_prefixes() {
    let mut model = seed();
    let before = compile(&model).unwrap().stats.prefixes_collected;
    let mut elsewhere = policy(
        PolicyKind::GlobalNetworkPolicy,
        "elsewhere",
        "app == 'nothere'",
    );
    let mut r = rule(Action::Allow);
    r.source.nets = vec!["172.16.0.0/12".parse().unwrap()];
    elsewhere.ingress = vec![r];
    model.policies.push(elsewhere.clone());
    assert_eq!(compile(&model).unwrap().stats.prefixes_collected, before);
    // An endpoint without an interface is not compiled either.
    let mut other = pod("nothere", &["10.65.9.9"]);
    other.interface = None;
    model.endpoints.push(other.into());
    assert_eq!(
        compile(&model).unwrap().stats.prefixes_collected,
        before + 1
    );
    std::sync::Arc::make_mut(model.endpoints.last_mut().unwrap()).interface =
        Some("calinothere".into());
    assert_eq!(
        compile(&model).unwrap().stats.prefixes_collected,
        before + 2
    );
}

#[test]
fn port_ranges_are_compressed() {
    let mut p = policy(
        PolicyKind::GlobalNetworkPolicy,
        "ranges",
        "app == 'database'",
    );
    p.ingress = vec![
        tcp_ports(Action::Deny, 2500, 2600),
        tcp_ports(Action::Allow, 1000, 1999),
        tcp_ports(Action::Allow, 1500, 3000),
        tcp_ports(Action::Allow, 3000, 3000),
    ];
    let model = testkit::model(vec![pod("database", &["10.65.0.3"])], vec![p]);
    let c = compile(&model).unwrap();
    let ingress: Vec<&RuleEntry> = c
        .tables
        .rules
        .iter()
        .filter(|r| r.direction == Direction::Ingress)
        .collect();
    // One wildcard-class table: any protocol (end of tier), and per TCP port
    // range the deciding rule; the breakpoints at 1500 and 3000/3001 merge away.
    assert!(ingress.iter().all(|r| r.peer == PeerMatch::Any));
    let tcp: Vec<Ports> = ingress
        .iter()
        .filter(|r| r.protocol == Some(Protocol::TCP.number()))
        .map(|r| r.ports)
        .collect();
    assert_eq!(
        tcp,
        vec![
            Ports::Range(1000, 1999),
            Ports::Range(2000, 2499),
            Ports::Range(2500, 2600),
            Ports::Range(2601, 3000)
        ],
        "{ingress:#?}"
    );
    let sim = TableModel::new(&c.tables).unwrap();
    for (port, allow) in [
        (999, false),
        (1000, true),
        (2499, true),
        (2500, false),
        (2601, true),
        (3000, true),
        (3001, false),
    ] {
        let v = sim.lookup(
            1,
            Direction::Ingress,
            false,
            ip("1.2.3.4"),
            Protocol::TCP.number(),
            EPHEMERAL_PORT,
            port,
        );
        assert_eq!(v.action == action::ALLOW, allow, "port {port}");
    }
}

#[test]
fn failsafes_on_a_host_endpoint_under_deny_all() {
    let mut deny_all = policy(PolicyKind::GlobalNetworkPolicy, "deny-all", "has(host)");
    deny_all.egress_type = true;
    deny_all.ingress = vec![rule(Action::Deny)];
    deny_all.egress = vec![rule(Action::Deny)];
    let host = testkit::host("node1", &["192.168.1.10"]);
    let mut model = testkit::model(vec![host], vec![deny_all]);
    let only_10 = Some(testkit::net("10.0.0.0/8"));
    model
        .failsafes
        .inbound
        .push(testkit::failsafe(Protocol::TCP, 9999, only_10));
    let c = compile(&model).unwrap();
    assert!(c.endpoints[0].host);
    let sim = TableModel::new(&c.tables).unwrap();
    let d = |dir, peer: &str, protocol, port| {
        c.describe(&sim.lookup(1, dir, false, ip(peer), protocol, EPHEMERAL_PORT, port))
    };
    use Direction::*;
    assert_eq!(
        d(Ingress, "1.2.3.4", Protocol::TCP.number(), 22),
        "__FAILSAFE__|failsafe:tcp/22|allow|-1"
    );
    assert_eq!(
        d(Ingress, "1.2.3.4", Protocol::TCP.number(), 23),
        "default|gnp:deny-all|deny|0"
    );
    assert_eq!(
        d(Ingress, "1.2.3.4", Protocol::UDP.number(), 68),
        "__FAILSAFE__|failsafe:udp/68|allow|-1"
    );
    assert_eq!(
        d(Egress, "1.2.3.4", Protocol::UDP.number(), 53),
        "__FAILSAFE__|failsafe:udp/53|allow|-1"
    );
    assert_eq!(
        d(Egress, "1.2.3.4", Protocol::TCP.number(), 22),
        "default|gnp:deny-all|deny|0"
    );
    // A failsafe limited to a net.
    assert_eq!(
        d(Ingress, "10.1.2.3", Protocol::TCP.number(), 9999),
        "__FAILSAFE__|failsafe:tcp/9999|allow|-1"
    );
    assert_eq!(
        d(Ingress, "11.1.2.3", Protocol::TCP.number(), 9999),
        "default|gnp:deny-all|deny|0"
    );
}

/// Every combination of the compiled endpoints' addresses, the given peers, TCP
/// and UDP, the test source ports and `ports`, both directions.
fn grid(model: &Model, c: &Compiled, peers: &[&str], ports: &[u16]) -> Vec<Probe> {
    let mut out = Vec::new();
    for e in &c.endpoints {
        for local in &model.endpoints[e.endpoint_index].ips {
            for peer in peers.iter().map(|p| ip(p)) {
                if peer.is_ipv6() != local.is_ipv6() {
                    continue;
                }
                for d in [Direction::Ingress, Direction::Egress] {
                    for protocol in [Protocol::TCP.number(), Protocol::UDP.number()] {
                        for &src_port in &super::testgen::SOURCE_PORTS {
                            for &port in ports {
                                out.push(Probe {
                                    endpoint_index: e.endpoint_index,
                                    direction: d,
                                    local: *local,
                                    peer,
                                    protocol,
                                    src_port,
                                    port,
                                });
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

fn source_ports(rule: &mut Rule, ports: &[(u16, u16)]) {
    rule.source.ports = ports
        .iter()
        .map(|&(first, last)| PortMatch::Range(PortRange { first, last }))
        .collect();
}

#[test]
fn source_port_rules_exact_range_and_not_ports() {
    let mut p = policy(
        PolicyKind::GlobalNetworkPolicy,
        "sport",
        "app == 'database'",
    );
    p.egress_type = true;
    // Ingress: DNS answers (UDP from port 53), TCP from 1000-2000 except 1500 to 5432.
    let mut dns = rule(Action::Allow);
    dns.protocol = Some(Protocol::UDP);
    source_ports(&mut dns, &[(53, 53)]);
    let mut range = tcp_ports(Action::Allow, 5432, 5432);
    source_ports(&mut range, &[(1000, 2000)]);
    range.source.not_ports = vec![PortMatch::Range(PortRange {
        first: 1500,
        last: 1500,
    })];
    p.ingress = vec![dns, range];
    // Egress: anything but privileged source ports.
    let mut unprivileged = rule(Action::Allow);
    unprivileged.protocol = Some(Protocol::TCP);
    unprivileged.source.not_ports = vec![PortMatch::Range(PortRange {
        first: 1,
        last: 1023,
    })];
    p.egress = vec![unprivileged];
    let model = testkit::model(
        vec![
            pod("frontend", &["10.65.0.1", "fd65::1"]),
            pod("database", &["10.65.0.3", "fd65::3"]),
        ],
        vec![p],
    );
    let c = compile(&model).unwrap();
    let sim = TableModel::new(&c.tables).unwrap();
    let (frontend, database) = (&c.endpoints[0], &c.endpoints[1]);
    assert!(database.source_ports && !frontend.source_ports);
    assert!(database.info().flags & agent_common::endpoint_flags::SOURCE_PORTS != 0);
    // The frontend's tables are what they would be without source ports: class 0 only.
    assert!(c.tables.sports.iter().all(|s| s.endpoint_id == database.id));
    assert!(c
        .tables
        .rules
        .iter()
        .filter(|r| r.endpoint_id == frontend.id)
        .all(|r| r.source_port_class == r.protocol.map(|_| 0)));
    let d = |dir, protocol, sport, port| {
        c.describe(&sim.lookup(
            database.id,
            dir,
            false,
            ip("10.65.0.1"),
            protocol,
            sport,
            port,
        ))
    };
    use Direction::*;
    for (protocol, sport, port, want) in [
        (Protocol::UDP, 53, 33000, "default|gnp:sport|allow|0"),
        (Protocol::UDP, 52, 33000, "default|gnp:sport|deny|-1"),
        (Protocol::UDP, 54, 53, "default|gnp:sport|deny|-1"),
        (Protocol::TCP, 53, 5432, "default|gnp:sport|deny|-1"),
        (Protocol::TCP, 999, 5432, "default|gnp:sport|deny|-1"),
        (Protocol::TCP, 1000, 5432, "default|gnp:sport|allow|1"),
        (Protocol::TCP, 1499, 5432, "default|gnp:sport|allow|1"),
        (Protocol::TCP, 1500, 5432, "default|gnp:sport|deny|-1"),
        (Protocol::TCP, 1501, 5432, "default|gnp:sport|allow|1"),
        (Protocol::TCP, 2000, 5432, "default|gnp:sport|allow|1"),
        (Protocol::TCP, 2001, 5432, "default|gnp:sport|deny|-1"),
        (Protocol::TCP, 1000, 5433, "default|gnp:sport|deny|-1"),
    ] {
        assert_eq!(
            d(Ingress, protocol.number(), sport, port),
            want,
            "{protocol} {sport} -> {port}"
        );
    }
    for (sport, want) in [
        (0, "default|gnp:sport|allow|0"),
        (1, "default|gnp:sport|deny|-1"),
        (1023, "default|gnp:sport|deny|-1"),
        (1024, "default|gnp:sport|allow|0"),
    ] {
        assert_eq!(
            d(Egress, Protocol::TCP.number(), sport, 443),
            want,
            "egress from {sport}"
        );
    }
    // UDP ingress: {53} and the rest; TCP ingress: 1000-1499|1501-2000, 1500, rest.
    let classes = |dir, protocol| {
        let mut v: Vec<u8> = (0..=u16::MAX)
            .map(|port| sim.source_port_class(database.id, dir, protocol, port))
            .collect();
        v.sort();
        v.dedup();
        v.len()
    };
    assert_eq!(classes(Ingress, Protocol::UDP.number()), 2);
    assert_eq!(classes(Ingress, Protocol::TCP.number()), 3);
    assert_eq!(classes(Egress, Protocol::TCP.number()), 2);
    assert_eq!(classes(Egress, Protocol::UDP.number()), 1);
    assert_eq!(
        sim.source_port_class(database.id, Ingress, Protocol::ICMP.number(), 53),
        0
    );
    let probes = grid(
        &model,
        &c,
        &[
            "10.65.0.1",
            "10.65.0.3",
            "8.8.8.8",
            "fd65::1",
            "2001:db8::1",
        ],
        &[53, 443, 5432, 5433],
    );
    assert!(probes.len() > 1000);
    agree(&model, &c, &probes);
}

#[test]
fn named_source_ports_are_the_peers_on_ingress_and_own_on_egress() {
    let mut p = policy(PolicyKind::GlobalNetworkPolicy, "metrics", "has(app)");
    p.egress_type = true;
    let mut from_metrics = rule(Action::Allow);
    from_metrics.protocol = Some(Protocol::TCP);
    from_metrics.source.ports = vec![PortMatch::Named("metrics".into())];
    p.ingress = vec![from_metrics.clone()];
    p.egress = vec![from_metrics];
    let named = |port| testkit::named_port("metrics", Protocol::TCP, port);
    let mut backend = pod("backend", &["10.65.0.2", "fd65::2"]);
    backend.named_ports = vec![named(9100)];
    let mut frontend = pod("frontend", &["10.65.0.1", "fd65::1"]);
    frontend.named_ports = vec![named(9200)];
    let model = testkit::model(
        vec![frontend, backend, pod("database", &["10.65.0.3"])],
        vec![p],
    );
    let c = compile(&model).unwrap();
    assert!(c.endpoints.iter().all(|e| e.source_ports));
    let sim = TableModel::new(&c.tables).unwrap();
    let db = c.endpoints[2].id;
    let backend = c.endpoints[1].id;
    let d = |id, dir, peer: &str, sport| {
        sim.lookup(id, dir, false, ip(peer), Protocol::TCP.number(), sport, 80)
            .action
            == action::ALLOW
    };
    use Direction::*;
    // Ingress: the source is the peer, so its own "metrics" port counts.
    assert!(d(db, Ingress, "10.65.0.2", 9100));
    assert!(!d(db, Ingress, "10.65.0.2", 9200));
    assert!(d(db, Ingress, "10.65.0.1", 9200));
    assert!(!d(db, Ingress, "10.65.0.1", 9100));
    assert!(
        !d(db, Ingress, "8.8.8.8", 9100),
        "no endpoint, no named port"
    );
    assert!(d(db, Ingress, "fd65::2", 9100));
    // Egress: the source is the endpoint itself.
    assert!(d(backend, Egress, "10.65.0.3", 9100));
    assert!(d(backend, Egress, "8.8.8.8", 9100));
    assert!(!d(backend, Egress, "10.65.0.3", 9200));
    let mut probes = grid(
        &model,
        &c,
        &["10.65.0.1", "10.65.0.2", "8.8.8.8", "fd65::1", "fd65::2"],
        &[80],
    );
    for e in &c.endpoints {
        for sport in [9099, 9100, 9101, 9199, 9200, 9201] {
            for d in [Ingress, Egress] {
                for peer in ["10.65.0.1", "10.65.0.2", "8.8.8.8"] {
                    let local = model.endpoints[e.endpoint_index].ips[0].to_string();
                    let mut p = probe(
                        e.endpoint_index,
                        d,
                        &local,
                        peer,
                        Protocol::TCP.number(),
                        80,
                    );
                    p.src_port = sport;
                    probes.push(p);
                }
            }
        }
    }
    agree(&model, &c, &probes);
}

#[test]
fn too_many_source_port_classes_is_a_capacity_error() {
    let mut model = seed();
    // 300 distinct source ports: 301 classes, more than the key's byte holds.
    let r = &mut model.policies[0].ingress[0];
    r.source.ports = (0..300u16)
        .map(|i| {
            PortMatch::Range(PortRange {
                first: 10000 + 2 * i,
                last: 10000 + 2 * i,
            })
        })
        .collect();
    match compile(&model) {
        Err(CompileError::Capacity {
            endpoint,
            limit,
            needed,
            max,
        }) => {
            assert_eq!(endpoint, "prod/database");
            assert!(limit.contains("source-port classes"), "{limit}");
            assert_eq!((needed, max), (301, 256));
        }
        other => panic!("{other:?}"),
    }
    // 255 ports still fit (256 classes).
    model.policies[0].ingress[0].source.ports.truncate(255);
    let c = compile(&model).unwrap();
    let sim = TableModel::new(&c.tables).unwrap();
    let db = c.endpoints[2].id;
    for sport in [9999, 10000, 10001, 10508, 10509, 10510] {
        let want = sport % 2 == 0 && (10000..10510).contains(&sport);
        let v = sim.lookup(
            db,
            Direction::Ingress,
            false,
            ip("10.65.0.2"),
            Protocol::TCP.number(),
            sport,
            8080,
        );
        assert_eq!(v.action == action::ALLOW, want, "source port {sport}");
    }
}

#[test]
fn capacity_limits_are_errors() {
    let model = seed();
    let small = |f: fn(&mut Limits)| {
        let mut l = Limits::default();
        f(&mut l);
        compile_with_limits(&model, &l)
    };
    let limit_of = |r: Result<Compiled, CompileError>| match r {
        Err(CompileError::Capacity {
            limit,
            endpoint,
            needed,
            max,
        }) => {
            assert!(needed > max);
            (limit, endpoint)
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(
        limit_of(small(|l| l.endpoints = 2)),
        ("endpoints (ENDPOINTS map)", "prod/database".to_string())
    );
    assert_eq!(
        limit_of(small(|l| l.peer_prefixes = 2)).0,
        "peer prefixes (PEERS map)"
    );
    assert_eq!(
        limit_of(small(|l| l.keys_per_endpoint = 3)),
        ("rule entries per endpoint", "prod/backend".to_string()),
        "backend has pending entries too"
    );
    assert_eq!(
        limit_of(small(|l| l.rule_keys = 8)).0,
        "rule entries (RULES map)"
    );
    assert!(compile_with_limits(&model, &Limits::default()).is_ok());
    // Source-port entries: the database gets some with a rule on source ports.
    let mut sport = model.clone();
    sport.policies[0].ingress[0].source.ports = vec![PortMatch::Range(PortRange {
        first: 1,
        last: 1023,
    })];
    let c = compile(&sport).unwrap();
    assert!(c.stats.source_port_keys > 1);
    let l = Limits {
        source_port_keys: c.stats.source_port_keys - 1,
        ..Limits::default()
    };
    assert_eq!(
        limit_of(compile_with_limits(&sport, &l)),
        (
            "source-port entries (SPORTS map)",
            "prod/database".to_string()
        )
    );
}

#[test]
fn verdicts_that_depend_on_the_local_address_are_unsupported() {
    let mut model = seed();
    std::sync::Arc::make_mut(&mut model.endpoints[2])
        .ips
        .push(ip("10.65.0.33"));
    // Nothing tells the database's two IPv4 addresses apart: fine.
    let c = compile(&model).unwrap();
    let probes: Vec<Probe> = ["10.65.0.3", "10.65.0.33"]
        .iter()
        .map(|local| {
            probe(
                2,
                Direction::Ingress,
                local,
                "10.65.0.2",
                Protocol::TCP.number(),
                8080,
            )
        })
        .collect();
    agree(&model, &c, &probes);
    // A rule on one of them: the kernel cannot see which one a packet uses.
    model.policies[0].ingress[0].destination.nets = vec!["10.65.0.3/32".parse().unwrap()];
    assert!(matches!(
        compile(&model),
        Err(CompileError::Unsupported { endpoint, .. }) if endpoint == "prod/database"
    ));
}

#[test]
fn ipv4_mapped_ipv6_nets_are_unsupported() {
    let mut model = seed();
    model.policies[0].ingress[0].source.nets = vec!["::ffff:10.0.0.0/104".parse().unwrap()];
    assert!(matches!(
        compile(&model),
        Err(CompileError::Unsupported { what, .. }) if what.contains("::ffff:0:0/96")
    ));
}

#[test]
fn describe_names_every_kind_of_verdict() {
    let c = compile(&seed()).unwrap();
    let v = |tier, policy, rule, act| Verdict {
        action: act,
        flags: 0,
        tier,
        policy,
        rule,
    };
    assert_eq!(c.describe(&Verdict::NO_ENTRY), "__NO_ENTRY__|deny");
    assert_eq!(
        c.describe(&v(tier_code::NO_MATCH, POLICY_NONE, -1, action::DENY)),
        "__PROFILE__|pro:__NO_MATCH__|deny|-1"
    );
    assert_eq!(
        c.describe(&v(
            tier_code::FAILSAFE,
            POLICY_NONE,
            6 << 16 | 22,
            action::ALLOW
        )),
        "__FAILSAFE__|failsafe:tcp/22|allow|-1"
    );
}

#[test]
fn network_sets_and_nets_make_classes() {
    let mut p = policy(PolicyKind::GlobalNetworkPolicy, "ext", "app == 'database'");
    let mut r = rule(Action::Allow);
    r.source.selector = Some(parse("kind == 'ext'").unwrap());
    r.source.not_nets = vec!["10.1.2.0/24".parse().unwrap()];
    p.ingress = vec![r];
    let model = Model {
        network_sets: vec![NetworkSet {
            namespace: None,
            name: "ext".into(),
            labels: testkit::labels(&[("kind", "ext")]),
            nets: vec![testkit::net("10.0.0.0/8")],
        }],
        ..testkit::model(vec![pod("database", &["10.65.0.3"])], vec![p])
    };
    let c = compile(&model).unwrap();
    let sim = TableModel::new(&c.tables).unwrap();
    let v = |peer: &str| {
        sim.lookup(
            1,
            Direction::Ingress,
            false,
            ip(peer),
            Protocol::UDP.number(),
            9,
            5,
        )
        .action
    };
    assert_eq!(v("10.9.9.9"), action::ALLOW);
    assert_eq!(v("10.1.2.3"), action::DENY);
    assert_eq!(v("11.0.0.1"), action::DENY);
}

#[test]
fn random_models_agree_with_the_evaluator() {
    let seed = std::env::var("COMPILE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1234_u64);
    let mut rng = Rng::new(seed);
    let (mut compiled, mut unsupported, mut with_source_ports) = (0, 0, 0);
    for round in 0..150 {
        let model_seed = rng.next_u64();
        let mut mrng = Rng::new(model_seed);
        let model = random_model(&mut mrng, Shape::default());
        let compiled_model = compile_random(&model)
            .unwrap_or_else(|e| panic!("round {round} model seed {model_seed:#x}: {e}"));
        let Some(c) = compiled_model else {
            unsupported += 1;
            continue;
        };
        compiled += 1;
        with_source_ports += usize::from(c.endpoints.iter().any(|e| e.source_ports));
        let eps: Vec<usize> = c
            .endpoints
            .iter()
            .map(|e| e.endpoint_index)
            .filter(|&i| !model.endpoints[i].ips.is_empty())
            .collect();
        let probes: Vec<Probe> = (0..200)
            .map(|_| random_probe(&mut mrng, &model, &eps))
            .collect();
        let result = std::panic::catch_unwind(|| agree(&model, &c, &probes));
        if let Err(e) = result {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| format!("{e:?}"));
            panic!("round {round}, model seed {model_seed:#x}: {msg}\n{model:#?}");
        }
    }
    eprintln!(
        "{compiled} models compiled ({with_source_ports} with source-port classes), {unsupported} unsupported"
    );
    assert!(
        compiled > 130,
        "{compiled} compiled, {unsupported} unsupported"
    );
    assert!(
        with_source_ports > compiled / 4,
        "{with_source_ports} of {compiled}"
    );
}

#[test]
fn larger_model_compiles_in_parallel_deterministically_and_agrees() {
    let model = super::testgen::scale_model(64, 20, 3);
    let a = compile(&model).unwrap();
    let b = compile(&model).unwrap();
    assert_eq!(a.tables, b.tables);
    assert_eq!(a.endpoints, b.endpoints);
    assert!(a.endpoints.iter().any(|e| e.has_staged));
    let eps: Vec<usize> = a.endpoints.iter().map(|e| e.endpoint_index).collect();
    let mut rng = Rng::new(99);
    let probes: Vec<Probe> = (0..400)
        .map(|_| random_probe(&mut rng, &model, &eps))
        .collect();
    agree(&model, &a, &probes);
}

/// Every pod its own class (`pod in {..}` selectors over a label per pod):
/// the decision table is keyed by per-endpoint groups of equal rows, so 300
/// pods x 100 policies fit the default limits (keyed by the global class they
/// needed 263607 keys, over the 262144 of `RULES_*`), and the tables agree
/// with the evaluator.
#[test]
fn a_class_per_pod_fits_through_peer_groups() {
    let model = super::testgen::per_pod_label_model(300, 100, 7);
    let c = compile(&model).unwrap();
    assert!(c.stats.classes > 300, "{}", c.stats.classes);
    assert!(c.stats.rule_keys < 262144 / 2, "{}", summary(&c));
    assert_eq!(c.stats.group_entries, c.tables.groups.len());
    // Several groups per endpoint and direction, each from one distinct row.
    let mut per: std::collections::HashMap<(u32, Direction), std::collections::BTreeSet<u32>> =
        Default::default();
    for g in &c.tables.groups {
        per.entry((g.endpoint_id, g.direction))
            .or_default()
            .insert(g.group);
    }
    assert!(per.values().any(|gs| gs.len() > 2), "{per:?}");
    let eps: Vec<usize> = c.endpoints.iter().map(|e| e.endpoint_index).collect();
    let mut rng = Rng::new(17);
    let probes: Vec<Probe> = (0..3000)
        .map(|_| random_probe(&mut rng, &model, &eps))
        .collect();
    agree(&model, &c, &probes);
    // The group entries have their own limit, and name the endpoint.
    let l = Limits {
        group_entries: c.stats.group_entries - 1,
        ..Limits::default()
    };
    match compile_with_limits(&model, &l) {
        Err(CompileError::Capacity {
            limit, needed, max, ..
        }) => {
            assert_eq!(limit, "peer-group entries (GROUPS map)");
            assert_eq!((needed, max), (c.stats.group_entries, l.group_entries));
        }
        other => panic!("{:?}", other.map(|c| summary(&c))),
    }
}

/// One policy of N rules, each a distinct peer /32 with its own port: every
/// peer is its own group and the port axis has ~2N intervals, but a group only
/// evaluates at the breakpoints of the rules that can match it, so evaluator
/// calls grow linearly with N (they were groups x intervals, ~N^2: 1000 such
/// rules took 12.7 s in release).
#[test]
fn many_distinct_peer_port_rules_cost_linear_evaluations() {
    const RULES: usize = 300;
    let peer = |i: usize| format!("10.70.{}.{}", i / 250, i % 250 + 1);
    let mut pol = policy(PolicyKind::GlobalNetworkPolicy, "many", "app == 'database'");
    pol.ingress = (0..RULES)
        .map(|i| {
            let port = 10_000 + i as u16;
            let mut r = tcp_ports(Action::Allow, port, port);
            r.source.nets = vec![format!("{}/32", peer(i)).parse().unwrap()];
            r
        })
        .collect();
    pol.ingress.push(rule(Action::Deny));
    let mut model = seed();
    model.policies = vec![pol];
    let c = compile(&model).unwrap();
    assert!(c.stats.classes > RULES, "{} classes", c.stats.classes);
    assert!(
        c.stats.evaluations < 20 * RULES,
        "{} evaluator calls for {RULES} rules",
        c.stats.evaluations
    );
    // Each peer reaches its own port and only that one.
    let mut probes = Vec::new();
    for i in (0..RULES).step_by(7) {
        let port = 10_000 + i as u16;
        for p in [port - 1, port, port + 1, 10_000 + ((i + 1) % RULES) as u16] {
            probes.push(probe(
                2,
                Direction::Ingress,
                "10.65.0.3",
                &peer(i),
                Protocol::TCP.number(),
                p,
            ));
        }
    }
    agree(&model, &c, &probes);
}
