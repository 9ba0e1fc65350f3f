//! Policy resources: typed YAML (projectcalico.org/v3, networking.k8s.io/v1, v1),
//! checked with Calico's rules and lowered to the normalised [`ir::Model`].
//!
//! The stages: [`yaml`] (documents with the line of every field) -> [`resources`]
//! (serde types, unknown fields rejected) -> [`lower`] (per document, in one
//! pass: Calico's validator.go rules and its conversion to the model's terms)
//! -> [`load`] (cross-document checks) -> [`assemble`] (the model: labels and
//! profiles that come from other documents) -> [`lint`] (warnings). [`promote`]
//! edits staged policies in place.
//!
//! A datastore can describe a cluster: [`list`] unpacks `kind: List`, [`pod`]
//! turns v1 Pods into WorkloadEndpoints (the Kubernetes datastore's code),
//! [`crd`] reads crd.projectcalico.org/v1 documents as projectcalico.org/v3,
//! [`node`] keeps only this node's workload endpoints enforced (`agent run
//! --node`), and [`names`] is how users name endpoints (`namespace/pod`).
//!
//! Where this differs from, or decides beyond, Calico:
//! - A policy whose `tier` names no Tier (and no built-in tier) is an error and
//!   is left out, as Calico's API server refuses it.
//! - A Kubernetes NetworkPolicy keeps its own name in [`ir::PolicyId`] (kind
//!   `KubernetesNetworkPolicy`, trace code `knp`), not Calico's `knp.default.` name;
//!   it gets Calico's order 1000 in tier `default`.
//! - `Pass` in a profile is a warning (it acts as Deny there); Calico accepts it.
//! - `http` rule matches are rejected: this agent has no L7 proxy.
//! - `services` rule matches resolve to the Service's EndpointSlices (or v1
//!   Endpoints) documents, see [`services`]; a `services` match in a
//!   cluster-scoped policy must name the namespace.
//! - Policies with `types` lacking a direction that has rules get a warning
//!   (Calico ignores those rules silently).
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub mod assemble;
pub mod crd;
mod cross_check;
pub mod fields;
pub mod files;
pub mod ir;
pub mod lint;
pub mod lint_matches;
pub mod list;
pub mod load;
pub mod lower;
pub mod names;
pub mod node;
pub mod pod;
pub mod promote;
mod protocol;
pub mod resources;
pub mod services;
pub mod yaml;

pub use lint::lint;
pub use lint_matches::lint_matches;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

/// A problem found in the input: where (file, 1-based line, resource, field),
/// what is wrong and what is accepted.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: PathBuf,
    pub line: usize,
    /// `Kind/namespace/name` or `Kind/name`; empty when the document has no identity yet.
    pub resource: String,
    /// Dotted path, e.g. `spec.ingress[0].source.selector`; empty for the whole document.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        let file = self.file.display();
        let at = (&self.resource[..], &self.field[..]);
        write_diagnostic(f, &file, self.line, sev, at, &self.message)
    }
}

/// `file:line: severity: [resource] [field]: message`, the one format of a
/// diagnostic wherever it is printed (`agent check`, `agent status`); without
/// resource and field, `file:line: severity: message`.
pub fn write_diagnostic(
    f: &mut fmt::Formatter<'_>,
    file: &dyn fmt::Display,
    line: usize,
    severity: &str,
    (resource, field): (&str, &str),
    message: &str,
) -> fmt::Result {
    write!(f, "{file}:{line}: {severity}:")?;
    let at: Vec<&str> = [resource, field]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect();
    if !at.is_empty() {
        write!(f, " {}:", at.join(" "))?;
    }
    write!(f, " {message}")
}

/// The result of loading a set of files: the model built from every document
/// that validated, and a diagnostic for every one that did not (those are left
/// out; the rest still load).
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    pub model: ir::Model,
    pub diagnostics: Vec<Diagnostic>,
    /// Where each loaded policy is defined (for diagnostics about policies, e.g. [`lint`]).
    pub policy_sources: HashMap<ir::PolicyId, SourceLocation>,
    /// The documents the model was made from (files only: what the next load
    /// keeps, by file, where it is broken; see [`load::finish_keeping`]).
    pub documents: Vec<load::Document>,
}

/// A document's place in the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceLocation {
    pub file: PathBuf,
    /// 1-based line of the document's first field.
    pub line: usize,
}

impl Loaded {
    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }
}

/// Loads YAML files and directories (recursively, `*.yaml` / `*.yml`, sorted),
/// validates every document with Calico's rules and builds the model from the
/// ones that pass. Never fails as a whole: problems are in `diagnostics`.
pub fn load_paths<P: AsRef<Path>>(paths: &[P]) -> Loaded {
    load::load_paths(paths)
}

#[cfg(test)]
mod services_tests;
#[cfg(test)]
mod tests;
