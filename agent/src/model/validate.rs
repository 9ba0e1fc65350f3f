//! Per-document validation with Calico's rules (libcalico-go/lib/validator/v3)
//! and Kubernetes' for networking.k8s.io/v1 NetworkPolicy. Each problem names
//! its field path; the loader turns paths into lines.
use super::fields;
use super::ir::{proto, LABEL_NAMESPACE};
use super::resources::*;
use super::Severity;
use crate::selector;

pub const MAX_RULES_PER_DIRECTION: usize = 1024;
pub const MAX_SELECTOR_LEN: usize = 1024;
/// Nets of one rule's `nets`/`notNets` list.
pub const MAX_NETS: usize = 256;
/// Nets of one (Global)NetworkSet. Calico has no cap (threat feeds hold tens of
/// thousands); this is a sanity bound far above that, so a runaway generator is
/// refused with a clear error instead of exhausting memory. The compiler's
/// `PEERS_*` capacity (`limits::MAX_PEER_PREFIXES`) bounds what can be enforced.
pub const MAX_SET_NETS: usize = 1_000_000;
pub const MAX_PORTS: usize = 50;

const DELETE_FIELD: &str = "spec.stagedAction";
const DELETE_MESSAGE: &str =
    "with stagedAction Delete every other spec field (except tier) must be \
     empty: the staged object only names the policy to delete";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issue {
    pub severity: Severity,
    /// Dotted path from the document root, e.g. `spec.ingress[0].action`.
    pub field: String,
    pub message: String,
}

#[derive(Default)]
struct Issues(Vec<Issue>);

impl Issues {
    fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Issue {
            severity: Severity::Error,
            field: field.into(),
            message: message.into(),
        });
    }
    fn warning(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Issue {
            severity: Severity::Warning,
            field: field.into(),
            message: message.into(),
        });
    }
    fn check(&mut self, field: impl Into<String>, r: Result<(), String>) {
        if let Err(m) = r {
            self.error(field, m);
        }
    }
}

/// Validates one document.
pub fn validate(resource: &Resource) -> Vec<Issue> {
    let mut v = Issues::default();
    let meta = resource.metadata();
    let kind_is_namespaced = matches!(
        resource,
        Resource::NetworkPolicy(_)
            | Resource::StagedNetworkPolicy(_)
            | Resource::KubernetesNetworkPolicy(_)
            | Resource::StagedKubernetesNetworkPolicy(_)
            | Resource::WorkloadEndpoint(_)
            | Resource::NetworkSet(_)
            | Resource::ServiceAccount(_)
    );
    let name_check = match resource {
        Resource::Tier(_) | Resource::Namespace(_) => fields::check_label_name("name", &meta.name),
        Resource::GlobalNetworkPolicy(_) | Resource::StagedGlobalNetworkPolicy(_) => {
            fields::check_global_policy_name(&meta.name)
        }
        Resource::NetworkPolicy(_) | Resource::StagedNetworkPolicy(_) => {
            fields::check_namespaced_policy_name(&meta.name)
        }
        _ => fields::check_name(&meta.name),
    };
    if meta.name.is_empty() {
        v.error("metadata.name", "name is required");
    } else {
        v.check("metadata.name", name_check);
    }
    match (&meta.namespace, kind_is_namespaced) {
        (Some(ns), true) => v.check(
            "metadata.namespace",
            fields::check_label_name("namespace", ns),
        ),
        (Some(_), false) => v.error(
            "metadata.namespace",
            "this kind is not namespaced; remove metadata.namespace",
        ),
        (None, _) => {}
    }
    check_labels(&mut v, "metadata.labels", &meta.labels);
    annotations(&mut v, "metadata.annotations", &meta.annotations);

    match resource {
        Resource::GlobalNetworkPolicy(o) => global_policy(&mut v, &o.spec, false),
        Resource::StagedGlobalNetworkPolicy(o) => global_policy(&mut v, &o.spec, true),
        Resource::NetworkPolicy(o) => namespaced_policy(&mut v, &o.spec, false),
        Resource::StagedNetworkPolicy(o) => namespaced_policy(&mut v, &o.spec, true),
        Resource::KubernetesNetworkPolicy(o) => k8s_policy(&mut v, &o.spec, false),
        Resource::StagedKubernetesNetworkPolicy(o) => k8s_policy(&mut v, &o.spec, true),
        Resource::Tier(o) => tier(&mut v, &meta.name, &o.spec),
        Resource::Profile(o) => {
            rules(
                &mut v,
                "spec.ingress",
                &o.spec.ingress,
                RuleContext::Profile,
            );
            rules(&mut v, "spec.egress", &o.spec.egress, RuleContext::Profile);
            check_labels(&mut v, "spec.labelsToApply", &o.spec.labels_to_apply);
        }
        Resource::WorkloadEndpoint(o) => workload_endpoint(&mut v, &o.spec),
        Resource::HostEndpoint(o) => host_endpoint(&mut v, &o.spec),
        Resource::GlobalNetworkSet(o) | Resource::NetworkSet(o) => {
            set_nets(&mut v, &o.spec.nets);
            if meta.labels.contains_key(LABEL_NAMESPACE) {
                v.error(
                    format!("metadata.labels.{LABEL_NAMESPACE}"),
                    "projectcalico.org/namespace is not a valid label name here; the namespace sets it",
                );
            }
            if o.spec.allowed_egress_domains.is_some() {
                v.error(
                    "spec.allowedEgressDomains",
                    "DNS-based network sets are not supported by this agent; use `nets`",
                );
            }
        }
        Resource::Namespace(_) | Resource::ServiceAccount(_) => {}
    }
    v.0
}

/// Calico: annotation keys are qualified names (checked lowercased), 256 KiB in all.
fn annotations(v: &mut Issues, path: &str, annotations: &StringMap) {
    let mut total = 0;
    for (k, val) in annotations {
        if let Err(m) = fields::check_label(&k.to_lowercase(), "") {
            v.error(
                format!("{path}.{k}"),
                m.replace("label key", "annotation key"),
            );
        }
        total += k.len() + val.len();
    }
    if total > 256 * 1024 {
        v.error(
            path,
            format!("annotations total {total} bytes; at most 262144 are accepted"),
        );
    }
}

fn check_labels(v: &mut Issues, path: &str, labels: &StringMap) {
    for (k, val) in labels {
        v.check(format!("{path}.{k}"), fields::check_label(k, val));
    }
}

fn selector(v: &mut Issues, path: &str, s: &str) {
    if s.len() > MAX_SELECTOR_LEN {
        v.error(
            path,
            format!(
                "selector is {} characters long; at most {MAX_SELECTOR_LEN} are accepted",
                s.len()
            ),
        );
        return;
    }
    if let Err(e) = selector::parse(s) {
        v.error(
            path,
            format!(
                "selector `{s}` does not parse at position {}: {}",
                e.position, e.reason
            ),
        );
    }
}

fn order(v: &mut Issues, order: Option<f64>) {
    if order.is_some_and(|o| !o.is_finite()) {
        v.error("spec.order", "order must be a finite number");
    }
}

fn staged_action(v: &mut Issues, action: &Option<String>, staged: bool) {
    match (action, staged) {
        (None, _) => {}
        (Some(_), false) => v.error(
            "spec.stagedAction",
            "stagedAction is only valid in staged kinds (StagedGlobalNetworkPolicy, \
             StagedNetworkPolicy, StagedKubernetesNetworkPolicy)",
        ),
        (Some(a), true) => {
            if !matches!(a.as_str(), "Set" | "Delete" | "Learn" | "Ignore") {
                v.error(
                    "spec.stagedAction",
                    format!(
                        "stagedAction `{a}` is not valid; accepted: Set, Delete, Learn, Ignore"
                    ),
                );
            }
        }
    }
}

/// Checks `types`; returns which types it lists (when given).
fn types(v: &mut Issues, types: &Option<Vec<String>>) -> Option<(bool, bool)> {
    let types = types.as_ref()?;
    let (mut ingress, mut egress) = (false, false);
    for (i, t) in types.iter().enumerate() {
        let seen = match t.as_str() {
            "Ingress" => std::mem::replace(&mut ingress, true),
            "Egress" => std::mem::replace(&mut egress, true),
            _ => {
                v.error(
                    format!("spec.types[{i}]"),
                    format!("type `{t}` is not valid; accepted: Ingress, Egress"),
                );
                continue;
            }
        };
        if seen {
            v.error(
                format!("spec.types[{i}]"),
                format!("type `{t}` is listed twice"),
            );
        }
    }
    Some((ingress, egress))
}

fn tier_name(v: &mut Issues, tier: &Option<String>) {
    if let Some(t) = tier {
        v.check("spec.tier", fields::check_label_name("tier", t));
    }
}

fn unused_rules_warning(
    v: &mut Issues,
    listed: Option<(bool, bool)>,
    ingress: usize,
    egress: usize,
) {
    if let Some((has_ingress, has_egress)) = listed {
        if !has_ingress && ingress > 0 {
            v.warning(
                "spec.ingress",
                "ingress rules are ignored because `types` does not include Ingress",
            );
        }
        if !has_egress && egress > 0 {
            v.warning(
                "spec.egress",
                "egress rules are ignored because `types` does not include Egress",
            );
        }
    }
}

/// A staged `Delete` names only what to delete: its spec must equal `empty`
/// (the same tier and stagedAction, nothing else).
fn staged_delete_spec_is_empty<T: std::fmt::Debug>(v: &mut Issues, spec: &T, empty: &T) {
    // Debug output compares every field, including ones added later.
    if format!("{empty:?}") != format!("{spec:?}") {
        v.error(DELETE_FIELD, DELETE_MESSAGE);
    }
}

fn global_policy(v: &mut Issues, s: &GlobalPolicySpec, staged: bool) {
    tier_name(v, &s.tier);
    order(v, s.order);
    selector(v, "spec.selector", &s.selector);
    selector(v, "spec.namespaceSelector", &s.namespace_selector);
    selector(
        v,
        "spec.serviceAccountSelector",
        &s.service_account_selector,
    );
    let listed = types(v, &s.types);
    staged_action(v, &s.staged_action, staged);
    if staged && s.staged_action.as_deref() == Some("Delete") {
        let empty = GlobalPolicySpec {
            tier: s.tier.clone(),
            staged_action: s.staged_action.clone(),
            ..Default::default()
        };
        staged_delete_spec_is_empty(v, s, &empty);
    }
    no_global(v, "spec.selector", &s.selector);
    no_global(v, "spec.namespaceSelector", &s.namespace_selector);
    no_global(
        v,
        "spec.serviceAccountSelector",
        &s.service_account_selector,
    );
    let ctx = RuleContext::Policy;
    rules(v, "spec.ingress", &s.ingress, ctx);
    rules(v, "spec.egress", &s.egress, ctx);
    unused_rules_warning(v, listed, s.ingress.len(), s.egress.len());
    // Calico validateGlobalNetworkPolicySpec: the host-endpoint-only modes.
    if s.do_not_track && s.pre_dnat {
        v.error("spec.preDNAT", "preDNAT and doNotTrack cannot both be true");
    }
    if (s.do_not_track || s.pre_dnat) && !s.apply_on_forward {
        v.error(
            "spec.applyOnForward",
            "applyOnForward must be true if either preDNAT or doNotTrack is true",
        );
    }
    if s.pre_dnat {
        if !s.egress.is_empty() {
            v.error("spec.egress", "a preDNAT policy cannot have egress rules");
        }
        if listed.is_some_and(|(_, egress)| egress) {
            v.error(
                "spec.types",
                "a preDNAT policy's types cannot include Egress",
            );
        }
    }
}

fn namespaced_policy(v: &mut Issues, s: &NamespacedPolicySpec, staged: bool) {
    tier_name(v, &s.tier);
    order(v, s.order);
    selector(v, "spec.selector", &s.selector);
    selector(
        v,
        "spec.serviceAccountSelector",
        &s.service_account_selector,
    );
    let listed = types(v, &s.types);
    staged_action(v, &s.staged_action, staged);
    if staged && s.staged_action.as_deref() == Some("Delete") {
        let empty = NamespacedPolicySpec {
            tier: s.tier.clone(),
            staged_action: s.staged_action.clone(),
            ..Default::default()
        };
        staged_delete_spec_is_empty(v, s, &empty);
    }
    no_global(v, "spec.selector", &s.selector);
    no_global(
        v,
        "spec.serviceAccountSelector",
        &s.service_account_selector,
    );
    let ctx = RuleContext::Policy;
    rules(v, "spec.ingress", &s.ingress, ctx);
    rules(v, "spec.egress", &s.egress, ctx);
    unused_rules_warning(v, listed, s.ingress.len(), s.egress.len());
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RuleContext {
    Policy,
    Profile,
}

fn rules(v: &mut Issues, path: &str, rules: &[Rule], ctx: RuleContext) {
    if rules.len() > MAX_RULES_PER_DIRECTION {
        v.error(
            path,
            format!(
                "{} rules; at most {MAX_RULES_PER_DIRECTION} per direction are accepted",
                rules.len()
            ),
        );
    }
    for (i, r) in rules.iter().enumerate() {
        rule(v, &format!("{path}[{i}]"), r, ctx);
    }
}

fn rule(v: &mut Issues, path: &str, r: &Rule, ctx: RuleContext) {
    match r.action.as_str() {
        "Allow" | "Deny" | "Log" => {}
        "Pass" => match ctx {
            // Felix treats a profile's Pass like the end of the profile: deny.
            RuleContext::Profile => v.warning(
                format!("{path}.action"),
                "Pass in a profile has no next tier to pass to; it acts as Deny",
            ),
            RuleContext::Policy => {}
        },
        "" => v.error(
            format!("{path}.action"),
            "action is required; accepted: Allow, Deny, Pass, Log",
        ),
        a => v.error(
            format!("{path}.action"),
            format!("action `{a}` is not valid (case-sensitive); accepted: Allow, Deny, Pass, Log"),
        ),
    }
    let ip_version = match r.ip_version {
        None => None,
        Some(n @ (4 | 6)) => Some(n as u8),
        Some(n) => {
            v.error(
                format!("{path}.ipVersion"),
                format!("ipVersion {n} is not valid; accepted: 4, 6"),
            );
            None
        }
    };
    let protocol = r.protocol.as_ref().and_then(|p| match fields::protocol(p) {
        Ok(p) => Some(p),
        Err(m) => {
            v.error(format!("{path}.protocol"), m);
            None
        }
    });
    let not_protocol = r
        .not_protocol
        .as_ref()
        .and_then(|p| match fields::protocol(p) {
            Ok(p) => Some(p),
            Err(m) => {
                v.error(format!("{path}.notProtocol"), m);
                None
            }
        });
    // Calico: the ICMP protocols pin the IP version.
    let protocols = [protocol, not_protocol];
    if protocols.contains(&Some(proto::ICMP)) && ip_version.is_some_and(|v| v != 4) {
        v.error(
            format!("{path}.ipVersion"),
            "must set ipVersion to 4 with protocol ICMP",
        );
    }
    if protocols.contains(&Some(proto::ICMPV6)) && ip_version.is_some_and(|v| v != 6) {
        v.error(
            format!("{path}.ipVersion"),
            "must set ipVersion to 6 with protocol ICMPv6",
        );
    }
    for (field, icmp) in [("icmp", &r.icmp), ("notICMP", &r.not_icmp)] {
        let Some(icmp) = icmp else { continue };
        let fpath = format!("{path}.{field}");
        // Calico checks the protocol for `icmp` only; `notICMP` is not checked.
        if field == "icmp" && !matches!(protocol, Some(proto::ICMP | proto::ICMPV6)) {
            v.error(
                &fpath,
                "rules that specify ICMP fields must set protocol to ICMP or ICMPv6",
            );
        }
        if let Some(t) = icmp.icmp_type {
            if !(0..=254).contains(&t) {
                v.error(
                    format!("{fpath}.type"),
                    format!("ICMP type {t} is out of range; accepted: 0-254"),
                );
            }
        }
        if let Some(c) = icmp.code {
            if icmp.icmp_type.is_none() {
                v.error(
                    format!("{fpath}.code"),
                    "ICMP code specified without an ICMP type",
                );
            } else if !(0..=255).contains(&c) {
                v.error(
                    format!("{fpath}.code"),
                    format!("ICMP code {c} is out of range; accepted: 0-255"),
                );
            }
        }
    }
    if let Some(m) = &r.metadata {
        annotations(v, &format!("{path}.metadata.annotations"), &m.annotations);
    }
    if r.http.is_some() {
        v.error(
            format!("{path}.http"),
            "HTTP match rules need an application-layer proxy and are not supported",
        );
    }
    let src = entity(
        v,
        &format!("{path}.source"),
        &r.source,
        protocol,
        ip_version,
    );
    let dst = entity(
        v,
        &format!("{path}.destination"),
        &r.destination,
        protocol,
        ip_version,
    );
    // Calico: one rule cannot mix IPv4 and IPv6 nets (it exists for one family only).
    let (mut seen_v4, mut seen_v6) = (false, false);
    for (field, (v4, v6)) in src.into_iter().chain(dst) {
        if (v4 && seen_v6) || (v6 && seen_v4) || (v4 && v6) {
            v.error(field, "rule contains both IPv4 and IPv6 CIDRs");
        }
        seen_v4 |= v4;
        seen_v6 |= v6;
    }
}

/// A network set's nets: each one checked, unless there are more than the
/// sanity bound (then one error, without parsing a million entries).
fn set_nets(v: &mut Issues, list: &[String]) {
    if list.len() > MAX_SET_NETS {
        v.error(
            "spec.nets",
            format!(
                "{} nets; a network set holds at most {MAX_SET_NETS} (split it into several sets with the same labels)",
                list.len()
            ),
        );
        return;
    }
    nets_of(v, "spec.nets", list, None);
}

fn nets(v: &mut Issues, path: &str, nets: &[String], ip_version: Option<u8>) -> (bool, bool) {
    if nets.len() > MAX_NETS {
        v.error(
            path,
            format!("{} nets; at most {MAX_NETS} are accepted", nets.len()),
        );
    }
    nets_of(v, path, nets, ip_version)
}

/// Checks each net; returns the IP families used.
fn nets_of(v: &mut Issues, path: &str, nets: &[String], ip_version: Option<u8>) -> (bool, bool) {
    let (mut v4, mut v6) = (false, false);
    for (i, n) in nets.iter().enumerate() {
        match fields::net(n) {
            Err(m) => v.error(format!("{path}[{i}]"), m),
            Ok(net) => {
                let family = fields::ip_version_of(&net);
                v4 |= family == 4;
                v6 |= family == 6;
                if let Some(want) = ip_version {
                    if family != want {
                        v.error(
                            format!("{path}[{i}]"),
                            format!("net `{n}` is not IPv{want} but the rule has ipVersion {want}"),
                        );
                    }
                }
            }
        }
    }
    (v4, v6)
}

fn ports(v: &mut Issues, path: &str, ports: &[IntOrString], protocol: Option<u8>) {
    if ports.is_empty() {
        return;
    }
    if ports.len() > MAX_PORTS {
        v.error(
            path,
            format!("{} ports; at most {MAX_PORTS} are accepted", ports.len()),
        );
    }
    if !fields::supports_ports(protocol) {
        v.error(
            path,
            "ports (numeric or named) need the rule's protocol to be TCP, UDP or SCTP",
        );
    }
    for (i, p) in ports.iter().enumerate() {
        if let Err(m) = fields::port(p) {
            v.error(format!("{path}[{i}]"), m);
        }
    }
}

/// Checks one side of a rule; returns the IP families its nets use, per list.
fn entity(
    v: &mut Issues,
    path: &str,
    e: &EntityRule,
    protocol: Option<u8>,
    ip_version: Option<u8>,
) -> [(String, (bool, bool)); 2] {
    let nets_path = format!("{path}.nets");
    let not_nets_path = format!("{path}.notNets");
    let families = [
        (nets_path.clone(), nets(v, &nets_path, &e.nets, ip_version)),
        (
            not_nets_path.clone(),
            nets(v, &not_nets_path, &e.not_nets, ip_version),
        ),
    ];
    selector(v, &format!("{path}.selector"), &e.selector);
    no_global(v, &format!("{path}.selector"), &e.selector);
    selector(v, &format!("{path}.notSelector"), &e.not_selector);
    selector(
        v,
        &format!("{path}.namespaceSelector"),
        &e.namespace_selector,
    );
    if e.namespace_selector.contains("global(") && e.namespace_selector.trim() != "global()" {
        v.error(
            format!("{path}.namespaceSelector"),
            "global() cannot be combined with other selectors",
        );
    }
    ports(v, &format!("{path}.ports"), &e.ports, protocol);
    ports(v, &format!("{path}.notPorts"), &e.not_ports, protocol);
    if let Some(sa) = &e.service_accounts {
        selector(v, &format!("{path}.serviceAccounts.selector"), &sa.selector);
        for (i, n) in sa.names.iter().enumerate() {
            v.check(
                format!("{path}.serviceAccounts.names[{i}]"),
                fields::check_name(n),
            );
        }
    }
    if e.services.is_some() {
        v.error(
            format!("{path}.services"),
            "service matches are not supported by this agent; use selectors or nets",
        );
    }
    families
}

/// `global()` is only meaningful in a rule's namespaceSelector (Calico rejects it elsewhere).
fn no_global(v: &mut Issues, path: &str, s: &str) {
    if s.contains("global()") {
        v.error(
            path,
            "global() can only be used in an EntityRule namespaceSelector",
        );
    }
}

fn tier(v: &mut Issues, name: &str, s: &TierSpec) {
    order(v, s.order);
    // Calico pins the orders of the built-in tiers.
    if let Some(builtin) = super::convert::builtin_tiers()
        .into_iter()
        .find(|t| t.name == name)
    {
        if s.order != builtin.order {
            v.error(
                "spec.order",
                format!(
                    "the {name} tier's order must be {}",
                    builtin.order.unwrap_or_default()
                ),
            );
        }
    }
    if let Some(a) = &s.default_action {
        if !matches!(a.as_str(), "Deny" | "Pass") {
            v.error(
                "spec.defaultAction",
                format!("defaultAction `{a}` is not valid; accepted: Deny, Pass"),
            );
        }
    }
}

fn endpoint_ports(v: &mut Issues, ports: &[EndpointPort], workload: bool) {
    for (i, p) in ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        if p.name.is_empty() {
            // Calico: a workload port may go unnamed when it only maps a hostPort.
            if !workload || p.host_port == 0 {
                v.error(
                    format!("{path}.name"),
                    if workload {
                        "a workload port needs a name unless it sets hostPort"
                    } else {
                        "a host endpoint port needs a name"
                    },
                );
            }
        } else if !matches!(
            fields::port(&IntOrString::Str(p.name.clone())),
            Ok(super::ir::PortMatch::Named(_))
        ) {
            v.error(
                format!("{path}.name"),
                format!("port name `{}` is not valid; accepted: [a-zA-Z0-9_.-]{{1,128}}, not only digits", p.name),
            );
        }
        match &p.protocol {
            None => v.error(
                format!("{path}.protocol"),
                "protocol is required; accepted: TCP, UDP, SCTP",
            ),
            Some(pr) => match fields::protocol(pr) {
                Ok(n) if fields::supports_ports(Some(n)) => {}
                Ok(_) => v.error(
                    format!("{path}.protocol"),
                    "a named port's protocol must be TCP, UDP or SCTP",
                ),
                Err(m) => v.error(format!("{path}.protocol"), m),
            },
        }
        if !(1..=65535).contains(&p.port) {
            v.error(
                format!("{path}.port"),
                format!("port {} is out of range; accepted: 1-65535", p.port),
            );
        }
    }
}

fn ip_or_net(v: &mut Issues, path: &str, items: &[String]) {
    for (i, n) in items.iter().enumerate() {
        if let Err(m) = fields::net(n) {
            v.error(format!("{path}[{i}]"), m);
        }
    }
}

fn profile_names(v: &mut Issues, profiles: &[String]) {
    for (i, p) in profiles.iter().enumerate() {
        v.check(format!("spec.profiles[{i}]"), fields::check_name(p));
    }
}

fn workload_endpoint(v: &mut Issues, s: &WorkloadEndpointSpec) {
    ip_or_net(v, "spec.ipNetworks", &s.ip_networks);
    // Calico: a workload's networks are single addresses.
    for (i, n) in s.ip_networks.iter().enumerate() {
        if let Ok(net) = fields::net(n) {
            if net.prefix_len() != net.max_prefix_len() {
                v.error(
                    format!("spec.ipNetworks[{i}]"),
                    format!(
                        "`{n}` holds more than one address; accepted: a /32 or /128 (or a bare IP)"
                    ),
                );
            }
        }
    }
    ip_or_net(
        v,
        "spec.allowSpoofedSourcePrefixes",
        &s.allow_spoofed_source_prefixes,
    );
    // An endpoint of another node is only a peer here (`agent run --node`):
    // nothing is attached to it, so it needs no interface.
    if s.interface_name.is_empty() && s.node.as_deref().is_none_or(str::is_empty) {
        v.error(
            "spec.interfaceName",
            "interfaceName is required for a WorkloadEndpoint without `spec.node` \
             (one with `spec.node` needs it only on that node)",
        );
    }
    if let Some(id) = &s.container_id {
        let ok = !id.is_empty()
            && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !id.starts_with('-')
            && !id.ends_with('-');
        if !ok {
            v.error(
                "spec.containerID",
                format!("containerID `{id}` is not valid; accepted: [a-zA-Z0-9-], starting and ending alphanumeric"),
            );
        }
    }
    profile_names(v, &s.profiles);
    endpoint_ports(v, &s.ports, true);
    if !s.interface_name.is_empty() {
        v.check(
            "spec.interfaceName",
            fields::check_interface(&s.interface_name),
        );
    }
    if let Some(sa) = &s.service_account_name {
        v.check("spec.serviceAccountName", fields::check_name(sa));
    }
}

fn host_endpoint(v: &mut Issues, s: &HostEndpointSpec) {
    if s.node.as_deref().unwrap_or("").is_empty() {
        v.error(
            "spec.node",
            "node is required for a HostEndpoint (the host it belongs to)",
        );
    }
    if s.interface_name.is_empty() && s.expected_ips.is_empty() {
        v.error(
            "spec",
            "a HostEndpoint needs interfaceName or expectedIPs (or both)",
        );
    }
    ip_or_net(v, "spec.expectedIPs", &s.expected_ips);
    profile_names(v, &s.profiles);
    endpoint_ports(v, &s.ports, false);
    // `*` means every host interface.
    if !s.interface_name.is_empty() && s.interface_name != "*" {
        v.check(
            "spec.interfaceName",
            fields::check_interface(&s.interface_name),
        );
    }
}

fn label_selector(v: &mut Issues, path: &str, s: &LabelSelector) {
    check_labels(v, &format!("{path}.matchLabels"), &s.match_labels);
    for (i, e) in s.match_expressions.iter().enumerate() {
        let p = format!("{path}.matchExpressions[{i}]");
        if let Err(m) = fields::check_label(&e.key, "") {
            v.error(format!("{p}.key"), m);
        }
        match e.operator.as_str() {
            "In" | "NotIn" if e.values.is_empty() => v.error(
                format!("{p}.values"),
                format!("operator {} needs at least one value", e.operator),
            ),
            "Exists" | "DoesNotExist" if !e.values.is_empty() => v.error(
                format!("{p}.values"),
                format!("operator {} takes no values", e.operator),
            ),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            op => v.error(
                format!("{p}.operator"),
                format!("operator `{op}` is not valid; accepted: In, NotIn, Exists, DoesNotExist"),
            ),
        }
        // Values end up quoted in a Calico selector, which has no escapes.
        for (j, val) in e.values.iter().enumerate() {
            if let Err(m) = fields::check_label(&e.key, val) {
                v.error(format!("{p}.values[{j}]"), m);
            }
        }
    }
}

fn k8s_peers(v: &mut Issues, path: &str, peers: &[K8sPeer]) {
    for (i, peer) in peers.iter().enumerate() {
        let p = format!("{path}[{i}]");
        if let Some(s) = &peer.pod_selector {
            label_selector(v, &format!("{p}.podSelector"), s);
        }
        if let Some(s) = &peer.namespace_selector {
            label_selector(v, &format!("{p}.namespaceSelector"), s);
        }
        match &peer.ip_block {
            Some(b) => {
                if peer.pod_selector.is_some() || peer.namespace_selector.is_some() {
                    v.error(
                        format!("{p}.ipBlock"),
                        "ipBlock cannot be combined with podSelector or namespaceSelector",
                    );
                }
                match fields::cidr(&b.cidr).ok_or(()) {
                    Err(()) => v.error(
                        format!("{p}.ipBlock.cidr"),
                        format!(
                            "`{}` is not a valid CIDR (no leading zeros); accepted: e.g. 10.0.0.0/8",
                            b.cidr
                        ),
                    ),
                    Ok(cidr) => {
                        for (j, ex) in b.except.iter().enumerate() {
                            let ok = fields::cidr(ex).is_some_and(|e| {
                                cidr.contains(&e) && e.prefix_len() > cidr.prefix_len()
                            });
                            if !ok {
                                v.error(
                                    format!("{p}.ipBlock.except[{j}]"),
                                    format!(
                                        "`{ex}` must be a CIDR strictly inside cidr `{}`",
                                        b.cidr
                                    ),
                                );
                            }
                        }
                    }
                }
            }
            None => {
                if peer.pod_selector.is_none() && peer.namespace_selector.is_none() {
                    v.error(&p, "a peer needs podSelector, namespaceSelector or ipBlock");
                }
            }
        }
    }
}

fn k8s_ports(v: &mut Issues, path: &str, ports: &[K8sPort]) {
    for (i, port) in ports.iter().enumerate() {
        let p = format!("{path}[{i}]");
        if let Some(proto) = &port.protocol {
            if !matches!(proto.as_str(), "TCP" | "UDP" | "SCTP") {
                v.error(
                    format!("{p}.protocol"),
                    format!("protocol `{proto}` is not valid; accepted: TCP, UDP, SCTP"),
                );
            }
        }
        match &port.port {
            Some(IntOrString::Int(n)) => {
                if !(1..=65535).contains(n) {
                    v.error(
                        format!("{p}.port"),
                        format!("port {n} is out of range; accepted: 1-65535"),
                    );
                }
                if let Some(end) = port.end_port {
                    if end < *n || end > 65535 {
                        v.error(
                            format!("{p}.endPort"),
                            format!("endPort {end} must be between port {n} and 65535"),
                        );
                    }
                }
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
                    v.error(format!("{p}.endPort"), "endPort needs a numeric port");
                }
            }
            None => {
                if port.end_port.is_some() {
                    v.error(format!("{p}.endPort"), "endPort needs a numeric port");
                }
            }
        }
    }
}

fn k8s_policy(v: &mut Issues, s: &K8sPolicySpec, staged: bool) {
    label_selector(v, "spec.podSelector", &s.pod_selector);
    for (i, t) in s.policy_types.iter().enumerate() {
        if !matches!(t.as_str(), "Ingress" | "Egress") {
            v.error(
                format!("spec.policyTypes[{i}]"),
                format!("policy type `{t}` is not valid; accepted: Ingress, Egress"),
            );
        }
    }
    staged_action(v, &s.staged_action, staged);
    if staged && s.staged_action.as_deref() == Some("Delete") {
        let empty = K8sPolicySpec {
            staged_action: s.staged_action.clone(),
            ..Default::default()
        };
        // Debug output compares every field, including ones added later.
        if format!("{empty:?}") != format!("{s:?}") {
            v.error(DELETE_FIELD, DELETE_MESSAGE);
        }
    }
    for (i, r) in s.ingress.iter().enumerate() {
        k8s_peers(v, &format!("spec.ingress[{i}].from"), &r.from);
        k8s_ports(v, &format!("spec.ingress[{i}].ports"), &r.ports);
    }
    for (i, r) in s.egress.iter().enumerate() {
        k8s_peers(v, &format!("spec.egress[{i}].to"), &r.to);
        k8s_ports(v, &format!("spec.egress[{i}].ports"), &r.ports);
    }
}
