//! `agent staged suggest`: staged policies that allow exactly the traffic
//! observed, as Calico Enterprise's policy recommendation does (there: one
//! staged policy per namespace from flow logs; here: one StagedNetworkPolicy
//! per destination workload group of a namespace).
//!
//! From flow records (the daemon's, or a dump of `agent flows -o json`): the
//! connections allowed today end to end into a workload of the namespace are
//! grouped by destination (a selector of its stable labels: `app`,
//! `app.kubernetes.io/name`, `k8s-app`, ...; never `pod-template-hash` and
//! the like), then by source and protocol; each rule allows one source (its
//! stable labels, with a `namespaceSelector` for another namespace; its
//! address when it has no labels) on the ports seen, and names the
//! connections that justify it. Ingress only: promoted, a policy keeps what
//! was seen and denies other ingress to the group.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::net::IpAddr;

use super::{rfc3339, Flow, Peer};
use crate::model::ir::{Labels, Protocol};

/// Labels that name a workload across restarts and rollouts, preferred for
/// selectors (those present are all used).
const STABLE: &[&str] = &[
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app",
    "k8s-app",
    "name",
    "component",
    "tier",
    "role",
];

/// Labels that change per pod or rollout: never in a selector.
const UNSTABLE: &[&str] = &[
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "controller-uid",
    "batch.kubernetes.io/controller-uid",
    "job-name",
    "batch.kubernetes.io/job-name",
];

/// Connections a rule or a note names at most (then "and N more").
const NAMED: usize = 5;

/// Where a rule's traffic comes from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    /// Workloads (or network sets) by label; `namespace`: another namespace's,
    /// `Some("")` for global resources.
    Selector {
        selector: String,
        namespace: Option<String>,
    },
    Net(IpAddr),
}

/// What one rule allows: the ports (or ICMP type/code) of one protocol.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Traffic {
    Ports(String),
    Icmp(String, u8, u8),
    Protocol(String),
}

#[derive(Default)]
struct Rule {
    ports: BTreeSet<u16>,
    /// `from -> to PROTO/PORT` -> (count, last seen ns).
    because: BTreeMap<String, (u64, u64)>,
}

/// One suggested policy.
pub struct Suggested {
    pub name: String,
    pub namespace: String,
    pub selector: String,
    rules: BTreeMap<(Source, Traffic), Rule>,
}

/// The suggestion for one namespace.
pub struct Suggestion {
    pub namespace: String,
    pub policies: Vec<Suggested>,
    /// Connections left out, and why.
    pub left_out: Vec<String>,
    /// Observed connections into the namespace that are allowed.
    pub connections: usize,
    pub from_ns: Option<u64>,
    pub to_ns: Option<u64>,
}

/// `key == 'value' && ...` of the stable labels, else of every label but the
/// per-pod ones; None without usable labels.
pub fn stable_selector(labels: &Labels) -> Option<String> {
    let generated = |k: &str| {
        UNSTABLE.contains(&k)
            || k.contains("projectcalico.org/")
            || k.starts_with("pcns.")
            || k.starts_with("pcsa.")
    };
    let stable: Vec<(&String, &String)> = labels
        .iter()
        .filter(|(k, _)| STABLE.contains(&k.as_str()))
        .collect();
    let chosen: Vec<(&String, &String)> = if stable.is_empty() {
        labels.iter().filter(|(k, _)| !generated(k)).collect()
    } else {
        stable
    };
    if chosen.is_empty() {
        return None;
    }
    let terms: Vec<String> = chosen
        .iter()
        .map(|(k, v)| {
            if v.contains('\'') {
                format!("{k} == \"{v}\"")
            } else {
                format!("{k} == '{v}'")
            }
        })
        .collect();
    Some(terms.join(" && "))
}

fn shown(p: &Peer) -> String {
    match (&p.namespace, &p.name) {
        (Some(ns), Some(n)) => format!("{ns}/{n}"),
        (None, Some(n)) => n.clone(),
        _ => p.ip.to_string(),
    }
}

/// Allowed today, end to end when both hooks were seen.
fn allowed(f: &Flow) -> bool {
    match &f.connection {
        Some(c) => c.enforced == "allow",
        None => f.enforced.action == "allow",
    }
}

fn source_of(src: &Peer, namespace: &str) -> Source {
    match (src.name.is_some(), stable_selector(&src.labels)) {
        (true, Some(selector)) => Source::Selector {
            selector,
            namespace: match &src.namespace {
                Some(ns) if ns == namespace => None,
                Some(ns) => Some(ns.clone()),
                None => Some(String::new()),
            },
        },
        _ => Source::Net(src.ip),
    }
}

fn traffic_of(f: &Flow) -> Traffic {
    match f.icmp {
        Some((t, c)) => Traffic::Icmp(f.protocol.clone(), t, c),
        None if Protocol::from_number(f.protocol_number).carries_ports() => {
            Traffic::Ports(f.protocol.clone())
        }
        None => Traffic::Protocol(f.protocol.clone()),
    }
}

/// Builds the suggestion from flow records (any order, any hooks).
pub fn suggest(records: &[Flow], namespace: &str) -> Suggestion {
    let mut groups: BTreeMap<String, Suggested> = BTreeMap::new();
    let mut left_out: BTreeSet<String> = BTreeSet::new();
    let mut seen: BTreeSet<(IpAddr, IpAddr, u16, u8)> = BTreeSet::new();
    let (mut from_ns, mut to_ns) = (None::<u64>, None::<u64>);
    for f in records {
        if f.dst.namespace.as_deref() != Some(namespace) || f.dst.name.is_none() {
            continue;
        }
        let conn = format!(
            "{} -> {} {}/{}",
            shown(&f.src),
            shown(&f.dst),
            f.protocol,
            f.dst.port
        );
        if !allowed(f) {
            left_out.insert(format!(
                "{conn}: denied today (a suggestion only allows what is allowed now)"
            ));
            continue;
        }
        let Some(selector) = stable_selector(&f.dst.labels) else {
            left_out.insert(format!(
                "{conn}: {} has no labels to select it by",
                shown(&f.dst)
            ));
            continue;
        };
        seen.insert((f.src.ip, f.dst.ip, f.dst.port, f.protocol_number));
        from_ns = Some(from_ns.map_or(f.first_seen_ns, |v| v.min(f.first_seen_ns)));
        to_ns = Some(to_ns.map_or(f.last_seen_ns, |v| v.max(f.last_seen_ns)));
        let group = groups.entry(selector.clone()).or_insert_with(|| Suggested {
            name: String::new(),
            namespace: namespace.to_string(),
            selector,
            rules: BTreeMap::new(),
        });
        let traffic = traffic_of(f);
        let has_ports = matches!(traffic, Traffic::Ports(_));
        let rule = group
            .rules
            .entry((source_of(&f.src, namespace), traffic))
            .or_default();
        if has_ports {
            rule.ports.insert(f.dst.port);
        }
        let e = rule.because.entry(conn).or_insert((0, 0));
        e.0 += f.count;
        e.1 = e.1.max(f.last_seen_ns);
    }
    let mut policies: Vec<Suggested> = groups.into_values().collect();
    name_policies(&mut policies);
    Suggestion {
        namespace: namespace.to_string(),
        policies,
        left_out: left_out.into_iter().collect(),
        connections: seen.len(),
        from_ns,
        to_ns,
    }
}

/// `suggested-<label values>`, a DNS-1123 name, unique in the suggestion.
fn name_policies(policies: &mut [Suggested]) {
    let mut taken = BTreeSet::new();
    for p in policies.iter_mut() {
        let values: Vec<&str> = p
            .selector
            .split(" && ")
            .filter_map(|t| {
                t.split_once(" == ")
                    .map(|(_, v)| v.trim_matches(['\'', '"']))
            })
            .collect();
        let mut base: String = format!("suggested-{}", values.join("-"))
            .to_ascii_lowercase()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        base.truncate(58);
        let base = base.trim_end_matches(['-', '.']).to_string();
        let mut name = base.clone();
        let mut n = 2;
        while !taken.insert(name.clone()) {
            name = format!("{base}-{n}");
            n += 1;
        }
        p.name = name;
    }
}

/// YAML string (JSON's double-quoted strings are YAML).
fn quoted(s: &str) -> String {
    serde_json::Value::String(s.into()).to_string()
}

impl Suggestion {
    /// The policies as YAML documents `agent check` and the datastore take,
    /// each rule after a comment naming its connections.
    pub fn to_yaml(&self) -> String {
        let mut o = String::new();
        let window = match (self.from_ns, self.to_ns) {
            (Some(a), Some(b)) => format!(", seen {} .. {}", rfc3339(a), rfc3339(b)),
            _ => String::new(),
        };
        let _ = writeln!(
            o,
            "# Suggested by `agent staged suggest --namespace {}` from {} allowed connection{}{window}.\n\
             # Staged: watch with `agent staged report`, promote with `agent promote` when clean.",
            self.namespace,
            self.connections,
            if self.connections == 1 { "" } else { "s" },
        );
        for note in &self.left_out {
            let _ = writeln!(o, "# left out: {note}");
        }
        if self.policies.is_empty() {
            let _ = writeln!(
                o,
                "# no allowed connection into namespace {} was recorded",
                self.namespace
            );
        }
        for p in &self.policies {
            p.write_yaml(&mut o);
        }
        o
    }
}

impl Suggested {
    fn write_yaml(&self, o: &mut String) {
        let _ = write!(
            o,
            "---\napiVersion: projectcalico.org/v3\nkind: StagedNetworkPolicy\nmetadata:\n  name: {}\n  namespace: {}\nspec:\n  selector: {}\n  types: [Ingress]\n  ingress:\n",
            self.name,
            self.namespace,
            quoted(&self.selector)
        );
        for ((source, traffic), rule) in &self.rules {
            let mut because: Vec<(&String, &(u64, u64))> = rule.because.iter().collect();
            because.sort_by_key(|(_, (_, last))| std::cmp::Reverse(*last));
            for (conn, (count, last)) in because.iter().take(NAMED) {
                let _ = writeln!(o, "    # {conn} (x{count}, last {})", rfc3339(*last));
            }
            if because.len() > NAMED {
                let _ = writeln!(o, "    # and {} more", because.len() - NAMED);
            }
            let _ = writeln!(o, "    - action: Allow");
            match traffic {
                Traffic::Ports(p) | Traffic::Protocol(p) => {
                    let _ = writeln!(o, "      protocol: {p}");
                }
                Traffic::Icmp(p, t, c) => {
                    let _ = writeln!(
                        o,
                        "      protocol: {p}\n      icmp: {{type: {t}, code: {c}}}"
                    );
                }
            }
            let _ = writeln!(o, "      source:");
            match source {
                Source::Selector {
                    selector,
                    namespace,
                } => {
                    let _ = writeln!(o, "        selector: {}", quoted(selector));
                    match namespace.as_deref() {
                        Some("") => {
                            let _ = writeln!(o, "        namespaceSelector: global()");
                        }
                        Some(ns) => {
                            let sel = format!("projectcalico.org/name == '{ns}'");
                            let _ = writeln!(o, "        namespaceSelector: {}", quoted(&sel));
                        }
                        None => {}
                    }
                }
                Source::Net(ip) => {
                    let len = if ip.is_ipv4() { 32 } else { 128 };
                    let _ = writeln!(o, "        nets: [{ip}/{len}]");
                }
            }
            if !rule.ports.is_empty() {
                let ports: Vec<String> = rule.ports.iter().map(u16::to_string).collect();
                let _ = writeln!(
                    o,
                    "      destination:\n        ports: [{}]",
                    ports.join(", ")
                );
            }
        }
    }
}

#[cfg(test)]
#[path = "suggest_tests.rs"]
mod tests;
