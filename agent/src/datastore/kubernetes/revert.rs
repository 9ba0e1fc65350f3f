//! What the agent that wins a pending promotion's Lease does
//! ([`super::confirm`] decides): take the Lease, revert or confirm, release it.
//!
//! A revert puts the cluster back exactly as before the promotion:
//! - `Set`: the staged object is created again, then the enforced namesake
//!   restored (replace, with the resourceVersion read) or the enforced object
//!   deleted (that resourceVersion as precondition), which also removes the
//!   record;
//! - `Delete`: the deleted enforced namesake is created again, then the record
//!   removed from the staged object (which stayed; same precondition).
//!
//! Each step is idempotent (an object already there is left), so a holder
//! dying half-way leaves work the next one finishes.
use std::time::SystemTime;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{
    Api, DeleteParams, DynamicObject, ObjectMeta, Patch, PatchParams, PostParams, Preconditions,
};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::confirm::{
    api, confirm, lease_name, record_of, unix_ms, Decision, Pending, Promoted, ANNOTATION,
    LEASE_DURATION,
};
use super::names::{CalicoGroup, Kind};
use crate::rollout::Outcome;

/// Takes `p`'s Lease as `holder` and carries out `decision`. `None` when
/// another agent holds the Lease or the record is gone (decided meanwhile).
pub(super) async fn carry_out(
    client: &Client,
    lease_ns: &str,
    holder: &str,
    p: &Pending,
    decision: Decision,
) -> anyhow::Result<Option<Outcome>> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), lease_ns);
    let lease = lease_name(&p.record.target);
    if !take_lease(&leases, &lease, holder).await? {
        return Ok(None);
    }
    let done = act(client, p, &decision).await;
    leases.delete(&lease, &DeleteParams::default()).await?;
    let Some((action, reason)) = done? else {
        return Ok(None);
    };
    match action {
        "reverted" => tracing::warn!(target = %p.record.target, %reason, "promotion reverted"),
        _ => tracing::info!(target = %p.record.target, %reason, "promotion confirmed"),
    }
    Ok(Some(Outcome {
        target: p.record.target.clone(),
        action,
        reason,
        at_unix_ms: unix_ms(SystemTime::now()),
    }))
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
        match leases
            .delete(name, &with_version(held.resource_version()))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(false)
}

fn with_version(resource_version: Option<String>) -> DeleteParams {
    DeleteParams {
        preconditions: Some(Preconditions {
            resource_version,
            uid: None,
        }),
        ..Default::default()
    }
}

/// The object carrying `p`'s record, if it still carries that record.
async fn still_pending(client: &Client, p: &Pending) -> anyhow::Result<Option<DynamicObject>> {
    let carrier = api(client, &p.carrier, p.namespace.as_deref());
    let Some(obj) = carrier.get_opt(&p.name).await? else {
        return Ok(None);
    };
    Ok((record_of(&obj)?.as_ref() == Some(&p.record)).then_some(obj))
}

/// Confirms (as `agent confirm` does) or reverts; `None` when the record is
/// gone (confirmed, or decided by another agent meanwhile).
async fn act(
    client: &Client,
    p: &Pending,
    decision: &Decision,
) -> anyhow::Result<Option<(&'static str, String)>> {
    let Some(obj) = still_pending(client, p).await? else {
        return Ok(None);
    };
    Ok(Some(match decision {
        Decision::Confirm(why) => {
            confirm(client, &p.carrier, &obj).await?;
            ("confirmed", why.clone())
        }
        Decision::Revert(why) => {
            let restored = revert(client, p, &obj).await?;
            ("reverted", format!("{why}: {restored}"))
        }
    }))
}

/// Creates `manifest` (a recorded object) unless it exists already.
async fn create_again(client: &Client, manifest: &serde_json::Value) -> anyhow::Result<()> {
    let obj: DynamicObject = serde_json::from_value(manifest.clone())?;
    let kind = kind_of(&obj)?;
    match api(client, &kind, obj.metadata.namespace.as_deref())
        .create(&PostParams::default(), &obj)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Puts everything back as before the promotion (module docs), `obj` being
/// the record's carrier as read; says what it restored.
async fn revert(client: &Client, p: &Pending, obj: &DynamicObject) -> anyhow::Result<&'static str> {
    let carrier = api(client, &p.carrier, p.namespace.as_deref());
    let restored = match p.record.action {
        Promoted::Set => {
            create_again(client, &p.record.staged).await?;
            match &p.record.enforced_before {
                Some(before) => {
                    let mut before: DynamicObject = serde_json::from_value(before.clone())?;
                    before.metadata.resource_version = obj.resource_version();
                    carrier
                        .replace(&p.name, &PostParams::default(), &before)
                        .await?;
                    "the staged policy is back, the enforced namesake restored"
                }
                None => {
                    carrier
                        .delete(&p.name, &with_version(obj.resource_version()))
                        .await?;
                    "the staged policy is back, the enforced policy removed"
                }
            }
        }
        Promoted::Delete => {
            if let Some(before) = &p.record.enforced_before {
                create_again(client, before).await?;
            }
            let patch = json!({"metadata": {
                "resourceVersion": obj.resource_version(),
                "annotations": {ANNOTATION: null},
            }});
            carrier
                .patch(&p.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            "the deleted enforced policy is back, the staged Delete kept"
        }
    };
    Ok(restored)
}

/// The kind of a recorded object, from its apiVersion and kind.
fn kind_of(obj: &DynamicObject) -> anyhow::Result<Kind> {
    let t = obj
        .types
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("a recorded object has no apiVersion/kind"))?;
    let group = t.api_version.split_once('/').map_or("", |(g, _)| g);
    [CalicoGroup::V3, CalicoGroup::CrdV1]
        .iter()
        .flat_map(|g| g.kinds())
        .find(|k| k.group == group && k.kind == t.kind)
        .copied()
        .ok_or_else(|| {
            anyhow::anyhow!(
                "a recorded object is a {} {}: not a policy kind this agent restores",
                t.api_version,
                t.kind
            )
        })
}
