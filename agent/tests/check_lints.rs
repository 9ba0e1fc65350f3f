//! `agent check` warns about the mistakes that make a (staged) policy match
//! nothing, with file and line; exit 0 with warnings, 1 with `--strict`.
use std::process::{Command, Output};

const SHOP: &str = r#"apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: db, namespace: shop, labels: {app: db}}
spec:
  interfaceName: calidb
  ipNetworks: [10.0.0.3/32]
  ports: [{name: postgres, protocol: TCP, port: 5432}]
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: api, namespace: shop, labels: {app: api}}
spec: {interfaceName: caliapi, ipNetworks: [10.0.0.2/32]}
"#;

const MISTAKES: &str = r#"apiVersion: projectcalico.org/v3
kind: StagedNetworkPolicy
metadata: {name: db-typo, namespace: shop}
spec:
  selector: ap == 'db'
  ingress:
    - action: Allow
      protocol: TCP
      source: {selector: app == 'apii'}
      destination: {ports: [postgress]}
---
apiVersion: projectcalico.org/v3
kind: StagedNetworkPolicy
metadata: {name: lost, namespace: shopp}
spec:
  selector: app == 'db'
---
apiVersion: projectcalico.org/v3
kind: StagedGlobalNetworkPolicy
metadata: {name: nothing-to-delete}
spec:
  stagedAction: Delete
"#;

fn check(files: &[(&str, &str)], extra: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    Command::new(env!("CARGO_BIN_EXE_agent"))
        .arg("check")
        .args(extra)
        .arg(dir.path())
        .env("RUST_LOG", "off")
        .output()
        .expect("run agent check")
}

#[test]
fn selectors_ports_namespaces_and_namesakes_that_match_nothing_are_warnings() {
    let out = check(&[("shop.yaml", SHOP), ("mistakes.yaml", MISTAKES)], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "warnings only: {out:?}");
    let line_of = |needle: &str| {
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"))
            .to_string()
    };
    let key = line_of("spec.selector");
    assert!(
        key.contains("mistakes.yaml:") && key.contains("warning") && key.contains("db-typo"),
        "{key}"
    );
    assert!(key.contains("`ap` (did you mean `app`?)"), "{key}");
    let source = line_of("spec.ingress[0].source.selector");
    assert!(source.contains("matches no endpoint"), "{source}");
    let port = line_of("spec.ingress[0].destination.ports");
    assert!(port.contains("named port `postgress`"), "{port}");
    let ns = line_of("metadata.namespace");
    assert!(
        ns.contains("namespace `shopp`") && ns.contains("did you mean `shop`?"),
        "{ns}"
    );
    let delete = line_of("spec.stagedAction");
    assert!(
        delete.contains("nothing-to-delete") && delete.contains("not loaded"),
        "{delete}"
    );

    let strict = check(
        &[("shop.yaml", SHOP), ("mistakes.yaml", MISTAKES)],
        &["--strict"],
    );
    assert_eq!(strict.status.code(), Some(1), "{strict:?}");
}

#[test]
fn a_correct_policy_gets_no_warning_and_passes_strict() {
    let good = r#"apiVersion: projectcalico.org/v3
kind: StagedNetworkPolicy
metadata: {name: db-allow-api, namespace: shop}
spec:
  selector: app == 'db'
  ingress:
    - action: Allow
      protocol: TCP
      source: {selector: app == 'api'}
      destination: {ports: [postgres]}
"#;
    let out = check(&[("shop.yaml", SHOP), ("good.yaml", good)], &["--strict"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
}
