//! Test support shared by the compiler's unit tests and the kernel differential
//! test (`tests/tests/bpf_differential.rs`): random models, random probes, and a
//! userspace model of the kernel's lookups over an encoded [`TableSet`].
//! Not used by the agent itself.
use std::collections::HashMap;
use std::net::IpAddr;

use agent_common::{GroupKey, RuleKey, SourcePortKey, Verdict, PEER_CLASS_WORLD, PEER_GROUP_ANY};
use ipnet::IpNet;

use super::{CompileError, Compiled};
use crate::dataplane::exact::{self, HOST_PREFIX};
use crate::dataplane::tables::{addr_bytes, direction_code, TableError, TableSet};
use crate::eval::{EndVerdict, Evaluator, Packet, PolicySet};
use crate::model::ir::{
    Action, Direction, Endpoint, EndpointKind, EntityRule, IcmpMatch, Labels, Model, NetworkSet,
    Policy, PolicyId, PolicyKind, PortMatch, Profile, Protocol, Rule, StagedAction, TierDefault,
    LABEL_NAMESPACE,
};
use crate::model::lower::builtin_tiers;
use crate::selector::{parse, Selector};
use crate::testkit::ir::{failsafe, labels, named_port, range, tier};

/// xorshift64*: small, deterministic, no dependency.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
    pub fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }
}

pub const V4_POOL: [&str; 6] = [
    "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.9", "10.0.1.5",
];
pub const V6_POOL: [&str; 6] = [
    "fd00::1", "fd00::2", "fd00::3", "fd00::4", "fd00::9", "fd01::5",
];
/// Addresses no endpoint has (some inside network sets or rule nets).
pub const OUTSIDE: [&str; 10] = [
    "10.0.0.6",
    "10.0.1.7",
    "10.0.0.200",
    "192.168.3.3",
    "8.8.8.8",
    "fd00::6",
    "fd01::77",
    "fd00::c8",
    "2001:db8::1",
    "fe80::1",
];
const NETS: [&str; 16] = [
    "10.0.0.0/29",
    "10.0.0.0/24",
    "10.0.1.0/24",
    "10.0.0.2/32",
    "10.0.0.4/31",
    "192.168.0.0/16",
    "0.0.0.0/0",
    "8.8.8.8/32",
    "fd00::/125",
    "fd00::/64",
    "fd01::/64",
    "fd00::2/128",
    "fd00::4/127",
    "::/0",
    "2001:db8::/32",
    "10.0.0.0/8",
];
const SELECTORS: [&str; 9] = [
    "all()",
    "app == 'a'",
    "app != 'b'",
    "has(role)",
    "role in {'x'}",
    "!has(app)",
    "app == 'c' || role == 'y'",
    "kind == 'ext'",
    "has(app) && !has(role)",
];
pub const PORTS: [u16; 20] = [
    22, 53, 67, 68, 80, 81, 179, 999, 1000, 1500, 2000, 2001, 6443, 8000, 8080, 8100, 8101, 9000,
    0, 65535,
];
/// Source ports of probes: the bounds of [`port_match`]'s ranges and named
/// ports (and their neighbours), the evaluator's usual ephemeral port, extremes.
pub const SOURCE_PORTS: [u16; 27] = [
    0, 1, 2, 22, 23, 52, 53, 54, 79, 80, 81, 999, 1000, 1023, 1024, 2000, 2001, 6443, 7999, 8000,
    8080, 8100, 8101, 9000, 9001, 40000, 65535,
];
pub const ICMP_TYPES: [u8; 6] = [0, 3, 8, 11, 128, 129];
pub const ICMP_CODES: [u8; 3] = [0, 1, 4];

fn sel(rng: &mut Rng) -> Selector {
    parse(rng.pick(&SELECTORS)).expect("vocabulary selectors parse")
}

fn net(rng: &mut Rng) -> IpNet {
    rng.pick(&NETS).parse().unwrap()
}

/// Options for [`random_model`].
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Percent of port-protocol rules with source ports (and, half as often, notPorts).
    pub source_ports: u64,
    /// Percent of endpoints with two addresses of a family.
    pub two_addresses: u64,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            source_ports: 25,
            two_addresses: 5,
        }
    }
}

/// A small random model: 2-5 workloads (sometimes a host endpoint), network
/// sets, tiers with Pass and Deny defaults, enforced and staged policies.
pub fn random_model(rng: &mut Rng, shape: Shape) -> Model {
    let mut endpoints = Vec::new();
    let n = 2 + rng.below(4);
    let mut v4: Vec<&str> = V4_POOL.to_vec();
    let mut v6: Vec<&str> = V6_POOL.to_vec();
    for i in 0..n {
        let host = i == n - 1 && rng.chance(40);
        let ns = rng.pick(&["n1", "n2"]);
        let mut l = Labels::new();
        if rng.chance(80) {
            l.insert("app".into(), rng.pick(&["a", "b", "c"]).into());
        }
        if rng.chance(50) {
            l.insert("role".into(), rng.pick(&["x", "y"]).into());
        }
        if !host {
            l.insert(LABEL_NAMESPACE.into(), ns.into());
        }
        let mut ips: Vec<IpAddr> = Vec::new();
        let (want4, want6) = match rng.below(5) {
            0 => (true, false),
            1 => (false, true),
            _ => (true, true),
        };
        let mut take = |pool: &mut Vec<&str>, rng: &mut Rng| {
            if !pool.is_empty() {
                let k = rng.below(pool.len());
                ips.push(pool.remove(k).parse().unwrap());
            }
        };
        if want4 {
            take(&mut v4, rng);
            if rng.chance(shape.two_addresses) {
                take(&mut v4, rng);
            }
        }
        if want6 {
            take(&mut v6, rng);
        }
        let mut named_ports = Vec::new();
        if rng.chance(50) {
            named_ports.push(named_port("http", Protocol::TCP, rng.pick(&[80, 8080])));
        }
        if rng.chance(30) {
            named_ports.push(named_port("dns", Protocol::UDP, 53));
        }
        let profiles = if host {
            vec![]
        } else {
            match rng.below(4) {
                0 => vec![],
                1 => vec!["p1".into()],
                _ => vec![format!("kns.{ns}")],
            }
        };
        endpoints.push(Endpoint {
            kind: if host {
                EndpointKind::Host
            } else {
                EndpointKind::Workload
            },
            namespace: (!host).then(|| ns.to_string()),
            name: format!("ep{i}"),
            labels: l,
            // Some workloads live elsewhere: peers only, not compiled.
            interface: (host || !rng.chance(15)).then(|| format!("ep{i}")),
            ips,
            named_ports,
            profiles,
            pod: None,
            node: None,
        });
    }
    let mut network_sets = vec![NetworkSet {
        namespace: None,
        name: "ext".into(),
        labels: labels(&[("kind", "ext")]),
        nets: vec![net(rng), net(rng)],
    }];
    if rng.chance(50) {
        network_sets.push(NetworkSet {
            namespace: None,
            name: "more".into(),
            labels: labels(&[("app", "c")]),
            nets: vec![net(rng)],
        });
    }
    let mut tiers = builtin_tiers();
    tiers.push(tier(
        "sec",
        rng.pick(&[Some(100.0), None]),
        rng.pick(&[TierDefault::Pass, TierDefault::Deny]),
    ));
    let tier_names = ["default", "default", "sec", "kube-admin", "kube-baseline"];
    let mut policies = Vec::new();
    let names = ["p-a", "p-b", "p-c", "p-d"];
    for i in 0..1 + rng.below(5) {
        policies.push(random_policy(
            rng,
            shape,
            false,
            names[i % names.len()],
            &tier_names,
            i,
        ));
    }
    for i in 0..rng.below(4) {
        let name = names[rng.below(names.len())];
        policies.push(random_policy(rng, shape, true, name, &tier_names, i));
    }
    // Identities must be unique.
    let mut seen = std::collections::HashSet::new();
    policies.retain(|p: &Policy| seen.insert(p.id.clone()));
    let profiles = vec![Profile {
        name: "p1".into(),
        ingress: (0..rng.below(3)).map(|_| random_rule(rng, shape)).collect(),
        egress: (0..rng.below(3)).map(|_| random_rule(rng, shape)).collect(),
        labels_to_apply: Labels::new(),
    }];
    let mut failsafes = crate::model::ir::Failsafes::default();
    if rng.chance(30) {
        failsafes
            .inbound
            .push(failsafe(Protocol::TCP, 8080, Some(net(rng))));
    }
    let mut model = Model {
        tiers,
        policies,
        profiles,
        endpoints: endpoints.into_iter().map(std::sync::Arc::new).collect(),
        network_sets,
        failsafes,
        namespaces: Default::default(),
        services: Vec::new(),
    };
    with_services(rng, &mut model);
    model
}

/// Two Services over some endpoints' addresses (and an outside one), one set
/// of ports per backend set, and some rules' peer side turned into a
/// `services` match (one naming a Service that does not exist), resolved as
/// the loader resolves them.
fn with_services(rng: &mut Rng, model: &mut Model) {
    use crate::model::ir::{BackendSet, Service, ServiceRef};
    let addresses: Vec<IpAddr> = model
        .endpoints
        .iter()
        .flat_map(|e| e.ips.iter().copied())
        .chain(OUTSIDE.iter().map(|s| s.parse().unwrap()))
        .collect();
    for name in ["s1", "s2"] {
        let backends = (0..1 + rng.below(2))
            .map(|_| BackendSet {
                addresses: (0..1 + rng.below(3))
                    .map(|_| rng.pick(&addresses))
                    .collect(),
                ports: (0..1 + rng.below(2))
                    .map(|_| (rng.pick(&[Protocol::TCP, Protocol::UDP]), rng.pick(&PORTS)))
                    .collect(),
            })
            .collect();
        model.services.push(Service {
            namespace: "n1".into(),
            name: name.into(),
            frontends: Vec::new(),
            defined: true,
            backends,
        });
    }
    let rules = model.policies.iter_mut().flat_map(|p| {
        let (ingress, egress) = (&mut p.ingress, &mut p.egress);
        ingress
            .iter_mut()
            .map(|r| (r, false))
            .chain(egress.iter_mut().map(|r| (r, true)))
    });
    for (rule, egress) in rules {
        if !rng.chance(20) {
            continue;
        }
        let side = if egress {
            &mut rule.destination
        } else {
            &mut rule.source
        };
        *side = EntityRule {
            ports: if egress {
                Vec::new()
            } else {
                side.ports.clone()
            },
            services: Some(ServiceRef {
                namespace: "n1".into(),
                name: rng.pick(&["s1", "s2", "gone"]).into(),
            }),
            ..EntityRule::default()
        };
    }
    crate::model::services::resolve_rules(model);
}

fn random_policy(
    rng: &mut Rng,
    shape: Shape,
    staged: bool,
    name: &str,
    tier_names: &[&str],
    i: usize,
) -> Policy {
    let namespaced = rng.chance(30);
    let k8s = namespaced && rng.chance(30);
    let kind = match (staged, namespaced, k8s) {
        (false, false, _) => PolicyKind::GlobalNetworkPolicy,
        (false, true, false) => PolicyKind::NetworkPolicy,
        (false, true, true) => PolicyKind::KubernetesNetworkPolicy,
        (true, false, _) => PolicyKind::StagedGlobalNetworkPolicy,
        (true, true, false) => PolicyKind::StagedNetworkPolicy,
        (true, true, true) => PolicyKind::StagedKubernetesNetworkPolicy,
    };
    let namespace = namespaced.then(|| "n1".to_string());
    let mut selector = sel(rng);
    if namespaced {
        selector = selector.and(Selector::equals(LABEL_NAMESPACE, "n1"));
    }
    let (ingress_type, egress_type) = match rng.below(3) {
        0 => (true, false),
        1 => (false, true),
        _ => (true, true),
    };
    let rules = |rng: &mut Rng| -> Vec<Rule> {
        (0..rng.below(4)).map(|_| random_rule(rng, shape)).collect()
    };
    let ingress = rules(rng);
    let egress = rules(rng);
    // Host-endpoint phases (global policies only): untracked, pre-DNAT (ingress only).
    let do_not_track = !namespaced && rng.chance(10);
    let pre_dnat = !namespaced && !do_not_track && !egress_type && rng.chance(10);
    Policy {
        id: PolicyId {
            kind,
            namespace,
            name: name.into(),
        },
        tier: rng.pick(tier_names).to_string(),
        order: rng.pick(&[None, Some(1.0), Some(5.0), Some(10.0), Some(i as f64)]),
        selector,
        ingress_type,
        egress_type,
        ingress,
        egress,
        staged_action: staged.then(|| {
            rng.pick(&[
                StagedAction::Set,
                StagedAction::Learn,
                StagedAction::Delete,
                StagedAction::Ignore,
            ])
        }),
        do_not_track,
        pre_dnat,
        apply_on_forward: do_not_track || pre_dnat,
    }
}

fn port_match(rng: &mut Rng) -> PortMatch {
    match rng.below(6) {
        0 => PortMatch::Named(rng.pick(&["http", "dns", "nope"]).into()),
        1 => {
            let (a, b) = rng.pick(&[(1000, 2000), (8000, 8100), (1, 1023), (53, 80)]);
            range(a, b)
        }
        _ => {
            let p = rng.pick(&[22, 53, 80, 8080, 6443, 9000]);
            range(p, p)
        }
    }
}

fn random_entity(rng: &mut Rng, ports: bool) -> EntityRule {
    let mut e = EntityRule::default();
    if rng.chance(25) {
        e.nets = (0..1 + rng.below(2)).map(|_| net(rng)).collect();
    }
    if rng.chance(10) {
        e.not_nets = vec![net(rng)];
    }
    if rng.chance(30) {
        e.selector = Some(sel(rng));
    }
    if rng.chance(10) {
        e.not_selector = Some(sel(rng));
    }
    if ports && rng.chance(50) {
        e.ports = (0..1 + rng.below(2)).map(|_| port_match(rng)).collect();
    }
    if ports && rng.chance(10) {
        e.not_ports = vec![port_match(rng)];
    }
    e
}

pub fn random_rule(rng: &mut Rng, shape: Shape) -> Rule {
    let action = rng.pick(&[
        Action::Allow,
        Action::Allow,
        Action::Deny,
        Action::Pass,
        Action::Log,
    ]);
    let protocol = rng.pick(&[
        None,
        None,
        Some(Protocol::TCP),
        Some(Protocol::TCP),
        Some(Protocol::UDP),
        Some(Protocol::ICMP),
        Some(Protocol::ICMPV6),
        Some(Protocol::SCTP),
        Some(Protocol::from_number(47)),
    ]);
    let ports = protocol.is_some_and(Protocol::has_rule_ports);
    let icmp = protocol.is_some_and(Protocol::is_icmp);
    let icmp_match = |rng: &mut Rng| IcmpMatch {
        icmp_type: rng.pick(&ICMP_TYPES),
        code: rng.chance(50).then(|| rng.pick(&ICMP_CODES)),
    };
    let mut source = random_entity(rng, false);
    if ports && rng.chance(shape.source_ports) {
        source.ports = (0..1 + rng.below(2)).map(|_| port_match(rng)).collect();
    }
    if ports && rng.chance(shape.source_ports / 2) {
        source.not_ports = vec![port_match(rng)];
    }
    Rule {
        action,
        ip_version: rng.pick(&[None, None, None, Some(4), Some(6)]),
        protocol,
        not_protocol: (protocol.is_none() && rng.chance(15))
            .then(|| rng.pick(&[Protocol::TCP, Protocol::UDP, Protocol::ICMP])),
        icmp: (icmp && rng.chance(60)).then(|| icmp_match(rng)),
        not_icmp: (icmp && rng.chance(15)).then(|| icmp_match(rng)),
        source,
        destination: random_entity(rng, ports),
    }
}

/// One question for the tables and the evaluator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    pub endpoint_index: usize,
    pub direction: Direction,
    pub local: IpAddr,
    pub peer: IpAddr,
    pub protocol: u8,
    pub src_port: u16,
    /// The kernel's port value: destination port, or ICMP `type << 8 | code`.
    pub port: u16,
}

impl Probe {
    pub fn packet(&self) -> Packet {
        super::ports::packet(self.protocol, self.src_port, self.port)
    }

    /// What the evaluator answers for this probe under `set`.
    pub fn evaluate(&self, evaluator: &Evaluator, set: PolicySet) -> EndVerdict {
        evaluator.evaluate_end(
            set,
            self.endpoint_index,
            self.direction,
            self.peer,
            self.local,
            &self.packet(),
        )
    }
}

/// A random model compiled; None for the models [`random_model`] makes
/// uncompilable on purpose (verdicts that depend on which of an endpoint's two
/// own addresses a packet uses).
pub fn compile_random(model: &Model) -> Result<Option<Compiled>, CompileError> {
    match super::compile(model) {
        Ok(c) => Ok(Some(c)),
        Err(CompileError::Unsupported { what, .. }) if what.contains("own addresses") => Ok(None),
        Err(e) => Err(e),
    }
}

/// A random probe on one of `endpoints` (indexes into `model.endpoints`; each
/// must have an address): its own address, a peer from the pools, the network
/// sets or outside.
pub fn random_probe(rng: &mut Rng, model: &Model, endpoints: &[usize]) -> Probe {
    // Sometimes aimed at a rule on source ports (else they rarely decide).
    let aim = if rng.chance(30) {
        aim_at_source_ports(rng, model, endpoints)
    } else {
        None
    };
    let endpoint_index = match &aim {
        Some(a) => a.endpoint_index,
        None => rng.pick(endpoints),
    };
    let e = &model.endpoints[endpoint_index];
    let local = rng.pick(&e.ips);
    let v6 = local.is_ipv6();
    let mut peers: Vec<IpAddr> = model
        .endpoints
        .iter()
        .flat_map(|e| e.ips.iter().copied())
        .chain(OUTSIDE.iter().map(|s| s.parse().unwrap()))
        .chain(
            model
                .network_sets
                .iter()
                .flat_map(|s| s.nets.iter())
                .map(|n| {
                    // The last address of the net.
                    n.broadcast()
                }),
        )
        .filter(|ip: &IpAddr| ip.is_ipv6() == v6)
        .collect();
    peers.sort();
    peers.dedup();
    let peer = rng.pick(&peers);
    let icmp = if v6 { Protocol::ICMPV6 } else { Protocol::ICMP }.number();
    let protocol = rng.pick(&[
        Protocol::TCP.number(),
        Protocol::TCP.number(),
        Protocol::UDP.number(),
        Protocol::SCTP.number(),
        icmp,
        icmp,
        47,
    ]);
    let port = if protocol == icmp {
        u16::from(rng.pick(&ICMP_TYPES)) << 8 | u16::from(rng.pick(&ICMP_CODES))
    } else if protocol == 47 {
        0
    } else if rng.chance(85) {
        rng.pick(&PORTS)
    } else {
        rng.next_u64() as u16
    };
    let probe = Probe {
        endpoint_index,
        direction: rng.pick(&[Direction::Ingress, Direction::Egress]),
        local,
        peer,
        protocol,
        src_port: random_source_port(rng, model),
        port,
    };
    match aim {
        Some(a) => Probe {
            direction: a.direction,
            protocol: a.protocol,
            src_port: a.src_port,
            port: a.port,
            ..probe
        },
        None => probe,
    }
}

/// What [`aim_at_source_ports`] fixes of a probe.
struct Aim {
    endpoint_index: usize,
    direction: Direction,
    protocol: u8,
    src_port: u16,
    port: u16,
}

/// A rule with source ports of a policy or profile that applies to one of
/// `endpoints`: that endpoint and direction, the rule's protocol, and ports its
/// matches name (a bound of a range, or a named port's value).
fn aim_at_source_ports(rng: &mut Rng, model: &Model, endpoints: &[usize]) -> Option<Aim> {
    let mut targets: Vec<(Vec<usize>, Direction, &Rule)> = Vec::new();
    let applies = |f: &dyn Fn(&Endpoint) -> bool| -> Vec<usize> {
        endpoints
            .iter()
            .copied()
            .filter(|&i| f(&model.endpoints[i]))
            .collect()
    };
    for p in &model.policies {
        let eps = applies(&|e| p.selector.evaluate(&e.labels));
        for d in [Direction::Ingress, Direction::Egress] {
            for r in p.rules(d) {
                targets.push((eps.clone(), d, r));
            }
        }
    }
    for p in &model.profiles {
        let eps = applies(&|e| e.profiles.contains(&p.name));
        for (d, rules) in [
            (Direction::Ingress, &p.ingress),
            (Direction::Egress, &p.egress),
        ] {
            for r in rules {
                targets.push((eps.clone(), d, r));
            }
        }
    }
    targets.retain(|(eps, _, r)| {
        !eps.is_empty() && r.protocol.is_some() && !r.source.ports.is_empty()
    });
    if targets.is_empty() {
        return None;
    }
    let (eps, direction, rule) = rng.pick(&targets);
    let protocol = rule.protocol?.number();
    let value = |rng: &mut Rng, m: &PortMatch| match m {
        PortMatch::Range(r) => {
            if rng.chance(50) {
                r.first
            } else {
                r.last
            }
        }
        PortMatch::Named(name) => {
            let ports: Vec<u16> = model
                .endpoints
                .iter()
                .flat_map(|e| &e.named_ports)
                .filter(|np| &np.name == name)
                .map(|np| np.port)
                .collect();
            if ports.is_empty() {
                rng.pick(&PORTS)
            } else {
                rng.pick(&ports)
            }
        }
    };
    let src_port = {
        let m = rng.pick(&rule.source.ports);
        value(rng, &m)
    };
    let port = if rule.destination.ports.is_empty() {
        rng.pick(&PORTS)
    } else {
        let m = rng.pick(&rule.destination.ports);
        value(rng, &m)
    };
    Some(Aim {
        endpoint_index: rng.pick(&eps),
        direction,
        protocol,
        src_port,
        port,
    })
}

/// Half the time a bound of one of the model's source-port matches (or its
/// neighbour), else mostly one of [`SOURCE_PORTS`], sometimes any port.
pub fn random_source_port(rng: &mut Rng, model: &Model) -> u16 {
    let mut bounds: Vec<u16> = Vec::new();
    let rules = model.all_rules();
    for m in rules.flat_map(|r| r.source.ports.iter().chain(&r.source.not_ports)) {
        match m {
            PortMatch::Range(r) => bounds.extend([
                r.first.saturating_sub(1),
                r.first,
                r.last,
                r.last.saturating_add(1),
            ]),
            PortMatch::Named(name) => bounds.extend(
                model
                    .endpoints
                    .iter()
                    .flat_map(|e| &e.named_ports)
                    .filter(|np| &np.name == name)
                    .flat_map(|np| [np.port, np.port + 1]),
            ),
        }
    }
    if !bounds.is_empty() && rng.chance(50) {
        rng.pick(&bounds)
    } else if rng.chance(70) {
        rng.pick(&SOURCE_PORTS)
    } else {
        rng.next_u64() as u16
    }
}

/// The kernel's lookups over encoded tables, in userspace.
pub struct TableModel {
    /// `PEER_HOSTS_*`: host prefixes, exact.
    peer_hosts: HashMap<[u8; 16], u32>,
    /// `PEERS_*`: the shorter prefixes, longest match.
    peers: HashMap<(u32, [u8; 16]), u32>,
    /// `RULE_PORTS_*`: exact-port keys, exact.
    rule_ports: HashMap<RuleKey, Verdict>,
    /// `RULES_*`: the shorter keys, longest match.
    rules: HashMap<(u32, [u8; 16]), Verdict>,
    sports: HashMap<(u32, [u8; 8]), u8>,
    groups: HashMap<GroupKey, u32>,
    /// Endpoints with `SPORTS_*` entries: the compiler sets `SOURCE_PORTS` on
    /// exactly these (`compile::tests` checks it).
    source_port_endpoints: std::collections::HashSet<u32>,
}

fn sport_key_bytes(k: &SourcePortKey) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0..4].copy_from_slice(&k.endpoint_id.to_ne_bytes());
    b[4] = k.direction;
    b[5] = k.protocol;
    b[6..8].copy_from_slice(&k.port);
    b
}

fn key_bytes(k: &RuleKey) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&k.endpoint_id.to_ne_bytes());
    b[4..8].copy_from_slice(&k.peer_group.to_ne_bytes());
    b[8] = k.direction;
    b[9] = k.table;
    b[10] = k.protocol;
    b[11] = k.source_port_class;
    b[12..14].copy_from_slice(&k.port);
    b[14..16].copy_from_slice(&k._pad2);
    b
}

/// The first `len` bits of `b` (LPM tries compare data as a big-endian bit string).
fn mask<const N: usize>(mut b: [u8; N], len: u32) -> [u8; N] {
    for (i, byte) in b.iter_mut().enumerate() {
        let bit = (i * 8) as u32;
        if bit >= len {
            *byte = 0;
        } else if bit + 8 > len {
            *byte &= 0xffu8 << (8 - (len - bit));
        }
    }
    b
}

impl TableModel {
    pub fn new(tables: &TableSet) -> Result<Self, TableError> {
        let enc = tables.encode()?;
        let peers = exact::peers(&enc.peers);
        let rules = exact::rules(&enc.rules);
        Ok(TableModel {
            peer_hosts: peers.exact.into_iter().collect(),
            peers: peers
                .prefixes
                .iter()
                .map(|(l, a, c)| ((*l, mask(*a, *l)), *c))
                .collect(),
            rule_ports: rules.exact.into_iter().collect(),
            rules: rules
                .prefixes
                .iter()
                .map(|(l, k, v)| ((*l, mask(key_bytes(k), *l)), *v))
                .collect(),
            sports: enc
                .sports
                .iter()
                .map(|(l, k, c)| ((*l, mask(sport_key_bytes(k), *l)), *c))
                .collect(),
            groups: enc.groups.iter().copied().collect(),
            source_port_endpoints: enc.sports.iter().map(|(_, k, _)| k.endpoint_id).collect(),
        })
    }

    /// The source-port class the kernel uses (0 without `SOURCE_PORTS`, for
    /// protocols without ports, and on a miss).
    pub fn source_port_class(
        &self,
        endpoint_id: u32,
        direction: Direction,
        protocol: u8,
        src_port: u16,
    ) -> u8 {
        let ports = Protocol::from_number(protocol).carries_ports();
        if !ports || !self.source_port_endpoints.contains(&endpoint_id) {
            return 0;
        }
        let b = sport_key_bytes(&SourcePortKey {
            endpoint_id,
            direction: direction_code(direction),
            protocol,
            port: src_port.to_be_bytes(),
        });
        (0..=SourcePortKey::FULL_PREFIX)
            .rev()
            .find_map(|l| self.sports.get(&(l, mask(b, l))).copied())
            .unwrap_or(0)
    }

    /// The host hash, then the trie of shorter prefixes (the kernel's order).
    pub fn class(&self, peer: IpAddr) -> u32 {
        let a = addr_bytes(peer);
        if let Some(class) = self.peer_hosts.get(&a) {
            return *class;
        }
        (0..HOST_PREFIX)
            .rev()
            .find_map(|l| self.peers.get(&(l, mask(a, l))).copied())
            .unwrap_or(PEER_CLASS_WORLD)
    }

    /// The class's group for the endpoint and direction (a miss: the wildcard).
    pub fn group(&self, endpoint_id: u32, direction: Direction, class: u32) -> u32 {
        let key = GroupKey {
            endpoint_id,
            peer_class: class,
            direction: direction_code(direction),
            _pad: [0; 3],
        };
        self.groups.get(&key).copied().unwrap_or(PEER_GROUP_ANY)
    }

    /// The exact-port hash, then the trie of shorter keys (the kernel's order).
    fn longest(&self, key: &RuleKey) -> Option<Verdict> {
        if let Some(v) = self.rule_ports.get(key) {
            return Some(*v);
        }
        let b = key_bytes(key);
        (0..RuleKey::EXACT_PORT_PREFIX)
            .rev()
            .find_map(|l| self.rules.get(&(l, mask(b, l))).copied())
    }

    /// What the kernel decides for a flow from source port `src_port` to `port`
    /// (ICMP: `type << 8 | code`): the peer's class, its group, then own group
    /// (unless the wildcard), then the wildcard group, else `NO_ENTRY`.
    #[allow(clippy::too_many_arguments)]
    pub fn lookup(
        &self,
        endpoint_id: u32,
        direction: Direction,
        pending: bool,
        peer: IpAddr,
        protocol: u8,
        src_port: u16,
        port: u16,
    ) -> Verdict {
        let group = self.group(endpoint_id, direction, self.class(peer));
        let key = RuleKey {
            endpoint_id,
            peer_group: group,
            direction: direction_code(direction),
            table: u8::from(pending),
            protocol,
            source_port_class: self.source_port_class(endpoint_id, direction, protocol, src_port),
            port: port.to_be_bytes(),
            _pad2: [0; 2],
        };
        let own = if group == PEER_GROUP_ANY {
            None
        } else {
            self.longest(&key)
        };
        own.or_else(|| {
            self.longest(&RuleKey {
                peer_group: PEER_GROUP_ANY,
                ..key
            })
        })
        .unwrap_or(Verdict::NO_ENTRY)
    }
}

/// [`scale_model`] where every pod has its own label (`pod=<i>`), plus 50
/// copies of its first policies admitting 20 named pods each (`pod in {..}`):
/// nearly every pod becomes its own peer class.
pub fn per_pod_label_model(endpoints: usize, policies: usize, seed: u64) -> Model {
    let mut model = scale_model(endpoints, policies, seed);
    for (i, ep) in model.endpoints.iter_mut().enumerate() {
        std::sync::Arc::make_mut(ep)
            .labels
            .insert("pod".into(), i.to_string());
    }
    let mut rng = Rng::new(5);
    for k in 0..50.min(policies) {
        let mut pol = model.policies[k].clone();
        pol.id.name = format!("pods{k}");
        let names: Vec<String> = (0..20)
            .map(|_| format!("'{}'", rng.below(endpoints)))
            .collect();
        pol.ingress[0].source.selector =
            Some(parse(&format!("pod in {{{}}}", names.join(","))).unwrap());
        model.policies.push(pol);
    }
    model
}

/// A larger, regular model for timing the compiler: `endpoints` workloads over 10
/// apps and 3 namespaces (IPv4 and IPv6 each), `policies` policies (every tenth
/// staged) with selector, CIDR and port rules in both directions.
pub fn scale_model(endpoints: usize, policies: usize, seed: u64) -> Model {
    let mut rng = Rng::new(seed);
    let app = |i: usize| format!("app{}", i % 10);
    let eps = (0..endpoints)
        .map(|i| {
            let ns = format!("ns{}", i % 3);
            let mut l = labels(&[("tier", ["web", "api", "db"][i % 3])]);
            l.insert("app".into(), app(i));
            l.insert(LABEL_NAMESPACE.into(), ns.clone());
            Endpoint {
                kind: EndpointKind::Workload,
                namespace: Some(ns.clone()),
                name: format!("pod{i}"),
                labels: l,
                interface: Some(format!("cali{i}")),
                ips: vec![
                    format!("10.{}.{}.{}", 64 + i / 65536, (i / 256) % 256, i % 256)
                        .parse()
                        .unwrap(),
                    format!("fd00::{:x}", i + 1).parse().unwrap(),
                ],
                named_ports: vec![named_port("http", Protocol::TCP, 8080)],
                profiles: vec![format!("kns.{ns}")],
                pod: None,
                node: None,
            }
        })
        .map(std::sync::Arc::new)
        .collect();
    let mut out = Vec::new();
    for i in 0..policies {
        let staged = i % 10 == 9;
        let from = |rng: &mut Rng| parse(&format!("app == '{}'", app(rng.below(10)))).unwrap();
        let tcp = |ports: Vec<PortMatch>, src: EntityRule| Rule {
            protocol: Some(Protocol::TCP),
            source: src,
            destination: EntityRule {
                ports,
                ..EntityRule::default()
            },
            ..Rule::matching_all(Action::Allow)
        };
        let port = |p: u16| range(p, p);
        let ingress = vec![
            tcp(
                vec![
                    port(8000 + (i % 50) as u16),
                    PortMatch::Named("http".into()),
                ],
                EntityRule {
                    selector: Some(from(&mut rng)),
                    ..EntityRule::default()
                },
            ),
            tcp(
                vec![range(9000, 9000 + (i % 20) as u16)],
                EntityRule {
                    nets: vec![format!("172.16.{}.0/24", i % 64).parse().unwrap()],
                    ..EntityRule::default()
                },
            ),
        ];
        let mut dns = tcp(vec![port(53)], EntityRule::default());
        dns.protocol = Some(Protocol::UDP);
        let egress = vec![dns, tcp(vec![port(5432)], EntityRule::default())];
        let mut egress = egress;
        egress[1].destination.selector = Some(from(&mut rng));
        out.push(Policy {
            id: PolicyId {
                kind: if staged {
                    PolicyKind::StagedGlobalNetworkPolicy
                } else {
                    PolicyKind::GlobalNetworkPolicy
                },
                namespace: None,
                name: format!("pol{i}"),
            },
            tier: "default".into(),
            order: Some(i as f64),
            selector: parse(&format!("app == '{}'", app(i))).unwrap(),
            ingress_type: true,
            egress_type: true,
            ingress,
            egress,
            staged_action: staged.then_some(StagedAction::Set),
            do_not_track: false,
            pre_dnat: false,
            apply_on_forward: false,
        });
    }
    Model {
        tiers: vec![tier("default", Some(1_000_000.0), TierDefault::Deny)],
        policies: out,
        endpoints: eps,
        ..Model::default()
    }
}
