//! `agent promote` against the cluster.
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{json, Value};

use super::confirm;
use super::discovery::resolve_calico_api;
use super::names::{model_name, tiered_name, CalicoApi, CalicoGroup, Kind, V3_GROUP};
use super::watch::INITIAL_SYNC;
use crate::model::ir::PolicyKind;
use crate::model::promote::PromotionPlan;

/// `agent promote` against the cluster, as [`PromotionPlan::of`] decides: the
/// staged policy `kind`/`name` becomes its enforced kind (server-side apply,
/// field manager `agent-promote`) and the staged object is deleted;
/// `stagedAction: Delete` deletes the enforced namesake and the staged object;
/// `Ignore` is refused. Returns what was done.
///
/// Calico's kinds are read from and written to the group `api` resolves to (the
/// one `agent run --calico-api` reads). In crd.projectcalico.org/v1 `name` is the
/// policy's v3 name (as `agent status` shows it) or its stored name; the
/// enforced object is stored under the enforced namesake's stored name if there
/// is one, else under the staged object's (so `default.<name>` stays tiered).
///
/// With `confirmation`, the promotion is recorded ([`super::confirm`]): on the
/// enforced object in the same apply, or (`Delete`) on the staged object, which
/// then stays until confirmed; an agent reverts it unless it is confirmed in
/// time and its checks pass.
pub async fn promote(
    client: Client,
    api: CalicoApi,
    kind: PolicyKind,
    name: &str,
    namespace: Option<&str>,
    confirmation: Option<confirm::Ask>,
) -> anyhow::Result<String> {
    let group = resolve_calico_api(&client, api, INITIAL_SYNC).await?.group;
    let (staged, enforced) = staged_and_enforced(group, kind)?;
    let ns = staged.namespaced.then(|| namespace.unwrap_or("default"));
    let scope = Scope { client, ns };
    let (staged_api, enforced_api) = (scope.api(&staged), scope.api(&enforced));
    let obj = find_policy(&staged_api, &staged, name)
        .await?
        .ok_or_else(|| anyhow::anyhow!("{} not found", scope.describe(&staged, name)))?;
    let staged_name = obj.name_any();
    let v3_name = model_name(&staged, &obj);
    let namesake = find_policy(&enforced_api, &enforced, &v3_name).await?;
    refuse_pending(&scope, &enforced, &v3_name, namesake.as_ref())?;
    refuse_pending(&scope, &staged, &staged_name, Some(&obj))?;
    let mut spec = obj.data.get("spec").cloned().unwrap_or_else(|| json!({}));
    let described = scope.describe(&staged, &staged_name);
    let action = spec.get("stagedAction").and_then(Value::as_str);
    let plan = PromotionPlan::of(action, &described)?;
    if let Some(m) = spec.as_object_mut() {
        m.remove("stagedAction");
    }
    let record = |ask: &confirm::Ask| {
        let rec = confirm::record(described.clone(), ask, plan, &obj, namesake.as_ref());
        serde_json::to_string(&rec)
    };
    let done = match plan {
        PromotionPlan::DeleteEnforced => {
            if let Some(ask) = &confirmation {
                // The record first, then the deletion it undoes.
                record_on_staged(&staged_api, &obj, record(ask)?).await?;
            }
            let done = match namesake {
                Some(o) => {
                    let n = o.name_any();
                    enforced_api.delete(&n, &DeleteParams::default()).await?;
                    format!("deleted {} (staged Delete)", scope.describe(&enforced, &n))
                }
                None => format!(
                    "deleted {} (staged Delete); it did not exist",
                    scope.describe(&enforced, &v3_name)
                ),
            };
            if confirmation.is_some() {
                return Ok(format!(
                    "{done}; the staged policy stays until the deletion is confirmed"
                ));
            }
            done
        }
        PromotionPlan::Enforce => {
            let target = namesake
                .as_ref()
                .map_or(staged_name.clone(), |o| o.name_any());
            let mut doc = enforced_document(&enforced, &target, ns, &obj, spec);
            if let Some(ask) = &confirmation {
                doc["metadata"]["annotations"] = json!({confirm::ANNOTATION: record(ask)?});
            }
            enforced_api
                .patch(
                    &target,
                    &PatchParams::apply("agent-promote").force(),
                    &Patch::Apply(&doc),
                )
                .await?;
            format!("promoted to {}", scope.describe(&enforced, &target))
        }
    };
    staged_api
        .delete(&staged_name, &DeleteParams::default())
        .await?;
    Ok(format!("{done}; removed the staged policy"))
}

/// A staged Delete's pending record goes on the staged object (which stays
/// until confirmed), on the version read: a concurrent edit fails it.
async fn record_on_staged(
    staged_api: &Api<DynamicObject>,
    obj: &DynamicObject,
    record: String,
) -> anyhow::Result<()> {
    let patch = json!({"metadata": {
        "resourceVersion": obj.resource_version(),
        "annotations": {confirm::ANNOTATION: record},
    }});
    staged_api
        .patch(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(())
}

/// A promotion over one still awaiting confirmation would lose what the
/// pending one's revert restores: refused.
fn refuse_pending(
    scope: &Scope<'_>,
    enforced: &Kind,
    v3_name: &str,
    namesake: Option<&DynamicObject>,
) -> anyhow::Result<()> {
    match namesake.map(confirm::record_of).transpose()?.flatten() {
        Some(pending) => anyhow::bail!(
            "{} already awaits confirmation (promoted from {}): `agent confirm` it or let it \
             revert first",
            scope.describe(enforced, v3_name),
            pending.target
        ),
        None => Ok(()),
    }
}

/// `agent confirm` against the cluster: confirms the pending promotion of the
/// staged policy `kind`/`name` (the record removed from its enforced object, or
/// for a staged Delete the staged object deleted). False when there is none
/// (confirmed already, reverted, or never asked for).
pub async fn confirm_promotion(
    client: Client,
    api: CalicoApi,
    kind: PolicyKind,
    name: &str,
    namespace: Option<&str>,
) -> anyhow::Result<bool> {
    let group = resolve_calico_api(&client, api, INITIAL_SYNC).await?.group;
    let (staged, enforced) = staged_and_enforced(group, kind)?;
    let ns = staged.namespaced.then(|| namespace.unwrap_or("default"));
    let scope = Scope { client, ns };
    // `Set`: the record is on the enforced object; `Delete`: on the staged one.
    for carrier in [enforced, staged] {
        if let Some(obj) = find_policy(&scope.api(&carrier), &carrier, name).await? {
            if confirm::confirm(&scope.client, &carrier, &obj).await? {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// A staged kind and the kind it is promoted to, in `group`.
fn staged_and_enforced(group: CalicoGroup, kind: PolicyKind) -> anyhow::Result<(Kind, Kind)> {
    use PolicyKind as P;
    Ok(match kind {
        P::StagedGlobalNetworkPolicy => (
            group.kind("StagedGlobalNetworkPolicy"),
            group.kind("GlobalNetworkPolicy"),
        ),
        P::StagedNetworkPolicy => (
            group.kind("StagedNetworkPolicy"),
            group.kind("NetworkPolicy"),
        ),
        P::StagedKubernetesNetworkPolicy => (
            group.kind("StagedKubernetesNetworkPolicy"),
            group.kind("networking.k8s.io/NetworkPolicy"),
        ),
        other => anyhow::bail!("{} is not a staged kind", other.as_str()),
    })
}

/// Where a promotion reads and writes: the client and the namespace (`None`:
/// cluster-scoped kinds).
struct Scope<'a> {
    client: Client,
    ns: Option<&'a str>,
}

impl Scope<'_> {
    fn api(&self, k: &Kind) -> Api<DynamicObject> {
        match self.ns {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &k.api_resource()),
            None => Api::all_with(self.client.clone(), &k.api_resource()),
        }
    }

    /// `Kind[.group] [ns/]name`, the group only when it is not core or projectcalico.org.
    fn describe(&self, k: &Kind, name: &str) -> String {
        let group = if k.group.is_empty() || k.group == V3_GROUP {
            String::new()
        } else {
            format!(".{}", k.group)
        };
        match self.ns {
            Some(ns) => format!("{}{group} {ns}/{name}", k.kind),
            None => format!("{}{group} {name}", k.kind),
        }
    }
}

/// The enforced object applied for the staged `obj`: stored as `target`, with
/// the staged object's labels and `spec` (its `stagedAction` removed).
fn enforced_document(
    enforced: &Kind,
    target: &str,
    ns: Option<&str>,
    obj: &DynamicObject,
    spec: Value,
) -> Value {
    let mut meta = json!({"name": target});
    if let Some(ns) = ns {
        meta["namespace"] = json!(ns);
    }
    if let Some(l) = obj.metadata.labels.as_ref().filter(|l| !l.is_empty()) {
        meta["labels"] = json!(l);
    }
    json!({
        "apiVersion": enforced.api_version(),
        "kind": enforced.kind,
        "metadata": meta,
        "spec": spec,
    })
}

/// The policy of `kind` whose model name (or stored name) is `name`: in
/// crd.projectcalico.org/v1 a default-tier policy `x` may be stored as
/// `default.x` or `x` (see [`v3_policy_name`]); elsewhere the name is the name.
async fn find_policy(
    api: &Api<DynamicObject>,
    kind: &Kind,
    name: &str,
) -> anyhow::Result<Option<DynamicObject>> {
    if !tiered_name(kind) {
        return Ok(api.get_opt(name).await?);
    }
    for stored in [format!("default.{name}"), name.to_string()] {
        if let Some(o) = api.get_opt(&stored).await? {
            if model_name(kind, &o) == name || stored == name {
                return Ok(Some(o));
            }
        }
    }
    Ok(None)
}
