//! networking.k8s.io/v1 NetworkPolicy (and StagedKubernetesNetworkPolicy):
//! checked with Kubernetes' rules and turned into the Calico NetworkPolicy
//! Calico makes of it (conversion.go: order 1000, tier default, one Allow
//! rule per protocol and peer), which is then lowered like any other.
use std::collections::BTreeMap;

use super::policy::{from_spec, staged_action, staged_delete_is_empty};
use super::policy::{DEFAULT_TIER, K8S_POLICY_ORDER};
use super::{check_labels, each, fields, namespace_of, Issues, Lowered};
use crate::model::ir::LABEL_ORCHESTRATOR;
use crate::model::ir::{PolicyId, PolicyKind, PortMatch, Protocol, StagedAction};
use crate::model::resources::{self as res, IntOrString, K8sPolicySpec, Object, PolicySpec};

pub(super) fn policy(
    v: &mut Issues,
    o: &Object<K8sPolicySpec>,
    kind: PolicyKind,
) -> Option<Lowered> {
    let s = &o.spec;
    let selector = label_selector(v, "spec.podSelector", Some(&s.pod_selector), true);
    let types = policy_types(v, s);
    let staged = staged_action(v, &s.staged_action, kind.is_staged());
    if staged == Some(Some(StagedAction::Delete)) {
        let empty = K8sPolicySpec {
            staged_action: s.staged_action.clone(),
            ..Default::default()
        };
        staged_delete_is_empty(v, s, &empty);
    }
    let ingress = each(&s.ingress, |i, r| {
        let peers = peers(v, &format!("spec.ingress[{i}].from"), &r.from);
        let ports = ports(v, &format!("spec.ingress[{i}].ports"), &r.ports);
        Some(calico_rules(&peers?, &ports?, true))
    });
    let egress = each(&s.egress, |i, r| {
        let peers = peers(v, &format!("spec.egress[{i}].to"), &r.to);
        let ports = ports(v, &format!("spec.egress[{i}].ports"), &r.ports);
        Some(calico_rules(&peers?, &ports?, false))
    });
    let spec = PolicySpec {
        tier: Some(DEFAULT_TIER.into()),
        order: Some(K8S_POLICY_ORDER),
        selector: selector?,
        types: Some(types?),
        ingress: ingress?.concat(),
        egress: egress?.concat(),
        ..Default::default()
    };
    let id = PolicyId {
        kind,
        namespace: Some(namespace_of(&o.metadata).into()),
        name: o.metadata.name.clone(),
    };
    let mut made = Issues::default();
    let policy = from_spec(&mut made, id, &spec, false);
    // What Kubernetes accepts Calico accepts too; should that ever not hold,
    // the policy is refused, not loaded in part.
    for issue in made.0.into_iter().filter(|_| policy.is_none()) {
        v.error(
            "spec",
            format!(
                "the Calico policy made from this NetworkPolicy is not valid: {}: {}",
                issue.field, issue.message
            ),
        );
    }
    let mut policy = policy?;
    policy.staged_action = staged?;
    Some(Lowered::Policy(policy))
}

/// `policyTypes` as Calico `types`: without any, Kubernetes means Ingress,
/// plus Egress when there are egress rules.
fn policy_types(v: &mut Issues, s: &K8sPolicySpec) -> Option<Vec<String>> {
    let (mut ingress, mut egress, mut ok) = (false, false, true);
    for (i, t) in s.policy_types.iter().enumerate() {
        match t.as_str() {
            "Ingress" => ingress = true,
            "Egress" => egress = true,
            _ => {
                v.error(
                    format!("spec.policyTypes[{i}]"),
                    format!("policy type `{t}` is not valid; accepted: Ingress, Egress"),
                );
                ok = false;
            }
        }
    }
    if !ingress && !egress {
        (ingress, egress) = (true, !s.egress.is_empty());
    }
    let types = [(ingress, "Ingress"), (egress, "Egress")];
    ok.then(|| {
        types
            .into_iter()
            .filter(|(listed, _)| *listed)
            .map(|(_, t)| t.to_string())
            .collect()
    })
}

/// A LabelSelector, checked, as Calico selector text (conversion.go
/// k8sSelectorToCalico). Pod selectors always include
/// `projectcalico.org/orchestrator == 'k8s'`; an empty namespace selector is `all()`.
fn label_selector(
    v: &mut Issues,
    path: &str,
    s: Option<&res::LabelSelector>,
    pod: bool,
) -> Option<String> {
    let mut terms = Vec::new();
    if pod {
        terms.push(format!("{LABEL_ORCHESTRATOR} == 'k8s'"));
    }
    let Some(s) = s else {
        return Some(terms.join(" && "));
    };
    check_labels(v, &format!("{path}.matchLabels"), &s.match_labels);
    let expressions = each(&s.match_expressions, |i, e| {
        expression(v, &format!("{path}.matchExpressions[{i}]"), e)
    });
    if !pod && s.match_labels.is_empty() && s.match_expressions.is_empty() {
        return Some("all()".into());
    }
    terms.extend(s.match_labels.iter().map(|(k, v)| format!("{k} == '{v}'")));
    terms.extend(expressions?);
    Some(terms.join(" && "))
}

/// One `matchExpressions` entry as a Calico selector term.
fn expression(v: &mut Issues, p: &str, e: &res::LabelSelectorRequirement) -> Option<String> {
    let key_ok = v.ok(format!("{p}.key"), fields::check_label(&e.key, ""));
    let values = e.values.join("', '");
    let term = match e.operator.as_str() {
        "In" | "NotIn" if e.values.is_empty() => {
            let message = format!("operator {} needs at least one value", e.operator);
            v.error(format!("{p}.values"), message);
            None
        }
        "Exists" | "DoesNotExist" if !e.values.is_empty() => {
            let message = format!("operator {} takes no values", e.operator);
            v.error(format!("{p}.values"), message);
            None
        }
        "In" => Some(format!("{} in {{ '{values}' }}", e.key)),
        "NotIn" => Some(format!("{} not in {{ '{values}' }}", e.key)),
        "Exists" => Some(format!("has({})", e.key)),
        "DoesNotExist" => Some(format!("! has({})", e.key)),
        op => {
            v.error(
                format!("{p}.operator"),
                format!("operator `{op}` is not valid; accepted: In, NotIn, Exists, DoesNotExist"),
            );
            None
        }
    };
    // Values end up quoted in a Calico selector, which has no escapes.
    let values_ok = each(&e.values, |j, val| {
        v.ok(format!("{p}.values[{j}]"), fields::check_label(&e.key, val))
    });
    key_ok?;
    values_ok?;
    term
}

/// The peers of a rule, each as the Calico EntityRule it becomes.
fn peers(v: &mut Issues, path: &str, peers: &[res::K8sPeer]) -> Option<Vec<res::EntityRule>> {
    each(peers, |i, peer| {
        let p = format!("{path}[{i}]");
        let pods = peer.pod_selector.as_ref();
        let namespaces = peer.namespace_selector.as_ref();
        let selector = label_selector(v, &format!("{p}.podSelector"), pods, true);
        let ns_selector = label_selector(v, &format!("{p}.namespaceSelector"), namespaces, false);
        let Some(b) = &peer.ip_block else {
            if pods.is_none() && namespaces.is_none() {
                v.error(&p, "a peer needs podSelector, namespaceSelector or ipBlock");
                return None;
            }
            return Some(res::EntityRule {
                selector: selector?,
                namespace_selector: ns_selector?,
                ..Default::default()
            });
        };
        if pods.is_some() || namespaces.is_some() {
            v.error(
                format!("{p}.ipBlock"),
                "ipBlock cannot be combined with podSelector or namespaceSelector",
            );
        }
        ip_block(v, &p, b)
    })
}

fn ip_block(v: &mut Issues, p: &str, b: &res::IpBlock) -> Option<res::EntityRule> {
    let Some(cidr) = fields::cidr(&b.cidr) else {
        v.error(
            format!("{p}.ipBlock.cidr"),
            format!(
                "`{}` is not a valid CIDR (no leading zeros); accepted: e.g. 10.0.0.0/8",
                b.cidr
            ),
        );
        return None;
    };
    let except = each(&b.except, |j, ex| {
        let inside = fields::cidr(ex)
            .is_some_and(|e| cidr.contains(&e) && e.prefix_len() > cidr.prefix_len());
        if !inside {
            v.error(
                format!("{p}.ipBlock.except[{j}]"),
                format!("`{ex}` must be a CIDR strictly inside cidr `{}`", b.cidr),
            );
        }
        inside.then(|| ex.clone())
    });
    Some(res::EntityRule {
        nets: vec![b.cidr.clone()],
        not_nets: except?,
        ..Default::default()
    })
}

/// A rule's ports as (protocol, port or range; None: every port).
type K8sPorts = Vec<(String, Option<IntOrString>)>;

fn ports(v: &mut Issues, path: &str, ports: &[res::K8sPort]) -> Option<K8sPorts> {
    each(ports, |i, port| {
        let p = format!("{path}[{i}]");
        // TCP is the implicit default of a NetworkPolicyPort.
        let protocol = port.protocol.as_deref().unwrap_or("TCP");
        let protocol_ok = Protocol::from_name(protocol).is_some_and(Protocol::has_rule_ports);
        if !protocol_ok {
            v.error(
                format!("{p}.protocol"),
                format!("protocol `{protocol}` is not valid; accepted: TCP, UDP, SCTP"),
            );
        }
        let number = port_number(v, &p, port)?;
        protocol_ok.then(|| (protocol.to_string(), number))
    })
}

/// `port` and `endPort` as one Calico port (`"port:end"` for a range).
fn port_number(v: &mut Issues, p: &str, port: &res::K8sPort) -> Option<Option<IntOrString>> {
    let end_needs_number = || "endPort needs a numeric port";
    match &port.port {
        Some(IntOrString::Int(n)) => {
            let mut ok = (1..=65535).contains(n);
            if !ok {
                v.error(
                    format!("{p}.port"),
                    format!("port {n} is out of range; accepted: 1-65535"),
                );
            }
            let Some(end) = port.end_port else {
                return ok.then_some(Some(IntOrString::Int(*n)));
            };
            if end < *n || end > 65535 {
                v.error(
                    format!("{p}.endPort"),
                    format!("endPort {end} must be between port {n} and 65535"),
                );
                ok = false;
            }
            ok.then(|| Some(IntOrString::Str(format!("{n}:{end}"))))
        }
        Some(IntOrString::Str(name)) => {
            let ok = (1..=15).contains(&name.len())
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && name.chars().any(|c| c.is_ascii_lowercase());
            if !ok {
                v.error(
                    format!("{p}.port"),
                    format!("port name `{name}` is not valid; accepted: a number 1-65535 or an IANA service name (1-15 of [a-z0-9-], with a letter)"),
                );
            }
            if port.end_port.is_some() {
                v.error(format!("{p}.endPort"), end_needs_number());
                return None;
            }
            ok.then(|| Some(IntOrString::Str(name.clone())))
        }
        None if port.end_port.is_some() => {
            v.error(format!("{p}.endPort"), end_needs_number());
            None
        }
        None => Some(None),
    }
}

/// conversion.go SimplifyPorts: numeric ports merged into minimal ranges
/// (after the named ones); one numeric port or fewer is left as given.
fn simplify_ports(ports: Vec<IntOrString>) -> Vec<IntOrString> {
    let mut numeric = Vec::new();
    let mut out = Vec::new();
    for p in &ports {
        match fields::port(p) {
            Ok(PortMatch::Range(r)) => numeric.extend(r.first as u32..=r.last as u32),
            _ => out.push(p.clone()),
        }
    }
    if numeric.len() <= 1 {
        return ports;
    }
    numeric.sort_unstable();
    let mut i = 0;
    while i < numeric.len() {
        let first = numeric[i];
        let mut last = first;
        i += 1;
        while i < numeric.len() && numeric[i] <= last + 1 {
            last = numeric[i];
            i += 1;
        }
        out.push(if first == last {
            IntOrString::Int(first as i64)
        } else {
            IntOrString::Str(format!("{first}:{last}"))
        });
    }
    out
}

/// conversion.go k8sRuleToCalico: one Allow rule per (protocol, peer).
fn calico_rules(peers: &[res::EntityRule], ports: &K8sPorts, ingress: bool) -> Vec<res::Rule> {
    // protocol ("" = any) -> ports (None = all ports of that protocol).
    let mut by_protocol: BTreeMap<&str, Option<Vec<IntOrString>>> = BTreeMap::new();
    if ports.is_empty() {
        by_protocol.insert("", None);
    }
    for (protocol, port) in ports {
        match port {
            None => {
                by_protocol.insert(protocol, None);
            }
            Some(port) => {
                let entry = by_protocol
                    .entry(protocol)
                    .or_insert_with(|| Some(Vec::new()));
                if let Some(list) = entry {
                    list.push(port.clone());
                }
            }
        }
    }
    let any_peer = [res::EntityRule::default()];
    let peers = if peers.is_empty() {
        &any_peer[..]
    } else {
        peers
    };
    let mut out = Vec::new();
    for (protocol, ports) in by_protocol {
        let ports = simplify_ports(ports.unwrap_or_default());
        for peer in peers {
            let mut rule = res::Rule {
                action: "Allow".into(),
                protocol: (!protocol.is_empty()).then(|| IntOrString::Str(protocol.into())),
                ..Default::default()
            };
            let mut peer = peer.clone();
            if ingress {
                rule.source = peer;
                rule.destination.ports = ports.clone();
            } else {
                peer.ports = ports.clone();
                rule.destination = peer;
            }
            out.push(rule);
        }
    }
    out
}
