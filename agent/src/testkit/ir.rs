//! Builders of IR values for tests: the usual pod, host, policy and rule, each
//! a plain value the test then changes (`Policy { ingress, ..gnp(..) }`).
use std::net::IpAddr;

use ipnet::IpNet;

use crate::model::ir::{
    Action, Endpoint, EndpointKind, FailsafePort, Labels, Model, NamedPort, Policy, PolicyId,
    PolicyKind, PortMatch, PortRange, Protocol, Rule, StagedAction, Tier, TierDefault,
    LABEL_NAMESPACE,
};
use crate::model::lower::{builtin_tiers, DEFAULT_TIER};
use crate::selector::Selector;

/// An address; panics on a typo (tests only).
pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A CIDR; panics on a typo (tests only).
pub fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A pod in `ns` with `app=<name>`, the namespace label, interface
/// `cali<name>` and the `kns.<ns>` profile.
pub fn pod(ns: &str, name: &str, ips: &[&str]) -> Endpoint {
    Endpoint {
        kind: EndpointKind::Workload,
        namespace: Some(ns.into()),
        name: name.into(),
        labels: labels(&[("app", name), (LABEL_NAMESPACE, ns)]),
        interface: Some(format!("cali{name}")),
        ips: ips.iter().map(|s| ip(s)).collect(),
        named_ports: vec![],
        profiles: vec![format!("kns.{ns}")],
        pod: None,
        node: None,
    }
}

/// A host endpoint on `eth0` with `host=<name>` and no profiles.
pub fn host(name: &str, ips: &[&str]) -> Endpoint {
    Endpoint {
        kind: EndpointKind::Host,
        namespace: None,
        name: name.into(),
        labels: labels(&[("host", name)]),
        interface: Some("eth0".into()),
        ips: ips.iter().map(|s| ip(s)).collect(),
        named_ports: vec![],
        profiles: vec![],
        pod: None,
        node: None,
    }
}

/// An endpoint's port `name` = `protocol` `port`.
pub fn named_port(name: &str, protocol: Protocol, port: u16) -> NamedPort {
    NamedPort {
        name: name.into(),
        protocol,
        port,
    }
}

/// A failsafe port, from or to `net` only when given.
pub fn failsafe(protocol: Protocol, port: u16, net: Option<IpNet>) -> FailsafePort {
    FailsafePort {
        protocol,
        port,
        net,
    }
}

pub fn tier(name: &str, order: Option<f64>, default_action: TierDefault) -> Tier {
    Tier {
        name: name.into(),
        order,
        default_action,
    }
}

/// Calico's built-in tiers, these endpoints and policies.
pub fn model(endpoints: Vec<Endpoint>, policies: Vec<Policy>) -> Model {
    Model {
        tiers: builtin_tiers(),
        policies,
        endpoints: endpoints.into_iter().map(std::sync::Arc::new).collect(),
        ..Model::default()
    }
}

/// A port interval `first..=last`.
pub fn range(first: u16, last: u16) -> PortMatch {
    PortMatch::Range(PortRange { first, last })
}

/// A TCP rule to destination ports `first..=last`.
pub fn tcp_ports(action: Action, first: u16, last: u16) -> Rule {
    let mut r = Rule::matching_all(action);
    r.protocol = Some(Protocol::TCP);
    r.destination.ports = vec![range(first, last)];
    r
}

/// A policy of `kind` in the default tier on every endpoint, ingress only, no
/// rules (a staged kind has `stagedAction: Set`).
pub fn policy(kind: PolicyKind, namespace: Option<&str>, name: &str) -> Policy {
    Policy {
        id: PolicyId {
            kind,
            namespace: namespace.map(String::from),
            name: name.into(),
        },
        tier: DEFAULT_TIER.into(),
        order: None,
        selector: Selector::all(),
        ingress_type: true,
        egress_type: false,
        ingress: vec![],
        egress: vec![],
        staged_action: kind.is_staged().then_some(StagedAction::Set),
        do_not_track: false,
        pre_dnat: false,
        apply_on_forward: false,
    }
}

/// A GlobalNetworkPolicy on every endpoint, ingress only, with these rules.
pub fn gnp(name: &str, ingress: Vec<Rule>) -> Policy {
    Policy {
        ingress,
        ..policy(PolicyKind::GlobalNetworkPolicy, None, name)
    }
}

/// `p` in another tier, at `order`.
pub fn in_tier(mut p: Policy, tier: &str, order: Option<f64>) -> Policy {
    p.tier = tier.into();
    p.order = order;
    p
}

/// `p` on the endpoints `selector` matches.
pub fn selecting(mut p: Policy, selector: Selector) -> Policy {
    p.selector = selector;
    p
}

/// `p` with egress rules only.
pub fn egress_only(mut p: Policy, egress: Vec<Rule>) -> Policy {
    p.ingress_type = false;
    p.egress_type = true;
    p.egress = egress;
    p
}

/// `p` as its staged kind, with `action` (None: unset).
pub fn staged(mut p: Policy, action: Option<StagedAction>) -> Policy {
    p.id.kind = match p.id.kind {
        PolicyKind::GlobalNetworkPolicy => PolicyKind::StagedGlobalNetworkPolicy,
        PolicyKind::NetworkPolicy => PolicyKind::StagedNetworkPolicy,
        PolicyKind::KubernetesNetworkPolicy => PolicyKind::StagedKubernetesNetworkPolicy,
        k => k,
    };
    p.staged_action = action;
    p
}
