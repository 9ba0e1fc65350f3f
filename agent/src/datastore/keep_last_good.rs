//! Keeping the last good state of rejected documents.
use std::collections::HashSet;
use std::path::Path;

use crate::model::ir::{EndpointKind, Model, PolicyKind};
use crate::model::load::resource_id;
use crate::model::{Loaded, Severity};

/// Keeps the last good state of documents that are now rejected: a policy or
/// endpoint that `previous` had and `loaded` lost because its document has an
/// error (named by the diagnostic's resource, or, for a document that could not
/// be read far enough to name it, by its file) is carried over, so that a
/// broken edit never loosens what is enforced. Returns what was carried over.
pub fn keep_last_good(loaded: &mut Loaded, previous: &Loaded) -> Vec<String> {
    let errors: Vec<_> = loaded
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .collect();
    if errors.is_empty() {
        return Vec::new();
    }
    let named: HashSet<&str> = errors
        .iter()
        .filter(|d| !d.resource.is_empty())
        .map(|d| d.resource.as_str())
        .collect();
    let unnamed_files: HashSet<&Path> = errors
        .iter()
        .filter(|d| d.resource.is_empty())
        .map(|d| d.file.as_path())
        .collect();
    let mut kept = Vec::new();
    let model: &mut Model = &mut loaded.model;
    for p in &previous.model.policies {
        if model.policies.iter().any(|q| q.id == p.id) {
            continue;
        }
        let ns = p.id.namespace.as_deref();
        let mut ids = vec![resource_id(p.id.kind.as_str(), ns, &p.id.name)];
        if p.id.kind == PolicyKind::KubernetesNetworkPolicy {
            ids.push(resource_id("NetworkPolicy", ns, &p.id.name));
        }
        let by_name = ids.iter().any(|id| named.contains(id.as_str()));
        let by_file = previous
            .policy_sources
            .get(&p.id)
            .is_some_and(|s| unnamed_files.contains(s.file.as_path()));
        if by_name || by_file {
            kept.push(ids[0].clone());
            model.policies.push(p.clone());
            if let Some(src) = previous.policy_sources.get(&p.id) {
                loaded.policy_sources.insert(p.id.clone(), src.clone());
            }
        }
    }
    for e in &previous.model.endpoints {
        let kind = match e.kind {
            EndpointKind::Workload => "WorkloadEndpoint",
            EndpointKind::Host => "HostEndpoint",
        };
        let id = resource_id(kind, e.namespace.as_deref(), &e.name);
        if named.contains(id.as_str())
            && !model
                .endpoints
                .iter()
                .any(|f| f.kind == e.kind && f.key() == e.key())
        {
            kept.push(id);
            model.endpoints.push(e.clone());
        }
    }
    kept
}
