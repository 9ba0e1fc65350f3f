//! `--staged KIND/NAME` on `agent eval` and `agent matrix`: each staged policy
//! previewed alone. The seed scenario plus a second staged policy, an
//! ordered deny of backend -> prod/database.
use std::path::Path;
use std::process::{Command, Output};

/// A second staged policy beside the seed scenario's (shared by the staged-policy tests).
const DATABASE_LOCKDOWN: &str = include_str!("fixtures/database-lockdown.yaml");

fn datastore() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for e in std::fs::read_dir(examples).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(
        dir.path().join("30-database-lockdown.yaml"),
        DATABASE_LOCKDOWN,
    )
    .unwrap();
    dir
}

fn agent(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(args)
        .arg("--datastore")
        .arg(dir)
        .output()
        .expect("run agent")
}

/// `agent eval` of `from -> to` TCP/8080 with `staged` selected, as JSON.
fn eval(dir: &Path, from: &str, to: &str, staged: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "eval",
        "--from",
        from,
        "--to",
        to,
        "--protocol",
        "TCP",
        "--port",
        "8080",
        "-o",
        "json",
    ];
    for s in staged {
        args.extend(["--staged", s]);
    }
    let out = agent(dir, &args);
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["enforced"]["action"], "allow", "{json:#}");
    json
}

/// The pending action of `from -> to` TCP/8080 with `staged` selected.
fn pending(dir: &Path, from: &str, to: &str, staged: &[&str]) -> String {
    eval(dir, from, to, staged)["pending"]["action"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn each_staged_policy_is_previewed_alone_or_together() {
    let dir = datastore();
    let d = dir.path();
    let backend = "sgnp/backend-lockdown-staged";
    let database = "StagedGlobalNetworkPolicy/database-lockdown";
    // All staged policies promoted (the default).
    assert_eq!(pending(d, "prod/frontend", "prod/backend", &[]), "deny");
    assert_eq!(pending(d, "prod/backend", "prod/database", &[]), "deny");
    // Only the backend lockdown.
    assert_eq!(
        pending(d, "prod/frontend", "prod/backend", &[backend]),
        "deny"
    );
    assert_eq!(
        pending(d, "prod/backend", "prod/database", &[backend]),
        "allow"
    );
    // Only the database lockdown.
    assert_eq!(
        pending(d, "prod/frontend", "prod/backend", &[database]),
        "allow"
    );
    assert_eq!(
        pending(d, "prod/backend", "prod/database", &[database]),
        "deny"
    );
    // The blame: each differing flow names the staged policy that changes it.
    let blame = |from: &str, to: &str| eval(d, from, to, &[])["changed_by"].clone();
    assert_eq!(
        blame("prod/frontend", "prod/backend"),
        serde_json::json!(["sgnp/backend-lockdown-staged"])
    );
    assert_eq!(
        blame("prod/backend", "prod/database"),
        serde_json::json!(["sgnp/database-lockdown"])
    );
    assert_eq!(
        blame("prod/backend", "prod/frontend"),
        serde_json::json!([])
    );
    // Both named: as the default.
    assert_eq!(
        pending(d, "prod/backend", "prod/database", &[backend, database]),
        "deny"
    );
}

#[test]
fn the_matrix_previews_one_staged_policy_and_typos_are_errors() {
    let dir = datastore();
    let out = agent(
        dir.path(),
        &[
            "matrix",
            "--port",
            "TCP/8080",
            "--diff",
            "--staged",
            "sgnp/database-lockdown",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    // --diff lists each differing cell: `TCP/8080 A -> B: enforced allow, pending deny`.
    assert!(
        text.contains("prod/backend -> prod/database: enforced allow, pending deny"),
        "backend -> database differs: {text}"
    );
    assert!(
        !text.contains("-> prod/backend"),
        "the backend lockdown is not promoted, so nothing to backend differs: {text}"
    );

    let typo = agent(dir.path(), &["matrix", "--staged", "sgnp/databse-lockdown"]);
    assert_eq!(typo.status.code(), Some(2), "{typo:?}");
    let err = String::from_utf8_lossy(&typo.stderr);
    assert!(
        err.contains("did you mean sgnp/database-lockdown?"),
        "{err}"
    );
}
