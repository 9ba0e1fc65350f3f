//! Commit-confirmed promotion in the cluster (the file datastore's is
//! [`crate::rollout`]): `agent promote --datastore kubernetes KIND/NAME
//! --confirm-within D [--confirm-if CHECK]... [--settle S]` records the
//! promotion in an annotation ([`ANNOTATION`], a [`PendingRecord`]: the
//! deadline, the checks and settle time, the staged object's manifest and the
//! replaced enforced namesake's, as they were before).
//!
//! Where the record lives depends on the staged action ([`Promoted`]):
//! - `Set` (and `Learn`): on the enforced object, in the same server-side apply
//!   that promotes, so the promotion and its record are one write; the staged
//!   object is deleted. `agent confirm` removes the annotation.
//! - `Delete`: on the staged object, which stays while the promotion awaits
//!   confirmation (the enforced namesake is deleted once the record is
//!   written). `agent confirm` deletes the staged object.
//!
//! Every write that decides (confirm, revert) carries the resourceVersion the
//! decider read: a confirm racing a revert fails instead of passing silently.
//!
//! The decision is an agent's job, never the CLI's (the promotion may have cut
//! the operator off). Every [`TICK`] each agent ([`Supervisor`]) lists the
//! records and, for each one:
//! - runs its checks from its own node (`tcp:`/`dns:` from the agent's network
//!   namespace, `apiserver` through the agent's own client);
//! - any check failing: reverts at once;
//! - past the deadline: reverts;
//! - every check passing on this agent for the settle time (it tracks since
//!   when, from the first tick that saw the record): confirms.
//!
//! So across agents "all passing" means: the settle time passed, no agent saw
//! a check fail in it (an agent that sees one reverts at once, which makes the
//! record disappear for every other agent), and every agent that was present
//! when the promotion was made has shown since that it still reaches the API
//! server ([`super::presence`]: an agent cut off by the promotion cannot
//! report its failing check, but its presence Lease stops being renewed, and
//! when it expires the others revert). If the promotion cut every agent off,
//! none confirms and the first to reconnect after the deadline reverts. With
//! no checks only the deadline (or `agent confirm`) decides.
//!
//! Whoever decides first holds the target's coordination.k8s.io/v1 Lease
//! ([`lease_name`], in `agent run --lease-namespace`, default
//! `$POD_NAMESPACE`, else [`LEASE_NAMESPACE`]) for the act (`revert.rs`):
//! create is atomic, so one agent wins and a target is reverted or confirmed
//! exactly once.
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use kube::{Client, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::names::{CalicoGroup, Kind};
use super::presence::{self, Presence, Timing};
use crate::model::promote::PromotionPlan;
use crate::rollout::{Check, Outcome};

/// The annotation holding a [`PendingRecord`] (JSON).
pub const ANNOTATION: &str = "policy-agent/pending-confirmation";
/// Where agents take their Leases unless `agent run --lease-namespace` (or
/// `$POD_NAMESPACE`, which deploy/ sets) says otherwise.
pub const LEASE_NAMESPACE: &str = "calico-system";
/// After this long without renewal another agent may take a Lease over.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often agents look at pending confirmations and run their checks.
pub const TICK: Duration = Duration::from_secs(1);
/// How long the `apiserver` check waits for an answer.
const APISERVER_TIMEOUT: Duration = Duration::from_secs(2);

/// The promotion's [`PromotionPlan`], as recorded (and so what the revert
/// restores).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Promoted {
    /// Applied the staged spec as the enforced object (which holds the record).
    #[default]
    Set,
    /// Deleted the enforced namesake (the staged object holds the record).
    Delete,
}

/// What `--confirm-within`, `--confirm-if` and `--settle` ask for.
#[derive(Clone, Debug, Default)]
pub struct Ask {
    pub within: Duration,
    pub checks: Vec<Check>,
    pub settle: Duration,
}

/// What a commit-confirmed promotion records.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingRecord {
    /// `KIND [ns/]name` of the staged policy, for messages and the Lease name.
    pub target: String,
    pub deadline_unix_ms: u64,
    /// The staged object as it was (apiVersion, kind, metadata, spec).
    pub staged: Value,
    /// The enforced namesake the promotion replaced or deleted, if there was one.
    pub enforced_before: Option<Value>,
    #[serde(default)]
    pub action: Promoted,
    /// `--confirm-if`: run by every agent from its node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<Check>,
    /// How long the checks must pass to confirm.
    #[serde(default)]
    pub settle_ms: u64,
    /// When the promotion was made (0 in records of agents before this field:
    /// then agents' presence is not asked).
    #[serde(default)]
    pub promoted_unix_ms: u64,
}

impl PendingRecord {
    /// `agent status`: `TARGET awaits confirmation until T[ (checks: ...)]`.
    pub fn describe(&self) -> String {
        crate::rollout::awaiting_line(&self.target, self.deadline_unix_ms, &self.checks)
    }
}

/// A record found on an object (the enforced one, or the staged one for
/// `Delete`: `carrier`).
#[derive(Clone, Debug)]
pub struct Pending {
    pub record: PendingRecord,
    pub carrier: Kind,
    pub name: String,
    pub namespace: Option<String>,
}

pub(super) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

impl From<PromotionPlan> for Promoted {
    fn from(plan: PromotionPlan) -> Promoted {
        match plan {
            PromotionPlan::Enforce => Promoted::Set,
            PromotionPlan::DeleteEnforced => Promoted::Delete,
        }
    }
}

/// The record for a promotion made now.
pub fn record(
    target: String,
    ask: &Ask,
    plan: PromotionPlan,
    staged: &DynamicObject,
    enforced_before: Option<&DynamicObject>,
) -> PendingRecord {
    PendingRecord {
        target,
        deadline_unix_ms: unix_ms(SystemTime::now() + ask.within),
        staged: manifest(staged),
        enforced_before: enforced_before.map(manifest),
        action: plan.into(),
        checks: ask.checks.clone(),
        settle_ms: ask.settle.as_millis() as u64,
        promoted_unix_ms: unix_ms(SystemTime::now()),
    }
}

/// An object as a user would create it again: no server-set metadata.
fn manifest(obj: &DynamicObject) -> Value {
    let mut meta = json!({"name": obj.name_any()});
    if let Some(ns) = &obj.metadata.namespace {
        meta["namespace"] = json!(ns);
    }
    if let Some(l) = obj.metadata.labels.as_ref().filter(|l| !l.is_empty()) {
        meta["labels"] = json!(l);
    }
    if let Some(a) = obj.metadata.annotations.as_ref() {
        let kept: serde_json::Map<String, Value> = a
            .iter()
            .filter(|(k, _)| {
                k.as_str() != ANNOTATION
                    && k.as_str() != "kubectl.kubernetes.io/last-applied-configuration"
            })
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        if !kept.is_empty() {
            meta["annotations"] = Value::Object(kept);
        }
    }
    let mut doc = obj.data.clone();
    if let (Some(m), Some(t)) = (doc.as_object_mut(), obj.types.as_ref()) {
        m.insert("apiVersion".into(), json!(t.api_version));
        m.insert("kind".into(), json!(t.kind));
        m.insert("metadata".into(), meta);
        m.remove("status");
    }
    doc
}

pub(super) fn api(client: &Client, kind: &Kind, ns: Option<&str>) -> Api<DynamicObject> {
    match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &kind.api_resource()),
        None => Api::all_with(client.clone(), &kind.api_resource()),
    }
}

/// The record on `obj`, if any (a malformed one is an error: never ignored).
pub fn record_of(obj: &DynamicObject) -> anyhow::Result<Option<PendingRecord>> {
    obj.annotations()
        .get(ANNOTATION)
        .map(|text| {
            serde_json::from_str(text).map_err(|e| {
                anyhow::anyhow!(
                    "{} {}: annotation {ANNOTATION} is not a pending-confirmation record: {e}",
                    obj.types.as_ref().map_or("", |t| t.kind.as_str()),
                    obj.name_any()
                )
            })
        })
        .transpose()
}

/// Confirms the record on `obj` (of kind `carrier`): `Set` removes the
/// annotation, `Delete` deletes the staged object; either with the
/// resourceVersion read as precondition. False when `obj` has no record.
pub async fn confirm(client: &Client, carrier: &Kind, obj: &DynamicObject) -> anyhow::Result<bool> {
    let Some(record) = record_of(obj)? else {
        return Ok(false);
    };
    let api = api(client, carrier, obj.metadata.namespace.as_deref());
    match record.action {
        Promoted::Set => {
            let patch = json!({"metadata": {
                "resourceVersion": obj.resource_version(),
                "annotations": {ANNOTATION: null},
            }});
            api.patch(
                &obj.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        }
        Promoted::Delete => {
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: obj.resource_version(),
                    uid: None,
                }),
                ..Default::default()
            };
            api.delete(&obj.name_any(), &dp).await?;
        }
    }
    Ok(true)
}

/// The kinds that carry records in `group`: the enforced kinds (`Set`) and
/// the staged ones (`Delete`).
fn carrier_kinds(group: CalicoGroup) -> [(Kind, Promoted); 6] {
    [
        (group.kind("GlobalNetworkPolicy"), Promoted::Set),
        (group.kind("NetworkPolicy"), Promoted::Set),
        (group.kind("networking.k8s.io/NetworkPolicy"), Promoted::Set),
        (group.kind("StagedGlobalNetworkPolicy"), Promoted::Delete),
        (group.kind("StagedNetworkPolicy"), Promoted::Delete),
        (
            group.kind("StagedKubernetesNetworkPolicy"),
            Promoted::Delete,
        ),
    ]
}

/// Every pending confirmation in the cluster. A record on the wrong kind of
/// object (a `Set` record on a staged object) is an error, never acted on.
pub async fn pending(client: &Client, group: CalicoGroup) -> anyhow::Result<Vec<Pending>> {
    let mut out = Vec::new();
    for (kind, carried) in carrier_kinds(group) {
        for obj in api(client, &kind, None).list(&Default::default()).await? {
            let Some(record) = record_of(&obj)? else {
                continue;
            };
            anyhow::ensure!(
                record.action == carried,
                "{} {}: annotation {ANNOTATION} records a {:?} promotion, which a {} never carries",
                kind.kind,
                obj.name_any(),
                record.action,
                kind.kind
            );
            out.push(Pending {
                record,
                carrier: kind,
                name: obj.name_any(),
                namespace: obj.metadata.namespace.clone(),
            });
        }
    }
    Ok(out)
}

/// What an agent decided about a pending promotion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Revert(String),
    Confirm(String),
}

/// One agent's side: runs each record's checks every tick, remembers since
/// when they pass, and decides (module docs).
pub struct Supervisor {
    holder: String,
    lease_ns: String,
    /// Per record (target, deadline): since when every check passed here.
    passing_since: HashMap<(String, u64), u64>,
    /// This agent's node and presence timing ([`presence`]); none: presence
    /// is neither kept nor asked.
    presence: Option<(String, Timing)>,
    /// When this agent last renewed its presence (unix ms).
    renewed_ms: Option<u64>,
}

impl Supervisor {
    /// `holder` names this agent in Leases and messages (node/pid).
    pub fn new(holder: &str, lease_ns: &str) -> Supervisor {
        Supervisor {
            holder: holder.into(),
            lease_ns: lease_ns.into(),
            passing_since: HashMap::new(),
            presence: None,
            renewed_ms: None,
        }
    }

    /// Keeps this agent's presence as `node` and asks every agent's before
    /// confirming ([`presence`]).
    pub fn with_presence(mut self, node: &str, timing: Timing) -> Supervisor {
        self.presence = Some((node.into(), timing));
        self
    }

    fn leases(&self, client: &Client) -> Api<k8s_openapi::api::coordination::v1::Lease> {
        Api::namespaced(client.clone(), &self.lease_ns)
    }

    /// Renews this agent's presence when due; then, when some record asks
    /// for it, every agent's presence.
    async fn presences(
        &mut self,
        client: &Client,
        found: &[Pending],
    ) -> anyhow::Result<Vec<Presence>> {
        let Some((node, timing)) = self.presence.clone() else {
            return Ok(Vec::new());
        };
        let now = unix_ms(SystemTime::now());
        let due = self
            .renewed_ms
            .is_none_or(|t| now >= t + timing.renew_every.as_millis() as u64);
        if due {
            match presence::renew(&self.leases(client), &node, &self.holder, &timing).await {
                Ok(()) => self.renewed_ms = Some(now),
                Err(e) => tracing::error!(error = %e, "renewing this agent's presence Lease"),
            }
        }
        if !found.iter().any(|p| asks_presence(&p.record)) {
            return Ok(Vec::new());
        }
        Ok(presence::list(&self.leases(client)).await?)
    }

    /// Removes this agent's presence (a clean stop).
    pub async fn withdraw(&self, client: &Client) -> kube::Result<()> {
        match &self.presence {
            Some((node, _)) => presence::withdraw(&self.leases(client), node).await,
            None => Ok(()),
        }
    }

    /// One look at every record: decides, and carries out what this agent
    /// wins the Lease for. Returns what it decided and carried out, and what
    /// still waits.
    pub async fn tick(
        &mut self,
        client: &Client,
        group: CalicoGroup,
    ) -> anyhow::Result<(Vec<Outcome>, Vec<PendingRecord>)> {
        let found = pending(client, group).await?;
        let presences = self.presences(client, &found).await?;
        let key = |r: &PendingRecord| (r.target.clone(), r.deadline_unix_ms);
        self.passing_since
            .retain(|k, _| found.iter().any(|p| key(&p.record) == *k));
        let mut outcomes = Vec::new();
        let mut waiting = Vec::new();
        for p in found {
            let Some(decision) = self.decide(client, &p.record, &presences).await else {
                waiting.push(p.record);
                continue;
            };
            let acted =
                super::revert::carry_out(client, &self.lease_ns, &self.holder, &p, decision);
            match acted.await {
                Ok(Some(outcome)) => {
                    self.passing_since.remove(&key(&p.record));
                    outcomes.push(outcome);
                }
                // Another agent holds the Lease, or decided already.
                Ok(None) => {}
                // E.g. RBAC: the record stays pending, retried next tick and
                // shown by `agent status`; no other target waits for it.
                Err(e) => {
                    tracing::error!(target = %p.record.target, error = %e, "acting on a pending promotion FAILED; retrying");
                    waiting.push(p.record);
                }
            }
        }
        Ok((outcomes, waiting))
    }

    async fn decide(
        &mut self,
        client: &Client,
        r: &PendingRecord,
        presences: &[Presence],
    ) -> Option<Decision> {
        if let Some(failed) = first_failure(client, &r.checks).await {
            let why = format!("check failed on {}: {failed}", self.holder);
            return Some(Decision::Revert(why));
        }
        let now = unix_ms(SystemTime::now());
        if now >= r.deadline_unix_ms {
            return Some(Decision::Revert("not confirmed in time".into()));
        }
        if r.checks.is_empty() {
            return None;
        }
        let mut waiting_for_agents = false;
        if let Some((_, timing)) = self.presence.as_ref().filter(|_| asks_presence(r)) {
            let v = presence::judge(presences, r.promoted_unix_ms as i64, now as i64, timing);
            if !v.silent.is_empty() {
                let (agents, its) = match v.silent.len() {
                    1 => ("the agent", "its"),
                    _ => ("the agents", "their"),
                };
                return Some(Decision::Revert(format!(
                    "{agents} on {} stopped reporting after the promotion (cut off from the \
                     API server?): {its} checks cannot count",
                    v.silent.join(", ")
                )));
            }
            waiting_for_agents = !v.waiting_for.is_empty();
        }
        let key = (r.target.clone(), r.deadline_unix_ms);
        let since = *self.passing_since.entry(key).or_insert(now);
        (now.saturating_sub(since) >= r.settle_ms && !waiting_for_agents).then(|| {
            Decision::Confirm(format!(
                "every check passed for {} on {}",
                humantime::format_duration(Duration::from_millis(r.settle_ms)),
                self.holder
            ))
        })
    }
}

/// Whether agents' presence counts for `r`: a record with checks (which
/// confirm by themselves) made by a promotion that noted its time.
fn asks_presence(r: &PendingRecord) -> bool {
    !r.checks.is_empty() && r.promoted_unix_ms > 0
}

/// One look without memory (no record's checks have passed long before):
/// reverts what is past its deadline or failing, as agent `holder`.
pub async fn tick(
    client: &Client,
    group: CalicoGroup,
    holder: &str,
    lease_ns: &str,
) -> anyhow::Result<(Vec<Outcome>, Vec<PendingRecord>)> {
    Supervisor::new(holder, lease_ns).tick(client, group).await
}

/// The first failing check's message, run from here: `apiserver` through
/// `client`, the others as [`Check::run`] does (on a blocking thread).
pub async fn first_failure(client: &Client, checks: &[Check]) -> Option<String> {
    for check in checks {
        let result = match check {
            Check::Apiserver => {
                match tokio::time::timeout(APISERVER_TIMEOUT, client.apiserver_version()).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(format!("{check}: {e}")),
                    Err(_) => Err(format!(
                        "{check}: no answer within {}",
                        humantime::format_duration(APISERVER_TIMEOUT)
                    )),
                }
            }
            local => {
                let c = local.clone();
                tokio::task::spawn_blocking(move || c.run())
                    .await
                    .unwrap_or_else(|e| Err(format!("{local}: {e}")))
            }
        };
        if let Err(e) = result {
            return Some(e);
        }
    }
    None
}

/// The Lease of a target: `agent-revert.` + the target, lowercased, every
/// character outside `[a-z0-9.-]` a dot.
pub fn lease_name(target: &str) -> String {
    let t: String = target
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '.'
            }
        })
        .collect();
    format!("agent-revert.{}", t.trim_matches('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_names_are_valid_object_names() {
        assert_eq!(
            lease_name("StagedNetworkPolicy prod/Lock_down"),
            "agent-revert.stagednetworkpolicy.prod.lock.down"
        );
    }
}
