//! Health and status: the report behind `agent status` and `/metrics`, and
//! readiness (`/readyz`).
use agent_common::limits;

use super::interfaces::adopted_endpoints;
use super::protocol::{
    ConntrackStatus, DiagnosticOut, EndpointStatus, FlowStats, LastGood, PolicyCounts,
    ServiceStatus, Status, TableStatus,
};
use super::state::{lock, Inner, Shared};
use crate::datastore::kubernetes::KubeSnapshot;
use crate::flows::View;

/// `/readyz`: the datastore's first sync is complete and a compile of it is
/// installed in the kernel; otherwise what is missing.
pub(super) fn readiness(shared: &Shared) -> Result<(), String> {
    let unlisted: Vec<String> = lock(&shared.kube)
        .as_ref()
        .map(KubeSnapshot::unsynced)
        .unwrap_or_default();
    if !unlisted.is_empty() {
        return Err(format!("not listed yet: {}", unlisted.join(", ")));
    }
    let inner = lock(&shared.inner);
    if !inner.enforced.installed_once {
        return Err(match &inner.health.last_error {
            Some(e) => format!("no policy tables installed yet: {e}"),
            None => "no policy tables installed yet".into(),
        });
    }
    Ok(())
}

/// The report behind `agent status`.
pub(crate) fn status(shared: &Shared) -> Status {
    let view = lock(&shared.view).clone();
    let (flows_tracked, flow_events) = {
        let f = lock(&shared.flows);
        (f.len(), f.events)
    };
    let mut datastore_problems = lock(&shared.kube)
        .as_ref()
        .map(KubeSnapshot::problems)
        .unwrap_or_default();
    let inner = lock(&shared.inner);
    let health = &inner.health;
    datastore_problems.extend(health.file_problems.iter().cloned());
    // Until this agent installs its own tables, an earlier agent's pinned
    // tables and links police the interfaces: say so, and list them.
    let adopted_only = !inner.enforced.installed_once && inner.dp.adopted();
    let endpoints = endpoint_statuses(&inner, adopted_only);
    let last_error = health.last_error.clone().map(|e| {
        if adopted_only {
            format!(
                "{e}; an earlier agent's pinned tables stay enforced on {} interfaces \
                 (listed; this agent's policy is not applied)",
                endpoints.len()
            )
        } else {
            e
        }
    });
    let counters = match inner.dp.counters() {
        Ok(c) => c.named().map(|(k, v)| (k.to_string(), v)).collect(),
        Err(_) => Default::default(),
    };
    Status {
        datastore: health.datastore.clone(),
        started: crate::flows::rfc3339(shared.started_ns),
        last_reload: crate::flows::rfc3339(health.last_reload_ns),
        reloads: health.reloads,
        last_error,
        generation: inner.enforced.generation,
        epoch: inner.enforced.epoch,
        endpoints,
        policies: policy_counts(&inner),
        tables: table_status(&inner, &view),
        counters,
        conntrack: ConntrackStatus {
            entries: health.conntrack_live,
            max: limits::MAX_CONNTRACK as usize,
            swept: health.conntrack_swept,
        },
        flows: FlowStats {
            tracked: flows_tracked,
            events: flow_events,
            subscribers: shared.tx.receiver_count(),
        },
        kept_last_good: health.kept.clone(),
        diagnostics: health.diagnostics.iter().map(DiagnosticOut::from).collect(),
        pinning: health.pinning.clone(),
        lockout_warnings: health.lockout_warnings.clone(),
        datastore_problems,
        promotions: lock(&shared.confirmations).lines(),
        services: service_status(&inner),
    }
}

/// The installed endpoints, those left out, and (`adopted_only`: before this
/// agent's first install) those an earlier agent's pinned links police.
fn endpoint_statuses(inner: &Inner, adopted_only: bool) -> Vec<EndpointStatus> {
    let kind = |host: bool| if host { "host" } else { "workload" }.to_string();
    let installed = &inner.enforced;
    let mut endpoints: Vec<EndpointStatus> = installed
        .endpoints
        .iter()
        .map(|e| {
            let m = installed.good.model.endpoints.get(e.endpoint_index);
            let a = inner.interfaces.attached.get(&e.interface);
            let frozen = installed.frozen.iter().find(|f| f.interface == e.interface);
            let interface_error = inner.interfaces.errors.get(&e.interface).cloned();
            EndpointStatus {
                endpoint: m.map(|m| m.key()).unwrap_or_default(),
                kind: kind(e.host),
                interface: e.interface.clone(),
                id: e.id,
                ifindex: a.map(|a| a.ifindex),
                attached: a.is_some(),
                has_staged: e.has_staged,
                error: interface_error.or_else(|| frozen.map(|f| f.error.clone())),
                last_good: frozen.map(|f| LastGood {
                    generation: f.since_generation,
                    since_ns: f.since_ns,
                }),
            }
        })
        .collect();
    endpoints.extend(installed.left_out.iter().map(|l| EndpointStatus {
        endpoint: l.endpoint.clone(),
        kind: kind(l.host),
        interface: l.interface.clone(),
        id: 0,
        ifindex: None,
        attached: false,
        has_staged: false,
        error: Some(l.reason.clone()),
        last_good: None,
    }));
    if adopted_only {
        endpoints.extend(adopted_endpoints(&inner.dp));
    }
    endpoints
}

fn policy_counts(inner: &Inner) -> PolicyCounts {
    let model = &inner.enforced.good.model;
    let staged = model
        .policies
        .iter()
        .filter(|p| p.id.kind.is_staged())
        .count();
    PolicyCounts {
        enforced: model.policies.len() - staged,
        staged,
        tiers: model.tiers.len(),
    }
}

fn table_status(inner: &Inner, view: &View) -> TableStatus {
    TableStatus {
        peer_prefixes: inner.enforced.peer_prefixes,
        peer_prefixes_max: limits::MAX_PEER_PREFIXES as usize,
        peer_classes: view.compiled.as_ref().map_or(0, |c| c.stats.classes),
        rule_entries: view.compiled.as_ref().map_or(0, |c| c.stats.rule_entries),
        rule_keys: inner.enforced.rule_keys,
        rule_keys_max: limits::MAX_RULE_ENTRIES as usize,
        endpoints_max: limits::MAX_ENDPOINTS as usize,
    }
}

fn service_status(inner: &Inner) -> ServiceStatus {
    let post_nat = &inner.interfaces.post_nat;
    let mut errors: Vec<String> = post_nat
        .errors
        .iter()
        .map(|(n, e)| format!("{n}: {e}"))
        .collect();
    errors.sort();
    ServiceStatus {
        frontends: post_nat
            .frontends
            .iter()
            .flatten()
            .map(|n| n.to_string())
            .collect(),
        post_nat: post_nat
            .attached()
            .into_iter()
            .map(|(n, i)| format!("{n}={i}"))
            .collect(),
        errors,
    }
}
