//! The agent's side of commit-confirmed promotion ([`crate::rollout`]): a
//! thread that looks at the datastore's pending promotions every
//! [`crate::rollout::TICK`], runs their checks from the agent's network
//! namespace, reverts or confirms, and keeps what `agent status` shows.
use std::path::PathBuf;
use std::sync::Arc;

use super::{lock, Shared};
use crate::datastore::kubernetes::KubeOptions;
use crate::rollout::{awaiting_line, Outcome, Supervisor, TICK};

/// Outcomes kept for `agent status`.
const RECENT: usize = 20;

/// What `agent status` shows: pending promotions and recent outcomes.
#[derive(Default)]
pub(super) struct Confirmations {
    pub pending: Vec<String>,
    pub recent: Vec<Outcome>,
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
}

pub(super) fn spawn(datastore: PathBuf, shared: Arc<Shared>) {
    std::thread::spawn(move || {
        let mut supervisor = Supervisor::default();
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
                .map(|p| awaiting_line(&p.target, p.deadline_unix_ms, &p.checks))
                .collect();
            publish(&shared, pending, outcomes);
            std::thread::sleep(TICK);
        }
    });
}

/// What `agent status` shows: `pending` replaces the pending lines, `outcomes`
/// join the recent ones.
fn publish(shared: &Shared, pending: Vec<String>, outcomes: Vec<Outcome>) {
    let mut view = lock(&shared.confirmations);
    view.pending = pending;
    view.recent.extend(outcomes);
    let excess = view.recent.len().saturating_sub(RECENT);
    view.recent.drain(..excess);
}

/// The Kubernetes datastore's side ([`crate::datastore::kubernetes::confirm`]):
/// every tick, run each pending promotion's checks from this node and revert
/// or confirm what this agent decides and wins the target's Lease for (in
/// `lease_ns`); list what waits for `agent status`.
pub(super) fn spawn_kube(opts: KubeOptions, lease_ns: String, shared: Arc<Shared>) {
    use crate::datastore::kubernetes::{self as k8s, confirm};
    tokio::spawn(async move {
        let holder = format!("{}/{}", opts.node, std::process::id());
        let mut supervisor = confirm::Supervisor::new(&holder, &lease_ns);
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
                    let pending = waiting.iter().map(|r| r.describe()).collect();
                    publish(&shared, pending, outcomes);
                }
                Err(e) => tracing::warn!(error = %e, "pending confirmations in the cluster"),
            }
        }
    });
}
