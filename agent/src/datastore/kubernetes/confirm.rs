//! Commit-confirmed promotion in the cluster (the file datastore's is
//! [`crate::rollout`]): `agent promote --datastore kubernetes KIND/NAME
//! --confirm-within D` applies the enforced object with an annotation
//! ([`ANNOTATION`], a [`PendingRecord`]: the deadline, the staged object's
//! manifest and the replaced enforced namesake's, as they were before) in the
//! same server-side apply, so the promotion and its record are one write.
//! `agent confirm` removes the annotation (with the object's resourceVersion:
//! a confirm racing a revert fails instead of passing silently).
//!
//! The revert is an agent's job, never the CLI's (the promotion may have cut
//! the operator off): every agent lists the enforced kinds each [`TICK`]; for a
//! record past its deadline it creates a coordination.k8s.io/v1 Lease named
//! after the target ([`lease_name`]). Create is atomic, so one agent wins; a
//! Lease left by a dead holder is taken over after [`LEASE_DURATION`] (deleted
//! with its resourceVersion as precondition: again one winner). The holder
//! re-reads the enforced object (another agent may have reverted already and
//! released the Lease), recreates the staged object, then restores the enforced
//! namesake (replace, with the resourceVersion it read) or deletes the enforced
//! object (precondition: that resourceVersion), which also removes the record.
//! Each step is idempotent, so a holder dying half-way leaves work the next one
//! finishes.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{
    Api, DeleteParams, DynamicObject, ObjectMeta, Patch, PatchParams, PostParams, Preconditions,
};
use kube::{Client, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::names::{CalicoGroup, Kind};
use crate::rollout::Outcome;

/// The enforced object's annotation holding its [`PendingRecord`] (JSON).
pub const ANNOTATION: &str = "policy-agent/pending-confirmation";
/// Where agents take their revert Leases: the agent's namespace in deploy/.
pub const LEASE_NAMESPACE: &str = "calico-system";
/// After this long without renewal another agent may take a Lease over.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often agents list pending confirmations.
pub const TICK: Duration = Duration::from_secs(1);

/// What `--confirm-within` records on the enforced object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingRecord {
    /// `KIND [ns/]name` of the staged policy, for messages and the Lease name.
    pub target: String,
    pub deadline_unix_ms: u64,
    /// The staged object as it was (apiVersion, kind, metadata, spec).
    pub staged: Value,
    /// The enforced namesake the promotion replaced, if there was one.
    pub enforced_before: Option<Value>,
}

/// A record found on an enforced object.
#[derive(Clone, Debug)]
pub struct Pending {
    pub record: PendingRecord,
    pub enforced: Kind,
    pub name: String,
    pub namespace: Option<String>,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// The record for a promotion made now, due `within` from now.
pub fn record(
    target: String,
    within: Duration,
    staged: &DynamicObject,
    enforced_before: Option<&DynamicObject>,
) -> PendingRecord {
    PendingRecord {
        target,
        deadline_unix_ms: unix_ms(SystemTime::now() + within),
        staged: manifest(staged),
        enforced_before: enforced_before.map(manifest),
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

fn api(client: &Client, kind: &Kind, ns: Option<&str>) -> Api<DynamicObject> {
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

/// `agent confirm`: removes the record from `obj` (the enforced object).
/// False when it has none.
pub async fn confirm(
    client: &Client,
    enforced: &Kind,
    obj: &DynamicObject,
) -> anyhow::Result<bool> {
    if record_of(obj)?.is_none() {
        return Ok(false);
    }
    let patch = json!({"metadata": {
        "resourceVersion": obj.resource_version(),
        "annotations": {ANNOTATION: null},
    }});
    api(client, enforced, obj.metadata.namespace.as_deref())
        .patch(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(true)
}

/// The enforced kinds promotions write, in `group`.
fn enforced_kinds(group: CalicoGroup) -> [Kind; 3] {
    [
        group.kind("GlobalNetworkPolicy"),
        group.kind("NetworkPolicy"),
        group.kind("networking.k8s.io/NetworkPolicy"),
    ]
}

/// Every pending confirmation in the cluster.
pub async fn pending(client: &Client, group: CalicoGroup) -> anyhow::Result<Vec<Pending>> {
    let mut out = Vec::new();
    for kind in enforced_kinds(group) {
        for obj in api(client, &kind, None).list(&Default::default()).await? {
            if let Some(record) = record_of(&obj)? {
                out.push(Pending {
                    record,
                    enforced: kind,
                    name: obj.name_any(),
                    namespace: obj.metadata.namespace.clone(),
                });
            }
        }
    }
    Ok(out)
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

/// One look: reverts every record past its deadline whose Lease this agent
/// (`holder`) wins. Returns the reverts made and what still waits.
pub async fn tick(
    client: &Client,
    group: CalicoGroup,
    holder: &str,
    lease_ns: &str,
) -> anyhow::Result<(Vec<Outcome>, Vec<PendingRecord>)> {
    let now = unix_ms(SystemTime::now());
    let mut outcomes = Vec::new();
    let mut waiting = Vec::new();
    for p in pending(client, group).await? {
        if now < p.record.deadline_unix_ms {
            waiting.push(p.record);
            continue;
        }
        let leases: Api<Lease> = Api::namespaced(client.clone(), lease_ns);
        let lease = lease_name(&p.record.target);
        if !take_lease(&leases, &lease, holder).await? {
            continue;
        }
        let done = revert(client, &p).await;
        leases.delete(&lease, &DeleteParams::default()).await?;
        // A failed revert (e.g. RBAC) stays pending: retried next tick, shown
        // by `agent status`, and no other target waits for it.
        let reason = match done {
            Ok(reason) => reason,
            Err(e) => {
                tracing::error!(target = %p.record.target, error = %e, "REVERT FAILED; retrying");
                waiting.push(p.record);
                continue;
            }
        };
        if let Some(reason) = reason {
            outcomes.push(Outcome {
                target: p.record.target.clone(),
                action: "reverted",
                reason,
                at_unix_ms: now,
            });
        }
    }
    Ok((outcomes, waiting))
}

/// Creates the Lease (true: this holder has it); a Lease not renewed for its
/// duration is deleted (precondition: its resourceVersion) and created again.
async fn take_lease(leases: &Api<Lease>, name: &str, holder: &str) -> anyhow::Result<bool> {
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            acquire_time: Some(MicroTime(Timestamp::now())),
            renew_time: Some(MicroTime(Timestamp::now())),
            ..Default::default()
        }),
    };
    for _ in 0..2 {
        match leases.create(&PostParams::default(), &lease).await {
            Ok(_) => return Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        let Some(held) = leases.get_opt(name).await? else {
            continue;
        };
        let spec = held.spec.clone().unwrap_or_default();
        let renewed = spec.renew_time.map_or(0, |t| t.0.as_millisecond());
        let duration = i64::from(spec.lease_duration_seconds.unwrap_or(0)) * 1000;
        if Timestamp::now().as_millisecond() < renewed + duration {
            return Ok(false);
        }
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: held.resource_version(),
                uid: None,
            }),
            ..Default::default()
        };
        match leases.delete(name, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(false)
}

/// Puts the staged object back and the enforced one as it was. `None` when
/// the record is gone (confirmed, or reverted by another agent meanwhile).
async fn revert(client: &Client, p: &Pending) -> anyhow::Result<Option<String>> {
    let ns = p.namespace.as_deref();
    let enforced = api(client, &p.enforced, ns);
    let Some(obj) = enforced.get_opt(&p.name).await? else {
        return Ok(None);
    };
    if record_of(&obj)?.as_ref() != Some(&p.record) {
        return Ok(None);
    }
    let staged: DynamicObject = serde_json::from_value(p.record.staged.clone())?;
    let staged_api = api(
        client,
        &staged_kind(&staged)?,
        staged.metadata.namespace.as_deref(),
    );
    match staged_api.create(&PostParams::default(), &staged).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    let restored = match &p.record.enforced_before {
        Some(before) => {
            let mut before: DynamicObject = serde_json::from_value(before.clone())?;
            before.metadata.resource_version = obj.resource_version();
            enforced
                .replace(&p.name, &PostParams::default(), &before)
                .await?;
            "the enforced namesake restored"
        }
        None => {
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: obj.resource_version(),
                    uid: None,
                }),
                ..Default::default()
            };
            enforced.delete(&p.name, &dp).await?;
            "the enforced policy removed"
        }
    };
    let reason = format!("not confirmed in time: the staged policy is back, {restored}");
    tracing::warn!(target = %p.record.target, %reason, "promotion reverted");
    Ok(Some(reason))
}

/// The kind of the recorded staged object, in its Calico group.
fn staged_kind(staged: &DynamicObject) -> anyhow::Result<Kind> {
    let t = staged
        .types
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("the recorded staged object has no apiVersion/kind"))?;
    let group = if t.api_version.starts_with(super::names::CRD_GROUP) {
        CalicoGroup::CrdV1
    } else {
        CalicoGroup::V3
    };
    Ok(group.kind(&t.kind))
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
