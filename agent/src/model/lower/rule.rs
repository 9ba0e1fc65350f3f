//! Rules and their two sides (EntityRule), and the selectors, nets and ports
//! they hold. Scoping is folded into one selector the way Calico's
//! calculation graph does (rules.go getEndpointSelector).
use ipnet::IpNet;

use super::{annotations, each, fields, Issues, MAX_NETS, MAX_PORTS};
use super::{MAX_RULES_PER_DIRECTION, MAX_SELECTOR_LEN};
use crate::model::ir::{self, Action, IcmpMatch, PortMatch, Protocol};
use crate::model::ir::{LABEL_NAMESPACE, LABEL_SERVICE_ACCOUNT};
use crate::model::ir::{NAMESPACE_LABEL_PREFIX, SERVICE_ACCOUNT_LABEL_PREFIX};
use crate::model::resources::{self as res, IntOrString};
use crate::selector::{self, Selector};

/// Where rules are lowered.
#[derive(Clone, Copy)]
pub(super) struct RuleContext<'a> {
    /// The namespace of a namespaced policy: selectors are scoped to it.
    pub namespace: Option<&'a str>,
    /// A profile's rules (Pass has no next tier there).
    pub profile: bool,
    /// Calico's caps on list lengths apply: not to the rules made from a
    /// Kubernetes NetworkPolicy, which has none.
    pub capped: bool,
}

/// A selector's text, parsed; None (error recorded) when it does not parse or
/// is longer than [`MAX_SELECTOR_LEN`] (when `capped`).
pub(super) fn selector(v: &mut Issues, path: &str, s: &str, capped: bool) -> Option<Selector> {
    if capped && s.len() > MAX_SELECTOR_LEN {
        v.error(
            path,
            format!(
                "selector is {} characters long; at most {MAX_SELECTOR_LEN} are accepted",
                s.len()
            ),
        );
        return None;
    }
    selector::parse(s)
        .map_err(|e| {
            v.error(
                path,
                format!(
                    "selector `{s}` does not parse at position {}: {}",
                    e.position, e.reason
                ),
            )
        })
        .ok()
}

/// A selector field that may be empty (unset): Some(None) when empty.
fn optional_selector(
    v: &mut Issues,
    path: &str,
    s: &str,
    capped: bool,
) -> Option<Option<Selector>> {
    let parsed = selector(v, path, s, capped)?;
    Some((!s.is_empty()).then_some(parsed))
}

/// `global()` is only meaningful in a rule's namespaceSelector (Calico rejects it elsewhere).
pub(super) fn no_global(v: &mut Issues, path: &str, s: &str) {
    if s.contains("global()") {
        v.error(
            path,
            "global() can only be used in an EntityRule namespaceSelector",
        );
    }
}

pub(super) fn rules(
    v: &mut Issues,
    path: &str,
    rules: &[res::Rule],
    ctx: RuleContext,
) -> Option<Vec<ir::Rule>> {
    if ctx.capped && rules.len() > MAX_RULES_PER_DIRECTION {
        v.error(
            path,
            format!(
                "{} rules; at most {MAX_RULES_PER_DIRECTION} per direction are accepted",
                rules.len()
            ),
        );
    }
    each(rules, |i, r| rule(v, &format!("{path}[{i}]"), r, ctx))
}

fn action(v: &mut Issues, path: &str, action: &str, ctx: RuleContext) -> Option<Action> {
    let field = format!("{path}.action");
    match action {
        "Allow" => Some(Action::Allow),
        "Deny" => Some(Action::Deny),
        "Log" => Some(Action::Log),
        "Pass" => {
            if ctx.profile {
                // Felix treats a profile's Pass like the end of the profile: deny.
                v.warning(
                    field,
                    "Pass in a profile has no next tier to pass to; it acts as Deny",
                );
            }
            Some(Action::Pass)
        }
        "" => {
            v.error(
                field,
                "action is required; accepted: Allow, Deny, Pass, Log",
            );
            None
        }
        a => {
            v.error(
                field,
                format!(
                    "action `{a}` is not valid (case-sensitive); accepted: Allow, Deny, Pass, Log"
                ),
            );
            None
        }
    }
}

/// An optional field: Some(None) when absent, None when present and wrong.
fn optional<T, U>(value: Option<&T>, lower: impl FnOnce(&T) -> Option<U>) -> Option<Option<U>> {
    match value {
        None => Some(None),
        Some(t) => lower(t).map(Some),
    }
}

fn ip_version(v: &mut Issues, path: &str, n: i64) -> Option<u8> {
    match n {
        4 | 6 => Some(n as u8),
        n => {
            v.error(
                format!("{path}.ipVersion"),
                format!("ipVersion {n} is not valid; accepted: 4, 6"),
            );
            None
        }
    }
}

fn rule(v: &mut Issues, path: &str, r: &res::Rule, ctx: RuleContext) -> Option<ir::Rule> {
    let action = action(v, path, &r.action, ctx);
    let ip_version = optional(r.ip_version.as_ref(), |n| ip_version(v, path, *n));
    let protocol = optional(r.protocol.as_ref(), |p| {
        v.ok(format!("{path}.protocol"), fields::protocol(p))
    });
    let not_protocol = optional(r.not_protocol.as_ref(), |p| {
        v.ok(format!("{path}.notProtocol"), fields::protocol(p))
    });
    // The checks below see a wrong value as unset (it is reported already).
    let (known_version, known_protocol) = (ip_version.flatten(), protocol.flatten());
    icmp_versions(
        v,
        path,
        [known_protocol, not_protocol.flatten()],
        known_version,
    );
    let icmp = optional(r.icmp.as_ref(), |i| {
        icmp_match(v, &format!("{path}.icmp"), i, Some(known_protocol))
    });
    let not_icmp = optional(r.not_icmp.as_ref(), |i| {
        icmp_match(v, &format!("{path}.notICMP"), i, None)
    });
    if let Some(m) = &r.metadata {
        annotations(v, &format!("{path}.metadata.annotations"), &m.annotations);
    }
    if r.http.is_some() {
        v.error(
            format!("{path}.http"),
            "HTTP match rules need an application-layer proxy and are not supported",
        );
    }
    services_placement(v, path, r);
    let side = |v: &mut Issues, name: &str, e: &res::EntityRule| {
        let path = format!("{path}.{name}");
        entity(v, &path, e, known_protocol, known_version, ctx)
    };
    let (src_families, source) = side(v, "source", &r.source);
    let (dst_families, destination) = side(v, "destination", &r.destination);
    one_family(v, src_families.into_iter().chain(dst_families));
    Some(ir::Rule {
        action: action?,
        ip_version: ip_version?,
        protocol: protocol?,
        not_protocol: not_protocol?,
        icmp: icmp?.flatten(),
        not_icmp: not_icmp?.flatten(),
        source: source?,
        destination: destination?,
    })
}

/// Calico: the ICMP protocols pin the IP version.
fn icmp_versions(
    v: &mut Issues,
    path: &str,
    protocols: [Option<Protocol>; 2],
    ip_version: Option<u8>,
) {
    if protocols.contains(&Some(Protocol::ICMP)) && ip_version.is_some_and(|v| v != 4) {
        v.error(
            format!("{path}.ipVersion"),
            "must set ipVersion to 4 with protocol ICMP",
        );
    }
    if protocols.contains(&Some(Protocol::ICMPV6)) && ip_version.is_some_and(|v| v != 6) {
        v.error(
            format!("{path}.ipVersion"),
            "must set ipVersion to 6 with protocol ICMPv6",
        );
    }
}

/// `icmp`/`notICMP`; Some(None) when it sets no type (it matches any packet).
/// `protocol` is Some for `icmp` only: Calico checks the protocol for `icmp`
/// only, `notICMP` is not checked.
fn icmp_match(
    v: &mut Issues,
    fpath: &str,
    icmp: &res::IcmpFields,
    protocol: Option<Option<Protocol>>,
) -> Option<Option<IcmpMatch>> {
    if protocol.is_some_and(|p| !p.is_some_and(Protocol::is_icmp)) {
        v.error(
            fpath,
            "rules that specify ICMP fields must set protocol to ICMP or ICMPv6",
        );
    }
    let icmp_type = optional(icmp.icmp_type.as_ref(), |t| {
        let lowered = u8::try_from(*t).ok().filter(|t| *t <= 254);
        if lowered.is_none() {
            v.error(
                format!("{fpath}.type"),
                format!("ICMP type {t} is out of range; accepted: 0-254"),
            );
        }
        lowered
    });
    let code = optional(icmp.code.as_ref(), |c| {
        if icmp.icmp_type.is_none() {
            v.error(
                format!("{fpath}.code"),
                "ICMP code specified without an ICMP type",
            );
            return None;
        }
        let code = u8::try_from(*c).ok();
        if code.is_none() {
            v.error(
                format!("{fpath}.code"),
                format!("ICMP code {c} is out of range; accepted: 0-255"),
            );
        }
        code
    });
    let (icmp_type, code) = (icmp_type?, code?);
    Some(icmp_type.map(|icmp_type| IcmpMatch { icmp_type, code }))
}

/// Calico: one rule cannot mix IPv4 and IPv6 nets (it exists for one family only).
fn one_family(v: &mut Issues, lists: impl Iterator<Item = (String, (bool, bool))>) {
    let (mut seen_v4, mut seen_v6) = (false, false);
    for (field, (v4, v6)) in lists {
        if (v4 && seen_v6) || (v6 && seen_v4) || (v4 && v6) {
            v.error(field, "rule contains both IPv4 and IPv6 CIDRs");
        }
        seen_v4 |= v4;
        seen_v6 |= v6;
    }
}

/// The IP families a nets list uses, by its field path.
type Families = [(String, (bool, bool)); 2];

/// One side of a rule, and the IP families its nets use, per list.
fn entity(
    v: &mut Issues,
    path: &str,
    e: &res::EntityRule,
    protocol: Option<Protocol>,
    ip_version: Option<u8>,
    ctx: RuleContext,
) -> (Families, Option<ir::EntityRule>) {
    let capped = ctx.capped;
    let (nets_path, not_nets_path) = (format!("{path}.nets"), format!("{path}.notNets"));
    let (nets_families, in_nets) = nets(v, &nets_path, &e.nets, ip_version, capped);
    let (not_families, not_nets) = nets(v, &not_nets_path, &e.not_nets, ip_version, capped);
    let families = [(nets_path, nets_families), (not_nets_path, not_families)];
    let own = optional_selector(v, &format!("{path}.selector"), &e.selector, capped);
    no_global(v, &format!("{path}.selector"), &e.selector);
    let not_selector =
        optional_selector(v, &format!("{path}.notSelector"), &e.not_selector, capped);
    let ns_path = format!("{path}.namespaceSelector");
    let ns_selector = optional_selector(v, &ns_path, &e.namespace_selector, capped);
    if e.namespace_selector.contains("global(") && e.namespace_selector.trim() != "global()" {
        v.error(ns_path, "global() cannot be combined with other selectors");
    }
    let ports_path = format!("{path}.ports");
    let in_ports = ports(v, &ports_path, &e.ports, protocol, capped);
    let not_ports = ports(
        v,
        &format!("{path}.notPorts"),
        &e.not_ports,
        protocol,
        capped,
    );
    let service_accounts = optional(e.service_accounts.as_ref(), |sa| {
        service_accounts(v, path, sa, capped)
    });
    let services = optional(e.services.as_ref(), |m| services(v, path, e, m, ctx));
    let lowered = (|| {
        let not_selector_set = !e.not_selector.is_empty();
        let selector = endpoint_selector(
            ctx.namespace,
            own?,
            ns_selector?,
            service_accounts?.flatten(),
            not_selector_set,
        );
        Some(ir::EntityRule {
            nets: in_nets?,
            not_nets: not_nets?,
            selector,
            not_selector: not_selector?,
            ports: in_ports?,
            not_ports: not_ports?,
            services: services?,
            service_ports: None,
        })
    })();
    (families, lowered)
}

/// `services` (Calico's ServiceMatch): a name, and a namespace that defaults
/// to a namespaced policy's own. As Calico's validator: nothing else that
/// names the peer (selectors, nets, service accounts) on the same side.
fn services(
    v: &mut Issues,
    path: &str,
    e: &res::EntityRule,
    m: &res::ServiceMatch,
    ctx: RuleContext,
) -> Option<ir::ServiceRef> {
    let field = format!("{path}.services");
    let clashes = [
        (
            "selector/notSelector",
            !e.selector.is_empty() || !e.not_selector.is_empty(),
        ),
        ("nets/notNets", !e.nets.is_empty() || !e.not_nets.is_empty()),
        ("namespaceSelector", !e.namespace_selector.is_empty()),
        ("serviceAccounts", e.service_accounts.is_some()),
    ];
    for (what, _) in clashes.iter().filter(|(_, set)| *set) {
        v.error(
            &field,
            format!("cannot specify {what} and services on the same rule side; the Service's endpoints are the peers"),
        );
    }
    if m.name.is_empty() {
        v.error(format!("{field}.name"), "must specify a service name");
        return None;
    }
    let namespace = match (m.namespace.as_str(), ctx.namespace) {
        ("", Some(own)) => own.to_string(),
        ("", None) => {
            v.error(
                format!("{field}.namespace"),
                "a cluster-scoped policy or profile must name the Service's namespace",
            );
            return None;
        }
        (ns, _) => ns.to_string(),
    };
    Some(ir::ServiceRef {
        namespace,
        name: m.name.clone(),
    })
}

/// Calico: `services` only where the Service's endpoints are the peer (an
/// ingress rule's source, an egress rule's destination), and a destination
/// Service brings its own ports.
fn services_placement(v: &mut Issues, path: &str, r: &res::Rule) {
    let egress = path.contains("egress");
    if egress && r.source.services.is_some() {
        v.error(
            format!("{path}.source.services"),
            "not allowed in egress rule source",
        );
    }
    if !egress && r.destination.services.is_some() {
        v.error(
            format!("{path}.destination.services"),
            "not allowed in ingress rule destination",
        );
    }
    if r.destination.services.is_some() {
        for (field, set) in [
            ("ports", !r.destination.ports.is_empty()),
            ("notPorts", !r.destination.not_ports.is_empty()),
        ] {
            if set {
                v.error(
                    format!("{path}.destination.{field}"),
                    format!("cannot specify {field} with a service selector: the Service's endpoints bring their ports"),
                );
            }
        }
    }
}

/// `serviceAccounts`: by selector over `pcsa.` labels and/or by names.
fn service_accounts(
    v: &mut Issues,
    path: &str,
    sa: &res::ServiceAccountMatch,
    capped: bool,
) -> Option<Option<Selector>> {
    let by_selector = optional_selector(
        v,
        &format!("{path}.serviceAccounts.selector"),
        &sa.selector,
        capped,
    );
    for (i, n) in sa.names.iter().enumerate() {
        v.check(
            format!("{path}.serviceAccounts.names[{i}]"),
            fields::check_name(n),
        );
    }
    let by_selector = by_selector?.map(|s| s.prefix_keys(SERVICE_ACCOUNT_LABEL_PREFIX));
    let by_name = (!sa.names.is_empty())
        .then(|| Selector::in_set(LABEL_SERVICE_ACCOUNT, sa.names.iter().cloned()));
    Some(both(by_selector, by_name))
}

fn both(a: Option<Selector>, b: Option<Selector>) -> Option<Selector> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.and(b)),
        (a, b) => a.or(b),
    }
}

/// The selector an EntityRule matches endpoints with (rules.go getEndpointSelector):
/// scoped to the policy's namespace, or to the namespaces `namespaceSelector`
/// picks (over `pcns.` labels; `global()` means "in no namespace", see
/// [`Selector::to_namespace_scope`]), as soon as any selector field is used
/// (including `notSelector`).
fn endpoint_selector(
    namespace: Option<&str>,
    own: Option<Selector>,
    namespace_selector: Option<Selector>,
    service_accounts: Option<Selector>,
    not_selector_set: bool,
) -> Option<Selector> {
    let has_ns_selector = namespace_selector.is_some();
    let scope = match namespace_selector {
        Some(s) => Some(s.to_namespace_scope(NAMESPACE_LABEL_PREFIX, LABEL_NAMESPACE)),
        None => namespace.map(|ns| Selector::equals(LABEL_NAMESPACE, ns)),
    };
    let selector = both(service_accounts, own);
    let scoped = selector.is_some() || not_selector_set || has_ns_selector;
    match scope {
        Some(scope) if scoped => Some(match selector {
            Some(s) => scope.and(s),
            None => scope,
        }),
        _ => selector,
    }
}

/// A rule's `nets`/`notNets`, and the IP families they use.
fn nets(
    v: &mut Issues,
    path: &str,
    nets: &[String],
    ip_version: Option<u8>,
    capped: bool,
) -> ((bool, bool), Option<Vec<IpNet>>) {
    if capped && nets.len() > MAX_NETS {
        v.error(
            path,
            format!("{} nets; at most {MAX_NETS} are accepted", nets.len()),
        );
    }
    nets_of(v, path, nets, ip_version)
}

/// Each net checked (and of the rule's IP version, when it has one); the IP
/// families used.
pub(super) fn nets_of(
    v: &mut Issues,
    path: &str,
    nets: &[String],
    ip_version: Option<u8>,
) -> ((bool, bool), Option<Vec<IpNet>>) {
    let (mut v4, mut v6) = (false, false);
    let lowered = each(nets, |i, n| {
        let net = v.ok(format!("{path}[{i}]"), fields::net(n))?;
        let family = fields::ip_version_of(&net);
        v4 |= family == 4;
        v6 |= family == 6;
        match ip_version {
            Some(want) if family != want => {
                v.error(
                    format!("{path}[{i}]"),
                    format!("net `{n}` is not IPv{want} but the rule has ipVersion {want}"),
                );
                None
            }
            _ => Some(net),
        }
    });
    ((v4, v6), lowered)
}

fn ports(
    v: &mut Issues,
    path: &str,
    ports: &[IntOrString],
    protocol: Option<Protocol>,
    capped: bool,
) -> Option<Vec<PortMatch>> {
    if ports.is_empty() {
        return Some(Vec::new());
    }
    if capped && ports.len() > MAX_PORTS {
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
    each(ports, |i, p| v.ok(format!("{path}[{i}]"), fields::port(p)))
}
