//! [`RelayStore`]: every node's flow records, a bounded history per node, and
//! how far each agent's records are stored (the acks that make pushes
//! idempotent and let an agent re-send after a relay restart).
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::flows::{Flow, HISTORY};

/// A record's identity within its node: the agent's flow table key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct RecordKey {
    src: (IpAddr, u16),
    dst: (IpAddr, u16),
    protocol: u8,
    endpoint_id: u32,
    interface: String,
    direction: String,
}

impl RecordKey {
    pub(super) fn of(f: &Flow) -> RecordKey {
        RecordKey {
            src: (f.src.ip, f.src.port),
            dst: (f.dst.ip, f.dst.port),
            protocol: f.protocol_number,
            endpoint_id: f.reporter.endpoint_id,
            interface: f.reporter.interface.clone(),
            direction: f.direction.clone(),
        }
    }
}

/// One node's records, in update order, and its agent's push position.
#[derive(Default)]
struct NodeHistory {
    /// The agent run whose sequence numbers `last_seq` counts.
    boot_id: String,
    last_seq: u64,
    flows: HashMap<RecordKey, (u64, Arc<Flow>)>,
    /// (update, key) oldest first; entries whose update is stale are skipped.
    order: VecDeque<(u64, RecordKey)>,
    updates: u64,
    /// Last report (unix ns) of the newest record dropped to bound the history.
    dropped_until_ns: u64,
}

impl NodeHistory {
    fn insert(&mut self, flow: Arc<Flow>, bound: usize) {
        let key = RecordKey::of(&flow);
        self.updates += 1;
        self.flows.insert(key.clone(), (self.updates, flow));
        self.order.push_back((self.updates, key));
        while self.flows.len() > bound || self.order.len() > 4 * bound.max(1) {
            let Some((update, key)) = self.order.pop_front() else {
                break;
            };
            if self.flows.get(&key).is_some_and(|(u, _)| *u == update) {
                if let Some((_, gone)) = self.flows.remove(&key) {
                    self.dropped_until_ns = self.dropped_until_ns.max(gone.last_seen_ns);
                }
            }
        }
    }
}

/// Every node's records (see the module doc). Cheap to share: `Arc` it.
pub struct RelayStore {
    nodes: Mutex<BTreeMap<String, NodeHistory>>,
    /// Records per node kept at most.
    per_node: usize,
    tx: broadcast::Sender<Arc<Flow>>,
}

impl Default for RelayStore {
    fn default() -> Self {
        RelayStore::new(HISTORY)
    }
}

impl RelayStore {
    /// A store keeping at most `per_node` records of each node.
    pub fn new(per_node: usize) -> RelayStore {
        RelayStore {
            nodes: Mutex::new(BTreeMap::new()),
            per_node,
            tx: broadcast::channel(4096).0,
        }
    }

    /// Stores a batch of `node`'s agent (run `boot_id`) and returns the last
    /// sequence stored for that run. Idempotent: records at or below what is
    /// stored are skipped. When the agent believes more is stored than is
    /// (`after_seq` above it: the relay restarted, or the agent did), nothing
    /// is stored and the answer tells the agent where to re-send from.
    pub fn push(
        &self,
        node: &str,
        boot_id: &str,
        after_seq: u64,
        records: Vec<(u64, Flow)>,
    ) -> u64 {
        let mut nodes = self.lock();
        let history = nodes.entry(node.to_string()).or_default();
        if history.boot_id != boot_id {
            // A new run of the node's agent: its records so far stay.
            history.boot_id = boot_id.to_string();
            history.last_seq = 0;
        }
        if after_seq > history.last_seq {
            return history.last_seq;
        }
        for (seq, mut flow) in records {
            if seq <= history.last_seq {
                continue;
            }
            history.last_seq = seq;
            flow.node = Some(node.to_string());
            let flow = Arc::new(flow);
            history.insert(flow.clone(), self.per_node);
            // No follower listening is fine.
            let _ = self.tx.send(flow);
        }
        history.last_seq
    }

    /// New records as they are stored (subscribe before reading the history).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Flow>> {
        self.tx.subscribe()
    }

    /// The records of `node` (every node when `None`), oldest report first.
    pub fn records(&self, node: Option<&str>) -> Vec<Arc<Flow>> {
        let nodes = self.lock();
        let mut all: Vec<Arc<Flow>> = nodes
            .iter()
            .filter(|(name, _)| node.is_none_or(|n| n == name.as_str()))
            .flat_map(|(_, h)| h.flows.values().map(|(_, f)| f.clone()))
            .collect();
        all.sort_by(|a, b| {
            (a.last_seen_ns, &a.node, a.first_seen_ns).cmp(&(
                b.last_seen_ns,
                &b.node,
                b.first_seen_ns,
            ))
        });
        all
    }

    /// The nodes that have pushed records, with how many each has kept.
    pub fn nodes(&self) -> Vec<(String, usize)> {
        self.lock()
            .iter()
            .map(|(n, h)| (n.clone(), h.flows.len()))
            .collect()
    }

    /// From when (unix ns) the kept records of `node` (all when `None`) are
    /// complete: after the newest record dropped to bound a history.
    pub fn complete_from_ns(&self, node: Option<&str>) -> u64 {
        self.lock()
            .iter()
            .filter(|(name, _)| node.is_none_or(|n| n == name.as_str()))
            .map(|(_, h)| h.dropped_until_ns)
            .max()
            .unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, NodeHistory>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::flows::test_flows::tcp_flow;
    use crate::flows::{Peer, Reporter};

    /// A record of `src` -> 10.0.0.9:80 reported at `t` ns.
    pub(crate) fn flow(src: &str, src_port: u16, t: u64) -> Flow {
        let peer = |ip: &str, port| Peer {
            ip: ip.parse().unwrap(),
            port,
            namespace: Some("shop".into()),
            name: Some(format!("pod-{ip}")),
            labels: Default::default(),
        };
        let mut flow = tcp_flow(peer(src, src_port), peer("10.0.0.9", 80), "allow", t, t);
        flow.enforced.trace = "default|gnp:/allow|allow|0".into();
        flow.reporter = Reporter {
            endpoint: "shop/api".into(),
            interface: "veth1".into(),
            endpoint_id: 1,
        };
        flow
    }

    #[test]
    fn a_repeated_batch_is_stored_once_and_acked_the_same() {
        let store = RelayStore::default();
        let batch = vec![
            (1, flow("10.0.0.1", 1000, 10)),
            (2, flow("10.0.0.1", 1001, 20)),
        ];
        assert_eq!(store.push("n1", "boot-a", 0, batch.clone()), 2);
        assert_eq!(store.push("n1", "boot-a", 0, batch), 2);
        let records = store.records(None);
        assert_eq!(records.len(), 2);
        assert!(records.iter().all(|f| f.node.as_deref() == Some("n1")));
        // Part old, part new: only the new part is stored.
        let more = vec![
            (2, flow("10.0.0.1", 1001, 20)),
            (3, flow("10.0.0.1", 1002, 30)),
        ];
        assert_eq!(store.push("n1", "boot-a", 2, more), 3);
        assert_eq!(store.records(Some("n1")).len(), 3);
    }

    #[test]
    fn an_agent_ahead_of_the_relay_is_told_where_to_resend_from() {
        // A restarted relay has nothing: the agent's batch after seq 7 is refused with 0.
        let store = RelayStore::default();
        assert_eq!(
            store.push("n1", "boot-a", 7, vec![(8, flow("10.0.0.1", 1, 80))]),
            0
        );
        assert!(store.records(None).is_empty());
        // The agent re-sends everything it holds from there.
        let all = (1..=8)
            .map(|s| (s, flow("10.0.0.1", s as u16, s * 10)))
            .collect();
        assert_eq!(store.push("n1", "boot-a", 0, all), 8);
        assert_eq!(store.records(None).len(), 8);
    }

    #[test]
    fn an_updated_record_replaces_the_old_one_and_a_new_boot_restarts_sequences() {
        let store = RelayStore::default();
        store.push("n1", "boot-a", 0, vec![(5, flow("10.0.0.1", 1, 10))]);
        let mut again = flow("10.0.0.1", 1, 50);
        again.count = 2;
        // The agent restarted: its sequences start over, its old records stay.
        assert_eq!(store.push("n1", "boot-b", 0, vec![(1, again)]), 1);
        let records = store.records(None);
        assert_eq!(records.len(), 1, "{records:#?}");
        assert_eq!((records[0].count, records[0].last_seen_ns), (2, 50));
    }

    #[test]
    fn nodes_are_merged_in_time_order_and_bounded_each() {
        let store = RelayStore::new(2);
        store.push(
            "n1",
            "a",
            0,
            vec![(1, flow("10.0.0.1", 1, 10)), (2, flow("10.0.0.1", 2, 30))],
        );
        store.push("n2", "b", 0, vec![(1, flow("10.0.0.2", 1, 20))]);
        let order: Vec<(u64, Option<String>)> = store
            .records(None)
            .iter()
            .map(|f| (f.last_seen_ns, f.node.clone()))
            .collect();
        assert_eq!(
            order,
            [
                (10, Some("n1".into())),
                (20, Some("n2".into())),
                (30, Some("n1".into()))
            ]
        );
        assert_eq!(store.complete_from_ns(None), 0);
        // A third record on n1 drops its oldest; n2 keeps its own.
        store.push("n1", "a", 2, vec![(3, flow("10.0.0.1", 3, 40))]);
        assert_eq!(
            store.nodes(),
            [("n1".to_string(), 2), ("n2".to_string(), 1)]
        );
        assert_eq!(store.complete_from_ns(Some("n1")), 10);
        assert_eq!(store.complete_from_ns(Some("n2")), 0);
        assert_eq!(store.records(Some("n2")).len(), 1);
    }
}
