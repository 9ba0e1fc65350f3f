//! Checks between documents: duplicates (the last good state's owner wins),
//! tiers and profiles named but not defined.
use std::collections::BTreeSet;

use super::load::{DocKey, Document, PreviousFiles};
use super::lower;
use super::resources::{Resource, ResourceKind};
use super::{Diagnostic, Severity};

/// Checks between documents: duplicates, tiers that do not exist, profiles
/// that do not exist. Returns the documents that survive, in order. Works in
/// place (a document is large, and the Kubernetes datastore has one per pod).
///
/// Of documents with the same identity the one from the file in `previous_files`
/// (where the last good state had it) wins, else the first in reading order:
/// a new file never takes over a resource another file already defines.
pub(super) fn cross_check(
    mut docs: Vec<Document>,
    diags: &mut Vec<Diagnostic>,
    previous_files: &PreviousFiles,
) -> Vec<Document> {
    // Valid documents are loaded unless a check below drops them; invalid ones
    // get the checks too (reported, never loaded); duplicates only their report.
    let mut load: Vec<bool> = docs.iter().map(|d| d.is_valid()).collect();
    let checked = duplicates(&docs, diags, previous_files, &mut load);
    let defined = |kind: ResourceKind| -> BTreeSet<&str> {
        docs.iter()
            .zip(&load)
            .filter(|(d, l)| **l && d.kind == kind)
            .map(|(d, _)| d.name())
            .collect()
    };
    let (tiers, profiles) = (defined(ResourceKind::Tier), defined(ResourceKind::Profile));
    let dropped: Vec<bool> = docs
        .iter()
        .zip(&checked)
        .map(|(doc, checked)| *checked && !references(doc, &tiers, &profiles, diags))
        .collect();
    let mut keep = load.into_iter().zip(dropped).map(|(l, d)| l && !d);
    docs.retain(|_| keep.next().unwrap_or(false));
    docs
}

/// Reports every valid document whose identity another one (the owner's, else
/// the first) already has, and unmarks it in `load`. Returns which documents
/// get the other checks (all but those duplicates).
fn duplicates(
    docs: &[Document],
    diags: &mut Vec<Diagnostic>,
    previous_files: &PreviousFiles,
    load: &mut [bool],
) -> Vec<bool> {
    // The winner of each identity: its owner's document, else the first.
    let mut winner: foldhash::HashMap<DocKey, usize> = Default::default();
    winner.reserve(docs.len());
    for (i, doc) in docs.iter().enumerate().filter(|(_, d)| d.is_valid()) {
        let key = doc.key();
        let owned = previous_files.get(&key).is_some_and(|f| **f == *doc.file);
        match winner.get(&key) {
            Some(&w)
                if !owned
                    || previous_files
                        .get(&key)
                        .is_some_and(|f| **f == *docs[w].file) => {}
            _ => {
                winner.insert(key, i);
            }
        }
    }
    let mut checked = vec![true; docs.len()];
    for (i, doc) in docs.iter().enumerate().filter(|(_, d)| d.is_valid()) {
        let w = winner[&doc.key()];
        if w != i {
            let (file, line) = (&docs[w].file, docs[w].line);
            let message = format!(
                "duplicate resource: {} is already defined at {}:{line}",
                doc.id,
                file.display()
            );
            diags.push(doc.diagnostic(Severity::Error, "metadata.name", message));
            load[i] = false;
            checked[i] = false;
        }
    }
    checked
}

/// Checks what a document names in others (its tier, its profiles); false
/// when it must be left out.
fn references(
    doc: &Document,
    tiers: &BTreeSet<&str>,
    profiles: &BTreeSet<&str>,
    diags: &mut Vec<Diagnostic>,
) -> bool {
    let tier = match &*doc.resource {
        Resource::GlobalNetworkPolicy(o)
        | Resource::StagedGlobalNetworkPolicy(o)
        | Resource::NetworkPolicy(o)
        | Resource::StagedNetworkPolicy(o) => o.spec.tier.as_deref(),
        _ => None,
    };
    // DECISION: like Calico's API server, a policy in a tier that does not
    // exist is rejected (error, left out), not silently given a default order.
    if let Some(t) = tier.filter(|t| !tiers.contains(t) && !lower::is_builtin_tier(t)) {
        diags.push(doc.diagnostic(
            Severity::Error,
            "spec.tier",
            format!(
                "tier `{t}` does not exist; define a Tier named `{t}` or use one of \
                 kube-admin, default, kube-baseline"
            ),
        ));
        return false;
    }
    let endpoint_profiles = match &*doc.resource {
        Resource::WorkloadEndpoint(o) => {
            if o.spec.ip_networks.is_empty() {
                diags.push(doc.diagnostic(
                    Severity::Warning,
                    "spec.ipNetworks",
                    "a WorkloadEndpoint without ipNetworks is left out (as Calico does) until it has an address".into(),
                ));
            }
            &o.spec.profiles
        }
        Resource::HostEndpoint(o) => &o.spec.profiles,
        _ => return true,
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
    true
}
