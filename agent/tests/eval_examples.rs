//! The seed scenario (examples/) through the real loader: the library
//! evaluator, and the `agent eval` / `agent matrix` command line.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use agent::eval::{Evaluator, Flow, FlowVerdict, Packet, Verdict};
use agent::model::ir::Model;

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

fn load(paths: &[PathBuf]) -> Model {
    let loaded = agent::model::load_paths(paths);
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
    loaded.model
}

/// A TCP flow between two workloads (by `namespace/name`), over IPv4.
fn flow(model: &Model, from: &str, to: &str, port: u16) -> FlowVerdict {
    let ip = |key: &str| {
        let e = model.endpoints.iter().find(|e| e.key() == key).unwrap();
        e.ips.iter().copied().find(|ip| ip.is_ipv4()).unwrap()
    };
    Evaluator::new(model).evaluate_flow(&Flow {
        src: ip(from),
        dst: ip(to),
        packet: Packet::tcp(port),
    })
}

fn trace(end: &Option<agent::eval::EndVerdict>) -> Vec<String> {
    end.as_ref()
        .unwrap()
        .trace
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn seed_scenario_from_yaml() {
    let m = load(&[repo_path("examples")]);
    let v = flow(&m, "prod/backend", "prod/database", 8080);
    assert_eq!(
        (v.enforced.action, v.pending.action),
        (Verdict::Allow, Verdict::Allow)
    );
    assert_eq!(
        trace(&v.enforced.ingress),
        ["0|default|gnp:database-allow-from-backend|allow|0"]
    );
    assert_eq!(
        trace(&v.enforced.egress),
        ["0|__PROFILE__|pro:kns.prod|allow|0"]
    );

    let v = flow(&m, "prod/frontend", "prod/database", 8080);
    assert_eq!(
        (v.enforced.action, v.pending.action),
        (Verdict::Deny, Verdict::Deny)
    );
    assert_eq!(
        trace(&v.enforced.ingress),
        ["0|default|gnp:database-allow-from-backend|deny|-1"]
    );

    let v = flow(&m, "prod/frontend", "prod/backend", 8080);
    assert_eq!(
        (v.enforced.action, v.pending.action),
        (Verdict::Allow, Verdict::Deny)
    );
    assert_eq!(
        trace(&v.enforced.ingress),
        ["0|__PROFILE__|pro:kns.prod|allow|0"]
    );
    assert_eq!(
        trace(&v.pending.ingress),
        ["0|default|sgnp:backend-lockdown-staged|deny|-1"]
    );
}

#[test]
fn safe_mode_sorts_before_the_unordered_seed_policies_and_allows() {
    // Unset order is +infinity: the order-100000 allow-everything comes first.
    let m = load(&[repo_path("examples"), repo_path("safe-mode")]);
    let v = flow(&m, "prod/frontend", "prod/database", 8080);
    assert_eq!(v.enforced.action, Verdict::Allow);
    assert_eq!(
        trace(&v.enforced.ingress),
        ["0|default|gnp:zzz-final-allow-everything|allow|0"]
    );
}

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(args)
        .current_dir(repo_path(""))
        .output()
        .expect("run agent binary")
}

fn eval_actions(from: &str, to: &str) -> (String, String) {
    let out = agent(&[
        "eval",
        "--datastore",
        "examples",
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
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let action = |set: &str| json[set]["action"].as_str().unwrap().to_string();
    (action("enforced"), action("pending"))
}

#[test]
fn agent_eval_json_on_the_seed() {
    let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(
        eval_actions("prod/backend", "prod/database"),
        pair("allow", "allow")
    );
    assert_eq!(
        eval_actions("prod/frontend", "prod/database"),
        pair("deny", "deny")
    );
    assert_eq!(
        eval_actions("prod/frontend", "prod/backend"),
        pair("allow", "deny")
    );
    // By IP: the same endpoints.
    assert_eq!(
        eval_actions("10.65.0.10", "10.65.0.20"),
        pair("allow", "deny")
    );
    assert_eq!(eval_actions("fd65::10", "fd65::20"), pair("allow", "deny"));
}

#[test]
fn agent_eval_text_shows_both_sets_and_traces() {
    let out = agent(&[
        "eval",
        "--datastore",
        "examples",
        "--from",
        "prod/frontend",
        "--to",
        "prod/backend",
        "--protocol",
        "tcp",
        "--port",
        "8080",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("enforced: allow\n"), "{text}");
    assert!(text.contains("pending: deny "), "{text}");
    assert!(
        text.contains("    0|default|sgnp:backend-lockdown-staged|deny|-1\n"),
        "{text}"
    );
}

#[test]
fn agent_matrix_on_the_seed() {
    let out = agent(&["matrix", "--datastore", "examples", "--diff"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "TCP/8080 prod/database -> prod/backend: enforced allow, pending deny\n\
         TCP/8080 prod/frontend -> prod/backend: enforced allow, pending deny\n"
    );
    let out = agent(&["matrix", "--datastore", "examples"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "TCP/8080  (each cell: enforced pending; * = pending differs)\n\
         from \\ to      prod/backend  prod/database  prod/frontend\n\
         prod/backend   -             ✓ ✓            ✓ ✓\n\
         prod/database  ✓ ✗*          -              ✓ ✓\n\
         prod/frontend  ✓ ✗*          ✗ ✗            -\n\n"
    );
}
