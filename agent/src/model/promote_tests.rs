use super::*;
use crate::model::ir::StagedAction;
use crate::model::load_paths;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

const STAGED: &str = "# Staged lockdown: keep this comment.
apiVersion: projectcalico.org/v3
kind: StagedGlobalNetworkPolicy
metadata:
  name: lockdown
spec:
  stagedAction: Set # inline comment
  selector: app == 'backend'
  types:
    - Ingress
---
# The other document stays.
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: other
spec:
  order: 5
";

const ENFORCED: &str = "apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: before
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: lockdown
spec:
  ingress:
    - action: Allow
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: after
";

fn policy_names(dir: &Path) -> Vec<String> {
    let l = load_paths(&[dir]);
    assert!(!l.has_errors(), "{:#?}", l.diagnostics);
    let mut v: Vec<String> = l.model.policies.iter().map(|p| p.id.to_string()).collect();
    v.sort();
    v
}

#[test]
fn promote_writes_through_symlinks_and_keeps_the_mode() {
    use std::os::unix::fs::PermissionsExt;
    // The files live in a hidden directory of the datastore, each linked
    // from its top (a mounted ConfigMap's layout); links out of the
    // datastore are not read at all (load::walk).
    let dir = tempfile::tempdir().unwrap();
    let real_dir = dir.path().join("..real");
    std::fs::create_dir(&real_dir).unwrap();
    let staged = write(&real_dir, "a.yaml", STAGED);
    let enforced = write(&real_dir, "b.yaml", ENFORCED);
    for f in [&staged, &enforced] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let link_a = dir.path().join("a.yaml");
    let link_b = dir.path().join("b.yaml");
    std::os::unix::fs::symlink(&staged, &link_a).unwrap();
    std::os::unix::fs::symlink(&enforced, &link_b).unwrap();
    promote(
        dir.path(),
        PolicyKind::StagedGlobalNetworkPolicy,
        "lockdown",
        None,
    )
    .unwrap();
    for (link, file) in [(&link_a, &staged), (&link_b, &enforced)] {
        let meta = std::fs::symlink_metadata(link).unwrap();
        assert!(meta.file_type().is_symlink(), "{} replaced", link.display());
        assert_eq!(std::fs::read_link(link).unwrap(), *file);
        let mode = std::fs::metadata(file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }
    let text = std::fs::read_to_string(&staged).unwrap();
    assert!(text.contains("kind: GlobalNetworkPolicy\n"), "{text}");
    assert!(!text.contains("StagedGlobalNetworkPolicy"), "{text}");
    assert!(!std::fs::read_to_string(&enforced)
        .unwrap()
        .contains("name: lockdown"));
    // No temporary file is left behind, in either directory.
    for (d, want) in [
        (real_dir.as_path(), &["a.yaml", "b.yaml"][..]),
        (dir.path(), &["..real", "a.yaml", "b.yaml"][..]),
    ] {
        let mut names: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, want);
    }
    assert_eq!(
        policy_names(dir.path()),
        ["gnp:after", "gnp:before", "gnp:lockdown", "gnp:other"]
    );
}

#[test]
fn set_rewrites_in_place_and_replaces_the_namesake() {
    let dir = tempfile::tempdir().unwrap();
    let staged = write(dir.path(), "a.yaml", STAGED);
    let enforced = write(dir.path(), "b.yaml", ENFORCED);
    let r = promote(
        dir.path(),
        PolicyKind::StagedGlobalNetworkPolicy,
        "lockdown",
        None,
    )
    .unwrap();
    assert_eq!(r.enforced, "GlobalNetworkPolicy/lockdown");
    assert_eq!(r.rewritten, Some((staged.clone(), 3)));
    assert_eq!(r.removed_enforced, Some(enforced.clone()));
    let text = std::fs::read_to_string(&staged).unwrap();
    assert_eq!(
        text,
        STAGED
            .replace(
                "kind: StagedGlobalNetworkPolicy",
                "kind: GlobalNetworkPolicy"
            )
            .replace("  stagedAction: Set # inline comment\n", "")
    );
    let text = std::fs::read_to_string(&enforced).unwrap();
    assert_eq!(
            text,
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: before\n---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: after\n"
        );
    assert_eq!(
        policy_names(dir.path()),
        ["gnp:after", "gnp:before", "gnp:lockdown", "gnp:other"]
    );
    let l = load_paths(&[dir.path()]);
    let p = l
        .model
        .policies
        .iter()
        .find(|p| p.id.name == "lockdown")
        .unwrap();
    assert!(p.ingress.is_empty(), "the staged spec won");
}

#[test]
fn delete_removes_both() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "a.yaml",
        &STAGED.replace("stagedAction: Set", "stagedAction: Delete"),
    );
    write(dir.path(), "b.yaml", ENFORCED);
    let r = promote(
        dir.path(),
        PolicyKind::StagedGlobalNetworkPolicy,
        "lockdown",
        None,
    )
    .unwrap();
    assert!(r.removed_staged && r.rewritten.is_none());
    assert_eq!(
        policy_names(dir.path()),
        ["gnp:after", "gnp:before", "gnp:other"]
    );
    let a = std::fs::read_to_string(dir.path().join("a.yaml")).unwrap();
    assert!(a.starts_with("# The other document stays.\n"), "{a}");
}

#[test]
fn kubernetes_policy_changes_api_version_and_namespace_matters() {
    let dir = tempfile::tempdir().unwrap();
    let sknp = |ns: &str| {
        format!(
                "apiVersion: projectcalico.org/v3\nkind: StagedKubernetesNetworkPolicy\nmetadata:\n  name: k\n  namespace: {ns}\nspec:\n  stagedAction: Learn\n  podSelector: {{}}\n"
            )
    };
    write(
        dir.path(),
        "s.yaml",
        &format!("{}---\n{}", sknp("a"), sknp("b")),
    );
    write(
            dir.path(),
            "k.yaml",
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: k\n  namespace: b\nspec:\n  podSelector: {}\n",
        );
    let r = promote(
        dir.path(),
        PolicyKind::StagedKubernetesNetworkPolicy,
        "k",
        Some("b"),
    )
    .unwrap();
    assert_eq!(r.enforced, "KubernetesNetworkPolicy/b/k");
    assert!(r.removed_enforced.is_some());
    assert_eq!(policy_names(dir.path()), ["knp:b/k", "sknp:a/k"]);
    let s = std::fs::read_to_string(dir.path().join("s.yaml")).unwrap();
    let promoted_b = sknp("b")
        .replace("projectcalico.org/v3", "networking.k8s.io/v1")
        .replace("StagedKubernetesNetworkPolicy", "NetworkPolicy")
        .replace("  stagedAction: Learn\n", "");
    assert_eq!(s, format!("{}---\n{promoted_b}", sknp("a")));
    let l = load_paths(&[dir.path()]);
    let staged = l
        .model
        .policies
        .iter()
        .find(|p| p.id.kind.is_staged())
        .unwrap();
    assert_eq!(staged.staged_action, Some(StagedAction::Learn));
}

#[test]
fn errors_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "a.yaml",
        &STAGED.replace("stagedAction: Set", "stagedAction: Ignore"),
    );
    let err = promote(
        dir.path(),
        PolicyKind::StagedGlobalNetworkPolicy,
        "missing",
        None,
    )
    .unwrap_err();
    assert!(matches!(err, PromoteError::NotFound(..)), "{err}");
    let err = promote(
        dir.path(),
        PolicyKind::StagedGlobalNetworkPolicy,
        "lockdown",
        None,
    )
    .unwrap_err();
    assert!(matches!(err, PromoteError::Ignored(..)), "{err}");
    assert!(matches!(
        staged_kind("GlobalNetworkPolicy"),
        Err(PromoteError::NotStagedKind(_))
    ));
    assert_eq!(staged_kind("snp").unwrap(), PolicyKind::StagedNetworkPolicy);
    // Nothing was written.
    let a = std::fs::read_to_string(dir.path().join("a.yaml")).unwrap();
    assert!(a.contains("StagedGlobalNetworkPolicy"));
}

#[test]
fn an_unknown_staged_action_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let text = STAGED.replace("stagedAction: Set", "stagedAction: Sett");
    write(dir.path(), "a.yaml", &text);
    let err = promote(
        dir.path(),
        PolicyKind::StagedGlobalNetworkPolicy,
        "lockdown",
        None,
    )
    .unwrap_err();
    assert!(matches!(err, PromoteError::BadStagedAction(..)), "{err}");
    assert!(err.to_string().contains("`Sett`"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("a.yaml")).unwrap(),
        text
    );
}

#[test]
fn one_plan_per_staged_action() {
    use super::PromotionPlan as P;
    for (action, plan) in [
        (None, P::Enforce),
        (Some("Set"), P::Enforce),
        (Some("Learn"), P::Enforce),
        (Some("Delete"), P::DeleteEnforced),
    ] {
        assert_eq!(P::of(action, "x").unwrap(), plan, "{action:?}");
    }
    assert!(matches!(
        P::of(Some("Ignore"), "x"),
        Err(PromoteError::Ignored(_))
    ));
}
