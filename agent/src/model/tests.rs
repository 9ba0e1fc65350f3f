//! Loading, validation and conversion tests over YAML text.
use std::path::PathBuf;

use super::ir::*;
use super::*;
use crate::selector::{self, Selector};

fn load(text: &str) -> Loaded {
    load::load_sources(&[(PathBuf::from("t.yaml"), text.to_string())], Vec::new())
}

fn errors(l: &Loaded) -> Vec<&Diagnostic> {
    l.diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .collect()
}

/// The only error of a single-document text: (line, field, message).
fn only_error(text: &str) -> (usize, String, String) {
    let l = load(text);
    let e = errors(&l);
    assert_eq!(e.len(), 1, "expected one error, got {:#?}", l.diagnostics);
    (e[0].line, e[0].field.clone(), e[0].message.clone())
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");

#[test]
fn seed_examples_load() {
    let files = [
        "00-endpoints.yaml",
        "10-database-allow-from-backend.yaml",
        "20-backend-lockdown-staged.yaml",
    ]
    .map(|f| PathBuf::from(EXAMPLES).join(f));
    let l = load_paths(&files);
    assert!(l.diagnostics.is_empty(), "{:#?}", l.diagnostics);
    let m = &l.model;
    assert_eq!(m.endpoints.len(), 3);
    let enforced: Vec<_> = m.policies.iter().filter(|p| !p.id.kind.is_staged()).collect();
    let staged: Vec<_> = m.policies.iter().filter(|p| p.id.kind.is_staged()).collect();
    assert_eq!(enforced.len(), 1);
    assert_eq!(staged.len(), 1);
    assert_eq!(enforced[0].id.to_string(), "gnp:/database-allow-from-backend");
    assert_eq!(staged[0].staged_action, Some(StagedAction::Set));
    let db = m.endpoints.iter().find(|e| e.name == "database").unwrap();
    assert_eq!(db.interface.as_deref(), Some("calidemodb"));
    assert_eq!(db.ips.len(), 2);
    assert_eq!(db.profiles, vec!["kns.prod".to_string()]);
    assert_eq!(db.named_ports[0].port, 8080);
    assert_eq!(db.labels.get("pcns.env").map(String::as_str), Some("prod"));
    assert!(enforced[0].selector.evaluate(&db.labels));
    let rule = &enforced[0].ingress[0];
    assert_eq!(rule.protocol, Some(proto::TCP));
    let backend = m.endpoints.iter().find(|e| e.name == "backend").unwrap();
    assert!(rule.source.selector.as_ref().unwrap().evaluate(&backend.labels));
    assert!(!rule.source.selector.as_ref().unwrap().evaluate(&db.labels));
    // kns.prod is synthesized: allow everything both ways.
    let kns = m.profiles.iter().find(|p| p.name == "kns.prod").unwrap();
    assert_eq!(kns.ingress[0].action, Action::Allow);
    assert_eq!(kns.egress[0].action, Action::Allow);
    assert_eq!(m.tiers.len(), 3);
}

#[test]
fn examples_directory_loads_recursively() {
    let l = load_paths(&[EXAMPLES]);
    assert!(l.diagnostics.is_empty(), "{:#?}", l.diagnostics);
    assert_eq!(l.model.endpoints.len(), 3);
    // The safe-mode subdirectory adds the allow-everything policy.
    let names: Vec<_> = l.model.policies.iter().map(|p| p.id.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "database-allow-from-backend",
            "backend-lockdown-staged",
            "zzz-final-allow-everything"
        ]
    );
}
