//! Validated resources -> [`ir::Model`], folding scoping into selectors the way
//! Calico's calculation graph does (updateprocessors/rules.go,
//! k8s/conversion/conversion.go). Inputs must have passed validation; fields
//! that still fail to parse are skipped rather than panicking.
use std::collections::{BTreeMap, BTreeSet};

use super::fields;
use super::ir::*;
use super::resources::{self as res, IntOrString, Resource};
use crate::selector::{self, Selector};

/// Namespace of a namespaced object (Kubernetes defaults it to `default`).
pub fn namespace_of(meta: &res::ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("default")
}

/// Order of the policies Calico makes from Kubernetes NetworkPolicies.
pub const K8S_POLICY_ORDER: f64 = 1000.0;
pub const DEFAULT_TIER: &str = "default";
/// Label Calico puts on a namespace's / service account's profile (`pcns.`/`pcsa.` prefixed).
pub const LABEL_NAME: &str = "projectcalico.org/name";

/// The tiers Calico creates, used unless the datastore redefines them.
pub fn builtin_tiers() -> Vec<Tier> {
    let t = |name: &str, order: f64, default_action| Tier {
        name: name.into(),
        order: Some(order),
        default_action,
    };
    vec![
        t("kube-admin", 1000.0, TierDefault::Pass),
        t(DEFAULT_TIER, 1_000_000.0, TierDefault::Deny),
        t("kube-baseline", 10_000_000.0, TierDefault::Pass),
    ]
}

fn parse_or_all(s: &str) -> Selector {
    selector::parse(s).unwrap_or_else(|_| Selector::all())
}

/// A `namespaceSelector` over `pcns.` labels; `all()` means "in any namespace"
/// and `global()` "in no namespace" (Calico's text substitution, see
/// [`Selector::to_namespace_scope`]).
fn namespace_selector(text: &str) -> Selector {
    parse_or_all(text).to_namespace_scope(NAMESPACE_LABEL_PREFIX, LABEL_NAMESPACE)
}

fn service_accounts_selector(sa: &res::ServiceAccountMatch) -> Option<Selector> {
    let by_selector = (!sa.selector.is_empty())
        .then(|| parse_or_all(&sa.selector).prefix_keys(SERVICE_ACCOUNT_LABEL_PREFIX));
    let by_name = (!sa.names.is_empty())
        .then(|| Selector::in_set(LABEL_SERVICE_ACCOUNT, sa.names.iter().cloned()));
    match (by_selector, by_name) {
        (Some(s), Some(n)) => Some(s.and(n)),
        (s, n) => s.or(n),
    }
}

/// The selector an EntityRule matches endpoints with (rules.go getEndpointSelector):
/// scoped to the policy's namespace, or to the namespaces `namespaceSelector`
/// picks, as soon as any selector field is used (including `notSelector`).
fn entity_selector(e: &res::EntityRule, namespace: Option<&str>) -> Option<Selector> {
    let ns_selector = if !e.namespace_selector.is_empty() {
        Some(namespace_selector(&e.namespace_selector))
    } else {
        namespace.map(|ns| Selector::equals(LABEL_NAMESPACE, ns))
    };
    let sa = e
        .service_accounts
        .as_ref()
        .and_then(service_accounts_selector);
    let own = (!e.selector.is_empty()).then(|| parse_or_all(&e.selector));
    let selector = match (sa, own) {
        (Some(a), Some(b)) => Some(a.and(b)),
        (a, b) => a.or(b),
    };
    let scoped =
        selector.is_some() || !e.not_selector.is_empty() || !e.namespace_selector.is_empty();
    match ns_selector {
        Some(ns) if scoped => Some(match selector {
            Some(s) => ns.and(s),
            None => ns,
        }),
        _ => selector,
    }
}

fn entity(e: &res::EntityRule, namespace: Option<&str>) -> EntityRule {
    let nets = |v: &[String]| v.iter().filter_map(|n| fields::net(n).ok()).collect();
    let ports = |v: &[IntOrString]| v.iter().filter_map(|p| fields::port(p).ok()).collect();
    EntityRule {
        nets: nets(&e.nets),
        not_nets: nets(&e.not_nets),
        selector: entity_selector(e, namespace),
        not_selector: (!e.not_selector.is_empty()).then(|| parse_or_all(&e.not_selector)),
        ports: ports(&e.ports),
        not_ports: ports(&e.not_ports),
    }
}

fn action(a: &str) -> Action {
    match a {
        "Deny" => Action::Deny,
        "Pass" => Action::Pass,
        "Log" => Action::Log,
        _ => Action::Allow,
    }
}

fn icmp(i: &Option<res::IcmpFields>) -> Option<IcmpMatch> {
    let i = i.as_ref()?;
    Some(IcmpMatch {
        icmp_type: i.icmp_type? as u8,
        code: i.code.map(|c| c as u8),
    })
}

pub fn rule(r: &res::Rule, namespace: Option<&str>) -> Rule {
    let protocol = |p: &Option<IntOrString>| p.as_ref().and_then(|p| fields::protocol(p).ok());
    Rule {
        action: action(&r.action),
        ip_version: r.ip_version.map(|v| v as u8),
        protocol: protocol(&r.protocol),
        not_protocol: protocol(&r.not_protocol),
        icmp: icmp(&r.icmp),
        not_icmp: icmp(&r.not_icmp),
        source: entity(&r.source, namespace),
        destination: entity(&r.destination, namespace),
    }
}

fn rules(rs: &[res::Rule], namespace: Option<&str>) -> Vec<Rule> {
    rs.iter().map(|r| rule(r, namespace)).collect()
}

/// Calico's `types` default: no egress rules -> Ingress; only egress rules -> Egress; both -> both.
pub fn default_types(has_ingress_rules: bool, has_egress_rules: bool) -> (bool, bool) {
    match (has_ingress_rules, has_egress_rules) {
        (_, false) => (true, false),
        (false, true) => (false, true),
        (true, true) => (true, true),
    }
}

fn listed_types(
    types: &Option<Vec<String>>,
    ingress: &[res::Rule],
    egress: &[res::Rule],
) -> (bool, bool) {
    match types {
        Some(t) => (
            t.iter().any(|t| t == "Ingress"),
            t.iter().any(|t| t == "Egress"),
        ),
        None => default_types(!ingress.is_empty(), !egress.is_empty()),
    }
}

fn staged_action(a: &Option<String>) -> StagedAction {
    match a.as_deref() {
        Some("Delete") => StagedAction::Delete,
        Some("Learn") => StagedAction::Learn,
        Some("Ignore") => StagedAction::Ignore,
        _ => StagedAction::Set,
    }
}

/// selectors.go prefixAndAppendSelector: `(current) && <new with prefixed keys>`.
fn prefix_and_append(current: String, new: &str, prefix: &str) -> String {
    if new.is_empty() {
        return current;
    }
    let prefixed = parse_or_all(new).prefix_keys(prefix).to_string();
    if current.is_empty() {
        prefixed
    } else {
        format!("({current}) && {prefixed}")
    }
}

/// A GlobalNetworkPolicy's endpoint selector, built as Calico's update processor
/// does, text substitutions included: after ANDing `namespaceSelector`, every
/// `all()` becomes `has(projectcalico.org/namespace)`; after ANDing
/// `serviceAccountSelector`, every `all()` becomes `has(projectcalico.org/serviceaccount)`.
pub fn global_policy_selector(s: &res::GlobalPolicySpec) -> Selector {
    let mut text = s.selector.clone();
    if !s.namespace_selector.is_empty() {
        text = prefix_and_append(text, &s.namespace_selector, NAMESPACE_LABEL_PREFIX)
            .replace("all()", &format!("has({LABEL_NAMESPACE})"));
    }
    if !s.service_account_selector.is_empty() {
        text = prefix_and_append(
            text,
            &s.service_account_selector,
            SERVICE_ACCOUNT_LABEL_PREFIX,
        )
        .replace("all()", &format!("has({LABEL_SERVICE_ACCOUNT})"));
    }
    parse_or_all(&text)
}

/// A namespaced policy's endpoint selector (networkpolicyprocessor.go):
/// `(selector) && projectcalico.org/namespace == '<ns>'`, then the prefixed
/// `serviceAccountSelector` (here without any `all()` substitution, as in Calico).
pub fn namespaced_policy_selector(namespace: &str, s: &res::NamespacedPolicySpec) -> Selector {
    let ns = format!("{LABEL_NAMESPACE} == '{namespace}'");
    let text = if s.selector.is_empty() {
        ns
    } else {
        format!("({}) && {ns}", s.selector)
    };
    parse_or_all(&prefix_and_append(
        text,
        &s.service_account_selector,
        SERVICE_ACCOUNT_LABEL_PREFIX,
    ))
}

fn global_policy(o: &res::Object<res::GlobalPolicySpec>, kind: PolicyKind) -> Policy {
    let s = &o.spec;
    let sel = global_policy_selector(s);
    let (ingress_type, egress_type) = listed_types(&s.types, &s.ingress, &s.egress);
    Policy {
        id: PolicyId {
            kind,
            namespace: None,
            name: o.metadata.name.clone(),
        },
        tier: s.tier.clone().unwrap_or_else(|| DEFAULT_TIER.into()),
        order: s.order,
        selector: sel,
        ingress_type,
        egress_type,
        ingress: rules(&s.ingress, None),
        egress: rules(&s.egress, None),
        staged_action: kind.is_staged().then(|| staged_action(&s.staged_action)),
        do_not_track: s.do_not_track,
        pre_dnat: s.pre_dnat,
        apply_on_forward: s.apply_on_forward,
    }
}

fn namespaced_policy(
    name: &str,
    namespace: &str,
    s: &res::NamespacedPolicySpec,
    kind: PolicyKind,
) -> Policy {
    let sel = namespaced_policy_selector(namespace, s);
    let (ingress_type, egress_type) = listed_types(&s.types, &s.ingress, &s.egress);
    Policy {
        id: PolicyId {
            kind,
            namespace: Some(namespace.into()),
            name: name.into(),
        },
        tier: s.tier.clone().unwrap_or_else(|| DEFAULT_TIER.into()),
        order: s.order,
        selector: sel,
        ingress_type,
        egress_type,
        ingress: rules(&s.ingress, Some(namespace)),
        egress: rules(&s.egress, Some(namespace)),
        staged_action: kind.is_staged().then(|| staged_action(&s.staged_action)),
        do_not_track: false,
        pre_dnat: false,
        // Calico's update processor sets it for every namespaced policy.
        apply_on_forward: true,
    }
}

/// conversion.go k8sSelectorToCalico. Pod selectors always include
/// `projectcalico.org/orchestrator == 'k8s'`; an empty namespace selector is `all()`.
fn k8s_selector(s: Option<&res::LabelSelector>, pod: bool) -> String {
    let mut terms = Vec::new();
    if pod {
        terms.push(format!("{LABEL_ORCHESTRATOR} == 'k8s'"));
    }
    let Some(s) = s else {
        return terms.join(" && ");
    };
    if !pod && s.match_labels.is_empty() && s.match_expressions.is_empty() {
        return "all()".into();
    }
    for (k, v) in &s.match_labels {
        terms.push(format!("{k} == '{v}'"));
    }
    for e in &s.match_expressions {
        let values = e.values.join("', '");
        match e.operator.as_str() {
            "In" => terms.push(format!("{} in {{ '{values}' }}", e.key)),
            "NotIn" => terms.push(format!("{} not in {{ '{values}' }}", e.key)),
            "Exists" => terms.push(format!("has({})", e.key)),
            "DoesNotExist" => terms.push(format!("! has({})", e.key)),
            _ => {}
        }
    }
    terms.join(" && ")
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
fn k8s_rules(peers: &[res::K8sPeer], ports: &[res::K8sPort], ingress: bool) -> Vec<res::Rule> {
    // protocol ("" = any) -> ports (None = all ports of that protocol).
    let mut by_protocol: BTreeMap<String, Option<Vec<IntOrString>>> = BTreeMap::new();
    if ports.is_empty() {
        by_protocol.insert(String::new(), None);
    }
    for p in ports {
        // TCP is the implicit default of a NetworkPolicyPort.
        let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".into());
        let port = p.port.as_ref().map(|port| match p.end_port {
            Some(end) => IntOrString::Str(format!("{port}:{end}")),
            None => port.clone(),
        });
        match port {
            None => {
                by_protocol.insert(protocol, None);
            }
            Some(port) => {
                let entry = by_protocol
                    .entry(protocol)
                    .or_insert_with(|| Some(Vec::new()));
                if let Some(list) = entry {
                    list.push(port);
                }
            }
        }
    }
    let peers: Vec<Option<&res::K8sPeer>> = if peers.is_empty() {
        vec![None]
    } else {
        peers.iter().map(Some).collect()
    };
    let mut out = Vec::new();
    for (protocol, ports) in by_protocol {
        let ports = simplify_ports(ports.unwrap_or_default());
        for peer in &peers {
            let mut e = res::EntityRule::default();
            if let Some(peer) = peer {
                if let Some(b) = &peer.ip_block {
                    e.nets = vec![b.cidr.clone()];
                    e.not_nets = b.except.clone();
                } else {
                    e.selector = k8s_selector(peer.pod_selector.as_ref(), true);
                    e.namespace_selector = k8s_selector(peer.namespace_selector.as_ref(), false);
                }
            }
            let mut rule = res::Rule {
                action: "Allow".into(),
                protocol: (!protocol.is_empty()).then(|| IntOrString::Str(protocol.clone())),
                ..Default::default()
            };
            if ingress {
                rule.source = e;
                rule.destination.ports = ports.clone();
            } else {
                e.ports = ports.clone();
                rule.destination = e;
            }
            out.push(rule);
        }
    }
    out
}

/// A Kubernetes NetworkPolicy as the Calico NetworkPolicy Calico makes of it
/// (order 1000, tier default, types per Kubernetes).
pub fn k8s_to_calico(s: &res::K8sPolicySpec) -> res::NamespacedPolicySpec {
    let ingress: Vec<res::Rule> = s
        .ingress
        .iter()
        .flat_map(|r| k8s_rules(&r.from, &r.ports, true))
        .collect();
    let egress: Vec<res::Rule> = s
        .egress
        .iter()
        .flat_map(|r| k8s_rules(&r.to, &r.ports, false))
        .collect();
    let mut types = Vec::new();
    if s.policy_types.iter().any(|t| t == "Ingress") {
        types.push("Ingress".to_string());
    }
    if s.policy_types.iter().any(|t| t == "Egress") {
        types.push("Egress".to_string());
    }
    if types.is_empty() {
        // Without policyTypes Kubernetes means Ingress, plus Egress when there are egress rules.
        types.push("Ingress".into());
        if !s.egress.is_empty() {
            types.push("Egress".into());
        }
    }
    res::NamespacedPolicySpec {
        tier: Some(DEFAULT_TIER.into()),
        order: Some(K8S_POLICY_ORDER),
        selector: k8s_selector(Some(&s.pod_selector), true),
        types: Some(types),
        ingress,
        egress,
        ..Default::default()
    }
}

fn k8s_policy(o: &res::Object<res::K8sPolicySpec>, kind: PolicyKind) -> Policy {
    let ns = namespace_of(&o.metadata);
    let mut p = namespaced_policy(&o.metadata.name, ns, &k8s_to_calico(&o.spec), kind);
    p.staged_action = kind
        .is_staged()
        .then(|| staged_action(&o.spec.staged_action));
    p
}

fn prefixed(prefix: &str, labels: &res::StringMap) -> Labels {
    labels
        .iter()
        .map(|(k, v)| (format!("{prefix}{k}"), v.clone()))
        .collect()
}

/// Labels a namespace contributes: `pcns.<label>` and `pcns.projectcalico.org/name`.
fn namespace_labels(ns: &str, namespaces: &BTreeMap<String, res::StringMap>) -> Labels {
    let mut l = namespaces
        .get(ns)
        .map(|l| prefixed(NAMESPACE_LABEL_PREFIX, l))
        .unwrap_or_default();
    l.insert(format!("{NAMESPACE_LABEL_PREFIX}{LABEL_NAME}"), ns.into());
    // The API server (1.21+) sets it on every Namespace; older servers and
    // hand-written datastores do not, and the most common namespaceSelector
    // would then match nothing.
    l.entry(format!(
        "{NAMESPACE_LABEL_PREFIX}{K8S_NAMESPACE_NAME_LABEL}"
    ))
    .or_insert_with(|| ns.into());
    l
}

/// The label Kubernetes puts on every Namespace: its name.
const K8S_NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

fn named_ports(ports: &[res::EndpointPort]) -> Vec<NamedPort> {
    ports
        .iter()
        // Unnamed (hostPort-only) ports are not for policy.
        .filter(|p| !p.name.is_empty())
        .filter_map(|p| {
            Some(NamedPort {
                name: p.name.clone(),
                protocol: fields::protocol(p.protocol.as_ref()?).ok()?,
                port: u16::try_from(p.port).ok()?,
            })
        })
        .collect()
}

fn ips(items: &[String]) -> Vec<std::net::IpAddr> {
    items
        .iter()
        .filter_map(|s| {
            s.parse::<ipnet::IpNet>()
                .map(|n| n.addr())
                .or_else(|_| s.parse::<std::net::IpAddr>())
                .ok()
        })
        .collect()
}

/// Own labels win over inherited ones; earlier profiles over later ones.
fn with_inherited(own: Labels, profiles: &[String], by_name: &BTreeMap<String, Profile>) -> Labels {
    let mut labels = Labels::new();
    for p in profiles.iter().rev() {
        if let Some(p) = by_name.get(p) {
            labels.extend(p.labels_to_apply.clone());
        }
    }
    labels.extend(own);
    labels
}

/// Builds the model from validated resources (in load order; iterated a few
/// times, so a cheap iterator over references, e.g. a slice's or documents').
pub fn to_model<'a, I>(resources: I) -> Model
where
    I: IntoIterator<Item = &'a Resource> + Clone,
{
    let mut model = Model::default();
    let mut namespaces: BTreeMap<String, res::StringMap> = BTreeMap::new();
    let mut service_accounts: BTreeMap<(String, String), res::StringMap> = BTreeMap::new();
    let mut profiles: BTreeMap<String, Profile> = BTreeMap::new();
    for r in resources.clone() {
        match r {
            Resource::Namespace(o) => {
                namespaces.insert(o.metadata.name.clone(), o.metadata.labels.clone());
            }
            Resource::ServiceAccount(o) => {
                service_accounts.insert(
                    (namespace_of(&o.metadata).into(), o.metadata.name.clone()),
                    o.metadata.labels.clone(),
                );
            }
            Resource::Profile(o) => {
                profiles.insert(
                    o.metadata.name.clone(),
                    Profile {
                        name: o.metadata.name.clone(),
                        ingress: rules(&o.spec.ingress, None),
                        egress: rules(&o.spec.egress, None),
                        labels_to_apply: o.spec.labels_to_apply.clone(),
                    },
                );
            }
            _ => {}
        }
    }

    // Every workload without explicit profiles uses kns.<namespace>; Calico makes
    // that profile from the Namespace: allow everything, apply the pcns.* labels.
    // A `kns.<ns>` profile an endpoint names explicitly is also Calico's namespace profile.
    let mut needed_kns = BTreeSet::new();
    for r in resources.clone() {
        let listed = match r {
            Resource::WorkloadEndpoint(o) if o.spec.profiles.is_empty() => {
                needed_kns.insert(namespace_of(&o.metadata).to_string());
                continue;
            }
            Resource::WorkloadEndpoint(o) => &o.spec.profiles,
            Resource::HostEndpoint(o) => &o.spec.profiles,
            _ => continue,
        };
        needed_kns.extend(
            listed
                .iter()
                .filter_map(|p| p.strip_prefix("kns."))
                .map(str::to_string),
        );
    }
    for ns in needed_kns {
        let name = format!("kns.{ns}");
        let allow_all = || {
            vec![Rule {
                action: Action::Allow,
                ip_version: None,
                protocol: None,
                not_protocol: None,
                icmp: None,
                not_icmp: None,
                source: EntityRule::default(),
                destination: EntityRule::default(),
            }]
        };
        profiles.entry(name.clone()).or_insert_with(|| Profile {
            name,
            ingress: allow_all(),
            egress: allow_all(),
            labels_to_apply: namespace_labels(&ns, &namespaces),
        });
    }

    let mut tiers: BTreeMap<String, Tier> = builtin_tiers()
        .into_iter()
        .map(|t| (t.name.clone(), t))
        .collect();
    for r in resources.clone() {
        match r {
            Resource::Tier(o) => {
                tiers.insert(
                    o.metadata.name.clone(),
                    Tier {
                        name: o.metadata.name.clone(),
                        order: o.spec.order,
                        default_action: match o.spec.default_action.as_deref() {
                            Some("Pass") => TierDefault::Pass,
                            _ => TierDefault::Deny,
                        },
                    },
                );
            }
            Resource::GlobalNetworkPolicy(o) => model
                .policies
                .push(global_policy(o, PolicyKind::GlobalNetworkPolicy)),
            Resource::StagedGlobalNetworkPolicy(o) => model
                .policies
                .push(global_policy(o, PolicyKind::StagedGlobalNetworkPolicy)),
            Resource::NetworkPolicy(o) => model.policies.push(namespaced_policy(
                &o.metadata.name,
                namespace_of(&o.metadata),
                &o.spec,
                PolicyKind::NetworkPolicy,
            )),
            Resource::StagedNetworkPolicy(o) => model.policies.push(namespaced_policy(
                &o.metadata.name,
                namespace_of(&o.metadata),
                &o.spec,
                PolicyKind::StagedNetworkPolicy,
            )),
            Resource::KubernetesNetworkPolicy(o) => model
                .policies
                .push(k8s_policy(o, PolicyKind::KubernetesNetworkPolicy)),
            Resource::StagedKubernetesNetworkPolicy(o) => model
                .policies
                .push(k8s_policy(o, PolicyKind::StagedKubernetesNetworkPolicy)),
            // Calico leaves out workloads without addresses (nothing to render yet).
            Resource::WorkloadEndpoint(o) if o.spec.ip_networks.is_empty() => {}
            Resource::WorkloadEndpoint(o) => {
                let ns = namespace_of(&o.metadata);
                let s = &o.spec;
                let endpoint_profiles = if s.profiles.is_empty() {
                    vec![format!("kns.{ns}")]
                } else {
                    s.profiles.clone()
                };
                let mut own = namespace_labels(ns, &namespaces);
                if let Some(sa) = &s.service_account_name {
                    if let Some(l) = service_accounts.get(&(ns.to_string(), sa.clone())) {
                        own.extend(prefixed(SERVICE_ACCOUNT_LABEL_PREFIX, l));
                    }
                    own.insert(
                        format!("{SERVICE_ACCOUNT_LABEL_PREFIX}{LABEL_NAME}"),
                        sa.clone(),
                    );
                    own.insert(LABEL_SERVICE_ACCOUNT.into(), sa.clone());
                }
                // Like Calico, a workload cannot claim namespace or service-account labels.
                own.extend(
                    o.metadata
                        .labels
                        .iter()
                        .filter(|(k, _)| {
                            !k.starts_with(NAMESPACE_LABEL_PREFIX)
                                && !k.starts_with(SERVICE_ACCOUNT_LABEL_PREFIX)
                        })
                        .map(|(k, v)| (k.clone(), v.clone())),
                );
                own.insert(LABEL_NAMESPACE.into(), ns.into());
                own.insert(
                    LABEL_ORCHESTRATOR.into(),
                    s.orchestrator.clone().unwrap_or_else(|| "k8s".into()),
                );
                model.endpoints.push(Endpoint {
                    kind: EndpointKind::Workload,
                    namespace: Some(ns.into()),
                    name: o.metadata.name.clone(),
                    labels: with_inherited(own, &endpoint_profiles, &profiles),
                    interface: (!s.interface_name.is_empty()).then(|| s.interface_name.clone()),
                    ips: ips(&s.ip_networks),
                    named_ports: named_ports(&s.ports),
                    profiles: endpoint_profiles,
                    pod: s.pod.clone().filter(|p| !p.is_empty()),
                    node: s.node.clone().filter(|n| !n.is_empty()),
                });
            }
            Resource::HostEndpoint(o) => {
                let s = &o.spec;
                model.endpoints.push(Endpoint {
                    kind: EndpointKind::Host,
                    namespace: None,
                    name: o.metadata.name.clone(),
                    labels: with_inherited(o.metadata.labels.clone(), &s.profiles, &profiles),
                    interface: (!s.interface_name.is_empty()).then(|| s.interface_name.clone()),
                    ips: ips(&s.expected_ips),
                    named_ports: named_ports(&s.ports),
                    profiles: s.profiles.clone(),
                    pod: None,
                    node: s.node.clone().filter(|n| !n.is_empty()),
                });
            }
            Resource::GlobalNetworkSet(o) => model.network_sets.push(NetworkSet {
                namespace: None,
                name: o.metadata.name.clone(),
                labels: o.metadata.labels.clone(),
                nets: o
                    .spec
                    .nets
                    .iter()
                    .filter_map(|n| fields::net(n).ok())
                    .collect(),
            }),
            Resource::NetworkSet(o) => {
                let ns = namespace_of(&o.metadata);
                let mut labels = namespace_labels(ns, &namespaces);
                labels.extend(o.metadata.labels.clone());
                labels.insert(LABEL_NAMESPACE.into(), ns.into());
                model.network_sets.push(NetworkSet {
                    namespace: Some(ns.into()),
                    name: o.metadata.name.clone(),
                    labels,
                    nets: o
                        .spec
                        .nets
                        .iter()
                        .filter_map(|n| fields::net(n).ok())
                        .collect(),
                });
            }
            Resource::Profile(_) | Resource::Namespace(_) | Resource::ServiceAccount(_) => {}
        }
    }
    let mut tiers: Vec<Tier> = tiers.into_values().collect();
    // Calico's tier order: by order (unset last), then name.
    tiers.sort_by(|a, b| {
        let key = |t: &Tier| t.order.unwrap_or(f64::INFINITY);
        key(a).total_cmp(&key(b)).then_with(|| a.name.cmp(&b.name))
    });
    model.tiers = tiers;
    model.namespaces = namespaces.keys().cloned().collect();
    model.profiles = profiles.into_values().collect();
    model.failsafes = Failsafes::default();
    super::names::unique_pod_addresses(&mut model.endpoints);
    model
}

/// The names of the tiers a model has without any Tier resource.
pub fn is_builtin_tier(name: &str) -> bool {
    builtin_tiers().iter().any(|t| t.name == name)
}
