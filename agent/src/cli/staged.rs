//! `--staged KIND/NAME` on the offline commands (`agent eval`, `agent matrix`):
//! the pending verdict with only the named staged policies promoted instead
//! of all of them, so one staged policy can be previewed alone.
//!
//! Done on the model, before the evaluator sees it: the staged policies not
//! named are dropped, so "pending" (every staged policy promoted) means
//! exactly the named ones. Nothing per policy is needed in the kernel.
use crate::flows::report::policy_name as display;
use crate::model::ir::{Model, PolicyId};
use crate::model::lint_matches::closest;
use crate::model::promote::{is_namespaced, staged_kind};

/// Parses `KIND/NAME` or, for namespaced kinds, `KIND/NAMESPACE/NAME`; KIND
/// is a staged kind or its short form (`sgnp`, `snp`, `sknp`).
pub fn parse(target: &str) -> Result<PolicyId, String> {
    let mut parts = target.splitn(3, '/');
    let (Some(kind), Some(a)) = (parts.next(), parts.next()) else {
        return Err(format!(
            "--staged {target}: expected KIND/NAME, e.g. sgnp/default-deny or snp/shop/api-allow"
        ));
    };
    let kind = staged_kind(kind).map_err(|e| format!("--staged {target}: {e}"))?;
    let (namespace, name) = match (is_namespaced(kind), parts.next()) {
        (true, Some(name)) => (Some(a.to_string()), name),
        (false, None) => (None, a),
        (true, None) => {
            return Err(format!(
                "--staged {target}: a namespaced kind needs KIND/NAMESPACE/NAME"
            ))
        }
        (false, Some(_)) => {
            return Err(format!("--staged {target}: a global kind takes KIND/NAME"))
        }
    };
    Ok(PolicyId {
        kind,
        namespace,
        name: name.to_string(),
    })
}

/// Keeps only the named staged policies (all of them when `targets` is
/// empty); an unknown name is an error with the closest staged policies.
pub fn select(model: &mut Model, targets: &[String]) -> Result<(), String> {
    if targets.is_empty() {
        return Ok(());
    }
    let wanted = resolve(model, targets)?;
    model
        .policies
        .retain(|p| !p.id.kind.is_staged() || wanted.contains(&p.id));
    Ok(())
}

/// The staged policies `targets` name; an unknown name is an error with the
/// closest staged policies.
pub fn resolve(model: &Model, targets: &[String]) -> Result<Vec<PolicyId>, String> {
    let wanted = targets
        .iter()
        .map(|t| parse(t))
        .collect::<Result<Vec<_>, _>>()?;
    let staged: Vec<String> = model
        .policies
        .iter()
        .filter(|p| p.id.kind.is_staged())
        .map(|p| display(&p.id))
        .collect();
    for id in &wanted {
        if !model.policies.iter().any(|p| &p.id == id) {
            let names: Vec<&str> = staged.iter().map(String::as_str).collect();
            let hint = match closest(&display(id), &names) {
                Some(c) => format!("; did you mean {c}?"),
                None if staged.is_empty() => "; the datastore has no staged policy".into(),
                None => format!("; staged policies: {}", staged.join(", ")),
            };
            return Err(format!("--staged: no staged policy {}{hint}", display(id)));
        }
    }
    Ok(wanted)
}

/// The staged policies whose promotion alone changes what `differs` tests
/// (the right blame for a pending verdict, issue: "who changes this flow?").
/// Empty when no single one does (only a combination changes it).
pub fn changed_by(model: &Model, differs: impl Fn(&Model) -> bool) -> Vec<String> {
    model
        .policies
        .iter()
        .filter(|p| p.id.kind.is_staged())
        .filter(|candidate| {
            let mut alone = model.clone();
            alone
                .policies
                .retain(|p| !p.id.kind.is_staged() || p.id == candidate.id);
            differs(&alone)
        })
        .map(|p| display(&p.id))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ir::PolicyKind;

    #[test]
    fn targets_parse_in_long_and_short_forms() {
        let id = parse("snp/shop/api-allow").unwrap();
        assert_eq!(id.kind, PolicyKind::StagedNetworkPolicy);
        assert_eq!(id.namespace.as_deref(), Some("shop"));
        assert_eq!(id.name, "api-allow");
        let id = parse("StagedGlobalNetworkPolicy/default-deny").unwrap();
        assert_eq!(
            (id.kind, id.namespace, id.name.as_str()),
            (PolicyKind::StagedGlobalNetworkPolicy, None, "default-deny")
        );
        for bad in ["sgnp", "gnp/x", "snp/x", "sgnp/a/b"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
