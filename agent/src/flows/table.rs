//! The daemon's flow table: kernel events aggregated per hook record, joined
//! per connection, in a bounded history.
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;

use super::{
    connection, monotonic_to_unix_ns, protocol_name, rfc3339, Flow, Reporter, View, HISTORY,
};
use crate::dataplane::FlowRecord;
use crate::model::ir::{Direction, Protocol};

#[derive(Clone, PartialEq, Eq, Hash)]
struct FlowKey {
    src: IpAddr,
    dst: IpAddr,
    src_port: u16,
    dst_port: u16,
    protocol: u8,
    endpoint_id: u32,
    ifindex: u32,
    direction: Direction,
}

impl FlowKey {
    fn of(r: &FlowRecord) -> FlowKey {
        FlowKey {
            src: r.src,
            dst: r.dst,
            src_port: r.src_port,
            dst_port: r.dst_port,
            protocol: r.protocol,
            endpoint_id: r.endpoint_id,
            ifindex: r.ifindex,
            direction: r.direction,
        }
    }

    fn conn(&self) -> connection::ConnKey {
        connection::ConnKey {
            src: self.src,
            dst: self.dst,
            src_port: self.src_port,
            dst_port: self.dst_port,
            protocol: self.protocol,
        }
    }
}

/// The aggregated flows and their bounded history.
#[derive(Default)]
pub struct FlowTable {
    flows: HashMap<FlowKey, (u64, Arc<Flow>)>,
    /// The hook records of each connection (see [`connection`]).
    conns: HashMap<connection::ConnKey, Vec<FlowKey>>,
    /// (sequence, key) in update order; entries whose sequence is stale are skipped.
    order: VecDeque<(u64, FlowKey)>,
    seq: u64,
    /// Kernel events received in all.
    pub events: u64,
    /// New flows by (set, action, deciding rule), for metrics: `set` is
    /// `enforced` or `pending`. The kernel reports denied flows, and every flow
    /// of an endpoint with staged policy.
    pub verdicts: BTreeMap<(&'static str, String, String), u64>,
    /// The last report (unix ns) of the newest record dropped to keep the
    /// history bounded: from then on the history is complete.
    pub dropped_until_ns: u64,
}

impl FlowTable {
    /// Merges one kernel event; returns the updated record.
    pub fn add(&mut self, r: &FlowRecord, view: &View) -> Arc<Flow> {
        self.events += 1;
        let key = FlowKey::of(r);
        let (first_seen_ns, count) = match self.flows.get(&key) {
            Some((_, f)) => (f.first_seen_ns, f.count + 1),
            None => (monotonic_to_unix_ns(r.timestamp_ns), 1),
        };
        let flow = record(r, view, first_seen_ns, count);
        if count == 1 {
            self.count_verdicts(&flow);
        }
        let flow = self.join(&key, flow);
        self.seq += 1;
        self.flows.insert(key.clone(), (self.seq, flow.clone()));
        self.order.push_back((self.seq, key));
        self.evict();
        flow
    }

    /// A new flow's verdicts, for metrics.
    fn count_verdicts(&mut self, flow: &Flow) {
        let sets = std::iter::once(("enforced", &flow.enforced))
            .chain(flow.pending.iter().map(|p| ("pending", p)));
        for (set, v) in sets {
            *self
                .verdicts
                .entry((set, v.action.clone(), v.trace.clone()))
                .or_default() += 1;
        }
    }

    /// Drops the oldest records beyond the history's bound.
    fn evict(&mut self) {
        while self.flows.len() > HISTORY || self.order.len() > 4 * HISTORY {
            let Some((seq, key)) = self.order.pop_front() else {
                break;
            };
            if self.flows.get(&key).is_some_and(|(s, _)| *s == seq) {
                if let Some((_, gone)) = self.flows.remove(&key) {
                    self.dropped_until_ns = self.dropped_until_ns.max(gone.last_seen_ns);
                    self.forget_hook(&key);
                }
            }
        }
    }

    /// Judges `flow` with the other hook records of its connection; those
    /// kept are updated in place (not sent to followers again).
    fn join(&mut self, key: &FlowKey, flow: Flow) -> Arc<Flow> {
        let hooks = self.conns.entry(key.conn()).or_default();
        if !hooks.contains(key) {
            hooks.push(key.clone());
        }
        let others: Vec<FlowKey> = hooks
            .iter()
            .filter(|k| *k != key && self.flows.contains_key(*k))
            .cloned()
            .collect();
        let mut all: Vec<Flow> = others
            .iter()
            .map(|k| Flow::clone(&self.flows[k].1))
            .collect();
        all.push(flow);
        connection::join(&mut all);
        let flow = Arc::new(all.pop().expect("the new record"));
        for (k, updated) in others.iter().zip(all) {
            if let Some((_, f)) = self.flows.get_mut(k) {
                *f = Arc::new(updated);
            }
        }
        flow
    }

    fn forget_hook(&mut self, key: &FlowKey) {
        let conn = key.conn();
        if let Some(hooks) = self.conns.get_mut(&conn) {
            hooks.retain(|k| k != key);
            if hooks.is_empty() {
                self.conns.remove(&conn);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Takes records back from the history on disk (interface index, record;
    /// oldest first): the newest [`HISTORY`] of them, as they were (not counted
    /// as events again). Records whose direction is unknown are skipped.
    pub fn restore(&mut self, records: Vec<(u32, Flow)>) {
        let skip = records.len().saturating_sub(HISTORY);
        for (ifindex, flow) in records.into_iter().skip(skip) {
            let direction = match flow.direction.as_str() {
                "ingress" => Direction::Ingress,
                "egress" => Direction::Egress,
                _ => continue,
            };
            let key = FlowKey {
                src: flow.src.ip,
                dst: flow.dst.ip,
                src_port: flow.src.port,
                dst_port: flow.dst.port,
                protocol: flow.protocol_number,
                endpoint_id: flow.reporter.endpoint_id,
                ifindex,
                direction,
            };
            let hooks = self.conns.entry(key.conn()).or_default();
            if !hooks.contains(&key) {
                hooks.push(key.clone());
            }
            self.seq += 1;
            self.flows.insert(key.clone(), (self.seq, Arc::new(flow)));
            self.order.push_back((self.seq, key));
        }
        self.evict();
    }

    /// Records in update order (oldest first).
    pub fn history(&self) -> Vec<Arc<Flow>> {
        let mut v: Vec<_> = self.flows.values().cloned().collect();
        v.sort_by_key(|(seq, _)| *seq);
        v.into_iter().map(|(_, f)| f).collect()
    }
}

/// One kernel event as a flow record (not yet joined with its connection).
fn record(r: &FlowRecord, view: &View, first_seen_ns: u64, count: u64) -> Flow {
    let now = monotonic_to_unix_ns(r.timestamp_ns);
    let icmp = Protocol::from_number(r.protocol)
        .is_icmp()
        .then_some(((r.dst_port >> 8) as u8, r.dst_port as u8));
    let (endpoint, interface) = view.by_id.get(&r.endpoint_id).cloned().unwrap_or_else(|| {
        (
            format!("endpoint#{}", r.endpoint_id),
            format!("if#{}", r.ifindex),
        )
    });
    Flow {
        time: rfc3339(now),
        first_seen: rfc3339(first_seen_ns),
        first_seen_ns,
        last_seen_ns: now,
        count,
        src: view.peer(r.src, r.src_port),
        dst: view.peer(r.dst, r.dst_port),
        protocol: protocol_name(r.protocol),
        protocol_number: r.protocol,
        icmp,
        reporter: Reporter {
            endpoint,
            interface,
            endpoint_id: r.endpoint_id,
        },
        direction: match r.direction {
            Direction::Ingress => "ingress".into(),
            Direction::Egress => "egress".into(),
        },
        enforced: view.verdict(&r.enforced),
        pending: r.pending.as_ref().map(|v| view.verdict(v)),
        pending_differs: false,
        connection: None,
        changed_by: Vec::new(),
        fragment: r.fragment,
        service: r.service.map(|(ip, port)| view.peer(ip, port)),
        node: None,
    }
}
