//! `agent run --node NAME` on a files datastore: the datastore describes the
//! cluster, this agent enforces only its node's workload endpoints.
//!
//! A WorkloadEndpoint whose `spec.node` names another node is a peer only (its
//! labels and addresses still match selectors): its interface is dropped, so
//! nothing is attached or compiled for it, as the Kubernetes datastore does with
//! other nodes' pods. One without `spec.node` is this node's, as before nodes
//! were known. Host endpoints keep theirs: a HostEndpoint's `node` is not used
//! to choose (the lockout checks read every host endpoint). The offline
//! commands (eval, matrix) do not call this: there every endpoint is policed.
use std::path::PathBuf;

use std::sync::Arc;

use super::ir::{Endpoint, EndpointKind};
use super::load::resource_id;
use super::{Diagnostic, Loaded, Severity};

/// Drops the interfaces of other nodes' workload endpoints; warns about this
/// node's endpoints that have no interface (they cannot be enforced).
pub fn keep_this_node(loaded: &mut Loaded, node: &str) {
    for e in &mut loaded.model.endpoints {
        if e.kind != EndpointKind::Workload {
            continue;
        }
        if elsewhere(e, node) {
            as_peer(e);
        } else if e.interface.is_none() {
            loaded.diagnostics.push(Diagnostic {
                severity: Severity::Warning,
                // The model does not keep where an endpoint was defined.
                file: PathBuf::from(format!("--node {node}")),
                line: 1,
                resource: resource_id("WorkloadEndpoint", e.namespace.as_deref(), &e.name),
                field: "spec.interfaceName".into(),
                message: format!(
                    "{} runs on this node ({node}) but has no interfaceName: it is not enforced",
                    e.key()
                ),
            });
        }
    }
}

/// Leaves `e` without an interface (a peer). Copies a shared record only when
/// it has one: the files datastore's cache makes other nodes' endpoints as
/// peers already (`assemble::Cache::on_node`), and they stay shared.
pub fn as_peer(e: &mut Arc<Endpoint>) {
    if e.interface.is_some() {
        Arc::make_mut(e).interface = None;
    }
}

/// A workload endpoint of another node: a peer only, whatever interface its
/// record names.
pub fn elsewhere(e: &Endpoint, node: &str) -> bool {
    e.kind == EndpointKind::Workload && e.node.as_deref().is_some_and(|n| n != node)
}
