//! `agent check`'s warnings about names that match nothing: the mistakes that
//! make a (staged) policy silently do nothing — a label-key typo in a
//! selector, a named port no endpoint declares, a namespace nobody uses, a
//! `stagedAction: Delete` without a namesake.
//!
//! Offline only (`agent check`): each policy's selectors are evaluated against
//! every endpoint, which is fine for a directory and too slow to repeat on
//! every reload of a large cluster.
use std::collections::BTreeSet;

use super::ir::{Direction, Endpoint, EntityRule, Model, Policy, PortMatch, Rule, StagedAction};
use super::lint::policy_warning;
use super::load::resource_id;
use super::{Diagnostic, Loaded};
use crate::selector::{Node, Selector};

/// The warnings of the module docs, one per problem, with file and line of
/// the policy. No endpoints loaded at all: nothing to match against, no
/// selector warnings (the namespace and namesake checks still run).
pub fn lint_matches(loaded: &Loaded) -> Vec<Diagnostic> {
    let model = &loaded.model;
    let keys: BTreeSet<&str> = model
        .endpoints
        .iter()
        .flat_map(|e| e.labels.keys())
        .chain(model.network_sets.iter().flat_map(|n| n.labels.keys()))
        .map(String::as_str)
        .collect();
    let mut out = Vec::new();
    for p in &model.policies {
        let mut warn = |field: String, message: String| {
            out.push(policy_warning(loaded, &p.id, field, message))
        };
        if !model.endpoints.is_empty() {
            selectors(model, p, &keys, &mut warn);
            named_ports(model, p, &mut warn);
        }
        namespace(model, p, &mut warn);
        namesake(model, p, &mut warn);
    }
    out
}

fn selectors(
    model: &Model,
    p: &Policy,
    keys: &BTreeSet<&str>,
    warn: &mut impl FnMut(String, String),
) {
    if !model
        .endpoints
        .iter()
        .any(|e| p.selector.evaluate(&e.labels))
    {
        warn(
            "spec.selector".into(),
            format!(
                "selects none of the {} endpoints loaded, so the policy applies nowhere{}",
                model.endpoints.len(),
                unknown_keys(&p.selector, keys)
            ),
        );
    }
    for (field, rule) in rules(p) {
        for (side, entity) in [("source", &rule.source), ("destination", &rule.destination)] {
            let Some(s) = &entity.selector else { continue };
            let matches = model.endpoints.iter().any(|e| s.evaluate(&e.labels))
                || model.network_sets.iter().any(|n| s.evaluate(&n.labels));
            if !matches {
                warn(
                    format!("{field}.{side}.selector"),
                    format!(
                        "matches no endpoint and no network set, so the rule never matches{}",
                        unknown_keys(s, keys)
                    ),
                );
            }
        }
    }
}

/// `spec.ingress[i]` / `spec.egress[i]` and each rule (Log rules included, as
/// they are numbered in the YAML).
fn rules(p: &Policy) -> impl Iterator<Item = (String, &Rule)> {
    [Direction::Ingress, Direction::Egress]
        .into_iter()
        .flat_map(move |d| {
            let dir = match d {
                Direction::Ingress => "ingress",
                Direction::Egress => "egress",
            };
            p.rules(d)
                .iter()
                .enumerate()
                .map(move |(i, r)| (format!("spec.{dir}[{i}]"), r))
        })
}

/// `, and no endpoint or network set has the label key `ap` (did you mean
/// `app`?)` for keys the selector requires that nothing carries.
fn unknown_keys(s: &Selector, known: &BTreeSet<&str>) -> String {
    let mut required = Vec::new();
    required_keys(s.root(), &mut required);
    let unknown: Vec<String> = required
        .into_iter()
        .filter(|k| !known.contains(k))
        .map(|k| match closest(k, known) {
            Some(c) => format!("`{k}` (did you mean `{c}`?)"),
            None => format!("`{k}`"),
        })
        .collect();
    if unknown.is_empty() {
        String::new()
    } else {
        format!(
            "; no endpoint or network set has the label key {}",
            unknown.join(", ")
        )
    }
}

/// Keys a selector needs present to match (negations and `!=` match absence).
fn required_keys<'a>(n: &'a Node, out: &mut Vec<&'a str>) {
    match n {
        Node::Has(k)
        | Node::Equals(k, _)
        | Node::Contains(k, _)
        | Node::StartsWith(k, _)
        | Node::EndsWith(k, _)
        | Node::In(k, _) => out.push(k),
        Node::And(all) | Node::Or(all) => all.iter().for_each(|n| required_keys(n, out)),
        Node::All | Node::Global | Node::NotEquals(..) | Node::NotIn(..) | Node::Not(_) => {}
    }
}

/// The known value closest to `name` when it is plausibly a typo of it.
pub fn closest<'a>(name: &str, known: impl IntoIterator<Item = &'a &'a str>) -> Option<&'a str> {
    known
        .into_iter()
        .map(|k| (strsim::levenshtein(name, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| k)
}

/// A named port in a rule that no endpoint it could apply to declares.
fn named_ports(model: &Model, p: &Policy, warn: &mut impl FnMut(String, String)) {
    for (field, rule) in rules(p) {
        let ingress = field.starts_with("spec.ingress");
        for (side, entity) in [("source", &rule.source), ("destination", &rule.destination)] {
            // The port belongs to the endpoint on that side: the policy's own
            // endpoint when that side is local, else the rule's peers.
            let local = (side == "destination") == ingress;
            let scope = if local {
                Some(&p.selector)
            } else {
                entity.selector.as_ref()
            };
            let candidates: Vec<&Endpoint> = model
                .endpoints
                .iter()
                .filter(|e| scope.is_none_or(|s| s.evaluate(&e.labels)))
                .map(|e| &**e)
                .collect();
            for name in named(entity) {
                if !candidates
                    .iter()
                    .any(|e| e.named_ports.iter().any(|np| np.name == name))
                {
                    warn(
                        format!("{field}.{side}.ports"),
                        format!(
                            "named port `{name}` is declared by none of the {} endpoints it \
                             could refer to, so the rule never matches",
                            candidates.len()
                        ),
                    );
                }
            }
        }
    }
}

fn named(e: &EntityRule) -> impl Iterator<Item = &str> {
    e.ports.iter().chain(&e.not_ports).filter_map(|p| match p {
        PortMatch::Named(n) => Some(n.as_str()),
        PortMatch::Range(_) => None,
    })
}

/// A namespaced policy in a namespace with no Namespace document and no
/// endpoints: usually a typo, or a namespaced kind that landed in `default`.
fn namespace(model: &Model, p: &Policy, warn: &mut impl FnMut(String, String)) {
    let Some(ns) = &p.id.namespace else { return };
    let known = model.namespaces.contains(ns)
        || model
            .endpoints
            .iter()
            .any(|e| e.namespace.as_deref() == Some(ns));
    if known {
        return;
    }
    let mut names: BTreeSet<&str> = model.namespaces.iter().map(String::as_str).collect();
    names.extend(
        model
            .endpoints
            .iter()
            .filter_map(|e| e.namespace.as_deref()),
    );
    let hint = match closest(ns, &names) {
        Some(c) => format!(" (did you mean `{c}`?)"),
        None if ns == "default" => {
            " (a namespaced kind without metadata.namespace lands in `default`)".into()
        }
        None => String::new(),
    };
    warn(
        "metadata.namespace".into(),
        format!("namespace `{ns}` has no Namespace document and no endpoints{hint}"),
    );
}

/// `stagedAction: Delete` of a policy that does not exist: nothing to delete.
fn namesake(model: &Model, p: &Policy, warn: &mut impl FnMut(String, String)) {
    if p.staged_action != Some(StagedAction::Delete) {
        return;
    }
    let target = p.id.promoted();
    if !model.policies.iter().any(|q| q.id == target) {
        warn(
            "spec.stagedAction".into(),
            format!(
                "Delete of {}, which is not loaded: promoting it changes nothing",
                resource_id(
                    target.kind.as_str(),
                    target.namespace.as_deref(),
                    &target.name
                )
            ),
        );
    }
}
