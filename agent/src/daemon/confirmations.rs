//! The agent's side of commit-confirmed promotion ([`crate::rollout`]): a
//! thread that looks at the datastore's pending promotions every
//! [`crate::rollout::TICK`], runs their checks from the agent's network
//! namespace, reverts or confirms, and keeps what `agent status` shows and the
//! promotion lines of the flows stream ([`crate::flows::promotion`]).
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::broadcast;

use super::{lock, Shared};
use crate::datastore::kubernetes::KubeOptions;
use crate::flows::history::HistoryWriter;
use crate::flows::promotion::{PromotionEvent, KEPT};
use crate::flows::unix_now_ns;
use crate::rollout::{awaiting_line, Outcome, Supervisor, TICK};

/// Outcomes kept for `agent status`.
const RECENT: usize = 20;

/// What `agent status` and `agent flows` show: pending promotions, recent
/// outcomes, and the promotion events (kept, and sent to `--follow`ers).
pub(super) struct Confirmations {
    pub pending: Vec<String>,
    pub recent: Vec<Outcome>,
    /// Pending targets as last seen (target -> status line).
    seen_pending: BTreeMap<String, String>,
    pub events: VecDeque<Arc<PromotionEvent>>,
    pub events_tx: broadcast::Sender<Arc<PromotionEvent>>,
}

impl Default for Confirmations {
    fn default() -> Self {
        Confirmations {
            pending: Vec::new(),
            recent: Vec::new(),
            seen_pending: BTreeMap::new(),
            events: VecDeque::new(),
            events_tx: broadcast::channel(64).0,
        }
    }
}

impl Confirmations {
    /// One line each, pending first.
    pub fn lines(&self) -> Vec<String> {
        let recent = self.recent.iter().map(|o| {
            format!(
                "{} {} at {}: {}",
                o.target,
                o.action,
                crate::flows::rfc3339(o.at_unix_ms * 1_000_000),
                o.reason
            )
        });
        self.pending.iter().cloned().chain(recent).collect()
    }

    /// Starting with the events read back from the flow history.
    pub fn with_events(events: impl IntoIterator<Item = PromotionEvent>) -> Self {
        let mut c = Confirmations::default();
        c.events.extend(events.into_iter().map(Arc::new));
        let excess = c.events.len().saturating_sub(KEPT);
        c.events.drain(..excess);
        c
    }

    /// Keeps the event, sends it to `--follow`ers and to the flow history.
    fn event(&mut self, e: PromotionEvent, history: Option<&HistoryWriter>) {
        let e = Arc::new(e);
        let _ = self.events_tx.send(e.clone());
        if let Some(h) = history {
            h.promotion(&e);
        }
        self.events.push_back(e);
        if self.events.len() > KEPT {
            self.events.pop_front();
        }
    }
}

/// Why a pending promotion disappeared without an outcome of this agent's.
struct Gone {
    event: &'static str,
    reason: &'static str,
}

pub(super) fn spawn(datastore: PathBuf, shared: Arc<Shared>) {
    std::thread::spawn(move || {
        let mut supervisor = Supervisor::default();
        // Only the operator (or this agent) removes a journal.
        let gone = Gone {
            event: "confirmed",
            reason: "`agent confirm`",
        };
        loop {
            let (outcomes, waiting) = supervisor.tick(&datastore);
            for o in &outcomes {
                match o.action {
                    "reverted" => {
                        tracing::warn!(target = %o.target, reason = %o.reason, "promotion reverted: the staged version is back")
                    }
                    _ => {
                        tracing::info!(target = %o.target, reason = %o.reason, "promotion confirmed")
                    }
                }
            }
            let pending = waiting
                .iter()
                .map(|p| {
                    let line = awaiting_line(&p.target, p.deadline_unix_ms, &p.checks);
                    (p.target.clone(), line)
                })
                .collect();
            publish(&shared, pending, outcomes, &gone);
            std::thread::sleep(TICK);
        }
    });
}

/// What `agent status` shows: `pending` (target, line) replaces the pending
/// lines, `outcomes` join the recent ones; both become promotion events, as
/// does a pending promotion gone without an outcome here (`gone`).
fn publish(shared: &Shared, pending: Vec<(String, String)>, outcomes: Vec<Outcome>, gone: &Gone) {
    let now = unix_now_ns();
    let history = shared.history.as_ref();
    let mut view = lock(&shared.confirmations);
    let now_pending: BTreeMap<String, String> = pending.into_iter().collect();
    for (target, line) in &now_pending {
        if !view.seen_pending.contains_key(target) {
            let reason = line
                .strip_prefix(target.as_str())
                .unwrap_or(line)
                .trim_start();
            view.event(
                PromotionEvent::new(now, target, "pending", reason.into()),
                history,
            );
        }
    }
    for o in &outcomes {
        let at = o.at_unix_ms * 1_000_000;
        view.event(
            PromotionEvent::new(at, &o.target, o.action, o.reason.clone()),
            history,
        );
    }
    let vanished: Vec<String> = view
        .seen_pending
        .keys()
        .filter(|t| !now_pending.contains_key(*t) && !outcomes.iter().any(|o| &o.target == *t))
        .cloned()
        .collect();
    for target in vanished {
        view.event(
            PromotionEvent::new(now, &target, gone.event, gone.reason.into()),
            history,
        );
    }
    view.pending = now_pending.values().cloned().collect();
    view.seen_pending = now_pending;
    view.recent.extend(outcomes);
    let excess = view.recent.len().saturating_sub(RECENT);
    view.recent.drain(..excess);
}

/// On a clean stop: removes this agent's presence Lease, so that a node
/// leaving the cluster does not count against pending promotions
/// ([`crate::datastore::kubernetes::presence`]). Bounded: a stop never waits
/// long for the API server.
pub(super) async fn withdraw_presence(opts: &KubeOptions, lease_ns: &str) {
    use crate::datastore::kubernetes::{self as k8s, presence};
    let withdraw = async {
        let client = k8s::client(opts.kubeconfig.as_deref()).await?;
        let leases = kube::Api::namespaced(client, lease_ns);
        presence::withdraw(&leases, &opts.node).await?;
        anyhow::Ok(())
    };
    match tokio::time::timeout(std::time::Duration::from_secs(2), withdraw).await {
        Ok(Ok(())) => tracing::info!("presence Lease removed"),
        Ok(Err(e)) => tracing::warn!(error = %e, "removing this agent's presence Lease"),
        Err(_) => tracing::warn!("removing this agent's presence Lease: no answer within 2s"),
    }
}

/// The Kubernetes datastore's side ([`crate::datastore::kubernetes::confirm`]):
/// every tick, run each pending promotion's checks from this node and revert
/// or confirm what this agent decides and wins the target's Lease for (in
/// `lease_ns`); list what waits for `agent status`.
pub(super) fn spawn_kube(opts: KubeOptions, lease_ns: String, shared: Arc<Shared>) {
    use crate::datastore::kubernetes::{self as k8s, confirm};
    tokio::spawn(async move {
        let holder = format!("{}/{}", opts.node, std::process::id());
        let mut supervisor = confirm::Supervisor::new(&holder, &lease_ns)
            .with_presence(&opts.node, k8s::presence::Timing::default());
        let gone = Gone {
            event: "decided",
            reason: "by `agent confirm` or another agent",
        };
        // Connected once, again after an error.
        let mut connected = None;
        loop {
            tokio::time::sleep(confirm::TICK).await;
            let looked = async {
                if connected.is_none() {
                    let client = k8s::client(opts.kubeconfig.as_deref()).await?;
                    let found =
                        k8s::resolve_calico_api(&client, opts.calico_api, k8s::INITIAL_SYNC)
                            .await?;
                    connected = Some((client, found.group));
                }
                let (client, group) = connected.as_ref().expect("connected above");
                supervisor.tick(client, *group).await
            };
            let looked = looked.await;
            if looked.is_err() {
                connected = None;
            }
            match looked {
                Ok((outcomes, waiting)) => {
                    let pending = waiting
                        .iter()
                        .map(|r| (r.target.clone(), r.describe()))
                        .collect();
                    publish(&shared, pending, outcomes, &gone);
                }
                Err(e) => tracing::warn!(error = %e, "pending confirmations in the cluster"),
            }
        }
    });
}
