//! One document -> its part of the model, checked with Calico's rules
//! (libcalico-go/lib/validator/v3, and Kubernetes' for networking.k8s.io/v1
//! NetworkPolicy) and converted in the same pass (Calico's update processors:
//! updateprocessors/rules.go, k8s/conversion/conversion.go).
//!
//! Every field is read once: a function that checks a field also returns what
//! it means (`Option<ir::T>`, None when it is wrong) and records each problem,
//! with its field path, in [`Issues`]. A document with an error lowers to
//! nothing: there is no default that stands in for a value that failed to
//! parse (an action that is not one is never Allow, a protocol that is not one
//! never "any protocol", a selector that does not parse never `all()`).
//!
//! What needs other documents (namespace and profile labels, `kns.` profiles,
//! tiers that exist) is done by [`super::load`] and [`super::assemble`].
use super::fields;
use super::ir::{self, Labels, LABEL_NAMESPACE};
use super::resources::*;
use super::Severity;

mod endpoint;
mod k8s;
mod policy;
mod rule;
mod service;

pub use service::SERVICE_NAME_LABEL;

pub use endpoint::Workload;
pub use policy::{builtin_tiers, default_types, is_builtin_tier, DEFAULT_TIER, K8S_POLICY_ORDER};

pub const MAX_RULES_PER_DIRECTION: usize = 1024;
pub const MAX_SELECTOR_LEN: usize = 1024;
/// Nets of one rule's `nets`/`notNets` list.
pub const MAX_NETS: usize = 256;
/// Nets of one (Global)NetworkSet. Calico has no cap (threat feeds hold tens of
/// thousands); this is a sanity bound far above that, so a runaway generator is
/// refused with a clear error instead of exhausting memory. The compiler's
/// `PEERS_*` capacity (`limits::MAX_PEER_PREFIXES`) bounds what can be enforced.
pub const MAX_SET_NETS: usize = 1_000_000;
pub const MAX_PORTS: usize = 50;

/// Namespace of a namespaced object (Kubernetes defaults it to `default`).
pub fn namespace_of(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("default")
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issue {
    pub severity: Severity,
    /// Dotted path from the document root, e.g. `spec.ingress[0].action`.
    pub field: String,
    pub message: String,
}

/// The problems found so far in one document.
#[derive(Default)]
pub(super) struct Issues(Vec<Issue>);

impl Issues {
    fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Issue {
            severity: Severity::Error,
            field: field.into(),
            message: message.into(),
        });
    }
    fn warning(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Issue {
            severity: Severity::Warning,
            field: field.into(),
            message: message.into(),
        });
    }
    fn check(&mut self, field: impl Into<String>, r: Result<(), String>) {
        if let Err(m) = r {
            self.error(field, m);
        }
    }
    /// The value, or None with the error recorded at `field`.
    fn ok<T>(&mut self, field: impl Into<String>, r: Result<T, String>) -> Option<T> {
        r.map_err(|m| self.error(field, m)).ok()
    }
    fn has_errors(&self) -> bool {
        self.0.iter().any(|i| i.severity == Severity::Error)
    }
}

/// Lowers each item of a list (every item is checked, also after a bad one);
/// None when any item is wrong.
fn each<T, U>(items: &[T], mut lower: impl FnMut(usize, &T) -> Option<U>) -> Option<Vec<U>> {
    let lowered: Vec<Option<U>> = items.iter().enumerate().map(|(i, t)| lower(i, t)).collect();
    lowered.into_iter().collect()
}

/// What one valid document contributes to the model.
#[derive(Clone, Debug, PartialEq)]
pub enum Lowered {
    Policy(ir::Policy),
    Tier(ir::Tier),
    Profile(ir::Profile),
    Workload(Workload),
    /// A host endpoint; its labels are still only its own (profiles add theirs).
    Host(ir::Endpoint),
    /// A network set; a namespaced one's labels are still only its own.
    NetworkSet(ir::NetworkSet),
    Namespace {
        name: String,
        labels: Labels,
    },
    ServiceAccount {
        namespace: String,
        name: String,
        labels: Labels,
    },
    /// A Service (its frontends; no backends yet).
    Service(ir::Service),
    /// The backends an EndpointSlice or Endpoints object gives a Service.
    Backends {
        service: ir::ServiceRef,
        sets: Vec<ir::BackendSet>,
        /// From an EndpointSlice (else v1 Endpoints: used only when the
        /// Service has no slice).
        slice: bool,
    },
}

/// Checks and converts one document: what it contributes to the model (None
/// when it has an error) and every problem found.
pub fn lower(resource: &Resource) -> (Option<Lowered>, Vec<Issue>) {
    let mut v = Issues::default();
    metadata(&mut v, resource);
    let lowered = spec(&mut v, resource);
    if lowered.is_none() && !v.has_errors() {
        // A lowering that gives up must say why; never load a part of a document.
        v.error(
            "",
            "the document could not be converted (a bug: please report it)",
        );
    }
    let lowered = lowered.filter(|_| !v.has_errors());
    (lowered, v.0)
}

fn metadata(v: &mut Issues, resource: &Resource) {
    let meta = resource.metadata();
    let name_check = match resource {
        Resource::Tier(_) | Resource::Namespace(_) => fields::check_label_name("name", &meta.name),
        Resource::GlobalNetworkPolicy(_) | Resource::StagedGlobalNetworkPolicy(_) => {
            fields::check_global_policy_name(&meta.name)
        }
        Resource::NetworkPolicy(_) | Resource::StagedNetworkPolicy(_) => {
            fields::check_namespaced_policy_name(&meta.name)
        }
        _ => fields::check_name(&meta.name),
    };
    if meta.name.is_empty() {
        v.error("metadata.name", "name is required");
    } else {
        v.check("metadata.name", name_check);
    }
    match (&meta.namespace, resource.kind().is_namespaced()) {
        (Some(ns), true) => v.check(
            "metadata.namespace",
            fields::check_label_name("namespace", ns),
        ),
        (Some(_), false) => v.error(
            "metadata.namespace",
            "this kind is not namespaced; remove metadata.namespace",
        ),
        (None, _) => {}
    }
    check_labels(v, "metadata.labels", &meta.labels);
    annotations(v, "metadata.annotations", &meta.annotations);
}

fn spec(v: &mut Issues, resource: &Resource) -> Option<Lowered> {
    use ir::PolicyKind as P;
    let meta = resource.metadata();
    match resource {
        Resource::GlobalNetworkPolicy(o) => policy::calico(v, o, P::GlobalNetworkPolicy),
        Resource::StagedGlobalNetworkPolicy(o) => {
            policy::calico(v, o, P::StagedGlobalNetworkPolicy)
        }
        Resource::NetworkPolicy(o) => policy::calico(v, o, P::NetworkPolicy),
        Resource::StagedNetworkPolicy(o) => policy::calico(v, o, P::StagedNetworkPolicy),
        Resource::KubernetesNetworkPolicy(o) => k8s::policy(v, o, P::KubernetesNetworkPolicy),
        Resource::StagedKubernetesNetworkPolicy(o) => {
            k8s::policy(v, o, P::StagedKubernetesNetworkPolicy)
        }
        Resource::Tier(o) => policy::tier(v, &meta.name, &o.spec).map(Lowered::Tier),
        Resource::Profile(o) => policy::profile(v, &meta.name, &o.spec).map(Lowered::Profile),
        Resource::WorkloadEndpoint(o) => endpoint::workload(v, o).map(Lowered::Workload),
        Resource::HostEndpoint(o) => endpoint::host(v, o).map(Lowered::Host),
        Resource::GlobalNetworkSet(o) => endpoint::network_set(v, o, None).map(Lowered::NetworkSet),
        Resource::NetworkSet(o) => {
            let ns = namespace_of(&o.metadata);
            endpoint::network_set(v, o, Some(ns)).map(Lowered::NetworkSet)
        }
        Resource::Namespace(o) => Some(Lowered::Namespace {
            name: meta.name.clone(),
            labels: o.metadata.labels.clone(),
        }),
        Resource::ServiceAccount(o) => Some(Lowered::ServiceAccount {
            namespace: namespace_of(&o.metadata).into(),
            name: meta.name.clone(),
            labels: o.metadata.labels.clone(),
        }),
        Resource::Service(o) => service::service(v, o).map(Lowered::Service),
        Resource::EndpointSlice(o) => {
            let (service, sets) = service::endpoint_slice(v, o)?;
            Some(Lowered::Backends {
                service,
                sets,
                slice: true,
            })
        }
        Resource::Endpoints(o) => {
            let (service, sets) = service::endpoints(v, o)?;
            Some(Lowered::Backends {
                service,
                sets,
                slice: false,
            })
        }
    }
}

/// Calico: annotation keys are qualified names (checked lowercased), 256 KiB in all.
fn annotations(v: &mut Issues, path: &str, annotations: &StringMap) {
    let mut total = 0;
    for (k, val) in annotations {
        if let Err(m) = fields::check_label(&k.to_lowercase(), "") {
            v.error(
                format!("{path}.{k}"),
                m.replace("label key", "annotation key"),
            );
        }
        total += k.len() + val.len();
    }
    if total > 256 * 1024 {
        v.error(
            path,
            format!("annotations total {total} bytes; at most 262144 are accepted"),
        );
    }
}

fn check_labels(v: &mut Issues, path: &str, labels: &StringMap) {
    for (k, val) in labels {
        v.check(format!("{path}.{k}"), fields::check_label(k, val));
    }
}

/// A network set may not claim the namespace label.
fn no_namespace_label(v: &mut Issues, labels: &StringMap) {
    if labels.contains_key(LABEL_NAMESPACE) {
        v.error(
            format!("metadata.labels.{LABEL_NAMESPACE}"),
            "projectcalico.org/namespace is not a valid label name here; the namespace sets it",
        );
    }
}
