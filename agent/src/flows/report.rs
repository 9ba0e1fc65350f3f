//! `agent staged report`: per staged policy, the connections its promotion
//! alone would newly deny or newly allow, among the connections given: the
//! daemon's flow records (live) or every pair of the connectivity matrix
//! (offline).
//!
//! Computed in userspace with the evaluator, as `changed_by` is: the model
//! with only that staged policy kept is evaluated per connection, end to end
//! (source egress and destination ingress together). The kernel records one
//! verdict pair per flow and needs no per-policy state.
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::eval::{Evaluator, Flow, Packet, PolicySet, Verdict};
use crate::model::ir::{Direction, Model, PolicyId, Protocol};

/// One connection to judge, with what was observed of it (live only).
#[derive(Clone, Debug)]
pub struct Observed {
    pub flow: Flow,
    pub seen: Option<Seen>,
}

/// Traffic observed on a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub count: u64,
    pub first_ns: u64,
    pub last_ns: u64,
}

/// The period the connections were taken from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// `flows` (the daemon's records) or `matrix` (every endpoint pair, offline).
    pub source: String,
    /// RFC 3339: the start of the records the report covers (live).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// The period asked for (`--since`), in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_ms: Option<u64>,
    /// The period the records cover, in ms: shorter than asked when the agent
    /// started later or older records were dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub covered_ms: Option<u64>,
    /// Why the covered period is shorter than asked, or what was judged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// A connection a policy changes, aggregated over source ports (and, live,
/// over the hooks that reported it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// `namespace/pod`, a host endpoint's name, or the address.
    pub from: String,
    pub to: String,
    pub protocol: String,
    /// Destination port (ports protocols), or ICMP `type/code`.
    pub port: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_seen: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
    /// The nodes the two ends run on, where the datastore says.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
}

impl std::fmt::Display for Change {
    /// `shop/db -> shop/api TCP/8080 (x3, 10:00:01.000-10:02:00.000, node-a)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} -> {} {}/{}",
            self.from, self.to, self.protocol, self.port
        )?;
        let mut extra = Vec::new();
        if let Some(n) = self.count {
            extra.push(format!("x{n}"));
        }
        if let (Some(a), Some(b)) = (&self.first_seen, &self.last_seen) {
            extra.push(format!("seen {a} .. {b}"));
        }
        if !self.nodes.is_empty() {
            extra.push(format!("nodes {}", self.nodes.join(",")));
        }
        if !extra.is_empty() {
            write!(f, " ({})", extra.join(", "))?;
        }
        Ok(())
    }
}

/// What promoting one staged policy (alone) would change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyReport {
    /// `sgnp/name` or `snp/namespace/name`, as `--staged` takes it.
    pub policy: String,
    /// Endpoints the policy applies to (ingress or egress).
    pub selects: Vec<String>,
    /// How many of them sent or received traffic in the window (live only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected_with_traffic: Option<usize>,
    pub newly_denied: Vec<Change>,
    pub newly_allowed: Vec<Change>,
}

impl PolicyReport {
    pub fn is_clean(&self) -> bool {
        self.newly_denied.is_empty() && self.newly_allowed.is_empty()
    }
}

/// The whole report (`-o json`, and the daemon's reply).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedReport {
    pub window: Window,
    pub policies: Vec<PolicyReport>,
}

impl StagedReport {
    /// Something would change in the window (exit code 3).
    pub fn changes(&self) -> bool {
        self.policies.iter().any(|p| !p.is_clean())
    }
}

/// `sgnp/name` or `snp/namespace/name`.
pub fn policy_name(id: &PolicyId) -> String {
    match &id.namespace {
        Some(ns) => format!("{}/{ns}/{}", id.kind.code(), id.name),
        None => format!("{}/{}", id.kind.code(), id.name),
    }
}

/// One report per staged policy in `targets` (every staged policy when empty),
/// in the model's order. Unknown targets are the caller's to refuse. `live`:
/// `observed` is traffic (then selected endpoints with traffic are counted).
pub fn per_policy(
    model: &Model,
    targets: &[PolicyId],
    observed: &[Observed],
    live: bool,
) -> Vec<PolicyReport> {
    model
        .policies
        .iter()
        .filter(|p| p.id.kind.is_staged())
        .filter(|p| targets.is_empty() || targets.contains(&p.id))
        .map(|candidate| {
            let mut alone = model.clone();
            alone
                .policies
                .retain(|p| !p.id.kind.is_staged() || p.id == candidate.id);
            let evaluator = Evaluator::new(&alone);
            let selects = selected(&evaluator, &candidate.id);
            let selected_with_traffic = live.then(|| with_traffic(model, &selects, observed));
            let (newly_denied, newly_allowed) = changes(&evaluator, observed);
            PolicyReport {
                policy: policy_name(&candidate.id),
                selects: selects.iter().map(|&i| model.endpoints[i].key()).collect(),
                selected_with_traffic,
                newly_denied,
                newly_allowed,
            }
        })
        .collect()
}

/// Indexes of the endpoints the policy applies to in the pending set.
fn selected(evaluator: &Evaluator, id: &PolicyId) -> Vec<usize> {
    (0..evaluator.model().endpoints.len())
        .filter(|&i| {
            [Direction::Ingress, Direction::Egress].iter().any(|&d| {
                evaluator
                    .applicable_policies(PolicySet::Pending, i, d)
                    .iter()
                    .any(|t| t.policies.iter().any(|p| &p.id == id))
            })
        })
        .collect()
}

fn with_traffic(model: &Model, selects: &[usize], observed: &[Observed]) -> usize {
    let busy: BTreeSet<IpAddr> = observed
        .iter()
        .flat_map(|o| [o.flow.src, o.flow.dst])
        .collect();
    selects
        .iter()
        .filter(|&&i| model.endpoints[i].ips.iter().any(|ip| busy.contains(ip)))
        .count()
}

/// The connections whose end-to-end verdict the pending set changes:
/// (newly denied, newly allowed), aggregated over source ports.
fn changes(evaluator: &Evaluator, observed: &[Observed]) -> (Vec<Change>, Vec<Change>) {
    let model = evaluator.model();
    let mut denied: BTreeMap<(String, String, String, String), Change> = BTreeMap::new();
    let mut allowed = denied.clone();
    for o in observed {
        let v = evaluator.evaluate_flow(&o.flow);
        let into = match (v.enforced.action, v.pending.action) {
            (Verdict::Allow, Verdict::Deny) => &mut denied,
            (Verdict::Deny, Verdict::Allow) => &mut allowed,
            _ => continue,
        };
        let name = |end: Option<String>, ip: IpAddr| end.unwrap_or_else(|| ip.to_string());
        let from = name(v.source_endpoint, o.flow.src);
        let to = name(v.destination_endpoint, o.flow.dst);
        let protocol = o.flow.packet.protocol.to_string();
        let port = port_text(&o.flow.packet);
        let nodes: BTreeSet<String> = [o.flow.src, o.flow.dst]
            .iter()
            .filter_map(|&ip| evaluator.endpoint_for_ip(ip))
            .filter_map(|i| model.endpoints[i].node.clone())
            .collect();
        let change = into
            .entry((from.clone(), to.clone(), protocol.clone(), port.clone()))
            .or_insert_with(|| Change {
                from,
                to,
                protocol,
                port,
                count: None,
                first_seen: None,
                last_seen: None,
                nodes: Vec::new(),
            });
        merge(change, o.seen.as_ref(), nodes);
    }
    (
        denied.into_values().collect(),
        allowed.into_values().collect(),
    )
}

/// Adds one connection's traffic and nodes to an aggregated change.
fn merge(change: &mut Change, seen: Option<&Seen>, nodes: BTreeSet<String>) {
    let mut all: BTreeSet<String> = change.nodes.drain(..).collect();
    all.extend(nodes);
    change.nodes = all.into_iter().collect();
    let Some(seen) = seen else { return };
    change.count = Some(change.count.unwrap_or(0) + seen.count);
    // RFC 3339 UTC with fixed width sorts as time does.
    let first = super::rfc3339(seen.first_ns);
    let last = super::rfc3339(seen.last_ns);
    if change.first_seen.as_ref().is_none_or(|f| &first < f) {
        change.first_seen = Some(first);
    }
    if change.last_seen.as_ref().is_none_or(|l| &last > l) {
        change.last_seen = Some(last);
    }
}

fn port_text(p: &Packet) -> String {
    match (p.dst_port, p.icmp_type, p.icmp_code) {
        (Some(port), _, _) => port.to_string(),
        (None, Some(t), c) => format!("type {t} code {}", c.unwrap_or(0)),
        _ => "-".into(),
    }
}

/// The connection a flow record is of, as the evaluator takes it.
pub fn connection_of(r: &super::Flow) -> Flow {
    let protocol = Protocol::from_number(r.protocol_number);
    let packet = match r.icmp {
        Some((t, c)) => Packet::icmp(protocol, t, c),
        None if protocol.carries_ports() => Packet::with_ports(protocol, r.src.port, r.dst.port),
        None => Packet::without_ports(protocol),
    };
    Flow {
        src: r.src.ip,
        dst: r.dst.ip,
        packet,
    }
}

/// The daemon's flow records as connections: records of one 5-tuple (its
/// source egress and destination ingress hooks, both on this node) are one
/// connection, counted once (the larger count of its hooks).
pub fn connections(records: &[std::sync::Arc<super::Flow>], since_ns: u64) -> Vec<Observed> {
    let mut by_tuple: BTreeMap<(IpAddr, u16, IpAddr, u16, u8), Observed> = BTreeMap::new();
    for r in records.iter().filter(|r| r.last_seen_ns >= since_ns) {
        let seen = Seen {
            count: r.count,
            first_ns: r.first_seen_ns,
            last_ns: r.last_seen_ns,
        };
        let key = (
            r.src.ip,
            r.src.port,
            r.dst.ip,
            r.dst.port,
            r.protocol_number,
        );
        let o = by_tuple.entry(key).or_insert_with(|| Observed {
            flow: connection_of(r),
            seen: Some(seen.clone()),
        });
        if let Some(s) = &mut o.seen {
            s.count = s.count.max(seen.count);
            s.first_ns = s.first_ns.min(seen.first_ns);
            s.last_ns = s.last_ns.max(seen.last_ns);
        }
    }
    by_tuple.into_values().collect()
}

/// What a client asks the daemon for (`agent staged report` live,
/// `agent promote --require-clean`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportQuery {
    /// `KIND/NAME` as `--staged` takes them; empty: every staged policy.
    #[serde(default)]
    pub staged: Vec<String>,
    /// Only records seen in the last this many ms (default: all kept).
    #[serde(default)]
    pub since_ms: Option<u64>,
}

/// The daemon's flow records and how far back they are complete.
pub struct History<'a> {
    /// Oldest first.
    pub records: &'a [std::sync::Arc<super::Flow>],
    /// Records are complete from here on (unix ns): the agent's start, or the
    /// newest record dropped to keep the history bounded, whichever is later.
    pub complete_from_ns: u64,
    pub now_ns: u64,
    /// What the agent records (`--flows`), restarts and gaps, for the window.
    pub notes: Vec<String>,
}

/// The live report: the records of the window, judged per staged policy.
pub fn live(model: &Model, query: &ReportQuery, history: &History) -> Result<StagedReport, String> {
    let targets = crate::cli::staged::resolve(model, &query.staged)?;
    let now = history.now_ns;
    let asked_from = query
        .since_ms
        .map(|ms| now.saturating_sub(ms.saturating_mul(1_000_000)));
    let from = asked_from.unwrap_or(0).max(history.complete_from_ns);
    let mut notes = history.notes.clone();
    if asked_from.is_some_and(|a| a < from) {
        notes.push(format!(
            "records before {} are not kept (the agent started then, or older records \
             were dropped to bound the history)",
            super::rfc3339(from)
        ));
    }
    let window = Window {
        source: "flows".into(),
        from: Some(super::rfc3339(from)),
        to: Some(super::rfc3339(now)),
        requested_ms: query.since_ms,
        covered_ms: Some(now.saturating_sub(from) / 1_000_000),
        notes,
    };
    let observed = connections(history.records, from);
    Ok(StagedReport {
        window,
        policies: per_policy(model, &targets, &observed, true),
    })
}
