//! `agent staged report --datastore DIR` (offline, from the connectivity
//! matrix) and `agent promote --dry-run` / `--require-clean` without a
//! daemon: the real binary, its output and exit codes.
//!
//! The datastore: the examples (a staged backend lockdown), a staged
//! database lockdown (denies backend -> database) and a staged policy that
//! changes nothing (frontend allows all ingress, as its profile already does).
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

/// A second staged policy beside the seed scenario's (shared by the staged-policy tests).
const DATABASE_LOCKDOWN: &str = include_str!("fixtures/database-lockdown.yaml");

const FRONTEND_OPEN: &str = "apiVersion: projectcalico.org/v3
kind: StagedNetworkPolicy
metadata:
  name: frontend-open
  namespace: prod
spec:
  selector: app == 'frontend'
  types: [Ingress]
  ingress:
    - action: Allow
";

fn datastore() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for e in std::fs::read_dir(examples).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(dir.path().join("30-database.yaml"), DATABASE_LOCKDOWN).unwrap();
    std::fs::write(dir.path().join("40-frontend.yaml"), FRONTEND_OPEN).unwrap();
    dir
}

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(args)
        .output()
        .expect("run agent")
}

/// Every file's contents, to show a command changed nothing.
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.display().to_string(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect()
}

/// `(from, to, port)` of a policy's `newly_denied` list.
fn denied(report: &serde_json::Value, policy: &str) -> Vec<(String, String, String)> {
    let p = report["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["policy"] == policy)
        .unwrap_or_else(|| panic!("{policy} in {report:#}"));
    p["newly_denied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert!(c.get("count").is_none(), "offline: no counts: {c}");
            (
                c["from"].as_str().unwrap().to_string(),
                c["to"].as_str().unwrap().to_string(),
                format!(
                    "{}/{}",
                    c["protocol"].as_str().unwrap(),
                    c["port"].as_str().unwrap()
                ),
            )
        })
        .collect()
}

fn owned(list: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    list.iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect()
}

#[test]
fn the_offline_report_names_each_policys_changes_and_exits_3() {
    let dir = datastore();
    let ds = dir.path().to_str().unwrap();
    let out = agent(&["staged", "report", "--datastore", ds, "-o", "json"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["window"]["source"], "matrix", "{report:#}");
    assert_eq!(report["policies"].as_array().unwrap().len(), 3);
    assert_eq!(
        denied(&report, "sgnp/backend-lockdown-staged"),
        owned(&[
            ("prod/database", "prod/backend", "TCP/8080"),
            ("prod/frontend", "prod/backend", "TCP/8080"),
        ])
    );
    assert_eq!(
        denied(&report, "sgnp/database-lockdown"),
        owned(&[("prod/backend", "prod/database", "TCP/8080")])
    );
    assert_eq!(denied(&report, "snp/prod/frontend-open"), owned(&[]));
    let open = &report["policies"][2];
    assert_eq!(open["policy"], "snp/prod/frontend-open");
    assert_eq!(open["selects"], serde_json::json!(["prod/frontend"]));
    assert_eq!(open["newly_allowed"], serde_json::json!([]));

    // One policy alone, in text.
    let out = agent(&[
        "staged",
        "report",
        "sgnp/database-lockdown",
        "--datastore",
        ds,
    ]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("sgnp/database-lockdown: selects 1 endpoint\n  newly denied (1):\n    prod/backend -> prod/database TCP/8080\n"),
        "{text}"
    );
    assert!(!text.contains("backend-lockdown"), "{text}");
}

#[test]
fn a_policy_that_changes_nothing_exits_0_and_typos_exit_2() {
    let dir = datastore();
    let ds = dir.path().to_str().unwrap();
    let out = agent(&[
        "staged",
        "report",
        "snp/prod/frontend-open",
        "--datastore",
        ds,
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("snp/prod/frontend-open: selects 1 endpoint; no change"),
        "{text}"
    );

    let typo = agent(&[
        "staged",
        "report",
        "sgnp/databse-lockdown",
        "--datastore",
        ds,
    ]);
    assert_eq!(typo.status.code(), Some(2), "{typo:?}");
    let err = String::from_utf8_lossy(&typo.stderr);
    assert!(
        err.contains("did you mean sgnp/database-lockdown?"),
        "{err}"
    );
}

#[test]
fn promote_dry_run_prints_the_diff_and_writes_nothing() {
    let dir = datastore();
    let ds = dir.path().to_str().unwrap();
    let before = snapshot(dir.path());
    let out = agent(&[
        "promote",
        "--datastore",
        ds,
        "snp/frontend-open",
        "-n",
        "prod",
        "--dry-run",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let file = dir.path().join("40-frontend.yaml");
    assert!(
        text.starts_with(&format!(
            "--- {0}\n+++ {0} (promoted)\n@@ -1,5 +1,5 @@\n apiVersion: projectcalico.org/v3\n\
             -kind: StagedNetworkPolicy\n+kind: NetworkPolicy\n metadata:\n",
            file.display()
        )),
        "{text}"
    );
    assert!(
        text.contains("dry run, nothing written; without --dry-run: promoted to NetworkPolicy"),
        "{text}"
    );
    assert_eq!(snapshot(dir.path()), before, "--dry-run wrote nothing");

    // The same promotion for real writes what the dry run showed.
    let out = agent(&[
        "promote",
        "--datastore",
        ds,
        "snp/frontend-open",
        "-n",
        "prod",
    ]);
    assert!(out.status.success(), "{out:?}");
    let promoted = std::fs::read_to_string(&file).unwrap();
    assert!(promoted.contains("\nkind: NetworkPolicy\n"), "{promoted}");
}

#[test]
fn require_clean_without_a_running_agent_is_a_clear_error_and_writes_nothing() {
    let dir = datastore();
    let ds = dir.path().to_str().unwrap();
    let socket = dir.path().join("no-agent.sock");
    let before = snapshot(dir.path());
    let out = agent(&[
        "promote",
        "--datastore",
        ds,
        "sgnp/database-lockdown",
        "--require-clean",
        "1h",
        "--socket",
        socket.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--require-clean needs the running agent's flow records"),
        "{err}"
    );
    assert!(err.contains(socket.to_str().unwrap()), "{err}");
    assert_eq!(snapshot(dir.path()), before);
}
