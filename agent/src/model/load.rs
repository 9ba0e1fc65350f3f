//! Files -> documents -> typed, validated resources -> model. A bad document
//! becomes a diagnostic and is left out; the others still load.
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use super::convert::{self, namespace_of};
use super::ir::PolicyKind;
use super::resources::{Resource, ResourceKind};
use super::validate::{self, Issue};
use super::yaml::{self, line_of};
use super::{Diagnostic, Loaded, Severity, SourceLocation};

/// A document that parsed and validated, with where it came from.
#[derive(Clone, Debug)]
pub struct Document {
    pub file: PathBuf,
    /// Line of the document's first field.
    pub line: usize,
    pub kind: ResourceKind,
    /// `Kind/namespace/name` or `Kind/name`.
    pub id: String,
    pub resource: Resource,
    pub lines: HashMap<String, usize>,
    /// False when validation found an error: the document is only kept to
    /// report cross-document problems too, and never reaches the model.
    pub valid: bool,
}

impl Document {
    fn diagnostic(&self, severity: Severity, field: &str, message: String) -> Diagnostic {
        Diagnostic {
            severity,
            file: self.file.clone(),
            line: line_of(&self.lines, field),
            resource: self.id.clone(),
            field: field.into(),
            message,
        }
    }

    /// The namespace used in identities (None for cluster-scoped kinds).
    pub fn namespace(&self) -> Option<&str> {
        self.kind
            .is_namespaced()
            .then(|| namespace_of(self.resource.metadata()))
    }

    pub fn name(&self) -> &str {
        &self.resource.metadata().name
    }
}

pub fn resource_id(kind: &str, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{kind}/{ns}/{name}"),
        None => format!("{kind}/{name}"),
    }
}

/// Every `.yaml`/`.yml` file under `dir`, recursively, sorted by path.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
    Ok(())
}

/// The files named by `paths` (directories expanded), each once, in order.
pub fn collect_files<P: AsRef<Path>>(paths: &[P], diags: &mut Vec<Diagnostic>) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut seen = BTreeSet::new();
    for p in paths {
        let p = p.as_ref();
        let mut found = Vec::new();
        if p.is_dir() {
            if let Err(e) = walk(p, &mut found) {
                diags.push(file_error(p, format!("cannot read directory: {e}")));
            }
            found.sort();
        } else {
            found.push(p.to_path_buf());
        }
        for f in found {
            if seen.insert(f.clone()) {
                files.push(f);
            }
        }
    }
    files
}

fn file_error(file: &Path, message: String) -> Diagnostic {
    Diagnostic {
        severity: Severity::Error,
        file: file.to_path_buf(),
        line: 1,
        resource: String::new(),
        field: String::new(),
        message,
    }
}

/// Parses and validates every document of one file's text.
pub fn parse_file(file: &Path, text: &str, diags: &mut Vec<Diagnostic>) -> Vec<Document> {
    let mut docs = Vec::new();
    for chunk in yaml::split_documents(text) {
        match parse_document(file, &chunk, diags) {
            Ok(Some(doc)) => docs.push(doc),
            Ok(None) => {}
            Err(d) => diags.push(d),
        }
    }
    docs
}

fn parse_document(
    file: &Path,
    chunk: &yaml::Chunk,
    diags: &mut Vec<Diagnostic>,
) -> Result<Option<Document>, Diagnostic> {
    let node = match yaml::parse_chunk(chunk) {
        Ok(Some(node)) => node,
        Ok(None) => return Ok(None),
        Err(e) => {
            return Err(Diagnostic {
                line: e.line,
                ..file_error(file, e.message)
            })
        }
    };
    let lines = node.line_index();
    let at = |field: &str, resource: &str, message: String| Diagnostic {
        severity: Severity::Error,
        file: file.to_path_buf(),
        line: line_of(&lines, field),
        resource: resource.into(),
        field: field.into(),
        message,
    };
    if !matches!(node.value, yaml::Value::Map(_)) {
        return Err(at(
            "",
            "",
            "a document must be a mapping with apiVersion, kind, metadata and spec".into(),
        ));
    }
    let text_field = |key: &str| node.get(key).and_then(|n| n.as_str()).unwrap_or("");
    let (api_version, kind_str) = (text_field("apiVersion"), text_field("kind"));
    for (field, value) in [("apiVersion", api_version), ("kind", kind_str)] {
        if value.is_empty() {
            return Err(at(field, "", format!("`{field}` is required (a string)")));
        }
    }
    let kind = ResourceKind::from_type(api_version, kind_str).map_err(|m| at("kind", "", m))?;
    let meta = node.get("metadata");
    let meta_str = |key: &str| meta.and_then(|m| m.get(key)).and_then(|n| n.as_str());
    let name = meta_str("name").unwrap_or("");
    let namespace = kind
        .is_namespaced()
        .then(|| meta_str("namespace").unwrap_or("default"));
    let id = resource_id(kind.name(), namespace, name);

    let resource = kind.parse(node.to_json()).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." { String::new() } else { field };
        let mut message = e.inner().to_string();
        if message.contains("untagged enum IntOrString") {
            message = "expected an integer or a string".into();
        }
        at(&field, &id, message)
    })?;
    let doc = Document {
        file: file.to_path_buf(),
        line: node.line,
        kind,
        id,
        resource,
        lines,
        valid: true,
    };
    let mut doc = doc;
    let issues = validate::validate(&doc.resource);
    let failed = issues.iter().any(|i| i.severity == Severity::Error);
    for Issue {
        severity,
        field,
        message,
    } in issues
    {
        diags.push(doc.diagnostic(severity, &field, message));
    }
    doc.valid = !failed;
    Ok(Some(doc))
}

/// Checks between documents: duplicates, tiers that do not exist, profiles
/// that do not exist. Returns the documents that survive.
fn cross_check(docs: Vec<Document>, diags: &mut Vec<Diagnostic>) -> Vec<Document> {
    let mut seen: HashMap<(ResourceKind, Option<String>, String), (PathBuf, usize)> =
        HashMap::new();
    let mut unique = Vec::new();
    let (valid, invalid): (Vec<Document>, Vec<Document>) = docs.into_iter().partition(|d| d.valid);
    for doc in valid {
        let key = (
            doc.kind,
            doc.namespace().map(str::to_string),
            doc.name().to_string(),
        );
        if let Some((file, line)) = seen.get(&key) {
            let message = format!(
                "duplicate resource: {} is already defined at {}:{line}",
                doc.id,
                file.display()
            );
            diags.push(doc.diagnostic(Severity::Error, "metadata.name", message));
            continue;
        }
        seen.insert(key, (doc.file.clone(), doc.line));
        unique.push(doc);
    }

    let tiers: BTreeSet<&str> = unique
        .iter()
        .filter(|d| d.kind == ResourceKind::Tier)
        .map(|d| d.name())
        .collect();
    let profiles: BTreeSet<&str> = unique
        .iter()
        .filter(|d| d.kind == ResourceKind::Profile)
        .map(|d| d.name())
        .collect();
    let mut drop = vec![false; unique.len()];
    // Invalid documents get these checks too (reported, never loaded).
    for (i, doc) in unique.iter().chain(&invalid).enumerate() {
        let tier = match &doc.resource {
            Resource::GlobalNetworkPolicy(o) | Resource::StagedGlobalNetworkPolicy(o) => {
                o.spec.tier.as_deref()
            }
            Resource::NetworkPolicy(o) | Resource::StagedNetworkPolicy(o) => o.spec.tier.as_deref(),
            _ => None,
        };
        // DECISION: like Calico's API server, a policy in a tier that does not
        // exist is rejected (error, left out), not silently given a default order.
        if let Some(t) = tier {
            if !tiers.contains(t) && !convert::is_builtin_tier(t) {
                diags.push(doc.diagnostic(
                    Severity::Error,
                    "spec.tier",
                    format!(
                        "tier `{t}` does not exist; define a Tier named `{t}` or use one of \
                         kube-admin, default, kube-baseline"
                    ),
                ));
                if let Some(d) = drop.get_mut(i) {
                    *d = true;
                }
            }
        }
        if let Resource::WorkloadEndpoint(o) = &doc.resource {
            if o.spec.ip_networks.is_empty() {
                diags.push(doc.diagnostic(
                    Severity::Warning,
                    "spec.ipNetworks",
                    "a WorkloadEndpoint without ipNetworks is left out (as Calico does) until it has an address".into(),
                ));
            }
        }
        let endpoint_profiles = match &doc.resource {
            Resource::WorkloadEndpoint(o) => &o.spec.profiles,
            Resource::HostEndpoint(o) => &o.spec.profiles,
            _ => continue,
        };
        for (j, p) in endpoint_profiles.iter().enumerate() {
            if !profiles.contains(p.as_str()) && !p.starts_with("kns.") {
                diags.push(doc.diagnostic(
                    Severity::Warning,
                    &format!("spec.profiles[{j}]"),
                    format!("profile `{p}` is not defined; it is skipped (no rules)"),
                ));
            }
        }
    }
    unique
        .into_iter()
        .zip(drop)
        .filter_map(|(d, dropped)| (!dropped).then_some(d))
        .collect()
}

/// Loads in-memory sources (file name, text), as [`super::load_paths`] does files.
pub fn load_sources(sources: &[(PathBuf, String)]) -> Loaded {
    load_with(sources, Vec::new())
}

/// Loads `sources` after `diagnostics` already found (e.g. unreadable files).
fn load_with(sources: &[(PathBuf, String)], mut diagnostics: Vec<Diagnostic>) -> Loaded {
    let mut docs = Vec::new();
    for (file, text) in sources {
        docs.extend(parse_file(file, text, &mut diagnostics));
    }
    let docs = cross_check(docs, &mut diagnostics);
    // Report in reading order: by file (as given), then line.
    let file_order: HashMap<PathBuf, usize> = sources
        .iter()
        .enumerate()
        .map(|(i, (f, _))| (f.clone(), i))
        .collect();
    diagnostics.sort_by_key(|d| (file_order.get(&d.file).copied().unwrap_or(0), d.line));
    let resources: Vec<Resource> = docs.iter().map(|d| d.resource.clone()).collect();
    let model = convert::to_model(&resources);
    let mut policy_sources = HashMap::new();
    for (doc, policy) in docs
        .iter()
        .filter(|d| policy_kind(d.kind).is_some())
        .zip(&model.policies)
    {
        policy_sources.insert(
            policy.id.clone(),
            SourceLocation {
                file: doc.file.clone(),
                line: doc.line,
            },
        );
    }
    Loaded {
        model,
        diagnostics,
        policy_sources,
    }
}

pub fn policy_kind(kind: ResourceKind) -> Option<PolicyKind> {
    Some(match kind {
        ResourceKind::GlobalNetworkPolicy => PolicyKind::GlobalNetworkPolicy,
        ResourceKind::StagedGlobalNetworkPolicy => PolicyKind::StagedGlobalNetworkPolicy,
        ResourceKind::NetworkPolicy => PolicyKind::NetworkPolicy,
        ResourceKind::StagedNetworkPolicy => PolicyKind::StagedNetworkPolicy,
        ResourceKind::KubernetesNetworkPolicy => PolicyKind::KubernetesNetworkPolicy,
        ResourceKind::StagedKubernetesNetworkPolicy => PolicyKind::StagedKubernetesNetworkPolicy,
        _ => return None,
    })
}

pub fn load_paths<P: AsRef<Path>>(paths: &[P]) -> Loaded {
    let mut diags = Vec::new();
    let files = collect_files(paths, &mut diags);
    let mut sources = Vec::new();
    for f in files {
        match std::fs::read_to_string(&f) {
            Ok(text) => sources.push((f, text)),
            Err(e) => diags.push(file_error(&f, format!("cannot read file: {e}"))),
        }
    }
    load_with(&sources, diags)
}
