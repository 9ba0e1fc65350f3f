//! [`RelayView`]: the relay's answers, over the merged records of every node:
//! flows filtered as `agent flows` filters them, and the staged report, both
//! judged with the datastore's model (the one the agents enforce). Used by the
//! gRPC service and meant for the web console.
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::store::RelayStore;
use crate::datastore::kubernetes::KubeSnapshot;
use crate::flows::blame::{Blame, Judge};
use crate::flows::report::{self, History, ReportQuery, StagedReport};
use crate::flows::{connection, unix_now_ns, Flow, FlowQuery, Matcher, View};
use crate::model::ir::Model;

/// Where the relay reads the cluster's policies and endpoints from.
#[derive(Clone)]
pub enum ModelSource {
    /// None: flows are filtered by what records carry; no staged report.
    None,
    /// A directory of YAML documents, read per query.
    Dir(PathBuf),
    /// The Kubernetes API server's current view.
    Kubernetes(KubeSnapshot),
}

impl ModelSource {
    pub fn model(&self) -> Option<Model> {
        match self {
            Self::None => None,
            Self::Dir(dir) => Some(crate::model::load_paths(&[dir.as_path()]).model),
            Self::Kubernetes(k) => Some(k.load().model),
        }
    }
}

/// The store and the model: what the console and the gRPC service query.
#[derive(Clone)]
pub struct RelayView {
    pub store: Arc<RelayStore>,
    pub source: ModelSource,
}

/// A compiled flows query: node, filter and, for staged questions, the
/// evaluator's models.
pub struct Plan {
    node: Option<String>,
    matcher: Matcher,
    view: View,
    blame: Option<Blame>,
}

impl Plan {
    /// The evaluators [`Plan::pick`] annotates with (borrowed from the plan).
    pub fn judge(&self) -> Option<Judge<'_>> {
        self.blame.as_ref().map(Blame::judge)
    }

    /// The record as the query shows it, when it matches.
    pub fn pick(&self, judge: Option<&Judge>, f: &Flow) -> Option<Flow> {
        if self.node.is_some() && f.node != self.node {
            return None;
        }
        let f = match judge {
            Some(j) => j.annotate(f),
            None => f.clone(),
        };
        self.matcher.matches(&f, &self.view).then_some(f)
    }
}

impl RelayView {
    pub fn new(store: Arc<RelayStore>, source: ModelSource) -> RelayView {
        RelayView { store, source }
    }

    /// Compiles `q` for the records of `node` (every node when `None`).
    pub fn plan(&self, q: &FlowQuery, node: Option<&str>) -> Result<Plan, String> {
        let model = self.source.model();
        let matcher = Matcher::new(&q.filter)?;
        let (matcher, view) = match &model {
            Some(m) => {
                let view = View::for_model(m);
                (matcher.resolve(&view)?, view)
            }
            None => {
                for peer in [&q.filter.from, &q.filter.to].into_iter().flatten() {
                    if let Ok(crate::flows::PeerFilter::Selector(_)) =
                        crate::flows::PeerFilter::parse(peer)
                    {
                        return Err(format!(
                            "the selector {peer:?} needs labels: start the relay with --datastore"
                        ));
                    }
                }
                (matcher, View::default())
            }
        };
        let blame = match (&model, q.filter.pending_diff || !q.filter.staged.is_empty()) {
            (Some(m), true) => Some(Blame::new(m, &q.filter.staged)?),
            (None, true) if !q.filter.staged.is_empty() => {
                return Err("--staged needs the relay started with --datastore".into())
            }
            _ => None,
        };
        Ok(Plan {
            node: node.map(str::to_string),
            matcher,
            view,
            blame,
        })
    }

    /// The kept records matching `q` (its `last` / `since_ms`; not `follow`).
    pub fn flows(&self, q: &FlowQuery, node: Option<&str>) -> Result<Vec<Flow>, String> {
        let plan = self.plan(q, node)?;
        Ok(self.history(&plan, q))
    }

    /// The history part of a flows answer, for a compiled query.
    pub fn history(&self, plan: &Plan, q: &FlowQuery) -> Vec<Flow> {
        let judge = plan.judge();
        let cutoff = q
            .since_ms
            .map(|ms| unix_now_ns().saturating_sub(ms.saturating_mul(1_000_000)));
        let mut selected: Vec<Flow> = join_across_nodes(self.store.records(None))
            .iter()
            .filter(|f| cutoff.is_none_or(|c| f.last_seen_ns >= c))
            .filter_map(|f| plan.pick(judge.as_ref(), f))
            .collect();
        crate::daemon::protocol::keep_last(q, &mut selected);
        selected
    }

    /// The staged report over the connections of `node` (every node when
    /// `None`), judged with the datastore's model by [`report::live`].
    pub fn staged_report(
        &self,
        q: &ReportQuery,
        node: Option<&str>,
    ) -> Result<StagedReport, String> {
        let model = self
            .source
            .model()
            .ok_or("the staged report needs the policies: start the relay with --datastore")?;
        let records = self.store.records(node);
        let now_ns = unix_now_ns();
        // Complete from the oldest record kept (agents re-send what they
        // hold), or after the newest one a bound dropped. A record's first
        // and last report are converted from the kernel's clock separately
        // and may be a few µs apart either way: take the earlier.
        let oldest = records
            .iter()
            .map(|r| r.first_seen_ns.min(r.last_seen_ns))
            .min()
            .unwrap_or(now_ns);
        let mut nodes: Vec<String> = records.iter().filter_map(|r| r.node.clone()).collect();
        nodes.sort();
        nodes.dedup();
        let merged = format!(
            "merged by the relay from {} node{}: {}",
            nodes.len(),
            if nodes.len() == 1 { "" } else { "s" },
            nodes.join(", ")
        );
        let history = History {
            records: &records,
            complete_from_ns: oldest.max(self.store.complete_from_ns(node)),
            now_ns,
            notes: vec![merged],
        };
        let report = report::live(&model, q, &history)?;
        Ok(report)
    }
}

/// Records of one connection judged together, end to end, as an agent joins
/// the hooks it sees itself: also across nodes (source egress on one,
/// destination ingress on another), and with the latest version of each hook.
pub fn join_across_nodes(records: Vec<Arc<Flow>>) -> Vec<Arc<Flow>> {
    let key = |f: &Flow| connection::ConnKey {
        src: f.src.ip,
        dst: f.dst.ip,
        src_port: f.src.port,
        dst_port: f.dst.port,
        protocol: f.protocol_number,
    };
    let mut by_conn: HashMap<connection::ConnKey, Vec<usize>> = HashMap::new();
    for (i, f) in records.iter().enumerate() {
        by_conn.entry(key(f)).or_default().push(i);
    }
    let mut out = records;
    for hooks in by_conn.values() {
        if hooks.len() < 2 {
            continue;
        }
        let mut joined: Vec<Flow> = hooks.iter().map(|&i| Flow::clone(&out[i])).collect();
        connection::join(&mut joined);
        for (&i, f) in hooks.iter().zip(joined) {
            out[i] = Arc::new(f);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::FlowVerdict;
    use crate::relay::store::tests::flow;

    #[test]
    fn a_connection_across_two_nodes_is_judged_end_to_end() {
        let store = Arc::new(RelayStore::default());
        // n1 saw the source's egress: allowed, its staged policy would deny.
        let mut egress = flow("10.0.0.1", 4000, 10);
        egress.direction = "egress".into();
        egress.pending = Some(FlowVerdict {
            action: "deny".into(),
            trace: "default|sgnp:/lockdown|deny|-1".into(),
            no_entry: false,
        });
        egress.pending_differs = true;
        // n2 saw the destination's ingress: denied today already.
        let mut ingress = flow("10.0.0.1", 4000, 20);
        ingress.enforced.action = "deny".into();
        store.push("n1", "a", 0, vec![(1, egress)]);
        store.push("n2", "b", 0, vec![(1, ingress)]);
        let view = RelayView::new(store, ModelSource::None);
        let all = view.flows(&FlowQuery::default(), None).unwrap();
        assert_eq!(all.len(), 2);
        // Denied end to end either way: no difference on either record.
        for f in &all {
            let c = f.connection.as_ref().unwrap();
            assert_eq!(
                (c.enforced.as_str(), c.pending.as_str(), c.hooks),
                ("deny", "deny", 2)
            );
            assert!(!f.pending_differs, "{f:#?}");
        }
        let q = FlowQuery {
            last: Some(10),
            ..FlowQuery::default()
        };
        let n2 = view.flows(&q, Some("n2")).unwrap();
        assert_eq!(n2.len(), 1);
        assert_eq!(n2[0].node.as_deref(), Some("n2"));
        let err = view
            .staged_report(&ReportQuery::default(), None)
            .unwrap_err();
        assert!(err.contains("--datastore"), "{err}");
    }
}
