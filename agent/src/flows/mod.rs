//! Flow records: kernel events enriched with endpoint and policy names,
//! aggregated per flow (5-tuple + reporting endpoint and direction), kept in a
//! bounded history and broadcast to `agent flows` subscribers.
//!
//! The wire format (JSON) of a record is [`Flow`]; the query a client sends is
//! [`FlowQuery`] (see `crate::daemon` for the socket protocol).
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agent_common::{action, verdict_flags, Verdict};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::compile::Compiled;
use crate::model::ir::{Labels, Model, Protocol};
use crate::selector::Selector;

pub mod blame;
pub mod connection;
pub mod history;
pub mod promotion;
pub mod report;
pub mod suggest;
mod table;

pub use table::FlowTable;

/// Flows kept for `--last` / `--since` queries.
pub const HISTORY: usize = 10_000;

/// One side of a flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub ip: IpAddr,
    pub port: u16,
    /// Set when the address belongs to a known workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Endpoint (workload or host endpoint) or network set owning the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The owner's labels (what `agent staged suggest` builds selectors from).
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
}

/// A verdict as shown to users.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowVerdict {
    /// `allow` or `deny`.
    pub action: String,
    /// Calico trace-style text of the deciding tier/policy/rule.
    pub trace: String,
    /// The kernel found no table entry (fail-closed deny).
    #[serde(default)]
    pub no_entry: bool,
}

/// The endpoint whose interface reported the flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reporter {
    pub endpoint: String,
    pub interface: String,
    pub endpoint_id: u32,
}

/// One aggregated flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    /// RFC 3339 UTC time of the last report.
    pub time: String,
    pub first_seen: String,
    pub first_seen_ns: u64,
    /// Unix time (ns) of the last report.
    pub last_seen_ns: u64,
    /// Kernel reports merged into this record (one per new flow; denied
    /// retransmissions are reported again, rate limited).
    pub count: u64,
    pub src: Peer,
    pub dst: Peer,
    /// `TCP`, `UDP`, `ICMP`, ... or the number.
    pub protocol: String,
    pub protocol_number: u8,
    /// For ICMP: type and code (then `dst.port` is `type << 8 | code`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp: Option<(u8, u8)>,
    pub reporter: Reporter,
    /// `ingress` (into the reporter) or `egress` (out of it).
    pub direction: String,
    pub enforced: FlowVerdict,
    /// What would happen with every staged policy promoted; absent when the
    /// reporter has no staged policy (then it equals `enforced`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<FlowVerdict>,
    /// The connection's pending verdict differs from its enforced one, end to
    /// end (see [`connection`]): not this hook's alone.
    pub pending_differs: bool,
    /// The connection end to end: this hook and, when this agent saw it, the
    /// other end's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<connection::ConnectionVerdict>,
    /// The staged policies whose promotion alone changes the connection (by
    /// the evaluator; filled in for `--pending-diff` and `--staged` queries).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed_by: Vec<String>,
    #[serde(default)]
    pub fragment: bool,
    /// The Service frontend (ClusterIP or external IP, and port) the client
    /// addressed, when the flow was judged after the node's DNAT: `dst` is
    /// then the backend it chose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<Peer>,
    /// The node whose agent recorded it: set by the relay (`agent flows
    /// --relay`); absent in a node's own records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// What a client asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowQuery {
    /// Keep the stream open and send new records as they come.
    #[serde(default)]
    pub follow: bool,
    /// At most this many records from the history (the most recent ones).
    #[serde(default)]
    pub last: Option<usize>,
    /// Only records seen in the last this many milliseconds.
    #[serde(default)]
    pub since_ms: Option<u64>,
    #[serde(default)]
    pub filter: FlowFilter,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowFilter {
    /// `allow` or `deny` (the enforced verdict).
    #[serde(default)]
    pub verdict: Option<String>,
    /// Only flows whose pending verdict differs from the enforced one.
    #[serde(default)]
    pub pending_diff: bool,
    /// Pending = only these staged policies promoted (`KIND/NAME`), judged by
    /// the evaluator; empty: every staged policy (the kernel's verdict).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub staged: Vec<String>,
    /// Policy name (or any part of a trace, e.g. `gnp:/name`) in either trace.
    #[serde(default)]
    pub policy: Option<String>,
    /// `namespace/name`, an IP or CIDR, or a label selector.
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
    /// Destination port.
    #[serde(default)]
    pub port: Option<u16>,
    /// Protocol name (case-insensitive) or number.
    #[serde(default)]
    pub protocol: Option<String>,
}

/// A `--from`/`--to` value, parsed.
#[derive(Clone, Debug)]
pub enum PeerFilter {
    Net(IpNet),
    Endpoint { namespace: String, name: String },
    Selector(Selector),
}

impl PeerFilter {
    pub fn parse(s: &str) -> Result<PeerFilter, String> {
        let s = s.trim();
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(PeerFilter::Net(IpNet::from(ip)));
        }
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(PeerFilter::Net(net));
        }
        let is_name = |p: &str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
        };
        if let Some((ns, name)) = s.split_once('/') {
            if is_name(ns) && is_name(name) {
                return Ok(PeerFilter::Endpoint {
                    namespace: ns.into(),
                    name: name.into(),
                });
            }
        }
        crate::selector::parse(s)
            .map(PeerFilter::Selector)
            .map_err(|e| format!("{s:?} is not namespace/name, an IP or CIDR, or a selector: {e}"))
    }
}

/// A compiled [`FlowFilter`].
pub struct Matcher {
    filter: FlowFilter,
    from: Option<PeerFilter>,
    to: Option<PeerFilter>,
    protocol: Option<u8>,
}

pub fn protocol_name(p: u8) -> String {
    Protocol::from_number(p).to_string()
}

pub fn protocol_number(s: &str) -> Option<u8> {
    if let Ok(n) = s.parse::<u8>() {
        return Some(n);
    }
    Protocol::from_name_ignore_case(s).map(Protocol::number)
}

impl Matcher {
    pub fn new(filter: &FlowFilter) -> Result<Matcher, String> {
        let from = filter.from.as_deref().map(PeerFilter::parse).transpose()?;
        let to = filter.to.as_deref().map(PeerFilter::parse).transpose()?;
        let protocol = match &filter.protocol {
            Some(p) => Some(protocol_number(p).ok_or_else(|| format!("unknown protocol {p:?}"))?),
            None => None,
        };
        if let Some(v) = &filter.verdict {
            if v != "allow" && v != "deny" {
                return Err(format!("verdict must be allow or deny, not {v:?}"));
            }
        }
        Ok(Matcher {
            filter: filter.clone(),
            from,
            to,
            protocol,
        })
    }

    /// Checks `namespace/name` filters against the endpoints and network sets
    /// the agent knows, and names them as records do (`namespace/pod`, also
    /// when given the WorkloadEndpoint name): a name that matches nothing is an
    /// error, never an empty result.
    pub fn resolve(mut self, view: &View) -> Result<Matcher, String> {
        for filter in [&mut self.from, &mut self.to].into_iter().flatten() {
            if let PeerFilter::Endpoint { namespace, name } = filter {
                (*namespace, *name) = view.owner_named(namespace, name)?;
            }
        }
        Ok(self)
    }

    pub fn matches(&self, flow: &Flow, view: &View) -> bool {
        let f = &self.filter;
        if let Some(v) = &f.verdict {
            if &flow.enforced.action != v {
                return false;
            }
        }
        if f.pending_diff && !flow.pending_differs {
            return false;
        }
        if let Some(p) = &f.policy {
            let hit = |t: &FlowVerdict| t.trace.contains(p.as_str());
            if !hit(&flow.enforced) && !flow.pending.as_ref().is_some_and(hit) {
                return false;
            }
        }
        if let Some(port) = f.port {
            if flow.dst.port != port || flow.icmp.is_some() {
                return false;
            }
        }
        if let Some(p) = self.protocol {
            if flow.protocol_number != p {
                return false;
            }
        }
        let peer_ok = |pf: &Option<PeerFilter>, peer: &Peer| match pf {
            None => true,
            Some(PeerFilter::Net(net)) => net.contains(&peer.ip),
            Some(PeerFilter::Endpoint { namespace, name }) => {
                peer.namespace.as_deref() == Some(namespace.as_str())
                    && peer.name.as_deref() == Some(name.as_str())
            }
            Some(PeerFilter::Selector(sel)) => view
                .labels_of(peer.ip)
                .is_some_and(|labels| sel.evaluate(labels)),
        };
        // `--to` a Service address (or its net) also finds the flows DNATed
        // away from it (`dst` is then the backend).
        let to_service = matches!(&self.to, Some(PeerFilter::Net(_)))
            && flow.service.as_ref().is_some_and(|s| peer_ok(&self.to, s));
        peer_ok(&self.from, &flow.src) && (peer_ok(&self.to, &flow.dst) || to_service)
    }
}

/// What enrichment needs from the active configuration.
#[derive(Default)]
pub struct View {
    /// None before the first successful compile.
    pub compiled: Option<Compiled>,
    /// Address -> (namespace, name, labels) of the endpoint or network set owning it.
    by_ip: HashMap<IpAddr, usize>,
    owners: Vec<(Option<String>, String, Labels)>,
    /// Endpoint id -> (endpoint key, interface).
    by_id: HashMap<u32, (String, String)>,
    /// `namespace/name` filters accept -> the owner's `namespace/name` shown
    /// in records: endpoints by pod and by WorkloadEndpoint name, network sets.
    names: HashMap<String, (String, String)>,
}

impl View {
    /// Keeps only what enrichment needs (not the model: at 100k pods that is
    /// ~120 MB the daemon already holds as its last good state).
    pub fn new(model: &Model, compiled: Compiled) -> View {
        let by_id = compiled
            .endpoints
            .iter()
            .map(|c| {
                let key = model
                    .endpoints
                    .get(c.endpoint_index)
                    .map(|e| e.key())
                    .unwrap_or_default();
                (c.id, (key, c.interface.clone()))
            })
            .collect();
        View {
            compiled: Some(compiled),
            by_id,
            ..View::for_model(model)
        }
    }

    /// Names and labels only, without a compile (the relay's view of the
    /// cluster, for filters).
    pub fn for_model(model: &Model) -> View {
        let mut owners = Vec::new();
        let mut by_ip = HashMap::new();
        let mut names = HashMap::new();
        for e in &model.endpoints {
            // Shown as the pod (`namespace/pod`), as everywhere else.
            let shown = e.pod.clone().unwrap_or_else(|| e.name.clone());
            if let Some(ns) = &e.namespace {
                for alias in [e.key(), e.resource_key()] {
                    names
                        .entry(alias)
                        .or_insert_with(|| (ns.clone(), shown.clone()));
                }
            }
            owners.push((e.namespace.clone(), shown, e.labels.clone()));
            for ip in &e.ips {
                by_ip.entry(*ip).or_insert(owners.len() - 1);
            }
        }
        for s in &model.network_sets {
            if let Some(ns) = &s.namespace {
                names
                    .entry(format!("{ns}/{}", s.name))
                    .or_insert_with(|| (ns.clone(), s.name.clone()));
            }
            owners.push((s.namespace.clone(), s.name.clone(), s.labels.clone()));
            for net in &s.nets {
                if net.prefix_len() == net.max_prefix_len() {
                    by_ip.entry(net.addr()).or_insert(owners.len() - 1);
                }
            }
        }
        View {
            compiled: None,
            by_ip,
            owners,
            by_id: HashMap::new(),
            names,
        }
    }

    /// The owner (`namespace`, shown name) a `namespace/name` filter means, or
    /// an error naming the closest known names.
    fn owner_named(&self, namespace: &str, name: &str) -> Result<(String, String), String> {
        let text = format!("{namespace}/{name}");
        self.names.get(&text).cloned().ok_or_else(|| {
            let near = crate::model::names::UnknownName {
                suggestions: crate::model::names::closest(&text, self.names.keys().cloned()),
                name: text.clone(),
            };
            format!("no endpoint or network set {text:?} is known to the agent{near}")
        })
    }

    pub fn labels_of(&self, ip: IpAddr) -> Option<&Labels> {
        self.by_ip.get(&ip).map(|&i| &self.owners[i].2)
    }

    fn peer(&self, ip: IpAddr, port: u16) -> Peer {
        let owner = self.by_ip.get(&ip).map(|&i| &self.owners[i]);
        Peer {
            ip,
            port,
            namespace: owner.and_then(|o| o.0.clone()),
            name: owner.map(|o| o.1.clone()),
            labels: owner.map(|o| o.2.clone()).unwrap_or_default(),
        }
    }

    fn verdict(&self, v: &Verdict) -> FlowVerdict {
        FlowVerdict {
            action: if v.action == action::ALLOW {
                "allow".into()
            } else {
                "deny".into()
            },
            trace: match &self.compiled {
                Some(c) => c.describe(v),
                None => String::new(),
            },
            no_entry: v.flags & verdict_flags::NO_ENTRY != 0,
        }
    }
}

/// Converts a `CLOCK_MONOTONIC` timestamp (what `bpf_ktime_get_ns` returns) to Unix ns.
pub fn monotonic_to_unix_ns(mono_ns: u64) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let now_mono = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    let now_unix = unix_now_ns();
    now_unix.saturating_sub(now_mono.saturating_sub(mono_ns))
}

pub fn unix_now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos() as u64
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-23T22:42:22.123Z` (any
/// `u64` of nanoseconds is before the year 2555, well inside what humantime
/// formats).
pub fn rfc3339(unix_ns: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_nanos(unix_ns)).to_string()
}

#[cfg(test)]
pub(crate) mod test_flows;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::FlowRecord;
    use crate::model::ir::Direction;

    fn verdict(a: u8) -> Verdict {
        Verdict {
            action: a,
            flags: 0,
            tier: 0,
            policy: 0,
            rule: 0,
        }
    }

    /// One hook's record of 10.0.0.1:40000 -> 10.0.0.2:80 TCP.
    fn hook(direction: Direction, enforced: u8, pending: Option<u8>) -> FlowRecord {
        FlowRecord {
            src: "10.0.0.1".parse().unwrap(),
            dst: "10.0.0.2".parse().unwrap(),
            src_port: 40000,
            dst_port: 80,
            protocol: 6,
            ifindex: if direction == Direction::Egress { 1 } else { 2 },
            endpoint_id: if direction == Direction::Egress { 1 } else { 2 },
            direction,
            enforced: verdict(enforced),
            pending: pending.map(verdict),
            fragment: false,
            timestamp_ns: 0,
            service: None,
        }
    }

    #[test]
    fn a_connection_denied_at_one_end_does_not_differ_because_of_the_other() {
        use agent_common::action::{ALLOW, DENY};
        let view = View::default();
        let mut table = FlowTable::default();
        // The source's staged policy would deny it: alone, that differs.
        let egress = table.add(&hook(Direction::Egress, ALLOW, Some(DENY)), &view);
        assert!(egress.pending_differs);
        // The destination denies it today: end to end it is denied either way.
        let ingress = table.add(&hook(Direction::Ingress, DENY, None), &view);
        assert!(!ingress.pending_differs);
        let c = ingress.connection.as_ref().unwrap();
        assert_eq!(
            (c.enforced.as_str(), c.pending.as_str(), c.hooks),
            ("deny", "deny", 2)
        );
        // The source's kept record is judged again, with both hooks.
        let history = table.history();
        assert_eq!(history.len(), 2);
        assert!(history.iter().all(|f| !f.pending_differs), "{history:#?}");

        // Allowed today at both ends, denied by the source's staged policy: differs.
        let mut table = FlowTable::default();
        table.add(&hook(Direction::Egress, ALLOW, Some(DENY)), &view);
        let ingress = table.add(&hook(Direction::Ingress, ALLOW, None), &view);
        assert!(ingress.pending_differs);
        assert!(table.history().iter().all(|f| f.pending_differs));
    }

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(1_709_251_199_123_000_000),
            "2024-02-29T23:59:59.123Z"
        );
        assert_eq!(rfc3339(u64::MAX), "2554-07-21T23:34:33.709Z");
    }

    #[test]
    fn peer_filters_parse() {
        assert!(matches!(
            PeerFilter::parse("10.0.0.1"),
            Ok(PeerFilter::Net(_))
        ));
        assert!(matches!(
            PeerFilter::parse("10.0.0.0/8"),
            Ok(PeerFilter::Net(_))
        ));
        assert!(matches!(
            PeerFilter::parse("prod/frontend"),
            Ok(PeerFilter::Endpoint { .. })
        ));
        assert!(matches!(
            PeerFilter::parse("app == 'x'"),
            Ok(PeerFilter::Selector(_))
        ));
        assert!(PeerFilter::parse("app == ").is_err());
        assert_eq!(protocol_number("tcp"), Some(6));
        assert_eq!(protocol_number("17"), Some(17));
    }
}
